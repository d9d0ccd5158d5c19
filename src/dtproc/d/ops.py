"""Integer and string operator semantics, shared by constant folding and the compiler.

Values are normalized to their C type; results wrap as C's do. Division
truncates toward zero as in C, and division by zero is a fault, as in dtrace.
Shift counts use their low six bits, as the 64-bit shift of dtrace's DIF does.
"""

from __future__ import annotations

from collections.abc import Callable

from dtproc.d.dtypes import DType, normalizer
from dtproc.d.errors import DFault, FaultKind

IntOp = Callable[[int, int], int]


def c_div(a: int, b: int) -> int:
    if b == 0:
        raise DFault(FaultKind.DIVZERO)
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def c_mod(a: int, b: int) -> int:
    if b == 0:
        raise DFault(FaultKind.DIVZERO)
    return a - b * c_div(a, b)


_RAW: dict[str, IntOp] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": c_div,
    "%": c_mod,
    "&": lambda a, b: a & b,
    "|": lambda a, b: a | b,
    "^": lambda a, b: a ^ b,
    "<<": lambda a, b: a << (b & 63),
    ">>": lambda a, b: a >> (b & 63),
}

COMPARISONS: dict[str, Callable[[object, object], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}

ARITH_OPS = frozenset(_RAW)


def int_op(op: str, optype: DType) -> IntOp:
    """The C operation *op* on operands of *optype*, wrapping the result into it."""
    raw = _RAW[op]
    wrap = normalizer(optype)
    if op in ("&", "|", "^", ">>"):
        return raw  # cannot leave the type's range: operands are normalized
    return lambda a, b: wrap(raw(a, b))
