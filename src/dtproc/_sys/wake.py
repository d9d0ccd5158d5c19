"""Waking a thread that blocks in waitid: a thread-directed signal and a per-thread timer.

Python cannot interrupt a blocking ``waitid`` in another thread, and its own
signal handlers run only in the main thread. So dtproc installs, once per
process, a C-level no-op handler (libc's ``getpid``: async-signal-safe, ignores
its arguments) for one otherwise unused real-time signal, *without*
``SA_RESTART``: delivering that signal to a thread makes its blocking ``waitid``
return EINTR and has no other effect. A POSIX timer aimed at the thread
(``SIGEV_THREAD_ID``) gives ``wait(timeout)`` its deadline; it keeps firing at a
short interval after the deadline, which closes the window where the first
expiry lands just before the thread enters ``waitid``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

_libc = ctypes.CDLL(None, use_errno=True)

SA_SIGINFO = 4
SIGEV_THREAD_ID = 4
CLOCK_MONOTONIC = 1
_RETRY_INTERVAL_NS = 5_000_000


class _SigAction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_uint64 * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


class _SigEvent(ctypes.Structure):
    _fields_ = [
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("tid", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


_sigaction = _libc.sigaction
_sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_timer_create = _libc.timer_create
_timer_create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_timer_settime = _libc.timer_settime
_timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_timer_delete = _libc.timer_delete
_timer_delete.argtypes = [ctypes.c_void_p]

_lock = threading.Lock()
_wake_signal: int | None = None


def _check(res: int) -> None:
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def wake_signal() -> int:
    """The real-time signal used to wake tracer threads (installed on first use)."""
    global _wake_signal
    with _lock:
        if _wake_signal is None:
            _wake_signal = _install()
        return _wake_signal


def _install() -> int:
    noop = ctypes.cast(_libc.getpid, ctypes.c_void_p).value
    for sig in range(signal.SIGRTMAX - 1, signal.SIGRTMIN + 1, -1):
        old = _SigAction()
        _check(_sigaction(sig, None, ctypes.byref(old)))
        if old.handler:  # someone else's handler (or SIG_IGN == 1): not ours to take
            continue
        new = _SigAction(handler=noop, flags=0)
        _check(_sigaction(sig, ctypes.byref(new), None))
        return sig
    raise OSError("no free real-time signal to wake tracer threads")


def prepare_current_thread() -> int:
    """Make sure the wake signal reaches this thread (it may inherit a blocked mask)."""
    sig = wake_signal()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    return sig


def wake(thread_ident: int) -> None:
    """Interrupt the blocking wait of the Python thread *thread_ident* (``threading.get_ident``)."""
    signal.pthread_kill(thread_ident, wake_signal())


class ThreadTimer:
    """A one-shot deadline for the thread that creates it, re-firing until disarmed."""

    def __init__(self) -> None:
        ev = _SigEvent(signo=prepare_current_thread(), notify=SIGEV_THREAD_ID)
        ev.tid = threading.get_native_id()
        self._id = ctypes.c_void_p(0)
        _check(_timer_create(CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(self._id)))
        self._armed = False

    def arm(self, seconds: float) -> None:
        ns = max(int(seconds * 1e9), 1)
        spec = _ITimerSpec(
            interval=_TimeSpec(0, _RETRY_INTERVAL_NS),
            value=_TimeSpec(ns // 1_000_000_000, ns % 1_000_000_000),
        )
        _check(_timer_settime(self._id, 0, ctypes.byref(spec), None))
        self._armed = True

    def disarm(self) -> None:
        if self._armed:
            _check(_timer_settime(self._id, 0, ctypes.byref(_ITimerSpec()), None))
            self._armed = False

    def close(self) -> None:
        if self._id.value is not None:
            _timer_delete(self._id)
            self._id = ctypes.c_void_p(0)
