"""Running a displaced instruction out of line: a relocated copy in a slot, then a jump back.

A slot holds the instruction, with a rip-relative displacement (or xbegin's abort offset)
rewritten so that it still reaches the same absolute address, followed by a jump to the
instruction after the original. The tracer points ``rip`` at the slot and continues: one
stop per hit, no single-step, and since a slot is pure code any number of threads may run
through it at once. The jump back is ``jmp rel32`` when the original is within ±2 GiB of the
slot, else ``jmp *n(%rip)`` through the absolute address stored after it (8-aligned).

Only instructions that continue at the next instruction (or trap, or leave through a far
return, which does not depend on where it sits) are moved; every rip-dependent control
transfer is emulated instead (:mod:`dtproc.insn_emulate`), and a far call, which would push
the slot's address, is refused. A signal raised by the moved copy reports the slot address
in ``rip``: ``original_rip`` maps it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtproc.errors import DisplaceError
from dtproc.insn_decode import Flow, Instruction, PlanFacts
from dtproc.insn_encoding import M32, OPSIZE, fits_int32

JUMP_BACK_MAX = 21  # jmp *n(%rip), up to 7 bytes of int3 padding, .quad target
SLOT_SIZE = 40  # longest instruction (15) plus the longest jump back, rounded up
USER_TOP = 1 << 47  # end of the canonical user address space

_MOVABLE_FLOWS = frozenset({Flow.NEXT, Flow.TRAP, Flow.FAR, Flow.BRANCH})


@dataclass(frozen=True, slots=True)
class Relocation:
    """A 32-bit field of the instruction holding ``target - end_of_instruction``.

    With ``wrap`` the address is computed in 32 bits (an 0x67 ``disp(%eip)`` operand), so
    any slot reaches the target modulo 2**32.
    """

    offset: int
    target: int
    wrap: bool


@dataclass(frozen=True, slots=True)
class OutOfLine(PlanFacts):
    """Run the displaced instruction from a slot; :meth:`slot_bytes` says what to write."""

    instruction: Instruction
    relocation: Relocation | None

    @property
    def slot_size(self) -> int:
        """Upper bound of ``len(slot_bytes(s))`` for any slot ``s``."""
        return self.instruction.size + JUMP_BACK_MAX

    @property
    def slot_window(self) -> tuple[int, int] | None:
        """The lowest and highest slot address the relocation reaches from, or ``None``
        when any slot will do. Allocate the scratch page inside this window.
        """
        f = self.relocation
        if f is None or f.wrap:
            return None
        end = self.instruction.size
        # rel = target - (slot + end) must lie in [-2**31, 2**31 - 1]
        low = max(0, f.target - end - (1 << 31) + 1)
        high = min(USER_TOP - self.slot_size, f.target - end + (1 << 31))
        return low, high

    def fits(self, slot_address: int) -> bool:
        window = self.slot_window
        return window is None or window[0] <= slot_address <= window[1]

    def slot_bytes(self, slot_address: int) -> bytes:
        """The relocated instruction followed by the jump back, for a slot at this address."""
        insn = self.instruction
        code = bytearray(insn.bytes)
        slot_end = slot_address + insn.size
        f = self.relocation
        if f is not None:
            rel = f.target - slot_end
            if f.wrap:
                rel = ((rel & M32) ^ (1 << 31)) - (1 << 31)
            elif not fits_int32(rel):
                low, high = self.slot_window or (0, 0)
                raise DisplaceError(
                    insn.address,
                    f"{insn} refers to 0x{f.target:x}, out of reach of a slot at "
                    f"0x{slot_address:x}; put the slot between 0x{low:x} and 0x{high:x}",
                )
            code[f.offset : f.offset + 4] = rel.to_bytes(4, "little", signed=True)
        back = insn.end - (slot_end + 5)
        if fits_int32(back):
            code += b"\xe9" + back.to_bytes(4, "little", signed=True)
        else:
            # The quadword is aligned: with EFLAGS.AC set (a program may set it with popf)
            # an unaligned load would raise SIGBUS where the original ran fine.
            pad = -(slot_end + 6) % 8
            code += b"\xff\x25" + pad.to_bytes(4, "little") + b"\xcc" * pad
            code += insn.end.to_bytes(8, "little")
        return bytes(code)

    def original_rip(self, slot_address: int, rip: int) -> int:
        """Map a ``rip`` inside the copy (a fault in it) back to the original instruction."""
        if slot_address <= rip < slot_address + self.instruction.size:
            return self.instruction.address + (rip - slot_address)
        return rip


def out_of_line_for(insn: Instruction) -> OutOfLine:
    """Plan to move the instruction; raises :class:`DisplaceError` when it cannot move."""
    enc = insn.encoding
    if insn.flow not in _MOVABLE_FLOWS:
        raise DisplaceError(insn.address, f"{insn} depends on its own address; emulate it")
    if insn.bytes == b"\xcc":
        raise DisplaceError(
            insn.address,
            "the original instruction is itself an int3 (padding, or someone else's "
            "breakpoint); there is nothing to run in its place",
        )
    if insn.flow is Flow.FAR and enc.opcode == 0xFF and enc.reg & 7 == 3:
        raise DisplaceError(insn.address, f"{insn} is a far call, which pushes its address")
    if insn.flow is Flow.BRANCH:
        if not enc.xbegin:
            raise DisplaceError(insn.address, f"{insn} depends on its own address; emulate it")
        if OPSIZE in enc.prefixes:  # the abort address is the field to keep
            raise DisplaceError(insn.address, f"{insn} has a 16-bit abort offset")
        target = insn.target if insn.target is not None else insn.end
        return OutOfLine(insn, Relocation(enc.imm_at, target, wrap=False))
    if insn.rip_target is not None:
        return OutOfLine(insn, Relocation(enc.disp_at, insn.rip_target, wrap=enc.addr32))
    return OutOfLine(insn, None)
