"""Kernel uprobes through perf_event_open: real targets, the real kernel, bpftrace as oracle.

Every target is a process that is already running when we attach (started by
``reaper.spawn`` and waiting on its stdin), never one launched through the event.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dtproc import uprobes
from dtproc._sys import perf
from dtproc.errors import AccessDenied, NoSuchProcess, ProbeError
from dtproc.uprobes import (
    SampleOptions,
    SampleRing,
    Scope,
    UprobeCounter,
    UprobeSample,
    UprobeSpec,
)

STRESS = os.environ.get("DTPROC_STRESS") == "1"
STACK_MAGIC = 0x5CA1AB1E0DDBA11
SRC = Path(__file__).resolve().parent.parent / "src"

pytestmark = pytest.mark.skipif(
    not os.path.exists("/sys/bus/event_source/devices/uprobe"), reason="no uprobe PMU"
)


def file_offset(path: Path, symbol: str) -> int:
    """The file offset of *symbol* (pyelftools is the oracle here, not dtproc.elf)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name(symbol)[0]
        vaddr = sym["st_value"]
        for seg in elf.iter_segments("PT_LOAD"):
            if seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                return int(vaddr - seg["p_vaddr"] + seg["p_offset"])
    raise LookupError(symbol)


@dataclass
class Target:
    """One up_work process between its "ready" and "done" lines."""

    proc: subprocess.Popen[bytes]
    pid: int
    push: int
    rip: int
    sem: int

    def go(self) -> dict[str, int]:
        """Let it run its workload and wait for it; returns the fields of its "done" line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"g")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode()
        assert line.startswith("done"), line
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}

    def finish(self) -> int:
        """Let it make its last call and exit; returns the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def ctxt_switches(self) -> int:
        """Switches it asked for (a stop, a wait); preemption on a busy machine is no sign."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        assert found is not None
        return int(found.group(1))


@pytest.fixture(scope="module")
def up_work(build) -> Path:
    return build("up_work", "-O2", "-pthread")


@pytest.fixture
def spawn(up_work: Path, reaper: object) -> Iterator[object]:
    def _spawn(*args: object) -> Target:
        proc = reaper.spawn(  # type: ignore[attr-defined]
            [up_work, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        line = proc.stdout.readline().decode()
        fields = dict(re.findall(r"(\w+)=(0x[0-9a-f]+|\d+)", line))
        return Target(
            proc, int(fields["pid"]), int(fields["push"], 16), int(fields["rip"], 16),
            int(fields["sem"], 16),
        )  # fmt: skip

    yield _spawn
    assert uprobes.open_event_count() == 0, "a test left perf events open"


@pytest.fixture(scope="module")
def specs(up_work: Path) -> dict[str, UprobeSpec]:
    push = file_offset(up_work, "work_push")
    return {
        "push": UprobeSpec(str(up_work), push),
        "rip": UprobeSpec(str(up_work), file_offset(up_work, "work_rip")),
        "ret": UprobeSpec(str(up_work), push, retprobe=True),
    }


def symbol_vaddr(path: Path, symbol: str) -> int:
    with open(path, "rb") as f:
        return int(
            ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(symbol)[0]["st_value"]
        )


def read_mem(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(size)


def read_u16(pid: int, address: int) -> int:
    return int.from_bytes(read_mem(pid, address, 2), "little")


def our_perf_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[perf_event]"
        except OSError:
            pass
    return count


# --- counting ---


def test_count_push_and_rip_relative_first_instructions(spawn, specs) -> None:
    n = 1_000_000 if STRESS else 100_000
    t = spawn("count", n)
    with (
        UprobeCounter.open(specs["push"], t.pid) as push,
        UprobeCounter.open(specs["rip"], t.pid) as rip,
    ):
        t.go()
        assert (push.read(), rip.read()) == (n, n)
    t.finish()


def test_threads_created_after_open_are_counted_exactly(spawn, specs) -> None:
    threads, n = 8, 1_000_000 if STRESS else 100_000
    t = spawn("threads", n, threads)
    with (
        UprobeCounter.open(specs["push"], t.pid) as proc_wide,
        UprobeCounter.open(specs["push"], t.pid, Scope.THREAD) as main_only,
    ):
        t.go()
        # The main thread only creates and joins: its own counter stays at 0.
        assert (proc_wide.read(), main_only.read()) == (threads * n, 0)
    t.finish()


def test_forked_child_calls_are_not_counted(spawn, specs) -> None:
    t = spawn("fork", 1000)  # the parent calls 1000 times, its forked child 2000 times
    with UprobeCounter.open(specs["push"], t.pid) as push:
        t.go()
        assert push.read() == 1000
    t.finish()


def test_exec_drops_process_events_and_threads_still_start(spawn, specs) -> None:
    t = spawn("exec", 100, 4)  # execs itself, then creates 4 threads
    with UprobeCounter.open(specs["push"], t.pid) as push:
        t.go()  # the "done" line comes from the new program
        assert t.finish() == 0  # its pthread_create calls all worked
        assert push.read() == 0  # the event left with the old address space


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed")
def test_counts_match_bpftrace(up_work, spawn, specs) -> None:
    n = 50_000
    script = (
        f"uprobe:{up_work}:work_push {{ @push = count(); }} "
        f"uprobe:{up_work}:work_rip {{ @rip = count(); }}"
    )
    out = subprocess.run(
        ["bpftrace", "-e", script, "-c", f"{up_work} auto count {n}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    oracle = {k: int(v) for k, v in re.findall(r"@(\w+): (\d+)", out.stdout)}
    t = spawn("count", n)
    with (
        UprobeCounter.open(specs["push"], t.pid) as push,
        UprobeCounter.open(specs["rip"], t.pid) as rip,
    ):
        t.go()
        ours = {"push": push.read(), "rip": rip.read()}
    t.finish()
    assert ours == oracle == {"push": n, "rip": n}


def test_target_is_never_stopped_per_hit(spawn, specs) -> None:
    n = 200_000
    t = spawn("count", n)
    with UprobeCounter.open(specs["push"], t.pid) as push:
        before = t.ctxt_switches()
        t.go()
        counted = t.ctxt_switches() - before
        assert push.read() == n
    t.finish()
    t = spawn("count", n)
    opts = SampleOptions(stack_bytes=64, ring_pages=16)
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        before = t.ctxt_switches()
        t.go()
        sampled = t.ctxt_switches() - before
        assert len(ring.drain()) + ring.lost > 0
    t.finish()
    # A handful for the handshake read and preemption; nothing like one per hit.
    assert counted < 100 and sampled < 100, (counted, sampled)


def test_ref_ctr_offset_raises_the_usdt_semaphore_while_armed(up_work, spawn, specs) -> None:
    sem = file_offset(up_work, "up_sem")
    spec = UprobeSpec(str(up_work), specs["push"].offset, ref_ctr_offset=sem)
    t = spawn("sem", 500)
    assert read_u16(t.pid, t.sem) == 0
    with UprobeCounter.open(spec, t.pid) as push:
        assert read_u16(t.pid, t.sem) == 1
        done = t.go()
        assert done["calls"] == 500 == push.read()
    assert read_u16(t.pid, t.sem) == 0
    t.finish()


# --- sampling ---


def entry_args(samples: list[UprobeSample], spec: UprobeSpec) -> list[tuple[int, int]]:
    return [(s.regs["rdi"], s.regs["rsi"]) for s in samples if s.spec == spec]


@pytest.mark.parametrize("scope", [Scope.PROCESS, Scope.THREAD])
def test_samples_carry_argument_registers_and_the_stack(spawn, specs, scope) -> None:
    n = 2000
    t = spawn("count", n)
    opts = SampleOptions(stack_bytes=256, ring_pages=1024)  # room for every sample
    with SampleRing.open([specs["push"], specs["rip"]], t.pid, scope, opts) as ring:
        t.go()
        samples = [s for s in ring.drain() if isinstance(s, UprobeSample)]
        assert ring.lost == 0
    t.finish()
    assert entry_args(samples, specs["push"]) == [(i, 3 * i + 7) for i in range(n)]
    assert entry_args(samples, specs["rip"]) == [(i, 5 * i + 1) for i in range(n)]
    for s in samples:
        assert (s.pid, s.tid) == (t.pid, t.pid)
        assert s.ip == s.regs["rip"] == (t.push if s.spec == specs["push"] else t.rip)
        assert s.stack_addr == s.regs["rsp"] and len(s.stack) > 8
        # At a function's first instruction the stack starts with the return address.
        (ret,) = struct.unpack_from("<Q", s.stack)
        assert t.push - 0x10000 < ret < t.push + 0x10000
    times = [s.time for s in samples]
    assert times == sorted(times)


def test_user_stack_copy_starts_at_sp(spawn, specs) -> None:
    t = spawn("stack", 100)
    with SampleRing.open([specs["push"]], t.pid, options=SampleOptions(stack_bytes=512)) as ring:
        t.go()
        samples = ring.samples(timeout=0)
    t.finish()
    assert len(samples) == 100
    for i, s in enumerate(samples):
        buf = s.regs["rdi"] - s.stack_addr  # the caller's array, passed by address
        assert 0 < buf < len(s.stack) - 16
        assert struct.unpack_from("<QQ", s.stack, buf) == (STACK_MAGIC, i)
        assert s.regs["rsi"] == i == s.user_regs().rsi


def test_return_probe_counts_and_samples_rax(spawn, specs) -> None:
    n = 1000
    t = spawn("count", n)
    opts = SampleOptions(stack_bytes=64, ring_pages=256)
    with (
        UprobeCounter.open(specs["ret"], t.pid) as count,
        SampleRing.open([specs["ret"]], t.pid, options=opts) as ring,
    ):
        t.go()
        samples = ring.samples(timeout=0)
        assert count.read() == n
    t.finish()
    assert [s.regs["rax"] for s in samples] == [4 * i + 7 for i in range(n)]
    # A return probe reports the address it returns to: in the caller, not in work_push.
    assert all(s.ip != t.push and abs(s.ip - t.push) < 0x10000 for s in samples)


def test_lost_records_are_counted_with_a_tiny_ring(spawn, specs) -> None:
    n = 5000
    t = spawn("count", n)
    opts = SampleOptions(stack_bytes=1024, ring_pages=1)
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        t.go()
        first = ring.samples(timeout=0)
        assert ring.lost == 0  # the kernel writes its LOST record when space frees up
        assert ring.hits() == n  # but the event counted every hit, lost or not
        t.finish()  # one more hit (work_push(-1, -1)) carries the LOST record out
        last = ring.samples(timeout=0)
        assert ring.hits() == n + 1
    assert 0 < len(first) < n
    assert [s.regs["rdi"] for s in last] == [2**64 - 1]
    assert len(first) + ring.lost == n


def test_stash_frees_the_ring_and_drain_keeps_the_order(spawn, specs) -> None:
    t = spawn("count", 10)
    opts = SampleOptions(stack_bytes=0, ring_pages=1)  # room for 18 samples
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        t.go()
        size = ring.pending()
        assert ring.stash() == size > 0 and ring.pending() == size
        assert ring.stash() == 0  # nothing new in the ring
        t.finish()  # one more hit, into the freed ring
        samples = ring.samples(timeout=0)
        assert ring.pending() == 0 and ring.lost == 0
    assert [s.regs["rdi"] for s in samples] == [*range(10), 2**64 - 1]


def test_samples_say_which_cpu_they_were_taken_on(spawn, specs) -> None:
    cpu = max(os.sched_getaffinity(0))
    t = spawn("count", 500)
    os.sched_setaffinity(t.pid, {cpu})  # its only thread runs there and nowhere else
    opts = SampleOptions(stack_bytes=0, ring_pages=64)
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        t.go()
        samples = ring.samples(timeout=0)
    t.finish()
    assert len(samples) == 500 and {s.cpu for s in samples} == {cpu}


def test_no_stack_block_without_a_stack_copy(spawn, specs) -> None:
    """stack_bytes=0 leaves PERF_SAMPLE_STACK_USER out: not even its empty size word."""
    n = 300
    t = spawn("count", n)
    # header, id, ip, pid+tid, time, cpu+reserved, register ABI, then the registers
    size = 8 + 5 * 8 + 8 + 8 * len(perf.X86_64_USER_REGS)
    opts = SampleOptions(stack_bytes=0, ring_pages=64)
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        t.go()
        assert ring.pending() == n * size
        samples = ring.samples(timeout=0)
        assert ring.pending() == 0
    t.finish()
    assert [s.regs["rdi"] for s in samples] == list(range(n))
    assert all(s.stack == b"" and s.stack_addr == s.regs["rsp"] > 0 for s in samples)


def test_one_poll_over_the_rings_of_several_threads(spawn, specs) -> None:
    """What a drain thread does: sleep on every ring and a wake-up fd in one poll(2)."""
    busy, idle = spawn("count", 20_000), spawn("count", 10)
    opts = SampleOptions(stack_bytes=0, ring_pages=16)  # wakeup mark: 4 pages of samples
    bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    with (
        SampleRing.open([specs["push"]], busy.pid, Scope.THREAD, opts) as hot,
        SampleRing.open([specs["push"]], idle.pid, Scope.THREAD, opts) as cold,
    ):
        poller = perf.Poller()
        for fd in (*hot.poll_fds, *cold.poll_fds, bell):
            poller.add(fd)
        assert poller.wait(0.05) == {}
        os.eventfd_write(bell, 1)
        assert poller.wait(None) == {bell: perf.PollResult.READABLE}
        os.eventfd_read(bell)
        busy.go()
        (fd,) = hot.poll_fds
        assert poller.wait(5) == {fd: perf.PollResult.READABLE}
        hot.drain()
        idle.go()  # 10 samples: below the mark, nobody is woken
        assert poller.wait(0.05) == {}
        idle.finish()
        (fd,) = cold.poll_fds
        assert poller.wait(5)[fd] & perf.PollResult.HANGUP  # and the thread exited
        assert len(cold.samples(timeout=0)) == 11 and cold.hits() == 11
        poller.remove(fd)
        busy.finish()
        assert hot.hits() == 20_001
    os.close(bell)


def test_wait_sleeps_until_the_wakeup_mark(spawn, specs) -> None:
    t = spawn("count", 20_000)
    opts = SampleOptions(stack_bytes=0, ring_pages=64, wakeup_bytes=4096)
    with SampleRing.open([specs["push"]], t.pid, Scope.THREAD, opts) as ring:
        assert ring.wait(timeout=0.05) is False  # nothing yet: poll timed out
        t.go()
        assert ring.wait(timeout=5) is True
        got = len(ring.drain())
        t.finish()
        assert ring.wait(timeout=5) is True and ring.hung_up  # the thread exited
        got += len(ring.drain())
    assert got + ring.lost == 20_001


def test_task_events_report_new_threads(spawn, specs) -> None:
    t = spawn("threads", 10, 3)
    opts = SampleOptions(task_events=True)
    with SampleRing.open([specs["push"]], t.pid, Scope.PROCESS, opts) as ring:
        t.go()
        items = ring.drain()
    t.finish()
    forks = [i for i in items if isinstance(i, perf.TaskRecord) and i.type is perf.RecordType.FORK]
    tids = {s.tid for s in items if isinstance(s, UprobeSample)}
    assert len(tids) == 3 and t.pid not in tids
    assert {f.tid for f in forks} >= tids


# --- decoding ---


def test_sample_records_of_every_supported_layout_decode() -> None:
    """Every field the parser knows, at the offsets the kernel's layout gives them."""
    st = perf.SUPPORTED_SAMPLE_TYPES
    mask = perf.regs_mask((perf.X86Reg.AX, perf.X86Reg.SP, perf.X86Reg.IP))
    parser = perf.RecordParser(st, mask)
    head = struct.pack("<QQIIQQQQIIQ", 7, 0x401000, 10, 11, 12345, 0xDEAD, 7, 99, 1, 0, 1)
    chain = struct.pack("<QQQ", 2, 0xAAA, 0xBBB)
    raw = struct.pack("<I", 5) + b"hello"
    regs = struct.pack("<QQQQ", perf.RegsAbi.ABI_64, 42, 0x7FFF0000, 0x401000)
    stack = struct.pack("<Q", 16) + b"S" * 16 + struct.pack("<Q", 12)  # 12 copied of 16
    rec = parser.parse_sample(head + chain + raw + regs + stack, 2)
    assert (rec.id, rec.ip, rec.pid, rec.tid, rec.time) == (7, 0x401000, 10, 11, 12345)
    assert (rec.addr, rec.stream_id, rec.cpu, rec.period) == (0xDEAD, 99, 1, 1)
    assert rec.callchain == (0xAAA, 0xBBB) and rec.raw == b"hello"
    assert rec.regs_abi is perf.RegsAbi.ABI_64
    assert rec.regs == {"rax": 42, "rsp": 0x7FFF0000, "rip": 0x401000}
    assert rec.stack == b"S" * 12 and rec.misc == 2
    # No user registers at the hit: none follow the ABI word, and the stack still decodes.
    none = struct.pack("<Q", perf.RegsAbi.NONE)
    rec = parser.parse_sample(head + chain + raw + none + stack)
    assert rec.regs == {} and rec.regs_abi is perf.RegsAbi.NONE and rec.stack == b"S" * 12
    # Only what was asked for is there; the rest is None.
    small = perf.RecordParser(perf.SampleType.TID | perf.SampleType.CPU)
    rec = small.parse_sample(struct.pack("<IIII", 3, 4, 1, 0))
    assert (rec.pid, rec.tid, rec.cpu, rec.id, rec.time) == (3, 4, 1, None, None)


# --- cleanup and errors ---


def test_close_leaves_nothing_behind(up_work, spawn, specs) -> None:
    t = spawn("count", 10)
    spec = specs["rip"]
    address = uprobes.probe_address(t.pid, spec)
    assert address == t.rip
    original = Path(up_work).read_bytes()[spec.offset : spec.offset + 16]
    # PROCESS scope parks the path just past _end while its events are open.
    end = t.sem - symbol_vaddr(up_work, "up_sem") + symbol_vaddr(up_work, "_end")
    tail_before = read_mem(t.pid, end, 256)
    fds_before = our_perf_fds()
    counter = UprobeCounter.open(spec, t.pid)
    ring = SampleRing.open([spec, specs["push"]], t.pid)
    try:
        assert uprobes.breakpoint_armed(t.pid, spec)
        assert os.fsencode(up_work) + b"\0" in read_mem(t.pid, end, 256)
        # 1 counter + 1 swap guard + 2 probes x 2 CPUs (mmap holds a dup of each ring fd)
        assert uprobes.open_event_count() == 2 + 2 * ring.ring_count > 2
        assert our_perf_fds() - fds_before >= uprobes.open_event_count()
        t.go()
    finally:
        counter.close()
        ring.close()
    assert counter.closed and ring.closed
    assert uprobes.open_event_count() == 0 and our_perf_fds() == fds_before
    assert not uprobes.breakpoint_armed(t.pid, spec)
    assert read_mem(t.pid, address, 16) == original
    assert read_mem(t.pid, end, 256) == tail_before
    assert t.finish() == 0


def test_errors_say_what_went_wrong(up_work, spawn, specs) -> None:
    t = spawn("count", 1)
    size = Path(up_work).stat().st_size
    with pytest.raises(ProbeError, match="beyond the end"):
        UprobeCounter.open(UprobeSpec(str(up_work), size + 4096), t.pid, Scope.THREAD)
    with pytest.raises(ProbeError, match="No such file"):
        UprobeCounter.open(UprobeSpec("/nonexistent/file", 0), t.pid)
    with pytest.raises(ProbeError, match="negative"):
        UprobeSpec(str(up_work), -1)
    t.finish()
    with pytest.raises(NoSuchProcess):
        UprobeCounter.open(specs["push"], t.pid)
    assert uprobes.open_event_count() == 0


SNIPPET = """
import os, sys
from dtproc.errors import AccessDenied
from dtproc.uprobes import Scope, UprobeCounter, UprobeSpec
try:
    UprobeCounter.open(UprobeSpec("/bin/sh", 0), os.getpid(), Scope.THREAD)
except AccessDenied as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
def test_access_denied_without_privileges() -> None:
    out = subprocess.run(
        # Every capability dropped, uid kept: the interpreter and its site-packages may live
        # where only this uid can read them (a pyenv under /root), and perf_event_open
        # decides by capability, not by uid.
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
         sys.executable, "-c", SNIPPET],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert out.stdout.startswith(AccessDenied.__name__), out.stderr
    assert "CAP_PERFMON" in out.stdout and "perf_event_paranoid" in out.stdout
