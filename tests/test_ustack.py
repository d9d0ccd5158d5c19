"""ustack() on live processes, with gdb's ``bt`` as the oracle.

Each target runs twice: under our Tracee, which captures ``ustack()`` in a breakpoint callback
at every call of ``uw_leaf`` (the first instruction, before its frame exists), and under
``gdb -batch`` with a breakpoint at the same instruction (``tests/uw_gdb.py``), both at the
same time.  The two runs have different address-space layouts, so a pc is compared as
(object basename, file address).  gdb's inlined frames share their caller's pc and are left
out: ustack() lists physical frames, as DTrace does.  The control-layer test grabs a running
process and compares with gdb attached to the very same process, pc for pc.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Builder, Reaper, have
from dtproc import Tracee
from dtproc.control import Tracer
from dtproc.events import Exited
from dtproc.modules import Module, ModuleMap
from dtproc.rendezvous import run_to
from dtproc.unwind import unwind
from dtproc.ustack import MAX_READ, Frame, ProcessSpace, Symbolizer, UserStack, object_name
from uw_gdb import (
    VDSO,
    Snapshot,
    SnapshotSpace,
    attach_backtraces,
    by_tag,
    take_snapshots,
    wait_until_parked,
)

pytestmark = pytest.mark.skipif(not have("gdb"), reason="gdb is the oracle")

# uw_basic.c's scenarios (the tag uw_leaf gets), and uw_cpp.cpp's.
CHAIN, QSORT, SIGNAL, OWN_RESTORER, RECURSION, THREAD = 1, 2, 3, 4, 5, 6
CPP_CLEANUP, CPP_CATCH, CPP_EXCEPTION_DTOR, CPP_BACKTRACE = 10, 11, 12, 13
DEPTH = 200
NO_FP = ("-O2", "-fomit-frame-pointer")
BUILDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "pie": ("uw_basic", (*NO_FP, "-pthread", "-pie", "-fPIE"), "c"),
    "nopie": ("uw_basic", (*NO_FP, "-pthread", "-no-pie", "-fno-pie"), "c"),
    "cpp": ("uw_cpp", NO_FP, "cpp"),
}
GDB_AGREES: dict[str, tuple[int | str, ...]] = {
    "pie": (CHAIN, QSORT, SIGNAL, RECURSION, THREAD, VDSO),
    "nopie": (CHAIN, QSORT, SIGNAL, RECURSION, THREAD),
    "cpp": (CPP_CLEANUP, CPP_CATCH, CPP_EXCEPTION_DTOR, CPP_BACKTRACE),
}
# gdb's "break function" stops past a "push %rbp; mov %rsp,%rbp" prologue: see _live.
GDB_BREAKPOINTS: dict[str, tuple[str, ...]] = {
    "pie": ("*uw_leaf", "__vdso_clock_gettime"),
    "nopie": ("*uw_leaf",),
    "cpp": ("*uw_leaf",),
}
FULL = 1000  # frames: more than any stack here has

Place = tuple[str, int] | int  # (object basename, file address), or the pc outside objects


def _places(module_at: Callable[[int], Module | None], pcs: tuple[int, ...]) -> tuple[Place, ...]:
    out: list[Place] = []
    for pc in pcs:
        module = module_at(pc)
        out.append(pc if module is None else (module.basename, pc - module.bias))
    return tuple(out)


@dataclass
class Stop:
    """One breakpoint hit in a live run: what ustack() said, and the module map of the time."""

    tid: int
    stack: UserStack
    default: UserStack  # ustack() with DTrace's default of 100 frames
    again: UserStack  # the same stop captured once more
    modules: ModuleMap
    places: tuple[Place, ...]
    damaged: dict[str, UserStack] = field(default_factory=dict)


def _damage(tracee: Tracee, tid: int, stop: Stop) -> None:
    """Overwrite 512 bytes in the middle of a deep stack, unwind, and put them back."""
    rsp = tracee.registers(tid).rsp
    at = rsp + 0x1800 & ~7
    saved = tracee.read(at, 512)
    patterns = {
        "garbage": b"\x41" * 512,
        "self_pointers": b"".join((at + i).to_bytes(8, "little") for i in range(0, 512, 8)),
    }
    try:
        for name, data in patterns.items():
            tracee.write(at, data)
            stop.damaged[name] = tracee.ustack(tid, FULL)
    finally:
        tracee.write(at, saved)


def _build(build: Builder, name: str) -> Path:
    source, flags, lang = BUILDS[name]
    return build(source, *flags, lang=lang, suffix=name)


def _after_frame_setup(t: Tracee, address: int) -> int:
    """Where gdb's ``break function`` stops in code without line tables: past a leading
    ``push %rbp; mov %rsp,%rbp`` (gdb's prologue analysis), else at the first byte."""
    return address + 4 if t.read(address, 4) == b"\x55\x48\x89\xe5" else address


def _live(binary: Path, reaper: Reaper) -> dict[int | str, Stop]:
    stops: dict[int | str, Stop] = {}

    def hit(tracee: Tracee, tid: int) -> None:
        regs = tracee.registers(tid)
        stack = tracee.ustack(tid, FULL)
        modules = tracee.modules
        first = modules.module_at(regs.rip)
        tag: int | str = VDSO if first is not None and first.name == "[vdso]" else regs.rdi
        if tag in stops:
            return
        stop = stops[tag] = Stop(
            tid,
            stack,
            tracee.ustack(tid),
            tracee.ustack(tid, FULL),
            modules,
            _places(modules.module_at, stack.pcs),
        )
        if tag == RECURSION:
            _damage(tracee, tid, stop)

    with open(os.devnull, "wb") as null:
        t = Tracee.create([binary], stdout=null)
    reaper.adopt(t.pid)
    try:
        run_to(t, "main")
        leaf = t.lookup("a.out", "uw_leaf")
        assert leaf is not None
        t.add_breakpoint(leaf.address, hit)
        vdso = t.lookup(None, "__vdso_clock_gettime")
        if vdso is not None and binary.name.startswith("uw_basic"):
            t.add_breakpoint(_after_frame_setup(t, vdso.address), hit)
        t.resume()
        for _ in t.events(timeout=60):
            pass
        assert isinstance(t.end, Exited), t.end
    finally:
        t.release()
    return stops


@dataclass(frozen=True)
class Run:
    binary: Path
    live: dict[int | str, Stop]
    gdb: dict[int | str, Snapshot]

    def gdb_places(self, tag: int | str) -> tuple[Place, ...]:
        snap = self.gdb[tag]
        return _places(SnapshotSpace(snap).module_at, snap.pcs)


@pytest.fixture(scope="module")
def runs(build: Builder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    out = tmp_path_factory.mktemp("us_gdb")
    binaries = {name: _build(build, name) for name in BUILDS}
    reaper = Reaper()
    with ThreadPoolExecutor(max_workers=len(binaries)) as pool:
        oracle: dict[str, Future[list[Snapshot]]] = {
            name: pool.submit(
                take_snapshots,
                binary,
                out / name,
                breakpoints=GDB_BREAKPOINTS[name],
                stack_limit=1 << 16,
            )
            for name, binary in binaries.items()
        }
        try:
            live = {name: _live(binary, reaper) for name, binary in binaries.items()}
        finally:
            reaper.cleanup()
        yield {
            name: Run(binaries[name], live[name], by_tag(oracle[name].result()))
            for name in binaries
        }


def _cases() -> Iterator[tuple[str, int | str]]:
    for build_name, tags in GDB_AGREES.items():
        for tag in tags:
            yield build_name, tag


# ----------------------------------------------------------------------------- gdb agrees


@pytest.mark.parametrize(("build_name", "tag"), list(_cases()))
def test_same_frames_as_gdb_bt(runs: dict[str, Run], build_name: str, tag: int | str) -> None:
    run = runs[build_name]
    stop = run.live[tag]
    ours, oracle = stop.places, run.gdb_places(tag)
    if tag == VDSO:  # where gdb stopped in the vDSO is up to its prologue analysis
        assert ours[0][0] == oracle[0][0] == "[vdso]"  # type: ignore[index]
        ours, oracle = ours[1:], oracle[1:]
    assert ours == oracle, _texts(stop)
    assert stop.stack.complete, stop.stack.reason
    assert stop.stack.reason is None


def _texts(stop: Stop) -> list[str]:
    return [f.text for f in stop.stack.symbolize(stop.modules)]


def _functions(stop: Stop) -> list[str | None]:
    return [f.function for f in stop.stack.symbolize(stop.modules)]


def test_printed_like_dtrace(runs: dict[str, Run]) -> None:
    """``module`function+0xoff`` with the object's basename, the offset from the symbol
    at the pc as recorded, no ``+0x0``."""
    run = runs["pie"]
    stop = run.live[CHAIN]
    exe = run.binary.name
    frames = stop.stack.symbolize(stop.modules)
    assert frames[0] == Frame(stop.stack.pcs[0], exe, "uw_leaf", 0)
    assert frames[0].text == f"{exe}`uw_leaf"
    assert [f.function for f in frames] == [
        "uw_leaf",
        "uw_chain_c",
        "uw_chain_b",
        "uw_chain_a",
        "main",
        "__libc_start_call_main",
        "__libc_start_main",
        "_start",
    ]
    main = stop.modules.main
    assert main is not None and main.elf is not None
    for frame in frames:
        module = stop.modules.module_at(frame.address)
        assert module is not None and module.elf is not None
        sym = module.elf.full_symbols().lookup(frame.function or "")
        assert sym is not None
        assert frame.offset == frame.address - module.bias - sym.value
        name = object_name(module)
        assert frame.text == f"{name}`{frame.function}+0x{frame.offset:x}" or (
            frame.offset == 0 and frame.text == f"{name}`{frame.function}"
        )
    assert [f.module for f in frames[-4:]] == [exe, "libc.so.6", "libc.so.6", exe]
    # The stack keeps the module map it was taken under: it names itself.
    assert stop.stack.frames() == frames
    assert str(stop.stack).splitlines() == [f.text for f in frames]


def test_return_address_named_as_is(runs: dict[str, Run]) -> None:
    """A handler returns to the first byte of __restore_rt: DTrace names the return address
    itself, where gdb's pc - 1 would land in the function before."""
    texts = _texts(runs["pie"].live[SIGNAL])
    at = next(i for i, t in enumerate(texts) if "`uw_handler+" in t)
    assert texts[at + 1] == "libc.so.6`__restore_rt"
    assert texts[at + 2].startswith("libc.so.6`__pthread_kill_implementation+0x")


def test_frames_without_symbol_or_module(runs: dict[str, Run]) -> None:
    stop = runs["pie"].live[CHAIN]
    main = stop.modules.main
    assert main is not None
    symbolizer = Symbolizer.of(stop.modules)
    assert Symbolizer.of(stop.modules) is symbolizer
    header = symbolizer.frame(main.start)  # the ELF header: mapped, in no symbol
    assert header == Frame(main.start, main.basename, None, main.start - main.bias)
    assert header.text == f"{main.basename}`0x{main.start:x}"
    nowhere = symbolizer.frame(0x10)
    assert nowhere == Frame(0x10, None, None, 0)
    assert str(nowhere) == "0x10"
    assert UserStack(1, (main.start, 0x10), False).frames(symbolizer) == (header, nowhere)
    assert UserStack(1, (0x10,), False).frames() == (nowhere,)
    assert str(UserStack(1, (0x10,), False)) == "0x10"


def test_plt_stubs_are_named(runs: dict[str, Run]) -> None:
    """A pc in a PLT stub (a breakpoint there) is named as objdump names the stub."""
    run = runs["pie"]
    main = run.live[CHAIN].modules.main
    assert main is not None
    listing = subprocess.run(
        ["objdump", "-d", str(run.binary)], capture_output=True, text=True, check=True
    ).stdout
    stub = next(line for line in listing.splitlines() if line.endswith("<qsort@plt>:"))
    address = main.bias + int(stub.split()[0], 16)
    frame = Symbolizer.of(run.live[CHAIN].modules).frame(address + 4)
    assert frame.text == f"{run.binary.name}`qsort@plt+0x4"


def test_vdso_is_a_module(runs: dict[str, Run]) -> None:
    texts = _texts(runs["pie"].live[VDSO])
    assert texts[0].startswith("linux-vdso.so.1`clock_gettime")  # DTrace: the weak alias
    assert texts[1].startswith("libc.so.6`clock_gettime+0x")


def test_callback_from_inside_libc(runs: dict[str, Run]) -> None:
    functions = _functions(runs["nopie"].live[QSORT])
    assert functions[:2] == ["uw_leaf", "uw_compare"]
    assert "qsort_r" in functions
    assert functions[functions.index("qsort_r") + 1] == "uw_sort"


def test_recursion_200_deep_and_the_default_limit(runs: dict[str, Run]) -> None:
    stop = runs["pie"].live[RECURSION]
    assert _functions(stop).count("uw_recurse") == DEPTH + 1
    assert _functions(stop)[-1] == "_start"
    default = stop.default
    assert len(default) == 100
    assert default.pcs == stop.stack.pcs[:100]
    assert not default.complete
    assert default.reason is not None and "limit of 100 frames" in default.reason


def test_non_main_thread(runs: dict[str, Run]) -> None:
    stop = runs["nopie"].live[THREAD]
    assert stop.tid != stop.stack.pid
    assert stop.stack.tid == stop.tid
    assert _functions(stop)[-3:] == [
        "uw_thread",
        "start_thread",
        "clone3",
    ]  # gdb says __clone3: an alias


def test_own_restorer_without_cfi(runs: dict[str, Run]) -> None:
    stop = runs["pie"].live[OWN_RESTORER]
    functions = _functions(stop)
    at = functions.index("uw_handler")
    assert functions[at + 1 : at + 4] == ["uw_restorer", "syscall", "uw_own_restorer"]
    assert functions[-1] == "_start"
    assert stop.stack.complete


def test_cpp_exception_in_flight(runs: dict[str, Run]) -> None:
    """Guard's destructor, inlined into may_throw, inlined into catcher, runs in catcher's
    landing pad (its cold part); libstdc++'s cleanup of the exception object is a local
    function its stripped file has no symbol for, named as DTrace does by address."""
    stops = runs["cpp"].live
    exe = runs["cpp"].binary.name
    cleanup = _texts(stops[CPP_CLEANUP])
    assert cleanup[1].startswith(f"{exe}`_ZL7catcheri.constprop.0.cold+0x")
    assert cleanup[2].startswith(f"{exe}`main+0x")
    dtor = stops[CPP_EXCEPTION_DTOR].stack.symbolize(stops[CPP_EXCEPTION_DTOR].modules)
    assert dtor[1].module == "libstdc++.so.6"
    assert dtor[1].function is None
    assert dtor[1].text == f"libstdc++.so.6`0x{dtor[1].address:x}"
    assert _functions(stops[CPP_BACKTRACE])[1:4] == [
        "_ZL5traceP15_Unwind_ContextPv",
        "_Unwind_Backtrace",
        "_ZL9backtracev",
    ]


def test_stacks_are_aggregation_keys(runs: dict[str, Run]) -> None:
    stops = runs["pie"].live
    stack, again = stops[CHAIN].stack, stops[CHAIN].again
    assert stack == again and hash(stack) == hash(again)
    counts = Counter([stack, again, stops[QSORT].stack])
    assert counts[stack] == 2
    # The reason and the thread are no part of the key.
    assert UserStack(1, (1, 2), False, "at 0x1") == UserStack(1, (1, 2), False, "at 0x2", 7)
    assert UserStack(1, (1, 2), False) != UserStack(1, (1, 2), True)
    assert UserStack(1, (1, 2), True) != UserStack(2, (1, 2), True)


@pytest.mark.parametrize("pattern", ["garbage", "self_pointers"])
def test_damaged_live_stack_is_partial(runs: dict[str, Run], pattern: str) -> None:
    stop = runs["pie"].live[RECURSION]
    damaged = stop.damaged[pattern]
    assert damaged.pcs != stop.stack.pcs
    assert damaged.pcs[:20] == stop.stack.pcs[:20]
    assert not damaged.complete and damaged.reason
    assert len(damaged) < FULL


# ----------------------------------------------------------------------------- broken registers


@pytest.fixture
def at_main(build: Builder, reaper: Reaper) -> Iterator[Tracee]:
    t = Tracee.create([_build(build, "pie")])
    reaper.adopt(t.pid)
    try:
        run_to(t, "main")
        yield t
    finally:
        t.release()


def _ustack_with(t: Tracee, **changes: int) -> UserStack:
    regs = t.registers()
    for name, value in changes.items():
        setattr(regs, name, value)
    t.set_registers(None, regs)
    start = time.perf_counter()
    stack = t.ustack(max_frames=FULL)
    assert time.perf_counter() - start < 1
    return stack


def test_garbage_stack_pointer(at_main: Tracee) -> None:
    rip = at_main.registers().rip
    stack = _ustack_with(at_main, rsp=0x8)
    assert stack.pcs == (rip,)
    assert not stack.complete
    assert stack.reason is not None and "main" not in stack.reason


def test_stack_pointer_into_garbage(at_main: Tracee) -> None:
    """%rsp in readable memory full of junk: a frame or two of nonsense, then a marked end."""
    rsp = at_main.registers().rsp
    junk = rsp - 0x1000
    at_main.write(junk, b"\x41" * 256)
    stack = _ustack_with(at_main, rsp=junk, rbp=junk + 64)
    assert 1 <= len(stack) <= 3
    assert not stack.complete and stack.reason


def test_frame_pointer_cycle_ends(at_main: Tracee) -> None:
    """No unwind tables at the pc, and %rbp names a frame that links to itself."""
    rsp = at_main.registers().rsp
    frame = rsp - 0x1000
    nowhere = 0x1000
    at_main.write(frame, frame.to_bytes(8, "little") + nowhere.to_bytes(8, "little"))
    stack = _ustack_with(at_main, rip=nowhere, rsp=frame - 64, rbp=frame)
    assert stack.pcs == (nowhere, nowhere)
    assert not stack.complete
    assert stack.reason is not None and "no usable frame pointer" in stack.reason


def test_missing_tables(at_main: Tracee) -> None:
    main = at_main.modules.main
    assert main is not None
    pc = main.start + 0x40  # the program headers: in the executable, in no FDE
    stack = _ustack_with(at_main, rip=pc, rbp=0)
    assert stack.pcs == (pc,)
    assert not stack.complete
    assert stack.reason is not None and "no unwind tables" in stack.reason


def test_corrupt_tables(build: Builder, reaper: Reaper) -> None:
    t = Tracee.create([build("uw_cfa_bad")])
    reaper.adopt(t.pid)
    try:
        run_to(t, "main")
        bad = t.lookup("a.out", "uw_bad_opcode")
        assert bad is not None
        stack = _ustack_with(t, rip=bad.address + 1)
    finally:
        t.release()
    assert stack.pcs == (bad.address + 1,)
    assert not stack.complete
    assert stack.reason is not None and "corrupt unwind tables" in stack.reason


def test_pc_in_anonymous_memory_keeps_the_module_map(at_main: Tracee) -> None:
    """A pc in no module re-reads the maps once, and the module map only for a new file."""
    code = at_main.registers().rsp - 0x2000  # "code" on the stack, as a JIT would have it
    at_main.write(code, bytes(16))
    before = at_main.modules
    for _ in range(2):
        stack = _ustack_with(at_main, rip=code, rbp=0)
        assert stack.pcs == (code,) and not stack.complete
        assert at_main.modules is before


def test_library_loaded_since_the_module_map(build: Builder, reaper: Reaper) -> None:
    """run_to() leaves no rtld agent behind, so the map does not follow the dlopen: the
    walk re-reads it when a return address falls in the new library."""
    plugin = build("us_plugin", "-O2", shared=True)
    t = Tracee.create([build("us_dlopen", "-O2"), plugin])
    reaper.adopt(t.pid)
    seen: list[tuple[UserStack, ModuleMap]] = []
    try:
        run_to(t, "main")
        before = t.modules
        assert not [m for m in before if m.path == str(plugin)]
        leaf = t.lookup("a.out", "us_leaf")
        assert leaf is not None
        t.add_breakpoint(leaf.address, lambda tr, tid: seen.append((tr.ustack(tid), tr.modules)))
        t.resume()
        for _ in t.events(timeout=30):
            pass
        assert isinstance(t.end, Exited) and t.end.status == 0
    finally:
        t.release()
    (stack, modules), *_ = seen
    assert modules is not before
    frames = stack.symbolize(modules)
    assert [f.function for f in frames[:3]] == ["us_leaf", "us_plugin_call", "main"]
    assert frames[1].module == plugin.name
    assert stack.complete


class _Recorded:
    """A ProcessSpace that remembers the size of every read."""

    def __init__(self, space: ProcessSpace) -> None:
        self.space = space
        self.module_at = space.module_at
        self.stack_bounds = space.stack_bounds
        self.sizes: list[int] = []

    def read(self, address: int, size: int) -> bytes:
        self.sizes.append(size)
        return self.space.read(address, size)


def test_reads_are_few_and_small(at_main: Tracee) -> None:
    recorded = _Recorded(ProcessSpace(at_main))
    stack = unwind(at_main.registers(), recorded, FULL)
    assert stack.complete
    assert max(recorded.sizes) <= MAX_READ
    assert sum(recorded.sizes) <= 64 * len(stack.frames)
    assert ProcessSpace(at_main).read(at_main.registers().rsp, 1 << 20) == at_main.read(
        at_main.registers().rsp, MAX_READ
    )


def test_max_frames_must_be_positive(at_main: Tracee) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        at_main.ustack(max_frames=0)
    assert len(at_main.ustack(max_frames=1)) == 1


# ----------------------------------------------------------------------------- control layer


def test_process_ustack_from_a_client_thread(
    build: Builder, reaper: Reaper, tmp_path: Path
) -> None:
    depth = 12
    proc = reaper.spawn([build("us_deep", "-O2", "-pthread"), str(depth), "1"])
    wait_until_parked(proc.pid, 2)
    with Tracer() as dt:
        handle = dt.grab(proc.pid)
        try:
            tids = handle.threads
            stacks = {tid: handle.ustack(tid) for tid in tids}
            modules = handle.modules
        finally:
            handle.release()
    assert len(stacks) == 2
    assert attach_backtraces(proc.pid, tmp_path) == {tid: s.pcs for tid, s in stacks.items()}
    for tid, stack in stacks.items():
        assert stack.complete, stack.reason
        functions = [f.function for f in stack.symbolize(modules)]
        assert functions[0] == "pause"
        assert functions[1 : depth + 2] == ["us_recurse"] * (depth + 1)
        if tid == proc.pid:
            assert functions[depth + 2 :] == [
                "main",
                "__libc_start_call_main",
                "__libc_start_main",
                "_start",
            ]
        else:
            assert functions[depth + 2 :] == ["us_thread", "start_thread", "clone3"]
