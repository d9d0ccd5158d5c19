"""What every dtproc benchmark shares: targets, timing, tables and result files.

Benchmarks are scripts, not tests: ``PYTHONPATH=src python bench/bench_NAME.py [--quick]``.
Each one measures with :func:`measure` (medians of wall and CPU time over many runs, after
warm-up runs, because a single run on a shared 2-core machine says little), collects the
medians in a :class:`Table` (rows are workloads, columns are methods, one column the
baseline that the others are divided by), then :func:`report` prints the tables as Markdown
for the README and writes them to ``bench/results/NAME.json`` (ignored by git) so that runs
can be compared later.  ``--quick`` runs everything a few times only: a smoke test of the
script, not a measurement.

CPU time is the benchmark process's own (``time.process_time``) plus that of every child it
reaped meanwhile (``RUSAGE_CHILDREN``): a spawned program, a tracee reaped through
``waitpid``, or gdb and the inferior gdb reaped.  So tracer and traced are counted alike for
every method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, TypeVar

BENCH_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH_DIR.parent
TARGETS: Final = ROOT / "tests" / "targets"
RESULTS: Final = BENCH_DIR / "results"
QUICK_RUNS: Final = 3

T = TypeVar("T")


# ----------------------------------------------------------------------------- targets


def build(name: str, *flags: str, source: str | None = None) -> Path:
    """Compile ``tests/targets/NAME.c`` (or *source*) with gcc, cached by text and flags.

    The cache lives in the temp directory (``$TMPDIR/dtproc-bench``), so repeated runs of a
    benchmark do not pay for gcc, and a changed source or flag list builds anew.
    """
    text = (TARGETS / f"{name}.c").read_text() if source is None else source
    key = hashlib.sha1("\0".join([text, *flags]).encode()).hexdigest()[:12]
    out_dir = Path(tempfile.gettempdir()) / "dtproc-bench"
    out_dir.mkdir(exist_ok=True)
    exe = out_dir / f"{name}-{key}"
    if not exe.exists():
        src = out_dir / f"{name}-{key}.c"
        src.write_text(text)
        partial = exe.with_suffix(".partial")
        subprocess.run(["gcc", *flags, "-o", str(partial), str(src)], check=True)
        partial.rename(exe)  # atomic: an interrupted build never leaves a broken cache entry
    return exe


def have(tool: str) -> bool:
    """Whether *tool* is on PATH; says so on stderr when it is not, so tables explain gaps."""
    if shutil.which(tool) is not None:
        return True
    print(f"skipping {tool}: not installed", file=sys.stderr)
    return False


def spawn_and_wait(argv: Sequence[str | os.PathLike[str]]) -> int:
    """``posix_spawn`` *argv* with output discarded and reap it: the plain baseline."""
    args = [os.fspath(a) for a in argv]
    with open(os.devnull, "r+b") as null:
        fd = null.fileno()
        actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)]
        pid = os.posix_spawn(args[0], args, os.environ, file_actions=actions)
    _, status, _ = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_quietly(argv: Sequence[str | os.PathLike[str]]) -> None:
    """Run a command to completion with its output discarded; fail loudly if it fails."""
    subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class Stats:
    """Medians of repeated runs, in seconds; ``q1``/``q3`` are the wall-time quartiles."""

    wall: float
    cpu: float
    q1: float
    q3: float
    runs: int

    def scaled(self, factor: float) -> Stats:
        """The same statistics for a unit of work *factor* times smaller (per hit, per call)."""
        return Stats(
            self.wall / factor, self.cpu / factor, self.q1 / factor, self.q3 / factor, self.runs
        )


def _cpu_now() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(
    fn: Callable[[], T],
    runs: int,
    *,
    warmup: int = 2,
    setup: Callable[[], object] | None = None,
    teardown: Callable[[T], object] | None = None,
) -> Stats:
    """Run *fn* ``warmup + runs`` times; medians of the last *runs*.

    Wall time covers *fn* alone.  CPU time also covers *teardown* (given what *fn*
    returned), because a child's CPU time is only known once it is reaped, and reaping is
    what a teardown such as "kill the tracee" does.  *setup* is never timed.
    """
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(warmup + runs):
        if setup is not None:
            setup()
        cpu = _cpu_now()
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        if teardown is not None:
            teardown(result)
        if i >= warmup:
            walls.append(wall)
            cpus.append(_cpu_now() - cpu)
    if runs >= 2:
        q1, _, q3 = statistics.quantiles(walls, n=4)
    else:
        q1 = q3 = walls[0]
    return Stats(statistics.median(walls), statistics.median(cpus), q1, q3, runs)


def per_hit(t_n: float, t_0: float, n: int) -> float:
    """Cost of one hit from the time with *n* hits and with none (start-up cancels out)."""
    return (t_n - t_0) / n


# ----------------------------------------------------------------------------- tables


def format_seconds(seconds: float) -> str:
    """``1.23 ms``, ``850 ns``: three significant digits in the unit that fits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio: float) -> str:
    """``0.88x``, ``12.3x``, ``187x``, ``1/390x``: never an exponent."""
    if ratio >= 100:
        return f"{ratio:.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"1/{1 / ratio:.0f}x" if ratio > 0 else "0x"


@dataclass
class Table:
    """Medians by row (workload) and column (method), printed as Markdown with ratios.

    A cell left empty (a tool that is not installed) prints as ``n/a``.  With a
    *baseline* column every other cell also shows its ratio to that row's baseline.
    """

    title: str
    row_header: str
    columns: Sequence[str]
    baseline: str | None = None
    cells: dict[str, dict[str, Stats]] = field(default_factory=dict)

    def add(self, row: str, column: str, stats: Stats) -> None:
        if column not in self.columns:
            raise KeyError(f"{self.title}: no column {column!r}")
        self.cells.setdefault(row, {})[column] = stats

    def _cell(self, row: dict[str, Stats], column: str) -> str:
        stats = row.get(column)
        if stats is None:
            return "n/a"
        text = format_seconds(stats.wall)
        base = row.get(self.baseline) if self.baseline is not None else None
        if base is not None and column != self.baseline and base.wall > 0:
            text += f" ({format_ratio(stats.wall / base.wall)})"
        return text

    def markdown(self) -> str:
        header = [self.row_header, *self.columns]
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|",
        ]
        for name, row in self.cells.items():
            lines.append(
                "| " + " | ".join([name, *(self._cell(row, c) for c in self.columns)]) + " |"
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "baseline": self.baseline,
            "columns": list(self.columns),
            "rows": {
                name: {column: asdict(stats) for column, stats in row.items()}
                for name, row in self.cells.items()
            },
        }


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class Options:
    """What every benchmark takes on its command line."""

    quick: bool
    runs: int


def options(
    description: str,
    *,
    runs: int = 30,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> tuple[Options, argparse.Namespace]:
    """Parse ``--quick`` and ``--runs`` (and whatever *extra* adds)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs: a smoke test")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per cell ({runs})")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    return Options(args.quick, QUICK_RUNS if args.quick else args.runs), args


def report(name: str, opts: Options, tables: Sequence[Table], notes: Sequence[str] = ()) -> Path:
    """Print *tables* as Markdown and write them with the machine's description to JSON."""
    for table in tables:
        print(table.markdown(), end="\n\n")
    for note in notes:
        print(note)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": opts.quick,
        "runs": opts.runs,
        "machine": _machine(),
        "tables": [t.as_json() for t in tables],
        "notes": list(notes),
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults written to {path.relative_to(ROOT)}", file=sys.stderr)
    return path


def _machine() -> dict[str, object]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
