"""Compiling D: syntax, macros, options, dtrace's error messages, and ClauseNeeds."""

from __future__ import annotations

import io

import pytest

from dtproc.d import (
    DCompileError,
    ProbeInfo,
    Runtime,
    compile_program,
)
from dtproc.errors import DtprocError
from test_d_helpers import ENTRY, hit, output, run


def error(src: str, **kw: object) -> DCompileError:
    with pytest.raises(DCompileError) as info:
        compile_program(src, **kw)  # type: ignore[arg-type]
    return info.value


def test_error_shows_line_column_source_and_caret() -> None:
    exc = error("BEGIN\n{\n\tx = 1 + ;\n}")
    assert isinstance(exc, DtprocError)
    assert str(exc) == (
        'failed to compile program: line 3, column 10: syntax error near ";"\n'
        "\tx = 1 + ;\n"
        "\t        ^"
    )


@pytest.mark.parametrize(
    ("src", "line", "col", "message"),
    [
        ("BEGIN { trace(x); }", 1, 15, "failed to resolve x: Unknown variable name"),
        ('BEGIN { x = "a" + 1; }', 1, 17, 'operands have incompatible types: "string" + "int"'),
        (
            "BEGIN { self->x++; trace(self->y); }",
            1,
            26,
            "self->y has not yet been declared or assigned",
        ),
        ("BEGIN { p -= 1; }", 1, 9, "p has not yet been declared or assigned"),
        (
            "BEGIN { @a = count(); @a = sum(1); }",
            1,
            26,
            "aggregation redefined: @a\n\t current: @a = sum( )\n"
            "\tprevious: @a = count( ) : line 1",
        ),
        ("BEGIN { @a = 1; }", 1, 12, "@a must be assigned the result of an aggregating function"),
        (
            "BEGIN { x = count(); }",
            1,
            13,
            "aggregating function count( ) may not be called from a D expression "
            "(D program context required)",
        ),
        (
            "BEGIN { x = trace(1); }",
            1,
            13,
            "tracing function trace( ) may not be called from a D expression "
            "(D program context required)",
        ),
        (
            'BEGIN { @a[1] = count(); @a["x"] = count(); }',
            1,
            29,
            "@a[ ] key #1 is incompatible with prototype:\n\tprototype: int\n\t      key: string",
        ),
        (
            "BEGIN { @a[1] = count(); @a[1, 2] = count(); }",
            1,
            26,
            "@a[ ] prototype mismatch: 2 keys passed, 1 expected",
        ),
        (
            'BEGIN { printf("%d", "s"); }',
            1,
            16,
            "printf( ) argument #2 is incompatible with conversion #1 prototype:\n"
            "\tconversion: %d\n\t prototype: char, short, int, long, or long long\n"
            "\t  argument: string",
        ),
        (
            'BEGIN { printf("%lld", 1); }',
            1,
            16,
            "printf( ) argument #2 is incompatible with conversion #1 prototype:\n"
            "\tconversion: %lld\n\t prototype: long long\n\t  argument: int",
        ),
        (
            'BEGIN { printf("%s %d", "a"); }',
            1,
            16,
            "printf( ) prototype mismatch: conversion #2 (%d) is missing a corresponding "
            "value argument",
        ),
        (
            'BEGIN { printf("%d", 1, 2); }',
            1,
            16,
            "printf( ) prototype mismatch: only 1 arguments required by this format string",
        ),
        ('BEGIN { printf("%q", 1); }', 1, 16, "format conversion #1 is undefined: %q"),
        (
            'BEGIN { printf("%@d", 1); }',
            1,
            16,
            "%@ conversion requires an aggregation and is not for use with printf( )",
        ),
        (
            "BEGIN { printf(); }",
            1,
            9,
            "printf( ) prototype mismatch: 0 args passed, at least 1 expected",
        ),
        ("BEGIN { trace(); }", 1, 9, "trace( ) prototype mismatch: 0 args passed, 1 expected"),
        (
            "BEGIN { strlen(1); }",
            1,
            16,
            "strlen( ) argument #1 is incompatible with prototype:\n\tprototype: const char *\n"
            "\t argument: int",
        ),
        (
            "BEGIN { substr(); }",
            1,
            9,
            "substr( ) prototype mismatch: 0 args passed, at least 2 expected",
        ),
        ("BEGIN { frobnicate(); }", 1, 9, "undefined function name: frobnicate"),
        ("BEGIN { printa(@nope); }", 1, 16, "undefined aggregation: @nope"),
        (
            'BEGIN { exit("x"); }',
            1,
            14,
            "exit( ) argument #1 is incompatible with prototype:\n\tprototype: int\n"
            "\t argument: string",
        ),
        (
            "BEGIN { @ = lquantize(1, 10, 0); }",
            1,
            13,
            "lquantize( ) base (argument #1) must be less than limit (argument #2)",
        ),
        (
            "BEGIN { @ = lquantize(1, 0, 10, 1); @ = lquantize(2, 0, 20, 1); }",
            1,
            41,
            "lquantize( ) limit (argument #2) doesn't match previous declaration: "
            "expected 10, found 20",
        ),
        ('BEGIN { @ = sum("s"); }', 1, 17, "sum( ) argument #1 must be of scalar type"),
        ("BEGIN { x = 1 / 0; }", 1, 15, "expression contains division by zero"),
        ("BEGIN { x = 123/(7-7); }", 1, 16, "expression contains division by zero"),
        ("BEGIN { x = 1.5; }", 1, 13, "floating-point constants are not permitted"),
        ("BEGIN { x = 09; }", 1, 13, "constant 09 contains invalid digit 9"),
        ("BEGIN { x = 'ab\n'; }", 1, 13, "newline encountered in character constant"),
        ("BEGIN { trace(1)); }", 1, 17, "extra ) in input stream"),
        ("BEGIN /(1/ { }", 1, 10, "closing ) expected in predicate before /"),
        ("BEGIN /1/", 1, 8, "expected actions { } following probe description and predicate"),
        ("BEGIN { x = $1; }", 1, 13, "macro argument $1 is not defined"),
        (
            "pid$nope:::entry { }",
            1,
            1,
            'invalid probe description "pid$nope:::entry": '
            "Undefined macro variable in probe description",
        ),
        (
            "a:b:c:d:e { }",
            1,
            1,
            'invalid probe description "a:b:c:d:e": Overspecified probe description',
        ),
        ('BEGIN { x = 1 ? 2 : "a"; }', 1, 13, "operator ?: operands must have compatible types"),
        (
            "BEGIN { x = 1 ? trace(1) : 2; }",
            1,
            13,
            "action cannot be used in a conditional context",
        ),
        (
            "BEGIN { trace(stringof(trace(0))); }",
            1,
            15,
            "cannot apply stringof to a value of type void",
        ),
        ("BEGIN { x = (string)@a; }", 1, 13, 'invalid cast expression: "aggregation" to "string"'),
        (
            "#pragma D option nosuch\nBEGIN { }",
            1,
            1,
            "failed to set option 'nosuch': Invalid option name",
        ),
        (
            "#pragma D option strsize=big\nBEGIN { }",
            1,
            1,
            "failed to set option 'strsize' to 'big': Invalid value for specified option",
        ),
        ("#include <stdio.h>\nBEGIN { }", 1, 1, "invalid control directive: #include"),
        ("\n/* nothing */\n", 3, 1, "empty D program translation unit"),
    ],
)
def test_dtrace_error_messages(src: str, line: int, col: int, message: str) -> None:
    exc = error(src)
    assert exc.detail == message
    assert exc.pos is not None and (exc.pos.line, exc.pos.col) == (line, col)


def test_predicate_may_create_what_actions_use() -> None:
    # dtrace checks actions first, then retries with the predicate first.
    out = output("#pragma D option quiet\nBEGIN /(x = 5) == 5/ { trace(x); }")
    assert out == "5\n"


def test_variables_must_be_assigned_earlier_in_program_order() -> None:
    assert "failed to resolve y" in str(error("BEGIN { trace(y); } BEGIN { y = 1; }"))
    assert output("#pragma D option quiet\nBEGIN { y = 1; } BEGIN { trace(y); }") == "1\n"


def test_declarations_type_variables() -> None:
    src = """
    #pragma D option quiet
    this long long v;
    self int n;
    string s;
    BEGIN {
        this->v = 1LL << 40; self->n = 7; s = "str";
        printf("%lld %d %s", this->v, self->n, s);
    }
    """
    assert output(src) == "1099511627776 7 str\n"


def test_comments_both_styles_and_multiline_programs() -> None:
    src = """
    /* C comment */
    #pragma D option quiet
    BEGIN // C++ comment
    {
        printf("%d\\n", 1 /* inline */ + 2);   // trailing
    }
    """
    assert output(src) == "3\n\n"


def test_last_statement_may_omit_semicolon_and_if_else() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        x = 3;
        if (x > 2) { printf("big"); } else printf("small");
        if (x > 5) printf("!");
        printf("\\n")
    }
    """
    assert output(src) == "big\n\n"


def test_macros_in_descriptions_and_expressions() -> None:
    program = compile_program(
        'pid$target:a.out:$2:entry /pid == $target/ { printf("%s %d %s", $$1, $3, $$2); }',
        macros={"target": 4321, "1": "one", "2": "main", "3": "7"},
    )
    (clause,) = program.clauses
    (d,) = clause.descriptions
    assert (d.provider, d.module, d.function, d.name) == ("pid4321", "a.out", "main", "entry")


def test_multiple_descriptions_and_globs() -> None:
    program = compile_program("pid1:libc*:mall?c:entry, pid1::free:entry { }")
    clause = program.clauses[0]
    assert clause.matches(ProbeInfo(5, "pid1", "libc.so.6", "malloc", "entry"))
    assert clause.matches(ProbeInfo(6, "pid1", "libc.so.6", "free", "entry"))
    assert not clause.matches(ProbeInfo(7, "pid1", "libc.so.6", "free", "return"))
    assert not program.has_begin and not program.has_end


def test_options_from_pragmas_and_command_line() -> None:
    program = compile_program(
        "#pragma D option bufsize=4m\n#pragma D option ustackframes=20\nBEGIN { }",
        options={"quiet": None},
    )
    assert program.options.quiet
    assert program.options.ustackframes == 20
    assert program.options.values["bufsize"] == "4m"
    with pytest.raises(DCompileError, match="Invalid option name"):
        compile_program("BEGIN { }", options={"nope": "1"})


def test_clause_needs_describe_what_a_hit_must_provide() -> None:
    program = compile_program(
        """
        pid$target::malloc:entry { @[probefunc] = count(); }
        pid$target::malloc:entry /probename == "entry"/ { @m["x", probemod] = count(); }
        pid$target::malloc:entry { self->ts = timestamp; @s = sum(arg1); }
        pid$target::malloc:return /self->ts/ { @t[ustack(5)] = count(); self->ts = 0; }
        pid$target::malloc:entry { printf("%s", copyinstr(arg0)); exit(0); }
        pid$target::malloc:entry /arg0 > 10/ { @c = count(); }
        pid$target::malloc:entry { }
        pid$target::malloc:entry { trace(walltimestamp + cpu); this->x = execname; }
        """,
        macros={"target": 1},
    )
    needs = [c.needs for c in program.clauses]
    assert [n.pure_count for n in needs] == [True, True, False, False, False, False, False, False]
    assert needs[2].args == {1} and needs[2].thread_locals and needs[2].tid
    assert needs[2].timestamp and not needs[2].output
    assert needs[3].ustack_depth == 5 and needs[3].thread_locals
    assert needs[4].memory and needs[4].output and needs[4].exit and needs[4].args == {0}
    assert needs[5].args == {0}
    assert needs[6].output  # an empty clause prints the probe line
    assert needs[7].walltimestamp and needs[7].cpu and needs[7].execname
    assert needs[7].clause_locals and not needs[7].globals


def test_add_counts_matches_firing() -> None:
    src = """
    pid$target::malloc:entry, pid$target::free:entry { @[probefunc, probename] = count(); }
    pid$target::free:entry /probefunc == "free"/ { @f = count(); }
    """
    malloc = ProbeInfo(10, "pid1234", "libc.so.6", "malloc", "entry")
    free = ProbeInfo(11, "pid1234", "libc.so.6", "free", "entry")
    fired = run(src, hits=[hit(malloc)] * 3 + [hit(free)] * 2).out

    program = compile_program(src, macros={"target": 1234})
    out = io.StringIO()
    rt = Runtime(program, out)
    rt.add_counts(0, malloc, 3)
    rt.add_counts(0, free, 2)
    rt.add_counts(1, free, 2)
    rt.add_counts(1, malloc, 5)  # predicate is false for malloc
    rt.end()
    assert out.getvalue() == fired
    with pytest.raises(ValueError, match="not a pure-count"):
        Runtime(compile_program("BEGIN { x = 1; }"), io.StringIO()).add_counts(0, ENTRY, 1)
