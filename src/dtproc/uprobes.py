"""Kernel uprobes through perf_event_open: hit counters and sample rings for one process.

Why this exists: a ptrace breakpoint stops the target for every hit. A uprobe
does not: the kernel plants the int3, runs (or single-steps out of line) the
displaced instruction itself, and either bumps a counter or writes a sample
(registers and a copy of the user stack) into a ring that we drain later. The
traced program never stops and never context-switches because of a hit.

Scopes
------
:attr:`Scope.THREAD` opens an event on one thread. :attr:`Scope.PROCESS` opens
it on the main thread with ``inherit`` and ``inherit_thread``: threads created
later get a child event, forked processes do not. Three kernel facts, measured
on Linux 6.18, shape PROCESS scope:

1. A child event is built again from the parent's attributes, including
   ``config1``, the *pointer* to the probed file's path, and the kernel reads it
   in the memory of the thread calling clone(), not in ours. With a pointer into
   our heap every ``pthread_create`` of the target fails with EFAULT. So the
   path is placed at one address that holds it in both processes: written into
   the unused tail of the last page of the target executable's writable segment
   (past ``_end``, below the heap) and mapped at the same address here while the
   event is opened. The tail is restored when the last event using it closes,
   and the events carry ``remove_on_exec``: after an exec the anchor is gone.
2. Threads whose perf contexts are clones of one parent swap contexts at a
   context switch (a scheduler shortcut), while the uprobe filter keeps checking
   the mm of the thread the event was made for: once that thread has exited,
   the event it left behind counts nothing, and whole threads' hits vanish
   (8 threads x 1000 calls on 2 CPUs: 6000 to 8000 counted). A
   non-inherited dummy event on every thread that exists at open time makes the
   children's contexts non-clones, which stops the swaps. Threads created by
   threads that did not exist at open time are not covered.
3. Every inherited uprobe event costs the target roughly 90 ms per thread it
   creates (8 threads doing nothing: 3 ms plain, 0.7 s with one event; each
   child event registers a uprobe consumer of its own and unregisters it, with
   RCU synchronisation, when the thread exits). Sampling in PROCESS scope needs
   one event per CPU and probe (the kernel refuses to mmap per-task inherited
   events), which multiplies that.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import functools
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from dtproc._sys import perf, procfs
from dtproc._sys.regs import UserRegs
from dtproc.errors import AccessDenied, DtprocError, NoSuchProcess, ProbeError

UPROBE_PMU: Final = "uprobe"
_ENOTSUPP: Final = 524  # kernel-internal "operation not supported", leaks out of uprobe_register

# Sample records carry the event id first (SAMPLE_IDENTIFIER) so that events sharing
# a ring are told apart without knowing each record's layout in advance.
_SAMPLE_TYPE: Final = (
    perf.SampleType.IDENTIFIER
    | perf.SampleType.IP
    | perf.SampleType.TID
    | perf.SampleType.TIME
    | perf.SampleType.CPU
    | perf.SampleType.REGS_USER
)
_REGS_MASK: Final = perf.regs_mask(perf.X86_64_USER_REGS)
_SAMPLE: Final = int(perf.RecordType.SAMPLE)
_CLOCK_MONOTONIC: Final = 1


class Scope(enum.Enum):
    """Which threads an event sees."""

    PROCESS = "process"  # the main thread and every thread created later; no forked children
    THREAD = "thread"  # one thread


@dataclass(frozen=True, slots=True)
class UprobeSpec:
    """Where a uprobe goes: an instruction at file *offset* in *path*.

    *retprobe* fires when the function that starts at *offset* returns.
    *ref_ctr_offset* is the file offset of a USDT semaphore (a u16) that the
    kernel increments in each process while the probe is armed there.
    """

    path: str
    offset: int
    retprobe: bool = False
    ref_ctr_offset: int = 0

    def __post_init__(self) -> None:
        if self.offset < 0 or self.ref_ctr_offset < 0:
            raise ProbeError(f"{self}: offsets must not be negative")

    def __str__(self) -> str:
        kind = "uretprobe" if self.retprobe else "uprobe"
        sem = f" (semaphore at {self.ref_ctr_offset:#x})" if self.ref_ctr_offset else ""
        return f"{kind} {self.path}+{self.offset:#x}{sem}"


@dataclass(frozen=True, slots=True)
class SampleOptions:
    """How samples are taken and buffered.

    *stack_bytes* of user stack are copied per hit, from the stack pointer up
    (a multiple of 8; the kernel copies less where the stack ends). Each ring
    has *ring_pages* data pages (a power of two). The reader is woken when
    *wakeup_bytes* are pending (default: a quarter of the ring), so a reader
    in :meth:`SampleRing.wait` sleeps in poll(2) instead of spinning.
    *task_events* adds MMAP2, COMM, FORK and EXIT records to the rings.
    """

    stack_bytes: int = 4096
    ring_pages: int = 64
    wakeup_bytes: int | None = None
    task_events: bool = False

    def __post_init__(self) -> None:
        if self.stack_bytes < 0 or self.stack_bytes % 8 or self.stack_bytes > 65528:
            raise ValueError(f"stack_bytes must be a multiple of 8 up to 65528: {self.stack_bytes}")
        if self.ring_pages <= 0 or self.ring_pages & (self.ring_pages - 1):
            raise ValueError(f"ring_pages must be a power of two: {self.ring_pages}")


@dataclass(frozen=True, slots=True)
class UprobeSample:
    """One hit of *spec*: which thread, when (CLOCK_MONOTONIC ns), on which CPU, and the
    user state, read from the kernel's sample *record*.

    ``regs`` uses the names of :class:`dtproc._sys.regs.UserRegs` (``rdi``,
    ``rsp``, ``rip``, ``eflags``...); ``stack`` is a copy of user memory starting
    at ``stack_addr`` (= ``regs["rsp"]``). For an entry probe ``ip`` is the
    probed instruction; for a return probe it is the address returned to.

    The fields are read through from the record rather than copied out of it:
    a tracer builds one of these per hit, and a frozen dataclass pays for each
    field it sets.
    """

    spec: UprobeSpec
    record: perf.SampleRecord

    @property
    def event_id(self) -> int:
        return self.record.id or 0

    @property
    def pid(self) -> int:
        return self.record.pid or 0

    @property
    def tid(self) -> int:
        return self.record.tid or 0

    @property
    def time(self) -> int:
        return self.record.time or 0

    @property
    def cpu(self) -> int:
        return self.record.cpu or 0

    @property
    def ip(self) -> int:
        return self.record.ip or 0

    @property
    def regs(self) -> Mapping[str, int]:
        return self.record.regs

    @property
    def stack(self) -> bytes:
        return self.record.stack

    @property
    def stack_addr(self) -> int:
        return self.record.regs.get("rsp", 0)

    def user_regs(self) -> UserRegs:
        """The registers as a ``UserRegs`` (segment bases and ``orig_rax`` are 0)."""
        return UserRegs(**self.record.regs)


RingItem = UprobeSample | perf.Mmap2Record | perf.CommRecord | perf.TaskRecord


# --- the PMU ---


@dataclass(frozen=True, slots=True)
class _Pmu:
    type: int
    retprobe: perf.PmuFormat
    ref_ctr_offset: perf.PmuFormat


@functools.cache
def _pmu() -> _Pmu:
    try:
        return _Pmu(
            perf.pmu_type(UPROBE_PMU),
            perf.pmu_format(UPROBE_PMU, "retprobe"),
            perf.pmu_format(UPROBE_PMU, "ref_ctr_offset"),
        )
    except FileNotFoundError:
        raise ProbeError(
            f"this kernel has no uprobe PMU ({perf.PMU_ROOT}/{UPROBE_PMU} is missing): "
            "it needs CONFIG_UPROBE_EVENTS (Linux 4.17 or later)"
        ) from None


def _config(spec: UprobeSpec, pmu: _Pmu) -> int:
    config = pmu.retprobe.encode(int(spec.retprobe))
    try:
        return config | pmu.ref_ctr_offset.encode(spec.ref_ctr_offset)
    except ValueError as exc:
        raise ProbeError(f"{spec}: {exc}") from None


def _attr(
    spec: UprobeSpec, path_ptr: int, *, inherit: bool, sampling: SampleOptions | None, side: bool
) -> perf.PerfEventAttr:
    """The attributes of one uprobe event; *side* asks for the task side-band records."""
    pmu = _pmu()
    attr = perf.PerfEventAttr()
    attr.type = pmu.type
    attr.config = _config(spec, pmu)
    attr.config1 = path_ptr
    attr.config2 = spec.offset
    # exclude_kernel keeps paranoid kernels from asking for kernel-profiling rights we do
    # not use: a uprobe always fires in user mode.
    flags = perf.AttrFlag.EXCLUDE_KERNEL | perf.AttrFlag.EXCLUDE_HV
    if inherit:
        # REMOVE_ON_EXEC: after an exec the path anchor is gone with the old address space,
        # and a child event built then would fail the new program's thread creation.
        flags |= perf.AttrFlag.INHERIT | perf.AttrFlag.INHERIT_THREAD | perf.AttrFlag.REMOVE_ON_EXEC
    if sampling is not None:
        attr.sample_period = 1
        attr.sample_type = sample_type(sampling.stack_bytes)
        attr.sample_regs_user = _REGS_MASK
        attr.sample_stack_user = sampling.stack_bytes
        attr.clockid = _CLOCK_MONOTONIC
        flags |= perf.AttrFlag.SAMPLE_ID_ALL | perf.AttrFlag.USE_CLOCKID | perf.AttrFlag.WATERMARK
        attr.wakeup_watermark = sampling.wakeup_bytes or sampling.ring_pages * perf.PAGE_SIZE // 4
        if side:
            flags |= perf.AttrFlag.MMAP2 | perf.AttrFlag.COMM | perf.AttrFlag.TASK
    attr.flags = flags
    return attr


def sample_type(stack_bytes: int) -> perf.SampleType:
    """What each sample carries: no STACK_USER block at all when no stack is copied."""
    if stack_bytes:
        return _SAMPLE_TYPE | perf.SampleType.STACK_USER
    return _SAMPLE_TYPE


# --- errors ---


def _paranoid() -> str:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _open_error(exc: OSError, spec: UprobeSpec, pid: int) -> DtprocError:
    """Say what a refused perf_event_open means for a uprobe, and what to do."""
    what = f"cannot open {spec} for pid {pid}"
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return AccessDenied(
            pid,
            f"{what}: permission denied. The uprobe PMU needs root, CAP_PERFMON or "
            f"CAP_SYS_ADMIN at any kernel.perf_event_paranoid (here {_paranoid()}), "
            "and tracing another user's process also needs CAP_SYS_PTRACE; "
            "run as root or grant CAP_PERFMON",
        )
    if code == errno.ESRCH:
        return NoSuchProcess(pid, f"{what}: no such process")
    if code == errno.ENOENT:
        return ProbeError(f"{what}: no such file")
    if code == errno.EINVAL:
        return ProbeError(
            f"{what}: the kernel refused it (the offset is beyond the end of the file, the "
            "file is not a regular file, or a semaphore offset differs from the one an "
            "existing probe at this place uses)"
        )
    if code == _ENOTSUPP:
        return ProbeError(f"{what}: uprobes cannot handle the instruction at this offset")
    if code == errno.EMFILE:
        return DtprocError(f"{what}: out of file descriptors (raise `ulimit -n`)")
    return DtprocError(f"{what}: {os.strerror(code) if code else exc}")


# --- per-process support for inherited events ---


_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
_PT_LOAD, _PT_PHDR, _PF_W = 1, 6, 2


def _writable_tail(pid: int) -> tuple[int, int]:
    """[start, end) past the end of the executable's last writable segment, on its last page.

    Nothing uses these bytes: the program's data ends at ``_end`` and the heap
    starts on a later page. The program headers are read from the process's own
    memory (AT_PHDR), so this is the executable as loaded, whatever its file.
    """
    aux = procfs.read_auxv(pid)
    phdr = aux[procfs.AT_PHDR]
    table = _read_mem(pid, phdr, _PHDR.size * aux[procfs.AT_PHNUM])
    headers = list(_PHDR.iter_unpack(table))
    # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
    bias = next((phdr - h[3] for h in headers if h[0] == _PT_PHDR), 0)
    ends = [bias + h[3] + h[6] for h in headers if h[0] == _PT_LOAD and h[1] & _PF_W]
    if not ends:
        raise ProbeError(f"pid {pid}: its executable has no writable segment")
    end = max(ends)
    start = (end + 15) & ~7  # a little clear of _end
    return start, -(-end // perf.PAGE_SIZE) * perf.PAGE_SIZE  # empty when _end is page-aligned


@dataclass
class _ProcessHold:
    """What PROCESS-scope events need in one target: path anchors and swap guards."""

    pid: int
    start_time: int
    tail: tuple[int, int]
    original: bytes
    anchors: dict[bytes, int] = field(default_factory=dict)  # path -> address in the target
    guards: list[int] = field(default_factory=list)
    used: int = 0
    refs: int = 0

    def anchor(self, path: bytes, spec: UprobeSpec) -> int:
        """The address of *path* in the target (and, while opening, in this process)."""
        found = self.anchors.get(path)
        if found is None:
            start, end = self.tail
            address = start + self.used
            if address + len(path) > end:
                raise ProbeError(
                    f"cannot open {spec} for every thread of pid {self.pid}: the {end - start} "
                    "spare bytes after its data segment cannot hold the file's path, which the "
                    "kernel re-reads there whenever the process creates a thread; use a shorter "
                    "path (a symlink) or Scope.THREAD"
                )
            _write_mem(self.pid, address, path)
            found = self.anchors[path] = address
            self.used += (len(path) + 7) & ~7
        return found

    def close(self) -> None:
        for fd in self.guards:
            _close_fd(fd)
        self.guards.clear()
        if _start_time_or_none(self.pid) != self.start_time:
            return  # the process is gone (its pid may be another's by now)
        try:
            _write_mem(self.pid, self.tail[0], self.original)
        except OSError:
            pass  # it exited just now: nothing to restore


_HOLDS: dict[int, _ProcessHold] = {}
_LOCK = threading.Lock()
_OPEN_FDS: set[int] = set()


def _write_mem(pid: int, address: int, data: bytes) -> None:
    fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY)
    try:
        if os.pwrite(fd, data, address) != len(data):
            raise OSError(errno.EIO, f"short write into pid {pid} at {address:#x}")
    finally:
        os.close(fd)


def _read_mem(pid: int, address: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, address)
    finally:
        os.close(fd)


def _start_time_or_none(pid: int) -> int | None:
    try:
        return procfs.read_stat(pid).start_time
    except OSError:
        return None


def _start_time(pid: int) -> int:
    try:
        stat = procfs.read_stat(pid)
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    if stat.state in ("Z", "X"):
        raise NoSuchProcess(pid, f"pid {pid} has exited")
    return stat.start_time


def _swap_guards(pid: int) -> list[int]:
    """A non-inherited dummy event on each thread: their children's contexts are then no clones."""
    attr = perf.PerfEventAttr()
    attr.type = perf.EventType.SOFTWARE
    attr.config = perf.SoftwareEvent.DUMMY
    attr.flags = perf.AttrFlag.EXCLUDE_KERNEL | perf.AttrFlag.EXCLUDE_HV
    fds: list[int] = []
    for tid in procfs.thread_ids(pid):
        try:
            fds.append(_track(perf.perf_event_open(attr, tid, -1)))
        except ProcessLookupError:
            continue  # the thread exited meanwhile
    return fds


def _acquire_hold(pid: int) -> _ProcessHold:
    start_time = _start_time(pid)
    hold = _HOLDS.get(pid)
    if hold is not None and hold.start_time != start_time:
        hold.close()  # a stale hold of an earlier process with this pid
        hold = None
    if hold is None:
        tail = _writable_tail(pid)
        original = _read_mem(pid, tail[0], tail[1] - tail[0])
        hold = _ProcessHold(pid, start_time, tail, original)
        try:
            hold.guards = _swap_guards(pid)
        except OSError as exc:
            hold.close()
            raise _open_error(exc, UprobeSpec("(swap guard)", 0), pid) from None
        _HOLDS[pid] = hold
    hold.refs += 1
    return hold


def _release_hold(hold: _ProcessHold) -> None:
    hold.refs -= 1
    if hold.refs == 0:
        hold.close()
        if _HOLDS.get(hold.pid) is hold:
            del _HOLDS[hold.pid]


def _path_bytes(spec: UprobeSpec, pid: int, scope: Scope) -> bytes:
    """The path as the kernel should read it: absolute, and naming the same file for *pid*."""
    path = os.path.abspath(spec.path)
    try:
        mine = os.stat(path)
    except OSError as exc:
        raise ProbeError(f"cannot open {spec}: {exc.strerror}") from None
    if scope is Scope.PROCESS:
        try:
            theirs = os.stat(f"/proc/{pid}/root{path}")
        except OSError:
            theirs = None
        if theirs is None or (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            raise ProbeError(
                f"cannot open {spec} for every thread of pid {pid}: {path} names another "
                "file (or none) in its mount namespace; use Scope.THREAD"
            )
    return os.fsencode(path) + b"\0"


# --- opening events ---


def _track(fd: int) -> int:
    _OPEN_FDS.add(fd)
    return fd


def _close_fd(fd: int) -> None:
    _OPEN_FDS.discard(fd)
    os.close(fd)


def open_event_count() -> int:
    """How many perf event fds this module holds open now (0 once everything is closed)."""
    with _LOCK:
        return len(_OPEN_FDS)


class _Opener:
    """Opens the events of one request, with everything PROCESS scope needs held meanwhile."""

    def __init__(self, pid: int, scope: Scope) -> None:
        self.pid = pid
        self.scope = scope
        self.hold: _ProcessHold | None = None
        if scope is Scope.PROCESS:
            self.hold = _acquire_hold(pid)

    def open(self, spec: UprobeSpec, cpu: int, sampling: SampleOptions | None, side: bool) -> int:
        path = _path_bytes(spec, self.pid, self.scope)
        if self.hold is None:
            buf = ctypes.create_string_buffer(path)
            return self._open(spec, ctypes.addressof(buf), cpu, sampling, side)
        address = self.hold.anchor(path, spec)
        try:
            with perf.bytes_at(address, path):
                return self._open(spec, address, cpu, sampling, side)
        except FileExistsError:
            raise ProbeError(
                f"cannot open {spec} for every thread of pid {self.pid}: this process has "
                f"memory at {address:#x}, where the path must be; use Scope.THREAD"
            ) from None

    def _open(
        self, spec: UprobeSpec, ptr: int, cpu: int, sampling: SampleOptions | None, side: bool
    ) -> int:
        inherit = self.scope is Scope.PROCESS
        attr = _attr(spec, ptr, inherit=inherit, sampling=sampling, side=side)
        try:
            return _track(perf.perf_event_open(attr, self.pid, cpu))
        except OSError as exc:
            raise _open_error(exc, spec, self.pid) from None

    def release(self) -> None:
        if self.hold is not None:
            _release_hold(self.hold)
            self.hold = None


# --- counters ---


@final
class UprobeCounter:
    """Counts hits of one uprobe in a process or thread; the kernel does the counting."""

    def __init__(self, token: object, spec: UprobeSpec, pid: int, scope: Scope) -> None:
        if token is not _PRIVATE:
            raise TypeError("use UprobeCounter.open()")
        self.spec = spec
        self.pid = pid
        self.scope = scope
        self._fd = -1
        self._opener: _Opener | None = None
        self.event_id = 0

    @classmethod
    def open(cls, spec: UprobeSpec, pid: int, scope: Scope = Scope.PROCESS) -> UprobeCounter:
        """Start counting hits of *spec* in *pid* (a thread id for :attr:`Scope.THREAD`)."""
        self = cls(_PRIVATE, spec, pid, scope)
        with _LOCK:
            opener = _Opener(pid, scope)
            try:
                self._fd = opener.open(spec, -1, None, False)
            except BaseException:
                opener.release()
                raise
        self._opener = opener
        self.event_id = perf.event_id(self._fd)
        return self

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read(self) -> int:
        """Hits so far, including those of threads that have exited."""
        if self._fd < 0:
            raise ValueError(f"counter for {self.spec} is closed")
        return perf.read_counter(self._fd).value

    def close(self) -> None:
        """Disarm the probe (the kernel removes it with the last fd) and forget the process."""
        with _LOCK:
            if self._fd >= 0:
                _close_fd(self._fd)
                self._fd = -1
            if self._opener is not None:
                self._opener.release()
                self._opener = None

    def __enter__(self) -> UprobeCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"id={self.event_id}"
        return f"<UprobeCounter {self.spec} pid={self.pid} {self.scope.value} {state}>"


_PRIVATE = object()


# --- sample rings ---


def _online_cpus() -> list[int]:
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@final
class SampleRing:
    """Samples of several uprobes in one target, drained from mmap'ed rings.

    THREAD scope uses one ring; PROCESS scope one ring per CPU (the kernel only
    maps inherited events per CPU), and the probes share the rings through
    PERF_EVENT_IOC_SET_OUTPUT. Records carry their event id first, which maps
    back to the probe (:attr:`events`).
    """

    def __init__(self, token: object, pid: int, scope: Scope, options: SampleOptions) -> None:
        if token is not _PRIVATE:
            raise TypeError("use SampleRing.open()")
        self.pid = pid
        self.scope = scope
        self.options = options
        self.lost = 0
        self.hung_up = False
        self.events: dict[int, UprobeSpec] = {}
        self._fds: list[int] = []
        self._rings: list[perf.RingBuffer] = []
        self._stash: list[bytes] = []  # records taken out of the rings, not decoded yet
        self._stashed = 0  # their size
        self._opener: _Opener | None = None
        self._parser = perf.RecordParser(sample_type(options.stack_bytes), _REGS_MASK)

    @classmethod
    def open(
        cls,
        specs: Sequence[UprobeSpec],
        pid: int,
        scope: Scope = Scope.PROCESS,
        options: SampleOptions | None = None,
    ) -> SampleRing:
        """Sample every hit of *specs* in *pid* (a thread id for :attr:`Scope.THREAD`)."""
        if not specs:
            raise ProbeError("SampleRing.open needs at least one probe")
        self = cls(_PRIVATE, pid, scope, options or SampleOptions())
        with _LOCK:
            self._opener = _Opener(pid, scope)
            try:
                cpus = _online_cpus() if scope is Scope.PROCESS else [-1]
                for cpu in cpus:
                    self._open_cpu(specs, cpu)
            except BaseException:
                self._close_locked()
                raise
        return self

    def _open_cpu(self, specs: Sequence[UprobeSpec], cpu: int) -> None:
        assert self._opener is not None
        first = -1
        for spec in specs:
            side = first < 0 and self.options.task_events
            fd = self._opener.open(spec, cpu, self.options, side)
            self._fds.append(fd)
            self.events[perf.event_id(fd)] = spec
            try:
                if first < 0:
                    first = fd
                    self._rings.append(perf.RingBuffer(fd, self.options.ring_pages))
                else:
                    perf.set_output(fd, first)
            except OSError as exc:
                raise DtprocError(
                    f"cannot set up a sample ring of {self.options.ring_pages} pages for {spec} "
                    f"in pid {self.pid}: {exc.strerror} (without root the rings must fit "
                    "kernel.perf_event_mlock_kb)"
                ) from None

    @property
    def closed(self) -> bool:
        return not self._fds and self._opener is None

    @property
    def ring_count(self) -> int:
        """How many rings there are (one per online CPU in PROCESS scope)."""
        return len(self._rings)

    @property
    def poll_fds(self) -> tuple[int, ...]:
        """The fds to poll(2) for this ring set, to wait on it together with other things.

        Each is readable once its ring crosses the wakeup mark (empty the ring then:
        the kernel does not say it again until the next crossing) and hung up for
        good once the event's task has exited (see :class:`dtproc._sys.perf.Poller`).
        """
        return tuple(r.fd for r in self._rings)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a ring reaches its wakeup mark or the target exits; False on timeout.

        Once the target has exited (:attr:`hung_up`) every call returns at once.
        """
        ready = perf.poll(list(self.poll_fds), timeout)
        if any(r & perf.PollResult.HANGUP for r in ready.values()):
            self.hung_up = True
        return bool(ready)

    def pending(self) -> int:
        """Bytes not drained yet, stashed or in the rings: a look at the ring heads, no syscall."""
        total = self._stashed
        for ring in self._rings:  # no generator: a drain thread asks this of every ring, often
            total += ring.pending()
        return total

    def stash(self) -> int:
        """Copy what the rings hold into our memory, so the kernel may write there again.

        For a reader busy for long stretches (unwinding stacks, say): a ring it has
        not emptied drops every hit once full, and copying is far quicker than
        decoding. :meth:`drain` returns what was stashed first, in order. No more
        is copied once the stash holds the rings' own size (then the kernel drops,
        as it would have), so memory stays bounded. Returns the bytes copied.
        """
        room = self.options.ring_pages * perf.PAGE_SIZE * len(self._rings) - self._stashed
        copied = 0
        for ring in self._rings:
            if copied >= room:
                break
            data = ring.read()
            if data:
                self._stash.append(data)
                copied += len(data)
        self._stashed += copied
        return copied

    def hits(self) -> int:
        """Hits of every probe so far, whether or not their samples found room in a ring.

        Each sampling event also counts (its period is one hit), so this minus the
        samples taken out of the rings is exactly what was lost -- once the thread
        has exited, LOST record or not (a ring still full then never gets to write
        one).
        """
        return sum(perf.read_counter(fd).value for fd in self._fds)

    def drain(self) -> list[RingItem]:
        """Take everything in the rings now, oldest first; LOST records add to :attr:`lost`."""
        items: list[RingItem] = []
        for data in self._stash:
            self._decode(data, items)
        self._stash.clear()
        self._stashed = 0
        for ring in self._rings:
            data = ring.read()
            if data:
                self._decode(data, items)
        if len(self._rings) > 1:
            items.sort(key=_item_time)
        return items

    def _decode(self, data: bytes, items: list[RingItem]) -> None:
        parser = self._parser
        for rtype, misc, body in perf.iter_records(data):
            if rtype == _SAMPLE:  # the usual record: no detour through parse()
                items.append(self._sample(parser.parse_sample(body, misc)))
            else:
                item = self._convert(parser.parse(rtype, misc, body))
                if item is not None:
                    items.append(item)

    def read(self, timeout: float | None = None) -> list[RingItem]:
        """:meth:`wait` (up to *timeout*), then :meth:`drain`."""
        self.wait(timeout)
        return self.drain()

    def samples(self, timeout: float | None = None) -> list[UprobeSample]:
        """:meth:`read`, keeping only the samples."""
        return [item for item in self.read(timeout) if isinstance(item, UprobeSample)]

    def _convert(self, record: perf.Record) -> RingItem | None:
        if isinstance(record, perf.SampleRecord):
            return self._sample(record)
        if isinstance(record, perf.LostRecord):
            self.lost += record.lost
            return None
        if isinstance(record, perf.Mmap2Record | perf.CommRecord | perf.TaskRecord):
            return record
        return None  # THROTTLE and other bookkeeping records carry nothing for a tracer

    def _sample(self, record: perf.SampleRecord) -> UprobeSample:
        return UprobeSample(self.events[record.id or 0], record)

    def close(self) -> None:
        """Unmap the rings, close every event (the kernel disarms the probes) and let go."""
        with _LOCK:
            self._close_locked()

    def _close_locked(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        self._stash.clear()
        self._stashed = 0
        for fd in self._fds:
            _close_fd(fd)
        self._fds.clear()
        if self._opener is not None:
            self._opener.release()
            self._opener = None

    def __enter__(self) -> SampleRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._rings)} rings, lost={self.lost}"
        return f"<SampleRing pid={self.pid} {self.scope.value} {state}>"


def _item_time(item: RingItem) -> int:
    if isinstance(item, UprobeSample):
        return item.time
    return item.sample_id.time or 0


# --- checking what is armed ---


def probe_address(pid: int, spec: UprobeSpec) -> int | None:
    """Where *spec* lies in *pid*'s address space, or None if its file is not mapped there."""
    try:
        st = os.stat(spec.path)
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for m in procfs.read_maps(pid):
        size = m.end - m.start
        if m.inode == st.st_ino and m.dev == dev and m.offset <= spec.offset < m.offset + size:
            return m.start + spec.offset - m.offset
    return None


def breakpoint_armed(pid: int, spec: UprobeSpec) -> bool:
    """True while the kernel's int3 sits at *spec* in *pid* (memory differs from the file)."""
    address = probe_address(pid, spec)
    if address is None:
        return False
    with open(spec.path, "rb") as f:
        f.seek(spec.offset)
        on_disk = f.read(1)
    return _read_mem(pid, address, 1) == b"\xcc" != on_disk
