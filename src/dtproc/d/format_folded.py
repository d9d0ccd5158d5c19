"""Folded stacks, the input of flame-graph tools: ``root;caller;leaf count``.

Every aggregation entry whose value is a number (count, sum, min, max, avg,
stddev) becomes one line, printed when printa() prints it or at the end. Its
keys become frames, in key order: a stack key contributes its frames root
first, any other key one frame (``@[execname, ustack()] = count()`` gives
``bash;libc.so.6`read;...``). Frame offsets (``+0x1a``) are dropped so that
samples in the same function merge, as stackcollapse does; pass
``offsets=True`` to keep them. Per-hit records (printf, trace...) and
histograms are not flame-graph data and are left out.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import TextIO

from dtproc.d import aggregations as ag
from dtproc.d.dtypes import DType, Kind
from dtproc.d.format_dtrace import sym_text
from dtproc.d.records import AggTable, Output, PrintaOut
from dtproc.d.values import ProbeInfo, StackValue, SymAddr, Symbolizer, cached_symbolizer

_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def key_frames(
    key: Sequence[object], types: Sequence[DType], symbolize: Symbolizer, offsets: bool
) -> list[str]:
    """An aggregation key as a frame list, root first."""
    frames: list[str] = []
    for k, t in zip(key, types, strict=True):
        if t.kind is Kind.STACK:
            assert isinstance(k, StackValue)
            names = [symbolize(k.pid, pc) for pc in reversed(k.pcs) if pc]
            frames.extend(names if offsets else [_OFFSET.sub("", n) for n in names])
        elif t.kind is Kind.SYMADDR:
            assert isinstance(k, SymAddr)
            frames.append(sym_text(k, symbolize))
        else:
            frames.append(str(k))
    return frames


def weighted_rows(
    table: AggTable, symbolize: Symbolizer, offsets: bool
) -> list[tuple[str, list[str], int]]:
    """(aggregation name, frames, weight) for each numeric entry with a positive value."""
    out: list[tuple[str, list[str], int]] = []
    types = table.defs[0].key_types
    if not types:
        return out
    for key, cells in table.rows:
        frames = key_frames(key, types, symbolize, offsets)
        for defn, normal, cell in zip(table.defs, table.normals, cells, strict=True):
            if ag.is_histogram(defn.func):
                continue
            weight = ag.scalar_value(defn.func, cell, normal)
            if weight > 0 and frames:
                out.append((defn.display_name, frames, weight))
    return out


class AggregationSink(abc.ABC):
    """A sink that only wants aggregation tables: printa()'s and the final ones."""

    def __init__(
        self, out: TextIO, *, symbolize: Symbolizer | None = None, offsets: bool = False
    ) -> None:
        self.out = out
        self.symbolize = cached_symbolizer(symbolize)
        self.offsets = offsets

    @abc.abstractmethod
    def table(self, table: AggTable) -> None:
        """Render one aggregation table."""

    def close(self) -> None:
        """Called once after the final tables."""
        self.out.flush()

    def ecb(self, cpu: int, probe: ProbeInfo, outputs: Sequence[Output]) -> None:
        for o in outputs:
            if isinstance(o, PrintaOut):
                self.table(o.table)

    def finish(self, tables: Sequence[AggTable]) -> None:
        for t in tables:
            self.table(t)
        self.close()


class FoldedSink(AggregationSink):
    def table(self, table: AggTable) -> None:
        for _, frames, weight in weighted_rows(table, self.symbolize, self.offsets):
            self.out.write(f"{';'.join(f.replace(';', ':') for f in frames)} {weight}\n")
