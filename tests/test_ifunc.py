"""IFUNC resolution on real processes, with the program itself, gdb and a breakpoint as oracles."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Builder, Reaper, have
from dtproc import Tracee
from dtproc.events import BreakpointHit
from dtproc.ifunc import IfuncResolver, IfuncSource, IfuncTarget, resolve_ifunc
from dtproc.modules import Symbol

# Called through lazy PLT slots before "ready": resolvable both ways.
CALLED = {"strlen": ("__strlen_",), "memcpy": ("__memmove_", "__memcpy_"), "strchr": ("__strchr_",)}


@pytest.fixture(scope="module", params=["pie", "nopie"])
def target(build: Builder, request: pytest.FixtureRequest) -> Path:
    flags = ("-pie", "-fPIE") if request.param == "pie" else ("-no-pie",)
    return build("ifunc_user", "-O2", *flags)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    tracee: Tracee
    printed: dict[str, int]

    def symbol(self, name: str) -> Symbol:
        sym = self.tracee.lookup("libc.so.6", name)
        assert sym is not None, name
        return sym

    def resolver(self) -> IfuncResolver:
        return IfuncResolver(self.tracee.modules, self.tracee.read)

    def go(self) -> bytes:
        """Let the program call strstr (for the first time) and strlen again."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"g")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()


@pytest.fixture
def running(target: Path, reaper: Reaper) -> Iterator[Running]:
    """The target at "ready", held by a read-only grab (which leaves room for gdb)."""
    proc = reaper.spawn([target], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("ready 12 5 "), line
    printed = {k: int(v, 16) for k, v in re.findall(r"(\w+)=(0x[0-9a-f]+)", line)}
    tracee = Tracee.grab(proc.pid, readonly=True)
    try:
        yield Running(proc, tracee, printed)
    finally:
        tracee.release()


def _check(found: IfuncTarget | None, prefixes: tuple[str, ...], sym: Symbol) -> IfuncTarget:
    assert found is not None, sym.name
    assert found.module == "libc.so.6" and found.offset == 0
    assert found.name is not None and found.name.startswith(prefixes), found
    assert found.resolver == sym.address != found.address
    assert found.label == f"libc.so.6`{found.name}"
    return found


def test_irelative_and_bound_slots_agree(running: Running) -> None:
    resolver = running.resolver()
    for name, prefixes in CALLED.items():
        sym = running.symbol(name)
        assert sym.is_ifunc
        irelative = _check(resolver.via_irelative(sym), prefixes, sym)
        bound = _check(resolver.via_bound_got(sym), prefixes, sym)
        assert irelative.source is IfuncSource.IRELATIVE and bound.source is IfuncSource.BOUND_GOT
        assert irelative.address == bound.address
        assert resolver.resolve(sym) == irelative  # IRELATIVE is asked first
        # The bound slot is the executable's own JUMP_SLOT (libc has no GOT entry for these).
        main = running.tracee.modules.main
        assert main is not None and main.contains(bound.slot)
    # An alias binds the same: index is strchr's other name.
    index = resolver.resolve(running.symbol("index"))
    strchr = resolver.resolve(running.symbol("strchr"))
    assert index is not None and strchr is not None and index.address == strchr.address


def test_glob_dat_slots_match_what_the_program_printed(running: Running) -> None:
    """Taking an IFUNC's address binds a GLOB_DAT slot to the implementation (gcc 12 goes
    through the GOT for that in non-PIE code too)."""
    resolver = running.resolver()
    wcsrchr = running.symbol("wcsrchr")
    assert resolver.via_irelative(wcsrchr) is None  # libc never calls wcsrchr itself
    found = _check(resolver.resolve(wcsrchr), ("__wcsrchr_",), wcsrchr)
    assert found.source is IfuncSource.BOUND_GOT and found.address == running.printed["wcsrchr"]
    strrchr = running.symbol("strrchr")
    both = (resolver.via_irelative(strrchr), resolver.via_bound_got(strrchr))
    assert {_check(t, ("__strrchr_",), strrchr).address for t in both} == {
        running.printed["strrchr"]
    }


def test_unbound_lazy_slot_is_no_answer_until_the_first_call(running: Running) -> None:
    resolver = running.resolver()
    strstr = running.symbol("strstr")
    assert resolver.resolve(strstr) is None  # no IRELATIVE; the exe's slot points at its PLT
    assert resolver.resolve(running.symbol("strncat")) is None  # never bound by anyone
    malloc = running.symbol("malloc")
    assert not malloc.is_ifunc and resolver.resolve(malloc) is None
    assert running.go() == b"done 1 11\n"
    found = _check(resolver.resolve(strstr), ("__strstr_",), strstr)
    assert found.source is IfuncSource.BOUND_GOT
    again = resolve_ifunc(running.tracee.refresh_modules(), running.tracee.read, strstr)
    assert again == found


def test_static_binary_has_its_own_irelative_slots(build: Builder, reaper: Reaper) -> None:
    """A static program applies IRELATIVE relocations itself; address-of goes through them."""
    exe = build("ifunc_user", "-O2", "-static")
    proc = reaper.spawn([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    printed = dict(re.findall(r"(\w+)=(0x[0-9a-f]+)", proc.stdout.readline().decode()))
    with Tracee.grab(proc.pid, readonly=True) as t:
        resolver = IfuncResolver(t.modules, t.read)
        for name in ("wcsrchr", "strrchr", "strlen"):
            sym = t.lookup("a.out", name)
            assert sym is not None and sym.is_ifunc
            found = resolver.resolve(sym)
            assert found is not None and found.source is IfuncSource.IRELATIVE
            assert found.module == exe.name and (found.name or "").startswith(f"__{name}_")
            if name in printed:
                assert found.address == int(printed[name], 16)


@pytest.mark.skipif(not have("gdb"), reason="gdb is not installed")
def test_matches_gdb(running: Running) -> None:
    """gdb reads the executable's GOT (``'strlen@got.plt'``) and names what it points to."""
    running.go()
    names = [*CALLED, "strstr"]
    resolver = running.resolver()
    ours = {name: resolver.resolve(running.symbol(name)) for name in names}
    args = ["gdb", "-nx", "-batch", "-p", str(running.proc.pid)]
    for name in names:
        args += ["-ex", f"p/a *(void**)&'{name}@got.plt'"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    got = re.findall(r"^\$\d+ = (0x[0-9a-f]+) <([^>+]+)>", out, re.M)
    assert len(got) == len(names), out
    for name, (address, label) in zip(names, got, strict=True):
        found = ours[name]
        assert found is not None and found.address == int(address, 16), (name, found, address)
        assert found.name == label or name == "memcpy"  # memcpy's alias choice may differ


def test_breakpoint_on_the_implementation_is_hit(target: Path) -> None:
    """Under a Tracee: a breakpoint where the resolver says strlen lives catches main's call."""
    feed_r, feed_w = os.pipe()
    sink_r, sink_w = os.pipe()
    with os.fdopen(feed_w, "wb", 0) as feed, os.fdopen(sink_r, "rb") as sink:
        try:
            t = Tracee.create([target], stdin=feed_r, stdout=sink_w)
        finally:
            os.close(feed_r)
            os.close(sink_w)
        try:
            t.resume()
            assert sink.readline().startswith(b"ready")
            t.stop()
            strlen = t.lookup("libc.so.6", "strlen")
            assert strlen is not None
            found = IfuncResolver(t.modules, t.read).resolve(strlen)
            assert found is not None and found.name is not None
            assert found.name.startswith("__strlen_")
            t.add_breakpoint(found.address)
            t.resume()
            feed.write(b"g")
            callers = []
            for _ in range(20):  # libc may call strlen too before main's call comes
                hit = _next_hit(t)
                assert hit.address == found.address
                regs = t.registers(hit.tid)
                callers.append(t.symbolize(int.from_bytes(t.read(regs.rsp, 8), "little")))
                if callers[-1].split("`")[1].startswith("main+"):
                    break
                t.resume()
            assert callers[-1].split("`")[1].startswith("main+"), callers
        finally:
            t.release()


def _next_hit(t: Tracee) -> BreakpointHit:
    while True:
        ev = t.wait(timeout=10)
        assert ev is not None, "no breakpoint hit"
        if isinstance(ev, BreakpointHit):
            return ev
