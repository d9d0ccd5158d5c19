"""What the rtld agent costs: one dlopen+dlclose under it, one r_brk hit, one re-exec rendezvous.

The loop target (tests/targets/rtld_loop.c) dlopens, calls and dlcloses a library N
times; each iteration makes four r_brk hits (ADD, CONSISTENT, DELETE, CONSISTENT).
Times are from main to exit with N and with 0 iterations, medians of a few runs, so
start-up stays outside: (T(N) - T(0)) / N per iteration.

    PYTHONPATH=src python bench/bench_rtld.py [--runs 3] [--n 1000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dtproc import Tracee
from dtproc.events import Exec
from dtproc.rendezvous import Rendezvous, StopPoint, run_to
from dtproc.rtld import ModulesChanged, RtldAgent

TARGETS = Path(__file__).resolve().parent.parent / "tests" / "targets"


def compile_targets(out: Path) -> tuple[Path, list[Path], Path]:
    def gcc(*args: str | Path) -> None:
        subprocess.run(["gcc", "-O1", *map(str, args)], check=True, capture_output=True)

    plugins = []
    for i in (1, 2, 3):
        plugin = out / f"plugin{i}.so"
        gcc("-shared", "-fPIC", f"-DPLUGIN_ID={i}", "-o", plugin, TARGETS / "rtld_plugin.c")
        plugins.append(plugin)
    loop = out / "rtld_loop"
    gcc("-pthread", "-o", loop, TARGETS / "rtld_loop.c")
    lib = out / "libmark.so"
    gcc("-shared", "-fPIC", "-o", lib, TARGETS / "rtld_marklib.c")
    markers = out / "rtld_markers"
    gcc("-o", markers, TARGETS / "rtld_markers.c", "-Wl,--no-as-needed", lib)
    return loop, plugins, markers


def untraced(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def traced(*, agent: bool, probes: bool = False) -> Callable[[list[str]], float]:
    """Time the run after main: under ptrace only, with the agent, and probing each load."""

    def run(argv: list[str]) -> float:
        t = Tracee.create(argv, stdout=subprocess.DEVNULL)
        try:
            run_to(t, StopPoint.MAIN)
            if agent:
                rtld = RtldAgent(t)
                rtld.attach()
                if probes:
                    rtld.subscribe(lambda change: break_in(t, change))
            started = time.perf_counter()
            t.resume()
            for _ in t.events():
                pass
            return time.perf_counter() - started
        finally:
            t.release()

    return run


def break_in(t: Tracee, change: ModulesChanged) -> None:
    """What a pid provider does on each load: probe the new library's functions."""
    for mod in change.added:
        for name in ("plugin_work", "plugin_count"):
            sym = t.lookup(mod.path, name)
            if sym is not None:
                t.add_breakpoint(sym.address, lambda tr, tid: None)


def per_iteration(run: Callable[[list[str]], float], argv: list[str], n: int, runs: int) -> float:
    def median(count: int) -> float:
        return statistics.median(run([argv[0], "loop", str(count), *argv[1:]]) for _ in range(runs))

    return (median(n) - median(0)) / n


def reexec_cost(markers: Path, n: int) -> tuple[float, float]:
    """Seconds per exec: untraced, and with a rendezvous at main after every exec."""
    plain = untraced([str(markers), str(n)]) / (n + 1)
    t = Tracee.create([markers, str(n)])
    try:
        rv = Rendezvous(t, RtldAgent(t), follow_exec=True)
        rv.arm(StopPoint.MAIN)
        started = time.perf_counter()
        t.resume()
        for event in t.events():
            if rv.arrived(event) is not None or isinstance(event, Exec):
                t.resume()
        return plain, (time.perf_counter() - started) / (n + 1)
    finally:
        t.release()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loop, plugins, markers = compile_targets(Path(tmp))
        argv = [str(loop), *map(str, plugins)]
        rows = [
            ("untraced", untraced),
            ("traced, no agent", traced(agent=False)),
            ("traced, agent", traced(agent=True)),
            ("agent + 2 breakpoints per load", traced(agent=True, probes=True)),
        ]
        costs: list[float] = []
        for name, run in rows:
            costs.append(per_iteration(run, argv, args.n, args.runs))
            print(f"{name:32} {costs[-1] * 1e6:8.1f} us per dlopen+dlclose")
        print(f"{'one r_brk hit (4 per iteration)':32} {(costs[2] - costs[1]) * 1e6 / 4:8.1f} us")
        plain, rendezvous = reexec_cost(markers, args.n)
        print(f"{'exec, untraced':32} {plain * 1e3:8.2f} ms")
        print(f"{'exec + rendezvous at main':32} {rendezvous * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
