"""The control layer: shared process handles, one control thread per process, notifications.

This is dtproc's dt_proc. The library's own mechanisms (ustack, the pid
provider) and its clients (``dtproc -c``/``-p``, your code) grab and create
processes through one :class:`Tracer`, and share the handles:

* **One handle per process.** Grabbing or creating a pid the table already holds
  returns the same :class:`Process` with one more reference. Identity is
  (pid, start time): a reused pid is a new process.
* **A cache of idle read-only handles.** A read-only handle whose last
  reference goes stays cached, most recently used first, up to ``lru_limit``;
  past it the least recently used idle one is closed. A controlled grab of a pid
  held only read-only marks that handle stale and opens a controlled one.
* **A control thread per controlled process.** It owns the :class:`Tracee` (the
  kernel accepts ptrace requests only from the thread that attached), waits for
  the process's events *without* holding the handle's lock -- so clients can use
  the handle meanwhile -- and handles breakpoints, rtld events, fork and exec with
  the lock held. Requests from other threads (registers, breakpoints, stop,
  resume, release) are queued and the thread is woken to serve them.
* **Rendezvous.** ``create``/``grab`` return once the process is stopped at the
  chosen point with its control thread idle; :meth:`Tracer.resume` sets both
  going. A process stopped by a SIGSTOP from outside stays stopped until
  something continues it (DTrace's *waitrun*), and :attr:`Process.stopped_by_signal`
  says so.
* **Notifications.** When a process exits, is killed or is lost, a
  :class:`Notification` is queued; :meth:`Tracer.sleep` hands it to the handlers
  registered with :meth:`Tracer.on_process_event` in the caller's thread.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import stat
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeVar, final

from dtproc._sys import procfs
from dtproc._sys.regs import UserRegs
from dtproc.breakpoints import Breakpoint, BreakpointCallback
from dtproc.errors import (
    DtprocError,
    NoSuchProcess,
    ProcessDied,
    ProcessLostError,
    StateError,
)
from dtproc.events import Event, Exec, Exited, Killed
from dtproc.modules import ModuleMap, Symbol
from dtproc.rendezvous import Arrival, Rendezvous, StopPoint, describe_end
from dtproc.rtld import ModulesChanged, RtldAgent
from dtproc.tracee import Tracee
from dtproc.types import ProcessIdentity, ProcessState, ReleaseMode

if TYPE_CHECKING:
    from dtproc.ustack import UserStack

T = TypeVar("T")

DEFAULT_LRU_LIMIT: Final = 8
# A wake-up signal that lands between the control thread's last look at its request queue and
# its waitid is lost: poke again soon (measured: Python's GIL hand-off makes that window common).
_WAKE_RETRY: Final = 0.0001


class NotificationKind(enum.Enum):
    EXITED = "exited"
    KILLED = "killed"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Notification:
    """What happened to a controlled process: it exited, was killed, or was lost."""

    pid: int
    kind: NotificationKind
    status: int  # exit status, or the signal number for KILLED
    message: str

    def __str__(self) -> str:
        return self.message


NotificationHandler = Callable[[Notification], object]


class _Request:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[Tracee], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


@final
class Process:
    """A shared handle on one process. Get one from :class:`Tracer`; release it when done."""

    def __init__(
        self,
        token: object,
        tracer: Tracer,
        pid: int,
        *,
        readonly: bool,
        created: bool,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("Process handles come from Tracer.create() and Tracer.grab()")
        self._tracer = tracer
        self._pid = pid
        self.readonly: Final = readonly
        self.created: Final = created
        self.refs = 0
        self.stale = False
        self.cacheable = readonly
        self.identity = ProcessIdentity(pid, 0)
        self.arrival: Arrival | None = None
        self._lock = threading.RLock()
        self._lock_owner: int | None = None
        self._tracee: Tracee | None = None
        self._thread: threading.Thread | None = None
        self._cv = threading.Condition()
        self._requests: deque[_Request] = deque()
        self._idle = False  # stopped at a rendezvous, waiting for resume()
        self._ready = False  # create/grab finished (successfully or not)
        self._done = False  # the control thread has exited
        self._quit = False
        self._release_mode: ReleaseMode | None = None
        self._error: BaseException | None = None
        self._end: Event | None = None
        self._lost: str | None = None
        self._subscribers: list[Callable[[ModulesChanged], None]] = []
        self._exec_subscribers: list[Callable[[Exec], None]] = []
        self._rtld: RtldAgent | None = None

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int:
        return self._pid

    @property
    def state(self) -> ProcessState:
        t = self._tracee
        if self._lost is not None:
            return ProcessState.LOST
        if self._end is not None:
            return ProcessState.UNDEAD
        if t is None:
            return ProcessState.DEAD
        return t.state

    @property
    def stopped_by_signal(self) -> bool:
        """Held by a SIGSTOP (or another stop signal) from outside, until SIGCONT (waitrun)."""
        t = self._tracee
        return t is not None and not self.readonly and t.group_stopped

    @property
    def at_rendezvous(self) -> bool:
        """Stopped where create/grab left it, until Tracer.resume()."""
        return self._idle

    @property
    def end(self) -> Event | None:
        """Exited or Killed, once the process has ended."""
        return self._end

    @property
    def tracee(self) -> Tracee:
        """The underlying Tracee: use it only from callbacks run by the control thread,
        or while holding :meth:`lock` for reads (memory, modules, symbols)."""
        if self._tracee is None:
            raise NoSuchProcess(self.pid, f"pid {self.pid}: the handle is closed")
        return self._tracee

    # ------------------------------------------------------------------ client access
    @contextlib.contextmanager
    def lock(self) -> Iterator[Process]:
        """Hold the process still for consistent access from a client thread.

        While a client holds it, the control thread processes no event (the
        process stays stopped at whatever it is doing next). Reads are done
        directly; anything that needs ptrace goes through the control thread, so
        do not call those while holding the lock.
        """
        with self._lock:
            owner, self._lock_owner = self._lock_owner, threading.get_ident()
            try:
                yield self
            finally:
                self._lock_owner = owner

    def read(self, address: int, size: int) -> bytes:
        with self._lock:
            return self.tracee.read(address, size)

    def read_cstring(self, address: int, max_length: int = 4096) -> bytes:
        with self._lock:
            return self.tracee.read_cstring(address, max_length)

    @property
    def modules(self) -> ModuleMap:
        with self._lock:
            return self.tracee.modules

    def lookup(self, module: str | None, name: str) -> Symbol | None:
        with self._lock:
            return self.tracee.lookup(module, name)

    def symbolize(self, address: int) -> str:
        with self._lock:
            return self.tracee.symbolize(address)

    @property
    def threads(self) -> tuple[int, ...]:
        with self._lock:
            return self.tracee.threads

    # ------------------------------------------------------------------ control-thread requests
    def call(self, fn: Callable[[Tracee], T], timeout: float | None = None) -> T:
        """Run ``fn(tracee)`` in the control thread (where ptrace is allowed); return its result."""
        if self.readonly:
            with self._lock:
                return fn(self.tracee)
        if self._thread is threading.current_thread():
            return fn(self.tracee)
        if self._lock_owner == threading.get_ident():
            raise StateError(
                f"pid {self.pid}: release the process lock before asking its control thread"
            )
        req = _Request(fn)
        with self._cv:
            if self._done:
                raise NoSuchProcess(self.pid, f"pid {self.pid}: {self._gone_reason()}")
            self._requests.append(req)
            self._cv.notify_all()
        self._wake_until(req, timeout)
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]

    def _wake_until(self, req: _Request, timeout: float | None) -> None:
        """Poke the control thread until it has served *req* (a wake-up can be lost once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _WAKE_RETRY
        while not req.done.is_set():
            t = self._tracee
            if t is not None:
                t.wake()
            if req.done.wait(delay):
                break
            if self._done and not req.done.is_set():
                raise NoSuchProcess(self.pid, f"pid {self.pid}: {self._gone_reason()}")
            if deadline is not None and time.monotonic() > deadline:
                raise DtprocError(f"pid {self.pid}: its control thread did not answer in time")
            delay = min(delay * 2, 0.05)

    def _gone_reason(self) -> str:
        if self._lost is not None:
            return self._lost
        if self._end is not None:
            return describe_end(self.pid, self._end).replace("failed to control ", "")
        return "the handle is closed"

    def registers(self, tid: int | None = None) -> UserRegs:
        return self.call(lambda t: t.registers(tid))

    def ustack(self, tid: int | None = None, max_frames: int = 100) -> UserStack:
        """The user stack of a stopped thread, unwound by the control thread."""
        return self.call(lambda t: t.ustack(tid, max_frames))

    def add_breakpoint(self, address: int, callback: BreakpointCallback | None) -> Breakpoint:
        """A breakpoint whose callback runs in the control thread at each hit."""
        return self.call(lambda t: t.add_breakpoint(address, callback))

    def remove_breakpoint(self, bp: Breakpoint) -> None:
        self.call(lambda t: bp.remove())

    def stop(self) -> None:
        self.call(lambda t: t.stop())

    def subscribe_modules(self, subscriber: Callable[[ModulesChanged], None]) -> None:
        """Be told (in the control thread) of each library load and unload."""
        self._subscribers.append(subscriber)

    def subscribe_exec(self, subscriber: Callable[[Exec], None]) -> None:
        """Be told (in the control thread, the new program not yet running) of each exec."""
        self._exec_subscribers.append(subscriber)

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """Drop one reference; the last one releases the process (see Tracer)."""
        self._tracer._release(self)

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "read-only" if self.readonly else "controlled"
        return f"<Process pid={self.pid} {kind} refs={self.refs} state={self.state.value}>"

    # ------------------------------------------------------------------ the control thread
    def _start(self, start: Callable[[], Tracee], stop_at: StopPoint) -> None:
        name = f"dtproc-control-{self.pid or 'new'}"
        self._thread = threading.Thread(
            target=self._control, args=(start, stop_at), name=name, daemon=True
        )
        self._thread.start()
        with self._cv:
            while not self._ready:
                self._cv.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _control(self, start: Callable[[], Tracee], stop_at: StopPoint) -> None:
        try:
            self._attach(start, stop_at)
        except BaseException as exc:
            with self._cv:
                self._error = exc
                self._ready = True
                self._done = True
                self._cv.notify_all()
            return
        try:
            self._loop()
        except Exception as exc:
            # A bug (ours, or a client callback's) must not leave the process behind
            # nor its clients waiting: let go of it cleanly and say why, as a loss.
            self._lost = f"pid {self.pid}: control lost after an internal error: {exc!r}"
            self._tracer._notify(self, self._notification())
        finally:
            self._finish()

    def _attach(self, start: Callable[[], Tracee], stop_at: StopPoint) -> None:
        tracee = start()
        try:
            self._set_up(tracee, stop_at)
        except BaseException:
            with contextlib.suppress(DtprocError, OSError):
                tracee.release()
            raise

    def _set_up(self, tracee: Tracee, stop_at: StopPoint) -> None:
        self._pid = tracee.pid
        threading.current_thread().name = f"dtproc-control-{tracee.pid}"
        self._tracee = tracee
        self.identity = tracee.identity
        tracee.stop_on_exec = True  # probes and the rtld agent are set up again before it runs
        self._rtld = RtldAgent(tracee)
        with self._lock:
            self._rtld.attach()
            self._rtld.subscribe(self._on_modules)
        if tracee.created:
            self.arrival = self._run_to(stop_at)
        else:
            self.arrival = Arrival(stop_at, stop_at, None)
        with self._cv:
            self._idle = True
            self._ready = True
            self._cv.notify_all()

    def _run_to(self, stop_at: StopPoint) -> Arrival:
        t = self.tracee
        assert self._rtld is not None
        rv = Rendezvous(t, self._rtld)
        arrival = rv.arm(stop_at)
        if arrival is not None:
            return arrival
        t.resume()
        while True:
            event = t.wait()
            if event is None:
                continue
            with self._lock:
                got = rv.arrived(event)
                if got is not None:
                    t.stop()
                    return got
                self._on_event(event)
                if self._end is not None:
                    raise ProcessDied(self.pid, describe_end(self.pid, self._end), None)
                if isinstance(event, Exec):
                    arrival = rv.arm(stop_at)
                    if arrival is not None:
                        return arrival
                    t.resume()

    def _loop(self) -> None:
        t = self.tracee
        t.status_lock = self._lock
        while True:
            self._serve()
            with self._cv:
                if self._quit:
                    return
                idle = self._idle
            if t.state in (ProcessState.UNDEAD, ProcessState.DEAD):
                self._wait_for_quit()
                return
            event = t.wait()
            if event is None:
                continue
            with self._lock:
                self._on_event(event)
                if isinstance(event, Exec) and self._lost is None and not idle:
                    t.resume()
            if self._end is not None or self._lost is not None:
                self._tracer._notify(self, self._notification())
                self._wait_for_quit()
                return

    def _wait_for_quit(self) -> None:
        """The process is gone: keep serving (failing) requests until released."""
        while True:
            with self._cv:
                while not self._requests and not self._quit:
                    self._cv.wait()
                if self._quit:
                    return
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._cv:
                if not self._requests:
                    return
                req = self._requests.popleft()
            with self._lock:
                try:
                    req.result = req.fn(self.tracee)
                except BaseException as exc:
                    req.error = exc
            req.done.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (Exited, Killed)):
            self._end = event
        elif isinstance(event, Exec):
            if _unobservable(event.path):
                self._lose("process exec'd set-id or unobservable program")
                return
            assert self._rtld is not None
            self._rtld.reset()
            self._rtld.attach()
            for sub in list(self._exec_subscribers):
                sub(event)

    def _lose(self, reason: str) -> None:
        """Let go of a process we can no longer observe faithfully, and say why."""
        self._lost = f"pid {self.pid}: {reason}"
        t = self.tracee
        if t.state in (ProcessState.RUNNING, ProcessState.STOPPED):
            t.release(ReleaseMode.DETACH)

    def _on_modules(self, change: ModulesChanged) -> None:
        for sub in list(self._subscribers):
            sub(change)

    def _notification(self) -> Notification:
        if self._lost is not None:
            return Notification(self.pid, NotificationKind.LOST, 0, self._lost)
        end = self._end
        if isinstance(end, Killed):
            message = f"pid {self.pid} was killed by signal {end.signal}"
            return Notification(self.pid, NotificationKind.KILLED, end.signal, message)
        status = end.status if isinstance(end, Exited) else 0
        return Notification(self.pid, NotificationKind.EXITED, status, f"pid {self.pid} has exited")

    def _finish(self) -> None:
        t = self._tracee
        try:
            if t is not None:
                with self._lock:
                    mode = self._release_mode
                    t.release(mode)
        finally:
            with self._cv:
                self._done = True
                self._cv.notify_all()
            for req in self._drain_requests():
                req.error = NoSuchProcess(self.pid, f"pid {self.pid}: {self._gone_reason()}")
                req.done.set()

    def _drain_requests(self) -> list[_Request]:
        with self._cv:
            reqs = list(self._requests)
            self._requests.clear()
        return reqs

    # ------------------------------------------------------------------ used by the Tracer
    def _resume(self) -> None:
        def go(t: Tracee) -> None:
            if self._idle:
                self._idle = False
                if t.state is ProcessState.STOPPED:
                    t.resume()

        self.call(go)

    def _shutdown(self, mode: ReleaseMode | None) -> None:
        """Release the process and end the control thread (or close a read-only handle)."""
        if self._thread is None:
            if self._tracee is not None:
                self._tracee.release()
            return
        with self._cv:
            self._release_mode = mode
            self._quit = True
            self._cv.notify_all()
        while self._thread.is_alive():
            t = self._tracee
            if t is not None:
                t.wake()
            self._thread.join(_WAKE_RETRY * 5)


_TOKEN: Final = object()
_live_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()


@final
class Tracer:
    """The library handle: the table of shared process handles and their notifications."""

    def __init__(self, *, lru_limit: int = DEFAULT_LRU_LIMIT) -> None:
        self._lock = threading.RLock()
        self._pending: set[int] = set()  # pids being grabbed for control by some thread
        self._pending_cv = threading.Condition(self._lock)
        self._table: dict[int, Process] = {}
        self._lru: OrderedDict[int, Process] = OrderedDict()  # every handle, most recent first
        self._cached = 0  # idle read-only handles kept
        self.lru_limit = lru_limit
        self.target: int | None = None
        self._notes: deque[Notification] = deque()
        self._notes_cv = threading.Condition()
        self._woken = False
        self._handlers: list[NotificationHandler] = []
        self._closed = False
        _live_tracers.add(self)

    # ------------------------------------------------------------------ create and grab
    def create(
        self,
        argv: Sequence[str],
        *,
        stop_at: StopPoint | str = StopPoint.POSTINIT,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Process:
        """Start *argv* under control; return once it is stopped at *stop_at*."""
        self._check_open()
        point = StopPoint.parse(stop_at) if isinstance(stop_at, str) else stop_at

        def start() -> Tracee:
            return Tracee.create(argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr)

        proc = Process(_TOKEN, self, 0, readonly=False, created=True)
        proc._start(start, point)
        with self._lock:
            self._insert(proc)
            if self.target is None:
                self.target = proc.pid
        return proc

    def grab(self, pid: int, *, readonly: bool = False) -> Process:
        """A handle on a running process: controlled (stopped until resumed) or read-only."""
        self._check_open()
        with self._lock:
            while pid in self._pending:  # another thread is grabbing it right now
                self._pending_cv.wait()
            cached = self._find(pid)
            if cached is not None:
                if cached.readonly and not readonly:
                    self._mark_stale(cached)
                else:
                    self._touch(cached)
                    cached.refs += 1
                    return cached
            if readonly:
                proc = Process(_TOKEN, self, pid, readonly=True, created=False)
                proc._tracee = Tracee.grab(pid, readonly=True)
                proc.identity = proc._tracee.identity
                self._make_room()
                self._cached += 1
                self._insert(proc)
                if self.target is None:
                    self.target = pid
                return proc
            self._pending.add(pid)
        try:
            proc = Process(_TOKEN, self, pid, readonly=False, created=False)
            proc._start(lambda: Tracee.grab(pid), StopPoint.EXEC)
        finally:
            with self._lock:
                self._pending.discard(pid)
                self._pending_cv.notify_all()
        with self._lock:
            self._insert(proc)
            if self.target is None:
                self.target = pid
        return proc

    def _find(self, pid: int) -> Process | None:
        proc = self._table.get(pid)
        if proc is None or proc.stale:
            return None
        try:
            start = procfs.read_stat(pid).start_time
        except OSError:
            start = -1
        if proc.identity.start_time and start != proc.identity.start_time and proc.readonly:
            # The pid now names another process: the cached handle is of a dead one.
            self._mark_stale(proc)
            return None
        return proc

    def _insert(self, proc: Process) -> None:
        proc.refs += 1
        self._table[proc.pid] = proc
        self._lru[proc.pid] = proc
        self._lru.move_to_end(proc.pid, last=False)

    def _touch(self, proc: Process) -> None:
        if proc.pid in self._lru and self._lru[proc.pid] is proc:
            self._lru.move_to_end(proc.pid, last=False)

    def _mark_stale(self, proc: Process) -> None:
        proc.stale = True
        if proc.cacheable:
            proc.cacheable = False
            self._cached -= 1
        if self._table.get(proc.pid) is proc:
            del self._table[proc.pid]
        if self._lru.get(proc.pid) is proc:
            del self._lru[proc.pid]
        if proc.refs == 0:
            proc._shutdown(None)

    def _make_room(self) -> None:
        """Past the LRU limit, close the least recently used idle read-only handle."""
        if self._cached < self.lru_limit:
            return
        for proc in reversed(list(self._lru.values())):
            if proc.cacheable and proc.refs == 0:
                self._destroy(proc)
                return

    # ------------------------------------------------------------------ release
    def _release(self, proc: Process) -> None:
        with self._lock:
            if proc.refs <= 0:
                raise StateError(f"pid {proc.pid}: released more often than grabbed")
            proc.refs -= 1
            if proc.refs > 0:
                return
            if proc.cacheable and not proc.stale and self._cached <= self.lru_limit:
                return  # kept in the cache, idle
            self._destroy(proc)

    def _destroy(self, proc: Process, mode: ReleaseMode | None = None) -> None:
        if self._table.get(proc.pid) is proc:
            del self._table[proc.pid]
        if self._lru.get(proc.pid) is proc:
            del self._lru[proc.pid]
        if proc.cacheable:
            proc.cacheable = False
            self._cached -= 1
        with self._notes_cv:
            self._notes = deque(n for n in self._notes if n.pid != proc.pid)
        proc._shutdown(mode)

    def resume(self, proc: Process) -> None:
        """Let a process go on from its rendezvous (create/grab left it stopped)."""
        if proc.readonly:
            return
        proc._resume()

    # ------------------------------------------------------------------ notifications
    def on_process_event(self, handler: NotificationHandler) -> None:
        """Call *handler(notification)* from :meth:`sleep` when a process exits, dies or is lost."""
        self._handlers.append(handler)

    def _notify(self, proc: Process, note: Notification) -> None:
        with self._notes_cv:
            self._notes.append(note)
            self._notes_cv.notify_all()

    def sleep(self, timeout: float | None = None) -> list[Notification]:
        """Wait up to *timeout* for notifications; run the handlers on each; return them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._notes_cv:
            while not self._notes and not self._woken:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._notes_cv.wait(remaining)
            self._woken = False
            notes = list(self._notes)
            self._notes.clear()
        for note in notes:
            for handler in list(self._handlers):
                handler(note)
        return notes

    def interrupt_sleep(self) -> None:
        """Make a :meth:`sleep` in progress return now (any thread; signal handlers too)."""
        with self._notes_cv:
            self._woken = True
            self._notes_cv.notify_all()

    def notifications(self, timeout: float | None = None) -> Iterator[Notification]:
        """Notifications as they come, until a *timeout* passes with none."""
        while notes := self.sleep(timeout):
            yield from notes

    # ------------------------------------------------------------------ close
    @property
    def processes(self) -> list[Process]:
        with self._lock:
            return list(self._lru.values())

    def close(self) -> None:
        """Release every handle: created processes die, grabbed ones run on (or stay stopped)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._lru.values())
            procs += [p for p in self._table.values() if p not in procs]
        for proc in procs:
            with self._lock:
                proc.refs = 0
                self._destroy(proc)
        _live_tracers.discard(self)

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("this Tracer is closed")

    def __enter__(self) -> Tracer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _unobservable(path: str) -> bool:
    """A set-id program exec'd without CAP_SYS_PTRACE runs unprivileged under ptrace: lost."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not mode & (stat.S_ISUID | stat.S_ISGID):
        return False
    return not _have_cap_sys_ptrace()


def _have_cap_sys_ptrace() -> bool:
    try:
        status = procfs.read_status(os.getpid())
        return bool(int(status.get("CapEff", "0"), 16) & (1 << 19))
    except (OSError, ValueError):
        return False


@atexit.register
def _close_all() -> None:
    """At interpreter exit, let go of everything: no grabbed process keeps our int3s."""
    for tracer in list(_live_tracers):
        with contextlib.suppress(Exception):
            tracer.close()


__all__ = [
    "Notification",
    "NotificationHandler",
    "NotificationKind",
    "Process",
    "ProcessLostError",
    "Tracer",
]
