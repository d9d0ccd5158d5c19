"""Conditional tail calls: does this hit leave the function?

A function can end in ``jcc other_function``: when the branch is taken the
function returns (through its tail callee), when it is not it runs on. The pid
provider places a ``return`` probe on such a jump (``ReturnHow.COND_TAIL_CALL``),
and both backends then need to know, per hit, which way the jump goes. They do
it the same way: decode the jump once, and apply it to a copy of the hit's
registers (their flags decide); the ptrace backend with the registers of the
stopped thread, the uprobe backend with the sampled ones.
"""

from __future__ import annotations

from collections.abc import Callable

from dtproc import insn
from dtproc._sys.regs import UserRegs
from dtproc.errors import DtprocError
from dtproc.probes.sites import ProbeSite

__all__ = ["branch_plan", "branch_taken"]

#: Reads *size* bytes at an address of the traced process (or of its files).
ReadCode = Callable[[int, int], bytes]


def branch_plan(read: ReadCode, address: int) -> insn.Emulated | None:
    """How to evaluate the conditional jump at *address*, decoded from what *read* gives.

    None when the bytes cannot be read or are not an emulated jump: the site then
    counts as returning at every hit (see :func:`branch_taken`). *read* must give
    the original code, never bytes with a breakpoint written over them.
    """
    try:
        plan = insn.plan(read(address, 16), address)
    except DtprocError:
        return None
    return plan if isinstance(plan, insn.Emulated) else None


def branch_taken(plan: insn.Emulated | None, site: ProbeSite, regs: UserRegs) -> bool:
    """Whether a conditional tail call at this hit leaves the function (then it returns).

    The jump is applied to a copy of *regs*; without a plan the site counts as
    returning.
    """
    if plan is None or site.branch_target is None:
        return True
    probe = regs.copy()
    plan.apply(probe, _no_write, _no_read)
    return bool(probe.rip == site.branch_target)


def _no_write(address: int, data: bytes) -> None:
    raise DtprocError("a conditional branch does not write memory")


def _no_read(address: int, size: int) -> bytes:
    raise DtprocError("a conditional branch does not read memory")
