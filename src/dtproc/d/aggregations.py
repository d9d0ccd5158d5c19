"""Aggregation data: how each function accumulates, and dtrace's sort orders.

Each aggregation variable keeps a dict from key tuple to a cell: an int for
count/sum/min/max, ``[n, total]`` for avg, ``[n, total, sum of squares]`` for
stddev, and a list of bucket counts for the quantizations (dtrace's bucket
layout: 127 power-of-two buckets for quantize, ``levels + 2`` for lquantize).

Ordering follows ``dt_aggregate.c``: by value, ties broken by key, unless the
``aggsortkey`` option asks for keys first; ``aggsortrev`` reverses everything.
Keys compare as dtrace compares its records: integers as unsigned numbers of
their size (so -1 sorts after 2), strings byte-wise, stacks by their raw
little-endian words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtproc.d import dtypes
from dtproc.d.dtypes import DType, Kind
from dtproc.d.ir import AggDef, AggFunc
from dtproc.d.values import StackValue, SymAddr

QUANTIZE_NBUCKETS = 127
QUANTIZE_ZERO = 63

Cell = int | list[int]
Key = tuple[object, ...]


def quantize_bucket_value(i: int) -> int:
    """The lower bound of quantize bucket *i* (dtrace's DTRACE_QUANTIZE_BUCKETVAL)."""
    if i < QUANTIZE_ZERO:
        return -(1 << (QUANTIZE_ZERO - 1 - i))
    if i == QUANTIZE_ZERO:
        return 0
    return 1 << (i - QUANTIZE_ZERO - 1)


def quantize_index(value: int) -> int:
    """The bucket a value goes in: the largest power of two not above it."""
    if value > 0:
        return QUANTIZE_ZERO + value.bit_length()
    if value == 0:
        return QUANTIZE_ZERO
    return max(0, QUANTIZE_ZERO - (-value).bit_length())


def lquantize_index(value: int, base: int, step: int, levels: int) -> int:
    if value < base:
        return 0
    level = (value - base) // step
    return level + 1 if level < levels else levels + 1


def _power(base: int, exp: int) -> int:
    result = 1
    for _ in range(exp):
        result *= base
    return result


def llquantize_index(value: int, factor: int, low: int, high: int, nsteps: int) -> int:
    """dtrace's dtrace_aggregate_llquantize_bucket."""
    this = _power(factor, low)
    if value < this:
        return 0
    last = this
    this *= factor
    base = 1
    for _ in range(low, high + 1):
        nbuckets = min(this, nsteps)
        if value < this:
            return base + (value - last) // (this // nbuckets)
        base += nbuckets - nbuckets // factor
        last = this
        this *= factor
    return base


def llquantize_buckets(factor: int, low: int, high: int, nsteps: int) -> int:
    """Buckets of an llquantize: underflow, one per step of each magnitude, overflow."""
    return len(llquantize_values(factor, low, high, nsteps)) + 1


def llquantize_values(factor: int, low: int, high: int, nsteps: int) -> list[int]:
    """The lower bound of every llquantize bucket after the underflow bucket."""
    value = _power(factor, low)
    out: list[int] = []
    nxt = value * factor
    step = nxt // nsteps if nxt > nsteps else 1
    order = low
    while order <= high:
        out.append(value)
        value += step
        if value != nxt:
            continue
        nxt = value * factor
        step = nxt // nsteps if nxt > nsteps else 1
        order += 1
    out.append(value)  # the overflow bucket: ">= value"
    return out


def new_cell(defn: AggDef) -> Cell:
    """An empty (zero) cell for *defn*: what clear() leaves and joins fill in."""
    func = defn.func
    if func is AggFunc.AVG:
        return [0, 0]
    if func is AggFunc.STDDEV:
        return [0, 0, 0]
    if func is AggFunc.QUANTIZE:
        return [0] * QUANTIZE_NBUCKETS
    if func is AggFunc.LQUANTIZE:
        return [0] * (defn.params[2] + 2)
    if func is AggFunc.LLQUANTIZE:
        return [0] * llquantize_buckets(*defn.params)
    return 0


Updater = Callable[[dict[Key, Cell], Key, int, int], None]


def updater(defn: AggDef) -> Updater:
    """``update(data, key, value, incr)`` for *defn*'s function."""
    func = defn.func
    if func is AggFunc.COUNT:

        def count(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
            d[k] = d.get(k, 0) + incr  # type: ignore[operator]

        return count
    if func is AggFunc.SUM:

        def add(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
            d[k] = d.get(k, 0) + v  # type: ignore[operator]

        return add
    if func is AggFunc.MIN:

        def minimum(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
            old = d.get(k)
            if old is None or v < old:  # type: ignore[operator]
                d[k] = v

        return minimum
    if func is AggFunc.MAX:

        def maximum(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
            old = d.get(k)
            if old is None or v > old:  # type: ignore[operator]
                d[k] = v

        return maximum
    if func in (AggFunc.AVG, AggFunc.STDDEV):
        return _moments_updater(func is AggFunc.STDDEV)
    return _bucket_updater(defn)


def _moments_updater(squares: bool) -> Updater:
    def update(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
        cell = d.get(k)
        if cell is None:
            d[k] = [1, v, v * v] if squares else [1, v]
            return
        assert isinstance(cell, list)
        cell[0] += 1
        cell[1] += v
        if squares:
            cell[2] += v * v

    return update


def _bucket_updater(defn: AggDef) -> Updater:
    func, params = defn.func, defn.params
    index: Callable[[int], int]
    if func is AggFunc.QUANTIZE:
        index = quantize_index
    elif func is AggFunc.LQUANTIZE:
        base, step, levels = params

        def index(v: int) -> int:
            return lquantize_index(v, base, step, levels)
    else:
        factor, low, high, nsteps = params
        top = llquantize_buckets(factor, low, high, nsteps) - 1

        def index(v: int) -> int:
            return min(llquantize_index(v, factor, low, high, nsteps), top)

    def update(d: dict[Key, Cell], k: Key, v: int, incr: int) -> None:
        cell = d.get(k)
        if cell is None:
            cell = d[k] = new_cell(defn)
        cell[index(v)] += incr  # type: ignore[index]

    return update


# -- values as printed ----------------------------------------------------------------


def int64(v: int) -> int:
    return dtypes.to_signed(v, 8)


def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def stddev(cell: Sequence[int], normal: int) -> int:
    """dtrace's dt_stddev: integer arithmetic on 128-bit sums, floor square root."""
    n, total, squares = cell[0], int64(cell[1]), cell[2] % (1 << 128)
    if n == 0:
        return 0
    avg_of_squares = squares // normal // normal // n
    norm_avg = abs(c_div(c_div(total, normal), n))
    diff = (avg_of_squares - norm_avg * norm_avg) % (1 << 128)
    return math.isqrt(diff) & ((1 << 64) - 1)


def average(cell: Sequence[int], normal: int) -> int:
    n, total = cell[0], int64(cell[1])
    return c_div(c_div(total, normal), n) if n else 0


def scalar_value(func: AggFunc, cell: Cell, normal: int) -> int:
    """The number printed for a non-histogram aggregation (normalized)."""
    if func is AggFunc.AVG:
        assert isinstance(cell, list)
        return average(cell, normal)
    if func is AggFunc.STDDEV:
        assert isinstance(cell, list)
        return stddev(cell, normal)
    assert isinstance(cell, int)
    if func is AggFunc.COUNT:
        return (cell & ((1 << 64) - 1)) // normal
    return c_div(int64(cell), normal)


def is_histogram(func: AggFunc) -> bool:
    return func in (AggFunc.QUANTIZE, AggFunc.LQUANTIZE, AggFunc.LLQUANTIZE)


def _histogram_weight(defn: AggDef, cell: Sequence[int]) -> tuple[int, int]:
    """(sum of bucket value times count, count at zero): dtrace's histogram order."""
    func = defn.func
    if func is AggFunc.QUANTIZE:
        total = sum(quantize_bucket_value(i) * int64(c) for i, c in enumerate(cell) if c)
        return total, int64(cell[QUANTIZE_ZERO])
    if func is AggFunc.LQUANTIZE:
        base, step, levels = defn.params
        total = int64(cell[0]) * (base - 1)
        zero = int64(cell[0]) if base - 1 == 0 else 0
        b = base
        for i in range(levels):
            total += int64(cell[i + 1]) * b
            if b == 0:
                zero = int64(cell[i + 1])
            b += step
        total += int64(cell[levels + 1]) * (b + 1)
        if b + 1 == 0:
            zero = int64(cell[levels + 1])
        return total, zero
    values = llquantize_values(*defn.params)
    total = int64(cell[0]) * (values[0] - 1)
    for i, v in enumerate(values):
        total += int64(cell[i + 1]) * v
    return total, int64(cell[0])


def value_order(defn: AggDef, cell: Cell) -> tuple[int, ...]:
    """dtrace's value comparison as a sort key."""
    func = defn.func
    if is_histogram(func):
        assert isinstance(cell, list)
        return _histogram_weight(defn, cell)
    if func is AggFunc.AVG:
        assert isinstance(cell, list)
        return (average(cell, 1),)
    if func is AggFunc.STDDEV:
        assert isinstance(cell, list)
        return (stddev(cell, 1),)
    assert isinstance(cell, int)
    return (int64(cell),)


def key_order(types: Sequence[DType], key: Key) -> tuple[object, ...]:
    """dtrace's key comparison as a sort key (one element per key)."""
    out: list[object] = []
    for t, k in zip(types, key, strict=True):
        if t.kind is Kind.INT:
            assert isinstance(k, int)
            out.append(dtypes.to_unsigned(k, t.size))
        elif t.kind is Kind.STRING:
            assert isinstance(k, str)
            out.append(k.encode("utf-8", "surrogateescape"))
        elif t.kind is Kind.STACK:
            assert isinstance(k, StackValue)
            words = (k.pid & ((1 << 64) - 1), *k.pcs)
            out.append(b"".join(w.to_bytes(8, "little") for w in words))
        else:
            assert isinstance(k, SymAddr)
            out.append((k.pid, k.addr))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SortOptions:
    """The aggsort* options."""

    by_key: bool = False
    reverse: bool = False
    key_position: int = 0


def _rotated(order: tuple[object, ...], position: int) -> tuple[object, ...]:
    if not order or position >= len(order):
        return order
    return order[position:] + order[:position]


class AggData:
    """The live data of one aggregation variable."""

    __slots__ = ("data", "defn", "normal", "printed", "update")

    def __init__(self, defn: AggDef) -> None:
        self.defn = defn
        self.data: dict[Key, Cell] = {}
        self.normal = 1
        self.printed = False
        self.update = updater(defn)

    def sorted_entries(self, opts: SortOptions) -> list[tuple[Key, Cell]]:
        """Entries in dtrace's print order."""
        types = self.defn.key_types
        defn = self.defn

        def order(item: tuple[Key, Cell]) -> tuple[object, ...]:
            keys = _rotated(key_order(types, item[0]), opts.key_position)
            if opts.by_key:
                return keys
            return (value_order(defn, item[1]), keys)

        return sorted(self.data.items(), key=order, reverse=opts.reverse)

    def clear(self) -> None:
        """clear(): every value back to zero, keys kept."""
        for k in self.data:
            self.data[k] = new_cell(self.defn)

    def truncate(self, keep: int | None) -> None:
        """trunc(): keep the *keep* largest entries (smallest if negative); none if None."""
        if not keep:
            self.data.clear()
            return
        defn, types = self.defn, self.defn.key_types
        ranked = sorted(
            self.data.items(),
            key=lambda kv: (value_order(defn, kv[1]), key_order(types, kv[0])),
            reverse=keep > 0,
        )
        for k, _ in ranked[abs(keep) :]:
            del self.data[k]


def joined_entries(aggs: Sequence[AggData], opts: SortOptions) -> list[tuple[Key, list[Cell]]]:
    """printa() of several aggregations: the union of their keys, values side by side.

    A key missing from an aggregation gets that aggregation's zero value, as dtrace does.
    """
    keys: dict[Key, None] = {}
    for agg in aggs:
        keys.update(dict.fromkeys(agg.data))
    rows = [(k, [a.data.get(k, new_cell(a.defn)) for a in aggs]) for k in keys]
    types = aggs[0].defn.key_types

    def order(row: tuple[Key, list[Cell]]) -> tuple[object, ...]:
        key = _rotated(key_order(types, row[0]), opts.key_position)
        values = tuple(value_order(a.defn, c) for a, c in zip(aggs, row[1], strict=True))
        return (key, values) if opts.by_key else (values, key)

    return sorted(rows, key=order, reverse=opts.reverse)
