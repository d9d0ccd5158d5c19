"""ptrace(2) through ctypes: requests, options, events, and the calls dtproc uses.

Each function is one request; failures raise ``OSError`` with the kernel's errno.
The kernel accepts requests for a tracee only from the thread that attached it,
so callers above this layer decide *which* thread calls; nothing here checks.
"""

from __future__ import annotations

import ctypes
import enum
import os

from dtproc._sys.regs import UserRegs

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


class Request(enum.IntEnum):
    CONT = 7
    KILL = 8
    SINGLESTEP = 9
    GETREGS = 12
    SETREGS = 13
    DETACH = 17
    SYSCALL = 24
    SETOPTIONS = 0x4200
    GETEVENTMSG = 0x4201
    GETSIGINFO = 0x4202
    SETSIGINFO = 0x4203
    SEIZE = 0x4206
    INTERRUPT = 0x4207
    LISTEN = 0x4208


class Options(enum.IntFlag):
    TRACESYSGOOD = 0x01
    TRACEFORK = 0x02
    TRACEVFORK = 0x04
    TRACECLONE = 0x08
    TRACEEXEC = 0x10
    TRACEVFORKDONE = 0x20
    TRACEEXIT = 0x40
    TRACESECCOMP = 0x80
    EXITKILL = 0x100000


class Event(enum.IntEnum):
    """The ``status >> 16`` of a ptrace event stop (0 when it is not one)."""

    NONE = 0
    FORK = 1
    VFORK = 2
    CLONE = 3
    EXEC = 4
    VFORK_DONE = 5
    EXIT = 6
    SECCOMP = 7
    STOP = 128


class SigInfo(ctypes.Structure):
    """The leading fields of ``siginfo_t`` common to all signals, plus the raw union."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad0", ctypes.c_int),
        ("si_addr_or_pid", ctypes.c_uint64),  # si_addr for faults; si_pid/si_uid for kill()
        ("si_status_or_uid", ctypes.c_int64),  # waitid: si_status in low 32 bits
        ("_rest", ctypes.c_byte * (128 - 32)),
    ]

    si_signo: int
    si_errno: int
    si_code: int
    si_addr_or_pid: int
    si_status_or_uid: int

    @property
    def si_pid(self) -> int:
        return ctypes.c_int32(self.si_addr_or_pid & 0xFFFFFFFF).value

    @property
    def si_status(self) -> int:
        return ctypes.c_int32(self.si_status_or_uid & 0xFFFFFFFF).value


# si_code values we read.
SI_KERNEL = 0x80
SI_USER = 0
SI_TKILL = -6
TRAP_BRKPT = 1
TRAP_TRACE = 2


def _call(req: int, tid: int, addr: int | None = 0, data: object = 0) -> int:
    ctypes.set_errno(0)
    res = _ptrace(req, tid, addr, data)
    if res == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return int(res)


def seize(tid: int, options: Options) -> None:
    _call(Request.SEIZE, tid, 0, int(options))


def set_options(tid: int, options: Options) -> None:
    _call(Request.SETOPTIONS, tid, 0, int(options))


def interrupt(tid: int) -> None:
    _call(Request.INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    _call(Request.CONT, tid, 0, sig)


def listen(tid: int) -> None:
    _call(Request.LISTEN, tid)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(Request.SINGLESTEP, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    _call(Request.DETACH, tid, 0, sig)


def getregs(tid: int, into: UserRegs | None = None) -> UserRegs:
    regs = into if into is not None else UserRegs()
    _call(Request.GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def setregs(tid: int, regs: UserRegs) -> None:
    _call(Request.SETREGS, tid, 0, ctypes.addressof(regs))


def geteventmsg(tid: int) -> int:
    msg = ctypes.c_ulong(0)
    _call(Request.GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return msg.value


def setsiginfo(tid: int, info: SigInfo) -> None:
    _call(Request.SETSIGINFO, tid, 0, ctypes.addressof(info))


def getsiginfo(tid: int) -> SigInfo:
    info = SigInfo()
    _call(Request.GETSIGINFO, tid, 0, ctypes.addressof(info))
    return info
