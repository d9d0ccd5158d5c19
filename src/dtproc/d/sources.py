"""dtrace's command-line programs: ``-n``, ``-P``, ``-m``, ``-f``, ``-i`` and ``-s``.

dtrace compiles each of these separately, each by the rules of its option
(``-P foo`` is provider ``foo``, ``-m [provider:]module``, ``-f
[[provider:]module:]function``, ``-n`` and ``-i`` a whole description or a
probe id, ``-s`` a script file), but all into one consumer: aggregations and
variables of the same name are the same, options set in any script apply to
all, and clauses run in program order across every source. Each source is
named by dtrace's words in its messages: ``description 'BEGIN ' matched 1
probe`` (an argument cropped at its first ``{``, ``/`` or ``;``), ``script
'x.d' matched 3 probes``, ``invalid probe specifier ARG: ...``, ``failed to
compile script PATH: line N: ...``. :func:`compile_sources` does all this and
returns the one :class:`~dtproc.d.program.Program` a
:class:`~dtproc.d.runtime.Runtime` runs, with which clauses each source made.

Matching the descriptions against probes is not done here: it needs the live
processes. :meth:`CompiledSet.unmatched` gives dtrace's error for a
description that matched nothing, for callers that enforce it (dtrace does
unless ``-Z``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dtproc.d.errors import DCompileError, Origin
from dtproc.d.probedesc import ProbeDescription, ProbeField
from dtproc.d.program import ProbeLookup, Program, Unit, compile_units, option_problem


class SourceKind(enum.Enum):
    """Which option a command-line program came with (the value is the option)."""

    NAME = "-n"
    PROVIDER = "-P"
    MODULE = "-m"
    FUNCTION = "-f"
    ID = "-i"
    SCRIPT = "-s"

    @property
    def last_field(self) -> ProbeField:
        """The field the last part of this kind's descriptions names."""
        return _LAST_FIELDS.get(self, ProbeField.NAME)

    @property
    def desc(self) -> str:
        """dtrace's word for such a source in its "matched N probes" notice."""
        return "script" if self is SourceKind.SCRIPT else "description"


_LAST_FIELDS = {
    SourceKind.PROVIDER: ProbeField.PROVIDER,
    SourceKind.MODULE: ProbeField.MODULE,
    SourceKind.FUNCTION: ProbeField.FUNCTION,
}


@dataclass(frozen=True, slots=True)
class Source:
    """One command-line program: an option's argument, or a script's text and path.

    *name* is the argument as given (it is cropped for messages here) or the
    script's path.
    """

    kind: SourceKind
    text: str
    name: str

    @property
    def display_name(self) -> str:
        """The name dtrace shows: an argument up to its first ``{``, ``/`` or ``;``."""
        if self.kind is SourceKind.SCRIPT:
            return self.name
        cut = [i for i in map(self.name.find, "{/;") if i >= 0]
        return self.name[: min(cut)] if cut else self.name

    @property
    def origin(self) -> Origin:
        """How dtrace heads an error in this source."""
        if self.kind is SourceKind.SCRIPT:
            return Origin(f"failed to compile script {self.name}", numbered=True)
        return Origin(f"invalid probe specifier {self.text}", numbered=False)

    def unit(self) -> Unit:
        """The compiler's view: this source's description rules, and ``$0`` for a script."""
        if self.kind is SourceKind.SCRIPT:
            return Unit(self.text, from_file=True, macros={"0": self.name})
        return Unit(self.text, last=self.kind.last_field, pspec=True)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What one source contributed: the indexes of its clauses in the program."""

    kind: SourceKind
    name: str  # Source.display_name
    desc: str  # "description" or "script"
    clauses: tuple[int, ...]


@dataclass(frozen=True)
class CompiledSet:
    """Every command-line program compiled into one :class:`Program`."""

    program: Program
    sources: tuple[SourceInfo, ...]
    _given: tuple[Source, ...] = field(repr=False, compare=False)

    def source_of(self, clause: int) -> SourceInfo:
        """The source clause *clause* came from."""
        return self.sources[self._index_of(clause)]

    def unmatched(self, clause: int, description: ProbeDescription) -> DCompileError:
        """dtrace's error for *description* of *clause* matching no probe (its ``-Z`` is off).

        Worded and placed as dtrace's: ``invalid probe specifier ARG: probe
        description P:M:F:N does not match any probes``, or a script's line.
        """
        c = self.program.clauses[clause]
        pos = c.description_pos[c.descriptions.index(description)]
        src = self._given[self._index_of(clause)]
        return DCompileError(
            f"probe description {description} does not match any probes",
            pos,
            src.text,
            origin=src.origin,
        )

    def _index_of(self, clause: int) -> int:
        for i, info in enumerate(self.sources):
            if clause in info.clauses:
                return i
        raise IndexError(f"no clause {clause}")


def compile_sources(
    sources: Sequence[Source],
    *,
    macros: Mapping[str, str | int] | None = None,
    options: Mapping[str, str | None] | None = None,
    probe_by_id: ProbeLookup | None = None,
) -> CompiledSet:
    """Compile command-line programs, in order, into one program, as dtrace does.

    *macros* (``$target``, ``$1``...) and *options* (``-x``) are those of
    :func:`~dtproc.d.program.compile_program`; a script's ``$0`` is its path.
    *probe_by_id* resolves integer probe ids (``-i 42``); without it only
    BEGIN (1), END (2) and ERROR (3) are known. Raises
    :class:`~dtproc.d.errors.DCompileError` worded as dtrace's, the position
    relative to the source at fault.
    """
    for name, value in (options or {}).items():
        problem = option_problem(name, value)
        if problem is not None:
            raise DCompileError(problem, origin=Origin(f"failed to set -x {name}", numbered=False))
    given = tuple(sources)
    program, spans = compile_units(
        [s.unit() for s in given],
        macros=macros,
        options=options,
        probe_by_id=probe_by_id,
        locate=lambda i, exc: exc.located(given[i].origin, given[i].text),
    )
    infos = tuple(
        SourceInfo(s.kind, s.display_name, s.kind.desc, tuple(span))
        for s, span in zip(given, spans, strict=True)
    )
    return CompiledSet(program, infos, given)
