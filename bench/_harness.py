"""What every dtproc benchmark shares: targets, timing, tables and result files.

Benchmarks are scripts, not tests: ``PYTHONPATH=src python bench/bench_NAME.py [--quick]``.
Each one measures with :func:`measure` (medians of wall and CPU time over many runs, after
warm-up runs, because a single run on a shared 2-core machine says little) or, for the cost
of one unit of work inside a run, :func:`per_unit`; collects the medians in a :class:`Table`
(rows are workloads, columns are methods, one column the baseline that the others are
divided by); latencies sampled one by one go into a :class:`Grid` as a
:class:`Distribution` (median, p90, p99, max).  Then :func:`report` prints the tables as
Markdown for the README and writes them to ``bench/results/NAME.json`` (ignored by git) so
that runs can be compared later.  ``--quick`` runs everything a few times only: a smoke test
of the script, not a measurement.

CPU time is the benchmark process's own (``time.process_time``) plus that of every child it
reaped meanwhile (``RUSAGE_CHILDREN``): a spawned program, a tracee reaped through
``waitpid``, or gdb and the inferior gdb reaped.  So tracer and traced are counted alike for
every method.
"""

from __future__ import annotations

import argparse
import enum
import functools
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Final, Protocol, TypeVar

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


def spawn_checked(argv: Sequence[str | os.PathLike[str]]) -> None:
    """:func:`spawn_and_wait`, failing loudly if the program fails."""
    status = spawn_and_wait(argv)
    if status != 0:
        raise RuntimeError(f"{shlex.join(os.fspath(a) for a in argv)}: status {status}")


def run_quietly(argv: Sequence[str | os.PathLike[str]]) -> None:
    """Run a command to completion with its output discarded; fail loudly if it fails."""
    subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )


# ----------------------------------------------------------------------------- the command


class Backend(enum.Enum):
    """How the ``dtproc`` command catches hits: its ``-x backend=`` values."""

    PTRACE = "ptrace"
    UPROBE = "uprobe"

    @property
    def column(self) -> str:
        return f"dtproc {self.value}"


@dataclass(frozen=True, slots=True)
class DtprocRun:
    """What a ``dtproc`` run said: its aggregation, by key, and its notices."""

    counts: dict[str, int]
    stderr: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def matched(self) -> int:
        """How many probes the program matched, from the notice ``-q`` would have hidden."""
        found = re.search(r"matched (\d+) probes?", self.stderr)
        if found is None:
            raise RuntimeError(f"dtproc said nothing of matched probes: {self.stderr!r}")
        return int(found.group(1))


def check_hits(method: str, seen: int, wanted: int) -> None:
    """A method that saw the wrong number of hits measured something else: stop."""
    if seen != wanted:
        raise RuntimeError(f"{method}: saw {seen} hits, expected {wanted}")


def dtproc_argv(
    program: str,
    command: Sequence[str | os.PathLike[str]],
    backend: Backend,
    *,
    quiet: bool,
    output: Path | None = None,
) -> list[str]:
    """``dtproc [-q] [-o OUTPUT] -x backend=B -n PROGRAM -c COMMAND``, through this interpreter.

    ``python -m dtproc`` rather than the console script: the script may be a shim (pyenv's
    is a shell script that runs ``pyenv exec``), whose start-up is not dtproc's to pay.
    The child inherits ``PYTHONPATH``, so it runs the tree being measured.
    """
    flags = (["-q"] if quiet else []) + (["-o", str(output)] if output is not None else [])
    command_line = shlex.join(os.fspath(a) for a in command)
    return [sys.executable, "-m", "dtproc", *flags, "-x", f"backend={backend.value}",
            "-n", program, "-c", command_line]  # fmt: skip


def run_dtproc(
    program: str,
    command: Sequence[str | os.PathLike[str]],
    backend: Backend,
    *,
    quiet: bool = True,
) -> DtprocRun:
    """Run the ``dtproc`` command to the end; the traced command's output is discarded.

    The aggregation goes to a file of its own (``-o``), apart from what the command
    prints, and is read back as ``key count`` lines (a bare count has the key ``""``).
    """
    with tempfile.TemporaryDirectory(prefix="dtproc-bench-out-") as tmp:
        out = Path(tmp) / "out"
        argv = dtproc_argv(program, command, backend, quiet=quiet, output=out)
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)}: status {done.returncode}:\n{done.stderr}")
        text = out.read_text() if out.exists() else ""
    return DtprocRun(aggregation_counts(text), done.stderr)


def aggregation_counts(text: str) -> dict[str, int]:
    """dtrace's printout of a count() aggregation: ``key... count`` lines, by key.

    Other lines -- blank ones, and what a probe with no -q prints (``CPU ID FUNCTION:NAME``
    and a line per firing) -- are passed over.
    """
    counts: dict[str, int] = {}
    for line in text.splitlines():
        *key, value = line.split() or [""]
        if value.isdigit():
            counts[" ".join(key)] = int(value)
    return counts


def uprobe_refusal(probe: str = "pid$target:libc.so.6:clock_nanosleep:entry") -> str | None:
    """Why ``-x backend=uprobe`` cannot be measured, or None when it really uses uprobes.

    The option may be accepted and yet the hits caught some other way (a backend not
    wired into the command yet falls back on ptrace): a uprobe backend holds perf events
    while the target runs, so ``dtproc`` runs a ``sleep`` with *probe* placed, and its
    open files are looked at meanwhile.  ``dtproc`` is then interrupted, which kills the
    ``sleep`` -- that would end by itself anyway.
    """
    argv = dtproc_argv(f"{probe} {{ @ = count(); }}", ["sleep", "3"], Backend.UPROBE, quiet=True)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 2.5
        while proc.poll() is None and time.monotonic() < deadline:
            if _holds_perf_events(proc.pid):
                return None
            time.sleep(0.05)
        if proc.poll() is not None and proc.returncode != 0:
            assert proc.stderr is not None
            said = proc.stderr.read().strip().splitlines()
            return f"`-x backend=uprobe` fails: {said[-1] if said else proc.returncode}"
        return (
            "`-x backend=uprobe` is accepted but dtproc holds no perf event while the "
            "target runs: the hits are caught some other way (ptrace)"
        )
    finally:
        _interrupt(proc)


def measurable_backends() -> tuple[list[Backend], list[str]]:
    """ptrace always; uprobe when the command really uses it, else a note saying why not."""
    refusal = uprobe_refusal()
    if refusal is None:
        return [Backend.PTRACE, Backend.UPROBE], []
    print(f"skipping {Backend.UPROBE.column}: {refusal}", file=sys.stderr)
    return [Backend.PTRACE], [f"{Backend.UPROBE.column} not measured: {refusal}."]


def _holds_perf_events(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = list(fds.iterdir())
    except OSError:
        return False
    for fd in names:
        try:
            if os.readlink(fd) == "anon_inode:[perf_event]":
                return True
        except OSError:
            continue
    return False


def _interrupt(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C *proc*, as a user would end a trace, and reap it; kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


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


def _sample(
    fn: Callable[[], T],
    setup: Callable[[], object] | None = None,
    teardown: Callable[[T], object] | None = None,
) -> tuple[float, float]:
    """One run: (wall time of *fn*, CPU time of *fn* and *teardown*); *setup* is not timed."""
    if setup is not None:
        setup()
    cpu = _cpu_now()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    if teardown is not None:
        teardown(result)
    return wall, _cpu_now() - cpu


def _summarize(samples: Sequence[tuple[float, float]]) -> Stats:
    walls = [wall for wall, _ in samples]
    if len(walls) >= 2:
        q1, _, q3 = statistics.quantiles(walls, n=4)
    else:
        q1 = q3 = walls[0]
    cpu = statistics.median(cpu for _, cpu in samples)
    return Stats(statistics.median(walls), cpu, q1, q3, len(walls))


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
    samples = [_sample(fn, setup, teardown) for _ in range(warmup + runs)]
    return _summarize(samples[warmup:])


def per_hit(t_n: float, t_0: float, n: int) -> float:
    """Cost of one hit from the time with *n* hits and with none (start-up cancels out)."""
    return (t_n - t_0) / n


@dataclass(frozen=True, slots=True)
class Units:
    """What :func:`per_unit` measures: ``run(k)`` does a whole run with *k* units of work."""

    run: Callable[[int], object]
    n: int


@dataclass(frozen=True, slots=True)
class UnitCost:
    """What :func:`unit_costs` finds: the cost of a unit, and of a whole run without any."""

    unit: Stats
    base: Stats


def per_unit(contenders: Mapping[str, Units], runs: int, *, warmup: int = 1) -> dict[str, Stats]:
    """The cost of one unit of work for each contender: ``(T(n) - T(0)) / n``, from medians.

    See :func:`unit_costs`, which also gives T(0).
    """
    return {name: cost.unit for name, cost in unit_costs(contenders, runs, warmup=warmup).items()}


def unit_costs(
    contenders: Mapping[str, Units], runs: int, *, warmup: int = 1
) -> dict[str, UnitCost]:
    """Per contender, the cost of one unit of work, ``(T(n) - T(0)) / n``, and T(0) itself.

    ``run(k)`` does a whole run with *k* units (start a program that calls a function *k*
    times, under some tracer): whatever a run costs besides the units -- start-up, exit,
    attaching -- is in T(0) as well and cancels out.  Each round runs every contender
    with *n* units and with none, in turn, so that a busy spell of a shared machine
    weighs on all of them alike rather than on whichever ran during it.  ``q1``/``q3`` are
    T(n)'s wall-time quartiles less T(0)'s median, per unit.
    """
    full: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    empty: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for i in range(warmup + runs):
        for name, units in contenders.items():
            with_units = _sample(functools.partial(units.run, units.n))
            without = _sample(functools.partial(units.run, 0))
            if i >= warmup:
                full[name].append(with_units)
                empty[name].append(without)
    costs = {}
    for name, units in contenders.items():
        base = _summarize(empty[name])
        costs[name] = UnitCost(_per_unit(_summarize(full[name]), base, units.n), base)
    return costs


def _per_unit(t_n: Stats, t_0: Stats, n: int) -> Stats:
    return Stats(
        per_hit(t_n.wall, t_0.wall, n),
        per_hit(t_n.cpu, t_0.cpu, n),
        per_hit(t_n.q1, t_0.wall, n),
        per_hit(t_n.q3, t_0.wall, n),
        t_n.runs,
    )


@dataclass(frozen=True, slots=True)
class Distribution:
    """Latencies sampled one by one, in seconds: the tail matters as much as the median."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("median", "p90", "p99", "max", "samples")

    median: float
    p90: float
    p99: float
    max: float
    samples: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        if not samples:
            raise ValueError("a distribution of no samples")
        if len(samples) >= 2:
            cuts = statistics.quantiles(samples, n=100, method="inclusive")
            p90, p99 = cuts[89], cuts[98]
        else:
            p90 = p99 = samples[0]
        return cls(statistics.median(samples), p90, p99, max(samples), len(samples))


# ----------------------------------------------------------------------------- tables


def format_seconds(seconds: float) -> str:
    """``1.23 ms``, ``850 ns``: three significant digits in the unit that fits."""
    seconds = float(f"{seconds:.3g}")  # so that 0.99999 s is 1 s, not 1e+03 ms
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


class Metric(enum.Enum):
    """Which median of a :class:`Stats` a :class:`Table` prints."""

    WALL = "wall"
    CPU = "cpu"

    def of(self, stats: Stats) -> float:
        return stats.wall if self is Metric.WALL else stats.cpu


def _markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Reportable(Protocol):
    """A table :func:`report` can print and save."""

    def markdown(self) -> str: ...

    def as_json(self) -> dict[str, object]: ...


@dataclass
class Table:
    """Medians by row (workload) and column (method), printed as Markdown with ratios.

    A cell left empty (a tool that is not installed) prints as ``n/a``.  With a
    *baseline* column every other cell also shows its ratio to that row's baseline.
    *metric* says which median is printed (and divided); the JSON file has both.
    """

    title: str
    row_header: str
    columns: Sequence[str]
    baseline: str | None = None
    metric: Metric = Metric.WALL
    cells: dict[str, dict[str, Stats]] = field(default_factory=dict)

    def add(self, row: str, column: str, stats: Stats) -> None:
        if column not in self.columns:
            raise KeyError(f"{self.title}: no column {column!r}")
        self.cells.setdefault(row, {})[column] = stats

    def _cell(self, row: dict[str, Stats], column: str) -> str:
        stats = row.get(column)
        if stats is None:
            return "n/a"
        value = self.metric.of(stats)
        text = format_seconds(value)
        base = row.get(self.baseline) if self.baseline is not None else None
        if base is not None and column != self.baseline and self.metric.of(base) > 0:
            text += f" ({format_ratio(value / self.metric.of(base))})"
        return text

    def ratio(self, row: str, column: str, other: str) -> float | None:
        """*column*'s median over *other*'s in *row*, when both were measured."""
        cells = self.cells.get(row, {})
        a, b = cells.get(column), cells.get(other)
        if a is None or b is None or self.metric.of(b) <= 0:
            return None
        return self.metric.of(a) / self.metric.of(b)

    def markdown(self) -> str:
        rows = [
            [name, *(self._cell(row, c) for c in self.columns)] for name, row in self.cells.items()
        ]
        return _markdown(self.title, [self.row_header, *self.columns], rows)

    def as_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "baseline": self.baseline,
            "metric": self.metric.value,
            "columns": list(self.columns),
            "rows": {
                name: {column: asdict(stats) for column, stats in row.items()}
                for name, row in self.cells.items()
            },
        }


def wall_and_cpu(
    title: str, row_header: str, columns: Sequence[str], baseline: str
) -> tuple[Table, Table]:
    """Two tables of the same cells: wall time, and CPU time of tracer and target alike."""
    ratio = f"(ratio to {baseline})"
    wall = Table(f"{title}: wall time {ratio}", row_header, columns, baseline=baseline)
    cpu = Table(
        f"{title}: CPU time, tracer and target {ratio}",
        row_header,
        columns,
        baseline=baseline,
        metric=Metric.CPU,
    )
    return wall, cpu


@dataclass(frozen=True, slots=True)
class Cell:
    """A number for the JSON file and the text the Markdown table shows for it."""

    value: float
    text: str


@dataclass
class Grid:
    """A table of ready-made cells: latency distributions, CPU shares, counts.

    Rows keep the order they were added in; a cell never filled prints as ``n/a``.
    """

    title: str
    row_header: str
    columns: Sequence[str]
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)

    def add(self, row: str, column: str, value: float, text: str) -> None:
        if column not in self.columns:
            raise KeyError(f"{self.title}: no column {column!r}")
        self.cells.setdefault(row, {})[column] = Cell(value, text)

    def add_distribution(self, row: str, dist: Distribution) -> None:
        """Fill *row* from *dist*: the grid's columns must be :attr:`Distribution.COLUMNS`."""
        for column in ("median", "p90", "p99", "max"):
            value: float = getattr(dist, column)
            self.add(row, column, value, format_seconds(value))
        self.add(row, "samples", dist.samples, str(dist.samples))

    def markdown(self) -> str:
        rows = [
            [name, *(row[c].text if c in row else "n/a" for c in self.columns)]
            for name, row in self.cells.items()
        ]
        return _markdown(self.title, [self.row_header, *self.columns], rows)

    def as_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": {
                name: {column: cell.value for column, cell in row.items()}
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
    extra: Callable[[argparse.ArgumentParser], object] | None = None,
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


def options_with_scale(description: str, *, runs: int) -> tuple[Options, float]:
    """:func:`options` plus ``--scale F``, which multiplies every N (default 1, quick 0.1)."""
    opts, args = options(
        description,
        runs=runs,
        extra=lambda p: p.add_argument(
            "--scale", type=float, default=None, help="multiply every N (default 1; 0.1 quick)"
        ),
    )
    scale: float = args.scale if args.scale is not None else 0.1 if opts.quick else 1.0
    return opts, scale


def report(
    name: str, opts: Options, tables: Sequence[Reportable], notes: Sequence[str] = ()
) -> Path:
    """Print *tables* as Markdown and write them with the machine's description to JSON.

    The machine's description includes its load average: the machine is shared, and a
    number measured while something else ran is worth less.
    """
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
        "loadavg": list(os.getloadavg()),
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
