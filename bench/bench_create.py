"""Create-to-exec-stop and create-to-exit latency against a plain spawn and ``gdb -batch``.

    PYTHONPATH=src python bench/bench_create.py [--quick] [--runs N]

For a small dynamically linked C program and for ``/bin/true``, medians over N runs of:

- **posix_spawn + wait**: the program run untraced (the baseline of the ratios);
- **dtproc create→exec stop**: ``Tracee.create`` until it returns the process stopped at
  its exec event, nothing of the program run yet (the kill afterwards is not timed);
- **dtproc create→exit**: ``Tracee.create``, ``resume``, every event until the exit;
- **gdb starti**: ``gdb -batch -ex starti``: gdb starts, runs the program to its first
  instruction, and kills it on the way out: gdb's nearest equivalent of the exec stop;
- **gdb run→exit**: ``gdb -batch -ex run``: the program traced from start to exit.

gdb runs with ``-nx`` and debuginfod off, as a script would run it; it still reads the
separate debug files of libc6-dbg, which is part of what starting gdb costs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence

from _harness import (
    Options,
    Stats,
    Table,
    build,
    format_seconds,
    have,
    measure,
    options,
    report,
    run_quietly,
    spawn_and_wait,
)
from dtproc import Tracee

HELLO = """\
#include <stdio.h>
int main(void) { puts("hello"); return 0; }
"""

PLAIN = "posix_spawn + wait"
STOP = "dtproc create→exec stop"
EXIT = "dtproc create→exit"
STARTI = "gdb starti"
GDB_RUN = "gdb run→exit"
COLUMNS = (PLAIN, STOP, EXIT, STARTI, GDB_RUN)
GDB = ("gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off")


def create_stopped(argv: Sequence[str], out: int) -> Tracee:
    return Tracee.create(argv, stdout=out, stderr=out)


def create_to_exit(argv: Sequence[str], out: int) -> None:
    t = Tracee.create(argv, stdout=out, stderr=out)
    try:
        t.resume()
        for _ in t.events(timeout=30):
            pass
        if t.end is None:
            raise RuntimeError(f"{argv[0]} did not end")
    finally:
        t.release()


def bench_program(table: Table, label: str, argv: list[str], opts: Options, out: int) -> None:
    """Fill one row of *table*: every method on *argv*."""

    def timed(column: str, stats: Stats) -> None:
        table.add(label, column, stats)
        print(f"{label:>20}  {column:<24} {format_seconds(stats.wall)}", file=sys.stderr)

    runs = opts.runs
    timed(PLAIN, measure(lambda: spawn_and_wait(argv), runs))
    timed(STOP, measure(lambda: create_stopped(argv, out), runs, teardown=Tracee.release))
    timed(EXIT, measure(lambda: create_to_exit(argv, out), runs))
    if have("gdb"):
        for column, command in ((STARTI, "starti"), (GDB_RUN, "run")):
            gdb = [*GDB, "-ex", command, "--args", *argv]
            timed(column, measure(functools.partial(run_quietly, gdb), runs))


def main() -> None:
    opts, _ = options(__doc__.splitlines()[0])
    hello = build("hello", "-O2", source=HELLO)
    table = Table(
        f"Create latency, medians of {opts.runs} runs (ratio to posix_spawn + wait)",
        "program",
        COLUMNS,
        baseline=PLAIN,
    )
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        for label, argv in (("hello (C, dynamic)", [str(hello)]), ("/bin/true", ["/bin/true"])):
            bench_program(table, label, argv, opts, out)
    finally:
        os.close(out)
    report(
        "create",
        opts,
        [table],
        notes=["CPU-time medians and wall-time quartiles are in the JSON file."],
    )


if __name__ == "__main__":
    main()
