"""The libproc layer: one traced process, driven by the one thread that created or grabbed it.

A :class:`Tracee` owns every thread of one process (new threads are followed
from their first instruction), its memory, its registers, its signals and its
breakpoints. It is deliberately not thread-safe -- libproc is not either -- and
it refuses to be driven from any thread but the one that attached, because the
kernel would refuse those ptrace requests anyway. The control layer
(:mod:`dtproc.control`) gives each process its own driving thread and shares it
safely between clients.

Transparency is the contract: every signal the target receives reaches it
unchanged and once, a SIGSTOP from outside keeps it stopped until SIGCONT, fork
children never inherit our int3 bytes, and a released process runs on exactly as
before.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, final

from dtproc import _dispatch, _spawn
from dtproc._sys import procfs, ptrace
from dtproc._sys.ptrace import Options
from dtproc._sys.regs import UserRegs
from dtproc.errors import (
    AccessDenied,
    BadAddress,
    DtprocError,
    NoSuchProcess,
    ProcessDied,
    StateError,
    ZombieProcess,
    from_oserror,
)
from dtproc.events import (
    BreakpointHit,
    Continued,
    Event,
    Exec,
    Exited,
    Forked,
    GroupStop,
    Killed,
    SignalReceived,
    ThreadCreated,
    ThreadExited,
    VForkDone,
    VForked,
)
from dtproc.modules import ModuleMap, Symbol
from dtproc.types import ProcessIdentity, ProcessState, ReleaseMode

if TYPE_CHECKING:
    from dtproc.breakpoints import AddressSpace, Breakpoint, BreakpointCallback
    from dtproc.ustack import UserStack

_BASE_OPTIONS: Final = (
    Options.TRACECLONE
    | Options.TRACEFORK
    | Options.TRACEVFORK
    | Options.TRACEVFORKDONE
    | Options.TRACEEXEC
)
_STOP_SIGNALS: Final = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_GRAB_SETTLE_ROUNDS: Final = 50
_U64: Final = (1 << 64) - 1


class _Stop(enum.Enum):
    """Why a thread is in a ptrace-stop (NONE: it runs)."""

    NONE = enum.auto()
    NEW = enum.auto()
    INTERRUPT = enum.auto()
    SIGNAL = enum.auto()
    GROUP = enum.auto()
    EVENT = enum.auto()
    BREAKPOINT = enum.auto()
    STEP = enum.auto()


@dataclass(slots=True)
class _Thread:
    tid: int
    stop: _Stop = _Stop.NONE
    signal: int = 0  # delivered when the thread is resumed
    listening: bool = False  # resumed with PTRACE_LISTEN: held in group-stop
    stepping: bool = False
    hold: bool = False  # stays stopped on resume() (an intercepted signal, a bp with no callback)
    internal: bool = False  # stepped or injected into by us: signals that arrive wait in queued
    regs: UserRegs | None = None  # the registers as they are (rip rewound at a breakpoint)
    regs_dirty: bool = False  # regs differ from what the kernel holds
    new: bool = False  # created by the program; its first stop is still to come
    queued: list[ptrace.SigInfo] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.stop is not _Stop.NONE


class _Escort(enum.Enum):
    """A descendant we must look after before it may go: how it shares our int3 bytes."""

    COPY = enum.auto()  # fork: a copy of our memory, int3s included
    SHARED = enum.auto()  # vfork / CLONE_VM: our very memory, until it execs or exits


_TOKEN: Final = object()


@final
class Tracee:
    """One traced process. Create with :meth:`create` or :meth:`grab`, never directly."""

    def __init__(
        self,
        token: object,
        pid: int,
        *,
        created: bool,
        readonly: bool,
        follow_forks: bool = False,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("use Tracee.create() or Tracee.grab()")
        self.pid: Final = pid
        self.created: Final = created
        self.readonly: Final = readonly
        self.follow_forks = follow_forks
        self.stop_on_exec = False
        self.intercept_signals: set[int] = set()
        self.identity = ProcessIdentity(pid, procfs.read_stat(pid).start_time)
        self._state = ProcessState.RUNNING
        self._threads: dict[int, _Thread] = {}
        self._escorts: dict[int, _Escort] = {}
        self._letting_go = False  # release under way: escorts are freed at their next stop
        self._children: dict[int, Tracee] = {}
        self._events: deque[Event] = deque()
        self._want_stopped = False
        self._group_stopped = False
        self._stop_expected = False  # a stop signal was passed on: a group-stop will follow
        self._ours_to_reap_not = False
        self._end: Event | None = None
        self._ctx: _dispatch.ThreadContext | None = None
        self._driver = threading.get_ident()
        self._mem_fd = -1
        self._exe = procfs.exe_path(pid)
        self._space: AddressSpace | None = None
        self._modules: ModuleMap | None = None
        self._syscall_at = 0
        # Held while a wait status is processed (never while blocked waiting for one):
        # the control layer puts its handle lock here so clients see consistent state.
        self.status_lock: AbstractContextManager[object] = contextlib.nullcontext()
        # Called with (tracee, tid) for each new thread, stopped before its first instruction.
        self.new_thread_hooks: list[Callable[[Tracee, int], object]] = []
        self._open_memory()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: _Stdio = None,
        stdout: _Stdio = None,
        stderr: _Stdio = None,
        follow_forks: bool = False,
    ) -> Tracee:
        """Run *argv* traced from its first instruction; return it stopped at its exec event.

        The program is searched on PATH as ``execvp`` does, with exactly *env*
        (default: ours) in *cwd*; *stdin*/*stdout*/*stderr* take a file
        descriptor or an object with ``fileno()`` (default: ours). It is killed
        if the tracer dies (``PTRACE_O_EXITKILL``) and, by default, when released.
        """
        args = [os.fspath(a) for a in argv]
        environ = dict(os.environ if env is None else env)
        ctx = _dispatch.current()
        with _StdioFds((stdin, stdout, stderr)) as fds:
            pid = _spawn.spawn_stopped(
                args,
                environ,
                None if cwd is None else os.fspath(cwd),
                _BASE_OPTIONS | Options.EXITKILL,
                fds,
            )
        self = cls(_TOKEN, pid, created=True, readonly=False, follow_forks=follow_forks)
        self._ctx = ctx
        self._threads[pid] = _Thread(pid, stop=_Stop.EVENT)
        ctx.register(pid, self)
        self._state = ProcessState.STOPPED
        self._want_stopped = True
        self._reset_space()
        return self

    @classmethod
    def grab(cls, pid: int, *, readonly: bool = False) -> Tracee:
        """Take a running process: every thread seized and stopped, or (readonly) nothing at all.

        A read-only grab never stops the target and works while someone else
        traces it: state, maps, memory and symbols, no registers or breakpoints.
        """
        _check_grabbable(pid, readonly)
        if readonly:
            return cls(_TOKEN, pid, created=False, readonly=True)
        ctx = _dispatch.current()
        try:
            self = cls(_TOKEN, pid, created=False, readonly=False)
        except FileNotFoundError:
            raise NoSuchProcess(pid, f"failed to grab pid {pid}: no such process") from None
        self._ctx = ctx
        stat = procfs.read_stat(pid)
        self._stop_expected = stat.state == "T"
        # A child of our own process (a user's subprocess): its exit status belongs to
        # the user's wait(), so we let go of it at its exit stop instead of reaping it.
        self._ours_to_reap_not = stat.ppid == os.getpid()
        try:
            self._seize_all()
        except BaseException:
            self._abandon()
            raise
        self._reset_space()
        return self

    def _seize_all(self) -> None:
        assert self._ctx is not None
        self._want_stopped = True
        for _ in range(_GRAB_SETTLE_ROUNDS):
            try:
                tids = procfs.thread_ids(self.pid)
            except FileNotFoundError:
                raise NoSuchProcess(
                    self.pid, f"failed to grab pid {self.pid}: process exited"
                ) from None
            new = [t for t in tids if t not in self._threads]
            if not new:
                break
            for tid in new:
                self._seize_one(tid)
        self._state = ProcessState.STOPPED
        self._wait_until_all_stopped()
        if not self._threads:
            raise NoSuchProcess(self.pid, f"failed to grab pid {self.pid}: process exited")

    def _seize_one(self, tid: int) -> None:
        assert self._ctx is not None
        options = _BASE_OPTIONS
        if tid == self.pid and self._ours_to_reap_not:
            options |= Options.TRACEEXIT
        try:
            ptrace.seize(tid, options)
        except OSError as exc:
            if tid != self.pid and (
                exc.errno == errno.ESRCH or (exc.errno == errno.EPERM and self._seized_anyway(tid))
            ):
                return  # exited meanwhile, or already ours
            if exc.errno == errno.EPERM:
                raise _permission_error(self.pid) from None
            raise from_oserror(exc, self.pid, f"failed to grab pid {self.pid}") from None
        self._threads[tid] = _Thread(tid)
        self._ctx.register(tid, self)
        try:
            ptrace.interrupt(tid)
        except ProcessLookupError:
            pass

    def _seized_anyway(self, tid: int) -> bool:
        """A thread that refused PTRACE_SEIZE (EPERM) is no obstacle to the grab: it was
        born of a thread we had seized already (so it is ours, reported by its clone
        event), or it has exited and is still listed."""
        assert self._ctx is not None
        return _dispatch.procfs_tracer(tid) == self._ctx.native_id or _exiting(self.pid, tid)

    def _abandon(self) -> None:
        """Undo a half-done grab: detach whatever was seized."""
        self._want_stopped = True
        try:
            self._wait_until_all_stopped(timeout=2.0)
        except DtprocError:
            pass
        for th in list(self._threads.values()):
            self._detach_thread(th, keep_signal=True)
        self._forget()

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> ProcessState:
        if self._state in (ProcessState.RUNNING, ProcessState.STOPPED) and self.readonly:
            return _readonly_state(self.pid, self.identity)
        return self._state

    @property
    def threads(self) -> tuple[int, ...]:
        if self.readonly:
            try:
                return tuple(procfs.thread_ids(self.pid))
            except OSError:
                return ()
        return tuple(self._threads)

    @property
    def exe(self) -> str:
        """The executable's path as the kernel reports it (after the last exec)."""
        return self._exe

    @property
    def group_stopped(self) -> bool:
        """True while a SIGSTOP (or other stop signal) from outside holds the process."""
        return self._group_stopped

    def owned_tids(self) -> list[int]:
        return [*self._threads, *self._escorts]

    def thread_stopped(self, tid: int) -> bool:
        th = self._threads.get(tid)
        return th is not None and th.stopped

    # ------------------------------------------------------------------ memory
    def _open_memory(self) -> None:
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1
        flags = os.O_RDONLY if self.readonly else os.O_RDWR
        try:
            self._mem_fd = os.open(f"/proc/{self.pid}/mem", flags | os.O_CLOEXEC)
        except PermissionError:
            raise _permission_error(self.pid) from None
        except OSError:
            raise NoSuchProcess(self.pid, f"pid {self.pid} has exited") from None

    def read(self, address: int, size: int) -> bytes:
        """Read *size* bytes; our breakpoints are invisible (original bytes are shown)."""
        data = self.read_raw(address, size)
        if self._space is not None:
            return self._space.overlay(address, data)
        return data

    def read_raw(self, address: int, size: int) -> bytes:
        """Read memory as it is, int3 bytes included."""
        if size <= 0:
            return b""
        try:
            data = os.pread(self._mem_fd, size, address)
        except OSError as exc:
            raise self._memory_error(address, size, _mem_reason(exc)) from None
        except OverflowError:
            raise BadAddress(self.pid, address, size, "address out of range") from None
        if len(data) < size:
            raise self._memory_error(address + len(data), size - len(data), "address not mapped")
        return data

    def _memory_error(self, address: int, size: int, reason: str) -> DtprocError:
        """A failed access: the address, or the whole process, is gone."""
        if self._has_exited():
            return NoSuchProcess(self.pid, f"pid {self.pid} has exited")
        return BadAddress(self.pid, address, size, reason)

    def _gone_error(self, th: _Thread, doing: str) -> NoSuchProcess:
        """A thread vanished under a request of ours: it exited, or the process did."""
        if self._has_exited():
            return NoSuchProcess(self.pid, f"pid {self.pid} has exited")
        return NoSuchProcess(self.pid, f"pid {self.pid}: thread {th.tid} exited during {doing}")

    def _has_exited(self) -> bool:
        """The whole process is over: its end seen by us, a zombie, or gone from /proc."""
        if self._state is ProcessState.UNDEAD:
            return True
        try:
            state = procfs.read_stat(self.pid).state
        except OSError:
            return True
        return state in ("Z", "X") or not os.path.exists(f"/proc/{self.pid}/exe")

    def read_partial(self, address: int, size: int) -> bytes:
        """Read up to *size* bytes, stopping quietly at the first unreadable byte."""
        try:
            return os.pread(self._mem_fd, size, address)
        except (OSError, OverflowError):
            return b""

    def write(self, address: int, data: bytes) -> None:
        """Write bytes (read-only text included); breakpoints inside the range stay armed."""
        self._require_control("write memory")
        if self._space is not None:
            self._space.write_through(address, data)
        else:
            self.write_raw(address, data)

    def write_raw(self, address: int, data: bytes) -> None:
        try:
            n = os.pwrite(self._mem_fd, data, address)
        except OSError as exc:
            raise self._memory_error(address, len(data), _mem_reason(exc)) from None
        if n < len(data):
            raise self._memory_error(address + n, len(data) - n, "address not mapped")

    def read_cstring(self, address: int, max_length: int = 4096) -> bytes:
        """Read a NUL-terminated string (without the NUL), page by page, up to *max_length*."""
        out = bytearray()
        addr = address
        while len(out) < max_length:
            chunk = min(4096 - (addr & 4095), max_length - len(out))
            data = self.read_partial(addr, chunk)
            if not data:
                if not out and addr == address:
                    raise BadAddress(self.pid, address, 1)
                break
            if self._space is not None:
                data = self._space.overlay(addr, data)
            nul = data.find(b"\0")
            if nul >= 0:
                out += data[:nul]
                return bytes(out)
            out += data
            addr += len(data)
        return bytes(out)

    # ------------------------------------------------------------------ modules and symbols
    @property
    def modules(self) -> ModuleMap:
        """The mapped ELF objects (a snapshot, rebuilt after exec and library loads)."""
        if self._modules is None:
            self._modules = ModuleMap.read(self.pid, self.read_raw)
        return self._modules

    def refresh_modules(self) -> ModuleMap:
        """Re-read the mappings now (the rtld agent does this at each consistent point)."""
        self._modules = None
        return self.modules

    def lookup(self, module: str | None, name: str) -> Symbol | None:
        """Find *name* in *module* (``a.out``, ``libc.so.6``, a path; None: all, load order).

        A miss re-reads the mappings once: a library may have been loaded since.
        """
        found = self.modules.lookup(module, name)
        if found is None:
            found = self.refresh_modules().lookup(module, name)
        return found

    def symbolize(self, address: int) -> str:
        """``module`function+0xoff`` for an address, as ustack() prints frames."""
        if self.modules.module_at(address) is None:
            self.refresh_modules()
        return self.modules.symbolize(address)

    def ustack(self, tid: int | None = None, max_frames: int = 100) -> UserStack:
        """The user stack of a stopped thread (captured now, symbolized lazily)."""
        from dtproc.ustack import capture

        th = self._stopped_thread(tid, "unwind the stack")
        return capture(self, th.tid, self._regs(th), max_frames)

    # ------------------------------------------------------------------ registers
    def registers(self, tid: int | None = None) -> UserRegs:
        """The registers of a stopped thread (a fresh copy; change it and ``set_registers``)."""
        th = self._stopped_thread(tid, "read registers")
        try:
            return self._regs(th).copy()
        except OSError as exc:
            raise from_oserror(
                exc, self.pid, f"pid {self.pid}: cannot read registers of {th.tid}"
            ) from None

    def set_registers(self, tid: int | None, regs: UserRegs) -> None:
        th = self._stopped_thread(tid, "write registers")
        if th.stop is _Stop.BREAKPOINT and regs.rip != self._regs(th).rip:
            th.stop = _Stop.INTERRUPT  # moved away: the displaced instruction will not run
        try:
            ptrace.setregs(th.tid, regs)
            th.regs = regs.copy()
            th.regs_dirty = False
        except OSError as exc:
            raise from_oserror(
                exc, self.pid, f"pid {self.pid}: cannot write registers of {th.tid}"
            ) from None

    def _regs(self, th: _Thread) -> UserRegs:
        """The registers of a stopped thread, from our cache when we have them."""
        if th.regs is None:
            th.regs = ptrace.getregs(th.tid)
        return th.regs

    def _sync_regs(self, th: _Thread) -> None:
        """Hand our cached registers to the kernel before it runs or reads the thread."""
        if th.regs_dirty and th.regs is not None:
            ptrace.setregs(th.tid, th.regs)
        th.regs_dirty = False

    def _running(self, th: _Thread) -> None:
        th.stop = _Stop.NONE
        th.regs = None
        th.regs_dirty = False

    def _stopped_thread(self, tid: int | None, what: str) -> _Thread:
        self._require_control(what)
        th = self._threads.get(self.pid if tid is None else tid)
        if th is None:
            raise StateError(f"pid {self.pid}: no thread {tid}")
        if not th.stopped:
            raise StateError(
                f"pid {self.pid}: cannot {what} of thread {th.tid}: it is running (stop it first)"
            )
        return th

    # ------------------------------------------------------------------ signals
    def set_signal(self, tid: int, sig: int) -> None:
        """Change (or with 0, cancel) the signal a stopped thread receives when resumed."""
        th = self._stopped_thread(tid, "set the pending signal")
        th.signal = sig

    # ------------------------------------------------------------------ run control
    def resume(self) -> None:
        """Set every stopped thread running (a group-stopped process waits for SIGCONT)."""
        self._require_control("resume")
        self._want_stopped = False
        for th in list(self._threads.values()):
            th.hold = False
            if th.stopped:
                self._resume_thread(th)
        if self._state is ProcessState.STOPPED:
            self._state = ProcessState.RUNNING

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop every thread (all-stop). Events that happen meanwhile are queued for wait()."""
        self._require_control("stop")
        self._want_stopped = True
        for th in self._threads.values():
            if not th.stopped:
                try:
                    ptrace.interrupt(th.tid)
                except ProcessLookupError:
                    pass
        self._wait_until_all_stopped(timeout)
        if self._state is ProcessState.RUNNING:
            self._state = ProcessState.STOPPED

    def step(self, tid: int | None = None) -> int:
        """Execute one instruction of a stopped thread; return its new instruction pointer."""
        th = self._stopped_thread(tid, "single-step")
        if th.stop is _Stop.EVENT:
            self._leave_kernel(th)  # else the step would only finish the system call
        if th.stop is _Stop.BREAKPOINT and self._space is not None:
            th.stop = _Stop.STEP
            regs = self._regs(th)
            th.regs = None
            if self._space.step_displaced(th.tid, regs):
                return ptrace.getregs(th.tid).rip
            ptrace.setregs(th.tid, regs)
        self._sync_regs(th)
        self._single_step(th)
        if th.tid not in self._threads:
            raise self._gone_error(th, "a single step")
        return ptrace.getregs(th.tid).rip

    def _step_over(self, tid: int, address: int) -> None:
        """Classic all-stop step-over of the instruction at *address* for thread *tid*."""
        assert self._space is not None
        th = self._threads[tid]
        wanted = self._want_stopped
        already_stopped = {o.tid for o in self._threads.values() if o.stopped}
        running = [o for o in self._threads.values() if not o.stopped]
        self._want_stopped = True
        for other in running:
            try:
                ptrace.interrupt(other.tid)
            except ProcessLookupError:
                pass
        try:
            self._wait_until_all_stopped(None)
            site = self._space.breakpoint_at(address)
            if site is not None:
                self.write_raw(address, bytes([site.original]))
            try:
                self._internal_step(th)
            finally:
                if self._space.breakpoint_at(address) is not None:
                    self.write_raw(address, b"\xcc")
        finally:
            self._want_stopped = wanted
            if not wanted:
                # Everything we stopped goes on -- threads born meanwhile included.
                for other in list(self._threads.values()):
                    if other is not th and other.stopped and other.tid not in already_stopped:
                        self._resume_thread(other)

    def _single_step(self, th: _Thread) -> None:
        """Step *th* by one instruction, delivering a signal that arrives first."""
        sig, th.signal = th.signal, 0
        while True:
            th.stepping = True
            self._sync_regs(th)
            self._running(th)
            ptrace.singlestep(th.tid, sig)
            while th.stepping and th.tid in self._threads and not th.stopped:
                got = self._next_status(None)
                if got is not None:
                    self._on_status(*got)
            th.stepping = False
            if th.tid not in self._threads or th.stop is not _Stop.SIGNAL:
                return
            sig, th.signal = th.signal, 0

    def _internal_step(self, th: _Thread) -> None:
        """Step *th* for our own purposes: a signal that arrives first waits in th.queued."""
        th.internal = True
        try:
            while th.tid in self._threads:
                th.stepping = True
                self._sync_regs(th)
                self._running(th)
                ptrace.singlestep(th.tid, 0)
                while th.stepping and th.tid in self._threads and not th.stopped:
                    got = self._next_status(None)
                    if got is not None:
                        self._on_status(*got)
                th.stepping = False
                if th.stop is _Stop.STEP:
                    return
        finally:
            th.internal = False

    def step_raw(self, tid: int) -> None:
        """Execute one instruction of a stopped thread at its current rip, for plans."""
        th = self._threads[tid]
        self._internal_step(th)

    def inject_syscall(self, nr: int, *args: int) -> int:
        """Run a system call in one of the target's threads; return its (signed) result.

        A stopped thread is borrowed if there is one, otherwise one is stopped for the
        moment. Its registers are restored afterwards, and a signal that arrives
        meanwhile is held and delivered when the thread goes on.
        """
        self._require_control("inject a system call")
        th, borrowed = self._borrow_thread()
        if th.stop is _Stop.EVENT:
            self._leave_kernel(th)
        kind = th.stop
        self._sync_regs(th)
        saved = self._regs(th).copy()
        regs = saved.copy()
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & _U64)
        regs.orig_rax = _U64  # no syscall restart
        regs.rip = self._syscall_site()
        try:
            ptrace.setregs(th.tid, regs)
            self._internal_step(th)
            result = ptrace.getregs(th.tid).rax
            ptrace.setregs(th.tid, saved)
        except ProcessLookupError:
            raise self._gone_error(th, "a system call") from None
        if th.tid not in self._threads:  # it was already on its way out (exit_group, SIGKILL)
            raise self._gone_error(th, "a system call")
        th.regs = saved
        th.stop = kind if kind is not _Stop.NONE else _Stop.INTERRUPT
        if borrowed and not self._want_stopped:
            self._resume_thread(th)
        return result - (1 << 64) if result >= 1 << 63 else result

    def _borrow_thread(self) -> tuple[_Thread, bool]:
        """A stopped thread to run code in, and whether we stopped it for the purpose."""
        stopped = [t for t in self._threads.values() if t.stopped]
        # Prefer a stop on the way back to user mode with no signal to hold.
        stopped.sort(key=lambda t: (t.stop is _Stop.EVENT, bool(t.signal)))
        if stopped:
            return stopped[0], False
        th = next(iter(self._threads.values()))
        th.hold = True
        try:
            ptrace.interrupt(th.tid)
            while not th.stopped and th.tid in self._threads:
                got = self._next_status(None)
                if got is not None:
                    self._on_status(*got)
        except ProcessLookupError:
            raise self._gone_error(th, "a system call") from None
        finally:
            th.hold = False
        if th.tid not in self._threads:
            raise self._gone_error(th, "a system call")
        return th, True

    def _leave_kernel(self, th: _Thread) -> None:
        """Take a thread from a PTRACE_EVENT stop to its return to user mode.

        Event stops (clone, fork, exec, exit) are inside a system call, which on the way
        out writes its own result over rax: code run from there would never execute
        and the program would see our registers' rax as the call's result. One step
        completes the call and stops the thread before its next instruction.
        """
        try:
            self._internal_step(th)
        except ProcessLookupError:
            raise self._gone_error(th, "a system call") from None
        if th.tid not in self._threads:
            raise self._gone_error(th, "a system call")

    def _syscall_site(self) -> int:
        """An address holding a ``syscall`` instruction: the vDSO has several."""
        if self._syscall_at:
            return self._syscall_at
        vdso = next((m for m in procfs.read_maps(self.pid) if m.path == "[vdso]"), None)
        if vdso is not None:
            at = self.read_raw(vdso.start, vdso.end - vdso.start).find(b"\x0f\x05")
            if at >= 0:
                self._syscall_at = vdso.start + at
                return self._syscall_at
        raise DtprocError(f"pid {self.pid}: no syscall instruction found to inject system calls")

    def wait(self, timeout: float | None = None) -> Event | None:
        """The next event, or None on timeout, on ``wake()``, or when the process is gone."""
        self._require_driver()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if self._state in (ProcessState.UNDEAD, ProcessState.LOST, ProcessState.DEAD):
                return None
            got = self._next_status(deadline)
            if got is None:
                return self._events.popleft() if self._events else None
            with self.status_lock:
                self._on_status(*got)
        return self._events.popleft()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Iterate over events until the process ends (or a wait times out)."""
        while (ev := self.wait(timeout)) is not None:
            yield ev

    def wake(self) -> None:
        """Make a blocking :meth:`wait` in the driving thread return None (any thread may call)."""
        if self._ctx is not None:
            self._ctx.wake()

    def _next_status(self, deadline: float | None) -> tuple[int, int] | None:
        assert self._ctx is not None
        return self._ctx.next_status(self, deadline)

    def _wait_until_all_stopped(self, timeout: float | None = 10.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(not th.stopped for th in self._threads.values()):
            got = self._next_status(deadline)
            if got is None:
                if deadline is not None and time.monotonic() >= deadline:
                    running = [t for t, th in self._threads.items() if not th.stopped]
                    raise DtprocError(f"pid {self.pid}: threads {running} did not stop in time")
                continue
            self._on_status(*got)

    # ------------------------------------------------------------------ status handling
    def _on_status(self, tid: int, status: int) -> None:
        if tid in self._escorts:
            self._on_escort_status(tid, status)
            return
        th = self._threads.get(tid)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._on_death(tid, status)
            return
        if th is None:
            th = self._threads[tid] = _Thread(tid, new=True)  # it beat its clone event
        th.stop = _Stop.EVENT
        try:
            self._on_stop(th, status)
        except ProcessLookupError:
            # SIGKILL (or another thread's exec) takes a thread out of any ptrace-stop at
            # once, so the stop may vanish while we handle it. Its death (or the exec)
            # is reported by wait like any other; anything else is a real error.
            if not _dying(self.pid, tid):
                raise
            self._running(th)

    def _on_stop(self, th: _Thread, status: int) -> None:
        sig = os.WSTOPSIG(status)
        event = status >> 16
        was_listening, th.listening = th.listening, False
        if event == 0:
            self._on_signal_stop(th, sig)
        elif event == ptrace.Event.STOP:
            self._on_trap_stop(th, sig, was_listening)
        else:
            self._on_event(th, event)

    def _on_death(self, tid: int, status: int) -> None:
        assert self._ctx is not None
        self._ctx.unregister(tid)
        self._threads.pop(tid, None)
        if tid != self.pid:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self._events.append(ThreadExited(self.pid, tid, code))
            return
        self._record_end(status)
        for other in list(self._threads):
            self._ctx.unregister(other)
        self._threads.clear()

    def _on_signal_stop(self, th: _Thread, sig: int) -> None:
        if sig == signal.SIGTRAP and self._on_sigtrap(th):
            return
        if th.internal:
            # We are stepping it for our own ends: hold the signal (with its siginfo) for later.
            th.queued.append(ptrace.getsiginfo(th.tid))
            th.stop = _Stop.SIGNAL
            th.stepping = False
            self._events.append(SignalReceived(self.pid, th.tid, sig, False))
            return
        th.stop = _Stop.SIGNAL
        th.signal = sig
        if th.stepping:
            th.stepping = False  # a signal arrived before the step: report it, stay stopped
        intercepted = sig in self.intercept_signals
        if sig == signal.SIGCONT:
            self._stop_expected = False
            self._end_group_stop()
        elif sig in _STOP_SIGNALS and not intercepted:
            self._stop_expected = True
        self._events.append(SignalReceived(self.pid, th.tid, sig, intercepted))
        th.hold = intercepted
        if not intercepted and not self._want_stopped:
            self._resume_thread(th)

    def _on_sigtrap(self, th: _Thread) -> bool:
        """Handle a SIGTRAP that is ours (breakpoint, step); False if it is the program's.

        No siginfo is needed for breakpoints (one syscall less per hit): a thread
        whose rip is one past one of our int3 bytes has just executed it.
        """
        if th.stepping:
            try:
                info = ptrace.getsiginfo(th.tid)
            except OSError:
                return False
            if info.si_code in (ptrace.TRAP_TRACE, ptrace.TRAP_BRKPT):
                th.stepping = False
                th.stop = _Stop.STEP
                return True
        if self._space is None:
            return False
        return self._on_int3(th)

    def _on_int3(self, th: _Thread) -> bool:
        assert self._space is not None
        regs = ptrace.getregs(th.tid)
        addr = regs.rip - 1
        bp = self._space.breakpoint_at(addr)
        if bp is None:
            if not self._space.was_ours(addr):
                return False
            regs.rip = addr  # a hit on a breakpoint removed meanwhile: run the original byte
            ptrace.setregs(th.tid, regs)
            self._after_our_trap(th)
            return True
        regs.rip = addr
        th.regs = regs
        th.regs_dirty = True
        th.stop = _Stop.BREAKPOINT
        keep = self._space.dispatch_hit(bp, th.tid, regs)
        if keep:
            th.hold = True
            self._sync_regs(th)
            self._events.append(BreakpointHit(self.pid, th.tid, addr))
            return True
        self._after_our_trap(th)
        return True

    def _after_our_trap(self, th: _Thread) -> None:
        if th.stop is not _Stop.BREAKPOINT:
            th.stop = _Stop.INTERRUPT
        if not self._want_stopped and self._state is not ProcessState.UNDEAD:
            self._resume_thread(th)

    def _on_trap_stop(self, th: _Thread, sig: int, was_listening: bool) -> None:
        """A PTRACE_EVENT_STOP: group-stop (a stop signal), or interrupt/new thread (SIGTRAP).

        A group-stop trap is news only after we passed on a stop signal: traps
        that were queued before a SIGCONT are stale, and PTRACE_LISTEN on them
        re-traps at once with SIGTRAP, which sets the thread running again.
        """
        if sig != signal.SIGTRAP:
            th.stop = _Stop.GROUP
            if not self._group_stopped and self._stop_expected:
                self._group_stopped = True
                self._stop_expected = False
                self._events.append(GroupStop(self.pid, sig))
            if not self._want_stopped:
                self._listen(th)
            return
        if was_listening:
            self._end_group_stop()
        th.stop = _Stop.INTERRUPT
        if th.new:
            th.new = False
            for hook in list(self.new_thread_hooks):
                hook(self, th.tid)  # before the thread runs its first instruction
        if self._want_stopped or th.hold:
            return
        self._resume_thread(th)

    def _on_exit_stop(self, th: _Thread) -> bool:
        """The leader of a process our own process is parent of is exiting.

        When the whole process is going, record how it ends and detach, so that
        the zombie -- and its exit status -- stays for its parent's wait().
        """
        assert self._ctx is not None
        status = ptrace.geteventmsg(th.tid)
        others = [t for t in self._threads if t != th.tid]
        if not all(_exiting(self.pid, t) for t in others):
            return False  # only the leader thread ends; the process lives on
        self._record_end(status)
        self._detach_thread(th, keep_signal=False)
        self._threads.clear()
        return True

    def _record_end(self, status: int) -> None:
        if os.WIFEXITED(status):
            self._end = Exited(self.pid, os.WEXITSTATUS(status))
        else:
            self._end = Killed(self.pid, os.WTERMSIG(status), os.WCOREDUMP(status))
        self._events.append(self._end)
        self._state = ProcessState.UNDEAD

    def _end_group_stop(self) -> None:
        if self._group_stopped:
            self._group_stopped = False
            self._events.append(Continued(self.pid))

    def _on_event(self, th: _Thread, event: int) -> None:
        if event == ptrace.Event.CLONE:
            self._on_clone(th)
        elif event in (ptrace.Event.FORK, ptrace.Event.VFORK):
            self._on_fork(th, event == ptrace.Event.VFORK)
            return
        elif event == ptrace.Event.VFORK_DONE:
            self._events.append(VForkDone(self.pid, th.tid))
        elif event == ptrace.Event.EXEC:
            self._on_exec(th)
            return
        elif event == ptrace.Event.EXIT and self._on_exit_stop(th):
            return
        if not self._want_stopped:
            self._resume_thread(th)

    def _on_clone(self, th: _Thread) -> None:
        assert self._ctx is not None
        child = ptrace.geteventmsg(th.tid)
        if procfs.tgid_of(child) not in (self.pid, None):
            self._adopt_escort(child, _Escort.SHARED)
            return
        if child not in self._threads:
            self._threads[child] = _Thread(child, new=True)
        self._events.append(ThreadCreated(self.pid, child, th.tid))
        # Its first stop may have been reaped before we knew whose it was: take it now.
        for status in self._ctx.claim_orphan(child, self):
            self._on_status(child, status)

    def _on_fork(self, th: _Thread, vfork: bool) -> None:
        child = ptrace.geteventmsg(th.tid)
        follow = self.follow_forks and not vfork
        if follow:
            self._adopt_child(child)
        else:
            self._adopt_escort(child, _Escort.SHARED if vfork else _Escort.COPY)
        cls = VForked if vfork else Forked
        self._events.append(cls(self.pid, th.tid, child, follow))
        if not self._want_stopped:
            self._resume_thread(th)

    def _on_exec(self, th: _Thread) -> None:
        assert self._ctx is not None
        former = ptrace.geteventmsg(th.tid)
        for tid in list(self._threads):
            if tid != self.pid:
                self._threads.pop(tid)
                if tid == former:
                    self._ctx.unregister(tid)
        leader = self._threads.setdefault(self.pid, th)
        leader.stop = _Stop.EVENT
        self._exe = procfs.exe_path(self.pid)
        self._modules = None
        self._syscall_at = 0
        self._open_memory()
        self._reset_space()
        self._events.append(Exec(self.pid, former, self._exe))
        if self.stop_on_exec:
            leader.hold = True
            self._want_stopped = True
            self._state = ProcessState.STOPPED
            return
        if not self._want_stopped:
            self._resume_thread(leader)

    # ------------------------------------------------------------------ descendants
    def _adopt_escort(self, child: int, kind: _Escort) -> None:
        """Look after an untraced-to-be descendant until it carries none of our int3s."""
        assert self._ctx is not None
        self._escorts[child] = kind
        for status in self._ctx.claim_orphan(child, self):
            self._on_escort_status(child, status)

    def _on_escort_status(self, tid: int, status: int) -> None:
        assert self._ctx is not None
        kind = self._escorts[tid]
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._drop_escort(tid)
            return
        if self._letting_go:
            self._let_escort_go(tid, status)
            return
        event = status >> 16
        sig = os.WSTOPSIG(status)
        if kind is _Escort.COPY or event == ptrace.Event.EXEC:
            # A copy is cleaned before it runs; a sharer is free once its memory is its own.
            if kind is _Escort.COPY and self._space is not None:
                self._space.clean_copy(tid)
            self._release_escort(tid, sig if event == 0 else 0)
            return
        if event == 0 and sig == signal.SIGTRAP and self._space is not None:
            regs = self._at_our_trap(tid)
            if regs is not None:
                self._space.execute_displaced(tid, regs)
                ptrace.cont(tid, 0)
                return
        self._adopt_grandchild(tid, event)
        _cont_quietly(tid, sig if event == 0 else 0)

    def _adopt_grandchild(self, tid: int, event: int) -> None:
        """An escort forked, vforked or cloned: look after the new one as well."""
        if event in (ptrace.Event.FORK, ptrace.Event.VFORK, ptrace.Event.CLONE):
            kind = _Escort.COPY if event == ptrace.Event.FORK else _Escort.SHARED
            self._adopt_escort(ptrace.geteventmsg(tid), kind)

    def _at_our_trap(self, tid: int) -> UserRegs | None:
        """The registers of a thread stopped by an int3 of ours (is or was), rewound to
        its address; None when the SIGTRAP is not ours."""
        assert self._space is not None
        regs = ptrace.getregs(tid)
        if not self._space.trapped_by_us(regs.rip - 1):
            return None
        regs.rip -= 1
        return regs

    def _let_escorts_go(self, timeout: float = 5.0) -> None:
        """Free every descendant we look after, each at a stop and rid of our int3s.

        ptrace detaches only a stopped tracee, and a fork child whose first stop is
        still to come carries a copy of our int3s: so each is freed at its next stop,
        cleaned from the breakpoint table -- which is why this comes before the
        breakpoints are removed. A vfork child (running, on our very memory) is
        stopped for the purpose.
        """
        self._letting_go = True
        for tid, kind in list(self._escorts.items()):
            if kind is _Escort.SHARED:
                with contextlib.suppress(ProcessLookupError):
                    ptrace.interrupt(tid)
        deadline = time.monotonic() + timeout
        while self._escorts:
            got = self._next_status(deadline)
            if got is not None:
                self._on_status(*got)
            elif time.monotonic() >= deadline:
                break
        for tid in list(self._escorts):
            self._release_escort(tid, 0)  # never stopped: nothing more we can do

    def _let_escort_go(self, tid: int, status: int) -> None:
        event = status >> 16
        sig = os.WSTOPSIG(status) if event == 0 else 0
        self._adopt_grandchild(tid, event)
        if self._space is not None and event != ptrace.Event.EXEC:  # exec: not our memory now
            self._space.clean_copy(tid)
            regs = self._at_our_trap(tid) if sig == signal.SIGTRAP else None
            if regs is not None:
                ptrace.setregs(tid, regs)  # the original instruction is back: run it
                sig = 0
        self._release_escort(tid, sig)

    def _release_escort(self, tid: int, sig: int) -> None:
        try:
            ptrace.detach(tid, sig)
        except ProcessLookupError:
            pass
        self._drop_escort(tid)

    def _drop_escort(self, tid: int) -> None:
        assert self._ctx is not None
        self._escorts.pop(tid, None)
        self._ctx.unregister(tid)

    def _adopt_child(self, child: int) -> None:
        """Follow a fork child: it becomes a Tracee of its own, driven by this thread."""
        assert self._ctx is not None
        tracee = Tracee(
            _TOKEN, child, created=False, readonly=False, follow_forks=self.follow_forks
        )
        tracee._ctx = self._ctx
        tracee._threads[child] = _Thread(child)
        tracee._want_stopped = True
        self._ctx.register(child, tracee)
        for status in self._ctx.claim_orphan(child, tracee):
            tracee._on_status(child, status)
        tracee._wait_until_all_stopped()
        tracee._state = ProcessState.STOPPED
        if self._space is not None:
            self._space.clean_copy(child)
        tracee._reset_space()
        self._children[child] = tracee

    def child(self, pid: int) -> Tracee:
        """A followed fork child (``follow_forks=True``), stopped until resumed."""
        try:
            return self._children.pop(pid)
        except KeyError:
            raise NoSuchProcess(
                pid, f"pid {pid} is not a followed child of pid {self.pid}"
            ) from None

    # ------------------------------------------------------------------ resuming threads
    def _resume_thread(self, th: _Thread) -> None:
        if th.hold:
            return
        try:
            if th.stop is _Stop.GROUP and self._group_stopped:
                self._listen(th)
                return
            if th.stop is _Stop.BREAKPOINT and self._space is not None:
                self._space.execute_displaced(th.tid, self._regs(th))
                th.regs_dirty = False
            else:
                self._sync_regs(th)
            sig, th.signal = th.signal, 0
            if not sig and th.queued:
                sig = self._take_queued(th)
            ptrace.cont(th.tid, sig)
            self._running(th)
            if th.queued:
                ptrace.interrupt(th.tid)  # stop again soon to deliver the next held signal
        except ProcessLookupError:
            self._running(th)  # killed meanwhile: its death will be reported

    def _take_queued(self, th: _Thread) -> int:
        """Deliver a held signal with its original siginfo (needs a signal-delivery-stop)."""
        if th.stop not in (_Stop.SIGNAL, _Stop.STEP, _Stop.BREAKPOINT):
            self._internal_step(th)  # a SIGTRAP step stop is a signal-delivery-stop
        info = th.queued.pop(0)
        ptrace.setsiginfo(th.tid, info)
        return info.si_signo

    def _listen(self, th: _Thread) -> None:
        try:
            self._sync_regs(th)
            ptrace.listen(th.tid)
            th.listening = True
        except ProcessLookupError:
            pass
        self._running(th)

    # ------------------------------------------------------------------ breakpoints
    def add_breakpoint(
        self, address: int, callback: BreakpointCallback | None = None
    ) -> Breakpoint:
        """Plant a breakpoint; *callback(tracee, tid)* runs at each hit, that thread stopped.

        With no callback a hit stops the thread and :meth:`wait` reports :class:`BreakpointHit`.
        """
        self._require_control("set breakpoints")
        assert self._space is not None
        return self._space.add(address, callback)

    @property
    def breakpoints(self) -> Sequence[Breakpoint]:
        return self._space.breakpoints if self._space is not None else ()

    @property
    def address_space(self) -> AddressSpace:
        self._require_control("use breakpoints")
        assert self._space is not None
        return self._space

    def _reset_space(self) -> None:
        from dtproc.breakpoints import AddressSpace

        self._space = AddressSpace(self)

    # ------------------------------------------------------------------ release
    def release(self, mode: ReleaseMode | None = None) -> None:
        """Let go: detach (grabbed), kill (created), or leave stopped (someone else stopped it)."""
        if self._state is ProcessState.DEAD:
            return
        if self.readonly:
            self._forget()
            return
        self._require_driver()
        if mode is None:
            mode = self.default_release_mode()
        try:
            if self._state in (ProcessState.RUNNING, ProcessState.STOPPED):
                if mode is ReleaseMode.KILL:
                    self._kill_and_reap()
                else:
                    self._detach_all(hang=mode is ReleaseMode.HANG)
            elif self._escorts:  # it ended with a fork child still on its way
                self._let_escorts_go()
        finally:
            for child in list(self._children.values()):
                child.release()
            self._forget()

    def default_release_mode(self) -> ReleaseMode:
        if self.created:
            return ReleaseMode.KILL
        if self._group_stopped:
            return ReleaseMode.HANG
        return ReleaseMode.DETACH

    def kill(self) -> None:
        """Kill the process (SIGKILL) and collect its end; it stays a handle in UNDEAD state."""
        self._require_driver()
        self._kill_and_reap()

    def _kill_and_reap(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while self._state not in (ProcessState.UNDEAD, ProcessState.DEAD):
            got = self._next_status(deadline)
            if got is None:
                if time.monotonic() >= deadline:
                    break
                continue
            self._on_status(*got)
        self._let_escorts_go()

    def _detach_all(self, *, hang: bool) -> None:
        self.stop()
        self._let_escorts_go()
        if self._space is not None:
            self._space.remove_all()
            self._drain_our_traps()
        if hang and not self._group_stopped:
            os.kill(self.pid, signal.SIGSTOP)
        for th in list(self._threads.values()):
            self._detach_thread(th, keep_signal=True)

    def _drain_our_traps(self) -> None:
        """Collect SIGTRAPs from int3s hit just before removal, so none reaches the program."""
        assert self._space is not None
        for th in list(self._threads.values()):
            if not _has_pending_sigtrap(self.pid, th.tid):
                continue
            regs = ptrace.getregs(th.tid)
            if not self._space.was_ours(regs.rip - 1):
                continue
            th.hold = False
            self._want_stopped = True
            self._sync_regs(th)
            ptrace.cont(th.tid, th.signal)
            th.signal = 0
            self._running(th)
            self._wait_until_all_stopped()

    def _detach_thread(self, th: _Thread, *, keep_signal: bool) -> None:
        sig = th.signal if keep_signal and th.stop is _Stop.SIGNAL else 0
        try:
            self._sync_regs(th)
            ptrace.detach(th.tid, sig)
        except ProcessLookupError:
            pass
        if self._ctx is not None:
            self._ctx.unregister(th.tid)

    def _forget(self) -> None:
        if self._ctx is not None:
            for tid in self.owned_tids():
                self._ctx.unregister(tid)
        self._threads.clear()
        self._escorts.clear()
        self._modules = None
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1
        self._state = ProcessState.DEAD

    @property
    def end(self) -> Event | None:
        """How the process ended (:class:`Exited` or :class:`Killed`), once it has."""
        return self._end

    def __enter__(self) -> Tracee:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Tracee pid={self.pid} state={self._state.value} threads={len(self._threads)}>"

    # ------------------------------------------------------------------ guards
    def _require_driver(self) -> None:
        if threading.get_ident() != self._driver:
            raise StateError(
                f"pid {self.pid} is driven by another thread: the kernel accepts ptrace requests "
                "only from the thread that attached (use dtproc.Tracer to share processes)"
            )

    def _require_control(self, what: str) -> None:
        if self.readonly:
            raise StateError(f"pid {self.pid} was grabbed read-only: cannot {what}")
        if self._state in (ProcessState.UNDEAD, ProcessState.DEAD, ProcessState.LOST):
            raise NoSuchProcess(self.pid, f"pid {self.pid} is {self._state.value}: cannot {what}")
        self._require_driver()


# ---------------------------------------------------------------------- helpers
class _HasFileno(Protocol):
    def fileno(self) -> int: ...


_Stdio = int | _HasFileno | None


class _StdioFds:
    """File descriptors for a new program's stdio; ``subprocess.DEVNULL`` opens /dev/null."""

    def __init__(self, files: Sequence[_Stdio]) -> None:
        self._files = files
        self._opened: list[int] = []

    def __enter__(self) -> tuple[int | None, ...]:
        return tuple(self._fd(f) for f in self._files)

    def _fd(self, f: _Stdio) -> int | None:
        if f is None:
            return None
        if isinstance(f, int):
            if f == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                self._opened.append(fd)
                return fd
            return f
        return f.fileno()

    def __exit__(self, *exc: object) -> None:
        for fd in self._opened:
            os.close(fd)


def _cont_quietly(tid: int, sig: int) -> None:
    try:
        ptrace.cont(tid, sig)
    except ProcessLookupError:
        pass


_PF_EXITING = 0x4  # task flag, /proc/PID/task/TID/stat field 9: do_exit() has begun
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _pending_signals(pid: int, tid: int, *, shared: bool = False) -> int:
    """The thread's own pending signal set (a bit mask), with the process's if *shared*;
    0 if it is gone."""
    keys = ("SigPnd:", "ShdPnd:") if shared else ("SigPnd:",)
    mask = 0
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(keys):
                    mask |= int(line.split()[1], 16)
    except OSError:
        pass
    return mask


def _has_pending_sigtrap(pid: int, tid: int) -> bool:
    return bool(_pending_signals(pid, tid) & (1 << (signal.SIGTRAP - 1)))


def _exiting(pid: int, tid: int) -> bool:
    """A thread that exit_group() or a SIGKILL is taking down: already gone, in do_exit(),
    or with SIGKILL pending (its own, or the process's not yet dequeued)."""
    try:
        if procfs.read_stat(pid, tid).flags & _PF_EXITING:
            return True
    except (OSError, ValueError, IndexError):
        return True
    return bool(_pending_signals(pid, tid, shared=True) & _SIGKILL_BIT)


def _dying(pid: int, tid: int, grace: float = 0.01) -> bool:
    """Whether a thread that left a ptrace-stop behind our back is being killed: allow
    for the few instructions between dequeuing SIGKILL and entering do_exit()."""
    deadline = time.monotonic() + grace
    while not _exiting(pid, tid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)
    return True


def _mem_reason(exc: OSError) -> str:
    if exc.errno in (errno.EIO, errno.EFAULT):
        return "address not mapped"
    if exc.errno == errno.ESRCH:
        return "process is gone"
    return os.strerror(exc.errno or errno.EIO)


def _readonly_state(pid: int, identity: ProcessIdentity) -> ProcessState:
    try:
        st = procfs.read_stat(pid)
    except OSError:
        return ProcessState.DEAD
    if st.start_time != identity.start_time:
        return ProcessState.DEAD
    if st.state in ("Z", "X"):
        return ProcessState.UNDEAD
    if st.state in ("T", "t"):
        return ProcessState.STOPPED
    return ProcessState.RUNNING


def _permission_error(pid: int) -> AccessDenied:
    try:
        tracer = procfs.tracer_pid(pid)
    except OSError:
        tracer = 0
    if tracer:
        name = _comm(tracer)
        return AccessDenied(
            pid,
            f"failed to grab pid {pid}: it is already traced by pid {tracer} ({name}); "
            "a process can have only one tracer: stop the other one, or grab read-only",
        )
    from dtproc.errors import ptrace_hint

    hint = ptrace_hint()
    return AccessDenied(
        pid, f"failed to grab pid {pid}: permission denied" + (f" ({hint})" if hint else "")
    )


def _comm(pid: int) -> str:
    try:
        return procfs.read_stat(pid).comm
    except OSError:
        return "?"


def _check_grabbable(pid: int, readonly: bool) -> None:
    """Refuse, with a reason, what the kernel would refuse or what would hurt."""
    if pid <= 0:
        raise NoSuchProcess(pid, f"failed to grab pid {pid}: not a valid process id")
    if pid == os.getpid():
        raise DtprocError(f"failed to grab pid {pid}: it is dtproc's own process")
    try:
        st = procfs.read_stat(pid)
    except FileNotFoundError:
        raise NoSuchProcess(pid, f"failed to grab pid {pid}: no such process") from None
    except PermissionError:
        raise _permission_error(pid) from None
    tgid = procfs.tgid_of(pid)
    if tgid is not None and tgid != pid:
        raise NoSuchProcess(
            pid, f"failed to grab pid {pid}: it is a thread of pid {tgid}, not a process"
        )
    if st.flags & procfs.PF_KTHREAD:
        raise AccessDenied(pid, f"failed to grab pid {pid}: it is a kernel thread ({st.comm})")
    if st.state in ("Z", "X"):
        raise ZombieProcess(pid, f"failed to grab pid {pid}: it is a zombie (it has exited)")
    if readonly:
        return
    if procfs_tracer := procfs.tracer_pid(pid):
        if os.path.exists(f"/proc/self/task/{procfs_tracer}"):  # a thread of ours traces it
            raise AccessDenied(
                pid, f"failed to grab pid {pid}: dtproc already traces it (release it first)"
            )
        raise _permission_error(pid)


Callback = Callable[["Tracee", int], object]

__all__ = ["Callback", "ProcessDied", "Tracee"]
