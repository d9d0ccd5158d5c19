"""A tracing session: a compiled D program, the processes it watches, and the backends.

This is what ``dtrace -c``/``-p`` does, as a library: processes are created or
grabbed first (so ``$target`` is known), the program is compiled, every probe
description is matched against every controlled process (and again whenever a
library loads, and from scratch after an exec), BEGIN fires, the processes are
let go from their rendezvous, hits run clauses, and when the processes are gone,
``exit()`` is called or the user interrupts, the probes are removed, END fires
and the aggregations are printed. Grabbed processes run on unharmed; created
ones are killed, as dtrace does.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from dtproc.control import Notification, NotificationKind, Process, Tracer
from dtproc.d import OutputFormat, ProbeContext, ProbeDescription, ProbeInfo, Program, Runtime
from dtproc.errors import DtprocError, ProbeError
from dtproc.events import Exec, signal_name
from dtproc.modules import Module, ModuleMap
from dtproc.probes.backend import Backend, Placement
from dtproc.probes.pid import PidProvider, module_may_load_later
from dtproc.probes.ptrace_backend import PtraceBackend
from dtproc.probes.sites import ProbeIds, ProbeSite
from dtproc.probes.uprobe_backend import (
    UprobeBackend,
    UprobeOptions,
    uprobe_eligible,
    uprobes_available,
)
from dtproc.probes.uprobe_safety import uprobe_hazard
from dtproc.probes.usdt import UsdtProvider, usdt_provider_name, usdt_providers
from dtproc.rendezvous import StopPoint
from dtproc.rtld import ModulesChanged
from dtproc.ustack import Symbolizer

# A provider with a process id: pid1234, python1234 (dtrace grabs the process it names).
_PROCESS_PROVIDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*?([0-9]+)\Z")
_WAKE = 0.25
AUTO_UPROBE_SITES = 16  # above this many probes, auto keeps to ptrace (see _auto_wants_uprobes)


@dataclass
class SessionOptions:
    quiet: bool = False
    output: OutputFormat = OutputFormat.DTRACE
    backend: str = "auto"  # auto | ptrace | uprobe
    zero_ok: bool = False  # -Z: descriptions may match nothing
    verbose: bool = False
    evaltime: StopPoint = StopPoint.POSTINIT  # where created processes wait for tracing to start
    program_name: str = "dtproc"


@dataclass
class SourceMatches:
    """How many probes one command-line program matched (dtrace's notice)."""

    desc: str  # "description" or "script"
    name: str
    clauses: tuple[int, ...]
    matched: int = 0


@dataclass
class _Described:
    """One probe description of one clause, kept for later module loads."""

    clause: int
    desc: ProbeDescription
    source: SourceMatches | None
    sites: int = 0
    pending: bool = False  # matched nothing yet, but a library may bring it


@dataclass
class _Watched:
    proc: Process
    from_command_line: bool
    pid_provider: PidProvider
    usdt_provider: UsdtProvider
    ended: bool = False
    extras: list[object] = field(default_factory=list)


class Session:
    """One dtrace-like run. Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        options: SessionOptions | None = None,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.options = options or SessionOptions()
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tracer = tracer or Tracer()
        self._owns_tracer = tracer is None
        self.ids = ProbeIds()
        self._watched: dict[int, _Watched] = {}
        self._order: list[int] = []
        self._described: list[_Described] = []
        self._sources: list[SourceMatches] = []
        self.runtime: Runtime | None = None
        self.program: Program | None = None
        self._fire_lock = threading.Lock()
        self._wake = threading.Event()
        self.interrupted = 0
        self.internal_errors = 0
        self._backend: Backend = PtraceBackend(self._fire)
        self.backend_reasons: dict[int, tuple[bool, str]] = {}
        self._clause_sites: dict[int, list[ProbeSite]] = {}
        self._closed = False
        self._stopped = False
        self._drop_hint_given = False
        self._unmatched: Callable[[int, ProbeDescription], DtprocError] | None = None

    # ------------------------------------------------------------------ processes
    @property
    def target(self) -> int | None:
        return self._order[0] if self._order else None

    def create(self, command: str | Sequence[str]) -> Process:
        """``-c``: start a command (a string is split on white space, as dtrace does)."""
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        proc = self.tracer.create(argv, stop_at=self.options.evaltime)
        self._watch(proc, from_command_line=True)
        return proc

    def grab(self, pid: int) -> Process:
        """``-p``: take a running process."""
        proc = self.tracer.grab(pid)
        self._watch(proc, from_command_line=True)
        return proc

    def _watch(self, proc: Process, *, from_command_line: bool) -> _Watched:
        w = _Watched(
            proc,
            from_command_line,
            PidProvider(proc.pid, proc.read, self.ids),
            UsdtProvider(proc.pid, proc.read, self.ids),
        )
        self._watched[proc.pid] = w
        self._order.append(proc.pid)
        proc.subscribe_modules(functools.partial(self._on_modules, w))
        proc.subscribe_exec(functools.partial(self._on_exec, w))
        return w

    # ------------------------------------------------------------------ the program
    def use(
        self,
        program: Program,
        sources: Sequence[SourceMatches],
        unmatched: Callable[[int, ProbeDescription], DtprocError] | None = None,
    ) -> None:
        """The compiled program to run, and which clauses each command-line source made.

        *unmatched(clause, description)* words the error for a description that
        matches nothing (the compiler knows where it came from).
        """
        self.program = program
        self._sources = list(sources)
        self._unmatched = unmatched
        self.runtime = Runtime(
            program,
            self.out,
            symbolize=self._symbolize,
            output=self.options.output,
            err=self.err,
        )

    def _symbolize(self, pid: int, pc: int) -> str:
        w = self._watched.get(pid)
        if w is None:
            return f"0x{pc:x}"
        try:
            with w.proc.lock():
                modules = w.proc.tracee.modules
                if modules.module_at(pc) is None:
                    modules = w.proc.tracee.refresh_modules()
        except (DtprocError, OSError):
            return f"0x{pc:x}"
        return Symbolizer.of(modules).frame(pc).text

    # ------------------------------------------------------------------ matching
    def enable(self) -> list[SourceMatches]:
        """Match every description in every process and start catching hits."""
        program = self._require_program()
        by_clause = {c: src for src in self._sources for c in src.clauses}
        for clause in program.clauses:
            if clause.is_begin or clause.is_end or clause.is_error:
                src = by_clause.get(clause.index)
                if src is not None:
                    src.matched += len(clause.descriptions)  # dtrace's own probes: one each
                continue
            for desc in clause.descriptions:
                self._described.append(_Described(clause.index, desc, by_clause.get(clause.index)))
        self._grab_named_processes()
        found: list[tuple[_Watched, _Described, list[ProbeSite]]] = []
        for d in self._described:
            for w in self._watched.values():
                sites = self._match(w, d, w.proc.modules, None)
                d.sites += len(sites)
                if sites:
                    found.append((w, d, sites))
            if d.source is not None:
                d.source.matched += d.sites
        self._check_zero_matches()
        for d in self._described:  # pending ones too: their sites may come with a library
            self._clause_sites.setdefault(d.clause, [])
        for _, d, sites in found:
            self._clause_sites[d.clause].extend(sites)
        self._backend = self._choose_backend()
        try:
            for w, d, sites in found:
                self._install(w, d, sites, here=False)
        except ProbeError as exc:
            if self.options.backend != "auto" or isinstance(self._backend, PtraceBackend):
                raise
            # The kernel refused a site (an instruction uprobes cannot take): start over
            # on ptrace, which can take any instruction, rather than fail the run.
            self.notice(f"using the ptrace backend: {exc}")
            self._abandon_backend()
            self._backend = PtraceBackend(self._fire)
            for w, d, sites in found:
                self._install(w, d, sites, here=False)
        return self._sources

    def _without_hazards(self, sites: list[ProbeSite]) -> list[ProbeSite]:
        safe = []
        for site in sites:
            hazard = uprobe_hazard(site)
            if hazard is None:
                safe.append(site)
            else:
                print(
                    f"{self.options.program_name}: not probing {site}: {hazard}",
                    file=self.err,
                    flush=True,
                )
        return safe

    def _abandon_backend(self) -> None:
        try:
            for w in self._watched.values():
                self._backend.disable(w.proc)
        finally:
            self._backend.close()

    # ------------------------------------------------------------------ backends
    def _choose_backend(self) -> Backend:
        """ptrace, or kernel uprobes.

        ``uprobe`` puts every clause on uprobes (refusing clauses that need the target's
        memory at the hit). ``auto`` does so when every clause only counts: kernel
        counters are exact and cost under a microsecond a hit. A sampled clause could
        run there too, but a hot probe outruns any sample ring and loses hits (drops,
        reported); ptrace stops the target instead and loses nothing, so under ``auto``
        sampled clauses stay on ptrace unless you ask for ``-x backend=uprobe``.
        """
        program = self._require_program()
        wanted = self.options.backend
        verdicts = self._verdicts(program)
        sites = [site for its in self._clause_sites.values() for site in its]
        self.backend_reasons = verdicts
        available, why = uprobes_available()
        use_uprobes = wanted == "uprobe" or (
            wanted == "auto" and available and self._auto_wants_uprobes(program, verdicts, sites)
        )
        if wanted == "uprobe":
            if not available:
                raise DtprocError(f"cannot use the uprobe backend: {why}")
            for index, (ok, reason) in verdicts.items():
                if not ok:
                    raise DtprocError(
                        f"cannot use the uprobe backend: clause {index + 1} "
                        f"({self._clause_text(index)}) {reason}; use -x backend=ptrace"
                    )
        elif wanted == "auto" and not available and sites:
            self.notice(f"using the ptrace backend: {why}")
        if self.options.verbose:  # -v speaks even with -q, as dtrace's -v does
            chosen = "uprobe" if use_uprobes else "ptrace"
            for line in self._explain(verdicts, chosen, len(sites)):
                print(f"{self.options.program_name}: {line}", file=self.err, flush=True)
        if not use_uprobes:
            return PtraceBackend(self._fire)
        return UprobeBackend(
            self._fire,
            self._add_counts,
            [c.needs for c in program.clauses],
            report_drops=self._report_drops,
            warn=self.notice,
            options=UprobeOptions(ring_bytes=self._ring_bytes(program)),
        )

    @staticmethod
    def _ring_bytes(program: Program) -> int:
        """dtrace's bufsize option sizes each thread's sample ring (default 4 MiB)."""
        size = program.options.size("bufsize")
        return 4 << 20 if size is None else max(size, 4096)

    def _verdicts(self, program: Program) -> dict[int, tuple[bool, str]]:
        """For each probe clause: can it run from a uprobe sample, and why (not)."""
        out: dict[int, tuple[bool, str]] = {}
        for index, its_sites in sorted(self._clause_sites.items()):
            needs = program.clauses[index].needs
            verdict = uprobe_eligible(needs)
            for site in its_sites:
                if not verdict[0]:
                    break
                verdict = uprobe_eligible(needs, site)
                hazard = uprobe_hazard(site) if verdict[0] else None
                if hazard is not None:
                    verdict = (False, f"{site}: {hazard}")
            out[index] = verdict
        return out

    def _auto_wants_uprobes(
        self, program: Program, verdicts: dict[int, tuple[bool, str]], sites: Sequence[ProbeSite]
    ) -> bool:
        """Counting clauses on few probes: there uprobes pay off. Each uprobe event costs
        the kernel ~25 ms to open and ~0.1 s to close here (an RCU grace period, serialised),
        per probe and per thread, while a breakpoint costs microseconds to place."""
        return (
            bool(verdicts)
            and len(sites) <= AUTO_UPROBE_SITES
            and all(
                ok and program.clauses[index].needs.pure_count
                for index, (ok, _) in verdicts.items()
            )
        )

    def explain_backends(self) -> list[str]:
        """For ``-l``: which backend each clause would use with the probes listed, and why."""
        program = self._require_program()
        verdicts = self._verdicts(program)
        sites = [site for its in self._clause_sites.values() for site in its]
        available, why = uprobes_available()
        wanted = self.options.backend
        use = wanted == "uprobe" or (
            wanted == "auto" and available and self._auto_wants_uprobes(program, verdicts, sites)
        )
        lines = self._explain(verdicts, "uprobe" if use else "ptrace", len(sites))
        if wanted == "auto" and not available:
            lines.append(f"uprobes are not available: {why}")
        return lines

    def _explain(
        self, verdicts: dict[int, tuple[bool, str]], chosen: str, n_sites: int
    ) -> list[str]:
        program = self._require_program()
        lines = []
        for index, (ok, reason) in verdicts.items():
            if chosen == "ptrace" and ok:
                if self.options.backend == "ptrace":
                    reason = "-x backend=ptrace"
                elif n_sites > AUTO_UPROBE_SITES and program.clauses[index].needs.pure_count:
                    reason = (
                        f"{n_sites} probes: uprobe events take the kernel ~0.1 s each to set up "
                        "and remove, breakpoints microseconds (-x backend=uprobe to insist)"
                    )
                elif not program.clauses[index].needs.pure_count:
                    reason = (
                        "it is sampled, and a hot probe outruns sample rings; ptrace loses "
                        "no hit (-x backend=uprobe samples it without stopping the target)"
                    )
                else:
                    reason = f"{reason}; but another clause of the program needs ptrace"
            lines.append(f"clause {index + 1} ({self._clause_text(index)}): {chosen}: {reason}")
        return lines

    def _clause_text(self, index: int) -> str:
        program = self._require_program()
        return ", ".join(str(d) for d in program.clauses[index].descriptions)

    def _add_counts(self, clause: int, probe: ProbeInfo, count: int) -> None:
        rt = self._require_runtime()
        with self._fire_lock:
            rt.add_counts(clause, probe, count)

    def _report_drops(self, count: int) -> None:
        """Samples the kernel could not hand over: said at once, never silently."""
        if count <= 0:
            return
        rt = self._require_runtime()
        with self._fire_lock:
            rt.drops += count
            if not self._drop_hint_given:
                self._drop_hint_given = True
                hint = " (the target outran the sample rings: -x bufsize=64m, or "
                hint += "-x backend=ptrace for exact results)"
            else:
                hint = ""
            print(
                f"{self.options.program_name}: {count} drop{'' if count == 1 else 's'}{hint}",
                file=self.err,
                flush=True,
            )

    def list_probes(self) -> list[ProbeSite]:
        """``-l``: the probes the program's descriptions name in the processes, by id."""
        program = self._require_program()
        found: dict[int, ProbeSite] = {}
        for clause in program.clauses:
            if not (clause.is_begin or clause.is_end or clause.is_error):
                for desc in clause.descriptions:
                    self._described.append(_Described(clause.index, desc, None))
        self._grab_named_processes()
        for d in self._described:
            for w in self._watched.values():
                sites = self._sites_for(w, d.desc, w.proc.modules, None)
                self._clause_sites.setdefault(d.clause, []).extend(sites)
                for site in sites:
                    found.setdefault(site.info.id, site)
        return [found[k] for k in sorted(found)]

    @property
    def pending(self) -> int:
        """Descriptions that matched nothing yet but may match when a library loads."""
        return sum(1 for d in self._described if d.pending and not d.sites)

    def _grab_named_processes(self) -> None:
        """``pid1234:::`` names a process: grab it, as dtrace does, if we do not have it."""
        for d in self._described:
            m = _PROCESS_PROVIDER.match(d.desc.provider)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid not in self._watched and os.path.exists(f"/proc/{pid}"):
                proc = self.tracer.grab(pid)
                self._watch(proc, from_command_line=False)

    def _match(
        self, w: _Watched, d: _Described, modules: ModuleMap, only: Sequence[Module] | None
    ) -> list[ProbeSite]:
        sites = self._sites_for(w, d.desc, modules, only)
        if not sites and only is None and self._may_load_later(w, d.desc, modules):
            d.pending = True
        return sites

    def _install(self, w: _Watched, d: _Described, sites: list[ProbeSite], *, here: bool) -> None:
        if not isinstance(self._backend, PtraceBackend):
            sites = self._without_hazards(sites)  # sites of libraries loaded later
        placements = [Placement(site, (d.clause,)) for site in sites]
        if here:
            self._backend.enable_here(w.proc, placements)
        else:
            self._backend.enable(w.proc, placements)

    def _place(
        self,
        w: _Watched,
        d: _Described,
        modules: ModuleMap,
        only: Sequence[Module] | None,
        *,
        here: bool,
    ) -> int:
        sites = self._match(w, d, modules, only)
        if sites:
            self._install(w, d, sites, here=here)
        return len(sites)

    def _sites_for(
        self, w: _Watched, desc: ProbeDescription, modules: ModuleMap, only: Sequence[Module] | None
    ) -> list[ProbeSite]:
        sites = w.pid_provider.sites(desc, modules, only)
        sites += w.usdt_provider.sites(desc, modules, only)
        return sites

    def _may_load_later(self, w: _Watched, desc: ProbeDescription, modules: ModuleMap) -> bool:
        """A description that matches nothing now may still match a library loaded later:
        one naming a module that is not mapped, or a USDT provider no loaded module has."""
        if module_may_load_later(desc, modules):
            return True
        if not desc.provider or desc.field_matches(0, f"pid{w.proc.pid}"):
            return False
        present = {usdt_provider_name(p.provider, w.proc.pid) for p in usdt_providers(modules)}
        return not any(desc.field_matches(0, name) for name in present)

    def _check_zero_matches(self) -> None:
        for d in self._described:
            if d.sites or self.options.zero_ok:
                continue
            if d.pending:
                what = f"module '{d.desc.module}'" if d.desc.module else "a module providing it"
                self.notice(
                    f"description '{d.desc}' matched 0 probes for now; "
                    f"it will be enabled when {what} loads"
                )
                continue
            if self._unmatched is not None:
                raise self._unmatched(d.clause, d.desc)
            text = d.source.name if d.source is not None else str(d.desc)
            raise ProbeError(
                f"invalid probe specifier {text}: probe description {d.desc} "
                "does not match any probes"
            )

    def _on_modules(self, w: _Watched, change: ModulesChanged) -> None:
        """A library loaded or went away (control thread, the loading thread stopped)."""
        if change.removed:
            self._backend.forget(w.proc, change.removed)
        if not change.added or self.runtime is None:
            return
        for d in self._described:
            n = self._place(w, d, change.modules, change.added, here=True)
            d.sites += n

    def _on_exec(self, w: _Watched, event: Exec) -> None:
        """The program exec'd (control thread, nothing of the new image has run): start over."""
        self._backend.forget(w.proc, None)
        if self.runtime is None:
            return
        modules = w.proc.tracee.refresh_modules()
        for d in self._described:
            self._place(w, d, modules, None, here=True)

    # ------------------------------------------------------------------ running
    def _fire(self, clauses: Sequence[int], ctx: ProbeContext) -> None:
        rt = self.runtime
        if rt is None:
            return
        with self._fire_lock:
            try:
                rt.fire_probe(clauses, ctx)
            except Exception as exc:  # a bug must not stop tracing, nor pass unnoticed
                self._internal_error(ctx, exc)
            if rt.exit_requested is not None:
                self._wake.set()
                self.tracer.interrupt_sleep()

    def _internal_error(self, ctx: ProbeContext, exc: Exception) -> None:
        self.internal_errors += 1
        if self.internal_errors <= 3:
            print(
                f"{self.options.program_name}: internal error in probe {ctx.probe}: {exc!r}",
                file=self.err,
                flush=True,
            )

    def go(self) -> None:
        """Fire BEGIN, then let every process go from its rendezvous."""
        rt = self._require_runtime()
        with self._fire_lock:
            rt.begin()
        for pid in self._order:
            self.tracer.resume(self._watched[pid].proc)

    def wait(self) -> None:
        """Run until the command-line processes are gone, exit() is called, or an interrupt."""
        rt = self._require_runtime()
        while not self.interrupted and rt.exit_requested is None:
            if self._command_line_procs() and self._all_ended():
                break
            for note in self.tracer.sleep(_WAKE):
                self._on_notification(note)

    def _command_line_procs(self) -> list[_Watched]:
        return [w for w in self._watched.values() if w.from_command_line]

    def _all_ended(self) -> bool:
        return all(w.ended for w in self._command_line_procs())

    def _on_notification(self, note: Notification) -> None:
        w = self._watched.get(note.pid)
        if w is not None:
            w.ended = True
        if note.kind is NotificationKind.LOST and "set-id" in note.message:
            self.notice(f"pid {note.pid} exec'd a set-id or unobservable program")
        elif note.kind is NotificationKind.LOST:
            print(f"{self.options.program_name}: {note.message}", file=self.err, flush=True)
        elif note.kind is NotificationKind.KILLED:
            self.notice(f"pid {note.pid} terminated by {signal_name(note.status)}")
        elif note.status:
            self.notice(f"pid {note.pid} exited with status {note.status}")
        else:
            self.notice(f"pid {note.pid} has exited")

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop tracing (twice: do not even print the aggregations)."""
        self.interrupted += 1
        self._wake.set()
        self.tracer.interrupt_sleep()

    def stop(self) -> None:
        """Remove every probe (counters are read then); processes run on until close()."""
        if self._stopped:
            return
        self._stopped = True
        self._abandon_backend()

    def finish(self) -> int:
        """END, the aggregations (unless interrupted twice); the exit status."""
        rt = self._require_runtime()
        if self.interrupted < 2:
            with self._fire_lock:
                rt.end()
        return rt.exit_requested or 0

    def close(self) -> None:
        """Release every process: created ones die, grabbed ones run on as before."""
        if self._closed:
            return
        self._closed = True
        self.stop()  # Ctrl-C and error paths too: no uprobe, no breakpoint outlives us
        if self._owns_tracer:
            self.tracer.close()
        else:
            for w in self._watched.values():
                w.proc.release()

    def run(self) -> int:
        """enable, go, wait, stop, finish, close: the whole of ``dtrace -c``."""
        try:
            self.enable()
            self.go()
            self.wait()
            self.stop()
            return self.finish()
        finally:
            self.close()

    # ------------------------------------------------------------------ helpers
    def notice(self, message: str) -> None:
        """dtrace's notice(): a line on stderr, unless quiet."""
        if not self.options.quiet and not self._program_quiet():
            self.out.flush()
            print(f"{self.options.program_name}: {message}", file=self.err, flush=True)

    def _program_quiet(self) -> bool:
        return self.program is not None and self.program.options.quiet

    def _require_program(self) -> Program:
        if self.program is None:
            raise DtprocError("no program: call Session.use() first")
        return self.program

    def _require_runtime(self) -> Runtime:
        if self.runtime is None:
            raise DtprocError("no program: call Session.use() first")
        return self.runtime


__all__ = ["Session", "SessionOptions", "SourceMatches"]
