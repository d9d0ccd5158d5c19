"""dtproc.unwind on stacks that gdb snapshotted, with gdb's own backtrace as the oracle.

Each target runs once under ``gdb -batch``; every stop in ``uw_leaf`` is recorded (registers,
maps, the stack bytes, gdb's physical frames) and the process is gone before we unwind, so
these tests need no ptrace layer of ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import have
from dtproc._sys.regs import DWARF_REGS, UserRegs
from dtproc.cfi import CfiTable, FrameSource
from dtproc.elf import ElfFile
from dtproc.modules import Module
from dtproc.unwind import UnwindMethod, UnwoundStack, unwind
from uw_gdb import VDSO, Snapshot, SnapshotSpace, by_tag, take_snapshots

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb is the oracle and snapshot taker")

# uw_basic.c's scenarios, by the tag uw_leaf gets.
CHAIN, QSORT, SIGNAL, OWN_RESTORER, RECURSION, THREAD = 1, 2, 3, 4, 5, 6
# uw_cpp.cpp's.
CPP_CLEANUP, CPP_CATCH, CPP_EXCEPTION_DTOR, CPP_BACKTRACE = 10, 11, 12, 13
DEPTH = 200


@dataclass(frozen=True)
class Runs:
    """Snapshots per build, each keyed by scenario tag."""

    pie: dict[int | str, Snapshot]
    nopie: dict[int | str, Snapshot]
    debug_frame: dict[int | str, Snapshot]
    frame_pointer: dict[int | str, Snapshot]
    cpp: dict[int | str, Snapshot]


@pytest.fixture(scope="module")
def runs(build: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    out = tmp_path_factory.mktemp("uw_snapshots")
    no_eh = ("-fno-asynchronous-unwind-tables", "-fno-unwind-tables")

    def snap(name: str, binary: Path, *breakpoints: str) -> dict[int | str, Snapshot]:
        return by_tag(take_snapshots(binary, out / name, breakpoints=breakpoints or ("*uw_leaf",)))

    pie = build("uw_basic", "-O2", "-pthread", "-pie", "-fPIE")
    return Runs(
        pie=snap("pie", pie, "*uw_leaf", "__vdso_clock_gettime"),
        nopie=snap("nopie", build("uw_basic", "-O2", "-pthread", "-no-pie")),
        debug_frame=snap("debug_frame", build("uw_basic", "-O2", "-pthread", *no_eh)),
        frame_pointer=snap(
            "frame_pointer",
            build(
                "uw_basic",
                "-O2",
                "-pthread",
                *no_eh,
                "-g0",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
            ),
        ),
        cpp=snap("cpp", build("uw_cpp", "-O2", lang="cpp")),
    )


def _unwind(snap: Snapshot, max_frames: int = 400) -> UnwoundStack:
    return unwind(snap.regs, SnapshotSpace(snap), max_frames=max_frames)


def _names(snap: Snapshot, pcs: tuple[int, ...]) -> list[str]:
    """Function names of a stack, looked up at pc - 1 for callers as a symbolizer would."""
    space = SnapshotSpace(snap)
    names = []
    for i, pc in enumerate(pcs):
        at = pc if i == 0 else pc - 1
        module = space.module_at(at)
        hit = None
        if module is not None and module.elf is not None:
            hit = module.elf.full_symbols().at(at - module.bias)
        names.append(hit[0].name if hit else "?")
    return names


GDB_AGREES = {
    "pie": (CHAIN, QSORT, SIGNAL, RECURSION, THREAD, VDSO),
    "nopie": (CHAIN, QSORT, SIGNAL, RECURSION, THREAD),
    "debug_frame": (CHAIN, QSORT, SIGNAL, RECURSION, THREAD),
    "cpp": (CPP_CLEANUP, CPP_CATCH, CPP_EXCEPTION_DTOR, CPP_BACKTRACE),
}


def _cases() -> Iterator[tuple[str, int | str]]:
    for build_name, tags in GDB_AGREES.items():
        for tag in tags:
            yield build_name, tag


@pytest.mark.parametrize(("build_name", "tag"), list(_cases()))
def test_matches_gdb_backtrace(runs: Runs, build_name: str, tag: int | str) -> None:
    snap = getattr(runs, build_name)[tag]
    stack = _unwind(snap)
    assert stack.frames == snap.pcs, (_names(snap, stack.frames), _names(snap, snap.pcs))
    assert stack.complete, stack.reason
    assert stack.reason is None
    assert len(stack.methods) == len(stack.frames)


def test_chain_is_cfi_only_and_ends_at_start(runs: Runs) -> None:
    snap = runs.pie[CHAIN]
    stack = _unwind(snap)
    names = _names(snap, stack.frames)
    assert names[:5] == ["uw_leaf", "uw_chain_c", "uw_chain_b", "uw_chain_a", "main"]
    assert names[-1] == "_start"
    assert set(stack.methods[1:]) == {UnwindMethod.CFI}


def test_recursion_and_depth_limit(runs: Runs) -> None:
    snap = runs.pie[RECURSION]
    full = _unwind(snap)
    assert _names(snap, full.frames).count("uw_recurse") == DEPTH + 1
    cut = _unwind(snap, max_frames=50)
    assert cut.frames == snap.pcs[:50]
    assert not cut.complete
    assert cut.reason is not None and "limit of 50 frames" in cut.reason


def test_thread_ends_at_clone3(runs: Runs) -> None:
    snap = runs.pie[THREAD]
    stack = _unwind(snap)
    assert _names(snap, stack.frames)[-2:] == ["start_thread", "__clone3"]
    assert stack.complete


def test_glibc_signal_frame_through_cfi(runs: Runs) -> None:
    snap = runs.pie[SIGNAL]
    stack = _unwind(snap)
    names = _names(snap, stack.frames)
    at = names.index("uw_handler") + 1  # the handler returns into __restore_rt
    space = SnapshotSpace(snap)
    module = space.module_at(stack.frames[at])
    assert module is not None and module.elf is not None
    rules = CfiTable.for_elf(module.elf).rules_at(stack.frames[at] - 1 - module.bias)
    assert rules is not None and rules.signal_frame
    # The interrupted frame's pc is exact (no return address), and gdb agrees on it.
    assert stack.methods[at + 1] is UnwindMethod.CFI
    assert stack.frames[at + 1] == snap.pcs[at + 1]


def test_own_restorer_without_cfi(runs: Runs) -> None:
    """gdb unwinds the trampoline with the CFI of the function before it and goes astray;
    the sigreturn code pattern takes the ucontext instead."""
    snap = runs.pie[OWN_RESTORER]
    stack = _unwind(snap)
    assert stack.complete, stack.reason
    names = _names(snap, stack.frames)
    i = names.index("uw_handler")
    assert names[i + 1 :] == [
        "uw_before_restorer",  # pc - 1 of uw_restorer, which the handler returns to
        "syscall",
        "uw_own_restorer",
        "main",
        "__libc_start_call_main",
        "__libc_start_main",
        "_start",
    ]
    assert stack.methods[i + 2] is UnwindMethod.SIGNAL_CONTEXT


def test_debug_frame_build_uses_debug_frame(runs: Runs) -> None:
    snap = runs.debug_frame[CHAIN]
    space = SnapshotSpace(snap)
    pc = snap.regs[16]
    module = space.module_at(pc)
    assert module is not None and module.elf is not None
    rows = CfiTable.for_elf(module.elf).fde_at(pc - module.bias)
    assert rows is not None and rows.fde.source is FrameSource.DEBUG_FRAME


@pytest.mark.parametrize("tag", [CHAIN, QSORT, SIGNAL, OWN_RESTORER, RECURSION, THREAD])
def test_frame_pointer_fallback(runs: Runs, tag: int) -> None:
    """Without CFI in the executable, frame pointers (and the prologue at the leaf's entry)
    give the same functions that gdb's backtrace of the CFI build names."""
    snap = runs.frame_pointer[tag]
    stack = _unwind(snap)
    ref = runs.pie[tag]
    expected = _names(ref, _unwind(ref).frames)
    assert _names(snap, stack.frames) == expected
    assert stack.complete
    assert UnwindMethod.FRAME_POINTER in stack.methods


def test_vdso_frames(runs: Runs) -> None:
    snap = runs.pie[VDSO]
    space = SnapshotSpace(snap)
    first = space.module_at(snap.regs[16])
    assert first is not None and first.name == "[vdso]"
    assert _unwind(snap).frames == snap.pcs


def test_cpp_frames(runs: Runs) -> None:
    stack = _unwind(runs.cpp[CPP_BACKTRACE])
    names = _names(runs.cpp[CPP_BACKTRACE], stack.frames)
    assert names[:3] == ["uw_leaf", "_ZL5traceP15_Unwind_ContextPv", "_Unwind_Backtrace"]


def test_user_regs_input(runs: Runs) -> None:
    snap = runs.nopie[QSORT]
    regs = UserRegs()
    for number, name in enumerate(DWARF_REGS):
        setattr(regs, name, snap.regs[number])
    assert unwind(regs, SnapshotSpace(snap), max_frames=400).frames == snap.pcs


# ----------------------------------------------------------------------------- damage


def _damaged(snap: Snapshot, pattern: Callable[[int], bytes], size: int = 512) -> Snapshot:
    stack = bytearray(snap.stack)
    mid = len(stack) // 2 & ~7
    for off in range(mid, min(mid + size, len(stack)), 8):
        stack[off : off + 8] = pattern(snap.stack_start + off)
    return replace(snap, stack=bytes(stack))


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


PATTERNS: dict[str, Callable[[Snapshot], Callable[[int], bytes]]] = {
    "garbage": lambda s: lambda addr: b"\x41" * 8,
    "self_pointers": lambda s: lambda addr: addr.to_bytes(8, "little"),
    "zeros": lambda s: lambda addr: bytes(8),
    "foreign_return_address": lambda s: lambda addr: s.pcs[-3].to_bytes(8, "little"),
}


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_corrupt_stack_gives_partial_stack(runs: Runs, pattern: str) -> None:
    snap = runs.pie[RECURSION]
    bad = _damaged(snap, PATTERNS[pattern](snap))
    start = time.perf_counter()
    stack = _unwind(bad, max_frames=400)
    assert time.perf_counter() - start < 2
    # Frames whose saved registers lie below the damage are intact.
    assert _common_prefix(stack.frames, snap.pcs) >= 20
    assert stack.frames != snap.pcs
    assert len(stack.frames) <= 400
    assert len(set(zip(stack.frames, range(len(stack.frames)), strict=True))) == len(stack.frames)
    if pattern == "garbage":
        assert not stack.complete and stack.reason


def test_truncated_stack_dump(runs: Runs) -> None:
    snap = runs.pie[RECURSION]
    live = snap.regs[7] - snap.stack_start
    cut = replace(snap, stack=snap.stack[: live + (len(snap.stack) - live) // 3])
    stack = _unwind(cut)
    assert not stack.complete
    assert stack.reason is not None and "0x" in stack.reason
    assert stack.frames == snap.pcs[: len(stack.frames)]
    assert len(stack.frames) > 20


class _CorruptCfiSpace(SnapshotSpace):
    """The executable's .eh_frame CIE claims version 9: its CFI is unreadable."""

    def __init__(self, snap: Snapshot) -> None:
        super().__init__(snap)
        main = next(m for m in self.modules if m.path.endswith(tuple("0123456789abcdef")))
        assert main.elf is not None
        data = bytearray(Path(main.path).read_bytes())
        sec = main.elf.section(".eh_frame")
        assert sec is not None
        # Every CIE: the first entry is one; corrupt the version byte of each we find.
        off = 0
        while off < sec.size:
            length = int.from_bytes(data[sec.offset + off : sec.offset + off + 4], "little")
            if length == 0:
                break
            if data[sec.offset + off + 4 : sec.offset + off + 8] == bytes(4):
                data[sec.offset + off + 8] = 9
            off += 4 + length
        elf = ElfFile.from_bytes(bytes(data), main.path)
        self.modules[self.modules.index(main)] = Module(
            main.name, main.path, main.start, main.end, main.bias, elf
        )


def test_corrupt_cfi_gives_partial_stack(runs: Runs) -> None:
    snap = runs.pie[CHAIN]
    stack = unwind(snap.regs, _CorruptCfiSpace(snap))
    assert not stack.complete
    assert stack.frames == snap.pcs[:1]
    assert stack.reason is not None and "unsupported CIE version 9" in stack.reason


# ----------------------------------------------------------------------------- guards


def test_no_pc(runs: Runs) -> None:
    stack = unwind({7: 0x1000}, SnapshotSpace(runs.pie[CHAIN]))
    assert stack == UnwoundStack((), False, "the register set has no pc")


def test_stack_that_does_not_grow(runs: Runs) -> None:
    """uw_chain_b finds its CFA through %rbp; a %rbp below %rsp must not walk downwards."""
    snap = runs.pie[CHAIN]
    regs = dict(snap.regs)
    regs[6] = regs[7] - 0x100
    stack = unwind(regs, SnapshotSpace(snap))
    assert not stack.complete
    assert stack.reason is not None and "does not grow" in stack.reason
    assert stack.frames == snap.pcs[:3]


def _sigcontext_rip_at(snap: Snapshot) -> int:
    """Stack address of the saved %rip in the ucontext of the own-restorer stop: the slot
    holding the interrupted pc right after one holding a stack address (the saved %rsp; the
    saved %rcx holds the same pc, as syscall leaves it there)."""
    good = _unwind(snap)
    interrupted = good.frames[good.methods.index(UnwindMethod.SIGNAL_CONTEXT)]
    lo, hi = snap.stack_mapping
    for off in range(snap.regs[7] - snap.stack_start, len(snap.stack) - 7, 8):
        before = int.from_bytes(snap.stack[off - 8 : off], "little")
        if int.from_bytes(snap.stack[off : off + 8], "little") == interrupted and lo <= before < hi:
            return snap.stack_start + off
    raise AssertionError(f"0x{interrupted:x} is not on the stack")


def _patched(snap: Snapshot, address: int, values: tuple[int, ...]) -> Snapshot:
    stack = bytearray(snap.stack)
    off = address - snap.stack_start
    for i, value in enumerate(values):
        stack[off + 8 * i : off + 8 * i + 8] = value.to_bytes(8, "little")
    return replace(snap, stack=bytes(stack))


def test_signal_context_that_loops(runs: Runs) -> None:
    """A ucontext pointing back at the first frame: the walk notices the repeat."""
    snap = runs.pie[OWN_RESTORER]
    rip_at = _sigcontext_rip_at(snap)
    looped = _patched(snap, rip_at - 8, (snap.regs[7], snap.regs[16]))  # rsp, rip
    stack = _unwind(looped)
    assert not stack.complete
    assert stack.reason is not None and "repeats" in stack.reason


def test_signal_context_cut_off(runs: Runs) -> None:
    snap = runs.pie[OWN_RESTORER]
    cut = _sigcontext_rip_at(snap) - snap.stack_start - 64
    stack = _unwind(replace(snap, stack=snap.stack[:cut]))
    assert not stack.complete
    assert stack.reason is not None and "signal context" in stack.reason


def test_prologue_after_push(runs: Runs) -> None:
    """The frame-pointer build's stop moved on to ``mov %rsp,%rbp``: ``push %rbp`` done (the
    instructions in between only compute %eax); the callers are the same."""
    snap = runs.frame_pointer[CHAIN]
    space = SnapshotSpace(snap)
    pc, sp = snap.regs[16], snap.regs[7]
    assert space.read(pc, 1) == b"\x55"
    mov = pc + space.read(pc, 16).index(b"\x48\x89\xe5")
    pushed = _patched(snap, sp - 8, (snap.regs[6],))
    pushed = replace(pushed, regs={**snap.regs, 7: sp - 8, 16: mov})
    stack = _unwind(pushed)
    assert stack.frames[1:] == _unwind(snap).frames[1:]
    assert stack.complete


class _NoElfSpace(SnapshotSpace):
    """The executable's file cannot be read: its module has no ELF."""

    def __init__(self, snap: Snapshot) -> None:
        super().__init__(snap)
        for i, m in enumerate(self.modules):
            if m.path.endswith(tuple("0123456789abcdef")):
                self.modules[i] = Module(m.name, m.path, m.start, m.end, m.bias, None)


def test_module_without_elf(runs: Runs) -> None:
    snap = runs.pie[CHAIN]
    stack = unwind(snap.regs, _NoElfSpace(snap))
    assert not stack.complete
    assert stack.reason is not None and "no unwind tables" in stack.reason
    assert stack.frames[0] == snap.pcs[0]
