"""Breakpoints on real multi-threaded processes: never missed, never harmful."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Builder, Reaper
from dtproc import Tracee
from dtproc._xol import EmulatePlan, SlotPlan, StepOverPlan
from dtproc.breakpoints import BreakpointAction
from dtproc.errors import NoSuchProcess
from dtproc.events import BreakpointHit, Exited, Killed, SignalReceived
from dtproc.rendezvous import run_to
from test_tracee import wait_for

STRESS = os.environ.get("DTPROC_STRESS") == "1"
WORK_FUNCTIONS = ("work", "work_push", "work_rip", "work_branch")


@pytest.fixture(scope="module", params=["pie", "nopie"])
def bpwork(build: Builder, request: pytest.FixtureRequest) -> Path:
    flags = ["-O2", "-pthread"] + (["-no-pie", "-fno-pie"] if request.param == "nopie" else [])
    return build("bpwork", *flags, suffix=request.param)


def run_to_main(argv: list[str | Path], **kw: object) -> Tracee:
    t = Tracee.create(argv, **kw)  # type: ignore[arg-type]
    run_to(t, "main")
    return t


def finish(t: Tracee) -> Exited:
    t.resume()
    events = list(t.events(timeout=120))
    end = t.end
    t.release()
    assert isinstance(end, Exited), events[-5:]
    return end


def plain_output(argv: list[str | Path]) -> bytes:
    return subprocess.run([str(a) for a in argv], capture_output=True, check=True).stdout


def read_lines(fd: int, n: int) -> list[bytes]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = os.read(fd, 4096)
        assert chunk, buf
        buf += chunk
    return buf.splitlines()


@pytest.fixture
def out() -> Iterator[tempfile._TemporaryFileWrapper[bytes]]:
    with tempfile.NamedTemporaryFile() as f:
        yield f


def test_each_displacement_plan_is_used(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    t = run_to_main([bpwork, "threads", "1", "10"], stdout=out)
    plans = {}
    for name in WORK_FUNCTIONS:
        sym = t.lookup("a.out", name)
        assert sym is not None
        bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
        plans[name] = type(t.address_space.breakpoint_at(bp.address).plan)  # type: ignore[union-attr]
    assert plans["work_push"] is EmulatePlan
    assert plans["work_rip"] is SlotPlan
    assert plans["work_branch"] is EmulatePlan
    finish(t)


@pytest.mark.parametrize("threads", [8])
def test_threads_every_hit_counted(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes], threads: int
) -> None:
    calls = 100_000 if STRESS else 5_000
    argv: list[str | Path] = [bpwork, "threads", str(threads), str(calls)]
    t = run_to_main(argv, stdout=out)
    bps = {name: t.add_breakpoint(t.lookup("a.out", name).address) for name in WORK_FUNCTIONS}  # type: ignore[union-attr]
    for bp in bps.values():
        bp.callback = lambda tr, tid: None
    assert finish(t) == Exited(t.pid, 0)
    for name, bp in bps.items():
        assert bp.hits == threads * calls, name
    out.seek(0)
    assert out.read() == plain_output(argv)


def test_stress_800k_hits_one_function(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    """The issue's case: 8 threads x 100,000 calls of one probed function (DTPROC_STRESS=1)."""
    calls = 100_000 if STRESS else 10_000
    argv: list[str | Path] = [bpwork, "threads", "8", str(calls)]
    t = run_to_main(argv, stdout=out)
    sym = t.lookup("a.out", "work_rip")
    assert sym is not None
    bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
    finish(t)
    assert bp.hits == 8 * calls
    out.seek(0)
    assert out.read() == plain_output(argv)


def test_callback_sees_the_thread_stopped_at_the_site(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    t = run_to_main([bpwork, "threads", "2", "3"], stdout=out)
    sym = t.lookup("a.out", "work")
    assert sym is not None
    seen: list[tuple[int, int, str]] = []

    def cb(tr: Tracee, tid: int) -> None:
        regs = tr.registers(tid)
        seen.append((tid, regs.rip, tr.symbolize(regs.rip)))

    t.add_breakpoint(sym.address, cb)
    finish(t)
    assert len(seen) == 6
    assert {rip for _, rip, _ in seen} == {sym.address}
    assert {name for _, _, name in seen} == {f"{bpwork.name}`work"}
    assert len({tid for tid, _, _ in seen}) == 2


def test_breakpoint_without_callback_stops_the_thread(bpwork: Path) -> None:
    # Pipes we hold on both ends: feed lines to the target one at a time.
    r, w = os.pipe()
    ro, wo = os.pipe()
    t = run_to_main([bpwork, "wait"], stdin=r, stdout=wo)
    os.close(r)
    os.close(wo)
    try:
        sym = t.lookup("a.out", "work")
        assert sym is not None
        bp = t.add_breakpoint(sym.address)
        t.resume()
        os.write(w, b"20\n")
        ev = t.wait(10)
        while isinstance(ev, SignalReceived):
            ev = t.wait(10)
        assert ev == BreakpointHit(t.pid, t.pid, sym.address)
        assert t.registers().rip == sym.address
        assert t.registers().rdi == 20
        new_pc = t.step()  # one instruction of the displaced code
        assert new_pc != sym.address
        t.resume()
        lines = read_lines(ro, 2)
        assert lines == [b"ready", b"41"]
        bp.remove()
        os.write(w, b"5\n")
        assert read_lines(ro, 1) == [b"11"]
    finally:
        os.close(w)
        t.release()
        os.close(ro)


def test_callback_may_stop_the_thread(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    t = run_to_main([bpwork, "threads", "1", "3"], stdout=out)
    sym = t.lookup("a.out", "work_push")
    assert sym is not None
    t.add_breakpoint(sym.address, lambda tr, tid: BreakpointAction.STOP)
    t.resume()
    stops = 0
    for ev in t.events(10):
        if isinstance(ev, BreakpointHit):
            stops += 1
            t.resume()
    t.release()
    assert stops == 3


def test_program_sigtrap_reaches_the_program(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    t = run_to_main([bpwork, "trap"], stdout=out)
    sym = t.lookup("a.out", "work")
    assert sym is not None
    bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
    finish(t)
    assert bp.hits == 1
    out.seek(0)
    assert out.read() == plain_output([bpwork, "trap"]) == b"trapped\ntrapped\nwork 5\n"


def test_fork_vfork_exec_children_unharmed(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    argv: list[str | Path] = [bpwork, "fork", "10", "then-exec"]
    t = run_to_main(argv, stdout=out)
    sym = t.lookup("a.out", "work")
    assert sym is not None
    bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
    t.stop_on_exec = True  # look at the new image before it runs
    t.resume()
    execs = 0
    for ev in t.events(30):
        if type(ev).__name__ == "Exec":
            execs += 1
            # The new image is clean: no int3 at work() and no breakpoints left.
            assert not t.breakpoints
            new = t.lookup("a.out", "work")
            assert new is not None
            assert t.read_raw(new.address, 1) != b"\xcc"
            t.resume()
    end = t.end
    t.release()
    assert execs == 1
    assert end == Exited(t.pid, 0)
    assert bp.hits == 20  # the parent's calls only: 10 before and 10 after the children
    out.seek(0)
    assert out.read() == plain_output(argv)


def test_libc_breakpoint(bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]) -> None:
    t = run_to_main([bpwork, "libc", "1000"], stdout=out)
    sym = t.lookup("libc.so.6", "getppid")
    assert sym is not None
    bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
    finish(t)
    assert bp.hits == 1000
    out.seek(0)
    assert out.read() == b"getppid 1000\n"


def test_reads_show_original_bytes_and_release_leaves_text_intact(
    bpwork: Path, reaper: Reaper
) -> None:
    p = reaper.spawn([bpwork, "threads", "4", "50000000"], stdout=subprocess.DEVNULL)
    assert wait_for(lambda: len(os.listdir(f"/proc/{p.pid}/task")) == 5)
    t = Tracee.grab(p.pid)
    main = t.modules.main
    assert main is not None
    before = t.read_raw(main.start, 0x4000)
    bps = [
        t.add_breakpoint(t.lookup("a.out", n).address, lambda tr, tid: None) for n in WORK_FUNCTIONS
    ]  # type: ignore[union-attr]
    sym = t.lookup("a.out", "work")
    assert sym is not None
    assert t.read_raw(sym.address, 1) == b"\xcc"
    assert t.read(main.start, 0x4000) == before
    t.resume()
    t.wait(0.3)
    t.release()
    assert all(bp.hits > 0 for bp in bps)
    with open(f"/proc/{p.pid}/mem", "rb") as mem:
        mem.seek(main.start)
        assert mem.read(0x4000) == before
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == -signal.SIGTERM


def test_step_over_fallback_is_correct(
    bpwork: Path, out: tempfile._TemporaryFileWrapper[bytes]
) -> None:
    """Force the all-stop step-over on a multi-threaded target: still exact."""
    argv: list[str | Path] = [bpwork, "threads", "4", "2000"]
    t = run_to_main(argv, stdout=out)
    sym = t.lookup("a.out", "work_rip")
    assert sym is not None
    bp = t.add_breakpoint(sym.address, lambda tr, tid: None)
    site = t.address_space.breakpoint_at(sym.address)
    assert site is not None
    site.plan = StepOverPlan(t, sym.address)
    finish(t)
    assert bp.hits == 4 * 2000
    out.seek(0)
    assert out.read() == plain_output(argv)


def count_hits(t: Tracee, *names: str) -> None:
    """Count hits at the entry of each of *names* (callbacks that let the thread go on)."""
    for name in names:
        sym = t.lookup("a.out", name)
        assert sym is not None
        t.add_breakpoint(sym.address, lambda tr, tid: None)


def run_for(t: Tracee, seconds: float) -> None:
    """Resume and handle events for about *seconds*."""
    t.resume()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t.wait(0.005)


def test_sigkill_mid_hit_reports_the_kill(bpwork: Path) -> None:
    """SIGKILL (to the process or to any one thread) pulls threads out of their ptrace-stops
    while we handle a hit: wait() reports Killed(SIGKILL), never an error or a lost process."""
    rng = random.Random(4)
    for i in range(6):
        t = run_to_main([bpwork, "threads", "4", "100000000"], stdout=subprocess.DEVNULL)
        try:
            count_hits(t, "work", "work_rip", "work_push")
            run_for(t, rng.uniform(0.02, 0.15))
            victim = t.pid if i % 2 else rng.choice(t.threads)
            os.kill(victim, signal.SIGKILL)
            list(t.events(timeout=10))
            assert t.end == Killed(t.pid, signal.SIGKILL, False)
        finally:
            t.release()


def test_breakpoints_placed_as_the_process_exits(bpwork: Path) -> None:
    """Placing a breakpoint may inject a system call (a slot page) into a process that is
    exiting: either it is placed or the caller gets NoSuchProcess, never a raw OSError."""
    rng = random.Random(7)
    for _ in range(25):
        t = Tracee.create([bpwork, "threads", "4", "100000"], stdout=subprocess.DEVNULL)
        try:
            t.resume()
            time.sleep(rng.uniform(0.0, 0.004))
            with contextlib.suppress(NoSuchProcess):
                count_hits(t, "work", "work_rip", "work_push")
        finally:
            t.release()


def test_release_while_the_target_forks(bpwork: Path, reaper: Reaper) -> None:
    """Let go of a grabbed process at any moment of its fork/vfork/exec traffic: a child
    on its way (its first stop not yet seen, with a copy of our int3s, or a vfork child
    on our very memory) is cleaned and freed too, never left traced or killed by SIGTRAP,
    even when the breakpoints were removed before the release."""
    p = reaper.spawn([bpwork, "forkloop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    rng = random.Random(3)
    for i in range(40):
        t = Tracee.grab(p.pid)
        try:
            count_hits(t, "work")
            run_for(t, rng.uniform(0.0, 0.05))
            if i % 2:  # as probes do: remove the breakpoints, then let go
                for bp in list(t.breakpoints):
                    bp.remove()
        finally:
            t.release()
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (42, b"rounds some bad 0\n", b"")


def test_grab_while_threads_come_and_go(bpwork: Path, reaper: Reaper) -> None:
    """A thread born of one we seized a moment ago is ours already (PTRACE_SEIZE says
    EPERM), and so is no reason to fail the grab; nor is one that just exited."""
    p = reaper.spawn([bpwork, "churn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    for i in range(150):
        t = Tracee.grab(p.pid)
        try:
            if i % 10 == 0:
                count_hits(t, "work")
                run_for(t, 0.01)
        finally:
            t.release()
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (42, b"bad 0\n", b"")
