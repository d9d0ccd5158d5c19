"""Breakpoints that are safe in multi-threaded targets: one table per address space.

The int3 byte stays in place for as long as the breakpoint exists. A thread
that hits it never sees the original instruction restored under its feet;
instead the displaced instruction is *emulated* by the tracer or *executed out
of line* from a scratch slot that ends with a jump back -- either way one
ptrace stop per hit and no window in which another thread can run past the
site unseen. Only an instruction that can be neither (none that compilers emit
at function entries) falls back to the classic step-over with every other
thread stopped.

Reads through the tracee show original bytes; a fork child gets its copy of our
int3 bytes removed before it runs; exec drops the table without writing.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

from dtproc import _xol
from dtproc._sys import ptrace
from dtproc._sys.regs import UserRegs
from dtproc.errors import DtprocError, ProbeError

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

INT3: Final = 0xCC
_CODE_WINDOW: Final = 16


class BreakpointAction(enum.Enum):
    """What a callback may ask for: go on (default), or keep the thread stopped here."""

    CONTINUE = enum.auto()
    STOP = enum.auto()


BreakpointCallback = Callable[["Tracee", int], "BreakpointAction | None"]


@final
class Breakpoint:
    """One client's breakpoint. Several may share a site (one int3 byte)."""

    def __init__(self, site: _Site, callback: BreakpointCallback | None) -> None:
        self._site = site
        self.callback = callback
        self.hits = 0
        self.active = True

    @property
    def address(self) -> int:
        return self._site.address

    def remove(self) -> None:
        """Remove this breakpoint; the int3 goes when the last one at its address does."""
        if self.active:
            self.active = False
            self._site.space.remove(self)

    def __repr__(self) -> str:
        return (
            f"<Breakpoint 0x{self.address:x} hits={self.hits}{'' if self.active else ' removed'}>"
        )


@dataclass(slots=True)
class _Site:
    space: AddressSpace
    address: int
    original: int
    code: bytes  # original bytes from the address on (for planning)
    plan: _xol.Plan
    breakpoints: list[Breakpoint] = field(default_factory=list)
    hits: int = 0


class AddressSpace:
    """The breakpoint table of one address space (one process image, until it execs)."""

    def __init__(self, tracee: Tracee) -> None:
        self.tracee = tracee
        self._sites: dict[int, _Site] = {}
        # Removed sites and their original bytes: late hits are absorbed there, and a
        # fork child whose first stop comes after the removal still carries the int3.
        self._graveyard: dict[int, int] = {}
        self._xol = _xol.Scratch(tracee)

    # -- queries used by the tracee ---------------------------------------------------
    @property
    def breakpoints(self) -> Sequence[Breakpoint]:
        return [bp for site in self._sites.values() for bp in site.breakpoints]

    def breakpoint_at(self, address: int) -> _Site | None:
        return self._sites.get(address)

    def trapped_by_us(self, address: int) -> bool:
        """Whether an int3 of ours is, or was, at *address*: a SIGTRAP from there is ours."""
        return address in self._sites or address in self._graveyard

    def was_ours(self, address: int) -> bool:
        """An address where we had an int3 that is gone now (late hits must be absorbed)."""
        return address in self._graveyard

    def overlay(self, address: int, data: bytes) -> bytes:
        """Replace our int3 bytes within [address, address+len) by the original bytes."""
        if not self._sites:
            return data
        end = address + len(data)
        hits = [s for a, s in self._sites.items() if address <= a < end]
        if not hits:
            return data
        buf = bytearray(data)
        for site in hits:
            buf[site.address - address] = site.original
        return bytes(buf)

    def write_through(self, address: int, data: bytes) -> None:
        """Write program bytes, keeping armed int3s in place (originals are updated)."""
        end = address + len(data)
        buf = bytearray(data)
        for a, site in self._sites.items():
            if address <= a < end:
                site.original = buf[a - address]
                buf[a - address] = INT3
        self.tracee.write_raw(address, bytes(buf))

    # -- adding and removing ----------------------------------------------------------
    def add(self, address: int, callback: BreakpointCallback | None) -> Breakpoint:
        site = self._sites.get(address)
        if site is None:
            site = self._new_site(address)
        bp = Breakpoint(site, callback)
        site.breakpoints.append(bp)
        return bp

    def _new_site(self, address: int) -> _Site:
        code = self.tracee.read(address, 1)
        if code[0] == INT3:
            raise ProbeError(
                f"pid {self.tracee.pid}: cannot place a breakpoint at 0x{address:x}: "
                "the program has its own int3 instruction there"
            )
        window = self.tracee.read_partial(address, _CODE_WINDOW)
        window = self.overlay(address, window)
        plan = self._xol.plan(address, window)
        site = _Site(self, address, code[0], window, plan)
        self.tracee.write_raw(address, bytes([INT3]))
        self._sites[address] = site
        self._graveyard.pop(address, None)
        return site

    def remove(self, bp: Breakpoint) -> None:
        site = bp._site
        if bp in site.breakpoints:
            site.breakpoints.remove(bp)
        if not site.breakpoints and self._sites.get(site.address) is site:
            self._disarm(site)

    def _disarm(self, site: _Site) -> None:
        del self._sites[site.address]
        self._graveyard[site.address] = site.original
        try:
            self.tracee.write_raw(site.address, bytes([site.original]))
        except DtprocError:
            pass  # the process is gone: nothing to restore

    def remove_all(self) -> None:
        for site in list(self._sites.values()):
            for bp in site.breakpoints:
                bp.active = False
            site.breakpoints.clear()
            self._disarm(site)

    def forget_range(self, start: int, end: int) -> None:
        """Drop sites in [start, end) without writing: their mapping is gone (dlclose)."""
        for address in [a for a in self._sites if start <= a < end]:
            site = self._sites.pop(address)
            for bp in site.breakpoints:
                bp.active = False
            site.breakpoints.clear()
        for address in [a for a in self._graveyard if start <= a < end]:
            del self._graveyard[address]

    def clean_copy(self, pid: int) -> None:
        """Write the original bytes over our int3s in a fork child's copy of memory.

        The child was forked at some moment before its first stop reached us: a site
        removed since may still be armed in its copy, so those are restored too where
        the copy holds an int3.
        """
        if not self._sites and not self._graveyard:
            return
        try:
            with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
                for site in self._sites.values():
                    mem.seek(site.address)
                    mem.write(bytes([site.original]))
                for address, original in _armed_in(mem.fileno(), self._graveyard):
                    mem.seek(address)
                    mem.write(bytes([original]))
        except OSError:
            pass  # the child died already

    # -- hits ------------------------------------------------------------------------
    def dispatch_hit(self, site: _Site, tid: int, regs: UserRegs) -> bool:
        """Count a hit and run callbacks; True when the thread must stay stopped."""
        site.hits += 1
        keep = False
        for bp in list(site.breakpoints):
            bp.hits += 1
            cb = bp.callback
            if cb is None or cb(self.tracee, tid) is BreakpointAction.STOP:
                keep = True
        return keep

    def execute_displaced(self, tid: int, regs: UserRegs) -> None:
        """Arrange for *tid* (stopped at a site, rip == site address) to run past it on resume."""
        site = self._sites.get(regs.rip)
        if site is None:
            # Removed meanwhile: the original byte is back, just run it.
            ptrace.setregs(tid, regs)
            return
        site.plan.prepare(tid, regs)

    def step_displaced(self, tid: int, regs: UserRegs) -> bool:
        """Single-step the displaced instruction of a thread stopped at a site.

        False when the site is gone: the original instruction is back in place and
        an ordinary single-step will do.
        """
        site = self._sites.get(regs.rip)
        if site is None:
            return False
        site.plan.step(tid, regs)
        return True


__all__ = ["AddressSpace", "Breakpoint", "BreakpointAction", "BreakpointCallback"]


def _armed_in(mem_fd: int, removed: dict[int, int]) -> list[tuple[int, int]]:
    """The removed sites whose int3 is still in this memory (read a page at a time)."""
    by_page: dict[int, list[int]] = {}
    for address in removed:
        by_page.setdefault(address & ~0xFFF, []).append(address)
    armed = []
    for page, addresses in by_page.items():
        try:
            data = os.pread(mem_fd, 0x1000, page)
        except OSError:
            continue  # unmapped in the child (it cannot have run there)
        armed += [(a, removed[a]) for a in addresses if data[a - page : a - page + 1] == b"\xcc"]
    return armed
