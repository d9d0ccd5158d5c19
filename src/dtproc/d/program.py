"""Compiling a D program: the entry point, options, and what each clause needs.

:func:`compile_program` parses, checks and compiles a program once; the
result is immutable and can drive several runtimes. :func:`compile_units`
compiles several texts into one program as dtrace compiles its command-line
programs: each parsed by its own rules, with errors pointing into it, all
sharing names, options and one clause order (:mod:`dtproc.d.sources` gives
them dtrace's command-line meaning).

Each :class:`Clause` carries its probe descriptions (after macro expansion),
its compiled predicate and body, and :class:`ClauseNeeds`: which arguments and
builtins it reads, whether it keeps per-thread or global state, reads target
memory, takes stacks, produces output per hit or is a *pure count* (only
``count()`` aggregations keyed by probe constants), so the probe layer can
pick the cheapest way to catch its hits: a pure-count clause needs no per-hit
samples at all, only a hit counter per probe (see :meth:`Runtime.add_counts`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from dtproc.d import ast, ir
from dtproc.d.checker import (
    PROBE_CONSTANT_BUILTINS,
    PURE_SUBROUTINES,
    CheckedClause,
    Checker,
    Variable,
)
from dtproc.d.compiler import Compiler, Ev, KeyFn, Run, State, zero_of
from dtproc.d.errors import DCompileError, Pos
from dtproc.d.parser import parse
from dtproc.d.probedesc import BadProbeDescription, ProbeDescription, ProbeField
from dtproc.d.values import BEGIN_PROBE, END_PROBE, ERROR_PROBE, ProbeInfo

# Every option name dtrace accepts; values are kept as given.
KNOWN_OPTIONS = frozenset(
    """aggpercpu amin argref core cpp cpphdrs cpppath ctypes defaultargs dtypes debug
    define droptags empty encoding errtags evaltime incdir iregs kdefs knodefs late
    lazyload ldpath libdir linkmode linktype nolibs pgmax pspec setenv stdc strip
    syslibdir tree tregs udefs undef unodefs unsetenv verbose version zdefs aggsize
    bufsize bufpolicy bufresize cleanrate cpu destructive dynvarsize grabanon
    jstackframes jstackstrsize nspec specsize stackframes statusrate strsize
    ustackframes temporal agghist aggpack aggrate aggsortkey aggsortkeypos aggsortpos
    aggsortrev aggzoom flowindent quiet rawbytes stackindent switchrate""".split()
)

_INT_OPTIONS = {"strsize": 256, "ustackframes": 100, "stackindent": 14, "aggsortkeypos": 0}
_SIZE_OPTIONS = frozenset("aggsize bufsize dynvarsize specsize strsize jstackstrsize".split())
_COUNT_OPTIONS = frozenset(
    """cpu nspec stackframes ustackframes jstackframes aggsortkeypos aggsortpos
    stackindent""".split()
)
_RATE_OPTIONS = frozenset("aggrate cleanrate statusrate switchrate".split())
_SIZE_RE = re.compile(r"(\d+)([kKmMgGtT]?)")
_RATE_RE = re.compile(r"(\d+)(ns|nsec|us|usec|ms|msec|s|sec|m|min|h|hour|d|day|hz)?")


@dataclass(frozen=True)
class Options:
    """Program options from ``#pragma D option`` lines and the command line."""

    values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def is_set(self, name: str) -> bool:
        return name in self.values

    def integer(self, name: str) -> int:
        """An integer option's value (or dtrace's default for it)."""
        raw = self.values.get(name)
        if raw is None:
            return _INT_OPTIONS[name]
        return _parse_size(raw)

    def size(self, name: str) -> int | None:
        """A size option (``bufsize=4m``) in bytes, or None when it is not set."""
        raw = self.values.get(name)
        return None if not raw else _parse_size(raw)

    @property
    def quiet(self) -> bool:
        return self.is_set("quiet")

    @property
    def strsize(self) -> int:
        return self.integer("strsize")

    @property
    def ustackframes(self) -> int:
        return self.integer("ustackframes")

    @property
    def stackindent(self) -> int:
        return self.integer("stackindent")


def _parse_size(raw: str) -> int:
    m = _SIZE_RE.fullmatch(raw)
    if m is None:
        raise ValueError(raw)
    shift = " kmgt".index(m.group(2).lower() or " ") * 10
    return int(m.group(1)) << shift


def _valid_value(name: str, value: str | None) -> bool:
    """Whether *value* suits option *name* (sizes, counts and rates are checked)."""
    if name in _SIZE_OPTIONS:
        m = _SIZE_RE.fullmatch(value or "")
        return m is not None and 2 <= _parse_size(value or "") < 1 << 63
    if name in _COUNT_OPTIONS:
        return value is not None and value.isdigit() and int(value) < 1 << 31
    if name in _RATE_OPTIONS:
        m = _RATE_RE.fullmatch(value or "")
        return m is not None and int(m.group(1)) < 1 << 63
    return True


def _set_option(values: dict[str, str], name: str, value: str | None) -> str | None:
    """Set one option; returns dtrace's complaint, or None if it was accepted."""
    if name not in KNOWN_OPTIONS:
        return "Invalid option name"
    if not _valid_value(name, value):
        return "Invalid value for specified option"
    values[name] = "" if value is None else value
    return None


@dataclass(frozen=True, slots=True)
class ClauseNeeds:
    """What a clause reads from each probe hit, for choosing a probe backend."""

    args: frozenset[int]  # argN read
    pid: bool
    tid: bool  # also true when thread-local (self->) variables are used
    ppid: bool
    uid: bool
    gid: bool
    cpu: bool
    execname: bool
    timestamp: bool  # timestamp or vtimestamp
    walltimestamp: bool
    thread_locals: bool  # self->
    clause_locals: bool  # this->
    globals: bool  # global scalars or associative arrays
    memory: bool  # copyin, copyinstr, stringof/tracemem of an address
    ustack_depth: int  # deepest stack taken (ustack(), ucaller); 0 = none
    output: bool  # may print or record something per hit
    exit: bool  # may call exit()
    pure_count: bool  # only count() keyed by probe constants; see Runtime.add_counts

    @property
    def ustack(self) -> bool:
        return self.ustack_depth > 0


@dataclass(frozen=True)
class Clause:
    """One compiled clause."""

    index: int
    descriptions: tuple[ProbeDescription, ...]
    predicate: Ev | None
    body: Run
    needs: ClauseNeeds
    records: bool  # statements may produce records for the output
    no_actions: bool  # empty body: dtrace traces its default record
    pos: Pos  # in the text the clause came from
    description_pos: tuple[Pos, ...] = ()  # of each description, in that text

    def matches(self, probe: ProbeInfo) -> bool:
        return any(d.matches_probe(probe) for d in self.descriptions)

    @property
    def is_begin(self) -> bool:
        return self.matches(BEGIN_PROBE)

    @property
    def is_end(self) -> bool:
        return self.matches(END_PROBE)

    @property
    def is_error(self) -> bool:
        return self.matches(ERROR_PROBE)


@dataclass(frozen=True)
class Program:
    """A compiled D program: clauses in order, options, aggregations, storage sizes."""

    source: str
    clauses: tuple[Clause, ...]
    options: Options
    aggregations: tuple[ir.AggDef, ...]
    global_defaults: tuple[object, ...]
    n_global_arrays: int
    this_defaults: tuple[object, ...]
    counters: Mapping[int, tuple[tuple[int, KeyFn], ...]]

    @property
    def has_begin(self) -> bool:
        return any(c.is_begin for c in self.clauses)

    @property
    def has_end(self) -> bool:
        return any(c.is_end for c in self.clauses)

    @property
    def has_error(self) -> bool:
        return any(c.is_error for c in self.clauses)

    def new_state(self) -> State:
        from dtproc.d.aggregations import AggData

        return State(
            globals_=self.global_defaults,
            n_arrays=self.n_global_arrays,
            this_defaults=list(self.this_defaults),
            aggs=[AggData(d) for d in self.aggregations],
            strsize=self.options.strsize,
        )


ProbeLookup = Callable[[int], ProbeInfo | None]
"""Resolves a probe id used as a description (``dtrace -i 42``) to its probe."""

Locator = Callable[[int, DCompileError], DCompileError]
"""Turns an error in unit *i* into the one to raise (with dtrace's heading for it)."""

_DTRACE_PROBES = {p.id: p for p in (BEGIN_PROBE, END_PROBE, ERROR_PROBE)}
_MAX_PROBE_ID = (1 << 32) - 1
_FIELD_PLURALS = ("providers", "modules", "functions")


@dataclass(frozen=True, slots=True)
class Unit:
    """One separately compiled text: a whole program, a ``-n``-style argument or a script.

    dtrace compiles each command-line program on its own (errors point into
    it, its probe descriptions follow its option's rules) but into one
    consumer (names, types and aggregations are shared, and clauses run in
    program order across all of them); :func:`compile_units` does the same.
    """

    text: str
    last: ProbeField = ProbeField.NAME  # the field a description's last part names
    pspec: bool = False  # dtrace's DTRACE_C_PSPEC: a -n/-P/-m/-f/-i argument
    from_file: bool = False  # a script: each description needs a predicate or actions
    macros: Mapping[str, str | int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class _Parsed:
    unit: Unit
    tree: ast.ProgramAst
    descriptions: tuple[tuple[ProbeDescription, ...], ...]  # per clause, in order


def compile_program(
    text: str,
    *,
    macros: Mapping[str, str | int] | None = None,
    options: Mapping[str, str | None] | None = None,
) -> Program:
    """Parse, check and compile a D program.

    *macros* maps macro names to values: ``{"target": 1234, "1": "foo"}``
    provides ``$target`` and ``$1``; ``$pid``, ``$uid`` and the like describe
    the tracer unless given. *options* are ``-x``-style options applied
    before the program's own ``#pragma D option`` lines (``{"quiet": None}``).
    Raises :class:`~dtproc.d.errors.DCompileError`.
    """
    program, _ = compile_units((Unit(text),), macros=macros, options=options)
    return program


def compile_units(
    units: Sequence[Unit],
    *,
    macros: Mapping[str, str | int] | None = None,
    options: Mapping[str, str | None] | None = None,
    probe_by_id: ProbeLookup | None = None,
    locate: Locator | None = None,
) -> tuple[Program, tuple[range, ...]]:
    """Compile several texts into one program; returns it and each unit's clause indexes.

    *macros* and *options* are :func:`compile_program`'s, for all units; the
    ``#pragma D option`` lines of every unit apply to the whole program.
    *probe_by_id* resolves probe ids written as descriptions (by default only
    BEGIN's, END's and ERROR's are known). An error in unit *i* is raised as
    ``locate(i, error)`` (as it is, without *locate*).
    """
    base = {**_tracer_macros(), **(macros or {})}
    lookup = probe_by_id or _DTRACE_PROBES.get
    values = _given_options(options or {})
    parsed: list[_Parsed] = []
    for i, unit in enumerate(units):
        with _in_unit(i, locate):
            parsed.append(_parse_unit(unit, base, lookup))
            for pragma in parsed[-1].tree.pragmas:
                _apply_pragma(unit.text, values, pragma)
    opts = Options(MappingProxyType(values))
    checker = Checker(
        strsize=opts.strsize, ustackframes=opts.ustackframes, target_defined="target" in base
    )
    checked: list[tuple[CheckedClause, ...]] = []
    for i, p in enumerate(parsed):
        with _in_unit(i, locate):
            checked.append(checker.check(p.unit.text, p.tree))
    return _assemble(parsed, checked, checker, opts)


@contextlib.contextmanager
def _in_unit(index: int, locate: Locator | None) -> Iterator[None]:
    try:
        yield
    except DCompileError as exc:
        if locate is None:
            raise
        raise locate(index, exc) from None


def _parse_unit(unit: Unit, macros: Mapping[str, str | int], lookup: ProbeLookup) -> _Parsed:
    tree = parse(unit.text, {**macros, **unit.macros}, pspec=unit.pspec, from_file=unit.from_file)
    descriptions = tuple(
        tuple(_description(spec, unit, lookup) for spec in item.specs)
        for item in tree.items
        if isinstance(item, ast.Clause)
    )
    return _Parsed(unit, tree, descriptions)


def _description(spec: ast.ProbeSpec, unit: Unit, lookup: ProbeLookup) -> ProbeDescription:
    """A clause's probe description, by the unit's rules; a probe id is resolved now, as
    dtrace resolves it."""
    if spec.probe_id is None:
        try:
            return ProbeDescription.parse(spec.text, unit.last)
        except BadProbeDescription as exc:
            raise DCompileError(str(exc), spec.pos, unit.text) from None
    probe_id = spec.probe_id
    if probe_id > _MAX_PROBE_ID:
        problem = f"identifier {probe_id} exceeds maximum probe id"
    elif unit.last is not ProbeField.NAME:
        problem = (
            f"probe identifier {probe_id} not permitted when specifying {_FIELD_PLURALS[unit.last]}"
        )
    else:
        probe = lookup(probe_id)
        if probe is not None:
            return ProbeDescription.of_probe(probe)
        problem = f"invalid probe identifier {probe_id}: Unknown probe identifier"
    raise DCompileError(problem, spec.pos, unit.text)


def _assemble(
    parsed: Sequence[_Parsed],
    checked: Sequence[tuple[CheckedClause, ...]],
    checker: Checker,
    opts: Options,
) -> tuple[Program, tuple[range, ...]]:
    """Compile the checked clauses of every unit, numbered in program order."""
    compiler = Compiler(opts.strsize)
    clauses: list[Clause] = []
    counters: dict[int, tuple[tuple[int, KeyFn], ...]] = {}
    spans: list[range] = []
    for p, unit_clauses in zip(parsed, checked, strict=True):
        start = len(clauses)
        items = [i for i in p.tree.items if isinstance(i, ast.Clause)]
        for item, descs, cc in zip(items, p.descriptions, unit_clauses, strict=True):
            clause = _build_clause(len(clauses), item, descs, cc, compiler)
            clauses.append(clause)
            if clause.needs.pure_count:
                counters[clause.index] = tuple(
                    (st.agg.slot, compiler.key(st.keys))
                    for st in cc.body
                    if isinstance(st, ir.AggUpdate)
                )
        spans.append(range(start, len(clauses)))
    totals = checker.result()
    program = Program(
        source="\n".join(p.unit.text for p in parsed),
        clauses=tuple(clauses),
        options=opts,
        aggregations=totals.aggs,
        global_defaults=_defaults(checker.t.globals.values(), totals.n_global_scalars),
        n_global_arrays=totals.n_global_arrays,
        this_defaults=_defaults(checker.t.this_vars.values(), totals.n_this),
        counters=MappingProxyType(counters),
    )
    return program, tuple(spans)


def _tracer_macros() -> dict[str, str | int]:
    """dtrace's macro variables that describe the tracer itself ($pid, $uid...)."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "egid": os.getegid(),
        "pgid": os.getpgrp(),
        "sid": os.getsid(0),
    }


def _defaults(variables: Iterable[Variable], n: int) -> tuple[object, ...]:
    """Initial values of *n* scalar slots: 0, or "" for strings."""
    values: list[object] = [0] * n
    for var in variables:
        if not var.is_array and var.type is not None:
            values[var.slot] = zero_of(var.type)
    return tuple(values)


def option_problem(name: str, value: str | None) -> str | None:
    """dtrace's complaint about a ``-x name[=value]`` option, or None if it is valid."""
    return _set_option({}, name, value)


def _given_options(given: Mapping[str, str | None]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in given.items():
        problem = _set_option(values, name, value)
        if problem is not None:
            shown = f"'{name}'" if value is None else f"'{name}' to '{value}'"
            raise DCompileError(f"failed to set option {shown}: {problem}")
    return values


def _apply_pragma(text: str, values: dict[str, str], pragma: ast.Pragma) -> None:
    words = pragma.words
    directive = words[0] if words else ""
    if directive in ("ident", "line") or (directive == "pragma" and words[1:2] != ("D",)):
        return  # #ident, #line and other compilers' pragmas: ignored, as dtrace does
    if directive != "pragma":
        raise DCompileError(f"invalid control directive: #{directive}", pragma.pos, text)
    if words[2:3] == ("error",):
        message = "".join(w + " " for w in words[3:])
        raise DCompileError(f"#error: {message}", pragma.pos, text)
    if words[2:3] != ("option",):
        if words[2:3] in (("attributes",), ("binding",), ("depends_on",)):
            return
        raise DCompileError(
            f"invalid control directive: #pragma {' '.join(words[1:])}", pragma.pos, text
        )
    if len(words) < 4:
        raise DCompileError("malformed #pragma option <option>=<val>", pragma.pos, text)
    if len(words) > 4:
        raise DCompileError("superfluous arguments specified for #pragma option", pragma.pos, text)
    name, eq, value = words[3].partition("=")
    problem = _set_option(values, name, value if eq else None)
    if problem is not None:
        shown = f"'{name}'" if not eq else f"'{name}' to '{value}'"
        raise DCompileError(f"failed to set option {shown}: {problem}", pragma.pos, text)


def _build_clause(
    index: int,
    item: ast.Clause,
    descriptions: tuple[ProbeDescription, ...],
    cc: CheckedClause,
    compiler: Compiler,
) -> Clause:
    pred = compiler.expr(cc.predicate) if cc.predicate is not None else None
    return Clause(
        index=index,
        descriptions=descriptions,
        predicate=pred,
        body=compiler.stmts(cc.body),
        needs=_needs(cc),
        records=cc.needs.output,
        no_actions=cc.no_actions,
        pos=item.pos,
        description_pos=tuple(spec.pos for spec in item.specs),
    )


def _needs(cc: CheckedClause) -> ClauseNeeds:
    n = cc.needs
    b = n.builtins
    return ClauseNeeds(
        args=frozenset(n.args),
        pid="pid" in b,
        tid="tid" in b or n.self_vars,
        ppid="ppid" in b,
        uid="uid" in b,
        gid="gid" in b,
        cpu="cpu" in b,
        execname="execname" in b,
        timestamp="timestamp" in b or "vtimestamp" in b,
        walltimestamp="walltimestamp" in b,
        thread_locals=n.self_vars,
        clause_locals=n.this_vars,
        globals=n.globals,
        memory=n.memory,
        ustack_depth=n.ustack_depth,
        output=n.output,
        exit=n.exit,
        pure_count=_pure_count(cc),
    )


def _probe_constant(e: ir.Expr) -> bool:
    """Whether *e* depends on nothing but the probe's names and constants."""
    if isinstance(e, ir.Const):
        return True
    if isinstance(e, ir.Builtin):
        return e.name in PROBE_CONSTANT_BUILTINS
    if isinstance(e, ir.Unary | ir.Cast):
        return _probe_constant(e.operand)
    if isinstance(e, ir.Binary | ir.Logical):
        return _probe_constant(e.left) and _probe_constant(e.right)
    if isinstance(e, ir.Ternary):
        return all(_probe_constant(x) for x in (e.cond, e.then, e.other))
    if isinstance(e, ir.Call):
        return e.name in PURE_SUBROUTINES and all(_probe_constant(a) for a in e.args)
    return False


def _pure_count(cc: CheckedClause) -> bool:
    if cc.no_actions or not cc.body:
        return False
    if cc.predicate is not None and not _probe_constant(cc.predicate):
        return False
    return all(
        isinstance(st, ir.AggUpdate)
        and st.agg.func is ir.AggFunc.COUNT
        and all(_probe_constant(k) for k in st.keys)
        for st in cc.body
    )
