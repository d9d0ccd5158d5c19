"""Control threads: how fast they answer a request, and what they cost while nothing happens.

    PYTHONPATH=src python bench/bench_control.py [--quick] [--runs CALLS] [--handles N]
                                                 [--idle SECONDS]

A control thread spends its life blocked in ``waitid`` for its process's events; a
request from another thread (``Process.call``, ``Tracer.resume``, a release) queues the
work and wakes it with a thread-directed signal (sent again after 2 ms, then less and
less often, until the request is served: a signal that arrives just before the thread
enters ``waitid`` is lost).  Measured, as distributions of single latencies (median, p90,
p99, max, and the share over 1 ms, which most likely missed the first signal;
``--runs`` calls per target state, ``--handles`` processes for resume and release):

- **Process.call(no-op)** from the main thread while the target (a) sleeps in
  ``pause()``, (b) runs a CPU-bound loop, (c) calls a function with a breakpoint on it as
  fast as the control thread can take the hits.  Calls are spaced by a random 0.2 to 2 ms,
  so that the control thread is back in ``waitid`` (or busy with hits) when the next
  comes; then once more back to back, each call as soon as the previous one returned;
- **Tracer.resume** of a process created with ``stop_at="main"`` and still held there, at
  once after ``create`` returned and 10 ms later;
- **Process.release** (the last reference) of a created, running target -- killed and
  reaped -- and of a grabbed one with a breakpoint planted -- removed and detached;
- for scale, the same round trip between two plain Python threads (a queue and an event),
  which is the floor of any request handed to another thread.

Then the idle cost: for ``--idle`` seconds while a controlled target sleeps (resumed, or
held at its rendezvous) or computes without events, the CPU time of our whole process, of
the control thread alone, how often that thread was woken, and the target's CPU time.
With no polling loop anywhere, all but the last should be about zero.  CPU times come from
``/proc/.../task/TID/schedstat`` (nanoseconds, not clock ticks); wake-ups are the thread's
context switches, voluntary or not.  Our whole process's CPU time is
``time.process_time()``, which unlike schedstat includes what the calling thread has used
since it was last scheduled out.
"""

from __future__ import annotations

import argparse
import enum
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _harness import Distribution, Grid, build, format_seconds, options, report
from dtproc import Tracee
from dtproc._sys import procfs
from dtproc.control import Process, Tracer

TARGET: Final = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

volatile long counter;

long tick(long x);
__asm__(".text\n.globl tick\n.type tick,@function\ntick:\n"
        "  push %rbp\n  mov %rsp, %rbp\n  lea 1(%rdi), %rax\n  pop %rbp\n  ret\n"
        ".size tick, .-tick\n");

/* usage: ctl_target sleep|spin|hits -- runs until killed */
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "sleep";
    if (!strcmp(mode, "spin"))
        for (;;) counter++;
    if (!strcmp(mode, "hits"))
        for (long i = 0;; i++) counter += tick(i);
    for (;;) pause();
}
"""

GAP_MIN: Final = 0.0002
GAP_MAX: Final = 0.002
SETTLE: Final = 0.05
SLOW: Final = 0.001  # a request slower than this was most likely not woken at the first try
SLOW_COLUMN: Final = "over 1 ms"


class Mode(enum.Enum):
    """What the target does while it is measured."""

    SLEEP = "sleep"
    SPIN = "spin"
    HITS = "hits"


@dataclass(frozen=True, slots=True)
class Sizes:
    calls: int  # Process.call samples per target state
    handles: int  # resume / release samples (each creates a process)
    idle: float  # seconds of each idle window


def _nothing(tracee: Tracee) -> None:
    """The request: nothing, so that what is measured is the round trip."""


def _no_op(tracee: Tracee, tid: int) -> None:
    """The breakpoint callback of the busy target."""


def _gaps(count: int, seed: int) -> Iterator[float]:
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.uniform(GAP_MIN, GAP_MAX)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- processes


@contextmanager
def controlled(tracer: Tracer, exe: Path, mode: Mode, *, resume: bool = True) -> Iterator[Process]:
    """A created target under control, resumed (or held at main), released afterwards."""
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        proc = tracer.create([str(exe), mode.value], stop_at="main", stdout=null)
    finally:
        os.close(null)
    try:
        if resume:
            tracer.resume(proc)
            time.sleep(SETTLE)
        yield proc
    finally:
        if proc.refs:
            proc.release()


def _plant(proc: Process) -> int:
    """A breakpoint on the target's ``tick``; returns its address."""
    symbol = proc.lookup(None, "tick")
    if symbol is None:
        raise LookupError(f"pid {proc.pid}: no symbol tick")
    proc.add_breakpoint(symbol.address, _no_op)
    return symbol.address


def _hits(proc: Process) -> int:
    return proc.call(lambda t: sum(bp.hits for bp in t.breakpoints))


# ----------------------------------------------------------------------------- latencies


def handoff_latency(samples: int) -> list[float]:
    """Two plain Python threads: a queue to hand over a request, an event to answer."""
    requests: queue.SimpleQueue[threading.Event | None] = queue.SimpleQueue()

    def serve() -> None:
        while (done := requests.get()) is not None:
            done.set()

    server = threading.Thread(target=serve, name="bench-handoff")
    server.start()
    try:
        lat = []
        for gap in _gaps(samples, 1):
            time.sleep(gap)
            done = threading.Event()
            start = time.perf_counter()
            requests.put(done)
            done.wait()
            lat.append(time.perf_counter() - start)
    finally:
        requests.put(None)
        server.join()
    return lat


def call_latency(
    tracer: Tracer, exe: Path, mode: Mode, samples: int, *, spaced: bool = True
) -> tuple[list[float], float]:
    """Process.call(no-op) while the target does *mode*; also the hit rate meanwhile.

    Not *spaced*, each call follows the previous one at once: the control thread is then
    on its way back into ``waitid`` when the next request comes.
    """
    with controlled(tracer, exe, mode, resume=False) as proc:
        if mode is Mode.HITS:
            _plant(proc)
        tracer.resume(proc)
        time.sleep(SETTLE)
        hits_before, start = _hits(proc), time.perf_counter()
        lat = []
        for gap in _gaps(samples, 2):
            if spaced:
                time.sleep(gap)
            lat.append(_timed(lambda: proc.call(_nothing)))
        rate = (_hits(proc) - hits_before) / (time.perf_counter() - start)
    return lat, rate


def resume_latency(tracer: Tracer, exe: Path, samples: int, pause: float) -> list[float]:
    """Tracer.resume of a process held at main, *pause* seconds after create returned."""
    lat = []
    for _ in range(samples):
        with controlled(tracer, exe, Mode.SLEEP, resume=False) as proc:
            if pause:
                time.sleep(pause)  # not for 0: even sleep(0) lets the control thread run on
            lat.append(_timed(lambda: tracer.resume(proc)))
    return lat


def release_created_latency(tracer: Tracer, exe: Path, samples: int) -> list[float]:
    """The last release of a created, running target: it is killed and reaped."""
    lat = []
    for _ in range(samples):
        with controlled(tracer, exe, Mode.SLEEP) as proc:
            lat.append(_timed(proc.release))
    return lat


def release_grabbed_latency(tracer: Tracer, exe: Path, samples: int) -> list[float]:
    """The last release of a grabbed, running target with a breakpoint: it is detached."""
    lat = []
    for _ in range(samples):
        child = subprocess.Popen([str(exe), Mode.SLEEP.value])
        try:
            proc = tracer.grab(child.pid)
            try:
                _plant(proc)
                tracer.resume(proc)
                time.sleep(SETTLE)
            except BaseException:
                proc.release()
                raise
            lat.append(_timed(proc.release))
            if procfs.tracer_pid(child.pid) != 0:
                raise RuntimeError(f"pid {child.pid} is still traced after its release")
        finally:
            child.kill()
            child.wait()
    return lat


def latencies(exe: Path, sizes: Sizes) -> tuple[Grid, list[str]]:
    grid = Grid("Request latency", "request", (*Distribution.COLUMNS, SLOW_COLUMN))
    notes = []

    def row(label: str, samples: list[float]) -> None:
        dist = Distribution.of(samples)
        grid.add_distribution(label, dist)
        slow = sum(1 for x in samples if x > SLOW) / len(samples)
        grid.add(label, SLOW_COLUMN, slow, f"{slow:.1%}")
        print(
            f"{label:<62} median {format_seconds(dist.median)}, p90 {format_seconds(dist.p90)}",
            file=sys.stderr,
        )

    row("Python thread hand-off (queue + event), for scale", handoff_latency(sizes.calls))
    with Tracer() as tracer:
        for mode, what in (
            (Mode.SLEEP, "target sleeping"),
            (Mode.SPIN, "target CPU-bound"),
            (Mode.HITS, "target hitting a breakpoint"),
        ):
            lat, rate = call_latency(tracer, exe, mode, sizes.calls)
            row(f"Process.call(no-op), {what}", lat)
            if mode is Mode.HITS:
                notes.append(f"Breakpoint hits while Process.call was measured: {rate:,.0f}/s.")
        lat, _ = call_latency(tracer, exe, Mode.SLEEP, sizes.calls, spaced=False)
        row("Process.call(no-op), back to back, target sleeping", lat)
        for pause, when in ((0.0, "at once"), (0.01, "10 ms")):
            lat = resume_latency(tracer, exe, sizes.handles, pause)
            row(f"Tracer.resume {when} after create(stop_at=main)", lat)
        row(
            "Process.release, created target running (kill)",
            release_created_latency(tracer, exe, sizes.handles),
        )
        row(
            "Process.release, grabbed target running, 1 breakpoint (detach)",
            release_grabbed_latency(tracer, exe, sizes.handles),
        )
    return grid, notes


# ----------------------------------------------------------------------------- idle cost


def _task_cpu(pid: int, tid: int) -> float:
    """Seconds a thread has run, from schedstat (nanoseconds; current for a blocked thread)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def _process_cpu(pid: int) -> float:
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += _task_cpu(pid, int(tid))
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return total


def _switches(tid: int) -> int:
    """How often a thread was scheduled out: each wake-up ends in one (``/proc/TID`` is its own)."""
    status = procfs.read_status(tid)
    return int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])


@dataclass(frozen=True, slots=True)
class Usage:
    ours: float
    control: float
    wakeups: int
    target: float

    @classmethod
    def now(cls, target: int, control: int) -> Usage:
        return cls(
            time.process_time(),
            _task_cpu(os.getpid(), control),
            _switches(control),
            _process_cpu(target),
        )

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(
            self.ours - earlier.ours,
            self.control - earlier.control,
            self.wakeups - earlier.wakeups,
            self.target - earlier.target,
        )


IDLE_COLUMNS: Final = ("our process CPU", "control thread CPU", "control wake-ups", "target CPU")


def idle_usage(tracer: Tracer, exe: Path, mode: Mode, resume: bool, seconds: float) -> Usage:
    """What a quiet window of *seconds* costs while this thread sleeps in Tracer.sleep."""
    with controlled(tracer, exe, mode, resume=resume) as proc:
        control = procfs.tracer_pid(proc.pid)  # the thread that attached: the control thread
        if control == 0:
            raise RuntimeError(f"pid {proc.pid} is not traced")
        time.sleep(SETTLE)  # the control thread finishes what create left it meanwhile
        before = Usage.now(proc.pid, control)
        tracer.sleep(seconds)
        return Usage.now(proc.pid, control) - before


def idle(exe: Path, seconds: float) -> Grid:
    grid = Grid(f"Idle cost over {seconds:g} s", "target", IDLE_COLUMNS)

    def share(value: float) -> str:
        return f"{format_seconds(value)} ({value / seconds:.2%})"

    with Tracer() as tracer:
        for label, mode, resume in (
            ("sleeping in pause(), resumed", Mode.SLEEP, True),
            ("held at its rendezvous (main)", Mode.SLEEP, False),
            ("CPU-bound, no events", Mode.SPIN, True),
        ):
            used = idle_usage(tracer, exe, mode, resume, seconds)
            grid.add(label, IDLE_COLUMNS[0], used.ours, share(used.ours))
            grid.add(label, IDLE_COLUMNS[1], used.control, share(used.control))
            grid.add(label, IDLE_COLUMNS[2], used.wakeups, str(used.wakeups))
            grid.add(label, IDLE_COLUMNS[3], used.target, share(used.target))
            print(
                f"idle, {label:<32} ours {share(used.ours)}, control {share(used.control)}, "
                f"{used.wakeups} wake-ups",
                file=sys.stderr,
            )
    return grid


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handles", type=int, default=40, help="resume and release samples (40)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of each idle window (5)")


def main() -> None:
    opts, args = options(__doc__.splitlines()[0], runs=1000, extra=_arguments)
    sizes = Sizes(
        calls=50 if opts.quick else opts.runs,
        handles=5 if opts.quick else args.handles,
        idle=1.0 if opts.quick else args.idle,
    )
    exe = build("ctl_target", "-O2", source=TARGET)
    grid, notes = latencies(exe, sizes)
    spacing = f"{GAP_MIN * 1e3:g} to {GAP_MAX * 1e3:g} ms"
    notes.append(f"Process.call samples spaced by a random {spacing} unless back to back.")
    report("control", opts, [grid, idle(exe, sizes.idle)], notes=notes)


if __name__ == "__main__":
    main()
