"""waitid/waitpid for tracees: a blocking peek that releases the GIL, and a consume.

``peek`` waits (without reaping) for any child *of the calling thread*: with
``__WNOTHREAD`` the kernel considers only that thread's own children and
tracees, so children that other threads of the tracer started are never seen.
The caller decides whether the pid is one of its tracees before consuming it
with ``consume``; a foreign child's status is left for its owner.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from dtproc._sys.ptrace import SigInfo

_libc = ctypes.CDLL(None, use_errno=True)
_waitid = _libc.waitid
_waitid.restype = ctypes.c_int
_waitid.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]

P_ALL = 0
P_PID = 1
WNOHANG = 0x00000001
WEXITED = 0x00000004
WNOWAIT = 0x01000000
WNOTHREAD = 0x20000000
WALL = 0x40000000

# waitid's si_code for a child's state change.
CLD_EXITED = 1
CLD_KILLED = 2
CLD_DUMPED = 3
CLD_TRAPPED = 4
CLD_STOPPED = 5
CLD_CONTINUED = 6


@dataclass(frozen=True, slots=True)
class Peeked:
    pid: int
    code: int


class Interrupted(Exception):
    """The blocking wait was interrupted by a signal (a wake-up or a timer)."""


def peek(block: bool) -> Peeked | None:
    """Return which child of this thread has a state change, without reaping it.

    Returns None when *block* is false and nothing is pending; raises
    ``ChildProcessError`` when the thread has no children or tracees at all,
    and :class:`Interrupted` on EINTR.
    """
    info = SigInfo()
    flags = WEXITED | WNOWAIT | WALL | WNOTHREAD | (0 if block else WNOHANG)
    if _waitid(P_ALL, 0, ctypes.addressof(info), flags) == -1:
        err = ctypes.get_errno()
        if err == errno.EINTR:
            raise Interrupted
        raise OSError(err, os.strerror(err))
    pid = info.si_pid
    if pid == 0:
        return None
    return Peeked(pid, info.si_code)


def consume(tid: int, block: bool = True) -> int | None:
    """Reap one status change of *tid*; None if nothing is pending and not *block*."""
    pid, status = os.waitpid(tid, WALL | (0 if block else WNOHANG))
    if pid == 0:
        return None
    return status
