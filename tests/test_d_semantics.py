"""Expression semantics: C integer rules (checked against gcc), printf against libc,
strings, variables and subroutines."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtproc.d import compile_program
from dtproc.d.printf import c_int, c_str
from test_d_helpers import hit, output, run


def value(expr: str, decls: str = "") -> object:
    """The value D gives *expr* (assigned to a fresh variable)."""
    res = run(f"BEGIN {{ {decls} result = {expr}; }}")
    program = res.runtime.program
    assert res.err == ""
    slot = len(program.global_defaults) - 1
    return res.runtime.st.g[slot]


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("(char)300", 44),
        ("(unsigned char)-1", 255),
        ("(short)70000", 4464),
        ("(int)4294967295", -1),
        ("(unsigned)-1", 4294967295),
        ("-1 < 1u", 0),  # int converts to unsigned int
        ("-1 < 1", 1),
        ("-1L < 1u", 1),  # unsigned int converts to long
        ("-1 < 1ul", 0),
        ("1 << 63", 0),  # an int: 2**63 does not fit
        ("1LL << 63", -(1 << 63)),
        ("1ULL << 63", 1 << 63),
        ("-1 / 2u", 2147483647),  # unsigned division
        ("-7 / 2", -3),  # C truncates toward zero
        ("-7 % 2", -1),
        ("7 % -2", 1),
        ("-8 >> 1", -4),  # arithmetic shift of a signed value
        ("0x80000000 >> 1", 0x40000000),  # 0x80000000 is unsigned int
        ("2147483647 + 1", -2147483648),  # wraps in int
        ("9223372036854775807 + 1", -(1 << 63)),
        ("(char)100 + (char)100", 200),  # promoted to int
        ("~0u", 4294967295),
        ("!5", 0),
        ("3 > 2 ? 10 : 20", 10),
        ("1 ^^ 1", 0),
        ("0 || 2", 1),
        ("'a'", 97),
        ("'ab'", 0x6162),
        ("sizeof (int) + sizeof (long) + sizeof (char)", 13),
        ("sizeof (string)", 256),
        ("(1, 2)", 2),
    ],
)
def test_c_integer_semantics(expr: str, want: int) -> None:
    assert value(expr) == want


def test_runtime_arithmetic_matches_folding() -> None:
    # The same operations on variables (not constants) go through the compiled path.
    decls = "a = -1; b = 2u; c = (char)100; d = 1; e = 9223372036854775807;"
    assert value("a / b", decls) == 2147483647
    assert value("a < b", decls) == 0
    assert value("c + c", decls) == 200
    assert value("d << 63", decls) == 0
    assert value("e + d", decls) == -(1 << 63)


def test_division_by_zero_at_run_time_is_a_fault() -> None:
    res = run("BEGIN { a = 0; b = 10 % a; }")
    assert "divide-by-zero in action #2" in res.err


def test_arguments_are_int64_and_types_print_in_messages() -> None:
    out = output(
        "#pragma D option quiet\n"
        'pid$target::main:entry { printf("%d %u %x\\n", arg0, arg0, arg0); }',
        hits=[hit(args=(-2,))],
    )
    assert out == "-2 18446744073709551614 fffffffffffffffe\n\n"


def test_strings_compare_and_functions() -> None:
    out = output(
        r"""
        #pragma D option quiet
        BEGIN {
            s = "hello, world";
            printf("%d %d %d\n", s == "hello, world", "abc" < "abd", "b" > "abc");
            printf("%d|%s|%s|%s\n", strlen(s), strjoin(s, "!"), substr(s, 7), substr(s, -5, 3));
            p = "/usr/lib/libc.so";
            printf("%s|%s|%s\n", basename(p), dirname(p), dirname("x"));
            printf("%s|%s|%s\n", strchr(s, 'o'), strrchr(s, 'o'), strstr(s, "wor"));
            printf("%d %d %d\n", index(s, "o"), rindex(s, "o"), index(s, "zz"));
            printf("%s|%s|%s|%s\n", lltostr(-42), lltostr(255, 16), toupper(s), tolower("ABC"));
            printf("%d %d\n", strtoll("-123"), strtoll("ff", 16));
            exit(0);
        }
        """
    )
    assert out == (
        "1 1 1\n"
        "12|hello, world!|world|wor\n"
        "libc.so|/usr/lib|.\n"
        "o, world|orld|world\n"
        "4 8 -1\n"
        "-42|0xff|HELLO, WORLD|abc\n"
        "-123 255\n"
        "\n"
    )


def test_copyin_copyinstr_stringof_and_loads() -> None:
    mem = {0x1000: b"path/to/file\0junk", 0x2000: (0x12345678).to_bytes(4, "little")}
    out = output(
        r"""
        #pragma D option quiet
        pid$target::main:entry {
            this->buf = copyin(arg1, 4);
            printf("%s %s %x %d\n", copyinstr(arg0), stringof(copyin(arg0, 4)),
                *(uint32_t *)this->buf, *(unsigned char *)copyin(arg1, 1));
            printf("%s\n", copyinstr(arg0, 4));
        }
        """,
        hits=[hit(args=(0x1000, 0x2000), memory=mem)],
    )
    assert out == "path/to/file path 12345678 120\npath\n\n"


def test_thread_locals_are_per_thread_and_freed_by_zero() -> None:
    src = r"""
    #pragma D option quiet
    pid$target::main:entry { self->n++; printf("%d:%d ", tid, self->n); }
    pid$target::main:entry /arg0/ { self->n = 0; }
    """
    out = output(src, hits=[hit(tid=1), hit(tid=2), hit(tid=1, args=(1,)), hit(tid=1)])
    assert out == "1:1 2:1 1:2 1:1 \n"


def test_associative_arrays_and_clause_locals() -> None:
    src = r"""
    #pragma D option quiet
    pid$target::main:entry { ts[tid, "x"] = timestamp; this->v = 5; }
    pid$target::main:entry { printf("%d %d %d\n", ts[tid, "x"], ts[99, "x"], this->v); }
    """
    out = output(src, hits=[hit(tid=7, timestamp=123)])
    assert out == "123 0 5\n\n"


def test_clause_locals_reset_between_firings() -> None:
    src = r"""
    #pragma D option quiet
    pid$target::main:entry /arg0/ { this->v = 5; }
    pid$target::main:entry { printf("%d ", this->v); }
    """
    assert output(src, hits=[hit(args=(1,)), hit()]) == "5 0 \n"


# -- against gcc ------------------------------------------------------------------------

_TYPES = [
    ("char", "(char)"),
    ("unsigned char", "(unsigned char)"),
    ("short", "(short)"),
    ("int", ""),
    ("unsigned", "u"),
    ("long", "L"),
    ("unsigned long", "UL"),
]


def _literal(draw: st.DrawFn) -> str:
    n = draw(st.integers(0, (1 << 31) - 1) | st.sampled_from([0, 1, 255, 65535, 0x7FFFFFFF]))
    kind = draw(st.sampled_from(_TYPES))[1]
    if kind.startswith("("):
        return f"({kind}{n})"
    return f"{n}{kind}"


@st.composite
def _expression(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.integers(0, 3)) == 0:
        leaf = draw(st.sampled_from(["v0", "v1", "v2", "v3", "lit"]))
        return _literal(draw) if leaf == "lit" else leaf
    kind = draw(st.integers(0, 3))
    a = draw(_expression(depth + 1))
    if kind == 0:
        op = draw(st.sampled_from(["-", "~", "!"]))
        return f"({op}{a})"
    if kind == 1:
        cast = draw(st.sampled_from(_TYPES))[0]
        return f"(({cast}){a})"
    b = draw(_expression(depth + 1))
    if kind == 2:
        op = draw(st.sampled_from(["+", "-", "*", "&", "|", "^", "==", "<", ">=", "!=", "&&"]))
        return f"({a} {op} {b})"
    return f"({a} ? {b} : {a})"


_VARS = "int v0 = -7; unsigned v1 = 3000000000u; long v2 = -5000000000L; char v3 = -100;"


@pytest.fixture(scope="module")
def gcc_eval(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Evaluate C expressions with gcc -fwrapv (wrapping like D's normalized values)."""
    tmp = tmp_path_factory.mktemp("cexpr")

    def evaluate(exprs: list[str]) -> list[int]:
        body = "".join(f'    printf("%llu\\n", (unsigned long long)({e}));\n' for e in exprs)
        src = f"#include <stdio.h>\nint main(void) {{\n    {_VARS}\n{body}    return 0;\n}}\n"
        c = Path(tmp) / "e.c"
        exe = Path(tmp) / "e"
        c.write_text(src)
        subprocess.run(["gcc", "-w", "-fwrapv", "-o", str(exe), str(c)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    return evaluate


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_expression(), min_size=40, max_size=40))
def test_expressions_match_gcc(gcc_eval, exprs: list[str]) -> None:  # type: ignore[no-untyped-def]
    decls = "v0 = (int)-7; v1 = 3000000000u; v2 = -5000000000L; v3 = (char)-100;"
    body = " ".join(f"r{i} = {e};" for i, e in enumerate(exprs))
    program = compile_program(f"BEGIN {{ {decls} {body} }}")
    from dtproc.d import Runtime

    rt = Runtime(program, None)
    rt.begin()
    ours = [v & ((1 << 64) - 1) for v in rt.st.g[4:]]
    assert ours == gcc_eval(exprs)


# -- printf against libc -----------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def _snprintf(fmt: str, arg: int | bytes) -> str:
    buf = ctypes.create_string_buffer(512)
    c_arg = ctypes.c_char_p(arg) if isinstance(arg, bytes) else ctypes.c_longlong(arg)
    _libc.snprintf(buf, 512, fmt.encode(), c_arg)
    return buf.value.decode()


@settings(max_examples=400, deadline=None)
@given(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.sampled_from(list("diuxXo")),
    st.lists(st.sampled_from(list("#0-+ ")), max_size=3, unique=True),
    st.integers(0, 30),
    st.integers(0, 25),
)
def test_integer_conversions_match_libc(
    v: int, conv: str, flags: list[str], width: int, prec: int
) -> None:
    if conv not in "di":
        v &= (1 << 64) - 1
    flag_text = "".join(flags)
    spec = f"%{flag_text}{width or ''}{f'.{prec}' if prec else ''}ll{conv}"
    assert c_int(v, conv, flag_text, width, prec) == _snprintf(spec, v)


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    st.booleans(),
    st.integers(0, 30),
    st.integers(0, 25),
)
def test_string_conversion_matches_libc(s: str, left: bool, width: int, prec: int) -> None:
    flags = "-" if left else ""
    spec = f"%{flags}{width or ''}{f'.{prec}' if prec else ''}s"
    assert c_str(s, flags, width, prec) == _snprintf(spec, s.encode())


def test_printf_widening_and_flags_as_dtrace() -> None:
    # dtrace's own expected output (printf/tst.ints, tst.flags, tst.precs, tst.wp).
    out = output(
        r"""
        #pragma D option quiet
        BEGIN {
            printf("%d %d %d %d\n", (char)0x1234567890abcdef, (short)0x1234567890abcdef,
                (int)0x1234567890abcdef, (long long)0x1234567890abcdef);
            printf("%u %x %o\n", (char)0x1234567890abcdef, (short)0x1234567890abcdef,
                (int)0x1234567890abcdef);
            printf("%p %p\n", (void *)0x12345678, (uintptr_t)0x67890abc);
            printf("[%#8x][%08x][%-8x][%+8d][% 8d]\n", 0x123, 0x123, 0x123, 123, 123);
            printf("[%.0s][%.2s][%0.0s][%5.2s][%*.*s]\n", "hello", "hello", "hello", "hello",
                6, 3, "hello");
            printf("[%c][%5c][%hd][%hu][%ld][%lu][%lld][%%]\n", 'a', 'b', (short)-1,
                (unsigned short)65535, (long)-1, (unsigned long)1, (long long)2);
            exit(0);
        }
        """
    )
    assert out == (
        "239 52719 -1867788817 1311768467294899695\n"
        "239 cdef 22052746757\n"
        "12345678 67890abc\n"
        "[   0x123][00000123][123     ][    +123][     123]\n"
        "[hello][he][hello][   he][   hel]\n"
        "[a][    b][-1][65535][-1][1][2][%]\n"
        "\n"
    )
