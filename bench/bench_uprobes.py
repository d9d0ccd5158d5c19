"""Per-hit cost of a counting uprobe: dtproc's perf events vs bpftrace vs no probe at all.

For each probed function (one that starts with ``push %rbp``, which the kernel
emulates, and one that starts with a rip-relative ``mov``, which it single-steps
out of line) and each method, the target times its own call loop (so attach and
start-up costs stay outside), T(N) and T(0) are medians of a few runs, and the
per-hit cost is (T(N) - T(0)) / N.

    PYTHONPATH=src python bench/bench_uprobes.py [--runs 3] [--n 100000 1000000]

``--decode`` measures the reading side instead: microseconds per sample to decode a
PERF_RECORD_SAMPLE of the layout uprobe samples have (``RecordParser.parse_sample``, on
records packed here), and to turn real rings of samples into ``UprobeSample`` objects
(``SampleRing.drain``, bytes read out of the ring included), with and without a stack copy.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dtproc._sys import perf
from dtproc.elf import ElfFile
from dtproc.uprobes import (
    SampleOptions,
    SampleRing,
    Scope,
    UprobeCounter,
    UprobeSpec,
    sample_type,
)

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


DECODED = 2000  # samples per timed batch


def packed_sample(stack_bytes: int) -> tuple[perf.RecordParser, bytes]:
    """A parser for uprobe samples copying *stack_bytes*, and one record body it reads."""
    regs = perf.X86_64_USER_REGS
    parser = perf.RecordParser(sample_type(stack_bytes), perf.regs_mask(regs))
    body = struct.pack("<QQIIQII", 1, 0x401000, 100, 101, 123456789, 1, 0)
    body += struct.pack(f"<Q{len(regs)}Q", perf.RegsAbi.ABI_64, *range(len(regs)))
    if stack_bytes:
        body += struct.pack("<Q", stack_bytes) + bytes(stack_bytes) + struct.pack("<Q", 64)
    return parser, body


def parse_seconds(stack_bytes: int, runs: int) -> float:
    """Per sample, the fastest of *runs* batches of DECODED ``parse_sample`` calls."""
    parser, body = packed_sample(stack_bytes)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(DECODED):
            parser.parse_sample(body)
        best = min(best, (time.perf_counter() - start) / DECODED)
    return best


def drain_seconds(exe: Path, stack_bytes: int, runs: int) -> float:
    """Per sample, the fastest SampleRing.drain of DECODED real samples of *runs* runs."""
    spec = UprobeSpec(str(exe), file_offset(exe, FUNCTIONS["push"]))
    best = float("inf")
    for _ in range(runs):
        proc = subprocess.Popen(
            [exe, "push", str(DECODED)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdout.readline()  # ready
            opts = SampleOptions(stack_bytes=stack_bytes, ring_pages=1024)
            with SampleRing.open([spec], proc.pid, Scope.THREAD, opts) as ring:
                proc.stdin.write("g")
                proc.stdin.flush()
                proc.stdout.readline()  # done: every sample is in the ring
                start = time.perf_counter()
                got = len(ring.drain())
                best = min(best, (time.perf_counter() - start) / DECODED)
                if got != DECODED or ring.lost:
                    raise RuntimeError(f"drained {got} of {DECODED}, {ring.lost} lost")
        finally:
            proc.kill()
            proc.wait()
    return best


def decode(exe: Path, runs: int) -> None:
    print(f"{'stack copy':>10} {'parse_sample':>14} {'drain':>14}   (per sample, best of {runs})")
    for stack_bytes in (0, 512):
        parse = parse_seconds(stack_bytes, runs)
        drain = drain_seconds(exe, stack_bytes, runs)
        print(f"{stack_bytes:>8} B {parse * 1e6:>11.2f} µs {drain * 1e6:>11.2f} µs", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--decode", action="store_true", help="time decoding samples instead")
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
        if args.decode:
            decode(exe, max(args.runs, 5))
            return
        print(f"{'function':8} {'N':>9} " + " ".join(f"{m:>15}" for m in methods) + "   ratios")
        for mode in FUNCTIONS:
            for n in args.n:
                cost = {m: per_hit_ns(r, exe, mode, n, args.runs) for m, r in methods.items()}
                cells = " ".join(f"{cost[m]:>12.1f} ns" for m in methods)
                print(f"{mode:8} {n:>9} {cells}   {ratios(cost)}", flush=True)


if __name__ == "__main__":
    main()
