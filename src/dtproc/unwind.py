"""Walking a user stack from one register set: CFI first, signal frames, frame pointers last.

This is the pure core of ``ustack``: it never touches ptrace.  The caller hands it a full
register set (a :class:`~dtproc._sys.regs.UserRegs` or DWARF-numbered values) and an
:class:`AddressSpace` that finds the module mapped at an address and reads memory.  A live
process answers with its module map and ``/proc/PID/mem``; a test answers with a gdb
snapshot; a perf sample answers with the copied user stack.

For each frame the walker uses, in order:

1. the CFI of the module holding the pc (``pc - 1`` for callers, whose pc is a return
   address that may sit just past the last instruction of the calling function);
2. for a sigreturn trampoline (``mov $15,%rax; syscall``) without CFI, the ``ucontext`` the
   kernel pushed, so a handler's stack continues into the interrupted code;
3. the frame-pointer chain, but only where no CFI covers the pc, and only when ``%rbp``
   points into the stack above ``%rsp``.

It stops cleanly at the outermost frame (undefined return address, as glibc marks ``_start``
and ``clone3``; pc 0; the entry function), and never loops: every ordinary step must move the
stack pointer up, a (pc, sp) pair is never visited twice, every read is a few bytes, and the
depth is capped.  A stack cut short by unreadable memory or corrupt tables is returned with
``complete=False`` and a reason, never as an exception.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from dtproc._sys.regs import DWARF_REGS, UserRegs
from dtproc.cfi import CALLEE_SAVED, RA_COLUMN, RSP, CfiTable, FrameRules
from dtproc.elf import ElfFile
from dtproc.errors import DtprocError, ElfError, UnwindError

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "AddressSpace",
    "ModuleView",
    "UnwindMethod",
    "UnwoundStack",
    "dwarf_registers",
    "unwind",
]

DEFAULT_MAX_FRAMES: Final = 100
RBP: Final = 6
#: ``mov $15,%rax; syscall``: rt_sigreturn, the trampoline glibc and musl install.
SIGRETURN_CODE: Final = bytes.fromhex("48c7c00f0000000f05")
# ucontext_t: uc_flags, uc_link, uc_stack (24 bytes), then the sigcontext's general registers.
_UC_MCONTEXT: Final = 40
# sigcontext order (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip) as DWARF numbers.
_SIGCONTEXT_DWARF: Final = (8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7, 16)
_SIGCONTEXT: Final = struct.Struct(f"<{len(_SIGCONTEXT_DWARF)}Q")
_FRAME_LINK: Final = struct.Struct("<QQ")
_PUSH_RBP: Final = b"\x55"
_MOV_RSP_RBP: Final = b"\x48\x89\xe5"
_RET: Final = b"\xc3"
# Without a stack mapping to check against, a frame pointer may be this far above %rsp.
_DEFAULT_STACK_SPAN: Final = 64 << 20


class ModuleView(Protocol):
    """One mapped ELF object; :class:`dtproc.modules.Module` is one."""

    @property
    def name(self) -> str: ...

    @property
    def bias(self) -> int: ...

    @property
    def elf(self) -> ElfFile | None: ...


class AddressSpace(Protocol):
    """What the walker needs from a process (live, sampled or snapshotted)."""

    def module_at(self, address: int) -> ModuleView | None:
        """The module mapped at *address*, or None (anonymous memory, JIT code)."""
        ...

    def read(self, address: int, size: int) -> bytes:
        """*size* bytes at *address*: raises (OSError/DtprocError) or returns fewer when
        the memory is not there."""
        ...

    def stack_bounds(self, address: int) -> tuple[int, int] | None:
        """``[start, end)`` of the writable mapping that holds stack address *address*, or
        None when unknown; frame-pointer links must stay inside it."""
        ...


class UnwindMethod(enum.Enum):
    """How the walker found a frame."""

    REGISTERS = "registers"  # the first frame: the register set itself
    CFI = "cfi"
    SIGNAL_CONTEXT = "signal_context"  # the ucontext of a sigreturn trampoline
    FRAME_POINTER = "frame_pointer"


@dataclass(frozen=True, slots=True)
class UnwoundStack:
    """Return addresses, innermost first (``frames[0]`` is the pc itself).

    ``complete`` says the walk reached the outermost frame; otherwise ``reason`` says why it
    stopped (unreadable memory, missing or corrupt unwind tables, the depth limit).
    ``methods[i]`` tells how ``frames[i]`` was found.
    """

    frames: tuple[int, ...]
    complete: bool
    reason: str | None
    methods: tuple[UnwindMethod, ...] = ()


def dwarf_registers(regs: UserRegs | Mapping[int, int]) -> dict[int, int]:
    """DWARF-numbered register values (rax=0 ... rsp=7, r8-r15=8-15, rip=16)."""
    if isinstance(regs, UserRegs):
        return {number: getattr(regs, name) for number, name in enumerate(DWARF_REGS)}
    return dict(regs)


def unwind(
    regs: UserRegs | Mapping[int, int],
    space: AddressSpace,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> UnwoundStack:
    """Walk the stack of the thread whose registers are *regs* in *space*."""
    return _Walker(space).walk(dwarf_registers(regs), max_frames)


@dataclass(frozen=True, slots=True)
class _Step:
    regs: dict[int, int]
    method: UnwindMethod
    signal: bool  # the caller was interrupted, not calling: its pc is exact, its sp anywhere


@dataclass(frozen=True, slots=True)
class _Stop:
    complete: bool
    reason: str | None


class _Walker:
    def __init__(self, space: AddressSpace) -> None:
        self.space = space

    def read(self, address: int, size: int) -> bytes:
        """The space's read, with every failure turned into a short read."""
        try:
            return self.space.read(address, size)
        except (OSError, DtprocError, OverflowError, ValueError):
            return b""

    def walk(self, regs: dict[int, int], max_frames: int) -> UnwoundStack:
        pc = regs.get(RA_COLUMN)
        if pc is None:
            return UnwoundStack((), False, "the register set has no pc")
        frames = [pc]
        methods = [UnwindMethod.REGISTERS]
        seen = {(pc, regs.get(RSP))}
        exact = True
        while True:
            if len(frames) >= max_frames:
                stop = _Stop(False, f"stopped at the limit of {max_frames} frames")
                break
            outcome = self.step(regs, exact)
            if isinstance(outcome, _Stop):
                stop = outcome
                break
            stop_or_none = _check(regs, outcome, seen)
            if stop_or_none is not None:
                stop = stop_or_none
                break
            regs = outcome.regs
            frames.append(regs[RA_COLUMN])
            methods.append(outcome.method)
            exact = outcome.signal
        return UnwoundStack(tuple(frames), stop.complete, stop.reason, tuple(methods))

    def step(self, regs: dict[int, int], exact: bool) -> _Step | _Stop:
        """The caller of the frame *regs* describes (*exact*: its pc is no return address)."""
        pc = regs[RA_COLUMN]
        lookup = pc if exact else pc - 1
        module = self.space.module_at(lookup)
        if module is None:
            return self.step_without_cfi(regs, None, exact)
        try:
            found = _rules_at(module, lookup)
        except ElfError as exc:
            return _Stop(False, f"corrupt unwind tables at 0x{pc:x}: {exc}")
        if found is None:
            if _in_entry_function(module, lookup):
                return _Stop(True, None)
            return self.step_without_cfi(regs, module, exact)
        fde_end, rules = found
        # A return address right at the end of an FDE may belong to a trampoline without CFI
        # that follows the function, and then the row for pc - 1 is the wrong one.
        if fde_end == pc - module.bias and not rules.signal_frame and self.is_sigreturn(pc):
            return self.signal_step(regs)
        return self.cfi_step(regs, rules, module, lookup)

    def step_without_cfi(
        self, regs: dict[int, int], module: ModuleView | None, exact: bool
    ) -> _Step | _Stop:
        if self.is_sigreturn(regs[RA_COLUMN]):
            return self.signal_step(regs)
        if exact:
            caller = self.prologue_step(regs)
            if caller is not None:
                return caller
        return self.frame_pointer_step(regs, module)

    def prologue_step(self, regs: dict[int, int]) -> _Step | None:
        """At ``push %rbp``, ``mov %rsp,%rbp`` or ``ret`` the frame-pointer chain does not
        include this frame yet (or any more): the return address is on top of the stack."""
        sp = regs.get(RSP)
        if sp is None:
            return None
        code = self.read(regs[RA_COLUMN], len(_MOV_RSP_RBP))
        if code.startswith(_MOV_RSP_RBP):
            ret_at, saved_rbp_at = sp + 8, sp
        elif code[:1] in (_PUSH_RBP, _RET):
            ret_at, saved_rbp_at = sp, None
        else:
            return None
        data = self.read(sp, ret_at + 8 - sp)
        if len(data) < ret_at + 8 - sp:
            return None
        caller = {r: v for r, v in regs.items() if r in CALLEE_SAVED}
        caller[RA_COLUMN] = int.from_bytes(data[-8:], "little")
        caller[RSP] = ret_at + 8
        if saved_rbp_at is not None:
            caller[RBP] = int.from_bytes(data[:8], "little")
        return _Step(caller, UnwindMethod.FRAME_POINTER, False)

    def cfi_step(
        self, regs: dict[int, int], rules: FrameRules, module: ModuleView, lookup: int
    ) -> _Step | _Stop:
        pc = regs[RA_COLUMN]
        if rules.outermost:
            return _Stop(True, None)
        try:
            caller = rules.step(regs, self.read, module.bias)
        except UnwindError as exc:
            if _in_entry_function(module, lookup):
                return _Stop(True, None)
            return _Stop(False, f"cannot unwind 0x{pc:x} in {module.name}: {exc}")
        return _Step(caller, UnwindMethod.CFI, rules.signal_frame)

    def is_sigreturn(self, pc: int) -> bool:
        return self.read(pc, len(SIGRETURN_CODE)) == SIGRETURN_CODE

    def signal_step(self, regs: dict[int, int]) -> _Step | _Stop:
        """Registers of the interrupted code, from the ucontext at %rsp of the trampoline."""
        sp = regs.get(RSP)
        if sp is None:
            return _Stop(False, "a signal frame without a stack pointer")
        data = self.read(sp + _UC_MCONTEXT, _SIGCONTEXT.size)
        if len(data) < _SIGCONTEXT.size:
            return _Stop(False, f"cannot read the signal context at 0x{sp + _UC_MCONTEXT:x}")
        caller = dict(zip(_SIGCONTEXT_DWARF, _SIGCONTEXT.unpack(data), strict=True))
        return _Step(caller, UnwindMethod.SIGNAL_CONTEXT, True)

    def frame_pointer_step(self, regs: dict[int, int], module: ModuleView | None) -> _Step | _Stop:
        pc = regs[RA_COLUMN]
        where = f"in {module.name}" if module is not None else "in no module"
        fail = _Stop(False, f"no unwind tables for 0x{pc:x} ({where}) and no usable frame pointer")
        rbp = regs.get(RBP)
        sp = regs.get(RSP)
        if rbp is None or sp is None or rbp % 8:
            return fail
        low, high = self.space.stack_bounds(sp) or (sp, sp + _DEFAULT_STACK_SPAN)
        if not (max(sp, low) <= rbp and rbp + _FRAME_LINK.size <= high):
            return fail
        data = self.read(rbp, _FRAME_LINK.size)
        if len(data) < _FRAME_LINK.size:
            return fail
        saved_rbp, ret = _FRAME_LINK.unpack(data)
        caller = {RBP: saved_rbp, RSP: rbp + _FRAME_LINK.size, RA_COLUMN: ret}
        return _Step(caller, UnwindMethod.FRAME_POINTER, False)


def _rules_at(module: ModuleView, pc: int) -> tuple[int, FrameRules] | None:
    """The end of the FDE covering *pc* (file vaddr) and its row there, if any."""
    if module.elf is None:
        return None
    vaddr = pc - module.bias
    rows = CfiTable.for_elf(module.elf).fde_at(vaddr)
    rules = rows.at(vaddr) if rows is not None else None
    if rows is None or rules is None:
        return None
    return rows.fde.end, rules


def _check(regs: dict[int, int], step: _Step, seen: set[tuple[int, int | None]]) -> _Stop | None:
    """Whether the walk must end before *step*'s frame: outermost, or no progress."""
    caller = step.regs
    pc = caller.get(RA_COLUMN)
    if pc is None:
        return _Stop(False, "the caller's pc is unknown")
    sp, caller_sp = regs.get(RSP), caller.get(RSP)
    if caller_sp is None:
        return _Stop(False, f"the stack pointer of the frame at 0x{pc:x} is unknown")
    if not step.signal and sp is not None and caller_sp <= sp:
        return _Stop(False, f"the stack pointer does not grow at 0x{pc:x} (0x{caller_sp:x})")
    if pc == 0:  # checked after the stack: stale zeros below %rsp are no outermost frame
        return _Stop(True, None)
    key = (pc, caller_sp)
    if key in seen:
        return _Stop(False, f"the frame at 0x{pc:x} (sp 0x{caller_sp:x}) repeats")
    seen.add(key)
    return None


def _in_entry_function(module: ModuleView, pc: int) -> bool:
    """Whether *pc* is in the function at the file's entry point (``_start``)."""
    elf = module.elf
    if elf is None or not elf.entry:
        return False
    try:
        hit = elf.symbols.at(pc - module.bias)
    except ElfError:
        return False
    return hit is not None and hit[0].value == elf.entry
