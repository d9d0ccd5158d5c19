"""The uprobe backend: probe sites as kernel uprobes; the target never stops for a hit.

A ptrace breakpoint stops the thread, switches to the tracer and back for every
hit. A uprobe does not: the kernel plants the int3, steps over the displaced
instruction itself and either bumps a counter or writes a sample (registers and
a copy of the top of the user stack) into a ring the tracer drains later. So a
clause can run here when everything it reads is in such a sample -- see
:func:`uprobe_eligible` -- and then:

* **counting**: a placement whose clauses are all pure ``count()``s
  (:attr:`ClauseNeeds.pure_count`) gets a kernel counter and no samples; the
  totals reach the runtime through ``add_counts`` at :meth:`UprobeBackend.disable`
  (or just before a sampled clause that may print or call ``exit()`` runs, so
  that ``printa`` and ``exit`` see the counts so far);
* **sampling**: any other eligible placement gets samples, which a drain thread
  turns into contexts (:mod:`dtproc.probes.samples`) and fires in time order
  (each thread's hits in the order they happened, so ``self->`` works).

The drain thread sleeps in one poll(2) over the rings of every thread of every
process (and an eventfd of ours: new rings, forgotten probes, shutdown). A ring
wakes it when a quarter full and when its thread exits; samples below that mark
are collected on a timer that backs off while nothing comes (see
:class:`UprobeOptions`), so a lone hit is not held back for long, yet an idle
target costs the tracer one poll(2) per ``idle_interval``. The kernel is not asked
to wake the reader per sample: that costs a hot probe several microseconds per
hit here (an interrupt each time).

Events are per thread (:attr:`dtproc.uprobes.Scope.THREAD`): the mechanism's
inherited events lose hits and cost ~90 ms per thread created on this kernel
(see :mod:`dtproc.uprobes`). Every thread gets its events before it runs its
first instruction: the existing ones when a placement is enabled, new ones from
the tracee's new-thread hook, both in the process's control thread. A thread
that exits leaves its events behind: its counters keep their counts, its rings
are drained for good. Everything is closed at :meth:`UprobeBackend.disable`,
not before: closing a uprobe event takes the kernel ~0.1 s here (an RCU grace
period, serialized with every other uprobe event's open and close), which must
not hold up the target's next ``pthread_create`` -- so disabling costs about
0.1 s per (thread, probe) event.

Return probes are plain uprobes at each ``ret`` and tail-call jump the pid
provider found, not uretprobes: ``arg0`` stays the offset of the returning
instruction, tail calls return for their function, and a conditional tail call
counts as a return only when its branch is taken (decided from the sampled flags,
so such sites are always sampled). A USDT semaphore is raised by the kernel
(``ref_ctr_offset``) while the probe is armed.

Samples can be lost when the drain thread falls behind (a full ring); while it
fires a long batch it stashes what the rings receive every ``drain_interval``
(:meth:`dtproc.uprobes.SampleRing.stash`), which gives a burst about twice the
ring before anything is dropped. Losses are reported through ``report_drops``,
as dtrace reports buffer drops: as the kernel's LOST records tell them, and
exactly when a ring is drained for good -- every sampling event also counts its
hits, so what did not arrive was lost, even when the ring was still full when
its thread exited and no LOST record came.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final, TypeVar

from dtproc import insn
from dtproc._sys import perf
from dtproc.control import Process
from dtproc.d import ClauseNeeds, ProbeInfo
from dtproc.errors import DtprocError, NoSuchProcess, ProbeError
from dtproc.modules import Module
from dtproc.probes.backend import Fire, Placement
from dtproc.probes.branches import branch_plan, branch_taken
from dtproc.probes.context import ProcessFacts
from dtproc.probes.samples import (
    ProcessImage,
    SampleData,
    SampleHit,
    sample_stack_bytes,
    wall_offset,
)
from dtproc.probes.sites import ProbeKind, ProbeSite, ReturnHow
from dtproc.sdt import SdtArgKind
from dtproc.tracee import Tracee
from dtproc.uprobes import (
    UPROBE_PMU,
    SampleOptions,
    SampleRing,
    Scope,
    UprobeCounter,
    UprobeSample,
    UprobeSpec,
)

__all__ = [
    "AddCounts",
    "ReportDrops",
    "UprobeBackend",
    "UprobeOptions",
    "uprobe_eligible",
    "uprobes_available",
]

AddCounts = Callable[[int, ProbeInfo, int], None]
ReportDrops = Callable[[int], None]
Warn = Callable[[str], None]

_FOREVER: Final = 1 << 63
_CAP_SYS_ADMIN: Final = 21
_CAP_PERFMON: Final = 38
_SAMPLES_PER_RING: Final = 64  # a ring with stack copies holds at least this many samples
_SAMPLE_OVERHEAD: Final = 512  # header, ids, time and registers of one sample, rounded up
_WRITE_MARGIN: Final = 5_000_000  # ns: a sample taken this long ago is surely in its ring
_STASH_CHECK: Final = 32  # samples fired between looks at the clock, to stash the rings
_STACK_BASES: Final = frozenset({"rsp", "rbp"})
_T = TypeVar("_T")


# ----------------------------------------------------------------------------- eligibility


def uprobe_eligible(needs: ClauseNeeds, site: ProbeSite | None = None) -> tuple[bool, str]:
    """Whether a clause can run from a uprobe sample at *site*, and why (for ``-v``/``-l``).

    Registers, the time, the thread, a copy of the stack (for ``ustack()`` and
    stack arguments) and per-process facts are in a sample; the target's memory
    as it was at the hit is not, so ``copyin``/``copyinstr``/dereferences and
    USDT arguments held in memory outside the probing frame need ptrace.
    """
    if needs.memory:
        return False, "needs the target's memory at the hit (copyin, copyinstr, a dereference)"
    if site is not None and site.kind is ProbeKind.USDT:
        for i in sorted(needs.args):
            if i >= len(site.usdt_args):
                continue
            arg = site.usdt_args[i]
            if arg.kind is SdtArgKind.MEMORY and arg.register not in _STACK_BASES:
                operand = arg.text or "a memory operand"
                return False, f"arg{i} of {site} is in the target's memory at the hit ({operand})"
    return True, "everything it reads is in a uprobe sample (registers, stack copy, time)"


def uprobes_available() -> tuple[bool, str]:
    """Whether this process may use the uprobe PMU here, and if not, what is missing.

    Opening a uprobe event needs CAP_PERFMON (or CAP_SYS_ADMIN, or root) whatever
    ``kernel.perf_event_paranoid`` says; that is checked without opening one.
    """
    if not os.path.isdir(f"{perf.PMU_ROOT}/{UPROBE_PMU}"):
        return False, (
            f"this kernel has no uprobe PMU ({perf.PMU_ROOT}/{UPROBE_PMU} is missing; "
            "it needs CONFIG_UPROBE_EVENTS, Linux 4.17 or later)"
        )
    if os.geteuid() == 0 or _capable(_CAP_PERFMON) or _capable(_CAP_SYS_ADMIN):
        return True, "the uprobe PMU is there and this process may open its events"
    return False, (
        f"opening uprobes needs root, CAP_PERFMON or CAP_SYS_ADMIN "
        f"(kernel.perf_event_paranoid is {_paranoid()}, which does not matter for uprobes)"
    )


def _capable(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _paranoid() -> str:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class UprobeOptions:
    """Buffering and draining of samples.

    Each thread has a ring of at least *ring_bytes* per group of probes (more
    when stacks are copied: room for 64 samples). A ring a quarter full wakes the
    drain thread at once; below that, the drain thread looks at the rings every
    *drain_interval* seconds while samples come, backing off to *idle_interval*
    when none do -- the longest a lone sample waits.
    """

    ring_bytes: int = 1 << 20
    drain_interval: float = 0.002
    idle_interval: float = 0.05

    def __post_init__(self) -> None:
        if self.ring_bytes < perf.PAGE_SIZE:
            raise ValueError(f"ring_bytes must be at least a page: {self.ring_bytes}")
        if not 0 < self.drain_interval <= self.idle_interval:
            raise ValueError("need 0 < drain_interval <= idle_interval")

    def sampling(self, stack_bytes: int) -> SampleOptions:
        """The ring options for events that copy *stack_bytes* of stack per hit."""
        size = self.ring_bytes
        if stack_bytes:
            size = max(size, _SAMPLES_PER_RING * (stack_bytes + _SAMPLE_OVERHEAD))
        pages = 1
        while pages * perf.PAGE_SIZE < size:
            pages *= 2
        return SampleOptions(stack_bytes=stack_bytes, ring_pages=pages)


# ----------------------------------------------------------------------------- state


@dataclass(eq=False, slots=True)
class _Counted:
    """A placement served by its probe's kernel counters."""

    placement: Placement
    baseline: int  # the probe's count when the placement was enabled
    delivered: int = 0


@dataclass(eq=False, slots=True)
class _Sampled:
    """A placement fired from samples taken at or after *since* (CLOCK_MONOTONIC ns)."""

    placement: Placement
    since: int
    branch: insn.Emulated | None  # conditional tail calls: how to tell if the branch is taken
    shows_counts: bool  # a clause may print or exit(): counted hits must reach it first


@dataclass(eq=False, slots=True)
class _Window:
    """Which samples of one sampler set a probe takes: [start, end) on the sample clock."""

    start: int = 0
    end: int = _FOREVER


@dataclass(eq=False)
class _Probe:
    """One uprobe (file and offset) in one process, and the placements it serves."""

    spec: UprobeSpec
    address: int
    counted: tuple[_Counted, ...] = ()
    sampled: tuple[_Sampled, ...] = ()
    counters: dict[int, UprobeCounter] | None = None  # by live thread; None until counting
    exited: list[UprobeCounter] = field(default_factory=list)  # kept: they hold their counts
    frozen: int | None = None  # the count when the probe was retired (exec, unload)
    stack_bytes: int = -1  # stack copied by the sampling event serving it; -1: none
    windows: dict[int, _Window] = field(default_factory=dict)  # by sampler set id

    def total(self) -> int:
        """Hits counted so far, by every thread that ever had a counter."""
        if self.frozen is not None:
            return self.frozen
        live = self.counters.values() if self.counters is not None else ()
        return sum(c.read() for c in (*live, *self.exited))

    def thread_exited(self, tid: int) -> None:
        """*tid* now names another thread: keep the old thread's counter aside."""
        if self.counters is not None and tid in self.counters:
            self.exited.append(self.counters.pop(tid))

    def retire(self, now: int) -> None:
        """Stop serving: no samples taken after *now*, no hits counted after this."""
        for window in self.windows.values():
            window.end = min(window.end, now)
        if self.frozen is None:
            self.frozen = self.total()

    def pending_counts(self) -> list[tuple[int, ProbeInfo, int]]:
        """(clause, probe, hits) not delivered yet, and mark them delivered."""
        if not self.counted:
            return []
        total = self.total()
        out: list[tuple[int, ProbeInfo, int]] = []
        for c in self.counted:
            n = total - c.baseline - c.delivered
            if n > 0:
                c.delivered += n
                out.extend((clause, c.placement.site.info, n) for clause in c.placement.clauses)
        return out

    def close(self) -> None:
        live = self.counters.values() if self.counters is not None else ()
        for counter in (*live, *self.exited):
            counter.close()


@dataclass(eq=False, slots=True)
class _Ring:
    """The ring of one thread (a thread id may come back later for another thread)."""

    tid: int
    ring: SampleRing
    received: int = 0  # samples taken out of it
    reported_lost: int = 0  # losses reported so far


@dataclass(eq=False)
class _SamplerSet:
    """Sampling events for some probes, one ring per thread, opened together.

    *rings* are those still drained; a ring drained for good (its thread exited)
    moves to *finished*, where it waits to be closed with the rest.
    """

    id: int
    image: ProcessImage
    options: SampleOptions
    probes: dict[UprobeSpec, _Probe]
    rings: list[_Ring] = field(default_factory=list)
    finished: list[_Ring] = field(default_factory=list)
    retired: bool = False  # its process exec'd: drain once more, then only close

    def open_ring(self, tid: int) -> _Ring:
        ring = SampleRing.open(list(self.probes), tid, Scope.THREAD, self.options)
        self.rings.append(entry := _Ring(tid, ring))
        return entry

    def all_rings(self) -> list[_Ring]:
        return [*self.rings, *self.finished]

    def close(self) -> None:
        for entry in self.all_rings():
            entry.ring.close()


class _RingWatch:
    """The rings the drain thread sleeps on, and the eventfd that wakes it otherwise.

    Other threads add rings (enable, new threads), drop them (drained for good,
    disabled) and ring the bell (:meth:`wake`); only the drain thread waits, and
    it brings its poll set up to date first. A dropped ring is unregistered
    before a new one is added, so an fd number closed and reused in between is
    polled for its new ring.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[_Ring] = set()
        self._changed = False
        self._bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poller = perf.Poller()
        self._poller.add(self._bell)
        self._polled: dict[int, _Ring] = {}

    def add(self, entries: Iterable[_Ring]) -> None:
        """Poll *entries* too, from now on: the drain thread is woken to take them in."""
        new = list(entries)
        if new:
            with self._lock:
                self._live.update(new)
                self._changed = True
            self.wake()

    def remove(self, entries: Iterable[_Ring]) -> None:
        """Stop polling *entries* from the drain thread's next wait (:meth:`wake` for now)."""
        with self._lock:
            self._live.difference_update(entries)
            self._changed = True

    def wake(self) -> None:
        with self._lock:
            if self._bell >= 0:
                os.eventfd_write(self._bell, 1)

    def wait(self, timeout: float) -> set[_Ring]:
        """Sleep until a ring or the bell wakes us or *timeout* passes; the rings hung up."""
        self._update()
        ready = self._poller.wait(timeout)
        if ready.pop(self._bell, None) is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._bell)
        return {
            self._polled[fd]
            for fd, why in ready.items()
            if why & perf.PollResult.HANGUP and fd in self._polled
        }

    def _update(self) -> None:
        with self._lock:
            if not self._changed:
                return
            live = set(self._live)
            self._changed = False
        for fd, entry in list(self._polled.items()):
            if entry not in live:
                self._poller.remove(fd)
                del self._polled[fd]
        for entry in live.difference(self._polled.values()):
            for fd in entry.ring.poll_fds:
                self._poller.add(fd)
                self._polled[fd] = entry

    def close(self) -> None:
        with self._lock:
            if self._bell >= 0:
                os.close(self._bell)
                self._bell = -1


@dataclass(eq=False)
class _ProcState:
    proc: Process
    hook: Callable[[Tracee, int], None] | None = None
    image: ProcessImage | None = None
    probes: dict[UprobeSpec, _Probe] = field(default_factory=dict)
    samplers: list[_SamplerSet] = field(default_factory=list)
    retired: list[_Probe] = field(default_factory=list)  # forgotten, counts still to deliver
    images: list[ProcessImage] = field(default_factory=list)
    closed: bool = False

    def all_probes(self) -> Iterable[_Probe]:
        yield from self.retired
        yield from self.probes.values()

    def close(self) -> None:
        """Close every event (the kernel takes ~0.1 s for each) and the images."""
        for sset in self.samplers:
            sset.close()
        for probe in self.all_probes():
            probe.close()
        for image in self.images:
            image.close()


@dataclass
class _Plan:
    """What one enable call will open, worked out before anything is opened."""

    new: dict[UprobeSpec, _Probe] = field(default_factory=dict)
    counted: list[tuple[_Probe, Placement]] = field(default_factory=list)
    sampled: list[tuple[_Probe, Placement]] = field(default_factory=list)
    to_count: list[_Probe] = field(default_factory=list)
    stack_wanted: dict[_Probe, int] = field(default_factory=dict)

    def to_sample(self) -> dict[int, list[_Probe]]:
        """Probes that need a (new) sampling event, by the stack copy it must take."""
        groups: dict[int, list[_Probe]] = {}
        for probe, stack in self.stack_wanted.items():
            if stack > probe.stack_bytes:
                groups.setdefault(stack, []).append(probe)
        return groups


@dataclass
class _Opened:
    """Events opened by one enable call; closed again if the call fails."""

    counters: list[tuple[_Probe, int, UprobeCounter]] = field(default_factory=list)
    samplers: list[_SamplerSet] = field(default_factory=list)

    def close(self) -> None:
        for _, _, counter in self.counters:
            counter.close()
        for sset in self.samplers:
            sset.close()


def _spec(site: ProbeSite) -> UprobeSpec:
    if site.file_offset <= 0:
        raise ProbeError(f"{site}: no file offset backs 0x{site.address:x}: it cannot be a uprobe")
    return UprobeSpec(site.path, site.file_offset, ref_ctr_offset=site.semaphore_file_offset)


def _stderr_warning(message: str) -> None:
    print(f"dtproc: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the backend


class UprobeBackend:
    """Catches hits with kernel uprobes (see the module docstring).

    *fire* runs clauses on a sampled hit (from the drain thread, or from
    :meth:`disable`); *add_counts* takes counted hits of pure-count clauses;
    both must serialize with every other use of the runtime. *needs* gives the
    :class:`ClauseNeeds` of each clause by index. *report_drops* hears how many
    samples were lost, *warn* about threads that could not be probed.
    """

    name = "uprobe"

    def __init__(
        self,
        fire: Fire,
        add_counts: AddCounts,
        needs: Sequence[ClauseNeeds],
        *,
        report_drops: ReportDrops | None = None,
        warn: Warn = _stderr_warning,
        options: UprobeOptions | None = None,
    ) -> None:
        self._fire = fire
        self._add_counts = add_counts
        self._needs = tuple(needs)
        self._report_drops = report_drops or (lambda n: warn(f"{n} drops"))
        self._warn = warn
        self.options = options or UprobeOptions()
        self._procs: dict[int, _ProcState] = {}
        self._lock = threading.RLock()  # the state above; held while events are opened
        self._drain_lock = threading.Lock()  # one drain at a time (thread or disable)
        self._watch = _RingWatch()
        self._stopping = False
        self._drainer: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._held: list[tuple[UprobeSample, _SamplerSet]] = []  # samples of the next round
        self._next_set = 0
        self.drops = 0

    # -- the Backend protocol ---------------------------------------------------

    def enable(self, proc: Process, placements: Sequence[Placement]) -> None:
        if placements:
            proc.call(lambda t: self._install(t, proc, placements))

    def enable_here(self, proc: Process, placements: Sequence[Placement]) -> None:
        if placements:
            self._install(proc.tracee, proc, placements)

    def forget(self, proc: Process, modules: Sequence[Module] | None) -> None:
        with self._lock:
            st = self._procs.get(proc.pid)
            if st is None:
                return
            now = time.monotonic_ns()
            for spec, probe in list(st.probes.items()):
                if modules is None or any(m.contains(probe.address) for m in modules):
                    probe.retire(now)
                    st.retired.append(probe)
                    del st.probes[spec]
            if modules is None:  # exec: a new program; old samples keep the old image
                for sset in st.samplers:
                    sset.retired = True
                st.image = None
        self._watch.wake()

    def disable(self, proc: Process) -> None:
        """Fire what the rings still hold, deliver the counts, close every event of *proc*.

        Raises the drain thread's failure, if it had one, once all that is done.
        """
        self._disable(proc)
        self._raise_failure()

    def _disable(self, proc: Process) -> None:
        with self._lock:
            st = self._procs.pop(proc.pid, None)
            if st is None:
                return
            st.closed = True
        try:
            proc.call(functools.partial(_remove_hook, hook=st.hook))
        except DtprocError:
            pass  # the process is gone, and its hooks with it
        # The drain thread stops polling the rings before they are closed: a poll(2)
        # holds each file it waits on, and the last holder pays for closing the event.
        self._watch.remove(entry for sset in st.samplers for entry in sset.all_rings())
        self._watch.wake()
        try:
            with self._drain_lock:
                self._drain(st.samplers, final=True)
            with self._lock:
                counts = [n for probe in st.all_probes() for n in probe.pending_counts()]
            self._deliver(counts)
        finally:
            st.close()

    def close(self) -> None:
        """Disable every process still enabled and stop the drain thread."""
        with self._lock:
            procs = [st.proc for st in self._procs.values()]
        try:
            for proc in procs:
                self._disable(proc)
        finally:
            self._stopping = True
            self._watch.wake()
            if self._drainer is not None:
                self._drainer.join()
                self._drainer = None
            self._watch.close()
        self._raise_failure()

    # -- enabling (in the process's control thread) --------------------------------

    def _install(self, tracee: Tracee, proc: Process, placements: Sequence[Placement]) -> None:
        for pl in placements:
            self._check(pl)
        with self._lock:
            st = self._state(tracee, proc)
            image = st.image
            assert image is not None
            image.modules = tracee.modules
            plan = self._plan(st, placements)
            opened = _Opened()
            since = time.monotonic_ns()
            try:
                self._open(plan, image, tracee.threads, opened)
            except BaseException:
                opened.close()
                raise
            st.probes.update(plan.new)
            _commit_counters(plan, opened)
            _commit_samplers(st, opened)
            _commit_placements(plan, image, since, self._shows_counts)
        if opened.samplers:
            self._watch.add(entry for sset in opened.samplers for entry in sset.rings)
            self._start_drainer()

    def _check(self, pl: Placement) -> None:
        for clause in pl.clauses:
            ok, why = uprobe_eligible(self._needs[clause], pl.site)
            if not ok:
                raise ProbeError(f"clause {clause} at {pl.site} cannot run from a uprobe: {why}")

    def _state(self, tracee: Tracee, proc: Process) -> _ProcState:
        st = self._procs.get(proc.pid)
        if st is None:
            st = _ProcState(proc)
            st.hook = functools.partial(self._on_new_thread, st)
            tracee.new_thread_hooks.append(st.hook)
            self._procs[proc.pid] = st
        if st.image is None:
            st.image = ProcessImage(proc.pid, tracee.modules, ProcessFacts(proc.pid))
            st.images.append(st.image)
        return st

    def _counting(self, pl: Placement) -> bool:
        if pl.site.return_how is ReturnHow.COND_TAIL_CALL:
            return False  # only the sampled flags tell whether it returns
        return all(self._needs[c].pure_count for c in pl.clauses)

    def _stack_bytes(self, pl: Placement) -> int:
        needs = [self._needs[c] for c in pl.clauses]
        args = frozenset(i for n in needs for i in n.args)
        depth = max(n.ustack_depth for n in needs)
        return sample_stack_bytes(pl.site, args, depth)

    def _plan(self, st: _ProcState, placements: Sequence[Placement]) -> _Plan:
        plan = _Plan()
        for pl in placements:
            spec = _spec(pl.site)
            probe = st.probes.get(spec) or plan.new.get(spec)
            if probe is None:
                probe = plan.new[spec] = _Probe(spec, pl.site.address)
            if self._counting(pl):
                plan.counted.append((probe, pl))
                if probe.counters is None and probe not in plan.to_count:
                    plan.to_count.append(probe)
            else:
                plan.sampled.append((probe, pl))
                wanted = max(plan.stack_wanted.get(probe, -1), self._stack_bytes(pl))
                plan.stack_wanted[probe] = wanted
        return plan

    def _open(self, plan: _Plan, image: ProcessImage, tids: Sequence[int], opened: _Opened) -> None:
        for probe in plan.to_count:
            for tid in tids:
                counter = _open_for_thread(functools.partial(_counter, probe.spec), tid)
                if counter is not None:
                    opened.counters.append((probe, tid, counter))
        for stack, probes in plan.to_sample().items():
            sset = _SamplerSet(
                self._next_set, image, self.options.sampling(stack), {p.spec: p for p in probes}
            )
            self._next_set += 1
            opened.samplers.append(sset)
            for tid in tids:
                _open_for_thread(sset.open_ring, tid)

    def _on_new_thread(self, st: _ProcState, tracee: Tracee, tid: int) -> None:
        """The tracee's new-thread hook: *tid* is stopped before its first instruction."""
        with self._lock:
            if st.closed:
                return
            try:
                self._open_thread(st, tid)
            except DtprocError as exc:
                self._warn(f"pid {st.proc.pid}: thread {tid} is not traced: {exc}")

    def _open_thread(self, st: _ProcState, tid: int) -> None:
        for probe in st.probes.values():
            if probe.counters is not None:
                probe.thread_exited(tid)  # if an exited thread had this id
                counter = _open_for_thread(functools.partial(_counter, probe.spec), tid)
                if counter is not None:
                    probe.counters[tid] = counter
        opened = [_open_for_thread(s.open_ring, tid) for s in st.samplers if not s.retired]
        self._watch.add(entry for entry in opened if entry is not None)

    # -- draining -------------------------------------------------------------------

    def _start_drainer(self) -> None:
        with self._lock:
            if self._drainer is None and not self._stopping:
                self._drainer = threading.Thread(
                    target=self._drain_loop, name="dtproc-uprobe-drain", daemon=True
                )
                self._drainer.start()

    def _drain_loop(self) -> None:
        delay = self.options.drain_interval
        hung: set[_Ring] = set()
        try:
            while not self._stopping:
                with self._drain_lock:
                    with self._lock:
                        sets = [s for st in self._procs.values() for s in st.samplers]
                    got = self._drain(sets, final=False, hung=hung)
                    delay = self._next_delay(got, delay)
                hung = self._watch.wait(delay)
        except Exception as exc:
            self._failure = exc

    def _next_delay(self, got: int, delay: float) -> float:
        """How long the drain thread sleeps unless a ring wakes it (the timer of samples
        below the wakeup mark): short while samples come, backing off while none do,
        and no longer than until samples held for the next round may fire."""
        options = self.options
        delay = options.drain_interval if got else min(delay * 2, options.idle_interval)
        if self._held:
            due = min(sample.time for sample, _ in self._held) + _WRITE_MARGIN
            delay = min(delay, max(0.0, (due - time.monotonic_ns()) / 1e9))
        return delay

    def _drain(
        self, sets: Sequence[_SamplerSet], *, final: bool, hung: AbstractSet[_Ring] = frozenset()
    ) -> int:
        """Take what the rings of *sets* hold and fire it in time order; report losses.

        A thread with several rings (probes that copy different amounts of stack)
        would see its hits out of order if one ring were read further than
        another, so only samples older than the start of this round (less a
        margin for records still being written) fire now; the rest wait for the
        next round, unless *final*.

        A ring whose thread has exited (in *hung*: poll(2) said so before the
        round began, so nothing more can come), or every ring when *final*, is
        drained for good, and its losses are counted exactly then: each event
        counts every hit, so what did not arrive was lost, LOST record or not.
        """
        horizon = time.monotonic_ns() - _WRITE_MARGIN
        batch = [item for item in self._held if item[1] in sets]
        self._held = [item for item in self._held if item[1] not in sets]
        lost = 0
        finished: list[tuple[_SamplerSet, _Ring]] = []
        for sset in sets:
            with self._lock:
                rings = list(sset.rings)
            for entry in rings:
                if final or sset.retired or entry in hung:
                    lost += _finish(entry, sset, batch)
                    finished.append((sset, entry))
                elif entry.ring.pending():
                    lost += _take(entry, sset, batch)
        if finished:
            self._retire_rings(finished)
        if lost:
            self.drops += lost
            self._report_drops(lost)
        batch.sort(key=lambda item: item[0].time)
        if not final:
            cut = bisect.bisect_left(batch, horizon, key=lambda item: item[0].time)
            batch, held = batch[:cut], batch[cut:]
            self._held.extend(held)
        with self._lock:
            live = [entry.ring for sset in sets for entry in sset.rings]
        self._fire_batch(batch, live)
        return len(batch)

    def _retire_rings(self, finished: Sequence[tuple[_SamplerSet, _Ring]]) -> None:
        """Rings drained for good: no longer drained, nor polled; closed at disable."""
        with self._lock:
            for sset, entry in finished:
                sset.rings.remove(entry)
                sset.finished.append(entry)
        self._watch.remove(entry for _, entry in finished)

    def _fire_batch(
        self, batch: Sequence[tuple[UprobeSample, _SamplerSet]], rings: Sequence[SampleRing]
    ) -> None:
        """Fire *batch*, stashing what *rings* receive meanwhile every ``drain_interval``.

        A big batch (a burst of hits that copy stacks to unwind) takes long to fire,
        and rings nobody reads meanwhile fill up and drop: stashed, the samples come
        in the next round instead. What arrives meanwhile is younger than this
        round's horizon, so the order in which samples fire does not change.
        """
        offset = wall_offset()
        flushed = False
        every = int(self.options.drain_interval * 1e9)
        stash_at = time.monotonic_ns() + every
        for i, (sample, sset) in enumerate(batch):
            if i % _STASH_CHECK == 0 and rings and time.monotonic_ns() >= stash_at:
                for ring in rings:
                    ring.stash()
                stash_at = time.monotonic_ns() + every
            probe = sset.probes.get(sample.spec)
            window = probe.windows.get(sset.id) if probe is not None else None
            if probe is None or window is None or not window.start <= sample.time < window.end:
                continue
            data = SampleData(sample, sset.image, offset)
            for s in probe.sampled:
                site = s.placement.site
                if sample.time < s.since or (
                    site.return_how is ReturnHow.COND_TAIL_CALL
                    and not branch_taken(s.branch, site, data.regs)
                ):
                    continue
                if s.shows_counts and not flushed:
                    flushed = True
                    self._flush_counts()
                self._fire(s.placement.clauses, SampleHit(data, site))

    def _shows_counts(self, pl: Placement) -> bool:
        return any(self._needs[c].output or self._needs[c].exit for c in pl.clauses)

    def _flush_counts(self) -> None:
        """Hand the counts so far to the runtime: a clause about to run may print or exit."""
        with self._lock:
            counts = [
                n for st in self._procs.values() for probe in st.all_probes()
                for n in probe.pending_counts()
            ]  # fmt: skip
        self._deliver(counts)

    def _deliver(self, counts: Iterable[tuple[int, ProbeInfo, int]]) -> None:
        for clause, info, n in counts:
            self._add_counts(clause, info, n)

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise DtprocError(f"the uprobe drain thread failed: {failure}") from failure


def _commit_counters(plan: _Plan, opened: _Opened) -> None:
    for probe in plan.to_count:
        probe.counters = {}
    for probe, tid, counter in opened.counters:
        assert probe.counters is not None
        probe.counters[tid] = counter


def _commit_samplers(st: _ProcState, opened: _Opened) -> None:
    """Make the new sampling events the ones that serve their probes from now on.

    A probe that had an event with a smaller stack copy keeps it (it is closed at
    disable): both fire for a while, and each takes one side of the switch.
    """
    switched = time.monotonic_ns()
    for sset in opened.samplers:
        for probe in sset.probes.values():
            for window in probe.windows.values():
                window.end = min(window.end, switched)
            probe.windows[sset.id] = _Window(switched if probe.stack_bytes >= 0 else 0)
            probe.stack_bytes = sset.options.stack_bytes
    st.samplers.extend(opened.samplers)


def _commit_placements(
    plan: _Plan, image: ProcessImage, since: int, shows_counts: Callable[[Placement], bool]
) -> None:
    """Attach the placements; hits from *since* (before any event was opened) are theirs."""
    for probe, pl in plan.counted:
        baseline = 0 if probe in plan.to_count else probe.total()
        probe.counted += (_Counted(pl, baseline),)
    for probe, pl in plan.sampled:
        branch = None
        if pl.site.return_how is ReturnHow.COND_TAIL_CALL:
            branch = branch_plan(image.read_code, pl.site.address)
        probe.sampled += (_Sampled(pl, since, branch, shows_counts(pl)),)


def _take(entry: _Ring, sset: _SamplerSet, batch: list[tuple[UprobeSample, _SamplerSet]]) -> int:
    """Move *entry*'s samples into *batch*; the losses its LOST records report meanwhile."""
    ring = entry.ring
    samples = [item for item in ring.drain() if isinstance(item, UprobeSample)]
    entry.received += len(samples)
    batch.extend((sample, sset) for sample in samples)
    lost = ring.lost - entry.reported_lost
    entry.reported_lost = ring.lost
    return lost


def _finish(entry: _Ring, sset: _SamplerSet, batch: list[tuple[UprobeSample, _SamplerSet]]) -> int:
    """Drain *entry* for good; the losses no LOST record reported (a ring full at the end)."""
    hits = entry.ring.hits()
    lost = _take(entry, sset, batch)
    unreported = max(0, hits - entry.received - entry.reported_lost)
    entry.reported_lost += unreported
    return lost + unreported


def _open_for_thread(open_one: Callable[[int], _T], tid: int) -> _T | None:
    """Open an event on one thread; None if the thread is gone (it exited meanwhile)."""
    try:
        return open_one(tid)
    except NoSuchProcess:
        return None


def _counter(spec: UprobeSpec, tid: int) -> UprobeCounter:
    return UprobeCounter.open(spec, tid, Scope.THREAD)


def _remove_hook(tracee: Tracee, hook: Callable[[Tracee, int], None] | None) -> None:
    if hook in tracee.new_thread_hooks:
        tracee.new_thread_hooks.remove(hook)
