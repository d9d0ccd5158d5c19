"""Stack snapshots taken by gdb, and an unwinder address space over them (test oracle).

gdb runs a target in batch mode with a breakpoint; at every stop its Python API records the
registers, gdb's own backtrace (physical frames only: inlined frames share their caller's
pc and are invisible to a CFI unwinder), /proc/PID/maps, the stack from a page below %rsp to
the end of its mapping and the vDSO image.  :class:`SnapshotSpace` then serves those bytes,
plus the mapped files from disk, to :func:`dtproc.unwind.unwind` after the process is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dtproc._sys.regs import DWARF_REGS
from dtproc.elf import ElfFile
from dtproc.errors import BadAddress
from dtproc.modules import Module

# gdb's physical frames of the selected thread: runs inside gdb, as a prefix of the scripts.
_GDB_FRAMES = r"""
import json, os, gdb


def frames():
    out = []
    frame = gdb.newest_frame()
    while frame is not None and len(out) < 1000:
        if frame.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):
            out.append({"pc": frame.pc(), "name": frame.name() or "",
                        "type": int(frame.type())})
        try:
            frame = frame.older()
        except gdb.error:
            break
    return out
"""

# Runs inside gdb.  Kept free of f-string nesting and third-party imports.
_GDB_SCRIPT = (
    _GDB_FRAMES
    + r"""
OUT = os.environ["UW_OUT"]
REGS = os.environ["UW_REGS"].split(",")
STACK_LIMIT = int(os.environ["UW_STACK_LIMIT"])
MAX_STOPS = int(os.environ["UW_MAX_STOPS"])
BELOW_SP = 4096  # a live process can read below %rsp too (the red zone and beyond)


def maps_of(pid):
    with open("/proc/%d/maps" % pid) as f:
        return f.read()


def region(maps, addr):
    for line in maps.splitlines():
        span = line.split()[0]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= addr < hi:
            return lo, hi, line
    return None


def snapshot(n):
    inferior = gdb.selected_inferior()
    frame = gdb.newest_frame()
    regs = {name: int(frame.read_register(name)) & (2**64 - 1) for name in REGS}
    maps = maps_of(inferior.pid)
    sp = regs["rsp"]
    lo, hi, _ = region(maps, sp)
    top = min(hi, sp + STACK_LIMIT)
    bottom = max(lo, sp - BELOW_SP)
    stack = bytes(inferior.read_memory(bottom, top - bottom))
    with open(os.path.join(OUT, "stack-%d.bin" % n), "wb") as f:
        f.write(stack)
    vdso = None
    for line in maps.splitlines():
        if line.endswith("[vdso]"):
            vlo, vhi = (int(x, 16) for x in line.split()[0].split("-"))
            with open(os.path.join(OUT, "vdso.bin"), "wb") as f:
                f.write(bytes(inferior.read_memory(vlo, vhi - vlo)))
            vdso = vlo
    record = {"regs": regs, "frames": frames(), "maps": maps, "stack_start": bottom,
              "stack_mapping": [lo, hi], "vdso": vdso,
              "thread": gdb.selected_thread().num}
    with open(os.path.join(OUT, "snap-%d.json" % n), "w") as f:
        json.dump(record, f)


gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("set backtrace past-main on")
gdb.execute("set backtrace limit 1000")
gdb.execute("set print thread-events off")
gdb.execute("set breakpoint pending on")
for sig in ("SIGUSR1", "SIGUSR2"):
    gdb.execute("handle %s nostop noprint pass" % sig)
for spec in os.environ["UW_BREAK"].split(";"):
    gdb.Breakpoint(spec)
gdb.execute("run " + os.environ["UW_ARGS"], to_string=True)
count = 0
while count < MAX_STOPS and gdb.selected_inferior().pid and gdb.selected_thread() is not None:
    snapshot(count)
    count += 1
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
"""
)

# Attached to a running process: the physical frames of every thread, by thread id.
_GDB_ATTACH = (
    _GDB_FRAMES
    + r"""
stacks = {}
for thread in gdb.selected_inferior().threads():
    thread.switch()
    stacks[thread.ptid[1]] = [f["pc"] for f in frames()]
with open(os.environ["UW_OUT"], "w") as f:
    json.dump(stacks, f)
"""
)

_REGS = (*DWARF_REGS, "eflags")
PAUSE_SYSCALL = 34


def attach_backtraces(pid: int, out: Path, timeout: float = 60) -> dict[int, tuple[int, ...]]:
    """gdb's backtrace of every thread of the running process *pid* (attached, then let go)."""
    out.mkdir(parents=True, exist_ok=True)
    script, result = out / "attach.py", out / "attach.json"
    script.write_text(_GDB_ATTACH)
    cmd = ["gdb", "-batch", "-nx", "-q", "-p", str(pid), "-ex", "set backtrace past-main on"]
    subprocess.run(
        [*cmd, "-x", str(script)],
        check=False,
        env=dict(os.environ, UW_OUT=str(result)),
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return {int(tid): tuple(pcs) for tid, pcs in json.loads(result.read_text()).items()}


def wait_until_parked(pid: int, threads: int, timeout: float = 10) -> None:
    """Wait until *pid* has *threads* threads, each blocked in pause() (tests/targets/us_deep.c)."""
    deadline = time.monotonic() + timeout
    while not _parked(pid, threads):
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid}: its {threads} threads never all sat in pause()")
        time.sleep(0.005)


def _parked(pid: int, threads: int) -> bool:
    tids = os.listdir(f"/proc/{pid}/task")
    if len(tids) != threads:
        return False
    for tid in tids:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            if f.read().split()[0] != str(PAUSE_SYSCALL):
                return False
    return True


@dataclass(frozen=True)
class GdbFrame:
    pc: int
    name: str
    type: int


@dataclass(frozen=True)
class Snapshot:
    """One breakpoint stop, as gdb saw it."""

    regs: dict[int, int]  # DWARF numbers
    frames: tuple[GdbFrame, ...]
    maps: str
    stack_start: int
    stack: bytes
    stack_mapping: tuple[int, int]
    vdso: bytes | None
    vdso_start: int | None

    @property
    def pcs(self) -> tuple[int, ...]:
        return tuple(f.pc for f in self.frames)


def take_snapshots(
    binary: Path,
    out: Path,
    *,
    args: Sequence[str] = (),
    breakpoints: Sequence[str] = ("*uw_leaf",),
    max_stops: int = 20,
    stack_limit: int = 1 << 20,
    timeout: float = 120,
) -> list[Snapshot]:
    """Run *binary* under gdb and snapshot every breakpoint stop (the process is gone after)."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "snapshot.py"
    script.write_text(_GDB_SCRIPT)
    env = dict(
        os.environ,
        UW_OUT=str(out),
        UW_REGS=",".join(_REGS),
        UW_STACK_LIMIT=str(stack_limit),
        UW_MAX_STOPS=str(max_stops),
        UW_BREAK=";".join(breakpoints),
        UW_ARGS=" ".join(args),
    )
    cmd = ["gdb", "-batch", "-nx", "-q", "-x", str(script), str(binary)]
    proc = subprocess.run(
        cmd,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    snaps = []
    for n in range(max_stops):
        path = out / f"snap-{n}.json"
        if not path.exists():
            break
        snaps.append(_load(out, n, json.loads(path.read_text())))
    if not snaps:
        raise RuntimeError(f"gdb took no snapshot of {binary}:\n{proc.stdout}\n{proc.stderr}")
    return snaps


def _load(out: Path, n: int, record: dict[str, object]) -> Snapshot:
    regs_by_name = record["regs"]
    assert isinstance(regs_by_name, dict)
    regs = {
        DWARF_REGS.index(name): value for name, value in regs_by_name.items() if name in DWARF_REGS
    }
    frames = record["frames"]
    assert isinstance(frames, list)
    vdso_path = out / "vdso.bin"
    vdso_start = record["vdso"]
    mapping = record["stack_mapping"]
    assert isinstance(mapping, list)
    stack_start = record["stack_start"]
    maps = record["maps"]
    assert isinstance(stack_start, int) and isinstance(maps, str)
    return Snapshot(
        regs,
        tuple(GdbFrame(f["pc"], f["name"], f["type"]) for f in frames),
        maps,
        stack_start,
        (out / f"stack-{n}.bin").read_bytes(),
        (mapping[0], mapping[1]),
        vdso_path.read_bytes() if vdso_start is not None and vdso_path.exists() else None,
        vdso_start if isinstance(vdso_start, int) else None,
    )


#: The tag of a stop in the vDSO's clock_gettime (uw_basic.c's scenario 7).
VDSO = "vdso"


def by_tag(snaps: list[Snapshot]) -> dict[int | str, Snapshot]:
    """The first stop of each scenario: uw_leaf's first argument (%rdi) names it."""
    out: dict[int | str, Snapshot] = {}
    for snap in snaps:
        tag: int | str = VDSO if "clock_gettime" in snap.frames[0].name else snap.regs[5]
        out.setdefault(tag, snap)
    return out


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def _parse_maps(text: str) -> list[_Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5] if len(parts) > 5 else ""
        out.append(_Mapping(lo, hi, parts[1], int(parts[2], 16), path))
    return out


class SnapshotSpace:
    """An :class:`dtproc.unwind.AddressSpace` over a snapshot and the files it mapped."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.mappings = _parse_maps(snap.maps)
        self.modules = self._modules()
        self.reads = 0

    def _modules(self) -> list[Module]:
        by_path: dict[str, list[_Mapping]] = {}
        for m in self.mappings:
            if m.path.startswith("/") or m.path == "[vdso]":
                by_path.setdefault(m.path, []).append(m)
        modules = []
        for path, maps in by_path.items():
            start, end = min(m.start for m in maps), max(m.end for m in maps)
            if path == "[vdso]":
                if self.snap.vdso is None:
                    continue
                elf = ElfFile.from_bytes(self.snap.vdso, "[vdso]")
                bias = start - elf.min_vaddr
            else:
                elf = ElfFile.open(path)
                first = min(maps, key=lambda m: m.offset)
                bias = elf.load_bias(first.start, first.offset, first.perms)
            modules.append(Module(os.path.basename(path), path, start, end, bias, elf))
        return modules

    def module_at(self, address: int) -> Module | None:
        for module in self.modules:
            if module.contains(address):
                return module
        return None

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        snap = self.snap
        stack_end = snap.stack_start + len(snap.stack)
        if snap.stack_start <= address < stack_end:
            off = address - snap.stack_start
            return snap.stack[off : off + size]
        if snap.vdso is not None and snap.vdso_start is not None:
            off = address - snap.vdso_start
            if 0 <= off < len(snap.vdso):
                return snap.vdso[off : off + size]
        for m in self.mappings:
            if m.start <= address < m.end and m.path.startswith("/") and "w" not in m.perms:
                with open(m.path, "rb") as f:
                    f.seek(m.offset + address - m.start)
                    return f.read(min(size, m.end - address))
        raise BadAddress(0, address, size, "not in the snapshot")

    def stack_bounds(self, address: int) -> tuple[int, int] | None:
        lo, hi = self.snap.stack_mapping
        if lo <= address < hi:
            return lo, hi
        for m in self.mappings:
            if m.start <= address < m.end and "w" in m.perms:
                return m.start, m.end
        return None
