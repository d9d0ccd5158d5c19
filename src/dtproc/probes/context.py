"""What a D clause may ask about one probe hit caught by a ptrace breakpoint.

Everything is read lazily: the runtime asks only for what the clause uses
(``ClauseNeeds``), and most clauses want an argument or two and a timestamp.
Arguments follow the x86-64 System V ABI at a function's entry (rdi, rsi,
rdx, rcx, r8, r9, then the stack); at a return probe ``arg0`` is the offset of
the returning instruction and ``arg1`` the return value, as in dtrace. USDT
arguments are computed from their ``sys/sdt.h`` operand specs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from dtproc._sys import procfs
from dtproc._sys.regs import UserRegs
from dtproc.d import MemoryFault, ProbeInfo, StackValue
from dtproc.errors import DtprocError
from dtproc.probes.sites import ProbeKind, ProbeSite
from dtproc.sdt import SdtArg, SdtArgKind

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

_ARG_REGS: Final = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
ReadU64 = Callable[[int], int]
_U64: Final = (1 << 64) - 1


@dataclass(slots=True)
class ProcessFacts:
    """Per-process values that change only at exec: cached across hits."""

    pid: int
    execname: str = ""
    ppid: int = 0
    uid: int = 0
    gid: int = 0
    _loaded: bool = field(default=False, repr=False)

    def load(self) -> ProcessFacts:
        if not self._loaded:
            self.refresh()
        return self

    def refresh(self) -> None:
        try:
            status = procfs.read_status(self.pid)
            self.execname = status.get("Name", "")
            self.ppid = int(status.get("PPid", "0"))
            self.uid = int(status.get("Uid", "0").split()[0])
            self.gid = int(status.get("Gid", "0").split()[0])
        except (OSError, ValueError):
            pass
        self._loaded = True


class PtraceHit:
    """The ProbeContext of one breakpoint hit; valid while the thread is stopped."""

    __slots__ = ("_facts", "_regs", "_site", "_tracee", "_wall", "tid", "timestamp")

    def __init__(
        self, tracee: Tracee, tid: int, regs: UserRegs, site: ProbeSite, facts: ProcessFacts
    ) -> None:
        self._tracee = tracee
        self.tid = tid
        self._regs = regs
        self._site = site
        self._facts = facts
        self.timestamp = time.monotonic_ns()
        self._wall = 0

    @property
    def pid(self) -> int:
        return self._site.pid

    @property
    def ppid(self) -> int:
        return self._facts.load().ppid

    @property
    def uid(self) -> int:
        return self._facts.load().uid

    @property
    def gid(self) -> int:
        return self._facts.load().gid

    @property
    def cpu(self) -> int:
        try:
            return procfs.read_stat(self.pid, self.tid).processor
        except OSError:
            return 0

    @property
    def execname(self) -> str:
        return self._facts.load().execname

    @property
    def probe(self) -> ProbeInfo:
        return self._site.info

    @property
    def walltimestamp(self) -> int:
        if not self._wall:
            self._wall = time.time_ns()
        return self._wall

    def arg(self, i: int) -> int:
        site = self._site
        if site.kind is ProbeKind.RETURN:
            if i == 0:
                return site.offset
            if i == 1:
                return self._regs.rax
            return 0
        if site.kind is ProbeKind.USDT:
            return usdt_arg(site.usdt_args, i, self._regs, self._read_u64)
        return function_arg(i, self._regs, self._read_u64)

    def _read_u64(self, address: int) -> int:
        try:
            return int.from_bytes(self._tracee.read(address, 8), "little")
        except DtprocError:
            return 0

    def read_memory(self, addr: int, n: int) -> bytes:
        data = self._tracee.read_partial(addr, n)
        if not data:
            raise MemoryFault(addr)
        return data

    def ustack(self, nframes: int) -> StackValue:
        stack = self._tracee.ustack(self.tid, nframes)
        return StackValue(self.pid, stack.pcs)


def function_arg(i: int, regs: UserRegs, read_u64: ReadU64) -> int:
    """argN at a function's first instruction: six registers, then the caller's stack."""
    if i < len(_ARG_REGS):
        value: int = getattr(regs, _ARG_REGS[i])
        return value
    # At entry rsp points at the return address; stack arguments follow it.
    return read_u64(regs.rsp + 8 * (i - len(_ARG_REGS) + 1))


def usdt_arg(args: tuple[SdtArg, ...], i: int, regs: UserRegs, read_u64: ReadU64) -> int:
    """A USDT argument from its operand spec (register, memory or constant)."""
    if i >= len(args):
        return 0
    spec = args[i]
    if spec.kind is SdtArgKind.CONSTANT:
        raw = spec.constant
    elif spec.kind is SdtArgKind.REGISTER:
        raw = getattr(regs, spec.register or "rax") >> spec.register_shift
    else:
        raw = read_u64(sdt_address(spec, regs))
    return spec.convert(raw) & _U64


def sdt_address(spec: SdtArg, regs: UserRegs) -> int:
    """The address a memory operand ``disp(%base,%index,scale)`` or ``sym(%rip)`` names."""
    base = getattr(regs, spec.register) if spec.register else 0
    if spec.register == "rip":
        base = regs.rip
    index = getattr(regs, spec.index) * spec.scale if spec.index else 0
    return (base + index + spec.displacement) & _U64
