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
"""

from __future__ import annotations

import io
import os
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


def run_dtproc(kind: str) -> Runner:
    """A run under one of our backends, driven as a session drives it."""

    def run(exe: Path, work: Work, n: int) -> Sample:
        cpu = cpu_now()
        own = time.process_time()
        out = io.StringIO()
        lock = threading.Lock()
        drops = [0]
        tracer = Tracer()
        to_child, to_us = os.pipe()
        from_child, from_us = os.pipe()
        try:
            proc = tracer.create([str(exe), work.mode, str(n)], stop_at="main",
                                 stdin=to_child, stdout=from_us)  # fmt: skip
            os.close(to_child)
            os.close(from_us)
            text = f"pid$target:a.out:{work.symbol}:entry {{ {CLAUSES[work.clause]} }}"
            program = compile_program(text, macros={"target": proc.pid})
            rt = Runtime(program, out)

            def fire(clauses: Sequence[int], ctx: ProbeContext) -> None:
                with lock:
                    rt.fire_probe(clauses, ctx)

            def add_counts(clause: int, probe: ProbeInfo, k: int) -> None:
                with lock:
                    rt.add_counts(clause, probe, k)

            def dropped(k: int) -> None:
                drops[0] += k

            backend: PtraceBackend | UprobeBackend = (
                PtraceBackend(fire) if kind == "ptrace" else
                UprobeBackend(fire, add_counts, [c.needs for c in program.clauses],
                              report_drops=dropped, options=UprobeOptions(RING_BYTES))
            )  # fmt: skip
            provider = PidProvider(proc.pid, proc.read, ProbeIds())
            sites = provider.sites(program.clauses[0].descriptions[0], proc.modules)
            backend.enable(proc, [Placement(s, (0,)) for s in sites])
            tracer.resume(proc)
            with os.fdopen(to_us, "wb", buffering=0) as w, os.fdopen(from_child, "rb") as r:
                r.readline()
                w.write(b"g")
                loop = loop_seconds(r.readline().decode())
            while proc.end is None:
                tracer.sleep(0.05)
            backend.disable(proc)
            backend.close()
            rt.end()
        finally:
            tracer.close()
        return Sample(loop, cpu_now() - cpu, time.process_time() - own, drops[0])

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


def main() -> None:
    opts, _ = options(__doc__.splitlines()[0], runs=5)
    exe = build("up_work", "-O2", "-pthread")
    runners: dict[str, Runner] = {"uprobe backend": run_dtproc("uprobe")}
    if have("bpftrace"):
        runners["bpftrace"] = run_bpftrace
    runners["ptrace backend"] = run_dtproc("ptrace")
    title = f"per hit, (T(N) - T(0)) / N, medians of {opts.runs} runs (ratio to bpftrace)"
    target = Table(f"Cost in the target {title}", "clause", COLUMNS, baseline="bpftrace")
    cpu = Table(f"CPU, tracer and target, {title}", "clause", COLUMNS, baseline="bpftrace")
    notes: list[str] = []
    started = time.monotonic()
    for work in rows(opts.quick):
        row = measure_row(exe, work, runners, opts.runs)
        for column in runners:
            target.add(work.label, column, row.in_target[column])
            cpu.add(work.label, column, row.cpu[column])
        notes.append(note(work, target, row))
    notes.append(f"(measured in {time.monotonic() - started:.0f} s)")
    report("uprobe_backend", opts, [target, cpu], notes)


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
