"""The D language subset of dtproc, and dtrace's output formats.

Layer 5, pure Python: no ptrace here. The probe backends turn hits into
:class:`ProbeContext` objects and call :meth:`Runtime.fire`; this package
does the rest, as dtrace would::

    program = compile_program('pid$target::malloc:entry { @[ustack()] = count(); }',
                              macros={"target": 1234})
    rt = Runtime(program, sys.stdout, symbolize=lookup)
    rt.begin()
    ... rt.fire(0, ctx) per hit, or rt.add_counts(0, probe, n) for pure-count clauses ...
    rt.end()

dtrace's command line compiles several ``-n``/``-P``/``-m``/``-f``/``-i``
arguments and ``-s`` scripts into one program: see :func:`compile_sources`.
"""

from __future__ import annotations

from dtproc.d.errors import DCompileError, Pos
from dtproc.d.output import OutputFormat
from dtproc.d.probedesc import ProbeDescription, ProbeField
from dtproc.d.program import Clause, ClauseNeeds, Options, Program, compile_program
from dtproc.d.runtime import Runtime, local_context
from dtproc.d.sources import CompiledSet, Source, SourceInfo, SourceKind, compile_sources
from dtproc.d.values import (
    BEGIN_PROBE,
    END_PROBE,
    ERROR_PROBE,
    MemoryFault,
    ProbeContext,
    ProbeInfo,
    StackValue,
    StaticContext,
    SymAddr,
    Symbolizer,
    SymKind,
)

__all__ = [
    "BEGIN_PROBE",
    "END_PROBE",
    "ERROR_PROBE",
    "Clause",
    "ClauseNeeds",
    "CompiledSet",
    "DCompileError",
    "MemoryFault",
    "Options",
    "OutputFormat",
    "Pos",
    "ProbeContext",
    "ProbeDescription",
    "ProbeField",
    "ProbeInfo",
    "Program",
    "Runtime",
    "Source",
    "SourceInfo",
    "SourceKind",
    "StackValue",
    "StaticContext",
    "SymAddr",
    "SymKind",
    "Symbolizer",
    "compile_program",
    "compile_sources",
    "local_context",
]
