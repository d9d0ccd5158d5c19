"""Typed IR to Python closures: what runs on every probe hit.

Each expression becomes a function ``(ctx, st) -> value`` and each statement a
function ``(ctx, st) -> None``, where ``ctx`` is the probe hit and ``st`` the
runtime's :class:`State`. All decisions (which variable slot, which operator
on which type, which conversion) are taken here once, so a hit walks no tree
and looks nothing up by name. The closures hold no runtime state themselves,
so one compiled program can drive any number of runtimes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dtproc.d import dtypes, ir, ops, subr
from dtproc.d.aggregations import AggData, Cell, Key
from dtproc.d.dtypes import DType, Kind
from dtproc.d.errors import DFault
from dtproc.d.records import MemOut, Output, PrintfOut, StackOut, SymOut, TraceOut
from dtproc.d.values import ProbeContext, SymAddr, SymKind

Ev = Callable[[ProbeContext, "State"], Any]
Run = Callable[[ProbeContext, "State"], None]
KeyFn = Callable[[ProbeContext, "State"], Key]


class LibraryAction:
    """A record the runtime acts on when the firing commits (printa, clear, exit...)."""

    __slots__ = ("arg", "stmt")

    def __init__(self, stmt: ir.Exit | ir.Printa | ir.AggAction, arg: int | None = None) -> None:
        self.stmt = stmt
        self.arg = arg


class State:
    """All runtime storage a compiled program reads and writes."""

    __slots__ = (
        "aggdata",
        "aggs",
        "ctx",
        "exit_status",
        "g",
        "ga",
        "rand",
        "recs",
        "strsize",
        "this",
        "this_defaults",
        "tla",
        "tls",
    )

    def __init__(
        self,
        *,
        globals_: Sequence[object],
        n_arrays: int,
        this_defaults: list[object],
        aggs: Sequence[AggData],
        strsize: int,
    ) -> None:
        self.g: list[Any] = list(globals_)
        self.ga: list[dict[Key, Any]] = [{} for _ in range(n_arrays)]
        self.tls: dict[tuple[int, int], Any] = {}
        self.tla: dict[tuple[int, int, Key], Any] = {}
        self.this_defaults = this_defaults
        self.this: list[Any] = list(this_defaults)
        self.aggs = list(aggs)
        self.aggdata: list[dict[Key, Cell]] = [a.data for a in aggs]
        self.recs: list[Output | LibraryAction] = []
        self.exit_status: int | None = None
        self.ctx: object = None
        self.strsize = strsize
        self.rand = subr.make_rand()


def zero_of(t: DType) -> object:
    """The value of a variable never assigned: 0, "" or empty bytes."""
    if t.kind is Kind.STRING:
        return ""
    if t.kind is Kind.BUFFER:
        return b""
    return 0


_U64 = 1 << 64
_I64 = 1 << 63


def _arg(i: int) -> Ev:
    def arg(c: ProbeContext, s: State) -> int:
        v = c.arg(i)
        return v - _U64 if v >= _I64 else v

    return arg


def _ucaller(c: ProbeContext, s: State) -> int:
    pcs = c.ustack(2).pcs
    return pcs[1] if len(pcs) > 1 else 0


_BUILTINS: dict[str, Ev] = {
    "pid": lambda c, s: c.pid,
    "tid": lambda c, s: c.tid,
    "ppid": lambda c, s: c.ppid,
    "uid": lambda c, s: c.uid,
    "gid": lambda c, s: c.gid,
    "cpu": lambda c, s: c.cpu,
    "execname": lambda c, s: c.execname,
    "probeprov": lambda c, s: c.probe.provider,
    "probemod": lambda c, s: c.probe.module,
    "probefunc": lambda c, s: c.probe.function,
    "probename": lambda c, s: c.probe.name,
    "id": lambda c, s: c.probe.id,
    "timestamp": lambda c, s: c.timestamp,
    "vtimestamp": lambda c, s: c.timestamp,
    "walltimestamp": lambda c, s: c.walltimestamp,
    "ucaller": _ucaller,
    **{f"arg{i}": _arg(i) for i in range(10)},
}


class Compiler:
    """Compiles the IR of one program; holds nothing per runtime."""

    def __init__(self, strsize: int) -> None:
        self.strsize = strsize

    # -- expressions -------------------------------------------------------------

    def expr(self, e: ir.Expr) -> Ev:
        handler = _EXPR[type(e)]
        return handler(self, e)

    def const(self, e: ir.Const) -> Ev:
        v = e.value
        return lambda c, s: v

    def builtin(self, e: ir.Builtin) -> Ev:
        return _BUILTINS[e.name]

    def var(self, e: ir.Var) -> Ev:
        slot, zero = e.slot, zero_of(e.type)
        if e.space is ir.Space.GLOBAL:
            return lambda c, s: s.g[slot]
        if e.space is ir.Space.THIS:
            return lambda c, s: s.this[slot]
        return lambda c, s: s.tls.get((c.tid, slot), zero)

    def array_elem(self, e: ir.ArrayElem) -> Ev:
        key = self.key(e.keys)
        slot, zero = e.slot, zero_of(e.type)
        if e.space is ir.Space.GLOBAL:
            return lambda c, s: s.ga[slot].get(key(c, s), zero)
        return lambda c, s: s.tla.get((c.tid, slot, key(c, s)), zero)

    def key(self, keys: Sequence[ir.Expr]) -> KeyFn:
        fns = [self.expr(k) for k in keys]
        if not fns:
            return lambda c, s: ()
        if len(fns) == 1:
            f0 = fns[0]
            return lambda c, s: (f0(c, s),)
        if len(fns) == 2:
            f0, f1 = fns
            return lambda c, s: (f0(c, s), f1(c, s))
        return lambda c, s: tuple(f(c, s) for f in fns)

    def unary(self, e: ir.Unary) -> Ev:
        f = self.expr(e.operand)
        if e.op == "!":
            return lambda c, s: 0 if f(c, s) else 1
        wrap = dtypes.normalizer(e.type)
        if e.op == "-":
            return lambda c, s: wrap(-f(c, s))
        return lambda c, s: wrap(~f(c, s))

    def binary(self, e: ir.Binary) -> Ev:
        lf, rf = self.expr(e.left), self.expr(e.right)
        if e.op in ops.COMPARISONS:
            return _comparison(e.op, lf, rf)
        op = ops.int_op(e.op, e.optype)
        if e.op == "+" and e.type.size == 8 and e.type.signed:
            return _add64(lf, rf)
        if e.type.same_encoding(e.optype):
            return lambda c, s: op(lf(c, s), rf(c, s))
        wrap = dtypes.normalizer(e.type)
        return lambda c, s: wrap(op(lf(c, s), rf(c, s)))

    def logical(self, e: ir.Logical) -> Ev:
        lf, rf = self.expr(e.left), self.expr(e.right)
        if e.op == "&&":
            return lambda c, s: 1 if lf(c, s) and rf(c, s) else 0
        if e.op == "||":
            return lambda c, s: 1 if lf(c, s) or rf(c, s) else 0
        return lambda c, s: 1 if bool(lf(c, s)) != bool(rf(c, s)) else 0

    def ternary(self, e: ir.Ternary) -> Ev:
        cf, tf, of = self.expr(e.cond), self.expr(e.then), self.expr(e.other)
        return lambda c, s: tf(c, s) if cf(c, s) else of(c, s)

    def cast(self, e: ir.Cast) -> Ev:
        f = self.expr(e.operand)
        src, dst = e.operand.type, e.type
        if dst.kind is Kind.VOID or src.kind is not Kind.INT or dst.kind is not Kind.INT:
            return f
        if _value_preserving(src, dst):
            return f
        wrap = dtypes.normalizer(dst)
        return lambda c, s: wrap(f(c, s))

    def comma(self, e: ir.Comma) -> Ev:
        lf, rf = self.expr(e.left), self.expr(e.right)

        def comma(c: ProbeContext, s: State) -> Any:
            lf(c, s)
            return rf(c, s)

        return comma

    def stringof(self, e: ir.Stringof) -> Ev:
        f = self.expr(e.operand)
        if e.operand.type.kind is Kind.BUFFER:
            return lambda c, s: subr.buffer_string(f(c, s))
        strsize = self.strsize
        return lambda c, s: subr.copyinstr(c, f(c, s), None, strsize)

    def load(self, e: ir.Load) -> Ev:
        f = self.expr(e.buffer)
        size, signed = e.type.size, e.type.signed

        def load(c: ProbeContext, s: State) -> int:
            data: bytes = f(c, s)
            return int.from_bytes(data[:size].ljust(size, b"\0"), "little", signed=signed)

        return load

    # -- stores ----------------------------------------------------------------

    def store(self, target: ir.Lvalue) -> Callable[[ProbeContext, State, Any], None]:
        """A function that writes a value to *target* (0 frees dynamic variables)."""
        slot = target.slot
        if isinstance(target, ir.Var):
            if target.space is ir.Space.GLOBAL:

                def store_global(c: ProbeContext, s: State, v: Any) -> None:
                    s.g[slot] = v

                return store_global
            if target.space is ir.Space.THIS:

                def store_this(c: ProbeContext, s: State, v: Any) -> None:
                    s.this[slot] = v

                return store_this

            def store_self(c: ProbeContext, s: State, v: Any) -> None:
                if v:
                    s.tls[(c.tid, slot)] = v
                else:
                    s.tls.pop((c.tid, slot), None)

            return store_self
        key = self.key(target.keys)
        if target.space is ir.Space.GLOBAL:

            def store_elem(c: ProbeContext, s: State, v: Any) -> None:
                if v:
                    s.ga[slot][key(c, s)] = v
                else:
                    s.ga[slot].pop(key(c, s), None)

            return store_elem

        def store_self_elem(c: ProbeContext, s: State, v: Any) -> None:
            k = (c.tid, slot, key(c, s))
            if v:
                s.tla[k] = v
            else:
                s.tla.pop(k, None)

        return store_self_elem

    def assign(self, e: ir.Assign) -> Ev:
        value, store = self.expr(e.value), self.store(e.target)

        def assign(c: ProbeContext, s: State) -> Any:
            v = value(c, s)
            store(c, s, v)
            return v

        return assign

    def compound(self, e: ir.Compound) -> Ev:
        read, store = self.expr(e.target), self.store(e.target)
        value = self.expr(e.value)
        op = ops.int_op(e.op, e.optype)
        widen = dtypes.normalizer(e.optype)
        narrow = dtypes.normalizer(e.type)

        def compound(c: ProbeContext, s: State) -> Any:
            v = narrow(op(widen(read(c, s)), value(c, s)))
            store(c, s, v)
            return v

        return compound

    def incdec(self, e: ir.IncDec) -> Ev:
        read, store = self.expr(e.target), self.store(e.target)
        delta, post = e.delta, e.post
        wrap = dtypes.normalizer(e.type)

        def incdec(c: ProbeContext, s: State) -> Any:
            old = read(c, s)
            new = wrap(old + delta)
            store(c, s, new)
            return old if post else new

        return incdec

    # -- calls -----------------------------------------------------------------

    def call(self, e: ir.Call) -> Ev:
        args = [self.expr(a) for a in e.args]
        name = e.name
        if name == "ustack":
            depth = e.args[0]
            assert isinstance(depth, ir.Const) and isinstance(depth.value, int)
            n = depth.value
            return lambda c, s: c.ustack(n)
        if name in ("usym", "ufunc", "umod", "uaddr"):
            kind = {"umod": SymKind.MOD, "uaddr": SymKind.ADDR}.get(name, SymKind.SYM)
            (a0,) = args
            return lambda c, s: SymAddr(kind, c.pid, a0(c, s))
        return _subroutine(name, args, self.strsize)

    # -- statements ------------------------------------------------------------

    def stmts(self, stmts: Sequence[ir.Stmt]) -> Run:
        """One function running *stmts* in order, tagging faults with the action number."""
        runs = [_tagged(self.stmt(st), st.action) for st in stmts]
        if not runs:
            return lambda c, s: None
        if len(runs) == 1:
            return runs[0]

        def block(c: ProbeContext, s: State) -> None:
            for run in runs:
                run(c, s)

        return block

    def stmt(self, st: ir.Stmt) -> Run:
        handler = _STMT[type(st)]
        return handler(self, st)

    def expr_stmt(self, st: ir.ExprStmt) -> Run:
        return self.expr(st.expr)

    def agg_update(self, st: ir.AggUpdate) -> Run:
        slot = st.agg.slot
        key = self.key(st.keys)
        if st.agg.func is ir.AggFunc.COUNT:

            def count(c: ProbeContext, s: State) -> None:
                d = s.aggdata[slot]
                k = key(c, s)
                d[k] = d.get(k, 0) + 1  # type: ignore[operator]

            return count
        assert st.value is not None
        value = self.expr(st.value)
        incr = self.expr(st.incr) if st.incr is not None else (lambda c, s: 1)

        def update(c: ProbeContext, s: State) -> None:
            agg = s.aggs[slot]
            agg.update(agg.data, key(c, s), value(c, s), incr(c, s))

        return update

    def trace(self, st: ir.Trace) -> Run:
        f, t = self.expr(st.expr), st.expr.type
        return lambda c, s: s.recs.append(TraceOut(f(c, s), t))

    def printf(self, st: ir.Printf) -> Run:
        fmt = st.formatter
        args = self.key(st.args)
        if fmt.uses_pid:
            return lambda c, s: s.recs.append(PrintfOut(fmt, args(c, s), c.pid))
        return lambda c, s: s.recs.append(PrintfOut(fmt, args(c, s), 0))

    def record(self, st: ir.Record) -> Run:
        f = self.expr(st.expr)
        if st.expr.type.kind is Kind.STACK:
            return lambda c, s: s.recs.append(StackOut(f(c, s)))
        return lambda c, s: s.recs.append(SymOut(f(c, s)))

    def tracemem(self, st: ir.Tracemem) -> Run:
        f, size = self.expr(st.data), st.size
        if st.data.type.kind is Kind.INT:
            return lambda c, s: s.recs.append(MemOut(subr.copyin(c, f(c, s), size)))
        return lambda c, s: s.recs.append(MemOut(bytes(f(c, s))[:size]))

    def exit(self, st: ir.Exit) -> Run:
        f = self.expr(st.status)

        def exit_(c: ProbeContext, s: State) -> None:
            status = f(c, s)
            if s.exit_status is None:
                s.exit_status = status
            s.recs.append(LibraryAction(st, status))

        return exit_

    def library(self, st: ir.Printa | ir.AggAction) -> Run:
        arg = st.arg if isinstance(st, ir.AggAction) else None
        if arg is None:
            return lambda c, s: s.recs.append(LibraryAction(st))
        f = self.expr(arg)
        return lambda c, s: s.recs.append(LibraryAction(st, f(c, s)))

    def if_(self, st: ir.If) -> Run:
        cond, then, other = self.expr(st.cond), self.stmts(st.then), self.stmts(st.other)

        def branch(c: ProbeContext, s: State) -> None:
            if cond(c, s):
                then(c, s)
            else:
                other(c, s)

        return branch


def _value_preserving(src: DType, dst: DType) -> bool:
    """Whether every value of *src* is already a value of *dst* (no wrap needed)."""
    if src.size == dst.size:
        return src.signed == dst.signed
    return src.size < dst.size and (dst.signed or not src.signed)


def _tagged(run: Run, action: int) -> Run:
    def tagged(c: ProbeContext, s: State) -> None:
        try:
            run(c, s)
        except DFault as fault:
            if not fault.action:
                fault.action = action
            raise

    return tagged


def _add64(lf: Ev, rf: Ev) -> Ev:
    def add(c: ProbeContext, s: State) -> int:
        v: int = lf(c, s) + rf(c, s)
        if -_I64 <= v < _I64:
            return v
        return (v + _I64) % _U64 - _I64

    return add


def _comparison(op: str, lf: Ev, rf: Ev) -> Ev:
    if op == "==":
        return lambda c, s: 1 if lf(c, s) == rf(c, s) else 0
    if op == "!=":
        return lambda c, s: 1 if lf(c, s) != rf(c, s) else 0
    if op == "<":
        return lambda c, s: 1 if lf(c, s) < rf(c, s) else 0
    if op == "<=":
        return lambda c, s: 1 if lf(c, s) <= rf(c, s) else 0
    if op == ">":
        return lambda c, s: 1 if lf(c, s) > rf(c, s) else 0
    return lambda c, s: 1 if lf(c, s) >= rf(c, s) else 0


def _subroutine(name: str, args: list[Ev], strsize: int) -> Ev:
    a = args + [lambda c, s: None] * (3 - len(args))
    a0, a1, a2 = a[0], a[1], a[2]
    lim = subr.limit
    table: dict[str, Ev] = {
        "strlen": lambda c, s: subr.strlen(a0(c, s)),
        "strjoin": lambda c, s: lim(a0(c, s) + a1(c, s), strsize),
        "substr": lambda c, s: subr.substr(a0(c, s), a1(c, s), a2(c, s), strsize),
        "basename": lambda c, s: subr.split_path(a0(c, s))[1],
        "dirname": lambda c, s: subr.split_path(a0(c, s))[0],
        "strchr": lambda c, s: subr.strchr(a0(c, s), a1(c, s), last=False),
        "strrchr": lambda c, s: subr.strchr(a0(c, s), a1(c, s), last=True),
        "strstr": lambda c, s: subr.strstr(a0(c, s), a1(c, s)),
        "index": lambda c, s: subr.index(a0(c, s), a1(c, s), a2(c, s), reverse=False),
        "rindex": lambda c, s: subr.index(a0(c, s), a1(c, s), a2(c, s), reverse=True),
        "strtoll": lambda c, s: subr.strtoll(a0(c, s), 10 if len(args) < 2 else a1(c, s)),
        "lltostr": lambda c, s: subr.lltostr(a0(c, s), 10 if len(args) < 2 else a1(c, s)),
        "toupper": lambda c, s: subr.case(a0(c, s), upper=True),
        "tolower": lambda c, s: subr.case(a0(c, s), upper=False),
        "copyin": lambda c, s: subr.copyin(c, a0(c, s), a1(c, s)),
        "copyinstr": lambda c, s: subr.copyinstr(c, a0(c, s), a1(c, s), strsize),
        "htons": lambda c, s: subr.byteswap(a0(c, s), 2),
        "ntohs": lambda c, s: subr.byteswap(a0(c, s), 2),
        "htonl": lambda c, s: subr.byteswap(a0(c, s), 4),
        "ntohl": lambda c, s: subr.byteswap(a0(c, s), 4),
        "htonll": lambda c, s: subr.byteswap(a0(c, s), 8),
        "ntohll": lambda c, s: subr.byteswap(a0(c, s), 8),
        "rand": lambda c, s: s.rand(),
    }
    return table[name]


_EXPR: dict[type, Callable[[Compiler, Any], Ev]] = {
    ir.Const: Compiler.const,
    ir.Builtin: Compiler.builtin,
    ir.Var: Compiler.var,
    ir.ArrayElem: Compiler.array_elem,
    ir.Unary: Compiler.unary,
    ir.Binary: Compiler.binary,
    ir.Logical: Compiler.logical,
    ir.Ternary: Compiler.ternary,
    ir.Cast: Compiler.cast,
    ir.Assign: Compiler.assign,
    ir.Compound: Compiler.compound,
    ir.IncDec: Compiler.incdec,
    ir.Call: Compiler.call,
    ir.Stringof: Compiler.stringof,
    ir.Load: Compiler.load,
    ir.Comma: Compiler.comma,
}

_STMT: dict[type, Callable[[Compiler, Any], Run]] = {
    ir.ExprStmt: Compiler.expr_stmt,
    ir.AggUpdate: Compiler.agg_update,
    ir.Trace: Compiler.trace,
    ir.Printf: Compiler.printf,
    ir.Printa: Compiler.library,
    ir.AggAction: Compiler.library,
    ir.Exit: Compiler.exit,
    ir.Record: Compiler.record,
    ir.Tracemem: Compiler.tracemem,
    ir.If: Compiler.if_,
}
