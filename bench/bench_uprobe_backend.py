"""Per-hit cost of D clauses under the uprobe backend, the ptrace backend and bpftrace.

    PYTHONPATH=src python bench/bench_uprobe_backend.py [--quick] [--runs N]

Three clauses -- ``@ = count()`` (kernel counters, no samples), ``@ = sum(arg1)`` (a sample
of the registers per hit) and ``@[ustack()] = count()`` (a sample with a stack copy per hit,
unwound afterwards) -- on two functions of
tests/targets/up_work.c: ``work_push`` starts with ``push %rbp`` (the kernel emulates it)
and ``work_rip`` with ``mov disp(%rip)`` (the kernel single-steps it out of line).

Each run creates the target under the tracer, lets it call the function N times and
exit. Two costs per hit, each ``(T(N) - T(0)) / N`` from medians of interleaved runs:

* *in the target*: the target's own timing of its call loop -- what probing does to
  the traced program (a ptrace hit stops it; a uprobe traps into the kernel only);
* *CPU*: tracer plus target (and bpftrace), for the whole run: samples drained and
  unwound after the loop count here, as do lost samples, which cost nothing.

A tight loop makes samples far faster than Python drains them, so most are dropped
(and reported); the notes give the tracer's CPU per sample it did deliver. The uprobe
backend gets 32 MiB rings here (``UprobeOptions.ring_bytes``), as ``-b 32m`` would.

``--part idle`` measures the drain thread while nothing happens: a target whose threads
all sleep (each one has its ring) under ``@ = sum(arg0)``, the tracer's CPU per second of
that, then the latency of lone hits (a byte written to the target, which makes one call;
until the clause fires) -- such a hit is below any ring's wakeup mark, so the drain
thread's timer decides.
"""

from __future__ import annotations

import io
import os
import queue
import re
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    Distribution,
    Grid,
    Reportable,
    Stats,
    Table,
    build,
    format_ratio,
    format_seconds,
    have,
    options,
    per_hit,
    report,
)
from dtproc.control import Tracer
from dtproc.d import ProbeContext, ProbeInfo, Runtime, compile_program
from dtproc.probes.backend import Placement
from dtproc.probes.pid import PidProvider
from dtproc.probes.ptrace_backend import PtraceBackend
from dtproc.probes.sites import ProbeIds
from dtproc.probes.uprobe_backend import UprobeBackend, UprobeOptions

IDLE_TARGET = r"""
/* THREADS threads sleep in read(2); the main thread calls idle_tick once per byte read
 * from stdin (and says "tick"), and ends them all at EOF. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int gate[2];

__attribute__((noinline)) long idle_tick(long a, long b) {
    __asm__ volatile("" ::: "memory");
    return a + b;
}

static void *sleeper(void *arg) {
    char c;
    (void)arg;
    return read(gate[0], &c, 1) < 0 ? arg : NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    pthread_t tids[256];
    char c;
    long n = 0;
    if (threads > 256 || pipe(gate))
        return 2;
    for (int t = 0; t < threads; t++)
        pthread_create(&tids[t], NULL, sleeper, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (read(0, &c, 1) == 1) {
        idle_tick(n, n);
        n++;
        printf("tick\n");
    }
    close(gate[1]);
    for (int t = 0; t < threads; t++)
        pthread_join(tids[t], NULL);
    return 0;
}
"""
IDLE_CLAUSE = "pid$target:a.out:idle_tick:entry { @ = sum(arg0); }"
IDLE_THREADS = (1, 64)
IDLE_COLUMNS = ("tracer CPU", "lone hit: median", "p90", "max", "hits")

FUNCTIONS = {"push %rbp": ("push", "work_push"), "mov disp(%rip)": ("rip", "work_rip")}
CLAUSES = {
    "count()": "@ = count();",
    "sum(arg1)": "@ = sum(arg1);",
    "@[ustack()] = count()": "@[ustack()] = count();",
}
BPFTRACE = {
    "count()": "@ = count();",
    "sum(arg1)": "@ = sum(arg1);",
    "@[ustack()] = count()": "@[ustack] = count();",
}
RING_BYTES = 32 << 20
COLUMNS = ("uprobe backend", "bpftrace", "ptrace backend")


@dataclass(frozen=True, slots=True)
class Work:
    """One row: a clause on a function, and how many hits each method gets."""

    clause: str
    function: str
    hits: dict[str, int]

    @property
    def label(self) -> str:
        return f"{self.clause} on {self.function}"

    @property
    def mode(self) -> str:
        return FUNCTIONS[self.function][0]

    @property
    def symbol(self) -> str:
        return FUNCTIONS[self.function][1]


@dataclass
class Sample:
    """One run: the target's loop time, the CPU of the whole run and of the tracer alone,
    samples dropped."""

    loop: float
    cpu: float
    tracer_cpu: float = 0.0
    drops: int = 0


Runner = Callable[[Path, Work, int], Sample]


def cpu_now() -> float:
    """CPU time of this process and of every child reaped so far (tracees, bpftrace)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def loop_seconds(line: str) -> float:
    found = re.search(r"ns=(\d+)", line)
    if found is None:
        raise RuntimeError(f"the target said {line!r}")
    return int(found.group(1)) / 1e9


class Traced:
    """A program created under the tracer (stopped at main), a D program placed on it by one
    of our backends and the program resumed, as a session does it; pipes to talk to it."""

    def __init__(self, argv: Sequence[str], text: str, kind: str, options: UprobeOptions) -> None:
        self.lock = threading.Lock()
        self.drops = 0
        self.fired: queue.Queue[float] = queue.Queue()  # when each hit fired (monotonic)
        self.tracer = Tracer()
        to_child, to_us = os.pipe()
        from_child, from_us = os.pipe()
        self.to = os.fdopen(to_us, "wb", buffering=0)
        self.frm = os.fdopen(from_child, "rb")
        try:
            self.proc = self.tracer.create(list(argv), stop_at="main",
                                           stdin=to_child, stdout=from_us)  # fmt: skip
        finally:
            os.close(to_child)
            os.close(from_us)
        program = compile_program(text, macros={"target": self.proc.pid})
        self.rt = Runtime(program, io.StringIO())
        self.backend: PtraceBackend | UprobeBackend = (
            PtraceBackend(self.fire) if kind == "ptrace" else
            UprobeBackend(self.fire, self.add_counts, [c.needs for c in program.clauses],
                          report_drops=self.dropped, options=options)
        )  # fmt: skip
        provider = PidProvider(self.proc.pid, self.proc.read, ProbeIds())
        sites = provider.sites(program.clauses[0].descriptions[0], self.proc.modules)
        self.backend.enable(self.proc, [Placement(s, (0,)) for s in sites])
        self.tracer.resume(self.proc)

    def fire(self, clauses: Sequence[int], ctx: ProbeContext) -> None:
        with self.lock:
            self.rt.fire_probe(clauses, ctx)
        self.fired.put(time.monotonic())

    def add_counts(self, clause: int, probe: ProbeInfo, k: int) -> None:
        with self.lock:
            self.rt.add_counts(clause, probe, k)

    def dropped(self, k: int) -> None:
        self.drops += k

    def finish(self) -> None:
        """Let the program exit (EOF on its stdin), then disable, close and run END."""
        self.to.close()
        while self.proc.end is None:
            self.tracer.sleep(0.05)
        self.backend.disable(self.proc)
        self.backend.close()
        self.rt.end()

    def __enter__(self) -> Traced:
        return self

    def __exit__(self, *exc: object) -> None:
        self.to.close()
        self.frm.close()
        self.tracer.close()


def run_dtproc(kind: str) -> Runner:
    """A run under one of our backends, driven as a session drives it."""

    def run(exe: Path, work: Work, n: int) -> Sample:
        cpu = cpu_now()
        own = time.process_time()
        text = f"pid$target:a.out:{work.symbol}:entry {{ {CLAUSES[work.clause]} }}"
        argv = [str(exe), work.mode, str(n)]
        with Traced(argv, text, kind, UprobeOptions(RING_BYTES)) as traced:
            traced.frm.readline()
            traced.to.write(b"g")
            loop = loop_seconds(traced.frm.readline().decode())
            traced.finish()
        return Sample(loop, cpu_now() - cpu, time.process_time() - own, traced.drops)

    return run


def run_bpftrace(exe: Path, work: Work, n: int) -> Sample:
    cpu = cpu_now()
    script = f"uprobe:{exe}:{work.symbol} {{ {BPFTRACE[work.clause]} }}"
    out = subprocess.run(
        ["bpftrace", "-e", script, "-c", f"{exe} auto {work.mode} {n}"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return Sample(loop_seconds(out.stdout), cpu_now() - cpu)


def per_hit_stats(full: list[Sample], empty: list[Sample], n: int, metric: str) -> Stats:
    values = [getattr(s, metric) for s in full]
    base = statistics.median(getattr(s, metric) for s in empty)
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) >= 2 else (values[0],) * 3
    median = statistics.median(values)
    return Stats(per_hit(median, base, n), 0.0, per_hit(q1, base, n), per_hit(q3, base, n),
                 len(values))  # fmt: skip


@dataclass
class Row:
    """The results of one row: per-hit costs by method, and what the uprobe backend dropped."""

    in_target: dict[str, Stats]
    cpu: dict[str, Stats]
    dropped: float  # the share of samples the uprobe backend lost
    per_sample: float  # tracer CPU per sample it delivered (0: it counted, no samples)


def measure_row(exe: Path, work: Work, runners: dict[str, Runner], runs: int) -> Row:
    """Per-hit costs of one row, methods taking turns run after run."""
    full: dict[str, list[Sample]] = {name: [] for name in runners}
    empty: dict[str, list[Sample]] = {name: [] for name in runners}
    for i in range(runs + 1):  # the first round warms caches and is dropped
        for name, runner in runners.items():
            n = work.hits[name]
            with_hits, without = runner(exe, work, n), runner(exe, work, 0)
            if i:
                full[name].append(with_hits)
                empty[name].append(without)
    target = {m: per_hit_stats(full[m], empty[m], work.hits[m], "loop") for m in runners}
    cpu = {m: per_hit_stats(full[m], empty[m], work.hits[m], "cpu") for m in runners}
    ours, n = "uprobe backend", work.hits["uprobe backend"]
    drops = statistics.median(s.drops for s in full[ours])
    delivered = n - drops if work.clause != "count()" else 0
    tracer = statistics.median(s.tracer_cpu for s in full[ours]) - statistics.median(
        s.tracer_cpu for s in empty[ours]
    )
    return Row(target, cpu, drops / n, tracer / delivered if delivered else 0.0)


def rows(quick: bool) -> list[Work]:
    scale = 10 if quick else 1
    out = []
    for clause in CLAUSES:
        fast = (200_000 if clause == "count()" else 50_000) // scale
        slow = (20_000 if clause == "count()" else 5_000) // scale
        hits = {"uprobe backend": fast, "bpftrace": fast, "ptrace backend": slow}
        out += [Work(clause, function, hits) for function in FUNCTIONS]
    return out


@dataclass
class Idle:
    """The tracer's CPU share while the target idled, and the latency of lone hits after."""

    cpu: float
    latencies: list[float]


def run_idle(exe: Path, threads: int, seconds: float, ticks: int) -> Idle:
    """One idle target with *threads* sleeping threads, under the uprobe backend."""
    with Traced([str(exe), str(threads)], IDLE_CLAUSE, "uprobe", UprobeOptions(1 << 16)) as t:
        t.frm.readline()  # ready: every thread exists, and has its ring
        own = time.process_time()
        time.sleep(seconds)
        cpu = (time.process_time() - own) / seconds
        latencies = []
        for _ in range(ticks):
            sent = time.monotonic()
            t.to.write(b"t")
            t.frm.readline()
            latencies.append(t.fired.get(timeout=5) - sent)
            time.sleep(0.137)  # out of step with any timer of the drain thread
        t.finish()
    return Idle(cpu, latencies)


def measure_idle(runs: int, quick: bool) -> Grid:
    exe = build("idle_threads", "-O2", "-pthread", source=IDLE_TARGET)
    seconds, ticks = (1.0, 5) if quick else (3.0, 20)
    grid = Grid(
        "The drain thread while the target idles: tracer CPU per second, and the latency of "
        f"lone hits (medians of {runs} runs for the CPU)",
        "sleeping threads, each with a ring",
        IDLE_COLUMNS,
    )
    for threads in IDLE_THREADS:
        results = [run_idle(exe, threads, seconds, ticks) for _ in range(runs)]
        cpu = statistics.median(r.cpu for r in results)
        lone = Distribution.of([x for r in results for x in r.latencies])
        row = str(threads)
        grid.add(row, "tracer CPU", cpu, f"{cpu:.2%}")
        grid.add(row, "lone hit: median", lone.median, format_seconds(lone.median))
        grid.add(row, "p90", lone.p90, format_seconds(lone.p90))
        grid.add(row, "max", lone.max, format_seconds(lone.max))
        grid.add(row, "hits", lone.samples, str(lone.samples))
    return grid


def measure_hits(runs: int, quick: bool) -> tuple[list[Reportable], list[str]]:
    """The per-hit tables, and a note per row."""
    exe = build("up_work", "-O2", "-pthread")
    runners: dict[str, Runner] = {"uprobe backend": run_dtproc("uprobe")}
    if have("bpftrace"):
        runners["bpftrace"] = run_bpftrace
    runners["ptrace backend"] = run_dtproc("ptrace")
    title = f"per hit, (T(N) - T(0)) / N, medians of {runs} runs (ratio to bpftrace)"
    target = Table(f"Cost in the target {title}", "clause", COLUMNS, baseline="bpftrace")
    cpu = Table(f"CPU, tracer and target, {title}", "clause", COLUMNS, baseline="bpftrace")
    notes: list[str] = []
    for work in rows(quick):
        row = measure_row(exe, work, runners, runs)
        for column in runners:
            target.add(work.label, column, row.in_target[column])
            cpu.add(work.label, column, row.cpu[column])
        notes.append(note(work, target, row))
    return [target, cpu], notes


def main() -> None:
    opts, args = options(
        __doc__.splitlines()[0],
        runs=5,
        extra=lambda p: p.add_argument(
            "--part", choices=("hits", "idle", "all"), default="all", help="what to measure"
        ),
    )
    tables: list[Reportable] = []
    notes: list[str] = []
    started = time.monotonic()
    if args.part in ("hits", "all"):
        tables, notes = measure_hits(opts.runs, opts.quick)
    if args.part in ("idle", "all"):
        tables.append(measure_idle(opts.runs, opts.quick))
    notes.append(f"(measured in {time.monotonic() - started:.0f} s)")
    report("uprobe_backend", opts, tables, notes)


def note(work: Work, target: Table, row: Row) -> str:
    """The goals, per row: within 2x of bpftrace, at least 10x cheaper than ptrace."""
    parts = [f"{work.label}:"]
    vs_ptrace = target.ratio(work.label, "ptrace backend", "uprobe backend")
    vs_bpftrace = target.ratio(work.label, "uprobe backend", "bpftrace")
    if vs_ptrace is not None:
        parts.append(f"ptrace/uprobe {format_ratio(vs_ptrace)}")
    if vs_bpftrace is not None:
        parts.append(f"uprobe/bpftrace {format_ratio(vs_bpftrace)}")
    if row.per_sample:
        parts.append(
            f"uprobe: {row.dropped:.0%} of samples dropped, "
            f"{format_seconds(row.per_sample)} of tracer CPU per sample delivered"
        )
    return " ".join(parts)


if __name__ == "__main__":
    main()
