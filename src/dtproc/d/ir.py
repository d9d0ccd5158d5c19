"""The typed intermediate form the checker produces and the compiler consumes.

Every expression knows its type, every variable its storage slot, every
implicit conversion is an explicit :class:`Cast`, and every statement is one
of a small set of actions, so the compiler is a direct translation to
closures with no decisions left to make per probe hit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dtproc.d.dtypes import DType
from dtproc.d.printf import Formatter


class Space(enum.Enum):
    """Where a variable lives."""

    GLOBAL = "global"
    SELF = "self"  # per thread
    THIS = "this"  # per probe firing


@dataclass(frozen=True, slots=True)
class Expr:
    type: DType


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: int | str


@dataclass(frozen=True, slots=True)
class Builtin(Expr):
    """pid, tid, arg0..arg9, execname, probefunc, timestamp..."""

    name: str


@dataclass(frozen=True, slots=True)
class Var(Expr):
    space: Space
    slot: int
    name: str


@dataclass(frozen=True, slots=True)
class ArrayElem(Expr):
    """An associative array element: global ``a[k]`` or thread-local ``self->a[k]``."""

    space: Space
    slot: int
    name: str
    keys: tuple[Expr, ...]


Lvalue = Var | ArrayElem


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    op: str  # "-", "~", "!"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    """Arithmetic, bitwise, shift or comparison; operands already converted."""

    op: str
    left: Expr
    right: Expr
    optype: DType  # the type the operation is carried out in


@dataclass(frozen=True, slots=True)
class Logical(Expr):
    op: str  # "&&", "||", "^^"
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Ternary(Expr):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True, slots=True)
class Cast(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Assign(Expr):
    target: Lvalue
    value: Expr  # already of the target's type


@dataclass(frozen=True, slots=True)
class Compound(Expr):
    """``target op= value``: computed in optype, stored back in the target's type."""

    target: Lvalue
    op: str
    value: Expr
    optype: DType


@dataclass(frozen=True, slots=True)
class IncDec(Expr):
    target: Lvalue
    delta: int
    post: bool


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A subroutine (strlen, copyinstr...) or a recording function (ustack, usym...)."""

    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Load(Expr):
    """``*(T *)copyin(...)``: an integer read out of a copied-in buffer."""

    buffer: Expr


@dataclass(frozen=True, slots=True)
class Stringof(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Comma(Expr):
    left: Expr
    right: Expr


# -- statements ---------------------------------------------------------------


class AggFunc(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    STDDEV = "stddev"
    QUANTIZE = "quantize"
    LQUANTIZE = "lquantize"
    LLQUANTIZE = "llquantize"


@dataclass(frozen=True, slots=True)
class AggDef:
    """An aggregation variable: its function, key types and quantization parameters."""

    slot: int
    name: str  # without '@'; "_" for the anonymous aggregation
    func: AggFunc
    key_types: tuple[DType, ...]
    params: tuple[int, ...] = ()  # lquantize: base, step, levels; llquantize: f, lo, hi, n

    @property
    def display_name(self) -> str:
        return "@" if self.name == "_" else f"@{self.name}"


@dataclass(frozen=True, slots=True)
class Stmt:
    action: int  # dtrace's action number, for error messages


@dataclass(frozen=True, slots=True)
class ExprStmt(Stmt):
    expr: Expr


@dataclass(frozen=True, slots=True)
class AggUpdate(Stmt):
    agg: AggDef
    keys: tuple[Expr, ...]
    value: Expr | None  # None for count()
    incr: Expr | None  # quantize/lquantize/llquantize increment


@dataclass(frozen=True, slots=True)
class Trace(Stmt):
    expr: Expr


@dataclass(frozen=True, slots=True)
class Printf(Stmt):
    formatter: Formatter
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Printa(Stmt):
    formatter: Formatter | None
    aggs: tuple[AggDef, ...]


@dataclass(frozen=True, slots=True)
class Exit(Stmt):
    status: Expr


class AggOp(enum.Enum):
    CLEAR = "clear"
    TRUNC = "trunc"
    NORMALIZE = "normalize"
    DENORMALIZE = "denormalize"


@dataclass(frozen=True, slots=True)
class AggAction(Stmt):
    """clear(), trunc(), normalize(), denormalize(): consumer-side aggregation actions."""

    op: AggOp
    agg: AggDef
    arg: Expr | None


@dataclass(frozen=True, slots=True)
class Record(Stmt):
    """ustack(), usym()... used as statements: record the value for printing."""

    expr: Expr


@dataclass(frozen=True, slots=True)
class Tracemem(Stmt):
    data: Expr  # a buffer (copyin) or an address
    size: int


@dataclass(frozen=True, slots=True)
class If(Stmt):
    cond: Expr
    then: tuple[Stmt, ...]
    other: tuple[Stmt, ...]
