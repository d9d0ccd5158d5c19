"""The pid provider through the command: per hit, start-up, and every libc function probed.

    PYTHONPATH=src python bench/bench_pid.py [--quick] [--runs N] [--scale F]

Issue 8's benchmark, of the ``dtproc`` command as a user runs it (a whole process each
time, Python start-up and all):

* **per hit**: ``dtproc -q -n 'pid$target:a.out:work:entry { @ = count(); }' -c './t N'``
  on a target that calls ``work()`` N times, against the same target run plainly,
  under ``ltrace -c -x work`` and under gdb (``break *work`` with ``silent``/``continue``
  commands).  Per hit = (T(N) - T(0)) / N of the whole command, from medians of runs
  that alternate N and 0 hits and take turns between the tools: start-up, symbol
  lookup and exit cancel out.  ``work`` is written in assembly and starts with
  ``push %rbp``, as a function built with frame pointers does: dtproc's ptrace backend
  emulates it, and so does the kernel for a uprobe (bench_uprobe_backend.py has the
  instructions that must be stepped out of line).  ltrace 0.7's ``-x`` also plants a
  breakpoint on the return address: that is what it costs, so it is counted.  Every
  method checks that it saw exactly N hits.
* **start-up**: T(0) of the same runs, a target that calls ``work()`` no time: what
  a user waits for before and after the program, by tool.
* **every libc function**: ``pid$target:libc.so.6::entry { @[probefunc] = count(); }``
  on ``ls -l /usr/bin``: the probes matched (dtrace's notice), the whole run against
  plain ``ls``, the hits (the sum of the counts), and the cost of placing a probe:
  the same program with ``BEGIN { exit(0); }`` (probes are placed and removed, the
  command is killed before it runs) against a single probe, divided by the number of
  probes besides.  Per hit there = (whole run - run ended at BEGIN - plain ls) / hits.

The uprobe backend's column is measured only when ``-x backend=uprobe`` really uses
uprobes (see :func:`_harness.uprobe_refusal`); otherwise a note says why not.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _harness import (
    Backend,
    DtprocRun,
    Grid,
    Reportable,
    Stats,
    Table,
    UnitCost,
    Units,
    build,
    check_hits,
    format_ratio,
    format_seconds,
    have,
    measurable_backends,
    measure,
    options_with_scale,
    report,
    run_dtproc,
    run_quietly,
    spawn_checked,
    unit_costs,
    wall_and_cpu,
)

TARGET: Final = r"""
#include <stdio.h>
#include <stdlib.h>

long work(long x); /* push %rbp first, as with frame pointers */
__asm__(".text\n.globl work\n.type work,@function\nwork:\n"
        "  push %rbp\n  mov %rsp, %rbp\n  lea 3(%rdi), %rax\n  pop %rbp\n  ret\n"
        ".size work, .-work\n");

/* usage: pid_bench CALLS */
int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 0, sum = 0;
    for (long i = 0; i < calls; i++) sum += work(i);
    printf("%ld\n", sum);
    return 0;
}
"""

COUNT_WORK: Final = "pid$target:a.out:work:entry { @ = count(); }"
HEAVY: Final = "pid$target:libc.so.6::entry { @[probefunc] = count(); }"
ONE_PROBE: Final = "pid$target:libc.so.6:strlen:entry { @[probefunc] = count(); }"
EXIT_AT_BEGIN: Final = " BEGIN { exit(0); }"
LS: Final = ("ls", "-l", "/usr/bin")
UPROBE_HEAVY_RUNS: Final = 1  # each takes minutes: see measure_heavy

PLAIN: Final = "plain"
LTRACE: Final = "ltrace -c -x work"
GDB: Final = "gdb"
COLUMNS: Final = (PLAIN, Backend.PTRACE.column, Backend.UPROBE.column, LTRACE, GDB)

Run = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Method:
    """One column: a whole run of the target with a given number of hits, and its usual N."""

    column: str
    run: Run
    hits: int


def plain_runner(exe: Path) -> Run:
    def run(hits: int) -> None:
        spawn_checked([exe, str(hits)])

    return run


def dtproc_runner(exe: Path, backend: Backend) -> Run:
    def run(hits: int) -> None:
        done = run_dtproc(COUNT_WORK, [exe, str(hits)], backend)
        check_hits(backend.column, done.total, hits)

    return run


_LTRACE_CALLS: Final = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+work$", re.M)


def ltrace_runner(exe: Path, scratch: Path) -> Run:
    """``ltrace -c``: a summary of calls by function, read back from its ``-o`` file."""
    summary = scratch / "ltrace.out"

    def run(hits: int) -> None:
        run_quietly(["ltrace", "-c", "-x", "work", "-o", summary, exe, str(hits)])
        found = _LTRACE_CALLS.search(summary.read_text())
        check_hits(LTRACE, int(found.group(1)) if found else 0, hits)

    return run


_GDB_COMMANDS: Final = (
    "set pagination off",
    "break *work",
    "commands\nsilent\ncontinue\nend",
    "run",
    "info breakpoints",
)
_GDB_HITS: Final = re.compile(r"breakpoint already hit (\d+) time")


def gdb_runner(exe: Path, scratch: Path) -> Run:
    """gdb on the address of ``work``: ``break work`` would skip the prologue."""
    script = scratch / "work.gdb"
    script.write_text("\n".join(_GDB_COMMANDS) + "\n")

    def run(hits: int) -> None:
        done = subprocess.run(
            ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-x", str(script),
             "--args", str(exe), str(hits)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
        )  # fmt: skip
        found = _GDB_HITS.search(done.stdout)
        check_hits(GDB, int(found.group(1)) if found else 0, hits)

    return run


def methods(exe: Path, scratch: Path, backends: Sequence[Backend], scale: float) -> list[Method]:
    """The columns that can be measured here, each with an N that keeps a run to seconds."""

    def hits(n: int) -> int:
        return max(1, round(n * scale))

    usual = {Backend.PTRACE: 50_000, Backend.UPROBE: 1_000_000}
    found = [Method(PLAIN, plain_runner(exe), hits(10_000_000))]
    found += [Method(b.column, dtproc_runner(exe, b), hits(usual[b])) for b in backends]
    if have("ltrace"):
        found.append(Method(LTRACE, ltrace_runner(exe, scratch), hits(5_000)))
    if have("gdb"):
        found.append(Method(GDB, gdb_runner(exe, scratch), hits(5_000)))
    return found


def measure_hits(chosen: Sequence[Method], runs: int) -> tuple[list[Table], dict[str, int]]:
    """Per hit (wall, CPU) and start-up: the methods take turns, run after run."""
    costs = unit_costs({m.column: Units(m.run, m.hits) for m in chosen}, runs)
    title = f"Cost per hit of `{COUNT_WORK}`, (T(N) - T(0)) / N, medians of {runs} runs"
    wall, cpu = wall_and_cpu(title, "target", COLUMNS, LTRACE)
    start = Table(
        f"A whole run with no hit, T(0) (start-up and exit; ratio to plain), medians of {runs}",
        "target",
        COLUMNS,
        baseline=PLAIN,
    )
    row = "work(), push %rbp first, 1 thread"
    for column, cost in costs.items():
        wall.add(row, column, cost.unit)
        cpu.add(row, column, cost.unit)
        start.add(f"{row}, called no time", column, cost.base)
        print(f"{column:<20} {format_seconds(cost.unit.wall)}/hit wall, "
              f"{format_seconds(cost.unit.cpu)} CPU, T(0) {format_seconds(cost.base.wall)}",
              file=sys.stderr)  # fmt: skip
    return [wall, cpu, start], {m.column: m.hits for m in chosen}


# ----------------------------------------------------------------------------- every libc function


@dataclass(frozen=True, slots=True)
class Heavy:
    """One backend's numbers for every libc function probed on ``ls -l /usr/bin``."""

    backend: Backend
    probes: int  # what the clause matched (BEGIN not counted)
    hits: int
    top: dict[str, int]
    whole: Stats  # the traced run, to the end
    placing: UnitCost  # unit: one probe placed and removed; base: one probe, ended at BEGIN


def _placing(backend: Backend, probes: int) -> Units:
    """``run(k)``: all the probes if k, else one, and end at BEGIN: T(k) - T(0) places k."""

    def run(more: int) -> DtprocRun:
        program = (HEAVY if more else ONE_PROBE) + EXIT_AT_BEGIN
        done = run_dtproc(program, LS, backend, quiet=False)
        check_hits(f"{backend.column} placing", done.matched - 1, more + 1)  # less BEGIN
        return done

    return Units(run, probes - 1)


def measure_heavy(backend: Backend, runs: int) -> Heavy:
    """The whole traced run, then placement against a single probe, each *runs* times.

    No warm-up run: under the uprobe backend a run takes minutes (removing a uprobe
    costs the kernel ~0.1 s), and the median of the ptrace backend's runs shrugs off
    a first run with cold caches.
    """
    results: list[DtprocRun] = []

    def whole() -> None:
        results.append(run_dtproc(HEAVY, LS, backend, quiet=False))

    stats = measure(whole, runs, warmup=0)
    probes = results[0].matched
    placing = unit_costs({backend.column: _placing(backend, probes)}, runs, warmup=0)
    hits = round(statistics.median(r.total for r in results))
    top = dict(sorted(results[0].counts.items(), key=lambda kv: -kv[1])[:5])
    return Heavy(backend, probes, hits, top, stats, placing[backend.column])


def measure_heavies(backends: Sequence[Backend], runs: int) -> tuple[list[Heavy], list[str]]:
    """Each backend's heavy case, or a note saying how it failed."""
    heavies, notes = [], []
    for backend in backends:
        its_runs = runs if backend is Backend.PTRACE else UPROBE_HEAVY_RUNS
        try:
            heavies.append(measure_heavy(backend, its_runs))
        except RuntimeError as exc:
            said = str(exc).strip().splitlines()[-1]
            print(f"{backend.column}: every libc function: {said}", file=sys.stderr)
            notes.append(f"- {backend.column}, every libc function probed: failed: {said}")
        else:
            notes.append(f"- {backend.column}, every libc function probed: {its_runs} run(s)")
    return heavies, notes


def heavy_tables(plain: Stats, heavies: Sequence[Heavy]) -> list[Reportable]:
    """Wall times against plain ls, and the counts and costs derived from them."""
    columns = (PLAIN, *(h.backend.column for h in heavies))
    times = Table(
        f"`{HEAVY}` on `ls -l /usr/bin`: wall time, medians (ratio to plain)",
        "run",
        columns,
        baseline=PLAIN,
    )
    whole, setup = "the whole run", "ended at BEGIN: probes placed and removed, ls killed"
    times.add(whole, PLAIN, plain)
    derived = Grid(
        "Every libc function probed on `ls -l /usr/bin`: counts, and costs derived from medians",
        "backend",
        ("probes", "hits", "per probe placed and removed", "per hit"),
    )
    for h in heavies:
        times.add(whole, h.backend.column, h.whole)
        placed_all = h.placing.base.wall + h.placing.unit.wall * (h.probes - 1)
        times.add(setup, h.backend.column, _wall(placed_all, h.whole.runs))
        times.add("ended at BEGIN, one probe (strlen)", h.backend.column, h.placing.base)
        per_hit = (h.whole.wall - placed_all - plain.wall) / h.hits
        derived.add(h.backend.column, "probes", h.probes, f"{h.probes:,}")
        derived.add(h.backend.column, "hits", h.hits, f"{h.hits:,}")
        unit = h.placing.unit.wall
        derived.add(h.backend.column, "per probe placed and removed", unit, format_seconds(unit))
        derived.add(h.backend.column, "per hit", per_hit, format_seconds(per_hit))
    return [times, derived]


def _wall(seconds: float, runs: int) -> Stats:
    """A wall time derived from medians: no CPU time, no quartiles of its own."""
    return Stats(seconds, 0.0, seconds, seconds, runs)


# ----------------------------------------------------------------------------- main


def goal_notes(wall: Table, sizes: dict[str, int]) -> list[str]:
    """N by tool, and the ratios the README quotes."""
    notes = ["N (hits per run): " + ", ".join(f"{c} {n:,}" for c, n in sizes.items()) + "."]
    row = next(iter(wall.cells))
    for ours in (Backend.PTRACE.column, Backend.UPROBE.column):
        for other in (LTRACE, GDB):
            ratio = wall.ratio(row, ours, other)
            if ratio is not None:
                notes.append(f"- per hit, {ours} / {other}: {format_ratio(ratio)}")
    ratio = wall.ratio(row, Backend.PTRACE.column, Backend.UPROBE.column)
    if ratio is not None:
        notes.append(f"- per hit, ptrace / uprobe backend: {format_ratio(ratio)}")
    return notes


def heavy_notes(heavies: Sequence[Heavy]) -> list[str]:
    return [
        f"- {h.backend.column}: most hit: "
        + ", ".join(f"{name} {count:,}" for name, count in h.top.items())
        for h in heavies
    ]


def main() -> None:
    opts, scale = options_with_scale(__doc__.splitlines()[0], runs=5)
    backends, notes = measurable_backends()
    exe = build("pid_bench", "-O2", source=TARGET)
    with tempfile.TemporaryDirectory(prefix="dtproc-bench-pid-") as tmp:
        chosen = methods(exe, Path(tmp), backends, scale)
        tables, sizes = measure_hits(chosen, opts.runs)
    notes += goal_notes(tables[0], sizes)
    plain = measure(lambda: run_quietly(LS), opts.runs)
    heavies, failures = measure_heavies(backends, opts.runs)
    report("pid", opts, [*tables, *heavy_tables(plain, heavies)],
           notes=[*notes, *failures, *heavy_notes(heavies)])  # fmt: skip


if __name__ == "__main__":
    main()
