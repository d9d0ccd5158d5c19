"""How a thread stopped on one of our int3s gets past the instruction the int3 displaced.

Three plans, chosen once per breakpoint site from the original bytes:

* :class:`EmulatePlan` -- the tracer does what the instruction would have done
  (``push %rbp``, ``endbr64``, ``sub $n,%rsp``, a call or a jump...) to the
  registers and stack, and the thread resumes after it. One stop per hit.
* :class:`SlotPlan` -- the instruction, relocated, runs from a slot in a scratch
  page of the target and a jump brings the thread back. One stop per hit, any
  number of threads in the slot at once.
* :class:`StepOverPlan` -- the classic dance with every other thread stopped:
  restore the byte, single-step, put the int3 back. Correct, slow; only for
  instructions that neither of the others can take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dtproc._sys import ptrace
from dtproc._sys.regs import UserRegs

if TYPE_CHECKING:
    from dtproc.tracee import Tracee


class Plan(Protocol):
    def prepare(self, tid: int, regs: UserRegs) -> None:
        """Set the thread up so that a plain PTRACE_CONT runs past the displaced instruction."""

    def step(self, tid: int, regs: UserRegs) -> None:
        """Run exactly the displaced instruction and leave the thread stopped after it."""


class StepOverPlan:
    def __init__(self, tracee: Tracee, address: int) -> None:
        self._tracee = tracee
        self._address = address

    def prepare(self, tid: int, regs: UserRegs) -> None:
        ptrace.setregs(tid, regs)
        self._tracee._step_over(tid, self._address)

    def step(self, tid: int, regs: UserRegs) -> None:
        self.prepare(tid, regs)


class Scratch:
    """Scratch pages in the target for out-of-line slots (allocated on first need)."""

    def __init__(self, tracee: Tracee) -> None:
        self._tracee = tracee

    def plan(self, address: int, code: bytes) -> Plan:
        return StepOverPlan(self._tracee, address)
