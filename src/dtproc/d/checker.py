"""Semantic analysis: names, types and usage, from syntax tree to typed IR.

This is where dtrace's compile-time errors are found: unknown variables,
operands of the wrong type, aggregations redefined with another function or
other keys, printf conversions that do not fit their arguments, actions used
as values. The messages are dtrace's.

Variables get their type where they are first assigned, in program order,
as in dtrace: a clause may only read a variable that an earlier clause (or an
earlier statement) assigned or declared. Like dtrace, a clause's actions are
checked before its predicate, and if that fails on an undefined name the
predicate is checked first instead, so ``/x++ == 0/`` may create ``x``.

While checking a clause the checker also records what the clause needs from
a probe hit (:class:`Needs`), which the program layer turns into the
``ClauseNeeds`` the probe backends use to choose how to catch hits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dtproc.d import ast, dtypes, ir, ops
from dtproc.d.dtypes import DType, Kind
from dtproc.d.errors import DCompileError, DFault, Pos
from dtproc.d.printf import FormatError, Formatter, check_arguments, parse_format


class _Undefined(DCompileError):
    """An undefined-name error: the clause may succeed with its predicate checked first."""


BUILTINS: dict[str, DType] = {
    **{f"arg{i}": dtypes.INT64 for i in range(10)},
    "pid": dtypes.PID_T,
    "tid": dtypes.ID_T,
    "ppid": dtypes.PID_T,
    "uid": dtypes.UID_T,
    "gid": dtypes.GID_T,
    "cpu": dtypes.TYPEDEFS["processorid_t"],
    "execname": dtypes.STRING,
    "probeprov": dtypes.STRING,
    "probemod": dtypes.STRING,
    "probefunc": dtypes.STRING,
    "probename": dtypes.STRING,
    "id": dtypes.UINT_T,
    "timestamp": dtypes.UINT64,
    "vtimestamp": dtypes.UINT64,
    "walltimestamp": dtypes.INT64,
    "ucaller": dtypes.UINT64,
}

PROBE_CONSTANT_BUILTINS = frozenset({"probeprov", "probemod", "probefunc", "probename", "id"})

_CONST_CHAR_P = dtypes.DType("const char *", Kind.STRING)


@dataclass(frozen=True, slots=True)
class Signature:
    """A subroutine: return type, parameter types, how many are required."""

    ret: DType
    params: tuple[DType, ...]
    required: int


def _sig(ret: DType, *params: DType, required: int | None = None) -> Signature:
    return Signature(ret, params, len(params) if required is None else required)


_I = dtypes
SUBROUTINES: dict[str, Signature] = {
    "strlen": _sig(_I.SIZE_T, _CONST_CHAR_P),
    "strjoin": _sig(_I.STRING, _CONST_CHAR_P, _CONST_CHAR_P),
    "substr": _sig(_I.STRING, _CONST_CHAR_P, _I.INT, _I.INT, required=2),
    "basename": _sig(_I.STRING, _CONST_CHAR_P),
    "dirname": _sig(_I.STRING, _CONST_CHAR_P),
    "strchr": _sig(_I.STRING, _CONST_CHAR_P, _I.CHAR),
    "strrchr": _sig(_I.STRING, _CONST_CHAR_P, _I.CHAR),
    "strstr": _sig(_I.STRING, _CONST_CHAR_P, _CONST_CHAR_P),
    "index": _sig(_I.INT, _CONST_CHAR_P, _CONST_CHAR_P, _I.INT, required=2),
    "rindex": _sig(_I.INT, _CONST_CHAR_P, _CONST_CHAR_P, _I.INT, required=2),
    "strtoll": _sig(_I.INT64, _CONST_CHAR_P, _I.INT, required=1),
    "lltostr": _sig(_I.STRING, _I.INT64, _I.INT, required=1),
    "toupper": _sig(_I.STRING, _CONST_CHAR_P),
    "tolower": _sig(_I.STRING, _CONST_CHAR_P),
    "copyin": _sig(_I.BUFFER, _I.UINTPTR, _I.SIZE_T),
    "copyinstr": _sig(_I.STRING, _I.UINTPTR, _I.SIZE_T, required=1),
    "htons": _sig(_I.TYPEDEFS["uint16_t"], _I.TYPEDEFS["uint16_t"]),
    "ntohs": _sig(_I.TYPEDEFS["uint16_t"], _I.TYPEDEFS["uint16_t"]),
    "htonl": _sig(_I.TYPEDEFS["uint32_t"], _I.TYPEDEFS["uint32_t"]),
    "ntohl": _sig(_I.TYPEDEFS["uint32_t"], _I.TYPEDEFS["uint32_t"]),
    "htonll": _sig(_I.UINT64, _I.UINT64),
    "ntohll": _sig(_I.UINT64, _I.UINT64),
    "rand": _sig(_I.INT),
}

# Subroutines whose result depends only on their arguments.
PURE_SUBROUTINES = frozenset(SUBROUTINES) - {"copyin", "copyinstr", "rand"}

# Recording functions: usable as statements, aggregation keys and printf arguments.
RECORD_FUNCS = frozenset({"ustack", "usym", "ufunc", "umod", "uaddr"})
AGG_FUNCS = {f.value: f for f in ir.AggFunc}
ACTIONS = (
    frozenset(
        {
            "trace",
            "printf",
            "printa",
            "exit",
            "clear",
            "trunc",
            "normalize",
            "denormalize",
            "tracemem",
        }
    )
    | RECORD_FUNCS
)
# Argument counts of actions and aggregating functions, from dtrace's prototypes:
# (least, most); most None = varargs ("at least" in messages).
ARITY: dict[str, tuple[int, int | None]] = {
    "trace": (1, 1),
    "exit": (1, 1),
    "printf": (1, None),
    "printa": (1, None),
    "tracemem": (2, None),
    "clear": (0, None),
    "trunc": (0, None),
    "normalize": (0, None),
    "denormalize": (0, None),
    "ustack": (0, None),
    "usym": (1, 1),
    "ufunc": (1, 1),
    "umod": (1, 1),
    "uaddr": (1, 1),
    "count": (0, 0),
    "sum": (1, 1),
    "avg": (1, 1),
    "min": (1, 1),
    "max": (1, 1),
    "stddev": (1, 1),
    "quantize": (1, None),
    "lquantize": (3, None),
    "llquantize": (5, None),
}

AGGREGATION_TYPE = dtypes.DType("aggregation", Kind.VOID)

UNSUPPORTED = frozenset(
    """stack jstack func sym mod chill breakpoint panic raise stop system copyout
    copyoutstr copyinto speculate speculation commit discard freopen ftruncate setopt
    print printm alloca bcopy progenyof getmajor getminor inet_ntoa inet_ntoa6
    inet_ntop mutex_owned mutex_owner rw_read_held rw_write_held rw_iswriter msgsize
    msgdsize ddi_pathname json memref""".split()
)


@dataclass
class Needs:
    """What a clause reads from a probe hit; accumulated while checking it."""

    args: set[int] = field(default_factory=set)
    builtins: set[str] = field(default_factory=set)
    self_vars: bool = False
    this_vars: bool = False
    globals: bool = False
    memory: bool = False
    ustack_depth: int = 0
    output: bool = False
    exit: bool = False


@dataclass
class Variable:
    name: str
    space: ir.Space
    slot: int
    type: DType | None
    is_array: bool = False
    key_types: tuple[DType, ...] | None = None


@dataclass
class _Agg:
    name: str
    slot: int
    pos: Pos
    func: ir.AggFunc | None = None
    func_line: int = 0
    key_types: tuple[DType, ...] | None = None
    params: tuple[int, ...] = ()
    defn: ir.AggDef | None = None


@dataclass
class _Tables:
    globals: dict[str, Variable] = field(default_factory=dict)
    self_vars: dict[str, Variable] = field(default_factory=dict)
    this_vars: dict[str, Variable] = field(default_factory=dict)
    aggs: dict[str, _Agg] = field(default_factory=dict)
    n_global_scalars: int = 0
    n_global_arrays: int = 0
    n_self_scalars: int = 0
    n_self_arrays: int = 0
    n_this: int = 0


@dataclass(frozen=True, slots=True)
class CheckedClause:
    predicate: ir.Expr | None
    body: tuple[ir.Stmt, ...]
    no_actions: bool  # an empty clause: dtrace traces its default record
    needs: Needs


@dataclass(frozen=True, slots=True)
class CheckedProgram:
    """What all the checked texts share: aggregations and storage sizes."""

    aggs: tuple[ir.AggDef, ...]
    n_global_scalars: int
    n_global_arrays: int
    n_self_scalars: int
    n_self_arrays: int
    n_this: int


class Checker:
    """Checks the texts of one program in order; the results are immutable IR.

    Several texts (dtrace's ``-n`` arguments and ``-s`` scripts) may be
    checked one after the other: names, types and aggregations carry over,
    as they do in dtrace's one consumer, while each error points into the
    text being checked.
    """

    def __init__(self, *, strsize: int, ustackframes: int, target_defined: bool) -> None:
        self.src = ""
        self.strsize = strsize
        self.ustackframes = ustackframes
        self.target_defined = target_defined
        self.t = _Tables()
        self.needs = Needs()
        self.action = 0
        self.deferred: DCompileError | None = None
        self.region: str | None = None  # dtrace's name for the part being checked

    # -- errors ----------------------------------------------------------------

    def err(self, msg: str, pos: Pos) -> DCompileError:
        return DCompileError(msg, pos, self.src, region=self.region)

    def undefined(self, msg: str, pos: Pos) -> _Undefined:
        return _Undefined(msg, pos, self.src, region=self.region)

    def _end_pos(self) -> Pos:
        lines = self.src.split("\n")
        return Pos(len(lines), len(lines[-1]) + 1)

    # -- program ---------------------------------------------------------------

    def check(self, source: str, program: ast.ProgramAst) -> tuple[CheckedClause, ...]:
        """Check one text (*program* parsed from *source*); returns its clauses."""
        self.src = source
        if not program.items:
            raise self.err("empty D program translation unit", self._end_pos())
        clauses: list[CheckedClause] = []
        for item in program.items:
            if isinstance(item, ast.Declaration):
                self.declare(item)
            else:
                clauses.append(self.clause(item))
        return tuple(clauses)

    def result(self) -> CheckedProgram:
        """The aggregations and storage of everything checked so far."""
        aggs = sorted((a for a in self.t.aggs.values() if a.defn), key=lambda a: a.slot)
        return CheckedProgram(
            tuple(a.defn for a in aggs if a.defn is not None),
            self.t.n_global_scalars,
            self.t.n_global_arrays,
            self.t.n_self_scalars,
            self.t.n_self_arrays,
            self.t.n_this,
        )

    def declare(self, decl: ast.Declaration) -> None:
        if decl.type.kind not in (Kind.INT, Kind.STRING):
            raise self.err(f"cannot have void object: {decl.names[0][0]}", decl.pos)
        space = {"global": ir.Space.GLOBAL, "self": ir.Space.SELF, "this": ir.Space.THIS}[
            decl.scope
        ]
        table = self._table(space)
        for name, pos in decl.names:
            if space is ir.Space.GLOBAL and name in BUILTINS:
                raise self.err(f"built-in identifier redeclared: {name}", pos)
            old = table.get(name)
            if old is not None:
                if old.type is not None and old.type != decl.type:
                    raise self.err(
                        f"identifier redeclared: {name}\n\t current: {decl.type}\n"
                        f"\tprevious: {old.type}",
                        pos,
                    )
                old.type = decl.type
                continue
            self._new_var(name, space, decl.type)

    def clause(self, clause: ast.Clause) -> CheckedClause:
        saved = copy.deepcopy(self.t)
        try:
            return self._clause_in_order(clause, predicate_first=False)
        except _Undefined:
            if clause.predicate is None:
                raise
            self.t = saved
            return self._clause_in_order(clause, predicate_first=True)

    def _clause_in_order(self, clause: ast.Clause, predicate_first: bool) -> CheckedClause:
        self.needs = Needs()
        self.action = 0
        self.deferred = None
        pred: ir.Expr | None = None
        if predicate_first and clause.predicate is not None:
            pred = self.predicate(clause.predicate)
        self.region = "action list"
        body = self.statements(clause.body or ())
        self.region = None
        if not predicate_first and clause.predicate is not None:
            pred = self.predicate(clause.predicate)
        no_actions = not clause.body
        if no_actions:
            self.needs.output = True
        return CheckedClause(pred, body, no_actions, self.needs)

    def predicate(self, expr: ast.Expr) -> ir.Expr:
        self.region = "predicate"
        e = self.expr(expr)
        if _is_action(e):
            raise self.err("action cannot be used in a conditional context", expr.pos)
        if not _is_scalar(e.type):
            raise self.err("predicate result must be of scalar type", expr.pos)
        self.raise_deferred()
        self.region = None
        return e

    # -- statements --------------------------------------------------------------

    def statements(self, stmts: Sequence[ast.Stmt]) -> tuple[ir.Stmt, ...]:
        out: list[ir.Stmt] = []
        for stmt in stmts:
            self.action += 1
            if isinstance(stmt, ast.If):
                cond = self.expr(stmt.cond)
                if not _is_scalar(cond.type):
                    raise self.err("if condition must be of scalar type", stmt.cond.pos)
                action = self.action
                then = self.statements(stmt.then)
                other = self.statements(stmt.other)
                out.append(ir.If(action, cond, then, other))
                continue
            assert isinstance(stmt, ast.ExprStmt)
            out.append(self.statement(stmt.expr))
            self.raise_deferred()
        return tuple(out)

    def raise_deferred(self) -> None:
        if self.deferred is not None:
            err, self.deferred = self.deferred, None
            raise err

    def statement(self, e: ast.Expr) -> ir.Stmt:
        if isinstance(e, ast.Assign) and isinstance(e.target, ast.AggRef):
            return self.aggregation(e)
        if isinstance(e, ast.AggRef):
            raise self.err(f"expression has null effect: {_agg_name(e.name)}", e.pos)
        if isinstance(e, ast.Call) and e.name in ACTIONS:
            return self.action_call(e)
        return ir.ExprStmt(self.action, self.expr(e))

    # -- aggregations --------------------------------------------------------------

    def aggregation(self, e: ast.Assign) -> ir.Stmt:
        target = e.target
        assert isinstance(target, ast.AggRef)
        display = _agg_name(target.name)
        call = e.value
        if e.op != "=" or not isinstance(call, ast.Call) or call.name not in AGG_FUNCS:
            raise self.err(
                f"{display} must be assigned the result of an aggregating function", e.pos
            )
        func = AGG_FUNCS[call.name]
        agg = self.t.aggs.get(target.name)
        if agg is None:
            agg = _Agg(target.name, len(self.t.aggs), target.pos)
            self.t.aggs[target.name] = agg
        if agg.func is not None and agg.func is not func:
            raise self.err(
                f"aggregation redefined: {display}\n\t current: {display} = {func.value}( )\n"
                f"\tprevious: {display} = {agg.func.value}( ) : line {agg.func_line}",
                e.pos,
            )
        keys = self.keys(target.keys or (), agg, display, target.pos)
        value, incr, params = self.agg_arguments(func, call)
        if agg.params and params != agg.params:
            self._param_mismatch(func, agg.params, params, call.pos)
        if agg.func is None:
            agg.func, agg.func_line, agg.params = func, e.pos.line, params
            agg.defn = ir.AggDef(agg.slot, agg.name, func, agg.key_types or (), params)
        assert agg.defn is not None
        return ir.AggUpdate(self.action, agg.defn, keys, value, incr)

    def keys(
        self, keys: Sequence[ast.Expr], agg: _Agg, display: str, pos: Pos
    ) -> tuple[ir.Expr, ...]:
        exprs = [self.expr(k, record_ok=True) for k in keys]
        for i, k in enumerate(exprs):
            if k.type.kind in (Kind.VOID, Kind.BUFFER):
                raise self.err(
                    f"{k.type} expression may not be used as aggregation index: key #{i + 1}",
                    keys[i].pos,
                )
        types = tuple(k.type for k in exprs)
        if agg.key_types is None:
            agg.key_types = types
            return tuple(exprs)
        return self._match_keys(exprs, agg.key_types, f"{display}[ ]", keys, pos)

    def _match_keys(
        self,
        exprs: Sequence[ir.Expr],
        proto: tuple[DType, ...],
        what: str,
        keys: Sequence[ast.Expr],
        pos: Pos,
    ) -> tuple[ir.Expr, ...]:
        if len(exprs) != len(proto):
            n = len(exprs)
            raise self.err(
                f"{what} prototype mismatch: {n} key{' ' if n == 1 else 's '}passed, "
                f"{len(proto)} expected",
                pos,
            )
        out: list[ir.Expr] = []
        for i, (k, t) in enumerate(zip(exprs, proto, strict=True)):
            if not _argcompat(t, k.type):
                raise self.err(
                    f"{what} key #{i + 1} is incompatible with prototype:\n"
                    f"\tprototype: {t}\n\t      key: {k.type}",
                    keys[i].pos,
                )
            out.append(self.convert(k, t))
        return tuple(out)

    # (required args, most args, index of the increment) for the quantizing functions
    _QUANT_ARGS = {
        ir.AggFunc.QUANTIZE: (1, 2, 1),
        ir.AggFunc.LQUANTIZE: (3, 5, 4),
        ir.AggFunc.LLQUANTIZE: (5, 6, 5),
    }

    def agg_arguments(
        self, func: ir.AggFunc, call: ast.Call
    ) -> tuple[ir.Expr | None, ir.Expr | None, tuple[int, ...]]:
        name, args = func.value, call.args
        n = len(args)
        if func is ir.AggFunc.COUNT:
            if n:
                raise self.err(_proto_len(name, n, "0"), call.pos)
            return None, None, ()
        if func not in self._QUANT_ARGS:
            if n != 1:
                raise self.err(_proto_len(name, n, "1"), call.pos)
            return self.agg_value(name, args[0]), None, ()
        low, high, incr_at = self._QUANT_ARGS[func]
        if n < low:
            raise self.err(_proto_len(name, n, f"at least {low}"), call.pos)
        if n > high:
            raise self.err(
                f"{name}( ) prototype mismatch: {n} args passed, at most {high} expected",
                args[high].pos,
            )
        value = self.agg_value(name, args[0])
        params: tuple[int, ...] = ()
        if func is ir.AggFunc.LQUANTIZE:
            params = self.lquantize_params(call)
        elif func is ir.AggFunc.LLQUANTIZE:
            params = self.llquantize_params(args[1:5], call.pos)
        incr = None
        if n > incr_at:
            incr_expr = self.expr(args[incr_at])
            if not _is_scalar(incr_expr.type):
                raise self.err(
                    f"{name}( ) increment value (argument #{high}) must be of scalar type",
                    args[incr_at].pos,
                )
            incr = self.convert(incr_expr, dtypes.INT64)
        return value, incr, params

    def agg_value(self, name: str, arg: ast.Expr) -> ir.Expr:
        e = self.expr(arg)
        if not _is_scalar(e.type):
            raise self.err(f"{name}( ) argument #1 must be of scalar type", arg.pos)
        return self.convert(e, dtypes.INT64)

    def _int_const(self, e: ast.Expr, name: str, argno: int, what: str = "") -> int:
        v = self.expr(e)
        if not isinstance(v, ir.Const) or not isinstance(v.value, int):
            raise self.err(f"{name}( ) argument #{argno}{what} must be an integer constant", e.pos)
        return v.value

    def lquantize_params(self, call: ast.Call) -> tuple[int, ...]:
        """(base, step, levels), checked as dtrace checks them."""
        lo, hi = call.args[1], call.args[2]
        base = self._int_const(lo, "lquantize", 1)
        if not -(1 << 31) <= base < 1 << 31:
            raise self.err("lquantize( ) argument #1 must be a 32-bit quantity", lo.pos)
        limit = self._int_const(hi, "lquantize", 2)
        if not -(1 << 31) <= limit < 1 << 31:
            raise self.err("lquantize( ) argument #2 must be a 32-bit quantity", hi.pos)
        if limit < base:
            raise self.err(
                "lquantize( ) base (argument #1) must be less than limit (argument #2)",
                call.pos,
            )
        step = self._step_const(call.args[3]) if len(call.args) > 3 else 1
        levels = (limit - base) // step
        if levels == 0:
            raise self.err(
                "lquantize( ) step (argument #3) too large: must have at least one "
                "quantization level",
                call.pos,
            )
        if levels > 0xFFFF:
            raise self.err(
                "lquantize( ) step (argument #3) too small: number of quantization levels "
                "must be a 16-bit quantity",
                call.pos,
            )
        return (base, step, levels)

    def _step_const(self, e: ast.Expr) -> int:
        v = self.expr(e)
        if not isinstance(v, ir.Const) or not isinstance(v.value, int) or v.value <= 0:
            raise self.err(
                "lquantize( ) argument #3 must be a non-zero positive integer constant", e.pos
            )
        if v.value > 0xFFFF:
            raise self.err("lquantize( ) argument #3 must be a 16-bit quantity", e.pos)
        return v.value

    def llquantize_params(self, args: Sequence[ast.Expr], pos: Pos) -> tuple[int, ...]:
        names = ("factor", "low magnitude", "high magnitude", "linear steps per magnitude")
        vals: list[int] = []
        for i, (a, what) in enumerate(zip(args, names, strict=True)):
            v = self.expr(a)
            if not isinstance(v, ir.Const) or not isinstance(v.value, int):
                raise self.err(
                    f"llquantize( ) argument #{i + 1} ({what}) must be an integer constant",
                    a.pos,
                )
            if not 0 <= v.value <= 0xFFFF:
                raise self.err(
                    f"llquantize( ) argument #{i + 1} ({what}) must be an unsigned 16-bit quantity",
                    a.pos,
                )
            vals.append(v.value)
        factor, low, high, nsteps = vals
        if factor < 2:
            raise self.err("llquantize( ) factor (argument #1) must be two or more", pos)
        if low >= high:
            raise self.err(
                "llquantize( ) high magnitude (argument #3) must be greater than low "
                "magnitude (argument #2)",
                pos,
            )
        if nsteps < factor:
            raise self.err(
                "llquantize( ) factor (argument #1) must be less than or equal to the number "
                "of linear steps per magnitude (argument #4)",
                pos,
            )
        power = factor
        while power < nsteps:
            power *= factor
        if nsteps % factor or power % nsteps:
            raise self.err(
                "llquantize( ) factor (argument #1) must evenly divide the number of steps "
                "per magnitude (argument #4), and the number of steps per magnitude must "
                "evenly divide a power of the factor",
                pos,
            )
        if factor ** (high + 1) >= 1 << 64:
            raise self.err(
                f"llquantize( ) factor ({factor}) raised to power of high magnitude ({high}) "
                "plus 1 overflows 64-bits",
                pos,
            )
        return tuple(vals)

    def _param_mismatch(
        self, func: ir.AggFunc, old: tuple[int, ...], new: tuple[int, ...], pos: Pos
    ) -> None:
        if func is ir.AggFunc.LQUANTIZE:
            (ob, os_, ol), (nb, ns, nl) = old, new
            if ob != nb:
                raise self.err(
                    "lquantize( ) base (argument #1) doesn't match previous declaration: "
                    f"expected {ob}, found {nb}",
                    pos,
                )
            if ol * os_ != nl * ns:
                raise self.err(
                    "lquantize( ) limit (argument #2) doesn't match previous declaration: "
                    f"expected {ob + ol * os_}, found {nb + nl * ns}",
                    pos,
                )
            raise self.err(
                "lquantize( ) step (argument #3) doesn't match previous declaration: "
                f"expected {os_}, found {ns}",
                pos,
            )
        names = ("factor", "low magnitude", "high magnitude", "linear steps per magnitude")
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            if o != n:
                raise self.err(
                    f"llquantize( ) {names[i]} (argument #{i + 1}) doesn't match previous "
                    f"declaration: expected {o}, found {n}",
                    pos,
                )

    # -- actions -------------------------------------------------------------------

    def action_call(self, e: ast.Call) -> ir.Stmt:
        handler = _ACTION_HANDLERS.get(e.name)
        if handler is not None:
            return handler(self, e)
        # ustack()/usym()/...: record the value.
        self.needs.output = True
        return ir.Record(self.action, self.record_func(e))

    def act_trace(self, e: ast.Call) -> ir.Stmt:
        self.arity(e)
        v = self.expr(e.args[0])
        if v.type.kind is Kind.VOID:
            raise self.err("trace( ) may not be applied to a void expression", e.pos)
        if v.type.kind not in (Kind.INT, Kind.STRING, Kind.BUFFER):
            raise self.err(f"trace( ) argument #1 may not be of type {v.type}", e.args[0].pos)
        self.needs.output = True
        return ir.Trace(self.action, v)

    def act_printf(self, e: ast.Call) -> ir.Stmt:
        self.arity(e)
        fmt = e.args[0]
        if not isinstance(fmt, ast.StrLit):
            t = self.expr(fmt).type
            raise self.err(
                "printf( ) argument #1 is incompatible with prototype:\n"
                f"\tprototype: string constant\n\t argument: {t}",
                fmt.pos,
            )
        args = tuple(self.expr(a, record_ok=True) for a in e.args[1:])
        formatter = self.formatter(fmt, [a.type for a in args], "printf", exact=True)
        if formatter.uses_pid:
            self.needs.builtins.add("pid")
        self.needs.output = True
        return ir.Printf(self.action, formatter, args)

    def formatter(
        self,
        fmt: ast.StrLit,
        types: Sequence[DType],
        func: str,
        *,
        exact: bool,
        agg_type: DType | None = None,
    ) -> Formatter:
        try:
            pieces = parse_format(fmt.value)
            check_arguments(
                pieces,
                types,
                func,
                exact=exact,
                agg_type=agg_type,
                target_defined=self.target_defined,
            )
        except FormatError as exc:
            raise self.err(str(exc), fmt.pos) from None
        return Formatter(pieces, types, agg_type)

    def act_printa(self, e: ast.Call) -> ir.Stmt:
        args = list(e.args)
        fmt: ast.StrLit | None = None
        first_arg = args[0] if args else None
        if isinstance(first_arg, ast.StrLit):
            fmt = first_arg
            args = args[1:]
        needed = 2 if fmt is not None else 1
        if not args:
            n = len(e.args)
            raise self.err(
                f"printa( ) prototype mismatch: {n} args passed, {needed} expected", e.pos
            )
        aggs: list[ir.AggDef] = []
        for i, a in enumerate(args):
            aggs.append(self.agg_argument("printa", a, i + needed))
        first = aggs[0]
        for other in aggs[1:]:
            self._printa_keys_match(first, other, e.pos)
        formatter = None
        if fmt is not None:
            agg_type = dtypes.UINT64 if first.func is ir.AggFunc.COUNT else dtypes.INT64
            formatter = self.formatter(
                fmt, first.key_types, "printa", exact=False, agg_type=agg_type
            )
        self.needs.output = True
        return ir.Printa(self.action, formatter, tuple(aggs))

    def _printa_keys_match(self, a: ir.AggDef, b: ir.AggDef, pos: Pos) -> None:
        na, nb = len(a.key_types), len(b.key_types)
        if na != nb:
            raise self.err(
                f"printa( ): {a.display_name} and {b.display_name} do not have matching key "
                f"signatures: {a.display_name} has {na} key{'' if na == 1 else 's'}, "
                f"{b.display_name} has {nb} key{'' if nb == 1 else 's'}",
                pos,
            )
        for i, (ta, tb) in enumerate(zip(a.key_types, b.key_types, strict=True)):
            if not _argcompat(ta, tb):
                raise self.err(
                    f"printa( ): {b.display_name}[ ] key #{i + 1} is incompatible with "
                    f"{a.display_name}:\n{a.name:>9} key #{i + 1}: {ta}\n"
                    f"{b.name:>9} key #{i + 1}: {tb}",
                    pos,
                )

    def agg_argument(self, func: str, a: ast.Expr, argno: int) -> ir.AggDef:
        if not isinstance(a, ast.AggRef) or a.keys is not None:
            t = "aggregation" if isinstance(a, ast.AggRef) else str(self.expr(a).type)
            raise self.err(
                f"{func}( ) argument #{argno} is incompatible with prototype:\n"
                f"\tprototype: aggregation\n\t argument: {t}",
                a.pos,
            )
        agg = self.t.aggs.get(a.name)
        if agg is None or agg.defn is None:
            raise self.err(f"undefined aggregation: {_agg_name(a.name)}", a.pos)
        return agg.defn

    def act_exit(self, e: ast.Call) -> ir.Stmt:
        self.arity(e)
        v = self.expr(e.args[0])
        if not _is_integer(v.type):
            raise self.err(
                "exit( ) argument #1 is incompatible with prototype:\n"
                f"\tprototype: int\n\t argument: {v.type}",
                e.args[0].pos,
            )
        self.needs.exit = True
        self.needs.output = True
        return ir.Exit(self.action, self.convert(v, dtypes.INT))

    def act_aggop(self, e: ast.Call) -> ir.Stmt:
        op = ir.AggOp(e.name)
        n = len(e.args)
        if op is ir.AggOp.TRUNC and not 1 <= n <= 2:
            raise self.err(
                f"trunc( ) prototype mismatch: {n} args passed, "
                f"{'at least 1' if n < 1 else 'no more than 2'} expected",
                e.pos,
            )
        wanted = 2 if op is ir.AggOp.NORMALIZE else 1
        if op is not ir.AggOp.TRUNC and n != wanted:
            raise self.err(
                f"{e.name}( ) prototype mismatch: {n} args passed, {wanted} expected", e.pos
            )
        agg = self.agg_argument(e.name, e.args[0], 1)
        arg = None
        if n == 2:
            v = self.expr(e.args[1])
            ok = _is_integer(v.type) if op is ir.AggOp.TRUNC else _is_scalar(v.type)
            if not ok:
                proto = "integer" if op is ir.AggOp.TRUNC else "scalar"
                raise self.err(
                    f"{e.name}( ) argument #2 is incompatible with prototype:\n"
                    f"\tprototype: {proto}\n\t argument: {v.type}",
                    e.args[1].pos,
                )
            arg = self.convert(v, dtypes.INT64)
        self.needs.output = True
        return ir.AggAction(self.action, op, agg, arg)

    def act_tracemem(self, e: ast.Call) -> ir.Stmt:
        self.arity(e)
        if len(e.args) > 3:
            raise self.err(
                f"tracemem( ) prototype mismatch: {len(e.args)} args passed, at most 3 expected",
                e.pos,
            )
        data = self.expr(e.args[0])
        if data.type.kind not in (Kind.BUFFER, Kind.INT):
            raise self.err(
                "tracemem( ) argument #1 is incompatible with prototype:\n"
                f"\tprototype: void *\n\t argument: {data.type}",
                e.args[0].pos,
            )
        size = self.expr(e.args[1])
        if not _is_integer(size.type):
            raise self.err(
                "tracemem( ) argument #2 is incompatible with prototype:\n"
                f"\tprototype: size_t\n\t argument: {size.type}",
                e.args[1].pos,
            )
        if not isinstance(size, ir.Const) or not isinstance(size.value, int) or size.value <= 0:
            raise self.err(
                "tracemem( ) argument #2 must be a non-zero positive integral constant expression",
                e.args[1].pos,
            )
        if data.type.kind is Kind.INT:
            self.needs.memory = True
        self.needs.output = True
        return ir.Tracemem(self.action, data, size.value)

    def record_func(self, e: ast.Call) -> ir.Expr:
        if e.name == "ustack":
            if len(e.args) > 2:
                raise self.err("ustack( ) prototype mismatch: too many arguments", e.pos)
            depth = self.ustackframes
            if e.args:
                v = self.expr(e.args[0])
                if not isinstance(v, ir.Const) or not isinstance(v.value, int) or v.value <= 0:
                    raise self.err(
                        "ustack( ) argument #1 must be a non-zero positive integer constant",
                        e.args[0].pos,
                    )
                depth = v.value
            if len(e.args) == 2:
                size = self.expr(e.args[1])  # string space for jstack helpers: unused here
                if (
                    not isinstance(size, ir.Const)
                    or not isinstance(size.value, int)
                    or (size.value <= 0)
                ):
                    raise self.err(
                        "ustack( ) argument #2 must be a positive integer constant",
                        e.args[1].pos,
                    )
            self.needs.ustack_depth = max(self.needs.ustack_depth, depth)
            self.needs.builtins.add("pid")
            return ir.Call(dtypes.STACK, "ustack", (ir.Const(dtypes.INT, depth),))
        self.arity(e)
        v = self.expr(e.args[0])
        if not _is_integer(v.type) and not v.type.is_pointer:
            raise self.err(
                f"{e.name}( ) argument #1 is incompatible with prototype:\n"
                f"\tprototype: uintptr_t\n\t argument: {v.type}",
                e.args[0].pos,
            )
        self.needs.builtins.add("pid")
        return ir.Call(dtypes.SYMADDR, e.name, (self.convert(v, dtypes.UINTPTR),))

    # -- expressions ---------------------------------------------------------------

    def expr(self, e: ast.Expr, *, record_ok: bool = False) -> ir.Expr:
        """Type-check *e*; ``record_ok`` allows ustack()/usym() (keys, printf args)."""
        if isinstance(e, ast.Call):
            return self.call(e, record_ok)
        return _EXPR_HANDLERS[type(e)](self, e)

    def int_lit(self, e: ast.IntLit) -> ir.Expr:
        return ir.Const(e.type, dtypes.normalize(e.value, e.type))

    def str_lit(self, e: ast.StrLit) -> ir.Expr:
        return ir.Const(dtypes.STRING, e.value)

    def ident(self, e: ast.Ident) -> ir.Expr:
        name = e.name
        if name in BUILTINS:
            self._use_builtin(name)
            return ir.Builtin(BUILTINS[name], name)
        var = self.t.globals.get(name)
        if var is not None:
            if var.is_array:
                raise self.err(f"associative array '{name}' may not be referenced as scalar", e.pos)
            assert var.type is not None
            self.needs.globals = True
            return ir.Var(var.type, ir.Space.GLOBAL, var.slot, name)
        self._not_a_function(name, e.pos, "scalar")
        if name in ("self", "this"):
            raise self.err(f"operator -> must be used with {name}", e.pos)
        raise self.undefined(f"failed to resolve {name}: Unknown variable name", e.pos)

    def _not_a_function(self, name: str, pos: Pos, kind: str) -> None:
        what = None
        if name in SUBROUTINES:
            what = "function"
        elif name in AGG_FUNCS:
            what = "aggregating function"
        elif name in ACTIONS or name in UNSUPPORTED:
            what = "tracing function"
        if what is not None:
            raise self.err(f"{what} '{name}' may not be referenced as {kind}", pos)

    def _use_builtin(self, name: str) -> None:
        if name.startswith("arg"):
            self.needs.args.add(int(name[3:]))
        elif name == "ucaller":
            self.needs.ustack_depth = max(self.needs.ustack_depth, 2)
        self.needs.builtins.add(name)

    def scoped_var(self, e: ast.ScopedVar) -> ir.Expr:
        space = ir.Space.SELF if e.scope == "self" else ir.Space.THIS
        var = self._table(space).get(e.name)
        if var is None or var.type is None:
            raise self.undefined(
                f"{e.scope}->{e.name} has not yet been declared or assigned", e.pos
            )
        if var.is_array:
            raise self.err(f"associative array '{e.name}' may not be referenced as scalar", e.pos)
        self._use_space(space)
        return ir.Var(var.type, space, var.slot, e.name)

    def _use_space(self, space: ir.Space) -> None:
        if space is ir.Space.SELF:
            self.needs.self_vars = True
            self.needs.builtins.add("tid")
        elif space is ir.Space.THIS:
            self.needs.this_vars = True
        else:
            self.needs.globals = True

    def index(self, e: ast.Index) -> ir.Expr:
        var, space = self._array_var(e, create=False)
        keys = [self.expr(k) for k in e.keys]
        if var is None or var.type is None or var.key_types is None:
            label = _array_label(e)
            raise self.undefined(f"{label} has not yet been declared or assigned", e.pos)
        typed = self._match_keys(keys, var.key_types, f"{var.name}[ ]", e.keys, e.pos)
        self._use_space(space)
        return ir.ArrayElem(var.type, space, var.slot, var.name, typed)

    def _array_var(self, e: ast.Index, *, create: bool) -> tuple[Variable | None, ir.Space]:
        base = e.base
        if isinstance(base, ast.ScopedVar):
            if base.scope == "this":
                raise self.err(
                    f"local variables may not be used as associative arrays: {base.name}",
                    e.pos,
                )
            space, name = ir.Space.SELF, base.name
        elif isinstance(base, ast.Ident):
            if base.name in BUILTINS:
                raise self.err(
                    f"scalar '{base.name}' may not be referenced as associative array", e.pos
                )
            self._not_a_function(base.name, e.pos, "associative array")
            space, name = ir.Space.GLOBAL, base.name
        else:
            raise self.err("operator [ ] must be applied to an associative array", e.pos)
        var = self._table(space).get(name)
        if var is not None and not var.is_array:
            if var.type is None and space is ir.Space.SELF:
                var.is_array = True  # a self-> name first seen with [ ]: it is an array
            else:
                raise self.err(f"scalar '{name}' may not be referenced as associative array", e.pos)
        if var is None and create:
            var = self._new_var(name, space, None, is_array=True)
        return var, space

    def member(self, e: ast.Member) -> ir.Expr:
        if e.op == "->":
            raise self.err(f"operator {e.op} must be applied to a pointer", e.pos)
        raise self.err(
            f"operator {e.op} cannot be applied to a value of this type; must be applied to "
            "a struct or union",
            e.pos,
        )

    def agg_ref(self, e: ast.AggRef) -> ir.Expr:
        if self.deferred is None:
            self.deferred = self.err(
                f"aggregation {_agg_name(e.name)} may only be assigned an aggregating "
                "function or passed to printa( ), clear( ), trunc( ), normalize( ) or "
                "denormalize( )",
                e.pos,
            )
        return ir.Const(AGGREGATION_TYPE, 0)

    def stringof(self, e: ast.Stringof) -> ir.Expr:
        v = self.expr(e.operand)
        if v.type.kind is Kind.STRING:
            return v
        if v.type.kind not in (Kind.INT, Kind.BUFFER):
            raise self.err(f"cannot apply stringof to a value of type {v.type}", e.pos)
        if v.type.kind is Kind.INT:
            self.needs.memory = True
        return ir.Stringof(dtypes.STRING, v)

    def sizeof_type(self, e: ast.SizeofType) -> ir.Expr:
        return ir.Const(dtypes.SIZE_T, self._size_of(e.type, e.pos))

    def sizeof_expr(self, e: ast.SizeofExpr) -> ir.Expr:
        return ir.Const(dtypes.SIZE_T, self._size_of(self.expr(e.operand).type, e.pos))

    def _size_of(self, t: DType, pos: Pos) -> int:
        if t.kind is Kind.STRING:
            return self.strsize
        if t.kind is Kind.INT:
            return t.size
        raise self.err("cannot apply sizeof to an operand of unknown size", pos)

    def comma(self, e: ast.Comma) -> ir.Expr:
        left = self.expr(e.left)
        right = self.expr(e.right)
        return ir.Comma(right.type, left, right)

    # -- calls -----------------------------------------------------------------

    def call(self, e: ast.Call, record_ok: bool) -> ir.Expr:
        name = e.name
        if name in RECORD_FUNCS and record_ok:
            return self.record_func(e)
        if name in AGG_FUNCS or name in ACTIONS:
            return self.action_value(e)
        if name in UNSUPPORTED:
            raise self.err(f"{name}( ) is not supported by dtproc", e.pos)
        sig = SUBROUTINES.get(name)
        if sig is None:
            raise self.err(f"undefined function name: {name}", e.pos)
        return self.subroutine(e, sig)

    def action_value(self, e: ast.Call) -> ir.Expr:
        """An action or aggregating function used as a value: void, and an error later.

        dtrace types these as void and only rejects them when generating code,
        so an error about their use (an operand of the wrong type, a bad
        argument count) is reported first, as dtrace reports it.
        """
        self.arity(e)
        for a in e.args:
            if not isinstance(a, ast.AggRef):
                self.expr(a)
        kind = "aggregating function" if e.name in AGG_FUNCS else "tracing function"
        if self.deferred is None:
            self.deferred = self.err(
                f"{kind} {e.name}( ) may not be called from a D expression "
                "(D program context required)",
                e.pos,
            )
        return ir.Call(dtypes.VOID, e.name, ())

    def arity(self, e: ast.Call) -> None:
        """Check an action's or aggregating function's argument count."""
        least, most = ARITY[e.name]
        n = len(e.args)
        if n < least or (most is not None and n > most):
            expect = f"at least {least}" if most is None else str(least if n < least else most)
            raise self.err(_proto_len(e.name, n, expect), e.pos)

    def subroutine(self, e: ast.Call, sig: Signature) -> ir.Expr:
        n = len(e.args)
        if n < sig.required or n > len(sig.params):
            optional = sig.required < len(sig.params)
            expect = f"at least {sig.required}" if optional else str(len(sig.params))
            raise self.err(_proto_len(e.name, n, expect), e.pos)
        args: list[ir.Expr] = []
        for i, (a, proto) in enumerate(zip(e.args, sig.params, strict=False)):
            v = self.expr(a)
            if not _argcompat(proto, v.type):
                raise self.err(
                    f"{e.name}( ) argument #{i + 1} is incompatible with prototype:\n"
                    f"\tprototype: {proto}\n\t argument: {v.type}",
                    a.pos,
                )
            args.append(self.convert(v, proto) if proto.kind is Kind.INT else v)
        if e.name in ("copyin", "copyinstr"):
            self.needs.memory = True
        return ir.Call(sig.ret, e.name, tuple(args))

    # -- operators ---------------------------------------------------------------

    def unary(self, e: ast.Unary) -> ir.Expr:
        op = e.op
        if op in ("pre++", "pre--", "post++", "post--"):
            return self.incdec(e)
        if op == "*":
            return self.deref(e)
        if op == "&":
            raise self.err("unacceptable operand for unary & operator", e.pos)
        v = self.expr(e.operand)
        if op == "!":
            if not _is_scalar(v.type):
                raise self.err("operator ! requires an operand of scalar type", e.pos)
            return self.fold(ir.Unary(dtypes.INT, "!", v))
        if op == "~":
            if not _is_integer(v.type):
                raise self.err("operator ~ requires an operand of integral type", e.pos)
        elif not _is_integer(v.type):
            raise self.err(f"operator {op} requires an operand of arithmetic type", e.pos)
        t = dtypes.promote(v.type)
        operand = self.convert(v, t)
        if op == "+":
            return operand
        return self.fold(ir.Unary(t, op, operand))

    def deref(self, e: ast.Unary) -> ir.Expr:
        v = self.expr(e.operand)
        pointee = v.type.pointee
        if pointee is None:
            raise self.err("cannot dereference non-pointer type", e.pos)
        if pointee.kind is Kind.VOID:
            raise self.err("cannot dereference pointer to void", e.pos)
        if isinstance(v, ir.Cast) and v.operand.type.kind is Kind.BUFFER:
            return ir.Load(pointee, v.operand)
        raise self.err(
            "user-space memory cannot be dereferenced directly: use *(type *)copyin(addr, "
            "sizeof (type))",
            e.pos,
        )

    def binary(self, e: ast.Binary) -> ir.Expr:
        op = e.op
        left = self.expr(e.left)
        right = self.expr(e.right)
        if op in ("/", "%") and isinstance(right, ir.Const) and right.value == 0:
            raise self.err("expression contains division by zero", e.pos)
        if op in ("&&", "||", "^^"):
            if not _is_scalar(left.type) or not _is_scalar(right.type):
                raise self.err(f"operator {op} requires operands of scalar type", e.pos)
            return self.fold(ir.Logical(dtypes.INT, op, left, right))
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return self.comparison(e, left, right)
        return self.arithmetic(e, left, right)

    def comparison(self, e: ast.Binary, left: ir.Expr, right: ir.Expr) -> ir.Expr:
        lt, rt = left.type, right.type
        if lt.kind is Kind.STRING and rt.kind is Kind.STRING:
            return self.fold(ir.Binary(dtypes.INT, e.op, left, right, dtypes.STRING))
        if lt.kind is Kind.INT and rt.kind is Kind.INT:
            optype = dtypes.usual_conversion(lt, rt)
            return self.fold(
                ir.Binary(
                    dtypes.INT,
                    e.op,
                    self.convert(left, optype),
                    self.convert(right, optype),
                    optype,
                )
            )
        raise self.err(f'operands have incompatible types: "{lt}" {e.op} "{rt}"', e.pos)

    def arithmetic(self, e: ast.Binary, left: ir.Expr, right: ir.Expr) -> ir.Expr:
        op, lt, rt = e.op, left.type, right.type
        if op in ("+", "-"):
            return self.additive(e, left, right)
        if op in ("*", "/"):
            if not _is_integer(lt) or not _is_integer(rt):
                raise self.err(f"operator {op} requires operands of arithmetic type", e.pos)
        elif not _is_integer(lt) or not _is_integer(rt):
            raise self.err(f"operator {op} requires operands of integral type", e.pos)
        if op in ("<<", ">>"):
            t = dtypes.promote(lt)
            r = self.convert(right, dtypes.promote(rt))
            return self.fold(ir.Binary(t, op, self.convert(left, t), r, t))
        t = dtypes.usual_conversion(lt, rt)
        return self.fold(ir.Binary(t, op, self.convert(left, t), self.convert(right, t), t))

    def additive(self, e: ast.Binary, left: ir.Expr, right: ir.Expr) -> ir.Expr:
        op, lt, rt = e.op, left.type, right.type
        if lt.kind is Kind.INT and rt.kind is Kind.INT:
            if lt.is_pointer and rt.is_pointer and op == "-":
                return self.pointer_difference(left, right)
            if lt.is_pointer or rt.is_pointer:
                return self.pointer_arithmetic(e, left, right)
            t = dtypes.usual_conversion(lt, rt)
            return self.fold(ir.Binary(t, op, self.convert(left, t), self.convert(right, t), t))
        raise self.err(f'operands have incompatible types: "{lt}" {op} "{rt}"', e.pos)

    def pointer_arithmetic(self, e: ast.Binary, left: ir.Expr, right: ir.Expr) -> ir.Expr:
        ptr, other = (left, right) if left.type.is_pointer else (right, left)
        if e.op == "-" and ptr is right:
            raise self.err(
                f'operands have incompatible types: "{left.type}" - "{right.type}"', e.pos
            )
        t = ptr.type
        scale = ir.Const(dtypes.LONG, t.pointee_size)
        offset = ir.Binary(dtypes.LONG, "*", self.convert(other, dtypes.LONG), scale, dtypes.LONG)
        return self.fold(ir.Binary(t, e.op, ptr, self.convert(self.fold(offset), t), t))

    def pointer_difference(self, left: ir.Expr, right: ir.Expr) -> ir.Expr:
        diff = ir.Binary(
            dtypes.LONG,
            "-",
            self.convert(left, dtypes.LONG),
            self.convert(right, dtypes.LONG),
            dtypes.LONG,
        )
        size = ir.Const(dtypes.LONG, left.type.pointee_size)
        ptrdiff = dtypes.TYPEDEFS["ptrdiff_t"]
        return self.fold(ir.Binary(ptrdiff, "/", self.fold(diff), size, dtypes.LONG))

    def ternary(self, e: ast.Ternary) -> ir.Expr:
        cond = self.expr(e.cond)
        if not _is_scalar(cond.type):
            raise self.err("operator ?: expression must be of scalar type", e.pos)
        then = self.expr(e.then)
        other = self.expr(e.other)
        if _is_action(cond) or _is_action(then) or _is_action(other):
            raise self.err("action cannot be used in a conditional context", e.pos)
        if then.type.kind is Kind.INT and other.type.kind is Kind.INT:
            t = dtypes.usual_conversion(then.type, other.type)
            then, other = self.convert(then, t), self.convert(other, t)
        elif then.type.kind is Kind.STRING and other.type.kind is Kind.STRING:
            t = dtypes.STRING
        else:
            raise self.err("operator ?: operands must have compatible types", e.pos)
        if isinstance(cond, ir.Const):
            return then if cond.value else other
        return ir.Ternary(t, cond, then, other)

    def cast(self, e: ast.Cast) -> ir.Expr:
        v = self.expr(e.operand)
        t = e.type
        if t.kind is Kind.VOID:
            return ir.Cast(dtypes.VOID, v)
        if t.kind is Kind.STRING:
            if v.type.kind is Kind.STRING:
                return v
            if v.type.kind in (Kind.INT, Kind.BUFFER):
                if v.type.kind is Kind.INT:
                    self.needs.memory = True
                return ir.Stringof(dtypes.STRING, v)
        elif t.kind is Kind.INT and v.type.kind is Kind.INT:
            return self.convert(v, t)
        elif t.kind is Kind.INT and v.type.kind is Kind.BUFFER and t.is_pointer:
            return ir.Cast(t, v)
        raise self.err(f'invalid cast expression: "{v.type}" to "{t}"', e.pos)

    def convert(self, v: ir.Expr, t: DType) -> ir.Expr:
        """Convert *v* to *t* (an implicit C conversion, or an explicit cast)."""
        if v.type == t:
            return v
        if v.type.kind is not Kind.INT or t.kind is not Kind.INT:
            return v
        if isinstance(v, ir.Const) and isinstance(v.value, int):
            return ir.Const(t, dtypes.normalize(v.value, t))
        return ir.Cast(t, v)

    def fold(self, e: ir.Expr) -> ir.Expr:
        """Compute operators on constants now, as dtrace's parser does."""
        try:
            value = _fold(e)
        except DFault:
            return e  # e.g. a constant division by a computed zero: fault at run time
        return e if value is None else ir.Const(e.type, value)

    # -- assignment ----------------------------------------------------------------

    def assign(self, e: ast.Assign) -> ir.Expr:
        if isinstance(e.target, ast.AggRef):
            raise self.err(
                f"{_agg_name(e.target.name)} must be assigned the result of an aggregating "
                "function",
                e.pos,
            )
        if e.op == "=":
            return self.simple_assign(e)
        return self.compound_assign(e)

    def simple_assign(self, e: ast.Assign) -> ir.Expr:
        value = self.expr(e.value)
        if value.type.kind is Kind.VOID:
            self.raise_deferred()
        if value.type.kind in (Kind.VOID, Kind.STACK, Kind.SYMADDR):
            raise self.err(f"operator = cannot be applied to a value of type {value.type}", e.pos)
        target = self.lvalue(e.target, value.type, e.op)
        tt = target.type
        if not _argcompat(tt, value.type):
            raise self.err(f'operands have incompatible types: "{tt}" = "{value.type}"', e.pos)
        return ir.Assign(tt, target, self.convert(value, tt))

    def compound_assign(self, e: ast.Assign) -> ir.Expr:
        op = e.op[:-1]
        value = self.expr(e.value)
        if op in ("/", "%") and isinstance(value, ir.Const) and value.value == 0:
            raise self.err("expression contains division by zero", e.pos)
        target = self.lvalue(e.target, dtypes.INT64, e.op, create=False)
        tt, vt = target.type, value.type
        if tt.kind is Kind.STRING or vt.kind is Kind.STRING:
            raise self.err(f'operands have incompatible types: "{tt}" {e.op} "{vt}"', e.pos)
        if not _is_integer(vt) and not (vt.is_pointer and op in ("+", "-")):
            kind = "arithmetic" if op in ("*", "/", "+", "-") else "integral"
            raise self.err(f"operator {e.op} requires operands of {kind} type", e.pos)
        if tt.is_pointer and op in ("+", "-"):
            scaled = ir.Binary(
                dtypes.LONG,
                "*",
                self.convert(value, dtypes.LONG),
                ir.Const(dtypes.LONG, tt.pointee_size),
                dtypes.LONG,
            )
            return ir.Compound(tt, target, op, self.convert(self.fold(scaled), tt), tt)
        optype = dtypes.promote(tt) if op in ("<<", ">>") else dtypes.usual_conversion(tt, vt)
        if op in ("<<", ">>"):
            value = self.convert(value, dtypes.promote(vt))
        else:
            value = self.convert(value, optype)
        return ir.Compound(tt, target, op, value, optype)

    def incdec(self, e: ast.Unary) -> ir.Expr:
        target = self.lvalue(e.operand, dtypes.INT64, e.op[-2:])
        if target.type.kind is not Kind.INT:
            raise self.err(f"operator {e.op[-2:]} requires operand of scalar type", e.pos)
        step = target.type.pointee_size or 1
        delta = step if e.op.endswith("++") else -step
        return ir.IncDec(target.type, target, delta, e.op.startswith("post"))

    def lvalue(self, t: ast.Expr, new_type: DType, op: str, *, create: bool = True) -> ir.Lvalue:
        """Resolve an assignment target, creating the variable with *new_type* if new.

        ``op=`` may not create a variable (dtrace reads it first); ``=``,
        ``++`` and ``--`` may (the latter two as int64_t, as dtrace does).
        """
        if isinstance(t, ast.Ident):
            if t.name in BUILTINS:
                raise self.err(f"operator {op} can only be applied to a writable variable", t.pos)
            self._not_a_function(t.name, t.pos, "scalar")
            var = self.t.globals.get(t.name)
            if var is None and not create:
                raise self.undefined(f"{t.name} has not yet been declared or assigned", t.pos)
            if var is None:
                var = self._new_var(t.name, ir.Space.GLOBAL, new_type)
            elif var.is_array:
                raise self.err(
                    f"associative array '{t.name}' may not be referenced as scalar", t.pos
                )
            return self._scalar_lvalue(var)
        if isinstance(t, ast.ScopedVar):
            space = ir.Space.SELF if t.scope == "self" else ir.Space.THIS
            table = self._table(space)
            var = table.get(t.name)
            if var is None and not create:
                raise self.undefined(
                    f"{t.scope}->{t.name} has not yet been declared or assigned", t.pos
                )
            if var is None:
                var = self._new_var(t.name, space, new_type)
            elif var.is_array:
                raise self.err(
                    f"associative array '{t.name}' may not be referenced as scalar", t.pos
                )
            return self._scalar_lvalue(var)
        if isinstance(t, ast.Index):
            if not create:
                var, _ = self._array_var(t, create=False)
                if var is None or var.type is None:
                    raise self.undefined(
                        f"{_array_label(t)} has not yet been declared or assigned", t.pos
                    )
            return self.array_lvalue(t, new_type)
        raise self.err(f"operator {op} requires modifiable lvalue as an operand", t.pos)

    def _scalar_lvalue(self, var: Variable) -> ir.Var:
        if var.type is None:
            raise AssertionError("scalar variables are typed when created")
        self._use_space(var.space)
        return ir.Var(var.type, var.space, var.slot, var.name)

    def array_lvalue(self, t: ast.Index, new_type: DType) -> ir.ArrayElem:
        var, space = self._array_var(t, create=True)
        assert var is not None
        keys = [self.expr(k) for k in t.keys]
        for i, k in enumerate(keys):
            if k.type.kind not in (Kind.INT, Kind.STRING):
                raise self.err(
                    f"{k.type} expression may not be used as associative array index: key #{i + 1}",
                    t.keys[i].pos,
                )
        if var.key_types is None:
            var.key_types = tuple(k.type for k in keys)
        if var.type is None:
            var.type = new_type
        typed = self._match_keys(keys, var.key_types, f"{var.name}[ ]", t.keys, t.pos)
        self._use_space(space)
        return ir.ArrayElem(var.type, space, var.slot, var.name, typed)

    # -- tables ----------------------------------------------------------------------

    def _table(self, space: ir.Space) -> dict[str, Variable]:
        if space is ir.Space.GLOBAL:
            return self.t.globals
        if space is ir.Space.SELF:
            return self.t.self_vars
        return self.t.this_vars

    def _new_var(
        self, name: str, space: ir.Space, t: DType | None, *, is_array: bool = False
    ) -> Variable:
        slot = self._next_slot(space, is_array)
        var = Variable(name, space, slot, t, is_array)
        self._table(space)[name] = var
        return var

    def _next_slot(self, space: ir.Space, is_array: bool) -> int:
        tb = self.t
        if space is ir.Space.THIS:
            tb.n_this += 1
            return tb.n_this - 1
        if space is ir.Space.GLOBAL:
            if is_array:
                tb.n_global_arrays += 1
                return tb.n_global_arrays - 1
            tb.n_global_scalars += 1
            return tb.n_global_scalars - 1
        if is_array:
            tb.n_self_arrays += 1
            return tb.n_self_arrays - 1
        tb.n_self_scalars += 1
        return tb.n_self_scalars - 1


# -- helpers --------------------------------------------------------------------------


def _agg_name(name: str) -> str:
    return "@" if name == "_" else f"@{name}"


def _array_label(e: ast.Index) -> str:
    base = e.base
    if isinstance(base, ast.ScopedVar):
        return f"{base.scope}->{base.name}"
    assert isinstance(base, ast.Ident)
    return base.name


def _proto_len(name: str, n: int, expected: str) -> str:
    return (
        f"{name}( ) prototype mismatch: {n} arg{' ' if n == 1 else 's '}passed, {expected} expected"
    )


def _is_action(e: ir.Expr) -> bool:
    return isinstance(e, ir.Call) and (e.name in ACTIONS or e.name in AGG_FUNCS)


def _is_integer(t: DType) -> bool:
    return t.kind is Kind.INT and not t.is_pointer


def _is_scalar(t: DType) -> bool:
    return t.kind is Kind.INT


def _argcompat(proto: DType, t: DType) -> bool:
    """dtrace's dt_node_is_argcompat: integers with integers, strings with strings."""
    return proto.kind is t.kind and proto.kind is not Kind.VOID


def _fold(e: ir.Expr) -> int | str | None:
    """The value of an operator applied to constants, or None if not constant."""
    if isinstance(e, ir.Unary):
        if not isinstance(e.operand, ir.Const) or not isinstance(e.operand.value, int):
            return None
        v = e.operand.value
        if e.op == "!":
            return int(not v)
        if e.op == "-":
            return dtypes.normalize(-v, e.type)
        return dtypes.normalize(~v, e.type)
    if isinstance(e, ir.Logical):
        if not isinstance(e.left, ir.Const) or not isinstance(e.right, ir.Const):
            return None
        lv, rv = bool(e.left.value), bool(e.right.value)
        return int({"&&": lv and rv, "||": lv or rv, "^^": lv != rv}[e.op])
    if isinstance(e, ir.Binary):
        if not isinstance(e.left, ir.Const) or not isinstance(e.right, ir.Const):
            return None
        a, b = e.left.value, e.right.value
        if e.op in ops.COMPARISONS:
            return int(ops.COMPARISONS[e.op](a, b))
        assert isinstance(a, int) and isinstance(b, int)
        return (
            ops.int_op(e.op, e.optype)(a, b)
            if e.type == e.optype
            else dtypes.normalize(ops.int_op(e.op, e.optype)(a, b), e.type)
        )
    if isinstance(e, ir.Cast) and isinstance(e.operand, ir.Const):
        value = e.operand.value
        if isinstance(value, int) and e.type.kind is Kind.INT:
            return dtypes.normalize(value, e.type)
    return None


_EXPR_HANDLERS: dict[type, Callable[[Checker, Any], ir.Expr]] = {
    ast.IntLit: Checker.int_lit,
    ast.StrLit: Checker.str_lit,
    ast.Ident: Checker.ident,
    ast.ScopedVar: Checker.scoped_var,
    ast.Index: Checker.index,
    ast.Member: Checker.member,
    ast.AggRef: Checker.agg_ref,
    ast.Stringof: Checker.stringof,
    ast.SizeofType: Checker.sizeof_type,
    ast.SizeofExpr: Checker.sizeof_expr,
    ast.Comma: Checker.comma,
    ast.Unary: Checker.unary,
    ast.Binary: Checker.binary,
    ast.Ternary: Checker.ternary,
    ast.Cast: Checker.cast,
    ast.Assign: Checker.assign,
}

_ACTION_HANDLERS: dict[str, Callable[[Checker, ast.Call], ir.Stmt]] = {
    "trace": Checker.act_trace,
    "printf": Checker.act_printf,
    "printa": Checker.act_printa,
    "exit": Checker.act_exit,
    "clear": Checker.act_aggop,
    "trunc": Checker.act_aggop,
    "normalize": Checker.act_aggop,
    "denormalize": Checker.act_aggop,
    "tracemem": Checker.act_tracemem,
}
