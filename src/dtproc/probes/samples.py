"""Turning uprobe samples into D probe contexts, after the fact.

A uprobe sample is what the kernel saw at the hit -- the registers and a copy of
the top of the user stack -- read by the tracer milliseconds later, possibly
after the thread or the whole process is gone. So nothing here may look at the
live process for anything that can change: arguments come from the sampled
registers (stack arguments from the stack copy), ``ustack()`` is unwound offline
from the copy with the same CFI walker that live ``ustack`` uses, and code bytes
the walker wants (prologues, sigreturn trampolines) come from the mapped files,
which also keeps our own int3 bytes out of its sight. Memory that is in neither
place is unreadable, never read late: a clause that needs the target's memory at
the hit cannot run from a sample at all (see
:func:`dtproc.probes.uprobe_backend.uprobe_eligible`).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import Final

from dtproc._sys.regs import DWARF_REGS, UserRegs
from dtproc.d import MemoryFault, ProbeInfo, StackValue
from dtproc.elf import ElfFile, SectionFlags, SectionType
from dtproc.modules import VDSO, Module, ModuleMap
from dtproc.probes.context import ProcessFacts, function_arg, usdt_arg
from dtproc.probes.sites import ProbeKind, ProbeSite
from dtproc.sdt import SdtArgKind
from dtproc.unwind import unwind
from dtproc.uprobes import UprobeSample

__all__ = [
    "ProcessImage",
    "SampleData",
    "SampleHit",
    "SampleSpace",
    "sample_stack_bytes",
    "ustack_bytes",
    "wall_offset",
]

#: Stack copied per hit for ``ustack(n)``: this much per frame, within the bounds below.
#: Ordinary C frames are far smaller; the slack is for frames holding buffers.
STACK_BYTES_PER_FRAME: Final = 192
MIN_USTACK_BYTES: Final = 8192
MAX_USTACK_BYTES: Final = 32768
#: Stack copied for a USDT argument addressed from ``%rbp`` (``-20(%rbp)``): the distance
#: from ``%rsp`` up to the frame pointer is not known before the hit; frames are smaller.
USDT_FRAME_BYTES: Final = 1024
_ARG_REGISTERS: Final = 6
_U64: Final = struct.Struct("<Q")


def ustack_bytes(depth: int) -> int:
    """How much user stack to copy per hit so that ``ustack(depth)`` can be walked."""
    wanted = depth * STACK_BYTES_PER_FRAME
    return min(MAX_USTACK_BYTES, max(MIN_USTACK_BYTES, (wanted + 7) & ~7))


def sample_stack_bytes(site: ProbeSite, args: frozenset[int], ustack_depth: int) -> int:
    """The stack copy one placement needs: for ustack, stack arguments, or USDT operands.

    Function arguments past the sixth sit just above the return address at an
    entry (``arg6`` at ``8(%rsp)``); USDT operands may live in the probing
    function's frame, addressed from ``%rsp`` or ``%rbp``.
    """
    need = ustack_bytes(ustack_depth) if ustack_depth > 0 else 0
    if site.kind is ProbeKind.USDT:
        need = max([need, *(_operand_bytes(site, i) for i in args)])
    elif site.kind is not ProbeKind.RETURN and args:
        top = max(args)
        if top >= _ARG_REGISTERS:
            need = max(need, 8 * (top - _ARG_REGISTERS + 2))
    return need


def _operand_bytes(site: ProbeSite, i: int) -> int:
    """The stack copy that holds USDT argument *i*: 0 unless it is a memory operand.

    Only operands in the probing frame are eligible at all (see ``uprobe_eligible``);
    one at ``disp(%rsp)`` needs exactly that much, others somewhere in the frame.
    """
    if i >= len(site.usdt_args) or site.usdt_args[i].kind is not SdtArgKind.MEMORY:
        return 0
    spec = site.usdt_args[i]
    if spec.register == "rsp" and spec.index is None:
        return max(8, (spec.displacement + 8 + 7) & ~7)
    return USDT_FRAME_BYTES


# ----------------------------------------------------------------------------- the process


class ProcessImage:
    """One exec generation of a traced process, as decoding its samples needs it.

    It outlives the process: the module map is a snapshot (replaced when a
    library loads), execname and friends are read while the process lives, and
    code is read from the mapped files by file offset.
    """

    def __init__(self, pid: int, modules: ModuleMap, facts: ProcessFacts) -> None:
        self.pid = pid
        self.modules = modules
        self.facts = facts.load()
        self._files: dict[str, int] = {}
        self._lock = threading.Lock()
        self._mem_fd = -1

    def read_code(self, address: int, size: int) -> bytes:
        """Up to *size* bytes of the module file mapped at *address*; empty outside modules.

        Falls back to the live process only when the file cannot be opened (deleted
        since it was mapped); an exited process then reads as empty.
        """
        module = self.modules.module_at(address)
        if module is None or module.elf is None:
            return b""
        vaddr = address - module.bias
        if module.name == VDSO:
            return _section_bytes(module.elf, vaddr, size)
        offset = module.elf.vaddr_to_offset(vaddr)
        if offset is None:
            return b""
        fd = self._file(module)
        try:
            if fd >= 0:
                return os.pread(fd, size, offset)
            return os.pread(self._memory(), size, address)
        except OSError:
            return b""

    def _file(self, module: Module) -> int:
        path = module.path.removesuffix(" (deleted)")
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    fd = -1
                self._files[path] = fd
            return fd

    def _memory(self) -> int:
        with self._lock:
            if self._mem_fd < 0:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            return self._mem_fd

    def close(self) -> None:
        with self._lock:
            for fd in [*self._files.values(), self._mem_fd]:
                if fd >= 0:
                    os.close(fd)
            self._files.clear()
            self._mem_fd = -1


def _section_bytes(elf: ElfFile, vaddr: int, size: int) -> bytes:
    """Bytes at *vaddr* of an image held in memory (the vDSO), found by section."""
    for sec in elf.sections:
        if (
            sec.flags & SectionFlags.ALLOC
            and sec.type != SectionType.NOBITS
            and sec.addr <= vaddr < sec.addr + sec.size
        ):
            start = vaddr - sec.addr
            return elf.section_data(sec)[start : start + size]
    return b""


class SampleSpace:
    """The :class:`dtproc.unwind.AddressSpace` of one sample: its stack copy and the files.

    Stack bounds are the copy's: a frame-pointer link beyond it could only be
    checked against memory as it is now, not as it was at the hit.
    """

    def __init__(self, image: ProcessImage, stack: bytes, stack_addr: int) -> None:
        self._image = image
        self._stack = stack
        self._base = stack_addr
        self._end = stack_addr + len(stack)

    def module_at(self, address: int) -> Module | None:
        return self._image.modules.module_at(address)

    def read(self, address: int, size: int) -> bytes:
        if self._base <= address < self._end:
            start = address - self._base
            return self._stack[start : start + size]
        return self._image.read_code(address, size)

    def stack_bounds(self, address: int) -> tuple[int, int] | None:
        if self._base <= address < self._end:
            return self._base, self._end
        return None

    def read_u64(self, address: int) -> int:
        """A word of the stack copy; 0 outside it, as a live read of a bad address gives."""
        start = address - self._base
        if start >= 0 and address + 8 <= self._end:
            value: int = _U64.unpack_from(self._stack, start)[0]
            return value
        return 0


# ----------------------------------------------------------------------------- contexts


class SampleData:
    """What every placement fired by one sample shares: registers, stack walks, clocks."""

    __slots__ = ("_regs", "_stacks", "image", "sample", "space", "wall_offset")

    def __init__(self, sample: UprobeSample, image: ProcessImage, wall_offset: int) -> None:
        self.sample = sample
        self.image = image
        self.wall_offset = wall_offset
        self.space = SampleSpace(image, sample.stack, sample.stack_addr)
        self._regs: UserRegs | None = None
        self._stacks: dict[int, StackValue] = {}

    @property
    def regs(self) -> UserRegs:
        if self._regs is None:
            self._regs = self.sample.user_regs()
        return self._regs

    def ustack(self, nframes: int) -> StackValue:
        found = self._stacks.get(nframes)
        if found is None:
            regs = self.sample.regs
            dwarf = {number: regs[name] for number, name in enumerate(DWARF_REGS)}
            walked = unwind(dwarf, self.space, nframes)
            found = self._stacks[nframes] = StackValue(self.image.pid, walked.frames)
        return found


class SampleHit:
    """The ProbeContext of one sampled hit of one probe site.

    ``timestamp`` is the kernel's time of the hit (CLOCK_MONOTONIC, as the
    ptrace backend's), ``walltimestamp`` that time on the wall clock.
    """

    __slots__ = ("_data", "_site")

    def __init__(self, data: SampleData, site: ProbeSite) -> None:
        self._data = data
        self._site = site

    @property
    def pid(self) -> int:
        return self._site.pid

    @property
    def tid(self) -> int:
        return self._data.sample.tid

    @property
    def ppid(self) -> int:
        return self._data.image.facts.ppid

    @property
    def uid(self) -> int:
        return self._data.image.facts.uid

    @property
    def gid(self) -> int:
        return self._data.image.facts.gid

    @property
    def cpu(self) -> int:
        """The CPU the hit happened on, as the kernel recorded it in the sample."""
        return self._data.sample.cpu

    @property
    def execname(self) -> str:
        return self._data.image.facts.execname

    @property
    def probe(self) -> ProbeInfo:
        return self._site.info

    @property
    def timestamp(self) -> int:
        return self._data.sample.time

    @property
    def walltimestamp(self) -> int:
        return self._data.sample.time + self._data.wall_offset

    def arg(self, i: int) -> int:
        site = self._site
        data = self._data
        if site.kind is ProbeKind.RETURN:
            if i == 0:
                return site.offset
            return data.regs.rax if i == 1 else 0
        if site.kind is ProbeKind.USDT:
            return usdt_arg(site.usdt_args, i, data.regs, data.space.read_u64)
        return function_arg(i, data.regs, data.space.read_u64)

    def read_memory(self, addr: int, n: int) -> bytes:
        raise MemoryFault(addr)

    def ustack(self, nframes: int) -> StackValue:
        return self._data.ustack(nframes)


def wall_offset() -> int:
    """Wall-clock time minus CLOCK_MONOTONIC now, to date samples by their kernel time."""
    return time.time_ns() - time.monotonic_ns()
