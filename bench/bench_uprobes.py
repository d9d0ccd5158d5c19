"""Per-hit cost of a counting uprobe: dtproc's perf events vs bpftrace vs no probe at all.

For each probed function (one that starts with ``push %rbp``, which the kernel
emulates, and one that starts with a rip-relative ``mov``, which it single-steps
out of line) and each method, the target times its own call loop (so attach and
start-up costs stay outside), T(N) and T(0) are medians of a few runs, and the
per-hit cost is (T(N) - T(0)) / N.

    PYTHONPATH=src python bench/bench_uprobes.py [--runs 3] [--n 100000 1000000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from dtproc.elf import ElfFile
from dtproc.uprobes import Scope, UprobeCounter, UprobeSpec

TARGET_SRC = Path(__file__).resolve().parent.parent / "tests" / "targets" / "up_work.c"
FUNCTIONS = {"push": "work_push", "rip": "work_rip"}

Runner = Callable[[Path, str, int], float]


def file_offset(path: Path, symbol: str) -> int:
    elf = ElfFile.open(path)
    sym = elf.symbols.lookup(symbol)
    offset = None if sym is None else elf.vaddr_to_offset(sym.value)
    if offset is None:
        raise LookupError(f"{path}: no symbol {symbol}")
    return offset


def loop_ns(line: str) -> int:
    found = re.search(r"ns=(\d+)", line)
    if found is None:
        raise RuntimeError(f"target said {line!r}")
    return int(found.group(1))


def run_plain(exe: Path, mode: str, n: int) -> float:
    out = subprocess.run([exe, "auto", mode, str(n)], capture_output=True, text=True, check=True)
    return loop_ns(out.stdout)


def run_dtproc(scope: Scope) -> Runner:
    def run(exe: Path, mode: str, n: int) -> float:
        spec = UprobeSpec(str(exe), file_offset(exe, FUNCTIONS[mode]))
        proc = subprocess.Popen(
            [exe, mode, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdout.readline()  # ready
            with UprobeCounter.open(spec, proc.pid, scope) as counter:
                proc.stdin.write("g")
                proc.stdin.flush()
                ns = loop_ns(proc.stdout.readline())
                if counter.read() != n:
                    raise RuntimeError(f"counted {counter.read()} of {n}")
        finally:
            proc.kill()
            proc.wait()
        return ns

    return run


def run_bpftrace(exe: Path, mode: str, n: int) -> float:
    script = f"uprobe:{exe}:{FUNCTIONS[mode]} {{ @hits = count(); }}"
    out = subprocess.run(
        ["bpftrace", "-e", script, "-c", f"{exe} auto {mode} {n}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    hits = re.search(r"@hits: (\d+)", out.stdout)
    if n and (hits is None or int(hits.group(1)) != n):
        raise RuntimeError(f"bpftrace counted {hits and hits.group(1)} of {n}: {out.stderr}")
    return loop_ns(out.stdout)


def per_hit_ns(runner: Runner, exe: Path, mode: str, n: int, runs: int) -> float:
    t_n = statistics.median(runner(exe, mode, n) for _ in range(runs))
    t_0 = statistics.median(runner(exe, mode, 0) for _ in range(runs))
    return (t_n - t_0) / n


def ratios(cost: dict[str, float]) -> str:
    ours = cost["dtproc-process"]
    out = [f"dtproc/plain {ours / max(cost['plain'], 1e-3):.0f}x"]
    if "bpftrace" in cost:
        out.append(f"dtproc/bpftrace {ours / cost['bpftrace']:.2f}")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    methods: dict[str, Runner] = {
        "plain": run_plain,
        "dtproc-process": run_dtproc(Scope.PROCESS),
        "dtproc-thread": run_dtproc(Scope.THREAD),
    }
    if shutil.which("bpftrace"):
        methods["bpftrace"] = run_bpftrace
    else:
        print("bpftrace not installed: skipping it", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "up_work"
        cmd = ["gcc", "-O2", "-pthread", "-o", str(exe), str(TARGET_SRC)]
        subprocess.run(cmd, check=True)
        print(f"{'function':8} {'N':>9} " + " ".join(f"{m:>15}" for m in methods) + "   ratios")
        for mode in FUNCTIONS:
            for n in args.n:
                cost = {m: per_hit_ns(r, exe, mode, n, args.runs) for m, r in methods.items()}
                cells = " ".join(f"{cost[m]:>12.1f} ns" for m in methods)
                print(f"{mode:8} {n:>9} {cells}   {ratios(cost)}", flush=True)


if __name__ == "__main__":
    main()
