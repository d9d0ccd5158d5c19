"""The Tracee core on real processes: create, grab, threads, signals, events, release."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conftest import Builder, Reaper
from dtproc import (
    AccessDenied,
    DtprocError,
    ExecFailed,
    NoSuchProcess,
    ProcessState,
    ReleaseMode,
    StateError,
    Tracee,
    ZombieProcess,
)
from dtproc.events import (
    Continued,
    Exec,
    Exited,
    Forked,
    GroupStop,
    Killed,
    SignalReceived,
    ThreadCreated,
    VForked,
)
from dtproc.insn_decode import Flow, decode


@pytest.fixture(scope="module")
def corpus(build: Builder) -> Path:
    return build("corpus", "-O2", "-pthread")


@pytest.fixture(scope="module")
def sleeper(build: Builder) -> Path:
    return build("sleeper", "-O2", "-pthread")


# ---------------------------------------------------------------------- helpers
Outcome = tuple[int, bytes, bytes]


def run_plain(argv: Sequence[str | Path], stdin: bytes = b"") -> Outcome:
    p = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def run_traced(argv: Sequence[str | Path], stdin: bytes = b"") -> Outcome:
    """Run under a Tracee from exec to exit, with every event processed."""
    with (
        tempfile.TemporaryFile() as fin,
        tempfile.TemporaryFile() as fout,
        tempfile.TemporaryFile() as ferr,
    ):
        fin.write(stdin)
        fin.seek(0)
        t = Tracee.create(argv, stdin=fin, stdout=fout, stderr=ferr)
        try:
            t.resume()
            for _ in t.events(timeout=60):
                pass
            end = t.end
        finally:
            t.release()
        fout.seek(0)
        ferr.seek(0)
        if isinstance(end, Exited):
            rc = end.status
        elif isinstance(end, Killed):
            rc = -end.signal
        else:
            raise AssertionError(f"no end event: {end}")
        return rc, fout.read(), ferr.read()


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def start_sleeper(reaper: Reaper, sleeper: Path, *args: str) -> subprocess.Popen[bytes]:
    p = reaper.spawn([sleeper, *args], stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith(b"ready"), line
    return p


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Driver:
    """Drives a grabbed Tracee in its own thread, as a control thread would."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.events: list[object] = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._quit = False
        self.tracee: Tracee | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10)
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            self.tracee = Tracee.grab(self.pid)
            self.tracee.resume()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        t = self.tracee
        try:
            while not self._quit:
                ev = t.wait()
                if ev is not None:
                    self.events.append(ev)
                if t.state is ProcessState.UNDEAD:
                    break
        except BaseException as exc:
            self.error = exc
        finally:
            t.release()

    def stop(self) -> None:
        self._quit = True
        if self.tracee is not None:
            while self.thread.is_alive():
                self.tracee.wake()
                self.thread.join(0.01)
        if self.error:
            raise self.error


# ---------------------------------------------------------------------- create
def test_create_stops_at_exec_then_runs(corpus: Path, reaper: Reaper) -> None:
    with tempfile.TemporaryFile() as out:
        t = Tracee.create([corpus, "exit", "5"], stdout=out, stderr=subprocess.DEVNULL)
        reaper.adopt(t.pid)
        try:
            assert t.state is ProcessState.STOPPED
            assert t.created and not t.readonly
            assert t.threads == (t.pid,)
            assert t.exe == str(corpus)
            regs = t.registers()
            assert regs.rip and regs.rsp
            # Nothing of the program has run: the interpreter's entry is next.
            interp_entry = regs.rip
            assert t.read(interp_entry, 1)
            t.resume()
            events = list(t.events(timeout=10))
        finally:
            t.release()
        assert events[-1] == Exited(t.pid, 5)
        out.seek(0)
        assert out.read() == b"to stdout\n"
    assert t.state is ProcessState.DEAD


def test_create_exact_environment_and_cwd(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ONLY": "this"}
    rc, _, _ = run_traced(["env"], b"")
    assert rc == 0
    with tempfile.TemporaryFile() as f:
        t = Tracee.create(["env"], env=env, cwd=tmp_path, stdout=f)
        t.resume()
        list(t.events(10))
        t.release()
        f.seek(0)
        assert sorted(f.read().decode().splitlines()) == ["ONLY=this", "PATH=/usr/bin:/bin"]
    with tempfile.TemporaryFile() as f:
        t = Tracee.create(["pwd"], cwd=tmp_path, stdout=f)
        t.resume()
        list(t.events(10))
        t.release()
        f.seek(0)
        assert f.read().decode().strip() == str(tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["./nosuch-program"], "failed to execute ./nosuch-program: No such file or directory"),
        (["no-such-command-dtproc"], "failed to execute no-such-command-dtproc: No such file"),
        (["/etc/passwd"], "failed to execute /etc/passwd: Permission denied"),
        (["/tmp"], "failed to execute /tmp: Permission denied"),
    ],
)
def test_create_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ExecFailed) as info:
        Tracee.create(argv)
    assert str(info.value).startswith(message)


def test_create_bad_cwd() -> None:
    with pytest.raises(ExecFailed, match="cannot change directory to /nonexistent-dir"):
        Tracee.create(["true"], cwd="/nonexistent-dir")


def test_script_without_shebang_runs_with_sh(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("echo from script $1\nexit 6\n")
    script.chmod(0o755)
    # execvp (unlike subprocess) runs a file with no #! line with /bin/sh.
    assert run_traced([script, "arg"]) == (6, b"from script arg\n", b"")


def test_created_process_dies_with_tracer(sleeper: Path, reaper: Reaper, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1] / "src")!r})
        from dtproc import Tracee
        t = Tracee.create([{str(sleeper)!r}], stdout=open({str(tmp_path / "out")!r}, "w"))
        t.resume()
        print(t.pid, flush=True)
        time.sleep(60)
        """
    )
    p = reaper.spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    reaper.adopt(child)
    assert wait_for(lambda: (tmp_path / "out").read_text().startswith("ready"))
    p.kill()
    p.wait()
    assert wait_for(lambda: not os.path.exists(f"/proc/{child}") or state_of(child) == "Z")


# ---------------------------------------------------------------------- transparency
CORPUS_CASES = [
    ["exit", "0"],
    ["exit", "42"],
    ["signal", str(int(signal.SIGTERM))],
    ["signal", str(int(signal.SIGUSR1))],
    ["abort"],
    ["segv"],
    ["int3"],
    ["catch"],
    ["threads", "8"],
    ["fork"],
    ["exec", "5"],
]


@pytest.mark.parametrize("args", CORPUS_CASES, ids=lambda a: "-".join(a))
def test_transparency_corpus(corpus: Path, args: list[str]) -> None:
    assert run_traced([corpus, *args]) == run_plain([corpus, *args])


SYSTEM_CASES: list[tuple[list[str], bytes]] = [
    (["ls", "-la", "/usr/bin"], b""),
    (["sort", "-r"], b"b\na\nc\nb\n"),
    (["sh", "-c", "seq 1 2000 | sort -rn | head -3; echo oops >&2; exit 4"], b""),
    (
        [
            sys.executable,
            "-c",
            "import threading\n"
            "out = []\n"
            "ts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(6)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(sorted(out))\n"
            "raise SystemExit(9)\n",
        ],
        b"",
    ),
]


@pytest.mark.parametrize("case", SYSTEM_CASES, ids=lambda c: c[0][0].rsplit("/", 1)[-1])
def test_transparency_system_binaries(case: tuple[list[str], bytes]) -> None:
    argv, stdin = case
    assert run_traced(argv, stdin) == run_plain(argv, stdin)


def test_events_for_threads_fork_vfork_exec(corpus: Path) -> None:
    with tempfile.TemporaryFile() as out:
        t = Tracee.create([corpus, "fork"], stdout=out)
        t.resume()
        events = list(t.events(10))
        t.release()
    kinds = [type(e) for e in events]
    assert Forked in kinds and VForked in kinds
    assert next(e for e in events if isinstance(e, Forked)).followed is False
    assert events[-1] == Exited(t.pid, 0)

    t = Tracee.create([corpus, "threads", "4"], stdout=subprocess.DEVNULL)
    t.resume()
    events = list(t.events(10))
    t.release()
    assert sum(isinstance(e, ThreadCreated) for e in events) == 4

    t = Tracee.create([corpus, "exec", "3"], stdout=subprocess.DEVNULL)
    t.stop_on_exec = True
    t.resume()
    execs = 0
    for ev in t.events(10):
        if isinstance(ev, Exec):
            execs += 1
            assert t.state is ProcessState.STOPPED
            assert ev.path == str(corpus)
            t.resume()
    t.release()
    assert execs == 3


# ---------------------------------------------------------------------- grab
def test_grab_multithreaded_stops_every_thread(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper, "8")
    with Tracee.grab(p.pid) as t:
        assert t.state is ProcessState.STOPPED
        assert t.threads == tuple(sorted(int(x) for x in os.listdir(f"/proc/{p.pid}/task")))
        assert len(t.threads) == 9
        for tid in t.threads:
            assert state_of(tid) == "t"
            assert t.registers(tid).rip
        assert tracer_of(p.pid) == os.getpid()
        assert t.identity.start_time == int(
            open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        )
    assert tracer_of(p.pid) == 0
    assert wait_for(lambda: state_of(p.pid) == "S")
    assert p.poll() is None


def test_grab_readonly_never_stops(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper, "2")
    holder = Tracee.grab(p.pid)  # someone else traces it
    try:
        holder.resume()
        with Tracee.grab(p.pid, readonly=True) as ro:
            assert ro.readonly
            assert ro.state is ProcessState.RUNNING
            assert len(ro.threads) == 3
            maps = open(f"/proc/{p.pid}/maps").read().split()
            addr = int(maps[0].split("-")[0], 16)
            assert ro.read(addr, 4) == b"\x7fELF"
            with pytest.raises(StateError, match="read-only"):
                ro.registers()
            with pytest.raises(StateError, match="read-only"):
                ro.write(addr, b"x")
    finally:
        holder.release()


def test_grab_errors(sleeper: Path, reaper: Reaper) -> None:
    with pytest.raises(NoSuchProcess, match="failed to grab pid 4194304: no such process"):
        Tracee.grab(4194304)
    with pytest.raises(DtprocError, match="dtproc's own process"):
        Tracee.grab(os.getpid())
    with pytest.raises(AccessDenied, match="kernel thread"):
        Tracee.grab(2)
    z = reaper.spawn(["true"])
    assert wait_for(lambda: state_of(z.pid) == "Z")
    with pytest.raises(ZombieProcess, match=f"failed to grab pid {z.pid}: it is a zombie"):
        Tracee.grab(z.pid)
    z.wait()
    p = start_sleeper(reaper, sleeper, "2")
    tid = max(int(x) for x in os.listdir(f"/proc/{p.pid}/task"))
    with pytest.raises(NoSuchProcess, match=f"it is a thread of pid {p.pid}"):
        Tracee.grab(tid)


def test_grab_already_traced_names_the_tracer(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper)
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1] / "src")!r})
        from dtproc import Tracee
        t = Tracee.grab({p.pid})
        t.resume()
        print("held", flush=True)
        time.sleep(60)
        """
    )
    holder = reaper.spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(AccessDenied, match=f"already traced by pid {holder.pid} \\(python"):
        Tracee.grab(p.pid)
    holder.kill()
    holder.wait()


def test_grab_permission_denied_as_other_user(sleeper: Path, reaper: Reaper) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    p = start_sleeper(reaper, sleeper)
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parents[1] / "src")!r})
        from dtproc import Tracee, AccessDenied
        import dtproc.breakpoints, dtproc.errors  # before we lose access to /root
        os.setgid(65534); os.setuid(65534)
        try:
            Tracee.grab({p.pid})
        except AccessDenied as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert f"failed to grab pid {p.pid}: permission denied" in out.stdout, out


def test_wrong_thread_is_refused(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper)
    with Tracee.grab(p.pid) as t:
        errors: list[BaseException] = []

        def other() -> None:
            try:
                t.registers()
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=other)
        th.start()
        th.join()
        assert isinstance(errors[0], StateError)
        assert "only from the thread that attached" in str(errors[0])


def test_wait_timeout_and_wake(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper)
    with Tracee.grab(p.pid) as t:
        t.resume()
        t0 = time.monotonic()
        assert t.wait(0.1) is None
        assert 0.09 <= time.monotonic() - t0 < 1.0
        threading.Timer(0.05, t.wake).start()
        t0 = time.monotonic()
        assert t.wait() is None
        assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------------- memory
def test_memory_read_write_cstring(corpus: Path) -> None:
    t = Tracee.create([corpus, "exit", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rsp = t.registers().rsp
        # At the exec stop the stack holds argc, argv[], envp[]: argv[1] is "exit".
        argv1 = int.from_bytes(t.read(rsp + 16, 8), "little")
        assert t.read_cstring(argv1) == b"exit"
        t.write(argv1, b"EXIT")
        assert t.read_cstring(argv1) == b"EXIT"
        with pytest.raises(DtprocError, match=f"pid {t.pid}: cannot access 8 bytes at 0x10"):
            t.read(0x10, 8)
    finally:
        t.release()


SYS_GETPID = 39


@contextlib.contextmanager
def at_exec_stop_then_exit_5(corpus: Path) -> Iterator[Tracee]:
    """``corpus exit 5`` created, at its exec stop; after the block it must still exit 5."""
    t = Tracee.create([corpus, "exit", "5"], stdout=subprocess.DEVNULL)
    try:
        yield t
        t.resume()
        list(t.events(timeout=10))
        assert t.end == Exited(t.pid, 5)
    finally:
        t.release()


def test_injected_syscall_runs_from_the_exec_stop(corpus: Path) -> None:
    """The exec stop is inside execve: the call must still run, and execve still return 0."""
    with at_exec_stop_then_exit_5(corpus) as t:
        assert t.inject_syscall(SYS_GETPID) == t.pid
        assert t.inject_syscall(SYS_GETPID) == t.pid
        assert t.registers().rax == 0


def test_step_from_the_exec_stop_executes_the_first_instruction(corpus: Path) -> None:
    with at_exec_stop_then_exit_5(corpus) as t:
        entry = t.registers().rip
        first = decode(t.read(entry, 16), entry, 1)[0]
        assert first.flow is Flow.NEXT, first  # ld.so's _start: mov %rsp, %rdi
        assert t.step() == first.end


def test_injected_syscalls_while_threads_start(corpus: Path) -> None:
    """Injecting into a running program may catch its thread at a clone event: the
    injected call runs, and pthread_create still gets the new thread's id."""
    argv: list[str | Path] = [corpus, "threads", "8"]
    for _ in range(10):
        with tempfile.TemporaryFile() as out:
            t = Tracee.create(argv, stdout=out)
            try:
                t.resume()
                results = set()
                with contextlib.suppress(NoSuchProcess):
                    while t.state is not ProcessState.UNDEAD:
                        results.add(t.inject_syscall(SYS_GETPID))
                        t.wait(0)
                list(t.events(timeout=30))
                end = t.end
            finally:
                t.release()
            assert results <= {t.pid}
            out.seek(0)
            assert (end, out.read()) == (Exited(t.pid, 0), run_plain(argv)[1])


# ---------------------------------------------------------------------- signals
SIGNALS = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP)]


def outcome_after_signal(pid: int, popen: subprocess.Popen[bytes], sig: int) -> str:
    os.kill(pid, sig)
    time.sleep(0.15)
    rc = popen.poll()
    if rc is not None:
        return f"exit {rc}"
    st = state_of(pid)
    return "stopped" if st in "Tt" else "running"


@pytest.mark.parametrize("catch", [False, True], ids=["default", "handlers"])
def test_each_signal_same_effect_as_untraced(sleeper: Path, reaper: Reaper, catch: bool) -> None:
    mode = ["0", "1"] if catch else []
    mismatches = []
    for sig in SIGNALS:
        plain = start_sleeper(reaper, sleeper, *mode)
        traced = start_sleeper(reaper, sleeper, *mode)
        driver = Driver(traced.pid)
        try:
            want = outcome_after_signal(plain.pid, plain, sig)
            got = outcome_after_signal(traced.pid, traced, sig)
            if want != got:
                mismatches.append((sig, want, got))
            if catch:
                plain.kill()
                traced.kill()
                assert plain.stdout is not None and traced.stdout is not None
                if plain.stdout.read() != traced.stdout.read():
                    mismatches.append((sig, "output differs", ""))
        finally:
            for p in (plain, traced):
                if p.poll() is None:
                    p.kill()
            driver.stop()
            plain.wait()
            traced.wait()
    assert mismatches == []


def test_sigstop_keeps_process_stopped_until_sigcont(corpus: Path, reaper: Reaper) -> None:
    with tempfile.NamedTemporaryFile() as out:
        p = reaper.spawn([corpus, "ticker"], stdout=out)
        assert wait_for(lambda: os.path.getsize(out.name) > 0)
        driver = Driver(p.pid)
        try:
            os.kill(p.pid, signal.SIGSTOP)
            assert wait_for(lambda: any(isinstance(e, GroupStop) for e in driver.events))
            size = os.path.getsize(out.name)
            time.sleep(0.3)
            assert os.path.getsize(out.name) == size, "a stopped process kept running"
            os.kill(p.pid, signal.SIGCONT)
            assert wait_for(lambda: any(isinstance(e, Continued) for e in driver.events))
            assert wait_for(lambda: os.path.getsize(out.name) > size)
        finally:
            driver.stop()
    assert p.poll() is None
    assert tracer_of(p.pid) == 0


def test_release_leaves_externally_stopped_process_stopped(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper, "2")
    os.kill(p.pid, signal.SIGSTOP)
    assert wait_for(lambda: state_of(p.pid) == "T")
    t = Tracee.grab(p.pid)
    assert t.group_stopped
    assert t.default_release_mode() is ReleaseMode.HANG
    t.resume()
    assert t.wait(0.2) == GroupStop(p.pid, signal.SIGSTOP)  # found stopped, and it says so
    assert t.wait(0.2) is None  # stays stopped
    t.release()
    assert tracer_of(p.pid) == 0
    time.sleep(0.1)
    assert state_of(p.pid) == "T"
    os.kill(p.pid, signal.SIGCONT)
    assert wait_for(lambda: state_of(p.pid) == "S")


def test_intercepted_signal_can_be_cancelled(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper)
    with Tracee.grab(p.pid) as t:
        t.intercept_signals = {signal.SIGTERM}
        t.resume()
        os.kill(p.pid, signal.SIGTERM)
        ev = t.wait(5)
        assert ev == SignalReceived(p.pid, p.pid, signal.SIGTERM, True)
        assert t.thread_stopped(p.pid)
        t.set_signal(p.pid, 0)
        t.resume()
        assert t.wait(0.2) is None
    assert p.poll() is None


# ---------------------------------------------------------------------- release
def test_grabbed_threads_released_intact(corpus: Path, reaper: Reaper) -> None:
    argv = [corpus, "threads", "8", "20000000"]
    want = run_plain(argv)
    with tempfile.TemporaryFile() as out:
        p = reaper.spawn(argv, stdout=out)
        assert wait_for(lambda: len(os.listdir(f"/proc/{p.pid}/task")) == 9)
        t = Tracee.grab(p.pid)
        assert len(t.threads) == 9
        t.resume()
        t.wait(0.02)
        t.stop()
        t.release()
        assert p.wait(30) == want[0]
        out.seek(0)
        assert out.read() == want[1]


def test_release_modes(sleeper: Path, reaper: Reaper) -> None:
    p = start_sleeper(reaper, sleeper)
    t = Tracee.grab(p.pid)
    t.release(ReleaseMode.KILL)
    assert p.wait(5) == -signal.SIGKILL

    p = start_sleeper(reaper, sleeper)
    t = Tracee.grab(p.pid)
    t.release(ReleaseMode.HANG)
    assert wait_for(lambda: state_of(p.pid) == "T")
    assert tracer_of(p.pid) == 0

    t = Tracee.create(["sleep", "30"])
    pid = t.pid
    t.release()
    assert not os.path.exists(f"/proc/{pid}")
