"""Layer 2: LEB128 numbers and the DWARF expression machine that call frame information uses.

CFI expressions are tiny programs (glibc's signal trampoline describes every register as
``DW_OP_breg7 <off>``; stack-realigning functions find their CFA with ``DW_OP_breg6 -8;
DW_OP_deref``), but the bytes come from files and memory we do not trust.  So the machine
counts every operation it executes and every value it pushes: a backwards ``DW_OP_skip`` or a
runaway ``DW_OP_dup`` raises :class:`~dtproc.errors.UnwindError` after a fixed budget instead of
hanging the tracer or eating its memory.  Values are unsigned 64-bit, as on the target.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from dtproc.errors import UnwindError

__all__ = [
    "MASK64",
    "MAX_EXPRESSION_STACK",
    "MAX_EXPRESSION_STEPS",
    "ByteCursor",
    "ReadMemory",
    "evaluate",
    "read_sleb128",
    "read_uleb128",
]

MASK64: Final = (1 << 64) - 1
_SIGN64: Final = 1 << 63
#: Operations one evaluation may execute; real CFI expressions use fewer than 20.
MAX_EXPRESSION_STEPS: Final = 4096
#: Values the stack may hold at once.
MAX_EXPRESSION_STACK: Final = 256

#: Reads *size* bytes at an address of the target; raises, or returns fewer bytes, when the
#: memory is not there.
ReadMemory = Callable[[int, int], bytes]


def read_uleb128(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned LEB128 number at *pos*, and the position after it."""
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    result = byte & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def read_sleb128(data: bytes, pos: int) -> tuple[int, int]:
    """The signed LEB128 number at *pos*, and the position after it."""
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


def _signed(value: int) -> int:
    return value - (1 << 64) if value & _SIGN64 else value


def _div(a: int, b: int) -> int:
    if b == 0:
        raise UnwindError("DWARF expression divides by zero")
    sa, sb = _signed(a), _signed(b)
    quotient = abs(sa) // abs(sb)
    return -quotient if (sa < 0) != (sb < 0) else quotient


def _mod(a: int, b: int) -> int:
    if b == 0:
        raise UnwindError("DWARF expression takes a modulus by zero")
    return a % b


def _shl(a: int, b: int) -> int:
    return a << b if b < 64 else 0


def _shr(a: int, b: int) -> int:
    return a >> b if b < 64 else 0


def _shra(a: int, b: int) -> int:
    return _signed(a) >> min(b, 63)


def _compare(test: Callable[[int, int], bool]) -> Callable[[int, int], int]:
    """DWARF comparisons are signed and push 1 or 0."""
    return lambda a, b: int(test(_signed(a), _signed(b)))


# Binary operators pop b (the top) then a and push a OP b.
_BINARY: Final[dict[int, Callable[[int, int], int]]] = {
    0x1A: operator.and_,
    0x1B: _div,
    0x1C: operator.sub,
    0x1D: _mod,
    0x1E: operator.mul,
    0x21: operator.or_,
    0x22: operator.add,
    0x24: _shl,
    0x25: _shr,
    0x26: _shra,
    0x27: operator.xor,
    0x29: _compare(operator.eq),
    0x2A: _compare(operator.ge),
    0x2B: _compare(operator.gt),
    0x2C: _compare(operator.le),
    0x2D: _compare(operator.lt),
    0x2E: _compare(operator.ne),
}

_UNARY: Final[dict[int, Callable[[int], int]]] = {
    0x19: lambda a: abs(_signed(a)),  # DW_OP_abs
    0x1F: lambda a: -a,  # DW_OP_neg
    0x20: lambda a: ~a,  # DW_OP_not
}

# DW_OP_addr, DW_OP_const1u ... DW_OP_const8s: fixed-size operands.
_CONSTANTS: Final[dict[int, struct.Struct]] = {
    0x03: struct.Struct("<Q"),
    0x08: struct.Struct("<B"),
    0x09: struct.Struct("<b"),
    0x0A: struct.Struct("<H"),
    0x0B: struct.Struct("<h"),
    0x0C: struct.Struct("<I"),
    0x0D: struct.Struct("<i"),
    0x0E: struct.Struct("<Q"),
    0x0F: struct.Struct("<q"),
}
_S16: Final = struct.Struct("<h")

_OP_ADDR: Final = 0x03
_OP_DEREF: Final = 0x06
_OP_CONSTU: Final = 0x10
_OP_CONSTS: Final = 0x11
_OP_DUP: Final = 0x12
_OP_DROP: Final = 0x13
_OP_OVER: Final = 0x14
_OP_PICK: Final = 0x15
_OP_SWAP: Final = 0x16
_OP_ROT: Final = 0x17
_OP_PLUS_UCONST: Final = 0x23
_OP_BRA: Final = 0x28
_OP_SKIP: Final = 0x2F
_OP_LIT0: Final = 0x30
_OP_REG0: Final = 0x50
_OP_BREG0: Final = 0x70
_OP_REGX: Final = 0x90
_OP_BREGX: Final = 0x92
_OP_DEREF_SIZE: Final = 0x94
_OP_NOP: Final = 0x96
_OP_CALL_FRAME_CFA: Final = 0x9C


class ByteCursor:
    """A position in DWARF bytes with LEB128 readers: what the CFA program interpreter and
    the expression machine share."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uleb(self) -> int:
        value, self.pos = read_uleb128(self.data, self.pos)
        return value

    def sleb(self) -> int:
        value, self.pos = read_sleb128(self.data, self.pos)
        return value


class _Machine(ByteCursor):
    """One evaluation: the stack, the registers it may read and the memory it may load."""

    __slots__ = ("bias", "cfa", "read", "regs", "stack")

    def __init__(
        self,
        expr: bytes,
        regs: Mapping[int, int],
        read: ReadMemory,
        cfa: int | None,
        bias: int,
    ) -> None:
        super().__init__(expr)
        self.regs = regs
        self.read = read
        self.cfa = cfa
        self.bias = bias
        self.stack: list[int] = []

    def push(self, value: int) -> None:
        if len(self.stack) >= MAX_EXPRESSION_STACK:
            raise UnwindError(f"DWARF expression pushes more than {MAX_EXPRESSION_STACK} values")
        self.stack.append(value & MASK64)

    def pop(self) -> int:
        if not self.stack:
            raise UnwindError("DWARF expression pops an empty stack")
        return self.stack.pop()

    def peek(self, depth: int) -> int:
        if depth >= len(self.stack):
            raise UnwindError(f"DWARF expression reads stack entry {depth} of {len(self.stack)}")
        return self.stack[-1 - depth]

    def register(self, number: int) -> int:
        value = self.regs.get(number)
        if value is None:
            raise UnwindError(f"DWARF expression needs register {number}, which is unknown")
        return value

    def load(self, address: int, size: int) -> int:
        try:
            data = self.read(address, size)
        except OSError as exc:
            raise UnwindError(f"DWARF expression cannot read 0x{address:x}: {exc}") from exc
        if len(data) < size:
            raise UnwindError(f"DWARF expression cannot read {size} bytes at 0x{address:x}")
        return int.from_bytes(data[:size], "little")

    def jump(self) -> None:
        (delta,) = _S16.unpack_from(self.data, self.pos)
        target = self.pos + 2 + delta
        if not 0 <= target <= len(self.data):
            raise UnwindError(f"DWARF expression branches outside itself (to {target})")
        self.pos = target

    def run(self) -> int:
        expr = self.data
        for _ in range(MAX_EXPRESSION_STEPS):
            if self.pos >= len(expr):
                return self.peek(0)
            op = expr[self.pos]
            self.pos += 1
            self.execute(op)
        raise UnwindError(f"DWARF expression runs past {MAX_EXPRESSION_STEPS} operations")

    def execute(self, op: int) -> None:
        if op >= _OP_BREG0 and op < _OP_REGX:
            self.push(self.register(op - _OP_BREG0) + self.sleb())
        elif op >= _OP_LIT0 and op < _OP_BREG0:
            # DW_OP_regN names a register as a location; in CFI only its value can mean anything.
            self.push(op - _OP_LIT0 if op < _OP_REG0 else self.register(op - _OP_REG0))
        elif op in _BINARY:
            b = self.pop()
            self.push(_BINARY[op](self.pop(), b))
        elif op in _UNARY:
            self.push(_UNARY[op](self.pop()))
        elif op in _CONSTANTS:
            st = _CONSTANTS[op]
            (value,) = st.unpack_from(self.data, self.pos)
            self.pos += st.size
            self.push(value + self.bias if op == _OP_ADDR else value)
        else:
            self.execute_other(op)

    def execute_other(self, op: int) -> None:
        if op == _OP_DEREF:
            self.push(self.load(self.pop(), 8))
        elif op == _OP_DEREF_SIZE:
            size = self.data[self.pos]
            self.pos += 1
            if not 1 <= size <= 8:
                raise UnwindError(f"DW_OP_deref_size of {size} bytes")
            self.push(self.load(self.pop(), size))
        elif op == _OP_PLUS_UCONST:
            self.push(self.pop() + self.uleb())
        elif op == _OP_CONSTU:
            self.push(self.uleb())
        elif op == _OP_CONSTS:
            self.push(self.sleb())
        elif op == _OP_BREGX:
            reg = self.uleb()
            self.push(self.register(reg) + self.sleb())
        elif op == _OP_REGX:
            self.push(self.register(self.uleb()))
        elif op == _OP_SKIP:
            self.jump()
        elif op == _OP_BRA:
            if self.pop():
                self.jump()
            else:
                self.pos += 2
        elif op == _OP_CALL_FRAME_CFA:
            if self.cfa is None:
                raise UnwindError("DW_OP_call_frame_cfa used where there is no CFA yet")
            self.push(self.cfa)
        elif op != _OP_NOP:
            self.execute_stack_op(op)

    def execute_stack_op(self, op: int) -> None:
        stack = self.stack
        if op == _OP_DUP:
            self.push(self.peek(0))
        elif op == _OP_DROP:
            self.pop()
        elif op == _OP_OVER:
            self.push(self.peek(1))
        elif op == _OP_PICK:
            self.push(self.peek(self.data[self.pos]))
            self.pos += 1
        elif op == _OP_SWAP:
            self.peek(1)
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == _OP_ROT:
            self.peek(2)
            stack[-1], stack[-2], stack[-3] = stack[-2], stack[-3], stack[-1]
        else:
            raise UnwindError(f"DWARF expression uses unsupported operation 0x{op:02x}")


def evaluate(
    expr: bytes,
    regs: Mapping[int, int],
    read: ReadMemory,
    *,
    push: Sequence[int] = (),
    cfa: int | None = None,
    bias: int = 0,
) -> int:
    """Run *expr* and return the value on top of its stack.

    *regs* maps DWARF register numbers to values (a missing register is an error only if the
    expression reads it); *push* is the initial stack (the CFA, for ``DW_CFA_expression``);
    *cfa* answers ``DW_OP_call_frame_cfa``; *bias* relocates ``DW_OP_addr``.  Raises
    :class:`~dtproc.errors.UnwindError` on malformed or runaway expressions and unreadable
    memory.
    """
    machine = _Machine(expr, regs, read, cfa, bias)
    for value in push:
        machine.push(value)
    try:
        return machine.run()
    except (IndexError, struct.error) as exc:
        raise UnwindError("DWARF expression is truncated") from exc
