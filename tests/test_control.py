"""The control layer on real processes: shared handles, LRU, rendezvous, notifications, stress."""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import Builder, Reaper
from dtproc import AccessDenied, ExecFailed, NoSuchProcess, ProcessDied, ProcessState
from dtproc.control import NotificationKind, Tracer
from dtproc.elf import ElfFile
from test_tracee import start_sleeper, state_of, tracer_of, wait_for

STRESS = os.environ.get("DTPROC_STRESS") == "1"

EARLY_EXIT = r"""
#include <stdlib.h>
#include <signal.h>
__attribute__((constructor)) static void quit_early(void) {
    if (getenv("DIE_BY_SIGNAL")) raise(SIGUSR1);
    exit(3);
}
int main(void) { return 0; }
"""


@pytest.fixture(scope="module")
def sleeper(build: Builder) -> Path:
    return build("sleeper", "-O2", "-pthread")


@pytest.fixture(scope="module")
def bpwork(build: Builder) -> Path:
    return build("bpwork", "-O2", "-pthread")


@pytest.fixture
def dt() -> Tracer:
    tracer = Tracer()
    yield tracer  # type: ignore[misc]
    tracer.close()


def int3_free(pid: int, address: int) -> bool:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(1) != b"\xcc"


# ---------------------------------------------------------------------- handles
def test_one_handle_per_process_with_refcounts(dt: Tracer, sleeper: Path) -> None:
    p = dt.create([str(sleeper)], stdout=subprocess.DEVNULL)
    assert dt.target == p.pid
    assert p.refs == 1 and p.at_rendezvous
    q = dt.grab(p.pid)
    assert q is p and p.refs == 2
    r = dt.grab(p.pid, readonly=True)
    assert r is p and p.refs == 3
    q.release()
    r.release()
    assert p.refs == 1 and p.state is ProcessState.STOPPED
    pid = p.pid
    p.release()
    assert p.refs == 0
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))  # created: killed on release
    with pytest.raises(Exception, match="released more often"):
        p.release()


def test_lru_of_idle_readonly_handles(sleeper: Path, reaper: Reaper) -> None:
    procs = [start_sleeper(reaper, sleeper) for _ in range(5)]
    with Tracer(lru_limit=3) as dt:
        handles = []
        for p in procs:
            h = dt.grab(p.pid, readonly=True)
            handles.append(h)
            h.release()  # idle, cached
        cached = [h.pid for h in dt.processes]
        # The limit holds, and the least recently used went first.
        assert cached == [procs[4].pid, procs[3].pid, procs[2].pid]
        # A cached grab returns the same handle and makes it the most recent.
        again = dt.grab(procs[2].pid, readonly=True)
        assert again is handles[2]
        again.release()
        dt.grab(procs[0].pid, readonly=True).release()
        assert [h.pid for h in dt.processes] == [procs[0].pid, procs[2].pid, procs[4].pid]
        # Read-only grabs never stopped anything.
        assert all(state_of(p.pid) in "RS" for p in procs)
        assert all(tracer_of(p.pid) == 0 for p in procs)


def test_controlled_grab_upgrades_a_readonly_handle(
    dt: Tracer, sleeper: Path, reaper: Reaper
) -> None:
    p = start_sleeper(reaper, sleeper, "2")
    ro = dt.grab(p.pid, readonly=True)
    ctl = dt.grab(p.pid)
    assert ctl is not ro and ro.stale and not ctl.readonly
    assert os.path.exists(f"/proc/self/task/{tracer_of(p.pid)}")  # a control thread of ours
    assert len(ctl.threads) == 3
    ro.release()
    assert ro.state is ProcessState.DEAD
    dt.resume(ctl)
    ctl.release()
    assert wait_for(lambda: tracer_of(p.pid) == 0)
    assert p.poll() is None


# ---------------------------------------------------------------------- release modes
def test_release_modes_of_the_last_reference(dt: Tracer, sleeper: Path, reaper: Reaper) -> None:
    created = dt.create([str(sleeper)], stdout=subprocess.DEVNULL)
    dt.resume(created)
    cpid = created.pid
    created.release()
    assert wait_for(lambda: not os.path.exists(f"/proc/{cpid}"))

    grabbed = start_sleeper(reaper, sleeper)
    h = dt.grab(grabbed.pid)
    dt.resume(h)
    h.release()
    assert wait_for(lambda: tracer_of(grabbed.pid) == 0 and state_of(grabbed.pid) == "S")

    stopped = start_sleeper(reaper, sleeper)
    os.kill(stopped.pid, signal.SIGSTOP)
    assert wait_for(lambda: state_of(stopped.pid) == "T")
    h = dt.grab(stopped.pid)
    assert h.stopped_by_signal
    dt.resume(h)
    h.release()
    assert wait_for(lambda: tracer_of(stopped.pid) == 0)
    time.sleep(0.1)
    assert state_of(stopped.pid) == "T"  # left as someone else had it: stopped


def test_waitrun_stopped_by_signal_until_sigcont(dt: Tracer, bpwork: Path) -> None:
    p = dt.create(
        [str(bpwork), "threads", "2", "100000000"], stop_at="main", stdout=subprocess.DEVNULL
    )
    dt.resume(p)
    os.kill(p.pid, signal.SIGSTOP)
    assert wait_for(lambda: p.stopped_by_signal)
    assert state_of(p.pid) in "tT"
    dt.resume(p)  # resuming does not override someone else's stop
    time.sleep(0.1)
    assert p.stopped_by_signal
    os.kill(p.pid, signal.SIGCONT)
    assert wait_for(lambda: not p.stopped_by_signal)
    assert wait_for(lambda: state_of(p.pid) in "RS")
    p.release()


# ---------------------------------------------------------------------- rendezvous
@pytest.mark.parametrize("point", ["exec", "preinit", "postinit", "main"])
def test_each_rendezvous(dt: Tracer, bpwork: Path, point: str) -> None:
    p = dt.create([str(bpwork), "libc", "1"], stop_at=point, stdout=subprocess.DEVNULL)
    assert p.arrival is not None and p.arrival.point.value == point
    where = p.call(lambda t: t.symbolize(t.registers().rip))
    expected = {
        "exec": "ld-linux-x86-64.so.2`_start",
        "preinit": "ld-linux-x86-64.so.2`_dl_debug_state",
        # Just back from the executable's last initialiser, inside __libc_start_main.
        "postinit": "libc.so.6`__libc_start_",
        "main": f"{bpwork.name}`main",
    }[point]
    assert where.startswith(expected)
    if point != "exec":
        assert p.lookup("libc.so.6", "getppid") is not None
    dt.resume(p)
    notes = dt.sleep(10)
    assert [n.kind for n in notes] == [NotificationKind.EXITED]
    p.release()


def test_create_errors_in_dt_proc_words(dt: Tracer, build: Builder) -> None:
    with pytest.raises(
        ExecFailed, match=r"failed to execute \./no-such-file: No such file or directory"
    ):
        dt.create(["./no-such-file"])
    early = build("early_exit", "-O2", source=EARLY_EXIT)
    with pytest.raises(
        ProcessDied, match=r"failed to control pid \d+: process exited with status 3"
    ):
        dt.create([str(early)], stop_at="main")
    env = dict(os.environ, DIE_BY_SIGNAL="1")
    with pytest.raises(
        ProcessDied, match=r"failed to control pid \d+: process died from signal 10"
    ):
        dt.create([str(early)], stop_at="main", env=env)
    with pytest.raises(NoSuchProcess, match="failed to grab pid 4194304: no such process"):
        dt.grab(4194304)
    with pytest.raises(AccessDenied, match="failed to grab pid 2: it is a kernel thread"):
        dt.grab(2)
    assert dt.processes == []


# ---------------------------------------------------------------------- notifications
def test_notifications_exited_killed_lost(
    dt: Tracer, sleeper: Path, build: Builder, tmp_path: Path
) -> None:
    seen: list[str] = []
    dt.on_process_event(lambda n: seen.append(n.message))
    a = dt.create(["sh", "-c", "exit 7"])
    b = dt.create([str(sleeper)], stdout=subprocess.DEVNULL)
    dt.resume(a)
    dt.resume(b)
    os.kill(b.pid, signal.SIGKILL)
    got = {}
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        for n in dt.sleep(1):
            got[n.pid] = n
    assert got[a.pid].kind is NotificationKind.EXITED and got[a.pid].status == 7
    assert got[b.pid].kind is NotificationKind.KILLED and got[b.pid].status == signal.SIGKILL
    assert f"pid {a.pid} has exited" in seen
    assert a.end is not None and a.state is ProcessState.UNDEAD
    a.release()
    b.release()


def test_notification_lost_on_setid_exec() -> None:
    """A set-id program exec'd without CAP_SYS_PTRACE runs unprivileged: control is lost."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a set-uid file and drop privileges")
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        setid = Path(d) / "setid-true"
        setid.write_bytes(Path("/bin/true").read_bytes())
        os.chmod(setid, 0o4755)
        run_lost_check(setid)


def run_lost_check(setid: Path) -> None:
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parents[1] / "src")!r})
import dtproc.control, dtproc.rendezvous, dtproc.rtld, dtproc.insn, dtproc.elf
from dtproc.control import Tracer
os.setgid(65534); os.setuid(65534)
with Tracer() as dt:
    p = dt.create(["sh", "-c", "exec {setid}"], stop_at="exec")
    dt.resume(p)
    for n in dt.sleep(10):
        print(n.kind.value, n.message)
"""
    out = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=60)
    assert "lost" in out.stdout and "set-id or unobservable" in out.stdout, out


# ---------------------------------------------------------------------- locking and requests
def test_lock_holds_event_processing(dt: Tracer, bpwork: Path) -> None:
    p = dt.create(
        [str(bpwork), "threads", "2", "100000000"], stop_at="main", stdout=subprocess.DEVNULL
    )
    sym = p.lookup("a.out", "work")
    assert sym is not None
    bp = p.add_breakpoint(sym.address, lambda t, tid: None)
    dt.resume(p)
    assert wait_for(lambda: bp.hits > 100)
    with p.lock():
        before = bp.hits
        time.sleep(0.2)
        assert bp.hits - before <= 1  # at most the event being processed when we took it
        assert p.read(sym.address, 1) != b"\xcc"  # reads show the original byte
    assert wait_for(lambda: bp.hits > before + 100)
    with p.lock(), pytest.raises(Exception, match="release the process lock"):
        p.registers()
    p.release()


def test_close_while_targets_run_and_hit_breakpoints(bpwork: Path, reaper: Reaper) -> None:
    procs = [
        reaper.spawn([bpwork, "threads", "2", "100000000"], stdout=subprocess.DEVNULL)
        for _ in range(3)
    ]
    for p in procs:
        assert wait_for(lambda p=p: len(os.listdir(f"/proc/{p.pid}/task")) == 3)
    dt = Tracer()
    sites = []
    for p in procs:
        h = dt.grab(p.pid)
        sym = h.lookup("a.out", "work_rip")
        assert sym is not None
        h.add_breakpoint(sym.address, lambda t, tid: None)
        sites.append((p.pid, sym.address))
        dt.resume(h)
    created = dt.create(
        [str(bpwork), "threads", "2", "100000000"], stop_at="main", stdout=subprocess.DEVNULL
    )
    dt.resume(created)
    time.sleep(0.3)
    t0 = time.monotonic()
    dt.close()
    assert time.monotonic() - t0 < 5
    for pid, addr in sites:
        assert tracer_of(pid) == 0
        assert int3_free(pid, addr)
        assert state_of(pid) in "RS"
    assert wait_for(lambda: not os.path.exists(f"/proc/{created.pid}"))
    assert not [t for t in threading.enumerate() if t.name.startswith("dtproc-control")]


# ---------------------------------------------------------------------- stress
def test_stress_many_clients_many_processes(bpwork: Path, sleeper: Path, reaper: Reaper) -> None:
    n_clients, n_ops, n_procs = (16, 1000, 20) if STRESS else (8, 60, 6)
    ElfFile.clear_cache()  # the ELF cache keeps files open on purpose: not a leak
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    dt = Tracer(lru_limit=4)
    targets = []
    for i in range(n_procs):
        argv = [bpwork, "fork", "3000000"] if i % 3 == 0 else [bpwork, "threads", "2", "30000000"]
        targets.append(reaper.spawn(argv, stdout=subprocess.DEVNULL))
    errors: list[BaseException] = []
    grabs: list[str] = []
    expected_ok = (NoSuchProcess, ProcessDied)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        held = []
        try:
            for _ in range(n_ops):
                op = rng.choice(["grab", "grab_ro", "read", "lock", "release", "bp"])
                pid = rng.choice(targets).pid
                try:
                    if op in ("grab", "grab_ro"):
                        h = dt.grab(pid, readonly=op == "grab_ro")
                        if not h.readonly:
                            dt.resume(h)
                        held.append(h)
                        grabs.append(op)
                    elif op == "release" and held:
                        held.pop(rng.randrange(len(held))).release()
                    elif op == "read" and held:
                        h = rng.choice(held)
                        main = h.modules.main
                        if main is not None:
                            h.read(main.start, 4)
                    elif op == "lock" and held:
                        with rng.choice(held).lock() as h:
                            h.symbolize(h.modules.main.start if h.modules.main else 0)
                    elif op == "bp" and held:
                        h = rng.choice(held)
                        if not h.readonly:
                            sym = h.lookup("a.out", "work")
                            if sym is not None:
                                h.remove_breakpoint(
                                    h.add_breakpoint(sym.address, lambda t, tid: None)
                                )
                except expected_ok:
                    pass
                except Exception as exc:
                    if (
                        "exited" in str(exc)
                        or "zombie" in str(exc)
                        or "no such process" in str(exc)
                    ):
                        continue
                    raise
        except BaseException as exc:
            errors.append(exc)
        finally:
            for h in held:
                h.release()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(300)
    assert not any(c.is_alive() for c in clients), "deadlock"
    assert errors == []
    assert grabs.count("grab") > n_clients and grabs.count("grab_ro") > n_clients
    assert all(p.refs == 0 for p in dt.processes)
    dt.close()
    assert wait_for(lambda: threading.active_count() <= threads_before)
    gc.collect()
    ElfFile.clear_cache()
    fds = os.listdir("/proc/self/fd")
    assert len(fds) <= fds_before, " ".join(os.path.realpath(f"/proc/self/fd/{f}") for f in fds)
    for p in targets:
        if p.poll() is None:
            assert tracer_of(p.pid) == 0
            assert state_of(p.pid) in "RS"


def test_target_killed_while_hitting_breakpoints(dt: Tracer, bpwork: Path) -> None:
    """The target dies mid-hit (SIGKILL from outside): no hang, no crash, a notification."""
    p = dt.create(
        [str(bpwork), "threads", "4", "100000000"], stop_at="main", stdout=subprocess.DEVNULL
    )
    for name in ("work", "work_rip", "work_push"):
        sym = p.lookup("a.out", name)
        assert sym is not None
        p.add_breakpoint(sym.address, lambda t, tid: None)
    dt.resume(p)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    notes = dt.sleep(10)
    assert [n.kind for n in notes] == [NotificationKind.KILLED]
    assert p.state is ProcessState.UNDEAD
    with pytest.raises(NoSuchProcess):
        p.registers()
    p.release()
