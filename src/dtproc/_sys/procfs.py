"""Readers for /proc/PID files: stat, status, task lists, maps, auxv, memory.

All of them raise ``OSError`` (usually ``FileNotFoundError`` for a vanished
process) and leave interpretation to the layers above.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

PF_KTHREAD = 0x00200000


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of /proc/PID/stat that dtproc uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    num_threads: int
    start_time: int  # clock ticks since boot: with pid, the process identity
    processor: int


def read_stat(pid: int, tid: int | None = None) -> Stat:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as f:
        data = f.read()
    # comm may contain spaces and parentheses: it ends at the last ')'.
    lparen = data.index(b"(")
    rparen = data.rindex(b")")
    comm = data[lparen + 1 : rparen].decode(errors="replace")
    rest = data[rparen + 2 :].split()
    return Stat(
        pid=int(data[:lparen]),
        comm=comm,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        flags=int(rest[6]),
        num_threads=int(rest[17]),
        start_time=int(rest[19]),
        processor=int(rest[36]),
    )


def read_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def tracer_pid(pid: int) -> int:
    return int(read_status(pid).get("TracerPid", "0"))


def thread_ids(pid: int) -> list[int]:
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))


def tgid_of(tid: int) -> int | None:
    """The thread group (process) a thread id belongs to, or None if it is gone."""
    try:
        return int(read_status(tid).get("Tgid", "0")) or None
    except OSError:
        return None


def exe_path(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]


AT_NULL = 0
AT_PHDR = 3
AT_PHNUM = 5
AT_BASE = 7
AT_ENTRY = 9
AT_SYSINFO_EHDR = 33


def read_auxv(pid: int) -> dict[int, int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read()
    out: dict[int, int] = {}
    for key, value in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]):
        if key == AT_NULL:
            break
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous; "[stack]", "[vdso]", ... for special ones

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


def read_maps(pid: int) -> list[Mapping]:
    with open(f"/proc/{pid}/maps") as f:
        lines = f.read().splitlines()
    out: list[Mapping] = []
    for line in lines:
        parts = line.split(None, 5)
        lo, _, hi = parts[0].partition("-")
        out.append(
            Mapping(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=parts[1],
                offset=int(parts[2], 16),
                dev=parts[3],
                inode=int(parts[4]),
                path=parts[5] if len(parts) > 5 else "",
            )
        )
    return out
