"""Helpers for the D-layer tests, and tests of the helpers' building blocks.

The D layer is pure: these tests drive it with :class:`StaticContext` hits
(what a replayed perf sample would give), never with a live process.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pytest

from dtproc.d import (
    OutputFormat,
    ProbeDescription,
    ProbeInfo,
    Program,
    Runtime,
    StackValue,
    StaticContext,
    compile_program,
)

TICK = ProbeInfo(100, "profile", "", "", "tick-10ms")
ENTRY = ProbeInfo(48000, "pid1234", "a.out", "main", "entry")

SYMBOLS = {
    0x401000: "a.out`main",
    0x401010: "a.out`main+0x10",
    0x402008: "a.out`foo+0x8",
    0x7F0004: "libc.so.6`malloc+0x4",
}


def symbolize(pid: int, pc: int) -> str:
    return SYMBOLS.get(pc, f"0x{pc:x}")


def hit(probe: ProbeInfo = ENTRY, **kw: object) -> StaticContext:
    """A probe hit of pid 1234 with the given overrides."""
    values: dict[str, object] = {
        "pid": 1234,
        "tid": 1234,
        "ppid": 1,
        "execname": "a.out",
        "timestamp": 1_000_000,
        "walltimestamp": 1_700_000_000_000_000_000,
    }
    values.update(kw)
    return StaticContext(probe, **values)  # type: ignore[arg-type]


@dataclass
class Run:
    out: str
    err: str
    runtime: Runtime


def run(
    src: str,
    *,
    hits: Iterable[StaticContext] = (),
    ticks: int = 0,
    macros: Mapping[str, str | int] | None = None,
    options: Mapping[str, str | None] | None = None,
    fmt: OutputFormat = OutputFormat.DTRACE,
    symbolizer: Callable[[int, int], str] = symbolize,
) -> Run:
    """BEGIN, then each hit to every clause it matches, then up to *ticks* ticks, then END.

    Ticks stop early once exit() was called, as dtrace's would.
    """
    program = compile_program(src, macros=macros or {"target": 1234}, options=options)
    return run_program(program, hits=hits, ticks=ticks, fmt=fmt, symbolizer=symbolizer)


def run_program(
    program: Program,
    *,
    hits: Iterable[StaticContext] = (),
    ticks: int = 0,
    fmt: OutputFormat = OutputFormat.DTRACE,
    symbolizer: Callable[[int, int], str] = symbolize,
) -> Run:
    """:func:`run` for a program compiled already."""
    out, err = io.StringIO(), io.StringIO()
    rt = Runtime(program, out, symbolize=symbolizer, output=fmt, err=err)
    rt.begin()
    for ctx in hits:
        fire_all(rt, ctx)
    for i in range(ticks):
        if rt.exit_requested is not None:
            break
        fire_all(rt, hit(TICK, timestamp=1_000_000 + i * 10_000_000))
    rt.end()
    return Run(out.getvalue(), err.getvalue(), rt)


def fire_all(rt: Runtime, ctx: StaticContext) -> None:
    for clause in rt.program.clauses:
        if clause.matches(ctx.probe):
            rt.fire(clause.index, ctx)


def output(src: str, **kw: object) -> str:
    return run(src, **kw).out  # type: ignore[arg-type]


# -- the building blocks -------------------------------------------------------------


def test_static_context_memory_and_stack() -> None:
    ctx = hit(memory={0x1000: b"abc\0"}, stack=(1, 2, 3), args=(-1,))
    assert ctx.read_memory(0x1001, 2) == b"bc"
    assert ctx.ustack(2) == StackValue(1234, (1, 2))
    assert ctx.arg(0) == (1 << 64) - 1
    with pytest.raises(Exception, match="0x2000"):
        ctx.read_memory(0x2000, 1)


@pytest.mark.parametrize(
    ("spec", "probe", "matches"),
    [
        ("BEGIN", ("dtrace", "", "", "BEGIN"), True),
        ("pid1234::malloc:entry", ("pid1234", "libc.so.6", "malloc", "entry"), True),
        ("pid1234::malloc:entry", ("pid1234", "libc.so.6", "malloc", "return"), False),
        ("pid*:libc*::entry", ("pid1", "libc.so.6", "free", "entry"), True),
        ("a.out:m?in:entry", ("pid1", "a.out", "main", "entry"), True),
        ("::[mf]*:entry", ("p", "m", "free", "entry"), True),
        ("::[!mf]*:entry", ("p", "m", "free", "entry"), False),
        ("tick-1s", ("profile", "", "", "tick-1s"), True),
    ],
)
def test_probe_description_matching(
    spec: str, probe: tuple[str, str, str, str], matches: bool
) -> None:
    assert ProbeDescription.parse(spec).matches(*probe) is matches


def test_probe_description_fields_are_right_aligned() -> None:
    d = ProbeDescription.parse("malloc:entry")
    assert (d.provider, d.module, d.function, d.name) == ("", "", "malloc", "entry")
