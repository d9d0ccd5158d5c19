"""Golden tests: dtrace's text output, byte for byte.

Expected outputs are dtrace's own, from its test suite (the illumos-derived
``test/unittest`` of Oracle's dtrace-utils, 1.x branch, and the layouts in
``dt_consume.c``); the programs are written here to produce the same data,
with ``tick-10ms`` hits fired by the test in place of a clock.
"""

from __future__ import annotations

from dtproc.d import OutputFormat
from test_d_helpers import ENTRY, hit, output, run

QHDR = "           value  ------------- Distribution ------------- count    \n"


def test_two_counts() -> None:
    src = "#pragma D option quiet\nBEGIN { @a = count(); @a = count(); exit(0); }"
    assert output(src) == "\n                2\n"


def test_every_aggregating_function_at_exit() -> None:
    src = """
    #pragma D option quiet
    BEGIN { i = 0; }
    tick-10ms /i < 1000/ {
        @a = avg(i); @b = sum(i); @c = min(i); @d = max(i);
        @e = quantize(i); @f = lquantize(i, 0, 1000, 100);
        i += 100;
    }
    tick-10ms /i == 1000/ { exit(0); }
    """
    want = (
        "\n"
        "              450\n"
        "             4500\n"
        "                0\n"
        "              900\n"
        "\n" + QHDR + "              -1 |                                         0        \n"
        "               0 |@@@@                                     1        \n"
        "               1 |                                         0        \n"
        "               2 |                                         0        \n"
        "               4 |                                         0        \n"
        "               8 |                                         0        \n"
        "              16 |                                         0        \n"
        "              32 |                                         0        \n"
        "              64 |@@@@                                     1        \n"
        "             128 |@@@@                                     1        \n"
        "             256 |@@@@@@@@@@@@                             3        \n"
        "             512 |@@@@@@@@@@@@@@@@                         4        \n"
        "            1024 |                                         0        \n"
        "\n"
        "\n" + QHDR + "             < 0 |                                         0        \n"
        "               0 |@@@@                                     1        \n"
        "             100 |@@@@                                     1        \n"
        "             200 |@@@@                                     1        \n"
        "             300 |@@@@                                     1        \n"
        "             400 |@@@@                                     1        \n"
        "             500 |@@@@                                     1        \n"
        "             600 |@@@@                                     1        \n"
        "             700 |@@@@                                     1        \n"
        "             800 |@@@@                                     1        \n"
        "             900 |@@@@                                     1        \n"
        "         >= 1000 |                                         0        \n"
        "\n"
    )
    assert output(src, ticks=20) == want


def test_keyed_quantize_prints_key_then_histogram() -> None:
    src = """
    #pragma D option quiet
    BEGIN { n = 0; }
    tick-10ms /n < 300/ { @a[n] = quantize(n); n += 100; }
    tick-10ms /n == 300/ { exit(0); }
    """
    want = (
        "\n        0\n"
        + QHDR
        + "              -1 |                                         0        \n"
        "               0 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 1        \n"
        "               1 |                                         0        \n"
        "\n      100\n"
        + QHDR
        + "              32 |                                         0        \n"
        "              64 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 1        \n"
        "             128 |                                         0        \n"
        "\n      200\n"
        + QHDR
        + "              64 |                                         0        \n"
        "             128 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 1        \n"
        "             256 |                                         0        \n"
        "\n"
    )
    assert output(src, ticks=10) == want


def test_stddev_of_large_values() -> None:
    values = [5000000000 + 100 * i for i in range(10)]
    body = "".join(f"@a = stddev({v}); @b = stddev(-{v});" for v in values)
    src = f"#pragma D option quiet\nBEGIN {{ {body} exit(0); }}"
    assert output(src) == "\n              287\n              287\n"


def test_trunc_keeps_the_largest() -> None:
    src = """
    #pragma D option quiet
    int n;
    tick-10ms /n < 100/ { @[n] = sum(n); n++; }
    tick-10ms /n == 100/ { exit(0); }
    END { trunc(@, 10); }
    """
    want = "\n" + "".join(f"{i:>9}{i:>17}\n" for i in range(90, 100))
    assert output(src, ticks=200) == want


def test_normalize() -> None:
    src = """
    #pragma D option quiet
    BEGIN { i = 0; }
    tick-10ms /i < 20/ { @func[i % 5] = sum(i * 100); i++; }
    tick-10ms /i == 20/ { printf("normalized data:\\n"); normalize(@func, 5); exit(0); }
    """
    want = (
        "normalized data:\n\n"
        "        0              600\n"
        "        1              680\n"
        "        2              760\n"
        "        3              840\n"
        "        4              920\n"
    )
    assert output(src, ticks=30) == want


def test_printa_formats_order_keys_by_value_then_key() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @[8] = sum(1); @[6] = sum(1); @[7] = sum(1); @[5] = sum(1);
        @[3] = sum(1); @[0] = sum(1); @[9] = sum(1);
        @city["Ghent"] = sum(1); @city["Berlin"] = sum(1); @city["London"] = sum(1);
        @city["Dublin"] = sum(1); @city["Zurich"] = sum(1);
        @food[8, "Rice"] = sum(1); @food[8, "Barley"] = sum(1);
        @food[8, "Sweet potato"] = sum(1); @food[8, "Asparagus"] = sum(1);
        @chars['a'] = sum(1); @chars['s'] = sum(1); @chars['d'] = sum(1);
        printa("%d\\n", @); printf("\\n");
        printa("%s\\n", @city); printf("\\n");
        printa("%d %s\\n", @food); printf("\\n");
        printa("%c\\n", @chars); printf("\\n");
        exit(0);
    }
    """
    want = (
        "0\n3\n5\n6\n7\n8\n9\n\n"
        "Berlin\nDublin\nGhent\nLondon\nZurich\n\n"
        "8 Asparagus\n8 Barley\n8 Rice\n8 Sweet potato\n\n"
        "a\nd\ns\n\n\n"
    )
    assert output(src) == want


def test_lquantize_underflow_overflow_and_negative_bars() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @["Nixon"] = lquantize(-20, -10, 10, 1, 25);
        @["Hoover"] = lquantize(20, -10, 10, 1, -100);
        @["Harding"] = lquantize(-10, -10, 10, 1, 15);
        @["Bush"] = lquantize(10, -10, 10, 1, 150);
        printa(@);
        exit(0);
    }
    """
    pad = " " * 44
    want = (
        "\n"
        f"  Hoover{pad}\n"
        + QHDR
        + "               9                                         | 0        \n"
        "           >= 10 @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@| -100     \n"
        "\n"
        f"  Nixon {pad}\n"
        + QHDR
        + "           < -10 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 25       \n"
        "             -10 |                                         0        \n"
        "\n"
        f"  Harding{pad[:-1]}\n"
        + QHDR
        + "           < -10 |                                         0        \n"
        "             -10 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 15       \n"
        "              -9 |                                         0        \n"
        "\n"
        f"  Bush  {pad}\n"
        + QHDR
        + "               9 |                                         0        \n"
        "           >= 10 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 150      \n"
        "\n\n"
    )
    assert output(src) == want


def test_quantize_with_positive_and_negative_counts_splits_the_bar() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @["l-taraval"] = quantize(0, -123); @["l-taraval"] = quantize(-1, -123);
        @["l-taraval"] = quantize(1, 123); @["l-taraval"] = quantize(1, 123);
        exit(0);
    }
    """
    want = (
        "\n  l-taraval"
        + " " * 41
        + "\n"
        + QHDR
        + "              -2                     |                     0        \n"
        "              -1                @@@@@|                     -123     \n"
        "               0                @@@@@|                     -123     \n"
        "               1                     |@@@@@@@@@@           246      \n"
        "               2                     |                     0        \n"
        "\n"
    )
    assert output(src) == want


def test_integer_keys_print_unsigned_below_int_and_sort_as_unsigned() -> None:
    src = """
    #pragma D option quiet
    #pragma D option aggsortkey
    BEGIN {
        trace((signed char)-2); trace("\\n"); trace((short)-1); trace("\\n");
        trace(-2); trace("\\n"); trace((long long)-1); trace("\\n");
        @i8[(char)-2] = sum(-2); @i8[(char)1] = sum(1);
        @i16[(short)-2] = sum(-2); @i16[(short)2] = sum(2);
        @i32[-2] = sum(-2); @i32[0] = sum(0);
        @i64[(long long)-1] = sum(-1); @i64[(long long)1] = sum(1);
        exit(0);
    }
    """
    want = (
        "254\n65535\n-2\n-1\n"
        "\n"
        "   1                1\n"
        " 254               -2\n"
        "     2                2\n"
        " 65534               -2\n"
        "        0                0\n"
        "       -2               -2\n"
        "                1                1\n"
        "               -1               -1\n"
    )
    assert output(src) == want


def test_printa_value_conversions() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @a = avg(1); @b = count(); @c = lquantize(1, 1, 10); @g = quantize(1);
        @t[1, 2, 3] = count();
        printa("@a = %@u\\n", @a); printa("@b = %@u\\n", @b);
        printa("@c = %@d\\n", @c); printa("@g = %@d\\n", @g);
        printa("%@u %@u %@u\\n", @b);
        printa("%@u: %d %d\\n", @t);
        exit(0);
    }
    """
    want = (
        "@a = 1\n@b = 1\n"
        "@c = \n" + QHDR + "             < 1 |                                         0        \n"
        "               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 1        \n"
        "               2 |                                         0        \n"
        "\n"
        "@g = \n" + QHDR + "               0 |                                         0        \n"
        "               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ 1        \n"
        "               2 |                                         0        \n"
        "\n"
        "1 1 1\n"
        "1: 1 2\n"
        "\n"
    )
    assert output(src) == want


def test_printa_dynamic_width_from_a_key() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @[10, 100] = sum(1); @[-10, 200] = sum(2);
        printa("-->%-*d<--\\n", @); printa("-->%*d<--\\n", @);
        exit(0);
    }
    """
    want = "-->100       <--\n-->200       <--\n-->       100<--\n-->200       <--\n\n"
    assert output(src) == want


def test_printa_joins_aggregations_on_their_keys() -> None:
    src = """
    #pragma D option quiet
    BEGIN {
        @a["x"] = count(); @a["y"] = count(); @a["y"] = count();
        @b["y"] = sum(10); @b["z"] = sum(5);
        printa(@a, @b); printa("%s %@d %@d\\n", @a, @b);
        exit(0);
    }
    """
    # Rows are ordered by the first aggregation's value, then the next's, then key.
    want = (
        "\n"
        f"  {'z':<50}                0                5\n"
        f"  {'x':<50}                1                0\n"
        f"  {'y':<50}                2               10\n"
        "z 0 5\nx 1 0\ny 2 10\n\n"
    )
    assert output(src) == want


def test_default_output_prints_probe_lines_and_record_widths() -> None:
    src = """
    BEGIN { }
    BEGIN { trace("hello world"); }
    BEGIN { trace(42); trace((short)7); }
    BEGIN { @a = count(); @a = count(); }
    BEGIN { x = 1; }
    BEGIN { exit(0); }
    """
    probe = "  0      1                           :BEGIN "
    want = (
        "CPU     ID                    FUNCTION:NAME\n"
        f"{probe}\n"
        f"{probe}  hello world                      \n"
        f"{probe}       42     7\n"
        f"{probe}\n"
        "\n"
        "                2\n"
    )
    assert output(src) == want


def test_default_output_uses_our_probe_ids_and_the_hit_cpu() -> None:
    src = 'pid$target::main:entry { printf("x=%d", arg0); }'
    out = output(src, hits=[hit(ENTRY, cpu=3, args=(7,))])
    assert out == (
        "CPU     ID                    FUNCTION:NAME\n"
        "  3  48000                       main:entry x=7\n"
        "\n"
    )


def test_trace_strings_in_default_output() -> None:
    src = """
    BEGIN {
        trace("this");
        trace(" %should work.\\n");
        trace("%don't w%orry -- this won't cause a %segfault.\\n");
        exit(0);
    }
    """
    want = (
        "CPU     ID                    FUNCTION:NAME\n"
        "  0      1                           :BEGIN "
        "  this                                %should work.\n"
        f"{' ' * 20}%don't w%orry -- this won't cause a %segfault.\n"
        "\n"
        "\n"
    )
    assert output(src) == want


def test_stacks_in_aggregations_and_as_action() -> None:
    src = """
    #pragma D option quiet
    pid$target::main:entry { @[ustack()] = count(); }
    pid$target::main:entry /arg0/ { ustack(); }
    """
    s1 = (0x7F0004, 0x401010)
    s2 = (0x7F0004, 0x402008, 0x401010)
    res = run(src, hits=[hit(stack=s1), hit(stack=s2, args=(1,)), hit(stack=s1)])
    frames = "              libc.so.6`malloc+0x4\n              a.out`foo+0x8\n"
    want = (
        "\n" + frames + "              a.out`main+0x10\n"
        "\n"
        "\n" + frames + "              a.out`main+0x10\n"
        "                1\n"
        "\n              libc.so.6`malloc+0x4\n              a.out`main+0x10\n"
        "                2\n"
    )
    assert res.out == want


def test_unprintable_bytes_are_dumped_in_hex() -> None:
    src = """
    #pragma D option quiet
    pid$target::main:entry { trace(copyin(arg0, 20)); tracemem(copyin(arg0, 4), 4); }
    """
    data = b"hello\x01world\x00\x00\xff\x10\x11\x12\x13\x14\x15"
    res = run(src, hits=[hit(args=(0x1000,), memory={0x1000: data})])
    header = "\n" + " " * 11 + "".join(f"  {c}" for c in "0123456789abcdef")
    header += "  0123456789abcdef\n"
    want = (
        header
        + "         0: 68 65 6c 6c 6f 01 77 6f 72 6c 64 00 00 ff 10 11  hello.world.....\n"
        + "        10: 12 13 14 15"
        + "   " * 12
        + "  ....\n"
        + header
        + "         0: 68 65 6c 6c"
        + "   " * 12
        + "  hell\n"
        + "\n"
    )
    assert res.out == want


def test_symbols_print_without_offset_module_or_full() -> None:
    src = """
    #pragma D option quiet
    pid$target::main:entry { usym(arg0); umod(arg0); uaddr(arg0); printf("\\n%a\\n", arg0); }
    """
    out = output(src, hits=[hit(args=(0x402008,))])
    assert out == (f"  {'a.out`foo':<50}  {'a.out':<50}  {'a.out`foo+0x8':<50}\na.out`foo+0x8\n\n")


def test_fault_drops_the_firing_and_is_reported() -> None:
    src = """
    #pragma D option quiet
    pid$target::main:entry { printf("before\\n"); x = 1 / arg0; printf("after\\n"); }
    pid$target::main:entry { printf("%s\\n", copyinstr(arg1)); }
    pid$target::main:entry { printf("next clause runs\\n"); }
    """
    res = run(src, hits=[hit(args=(0, 0xDEAD))])
    assert res.out == "next clause runs\n\n"
    assert res.err == (
        "dtproc: error on enabled probe ID 1 (ID 48000: pid1234:a.out:main:entry): "
        "divide-by-zero in action #2\n"
        "dtproc: error on enabled probe ID 2 (ID 48000: pid1234:a.out:main:entry): "
        "invalid address (0xdead) in action #1\n"
    )
    assert res.runtime.errors == 2


def test_error_clause_sees_the_fault() -> None:
    src = """
    #pragma D option quiet
    BEGIN { x = 0; y = 1 / x; }
    ERROR { printf("fault %d in action %d\\n", arg4, arg2); exit(0); }
    """
    res = run(src)
    assert res.out == "fault 4 in action 2\n\n"


def test_exit_stops_further_clauses_but_not_end() -> None:
    src = """
    #pragma D option quiet
    BEGIN { printf("a\\n"); exit(3); printf("b\\n"); }
    BEGIN { printf("never\\n"); }
    END { printf("end\\n"); }
    """
    res = run(src, hits=[hit()])
    assert res.out == "a\nb\nend\n\n"
    assert res.runtime.exit_requested == 3


def test_printed_aggregations_are_not_printed_again_at_exit() -> None:
    src = """
    #pragma D option quiet
    BEGIN { @a = count(); @b = count(); printa(@a); exit(0); }
    """
    assert output(src) == "\n                1\n\n                1\n"


def test_clear_keeps_keys_with_zero_values() -> None:
    src = """
    #pragma D option quiet
    BEGIN { @["k"] = sum(5); clear(@); @["j"] = sum(1); exit(0); }
    """
    # clear() acts when the firing commits, after the later sum(), as in dtrace.
    assert output(src) == f"\n  {'j':<50}                0\n  {'k':<50}                0\n"


def test_json_output_is_one_object_per_record() -> None:
    src = """
    pid$target::main:entry { printf("%d", arg0); @q = quantize(arg0); @c[probefunc] = count(); }
    """
    res = run(src, hits=[hit(args=(3,))], fmt=OutputFormat.JSON)
    lines = res.out.splitlines()
    assert lines[0] == (
        '{"type": "printf", "text": "3", "probe": {"id": 48000, "provider": "pid1234", '
        '"module": "a.out", "function": "main", "name": "entry"}, "cpu": 0}'
    )
    assert lines[1] == (
        '{"type": "aggregation", "name": "@q", "keys": [], '
        '"value": {"buckets": [{"min": 2, "max": 4, "count": 1}]}}'
    )
    assert lines[2] == '{"type": "aggregation", "name": "@c", "keys": ["main"], "value": 1}'


def test_folded_and_speedscope_from_stack_aggregations() -> None:
    src = "pid$target::main:entry { @[execname, ustack()] = count(); @n = count(); }"
    s1 = (0x7F0004, 0x401010)
    s2 = (0x7F0004, 0x402008, 0x401010)
    hits = [hit(stack=s1), hit(stack=s2), hit(stack=s1)]
    folded = run(src, hits=hits, fmt=OutputFormat.FOLDED).out
    assert folded == (
        "a.out;a.out`main;a.out`foo;libc.so.6`malloc 1\na.out;a.out`main;libc.so.6`malloc 2\n"
    )
    import json

    doc = json.loads(run(src, hits=hits, fmt=OutputFormat.SPEEDSCOPE).out)
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [f["name"] for f in doc["shared"]["frames"]]
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled"
    assert [[names[i] for i in s] for s in profile["samples"]] == [
        ["a.out", "a.out`main", "a.out`foo", "libc.so.6`malloc"],
        ["a.out", "a.out`main", "libc.so.6`malloc"],
    ]
    assert profile["weights"] == [1, 2]
    assert profile["endValue"] == 3


def test_predicate_faults_and_stack_conversions() -> None:
    src = """
    #pragma D option quiet
    pid$target::main:entry { printf("[%k]<%-4k>%x\\n", ustack(2), ustack(1), ucaller); }
    pid$target::main:entry /1 / arg0/ { printf("never"); }
    """
    res = run(src, hits=[hit(stack=(0x7F0004, 0x401010))])
    assert res.out == (
        "[\nlibc.so.6`malloc+0x4\na.out`main+0x10\n]<\n    libc.so.6`malloc+0x4\n>401010\n\n"
    )
    assert res.err.endswith("divide-by-zero in predicate\n")


def test_fire_probe_shares_clause_locals_across_its_clauses() -> None:
    from dtproc.d import Runtime, compile_program

    program = compile_program(
        "#pragma D option quiet\n"
        "pid$target::main:entry /arg0/ { this->v = arg0; }\n"
        'pid$target::main:entry { printf("%d ", this->v); }',
        macros={"target": 1234},
    )
    import io

    out = io.StringIO()
    rt = Runtime(program, out)
    ctx = hit(args=(5,))
    rt.fire_probe([0, 1], ctx)
    ctx.args = (0,)  # the same object, reused for the next hit
    rt.fire_probe([0, 1], ctx)
    rt.end()
    assert out.getvalue() == "5 0 \n"
