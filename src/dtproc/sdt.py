"""Layer 2: USDT probes (``<sys/sdt.h>``, systemtap v3 notes in ``.note.stapsdt``).

Each ``STAP_PROBE``/``DTRACE_PROBE`` site leaves a note holding the probe's pc, the link-time
address of ``.stapsdt.base``, an optional semaphore address and an argument string in
assembler syntax such as ``-4@%eax 8@16(%rbx) 8@buf(%rip)``.  If the file was prelinked or
otherwise moved, the difference between the real ``.stapsdt.base`` address and the one the
note recorded is added to pc and semaphore, as systemtap does.

Kernel uprobes want file offsets, so probes carry ``pc_offset`` and ``semaphore_offset``
(the latter is ``ref_ctr_offset`` for ``perf_event_open``) next to the file vaddrs.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dtproc.elf import EM_X86_64, ElfFile, Section
from dtproc.errors import ElfError

__all__ = ["SdtArg", "SdtArgKind", "SdtProbe", "parse_arg", "parse_args", "probes"]

NT_STAPSDT: Final = 3
_NOTE_HEAD = struct.Struct("<QQQ")


class SdtArgKind(enum.Enum):
    REGISTER = "register"  # the value is in a register
    MEMORY = "memory"  # the value is in memory at an address computed from registers
    CONSTANT = "constant"  # the value (or a symbol's address plus constant) is immediate


def _register_table() -> dict[str, tuple[str, int, int]]:
    """Every x86-64 general register name -> (64-bit register, width in bytes, bit shift)."""
    table: dict[str, tuple[str, int, int]] = {"rip": ("rip", 8, 0), "eip": ("rip", 4, 0)}
    for r in "abcd":
        full = f"r{r}x"
        table |= {full: (full, 8, 0), f"e{r}x": (full, 4, 0), f"{r}x": (full, 2, 0)}
        table |= {f"{r}l": (full, 1, 0), f"{r}h": (full, 1, 8)}
    for r in ("si", "di", "bp", "sp"):
        full = f"r{r}"
        table |= {full: (full, 8, 0), f"e{r}": (full, 4, 0), r: (full, 2, 0), f"{r}l": (full, 1, 0)}
    for n in range(8, 16):
        full = f"r{n}"
        table |= {full: (full, 8, 0), f"{full}d": (full, 4, 0), f"{full}w": (full, 2, 0)}
        table |= {f"{full}b": (full, 1, 0), f"{full}l": (full, 1, 0)}
    return table


_REGISTERS: Final = _register_table()
_SIZES: Final = frozenset({1, 2, 4, 8})
_NUM = r"(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_INT = rf"[-+]?{_NUM}"
_SYM = r"[A-Za-z_.][\w.$@]*"
_ARG_RE: Final = re.compile(r"(?:(?P<sign>-)?(?P<size>[0-9]+)@)?(?P<operand>\S+)")
_REG_RE: Final = re.compile(r"%(?P<reg>\w+)")
_IMM_RE: Final = re.compile(rf"\$(?:(?P<int>{_INT})|(?P<sym>{_SYM})(?P<off>[-+]{_NUM})?)")
_MEM_RE: Final = re.compile(
    # "8+tbl(%rip)" (gcc 12, PIE), "tbl+8(%rip)", "-16(%rbp)", "tbl(%rip)"
    rf"(?:(?P<lead>{_INT})\+(?P<leadsym>{_SYM})|(?P<int>{_INT})|(?P<sym>{_SYM})(?P<off>[-+]{_NUM})?)?"
    r"(?:\((?:%(?P<base>\w+))?(?:,%(?P<index>\w+)(?:,(?P<scale>[1248]))?)?\))?"
)


@dataclass(frozen=True, slots=True)
class SdtArg:
    """One probe argument.

    REGISTER: the value is ``register`` (64-bit name, as in ``UserRegs``), of which the
    low ``register_width`` bytes after shifting right by ``register_shift`` count (``%ah``).
    MEMORY: ``size`` bytes at ``[symbol] + displacement + register + index * scale``, where
    ``register`` ``rip`` with a ``symbol`` means the symbol's address (resolve it in the
    same file and add the load bias).  CONSTANT: ``constant`` (plus ``symbol``'s address).
    """

    size: int
    signed: bool
    kind: SdtArgKind
    register: str | None = None
    displacement: int = 0
    index: str | None = None
    scale: int = 1
    constant: int = 0
    symbol: str | None = None
    register_width: int = 8
    register_shift: int = 0
    text: str = ""

    def convert(self, raw: int) -> int:
        """*raw* cut to ``size`` bytes and sign-extended when the argument is signed."""
        bits = 8 * self.size
        value = raw & ((1 << bits) - 1)
        if self.signed and value >> (bits - 1):
            value -= 1 << bits
        return value


@dataclass(frozen=True, slots=True)
class SdtProbe:
    """One USDT probe site; addresses are file vaddrs (add the load bias for runtime ones).

    ``semaphore`` is 0 when the probe has none.  ``pc_offset``/``semaphore_offset`` are file
    offsets (None when no file byte backs the address), as uprobes want them.
    """

    provider: str
    name: str
    pc: int
    base: int
    semaphore: int
    args: tuple[SdtArg, ...]
    arg_string: str
    pc_offset: int | None
    semaphore_offset: int | None

    @property
    def has_semaphore(self) -> bool:
        return self.semaphore != 0


def _register(name: str | None, text: str) -> tuple[str, int, int]:
    if name is None or name not in _REGISTERS:
        raise ValueError(f"unknown register %{name} in {text!r}")
    return _REGISTERS[name]


def _int(text: str | None) -> int:
    """An assembler integer: ``0x`` hex, a leading ``0`` octal (as in GAS), else decimal."""
    if not text:
        return 0
    digits = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits[1:], 8)
    return sign * int(digits)


def parse_arg(text: str) -> SdtArg:
    """Parse one ``[-]SIZE@OPERAND`` argument; ``ValueError`` says what is wrong.

    Without ``SIZE@`` (v1 notes) an argument is taken as 8 bytes, unsigned.
    """
    head = _ARG_RE.fullmatch(text)
    if head is None:
        raise ValueError(f"malformed argument {text!r}")
    size = int(head["size"]) if head["size"] else 8
    if size not in _SIZES:
        raise ValueError(f"argument size {size} in {text!r} is not 1, 2, 4 or 8")
    signed = head["sign"] is not None
    operand = head["operand"]
    if match := _REG_RE.fullmatch(operand):
        reg, width, shift = _register(match["reg"], text)
        kind = SdtArgKind.REGISTER
        return SdtArg(
            size, signed, kind, reg, register_width=width, register_shift=shift, text=text
        )
    if match := _IMM_RE.fullmatch(operand):
        value = _int(match["int"]) + _int(match["off"])
        kind = SdtArgKind.CONSTANT
        return SdtArg(size, signed, kind, constant=value, symbol=match["sym"], text=text)
    match = _MEM_RE.fullmatch(operand)
    if match is None or not any(match[g] for g in ("int", "sym", "leadsym", "base", "index")):
        raise ValueError(f"cannot parse operand {operand!r} of {text!r}")
    base = _register(match["base"], text) if match["base"] else None
    index = _register(match["index"], text)[0] if match["index"] else None
    return SdtArg(
        size,
        signed,
        SdtArgKind.MEMORY,
        register=None if base is None else base[0],
        displacement=_int(match["int"]) + _int(match["off"]) + _int(match["lead"]),
        index=index,
        scale=int(match["scale"] or 1),
        symbol=match["sym"] or match["leadsym"],
        register_width=8 if base is None else base[1],
        text=text,
    )


def parse_args(spec: str) -> tuple[SdtArg, ...]:
    """Parse a whole argument string (space separated)."""
    return tuple(parse_arg(token) for token in spec.split())


def _probe(elf: ElfFile, desc: bytes, base_section: Section | None) -> SdtProbe:
    if len(desc) < _NOTE_HEAD.size:
        raise ElfError(elf.path, f"truncated .note.stapsdt note of {len(desc)} bytes")
    pc, base, semaphore = _NOTE_HEAD.unpack_from(desc)
    strings = desc[_NOTE_HEAD.size :].split(b"\0")
    if len(strings) < 3:
        raise ElfError(elf.path, f"USDT note at pc 0x{pc:x} lacks provider or probe name")
    provider, name, arg_string = (s.decode("utf-8", "backslashreplace") for s in strings[:3])
    if base_section is not None and base:
        delta = base_section.addr - base
        pc += delta
        semaphore = semaphore + delta if semaphore else 0
    try:
        args = parse_args(arg_string)
    except ValueError as exc:
        raise ElfError(elf.path, f"USDT probe {provider}:{name} at 0x{pc:x}: {exc}") from exc
    return SdtProbe(
        provider,
        name,
        pc,
        base,
        semaphore,
        args,
        arg_string,
        elf.vaddr_to_offset(pc),
        elf.vaddr_to_offset(semaphore) if semaphore else None,
    )


def probes(elf: ElfFile) -> Sequence[SdtProbe]:
    """Every USDT probe of *elf*, in note order (one entry per site: inlined copies repeat)."""
    sec = elf.section(".note.stapsdt")
    if sec is None:
        return ()
    notes = [n for n in elf.notes(sec) if n.name == "stapsdt" and n.type == NT_STAPSDT]
    if notes and elf.machine != EM_X86_64:
        raise ElfError(elf.path, f"USDT arguments of machine {elf.machine} are not supported")
    base_section = elf.section(".stapsdt.base")
    return tuple(_probe(elf, note.desc, base_section) for note in notes)
