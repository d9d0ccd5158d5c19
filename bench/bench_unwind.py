"""Unwind-table and stack-walk cost: dtproc.cfi and dtproc.unwind, in microseconds.

    PYTHONPATH=src:tests python bench/bench_unwind.py [--repeat N]

``rules_at`` cold: the first lookup of a pc whose FDE is not decoded yet (bisect the
``.eh_frame_hdr`` table, parse the FDE and its cached CIE, run both CFA programs); the
per-file setup (reading ``.eh_frame`` and decoding the header table) is reported apart.
Warm: the same pcs again (LRU hit plus a bisection of the row table).  pyelftools, for
scale, decodes one whole FDE table (it crashes on libc, so ld.so is used).  The walk is over
gdb snapshots of tests/targets/uw_basic.c (skipped without gdb), per stack and per frame.
Timings are medians over the repeats.
"""

from __future__ import annotations

import argparse
import functools
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from elftools.elf.elffile import ELFFile

from dtproc.cfi import CfiTable
from dtproc.elf import ElfFile
from dtproc.unwind import unwind

FILES = {
    "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "ld.so": "/lib64/ld-linux-x86-64.so.2",
    "python3.11": "/usr/bin/python3.11",
}
SAMPLE = 1000
ROOT = Path(__file__).resolve().parent.parent


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pcs(path: str) -> list[int]:
    fdes = list(CfiTable.for_elf(ElfFile.open(path)).fdes())
    rng = random.Random(1)
    picked = rng.sample(fdes, min(SAMPLE, len(fdes)))
    return [rng.randrange(f.start, f.end) for f in picked]


def _cold_us(elf: ElfFile, pcs: list[int]) -> float:
    """Mean cost of a first lookup, on a fresh table whose header is already read."""
    CfiTable.clear_cache()
    table = CfiTable.for_elf(elf)
    table.rules_at(pcs[0])
    start = time.perf_counter()
    for pc in pcs[1:]:
        table.rules_at(pc)
    return (time.perf_counter() - start) / (len(pcs) - 1) * 1e6


def _setup(elf: ElfFile, pc: int) -> None:
    CfiTable.clear_cache()
    CfiTable.for_elf(elf).rules_at(pc)


def _warm(table: CfiTable, pcs: list[int]) -> None:
    for pc in pcs:
        table.rules_at(pc)


def bench_tables(repeat: int) -> None:
    print(f"{'file':<12} {'setup ms':>9} {'cold us':>8} {'warm us':>8} {'fdes() ms':>10}")
    for name, path in FILES.items():
        elf = ElfFile.open(path)
        pcs = _pcs(path)
        setup_s = _median(functools.partial(_setup, elf, pcs[0]), repeat)
        cold = statistics.median(_cold_us(elf, pcs) for _ in range(repeat))
        table = CfiTable.for_elf(elf)
        warm = _median(functools.partial(_warm, table, pcs), repeat) / len(pcs)
        scan = _median(lambda: list(table.fdes()), repeat)  # noqa: B023
        print(f"{name:<12} {setup_s * 1e3:9.2f} {cold:8.1f} {warm * 1e6:8.2f} {scan * 1e3:10.1f}")


def bench_pyelftools(repeat: int) -> None:
    path = FILES["ld.so"]

    def decode_all() -> int:
        with open(path, "rb") as f:
            return sum(
                len(e.get_decoded().table)
                for e in ELFFile(f).get_dwarf_info().EH_CFI_entries()
                if hasattr(e, "get_decoded")
            )

    def ours_all() -> int:
        CfiTable.clear_cache()
        table = CfiTable.for_elf(ElfFile.open(path))
        return sum(len(table.fde_at(f.start).rows) for f in table.fdes())  # type: ignore[union-attr]

    print(
        f"ld.so, every FDE decoded: pyelftools {_median(decode_all, repeat) * 1e3:.1f} ms, "
        f"dtproc {_median(ours_all, repeat) * 1e3:.1f} ms"
    )


def bench_walk(repeat: int) -> None:
    if shutil.which("gdb") is None or shutil.which("gcc") is None:
        print("unwind: skipped (needs gdb and gcc)")
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from uw_gdb import SnapshotSpace, take_snapshots

    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "uw_basic"
        subprocess.run(
            [
                "gcc",
                "-g",
                "-O2",
                "-pthread",
                "-o",
                str(binary),
                str(ROOT / "tests/targets/uw_basic.c"),
            ],
            check=True,
        )
        snaps = take_snapshots(binary, Path(tmp) / "snaps")
        print(f"{'stack':<10} {'frames':>6} {'cold us':>9} {'warm us':>9} {'us/frame':>9}")
        for label, snap in (("qsort", snaps[1]), ("signal", snaps[2]), ("recursion", snaps[4])):
            walk = functools.partial(unwind, snap.regs, SnapshotSpace(snap), 400)
            CfiTable.clear_cache()
            start = time.perf_counter()
            frames = len(walk().frames)
            cold = time.perf_counter() - start
            warm = _median(walk, repeat)
            per_frame = warm / frames * 1e6
            print(f"{label:<10} {frames:6d} {cold * 1e6:9.0f} {warm * 1e6:9.0f} {per_frame:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench_tables(args.repeat)
    bench_pyelftools(args.repeat)
    bench_walk(args.repeat)


if __name__ == "__main__":
    main()
