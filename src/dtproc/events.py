"""What a traced process does, as immutable values that :meth:`Tracee.wait` returns.

Events are data, never exceptions: a process that exits is news, not an error.
Each says which process (``pid``) and, where it matters, which thread (``tid``).
Events marked *stopping* leave the thread (or process) stopped until
:meth:`Tracee.resume`; all others are reported while the process runs on.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass


def signal_name(sig: int) -> str:
    """``SIGSEGV`` for 11, ``SIGRTMIN+3`` for real-time signals."""
    try:
        return _signal.Signals(sig).name
    except ValueError:
        if _signal.SIGRTMIN < sig < _signal.SIGRTMAX:
            return f"SIGRTMIN+{sig - _signal.SIGRTMIN}"
        return f"signal {sig}"


@dataclass(frozen=True, slots=True)
class Event:
    pid: int


@dataclass(frozen=True, slots=True)
class Exited(Event):
    """The process ended by exit(); ``status`` is its exit code."""

    status: int


@dataclass(frozen=True, slots=True)
class Killed(Event):
    """The process was terminated by a signal."""

    signal: int
    core: bool


@dataclass(frozen=True, slots=True)
class SignalReceived(Event):
    """A signal is being delivered to thread ``tid``.

    Stopping only when ``intercepted`` (the signal is in ``Tracee.intercept_signals``):
    then the thread waits with the signal pending, which ``Tracee.set_signal`` may
    change or cancel. Otherwise it has already been passed on unchanged.
    """

    tid: int
    signal: int
    intercepted: bool


@dataclass(frozen=True, slots=True)
class Forked(Event):
    """Thread ``tid`` forked ``child``; ``followed`` says whether it stays traced."""

    tid: int
    child: int
    followed: bool


@dataclass(frozen=True, slots=True)
class VForked(Event):
    """Thread ``tid`` vforked ``child`` (which shares its memory until it execs or exits)."""

    tid: int
    child: int
    followed: bool


@dataclass(frozen=True, slots=True)
class VForkDone(Event):
    """The vfork child of ``tid`` has exec'd or exited; the parent runs again."""

    tid: int


@dataclass(frozen=True, slots=True)
class Exec(Event):
    """The process exec'd ``path`` (stopping when ``Tracee.stop_on_exec``).

    ``former_tid`` is the thread that called execve; after exec it is ``pid``.
    """

    former_tid: int
    path: str


@dataclass(frozen=True, slots=True)
class ThreadCreated(Event):
    tid: int
    parent_tid: int


@dataclass(frozen=True, slots=True)
class ThreadExited(Event):
    tid: int
    status: int


@dataclass(frozen=True, slots=True)
class GroupStop(Event):
    """The process was stopped by ``signal`` (SIGSTOP, SIGTSTP, ...) from outside.

    It stays stopped, as it would untraced, until something sends SIGCONT.
    """

    signal: int


@dataclass(frozen=True, slots=True)
class Continued(Event):
    """SIGCONT ended a group-stop."""


@dataclass(frozen=True, slots=True)
class BreakpointHit(Event):
    """Thread ``tid`` hit a breakpoint that has no callback (stopping: that thread)."""

    tid: int
    address: int


ProcessEnd = Exited | Killed
