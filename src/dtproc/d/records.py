"""What the runtime hands to an output format: data, not text.

One probe firing's records are delivered together (:meth:`Sink.ecb`), in the
order the clause produced them, after the clause finished without a fault;
aggregation tables come with printa() and at the end of the run. Keeping these
apart from the text is what lets the same run be printed as dtrace text, JSON,
folded stacks or a speedscope profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dtproc.d.aggregations import Cell, Key
from dtproc.d.dtypes import DType
from dtproc.d.ir import AggDef
from dtproc.d.printf import Formatter
from dtproc.d.values import ProbeInfo, StackValue, SymAddr


@dataclass(frozen=True, slots=True)
class TraceOut:
    """trace(expr): an integer, a string, or copied-in bytes."""

    value: int | str | bytes
    type: DType


@dataclass(frozen=True, slots=True)
class PrintfOut:
    formatter: Formatter
    args: tuple[object, ...]
    pid: int


@dataclass(frozen=True, slots=True)
class StackOut:
    stack: StackValue


@dataclass(frozen=True, slots=True)
class SymOut:
    """usym()/ufunc()/umod()/uaddr() used as a statement."""

    sym: SymAddr


@dataclass(frozen=True, slots=True)
class MemOut:
    """tracemem(): a hex dump."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AggTable:
    """Rows of one or more aggregations (several when printa() joins them).

    Each row is a key and one cell per aggregation, already in print order.
    ``pid`` is the process stacks and symbols in the keys belong to when they
    do not say (printa formats with %a).
    """

    defs: tuple[AggDef, ...]
    normals: tuple[int, ...]
    rows: Sequence[tuple[Key, Sequence[Cell]]]


@dataclass(frozen=True, slots=True)
class PrintaOut:
    formatter: Formatter | None
    table: AggTable


Output = TraceOut | PrintfOut | StackOut | SymOut | MemOut | PrintaOut


class Sink(Protocol):
    """An output format."""

    def ecb(self, cpu: int, probe: ProbeInfo, outputs: Sequence[Output]) -> None:
        """One probe firing's records; called even when *outputs* is empty.

        (A clause that only called exit() or clear() still "traced" its probe,
        and dtrace's default output shows the probe line for it.)
        """

    def finish(self, tables: Sequence[AggTable]) -> None:
        """End of run: the aggregations not printed by printa(), in print order."""
