"""Drive tests/targets/insn_harness.c: run code on the real CPU from a chosen state.

A :class:`Case` describes memory (pages, fills, writes), registers and what to report; one
harness process runs a whole batch of cases (one process per batch keeps reaping trivial:
``subprocess.run`` waits for it). :class:`Memory` models the same initial memory in Python
so that an emulation can run against what the CPU saw.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 0x1000
CODE = 0x10_0000_0000  # two rwx pages of int3: the instruction under test sits at A
A = CODE + 0x800
STACK = 0x10_1000_0000
STACK_SIZE = 0x4000
SP = STACK + 0x2000
DATA = 0x10_2000_0000
DATA_SIZE = 0x2000
DATA_PTR = DATA + 0x1000
NEAR_SLOT = 0x10_3000_0000  # within ±2 GiB of CODE
FAR_SLOT = 0x20_0000_0000  # 64 GiB away
LANDING = 0x10_4000_0000  # never mapped: control arriving here faults with rip = address

GPRS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
REGS = (*GPRS, "rip", "eflags")
BASE_EFLAGS = 0x202  # IF and the always-one bit
M64 = (1 << 64) - 1


def xorshift(size: int, seed: int) -> bytes:
    """The harness's ``fill`` pattern, reproduced."""
    out = bytearray()
    x = seed | 1
    for _ in range(size // 8):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        out += x.to_bytes(8, "little")
    return bytes(out)


class Memory:
    """Page-granular model of the harness's memory; reading or writing elsewhere raises."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        for page, start, end in self._spans(address, size):
            out += page[start:end]
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        done = 0
        for page, start, end in self._spans(address, len(data)):
            page[start:end] = data[done : done + end - start]
            done += end - start

    def _spans(self, address: int, size: int) -> list[tuple[bytearray, int, int]]:
        spans = []
        while size > 0:
            page = self.pages.get(address & ~(PAGE - 1))
            if page is None:
                raise OSError(f"unmapped 0x{address:x}")
            start = address & (PAGE - 1)
            end = min(PAGE, start + size)
            spans.append((page, start, end))
            address += end - start
            size -= end - start
        return spans


@dataclass
class Case:
    regs: dict[str, int]
    xmm: list[bytes] = field(default_factory=lambda: [bytes(range(n, n + 16)) for n in range(16)])
    pages: dict[int, str] = field(default_factory=dict)
    steps: list[tuple[str, int, int, bytes]] = field(default_factory=list)  # fill or write
    dumps: list[tuple[int, int]] = field(default_factory=list)
    hashes: list[tuple[int, int]] = field(default_factory=list)

    def map(self, address: int, size: int, prot: str) -> list[int]:
        """Map the pages over the range; returns the pages that were not mapped yet."""
        new = []
        for page in range(address & ~(PAGE - 1), address + size, PAGE):
            if page not in self.pages:
                self.pages[page] = prot
                new.append(page)
        return new

    def fill(self, address: int, size: int, seed: int) -> None:
        self.steps.append(("fill", address, size, seed.to_bytes(8, "little")))

    def write(self, address: int, data: bytes) -> None:
        self.steps.append(("write", address, len(data), data))

    def memory(self) -> Memory:
        mem = Memory()
        for page in self.pages:
            mem.pages[page] = bytearray(b"\xcc" * PAGE)
        for kind, address, size, data in self.steps:
            if kind == "fill":
                mem.write(address, xorshift(size, int.from_bytes(data, "little")))
            else:
                mem.write(address, data)
        return mem

    def script(self) -> list[str]:
        lines = [f"map {page:x} {PAGE:x} {prot}" for page, prot in sorted(self.pages.items())]
        for kind, address, size, data in self.steps:
            if kind == "fill":
                lines.append(f"fill {address:x} {size:x} {int.from_bytes(data, 'little'):x}")
            else:
                lines.append(f"write {address:x} {data.hex()}")
        lines += [f"xmm {n} {value.hex()}" for n, value in enumerate(self.xmm)]
        lines.append("regs " + " ".join(f"{self.regs[name] & M64:x}" for name in REGS))
        lines.append("run")
        lines += [f"dump {address:x} {size:x}" for address, size in self.dumps]
        lines += [f"hash {address:x} {size:x}" for address, size in self.hashes]
        lines.append("reset")
        return lines


@dataclass(frozen=True)
class Outcome:
    sig: int
    rip: int
    si_addr: int
    regs: dict[str, int]
    xmm: tuple[bytes, ...]
    dumps: dict[int, bytes]
    hashes: dict[int, int]

    def landed(self) -> int | None:
        """Where control arrived after the code under test, or None if it faulted inside.

        Arriving on an int3 reports rip one past it; arriving at an unmapped or
        non-executable address faults with si_addr == rip; a jump to itself spins until the
        harness's timer fires, with rip at the jump.
        """
        if self.sig == signal.SIGTRAP:
            return self.rip - 1
        if self.sig == signal.SIGSEGV and self.si_addr == self.rip:
            return self.rip
        if self.sig == signal.SIGALRM:
            return self.rip
        return None


def standard_case(regs: dict[str, int], seed: int = 1) -> Case:
    """Code pages of int3 at CODE, a stack of int3 bytes, and patterned data."""
    case = Case(dict(regs))
    case.map(CODE, 2 * PAGE, "rwx")
    case.map(STACK, STACK_SIZE, "rw")
    case.map(DATA, DATA_SIZE, "rw")
    case.fill(DATA, DATA_SIZE, seed)
    return case


def run(harness: Path, cases: Sequence[Case]) -> list[Outcome]:
    script = "\n".join(line for case in cases for line in case.script()) + "\n"
    proc = subprocess.run(
        [str(harness)], input=script, capture_output=True, text=True, timeout=120, check=False
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.returncode, proc.stderr, lines[-3:])
    outcomes = []
    pos = 0
    for case in cases:
        _, sig, rip, si_addr = lines[pos].split()
        values = [int(v, 16) for v in lines[pos + 1].split()[1:]]
        xmm = tuple(bytes.fromhex(line.split()[2]) for line in lines[pos + 2 : pos + 18])
        pos += 18
        dumps = {}
        for _ in case.dumps:
            _, address, data = lines[pos].split()
            dumps[int(address, 16)] = bytes.fromhex(data)
            pos += 1
        hashes = {}
        for _ in case.hashes:
            _, address, value = lines[pos].split()
            hashes[int(address, 16)] = int(value, 16)
            pos += 1
        regs = dict(zip(REGS, values, strict=True))
        outcomes.append(Outcome(int(sig), int(rip, 16), int(si_addr, 16), regs, xmm, dumps, hashes))
    return outcomes
