"""JSON Lines output: one object per record, for programs to read.

Every object has a ``type``:

* ``probe`` -- a firing that recorded nothing printable (an empty clause);
* ``printf`` (``text``), ``trace`` (``value``, or ``hex`` for bytes),
  ``ustack`` (``pid``, ``frames`` innermost first), ``usym``/``umod``/
  ``uaddr`` (``value``), ``tracemem`` (``hex``) -- each with ``probe``
  (``id``, ``provider``, ``module``, ``function``, ``name``) and ``cpu``;
* ``printa`` and, at the end, ``aggregation`` -- one per aggregation entry:
  ``name`` (``@foo``, or ``@`` for the anonymous one), ``keys`` (stacks as
  frame lists) and ``value``: a number, or for quantizations ``buckets``, a
  list of ``{"min", "max", "count"}`` for the non-empty buckets, where ``min``
  is inclusive, ``max`` exclusive and ``null`` means unbounded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from dtproc.d import aggregations as ag
from dtproc.d.dtypes import DType, Kind
from dtproc.d.format_dtrace import sym_text
from dtproc.d.ir import AggDef, AggFunc
from dtproc.d.printf import FormatEnv
from dtproc.d.records import (
    AggTable,
    MemOut,
    Output,
    PrintaOut,
    PrintfOut,
    StackOut,
    SymOut,
    TraceOut,
)
from dtproc.d.values import ProbeInfo, StackValue, SymAddr, Symbolizer, cached_symbolizer


def _bounds(defn: AggDef, n: int) -> list[tuple[int | None, int | None]]:
    """(min, max) of every bucket of a histogram with *n* buckets."""
    if defn.func is AggFunc.QUANTIZE:
        vals = [ag.quantize_bucket_value(i) for i in range(n)]
        return [(v, vals[i + 1] if i + 1 < n else None) for i, v in enumerate(vals)]
    if defn.func is AggFunc.LQUANTIZE:
        base, step, levels = defn.params
        top = base + levels * step
        mids = [(base + i * step, base + (i + 1) * step) for i in range(levels)]
        return [(None, base), *mids, (top, None)]
    values = ag.llquantize_values(*defn.params)
    mids = [(v, values[i + 1]) for i, v in enumerate(values[:-1])]
    return [(None, values[0]), *mids, (values[-1], None)]


def value_json(defn: AggDef, cell: ag.Cell, normal: int) -> Any:
    """An aggregation value as JSON: a number, or the histogram's non-empty buckets."""
    if not ag.is_histogram(defn.func):
        return ag.scalar_value(defn.func, cell, normal)
    assert isinstance(cell, list)
    buckets = []
    for (lo, hi), count in zip(_bounds(defn, len(cell)), cell, strict=True):
        if count:
            c = ag.int64(count)
            buckets.append({"min": lo, "max": hi, "count": c // normal if normal > 1 else c})
    return {"buckets": buckets}


class JsonSink:
    """Writes one JSON object per line."""

    def __init__(self, out: TextIO, *, symbolize: Symbolizer | None = None) -> None:
        self.out = out
        self.symbolize = cached_symbolizer(symbolize)

    def _write(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def frames(self, stack: StackValue) -> list[str]:
        return [self.symbolize(stack.pid, pc) for pc in stack.pcs if pc]

    def key_json(self, key: object, t: DType) -> Any:
        if t.kind is Kind.STACK:
            assert isinstance(key, StackValue)
            return self.frames(key)
        if t.kind is Kind.SYMADDR:
            assert isinstance(key, SymAddr)
            return sym_text(key, self.symbolize)
        return key

    def ecb(self, cpu: int, probe: ProbeInfo, outputs: Sequence[Output]) -> None:
        where = {
            "probe": {
                "id": probe.id,
                "provider": probe.provider,
                "module": probe.module,
                "function": probe.function,
                "name": probe.name,
            },
            "cpu": cpu,
        }
        if not outputs:
            self._write({"type": "probe", **where})
        for o in outputs:
            if isinstance(o, PrintaOut):
                self.table(o.table, "printa", where)
            else:
                self._write({**self.record(o), **where})

    def record(self, o: Output) -> dict[str, Any]:
        if isinstance(o, PrintfOut):
            return {
                "type": "printf",
                "text": o.formatter.format(o.args, FormatEnv(self.symbolize, o.pid)),
            }
        if isinstance(o, TraceOut):
            if isinstance(o.value, bytes):
                return {"type": "trace", "hex": o.value.hex()}
            return {"type": "trace", "value": o.value}
        if isinstance(o, StackOut):
            return {"type": "ustack", "pid": o.stack.pid, "frames": self.frames(o.stack)}
        if isinstance(o, SymOut):
            return {"type": o.sym.kind.value, "value": sym_text(o.sym, self.symbolize)}
        assert isinstance(o, MemOut)
        return {"type": "tracemem", "hex": o.data.hex()}

    def table(self, table: AggTable, kind: str, extra: dict[str, Any]) -> None:
        types = table.defs[0].key_types
        for key, cells in table.rows:
            keys = [self.key_json(k, t) for k, t in zip(key, types, strict=True)]
            for defn, normal, cell in zip(table.defs, table.normals, cells, strict=True):
                self._write(
                    {
                        "type": kind,
                        "name": defn.display_name,
                        "keys": keys,
                        "value": value_json(defn, cell, normal),
                        **extra,
                    }
                )

    def finish(self, tables: Sequence[AggTable]) -> None:
        for t in tables:
            self.table(t, "aggregation", {})
        self.out.flush()
