"""Where things sit inside one x86-64 instruction: prefixes, opcode, ModRM, SIB, displacement.

Capstone says *that* bytes decode and *how long* the instruction is. Moving an instruction
or emulating it also needs to know *where* its parts are (the displacement to rewrite, the
ModRM fields naming registers). Capstone's detail mode answers that too, but through its
Python binding it costs ~10 µs per instruction against ~2 µs for this parse, which matters
when a whole function or library is planned. The parse trusts capstone's length and knows
only which opcodes carry a ModRM byte; everything after ModRM, SIB and the displacement is
the immediate. The tests hold every ModRM and displacement offset against capstone's detail
over whole libraries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1

# Legacy prefixes: lock, repne/bnd, rep, segment overrides, operand size, address size.
LOCK = 0xF0
REPNE = 0xF2
REP = 0xF3
CS = 0x2E
SS = 0x36
DS = 0x3E  # also the CET "notrack" prefix on indirect branches
ES = 0x26
FS = 0x64
GS = 0x65
OPSIZE = 0x66
ADDRSIZE = 0x67
_LEGACY_PREFIXES = frozenset({LOCK, REPNE, REP, CS, SS, DS, ES, FS, GS, OPSIZE, ADDRSIZE})
SEGMENT_PREFIXES = frozenset({CS, SS, DS, ES, FS, GS})

# One-byte opcodes followed by a ModRM byte (0x62/0xC4/0xC5 are EVEX/VEX in 64-bit mode
# and handled before this table is consulted).
_MODRM_PRIMARY = frozenset(
    [op for op in range(0x40) if op & 7 < 4]  # add, or, adc, sbb, and, sub, xor, cmp r/m forms
    + [0x63, 0x69, 0x6B, *range(0x80, 0x90), 0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3]
    + [*range(0xD8, 0xE0), 0xF6, 0xF7, 0xFE, 0xFF]
)
# 0F xx opcodes WITHOUT a ModRM byte; every other one has one. ud0 (0F FF) and ud1 (0F B9)
# are listed because capstone decodes them without one and its length is what we trust.
_NO_MODRM_0F = frozenset(
    (
        *(0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, *range(0x30, 0x38), 0x77, *range(0x80, 0x90)),
        *(0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA, *range(0xC8, 0xD0), 0xB9, 0xFF),
    )
)

# General-purpose registers by encoding number, as named in ``user_regs_struct``.
GPR: tuple[str, ...] = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
RSP = 4


class Escape(enum.Enum):
    """How the opcode is introduced: legacy bytes, or a VEX/EVEX payload."""

    LEGACY = "legacy"
    VEX = "vex"
    EVEX = "evex"


class OpMap(enum.IntEnum):
    """Opcode map: the one-byte table, 0F, 0F38, 0F3A, or a higher VEX/EVEX map."""

    PRIMARY = 0
    M0F = 1
    M0F38 = 2
    M0F3A = 3
    MAP4 = 4
    MAP5 = 5
    MAP6 = 6
    MAP7 = 7


class Segment(enum.Enum):
    """The segment overrides that still mean something in 64-bit mode."""

    NONE = "none"
    FS = "fs"
    GS = "gs"


class EncodingError(ValueError):
    """The bytes do not have the structure their decoded length implies."""


@dataclass(frozen=True, slots=True)
class MemRef:
    """A ModRM memory operand: ``segment:disp(base, index, scale)`` or ``disp(%rip)``.

    ``base`` and ``index`` are register numbers (see :data:`GPR`); ``addr32`` means the
    address is computed in 32 bits (prefix 0x67) and zero-extended.
    """

    base: int | None
    index: int | None
    scale: int
    disp: int
    rip: bool
    addr32: bool
    segment: Segment


@dataclass(frozen=True, slots=True)
class Encoding:
    """The parts of one instruction, as offsets into its bytes.

    ``ext`` holds the REX.WRXB bits (from REX, or from the VEX/EVEX payload), so register
    numbers come out the same way whatever the escape.
    """

    raw: bytes
    prefixes: bytes
    ext: int
    escape: Escape
    opmap: OpMap
    opcode: int
    modrm: int | None
    sib: int | None
    disp_at: int
    disp: int
    imm_at: int

    @property
    def length(self) -> int:
        return len(self.raw)

    @property
    def disp_size(self) -> int:
        return self.imm_at - self.disp_at

    @property
    def w(self) -> bool:
        return bool(self.ext & 8)

    @property
    def mod(self) -> int:
        return (self.modrm or 0) >> 6

    @property
    def reg(self) -> int:
        """ModRM.reg extended by REX.R: a register number, or an opcode extension (``/n``)."""
        return ((self.modrm or 0) >> 3 & 7) | (self.ext & 4) << 1

    @property
    def rm(self) -> int:
        """ModRM.rm extended by REX.B (a register number when ``mod == 3``)."""
        return ((self.modrm or 0) & 7) | (self.ext & 1) << 3

    @property
    def rip_relative(self) -> bool:
        return self.modrm is not None and self.modrm & 0xC7 == 0x05

    @property
    def has_memory(self) -> bool:
        return self.modrm is not None and self.modrm >> 6 != 3

    @property
    def xbegin(self) -> bool:
        """xbegin rel32 (c7 f8): a branch whose only rip dependence is its abort address."""
        return self.opmap is OpMap.PRIMARY and self.opcode == 0xC7 and self.modrm == 0xF8

    @property
    def addr32(self) -> bool:
        return ADDRSIZE in self.prefixes

    @property
    def opsize16(self) -> bool:
        """Operand size is 16 bits: a 0x66 prefix that REX.W does not override."""
        return OPSIZE in self.prefixes and not self.w

    @property
    def segment(self) -> Segment:
        for byte in reversed(self.prefixes):
            if byte == FS:
                return Segment.FS
            if byte == GS:
                return Segment.GS
            if byte in SEGMENT_PREFIXES:
                return Segment.NONE
        return Segment.NONE

    @property
    def imm(self) -> int:
        """The bytes after ModRM/SIB/displacement as one signed little-endian number."""
        return int.from_bytes(self.raw[self.imm_at :], "little", signed=True)

    def prefixes_within(self, allowed: frozenset[int]) -> bool:
        return all(byte in allowed for byte in self.prefixes)

    def mem(self) -> MemRef:
        """The memory operand; only meaningful when :attr:`has_memory`."""
        base: int | None = self.rm
        index: int | None = None
        scale = 1
        if self.rip_relative:
            base = None
        elif self.sib is not None:
            scale = 1 << (self.sib >> 6)
            index = (self.sib >> 3 & 7) | (self.ext & 2) << 2
            index = None if index == RSP else index
            base = (self.sib & 7) | (self.ext & 1) << 3
            if self.sib & 7 == 5 and self.mod == 0:
                base = None
        return MemRef(base, index, scale, self.disp, self.rip_relative, self.addr32, self.segment)


def fits_int32(value: int) -> bool:
    return -(1 << 31) <= value < (1 << 31)


def parse(raw: bytes) -> Encoding:
    """Split one instruction (exactly its bytes, as capstone measured them) into parts.

    Raises :class:`EncodingError` when the parts would not fit in ``len(raw)`` bytes,
    which means this parse and capstone disagree about the instruction.
    """
    try:
        return _parse(raw)
    except IndexError:
        msg = f"{raw.hex(' ')}: instruction is shorter than its ModRM implies"
        raise EncodingError(msg) from None


def _parse(raw: bytes) -> Encoding:
    i = 0
    rex = 0
    rex_bytes = 0
    while True:
        byte = raw[i]
        if 0x40 <= byte <= 0x4F:
            rex = byte
            rex_bytes += 1
        elif byte in _LEGACY_PREFIXES:
            rex = 0  # a REX byte counts only right before the opcode
        else:
            break
        i += 1
    if rex_bytes > (1 if rex else 0):  # stray REX bytes among the legacy prefixes
        prefixes = bytes(b for b in raw[:i] if b in _LEGACY_PREFIXES)
    else:
        prefixes = raw[: i - 1] if rex else raw[:i]
    ext = rex & 0xF
    first = raw[i]
    if first in (0xC4, 0xC5, 0x62):
        escape, ext, opmap, opcode, i = _vex(raw, i)
        has_modrm = not (opmap == OpMap.M0F and opcode == 0x77)
    elif first == 0x0F:
        escape = Escape.LEGACY
        second = raw[i + 1]
        if second in (0x38, 0x3A):
            opmap = OpMap.M0F38 if second == 0x38 else OpMap.M0F3A
            opcode, i, has_modrm = raw[i + 2], i + 3, True
        else:
            opmap, opcode, i = OpMap.M0F, second, i + 2
            has_modrm = second not in _NO_MODRM_0F
    else:
        escape, opmap, opcode, i = Escape.LEGACY, OpMap.PRIMARY, first, i + 1
        has_modrm = first in _MODRM_PRIMARY
    modrm = sib = None
    disp_size = 0
    if has_modrm:
        modrm = raw[i]
        i += 1
        mod, rm = modrm >> 6, modrm & 7
        if mod != 3 and rm == 4:
            sib = raw[i]
            i += 1
            if mod == 0 and sib & 7 == 5:
                disp_size = 4
        if mod == 1:
            disp_size = 1
        elif mod == 2 or (mod == 0 and rm == 5):
            disp_size = 4
    disp = int.from_bytes(raw[i : i + disp_size], "little", signed=True)
    if i + disp_size > len(raw):
        raise EncodingError(f"{raw.hex(' ')}: displacement runs past the instruction's end")
    return Encoding(raw, prefixes, ext, escape, opmap, opcode, modrm, sib, i, disp, i + disp_size)


def _vex(raw: bytes, i: int) -> tuple[Escape, int, OpMap, int, int]:
    """Decode a VEX (C4/C5) or EVEX (62) payload into REX-like bits, map and opcode."""
    first, p0 = raw[i], raw[i + 1]
    if first == 0xC5:
        return Escape.VEX, (~p0 >> 5) & 4, OpMap.M0F, raw[i + 2], i + 3
    rxb = (~p0 >> 5) & 7
    if first == 0xC4:
        ext = rxb | (raw[i + 2] >> 4) & 8
        return Escape.VEX, ext, _opmap(p0 & 0x1F, raw), raw[i + 3], i + 4
    ext = rxb | (raw[i + 2] >> 4) & 8
    return Escape.EVEX, ext, _opmap(p0 & 0x7, raw), raw[i + 4], i + 5


def _opmap(value: int, raw: bytes) -> OpMap:
    try:
        return OpMap(value)
    except ValueError:
        raise EncodingError(f"{raw.hex(' ')}: unknown VEX/EVEX opcode map {value}") from None
