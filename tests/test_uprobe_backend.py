"""The uprobe backend against the ptrace backend: same programs, same targets, same output.

Every run drives a backend directly, as a session would: a process created (stopped at
main) or grabbed, sites from the pid provider, a compiled program and its runtime, the
backend's enable, resume, the workload, disable and END. The targets speak a small
protocol over pipes ("ready", "g" to run the workload, "done", anything else to exit)
so that the workload can be timed, watched, repeated and left running after tracing.
"""

from __future__ import annotations

import io
import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from dtproc import uprobes
from dtproc.control import Process, Tracer
from dtproc.d import (
    ClauseNeeds,
    ProbeContext,
    ProbeDescription,
    ProbeInfo,
    Runtime,
    compile_program,
)
from dtproc.elf import ElfFile
from dtproc.errors import ProbeError
from dtproc.probes.backend import Placement
from dtproc.probes.pid import PidProvider
from dtproc.probes.ptrace_backend import PtraceBackend
from dtproc.probes.samples import ustack_bytes
from dtproc.probes.sites import ProbeIds, ProbeKind, ProbeSite
from dtproc.probes.uprobe_backend import (
    UprobeBackend,
    UprobeOptions,
    uprobe_eligible,
    uprobes_available,
)
from dtproc.probes.usdt import UsdtProvider
from dtproc.sdt import probes as sdt_probes
from dtproc.uprobes import UprobeSpec

STRESS = os.environ.get("DTPROC_STRESS") == "1"
DONE_TIMEOUT = 600 if STRESS else 10
# A thread created after a grab can stay in its first stop: the dispatcher reaps that stop
# before the parent's clone event is handled, and Tracee._on_clone registers the thread
# without claiming the status reaped for it (reported to the lead).

pytestmark = pytest.mark.skipif(not uprobes_available()[0], reason=uprobes_available()[1])

Backend = PtraceBackend | UprobeBackend
Argv = Sequence[str | int | os.PathLike[str]]


@pytest.fixture(scope="module")
def ub_work(build) -> Path:  # type: ignore[no-untyped-def]
    return build("ub_work", "-O2", "-pthread")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ub_usdt(build) -> Path:  # type: ignore[no-untyped-def]
    return build("ub_usdt", "-O2")  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def no_events_left() -> Iterator[None]:
    yield
    assert uprobes.open_event_count() == 0, "a test left perf events open"


# ----------------------------------------------------------------------------- the driver


@dataclass
class Outcome:
    """What one traced run produced."""

    output: str = ""
    errors: str = ""
    drops: int = 0
    done: list[str] = field(default_factory=list)  # the target's "done ..." lines
    switches: int = 0  # voluntary context switches of the main thread during the workload
    armed_after: list[UprobeSpec] = field(default_factory=list)  # grabbed: still armed
    status: int | None = None  # grabbed: its exit status after we let go


@dataclass
class Target:
    """The pipes to a protocol-speaking target, and its handle.

    *never_stopped*: no thread of it should ever sit in a ptrace stop (the uprobe
    backend stops nothing), so one that does for a second is stuck, not slow.
    """

    proc: Process
    to: BinaryIO
    frm: BinaryIO
    never_stopped: bool = False

    def go(self) -> str:
        """Run the workload once; its "done" line."""
        self.to.write(b"g")
        self.to.flush()
        deadline = time.monotonic() + DONE_TIMEOUT
        stuck = 0
        while not select.select([self.frm], [], [], 0.1)[0]:
            stuck = stuck + 1 if self.never_stopped and traced_stops(self.proc.pid) else 0
            # Opening a thread's uprobe events waits behind any uprobe being closed on the
            # machine (the kernel serialises them, ~0.1 s each): allow for a busy machine.
            if stuck >= 100 or time.monotonic() > deadline:
                raise TimeoutError(f"pid {self.proc.pid} is stuck: threads in ptrace stops")
        return self.frm.readline().decode().strip()


def traced_stops(pid: int) -> list[int]:
    """Threads of *pid* in a ptrace stop now."""
    stopped = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "t":
            stopped.append(int(tid))
    return stopped


SitesFor = Callable[[Process, ProbeDescription, ProbeIds], list[ProbeSite]]


def pid_sites(proc: Process, desc: ProbeDescription, ids: ProbeIds) -> list[ProbeSite]:
    return PidProvider(proc.pid, proc.read, ids).sites(desc, proc.modules)


def voluntary_switches(pid: int) -> int:
    """Context switches of the main thread it asked for: each ptrace stop is one."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
    assert found is not None
    return int(found.group(1))


class Run:
    """One program traced under one backend: its runtime, output and placements."""

    def __init__(self, kind: str, text: str, options: UprobeOptions | None) -> None:
        self.kind = kind
        self.text = text
        self.options = options
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.drops = 0
        self.fired = 0
        self.lock = threading.Lock()
        self.specs: list[UprobeSpec] = []
        self.ids = ProbeIds()
        self.rt: Runtime | None = None

    def fire(self, clauses: Sequence[int], ctx: ProbeContext) -> None:
        assert self.rt is not None
        with self.lock:
            self.rt.fire_probe(clauses, ctx)
            self.fired += 1

    def add_counts(self, clause: int, probe: ProbeInfo, n: int) -> None:
        assert self.rt is not None
        with self.lock:
            self.rt.add_counts(clause, probe, n)

    def report_drops(self, n: int) -> None:
        assert self.rt is not None
        self.drops += n
        self.rt.report_drops(n)

    def backend(self, proc: Process) -> Backend:
        program = compile_program(self.text, macros={"target": proc.pid})
        modules = proc.modules
        self.rt = Runtime(
            program, self.out, err=self.err, symbolize=lambda pid, pc: modules.symbolize(pc)
        )
        if self.kind == "ptrace":
            return PtraceBackend(self.fire)
        return UprobeBackend(
            self.fire,
            self.add_counts,
            [c.needs for c in program.clauses],
            report_drops=self.report_drops,
            warn=lambda message: self.err.write(message + "\n"),
            options=self.options,
        )

    def place(self, proc: Process, backend: Backend, sites_for: SitesFor, *, here: bool) -> None:
        assert self.rt is not None
        for clause in self.rt.program.clauses:
            for desc in clause.descriptions:
                sites = sites_for(proc, desc, self.ids)
                self.specs += [UprobeSpec(s.path, s.file_offset) for s in sites]
                placements = [Placement(s, (clause.index,)) for s in sites]
                if here:
                    proc.call(lambda t, p=placements: backend.enable_here(proc, p))
                else:
                    backend.enable(proc, placements)

    def end(self) -> None:
        assert self.rt is not None
        with self.lock:
            self.rt.end()


#: More work after the first run: (target, backend, run) -> nothing.
Workload = Callable[[Target, Backend, Run], None]


def create(tracer: Tracer, argv: Argv) -> Target:
    to_child, from_us = os.pipe()
    to_us, from_child = os.pipe()
    try:
        proc = tracer.create(
            [str(a) for a in argv], stop_at="main", stdin=to_child, stdout=from_child
        )
    finally:
        os.close(to_child)
        os.close(from_child)
    return Target(proc, os.fdopen(from_us, "wb", buffering=0), os.fdopen(to_us, "rb"))


def once(target: Target, backend: Backend, run: Run) -> None:
    """Nothing more than the first run."""


def trace(
    kind: str,
    argv: Argv,
    text: str,
    *,
    reaper: object,
    grab: bool = False,
    options: UprobeOptions | None = None,
    sites_for: SitesFor = pid_sites,
    workload: Workload = once,
    cpu: int | None = None,
) -> Outcome:
    """Run *argv* (a protocol-speaking target) traced by *text* under backend *kind*.

    With *cpu*, the target and the threads it creates run on that CPU only.
    """
    run = Run(kind, text, options)
    outcome = Outcome()
    tracer = Tracer()
    backend: Backend | None = None
    try:
        if grab:
            child = reaper.spawn(
                [str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )  # type: ignore[attr-defined]
            child.stdout.readline()
            target = Target(tracer.grab(child.pid), child.stdin, child.stdout)
        else:
            target = create(tracer, argv)
        target.never_stopped = kind == "uprobe"
        proc = target.proc
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        backend = run.backend(proc)
        run.place(proc, backend, sites_for, here=False)
        with run.lock:
            run.rt.begin()  # type: ignore[union-attr]
        tracer.resume(proc)
        if not grab:
            target.frm.readline()
        before = voluntary_switches(proc.pid)
        outcome.done.append(target.go())
        outcome.switches = voluntary_switches(proc.pid) - before
        workload(target, backend, run)
        if grab:
            backend.disable(proc)
            outcome.armed_after = [s for s in run.specs if uprobes.breakpoint_armed(proc.pid, s)]
            tracer.close()  # the grabbed process runs on
            target.to.close()
            outcome.status = child.wait(timeout=30)
        else:
            target.to.close()
            while proc.end is None:
                tracer.sleep(0.1)
            backend.disable(proc)
        backend.close()
        run.end()
    except BaseException:
        if grab:
            child.kill()  # a stuck target: do not let the tracer wait for it to stop
        raise
    finally:
        if backend is not None:
            backend.close()
        tracer.close()
    outcome.output, outcome.errors, outcome.drops = (
        run.out.getvalue(),
        run.err.getvalue(),
        run.drops,
    )
    return outcome


def both(argv: Argv, text: str, reaper: object, **kw: object) -> tuple[Outcome, Outcome]:
    """The same run under the uprobe backend and under the ptrace backend."""
    ours = trace("uprobe", argv, text, reaper=reaper, **kw)  # type: ignore[arg-type]
    oracle = trace("ptrace", argv, text, reaper=reaper, **kw)  # type: ignore[arg-type]
    return ours, oracle


def keyed(output: str) -> dict[str, int]:
    """``key  value`` lines of printed aggregations."""
    return {k: int(v) for k, v in re.findall(r"^\s*(\S+)\s+(\d+)$", output, re.M)}


def numbers(output: str) -> list[int]:
    return [int(v) for v in re.findall(r"^\s*(-?\d+)$", output, re.M)]


# ----------------------------------------------------------------------------- counting

COUNTED = """
pid$target:a.out:ub_push:entry, pid$target:a.out:ub_rip:entry { @[probefunc] = count(); }
pid$target:a.out:ub_push:return { @["returns"] = count(); }
"""


def test_counts_are_exact_and_match_ptrace(ub_work: Path, reaper: object) -> None:
    n = 100_000 if STRESS else 2000
    ours, oracle = both([ub_work, "wait", n, 8], COUNTED, reaper)
    assert keyed(ours.output) == {"ub_push": 8 * n, "ub_rip": 8 * n, "returns": 8 * n}
    assert ours.output == oracle.output
    assert ours.done == oracle.done and ours.errors == "" and ours.drops == 0


def test_target_is_not_stopped_per_hit(ub_work: Path, reaper: object) -> None:
    n = 20_000
    count = "pid$target::ub_push:entry { @ = count(); }"
    counted = trace("uprobe", [ub_work, "wait", n, 0], count, reaper=reaper)
    summed = "pid$target::ub_push:entry { @ = sum(arg1); }"
    big = UprobeOptions(ring_bytes=8 << 20)
    sampled = trace("uprobe", [ub_work, "wait", n, 0], summed, reaper=reaper, options=big)
    stopped = trace("ptrace", [ub_work, "wait", 500, 0], count, reaper=reaper)
    assert numbers(counted.output) == [n]
    assert numbers(sampled.output) == [sum(3 * i + 7 for i in range(n))]
    # A few for the pipe and page faults; nothing like one per hit, as under ptrace.
    assert counted.switches < 50 and sampled.switches < 50, (counted.switches, sampled.switches)
    assert stopped.switches >= 500


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed")
def test_counts_match_bpftrace(ub_work: Path, reaper: object) -> None:
    n, threads = 5000, 3
    script = " ".join(f"uprobe:{ub_work}:ub_{f} {{ @{f} = count(); }}" for f in ("push", "rip"))
    out = subprocess.run(
        ["bpftrace", "-e", script, "-c", f"{ub_work} {n} {threads}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    oracle = {f"ub_{k}": int(v) for k, v in re.findall(r"@(\w+): (\d+)", out.stdout)}
    text = "pid$target::ub_push:entry, pid$target::ub_rip:entry { @[probefunc] = count(); }"
    ours = trace("uprobe", [ub_work, "wait", n, threads], text, reaper=reaper)
    assert keyed(ours.output) == oracle == {"ub_push": n * threads, "ub_rip": n * threads}


# ----------------------------------------------------------------------------- sampling

SAMPLED = r"""
#pragma D option quiet
pid$target:a.out:ub_push:entry { self->a = arg0; printf("push %d %d\n", arg0, arg1); }
pid$target:a.out:ub_push:return /self->a/ {
    printf("ret %x %d %d\n", arg0, arg1, arg1 - self->a);
    self->a = 0;
}
pid$target:a.out:ub_many:entry { printf("many %d %d %d %s\n", arg0, arg6, arg7, probename); }
pid$target:a.out:ub_top:return { @top = sum(arg1); @n[probefunc] = count(); }
"""


def test_sampled_clauses_print_what_ptrace_prints(ub_work: Path, reaper: object) -> None:
    n = 300
    ours, oracle = both([ub_work, "wait", n, 0], SAMPLED, reaper)
    assert ours.output == oracle.output
    assert ours.errors == "" and ours.drops == 0
    lines = ours.output.splitlines()
    # ub_push(1, 10) returns 11 from its ret at offset 9; arg6 and arg7 were on the stack.
    assert lines[:6] == [
        "push 0 7", "many 0 0 0 entry", "push 1 10", "ret 9 11 10", "many 1 6 7 entry", "push 2 13",
    ]  # fmt: skip
    assert numbers(ours.output)[0] == sum(2 * i + 5 for i in range(n))


def test_conditional_tail_calls_return_only_when_taken(ub_work: Path, reaper: object) -> None:
    # ub_cond(i % 3) tail-calls ub_leaf (jne at offset 3) for 1 and 2, returns -1 for 0.
    n = 300
    text = "pid$target:a.out:ub_cond:return { @[arg0] = count(); }"
    counted = "pid$target:a.out:ub_cond:return { @[probename] = count(); }"
    ours, oracle = both([ub_work, "wait", n, 0], text, reaper)
    assert ours.output == oracle.output
    assert keyed(ours.output) == {"3": n - n // 3, "16": n // 3}  # ret at 0x10
    ours, oracle = both([ub_work, "wait", n, 0], counted, reaper)  # pure count(), yet sampled
    assert keyed(ours.output) == keyed(oracle.output) == {"return": n}


def test_a_probe_sampled_again_with_a_stack_copy_fires_once_per_hit(
    ub_work: Path, reaper: object
) -> None:
    # Two enable calls on one probe: the second needs a stack copy, so a new event takes over.
    text = """
        pid$target:a.out:ub_push:entry { @s = sum(arg0); @n = count(); }
        pid$target:a.out:ub_push:entry { @[ustack(2)] = count(); }
    """
    big = UprobeOptions(ring_bytes=8 << 20)
    ours, oracle = both([ub_work, "wait", 300, 0], text, reaper, options=big)
    assert ours.output == oracle.output and ours.drops == 0


def test_threads_of_a_grabbed_process_are_all_traced(ub_work: Path, reaper: object) -> None:
    n, threads = 3000, 4
    text = """
        pid$target:a.out:ub_push:entry { @[probefunc] = count(); }
        pid$target:a.out:ub_rip:entry { @s = sum(arg0); @t[tid] = count(); }
    """
    ours = trace("uprobe", [ub_work, "wait", n, threads], text, reaper=reaper, grab=True)
    found = keyed(ours.output)
    assert found.pop("ub_push") == n * threads
    assert numbers(ours.output)[0] == threads * n * (n - 1) // 2
    assert sorted(found.values()) == [n] * threads  # every thread, each created after enabling
    assert ours.armed_after == [] and ours.status == 0 and ours.drops == 0
    oracle = trace("ptrace", [ub_work, "wait", n, threads], text, reaper=reaper, grab=True)
    assert ours.done == oracle.done


def test_user_stacks_match_ptrace(ub_work: Path, reaper: object) -> None:
    text = """
        #pragma D option ustackframes=20
        pid$target:a.out:ub_leaf:entry { @[ustack()] = count(); }
        pid$target:a.out:ub_push:entry { @[ustack(4)] = count(); }
    """
    big = UprobeOptions(ring_bytes=4 << 20)  # room for every sample: nothing is dropped
    ours, oracle = both([ub_work, "wait", 200, 2], text, reaper, options=big)
    assert ours.drops == 0 and ours.errors == ""
    assert ours.output == oracle.output
    assert re.search(r"ub_work-\w+`ub_leaf\n\s+ub_work-\w+`ub_mid\+0x", ours.output)
    assert "libc.so.6`start_thread" in ours.output
    # ub_push has no CFI and our int3 sits on its `push %rbp`: the caller comes from its code.
    assert re.search(r"ub_work-\w+`ub_push\n\s+ub_work-\w+`loop\+0x", ours.output)


def test_lost_samples_are_reported_as_drops(ub_work: Path, reaper: object) -> None:
    n = 2000
    tiny = UprobeOptions(ring_bytes=4096)
    text = "#pragma D option ustackframes=40\npid$target::ub_push:entry { @[ustack()] = count(); }"
    ours = trace("uprobe", [ub_work, "wait", n, 0], text, reaper=reaper, options=tiny)
    assert ours.drops > 0 and sum(numbers(ours.output)) + ours.drops == n
    assert re.search(r"dtproc: \d+ drops? on CPU", ours.errors)


def test_cpu_is_the_one_the_hit_happened_on(ub_work: Path, reaper: object) -> None:
    cpu = max(os.sched_getaffinity(0))
    text = "pid$target:a.out:ub_push:entry { @[cpu] = count(); }"
    ours, oracle = both([ub_work, "wait", 200, 2], text, reaper, cpu=cpu)
    assert keyed(ours.output) == keyed(oracle.output) == {str(cpu): 400}


def test_the_drain_thread_wakes_when_threads_exit(ub_work: Path, reaper: object) -> None:
    """Not on its timer (a minute here): the rings of exited threads say so to poll(2)."""
    n, threads = 300, 2
    slow = UprobeOptions(ring_bytes=1 << 20, drain_interval=60.0, idle_interval=60.0)
    text = "pid$target:a.out:ub_push:entry { @ = sum(arg0); }"
    fired_before_disable: list[int] = []

    def wait_for_samples(target: Target, backend: Backend, run: Run) -> None:
        deadline = time.monotonic() + DONE_TIMEOUT
        while run.fired < n * threads and time.monotonic() < deadline:
            time.sleep(0.01)
        fired_before_disable.append(run.fired)

    argv = [ub_work, "wait", n, threads]
    ours = trace("uprobe", argv, text, reaper=reaper, options=slow, workload=wait_for_samples)
    assert fired_before_disable == [n * threads]  # a quarter of a ring was never reached
    assert numbers(ours.output) == [threads * n * (n - 1) // 2] and ours.drops == 0


def test_exit_and_printa_see_the_counts_so_far(ub_work: Path, reaper: object) -> None:
    n = 4000
    text = f"""
        pid$target:a.out:ub_push:entry {{ @c = count(); }}
        pid$target:a.out:ub_rip:entry /arg0 == {n // 2}/ {{ exit(0); }}
    """
    ours = trace("uprobe", [ub_work, "wait", n, 0], text, reaper=reaper)
    assert "ub_rip:entry" in ours.output  # the exit() clause's default record
    # Counted hits reach the runtime before exit() runs (late by the drain's delay at most).
    assert n // 2 < numbers(ours.output)[-1] <= n


def test_forgotten_probes_keep_their_counts(ub_work: Path, reaper: object) -> None:
    """An exec (here: forget everything, then place again) starts over; old counts stay."""
    n = 500
    text = """
        pid$target:a.out:ub_push:entry { @c[probefunc] = count(); }
        pid$target:a.out:ub_rip:entry { @s[probefunc] = sum(arg0); }
    """

    def forget_and_run_again(target: Target, backend: Backend, run: Run) -> None:
        target.proc.call(lambda t: backend.forget(target.proc, None))
        target.go()  # not traced: the probes are forgotten, nothing is placed
        run.place(target.proc, backend, pid_sites, here=True)
        target.go()

    argv = [ub_work, "wait", n, 0]
    ours = trace("uprobe", argv, text, reaper=reaper, workload=forget_and_run_again)
    assert keyed(ours.output) == {"ub_push": 2 * n, "ub_rip": n * (n - 1)}


def test_enable_refuses_what_needs_target_memory(ub_work: Path) -> None:
    tracer = Tracer()
    try:
        proc = create(tracer, [ub_work, "wait", 1, 0]).proc
        program = compile_program(
            "pid$target::ub_push:entry { trace(copyinstr(arg0)); }", macros={"target": proc.pid}
        )
        backend = UprobeBackend(
            lambda c, x: None, lambda c, p, k: None, [c.needs for c in program.clauses]
        )
        sites = pid_sites(proc, program.clauses[0].descriptions[0], ProbeIds())
        with pytest.raises(ProbeError, match="target's memory"):
            backend.enable(proc, [Placement(s, (0,)) for s in sites])
        backend.close()
    finally:
        tracer.close()


# ----------------------------------------------------------------------------- USDT


def usdt_sites(proc: Process, desc: ProbeDescription, ids: ProbeIds) -> list[ProbeSite]:
    return UsdtProvider(proc.pid, proc.read, ids).sites(desc, proc.modules)


def test_usdt_semaphore_and_arguments(ub_usdt: Path, reaper: object) -> None:
    n = 500
    text = "ub$target:::tick { @s = sum(arg0); @f = sum(arg1); @c = count(); }"
    ours = trace("uprobe", [ub_usdt, n], text, reaper=reaper, grab=True, sites_for=usdt_sites)
    assert ours.done == [f"done fired={n}"]  # the kernel raised the semaphore while armed
    assert numbers(ours.output) == [n * (n - 1) // 2, sum(7 * i + 1 for i in range(n)), n]
    assert ours.armed_after == [] and ours.status == 0 and ours.drops == 0
    oracle = trace("ptrace", [ub_usdt, n], text, reaper=reaper, grab=True, sites_for=usdt_sites)
    assert oracle.output == ours.output and oracle.done == ours.done


def test_usdt_arguments_in_target_memory_are_not_eligible(ub_usdt: Path) -> None:
    [probe] = sdt_probes(ElfFile.open(ub_usdt))
    info = ProbeInfo(4, "ub1", "a.out", "main", "tick")
    site = ProbeSite(
        info, ProbeKind.USDT, 1, 0x1000, 0x1000, str(ub_usdt), 0x1000, usdt_args=probe.args
    )
    program = compile_program("ub1:::tick { @ = sum(arg1); } ub1:::tick { @ = sum(arg2); }")
    assert uprobe_eligible(program.clauses[0].needs, site)[0]  # arg1 is 8(%rsp): in the copy
    ok, why = uprobe_eligible(program.clauses[1].needs, site)
    assert not ok and "arg2" in why and "ub_usdt_global(%rip)" in why


# ----------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    ("body", "eligible"),
    [
        ("@[probefunc] = count();", True),
        ("@[ustack()] = count();", True),
        ("self->t = timestamp;", True),
        ('printf("%d %d %d\\n", tid, arg0, arg7);', True),
        ("@[execname, pid, cpu] = quantize(arg1);", True),
        ("exit(0);", True),
        ("trace(copyinstr(arg0));", False),
        ("@[*(int *)copyin(arg0, 4)] = count();", False),
    ],
)
def test_eligibility(body: str, eligible: bool) -> None:
    needs: ClauseNeeds = compile_program(f"pid1:::entry {{ {body} }}").clauses[0].needs
    ok, why = uprobe_eligible(needs)
    assert ok is eligible and why
    if not eligible:
        assert "memory" in why


def test_capabilities_and_stack_sizes() -> None:
    ok, why = uprobes_available()
    assert ok and "may open" in why  # the suite runs as root (or skips above)
    assert ustack_bytes(100) == 19200 and ustack_bytes(1) == 8192 and ustack_bytes(10**4) == 32768
