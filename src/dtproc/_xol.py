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

Scratch pages are mapped into the target by a ``mmap`` system call injected into
one of its threads, as close to the probed code as the relocation needs (rip-
relative operands reach +-2 GiB). They stay mapped when dtproc lets go: a thread
may still be inside a slot, or a signal frame may hold a slot address, and an
unused anonymous page harms nothing.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Final, Protocol

from dtproc import insn
from dtproc._sys import procfs, ptrace
from dtproc._sys.regs import UserRegs
from dtproc.errors import DisplaceError, DtprocError, ProbeError

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

PAGE: Final = 4096
SYS_MMAP: Final = 9
PROT_READ_EXEC: Final = 0x5
MAP_PRIVATE_ANON: Final = 0x22
MAP_FIXED_NOREPLACE: Final = 0x100000
_U64: Final = (1 << 64) - 1
_SLOTS_PER_PAGE: Final = PAGE // insn.SLOT_SIZE


class Plan(Protocol):
    def prepare(self, tid: int, regs: UserRegs) -> None:
        """Set the thread up so that a plain PTRACE_CONT runs past the displaced instruction."""

    def step(self, tid: int, regs: UserRegs) -> None:
        """Run exactly the displaced instruction and leave the thread stopped after it."""


class EmulatePlan:
    def __init__(self, tracee: Tracee, emulated: insn.Emulated) -> None:
        self._apply = emulated.apply
        self._write = tracee.write_raw
        self._read = tracee.read
        self._fallback = StepOverPlan(tracee, emulated.address)

    def prepare(self, tid: int, regs: UserRegs) -> None:
        try:
            self._apply(regs, self._write, self._read)
        except DtprocError:
            # A push onto a stack page the kernel has not mapped yet: /proc/PID/mem
            # writes do not grow stacks, the CPU does. apply() left the registers
            # untouched, so let the CPU run the instruction itself this once.
            self._fallback.prepare(tid, regs)
            return
        ptrace.setregs(tid, regs)

    def step(self, tid: int, regs: UserRegs) -> None:
        self.prepare(tid, regs)


class SlotPlan:
    def __init__(self, tracee: Tracee, address: int, length: int, slot: int) -> None:
        self._tracee = tracee
        self._address = address
        self._length = length
        self.slot = slot

    def prepare(self, tid: int, regs: UserRegs) -> None:
        regs.rip = self.slot
        ptrace.setregs(tid, regs)

    def step(self, tid: int, regs: UserRegs) -> None:
        """Step the relocated copy, then map the thread back onto the original code."""
        self.prepare(tid, regs)
        self._tracee.step_raw(tid)
        after = ptrace.getregs(tid)
        if after.rip == self.slot + self._length:  # fell through: continue after the original
            after.rip = self._address + self._length
            ptrace.setregs(tid, after)


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
    """Out-of-line slots in pages mapped into the target (allocated on first need)."""

    def __init__(self, tracee: Tracee) -> None:
        self._tracee = tracee
        self._pages: list[int] = []  # sorted page addresses
        self._used: dict[int, int] = {}  # page -> slots handed out
        self._syscall_site = 0

    def plan(self, address: int, code: bytes) -> Plan:
        try:
            displaced = insn.plan(code, address)
        except DisplaceError as exc:
            if code[:1] == b"\xcc":
                raise ProbeError(str(exc)) from None
            return StepOverPlan(self._tracee, address)
        if isinstance(displaced, insn.Emulated):
            return EmulatePlan(self._tracee, displaced)
        try:
            slot = self._slot(displaced)
        except DtprocError:
            return StepOverPlan(self._tracee, address)  # no scratch page within reach
        self._tracee.write_raw(slot, displaced.slot_bytes(slot))
        return SlotPlan(self._tracee, address, displaced.length, slot)

    # -- slots -------------------------------------------------------------------------
    def _slot(self, displaced: insn.OutOfLine) -> int:
        window = displaced.slot_window
        for page in self._pages:
            n = self._used[page]
            if n < _SLOTS_PER_PAGE and displaced.fits(page + n * insn.SLOT_SIZE):
                return self._take(page)
        page = self._map_page(displaced.address, window)
        bisect.insort(self._pages, page)
        self._used[page] = 0
        return self._take(page)

    def _take(self, page: int) -> int:
        n = self._used[page]
        self._used[page] = n + 1
        return page + n * insn.SLOT_SIZE

    def _map_page(self, near: int, window: tuple[int, int] | None) -> int:
        for hint in _candidate_addresses(self._tracee.pid, near, window):
            got = self._inject_mmap(hint)
            if got >= 0 and _page_fits(got, window):
                return got
            if got >= 0:
                self._tracee.inject_syscall(11, got, PAGE)  # munmap: out of reach after all
        raise DtprocError(f"pid {self._tracee.pid}: no room for a scratch page near 0x{near:x}")

    def _inject_mmap(self, hint: int) -> int:
        flags = MAP_PRIVATE_ANON | (MAP_FIXED_NOREPLACE if hint else 0)
        return self._tracee.inject_syscall(SYS_MMAP, hint, PAGE, PROT_READ_EXEC, flags, _U64, 0)


def _page_fits(page: int, window: tuple[int, int] | None) -> bool:
    if window is None:
        return True
    low, high = window
    return low <= page and page + PAGE - insn.SLOT_SIZE <= high


def _candidate_addresses(pid: int, near: int, window: tuple[int, int] | None) -> list[int]:
    """Free page addresses in the gaps of the address space, nearest to *near* first."""
    if window is None:
        return [0]
    low, high = window
    maps = procfs.read_maps(pid)
    gaps: list[tuple[int, int]] = []
    prev_end = 0x10000
    for m in maps:
        if m.start > prev_end:
            gaps.append((prev_end, m.start))
        prev_end = max(prev_end, m.end)
    gaps.append((prev_end, 0x7FFFFFFFF000))
    out: list[int] = []
    for start, end in gaps:
        start = max(start, low)
        end = min(end, high + PAGE)
        if end - start < PAGE:
            continue
        # The page of the gap closest to the code.
        if near < start:
            out.append(start)
        elif near >= end:
            out.append((end - PAGE) & ~(PAGE - 1))
        else:
            out.append(near & ~(PAGE - 1))
    out.sort(key=lambda a: abs(a - near))
    return out[:16]
