"""Several command-line programs (-n, -P, -m, -f, -i, -s) compiled into one, as dtrace does."""

from __future__ import annotations

import pytest

from dtproc.d import (
    BEGIN_PROBE,
    DCompileError,
    ProbeInfo,
    Source,
    SourceKind,
    compile_sources,
)
from dtproc.d.sources import CompiledSet
from dtproc.errors import DtprocError
from test_d_helpers import ENTRY, hit, run_program

N, P, M, F, ID, S = (
    SourceKind.NAME,
    SourceKind.PROVIDER,
    SourceKind.MODULE,
    SourceKind.FUNCTION,
    SourceKind.ID,
    SourceKind.SCRIPT,
)
HEADER = "CPU     ID                    FUNCTION:NAME\n"


def arg(kind: SourceKind, text: str) -> Source:
    """A source given on the command line, named by its whole argument as the CLI does."""
    return Source(kind, text, text)


def script(text: str, path: str = "t.d") -> Source:
    return Source(S, text, path)


def build(*sources: Source, **kw: object) -> CompiledSet:
    kw.setdefault("macros", {"target": 1234})
    return compile_sources(sources, **kw)  # type: ignore[arg-type]


def error(*sources: Source, **kw: object) -> str:
    with pytest.raises(DCompileError) as info:
        build(*sources, **kw)
    assert isinstance(info.value, DtprocError)
    return str(info.value)


def out(*sources: Source, **kw: object) -> str:
    return run_program(build(*sources).program, **kw).out  # type: ignore[arg-type]


# -- one consumer: shared names, one program order ----------------------------------------


def test_aggregations_with_one_name_in_two_sources_are_one_aggregation() -> None:
    assert out(arg(N, "BEGIN{@a=count()}"), arg(N, "END{@a=count()}")) == "\n                2\n"


def test_globals_and_their_types_carry_over_to_later_sources() -> None:
    sources = (arg(N, "BEGIN{x = 41}"), arg(N, 'END{printf("%d", x + 1)}'))
    assert out(*sources) == HEADER + f"{'  0      2                             :END '}42\n\n"
    message = error(arg(N, 'BEGIN{s = "str"}'), arg(N, "END{s = 1}"))
    assert message.startswith(
        "invalid probe specifier END{s = 1}: in action list: operands have incompatible types"
    )


def test_begin_and_end_run_in_program_order_across_all_sources() -> None:
    cs = build(
        arg(N, 'END{printf("a")}'),
        script('BEGIN\n{\n\tprintf("b");\n}\nEND { printf("c"); }\n'),
        arg(N, 'BEGIN{printf("d")}'),
        options={"quiet": None},
    )
    assert [s.clauses for s in cs.sources] == [(0,), (1, 2), (3,)]
    assert [c.index for c in cs.program.clauses] == [0, 1, 2, 3]
    assert run_program(cs.program).out == "bdac\n"
    assert cs.source_of(2) is cs.sources[1]


def test_options_from_any_script_apply_to_all_sources() -> None:
    cs = build(arg(N, "BEGIN{trace(1)}"), script("#pragma D option quiet\nEND{}\n"))
    assert cs.program.options.quiet
    assert run_program(cs.program).out == "1\n"
    later = build(script("#pragma D option strsize=16\nBEGIN{}"), options={"strsize": "8"})
    assert later.program.options.strsize == 16  # pragmas after -x, as in dtrace


def test_no_sources_is_an_empty_program() -> None:
    cs = build()
    assert cs.sources == () and cs.program.clauses == ()


# -- probe-specifier rules of each option ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "fields"),
    [
        (P, "pid$target", ("pid1234", "", "", "")),
        (P, "pid*{ trace(1); }", ("pid*", "", "", "")),
        (M, "libc.so.6", ("", "libc.so.6", "", "")),
        (M, "pid1:a.out", ("pid1", "a.out", "", "")),
        (F, "malloc", ("", "", "malloc", "")),
        (F, "libc*:malloc", ("", "libc*", "malloc", "")),
        (F, "pid$target:libc.so.6:malloc /arg0/ { }", ("pid1234", "libc.so.6", "malloc", "")),
        (N, "entry", ("", "", "", "entry")),
        (N, "pid$target::malloc:entry", ("pid1234", "", "malloc", "entry")),
        (ID, "BEGIN", ("", "", "", "BEGIN")),
        (ID, "2", ("dtrace", "", "", "END")),
        (N, "1", ("dtrace", "", "", "BEGIN")),  # dtrace takes a probe id in any -n too
        (N, "uint64_t", ("", "", "", "uint64_t")),  # a description, not a type, in -n
    ],
)
def test_each_option_aligns_descriptions_on_its_field(
    kind: SourceKind, text: str, fields: tuple[str, str, str, str]
) -> None:
    (clause,) = build(arg(kind, text)).program.clauses
    assert [d.fields for d in clause.descriptions] == [fields]


def test_every_description_of_a_clause_follows_the_option() -> None:
    (clause,) = build(arg(F, "malloc,libc.so.6:free")).program.clauses
    assert [d.fields for d in clause.descriptions] == [
        ("", "", "malloc", ""),
        ("", "libc.so.6", "free", ""),
    ]


@pytest.mark.parametrize(
    ("kind", "text"),
    [(P, "a:b"), (M, "a:b:c"), (F, "a:b:c:d"), (N, "a:b:c:d:e"), (ID, "a:b:c:d:e")],
)
def test_too_many_fields_for_the_option_is_overspecified(kind: SourceKind, text: str) -> None:
    assert error(arg(kind, text)) == (
        f"invalid probe specifier {text}: invalid probe description "
        f'"{text}": Overspecified probe description\n'
        "line 1, column 1:\n"
        f"{text}\n"
        "^"
    )


def test_probe_ids_resolve_through_the_lookup_given() -> None:
    probes = {ENTRY.id: ENTRY}
    cs = build(arg(ID, f"{ENTRY.id}"), probe_by_id=probes.get)
    (clause,) = cs.program.clauses
    assert clause.matches(ENTRY)
    assert not clause.matches(ProbeInfo(1, ENTRY.provider, "a.out", "main", "return"))
    assert run_program(cs.program, hits=[hit(ENTRY)]).out == (
        HEADER + "  0  48000                       main:entry \n\n"
    )


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (ID, "77", "invalid probe identifier 77: Unknown probe identifier"),
        (ID, "4294967296", "identifier 4294967296 exceeds maximum probe id"),
        (P, "1", "probe identifier 1 not permitted when specifying providers"),
        (M, "1", "probe identifier 1 not permitted when specifying modules"),
        (F, "1 { }", "probe identifier 1 not permitted when specifying functions"),
    ],
)
def test_bad_probe_ids(kind: SourceKind, text: str, message: str) -> None:
    assert error(arg(kind, text)).split("\n")[0] == f"invalid probe specifier {text}: {message}"


def test_a_description_alone_takes_the_default_action() -> None:
    cs = build(arg(N, "BEGIN"), arg(N, "END"), arg(N, "pid$target::main:entry"))
    assert all(c.no_actions for c in cs.program.clauses)
    assert run_program(cs.program, hits=[hit(ENTRY)]).out == (
        HEADER
        + "  0      1                           :BEGIN \n"
        + "  0  48000                       main:entry \n"
        + "  0      2                             :END \n\n"
    )


def test_a_script_needs_a_predicate_or_actions_after_each_description() -> None:
    assert error(script("BEGIN { }\n\nEND\n")) == (
        "failed to compile script t.d: line 3: "
        "expected predicate and/or actions following probe description\n"
        "line 3, column 1:\n"
        "END\n"
        "^"
    )


def test_a_script_may_declare_with_type_names() -> None:
    cs = build(script("uint64_t x;\nBEGIN { x = 1; }"))
    assert len(cs.program.clauses) == 1


def test_a_scripts_dollar_zero_is_its_path() -> None:
    cs = build(script('BEGIN { printf("%s", $$0); }', "/tmp/x.d"), options={"quiet": None})
    assert run_program(cs.program).out == "/tmp/x.d\n"


# -- names and errors in dtrace's words -----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "desc"),
    [
        (arg(N, "BEGIN { x = 1; }"), "BEGIN ", "description"),
        (arg(N, "pid$target::malloc:entry/arg0/{}"), "pid$target::malloc:entry", "description"),
        (arg(P, "pid$target{x=1;}"), "pid$target", "description"),
        (arg(ID, "BEGIN"), "BEGIN", "description"),
        (script("BEGIN { }", "dir/x.d"), "dir/x.d", "script"),
    ],
)
def test_sources_are_named_as_dtrace_names_them(source: Source, name: str, desc: str) -> None:
    (info,) = build(source).sources
    assert (info.name, info.desc, info.kind) == (name, desc, source.kind)
    assert source.display_name == name


def test_an_argument_error_names_the_whole_argument_and_the_region() -> None:
    assert error(arg(N, "BEGIN { trace(x); }")) == (
        "invalid probe specifier BEGIN { trace(x); }: in action list: "
        "failed to resolve x: Unknown variable name\n"
        "line 1, column 15:\n"
        "BEGIN { trace(x); }\n"
        "              ^"
    )
    predicate = error(arg(N, "BEGIN /y/ { }")).split("\n")[0]
    assert predicate == (
        "invalid probe specifier BEGIN /y/ { }: in predicate: "
        "failed to resolve y: Unknown variable name"
    )
    syntax = error(arg(N, "BEGIN { x = ; }")).split("\n")[0]
    assert syntax == 'invalid probe specifier BEGIN { x = ; }: syntax error near ";"'


def test_a_script_error_names_the_path_and_line() -> None:
    assert error(script("BEGIN\n{\n\tx = 1 + ;\n}\n", "dir/t.d")) == (
        'failed to compile script dir/t.d: line 3: syntax error near ";"\n'
        "line 3, column 10:\n"
        "\tx = 1 + ;\n"
        "\t        ^"
    )


def test_error_positions_are_relative_to_their_own_source() -> None:
    first = script("BEGIN\n{\n\ty = 1;\n}\n", "a.d")
    message = error(first, arg(N, "END { z; }"), script("\n\nEND {\n  trace(q);\n}\n", "b.d"))
    assert message.startswith("invalid probe specifier END { z; }: in action list: ")
    assert "\nline 1, column 7:\nEND { z; }\n      ^" in message
    message = error(first, script("\n\nEND {\n  trace(q);\n}\n", "b.d"))
    assert message == (
        "failed to compile script b.d: line 4: failed to resolve q: Unknown variable name\n"
        "line 4, column 9:\n"
        "  trace(q);\n"
        "        ^"
    )


def test_pragma_and_option_errors_are_placed_too() -> None:
    assert error(script("BEGIN { }\n#pragma D option nosuch\n")).split("\n")[0] == (
        "failed to compile script t.d: line 2: failed to set option 'nosuch': Invalid option name"
    )
    assert error(arg(N, "BEGIN"), options={"bufsize": "lots"}) == (
        "failed to set -x bufsize: Invalid value for specified option"
    )


def test_an_empty_argument_is_an_empty_translation_unit() -> None:
    assert error(arg(N, "BEGIN"), arg(N, " ")).split("\n")[0] == (
        "invalid probe specifier  : empty D program translation unit"
    )


def test_unmatched_descriptions_get_dtraces_error_for_their_source() -> None:
    cs = build(
        arg(N, "BEGIN"),
        script("BEGIN { }\n\npid$target::nosuch:entry,\n  pid$target::other:entry { }\n"),
    )
    clause = cs.program.clauses[2]
    second = clause.descriptions[1]
    assert str(cs.unmatched(2, second)) == (
        "failed to compile script t.d: line 4: "
        "probe description pid1234::other:entry does not match any probes\n"
        "line 4, column 3:\n"
        "  pid$target::other:entry { }\n"
        "  ^"
    )
    begin = cs.program.clauses[0]
    assert begin.matches(BEGIN_PROBE)
    assert str(cs.unmatched(0, begin.descriptions[0])).split("\n")[0] == (
        "invalid probe specifier BEGIN: probe description :::BEGIN does not match any probes"
    )
