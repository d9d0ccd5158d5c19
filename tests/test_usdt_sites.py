"""USDT sites on real files and real processes.

Debian's python3.11 (and its libpython, dlopened) against ``readelf -n`` and pyelftools;
a C target with one probe per argument form, whose arguments are evaluated at real hits
and compared with what the program says it passed; semaphores raised and lowered in a
live process; a probe in a library found after the program dlopens it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from conftest import Builder, Reaper
from dtproc import Tracee
from dtproc.breakpoints import BreakpointAction
from dtproc.d import ProbeDescription
from dtproc.errors import ProbeError
from dtproc.probes.context import usdt_arg
from dtproc.probes.sites import ProbeIds, ProbeKind, ProbeSite
from dtproc.probes.usdt import (
    SemaphoreHold,
    UsdtProbeName,
    UsdtProvider,
    dtrace_probe_name,
    usdt_providers,
)
from dtproc.rendezvous import run_to
from dtproc.sdt import SdtArgKind
from rtld_common import finish, made_tracees
from test_sdt import _readelf

PYTHON = "/usr/bin/python3.11"
LIBPYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
U64 = (1 << 64) - 1
SEMAPHORED = ("reg__args", "mem__args", "global__args", "const__args", "inlined")

_tracees = pytest.fixture(made_tracees, name="tracees")


# ---------------------------------------------------------------------- oracles
@dataclass(frozen=True)
class Oracle:
    """What a file says about its probes and symbols, read with pyelftools."""

    path: str

    @contextlib.contextmanager
    def _elf(self) -> Iterator[ELFFile]:
        with open(self.path, "rb") as f:
            yield ELFFile(f)

    def file_offset(self, vaddr: int) -> int:
        with self._elf() as elf:
            for seg in elf.iter_segments("PT_LOAD"):
                if seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                    return int(seg["p_offset"] + vaddr - seg["p_vaddr"])
        raise AssertionError(f"0x{vaddr:x} is not in a file-backed segment of {self.path}")

    def functions_at(self, vaddr: int) -> set[str]:
        """Names of every function symbol containing *vaddr* (aliases included)."""
        names: set[str] = set()
        with self._elf() as elf:
            for name in (".symtab", ".dynsym"):
                table = elf.get_section_by_name(name)
                if not isinstance(table, SymbolTableSection):
                    continue
                for sym in table.iter_symbols():
                    start, size = sym["st_value"], sym["st_size"]
                    if sym["st_info"]["type"] == "STT_FUNC" and start <= vaddr < start + size:
                        names.add(sym.name)
        return names

    def symbol(self, name: str) -> int:
        with self._elf() as elf:
            table = elf.get_section_by_name(".symtab")
            assert isinstance(table, SymbolTableSection)
            found = table.get_symbol_by_name(name)
        assert found, name
        return int(found[0]["st_value"])


def bias_of(pid: int, path: str) -> int:
    """Load bias from /proc/PID/maps: where the file's first page went, less its vaddr."""
    with open(path, "rb") as f:
        first = min(s["p_vaddr"] for s in ELFFile(f).iter_segments("PT_LOAD"))
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[-1] == path and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16) - (first & ~0xFFF)
    raise AssertionError(f"{path} is not mapped in {pid}")


def sites_for(provider: UsdtProvider, text: str, t: Tracee) -> list[ProbeSite]:
    return provider.sites(ProbeDescription.parse(text), t.modules)


# ---------------------------------------------------------------------- python3.11
@dataclass(frozen=True)
class Python:
    pid: int
    tracee: Tracee
    provider: UsdtProvider

    def sites(self, text: str) -> list[ProbeSite]:
        return sites_for(self.provider, text.format(pid=self.pid), self.tracee)


def sleeping_python(reaper: Reaper, setup: str = "pass") -> int:
    """python3.11 asleep once *setup* has run (so it has exec'd and loaded what it should)."""
    code = f"import time; {setup}; print('ready', flush=True); time.sleep(60)"
    proc = reaper.spawn([PYTHON, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc.pid


@pytest.fixture(scope="module")
def python() -> Iterator[Python]:
    """python3.11 asleep, with Debian's libpython dlopened too (its second set of probes)."""
    reaper = Reaper()
    try:
        pid = sleeping_python(reaper, f"import ctypes; ctypes.CDLL({LIBPYTHON!r})")
        t = Tracee.grab(pid, readonly=True)
        try:
            yield Python(pid, t, UsdtProvider(pid, t.read, ProbeIds()))
        finally:
            t.release()
    finally:
        reaper.cleanup()


@pytest.mark.parametrize("path", [PYTHON, LIBPYTHON], ids=["python3.11", "libpython"])
def test_python_sites_match_readelf(python: Python, path: str) -> None:
    started = time.perf_counter()
    sites = python.sites(f"python{{pid}}:{path}::")
    elapsed = time.perf_counter() - started
    oracle = Oracle(path)
    bias = bias_of(python.pid, path)
    notes = _readelf(path)
    assert len(sites) == len(notes) == 8
    for site, (provider, name, pc, _, sem, args) in zip(sites, notes, strict=True):
        assert site.kind is ProbeKind.USDT and site.pid == python.pid
        assert site.info.provider == f"{provider}{python.pid}"
        assert site.info.module == os.path.basename(path)
        assert site.info.name == name.replace("__", "-")
        assert site.address == pc + bias and site.module_bias == bias
        assert site.path == path and site.file_offset == oracle.file_offset(pc)
        assert site.semaphore == sem + bias
        assert site.semaphore_file_offset == oracle.file_offset(sem)
        assert [a.text for a in site.usdt_args] == args.split()
        functions = oracle.functions_at(pc)
        if functions:
            assert site.info.function in functions
            assert site.function_address <= site.address
        else:
            assert site.info.function == "" and site.function_address == site.address
    print(f"\n{len(sites)} sites of {os.path.basename(path)} in {elapsed * 1e3:.1f} ms")


def test_python_functions(python: Python) -> None:
    """libpython has dynamic symbols around some probes; the stripped executable has none."""
    named = {(s.info.module, s.info.function, s.info.name) for s in python.sites("python{pid}:::")}
    lib = os.path.basename(LIBPYTHON)
    assert (lib, "_PyEval_EvalFrameDefault", "line") in named
    assert (lib, "PyImport_ImportModuleLevelObject", "import-find-load-start") in named
    assert all(f == "" for m, f, _ in named if m == "python3.11")


def test_python_globs_and_names(python: Python) -> None:
    lib = os.path.basename(LIBPYTHON)

    def found(text: str) -> list[tuple[str, str]]:
        return sorted((s.info.module, s.info.name) for s in python.sites(text))

    both = sorted(["python3.11", lib])
    assert found("python*:::function-*") == sorted(
        (m, n) for m in both for n in ("function-entry", "function-return")
    )
    assert found("*:::gc-start") == [(m, "gc-start") for m in both]
    assert found("python{pid}::PyImport_*:") == [
        (lib, "import-find-load-done"),
        (lib, "import-find-load-start"),
    ]
    for module in ("libpython*", lib, LIBPYTHON, "libpython3.11", "*python3.11.so*"):
        hits = found(f"python{{pid}}:{module}::")
        assert len(hits) == 8 and {m for m, _ in hits} == {lib}, module
    for module in ("a.out", "python3.11", PYTHON):
        hits = found(f"python{{pid}}:{module}::")
        assert len(hits) == 8 and {m for m, _ in hits} == {"python3.11"}, module
    assert found("python{pid}:::function__entry") == []  # only dtrace's spelling
    assert found(f"python{python.pid + 1}:::") == []
    assert found("pid{pid}:::") == []
    assert found("python:::") == []  # the provider carries the pid


def test_python_probe_ids(python: Python) -> None:
    first = {str(s.info): s.info.id for s in python.sites("python{pid}:::")}
    again = {str(s.info): s.info.id for s in python.sites("python{pid}::*:*")}
    assert first == again and len(set(first.values())) == 16


def test_python_listing(python: Python) -> None:
    rows = usdt_providers(python.tracee.modules)
    lib = os.path.basename(LIBPYTHON)
    expected = [
        UsdtProbeName(p, os.path.basename(path), "", dtrace_probe_name(n), len(args.split()))
        for path in (PYTHON, LIBPYTHON)
        for p, n, _, _, _, args in _readelf(path)
    ]
    strip = [r._replace(function="") for r in rows]
    assert strip == expected
    assert UsdtProbeName("python", lib, "_PyEval_EvalFrameDefault", "line", 3) in rows


# ---------------------------------------------------------------------- the C target
@dataclass(frozen=True)
class Target:
    exe: Path
    plugin: Path
    pie: bool


@pytest.fixture(scope="module", params=["pie", "nopie"])
def target(build: Builder, request: pytest.FixtureRequest) -> Target:
    pie = request.param == "pie"
    flags = () if pie else ("-no-pie", "-fno-pie")
    exe = build("usdt_args", "-O2", *flags, suffix=f"-{request.param}")
    return Target(exe, build("usdt_plugin", "-O2", shared=True), pie)


def start(tracees: list[Tracee], argv: list[str | Path], out: Path) -> Tracee:
    """The program, stopped at main, its output going to *out*."""
    with out.open("wb") as f:
        t = Tracee.create(argv, stdout=f)
    tracees.append(t)
    run_to(t, "main")
    return t


def test_c_sites(target: Target, tracees: list[Tracee], tmp_path: Path) -> None:
    t = start(tracees, [target.exe], tmp_path / "out")
    provider = UsdtProvider(t.pid, t.read, ProbeIds())
    sites = sites_for(provider, f"usdtest{t.pid}:::", t)
    oracle = Oracle(str(target.exe))
    main = t.modules.main
    assert main is not None
    bias = main.bias
    assert (bias == 0) is not target.pie
    assert sorted((s.info.function, s.info.name) for s in sites) == [
        ("main", "inlined"),
        ("main", "inlined"),
        ("usdt_consts", "const-args"),
        ("usdt_globals", "global-args"),
        ("usdt_mem", "mem-args"),
        ("usdt_other", "inlined"),
        ("usdt_regs", "reg-args"),
    ]
    inlined = [s for s in sites if s.info.name == "inlined"]
    in_main = [s.info.id for s in inlined if s.info.function == "main"]
    in_other = [s.info.id for s in inlined if s.info.function == "usdt_other"]
    assert in_main[0] == in_main[1] != in_other[0]
    for site in sites:
        note_name = site.info.name.replace("-", "__")
        sem = oracle.symbol(f"usdtest_{note_name}_semaphore")
        assert site.semaphore == sem + bias
        assert site.semaphore_file_offset == oracle.file_offset(sem)
        assert site.function_address == oracle.symbol(site.info.function) + bias
        assert site.file_offset == oracle.file_offset(site.address - bias)
        assert site.info.module == target.exe.name and site.info.provider == f"usdtest{t.pid}"
    by_name = {s.info.name: s.usdt_args for s in sites}
    assert all(a.kind is SdtArgKind.REGISTER for a in by_name["reg-args"])
    assert all(a.kind is SdtArgKind.MEMORY and a.register for a in by_name["mem-args"])
    assert by_name["mem-args"][2].index is not None  # r->arr[i]: base, index, scale
    global_ = oracle.symbol("usdt_global") + bias
    for arg in by_name["global-args"]:  # sym(%rip): now an absolute address
        assert arg.kind is SdtArgKind.MEMORY and arg.symbol is None and arg.register is None
    assert by_name["global-args"][0].displacement == global_
    assert by_name["global-args"][1].displacement == oracle.symbol("usdt_hidden") + bias
    if not target.pie:
        table = oracle.symbol("usdt_table") + bias
        assert by_name["global-args"][2].displacement == table + 16  # usdt_table+16(%rip)
    consts = by_name["const-args"]
    assert [(a.kind, a.constant, a.symbol) for a in consts] == [
        (SdtArgKind.CONSTANT, -7, None),
        (SdtArgKind.CONSTANT, 42, None),
        (SdtArgKind.CONSTANT, global_, None),  # $usdt_global
    ]
    # The module field as for pid: a.out, basename, full path, globs.
    for module in ("a.out", target.exe.name, str(target.exe), "usdt_args*"):
        assert len(sites_for(provider, f"usdtest{t.pid}:{module}::", t)) == 7, module
    assert sites_for(provider, f"usdtest{t.pid}:libc.so.6::", t) == []
    assert len(sites_for(provider, f"usdtest{t.pid}::usdt_*:", t)) == 5
    assert len(sites_for(provider, "usdtest*::main:inlined", t)) == 2


def _values(output: str) -> list[tuple[str, tuple[int, ...]]]:
    """The probes the program reports passing, in order: (name, values as u64)."""
    rows = [line.split() for line in output.splitlines()]
    return [(r[0], tuple(int(v) & U64 for v in r[1:])) for r in rows if r[0] != "sem"]


def _semaphores(output: str) -> list[list[int]]:
    return [[int(v) for v in line.split()[1:]] for line in output.splitlines() if "sem" in line]


class Recorder:
    """Breakpoint callbacks that evaluate a site's arguments at each hit."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, tuple[int, ...]]] = []

    def add(self, t: Tracee, site: ProbeSite) -> None:
        def hit(tracee: Tracee, tid: int) -> None:
            regs = tracee.registers(tid)
            assert regs.rip == site.address

            def read_u64(address: int) -> int:
                return int.from_bytes(tracee.read(address, 8), "little")

            n = len(site.usdt_args)
            args = tuple(usdt_arg(site.usdt_args, i, regs, read_u64) for i in range(n))
            self.hits.append((site.info.name, args))

        t.add_breakpoint(site.address, hit)


def test_args_semaphores_and_dlopen(target: Target, tracees: list[Tracee], tmp_path: Path) -> None:
    """Enable every probe at main: the program sees its semaphores at 1 and passes values
    we read at the hits; disable them at a checkpoint: it sees 0. After it dlopens the
    plugin, the plugin's probe is found among the new modules alone and fires too."""
    out = tmp_path / "out"
    t = start(tracees, [target.exe, target.plugin], out)
    provider = UsdtProvider(t.pid, t.read, ProbeIds())
    sites = sites_for(provider, f"usdtest{t.pid}:::", t)
    hold = SemaphoreHold(t.pid, t.read, t.write)
    recorder = Recorder()
    for site in sites:
        assert hold.acquire(site)
        recorder.add(t, site)

    def semaphore(site: ProbeSite) -> int:
        return int.from_bytes(t.read(site.semaphore, 2), "little")

    assert {semaphore(s) for s in sites} == {1}
    assert hold.holds(next(s for s in sites if s.info.name == "inlined").semaphore) == 3
    before = set(t.modules)
    plugin_sites: list[ProbeSite] = []

    def checkpoint(tracee: Tracee, tid: int) -> BreakpointAction | None:
        phase = tracee.registers(tid).rdi
        if phase == 1:  # the probes have run: disable them
            for site in sites:
                assert hold.release(site)
            assert {semaphore(s) for s in sites} == {0}
        else:  # the plugin is loaded
            new = [m for m in tracee.refresh_modules() if m not in before]
            assert [m.path for m in new] == [str(target.plugin)]
            desc = ProbeDescription.parse(f"usdtplug{tracee.pid}:::plugin-run")
            assert provider.sites(desc, tracee.modules, only=[]) == []
            plugin_sites.extend(provider.sites(desc, tracee.modules, only=new))
            for site in plugin_sites:
                recorder.add(tracee, site)
        return None

    checkpoint_fn = t.lookup(None, "usdt_checkpoint")
    assert checkpoint_fn is not None
    t.add_breakpoint(checkpoint_fn.address, checkpoint)
    assert finish(t).status == 0
    output = out.read_text()
    assert _semaphores(output) == [[1] * 5, [0] * 5]
    assert recorder.hits == _values(output)
    assert [h[0] for h in recorder.hits][-1] == "plugin-run"
    [site] = plugin_sites
    assert (site.info.module, site.info.function) == (target.plugin.name, "usdt_plugin_run")
    assert site.semaphore == 0 and site.semaphore_file_offset == 0
    assert not hold.acquire(site)  # nothing to hold


def test_semaphore_hold_edges(target: Target, tracees: list[Tracee], tmp_path: Path) -> None:
    """Counts are read and written back (someone else's hold survives ours); a release
    without an acquire does nothing; a process that is gone is not an error."""
    t = start(tracees, [target.exe], tmp_path / "out")
    provider = UsdtProvider(t.pid, t.read, ProbeIds())
    [site] = sites_for(provider, f"usdtest{t.pid}:::reg-args", t)
    [other] = sites_for(provider, f"usdtest{t.pid}:::mem-args", t)

    def value(s: ProbeSite) -> int:
        return int.from_bytes(t.read(s.semaphore, 2), "little")

    hold = SemaphoreHold(t.pid, t.read, t.write)
    assert not hold.release(site)
    t.write(site.semaphore, (1).to_bytes(2, "little"))  # another tracer's hold
    assert hold.acquire(site) and hold.acquire(site) and value(site) == 2
    assert hold.release(site) and value(site) == 2 and hold.holds(site.semaphore) == 1
    assert hold.release(site) and value(site) == 1
    assert not hold.release(site)
    assert hold.acquire(other) and value(other) == 1
    hold.forget(other.semaphore, other.semaphore + 2)  # e.g. its library was unloaded
    assert hold.holds(other.semaphore) == 0 and value(other) == 1
    assert hold.acquire(site) and hold.acquire(other)
    hold.release_all()
    assert (value(site), value(other)) == (1, 1)
    assert hold.acquire(site)
    t.kill()
    assert hold.release(site) and hold.holds(site.semaphore) == 0


def test_semaphore_needs_control(reaper: Reaper) -> None:
    """A read-only grab cannot write: enabling says which probe and why."""
    t = Tracee.grab(sleeping_python(reaper), readonly=True)
    try:
        provider = UsdtProvider(t.pid, t.read, ProbeIds())
        [site] = sites_for(provider, f"python{t.pid}:::gc-start", t)
        hold = SemaphoreHold(t.pid, t.read, t.write)
        with pytest.raises(ProbeError, match=f"pid {t.pid}: .*gc-start"):
            hold.acquire(site)
        assert hold.holds(site.semaphore) == 0
    finally:
        t.release()


def test_stripped_target(build: Builder, tracees: list[Tracee]) -> None:
    """Without symbols sites have no function, and specs that name a symbol cannot be used:
    matching such a probe says which argument and symbol."""
    exe = build("usdt_args", "-O2", "-s", suffix="-stripped")
    t = Tracee.create([exe])  # stopped at its exec: the executable is mapped
    tracees.append(t)
    provider = UsdtProvider(t.pid, t.read, ProbeIds())
    sites = [
        site
        for name in ("reg-args", "mem-args", "inlined")
        for site in sites_for(provider, f"usdtest{t.pid}:::{name}", t)
    ]
    assert len(sites) == 5
    assert all(s.info.function == "" and s.function_address == s.address for s in sites)
    for name, symbol in (("global-args", "usdt_global"), ("const-args", "usdt_global")):
        with pytest.raises(ProbeError, match=f"{name}: argument .* '{symbol}'"):
            sites_for(provider, f"usdtest{t.pid}:::{name}", t)
    rows = usdt_providers(t.modules)  # listing needs no argument symbols
    assert ("usdtest", exe.name, "", "global-args", 2) in rows
