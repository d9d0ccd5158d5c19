"""The D lexer: two modes, as dtrace's, because probe descriptions are not C.

In the outer mode (between clauses) a word like ``pid$target:a.out:main:entry``
or ``profile-997`` is one probe-specifier token (an integer there is a probe
id); inside predicates and clause bodies the usual C tokens apply. ``/`` is
the one character whose meaning depends on what follows: it closes a
predicate when the next non-blank character is ``{``, ``;``, ``/`` or the end
of input, and divides otherwise.

Macro references (``$target``, ``$1``, ``$$1``) are replaced here, in
expressions, by the token their value spells, as dtrace does; in probe
descriptions they are expanded inside the specifier text.

Control lines (``#pragma D option quiet``) may appear anywhere at the start of
a line; the lexer collects them for the parser and otherwise skips them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dtproc.d import dtypes
from dtproc.d.errors import DCompileError, Pos


class T(enum.Enum):
    """Token kinds."""

    IDENT = "identifier"
    TNAME = "type name"
    KEYWORD = "keyword"
    INT = "integer"
    STRING = "string"
    AGG = "aggregation"
    PSPEC = "probe specifier"
    OP = "operator"
    EPRED = "end of predicate"
    EOF = "end of input"


class Mode(enum.Enum):
    OUTER = "outer"
    EXPR = "expr"


@dataclass(frozen=True, slots=True)
class Token:
    kind: T
    text: str
    pos: Pos
    end: int  # offset just past the token
    value: int | str | None = None
    itype: dtypes.DType | None = None  # the type of an integer constant


@dataclass(frozen=True, slots=True)
class ControlLine:
    """A ``#`` line: its words after the ``#`` and where it starts."""

    words: tuple[str, ...]
    pos: Pos


KEYWORDS = frozenset(
    """auto break case char const continue counter default do double else enum extern
    float for goto if import inline int long offsetof probe provider register restrict
    return self short signed sizeof static string stringof struct switch this translator
    typedef union unsigned userland void volatile while xlate""".split()
)

# Outer-mode words that start a declaration rather than a probe description.
DECL_KEYWORDS = frozenset(
    """auto char const double enum extern float import int long register restrict self
    short signed static string struct this typedef union unsigned void volatile""".split()
)

OPERATORS = sorted(
    """<<= >>= ... -> ++ -- && || ^^ == != <= >= << >> += -= *= /= %= &= ^= |=
    ( ) [ ] { } , ; : ? . + - * / % ~ ! = < > & | ^""".split(),
    key=len,
    reverse=True,
)

_WS = " \t\n\r\f\v"
_IDENT_RE = re.compile(r"[A-Za-z_`][0-9A-Za-z_`]*")
_PSPEC_RE = re.compile(r"[-$:A-Za-z_.?*\\\[\]!][-$:0-9A-Za-z_.`?*\\\[\]!]*")
_INT_RE = re.compile(r"(0[xX][0-9A-Fa-f]+|[0-9]+)([uU]?[lL]?[lL]?)")
_FLOAT_TAIL_RE = re.compile(r"[0-9]*\.[0-9]*|[0-9]*[eE][-+]?[0-9]|[0-9]*[fF]")
_MACRO_RE = re.compile(r"\$\$?([0-9]+|[A-Za-z_][0-9A-Za-z_]*)")

_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "v": "\v",
    "b": "\b",
    "r": "\r",
    "f": "\f",
    "a": "\a",
    "\\": "\\",
    '"': '"',
}


def unescape(text: str) -> str:
    """Convert escape sequences as dtrace's stresc2chr does (which is not quite C)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != "\\" or i >= n:
            out.append(c)
            continue
        c = text[i]
        i += 1
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c in "01234567":
            j = i
            while j < n and j < i + 2 and text[j] in "01234567":
                j += 1
            out.append(chr(int(text[i - 1 : j], 8) & 0xFF))
            i = j
        elif c == "x":
            j = i
            while j < n and text[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(text[i:j] or "0", 16) & 0xFF))
            i = j
        else:
            out.append("\\" + c)  # dtrace keeps unknown escapes (\? \' \c) as written
    return "".join(out)


def is_ident_or_number(text: str) -> bool:
    """dtrace's !strbadidnum: a valid identifier or integer spelling."""
    if _IDENT_RE.fullmatch(text) and "`" not in text:
        return True
    body = text[1:] if text[:1] in "+-" else text
    try:
        int(body, 0)
    except ValueError:
        return False
    return bool(body)


class Lexer:
    """Tokenizes on demand at an offset, in the mode the parser asks for."""

    def __init__(
        self, source: str, macros: Mapping[str, str | int], *, pspec: bool = False
    ) -> None:
        self.src = source
        # dtrace's DTRACE_C_PSPEC (set for -n/-P/-m/-f/-i arguments): outside
        # clauses a word is a probe description even if it names a type.
        self.pspec = pspec
        self.macros = {k: str(v) for k, v in macros.items()}
        self.control_lines: dict[int, ControlLine] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]

    # -- positions -----------------------------------------------------------

    def pos(self, off: int) -> Pos:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= off:
                lo = mid
            else:
                hi = mid - 1
        return Pos(lo + 1, off - self._line_starts[lo] + 1)

    def error(self, msg: str, off: int) -> DCompileError:
        return DCompileError(msg, self.pos(off), self.src)

    # -- skipping ----------------------------------------------------------

    def skip(self, off: int) -> int:
        """Skip blanks, comments and control lines from *off*."""
        src, n = self.src, len(self.src)
        while off < n:
            c = src[off]
            if c in _WS:
                off += 1
            elif src.startswith("/*", off):
                end = src.find("*/", off + 2)
                if end < 0:
                    raise self.error("end-of-file encountered before matching */", off)
                inner = src.find("/*", off + 2, end)
                if inner >= 0:
                    raise self.error("/* encountered inside a comment", inner)
                off = end + 2
            elif src.startswith("//", off):
                end = src.find("\n", off)
                off = n if end < 0 else end
            elif c == "\\" and src.startswith("\\\n", off):
                off += 2
            elif c == "#" and self._at_line_start(off):
                off = self._control_line(off)
            else:
                break
        return off

    def _at_line_start(self, off: int) -> bool:
        i = off - 1
        while i >= 0 and self.src[i] in " \t\f\v":
            i -= 1
        return i < 0 or self.src[i] == "\n"

    def _control_line(self, off: int) -> int:
        end = self.src.find("\n", off)
        end = len(self.src) if end < 0 else end
        text = self.src[off + 1 : end]
        if not text.startswith("!") and off not in self.control_lines:
            self.control_lines[off] = ControlLine(tuple(_split_control(text)), self.pos(off))
        return end

    # -- tokens --------------------------------------------------------------

    def token(self, off: int, mode: Mode) -> Token:
        off = self.skip(off)
        if off >= len(self.src):
            return Token(T.EOF, "", self.pos(off), off)
        if mode is Mode.OUTER:
            return self._outer(off)
        return self._expr(off)

    def _outer(self, off: int) -> Token:
        src = self.src
        c = src[off]
        if c in "{/,":
            return Token(T.OP, c, self.pos(off), off + 1)
        if c.isdigit():
            return self._number(off)  # a probe id where a description may be
        m = _PSPEC_RE.match(src, off)
        if m is None:
            raise self.error(f'syntax error near "{c}"', off)
        text = m.group()
        if text in DECL_KEYWORDS:
            return Token(T.KEYWORD, text, self.pos(off), m.end())
        if text in dtypes.TYPEDEFS and not self.pspec:
            return Token(T.TNAME, text, self.pos(off), m.end())
        return Token(T.PSPEC, text, self.pos(off), m.end())

    def _expr(self, off: int) -> Token:
        src = self.src
        c = src[off]
        if c == "$":
            return self._macro(off)
        if c.isalpha() or c in "_`":
            m = _IDENT_RE.match(src, off)
            assert m is not None
            return self._word(m.group(), off, m.end())
        if c.isdigit() or (c == "." and off + 1 < len(src) and src[off + 1].isdigit()):
            return self._number(off)
        if c == "@":
            m = _IDENT_RE.match(src, off + 1)
            if m is not None and "`" not in m.group():
                return Token(T.AGG, "@" + m.group(), self.pos(off), m.end(), m.group())
            return Token(T.AGG, "@", self.pos(off), off + 1, "_")
        if c == '"':
            return self._string(off)
        if c == "'":
            return self._char(off)
        if c == "/" and not src.startswith("/=", off):
            nxt = self.skip_blanks(off + 1)
            if nxt >= len(src) or src[nxt] in ";{/":
                return Token(T.EPRED, "/", self.pos(off), off + 1)
        for op in OPERATORS:
            if src.startswith(op, off):
                return Token(T.OP, op, self.pos(off), off + len(op))
        raise self.error(f'syntax error near "{c}"', off)

    def skip_blanks(self, off: int) -> int:
        while off < len(self.src) and self.src[off] in _WS:
            off += 1
        return off

    def _word(self, text: str, off: int, end: int) -> Token:
        if text in KEYWORDS:
            return Token(T.KEYWORD, text, self.pos(off), end)
        if text in dtypes.TYPEDEFS:
            return Token(T.TNAME, text, self.pos(off), end)
        return Token(T.IDENT, text, self.pos(off), end, text)

    def _number(self, off: int) -> Token:
        src = self.src
        m = _INT_RE.match(src, off)
        if m is None or (_FLOAT_TAIL_RE.match(src, m.end(1)) and not m.group(2)):
            raise self.error("floating-point constants are not permitted", off)
        digits, suffix = m.group(1), m.group(2)
        end = m.end()
        value = _parse_int(digits)
        if value is None:
            bad = next(ch for ch in digits[1:] if ch in "89")
            raise self.error(f"constant {digits}{suffix} contains invalid digit {bad}", off)
        return self._int_token(value, suffix.lower(), digits[0] != "0", off, end)

    def _int_token(self, value: int, suffix: str, decimal: bool, off: int, end: int) -> Token:
        if value >= 1 << 64:
            raise self.error(f"constant {self.src[off:end]} results in integer overflow", off)
        itype = dtypes.literal_type(value, suffix, decimal)
        if itype is None:
            raise self.error(
                f"integer constant 0x{value:x} cannot be represented in any built-in integral type",
                off,
            )
        return Token(T.INT, self.src[off:end], self.pos(off), end, value, itype)

    def _closing_quote(self, off: int, what: str) -> int:
        """Where the literal opened at *off* closes; it may not span lines."""
        src, quote = self.src, self.src[off]
        i = off + 1
        while i < len(src) and src[i] != quote:
            if src[i] == "\n":
                break
            i += 2 if src[i] == "\\" else 1
        if i >= len(src) or src[i] != quote:
            raise self.error(f"newline encountered in {what}", off)
        return i

    def _string(self, off: int) -> Token:
        src = self.src
        i = self._closing_quote(off, "string literal")
        # A string constant is a C string: an escaped NUL ends it.
        value = unescape(src[off + 1 : i]).split("\0", 1)[0]
        return Token(T.STRING, src[off : i + 1], self.pos(off), i + 1, value)

    def _char(self, off: int) -> Token:
        src = self.src
        i = self._closing_quote(off, "character constant")
        chars = unescape(src[off + 1 : i]).encode("latin-1", "replace")
        if not chars:
            raise self.error("empty character constant", off)
        if len(chars) > 8:
            raise self.error("character constant is too long", off)
        # dtrace packs the bytes into an integer, first character highest,
        # and types it like a decimal constant: 'a' is the int 97.
        value = int.from_bytes(chars, "big")
        itype = dtypes.literal_type(value, "", True)
        return Token(T.INT, src[off : i + 1], self.pos(off), i + 1, value, itype)

    def _macro(self, off: int) -> Token:
        m = _MACRO_RE.match(self.src, off)
        if m is None:
            raise self.error('syntax error near "$"', off)
        name = m.group(1)
        is_string = m.group().startswith("$$")
        if name not in self.macros:
            what = "argument" if name.isdigit() else "variable"
            raise self.error(f"macro {what} {m.group()} is not defined", off)
        value = self.macros[name]
        pos, end = self.pos(off), m.end()
        if is_string:
            return Token(T.STRING, m.group(), pos, end, unescape(value))
        if not name.isdigit():
            # Macro variables ($target, $pid ...) are integers (id_t) in dtrace.
            number = int(value, 0) if is_ident_or_number(value) else 0
            return Token(T.INT, m.group(), pos, end, number, dtypes.INT)
        if not is_ident_or_number(value):
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return Token(T.STRING, m.group(), pos, end, unescape(value))
        if value[0].isdigit() or value[0] in "+-":
            return self._macro_int(value, m.group(), pos, end)
        return self._word(value, off, end)

    def _macro_int(self, value: str, text: str, pos: Pos, end: int) -> Token:
        sign = value[0] if value[0] in "+-" else ""
        body = value[len(sign) :]
        m = _INT_RE.fullmatch(body)
        number = _parse_int(m.group(1)) if m else None
        if m is None or number is None:
            raise DCompileError(f"macro argument {text} is not a valid integer: {value}", pos)
        itype = dtypes.literal_type(number, m.group(2).lower(), body[0] != "0")
        if itype is None or number >= 1 << 64:
            raise DCompileError(
                f"macro argument {text} constant {value} results in integer overflow", pos
            )
        # A sign in the macro text becomes a unary operator, as in dtrace.
        return Token(T.INT, text, pos, end, -number if sign == "-" else number, itype)


def _parse_int(digits: str) -> int | None:
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    if len(digits) > 1 and digits[0] == "0":
        return int(digits, 8) if all(c in "01234567" for c in digits) else None
    return int(digits)


def _split_control(text: str) -> list[str]:
    """Split a control line into words; quoted strings stay whole (quotes removed)."""
    return [
        w[1:-1] if len(w) > 1 and w[0] == w[-1] == '"' else w
        for w in re.findall(r'"[^"]*"|[^\s"]+', text)
    ]
