"""USDT probes through the command: per hit, ptrace and uprobe backends against bpftrace.

    PYTHONPATH=src python bench/bench_usdt.py [--quick] [--runs N] [--scale F]

Issue 10's benchmark: ``dtproc -q -n 'PROVIDER$target:::NAME { @ = count(); }' -c CMD``
with ``-x backend=ptrace`` and ``-x backend=uprobe``, against
``bpftrace -e 'usdt:BINARY:PROVIDER:NAME { @ = count(); }' -c CMD`` and the command run
plainly.  Per hit = (T(N) - T(0)) / N of the whole command, from medians of runs that
alternate N and 0 hits and take turns between the tools: start-up (bpftrace compiling
its program, dtproc reading the ELF notes) and exit cancel out.  The fast methods get
millions of hits: a whole bpftrace run scatters by tens of milliseconds, which a small
N would turn into noise (or a negative cost).  Every method checks the count it printed.

Rows:

* a C target with ``DTRACE_PROBE1(myapp, tick, i)`` in a loop of N, built without a
  semaphore (the probe site, a ``nop``, is always executed), and with one (the site is
  skipped unless a tracer raises the semaphore: the plain run pays nothing);
* ``/usr/bin/python3.11``'s ``function-entry`` on a script calling a generator function
  N times.  A generator function, because CPython 3.11 fires ``function__entry`` for
  those only: its interpreter no longer reaches the probe on ordinary calls
  (python/cpython#98894).  The interpreter's start-up fires it a few times more; the
  count is checked against N plus that number, found once with the ptrace backend.

The uprobe backend's column is measured only when ``-x backend=uprobe`` really uses
uprobes (see :func:`_harness.uprobe_refusal`); otherwise a note says why not.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _harness import (
    Backend,
    Table,
    Units,
    build,
    check_hits,
    format_ratio,
    format_seconds,
    have,
    measurable_backends,
    options_with_scale,
    per_unit,
    report,
    run_dtproc,
    spawn_checked,
    wall_and_cpu,
)

TARGET: Final = r"""
#ifdef WITH_SEMAPHORE
#define _SDT_HAS_SEMAPHORES 1
__extension__ unsigned short myapp_tick_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));
#define TICK_ENABLED() __builtin_expect(myapp_tick_semaphore, 0)
#else
#define TICK_ENABLED() 1
#endif
#include <sys/sdt.h>
#include <stdio.h>
#include <stdlib.h>

/* usage: usdt_bench TICKS */
int main(int argc, char **argv) {
    long ticks = argc > 1 ? atol(argv[1]) : 0, sum = 0;
    for (long i = 0; i < ticks; i++) {
        if (TICK_ENABLED()) DTRACE_PROBE1(myapp, tick, i);
        sum += i;
    }
    printf("%ld\n", sum);
    return 0;
}
"""

PYTHON: Final = Path("/usr/bin/python3.11")
SCRIPT: Final = """\
import sys


def tick():
    yield


for _ in range(int(sys.argv[1])):
    tick()
"""

PLAIN: Final = "plain"
BPFTRACE: Final = "bpftrace"
COLUMNS: Final = (PLAIN, Backend.PTRACE.column, Backend.UPROBE.column, BPFTRACE)


@dataclass(frozen=True, slots=True)
class Workload:
    """One row: a command whose ``k``-th form fires a USDT probe k times (plus *extra*)."""

    label: str
    binary: Path  # the file that holds the probe, for bpftrace
    provider: str
    name: str  # as dtrace spells it: ``-`` for ``__``
    command: Callable[[int], list[str]]
    extra: int = 0  # hits the command fires whatever k is (an interpreter's start-up)

    @property
    def program(self) -> str:
        return f"{self.provider}$target:::{self.name} {{ @ = count(); }}"

    @property
    def bpftrace(self) -> str:
        name = self.name.replace("-", "__")
        return f"usdt:{self.binary}:{self.provider}:{name} {{ @ = count(); }}"


Runner = Callable[[Workload, int], None]


def run_plain(load: Workload, hits: int) -> None:
    spawn_checked(load.command(hits))


def dtproc_runner(backend: Backend) -> Runner:
    def run(load: Workload, hits: int) -> None:
        done = run_dtproc(load.program, load.command(hits), backend)
        check_hits(backend.column, done.total, hits + load.extra)

    return run


_BPFTRACE_COUNT: Final = re.compile(r"^@: (\d+)$", re.M)


def bpftrace_runner(scratch: Path) -> Runner:
    """bpftrace's output (``-o``) holds ``@: COUNT``, or nothing if the probe never fired."""
    out = scratch / "bpftrace.out"

    def run(load: Workload, hits: int) -> None:
        command = subprocess.list2cmdline(load.command(hits))
        done = subprocess.run(
            ["bpftrace", "-o", str(out), "-e", load.bpftrace, "-c", command],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bpftrace: status {done.returncode}: {done.stderr}")
        found = _BPFTRACE_COUNT.search(out.read_text())
        check_hits(BPFTRACE, int(found.group(1)) if found else 0, hits + load.extra)

    return run


@dataclass(frozen=True, slots=True)
class Method:
    """One column: how to run a workload with k hits, and the usual N for C and Python."""

    column: str
    run: Runner
    native: int
    python: int

    def hits(self, load: Workload, scale: float) -> int:
        n = self.python if load.binary == PYTHON else self.native
        return max(1, round(n * scale))


def methods(scratch: Path, backends: Sequence[Backend]) -> list[Method]:
    """The columns that can be measured here, with Ns that keep a run to a few seconds."""
    found = [Method(PLAIN, run_plain, 10_000_000, 1_000_000)]
    usual = {Backend.PTRACE: (50_000, 20_000), Backend.UPROBE: (3_000_000, 2_000_000)}
    found += [Method(b.column, dtproc_runner(b), *usual[b]) for b in backends]
    if have(BPFTRACE):
        found.append(Method(BPFTRACE, bpftrace_runner(scratch), 3_000_000, 2_000_000))
    return found


def workloads(scratch: Path) -> list[Workload]:
    """The C target without and with a semaphore; Python when its interpreter is here."""
    found = []
    for semaphore, flags in ((False, ()), (True, ("-DWITH_SEMAPHORE",))):
        exe = build("usdt_bench", "-O2", *flags, source=TARGET)
        label = f"C, DTRACE_PROBE1 in a loop, {'with' if semaphore else 'no'} semaphore"
        found.append(Workload(label, exe, "myapp", "tick", _command(exe)))
    if PYTHON.exists():
        script = scratch / "ticks.py"
        script.write_text(SCRIPT)
        label = f"{PYTHON.name}, function-entry (generator calls)"
        python = Workload(label, PYTHON, "python", "function-entry", _command(PYTHON, script))
        startup = run_dtproc(python.program, python.command(0), Backend.PTRACE).total
        found.append(dataclasses.replace(python, extra=startup))
    else:
        print(f"skipping the Python row: no {PYTHON}", file=sys.stderr)
    return found


def _command(*prefix: Path) -> Callable[[int], list[str]]:
    """``PREFIX... K``: the command that fires the probe K times."""
    return lambda k: [*map(str, prefix), str(k)]


def measure_all(
    chosen: Sequence[Method], loads: Sequence[Workload], runs: int, scale: float
) -> tuple[Table, Table, list[str]]:
    """Every row, every method; the methods of a row take turns, run after run."""
    title = f"Cost per USDT hit of `@ = count()`, (T(N) - T(0)) / N, medians of {runs} runs"
    wall, cpu = wall_and_cpu(title, "probe", COLUMNS, BPFTRACE)
    sizes = []
    for load in loads:
        contenders = {
            m.column: Units(functools.partial(m.run, load), m.hits(load, scale)) for m in chosen
        }
        for column, stats in per_unit(contenders, runs).items():
            wall.add(load.label, column, stats)
            cpu.add(load.label, column, stats)
            print(f"{load.label:<55} {column:<14} {format_seconds(stats.wall)}/hit wall, "
                  f"{format_seconds(stats.cpu)} CPU", file=sys.stderr)  # fmt: skip
        sizes.append(
            f"N for {load.label}: "
            + ", ".join(f"{c} {u.n:,}" for c, u in contenders.items())
            + (f" (plus {load.extra} hits at start-up)" if load.extra else "")
        )
    return wall, cpu, sizes


def ratio_notes(wall: Table) -> list[str]:
    """What the README quotes: each backend against bpftrace, and against each other."""
    notes = []
    pairs = (
        (Backend.PTRACE.column, BPFTRACE),
        (Backend.UPROBE.column, BPFTRACE),
        (Backend.PTRACE.column, Backend.UPROBE.column),
    )
    for row in wall.cells:
        found = [(a, b, wall.ratio(row, a, b)) for a, b in pairs]
        parts = [f"{a} / {b} {format_ratio(r)}" for a, b, r in found if r is not None]
        notes.append(f"- {row}: " + ", ".join(parts))
    return notes


def main() -> None:
    opts, scale = options_with_scale(__doc__.splitlines()[0], runs=5)
    backends, notes = measurable_backends()
    with tempfile.TemporaryDirectory(prefix="dtproc-bench-usdt-") as tmp:
        scratch = Path(tmp)
        wall, cpu, sizes = measure_all(methods(scratch, backends), workloads(scratch), opts.runs,
                                       scale)  # fmt: skip
    report("usdt", opts, [wall, cpu], notes=[*notes, *sizes, "", *ratio_notes(wall)])


if __name__ == "__main__":
    main()
