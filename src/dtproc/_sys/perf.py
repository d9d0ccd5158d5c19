"""perf_event_open(2) through ctypes: the attribute struct, ioctls, counters and the ring buffer.

This is the kernel interface under dtproc's uprobe backend, and nothing more:
it opens what it is told to open, maps what it is told to map, and decodes the
records the kernel writes. Failures are ``OSError`` with the kernel's errno;
choosing events, scopes and ring sizes is the business of the layers above.

The stdlib has no perf binding, and the kernel's ``struct perf_event_attr`` has
grown over the years (its ``size`` field says which version the caller speaks),
so the full current layout lives here and the size we pass is the one we fill.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import mmap
import operator
import os
import select
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]  # fmt: skip
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = 2**64 - 1

SYS_PERF_EVENT_OPEN = 298  # x86-64
PAGE_SIZE = mmap.PAGESIZE
PMU_ROOT = "/sys/bus/event_source/devices"


class EventType(enum.IntEnum):
    """``perf_event_attr.type`` for the fixed PMUs; dynamic ones (uprobe) come from sysfs."""

    HARDWARE = 0
    SOFTWARE = 1
    TRACEPOINT = 2
    HW_CACHE = 3
    RAW = 4
    BREAKPOINT = 5


class SoftwareEvent(enum.IntEnum):
    """``config`` values of :attr:`EventType.SOFTWARE` events that dtproc uses."""

    CPU_CLOCK = 0
    TASK_CLOCK = 1
    CONTEXT_SWITCHES = 3
    DUMMY = 9  # counts nothing; carries side-band records or occupies a context


class SampleType(enum.IntFlag):
    """What each PERF_RECORD_SAMPLE carries (``perf_event_attr.sample_type``)."""

    IP = 1 << 0
    TID = 1 << 1
    TIME = 1 << 2
    ADDR = 1 << 3
    READ = 1 << 4
    CALLCHAIN = 1 << 5
    ID = 1 << 6
    CPU = 1 << 7
    PERIOD = 1 << 8
    STREAM_ID = 1 << 9
    RAW = 1 << 10
    BRANCH_STACK = 1 << 11
    REGS_USER = 1 << 12
    STACK_USER = 1 << 13
    WEIGHT = 1 << 14
    DATA_SRC = 1 << 15
    IDENTIFIER = 1 << 16
    TRANSACTION = 1 << 17
    REGS_INTR = 1 << 18
    PHYS_ADDR = 1 << 19
    AUX = 1 << 20
    CGROUP = 1 << 21
    DATA_PAGE_SIZE = 1 << 22
    CODE_PAGE_SIZE = 1 << 23
    WEIGHT_STRUCT = 1 << 24


class ReadFormat(enum.IntFlag):
    """What ``read()`` of an event fd returns (``perf_event_attr.read_format``)."""

    TOTAL_TIME_ENABLED = 1 << 0
    TOTAL_TIME_RUNNING = 1 << 1
    ID = 1 << 2
    GROUP = 1 << 3
    LOST = 1 << 4


class AttrFlag(enum.IntFlag):
    """The one-bit fields of ``perf_event_attr`` (the u64 after ``read_format``)."""

    DISABLED = 1 << 0
    INHERIT = 1 << 1
    PINNED = 1 << 2
    EXCLUSIVE = 1 << 3
    EXCLUDE_USER = 1 << 4
    EXCLUDE_KERNEL = 1 << 5
    EXCLUDE_HV = 1 << 6
    EXCLUDE_IDLE = 1 << 7
    MMAP = 1 << 8
    COMM = 1 << 9
    FREQ = 1 << 10
    INHERIT_STAT = 1 << 11
    ENABLE_ON_EXEC = 1 << 12
    TASK = 1 << 13
    WATERMARK = 1 << 14
    PRECISE_IP_0 = 1 << 15  # precise_ip is two bits wide: 15 and 16
    PRECISE_IP_1 = 1 << 16
    MMAP_DATA = 1 << 17
    SAMPLE_ID_ALL = 1 << 18
    EXCLUDE_HOST = 1 << 19
    EXCLUDE_GUEST = 1 << 20
    EXCLUDE_CALLCHAIN_KERNEL = 1 << 21
    EXCLUDE_CALLCHAIN_USER = 1 << 22
    MMAP2 = 1 << 23
    COMM_EXEC = 1 << 24
    USE_CLOCKID = 1 << 25
    CONTEXT_SWITCH = 1 << 26
    WRITE_BACKWARD = 1 << 27
    NAMESPACES = 1 << 28
    KSYMBOL = 1 << 29
    BPF_EVENT = 1 << 30
    AUX_OUTPUT = 1 << 31
    CGROUP = 1 << 32
    TEXT_POKE = 1 << 33
    BUILD_ID = 1 << 34
    INHERIT_THREAD = 1 << 35
    REMOVE_ON_EXEC = 1 << 36
    SIGTRAP = 1 << 37


class OpenFlag(enum.IntFlag):
    """The ``flags`` argument of perf_event_open(2)."""

    FD_NO_GROUP = 1 << 0
    FD_OUTPUT = 1 << 1
    PID_CGROUP = 1 << 2
    FD_CLOEXEC = 1 << 3


class Ioctl(enum.IntEnum):
    """Event fd ioctls (``_IO('$', n)`` and friends, encoded for x86-64)."""

    ENABLE = 0x2400
    DISABLE = 0x2401
    REFRESH = 0x2402
    RESET = 0x2403
    PERIOD = 0x40082404
    SET_OUTPUT = 0x2405
    SET_FILTER = 0x40082406
    ID = 0x80082407
    SET_BPF = 0x40042408
    PAUSE_OUTPUT = 0x40042409


class RecordType(enum.IntEnum):
    """``perf_event_header.type`` of the records in the ring."""

    MMAP = 1
    LOST = 2
    COMM = 3
    EXIT = 4
    THROTTLE = 5
    UNTHROTTLE = 6
    FORK = 7
    READ = 8
    SAMPLE = 9
    MMAP2 = 10
    AUX = 11
    ITRACE_START = 12
    LOST_SAMPLES = 13
    SWITCH = 14
    SWITCH_CPU_WIDE = 15
    NAMESPACES = 16
    KSYMBOL = 17
    BPF_EVENT = 18
    CGROUP = 19
    TEXT_POKE = 20
    AUX_OUTPUT_HW_ID = 21


class RecordMisc(enum.IntFlag):
    """Bits of ``perf_event_header.misc`` that matter for user-space records."""

    CPUMODE_USER = 2
    MMAP_DATA = 1 << 13  # MMAP/MMAP2: a data (non-exec) mapping
    COMM_EXEC = 1 << 13  # COMM: the name changed because of exec
    MMAP_BUILD_ID = 1 << 14  # MMAP2: the record carries a build-id, not dev/inode
    EXACT_IP = 1 << 14  # SAMPLE: ip is exact


class RegsAbi(enum.IntEnum):
    """The first u64 of a PERF_SAMPLE_REGS_USER block: which register layout follows."""

    NONE = 0
    ABI_32 = 1
    ABI_64 = 2


class X86Reg(enum.IntEnum):
    """Bit positions of ``sample_regs_user`` on x86 (arch/x86/include/uapi/asm/perf_regs.h)."""

    AX = 0
    BX = 1
    CX = 2
    DX = 3
    SI = 4
    DI = 5
    BP = 6
    SP = 7
    IP = 8
    FLAGS = 9
    CS = 10
    SS = 11
    DS = 12
    ES = 13
    FS = 14
    GS = 15
    R8 = 16
    R9 = 17
    R10 = 18
    R11 = 19
    R12 = 20
    R13 = 21
    R14 = 22
    R15 = 23


# The kernel refuses DS/ES/FS/GS for 64-bit tasks (their values are not saved per sample).
X86_64_USER_REGS: tuple[X86Reg, ...] = tuple(
    r for r in X86Reg if r not in (X86Reg.DS, X86Reg.ES, X86Reg.FS, X86Reg.GS)
)


# ``struct user_regs_struct`` names (dtproc._sys.regs) of the perf register numbers.
X86_REG_NAMES: dict[X86Reg, str] = {
    X86Reg.AX: "rax", X86Reg.BX: "rbx", X86Reg.CX: "rcx", X86Reg.DX: "rdx",
    X86Reg.SI: "rsi", X86Reg.DI: "rdi", X86Reg.BP: "rbp", X86Reg.SP: "rsp",
    X86Reg.IP: "rip", X86Reg.FLAGS: "eflags", X86Reg.CS: "cs", X86Reg.SS: "ss",
    X86Reg.DS: "ds", X86Reg.ES: "es", X86Reg.FS: "fs", X86Reg.GS: "gs",
    X86Reg.R8: "r8", X86Reg.R9: "r9", X86Reg.R10: "r10", X86Reg.R11: "r11",
    X86Reg.R12: "r12", X86Reg.R13: "r13", X86Reg.R14: "r14", X86Reg.R15: "r15",
}  # fmt: skip


def regs_mask(regs: tuple[X86Reg, ...]) -> int:
    """The ``sample_regs_user`` bit mask for *regs*."""
    mask = 0
    for reg in regs:
        mask |= 1 << reg
    return mask


def regs_in_mask(mask: int) -> tuple[X86Reg, ...]:
    """The registers a sample carries for *mask*, in the order the kernel writes them."""
    return tuple(r for r in X86Reg if mask >> r & 1)


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr``, the full layout up to ``config3`` (PERF_ATTR_SIZE_VER8).

    The one-bit fields are kept as one u64 (``flags``, an :class:`AttrFlag` value)
    so that callers combine enum members instead of poking ctypes bit-fields.
    """

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),  # union with sample_freq
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),  # union with wakeup_watermark
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # union: bp_addr, kprobe_func, uprobe_path
        ("config2", ctypes.c_uint64),  # union: bp_len, kprobe_addr, probe_offset
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("aux_action", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]

    type: int
    size: int
    config: int
    sample_period: int
    sample_type: int
    read_format: int
    flags: int
    wakeup_events: int
    bp_type: int
    config1: int
    config2: int
    branch_sample_type: int
    sample_regs_user: int
    sample_stack_user: int
    clockid: int
    sample_regs_intr: int
    aux_watermark: int
    sample_max_stack: int
    aux_sample_size: int
    aux_action: int
    sig_data: int
    config3: int

    @property
    def wakeup_watermark(self) -> int:
        return self.wakeup_events

    @wakeup_watermark.setter
    def wakeup_watermark(self, value: int) -> None:
        self.wakeup_events = value


PERF_ATTR_SIZE_VER8 = 136
assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER8


def perf_event_open(
    attr: PerfEventAttr,
    pid: int,
    cpu: int,
    group_fd: int = -1,
    flags: OpenFlag = OpenFlag.FD_CLOEXEC,
) -> int:
    """Open one event and return its fd; ``attr.size`` is set here if the caller left it 0.

    ``attr`` (and whatever ``config1`` points to, such as a uprobe path) must stay
    alive for the duration of the call only: the kernel copies what it needs.
    """
    if attr.size == 0:
        attr.size = ctypes.sizeof(attr)
    ctypes.set_errno(0)
    fd = _syscall(
        ctypes.c_long(SYS_PERF_EVENT_OPEN),
        ctypes.byref(attr),
        ctypes.c_int(pid),
        ctypes.c_int(cpu),
        ctypes.c_int(group_fd),
        ctypes.c_ulong(int(flags)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


# --- dynamic PMUs (uprobe, kprobe): their type and config bit layout live in sysfs ---


def pmu_type(pmu: str) -> int:
    """The ``attr.type`` of a dynamic PMU such as ``uprobe``; ``FileNotFoundError`` if absent."""
    with open(f"{PMU_ROOT}/{pmu}/type") as f:
        return int(f.read().strip())


@dataclass(frozen=True, slots=True)
class PmuFormat:
    """Where a PMU format field lives: ``config:32-63`` is field ``config``, bits 32..63."""

    field: str
    lo: int
    hi: int

    def encode(self, value: int) -> int:
        """*value* shifted into place; ``ValueError`` if it does not fit the bits."""
        width = self.hi - self.lo + 1
        if value < 0 or value >> width:
            raise ValueError(f"{value:#x} does not fit in {width} bits of {self.field}")
        return value << self.lo


def pmu_format(pmu: str, name: str) -> PmuFormat:
    """Read ``/sys/bus/event_source/devices/PMU/format/NAME`` (e.g. uprobe ``retprobe``)."""
    with open(f"{PMU_ROOT}/{pmu}/format/{name}") as f:
        text = f.read().strip()
    field, _, bits = text.partition(":")
    lo, _, hi = bits.partition("-")
    return PmuFormat(field=field, lo=int(lo), hi=int(hi or lo))


@contextlib.contextmanager
def bytes_at(address: int, data: bytes) -> Iterator[None]:
    """Hold *data* at *address* in this process's memory for the duration of the block.

    The uprobe PMU takes its path as a pointer (``config1``) into the memory of
    whoever opens the event; a caller that needs a particular address (one that
    is also valid in another process) maps fresh pages there. ``OSError``
    (EEXIST) if this process already has something at those pages: nothing of
    ours is ever overwritten.
    """
    start = address - address % PAGE_SIZE
    length = -(-(address + len(data) - start) // PAGE_SIZE) * PAGE_SIZE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED_NOREPLACE
    got = _mmap(start, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if got != start:  # kernels before 4.17 treat the flag as a hint
        _munmap(got, length)
        raise OSError(17, f"cannot map a page at {start:#x} in this process")
    try:
        ctypes.memmove(address, data, len(data))
        yield
    finally:
        _munmap(start, length)


# --- ioctls ---


def _ioctl(fd: int, request: Ioctl, arg: int = 0) -> None:
    fcntl.ioctl(fd, request, arg)


def enable(fd: int) -> None:
    _ioctl(fd, Ioctl.ENABLE)


def disable(fd: int) -> None:
    _ioctl(fd, Ioctl.DISABLE)


def reset(fd: int) -> None:
    _ioctl(fd, Ioctl.RESET)


def set_output(fd: int, output_fd: int) -> None:
    """Send *fd*'s records into *output_fd*'s ring (``-1`` undoes it)."""
    _ioctl(fd, Ioctl.SET_OUTPUT, output_fd)


def pause_output(fd: int, paused: bool) -> None:
    _ioctl(fd, Ioctl.PAUSE_OUTPUT, int(paused))


def event_id(fd: int) -> int:
    """The kernel's id of the event: what PERF_SAMPLE_IDENTIFIER and ReadFormat.ID report."""
    buf = bytearray(8)
    fcntl.ioctl(fd, Ioctl.ID, buf)
    return int.from_bytes(buf, "little")


# --- counters ---


@dataclass(frozen=True, slots=True)
class CounterValue:
    """One ``read()`` of a non-group event; fields not asked for in the format are None."""

    value: int
    time_enabled: int | None = None
    time_running: int | None = None
    id: int | None = None
    lost: int | None = None


_COUNTER_FIELDS = (
    (ReadFormat.TOTAL_TIME_ENABLED, "time_enabled"),
    (ReadFormat.TOTAL_TIME_RUNNING, "time_running"),
    (ReadFormat.ID, "id"),
    (ReadFormat.LOST, "lost"),
)


_NO_READ_FORMAT = ReadFormat(0)


def read_counter(fd: int, read_format: ReadFormat = _NO_READ_FORMAT) -> CounterValue:
    """Read a counter opened with *read_format* (which must not contain GROUP)."""
    if read_format & ReadFormat.GROUP:
        raise ValueError("read_counter reads single events; GROUP is not a single event")
    names = [name for bit, name in _COUNTER_FIELDS if read_format & bit]
    size = 8 * (1 + len(names))
    data = os.read(fd, size)
    if len(data) != size:
        raise OSError(0, f"short read of perf counter: {len(data)} of {size} bytes")
    value, *rest = struct.unpack(f"<{1 + len(names)}Q", data)
    return CounterValue(value, **dict(zip(names, rest, strict=True)))


# --- records ---


@dataclass(frozen=True, slots=True)
class SampleId:
    """The ``sample_id`` trailer of non-sample records (``sample_id_all``); absent fields None."""

    pid: int | None = None
    tid: int | None = None
    time: int | None = None
    id: int | None = None
    stream_id: int | None = None
    cpu: int | None = None


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """PERF_RECORD_SAMPLE; fields the ``sample_type`` did not ask for are None or empty.

    ``regs`` maps the name of each register of the ``sample_regs_user`` mask
    (:data:`X86_REG_NAMES`, as in ``UserRegs``) to its value; it is empty when the
    kernel had no user registers (``regs_abi`` is NONE). Names, not :class:`X86Reg`
    members, because every reader wants them and a str key hashes in C. ``stack`` is
    only the part of the user stack the kernel actually copied (``dyn_size`` bytes),
    starting at the sampled stack pointer.
    """

    id: int | None
    ip: int | None
    pid: int | None
    tid: int | None
    time: int | None
    addr: int | None
    stream_id: int | None
    cpu: int | None
    period: int | None
    callchain: tuple[int, ...]
    raw: bytes
    regs_abi: RegsAbi
    regs: Mapping[str, int]
    stack: bytes
    misc: int


@dataclass(frozen=True, slots=True)
class LostRecord:
    """PERF_RECORD_LOST: the ring was full and *lost* records of event *id* were dropped."""

    id: int
    lost: int
    sample_id: SampleId


@dataclass(frozen=True, slots=True)
class Mmap2Record:
    """PERF_RECORD_MMAP2: a new mapping (a library loaded after the event was opened)."""

    pid: int
    tid: int
    addr: int
    len: int
    pgoff: int
    maj: int
    min: int
    ino: int
    ino_generation: int
    build_id: bytes  # set instead of maj/min/ino when MMAP_BUILD_ID is in misc
    prot: int
    flags: int
    filename: str
    misc: int
    sample_id: SampleId


@dataclass(frozen=True, slots=True)
class CommRecord:
    """PERF_RECORD_COMM: a thread's name changed; ``exec`` when because of execve."""

    pid: int
    tid: int
    comm: str
    exec: bool
    sample_id: SampleId


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """PERF_RECORD_FORK or PERF_RECORD_EXIT (threads and processes alike)."""

    type: RecordType
    pid: int
    ppid: int
    tid: int
    ptid: int
    time: int
    sample_id: SampleId


@dataclass(frozen=True, slots=True)
class OtherRecord:
    """A record type this module does not decode, kept raw."""

    type: int
    misc: int
    data: bytes


Record = SampleRecord | LostRecord | Mmap2Record | CommRecord | TaskRecord | OtherRecord

# PERF_RECORD_SAMPLE fields before REGS_USER, in the kernel's order, as fixed-size parts.
_SIMPLE_SAMPLE_FIELDS: tuple[tuple[SampleType, str, str], ...] = (
    (SampleType.IDENTIFIER, "Q", "id"),
    (SampleType.IP, "Q", "ip"),
    (SampleType.TID, "II", "pid tid"),
    (SampleType.TIME, "Q", "time"),
    (SampleType.ADDR, "Q", "addr"),
    (SampleType.ID, "Q", "id"),
    (SampleType.STREAM_ID, "Q", "stream_id"),
    (SampleType.CPU, "II", "cpu _"),
    (SampleType.PERIOD, "Q", "period"),
)
_SAMPLE_ID_FIELDS: tuple[tuple[SampleType, str, str], ...] = (
    (SampleType.TID, "II", "pid tid"),
    (SampleType.TIME, "Q", "time"),
    (SampleType.ID, "Q", "id"),
    (SampleType.STREAM_ID, "Q", "stream_id"),
    (SampleType.CPU, "II", "cpu _"),
    (SampleType.IDENTIFIER, "Q", "id"),
)
SUPPORTED_SAMPLE_TYPES = (
    SampleType.IDENTIFIER
    | SampleType.IP
    | SampleType.TID
    | SampleType.TIME
    | SampleType.ADDR
    | SampleType.ID
    | SampleType.STREAM_ID
    | SampleType.CPU
    | SampleType.PERIOD
    | SampleType.CALLCHAIN
    | SampleType.RAW
    | SampleType.REGS_USER
    | SampleType.STACK_USER
)


def _compile(
    sample_type: SampleType, fields: tuple[tuple[SampleType, str, str], ...]
) -> tuple[struct.Struct, tuple[str, ...]]:
    fmt = "<"
    names: list[str] = []
    for bit, code, name in fields:
        if sample_type & bit:
            fmt += code
            names.extend(name.split())
    return struct.Struct(fmt), tuple(names)


_HEADER = struct.Struct("<IHH")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
_TASK = struct.Struct("<IIIIQ")
_MMAP2 = struct.Struct("<IIQQQ")
_MMAP2_IDS = struct.Struct("<IIQQ")
_MMAP2_PROT = struct.Struct("<II")


class RecordParser:
    """Decodes records of events opened with one ``sample_type`` and ``sample_regs_user``.

    Events whose records share a ring must agree on these (the kernel lays out
    each record from its own event's attributes, and a reader has only the bytes).
    """

    def __init__(self, sample_type: SampleType, regs_user: int = 0, sample_id_all: bool = True):
        unsupported = sample_type & ~SUPPORTED_SAMPLE_TYPES
        if unsupported:
            raise ValueError(f"sample types {unsupported!r} are not decoded by RecordParser")
        self.sample_type = sample_type
        self.regs = regs_in_mask(regs_user)
        self._regs = struct.Struct(f"<{len(self.regs)}Q")
        self._reg_names = tuple(X86_REG_NAMES[r] for r in self.regs)
        self._head, head_names = _compile(sample_type, _SIMPLE_SAMPLE_FIELDS)
        # Every test of sample_type is made here, once: parse_sample runs per hit.
        self._scalars = _picker(head_names, _SAMPLE_SCALARS)
        self._callchain = bool(sample_type & SampleType.CALLCHAIN)
        self._raw = bool(sample_type & SampleType.RAW)
        self._regs_user = bool(sample_type & SampleType.REGS_USER)
        self._stack_user = bool(sample_type & SampleType.STACK_USER)
        if sample_id_all:
            self._trailer, self._trailer_names = _compile(sample_type, _SAMPLE_ID_FIELDS)
        else:
            self._trailer, self._trailer_names = struct.Struct("<"), ()

    def parse(self, rtype: int, misc: int, data: bytes) -> Record:
        """Decode one record body (*data* is what follows the 8-byte header)."""
        if rtype == RecordType.SAMPLE:
            return self.parse_sample(data, misc)
        if rtype == RecordType.LOST:
            rid, lost = _U64X2.unpack_from(data)
            return LostRecord(rid, lost, self._sample_id(data))
        if rtype == RecordType.MMAP2:
            return self._parse_mmap2(data, misc)
        if rtype == RecordType.COMM:
            pid, tid = _MMAP2_PROT.unpack_from(data)
            comm = _cstring(data, 8, len(data) - self._trailer.size)
            exec_ = bool(misc & RecordMisc.COMM_EXEC)
            return CommRecord(pid, tid, comm, exec_, self._sample_id(data))
        if rtype in (RecordType.EXIT, RecordType.FORK):
            pid, ppid, tid, ptid, time = _TASK.unpack_from(data)
            return TaskRecord(RecordType(rtype), pid, ppid, tid, ptid, time, self._sample_id(data))
        return OtherRecord(rtype, misc, data)

    def _sample_id(self, data: bytes) -> SampleId:
        if not self._trailer_names:
            return SampleId()
        values = self._trailer.unpack_from(data, len(data) - self._trailer.size)
        named = dict(zip(self._trailer_names, values, strict=True))
        named.pop("_", None)
        return SampleId(**named)

    def _parse_mmap2(self, data: bytes, misc: int) -> Mmap2Record:
        pid, tid, addr, length, pgoff = _MMAP2.unpack_from(data)
        pos = _MMAP2.size
        if misc & RecordMisc.MMAP_BUILD_ID:
            size = data[pos]
            build_id = bytes(data[pos + 4 : pos + 4 + size])
            maj = mnr = ino = gen = 0
        else:
            maj, mnr, ino, gen = _MMAP2_IDS.unpack_from(data, pos)
            build_id = b""
        prot, flags = _MMAP2_PROT.unpack_from(data, pos + 24)
        filename = _cstring(data, pos + 32, len(data) - self._trailer.size)
        return Mmap2Record(
            pid, tid, addr, length, pgoff, maj, mnr, ino, gen, build_id, prot, flags,
            filename, misc, self._sample_id(data),
        )  # fmt: skip

    def parse_sample(self, data: bytes, misc: int = 0) -> SampleRecord:
        """Decode a PERF_RECORD_SAMPLE body."""
        head = self._head.unpack_from(data)
        pos = self._head.size
        callchain: tuple[int, ...] = ()
        if self._callchain:
            (nr,) = _U64.unpack_from(data, pos)
            callchain = struct.unpack_from(f"<{nr}Q", data, pos + 8)
            pos += 8 + 8 * nr
        raw = b""
        if self._raw:
            (size,) = _U32.unpack_from(data, pos)
            raw = bytes(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        abi = RegsAbi.NONE
        regs: dict[str, int] = {}
        if self._regs_user:
            abi = _regs_abi(_U64.unpack_from(data, pos)[0])
            pos += 8
            if abi is not RegsAbi.NONE:
                regs = dict(zip(self._reg_names, self._regs.unpack_from(data, pos), strict=True))
                pos += self._regs.size
        stack = b""
        if self._stack_user:
            (size,) = _U64.unpack_from(data, pos)
            if size:
                (dyn,) = _U64.unpack_from(data, pos + 8 + size)
                stack = bytes(data[pos + 8 : pos + 8 + min(dyn, size)])
        scalars = self._scalars((*head, None))
        return SampleRecord(*scalars, callchain, raw, abi, regs, stack, misc)


# The fixed-size SampleRecord fields, in its order, and their values (None: not sampled).
_SAMPLE_SCALARS: Final = ("id", "ip", "pid", "tid", "time", "addr", "stream_id", "cpu", "period")
_Scalar = int | None
_Scalars = tuple[_Scalar, _Scalar, _Scalar, _Scalar, _Scalar, _Scalar, _Scalar, _Scalar, _Scalar]
_ABIS: Final = {abi.value: abi for abi in RegsAbi}


def _picker(
    names: tuple[str, ...], wanted: tuple[str, ...]
) -> Callable[[tuple[_Scalar, ...]], _Scalars]:
    """Picks *wanted* out of values laid out as *names* plus one None (for those absent).

    A name given twice (``id`` by both IDENTIFIER and ID) is taken from its last place.
    """
    where = {name: i for i, name in enumerate(names)}
    return operator.itemgetter(*(where.get(name, len(names)) for name in wanted))


def _regs_abi(value: int) -> RegsAbi:
    found = _ABIS.get(value)
    if found is None:
        raise ValueError(f"corrupt perf sample: register ABI {value}")
    return found


def _cstring(data: bytes, start: int, end: int) -> str:
    raw = bytes(data[start:end])
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


# --- the ring buffer ---

# Offsets in struct perf_event_mmap_page (the first page of the mapping).
_MMAP_DATA_HEAD = 1024
_MMAP_DATA_TAIL = 1032
_MMAP_DATA_OFFSET = 1040
_MMAP_DATA_SIZE = 1048
_HEAD_TAIL = struct.Struct("<QQ")  # data_head, then data_tail right after it


class RingBuffer:
    """The mmap'ed ring of one event fd: 1 metadata page plus 2**n data pages.

    Reading follows the kernel's protocol: load ``data_head``, copy the bytes
    between our tail and that head, then store ``data_tail`` so the kernel may
    reuse them. x86-64 keeps loads ordered with loads and stores with earlier
    loads, which is the acquire/release pairing the protocol needs, so plain
    loads and stores through the mapping are enough here.
    """

    def __init__(self, fd: int, data_pages: int) -> None:
        if data_pages <= 0 or data_pages & (data_pages - 1):
            raise ValueError(f"data_pages must be a power of two, not {data_pages}")
        self.fd = fd
        self._map: mmap.mmap | None = mmap.mmap(
            fd,
            (1 + data_pages) * PAGE_SIZE,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        (self.data_offset,) = _U64.unpack_from(self._map, _MMAP_DATA_OFFSET)
        (self.data_size,) = _U64.unpack_from(self._map, _MMAP_DATA_SIZE)
        if not self.data_offset:  # kernels before 4.1 leave these 0
            self.data_offset, self.data_size = PAGE_SIZE, data_pages * PAGE_SIZE

    @property
    def closed(self) -> bool:
        return self._map is None

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError("ring buffer is closed")
        return self._map

    def pending(self) -> int:
        """Bytes written by the kernel and not consumed yet (a look at the page, no syscall)."""
        head, tail = _HEAD_TAIL.unpack_from(self._mapping(), _MMAP_DATA_HEAD)
        return int(head - tail)

    def read(self) -> bytes:
        """Take every complete record now in the ring, as one byte string, and free its space."""
        m = self._mapping()
        head, tail = _HEAD_TAIL.unpack_from(m, _MMAP_DATA_HEAD)
        if head == tail:
            return b""
        size = self.data_size
        start = self.data_offset + tail % size
        length = head - tail
        end = start + length
        limit = self.data_offset + size
        if end <= limit:
            data = m[start:end]
        else:
            data = m[start:limit] + m[self.data_offset : self.data_offset + end - limit]
        _U64.pack_into(m, _MMAP_DATA_TAIL, head)
        return data

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def iter_records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Split what :meth:`RingBuffer.read` returned into ``(type, misc, body)`` triples."""
    view = memoryview(data)
    pos = 0
    end = len(data)
    while pos + _HEADER.size <= end:
        rtype, misc, size = _HEADER.unpack_from(view, pos)
        if size < _HEADER.size:
            raise ValueError(f"corrupt perf record header at {pos}: size {size}")
        yield rtype, misc, bytes(view[pos + _HEADER.size : pos + size])
        pos += size


# --- waiting ---


class PollResult(enum.Flag):
    NONE = 0
    READABLE = enum.auto()  # POLLIN: the ring reached its wakeup point
    HANGUP = enum.auto()  # POLLHUP: the event's task has exited


class Poller:
    """A set of fds waited on together in one poll(2), kept from one wait to the next.

    One thread can then sleep on every ring of a traced process (and a wake-up fd
    of its own) at once, adding and removing fds as threads come and go, without
    registering them all again for each wait.

    A ring's fd reports READABLE once per crossing of its wakeup mark (the kernel
    clears the state as poll reads it): a reader must empty the ring after each
    READABLE. HANGUP stays set for good once the event's task has exited.
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fds: set[int] = set()

    def add(self, fd: int) -> None:
        if fd not in self._fds:
            self._poll.register(fd, select.POLLIN)
            self._fds.add(fd)

    def remove(self, fd: int) -> None:
        if fd in self._fds:
            self._poll.unregister(fd)
            self._fds.discard(fd)

    def wait(self, timeout: float | None) -> dict[int, PollResult]:
        """Wait for any fd to become readable or hung up; *timeout* in seconds (None: forever).

        Returns the fds that are ready and why (empty on timeout). An fd closed
        while registered is reported as hung up: it has nothing more to say.
        """
        ms = None
        if timeout is not None:  # whole milliseconds, but a wait asked for is never 0
            ms = max(int(timeout * 1000), 1 if timeout > 0 else 0)
        out: dict[int, PollResult] = {}
        for fd, mask in self._poll.poll(ms):
            result = PollResult.NONE
            if mask & select.POLLIN:
                result |= PollResult.READABLE
            if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                result |= PollResult.HANGUP
            out[fd] = result
        return out


def poll(fds: list[int], timeout: float | None) -> dict[int, PollResult]:
    """Wait for any of *fds* to become readable or hung up (see :meth:`Poller.wait`).

    Blocks in poll(2), so a waiting reader costs nothing while the traced program runs.
    """
    poller = Poller()
    for fd in fds:
        poller.add(fd)
    return poller.wait(timeout)
