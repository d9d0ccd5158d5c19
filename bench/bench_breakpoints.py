"""Cost per breakpoint hit: plain vs dtproc (Tracee, Tracer) vs ``ltrace -x`` vs gdb, one run.

    PYTHONPATH=src python bench/bench_breakpoints.py [--quick] [--runs N] [--scale F]

A target calls ``work()`` N times, from its main thread or split over 8 threads (which, on
a 2-core machine, hit concurrently).  Two ``work`` functions, written in assembly so that
their first instruction does not depend on the compiler: ``work_push`` starts with
``push %rbp`` (dtproc emulates it) and ``work_rip`` with a rip-relative load (dtproc runs
it out of line, from a scratch slot).  Every tool breaks on the function's first
instruction, and a whole run is timed: per hit = (T(N) - T(0)) / N, medians of runs that
alternate N and 0 hits and take turns between the tools, T(0) from the same tool
(start-up, attaching, symbol lookup and exit cancel out).  Each method checks that it saw
exactly N hits: a fast wrong answer does not count.

The single-threaded rows run twice: free, and with this process -- hence the target, the
tools and dtproc's control threads -- pinned to one CPU.  Free, on an otherwise idle
machine, the target and its tracer run on different CPUs and every stop and every resume
is a wake-up across CPUs, which on a virtual machine costs tens of microseconds; on one
CPU the ping-pong is a plain context switch.  Both are real situations (a busy machine
behaves like the pinned one), and every tool pays alike.

- **plain**: the target untraced (what a call costs without a breakpoint);
- **dtproc Tracee**: ``Tracee.create``, ``run_to(main)``, a breakpoint with a no-op
  callback, ``resume``, every event until the exit -- the libproc layer alone;
- **dtproc Tracer**: ``Tracer.create(stop_at="main")``, ``Process.add_breakpoint`` with a
  no-op callback, ``Tracer.resume``, ``Tracer.sleep`` until the exit notification -- the
  control layer, whose control thread runs the callbacks;
- **ltrace -x**: ``ltrace -f -x work_* -o FILE``; ``-f`` because ltrace 0.7 does not
  report calls made by threads without it.  ltrace also plants a breakpoint on the return
  address to show the return value: that is what ``-x`` costs, so it is counted;
- **gdb**: ``break *work_*`` with ``silent``/``continue`` commands, ``run``.  The address
  form, because ``break work_push`` would skip the prologue and break on the ``lea``.

N differs by tool (ltrace and gdb are 10 times slower than dtproc: the same N would make
their runs long); ``--scale`` multiplies every N.  The tables give the wall-time and
CPU-time medians per hit; CPU time counts the tracer and the target alike (ours and every
reaped child's).
"""

from __future__ import annotations

import enum
import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _harness import (
    Metric,
    Options,
    Table,
    Units,
    build,
    format_ratio,
    format_seconds,
    have,
    options,
    per_unit,
    report,
    spawn_and_wait,
)
from dtproc import Tracee
from dtproc.control import Notification, NotificationKind, Process, Tracer
from dtproc.events import Exited
from dtproc.rendezvous import run_to

TARGET: Final = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile long counter = 1;

long work_push(long x); /* push %rbp: emulated */
__asm__(".text\n.globl work_push\n.type work_push,@function\nwork_push:\n"
        "  push %rbp\n  mov %rsp, %rbp\n  lea 3(%rdi), %rax\n  pop %rbp\n  ret\n"
        ".size work_push, .-work_push\n");

long work_rip(long x); /* rip-relative load: out of line */
__asm__(".text\n.globl work_rip\n.type work_rip,@function\nwork_rip:\n"
        "  mov counter(%rip), %rax\n  add %rdi, %rax\n  ret\n"
        ".size work_rip, .-work_rip\n");

static long (*work)(long);
static long calls;

static void *loop(void *arg) {
    long sum = (long)arg;
    for (long i = 0; i < calls; i++) sum += work(i);
    return (void *)sum;
}

/* usage: bp_bench push|rip TOTAL_CALLS THREADS */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    work = strcmp(argv[1], "rip") ? work_push : work_rip;
    int threads = atoi(argv[3]);
    if (threads < 1 || threads > 64) return 2;
    calls = atol(argv[2]) / threads;
    long sum = 0;
    if (threads == 1) {
        sum = (long)loop(NULL);
    } else {
        pthread_t t[64];
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, loop, NULL);
        for (int i = 0; i < threads; i++) {
            void *r;
            pthread_join(t[i], &r);
            sum += (long)r;
        }
    }
    printf("%ld\n", sum);
    return 0;
}
"""

THREADS: Final = 8  # the threaded rows' thread count; every N is a multiple of it


class Placement(enum.Enum):
    """Where the rows run: the machine's CPUs as they come, or all on one CPU."""

    FREE = "free"
    ONE_CPU = "one CPU"


class Work(enum.Enum):
    """The function broken on, by what dtproc does with its first instruction."""

    PUSH = "push"
    RIP = "rip"

    @property
    def symbol(self) -> str:
        return f"work_{self.value}"

    @property
    def how(self) -> str:
        return "emulated" if self is Work.PUSH else "out of line"


@dataclass(frozen=True, slots=True)
class Workload:
    """One row: which function, how many threads share the calls, on which CPUs."""

    exe: Path
    work: Work
    threads: int
    placement: Placement = Placement.FREE

    @property
    def label(self) -> str:
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        pinned = ", all on one CPU" if self.placement is Placement.ONE_CPU else ""
        return f"{self.work.symbol} ({self.work.how}), {threads}{pinned}"

    @contextmanager
    def placed(self) -> Iterator[None]:
        """Pin this thread, hence what it starts (tracees, tools, control threads), if asked."""
        if self.placement is Placement.FREE:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def argv(self, hits: int) -> list[str]:
        return [str(self.exe), self.work.value, str(hits), str(self.threads)]


Runner = Callable[[Workload, int], None]


@dataclass(frozen=True, slots=True)
class Method:
    """One column: how to run a workload with a given number of hits, and its usual N."""

    column: str
    run: Runner
    hits: int


def _check(method: str, seen: int, wanted: int) -> None:
    if seen != wanted:
        raise RuntimeError(f"{method}: saw {seen} hits, expected {wanted}")


def _null() -> int:
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def run_plain(load: Workload, hits: int) -> None:
    status = spawn_and_wait(load.argv(hits))
    if status != 0:
        raise RuntimeError(f"{load.exe} exited with status {status}")


def _no_op(tracee: Tracee, tid: int) -> None:
    """The breakpoint callback: nothing, so that what is measured is the hit itself."""


def run_tracee(load: Workload, hits: int) -> None:
    """The libproc layer alone, driven from this thread."""
    out = _null()
    try:
        t = Tracee.create(load.argv(hits), stdout=out)
    finally:
        os.close(out)
    try:
        run_to(t, "main")
        symbol = t.lookup(None, load.work.symbol)
        if symbol is None:
            raise LookupError(f"{load.exe}: no symbol {load.work.symbol}")
        bp = t.add_breakpoint(symbol.address, _no_op)
        t.resume()
        for _ in t.events():
            pass
        if not isinstance(t.end, Exited) or t.end.status != 0:
            raise RuntimeError(f"dtproc Tracee: the target ended with {t.end}")
        _check("dtproc Tracee", bp.hits, hits)
    finally:
        t.release()


def run_tracer(load: Workload, hits: int) -> None:
    """The control layer: its control thread takes the hits, this thread sleeps."""
    out = _null()
    try:
        with Tracer() as tracer:
            proc = tracer.create(load.argv(hits), stop_at="main", stdout=out)
            symbol = proc.lookup(None, load.work.symbol)
            if symbol is None:
                raise LookupError(f"{load.exe}: no symbol {load.work.symbol}")
            bp = proc.add_breakpoint(symbol.address, _no_op)
            tracer.resume(proc)
            note = _sleep_until_end(tracer, proc)
            if note.kind is not NotificationKind.EXITED or note.status != 0:
                raise RuntimeError(f"dtproc Tracer: {note}")
            _check("dtproc Tracer", bp.hits, hits)
            proc.release()
    finally:
        os.close(out)


def _sleep_until_end(tracer: Tracer, proc: Process) -> Notification:
    while True:
        for note in tracer.sleep():
            if note.pid == proc.pid:
                return note


def ltrace_runner(scratch: Path) -> Runner:
    log = scratch / "ltrace.out"

    def run(load: Workload, hits: int) -> None:
        symbol = load.work.symbol
        argv = ["ltrace", "-f", "-o", str(log), "-x", symbol, *load.argv(hits)]
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        with log.open() as f:
            seen = sum(1 for line in f if f" {symbol}(" in line)
        _check("ltrace", seen, hits)

    return run


_GDB_SCRIPT: Final = """\
set pagination off
set confirm off
break *{symbol}
commands
silent
continue
end
run
info breakpoints
"""
_GDB_HITS: Final = re.compile(r"breakpoint already hit (\d+) time")


def gdb_runner(scratch: Path) -> Runner:
    def run(load: Workload, hits: int) -> None:
        script = scratch / f"{load.work.symbol}.gdb"
        if not script.exists():
            script.write_text(_GDB_SCRIPT.format(symbol=load.work.symbol))
        argv = ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-x", str(script)]
        done = subprocess.run(
            [*argv, "--args", *load.argv(hits)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
        found = _GDB_HITS.search(done.stdout)
        _check("gdb", int(found.group(1)) if found else 0, hits)

    return run


PLAIN: Final = "plain"
TRACEE: Final = "dtproc Tracee"
TRACER: Final = "dtproc Tracer"
LTRACE: Final = "ltrace -x"
GDB: Final = "gdb"
COLUMNS: Final = (PLAIN, TRACEE, TRACER, LTRACE, GDB)


def methods(scratch: Path, scale: float) -> list[Method]:
    """The columns whose tool is installed, each with its N (a multiple of every thread count)."""

    def hits(n: int) -> int:
        step = THREADS
        return max(step, round(n * scale / step) * step)

    found = [
        Method(PLAIN, run_plain, hits(10_000_000)),
        Method(TRACEE, run_tracee, hits(40_000)),
        Method(TRACER, run_tracer, hits(40_000)),
    ]
    if have("ltrace"):
        found.append(Method(LTRACE, ltrace_runner(scratch), hits(4_000)))
    if have("gdb"):
        found.append(Method(GDB, gdb_runner(scratch), hits(4_000)))
    return found


def workloads(exe: Path) -> list[Workload]:
    one = [Workload(exe, work, 1, placement) for placement in Placement for work in Work]
    return [*one, *(Workload(exe, work, THREADS) for work in Work)]


def measure_all(exe: Path, opts: Options, scale: float) -> tuple[Table, Table, list[str]]:
    """Every row, every method; the methods of a row take turns, run after run."""
    title = f"Cost per breakpoint hit, (T(N) - T(0)) / N, medians of {opts.runs} runs"
    wall = Table(f"{title}: wall time (ratio to ltrace)", "work()", COLUMNS, baseline=LTRACE)
    cpu = Table(
        f"{title}: CPU time, tracer and target (ratio to ltrace)",
        "work()",
        COLUMNS,
        baseline=LTRACE,
        metric=Metric.CPU,
    )
    with tempfile.TemporaryDirectory(prefix="dtproc-bench-bp-") as tmp:
        chosen = methods(Path(tmp), scale)
        for load in workloads(exe):
            contenders = {m.column: Units(functools.partial(m.run, load), m.hits) for m in chosen}
            with load.placed():
                costs = per_unit(contenders, opts.runs)
            for column, stats in costs.items():
                wall.add(load.label, column, stats)
                cpu.add(load.label, column, stats)
                print(
                    f"{load.label:<50} {column:<14} {format_seconds(stats.wall)}/hit wall, "
                    f"{format_seconds(stats.cpu)} CPU",
                    file=sys.stderr,
                )
    sizes = ", ".join(f"{m.column} {m.hits:,}" for m in chosen)
    return wall, cpu, [f"N (hits per run): {sizes}."]


def goal_notes(wall: Table) -> list[str]:
    """The issue's goal, row by row: dtproc at most half of ltrace's cost per hit."""
    notes = []
    for row in wall.cells:
        for column in (TRACEE, TRACER):
            ratio = wall.ratio(row, column, LTRACE)
            if ratio is None:
                continue
            verdict = "met" if ratio <= 0.5 else "NOT met"
            notes.append(
                f"- {row}: {column}/ltrace = {format_ratio(ratio)} (goal ≤ 0.5x: {verdict})"
            )
    return notes


def main() -> None:
    opts, args = options(
        __doc__.splitlines()[0],
        runs=5,
        extra=lambda p: p.add_argument(
            "--scale", type=float, default=None, help="multiply every N (default 1; 0.1 quick)"
        ),
    )
    scale: float = args.scale if args.scale is not None else 0.1 if opts.quick else 1.0
    exe = build("bp_bench", "-O2", "-pthread", source=TARGET)
    wall, cpu, sizes = measure_all(exe, opts, scale)
    notes = [*sizes, "Wall-time quartiles are in the JSON file.", "", *goal_notes(wall)]
    report("breakpoints", opts, [wall, cpu], notes=notes)


if __name__ == "__main__":
    main()
