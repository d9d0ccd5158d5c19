"""The D runtime: fires compiled clauses on probe hits and feeds an output format.

dtrace semantics kept here:

* a clause's records reach the output only if the clause ran to the end; a
  fault (division by zero, unreadable memory) drops them, is reported as
  ``error on enabled probe ID N (ID M: prov:mod:func:name): divide-by-zero in
  action #K`` and counted, and tracing goes on;
* after ``exit()`` no further clause runs except END clauses;
* printa(), clear(), trunc(), normalize() act when the firing commits, in
  record order, as dtrace's consumer does;
* at the end, after END, every aggregation printa() has not printed is printed.

One runtime is driven by one thread at a time (the caller serializes hits);
per-hit cost is a closure call per statement, see ``bench/bench_d.py``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TextIO, cast

from dtproc.d.aggregations import AggData, SortOptions, joined_entries
from dtproc.d.compiler import LibraryAction, State
from dtproc.d.errors import DFault, FaultKind
from dtproc.d.ir import AggOp, Exit, Printa
from dtproc.d.output import OutputFormat, make_sink
from dtproc.d.program import Clause, Program
from dtproc.d.records import AggTable, Output, PrintaOut, Sink
from dtproc.d.values import (
    BEGIN_PROBE,
    END_PROBE,
    ERROR_PROBE,
    ProbeContext,
    ProbeInfo,
    StaticContext,
    Symbolizer,
)

# dtrace's fault codes (DTRACEFLT_*), passed to ERROR clauses as arg4.
_FAULT_CODES = {
    FaultKind.BADADDR: 1,
    FaultKind.ILLOP: 3,
    FaultKind.DIVZERO: 4,
    FaultKind.BADSTACK: 9,
}


def local_context(probe: ProbeInfo, args: Sequence[int] = ()) -> StaticContext:
    """The context of BEGIN, END and ERROR: they fire in the tracer itself."""
    return StaticContext(
        probe,
        pid=os.getpid(),
        tid=threading.get_native_id(),
        ppid=os.getppid(),
        uid=os.getuid(),
        gid=os.getgid(),
        execname="dtproc",
        timestamp=time.monotonic_ns(),
        walltimestamp=time.time_ns(),
        args=tuple(args),
    )


class _ProbeOnly:
    """What a pure-count clause may read: the probe's names, nothing else."""

    def __init__(self, probe: ProbeInfo) -> None:
        self.probe = probe


class Runtime:
    """Runs one compiled program.

    ``out`` receives the chosen output format; ``symbolize(pid, pc)`` names
    stack frames and addresses when they are printed; errors and drop reports
    go to ``err`` (stderr by default), prefixed ``dtproc:``.
    """

    def __init__(
        self,
        program: Program,
        out: TextIO | None = None,
        *,
        symbolize: Symbolizer | None = None,
        output: OutputFormat = OutputFormat.DTRACE,
        err: TextIO | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.program = program
        self.st: State = program.new_state()
        self.sink: Sink = sink or make_sink(output, out or sys.stdout, program.options, symbolize)
        self.err = err or sys.stderr
        self.errors = 0
        self.drops = 0
        self._clauses = program.clauses
        self._epids: dict[tuple[int, int], int] = {}
        self._in_error = False
        opts = program.options
        self.sort = SortOptions(
            by_key=opts.is_set("aggsortkey"),
            reverse=opts.is_set("aggsortrev"),
            key_position=opts.integer("aggsortkeypos"),
        )

    @property
    def exit_requested(self) -> int | None:
        """The status exit() was called with, or None if it has not been."""
        return self.st.exit_status

    # -- firing ------------------------------------------------------------------

    def fire(self, clause_index: int, ctx: ProbeContext) -> None:
        """Run clause *clause_index* for one hit of the probe in *ctx*."""
        if self.st.exit_status is None:
            self._run(self._clauses[clause_index], ctx)

    def fire_probe(self, clause_indexes: Iterable[int], ctx: ProbeContext) -> None:
        """One probe firing: run these clauses in order, sharing this-> variables.

        fire() also starts fresh this-> variables whenever it is given another
        context object than the previous call; use this when one context
        object is reused for successive hits.
        """
        self.st.ctx = None
        for index in clause_indexes:
            self.fire(index, ctx)

    def begin(self, ctx: ProbeContext | None = None) -> None:
        """Fire the BEGIN clauses, in program order."""
        ctx = ctx or local_context(BEGIN_PROBE)
        for clause in self._clauses:
            if self.st.exit_status is not None:
                break
            if clause.is_begin:
                self._run(clause, ctx)

    def end(self, ctx: ProbeContext | None = None) -> None:
        """Fire the END clauses (even after exit()), then print what is left to print."""
        ctx = ctx or local_context(END_PROBE)
        for clause in self._clauses:
            if clause.is_end:
                self._run(clause, ctx)
        self.sink.finish(self.unprinted_tables())

    def add_counts(self, clause_index: int, probe: ProbeInfo, count: int) -> None:
        """Account *count* hits of *probe* to a pure-count clause without running it.

        This is the kernel-counter path: the output is the same as firing the
        clause *count* times. Raises ValueError if the clause is not pure-count.
        """
        clause = self._clauses[clause_index]
        if not clause.needs.pure_count:
            raise ValueError(f"clause {clause_index} is not a pure-count clause")
        if count <= 0 or self.st.exit_status is not None:
            return
        ctx = cast(ProbeContext, _ProbeOnly(probe))
        st = self.st
        if clause.predicate is not None and not clause.predicate(ctx, st):
            return
        for slot, key in self.program.counters[clause_index]:
            d = st.aggdata[slot]
            k = key(ctx, st)
            d[k] = d.get(k, 0) + count  # type: ignore[operator]

    def report_drops(self, n: int, cpu: int = 0) -> None:
        """Report records lost by a probe backend, as dtrace reports buffer drops."""
        if n > 0:
            self.drops += n
            self.err.write(f"dtproc: {n} drop{'' if n == 1 else 's'} on CPU {cpu}\n")

    def _run(self, clause: Clause, ctx: ProbeContext) -> None:
        st = self.st
        if st.this_defaults and ctx is not st.ctx:
            st.ctx = ctx
            st.this = list(st.this_defaults)
        try:
            pred = clause.predicate
            if pred is not None and not pred(ctx, st):
                return
            if not clause.records:
                clause.body(ctx, st)
                return
            recs: list[Output | LibraryAction] = []
            st.recs = recs
            clause.body(ctx, st)
        except DFault as fault:
            self._fault(clause, ctx, fault)
            return
        self._commit(ctx, recs)

    def _commit(self, ctx: ProbeContext, recs: list[Output | LibraryAction]) -> None:
        outputs: list[Output] = []
        for rec in recs:
            if isinstance(rec, LibraryAction):
                out = self._library(rec)
                if out is not None:
                    outputs.append(out)
            else:
                outputs.append(rec)
        self.sink.ecb(ctx.cpu, ctx.probe, outputs)

    # -- aggregation actions -------------------------------------------------------

    def _library(self, rec: LibraryAction) -> Output | None:
        stmt = rec.stmt
        if isinstance(stmt, Exit):
            return None
        if isinstance(stmt, Printa):
            aggs = [self.st.aggs[d.slot] for d in stmt.aggs]
            table = self.table(aggs)
            if table.rows:
                for agg in aggs:
                    agg.printed = True
            return PrintaOut(stmt.formatter, table)
        agg = self.st.aggs[stmt.agg.slot]
        op = stmt.op
        if op is AggOp.CLEAR:
            agg.clear()
        elif op is AggOp.TRUNC:
            agg.truncate(rec.arg)
        elif op is AggOp.NORMALIZE:
            if rec.arg is not None and rec.arg > 0:
                agg.normal = rec.arg
        else:
            agg.normal = 1
        return None

    def table(self, aggs: Sequence[AggData]) -> AggTable:
        """The rows of one aggregation, or several joined, in print order."""
        defs = tuple(a.defn for a in aggs)
        normals = tuple(a.normal for a in aggs)
        if len(aggs) == 1:
            rows = [(k, [c]) for k, c in aggs[0].sorted_entries(self.sort)]
        else:
            rows = joined_entries(aggs, self.sort)
        return AggTable(defs, normals, rows)

    def unprinted_tables(self) -> list[AggTable]:
        """Aggregations printa() has not printed, in dtrace's end-of-run order."""
        aggs = sorted(
            (a for a in self.st.aggs if not a.printed and a.data),
            key=lambda a: a.defn.slot,
            reverse=self.sort.reverse,
        )
        return [self.table([a]) for a in aggs]

    # -- errors ------------------------------------------------------------------

    def _epid(self, clause: Clause, probe: ProbeInfo) -> int:
        key = (clause.index, probe.id)
        epid = self._epids.get(key)
        if epid is None:
            epid = self._epids[key] = len(self._epids) + 1
        return epid

    def _fault(self, clause: Clause, ctx: ProbeContext, fault: DFault) -> None:
        self.errors += 1
        probe = ctx.probe
        epid = self._epid(clause, probe)
        where = f"action #{fault.action}" if fault.action else "predicate"
        details = f" (0x{fault.addr:x})" if fault.addr is not None else ""
        self.err.write(
            f"dtproc: error on enabled probe ID {epid} (ID {probe.id}: {probe}): "
            f"{fault.kind.value}{details} in {where}\n"
        )
        if self._in_error or not self.program.has_error:
            return
        args = (0, epid, fault.action, -1, _FAULT_CODES[fault.kind], fault.addr or 0)
        ectx = local_context(ERROR_PROBE, args)
        self._in_error = True
        try:
            for c in self._clauses:
                if c.is_error:
                    self._run(c, ectx)
        finally:
            self._in_error = False
