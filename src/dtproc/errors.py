"""The exceptions dtproc raises, and the one seam where kernel errors become them.

Every error a user can cause (a bad pid, a file that cannot run, a probe that
matches nothing, a D syntax error) is a :class:`DtprocError` whose ``str()`` is
a complete sentence: what was asked, what went wrong and, where there is one,
what to do about it. The CLI prints that sentence and exits non-zero without a
traceback, so the wording here is user interface.

Process errors follow psutil: :class:`NoSuchProcess` is a
:class:`ProcessLookupError` and :class:`AccessDenied` a :class:`PermissionError`,
so code that already handles the builtin ``OSError`` family keeps working.
"""

from __future__ import annotations

import errno as _errno
import os


class DtprocError(Exception):
    """Base class of every error dtproc raises on purpose."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class NoSuchProcess(DtprocError, ProcessLookupError):
    """The process (or thread) does not exist, or no longer does."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        self.pid = pid
        super().__init__(msg or f"pid {pid}: no such process")


class ZombieProcess(NoSuchProcess):
    """The process has exited but has not been reaped by its parent yet."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        super().__init__(pid, msg or f"pid {pid} is a zombie: it has exited and cannot be traced")


class AccessDenied(DtprocError, PermissionError):
    """The kernel refused: permissions, Yama's ptrace_scope, another tracer."""

    def __init__(self, pid: int, msg: str) -> None:
        self.pid = pid
        super().__init__(msg)


class ExecFailed(DtprocError, OSError):
    """A program given to :meth:`Tracee.create` could not be executed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"failed to execute {path}: {reason}")


class ProcessDied(DtprocError, ProcessLookupError):
    """The process ended before it reached the point where we wanted control.

    ``status`` is the wait status (``os.waitstatus_to_exitcode`` reads it).
    """

    def __init__(self, pid: int, msg: str, status: int | None = None) -> None:
        self.pid = pid
        self.status = status
        super().__init__(msg)


class ProcessLostError(DtprocError):
    """Control of a process was lost: it exec'd a set-id program, or was detached."""

    def __init__(self, pid: int, msg: str) -> None:
        self.pid = pid
        super().__init__(msg)


class BadAddress(DtprocError, OSError):
    """A memory read or write at an address that is not mapped (or not accessible)."""

    def __init__(
        self, pid: int, address: int, size: int, reason: str = "address not mapped"
    ) -> None:
        self.pid = pid
        self.address = address
        self.size = size
        super().__init__(f"pid {pid}: cannot access {size} bytes at 0x{address:x}: {reason}")


class StateError(DtprocError):
    """The operation does not fit the process's state (e.g. registers of a running thread)."""


class ElfError(DtprocError, ValueError):
    """A file is not ELF, or its structure is truncated or corrupt."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ProbeError(DtprocError):
    """A probe description is malformed, matches nothing, or cannot be placed."""


class DisplaceError(ProbeError):
    """The instruction under a breakpoint can be neither emulated nor run out of line.

    Also raised when an out-of-line slot is too far from what a rip-relative operand
    refers to; :meth:`dtproc.insn.OutOfLine.fits` says beforehand which slots work.
    """

    def __init__(self, address: int, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot displace the instruction at 0x{address:x}: {reason}")


class UnwindError(DtprocError):
    """A stack could not be unwound (used internally; ustack returns partial stacks)."""


def ptrace_hint() -> str:
    """Say why ptrace may be refused on this machine, for error messages."""
    hints: list[str] = []
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        scope = -1
    if scope == 1:
        hints.append(
            "kernel.yama.ptrace_scope is 1: only a parent may trace its children; "
            "run as root or with CAP_SYS_PTRACE, or set it to 0 "
            "(sysctl kernel.yama.ptrace_scope=0)"
        )
    elif scope == 2:
        hints.append("kernel.yama.ptrace_scope is 2: only processes with CAP_SYS_PTRACE may trace")
    elif scope == 3:
        hints.append("kernel.yama.ptrace_scope is 3: ptrace is disabled on this machine")
    if os.geteuid() != 0 and not hints:
        hints.append("run as the process's owner, as root, or with CAP_SYS_PTRACE")
    return "; ".join(hints)


def from_oserror(exc: OSError, pid: int, what: str) -> DtprocError:
    """Translate a kernel error about *pid* into the project's exception.

    *what* says what was being done, e.g. ``"failed to grab pid 42"``.
    """
    code = exc.errno
    reason = os.strerror(code) if code else str(exc)
    if code in (_errno.ESRCH, _errno.ENOENT):
        return NoSuchProcess(pid, f"{what}: no such process")
    if code in (_errno.EPERM, _errno.EACCES):
        hint = ptrace_hint()
        return AccessDenied(pid, f"{what}: permission denied" + (f" ({hint})" if hint else ""))
    return DtprocError(f"{what}: {reason}")
