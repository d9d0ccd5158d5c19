"""The cost of one 20-frame user stack: dtproc's ustack() against ``gdb -p`` and ``eu-stack -p``.

    PYTHONPATH=src python bench/bench_ustack.py [--quick] [--runs N]

The target is tests/targets/us_deep.c (``-O2``, no frame pointers) parked in pause() under
14 recursive calls: pause, 15 us_recurse, main, __libc_start_call_main, __libc_start_main,
_start -- 20 frames, walked through the CFI of the executable and of libc.

dtproc, in a process grabbed once (medians of N runs):

- **capture warm**: ``Tracee.ustack()`` on the stopped thread, unwind tables already
  decoded: registers, the walk over ``/proc/PID/mem``, the pcs (what a probe hit pays);
- **capture+symbolize warm**: the same, then ``UserStack.symbolize`` (names cached);
- **capture cold** / **capture+symbolize cold**: the first stack after every cache is
  dropped (parsed ELF files, CFI tables, symbolizer) and the module map re-read, untimed;
  the timed part reads ``.eh_frame_hdr``, decodes the FDEs and, symbolized, parses libc's
  symbol table from libc6-dbg's debug file;
- **grab+ustack+release**: the whole one-shot job, as a debugger does it: seize and stop
  every thread, build the module map, capture and symbolize, detach -- with parsed files
  and tables cached from the runs before, as in a tracer that has run a while.

The others each run a program: **gdb -p bt** (``gdb -batch -nx -p PID -ex bt``: attach,
load symbols and debug files, unwind, detach) and **eu-stack -p** (elfutils: attach,
unwind with libdw, print, detach).  Ratios are to eu-stack.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from _harness import ROOT, Options, Stats, Table, build, have, measure, options, report, run_quietly

sys.path.insert(0, str(ROOT / "tests"))
from dtproc import Tracee
from dtproc.cfi import CfiTable
from dtproc.elf import ElfFile
from dtproc.ustack import Symbolizer, UserStack
from uw_gdb import attach_backtraces, wait_until_parked

DEPTH = 14
FRAMES = 20
WARM_WARMUP = 20
GDB_RUNS = 10

CAPTURE_WARM = "capture warm"
SYMBOLIZED_WARM = "capture+symbolize warm"
CAPTURE_COLD = "capture cold"
SYMBOLIZED_COLD = "capture+symbolize cold"
ONE_SHOT = "grab+ustack+release"
GDB = "gdb -p bt"
EU_STACK = "eu-stack -p"
COLUMNS = (
    CAPTURE_WARM,
    SYMBOLIZED_WARM,
    CAPTURE_COLD,
    SYMBOLIZED_COLD,
    ONE_SHOT,
    GDB,
    EU_STACK,
)


def drop_caches(t: Tracee) -> None:
    """Forget every parsed file and table, then read the module map again."""
    ElfFile.clear_cache()
    CfiTable.clear_cache()
    Symbolizer.clear_cache()
    t.refresh_modules()


def symbolized(t: Tracee) -> UserStack:
    stack = t.ustack()
    stack.symbolize(t.modules)
    return stack


def one_shot(pid: int) -> None:
    t = Tracee.grab(pid)
    try:
        symbolized(t)
    finally:
        t.release()


def bench_dtproc(pid: int, opts: Options, timed: Callable[[str, Stats], None]) -> None:
    t = Tracee.grab(pid)
    try:
        stack = t.ustack()
        if len(stack) != FRAMES or not stack.complete:
            raise RuntimeError(f"expected a complete {FRAMES}-frame stack, got {stack}")
        runs = opts.runs * 10
        timed(CAPTURE_WARM, measure(t.ustack, runs, warmup=WARM_WARMUP))
        timed(SYMBOLIZED_WARM, measure(lambda: symbolized(t), runs, warmup=WARM_WARMUP))
        reset = lambda: drop_caches(t)  # noqa: E731
        timed(CAPTURE_COLD, measure(t.ustack, opts.runs, warmup=1, setup=reset))
        timed(SYMBOLIZED_COLD, measure(lambda: symbolized(t), opts.runs, warmup=1, setup=reset))
    finally:
        t.release()
    timed(ONE_SHOT, measure(lambda: one_shot(pid), opts.runs))


def bench_tools(pid: int, opts: Options, timed: Callable[[str, Stats], None]) -> None:
    runs = min(opts.runs, GDB_RUNS)
    if have("gdb"):
        gdb = ["gdb", "-batch", "-nx", "-iex", "set debuginfod enabled off", "-p", str(pid)]
        timed(GDB, measure(lambda: run_quietly([*gdb, "-ex", "bt"]), runs, warmup=1))
    if have("eu-stack"):
        timed(EU_STACK, measure(lambda: run_quietly(["eu-stack", "-p", str(pid)]), opts.runs))


def check_against_gdb(pid: int, tmp: Path) -> None:
    """The stack measured is the one gdb sees (no point timing a wrong answer)."""
    t = Tracee.grab(pid)
    try:
        ours = t.ustack().pcs
    finally:
        t.release()
    if have("gdb") and attach_backtraces(pid, tmp)[pid] != ours:
        raise RuntimeError("dtproc and gdb disagree on the benchmark's stack")


def main() -> None:
    opts, _ = options(__doc__.splitlines()[0])
    target = build("us_deep", "-O2", "-fomit-frame-pointer", "-pthread")
    table = Table(
        f"One {FRAMES}-frame user stack, medians of {opts.runs}+ runs (ratio to eu-stack -p)",
        "stack",
        COLUMNS,
        baseline=EU_STACK,
    )
    row = f"us_deep -O2, {FRAMES} frames"
    per_frame = f"per frame ({row})"

    def timed(column: str, stats: Stats) -> None:
        table.add(row, column, stats)
        table.add(per_frame, column, stats.scaled(FRAMES))
        print(f"{column:<24} {stats.wall * 1e6:12.1f} µs", file=sys.stderr)

    proc = subprocess.Popen([str(target), str(DEPTH)])
    try:
        wait_until_parked(proc.pid, 1)
        check_against_gdb(proc.pid, target.parent / "us_deep-gdb")
        bench_dtproc(proc.pid, opts, timed)
        bench_tools(proc.pid, opts, timed)
    finally:
        proc.kill()
        proc.wait()
    report(
        "ustack",
        opts,
        [table],
        notes=[
            "capture and symbolize run in the benchmark process; gdb and eu-stack are "
            "programs started per stack, so their times include start-up and attach.",
        ],
    )


if __name__ == "__main__":
    main()
