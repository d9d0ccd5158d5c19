"""x86-64 instruction knowledge for breakpoints and probes (layer 2, no policy).

dtproc's breakpoints leave their int3 in place and get each thread past the displaced
instruction in one stop, without the restore/single-step/re-insert dance that lets other
threads run past unseen. :func:`plan` says how, once per breakpoint site:

* :class:`Emulated` -- the tracer applies the instruction's effect to the registers (and
  the stack) itself: every rip-dependent control transfer, and the cheap common forms.
* :class:`OutOfLine` -- a relocated copy runs from a slot in a scratch page, followed by a
  jump back.

Both say ``length`` and whether the instruction has a rip-relative operand (``rip_target``).
Instructions that neither way can take raise :class:`~dtproc.errors.DisplaceError`: an int3
already there, a far call, bytes that do not decode.

Also here: :func:`decode` and :func:`instruction_boundaries` for offset probes, and
:func:`return_sites` for return probes. The pieces live in ``insn_*`` modules.
"""

from __future__ import annotations

from typing import TypeAlias

from dtproc.errors import DisplaceError
from dtproc.insn_decode import Flow, Instruction, decode, instruction_boundaries
from dtproc.insn_emulate import (
    STATUS_FLAGS,
    Emulated,
    EmulatedForm,
    ReadMem,
    WriteMem,
    emulation_for,
)
from dtproc.insn_returns import ReturnKind, ReturnSite, ReturnSites, return_sites
from dtproc.insn_xol import SLOT_SIZE, OutOfLine, out_of_line_for

Displaced: TypeAlias = Emulated | OutOfLine

__all__ = [
    "SLOT_SIZE",
    "STATUS_FLAGS",
    "DisplaceError",
    "Displaced",
    "Emulated",
    "EmulatedForm",
    "Flow",
    "Instruction",
    "OutOfLine",
    "ReadMem",
    "ReturnKind",
    "ReturnSite",
    "ReturnSites",
    "WriteMem",
    "decode",
    "instruction_boundaries",
    "plan",
    "plan_instruction",
    "return_sites",
]


def plan(code: bytes, address: int) -> Displaced:
    """How to execute the instruction at ``address``, whose original bytes start ``code``.

    Pass at least 15 bytes when there are that many (the longest instruction), and the
    original bytes, never ones with an int3 already written over them.
    """
    insns = decode(code[:15], address, 1)
    if not insns:
        raise DisplaceError(
            address, f"bytes {bytes(code[:15]).hex(' ')} do not decode as an x86-64 instruction"
        )
    return plan_instruction(insns[0])


def plan_instruction(insn: Instruction) -> Displaced:
    """:func:`plan` for an instruction already decoded (say by a sweep over a function)."""
    emulated = emulation_for(insn)
    if emulated is not None:
        return emulated
    return out_of_line_for(insn)
