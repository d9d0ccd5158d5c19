"""The ``dtproc`` command: dtrace's command line for user space on Linux.

    dtproc [-c CMD | -p PID]... (-n PROGRAM | -s FILE | -P/-m/-f/-i SPEC)... [-q] [-o FILE]
           [-x OPTION[=VALUE]]... [-l] [-Z] [-v] [--format dtrace|json|folded|speedscope] [ARG...]

As dtrace: processes are created or grabbed first, the programs are compiled
with ``$target`` set, "description '...' matched N probes" notices go to
stderr (not with -q), tracing ends when every -c/-p process has exited, at
``exit()``, or at Ctrl-C / SIGTERM, and the aggregations are printed then.
Errors print one line (``dtproc: ...``) and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn, TextIO

from dtproc import __version__
from dtproc.d import DCompileError, OutputFormat
from dtproc.d.sources import CompiledSet, Source, SourceKind, compile_sources
from dtproc.errors import DtprocError
from dtproc.probes.session import Session, SessionOptions, SourceMatches
from dtproc.rendezvous import StopPoint

E_SUCCESS = 0
E_ERROR = 1
E_USAGE = 2
PROG = "dtproc"

# -x options the command itself consumes (the rest go to the D compiler).
_COMMAND_OPTIONS = ("backend", "evaltime")
_BACKENDS = ("auto", "ptrace", "uprobe")


class UsageError(Exception):
    pass


@dataclass
class Request:
    """What the command line asked for."""

    commands: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    quiet: bool = False
    output_file: str | None = None
    options: dict[str, str | None] = field(default_factory=dict)
    list_only: bool = False
    zero_ok: bool = False
    verbose: bool = False
    fmt: OutputFormat = OutputFormat.DTRACE
    args: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.options.get("backend") or "auto"

    @property
    def evaltime(self) -> StopPoint:
        return StopPoint.parse(self.options.get("evaltime") or "postinit")


class _ProgramAction(argparse.Action):
    """Keep -n/-s/-P/-m/-f/-i in command-line order, as dtrace compiles them."""

    KINDS = {
        "-n": SourceKind.NAME,
        "-P": SourceKind.PROVIDER,
        "-m": SourceKind.MODULE,
        "-f": SourceKind.FUNCTION,
        "-i": SourceKind.ID,
        "-s": SourceKind.SCRIPT,
    }

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        programs = getattr(namespace, "programs", None) or []
        programs.append((self.KINDS[option_string or "-n"], str(values)))
        namespace.programs = programs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="DTrace-style tracing of user-space processes on Linux "
        "(pid provider, USDT; ptrace and uprobe backends).",
        epilog="Example: dtproc -n 'pid$target::malloc:entry { @[ustack()] = count(); }' "
        "-c 'ls -l /usr/bin'",
    )
    p.add_argument(
        "-c",
        dest="commands",
        action="append",
        default=[],
        metavar="CMD",
        help="run CMD under control and trace it; tracing ends when it exits",
    )
    p.add_argument(
        "-p",
        dest="pids",
        action="append",
        default=[],
        metavar="PID",
        help="grab process PID and trace it; tracing ends when it exits",
    )
    for flag, what in (
        ("-n", "a probe specifier: [[[provider:]module:]function:]name [/predicate/] [{actions}]"),
        ("-s", "a D script file"),
        ("-P", "probes of a provider"),
        ("-m", "probes of a module"),
        ("-f", "probes of a function"),
        ("-i", "a probe id or description"),
    ):
        p.add_argument(
            flag, action=_ProgramAction, metavar="SPEC" if flag != "-s" else "FILE", help=what
        )
    p.add_argument(
        "-q", dest="quiet", action="store_true", help="quiet: only what the program prints"
    )
    p.add_argument("-o", dest="output", metavar="FILE", help="append the output to FILE")
    p.add_argument(
        "-x",
        dest="xopts",
        action="append",
        default=[],
        metavar="OPT[=VAL]",
        help="set an option (ustackframes=N, quiet, aggsortkey, ..., "
        "backend=auto|ptrace|uprobe, evaltime=exec|preinit|postinit|main)",
    )
    p.add_argument(
        "-l",
        dest="list_only",
        action="store_true",
        help="list the matching probes instead of tracing",
    )
    p.add_argument(
        "-Z",
        dest="zero_ok",
        action="store_true",
        help="permit probe descriptions that match no probes",
    )
    p.add_argument("-v", dest="verbose", action="store_true", help="verbose: say more")
    p.add_argument(
        "-w",
        dest="destructive",
        action="store_true",
        help="accepted for compatibility (dtproc has no destructive actions)",
    )
    p.add_argument(
        "-V", "--version", dest="version", action="store_true", help="print the version and exit"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        default="dtrace",
        choices=[f.value for f in OutputFormat],
        help="output format (default: dtrace's text)",
    )
    p.add_argument("args", nargs="*", help="macro arguments $1, $2, ...")
    return p


def parse(argv: Sequence[str]) -> Request | None:
    """The request, or None for --version (already printed)."""
    parser = _Parser(build_parser())
    ns = parser.parse(argv)
    if ns.version:
        print(f"{PROG}: {__version__} (D subset of the Dynamic Tracing Guide)")
        return None
    req = Request(
        commands=list(ns.commands),
        quiet=ns.quiet,
        output_file=ns.output,
        list_only=ns.list_only,
        zero_ok=ns.zero_ok,
        verbose=ns.verbose,
        fmt=OutputFormat(ns.fmt),
        args=list(ns.args),
    )
    for text in ns.pids:
        try:
            req.pids.append(int(text, 10))
        except ValueError:
            raise UsageError(f"invalid pid: {text}") from None
    for opt in ns.xopts:
        name, eq, value = opt.partition("=")
        req.options[name] = value if eq else None
    if req.backend not in _BACKENDS:
        raise UsageError(f"invalid backend '{req.backend}': use auto, ptrace or uprobe")
    if req.quiet:
        req.options["quiet"] = None
    for kind, text in getattr(ns, "programs", None) or []:
        req.sources.append(_source(kind, text))
    if not req.sources and not req.list_only:
        raise UsageError("no program: give one with -n, -s, -P, -m, -f or -i")
    return req


def _source(kind: SourceKind, text: str) -> Source:
    if kind is SourceKind.SCRIPT:
        try:
            with open(text) as f:
                return Source(kind, f.read(), text)
        except OSError as exc:
            raise DtprocError(f"failed to open {text}: {exc.strerror}") from None
    return Source(kind, text, text)


class _Parser:
    """argparse, with dtrace's exit statuses for usage errors."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        try:
            return self.parser.parse_args(list(argv))
        except SystemExit as exc:
            if exc.code in (0, None):
                raise
            raise UsageError("") from None


# ---------------------------------------------------------------------- running
def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns (and exits with) dtrace's exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        req = parse(argv)
    except UsageError as exc:
        if str(exc):
            print(f"{PROG}: {exc}", file=sys.stderr)
            build_parser().print_usage(sys.stderr)
        return E_USAGE
    except DtprocError as exc:
        return _fail(exc)
    if req is None:
        return E_SUCCESS
    try:
        with _output(req.output_file) as out:
            return run(req, out, sys.stderr)
    except DtprocError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return E_ERROR


def _fail(exc: BaseException) -> int:
    print(f"{PROG}: {exc}", file=sys.stderr)
    return E_ERROR


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
        yield sys.stdout
        return
    try:
        f = open(path, "a", errors="surrogateescape")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DtprocError(f"failed to open output file '{path}': {exc.strerror}") from None
    with f:
        yield f


def run(req: Request, out: TextIO, err: TextIO) -> int:
    """Everything after parsing; raises DtprocError for what the user must fix."""
    options = SessionOptions(
        quiet=req.quiet or "quiet" in req.options,
        output=req.fmt,
        backend=req.backend,
        zero_ok=req.zero_ok or req.list_only,
        verbose=req.verbose,
        evaltime=req.evaltime,
        program_name=PROG,
    )
    session = Session(options, out=out, err=err)
    with _signals(session), contextlib.closing(_Closer(session)):
        for cmd in req.commands:
            session.create(cmd)
        for pid in req.pids:
            session.grab(pid)
        compiled = _compile(req, session)
        if req.list_only:
            return _list(session, compiled, out)
        session.use(compiled.program, _matches(compiled), compiled.unmatched)
        sources = session.enable()
        for src in sources:
            session.notice(
                f"{src.desc} '{src.name}' matched {src.matched} probe"
                f"{'' if src.matched == 1 else 's'}"
            )
        if not any(s.matched for s in sources) and not session.pending and not options.zero_ok:
            raise DtprocError("no probes matched")
        session.go()
        session.wait()
        if session.interrupted == 1 and req.fmt is OutputFormat.DTRACE:
            out.write("\n")
        session.stop()
        status = session.finish()
        out.flush()
        return status


class _Closer:
    def __init__(self, session: Session) -> None:
        self.session = session

    def close(self) -> None:
        self.session.close()


def _compile(req: Request, session: Session) -> CompiledSet:
    macros: dict[str, str | int] = {str(i): a for i, a in enumerate(req.args, start=1)}
    macros["0"] = PROG
    if session.target is not None:
        macros["target"] = session.target
    d_options = {k: v for k, v in req.options.items() if k not in _COMMAND_OPTIONS}
    try:
        return compile_sources(req.sources, macros=macros, options=d_options)
    except DCompileError as exc:
        # dtrace's one line; -v adds where in the text, with the line and a caret.
        raise DtprocError(str(exc) if req.verbose else exc.headline) from None


def _matches(compiled: CompiledSet) -> list[SourceMatches]:
    return [SourceMatches(info.desc, info.name, tuple(info.clauses)) for info in compiled.sources]


def _list(session: Session, compiled: CompiledSet, out: TextIO) -> int:
    """dtrace -l's table (USDT probes with their argument counts), then the backends."""
    session.use(compiled.program, _matches(compiled), compiled.unmatched)
    out.write(f"{'ID':>5} {'PROVIDER':>10} {'MODULE':>17} {'FUNCTION':>33} NAME\n")
    sites = session.list_probes()
    for site in sites:
        i = site.info
        extra = f" ({len(site.usdt_args)} args)" if site.usdt_args else ""
        out.write(f"{i.id:5d} {i.provider:>10} {i.module:>17} {i.function:>33} {i.name}{extra}\n")
    out.flush()
    for line in session.explain_backends():
        print(f"{PROG}: {line}", file=sys.stderr)
    return E_SUCCESS


@contextlib.contextmanager
def _signals(session: Session) -> Iterator[None]:
    """Ctrl-C and SIGTERM end tracing cleanly (the second one skips the aggregations)."""

    def handler(signo: int, frame: FrameType | None) -> None:
        session.interrupt()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def entry() -> NoReturn:
    sys.exit(main())
