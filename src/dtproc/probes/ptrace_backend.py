"""The ptrace backend: each probe site is a breakpoint; each hit stops the thread once.

Any clause can run here -- the thread is stopped, so its registers, its memory
and its stack are all there to read. Sites at one address share one breakpoint;
the callback builds the hit's context lazily and hands it to the D runtime.
Breakpoints live in the process's control thread, which is the only thread that
may touch them (and the one whose callbacks fire).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from dtproc import insn
from dtproc.breakpoints import Breakpoint, BreakpointCallback
from dtproc.control import Process
from dtproc.errors import DtprocError
from dtproc.modules import Module
from dtproc.probes.backend import Fire, Placement
from dtproc.probes.branches import branch_plan, branch_taken
from dtproc.probes.context import ProcessFacts, PtraceHit
from dtproc.probes.sites import ReturnHow
from dtproc.probes.usdt import SemaphoreHold
from dtproc.tracee import Tracee


@dataclass(slots=True)
class _Entry:
    """Everything placed at one address of one process."""

    placements: list[Placement] = field(default_factory=list)
    branch: insn.Emulated | None = None  # for conditional tail calls: is the branch taken?
    bp: Breakpoint | None = None


@dataclass(slots=True)
class _ProcState:
    facts: ProcessFacts
    semaphores: SemaphoreHold
    entries: dict[int, _Entry] = field(default_factory=dict)


class PtraceBackend:
    name = "ptrace"

    def __init__(self, fire: Fire) -> None:
        self._fire = fire
        self._procs: dict[int, _ProcState] = {}
        self._lock = threading.Lock()

    def _state(self, proc: Process) -> _ProcState:
        with self._lock:
            st = self._procs.get(proc.pid)
            if st is None:
                sems = SemaphoreHold(proc.pid, proc.tracee.read, proc.tracee.write)
                st = self._procs[proc.pid] = _ProcState(ProcessFacts(proc.pid), sems)
            return st

    def enable(self, proc: Process, placements: Sequence[Placement]) -> None:
        if placements:
            proc.call(lambda t: self._install(t, proc, placements))

    def enable_here(self, proc: Process, placements: Sequence[Placement]) -> None:
        if placements:
            self._install(proc.tracee, proc, placements)

    def _install(self, tracee: Tracee, proc: Process, placements: Sequence[Placement]) -> None:
        st = self._state(proc)
        for pl in placements:
            addr = pl.site.address
            entry = st.entries.get(addr)
            if entry is None:
                entry = st.entries[addr] = _Entry()
                entry.bp = tracee.add_breakpoint(addr, self._callback(entry, st.facts))
            if pl.site.return_how is ReturnHow.COND_TAIL_CALL and entry.branch is None:
                entry.branch = branch_plan(tracee.read, addr)
            if pl.site.semaphore and not entry.placements:
                st.semaphores.acquire(pl.site)  # the program fires the probe only when asked
            entry.placements.append(pl)

    def _callback(self, entry: _Entry, facts: ProcessFacts) -> BreakpointCallback:
        fire = self._fire

        def on_hit(tracee: Tracee, tid: int) -> None:
            regs = tracee.registers(tid)
            for pl in entry.placements:
                site = pl.site
                if site.return_how is ReturnHow.COND_TAIL_CALL and not branch_taken(
                    entry.branch, site, regs
                ):
                    continue
                fire(pl.clauses, PtraceHit(tracee, tid, regs, site, facts))

        return on_hit

    def forget(self, proc: Process, modules: Sequence[Module] | None) -> None:
        st = self._state(proc)
        if modules is None:
            st.entries.clear()
            st.semaphores.forget()
            st.facts.refresh()  # exec: a new program, a new execname
            return
        for mod in modules:
            st.semaphores.forget(mod.start, mod.end)
            for addr in [a for a in st.entries if mod.contains(a)]:
                del st.entries[addr]

    def disable(self, proc: Process) -> None:
        with self._lock:
            st = self._procs.pop(proc.pid, None)
        if st is None or not st.entries:
            return
        bps = [e.bp for e in st.entries.values() if e.bp is not None]

        def remove(t: Tracee) -> None:
            for bp in bps:
                bp.remove()
            st.semaphores.release_all()  # a program that fired nothing before fires nothing after

        try:
            proc.call(remove)
        except DtprocError:
            pass  # the process is gone, and its breakpoints with it

    def close(self) -> None:
        with self._lock:
            self._procs.clear()
