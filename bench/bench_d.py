"""Per-hit cost of the D runtime: microseconds per Runtime.fire() for typical clauses.

Run: ``PYTHONPATH=src python bench/bench_d.py`` (DTPROC_STRESS=1 for more hits).
The probe context is a plain object with precomputed attributes, so the
numbers are the runtime's own cost, not a backend's.
"""

from __future__ import annotations

import io
import os
import time

from dtproc.d import ProbeInfo, Runtime, StackValue, compile_program
from dtproc.d.values import MemoryFault

PROBE = ProbeInfo(48000, "pid1234", "libc.so.6", "malloc", "entry")


class Hit:
    """A probe hit with everything precomputed."""

    def __init__(self, i: int) -> None:
        self.probe = PROBE
        self.pid = 1234
        self.tid = 1234 + (i & 3)
        self.ppid = 1
        self.uid = 0
        self.gid = 0
        self.cpu = 0
        self.execname = "a.out"
        self.timestamp = 1_000_000 + i * 1000
        self.walltimestamp = 1_700_000_000_000_000_000 + i
        self._arg0 = 16 + (i & 255)

    def arg(self, i: int) -> int:
        return self._arg0 if i == 0 else 0

    def read_memory(self, addr: int, n: int) -> bytes:
        raise MemoryFault(addr)

    def ustack(self, nframes: int) -> StackValue:
        return StackValue(self.pid, (0x401000, 0x401100, 0x401200)[:nframes])


CASES = {
    "@[probefunc] = count()": "pid$target::malloc:entry { @[probefunc] = count(); }",
    "@ = quantize(arg0)": "pid$target::malloc:entry { @ = quantize(arg0); }",
    "predicate + sum": "pid$target::malloc:entry /arg0 > 64/ { @s[execname] = sum(arg0); }",
    "self->ts = timestamp": "pid$target::malloc:entry { self->ts = timestamp; }",
    "@[ustack()] = count()": "pid$target::malloc:entry { @[ustack()] = count(); }",
    'printf("%s %d\\n", ...) (-q)': (
        '#pragma D option quiet\npid$target::malloc:entry { printf("%s %d\\n", probefunc, arg0); }'
    ),
    "printf (default output)": 'pid$target::malloc:entry { printf("%d", arg0); }',
}


def bench(src: str, n: int, repeat: int = 5) -> float:
    """Best of *repeat* runs of *n* fires (the machine may be shared): us per fire."""
    program = compile_program(src, macros={"target": 1234})
    hits = [Hit(i) for i in range(256)]
    best = float("inf")
    for _ in range(repeat):
        rt = Runtime(program, io.StringIO())
        fire = rt.fire
        t0 = time.perf_counter()
        for i in range(n):
            fire(0, hits[i & 255])
        best = min(best, time.perf_counter() - t0)
        rt.end()
    return best / n * 1e6


def main() -> None:
    n = 1_000_000 if os.environ.get("DTPROC_STRESS") else 50_000
    print(f"{'clause':40} {'us/fire':>8}")
    for name, src in CASES.items():
        print(f"{name:40} {bench(src, n):8.2f}")


if __name__ == "__main__":
    main()
