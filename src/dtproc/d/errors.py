"""Errors of the D layer: compile errors users see, and runtime faults.

A compile error points at the line and column of the offending token and
shows the source line with a caret under it, the way a compiler does; the
wording of the error itself is dtrace's where dtrace has one (``failed to
resolve x: Unknown variable name``), so that people who know dtrace recognise
it and its documentation still applies.

Runtime faults (division by zero, an unreadable address) are not exceptions
a caller sees: the runtime catches :class:`DFault`, reports it the way dtrace
reports an error on an enabled probe, drops that firing's records, and goes on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dtproc.errors import DtprocError


@dataclass(frozen=True, slots=True)
class Pos:
    """A place in the program text: 1-based line and column."""

    line: int
    col: int


class DCompileError(DtprocError):
    """The D program does not compile: a syntax, type or usage error.

    ``str()`` is ``failed to compile program: line L, column C: <detail>``
    followed by the source line and a caret under column C.
    """

    def __init__(self, detail: str, pos: Pos | None = None, source: str | None = None) -> None:
        self.detail = detail
        self.pos = pos
        self.source_line = _line_of(source, pos.line) if source is not None and pos else None
        super().__init__(_render(detail, pos, self.source_line))


def _line_of(source: str, line: int) -> str | None:
    lines = source.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else None


def _render(detail: str, pos: Pos | None, source_line: str | None) -> str:
    if pos is None:
        return f"failed to compile program: {detail}"
    head = f"failed to compile program: line {pos.line}, column {pos.col}: {detail}"
    if source_line is None:
        return head
    # Keep tabs in the caret's indentation so that it lines up under the
    # column whatever the terminal's tab width is.
    indent = "".join(c if c == "\t" else " " for c in source_line[: pos.col - 1])
    return f"{head}\n{source_line}\n{indent}^"


class FaultKind(enum.Enum):
    """dtrace's fault codes, with the words dtrace prints for them."""

    BADADDR = "invalid address"
    DIVZERO = "divide-by-zero"
    ILLOP = "illegal operation"
    BADSTACK = "bad stack"


class DFault(Exception):
    """Raised inside compiled clauses; caught and reported by the runtime."""

    def __init__(self, kind: FaultKind, addr: int | None = None) -> None:
        super().__init__(kind.value)
        self.kind = kind
        self.addr = addr
        self.action = 0  # 0 = predicate, N = action #N; set by the clause runner
