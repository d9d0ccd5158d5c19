"""Layer 2: call frame information (``.eh_frame``, ``.eh_frame_hdr``, ``.debug_frame``).

Distribution libraries are built without frame pointers, so walking a user stack needs the
DWARF CFI tables that the compiler emits for exception handling: for every instruction they say
how to find the canonical frame address (CFA) and where the caller's registers were saved.

Looking up a pc must be cheap, because a profiler unwinds thousands of stacks of dozens of
frames.  So nothing is decoded up front: ``.eh_frame_hdr``'s sorted table is searched by
bisection, and only the one FDE that covers the pc (plus its CIE, cached by offset) is parsed
and its program interpreted.  The decoded row table of recently used FDEs is kept in an LRU.
When a file has no ``.eh_frame_hdr`` or its table misses the pc, ``.eh_frame`` is indexed
once by a linear pass, and ``.debug_frame`` (of the file or of its separate debug file) is
the last resort.

All input is untrusted: entry lengths are checked against their section, instruction
streams are bounded by their entry, ``DW_CFA_remember_state`` nesting is capped, and anything
malformed raises :class:`~dtproc.errors.ElfError` naming the file and the offset.  Evaluating
rules (:meth:`FrameRules.step`) raises :class:`~dtproc.errors.UnwindError`.
"""

from __future__ import annotations

import bisect
import enum
import functools
import itertools
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, final

from dtproc.cfi_expr import (
    MASK64,
    ByteCursor,
    ReadMemory,
    evaluate,
    read_sleb128,
    read_uleb128,
)
from dtproc.elf import ElfFile, Section, SectionFlags, SectionType
from dtproc.errors import ElfError, UnwindError

__all__ = [
    "CALLEE_SAVED",
    "RA_COLUMN",
    "RSP",
    "CfaKind",
    "CfaRule",
    "CfiTable",
    "FdeRange",
    "FdeRows",
    "FrameRules",
    "FrameSource",
    "RegisterRule",
    "RuleKind",
]

#: DWARF register numbers of x86-64 (System V psABI): rbx, rbp, r12-r15 survive calls.
CALLEE_SAVED: Final = frozenset({3, 6, 12, 13, 14, 15})
RSP: Final = 7
RA_COLUMN: Final = 16

_FDE_CACHE_SIZE: Final = 1024
_MAX_STATE_DEPTH: Final = 64
_MAX_INSTRUCTIONS: Final = 100_000

# DW_EH_PE_* pointer encodings.
_PE_OMIT: Final = 0xFF
_PE_ULEB128: Final = 0x01
_PE_SLEB128: Final = 0x09
_PE_PCREL: Final = 0x10
_PE_TEXTREL: Final = 0x20
_PE_DATAREL: Final = 0x30
_PE_FUNCREL: Final = 0x40
_PE_ALIGNED: Final = 0x50
_PE_INDIRECT: Final = 0x80
_PE_FIXED: Final[dict[int, struct.Struct]] = {
    0x00: struct.Struct("<Q"),  # absptr
    0x02: struct.Struct("<H"),
    0x03: struct.Struct("<I"),
    0x04: struct.Struct("<Q"),
    0x0A: struct.Struct("<h"),
    0x0B: struct.Struct("<i"),
    0x0C: struct.Struct("<q"),
}
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_U16: Final = struct.Struct("<H")


class FrameSource(enum.Enum):
    """Which section a rule came from (``.debug_frame`` differs in CIE ids and pointers)."""

    EH_FRAME = ".eh_frame"
    DEBUG_FRAME = ".debug_frame"


class RuleKind(enum.Enum):
    """How the caller's value of one register is recovered (DWARF 5, 6.4.1)."""

    UNDEFINED = "undefined"  # not recoverable; for the return address: outermost frame
    SAME_VALUE = "same_value"  # unchanged by this frame
    OFFSET = "offset"  # saved in memory at CFA + value
    VAL_OFFSET = "val_offset"  # is CFA + value
    REGISTER = "register"  # held in register number value
    EXPRESSION = "expression"  # saved in memory at the address the expression computes
    VAL_EXPRESSION = "val_expression"  # is what the expression computes


@dataclass(frozen=True, slots=True)
class RegisterRule:
    """One register column of a row; ``value`` is the offset, or the register for REGISTER."""

    kind: RuleKind
    value: int = 0
    expression: bytes = b""


class CfaKind(enum.Enum):
    REGISTER_OFFSET = "register_offset"
    EXPRESSION = "expression"


@dataclass(frozen=True, slots=True)
class CfaRule:
    """How to compute the CFA: register + offset, or a DWARF expression."""

    kind: CfaKind
    register: int = RSP
    offset: int = 0
    expression: bytes = b""


@dataclass(frozen=True, slots=True)
class FrameRules:
    """The unwind rules in force at one pc: a row of the CFI table.

    Registers without a rule are unspecified: :meth:`step` keeps the callee-saved ones and
    forgets the rest, as the x86-64 ABI says a call preserves only those.
    """

    cfa: CfaRule
    registers: tuple[tuple[int, RegisterRule], ...]  # sorted by DWARF register number
    return_address: int = RA_COLUMN
    signal_frame: bool = False

    def rule(self, register: int) -> RegisterRule | None:
        for number, rule in self.registers:
            if number == register:
                return rule
        return None

    @property
    def outermost(self) -> bool:
        """The return address is undefined: there is no caller (``_start``, thread entry)."""
        rule = self.rule(self.return_address)
        return rule is not None and rule.kind is RuleKind.UNDEFINED

    def compute_cfa(self, regs: Mapping[int, int], read: ReadMemory, bias: int = 0) -> int:
        cfa = self.cfa
        if cfa.kind is CfaKind.EXPRESSION:
            return evaluate(cfa.expression, regs, read, bias=bias)
        base = regs.get(cfa.register)
        if base is None:
            raise UnwindError(f"the CFA is based on register {cfa.register}, which is unknown")
        return (base + cfa.offset) & MASK64

    def step(self, regs: Mapping[int, int], read: ReadMemory, bias: int = 0) -> dict[int, int]:
        """The caller's registers (DWARF numbers) from this frame's *regs*.

        *read* reads the target's memory, *bias* relocates ``DW_OP_addr``.  The caller's pc is
        under ``RA_COLUMN`` and its stack pointer is the CFA unless a rule says otherwise.
        Raises :class:`~dtproc.errors.UnwindError` when a value cannot be recovered, and
        also for an undefined return address (check :attr:`outermost` first).
        """
        cfa = self.compute_cfa(regs, read, bias)
        caller = {r: v for r, v in regs.items() if r in CALLEE_SAVED}
        caller[RSP] = cfa
        for number, rule in self.registers:
            value = _recover(rule, number, regs, read, cfa, bias)
            if value is None:
                caller.pop(number, None)
            else:
                caller[number] = value
        ra = caller.pop(self.return_address, None)
        if ra is None or self.rule(self.return_address) is None:
            raise UnwindError("the return address has no rule, so the caller is unknown")
        caller[RA_COLUMN] = ra
        return caller


def _recover(
    rule: RegisterRule,
    number: int,
    regs: Mapping[int, int],
    read: ReadMemory,
    cfa: int,
    bias: int,
) -> int | None:
    kind = rule.kind
    if kind is RuleKind.OFFSET:
        return _load_u64(read, cfa + rule.value)
    if kind is RuleKind.VAL_OFFSET:
        return (cfa + rule.value) & MASK64
    if kind is RuleKind.SAME_VALUE:
        return regs.get(number)
    if kind is RuleKind.REGISTER:
        return regs.get(rule.value)
    if kind is RuleKind.EXPRESSION:
        address = evaluate(rule.expression, regs, read, push=(cfa,), cfa=cfa, bias=bias)
        return _load_u64(read, address)
    if kind is RuleKind.VAL_EXPRESSION:
        return evaluate(rule.expression, regs, read, push=(cfa,), cfa=cfa, bias=bias)
    return None


def _load_u64(read: ReadMemory, address: int) -> int:
    address &= MASK64
    try:
        data = read(address, 8)
    except OSError as exc:
        raise UnwindError(f"cannot read a saved register at 0x{address:x}: {exc}") from exc
    if len(data) < 8:
        raise UnwindError(f"cannot read a saved register at 0x{address:x}")
    return int(_U64.unpack_from(data)[0])


@dataclass(frozen=True, slots=True)
class FdeRange:
    """The pc range ``[start, end)`` (file vaddrs) one FDE covers, and where it is."""

    start: int
    end: int
    source: FrameSource
    offset: int


@dataclass(frozen=True, slots=True)
class FdeRows:
    """One FDE's decoded table: ``rows[i]`` is in force from ``locations[i]`` to the next."""

    fde: FdeRange
    locations: tuple[int, ...]
    rows: tuple[FrameRules, ...]

    def at(self, pc: int) -> FrameRules | None:
        if not self.fde.start <= pc < self.fde.end:
            return None
        i = bisect.bisect_right(self.locations, pc) - 1
        return self.rows[i] if i >= 0 else None


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Cie:
    offset: int
    code_align: int
    data_align: int
    ra_column: int
    fde_encoding: int
    address_size: int
    has_augmentation_data: bool
    signal_frame: bool
    instructions: bytes
    instructions_at: int  # section offset of the program, for pc-relative DW_CFA_set_loc


@dataclass(frozen=True, slots=True)
class _Fde:
    range: FdeRange
    cie: _Cie
    instructions: bytes
    instructions_at: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """An entry's framing: where its body starts and ends, and its CIE id / CIE pointer."""

    offset: int
    body: int
    end: int
    cie_id: int
    id_pos: int
    id_size: int


class _FrameSection:
    """One ``.eh_frame`` or ``.debug_frame`` section: entry parsing and the CIE cache."""

    def __init__(
        self, elf: ElfFile, data: bytes, vaddr: int, source: FrameSource, bases: _Bases
    ) -> None:
        self.elf = elf
        self.data = data
        self.vaddr = vaddr
        self.source = source
        self.bases = bases
        self._cies: dict[int, _Cie] = {}
        self._index: _LinearIndex | None = None
        self._lock = threading.Lock()

    def index(self) -> _LinearIndex:
        """The FDEs by pc, from one linear pass on first use (when a header table misses)."""
        if self._index is None:
            index = _LinearIndex(self.scan())
            with self._lock:
                self._index = index
        return self._index

    def error(self, offset: int, reason: str) -> ElfError:
        return ElfError(self.elf.path, f"{self.source.value}+0x{offset:x}: {reason}")

    def entry(self, offset: int) -> _Entry | None:
        """The entry at *offset*, or None at a zero terminator or the end of the section."""
        data = self.data
        if offset + 4 > len(data):
            return None
        (length,) = _U32.unpack_from(data, offset)
        if length == 0:
            return None
        id_size = 4
        pos = offset + 4
        if length == 0xFFFFFFFF:
            if pos + 8 > len(data):
                raise self.error(offset, "truncated 64-bit entry length")
            (length,) = _U64.unpack_from(data, pos)
            pos += 8
            id_size = 8
        end = pos + length
        if end > len(data) or length < id_size:
            raise self.error(offset, f"entry length 0x{length:x} runs past the section")
        st = _U32 if id_size == 4 else _U64
        (cie_id,) = st.unpack_from(data, pos)
        return _Entry(offset, pos + id_size, end, cie_id, pos, id_size)

    def is_cie(self, entry: _Entry) -> bool:
        if self.source is FrameSource.EH_FRAME:
            return entry.cie_id == 0
        return entry.cie_id == (1 << (8 * entry.id_size)) - 1

    def cie_offset(self, entry: _Entry) -> int:
        if self.source is FrameSource.EH_FRAME:
            return entry.id_pos - entry.cie_id
        return entry.cie_id

    def cie(self, offset: int) -> _Cie:
        cie = self._cies.get(offset)
        if cie is None:
            cie = self._parse_cie(offset)
            with self._lock:
                self._cies[offset] = cie
        return cie

    def _parse_cie(self, offset: int) -> _Cie:
        entry = self.entry(offset)
        if entry is None or not self.is_cie(entry):
            raise self.error(offset, "an FDE points to something that is no CIE")
        try:
            return self._cie_body(entry)
        except (IndexError, struct.error, UnicodeDecodeError) as exc:
            raise self.error(offset, "truncated CIE") from exc

    def _cie_body(self, entry: _Entry) -> _Cie:
        data = self.data
        pos = entry.body
        version = data[pos]
        if version not in (1, 3, 4):
            raise self.error(entry.offset, f"unsupported CIE version {version}")
        aug_end = data.index(b"\0", pos + 1, entry.end)
        augmentation = data[pos + 1 : aug_end].decode("ascii")
        pos = aug_end + 1
        address_size = 8
        if augmentation.startswith("eh"):  # pre-3.0 GCC: an eh_ptr follows
            pos += 8
        if version == 4:
            address_size = data[pos]
            pos += 2  # address_size, segment_selector_size
        code_align, pos = read_uleb128(data, pos)
        data_align, pos = read_sleb128(data, pos)
        if version == 1:
            ra_column = data[pos]
            pos += 1
        else:
            ra_column, pos = read_uleb128(data, pos)
        fde_encoding = 0x00
        signal_frame = False
        has_z = augmentation.startswith("z")
        if has_z:
            aug_len, pos = read_uleb128(data, pos)
            aug_data_end = pos + aug_len
            fde_encoding, signal_frame = self._augmentation(entry, augmentation, pos)
            pos = aug_data_end
        elif augmentation not in ("", "eh"):
            raise self.error(entry.offset, f"unknown CIE augmentation {augmentation!r}")
        if pos > entry.end:
            raise self.error(entry.offset, "CIE augmentation runs past the entry")
        return _Cie(
            entry.offset,
            code_align,
            data_align,
            ra_column,
            fde_encoding,
            address_size,
            has_z,
            signal_frame,
            data[pos : entry.end],
            pos,
        )

    def _augmentation(self, entry: _Entry, augmentation: str, pos: int) -> tuple[int, bool]:
        """Walk the 'z' augmentation data: the FDE pointer encoding and the 'S' flag."""
        fde_encoding = 0x00
        signal_frame = False
        data = self.data
        for ch in augmentation[1:]:
            if ch == "R":
                fde_encoding = data[pos]
                pos += 1
            elif ch == "L":
                pos += 1
            elif ch == "P":
                encoding = data[pos]
                # The personality routine is only skipped over, never resolved.
                _, pos = self.pointer(pos + 1, encoding & ~_PE_INDIRECT, entry.offset)
            elif ch == "S":
                signal_frame = True
            elif ch not in "BG":  # AArch64 BTI / MTE markers carry no data
                raise self.error(entry.offset, f"unknown CIE augmentation {augmentation!r}")
        return fde_encoding, signal_frame

    def pointer(self, pos: int, encoding: int, where: int, func: int = 0) -> tuple[int, int]:
        """Decode a DW_EH_PE-encoded pointer at *pos*: (file vaddr, position after it)."""
        value, end = _read_encoded(self.data, pos, encoding)
        application = encoding & 0x70
        if application == _PE_PCREL:
            value += self.vaddr + pos
        elif application == _PE_DATAREL:
            value += self._base(self.bases.data, "data", where)
        elif application == _PE_TEXTREL:
            value += self._base(self.bases.text, "text", where)
        elif application == _PE_FUNCREL:
            value += func
        elif application == _PE_ALIGNED:
            aligned = (pos + 7) & ~7
            (value,) = _U64.unpack_from(self.data, aligned)
            end = aligned + 8
        elif application:
            raise self.error(where, f"unknown pointer encoding 0x{encoding:02x}")
        value &= MASK64
        if encoding & _PE_INDIRECT:
            value = _deref_file(self.elf, value, where)
        return value, end

    def _base(self, base: int | None, what: str, where: int) -> int:
        if base is None:
            raise self.error(where, f"{what}-relative pointer, but the file has no {what} base")
        return base

    def fde(self, offset: int) -> _Fde:
        """Parse the FDE at *offset* (its CIE comes from the cache)."""
        entry = self.entry(offset)
        if entry is None or self.is_cie(entry):
            raise self.error(offset, "expected an FDE")
        try:
            return self._fde_body(entry, self.cie(self.cie_offset(entry)))
        except (IndexError, struct.error) as exc:
            raise self.error(offset, "truncated FDE") from exc

    def _fde_body(self, entry: _Entry, cie: _Cie) -> _Fde:
        start, end, pos = self.pc_range(entry.body, cie, entry.offset)
        if cie.has_augmentation_data:
            aug_len, pos = read_uleb128(self.data, pos)
            pos += aug_len
        if pos > entry.end:
            raise self.error(entry.offset, "FDE augmentation runs past the entry")
        fde = FdeRange(start, end, self.source, entry.offset)
        return _Fde(fde, cie, self.data[pos : entry.end], pos)

    def pc_range(self, pos: int, cie: _Cie, where: int) -> tuple[int, int, int]:
        """An FDE's initial location and end, and the position after both fields."""
        encoding = self.pc_encoding(cie)
        start, pos = self.pointer(pos, encoding, where)
        length, pos = _read_encoded(self.data, pos, encoding & 0x0F)
        return start, start + length, pos

    def pc_encoding(self, cie: _Cie) -> int:
        if self.source is FrameSource.DEBUG_FRAME and not cie.has_augmentation_data:
            return {2: 0x02, 4: 0x03}.get(cie.address_size, 0x04)
        return cie.fde_encoding

    def scan(self) -> list[FdeRange]:
        """Every FDE with a non-empty range, in section order (one linear pass)."""
        found: list[FdeRange] = []
        offset = 0
        data_len = len(self.data)
        while offset < data_len:
            entry = self.entry(offset)
            if entry is None:
                if self.source is FrameSource.EH_FRAME:
                    break  # .eh_frame ends at a zero terminator
                offset += 4
                continue
            if not self.is_cie(entry):
                try:
                    cie = self.cie(self.cie_offset(entry))
                    start, end, _ = self.pc_range(entry.body, cie, offset)
                except (IndexError, struct.error) as exc:
                    raise self.error(offset, "truncated FDE") from exc
                if end > start:
                    found.append(FdeRange(start, end, self.source, offset))
            offset = entry.end
        return found


@dataclass(frozen=True, slots=True)
class _Bases:
    """What text- and data-relative pointers of a section count from."""

    text: int | None
    data: int | None


def _read_encoded(data: bytes, pos: int, encoding: int) -> tuple[int, int]:
    """The raw value of a pointer in *encoding*'s format (no base applied)."""
    fmt = encoding & 0x0F
    st = _PE_FIXED.get(fmt)
    if st is not None:
        (value,) = st.unpack_from(data, pos)
        return value, pos + st.size
    if fmt == _PE_ULEB128:
        return read_uleb128(data, pos)
    if fmt == _PE_SLEB128:
        return read_sleb128(data, pos)
    raise struct.error(f"unknown pointer format 0x{encoding:02x}")


def _deref_file(elf: ElfFile, vaddr: int, where: int) -> int:
    """The 8 bytes at *vaddr* in the file (DW_EH_PE_indirect), as the linker left them."""
    for sec in elf.sections:
        if (
            sec.flags & SectionFlags.ALLOC
            and sec.type != SectionType.NOBITS
            and sec.addr <= vaddr
            and vaddr + 8 <= sec.addr + sec.size
        ):
            return int(_U64.unpack_from(elf.section_data(sec), vaddr - sec.addr)[0])
    raise ElfError(
        elf.path, f"CFI entry 0x{where:x}: indirect pointer 0x{vaddr:x} is not in the file"
    )


# ----------------------------------------------------------------------------- interpreter


class _Interpreter(ByteCursor):
    """Runs a CIE's and an FDE's CFA programs and records the rows they define."""

    __slots__ = (
        "base",
        "cfa",
        "cie",
        "dirty",
        "fde",
        "initial",
        "loc",
        "locations",
        "regs",
        "rows",
        "section",
        "stack",
    )

    def __init__(self, section: _FrameSection, fde: _Fde) -> None:
        super().__init__(b"")
        self.section = section
        self.fde = fde
        self.cie = fde.cie
        self.cfa = CfaRule(CfaKind.REGISTER_OFFSET)
        self.regs: dict[int, RegisterRule] = {}
        self.initial: dict[int, RegisterRule] = {}
        self.stack: list[tuple[CfaRule, dict[int, RegisterRule]]] = []
        self.loc = fde.range.start
        self.locations: list[int] = []
        self.rows: list[FrameRules] = []
        self.dirty = True
        self.base = 0

    def run(self) -> FdeRows:
        self.execute(self.cie.instructions, self.cie.instructions_at, in_cie=True)
        self.initial = dict(self.regs)
        self.execute(self.fde.instructions, self.fde.instructions_at, in_cie=False)
        self.emit()
        return FdeRows(self.fde.range, tuple(self.locations), tuple(self.rows))

    def error(self, reason: str) -> ElfError:
        where = self.cie.offset if self.data is self.cie.instructions else self.fde.range.offset
        return self.section.error(where, reason)

    def emit(self) -> None:
        """Close the row in force at ``loc`` (rows that change nothing are merged)."""
        if self.dirty or not self.rows:
            row = FrameRules(
                self.cfa,
                tuple(sorted(self.regs.items())),
                self.cie.ra_column,
                self.cie.signal_frame,
            )
            if self.locations and self.locations[-1] == self.loc:
                self.rows[-1] = row
            else:
                self.locations.append(self.loc)
                self.rows.append(row)
            self.dirty = False

    def advance(self, delta: int, in_cie: bool) -> None:
        self.move_to(self.loc + delta * self.cie.code_align, in_cie)

    def move_to(self, loc: int, in_cie: bool) -> None:
        if in_cie:
            return  # a CIE has no rows of its own
        if loc < self.loc:
            raise self.error(f"CFA program moves backwards to 0x{loc:x}")
        if loc > self.loc:
            self.emit()
            self.loc = loc

    def execute(self, data: bytes, base: int, in_cie: bool) -> None:
        self.data = data
        self.base = base
        self.pos = 0
        count = 0
        try:
            while self.pos < len(data):
                count += 1
                if count > _MAX_INSTRUCTIONS:
                    raise self.error("CFA program is too long")
                op = data[self.pos]
                self.pos += 1
                high = op & 0xC0
                if high == 0x40:  # DW_CFA_advance_loc, the commonest: inlined
                    if not in_cie and op & 0x3F:
                        self.emit()
                        self.loc += (op & 0x3F) * self.cie.code_align
                elif high == 0x80:
                    self.set_rule(op & 0x3F, RuleKind.OFFSET, self.uleb() * self.cie.data_align)
                elif high == 0xC0:
                    self.restore(op & 0x3F)
                else:
                    self.extended(op, in_cie)
        except (IndexError, struct.error) as exc:
            raise self.error("truncated CFA program") from exc

    def block(self) -> bytes:
        size = self.uleb()
        start = self.pos
        self.pos += size
        if self.pos > len(self.data):
            raise self.error("DWARF expression runs past the CFA program")
        return self.data[start : self.pos]

    def fixed(self, st: struct.Struct) -> int:
        (value,) = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return int(value)

    def set_rule(self, reg: int, kind: RuleKind, value: int = 0, expression: bytes = b"") -> None:
        if expression:
            self.regs[reg] = RegisterRule(kind, value, expression)
        else:
            self.regs[reg] = _plain_rule(kind, value)
        self.dirty = True

    def set_cfa(self, cfa: CfaRule) -> None:
        self.cfa = cfa
        self.dirty = True

    def restore(self, reg: int) -> None:
        rule = self.initial.get(reg)
        if rule is None:
            self.regs.pop(reg, None)
        else:
            self.regs[reg] = rule
        self.dirty = True

    def extended(self, op: int, in_cie: bool) -> None:
        handler = _EXTENDED.get(op)
        if handler is None:
            raise self.error(f"unknown CFA instruction 0x{op:02x}")
        handler(self, in_cie)

    # The handlers below are indexed by opcode in _EXTENDED.

    def op_nop(self, in_cie: bool) -> None:
        pass

    def op_set_loc(self, in_cie: bool) -> None:
        section = self.section
        where = self.fde.range.offset
        encoding = section.pc_encoding(self.cie)
        loc, end = section.pointer(self.base + self.pos, encoding, where, self.fde.range.start)
        self.pos = end - self.base
        self.move_to(loc, in_cie)

    def op_advance_loc1(self, in_cie: bool) -> None:
        self.advance(self.fixed(_U8), in_cie)

    def op_advance_loc2(self, in_cie: bool) -> None:
        self.advance(self.fixed(_U16), in_cie)

    def op_advance_loc4(self, in_cie: bool) -> None:
        self.advance(self.fixed(_U32), in_cie)

    def op_advance_loc8(self, in_cie: bool) -> None:
        self.advance(self.fixed(_U64), in_cie)

    def op_restore_extended(self, in_cie: bool) -> None:
        self.restore(self.uleb())

    def op_undefined(self, in_cie: bool) -> None:
        self.set_rule(self.uleb(), RuleKind.UNDEFINED)

    def op_same_value(self, in_cie: bool) -> None:
        self.set_rule(self.uleb(), RuleKind.SAME_VALUE)

    def op_register(self, in_cie: bool) -> None:
        reg = self.uleb()
        self.set_rule(reg, RuleKind.REGISTER, self.uleb())

    def op_expression(self, in_cie: bool) -> None:
        reg = self.uleb()
        self.set_rule(reg, RuleKind.EXPRESSION, expression=self.block())

    def op_val_expression(self, in_cie: bool) -> None:
        reg = self.uleb()
        self.set_rule(reg, RuleKind.VAL_EXPRESSION, expression=self.block())

    def op_remember_state(self, in_cie: bool) -> None:
        if len(self.stack) >= _MAX_STATE_DEPTH:
            raise self.error(f"DW_CFA_remember_state nests deeper than {_MAX_STATE_DEPTH}")
        self.stack.append((self.cfa, dict(self.regs)))

    def op_restore_state(self, in_cie: bool) -> None:
        if not self.stack:
            raise self.error("DW_CFA_restore_state without DW_CFA_remember_state")
        self.cfa, self.regs = self.stack.pop()
        self.dirty = True

    def op_def_cfa(self, in_cie: bool) -> None:
        reg = self.uleb()
        self.set_cfa(_register_cfa(reg, self.uleb()))

    def op_def_cfa_sf(self, in_cie: bool) -> None:
        reg = self.uleb()
        self.set_cfa(_register_cfa(reg, self.sleb() * self.cie.data_align))

    def op_def_cfa_register(self, in_cie: bool) -> None:
        self.set_cfa(_register_cfa(self.uleb(), self.cfa.offset))

    def op_def_cfa_offset(self, in_cie: bool) -> None:
        self.set_cfa(_register_cfa(self.cfa.register, self.uleb()))

    def op_def_cfa_offset_sf(self, in_cie: bool) -> None:
        offset = self.sleb() * self.cie.data_align
        self.set_cfa(_register_cfa(self.cfa.register, offset))

    def op_def_cfa_expression(self, in_cie: bool) -> None:
        self.set_cfa(CfaRule(CfaKind.EXPRESSION, expression=self.block()))

    def op_gnu_args_size(self, in_cie: bool) -> None:
        self.uleb()  # only for landing pads; the CFA does not depend on it


_U8: Final = struct.Struct("<B")


# Rows share their rule objects: a frozen dataclass costs a microsecond to build, and a
# library has only a few hundred distinct (kind, offset) pairs.
@functools.lru_cache(maxsize=4096)
def _plain_rule(kind: RuleKind, value: int) -> RegisterRule:
    return RegisterRule(kind, value)


@functools.lru_cache(maxsize=4096)
def _register_cfa(register: int, offset: int) -> CfaRule:
    return CfaRule(CfaKind.REGISTER_OFFSET, register, offset)


def _offset_rule(
    kind: RuleKind, *, signed: bool, negate: bool = False
) -> Callable[[_Interpreter, bool], None]:
    """Handler of DW_CFA_(val_)offset_extended(_sf) and GNU_negative_offset_extended:
    a register operand, then a factored offset."""

    def handler(interp: _Interpreter, in_cie: bool) -> None:
        reg = interp.uleb()
        factor = interp.sleb() if signed else interp.uleb()
        interp.set_rule(reg, kind, (-factor if negate else factor) * interp.cie.data_align)

    return handler


_EXTENDED: Final = {
    0x00: _Interpreter.op_nop,
    0x01: _Interpreter.op_set_loc,
    0x02: _Interpreter.op_advance_loc1,
    0x03: _Interpreter.op_advance_loc2,
    0x04: _Interpreter.op_advance_loc4,
    0x05: _offset_rule(RuleKind.OFFSET, signed=False),
    0x06: _Interpreter.op_restore_extended,
    0x07: _Interpreter.op_undefined,
    0x08: _Interpreter.op_same_value,
    0x09: _Interpreter.op_register,
    0x0A: _Interpreter.op_remember_state,
    0x0B: _Interpreter.op_restore_state,
    0x0C: _Interpreter.op_def_cfa,
    0x0D: _Interpreter.op_def_cfa_register,
    0x0E: _Interpreter.op_def_cfa_offset,
    0x0F: _Interpreter.op_def_cfa_expression,
    0x10: _Interpreter.op_expression,
    0x11: _offset_rule(RuleKind.OFFSET, signed=True),
    0x12: _Interpreter.op_def_cfa_sf,
    0x13: _Interpreter.op_def_cfa_offset_sf,
    0x14: _offset_rule(RuleKind.VAL_OFFSET, signed=False),
    0x15: _offset_rule(RuleKind.VAL_OFFSET, signed=True),
    0x16: _Interpreter.op_val_expression,
    0x1D: _Interpreter.op_advance_loc8,  # DW_CFA_MIPS_advance_loc8
    0x2E: _Interpreter.op_gnu_args_size,
    0x2F: _offset_rule(RuleKind.OFFSET, signed=False, negate=True),
}


# ----------------------------------------------------------------------------- tables


class _HdrTable:
    """``.eh_frame_hdr``'s sorted (initial location, FDE address) table, decoded once."""

    def __init__(self, starts: list[int], fdes: list[int]) -> None:
        self.starts = starts
        self.fdes = fdes

    @classmethod
    def parse(cls, elf: ElfFile, hdr: Section, eh: _FrameSection) -> _HdrTable | None:
        """The table, or None when the header has none (or one we cannot search)."""
        data = elf.section_data(hdr)
        if len(data) < 4 or data[0] != 1:
            return None
        ptr_enc, count_enc, table_enc = data[1], data[2], data[3]
        view = _FrameSection(elf, data, hdr.addr, FrameSource.EH_FRAME, _Bases(None, hdr.addr))
        try:
            _, pos = view.pointer(4, ptr_enc, 0)
            if _PE_OMIT in (count_enc, table_enc):
                return None
            count, pos = view.pointer(pos, count_enc & 0x0F, 0)
            st = _PE_FIXED.get(table_enc & 0x0F)
            if st is None or count == 0 or pos + 2 * st.size * count > len(data):
                return None  # variable-size, empty or truncated: not searchable
            values = cls._entries(view, pos, table_enc, st, count)
        except (struct.error, IndexError, ElfError):
            return None  # a broken header only costs speed: the linear index still works
        starts = values[0::2]
        fdes = [v - eh.vaddr for v in values[1::2]]
        if any(a > b for a, b in itertools.pairwise(starts)):
            pairs = sorted(zip(starts, fdes, strict=True))
            starts, fdes = [p[0] for p in pairs], [p[1] for p in pairs]
        return cls(starts, fdes)

    @staticmethod
    def _entries(
        view: _FrameSection, pos: int, enc: int, st: struct.Struct, count: int
    ) -> list[int]:
        if enc & 0x70 == _PE_DATAREL and not enc & _PE_INDIRECT:
            fmt = struct.Struct(f"<{2 * count}{st.format[-1]}")
            base = view.bases.data or 0
            return [(v + base) & MASK64 for v in fmt.unpack_from(view.data, pos)]
        values = []
        for _ in range(2 * count):
            value, pos = view.pointer(pos, enc, 0)
            values.append(value)
        return values

    def candidate(self, pc: int) -> int | None:
        """Offset in ``.eh_frame`` of the FDE that may cover *pc*."""
        i = bisect.bisect_right(self.starts, pc) - 1
        return self.fdes[i] if i >= 0 else None


class _LinearIndex:
    """FDE ranges of a section found by one linear pass, searchable by pc."""

    def __init__(self, ranges: list[FdeRange]) -> None:
        self.ranges = sorted(ranges, key=lambda r: (r.start, r.end))
        self.starts = [r.start for r in self.ranges]

    def find(self, pc: int) -> FdeRange | None:
        i = bisect.bisect_right(self.starts, pc) - 1
        # Ranges do not normally overlap; look back a little in case a bad one does.
        for j in range(i, max(i - 8, -1), -1):
            if self.ranges[j].start <= pc < self.ranges[j].end:
                return self.ranges[j]
        return None


_tables: weakref.WeakKeyDictionary[ElfFile, CfiTable] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()
_TOKEN: Final = object()


@final
class CfiTable:
    """The CFI of one ELF file; pcs are file vaddrs (subtract the load bias first).

    Get one with :meth:`for_elf`; it is cached per :class:`~dtproc.elf.ElfFile` and safe to
    share between threads.
    """

    def __init__(self, token: object, elf: ElfFile) -> None:
        if token is not _TOKEN:
            raise TypeError("CfiTable objects come from CfiTable.for_elf()")
        self.elf: Final = elf
        self._lock = threading.Lock()
        self._rows: OrderedDict[tuple[FrameSource, int], FdeRows] = OrderedDict()
        self._eh: _FrameSection | None = None
        self._hdr: _HdrTable | None = None
        self._debug: _FrameSection | None = None
        self._loaded: set[str] = set()

    @classmethod
    def for_elf(cls, elf: ElfFile) -> CfiTable:
        with _tables_lock:
            table = _tables.get(elf)
            if table is None:
                table = _tables[elf] = cls(_TOKEN, elf)
            return table

    @staticmethod
    def clear_cache() -> None:
        """Forget every table (and so every decoded FDE): for benchmarks and long-lived tools."""
        with _tables_lock:
            _tables.clear()

    def __repr__(self) -> str:
        return f"<CfiTable of {self.elf.path}>"

    @property
    def has_header_table(self) -> bool:
        """Whether lookups bisect ``.eh_frame_hdr`` (else a linear index, built on first use)."""
        self._eh_section()
        return self._hdr is not None

    def rules_at(self, pc: int) -> FrameRules | None:
        """The rules in force at file vaddr *pc*, or None when no FDE covers it.

        Raises :class:`~dtproc.errors.ElfError` when the covering CFI is corrupt.
        """
        rows = self.fde_at(pc)
        return rows.at(pc) if rows is not None else None

    def fde_at(self, pc: int) -> FdeRows | None:
        """The decoded FDE that covers *pc* (``.eh_frame`` first, then ``.debug_frame``)."""
        eh = self._eh_section()
        if eh is not None:
            rows = self._via_hdr(eh, pc) or self._via_index(eh, pc)
            if rows is not None:
                return rows
        debug = self._debug_section()
        if debug is not None:
            return self._via_index(debug, pc)
        return None

    def _via_hdr(self, eh: _FrameSection, pc: int) -> FdeRows | None:
        offset = self._hdr.candidate(pc) if self._hdr is not None else None
        if offset is None:
            return None
        rows = self._cached(FrameSource.EH_FRAME, offset)
        if rows is None:
            try:
                fde = eh.fde(offset)
            except ElfError:
                return None  # the header points at no FDE: ask the linear index
            if not fde.range.start <= pc < fde.range.end:
                return None
            rows = self._decode(eh, fde)
        return rows if rows.fde.start <= pc < rows.fde.end else None

    def _via_index(self, section: _FrameSection, pc: int) -> FdeRows | None:
        hit = section.index().find(pc)
        if hit is None:
            return None
        rows = self._cached(hit.source, hit.offset)
        return rows if rows is not None else self._decode(section, section.fde(hit.offset))

    def _cached(self, source: FrameSource, offset: int) -> FdeRows | None:
        with self._lock:
            rows = self._rows.get((source, offset))
            if rows is not None:
                self._rows.move_to_end((source, offset))
            return rows

    def _decode(self, section: _FrameSection, fde: _Fde) -> FdeRows:
        rows = _Interpreter(section, fde).run()
        with self._lock:
            self._rows[(fde.range.source, fde.range.offset)] = rows
            while len(self._rows) > _FDE_CACHE_SIZE:
                self._rows.popitem(last=False)
        return rows

    def fdes(self) -> Iterator[FdeRange]:
        """Every FDE of ``.eh_frame`` and then ``.debug_frame``, in section order."""
        eh = self._eh_section()
        if eh is not None:
            yield from eh.scan()
        debug = self._debug_section()
        if debug is not None:
            yield from debug.scan()

    # ------------------------------------------------------------- lazy section loading

    def _eh_section(self) -> _FrameSection | None:
        if "eh" not in self._loaded:
            with self._lock:
                if "eh" not in self._loaded:
                    self._load_eh()
                    self._loaded.add("eh")
        return self._eh

    def _load_eh(self) -> None:
        elf = self.elf
        sec = _present(elf, ".eh_frame")
        if sec is None:
            return
        self._eh = _FrameSection(
            elf, elf.section_data(sec), sec.addr, FrameSource.EH_FRAME, _bases(elf)
        )
        hdr = _present(elf, ".eh_frame_hdr")
        if hdr is not None:
            self._hdr = _HdrTable.parse(elf, hdr, self._eh)

    def _debug_section(self) -> _FrameSection | None:
        if "debug" not in self._loaded:
            section = self._load_debug()
            with self._lock:
                self._debug = section
                self._loaded.add("debug")
        return self._debug

    def _load_debug(self) -> _FrameSection | None:
        for elf in (self.elf, self.elf.debug_file()):
            sec = _present(elf, ".debug_frame") if elf is not None else None
            if elf is not None and sec is not None:
                data = elf.section_contents(sec)
                return _FrameSection(elf, data, 0, FrameSource.DEBUG_FRAME, _Bases(None, None))
        return None


def _present(elf: ElfFile, name: str) -> Section | None:
    """The section *name* when it has bytes in this file (debug files keep NOBITS copies)."""
    sec = elf.section(name)
    if sec is None or sec.type == SectionType.NOBITS or sec.size == 0:
        return None
    return sec


def _bases(elf: ElfFile) -> _Bases:
    text = elf.section(".text")
    got = elf.section(".got")
    return _Bases(text.addr if text else None, got.addr if got else None)
