"""The rtld agent on real processes: r_debug, link_map and namespaces, dlopen/dlclose events."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from conftest import Builder, Reaper
from dtproc import Tracee
from dtproc.breakpoints import Breakpoint
from dtproc.events import Exec
from dtproc.modules import VDSO, ModuleMap
from dtproc.rendezvous import run_to
from dtproc.rtld import ModulesChanged, RState, RtldAgent
from rtld_common import finish, made_tracees

STRESS = os.environ.get("DTPROC_STRESS") == "1"
LOOPS = 5000 if STRESS else 1000
THREAD_LOOPS = 1000 if STRESS else 100
LIBC = "libc.so.6"


# ---------------------------------------------------------------------- targets
@pytest.fixture(scope="module")
def plugins(build: Builder) -> list[Path]:
    return [build("rtld_plugin", "-O1", f"-DPLUGIN_ID={i}", shared=True) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def loop(build: Builder) -> Path:
    return build("rtld_loop", "-O1", "-pthread")


@pytest.fixture(scope="module")
def marked(build: Builder) -> Path:
    lib = build("rtld_marklib", shared=True)
    return build("rtld_markers", "-Wl,--no-as-needed", str(lib))


@pytest.fixture
def out(tmp_path: Path) -> Iterator[BinaryIO]:
    """A file for a created program's standard output."""
    with open(tmp_path / "stdout", "w+b") as f:
        yield f


_tracees = pytest.fixture(made_tracees, name="tracees")


# ---------------------------------------------------------------------- oracles
def maps_objects(pid: int) -> set[tuple[str, int]]:
    """The ELF objects mapped, from /proc/PID/maps alone: (path, start of its offset-0 map)."""
    out: set[tuple[str, int]] = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or int(fields[2], 16) != 0 or int(fields[4]) == 0:
                continue
            path = fields[5].rstrip("\n")
            if path.startswith("/") and is_elf(path):
                out.add((path, int(fields[0].split("-")[0], 16)))
    return out


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def module_objects(modules: ModuleMap) -> set[tuple[str, int]]:
    return {(m.path, m.start) for m in modules if m.path != VDSO}


def link_map_objects(agent: RtldAgent) -> set[tuple[str, int]]:
    """(real path, load bias) of each library on the link_map lists (all namespaces)."""
    return {
        (os.path.realpath(e.name), e.base)
        for e in agent.link_map()
        if e.name.startswith("/")  # not the executable (""), not the vDSO
    }


def library_biases(modules: ModuleMap) -> set[tuple[str, int]]:
    return {(m.path, m.bias) for m in modules if not m.is_main and m.path != VDSO}


def thread_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class Watcher:
    """A subscriber that checks every consistent point and breaks in each plugin it sees load.

    plugin_work's breakpoint is emulated (push), plugin_count's runs out of line (rip-relative).
    """

    FUNCTIONS = ("plugin_work", "plugin_count")

    def __init__(self, t: Tracee, agent: RtldAgent, plugins: list[Path]) -> None:
        self.t = t
        self.agent = agent
        self.plugins = {str(p) for p in plugins}
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()
        self.hits: Counter[tuple[str, str]] = Counter()
        self.live: dict[str, list[Breakpoint]] = {}
        self.states: list[RState] = []
        agent.subscribe(self.on_change)
        agent.on_state(self.on_state)

    def on_state(self, state: RState) -> None:
        self.states.append(state)

    def on_change(self, change: ModulesChanged) -> None:
        pid = self.t.pid
        assert thread_state(pid, change.tid) == "t"  # stopped at r_brk while we look
        assert module_objects(change.modules) == maps_objects(pid)
        assert module_objects(self.t.modules) == maps_objects(pid)
        assert link_map_objects(self.agent) == library_biases(change.modules)
        for mod in change.removed:
            if mod.path in self.plugins:
                self.unloads[mod.path] += 1
                assert not any(bp.active for bp in self.live.pop(mod.path))  # gone with the pages
        for mod in change.added:
            if mod.path in self.plugins:
                self.loads[mod.path] += 1
                self.live[mod.path] = [self.break_on(mod.path, fn) for fn in self.FUNCTIONS]

    def break_on(self, path: str, function: str) -> Breakpoint:
        sym = self.t.lookup(path, function)
        assert sym is not None and sym.module == os.path.basename(path)

        def hit(tracee: Tracee, tid: int) -> None:
            self.hits[path, function] += 1

        return self.t.add_breakpoint(sym.address, hit)

    def calls(self) -> dict[str, int]:
        """Hits per plugin, once it is checked that both functions were hit as often."""
        work = {p: n for (p, fn), n in self.hits.items() if fn == "plugin_work"}
        count = {p: n for (p, fn), n in self.hits.items() if fn == "plugin_count"}
        assert work == count
        return work


def watched_from_main(
    tracees: list[Tracee], argv: list[str | Path], out: BinaryIO, plugins: list[Path]
) -> tuple[Tracee, RtldAgent, Watcher]:
    """Create, run to main, attach an agent there and watch it."""
    t = Tracee.create(argv, stdout=out)
    tracees.append(t)
    run_to(t, "main")
    agent = RtldAgent(t)
    assert agent.attach()
    return t, agent, Watcher(t, agent, plugins)


def plain_output(argv: list[str | Path]) -> bytes:
    return subprocess.run([str(a) for a in argv], capture_output=True, check=True).stdout


# ---------------------------------------------------------------------- r_debug, link_map
@pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
def test_link_map_matches_maps(
    build: Builder, plugins: list[Path], tracees: list[Tracee], pie: bool
) -> None:
    flags = ["-O1", "-pthread"] + ([] if pie else ["-no-pie", "-fno-pie"])
    exe = build("rtld_loop", *flags, suffix="-pie" if pie else "-nopie")
    t = Tracee.create([exe, "loop", "1", plugins[0]], stdout=subprocess.DEVNULL)
    tracees.append(t)
    run_to(t, "main")
    agent = RtldAgent(t)
    assert agent.attach()
    ld = next(m for m in t.modules if m.name.startswith("ld-linux"))
    r_debug = t.lookup(ld.path, "_r_debug")
    assert r_debug is not None and agent.r_debug == r_debug.address  # found through DT_DEBUG
    dl_debug_state = t.lookup(ld.path, "_dl_debug_state")
    assert dl_debug_state is not None and agent.r_brk == dl_debug_state.address
    (base,) = agent.namespaces()
    assert base.version == 1 and base.state == RState.CONSISTENT and base.next == 0
    entries = agent.link_map()
    assert entries[0].name == "" and entries[0].base == (t.modules.main.bias if pie else 0)  # type: ignore[union-attr]
    assert {e.namespace for e in entries} == {0}
    assert "linux-vdso.so.1" in {e.name for e in entries}
    assert link_map_objects(agent) == library_biases(t.modules)
    assert module_objects(t.modules) == maps_objects(t.pid)
    finish(t)


def test_from_the_exec_stop_startup_libraries_are_reported(
    marked: Path, tracees: list[Tracee]
) -> None:
    t = Tracee.create([marked])
    tracees.append(t)
    agent = RtldAgent(t)
    assert agent.attach()  # ld.so has not run: r_debug from its symbol, r_brk likewise
    assert {m.name for m in t.modules} == {marked.name, VDSO, "ld-linux-x86-64.so.2"}
    seen: list[tuple[set[str], set[str], str]] = []

    def on_change(change: ModulesChanged) -> None:
        malloc = t.lookup(LIBC, "malloc")  # symbol tables are there at the consistent point
        assert malloc is not None
        names = ({m.name for m in change.added}, {m.name for m in change.removed})
        seen.append((*names, t.symbolize(malloc.address)))

    states: list[RState] = []
    agent.subscribe(on_change)
    agent.on_state(states.append)
    assert finish(t).status == 0
    assert seen == [({LIBC, marked_lib_name(t, marked)}, set(), "libc.so.6`malloc")]
    assert states == [RState.ADD, RState.CONSISTENT]


def marked_lib_name(t: Tracee, marked: Path) -> str:
    from dtproc.elf import ElfFile

    (lib,) = [n for n in ElfFile.open(marked).needed if n.startswith("/")]
    return os.path.basename(lib)


# ---------------------------------------------------------------------- dlopen / dlclose
def test_dlopen_dlclose_loop_every_change_reported(
    loop: Path, plugins: list[Path], tracees: list[Tracee], out: BinaryIO
) -> None:
    """The issue's loop: every load and unload, module list == maps at each consistent point,
    and a breakpoint placed on each load fires on each load (DTPROC_STRESS=1: 1,000)."""
    argv: list[str | Path] = [loop, "loop", str(LOOPS), *plugins]
    t, agent, w = watched_from_main(tracees, argv, out, plugins)
    started = time.perf_counter()
    assert finish(t).status == 0
    elapsed = time.perf_counter() - started
    per_plugin = dict(Counter(str(plugins[i % len(plugins)]) for i in range(LOOPS)))
    assert dict(w.loads) == per_plugin and dict(w.unloads) == per_plugin
    assert w.calls() == per_plugin
    assert w.states == [RState.ADD, RState.CONSISTENT, RState.DELETE, RState.CONSISTENT] * LOOPS
    assert agent.consistent_points == 2 * LOOPS and agent.hits == 4 * LOOPS
    assert [bp.address for bp in t.breakpoints] == [agent.r_brk]
    out.seek(0)
    assert out.read() == plain_output(argv)
    print(f"\n{LOOPS} dlopen+dlclose under the agent: {elapsed * 1e6 / LOOPS:.0f} us each")


def test_grabbed_process_later_dlopen_reported(
    loop: Path, plugins: list[Path], reaper: Reaper, tracees: list[Tracee]
) -> None:
    n = 6
    p = reaper.spawn(
        [loop, "wait", str(n), *plugins[:2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert p.stdin is not None and p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    t = Tracee.grab(p.pid)
    tracees.append(t)
    agent = RtldAgent(t)
    assert agent.attach()
    assert agent.r_debug and agent.namespaces()[0].r_brk == agent.r_brk
    w = Watcher(t, agent, plugins)
    t.resume()
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert finish(t).status == 0
    expected = {str(plugins[0]): n // 2, str(plugins[1]): n // 2}
    assert dict(w.loads) == dict(w.unloads) == w.calls() == expected
    assert p.wait(10) == 0
    assert p.stdout.read().startswith(b"sum ")


def test_dlopen_from_other_threads(
    loop: Path, plugins: list[Path], tracees: list[Tracee], out: BinaryIO
) -> None:
    """Three threads load and unload at once, none of them the main thread."""
    argv: list[str | Path] = [loop, "threads", str(THREAD_LOOPS), *plugins]
    t, agent, w = watched_from_main(tracees, argv, out, plugins)
    assert finish(t).status == 0
    per_plugin = {str(p): THREAD_LOOPS for p in plugins}
    assert dict(w.loads) == dict(w.unloads) == w.calls() == per_plugin
    assert agent.consistent_points == 2 * 3 * THREAD_LOOPS
    out.seek(0)
    assert out.read() == plain_output(argv)


# ---------------------------------------------------------------------- namespaces
def spawn_holding(reaper: Reaper, loop: Path, libs: list[Path]) -> subprocess.Popen[bytes]:
    """A process with each of *libs* dlmopen'ed into a namespace of its own, waiting."""
    p = reaper.spawn([loop, "hold", "1", *libs], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    assert p.stdout.readline() == b"loaded\n"
    return p


def test_dlmopen_namespaces_on_the_r_next_chain(
    loop: Path, plugins: list[Path], reaper: Reaper, tracees: list[Tracee]
) -> None:
    p = spawn_holding(reaper, loop, plugins[:2])
    t = Tracee.grab(p.pid)
    tracees.append(t)
    agent = RtldAgent(t)
    assert agent.attach()
    spaces = agent.namespaces()
    assert spaces[0].version == 2  # bumped when the second namespace came
    assert len(spaces) == 3 and all(rd.r_brk == agent.r_brk for rd in spaces)
    by_ns: dict[int, list[str]] = {}
    for e in agent.link_map():
        by_ns.setdefault(e.namespace, []).append(os.path.basename(e.name))
    assert by_ns[0][0] == "" and LIBC in by_ns[0]
    for ns, plugin in ((1, plugins[0]), (2, plugins[1])):
        assert by_ns[ns][0] == plugin.name and LIBC in by_ns[ns]
        assert "ld-linux-x86-64.so.2" in by_ns[ns]  # ld.so's proxy
    libcs = {e.base for e in agent.link_map() if os.path.basename(e.name) == LIBC}
    mapped = {start for path, start in maps_objects(t.pid) if os.path.basename(path) == LIBC}
    assert len(libcs) == 3 and libcs == mapped  # one libc per namespace, each its own copy
    reader = Tracee.grab(p.pid, readonly=True)  # no breakpoints, so no attach: locate
    tracees.append(reader)
    ro = RtldAgent(reader)
    assert ro.locate() and not ro.attached
    assert ro.link_map() == agent.link_map()
    t.release()
    tracees.remove(t)
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.wait(10) == 0


def test_dlmopen_loop_keeps_breakpoints_in_the_base_libc(
    loop: Path, plugins: list[Path], tracees: list[Tracee]
) -> None:
    """Each dlmopen maps another libc: breakpoints in the first one must survive it."""
    n = 30
    t = Tracee.create([loop, "newlm", str(n), plugins[0]], stdout=subprocess.DEVNULL)
    tracees.append(t)
    run_to(t, "main")
    agent = RtldAgent(t)
    assert agent.attach()
    dlsym = t.lookup(LIBC, "dlsym")
    assert dlsym is not None
    calls = t.add_breakpoint(dlsym.address, lambda tr, tid: None)
    loads: Counter[str] = Counter()

    def on_change(change: ModulesChanged) -> None:
        loads.update(m.path for m in change.added if m.path == str(plugins[0]))
        loads.update("-" + m.path for m in change.removed if m.path == str(plugins[0]))
        assert calls.active

    agent.subscribe(on_change)
    assert finish(t).status == 0
    assert loads == {str(plugins[0]): n, "-" + str(plugins[0]): n}
    assert calls.hits == n
    assert agent.consistent_points == 2 * n


def test_dlmopen_copies_are_separate_modules(
    loop: Path, plugins: list[Path], reaper: Reaper, tracees: list[Tracee]
) -> None:
    p = spawn_holding(reaper, loop, plugins[:2])
    t = Tracee.grab(p.pid, readonly=True)
    tracees.append(t)
    libcs = t.modules.named(LIBC)
    assert sorted(m.start for m in libcs) == sorted(
        start for path, start in maps_objects(p.pid) if os.path.basename(path) == LIBC
    )


# ---------------------------------------------------------------------- static, exec
def test_static_executables(build: Builder, plugins: list[Path], tracees: list[Tracee]) -> None:
    """Stripped static: no rtld at all. Static with dlopen: its own r_debug, reported."""
    stripped = build("rtld_loop", "-O1", "-static", "-s", suffix="-static-s")
    t = Tracee.create([stripped, "loop", "1", plugins[0]], stdout=subprocess.DEVNULL)
    tracees.append(t)
    agent = RtldAgent(t)
    assert not agent.attach() and agent.r_brk == 0 and not agent.attached
    assert finish(t).status == 0

    static = build("rtld_loop", "-O1", "-static", suffix="-static")
    n = 3
    t = Tracee.create([static, "loop", str(n), plugins[0]], stdout=subprocess.DEVNULL)
    tracees.append(t)
    agent = RtldAgent(t)
    assert agent.attach()
    assert agent.r_brk == t.lookup("a.out", "_dl_debug_state").address  # type: ignore[union-attr]
    assert agent.namespaces()[0].version == 0  # nothing dlopened yet: r_debug still empty
    w = Watcher(t, agent, plugins)
    assert finish(t).status == 0
    assert dict(w.loads) == dict(w.unloads) == w.calls() == {str(plugins[0]): n}
    assert w.states == [RState.ADD, RState.CONSISTENT, RState.DELETE, RState.CONSISTENT] * n


def test_attach_again_after_exec(build: Builder, marked: Path, tracees: list[Tracee]) -> None:
    t = Tracee.create([marked, "1"])  # re-execs itself once
    tracees.append(t)
    agent = RtldAgent(t)
    assert agent.attach()
    added: list[set[str]] = []
    agent.subscribe(lambda change: added.append({m.name for m in change.added}))
    t.stop_on_exec = True
    t.resume()
    event = next(ev for ev in t.events() if isinstance(ev, Exec))
    assert event.pid == t.pid and not agent.attached
    assert agent.attach() and agent.attached
    assert agent.attach()  # idempotent: one breakpoint
    assert [bp.address for bp in t.breakpoints] == [agent.r_brk]
    assert finish(t).status == 0
    lib = marked_lib_name(t, marked)
    assert added == [{LIBC, lib}, {LIBC, lib}]
