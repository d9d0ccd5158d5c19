"""dtproc: DTrace-style process control and user-space tracing for Linux.

Layers, lowest first; a module never imports from a layer above it:

1. ``dtproc._sys``     kernel interfaces: ptrace, wait, signals, /proc, perf_event (no policy)
2. ``dtproc.elf``, ``dtproc.cfi``, ``dtproc.insn``, ``dtproc.sdt``
                       pure readers: ELF files, unwind tables, x86-64 instructions, USDT notes
3. ``dtproc.tracee``   the libproc: one traced process driven by one thread
                       (threads, memory, registers, signals, breakpoints, modules, rtld events)
4. ``dtproc.control``  the dt_proc: shared, reference-counted process handles, one control
                       thread per controlled process, rendezvous and notifications
5. consumers           ``ustack``, probes (pid provider, USDT; ptrace and uprobe backends),
                       the D subset, output formats, and the ``dtproc`` command
"""

from __future__ import annotations

from dtproc.control import Notification, NotificationKind, Process, Tracer
from dtproc.errors import (
    AccessDenied,
    BadAddress,
    DtprocError,
    ExecFailed,
    NoSuchProcess,
    ProcessDied,
    StateError,
    ZombieProcess,
)
from dtproc.tracee import Tracee
from dtproc.types import ProcessIdentity, ProcessState, ReleaseMode
from dtproc.ustack import Frame, UserStack

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BadAddress",
    "DtprocError",
    "ExecFailed",
    "Frame",
    "NoSuchProcess",
    "Notification",
    "NotificationKind",
    "Process",
    "ProcessDied",
    "ProcessIdentity",
    "ProcessState",
    "ReleaseMode",
    "StateError",
    "Tracee",
    "Tracer",
    "UserStack",
    "ZombieProcess",
    "__version__",
]
