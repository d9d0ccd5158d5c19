"""The D type system of this subset: C integers, strings, stacks, symbols.

Integers follow C on LP64 (char 8, short 16, int 32, long and long long 64
bits) with C's integer promotions and usual arithmetic conversions, and every
value is kept normalized to its type (a ``char`` holds -128..127, an
``unsigned int`` 0..2**32-1). dtrace's DIF registers are 64 bits wide and are
only narrowed at casts and when data is recorded, so an overflowing ``int``
expression may hold more bits there than here; for 64-bit types (arguments,
timestamps, anything ``long``) the two agree exactly.

Types carry the name the user wrote or dtrace declares (``int64_t`` for
``arg0``, ``pid_t`` for ``pid``) because dtrace's error messages print it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Kind(enum.Enum):
    """What sort of value an expression yields."""

    INT = "int"
    STRING = "string"
    STACK = "stack"  # ustack(): a StackValue
    SYMADDR = "symaddr"  # usym()/ufunc()/umod()/uaddr(): a SymAddr
    BUFFER = "buffer"  # copyin(): bytes
    VOID = "void"


class Rank(enum.IntEnum):
    """C integer conversion rank."""

    CHAR = 1
    SHORT = 2
    INT = 3
    LONG = 4
    LLONG = 5


@dataclass(frozen=True, slots=True)
class DType:
    """A D type: its printed name and what it is made of."""

    name: str
    kind: Kind
    size: int = 0
    signed: bool = False
    rank: Rank = Rank.INT
    pointee: DType | None = None  # pointers are unsigned 64-bit integers

    @property
    def pointee_size(self) -> int:
        """What one step of pointer arithmetic adds (void * steps by 1, as in gcc)."""
        return 0 if self.pointee is None else max(self.pointee.size, 1)

    @property
    def is_int(self) -> bool:
        return self.kind is Kind.INT

    @property
    def is_pointer(self) -> bool:
        return self.pointee is not None

    @property
    def is_string(self) -> bool:
        return self.kind is Kind.STRING

    @property
    def bits(self) -> int:
        return self.size * 8

    def same_encoding(self, other: DType) -> bool:
        """dtrace's ctf_type_compat for integers: same size and signedness."""
        return (
            self.kind is other.kind
            and self.size == other.size
            and self.signed == other.signed
            and self.is_pointer == other.is_pointer
        )

    def __str__(self) -> str:
        return self.name


def _int(name: str, size: int, signed: bool, rank: Rank) -> DType:
    return DType(name, Kind.INT, size, signed, rank)


CHAR = _int("char", 1, True, Rank.CHAR)
SCHAR = _int("signed char", 1, True, Rank.CHAR)
UCHAR = _int("unsigned char", 1, False, Rank.CHAR)
SHORT = _int("short", 2, True, Rank.SHORT)
USHORT = _int("unsigned short", 2, False, Rank.SHORT)
INT = _int("int", 4, True, Rank.INT)
UINT = _int("unsigned int", 4, False, Rank.INT)
LONG = _int("long", 8, True, Rank.LONG)
ULONG = _int("unsigned long", 8, False, Rank.LONG)
LLONG = _int("long long", 8, True, Rank.LLONG)
ULLONG = _int("unsigned long long", 8, False, Rank.LLONG)

STRING = DType("string", Kind.STRING)
STACK = DType("stack", Kind.STACK)
SYMADDR = DType("_usymaddr", Kind.SYMADDR)
BUFFER = DType("void *", Kind.BUFFER, 8)
VOID = DType("void", Kind.VOID)


def typedef(name: str, base: DType) -> DType:
    """A new name for *base*, printed as *name* in messages."""
    return DType(name, base.kind, base.size, base.signed, base.rank, base.pointee)


def pointer_to(base: DType) -> DType:
    """``base *``: an unsigned 64-bit integer that scales by the pointee in + and -."""
    return DType(f"{base.name} *", Kind.INT, 8, False, Rank.LONG, base)


INT64 = typedef("int64_t", LONG)
UINT64 = typedef("uint64_t", ULONG)
SIZE_T = typedef("size_t", ULONG)
UINTPTR = typedef("uintptr_t", ULONG)
PID_T = typedef("pid_t", INT)
ID_T = typedef("id_t", INT)
UID_T = typedef("uid_t", UINT)
GID_T = typedef("gid_t", UINT)
UINT_T = typedef("uint_t", UINT)

# Names a program may write where a type is expected.  The keyword-built
# ones (unsigned long ...) are assembled by the parser from specifiers.
TYPEDEFS: dict[str, DType] = {
    t.name: t
    for t in (
        typedef("int8_t", SCHAR),
        typedef("int16_t", SHORT),
        typedef("int32_t", INT),
        INT64,
        typedef("uint8_t", UCHAR),
        typedef("uint16_t", USHORT),
        typedef("uint32_t", UINT),
        UINT64,
        SIZE_T,
        typedef("ssize_t", LONG),
        UINTPTR,
        typedef("intptr_t", LONG),
        typedef("ptrdiff_t", LONG),
        typedef("off_t", LONG),
        PID_T,
        ID_T,
        UID_T,
        GID_T,
        UINT_T,
        typedef("uchar_t", UCHAR),
        typedef("ushort_t", USHORT),
        typedef("ulong_t", ULONG),
        typedef("longlong_t", LLONG),
        typedef("u_longlong_t", ULLONG),
        typedef("hrtime_t", LLONG),
        typedef("processorid_t", INT),
        typedef("wchar_t", INT),
    )
}

# Base types by their canonical C spelling, for the parser's specifier sets.
BASE_TYPES: dict[str, DType] = {
    t.name: t for t in (CHAR, SCHAR, UCHAR, SHORT, USHORT, INT, UINT, LONG, ULONG, LLONG, ULLONG)
}

_BY_RANK: dict[tuple[Rank, bool], DType] = {
    (t.rank, t.signed): t for t in (SHORT, USHORT, INT, UINT, LONG, ULONG, LLONG, ULLONG)
}
_BY_RANK[(Rank.CHAR, True)] = CHAR
_BY_RANK[(Rank.CHAR, False)] = UCHAR


def normalizer(t: DType) -> Callable[[int], int]:
    """A function that wraps any Python int into *t*'s range (C conversion)."""
    bits = t.bits
    mask = (1 << bits) - 1
    if not t.signed:
        return lambda v: v & mask
    half = 1 << (bits - 1)
    full = 1 << bits

    def wrap_signed(v: int) -> int:
        v &= mask
        return v - full if v >= half else v

    return wrap_signed


def normalize(v: int, t: DType) -> int:
    """Wrap *v* into *t*'s range."""
    return normalizer(t)(v)


def to_signed(v: int, size: int) -> int:
    """Reinterpret the low *size* bytes of *v* as a signed integer."""
    bits = size * 8
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def to_unsigned(v: int, size: int) -> int:
    """Reinterpret the low *size* bytes of *v* as an unsigned integer."""
    return v & ((1 << (size * 8)) - 1)


def promote(t: DType) -> DType:
    """C integer promotion: char and short become int; pointers stay as they are."""
    if t.rank < Rank.INT:
        return INT
    return t


def usual_conversion(a: DType, b: DType) -> DType:
    """C's usual arithmetic conversions on LP64; keeps a typedef's name when it wins."""
    a, b = promote(a), promote(b)
    if a.is_pointer or b.is_pointer:
        return a if a.is_pointer else b
    if a.rank == b.rank and a.signed == b.signed:
        return a
    if a.signed == b.signed:
        return a if a.rank > b.rank else b
    u, s = (a, b) if not a.signed else (b, a)
    if u.rank >= s.rank:
        return u
    if s.size > u.size:
        return s
    return _BY_RANK[(s.rank, False)]


INT_LITERAL_TYPES = (INT, UINT, LONG, ULONG, LLONG, ULLONG)
_LIMITS = (0x7FFFFFFF, 0xFFFFFFFF, (1 << 63) - 1, (1 << 64) - 1, (1 << 63) - 1, (1 << 64) - 1)


def literal_type(value: int, suffix: str, decimal: bool) -> DType | None:
    """The type dtrace gives an integer constant (dt_node_int), or None if none fits.

    Decimal constants without ``u`` only try the signed types; each ``u``
    starts one step on, each ``l`` two steps on, as in C.
    """
    step = 2 if (decimal or suffix[:1] == "u") else 1
    start = sum(1 if c in "uU" else 2 for c in suffix)
    for i in range(start, len(INT_LITERAL_TYPES), step):
        if value <= _LIMITS[i]:
            return INT_LITERAL_TYPES[i]
    return None
