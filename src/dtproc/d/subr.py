"""D's string and memory subroutines, with dtrace's edge-case semantics.

Strings are limited to ``strsize - 1`` bytes (the ``strsize`` option, 256 by
default), as dtrace's are; lengths and offsets count bytes of the UTF-8 text.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dtproc.d.errors import DFault, FaultKind
from dtproc.d.values import MemoryFault, ProbeContext

_ENC = "utf-8"
_ERR = "surrogateescape"


def to_bytes(s: str) -> bytes:
    return s.encode(_ENC, _ERR)


def from_bytes(b: bytes) -> str:
    return b.decode(_ENC, _ERR)


def limit(s: str, strsize: int) -> str:
    """Truncate to what fits in a dtrace string buffer (strsize - 1 bytes)."""
    if len(s) < strsize and s.isascii():
        return s
    b = to_bytes(s)
    return s if len(b) < strsize else from_bytes(b[: strsize - 1])


def strlen(s: str) -> int:
    return len(s) if s.isascii() else len(to_bytes(s))


def substr(s: str, index: int, length: int | None, strsize: int) -> str:
    """dtrace's substr(): negative index counts from the end, negative length too."""
    b = to_bytes(s)
    n = len(b)
    remaining = strsize if length is None else length
    if index < 0:
        index += n
        if index < 0 < index + remaining:
            remaining += index
            index = 0
    if index >= n or index < 0:
        return ""
    if remaining < 0:
        remaining += n - index
    elif index + remaining > strsize:
        remaining = strsize - index
    return limit(from_bytes(b[index : index + max(remaining, 0)]), strsize)


def _path_bounds(b: bytes) -> tuple[int, int, int]:
    """(first, last) byte of the basename and last byte of the dirname, as dtrace finds them."""
    i = len(b) - 1
    while i >= 0 and b[i] == 0x2F:
        i -= 1
    lastbase = i
    while i >= 0 and b[i] != 0x2F:
        i -= 1
    firstbase = i + 1 if i >= 0 else -1
    while i >= 0 and b[i] == 0x2F:
        i -= 1
    lastdir = i
    return firstbase, lastbase, lastdir


def split_path(s: str) -> tuple[str, str]:
    """(dirname, basename) as dtrace computes them: "/" for all slashes, "." for none."""
    b = to_bytes(s) or b"."
    firstbase, lastbase, lastdir = _path_bounds(b)
    if lastbase == -1:
        return "/", "/"
    if firstbase == -1:
        return ".", from_bytes(b[: lastbase + 1])
    return from_bytes(b[: max(lastdir, 0) + 1]), from_bytes(b[firstbase : lastbase + 1])


def strchr(s: str, c: int, last: bool) -> str:
    b = to_bytes(s)
    ch = bytes([c & 0xFF])
    i = b.rfind(ch) if last else b.find(ch)
    return "" if i < 0 else from_bytes(b[i:])


def strstr(s: str, sub: str) -> str:
    b = to_bytes(s)
    i = b.find(to_bytes(sub))
    return "" if i < 0 else from_bytes(b[i:])


def index(s: str, sub: str, pos: int | None, reverse: bool) -> int:
    """index()/rindex() with Perl's position rules, as dtrace implements them."""
    b, t = to_bytes(s), to_bytes(sub)
    n = len(b)
    if not t and not b:
        return 0
    if not reverse:
        start = 0 if pos is None or pos < 0 else pos
        if start > n:
            return n if not t else -1
        return b.find(t, start)
    end = n if pos is None else pos
    if end < 0:
        return 0 if not t else -1
    end = min(end, n)
    return b.rfind(t, 0, end + len(t))


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _check_base(base: int) -> None:
    if base <= 1 or base > 36:
        raise DFault(FaultKind.ILLOP)


def strtoll(s: str, base: int) -> int:
    _check_base(base)
    text = s.lstrip(" \t\n\r\f\v")
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if base == 16 and text[:2].lower() == "0x":
        text = text[2:]
    value = 0
    for ch in text.lower():
        d = _DIGITS.find(ch)
        if d < 0 or d >= base:
            break
        value = value * base + d
    value *= sign
    return max(min(value, (1 << 63) - 1), -(1 << 63))


def lltostr(v: int, base: int) -> str:
    _check_base(base)
    val = -v if base == 10 and v < 0 else v & ((1 << 64) - 1)
    digits = ""
    while val:
        digits = _DIGITS[val % base] + digits
        val //= base
    if v == 0 and base == 16:
        digits = "0" + digits
    if base == 16:
        digits = "x" + digits
    if v == 0 or base in (8, 16):
        digits = "0" + digits
    if v < 0 and base == 10:
        digits = "-" + digits
    return digits


def case(s: str, upper: bool) -> str:
    """toupper()/tolower(): ASCII letters only, as in the C locale."""
    table = _UPPER if upper else _LOWER
    return s.translate(table)


_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def byteswap(v: int, size: int) -> int:
    return int.from_bytes(v.to_bytes(size, "little", signed=False), "big")


def copyin(ctx: ProbeContext, addr: int, n: int) -> bytes:
    """n bytes of the target's memory, or an invalid-address fault."""
    addr &= (1 << 64) - 1
    if n <= 0:
        return b""
    try:
        data = ctx.read_memory(addr, n)
    except MemoryFault as exc:
        raise DFault(FaultKind.BADADDR, exc.addr) from None
    if len(data) < n:
        raise DFault(FaultKind.BADADDR, addr + len(data))
    return data


def copyinstr(ctx: ProbeContext, addr: int, maxlen: int | None, strsize: int) -> str:
    """A NUL-terminated string of the target, cut at strsize - 1 (or maxlen) bytes."""
    addr &= (1 << 64) - 1
    n = strsize - 1 if maxlen is None else min(max(maxlen, 0), strsize - 1)
    try:
        data = ctx.read_memory(addr, n) if n else b""
    except MemoryFault as exc:
        raise DFault(FaultKind.BADADDR, exc.addr) from None
    end = data.find(b"\0")
    return from_bytes(data if end < 0 else data[:end])


def buffer_string(data: bytes) -> str:
    """stringof(copyin(...)): the bytes up to the first NUL."""
    end = data.find(b"\0")
    return from_bytes(data if end < 0 else data[:end])


def make_rand(seed: int | None = None) -> Callable[[], int]:
    """rand(): a pseudo-random int, like dtrace's (no promise of its sequence)."""
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32) - (1 << 31)
