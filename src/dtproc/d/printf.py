"""dtrace's printf(): format parsing, type checking and C-exact formatting.

The conversion table, the checks and the messages follow dtrace's
``dt_printf.c``: ``%d`` prints a signed type as signed and an unsigned one as
unsigned; ``%hd``/``%ld``/``%lld`` demand an argument of that exact size and
signedness; ``%p`` prints hex without ``0x``; ``%a``, ``%A`` name addresses;
``%k`` prints a stack; ``%Y`` a wall-clock time; ``%@`` (printa only) the
aggregation's value. A precision of 0 is ignored, as dtrace drops it when it
rebuilds the format (so ``%.0s`` prints the whole string).

How a value is widened before C formatting is also dtrace's: a ``%d`` of a
``char`` -17 prints 239, because dtrace loads sub-int values unsigned for
``%d``; ``%i`` sign-extends. The C formatting itself is done here, exactly as
glibc's ``snprintf`` does it (the tests check against it).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtproc.d import dtypes
from dtproc.d.dtypes import DType, Kind, Rank
from dtproc.d.values import StackValue, SymAddr, Symbolizer


class FormatError(Exception):
    """A format string or argument list that dtrace rejects; str() is dtrace's message."""


class Check(enum.Enum):
    """Which argument types a conversion accepts (dtrace's pfcheck_* functions)."""

    ADDR = "addr"  # %p: pointer or integer
    KADDR = "kaddr"  # %a: pointer, integer or symbol address
    UADDR = "uaddr"  # %A: _usymaddr, or pointer/integer when $target is set
    STACK = "stack"
    TIME = "time"  # 64-bit integer
    STR = "str"
    CSI = "csi"  # char, short or int
    FP = "fp"  # floating point: no such values in this subset
    XINT = "xint"  # any integer
    DINT = "dint"  # any integer; prints signed or unsigned by its type
    XSHORT = "xshort"
    XLONG = "xlong"
    XLONGLONG = "xlonglong"
    TYPE = "type"  # same size and signedness as the named prototype
    WSTR = "wstr"  # wchar_t []: no such values in this subset


class Printer(enum.Enum):
    SINT = "sint"
    UINT = "uint"
    DINT = "dint"
    CHAR = "char"
    STR = "str"
    ESTR = "estr"  # %S: string with C escapes
    ECHR = "echr"  # %C: char with C escapes
    ADDR = "addr"  # %a
    UADDR = "uaddr"  # %A
    STACK = "stack"
    TIME = "time"  # %Y
    TIME822 = "time822"  # %T
    FP = "fp"
    PCT = "pct"


@dataclass(frozen=True, slots=True)
class ConvSpec:
    name: str
    ofmt: str  # the C conversion character used for output
    proto: str  # prototype text for error messages
    check: Check
    printer: Printer
    ptype: DType | None = None  # for Check.TYPE


_XINT = "char, short, int, long, or long long"
_CSI = "char, short, or int"
_FPP = "float, double, or long double"
_ADDRP = "pointer or integer"
_UADDRP = "pointer or integer (with -p/-c) or _usymaddr (without -p/-c)"
_CSTR = "char [] or string (or use stringof)"

_T = dtypes.BASE_TYPES


def _spec(name: str, ofmt: str, proto: str, check: Check, printer: Printer) -> ConvSpec:
    ptype = _T.get(proto) if check is Check.TYPE else None
    return ConvSpec(name, ofmt, proto, check, printer, ptype)


CONVERSIONS: dict[str, ConvSpec] = {
    s.name: s
    for s in (
        _spec("a", "s", _ADDRP, Check.KADDR, Printer.ADDR),
        _spec("A", "s", _UADDRP, Check.UADDR, Printer.UADDR),
        _spec("c", "c", _CSI, Check.CSI, Printer.CHAR),
        _spec("C", "s", _CSI, Check.CSI, Printer.ECHR),
        _spec("d", "d", _XINT, Check.DINT, Printer.DINT),
        _spec("e", "e", _FPP, Check.FP, Printer.FP),
        _spec("E", "E", _FPP, Check.FP, Printer.FP),
        _spec("f", "f", _FPP, Check.FP, Printer.FP),
        _spec("g", "g", _FPP, Check.FP, Printer.FP),
        _spec("G", "G", _FPP, Check.FP, Printer.FP),
        _spec("hd", "d", "short", Check.TYPE, Printer.SINT),
        _spec("hi", "i", "short", Check.TYPE, Printer.SINT),
        _spec("ho", "o", "unsigned short", Check.TYPE, Printer.UINT),
        _spec("hu", "u", "unsigned short", Check.TYPE, Printer.UINT),
        _spec("hx", "x", "short", Check.XSHORT, Printer.UINT),
        _spec("hX", "X", "short", Check.XSHORT, Printer.UINT),
        # Extension: C's hh modifiers (dtrace has none) for char-sized values.
        _spec("hhd", "d", "char", Check.TYPE, Printer.SINT),
        _spec("hhi", "i", "char", Check.TYPE, Printer.SINT),
        _spec("hho", "o", "unsigned char", Check.TYPE, Printer.UINT),
        _spec("hhu", "u", "unsigned char", Check.TYPE, Printer.UINT),
        _spec("hhx", "x", "unsigned char", Check.TYPE, Printer.UINT),
        _spec("hhX", "X", "unsigned char", Check.TYPE, Printer.UINT),
        _spec("i", "i", _XINT, Check.XINT, Printer.SINT),
        _spec("k", "s", "stack", Check.STACK, Printer.STACK),
        _spec("lc", "c", "int", Check.TYPE, Printer.CHAR),
        _spec("ld", "d", "long", Check.TYPE, Printer.SINT),
        _spec("li", "i", "long", Check.TYPE, Printer.SINT),
        _spec("lo", "o", "unsigned long", Check.TYPE, Printer.UINT),
        _spec("lu", "u", "unsigned long", Check.TYPE, Printer.UINT),
        _spec("ls", "ls", "wchar_t []", Check.WSTR, Printer.STR),
        _spec("lx", "x", "long", Check.XLONG, Printer.UINT),
        _spec("lX", "X", "long", Check.XLONG, Printer.UINT),
        _spec("lld", "d", "long long", Check.TYPE, Printer.SINT),
        _spec("lli", "i", "long long", Check.TYPE, Printer.SINT),
        _spec("llo", "o", "unsigned long long", Check.TYPE, Printer.UINT),
        _spec("llu", "u", "unsigned long long", Check.TYPE, Printer.UINT),
        _spec("llx", "x", "long long", Check.XLONGLONG, Printer.UINT),
        _spec("llX", "X", "long long", Check.XLONGLONG, Printer.UINT),
        _spec("Le", "e", "long double", Check.FP, Printer.FP),
        _spec("LE", "E", "long double", Check.FP, Printer.FP),
        _spec("Lf", "f", "long double", Check.FP, Printer.FP),
        _spec("Lg", "g", "long double", Check.FP, Printer.FP),
        _spec("LG", "G", "long double", Check.FP, Printer.FP),
        _spec("o", "o", _XINT, Check.XINT, Printer.UINT),
        _spec("p", "x", _ADDRP, Check.ADDR, Printer.UINT),
        _spec("s", "s", _CSTR, Check.STR, Printer.STR),
        _spec("S", "s", _CSTR, Check.STR, Printer.ESTR),
        _spec("T", "s", "int64_t", Check.TIME, Printer.TIME822),
        _spec("u", "u", _XINT, Check.XINT, Printer.UINT),
        _spec("wc", "c", "int", Check.TYPE, Printer.CHAR),
        _spec("ws", "ls", "wchar_t []", Check.WSTR, Printer.STR),
        _spec("x", "x", _XINT, Check.XINT, Printer.UINT),
        _spec("X", "X", _XINT, Check.XINT, Printer.UINT),
        _spec("Y", "s", "int64_t", Check.TIME, Printer.TIME),
        _spec("%", "%", "void", Check.TYPE, Printer.PCT),
    )
}

_TYPE_PROTOS: dict[str, DType] = {"int": dtypes.INT, "long": dtypes.LONG}


@dataclass(frozen=True, slots=True)
class Conversion:
    """One ``%...`` conversion of a format string."""

    number: int  # 1-based, counting every '%' as dtrace does
    spec: ConvSpec
    flags: str  # subset of "#0-+' " in that order
    width: int
    prec: int
    dyn_width: bool
    dyn_prec: bool
    agg: bool


@dataclass(frozen=True, slots=True)
class Piece:
    """Literal text, then optionally a conversion."""

    prefix: str
    conv: Conversion | None


def parse_format(fmt: str) -> tuple[Piece, ...]:
    """Split a format into pieces, with dtrace's diagnostics for malformed ones."""
    pieces: list[Piece] = []
    q = 0
    number = 0
    while (p := fmt.find("%", q)) >= 0:
        number += 1
        conv, end = _parse_conversion(fmt, p, number)
        pieces.append(Piece(fmt[q:p], conv))
        q = end
    if q < len(fmt) or not fmt:
        pieces.append(Piece(fmt[q:], None))
    return tuple(pieces)


def _parse_conversion(fmt: str, p: int, number: int) -> tuple[Conversion, int]:
    flags: set[str] = set()
    width = prec = 0
    digits = dot = 0
    dyn_width = dyn_prec = agg = False
    name = ""
    i = p
    while True:
        i += 1
        c = fmt[i] if i < len(fmt) else ""
        if c.isdigit():
            if dot == 0 and digits == 0 and c == "0":
                flags.add("0")
                flags.discard("-")
                continue
            j = i
            while j < len(fmt) and fmt[j].isdigit():
                j += 1
            n = int(fmt[i:j])
            if dot:
                prec = n
            else:
                width = n
            i = j - 1
            digits += 1
        elif c == "#":
            flags.add("#")
        elif c == "*":
            if dyn_prec if dot else dyn_width:
                what = "precision" if dot else "width"
                raise FormatError(
                    f"format conversion #{number} has more than one '*' specified "
                    f"for the output {what}"
                )
            if dot:
                dyn_prec = True
            else:
                dyn_width = True
        elif c == "+":
            flags.add("+")
        elif c == "-":
            flags.add("-")
            flags.discard("0")
        elif c == ".":
            if dot:
                raise FormatError(f"format conversion #{number} has more than one '.' specified")
            dot = 1
            digits = 0
        elif c == "?":
            width = 16
        elif c == "@":
            agg = True
        elif c == "'":
            flags.add("'")
        elif c == " ":
            flags.add(" ")
        elif c == "$":
            raise FormatError(
                f"format conversion #{number} uses unsupported positional format (%n$)"
            )
        elif c == "%":
            if fmt[i - 1] == "%":
                name += c
                break
            raise FormatError(
                f"format conversion #{number} cannot be combined with other format flags: %%"
            )
        elif c == "":
            raise FormatError(
                f"format conversion #{number} name expected before end of format string"
            )
        elif c in "hlLw":
            if len(name) < 6:
                name += c
        else:
            name += c
            break
    spec = CONVERSIONS.get(name)
    if spec is None:
        raise FormatError(f"format conversion #{number} is undefined: %{name}")
    ordered = "".join(f for f in "#0-+' " if f in flags)
    return Conversion(number, spec, ordered, width, prec, dyn_width, dyn_prec, agg), i + 1


# -- checking ----------------------------------------------------------------------


def _is_integer(t: DType) -> bool:
    return t.kind is Kind.INT and not t.is_pointer


def accepts(spec: ConvSpec, t: DType, target_defined: bool) -> bool:
    """Whether conversion *spec* accepts an argument of type *t* (dtrace's pfcheck_*)."""
    check = spec.check
    if check is Check.ADDR:
        return t.kind is Kind.INT
    if check is Check.KADDR:
        return t.kind in (Kind.INT, Kind.SYMADDR)
    if check is Check.UADDR:
        return t.kind is Kind.SYMADDR or (target_defined and t.kind is Kind.INT)
    if check is Check.STACK:
        return t.kind is Kind.STACK
    if check is Check.TIME:
        return _is_integer(t) and t.size == 8
    if check is Check.STR:
        return t.kind is Kind.STRING
    if check is Check.CSI:
        return _is_integer(t) and t.size <= 4
    if check in (Check.XINT, Check.DINT):
        return _is_integer(t)
    if check is Check.XSHORT:
        return _is_integer(t) and t.size == 2
    if check is Check.XLONG:
        return _is_integer(t) and t.size == 8 and t.rank is Rank.LONG
    if check is Check.XLONGLONG:
        return _is_integer(t) and (t.rank is Rank.LLONG or t.name in ("int64_t", "uint64_t"))
    if check is Check.TYPE:
        return spec.ptype is not None and _is_integer(t) and t.same_encoding(spec.ptype)
    return False  # FP and WSTR: no such values in this subset


def check_arguments(
    pieces: Sequence[Piece],
    arg_types: Sequence[DType],
    func: str,
    *,
    exact: bool,
    agg_type: DType | None = None,
    target_defined: bool = False,
) -> None:
    """Check argument types against the conversions, as dt_printf_validate does.

    *arg_types* are the value arguments after the format (printf) or the
    aggregation's key types (printa, where *agg_type* is the type ``%@``
    converts: ``uint64_t`` for count(), ``int64_t`` otherwise).
    Raises FormatError with dtrace's message.
    """
    if len(pieces) == 1 and pieces[0].conv is None and not pieces[0].prefix:
        raise FormatError(f"{func}( ) format string is empty")
    j = 0
    for piece in pieces:
        conv = piece.conv
        if conv is None or conv.spec.printer is Printer.PCT:
            continue
        name = conv.spec.name
        for dyn, present in (("*", conv.dyn_width), (".*", conv.dyn_prec)):
            if not present:
                continue
            if j >= len(arg_types):
                raise FormatError(
                    f"{func}( ) prototype mismatch: conversion #{conv.number} (%{name}) is "
                    f'missing a corresponding "{dyn}" argument'
                )
            if not _is_integer(arg_types[j]):
                raise FormatError(
                    f"{func}( ) argument #{j + 2} is incompatible with conversion "
                    f"#{conv.number} prototype:\n\tconversion: % {dyn} {name}\n"
                    f"\t prototype: int\n\t  argument: {arg_types[j]}"
                )
            j += 1
        if conv.agg:
            if agg_type is None:
                raise FormatError(
                    f"%@ conversion requires an aggregation and is not for use with {func}( )"
                )
            what, t = "aggregating action", agg_type
        elif j >= len(arg_types):
            raise FormatError(
                f"{func}( ) prototype mismatch: conversion #{conv.number} (%{name}) is "
                "missing a corresponding value argument"
            )
        else:
            what, t = f"argument #{j + 2}", arg_types[j]
            j += 1
        if not accepts(conv.spec, t, target_defined):
            raise FormatError(
                f"{func}( ) {what} is incompatible with conversion #{conv.number} "
                f"prototype:\n\tconversion: %{name}\n\t prototype: {conv.spec.proto}\n"
                f"\t  argument: {t}"
            )
    if exact and j < len(arg_types):
        raise FormatError(
            f"{func}( ) prototype mismatch: only {j} arguments required by this format string"
        )


# -- C formatting --------------------------------------------------------------------


def c_int(value: int, conv: str, flags: str, width: int, prec: int) -> str:
    """Format like glibc's printf for d i u o x X (value already signed/unsigned)."""
    sign = ""
    if conv in "di":
        if value < 0:
            sign, value = "-", -value
        elif "+" in flags:
            sign = "+"
        elif " " in flags:
            sign = " "
    elif value < 0:
        value &= (1 << 64) - 1
    if conv == "x":
        digits = f"{value:x}"
    elif conv == "X":
        digits = f"{value:X}"
    elif conv == "o":
        digits = f"{value:o}"
    else:
        digits = str(value)
    if prec > 0 and len(digits) < prec:
        digits = "0" * (prec - len(digits)) + digits
    prefix = sign
    if "#" in flags:
        if conv == "o" and digits[0] != "0":
            digits = "0" + digits
        elif conv in "xX" and value != 0:
            prefix += "0" + conv
    body_len = len(prefix) + len(digits)
    if width <= body_len:
        return prefix + digits
    pad = width - body_len
    if "-" in flags:
        return prefix + digits + " " * pad
    if "0" in flags and prec <= 0:
        return prefix + "0" * pad + digits
    return " " * pad + prefix + digits


def c_str(text: str, flags: str, width: int, prec: int) -> str:
    """Format like glibc's %s: precision and width count bytes."""
    if not text.isascii():
        raw = text.encode("utf-8", "surrogateescape")
        if prec > 0:
            raw = raw[:prec]
        if len(raw) < width:
            pad = b" " * (width - len(raw))
            raw = raw + pad if "-" in flags else pad + raw
        return raw.decode("utf-8", "surrogateescape")
    if prec > 0:
        text = text[:prec]
    if len(text) >= width:
        return text
    return text.ljust(width) if "-" in flags else text.rjust(width)


def c_char(value: int, flags: str, width: int) -> str:
    """glibc's %c: the low byte of the value, padded with spaces."""
    ch = bytes([value & 0xFF]).decode("utf-8", "surrogateescape")
    return c_str(ch, flags, width, 0)


_ESC = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
}


def escape(text: str) -> str:
    """C escapes for non-printing characters (dtrace's strchr2esc), for %S and %C."""
    out: list[str] = []
    for ch in text:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            for byte in ch.encode("utf-8", "surrogateescape"):
                out.append(f"\\{byte:03o}")
    return "".join(out)


_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()


def format_walltime(ns: int) -> str:
    """%Y: ``2024 Jan  5 12:00:00`` in local time (ctime's fields, year first)."""
    tm = time.localtime(ns // 1_000_000_000)
    return (
        f"{tm.tm_year} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )


def format_rfc822(ns: int) -> str:
    """%T: ``Fri, 05 Jan 2024 12:00:00 UTC`` in local time (C locale names)."""
    tm = time.localtime(ns // 1_000_000_000)
    iso_year = time.strftime("%G", tm)
    return (
        f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {iso_year} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_zone}"
    )


# -- runtime formatting ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormatEnv:
    """What formatting needs from outside: symbols, the pid of the hit, stack indent."""

    symbolize: Symbolizer
    pid: int = 0


IntFormat = Callable[[int], str]
"""Formats a 64-bit aggregation value with the ``%@`` conversion's flags."""

AggText = Callable[[IntFormat], str]
"""One aggregation value for printa: given the conversion, returns its text."""


def format_stack(
    stack: StackValue, symbolize: Symbolizer, indent: int, frame_fmt: Callable[[str], str]
) -> str:
    """dtrace's stack layout: a newline, then one indented frame per line."""
    lines = ["\n"]
    pad = " " * indent
    for pc in stack.pcs:
        if pc == 0:
            break
        lines.append(f"{pad}{frame_fmt(symbolize(stack.pid, pc))}\n")
    return "".join(lines)


class Formatter:
    """A checked format bound to its argument types, ready to render records."""

    def __init__(
        self, pieces: Sequence[Piece], arg_types: Sequence[DType], agg_type: DType | None = None
    ) -> None:
        self.pieces = tuple(pieces)
        self.arg_types = tuple(arg_types)
        self.agg_type = agg_type
        self._steps = self._build()
        self._fast = _python_format(self.pieces, self.arg_types)
        self.uses_pid = any(
            p.conv is not None and p.conv.spec.printer in (Printer.ADDR, Printer.UADDR)
            for p in self.pieces
        )

    def _build(self) -> list[tuple[str, Conversion | None, int, DType | None]]:
        """For each piece: prefix, conversion, index of its first argument, value type."""
        steps: list[tuple[str, Conversion | None, int, DType | None]] = []
        j = 0
        for piece in self.pieces:
            conv = piece.conv
            first = j
            vtype: DType | None = None
            if conv is not None and conv.spec.printer is not Printer.PCT:
                j += conv.dyn_width + conv.dyn_prec
                if conv.agg:
                    vtype = self.agg_type
                else:
                    vtype = self.arg_types[j] if j < len(self.arg_types) else None
                    j += 1
            steps.append((piece.prefix, conv, first, vtype))
        return steps

    def format(self, args: Sequence[object], env: FormatEnv, aggs: Sequence[AggText] = ()) -> str:
        fast = self._fast
        if fast is not None:
            return fast(args)
        out: list[str] = []
        agg_index = 0
        for prefix, conv, first, vtype in self._steps:
            out.append(prefix)
            if conv is None:
                continue
            if conv.spec.printer is Printer.PCT:
                out.append("%")
                continue
            k = first
            width, prec, flags = conv.width, conv.prec, conv.flags
            if conv.dyn_width:
                width = _as_c_int(args[k])
                k += 1
                if width < 0 and "-" not in flags:
                    flags = _with_flag(flags, "-")
            if conv.dyn_prec:
                prec = _as_c_int(args[k])
                k += 1
            width = abs(width)
            if conv.agg:
                if aggs:
                    cell = aggs[min(agg_index, len(aggs) - 1)]
                    agg_index += 1
                    out.append(cell(_int_formatter(conv, self.agg_type, flags, width, prec)))
                continue
            assert vtype is not None
            out.append(_convert(conv, vtype, args[k], flags, width, prec, env))
        return "".join(out)


_PY_INT = frozenset("diuxXo")


def _python_compatible(conv: Conversion, t: DType | None) -> bool:
    """Whether Python's %-formatting prints this conversion exactly as C would."""
    if conv.dyn_width or conv.dyn_prec or conv.agg or t is None:
        return False
    printer = conv.spec.printer
    if printer is Printer.STR:
        return conv.width == 0 and conv.prec == 0
    if printer not in (Printer.SINT, Printer.UINT, Printer.DINT):
        return False
    return (
        "#" not in conv.flags
        and "'" not in conv.flags
        and not ("0" in conv.flags and conv.prec > 0)
    )


def _python_format(
    pieces: Sequence[Piece], types: Sequence[DType]
) -> Callable[[Sequence[object]], str] | None:
    """A fast formatter built on Python's % operator, when every conversion allows it."""
    spec: list[str] = []
    preps: list[Callable[[object], object] | None] = []
    j = 0
    for piece in pieces:
        spec.append(piece.prefix.replace("%", "%%"))
        conv = piece.conv
        if conv is None:
            continue
        if conv.spec.printer is Printer.PCT:
            spec.append("%%")
            continue
        t = types[j] if j < len(types) else None
        if not _python_compatible(conv, t):
            return None
        assert t is not None
        j += 1
        if conv.spec.printer is Printer.STR:
            spec.append("%s")
            preps.append(None)
            continue
        ofmt = _output_char(conv, t)
        spec.append(
            f"%{conv.flags}{conv.width or ''}{f'.{conv.prec}' if conv.prec else ''}"
            f"{'d' if ofmt in 'iu' else ofmt}"
        )
        preps.append(_int_prep(conv.spec.printer, t))
    fmt = "".join(spec)
    n = len(preps)
    if not any(preps):
        if n == 0:
            return lambda args: fmt % ()
        return lambda args: fmt % tuple(args[:n])

    def fast(args: Sequence[object]) -> str:
        return fmt % tuple(a if p is None else p(a) for p, a in zip(preps, args, strict=False))

    return fast


def _int_prep(printer: Printer, t: DType) -> Callable[[object], object] | None:
    """The widening of _int_value, or None when it leaves a normalized value unchanged."""
    size = t.size or 8
    if printer is Printer.SINT and t.signed:
        return None
    if printer is Printer.DINT and t.signed and size >= 4:
        return None
    if printer is not Printer.SINT and not t.signed:
        return None
    return lambda v: _int_value(printer, t, v)[0]  # type: ignore[arg-type]


def _as_c_int(value: object) -> int:
    assert isinstance(value, int)
    return dtypes.to_signed(value, 4)


def _with_flag(flags: str, flag: str) -> str:
    return "".join(f for f in "#0-+' " if f in flags or f == flag).replace("0", "")


def _int_value(printer: Printer, t: DType, value: int) -> tuple[int, str]:
    """Widen *value* as dtrace does before the C call; returns (value, signedness)."""
    size = t.size or 8
    if printer is Printer.SINT or printer is Printer.CHAR:
        return dtypes.to_signed(value, size), "s"
    u = dtypes.to_unsigned(value, size)
    if printer is Printer.DINT and t.signed:
        return dtypes.to_signed(u, 4 if size <= 4 else 8), "s"
    return u, "u"


def _int_formatter(
    conv: Conversion, t: DType | None, flags: str, width: int, prec: int
) -> IntFormat:
    t = t or dtypes.INT64
    ofmt = _output_char(conv, t)

    def fmt(value: int) -> str:
        v, _ = _int_value(conv.spec.printer, t, value)
        return c_int(v, ofmt, flags, width, prec)

    return fmt


def _output_char(conv: Conversion, t: DType) -> str:
    ofmt = conv.spec.ofmt
    if conv.spec.printer is Printer.DINT:
        return "i" if t.signed else "u"
    return ofmt


def _convert(
    conv: Conversion, t: DType, value: object, flags: str, width: int, prec: int, env: FormatEnv
) -> str:
    printer = conv.spec.printer
    if printer in (Printer.SINT, Printer.UINT, Printer.DINT):
        assert isinstance(value, int)
        v, _ = _int_value(printer, t, value)
        return c_int(v, _output_char(conv, t), flags, width, prec)
    if printer is Printer.CHAR:
        assert isinstance(value, int)
        return c_char(value, flags, width)
    if printer is Printer.STR:
        return c_str(str(value), flags, width, prec)
    if printer is Printer.ESTR:
        return c_str(escape(str(value)), flags, width, prec)
    if printer is Printer.ECHR:
        assert isinstance(value, int)
        ch = bytes([value & 0xFF]).decode("utf-8", "surrogateescape")
        return c_str(escape(ch), flags, width, prec)
    if printer in (Printer.ADDR, Printer.UADDR):
        return c_str(_address_text(value, env), flags, width, prec)
    if printer is Printer.STACK:
        assert isinstance(value, StackValue)
        return _stack_conversion(value, flags, width, prec, env)
    assert isinstance(value, int)
    if printer is Printer.TIME:
        return c_str(format_walltime(value), flags, width, prec)
    return c_str(format_rfc822(value), flags, width, prec)


def _address_text(value: object, env: FormatEnv) -> str:
    if isinstance(value, SymAddr):
        return env.symbolize(value.pid, value.addr)
    assert isinstance(value, int)
    return env.symbolize(env.pid, dtypes.to_unsigned(value, 8))


def _stack_conversion(stack: StackValue, flags: str, width: int, prec: int, env: FormatEnv) -> str:
    # dtrace: a left-justified %k uses its width as the frames' indent.
    if "-" in flags:
        return format_stack(stack, env.symbolize, width, lambda s: c_str(s, "", 0, prec))
    return format_stack(stack, env.symbolize, 0, lambda s: c_str(s, flags, width, prec))
