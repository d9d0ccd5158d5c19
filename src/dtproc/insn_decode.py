"""Decoding x86-64 machine code into :class:`Instruction` values (capstone underneath).

Capstone runs without its detail mode: detail makes a linear sweep seven times slower in C
and ten times slower through the Python binding, and everything probes need from detail
(control flow, branch targets, rip-relative operands) comes from :mod:`dtproc.insn_encoding`
at a fraction of the cost. One capstone handle is kept per thread, because a handle carries
state (its last error, its options) and ctypes releases the GIL while capstone runs.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Any

import capstone

from dtproc.insn_encoding import M32, M64, Encoding, EncodingError, Escape, OpMap, parse

_local = threading.local()


def _capstone() -> Any:  # capstone.Cs has no type information
    cs = getattr(_local, "cs", None)
    if cs is None:
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        cs.syntax = capstone.CS_OPT_SYNTAX_ATT  # what objdump and gdb print
        _local.cs = cs
    return cs


class Flow(enum.Enum):
    """Where control goes after an instruction; enough for return sites and displacement."""

    NEXT = "next"  # falls through (includes syscall and int n, which come back)
    JUMP = "jump"  # direct jmp rel8/rel32
    INDIRECT_JUMP = "indirect jump"  # jmp *reg or *mem
    BRANCH = "branch"  # conditional: jcc, loop*, jrcxz/jecxz, xbegin (may go to its target)
    CALL = "call"  # direct call rel32
    INDIRECT_CALL = "indirect call"  # call *reg or *mem
    RETURN = "return"  # near ret, ret imm16
    FAR = "far"  # far call/jmp/ret, iret: leaves through a segment selector
    TRAP = "trap"  # int3, int1, hlt, ud0/ud1/ud2: never falls through by itself


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction.

    ``target`` is the destination of a direct (relative) branch, call or xbegin;
    ``rip_target`` the address a rip-relative operand refers to (a memory operand, or what
    a ``lea`` computes). Both are absolute addresses, or ``None``.
    """

    address: int
    size: int
    mnemonic: str
    op_str: str
    bytes: bytes
    flow: Flow
    target: int | None
    rip_target: int | None
    encoding: Encoding = field(repr=False, compare=False)

    @property
    def end(self) -> int:
        return self.address + self.size

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".rstrip()


class PlanFacts:
    """What every displacement plan tells its caller, read from its ``instruction``."""

    __slots__ = ()
    instruction: Instruction

    @property
    def address(self) -> int:
        return self.instruction.address

    @property
    def length(self) -> int:
        return self.instruction.size

    @property
    def rip_target(self) -> int | None:
        """The address a rip-relative operand refers to (``None`` without one)."""
        return self.instruction.rip_target

    @property
    def rip_relative(self) -> bool:
        return self.instruction.rip_target is not None


def decode(code: bytes, address: int, count: int = 0) -> list[Instruction]:
    """Linear sweep from ``address`` (the address of ``code[0]``), ``count`` instructions
    or (``0``) as far as the bytes decode. The sweep stops silently at the first bytes that
    do not decode: compare the end of the last instruction with ``len(code)`` to know.
    """
    out: list[Instruction] = []
    for addr, size, mnemonic, op_str in _capstone().disasm_lite(code, address, count):
        start = addr - address
        raw = bytes(code[start : start + size])
        try:
            enc = parse(raw)
        except EncodingError:
            break  # capstone and the structure parse disagree: trust neither
        flow, target = _flow(enc, addr + size)
        rip_target = None
        if enc.rip_relative:
            rip_target = (addr + size + enc.disp) & (M32 if enc.addr32 else M64)
        out.append(Instruction(addr, size, mnemonic, op_str, raw, flow, target, rip_target, enc))
    return out


def instruction_boundaries(code: bytes, address: int) -> list[int]:
    """Offsets (from ``code[0]``) where instructions start, by linear sweep.

    An offset probe is valid only at one of these. Cheaper than :func:`decode` because
    nothing but capstone's length is looked at.
    """
    return [addr - address for addr, _, _, _ in _capstone().disasm_lite(code, address)]


_RELATIVE_BRANCH = frozenset([*range(0x70, 0x80), 0xE0, 0xE1, 0xE2, 0xE3])
_PRIMARY_FLOW = {
    0xE8: Flow.CALL,
    0xE9: Flow.JUMP,
    0xEB: Flow.JUMP,
    0xC2: Flow.RETURN,
    0xC3: Flow.RETURN,
    0xCA: Flow.FAR,
    0xCB: Flow.FAR,
    0xCF: Flow.FAR,
    0xCC: Flow.TRAP,
    0xF1: Flow.TRAP,
    0xF4: Flow.TRAP,
}
_GROUP5_FLOW = {2: Flow.INDIRECT_CALL, 3: Flow.FAR, 4: Flow.INDIRECT_JUMP, 5: Flow.FAR}


def _flow(enc: Encoding, end: int) -> tuple[Flow, int | None]:
    """Classify by opcode, and compute the target of relative forms from ``end``."""
    if enc.escape is not Escape.LEGACY:
        return Flow.NEXT, None
    op = enc.opcode
    if enc.opmap is OpMap.PRIMARY:
        if op in _RELATIVE_BRANCH or enc.xbegin:
            return Flow.BRANCH, (end + enc.imm) & M64
        flow = _PRIMARY_FLOW.get(op)
        if flow is Flow.CALL or flow is Flow.JUMP:
            return flow, (end + enc.imm) & M64
        if flow is not None:
            return flow, None
        if op == 0xFF:
            return _GROUP5_FLOW.get(enc.reg & 7, Flow.NEXT), None
    elif enc.opmap is OpMap.M0F:
        if 0x80 <= op <= 0x8F:
            return Flow.BRANCH, (end + enc.imm) & M64
        if op in (0x0B, 0xB9, 0xFF):
            return Flow.TRAP, None
    return Flow.NEXT, None
