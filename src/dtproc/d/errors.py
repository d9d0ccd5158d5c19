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


@dataclass(frozen=True, slots=True)
class Origin:
    """Which of several separately compiled texts an error belongs to, in dtrace's words.

    dtrace compiles each ``-n``/``-P``/``-m``/``-f``/``-i`` argument and each
    ``-s`` script on its own and names the culprit first: ``invalid probe
    specifier ARG: ...`` or ``failed to compile script PATH: line N: ...``.
    A script's errors name the line; an argument's name the region (``in
    action list``), as dtrace's do.
    """

    heading: str
    numbered: bool


class DCompileError(DtprocError):
    """The D program does not compile: a syntax, type or usage error.

    ``str()`` is ``failed to compile program: line L, column C: <detail>``
    followed by the source line and a caret under column C. Under an
    :class:`Origin` (see :meth:`located`) the first line is dtrace's instead
    (``invalid probe specifier BEGIN{x}: in action list: <detail>``), and the
    line and column move to the block above the caret. :attr:`headline` is the
    first line alone, as dtrace prints it (the command adds the rest under ``-v``).
    """

    def __init__(
        self,
        detail: str,
        pos: Pos | None = None,
        source: str | None = None,
        *,
        region: str | None = None,
        origin: Origin | None = None,
    ) -> None:
        self.detail = detail
        self.pos = pos
        self.region = region  # "predicate" or "action list": where the checker was
        self.origin = origin
        self.source_line = _line_of(source, pos.line) if source is not None and pos else None
        if origin is None:
            message = _render(detail, pos, self.source_line)
        else:
            message = _render_located(origin, detail, pos, region, self.source_line)
        super().__init__(message)

    @property
    def headline(self) -> str:
        """The first line alone: what dtrace prints for this error."""
        return str(self).split("\n", 1)[0]

    def located(self, origin: Origin, source: str) -> DCompileError:
        """This error as reported for one of several texts (*source* is that text)."""
        return DCompileError(self.detail, self.pos, source, region=self.region, origin=origin)


def _line_of(source: str, line: int) -> str | None:
    lines = source.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else None


def _render(detail: str, pos: Pos | None, source_line: str | None) -> str:
    if pos is None:
        return f"failed to compile program: {detail}"
    head = f"failed to compile program: line {pos.line}, column {pos.col}: {detail}"
    return head + _caret_block(pos, source_line)


def _render_located(
    origin: Origin, detail: str, pos: Pos | None, region: str | None, source_line: str | None
) -> str:
    if origin.numbered and pos is not None:
        where = f"line {pos.line}: "
    elif not origin.numbered and region is not None:
        where = f"in {region}: "
    else:
        where = ""
    head = f"{origin.heading}: {where}{detail}"
    if pos is None:
        return head
    return f"{head}\nline {pos.line}, column {pos.col}:" + _caret_block(pos, source_line)


def _caret_block(pos: Pos, source_line: str | None) -> str:
    """The source line and a caret under the column (empty without the line)."""
    if source_line is None:
        return ""
    # Keep tabs in the caret's indentation so that it lines up under the
    # column whatever the terminal's tab width is.
    indent = "".join(c if c == "\t" else " " for c in source_line[: pos.col - 1])
    return f"\n{source_line}\n{indent}^"


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
