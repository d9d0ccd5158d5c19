"""dtrace's own text output, byte for byte.

Layouts follow ``dtrace.c`` and ``dt_consume.c``: without ``quiet`` each probe
firing prints ``CPU ID FUNCTION:NAME`` columns (after a one-time heading) and
its records after them, then a newline; ``trace()`` pads integers to a width
that depends on their size and strings to 33 columns; aggregations print keys
(integers by size, strings in 50 columns, stacks one frame per line indented
14) then values in 16 columns; histograms print dtrace's ``value ---
Distribution --- count`` table with ``@`` bars; at the end of the run a blank
line, then every aggregation printa() has not printed.

Bytes that are not all printable characters followed by NULs (a string with a
control character, copied-in binary data) are shown as dtrace shows them: a
hex dump with an ASCII column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO

from dtproc.d import aggregations as ag
from dtproc.d import dtypes
from dtproc.d.dtypes import DType, Kind
from dtproc.d.ir import AggDef, AggFunc
from dtproc.d.printf import FormatEnv, IntFormat, format_stack
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
from dtproc.d.subr import to_bytes
from dtproc.d.values import (
    ProbeInfo,
    StackValue,
    SymAddr,
    Symbolizer,
    SymKind,
    cached_symbolizer,
)

HEADING = f"{'CPU':>3} {'ID':>6} {'FUNCTION:NAME':>32}\n"
QUANT_HEADER = f"\n{'value':>16} {'------------- Distribution -------------':>41} {'count':<9}\n"

# Column widths of integers by size in trace() (non-quiet) and aggregation keys.
_INT_WIDTH = {1: 3, 2: 5, 4: 8, 8: 16}


def sym_text(sym: SymAddr, symbolize: Symbolizer) -> str:
    """usym()/ufunc() without the offset, umod() just the module, uaddr() everything."""
    text = symbolize(sym.pid, sym.addr)
    if sym.kind is SymKind.ADDR:
        return text
    if sym.kind is SymKind.MOD:
        return text.split("`", 1)[0] if "`" in text else f"0x{sym.addr:x}"
    head, sep, tail = text.rpartition("+0x")
    return head if sep and "`" in head and all(c in "0123456789abcdef" for c in tail) else text


def int_record_text(value: int, size: int) -> int:
    """The number dtrace prints for an integer record of *size* bytes.

    8- and 4-byte records print signed; 2- and 1-byte records are loaded
    unsigned (dtrace reads them through uint16_t/uint8_t pointers).
    """
    if size >= 4:
        return dtypes.to_signed(value, size)
    return dtypes.to_unsigned(value, size)


def string_record(text: str, strsize: int) -> bytes:
    """A string as dtrace records it: strsize bytes, NUL-padded."""
    raw = to_bytes(text)[: strsize - 1]
    return raw + b"\0" * (strsize - len(raw))


def _printable(b: int) -> bool:
    return 0x20 <= b <= 0x7E or b in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x08, 0x07)


def print_bytes(data: bytes, width: int, quiet: bool, forceraw: bool, rawbytes: bool) -> str:
    """dtrace's dt_print_bytes: a string if it looks like one, else a hex dump."""
    if not data:
        return ""
    if not forceraw and not rawbytes:
        n = len(data)
        i = 0
        while i < n and _printable(data[i]):
            i += 1
        if i == n:
            text = data.decode("utf-8", "surrogateescape")
            return f"  {text:<{abs(width)}}" if width < 0 else f"  {text:>{width}}"
        if data[i] == 0 and i > 0 and not any(data[i + 1 :]):
            text = data[:i].decode("utf-8", "surrogateescape")
            if quiet:
                return text
            return f"  {text:<{-width}}" if width < 0 else f" {text:>{width}}"
    return hex_dump(data)


def hex_dump(data: bytes) -> str:
    out = ["\n", " " * 11]
    out.extend(f"  {c}" for c in "0123456789abcdef")
    out.append("  0123456789abcdef\n")
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        out.append(f"{'':5}{i:5x}:")
        out.extend(f" {b:02x}" for b in chunk)
        out.append("   " * (16 - len(chunk)))
        out.append("  ")
        out.append("".join(chr(b) if 0x20 <= b <= 0x7E else "." for b in chunk))
        out.append("\n")
    return "".join(out)


# -- histograms ----------------------------------------------------------------


def _shown(val: int, normal: int) -> int:
    # dtrace divides the int64 count by the uint64 normal: an unsigned division.
    if normal == 1:
        return val
    return dtypes.to_signed(dtypes.to_unsigned(val, 8) // normal, 8)


def _depth(val: int, total: int, length: int) -> int:
    return (2 * abs(val) * length + total) // (2 * total)


def quantline(val: int, normal: int, total: int, positives: bool, negatives: bool) -> str:
    """One bar of a histogram (dtrace's dt_print_quantline, ASCII encoding)."""
    count = f"{_shown(val, normal):<9d}\n"
    if not negatives:
        depth = _depth(val, total, 40) if positives else 0
        return f"|{'@' * depth}{' ' * (40 - depth)} {count}"
    if not positives:
        depth = _depth(val, total, 40)
        return f"{' ' * (40 - depth)}{'@' * depth}| {count}"
    depth = _depth(val, total, 20)
    if val <= 0:
        return f"{' ' * (20 - depth)}{'@' * depth}|{' ' * 20} {count}"
    return f"{' ' * 20}|{'@' * depth}{' ' * (20 - depth)} {count}"


def _bin_range(data: Sequence[int], empty: tuple[int, int], scan: int) -> tuple[int, int]:
    """First and last row to show: the non-zero buckets plus one zero row each side.

    dtrace looks for the first non-zero bucket among the first *scan* buckets
    only (quantize never looks at its top bucket), and shows *empty* if none.
    """
    n = len(data)
    first = 0
    while first < scan and data[first] == 0:
        first += 1
    if first == scan:
        return empty
    last = n - 1
    while last > 0 and data[last] == 0:
        last -= 1
    return max(first - 1, 0), min(last + 1, n - 1)


def _histogram(rows: Sequence[tuple[str, int]], normal: int) -> str:
    values = [ag.int64(v) for _, v in rows]
    total = sum(abs(v) for v in values)
    positives = any(v > 0 for v in values)
    negatives = any(v < 0 for v in values)
    out = [QUANT_HEADER]
    for (label, _), v in zip(rows, values, strict=True):
        out.append(f"{label:>16} ")
        out.append(quantline(v, normal, total, positives, negatives))
    return "".join(out)


def quantize_text(cell: Sequence[int], normal: int) -> str:
    data = [ag.int64(c) for c in cell]
    zero = ag.QUANTIZE_ZERO
    first, last = _bin_range(data, (zero - 1, zero + 1), len(data) - 1)
    rows = [(str(ag.quantize_bucket_value(i)), data[i]) for i in range(first, last + 1)]
    return _histogram(rows, normal)


def lquantize_text(cell: Sequence[int], normal: int, params: Sequence[int]) -> str:
    base, step, levels = params
    first, last = _bin_range([ag.int64(c) for c in cell], (0, 2), len(cell))

    def label(i: int) -> str:
        if i == 0:
            return f"< {base}"
        if i == levels + 1:
            return f">= {base + levels * step}"
        return str(base + (i - 1) * step)

    return _histogram([(label(i), cell[i]) for i in range(first, last + 1)], normal)


def llquantize_text(cell: Sequence[int], normal: int, params: Sequence[int]) -> str:
    values = ag.llquantize_values(*params)
    first, last = _bin_range([ag.int64(c) for c in cell], (0, 1), len(cell))

    def label(i: int) -> str:
        if i == 0:
            return f"< {values[0]}"
        if i == len(cell) - 1:
            return f">= {values[i - 1]}"
        return str(values[i - 1])

    return _histogram([(label(i), cell[i]) for i in range(first, last + 1)], normal)


def histogram_text(defn: AggDef, cell: ag.Cell, normal: int) -> str:
    assert isinstance(cell, list)
    if defn.func is AggFunc.QUANTIZE:
        return quantize_text(cell, normal)
    if defn.func is AggFunc.LQUANTIZE:
        return lquantize_text(cell, normal, defn.params)
    return llquantize_text(cell, normal, defn.params)


# -- the sink ------------------------------------------------------------------------


class TextSink:
    """Writes dtrace's text output (``dtrace -n``, with or without ``-q``)."""

    def __init__(
        self,
        out: TextIO,
        *,
        quiet: bool = False,
        symbolize: Symbolizer | None = None,
        strsize: int = 256,
        stackindent: int = 14,
        rawbytes: bool = False,
    ) -> None:
        self.out = out
        self.quiet = quiet
        self.strsize = strsize
        self.stackindent = stackindent
        self.rawbytes = rawbytes
        self.symbolize = cached_symbolizer(symbolize)
        self._heading = False

    def write(self, text: str) -> None:
        try:
            self.out.write(text)
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            self.out.write(raw.decode(getattr(self.out, "encoding", None) or "utf-8", "replace"))

    # -- records -------------------------------------------------------------------

    def ecb(self, cpu: int, probe: ProbeInfo, outputs: Sequence[Output]) -> None:
        parts: list[str] = []
        if not self.quiet:
            if not self._heading:
                parts.append(HEADING)
                self._heading = True
            parts.append(f"{cpu:3d} {probe.id:6d} {probe.function + ':' + probe.name:>32} ")
        parts.extend(self.render(o) for o in outputs)
        if not self.quiet:
            parts.append("\n")
        self.write("".join(parts))

    def render(self, o: Output) -> str:
        if isinstance(o, PrintfOut):
            return o.formatter.format(o.args, FormatEnv(self.symbolize, o.pid))
        if isinstance(o, TraceOut):
            return self.trace_text(o.value, o.type)
        if isinstance(o, PrintaOut):
            return self.printa_text(o)
        if isinstance(o, StackOut):
            return self.stack_text(o.stack)
        if isinstance(o, SymOut):
            return f"  {sym_text(o.sym, self.symbolize):<50}"
        assert isinstance(o, MemOut)
        return print_bytes(o.data, -33, self.quiet, True, self.rawbytes)

    def trace_text(self, value: object, t: DType) -> str:
        if t.kind is Kind.INT:
            assert isinstance(value, int)
            size = t.size
            n = int_record_text(value, size)
            return str(n) if self.quiet else f" {n:{_INT_WIDTH[size]}d}"
        if t.kind is Kind.STRING:
            assert isinstance(value, str)
            data = string_record(value, self.strsize)
        else:
            assert isinstance(value, bytes)
            data = value
        return print_bytes(data, -33, self.quiet, False, self.rawbytes)

    def stack_text(self, stack: StackValue) -> str:
        return format_stack(stack, self.symbolize, self.stackindent, lambda s: s)

    # -- aggregations ----------------------------------------------------------------

    def key_text(self, key: object, t: DType) -> str:
        if t.kind is Kind.INT:
            assert isinstance(key, int)
            return f" {int_record_text(key, t.size):{_INT_WIDTH[t.size]}d}"
        if t.kind is Kind.STRING:
            assert isinstance(key, str)
            return print_bytes(string_record(key, self.strsize), -50, False, False, self.rawbytes)
        if t.kind is Kind.STACK:
            assert isinstance(key, StackValue)
            return self.stack_text(key)
        assert isinstance(key, SymAddr)
        return f"  {sym_text(key, self.symbolize):<50}"

    def value_text(self, defn: AggDef, cell: ag.Cell, normal: int) -> str:
        if ag.is_histogram(defn.func):
            return histogram_text(defn, cell, normal)
        return f" {ag.scalar_value(defn.func, cell, normal):16d}"

    def rows_text(self, table: AggTable) -> str:
        out: list[str] = []
        types = table.defs[0].key_types
        pairs = list(zip(table.defs, table.normals, strict=True))
        for key, cells in table.rows:
            out.extend(self.key_text(k, t) for k, t in zip(key, types, strict=True))
            out.extend(self.value_text(d, c, n) for (d, n), c in zip(pairs, cells, strict=True))
            out.append("\n")
        return "".join(out)

    def printa_text(self, o: PrintaOut) -> str:
        table = o.table
        if o.formatter is None:
            return "\n" + self.rows_text(table)
        env = FormatEnv(self.symbolize)
        out: list[str] = []
        for key, cells in table.rows:
            cellfmt = [
                self._cell_formatter(d, c, n)
                for d, n, c in zip(table.defs, table.normals, cells, strict=True)
            ]
            out.append(o.formatter.format(key, env, cellfmt))
        return "".join(out)

    def _cell_formatter(
        self, defn: AggDef, cell: ag.Cell, normal: int
    ) -> Callable[[IntFormat], str]:
        if ag.is_histogram(defn.func):
            return lambda fmt: histogram_text(defn, cell, normal)
        value = ag.scalar_value(defn.func, cell, normal)
        return lambda fmt: fmt(value)

    def finish(self, tables: Sequence[AggTable]) -> None:
        self.write("\n" + "".join(self.rows_text(t) for t in tables))
        self.out.flush()
