"""The dtproc command on real programs: counts, stacks, formats, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Builder, Reaper
from test_tracee import state_of, tracer_of, wait_for

DTPROC = [sys.executable, "-m", "dtproc"]


@pytest.fixture(scope="module")
def target(build: Builder) -> Path:
    return build("cli_target", "-O2", "-ldl")


@pytest.fixture(scope="module")
def plugin(build: Builder) -> Path:
    return build("cli_plugin", "-O2", shared=True)


def dtproc(
    *args: str | Path, timeout: float = 120, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTPROC, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw
    )  # type: ignore[call-overload]


def last_number(out: str) -> int:
    """The value of a keyless aggregation (``@ = count()``): the last number printed."""
    return int(out.rsplit(maxsplit=1)[-1])


def aggregation(out: str) -> dict[str, int]:
    """``key   count`` lines of a dtrace aggregation printout."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S.*?)\s+(-?\d+)$", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


# ---------------------------------------------------------------------- the main job
def test_readme_main_job() -> None:
    r = dtproc("-n", "pid$target::malloc:entry { @[ustack()] = count(); }", "-c", "ls -l /usr/bin")
    assert r.returncode == 0, r.stderr
    assert "description 'pid$target::malloc:entry ' matched 1 probe" in r.stderr
    assert re.search(r"pid \d+ has exited", r.stderr)
    assert "libc.so.6`malloc\n" in r.stdout
    assert re.search(r"\n              ls`0x[0-9a-f]+\n", r.stdout)  # stripped ls: hex offsets
    counts = [int(x) for x in re.findall(r"^\s+(\d+)$", r.stdout, re.M)]
    assert counts and sum(counts) > 100


def test_counts_equal_the_truth(target: Path) -> None:
    r = dtproc(
        "-q",
        "-n",
        "pid$target:a.out:work*:entry { @[probefunc] = count(); }",
        "-n",
        "pid$target:libc.so.6:strlen:entry { @s = count(); }",
        "-n",
        'END { printa("strlen %@d\\n", @s); }',
        "-c",
        f"{target} count 5000",
    )
    assert r.returncode == 0, r.stderr
    assert "work=5000 work2=10000 strlen=5000" in r.stdout
    rows = aggregation(r.stdout)
    assert rows["work"] == 5000 and rows["work2"] == 10000
    strlen_calls = int(re.search(r"strlen (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert strlen_calls >= 5000  # the IFUNC's implementation: the program's calls, and libc's own
    assert r.stderr == ""  # -q: no notices


@pytest.mark.skipif(shutil.which("ltrace") is None, reason="ltrace is not installed")
def test_counts_equal_ltrace(target: Path) -> None:
    lt = subprocess.run(
        ["ltrace", "-c", "-x", "work2", str(target), "count", "700"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"\s(\d+)\s+work2\b", lt.stderr)
    assert m, lt.stderr
    r = dtproc(
        "-q", "-n", "pid$target:a.out:work2:entry { @ = count(); }", "-c", f"{target} count 700"
    )
    assert last_number(r.stdout) == int(m.group(1)) == 1400


def test_return_probes_every_ret_with_offset_and_value(target: Path) -> None:
    r = dtproc(
        "-q",
        "-n",
        "pid$target:a.out:pick:return { @[arg0, arg1] = count(); }",
        "-c",
        f"{target} ret 300",
    )
    assert r.returncode == 0, r.stderr
    assert "ones=100 twos=200" in r.stdout
    rows = [
        tuple(map(int, line.split()))
        for line in r.stdout.splitlines()
        if line.strip()[:1].isdigit()
    ]
    by_value = {v: n for _, v, n in rows}
    assert by_value == {1: 100, 2: 200}
    assert all(off > 0 for off, _, _ in rows)  # offsets of the returning instructions


def test_entry_arguments_follow_the_abi(target: Path) -> None:
    r = dtproc(
        "-q",
        "-n",
        "pid$target:a.out:six_args:entry "
        '{ printf("%d %d %d %d %d %d\\n", arg0, arg1, arg2, arg3, arg4, arg5); }',
        "-n",
        'pid$target:a.out:eight_args:entry { printf("%d %d\\n", arg6, arg7); }',
        "-c",
        f"{target} args",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["1 2 3 4 5 6", "7 8"]


def test_offset_probes_and_bad_offsets(target: Path) -> None:
    listing = dtproc("-l", "-n", "pid$target:a.out:pick:", "-c", f"{target} ret 1")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[-1] for line in listing.stdout.splitlines()[1:]]
    assert names[:2] == ["entry", "return"] or "entry" in names
    offsets = [n for n in names if n not in ("entry", "return")]
    assert offsets[0] == "0" and len(offsets) > 3
    r = dtproc(
        "-q",
        "-n",
        f"pid$target:a.out:pick:{offsets[1]} {{ @ = count(); }}",
        "-c",
        f"{target} ret 30",
    )
    assert r.returncode == 0, r.stderr
    bad = dtproc("-n", "pid$target:a.out:pick:1 { @ = count(); }", "-c", f"{target} ret 3")
    if "1" not in offsets:
        assert bad.returncode == 1
        assert "not on an instruction boundary of" in bad.stderr and "`pick" in bad.stderr


def test_dlopened_library_is_probed_when_it_loads(target: Path, plugin: Path) -> None:
    r = dtproc(
        "-n",
        f"pid$target:{plugin.name}:plugin_work:entry {{ @[probemod, probefunc] = count(); }}",
        "-c",
        f"{target} dlopen {plugin}",
    )
    assert r.returncode == 0, r.stderr
    assert "will be enabled when module" in r.stderr
    assert re.search(rf"{re.escape(plugin.name)}\s+plugin_work\s+3\n", r.stdout)


def test_exec_starts_the_probes_over(target: Path) -> None:
    r = dtproc("-q", "-n", "pid$target:a.out:work:entry { @ = count(); }", "-c", f"{target} exec 3")
    assert r.returncode == 0, r.stderr
    assert "exec done" in r.stdout
    assert last_number(r.stdout) == 4  # one call in each of the four images


def test_exit_action_ends_tracing_with_its_status(target: Path) -> None:
    r = dtproc(
        "-q", "-n", 'pid$target:a.out:work:entry /arg0 == 7/ { printf("seven\\n"); exit(3); }',
        "-c", f"{target} loop",
    )  # fmt: skip
    assert r.returncode == 3
    assert "seven" in r.stdout


# ---------------------------------------------------------------------- output formats
@pytest.mark.parametrize("fmt", ["json", "folded", "speedscope"])
def test_output_formats(target: Path, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = dtproc(
        "-q", "--format", fmt, "-o", out,
        "-n", "pid$target:a.out:work2:entry { @[ustack()] = count(); }",
        "-c", f"{target} count 50",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    if fmt == "folded":
        lines = [ln for ln in text.splitlines() if "`work2" in ln]
        assert all("`main;" in ln for ln in lines)
        assert sum(int(ln.rsplit(" ", 1)[1]) for ln in lines) == 100  # two call sites
    elif fmt == "speedscope":
        doc = json.loads(text)
        assert doc["$schema"].startswith("https://www.speedscope.app/")
    else:
        rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        aggs = [row for row in rows if row.get("type") == "aggregation"]
        assert sum(row["value"] for row in aggs) == 100, rows
        assert all(row["keys"][0][0].endswith("`work2") for row in aggs)


# ---------------------------------------------------------------------- grabbing and Ctrl-C
def test_ctrl_c_on_a_busy_grabbed_process_leaves_it_running(target: Path, reaper: Reaper) -> None:
    p = reaper.spawn([target, "loop"], stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline().startswith(b"ready")
    d = subprocess.Popen(
        [*DTPROC, "-n", "pid$target:a.out:work:entry { @ = count(); }", "-p", str(p.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: tracer_of(p.pid) != 0, 20)
        time.sleep(0.5)
        d.send_signal(signal.SIGINT)
        out, err = d.communicate(timeout=30)
    finally:
        if d.poll() is None:
            d.kill()
    assert d.returncode == 0, err
    assert "matched 1 probe" in err
    assert int(out.split()[-1]) > 1000
    assert tracer_of(p.pid) == 0
    # It runs on, correctly: ticks keep coming, the work() site holds no int3.
    before = p.stdout.readline()
    after = p.stdout.readline()
    assert before.startswith(b"tick") and after.startswith(b"tick")
    assert state_of(p.pid) in "RS"
    with open(f"/proc/{p.pid}/maps") as f:
        base = int(f.readline().split("-")[0], 16)
    nm = subprocess.run(["nm", str(target)], capture_output=True, text=True).stdout
    work = int(next(ln.split()[0] for ln in nm.splitlines() if ln.endswith(" work")), 16)
    with open(f"/proc/{p.pid}/mem", "rb") as mem:
        mem.seek(base + work)
        assert mem.read(1) != b"\xcc"


def test_sigterm_ends_tracing_cleanly(target: Path, reaper: Reaper) -> None:
    p = reaper.spawn([target, "loop"], stdout=subprocess.DEVNULL)
    d = subprocess.Popen(
        [*DTPROC, "-q", "-n", "pid$target:a.out:work:entry { @ = count(); }", "-p", str(p.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: tracer_of(p.pid) != 0, 20)
    time.sleep(0.3)
    d.send_signal(signal.SIGTERM)
    out, _ = d.communicate(timeout=30)
    assert d.returncode == 0
    assert int(out.split()[-1]) > 0
    assert wait_for(lambda: tracer_of(p.pid) == 0)
    assert p.poll() is None


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["-n", "BEGIN { x = ; }"], 1,
         'invalid probe specifier BEGIN { x = ; }: syntax error near ";"'),
        (["-n", "pid$target::nosuch_fn:entry", "-c", "true"], 1,
         "probe description pid{pid}::nosuch_fn:entry does not match any probes"),
        (["-n", "BEGIN", "-c", "./no-such-program"], 1,
         "failed to execute ./no-such-program: No such file or directory"),
        (["-n", "BEGIN", "-p", "4194304"], 1, "failed to grab pid 4194304: no such process"),
        (["-n", "BEGIN", "-p", "abc"], 2, "invalid pid: abc"),
        (["-n", "BEGIN", "-p", "2"], 1, "failed to grab pid 2: it is a kernel thread"),
        (["-s", "/no/such/script.d"], 1,
         "failed to open /no/such/script.d: No such file or directory"),
        ([], 2, "no program"),
        (["-n", "BEGIN", "-x", "backend=magic"], 2, "invalid backend 'magic'"),
        (["-n", "BEGIN", "-x", "nosuchoption=1"], 1, "failed to set -x nosuchoption"),
    ],
)  # fmt: skip
def test_errors_have_clear_messages_and_status(args: list[str], status: int, message: str) -> None:
    r = dtproc(*args)
    assert r.returncode == status, (r.stdout, r.stderr)
    pattern = re.escape(message).replace(r"\{pid\}", r"\d+")
    assert re.search(pattern, r.stderr), r.stderr
    assert "Traceback" not in r.stderr


def test_compile_error_is_one_line_and_v_shows_where() -> None:
    text = "BEGIN { trace(y); }"
    head = (
        f"dtproc: invalid probe specifier {text}: in action list: "
        "failed to resolve y: Unknown variable name\n"
    )
    r = dtproc("-n", text)
    assert (r.returncode, r.stderr) == (1, head)
    r = dtproc("-v", "-n", text)
    assert (r.returncode, r.stderr) == (1, head + f"line 1, column 15:\n{text}\n{14 * ' '}^\n")


def test_permission_error_says_what_to_do(target: Path, reaper: Reaper) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    p = reaper.spawn([target, "loop"], stdout=subprocess.DEVNULL)
    src = str(Path(__file__).parents[1] / "src")
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {src!r})
        import dtproc.cli, dtproc.d, dtproc.probes.session, dtproc.probes.ptrace_backend
        os.setgid(65534); os.setuid(65534)
        sys.exit(dtproc.cli.main(["-n", "BEGIN", "-p", "{p.pid}"]))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"dtproc: failed to grab pid {p.pid}: permission denied" in r.stderr
    assert "Traceback" not in r.stderr


def test_list_mode(target: Path) -> None:
    r = dtproc("-l", "-n", "pid$target:libc.so.6:mem*:entry", "-c", f"{target} count 1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "PROVIDER", "MODULE", "FUNCTION", "NAME"]
    funcs = {ln.split()[3] for ln in lines[1:]}
    assert {"memcpy", "memset", "memchr"} <= funcs
    assert all(ln.split()[2] == "libc.so.6" and ln.split()[4] == "entry" for ln in lines[1:])


# ---------------------------------------------------------------------- backends
def test_backends_agree_on_counts(target: Path) -> None:
    program = "pid$target:a.out:work*:entry { @[probefunc] = count(); }"
    outs = {}
    for backend in ("ptrace", "uprobe", "auto"):
        r = dtproc("-q", "-x", f"backend={backend}", "-n", program, "-c", f"{target} count 3000")
        assert r.returncode == 0, (backend, r.stderr)
        outs[backend] = aggregation(r.stdout)
    assert outs["ptrace"] == outs["uprobe"] == outs["auto"] == {"work": 3000, "work2": 6000}


def test_backend_choice_is_explained(target: Path) -> None:
    count_only = "pid$target:a.out:work:entry { @ = count(); }"
    sampled = "pid$target:a.out:work:entry { @[arg0 % 2] = count(); }"
    memory = 'pid$target:a.out:work:entry { printf("%s", copyinstr(arg0)); }'
    r = dtproc("-l", "-n", count_only, "-c", f"{target} count 1")
    assert re.search(r"clause 1 \(pid\d+:a\.out:work:entry\): uprobe: ", r.stderr), r.stderr
    r = dtproc("-l", "-n", sampled, "-c", f"{target} count 1")
    assert "ptrace: it is sampled" in r.stderr
    r = dtproc("-v", "-q", "-n", memory, "-c", f"{target} count 1")
    assert "ptrace: needs the target's memory at the hit" in r.stderr
    r = dtproc("-x", "backend=uprobe", "-n", memory, "-c", f"{target} count 1")
    assert r.returncode == 1
    assert "cannot use the uprobe backend: clause 1" in r.stderr
    assert "use -x backend=ptrace" in r.stderr


VEX_TARGET = r"""
#include <stdio.h>
void fill(unsigned char *out, int c);
__asm__(".text\n.globl fill\n.type fill,@function\nfill:\n"
        "  vmovd %esi, %xmm1\n  vpbroadcastb %xmm1, %xmm1\n  vmovdqu %xmm1, (%rdi)\n  ret\n"
        ".size fill, .-fill\n");
int main(void) {
    unsigned char buf[16];
    int bad = 0;
    for (int i = 0; i < 200; i++) {
        fill(buf, i & 0xff);
        for (int j = 0; j < 16; j++) if (buf[j] != (i & 0xff)) { bad++; break; }
    }
    printf("bad %d\n", bad);
    return 0;
}
"""


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text(), reason="needs AVX2")
def test_vex_instructions_never_go_to_uprobes(build: Builder) -> None:
    """The kernel's uprobes run VEX/EVEX instructions wrongly here: never put one there."""
    exe = build("vex_target", "-O2", source=VEX_TARGET)
    program = "pid$target:a.out:fill:entry { @ = count(); }"
    r = dtproc("-q", "-n", program, "-c", str(exe))  # auto: counting, one probe
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["bad", "0"] and last_number(r.stdout) == 200
    r = dtproc("-x", "backend=uprobe", "-n", program, "-c", str(exe))
    assert r.returncode == 1
    assert "cannot use the uprobe backend" in r.stderr and "VEX-encoded" in r.stderr, r.stderr
