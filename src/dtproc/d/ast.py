"""The D syntax tree, as written: no types, no resolved names.

The checker turns it into the typed IR (:mod:`dtproc.d.ir`); keeping the two
apart lets the checker try a clause's actions before its predicate and start
over, as dtrace does, without the tree having been changed by the first try.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtproc.d.dtypes import DType
from dtproc.d.errors import Pos


@dataclass(frozen=True, slots=True)
class Expr:
    pos: Pos


@dataclass(frozen=True, slots=True)
class IntLit(Expr):
    value: int
    type: DType


@dataclass(frozen=True, slots=True)
class StrLit(Expr):
    value: str


@dataclass(frozen=True, slots=True)
class Ident(Expr):
    """A bare name: a builtin, a global scalar or a global associative array."""

    name: str


@dataclass(frozen=True, slots=True)
class ScopedVar(Expr):
    """``self->name`` (scope "self") or ``this->name`` (scope "this")."""

    scope: str
    name: str


@dataclass(frozen=True, slots=True)
class AggRef(Expr):
    """``@name`` or ``@name[keys]``; ``name`` is ``_`` for the anonymous ``@``."""

    name: str
    keys: tuple[Expr, ...] | None


@dataclass(frozen=True, slots=True)
class Index(Expr):
    """``base[keys]`` where base is an Ident or a self-> variable."""

    base: Expr
    keys: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Call(Expr):
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    """Prefix ``- + ~ ! * &`` and ``++ --`` (op ``pre++``/``post++``...)."""

    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Ternary(Expr):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True, slots=True)
class Assign(Expr):
    """``target op value`` with op one of ``= += -= *= /= %= &= |= ^= <<= >>=``."""

    op: str
    target: Expr
    value: Expr


@dataclass(frozen=True, slots=True)
class Cast(Expr):
    type: DType
    operand: Expr


@dataclass(frozen=True, slots=True)
class SizeofType(Expr):
    type: DType


@dataclass(frozen=True, slots=True)
class SizeofExpr(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Stringof(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Member(Expr):
    """``a.b`` or ``a->b`` on something other than self/this: never valid here."""

    op: str
    base: Expr
    name: str


@dataclass(frozen=True, slots=True)
class Comma(Expr):
    left: Expr
    right: Expr


# -- statements ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stmt:
    pos: Pos


@dataclass(frozen=True, slots=True)
class ExprStmt(Stmt):
    expr: Expr


@dataclass(frozen=True, slots=True)
class If(Stmt):
    cond: Expr
    then: tuple[Stmt, ...]
    other: tuple[Stmt, ...]


# -- program items ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One probe description as written, after macro expansion.

    An integer instead of a description is a probe id (``dtrace -i 42``);
    *probe_id* holds it, and *text* its spelling.
    """

    text: str
    pos: Pos
    probe_id: int | None = None


@dataclass(frozen=True, slots=True)
class Clause:
    specs: tuple[ProbeSpec, ...]
    predicate: Expr | None
    body: tuple[Stmt, ...] | None  # None: no braces at all (dtrace -n BEGIN)
    pos: Pos


@dataclass(frozen=True, slots=True)
class Declaration:
    """``[self|this] type name, name...;`` at the outer level."""

    scope: str  # "global", "self" or "this"
    type: DType
    names: tuple[tuple[str, Pos], ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Pragma:
    words: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ProgramAst:
    items: tuple[Clause | Declaration, ...]
    pragmas: tuple[Pragma, ...]
