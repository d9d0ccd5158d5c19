"""The contract between probe matching and the mechanisms that catch hits.

A :class:`Placement` is a probe site plus the clauses to run when it fires. A
backend takes placements for one process and makes hits call ``fire(clauses,
context)``; it never decides *which* probes exist (the providers do) nor *what*
a clause does (the D runtime does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dtproc.control import Process
from dtproc.d import ProbeContext
from dtproc.modules import Module
from dtproc.probes.sites import ProbeSite

Fire = Callable[[Sequence[int], ProbeContext], None]


@dataclass(frozen=True, slots=True)
class Placement:
    site: ProbeSite
    clauses: tuple[int, ...]


class Backend(Protocol):
    name: str

    def enable(self, proc: Process, placements: Sequence[Placement]) -> None:
        """Start catching hits of *placements* in *proc* (from any thread)."""

    def enable_here(self, proc: Process, placements: Sequence[Placement]) -> None:
        """Like enable, called from *proc*'s control thread (a module just loaded)."""

    def forget(self, proc: Process, modules: Sequence[Module] | None) -> None:
        """Drop the sites in *modules* (None: all of them; after exec), without writing."""

    def disable(self, proc: Process) -> None:
        """Stop catching hits in *proc*; leave nothing of ours behind in it."""

    def close(self) -> None:
        """Release whatever the backend holds (rings, events)."""
