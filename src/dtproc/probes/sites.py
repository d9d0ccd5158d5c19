"""Probe sites: the concrete, placed probes that descriptions match.

A :class:`ProbeSite` says *which* probe (its four-part name and id, as dtrace
lists it) and *where* (a run-time address, plus the file and file offset a
kernel uprobe needs). How a hit is caught -- a ptrace breakpoint or a uprobe --
is a backend's business: the same site serves both.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dtproc.d import ProbeDescription, ProbeInfo
from dtproc.modules import Module, ModuleMap
from dtproc.sdt import SdtArg


class ProbeKind(enum.Enum):
    ENTRY = "entry"
    RETURN = "return"  # at a ret (or a tail-call jump) of the function
    OFFSET = "offset"  # at an instruction offset into the function
    USDT = "usdt"  # a static probe the program ships (.note.stapsdt)


class ReturnHow(enum.Enum):
    RET = "ret"
    TAIL_CALL = "tail call"
    COND_TAIL_CALL = "conditional tail call"  # fires only when the branch is taken


@dataclass(frozen=True, slots=True)
class ProbeSite:
    """One probe placed at one address of one process."""

    info: ProbeInfo
    kind: ProbeKind
    pid: int
    address: int  # run-time address of the instruction
    function_address: int  # start of the function (return probes: arg0 is the offset)
    path: str  # the mapped file (uprobes attach by file and offset)
    file_offset: int
    return_how: ReturnHow | None = None
    branch_target: int | None = None  # conditional tail calls: fire when the branch goes here
    usdt_args: tuple[SdtArg, ...] = ()
    semaphore: int = 0  # run-time address of a USDT semaphore (0: none)
    semaphore_file_offset: int = 0
    module_bias: int = field(default=0, compare=False)

    @property
    def offset(self) -> int:
        return self.address - self.function_address

    def __str__(self) -> str:
        return str(self.info)


def candidate_modules(
    desc: ProbeDescription, modules: ModuleMap, only: Sequence[Module] | None
) -> Iterator[Module]:
    """The modules a description's module field names (of *only*, when given: new ones)."""
    for module in only if only is not None else modules:
        if module.elf is None or module.is_vdso:
            continue  # the vDSO is no file: uprobes cannot attach there
        if not desc.module or module.matches(desc.module):
            yield module


class ProbeIds:
    """dtrace numbers probes from 1; BEGIN, END and ERROR take 1-3."""

    def __init__(self, first: int = 4) -> None:
        self._next = itertools.count(first)
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str, str, str], int] = {}

    def id_for(self, provider: str, module: str, function: str, name: str) -> int:
        key = (provider, module, function, name)
        with self._lock:
            found = self._known.get(key)
            if found is None:
                found = self._known[key] = next(self._next)
            return found
