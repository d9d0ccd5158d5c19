"""dtproc.insn: decoding, return sites, and both ways past a displaced instruction.

The CPU is the oracle. tests/targets/insn_harness.c runs code from a chosen register state
and reports the state it ends in (tests/insn_machine.py drives it): a relocated slot must
end exactly where the instruction run in place ends, and an emulation must compute what the
CPU computes. Capstone's detail mode and objdump check the structural parts.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from dtproc._sys.regs import UserRegs
from dtproc.errors import DisplaceError
from dtproc.insn import (
    SLOT_SIZE,
    STATUS_FLAGS,
    Emulated,
    EmulatedForm,
    Flow,
    Instruction,
    OutOfLine,
    ReturnKind,
    decode,
    instruction_boundaries,
    plan,
    plan_instruction,
    return_sites,
)
from dtproc.insn_encoding import GPR, Segment, parse
from insn_machine import (
    BASE_EFLAGS,
    CODE,
    DATA,
    DATA_PTR,
    DATA_SIZE,
    FAR_SLOT,
    GPRS,
    LANDING,
    NEAR_SLOT,
    PAGE,
    SP,
    STACK,
    STACK_SIZE,
    A,
    Case,
    Outcome,
    run,
    standard_case,
)

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LDSO = "/lib64/ld-linux-x86-64.so.2"
M64 = (1 << 64) - 1
Builder = Callable[..., Path]


def libpython() -> str:
    """The ELF file holding this interpreter's code: libpython if it is shared."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libpython3" in line and line.rstrip().endswith(".so.1.0"):
                return line.split()[-1]
    return str(Path(sys.executable).resolve())


@functools.cache
def code_sections(path: str) -> tuple[tuple[int, bytes], ...]:
    """(address, bytes) of each executable section."""
    with open(path, "rb") as f:
        return tuple(
            (section["sh_addr"], section.data())
            for section in ELFFile(f).iter_sections()
            if section["sh_flags"] & 4 and section["sh_type"] == "SHT_PROGBITS"
        )


def functions(path: str) -> list[tuple[str, int, int]]:
    """(name, address, size) of the defined functions in .symtab, else .dynsym."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        table = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
        assert isinstance(table, SymbolTableSection)
        seen: dict[int, tuple[str, int, int]] = {}
        for sym in table.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] and sym["st_value"]:
                seen.setdefault(sym["st_value"], (sym.name, sym["st_value"], sym["st_size"]))
    return sorted(seen.values(), key=lambda f: f[1])


def read_at(path: str, address: int, size: int) -> bytes:
    for base, data in code_sections(path):
        if base <= address < base + len(data):
            return data[address - base : address - base + size]
    raise AssertionError(f"0x{address:x} not in {path}'s code")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def harness(build: Builder) -> Path:
    return build("insn_harness", "-O1", "-fno-stack-protector")


def assemble(build: Builder, lines: Sequence[str]) -> list[bytes]:
    """Bytes of each AT&T line, assembled by gas (one object for all of them)."""
    body = "".join(f"i{n}:\n\t{line}\n" for n, line in enumerate(lines))
    obj = build("insn_asm", "-c", source=f".text\n{body}i{len(lines)}:\n", lang="s")
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text").data()
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        at = {sym.name: sym["st_value"] for sym in symtab.iter_symbols()}
    return [text[at[f"i{n}"] : at[f"i{n + 1}"]] for n in range(len(lines))]


def _reg32(name: str) -> str:
    return name + "d" if name[1].isdigit() else "e" + name[1:]


_PAIRS = [("rbx", "rax"), ("rax", "rax"), ("r9", "rsp"), ("rsp", "r12"), ("r15", "rdi")]
_IMMS = ["$1", "$-1", "$0x7f", "$-0x80", "$0x1000", "$0x7fffffff", "$-0x80000000"]
ALU_LINES = [
    line
    for op in ("add", "sub", "cmp", "and", "or", "xor", "test")
    for suffix, reg in (("q", str), ("l", _reg32))
    for line in (
        *(f"{op}{suffix} %{reg(s)}, %{reg(d)}" for s, d in _PAIRS),
        *(f"{{load}} {op}{suffix} %{reg(s)}, %{reg(d)}" for s, d in _PAIRS if op != "test"),
        *(f"{op}{suffix} {imm}, %{reg(d)}" for imm in _IMMS for d in ("rax", "rsp", "r11")),
    )
]
MOVE_LINES = [
    "movq %rsp, %rbp", "movq %rdi, %r12", "{load} movq %r13, %rax", "movl %edi, %eax",
    "movl %esp, %r9d", "movl $-1, %eax", "movl $0x12345678, %r10d", "movq $-1, %rax",
    "movq $0x7fffffff, %r14", "movabsq $0x1122334455667788, %r9", "movl $-5, %r15d",
    "leaq 0x10(%rsp), %rdi", "leaq -0x8(%rbp), %rax", "leaq (%rax,%rbx,4), %rcx",
    "leaq 0x7fffffff(%r12,%r13,8), %r14", "leal 0x10(%rax,%rbx,8), %ecx",
    "leaq 0x1234(%rip), %rsi", "leaq -0x40(%rip), %r8", "leal 0x10(%rip), %eax",
    "leaq 0x8(,%rcx,2), %rdx", "leaq 0x20, %rax", "leaq (%eax), %rdx",
    "leaq -0x10(%esp,%ebx,2), %r11", "leaq (%r12), %r13", "leaq 0(%r13), %rax",
    "leaq 0x10(%eip), %rax",
    "nop", "nopl (%rax)", "nopw 0x0(%rax,%rax,1)", "xchg %ax, %ax", "pause", "endbr64",
    "endbr32", ".byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0",
    ".byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0",
    *(f"pushq %{r}" for r in GPRS), *(f"popq %{r}" for r in GPRS),
    "pushq $-1", "pushq $0x12345678", "pushq $0x7f",
]  # fmt: skip


@dataclass(frozen=True)
class Assembled:
    alu: list[bytes]
    moves: list[bytes]


@pytest.fixture(scope="session")
def assembled(build: Builder) -> Assembled:
    codes = assemble(build, ALU_LINES + MOVE_LINES)
    return Assembled(codes[: len(ALU_LINES)], codes[len(ALU_LINES) :])


# -------------------------------------------------------------- running and comparing


def check_emulations(harness: Path, items: Sequence[tuple[bytes, Case]]) -> None:
    """Run each case natively and through its emulation; they must agree exactly."""
    for _, case in items:
        case.dumps.append((SP - 0x40, 0x80))
    outcomes = run(harness, [case for _, case in items])
    for (code, case), native in zip(items, outcomes, strict=True):
        what = f"{decode(code, A)[0]} ({code.hex(' ')}) from {case.regs}"
        displaced = plan(code, A)
        assert isinstance(displaced, Emulated), what
        regs = UserRegs()
        for name, value in case.regs.items():
            setattr(regs, name, value)
        memory = case.memory()
        displaced.apply(regs, memory.write, memory.read)
        assert native.landed() == regs.rip, what
        assert {n: getattr(regs, n) for n in GPRS} == {n: native.regs[n] for n in GPRS}, what
        assert regs.eflags & STATUS_FLAGS == native.regs["eflags"] & STATUS_FLAGS, what
        assert regs.eflags & ~STATUS_FLAGS == case.regs["eflags"] & ~STATUS_FLAGS, what
        for address, data in native.dumps.items():
            assert memory.read(address, len(data)) == data, what


def relocation_cases(code: bytes, regs: dict[str, int], seed: int) -> list[Case]:
    """The instruction run in place at A, then from a near slot, then from a far one if it
    may go there; all with the same memory (data reached through rip mapped too).
    """
    displaced = plan(code, A)
    assert isinstance(displaced, OutOfLine), (code.hex(), displaced)

    def base() -> Case:
        case = standard_case(regs | {"rip": A}, seed)
        case.hashes += [(STACK, STACK_SIZE), (DATA, DATA_SIZE)]
        target = displaced.rip_target
        if target is not None:
            for page in case.map(target - 64, 192, "rw"):
                case.fill(page, PAGE, seed + page)
                case.hashes.append((page, PAGE))
        return case

    in_place = base()
    in_place.write(A, code)
    cases = [in_place]
    for slot in (NEAR_SLOT, FAR_SLOT):
        if displaced.fits(slot):
            case = base()
            case.map(slot, SLOT_SIZE, "rwx")
            case.write(slot, displaced.slot_bytes(slot))
            case.regs["rip"] = slot
            cases.append(case)
    return cases


def check_relocated(code: bytes, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> None:
    displaced = plan(code, A)
    assert isinstance(displaced, OutOfLine)
    native = outcomes[0]
    what = f"{displaced.instruction} ({code.hex(' ')})"
    for case, moved in zip(cases[1:], outcomes[1:], strict=True):
        slot = case.regs["rip"]
        where = f"{what} from a slot at 0x{slot:x}"
        assert moved.sig == native.sig, where
        if native.landed() is not None:
            assert moved.landed() == native.landed(), where
        else:
            assert displaced.original_rip(slot, moved.rip) == native.rip, where
            assert displaced.original_rip(slot, moved.si_addr) == native.si_addr, where
        assert {n: moved.regs[n] for n in GPRS} == {n: native.regs[n] for n in GPRS}, where
        assert moved.regs["eflags"] == native.regs["eflags"], where
        assert moved.xmm == native.xmm, where
        assert moved.hashes == native.hashes, where


def check_relocations(harness: Path, items: Sequence[tuple[bytes, dict[str, int]]]) -> int:
    groups = [(code, relocation_cases(code, regs, n)) for n, (code, regs) in enumerate(items)]
    outcomes = run(harness, [case for _, cases in groups for case in cases])
    pos = 0
    for code, cases in groups:
        check_relocated(code, cases, outcomes[pos : pos + len(cases)])
        pos += len(cases)
    return pos


def pointer_regs(small: bool = False) -> dict[str, int]:
    """Every register points into DATA (``small``: rax, rcx, rdx, rsi hold small indexes)."""
    regs = {name: DATA_PTR + 8 * n for n, name in enumerate(GPRS)}
    regs |= {"rsp": SP, "eflags": BASE_EFLAGS}
    if small:
        regs |= {"rax": 1, "rcx": 2, "rdx": 3, "rsi": 5, "eflags": BASE_EFLAGS | 0x8D5}
    return regs


# ----------------------------------------------------------------------------- decoding


def test_structure_parse_agrees_with_capstone_detail() -> None:
    """ModRM, displacement and immediate offsets, and rip-relativity, over ld.so and part
    of libc. (Capstone reports a 2-byte displacement when a 0x66 prefix, explicit or
    implied by VEX.pp, is present; offsets are compared, which that does not affect.)
    """
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    checked = 0
    for path, limit in ((LDSO, None), (LIBC, 150_000)):
        for base, data in code_sections(path):
            data = data[:limit]
            for ours in decode(data, base):
                off = ours.address - base
                theirs = next(cs.disasm(data[off : off + 15], ours.address, 1))
                enc = ours.encoding
                assert theirs.size == ours.size
                if theirs.disp_size:
                    assert enc.disp_at == theirs.disp_offset, ours
                if theirs.imm_size:
                    assert enc.imm_at == theirs.imm_offset, ours
                assert enc.rip_relative == ("rip" in ours.op_str), ours
                checked += 1
    assert checked > 50_000


def test_decode_flow_targets_and_rip_operands() -> None:
    code = bytes.fromhex(
        "f30f1efa"  # endbr64
        "488b0510000000"  # mov 0x10(%rip),%rax
        "e8f0ffffff"  # call back 16
        "74fe"  # je to itself
        "0f8500010000"  # jne +0x100
        "ff25f0ffffff"  # jmp *-0x10(%rip)
        "3effe0"  # notrack jmp *%rax
        "ffd3"  # call *%rbx
        "c20800"  # ret $8
        "c3"  # ret
        "cc"  # int3
        "0f0b"  # ud2
        "0f05"  # syscall
        "c7f800010000"  # xbegin +0x100
        "48ff1c2500000000"  # lcall (far)
    )
    base = 0x401000
    insns = decode(code, base)
    assert [i.flow for i in insns] == [
        Flow.NEXT, Flow.NEXT, Flow.CALL, Flow.BRANCH, Flow.BRANCH, Flow.INDIRECT_JUMP,
        Flow.INDIRECT_JUMP, Flow.INDIRECT_CALL, Flow.RETURN, Flow.RETURN, Flow.TRAP,
        Flow.TRAP, Flow.NEXT, Flow.BRANCH, Flow.FAR,
    ]  # fmt: skip
    assert sum(i.size for i in insns) == len(code)
    assert insns[1].rip_target == insns[1].end + 0x10
    assert insns[2].target == insns[2].end - 16
    assert insns[3].target == insns[3].address
    assert insns[4].target == insns[4].end + 0x100
    assert insns[5].rip_target == insns[5].end - 0x10
    assert insns[13].target == insns[13].end + 0x100
    assert [i.target for i in insns[5:13]] == [None] * 8
    assert str(insns[8]) == "retq $8" and str(insns[9]) == "retq"
    assert instruction_boundaries(code, base) == [i.address - base for i in insns]


def test_decode_stops_at_undecodable_bytes() -> None:
    code = bytes.fromhex("90 48 89 e5 06 90 90")  # nop; mov %rsp,%rbp; (bad: push %es)
    insns = decode(code, 0x1000)
    assert [i.mnemonic for i in insns] == ["nop", "movq"]
    assert instruction_boundaries(code, 0x1000) == [0, 1]
    assert decode(bytes.fromhex("48 8b 05 10"), 0x1000) == []  # truncated
    assert len(decode(code, 0x1000, count=1)) == 1


# ------------------------------------------------------------------------- return sites


def objdump_functions(path: Path) -> dict[str, list[tuple[int, str]]]:
    """Per function: (address, instruction text) as objdump prints them."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    funcs: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] = []
    for line in out.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            current = funcs.setdefault(m.group(1), [])
        elif m := re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line):
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


@pytest.mark.parametrize(
    "flags", [("-O2",), ("-O2", "-fcf-protection"), ("-O2", "-fno-pie", "-no-pie")]
)
def test_return_sites_against_objdump(build: Builder, flags: tuple[str, ...]) -> None:
    exe = build("insn_returns", *flags)
    funcs = {name: (address, size) for name, address, size in functions(str(exe))}
    dumped = objdump_functions(exe)
    cold = funcs["cold_split.cold"]
    sites = {}
    for name in ("leaf", "tail", "tail_indirect", "dispatch", "cold_split", "several"):
        address, size = funcs[name]
        part = funcs.get(f"{name}.cold")
        inside = [(part[0], part[0] + part[1])] if part else []
        found = return_sites(read_at(str(exe), address, size), address, also_inside=inside)
        assert found.undecodable is None
        rets = [a - address for a, text in dumped[name] if text.startswith("ret")]
        assert [s.offset for s in found.sites if s.kind is ReturnKind.RET] == rets, name
        sites[name] = found
    assert [s.kind for s in sites["leaf"].sites] == [ReturnKind.RET]
    assert [(s.kind, s.target) for s in sites["tail"].sites] == [
        (ReturnKind.TAIL_CALL, funcs["leaf"][0])
    ]
    assert [(s.kind, s.target) for s in sites["tail_indirect"].sites] == [
        (ReturnKind.TAIL_CALL, None)
    ]
    assert len(sites["dispatch"].jump_tables) == 1
    assert all(s.kind is ReturnKind.RET for s in sites["dispatch"].sites)
    assert all(s.kind is ReturnKind.RET for s in sites["cold_split"].sites)
    # Without knowing about the cold part, its jump looks like a conditional tail call.
    address, size = funcs["cold_split"]
    alone = return_sites(read_at(str(exe), address, size), address)
    assert [s.target for s in alone.sites if s.kind is ReturnKind.COND_TAIL_CALL] == [cold[0]]


def test_return_sites_crafted() -> None:
    code = bytes.fromhex(
        "85ff"  # 0: test %edi,%edi
        "0f8500100000"  # 2: jne +0x1000 (out: conditional tail call)
        "7402"  # 8: je +2 (inside)
        "f3c3"  # a: repz ret
        "48ff2500100000"  # c: jmp *0x1000(%rip) (out through the GOT)
        "ff24c5 00204000"  # 13: jmp *0x402000(,%rax,8) (jump table)
        "c20800"  # 1a: ret $8
        "e9 00000000"  # 1d: jmp to the next byte, inside
        "cc0f0b"  # 22: int3, ud2: padding
        "06"  # 25: undecodable
    )
    found = return_sites(code, 0x1000)
    assert [(s.offset, s.kind) for s in found.sites] == [
        (0x2, ReturnKind.COND_TAIL_CALL),
        (0xA, ReturnKind.RET),
        (0xC, ReturnKind.TAIL_CALL),
        (0x1A, ReturnKind.RET),
    ]
    assert found.sites[0].target == 0x1000 + 8 + 0x1000
    assert found.jump_tables == (0x13,)
    assert found.undecodable == 0x25
    assert return_sites(code[:0x25], 0x1000).undecodable is None


# -------------------------------------------------------------- planning whole libraries


@pytest.mark.parametrize("path", [LIBC, LDSO, "libpython"])
def test_every_instruction_of_a_library_gets_a_plan(path: str) -> None:
    """Every instruction in the code sections plans; only int3 and undecodable bytes
    do not (the sweep skips one byte past those and goes on).
    """
    path = libpython() if path == "libpython" else path
    counts: dict[str, int] = {}
    refused: dict[str, int] = {}
    for base, data in code_sections(path):
        off = 0
        while off < len(data):
            insns = decode(data[off:], base + off)
            for insn in insns:
                try:
                    displaced = plan_instruction(insn)
                except DisplaceError as exc:
                    assert insn.bytes == b"\xcc", (insn, exc)
                    refused["int3"] = refused.get("int3", 0) + 1
                    continue
                kind = type(displaced).__name__
                counts[kind] = counts.get(kind, 0) + 1
            if insns:
                off = insns[-1].end - base
            else:
                refused["undecodable"] = refused.get("undecodable", 0) + 1
                off += 1
    assert counts["Emulated"] > 10_000 and counts["OutOfLine"] > 5_000, counts
    total = sum(counts.values())
    assert sum(refused.values()) < total // 1000, (counts, refused)


# -------------------------------------------------------------------------- out of line

# Displacements reach past the code pages, so what rip-relative stores write is checked.
XOL_LINES = [
    "movq 0x1000100(%rip), %rax", "movl %ecx, -0x1000040(%rip)", "addq 0x1000080(%rip), %r9",
    "cmpb $0x0, 0x1000090(%rip)", "cmpq $0x12345, 0x1000088(%rip)", "movb $7, 0x1000070(%rip)",
    "lock addl $1, 0x1000060(%rip)", "lock cmpxchgq %rbx, 0x1000058(%rip)",
    "lock xaddl %edx, 0x1000040(%rip)", "movaps 0x1000200(%rip), %xmm3",
    "movsd 0x1000208(%rip), %xmm0", "movups %xmm5, -0x1000030(%rip)",
    "vmovdqu 0x1000100(%rip), %ymm1", "vmovdqu %xmm7, 0x1000180(%rip)",
    "pxor 0x1000040(%rip), %xmm2", "vpbroadcastd 0x1000100(%rip), %xmm4",
    "ucomisd 0x1000100(%rip), %xmm1", "vmovdqu64 0x1000100(%rip), %zmm1",
    "pushq 0x1000100(%rip)", "popq 0x1000100(%rip)", "incl 0x1000020(%rip)",
    "imulq $3, 0x1000030(%rip), %rdx", "testb $0x80, 0x1000050(%rip)",
    "shlq $3, 0x1000050(%rip)", "cmovneq 0x1000048(%rip), %rcx", "prefetcht0 0x1000100(%rip)",
    "movq %fs:0x28, %rax", "movq 0x10(%rdi), %rax", "movq %rsi, (%rdi,%rax,8)",
    "movzbl (%rsi), %eax", "testb %al, %al", "adcq %rbx, %rax", "sbbl $3, %ecx", "negq %rdx",
    "notl %esi", "imulq %rbx, %rcx", "shrq $5, %r8", "sarl %cl, %edx", "rolw $3, %ax",
    "bsfq %rdi, %rax", "popcntq %rsi, %rdx", "cmpxchgq %rcx, (%rdi)", "xchgq %rax, (%rsi)",
    "movsbl %dl, %eax", "cltq", "cqto", "setne %al", "cmovbq %rdx, %rax", "leave",
    "rep stosb", "rep movsq", "movabsq 0x1020, %rax", "incw %ax", "addw $5, %di",
    "movw $1, %ax", "pushw %ax", "popfq", "pushfq", "stc", "cld", "xorps %xmm0, %xmm0",
    "cvtsi2sd %rax, %xmm1", "vzeroupper", "ud2", "hlt", "xchgq %r8, %rax", "bswap %r11",
    "crc32q %rdi, %rax", "andn %rbx, %rcx, %rdx", "shlx %rax, %rbx, %rcx", "movq (%rsp), %rax",
    "movq 0x8(%rsp), %rdi",
]  # fmt: skip


def test_out_of_line_matches_execution_in_place(build: Builder, harness: Path) -> None:
    """Each instruction from a near slot, and a far slot when it may go there, ends in
    the same state as the instruction run at its own address, under two register files.
    """
    codes = assemble(build, XOL_LINES)
    items = [(code, pointer_regs(small)) for code in codes for small in (False, True)]
    for code in codes:
        displaced = plan(code, A)
        assert isinstance(displaced, OutOfLine), (code.hex(), displaced)
        assert len(displaced.slot_bytes(NEAR_SLOT)) <= displaced.slot_size <= SLOT_SIZE
    ran = check_relocations(harness, items)
    assert ran > 2 * len(items)


_NOT_REPEATABLE = re.compile(
    r"syscall|sysenter|^int\b|rdtsc|rdrand|rdseed|rdpid|cpuid|wrpkru|xrstor|xsave|fxsave|"
    r"fnstenv|fnsave|fxrstor|rdssp|incssp|xbegin|fs|gs"
)


@functools.cache
def libc_entry_instructions(count: int) -> list[Instruction]:
    """The first ``count`` instructions of every libc function, one of each encoding."""
    seen: dict[bytes, Instruction] = {}
    for _, address, size in functions(LIBC):
        for insn in decode(read_at(LIBC, address, min(size, 64)), address, count):
            seen.setdefault(insn.bytes, insn)
    return list(seen.values())


def test_out_of_line_libc_entry_instructions(harness: Path) -> None:
    """Real instructions from the starts of libc's functions, moved and run."""
    items = []
    for insn in libc_entry_instructions(4):
        text = f"{insn.mnemonic} {insn.op_str}"
        if isinstance(plan(insn.bytes, A), OutOfLine) and not _NOT_REPEATABLE.search(text):
            items += [(insn.bytes, pointer_regs(False)), (insn.bytes, pointer_regs(True))]
    assert len(items) > 300
    check_relocations(harness, items)


def test_emulation_libc_entry_instructions(harness: Path) -> None:
    """Real emulated instructions from libc's function starts against the CPU."""
    items = []
    for insn in libc_entry_instructions(4):
        displaced = plan(insn.bytes, A)
        if not isinstance(displaced, Emulated) or (
            insn.encoding.has_memory and (displaced.form in (EmulatedForm.CALL, EmulatedForm.JUMP))
        ):
            continue  # through-memory targets are covered with planted pointers below
        if insn.target is not None and A <= insn.target - insn.address + A < A + insn.size:
            continue
        for small in (False, True):
            regs = pointer_regs(small) | {"rip": A}
            case = standard_case(regs)
            case.write(A, insn.bytes)
            case.write(SP, (LANDING + 0x100).to_bytes(8, "little"))  # for ret
            items.append((insn.bytes, case))
    assert len(items) > 100
    check_emulations(harness, items)


def test_slot_window_far_slots_and_errors() -> None:
    displaced = plan(bytes.fromhex("488b0510000000"), A)  # mov 0x10(%rip),%rax
    assert isinstance(displaced, OutOfLine)
    assert displaced.rip_relative and displaced.rip_target == A + 7 + 0x10
    window = displaced.slot_window
    assert window is not None
    low, high = window
    assert low <= A <= high and high - low == (1 << 32) - 1
    assert displaced.fits(low) and displaced.fits(high)
    assert not displaced.fits(low - 1) and not displaced.fits(high + 1)
    for slot in (low, high):
        relocated = decode(displaced.slot_bytes(slot), slot, 1)[0]
        assert relocated.rip_target == displaced.rip_target
    with pytest.raises(DisplaceError, match="out of reach"):
        displaced.slot_bytes(FAR_SLOT)
    # Without a rip-relative operand any slot works; far away the jump back is absolute.
    plain = plan(bytes.fromhex("488b4710"), A)  # mov 0x10(%rdi),%rax
    assert isinstance(plain, OutOfLine) and plain.slot_window is None
    far = plain.slot_bytes(FAR_SLOT)
    assert far[4:] == bytes.fromhex("ff2506000000") + b"\xcc" * 6 + (A + 4).to_bytes(8, "little")
    assert len(far) <= plain.slot_size
    assert decode(far[4:], FAR_SLOT + 4, 1)[0].rip_target == FAR_SLOT + 16
    near = plain.slot_bytes(NEAR_SLOT)
    assert decode(near[4:], NEAR_SLOT + 4)[0].target == A + 4
    assert plain.original_rip(NEAR_SLOT, NEAR_SLOT) == A
    assert plain.original_rip(NEAR_SLOT, NEAR_SLOT + 4) == NEAR_SLOT + 4
    # An eip-relative operand wraps at 4 GiB: any slot reaches it.
    eip = plan(bytes.fromhex("678b0510000000"), A)  # mov 0x10(%eip),%eax
    assert isinstance(eip, OutOfLine) and eip.slot_window is None
    assert decode(eip.slot_bytes(FAR_SLOT), FAR_SLOT)[0].rip_target == (A + 7 + 0x10) & 0xFFFFFFFF


@pytest.mark.parametrize(
    ("hexcode", "message"),
    [
        ("cc", "itself an int3"),
        ("48ff1c2500000000", "far call"),
        ("66e900000000", "operand-size prefix"),
        ("06", "do not decode"),
        ("488b05", "do not decode"),
        ("66c7f80000", "16-bit abort offset"),
    ],
)
def test_unplannable(hexcode: str, message: str) -> None:
    with pytest.raises(DisplaceError, match=message) as info:
        plan(bytes.fromhex(hexcode), 0x5000)
    assert info.value.address == 0x5000
    assert "0x5000" in str(info.value)


def test_xbegin_keeps_its_abort_address() -> None:
    displaced = plan(bytes.fromhex("c7f800010000"), A)
    assert isinstance(displaced, OutOfLine)
    moved = decode(displaced.slot_bytes(NEAR_SLOT), NEAR_SLOT, 1)[0]
    assert moved.target == A + 6 + 0x100


# ------------------------------------------------------------------------------ emulation

_SPECIAL = [0, 1, 2, 0x0F, 0x10, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]
_SPECIAL += [1 << 32, (1 << 63) - 1, 1 << 63, M64, M64 - 1]
values = st.one_of(st.sampled_from(_SPECIAL), st.integers(0, M64))
register_files = st.lists(values, min_size=16, max_size=16)
status_flags = st.sets(st.sampled_from([0x1, 0x4, 0x10, 0x40, 0x80, 0x800])).map(sum)
# No shrinking: every example is a batch of cases run by one harness process, and each
# failing case is reported with its instruction and registers anyway.
EMULATION = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
)


def _case(code: bytes, regs: Sequence[int], status: int, **fixed: int) -> Case:
    case = standard_case(
        dict(zip(GPRS, regs, strict=True)) | {"rip": A, "eflags": BASE_EFLAGS | status} | fixed
    )
    case.write(A, code)
    return case


def picks(count: int) -> st.SearchStrategy[list[tuple[int, list[int], int]]]:
    """``count`` (index into a list of codes, register file, status flags) triples."""
    one = st.tuples(st.integers(0, 9999), register_files, status_flags)
    return st.lists(one, min_size=count, max_size=count)


def _picked(
    codes: Sequence[bytes], chosen: list[tuple[int, list[int], int]], **fixed: int
) -> list[tuple[bytes, Case]]:
    """Cases for the chosen codes; the stack top holds the first register's value (pop)."""
    items = []
    for index, regs, status in chosen:
        code = codes[index % len(codes)]
        case = _case(code, regs, status, **fixed)
        case.write(SP, regs[0].to_bytes(8, "little"))
        items.append((code, case))
    return items


@EMULATION
@given(picks(40))
def test_alu_emulation_matches_cpu(
    harness: Path, assembled: Assembled, chosen: list[tuple[int, list[int], int]]
) -> None:
    check_emulations(harness, _picked(assembled.alu, chosen))


def test_every_alu_and_move_form_is_emulated(harness: Path, assembled: Assembled) -> None:
    """Each listed line once, with a fixed register file mixing special values."""
    regs = [(_SPECIAL * 2)[n] for n in range(16)]
    items = []
    for code in assembled.alu + assembled.moves:
        case = _case(code, regs, 0x8D5, rsp=SP)
        case.write(SP, (0x1122334455667788).to_bytes(8, "little"))
        items.append((code, case))
    check_emulations(harness, items)


@EMULATION
@given(picks(30))
def test_move_lea_nop_push_pop_emulation_matches_cpu(
    harness: Path, assembled: Assembled, chosen: list[tuple[int, list[int], int]]
) -> None:
    check_emulations(harness, _picked(assembled.moves, chosen, rsp=SP))


def _landing(draw: st.DrawFn, length: int) -> int:
    """A branch target where arriving is observable: an int3 in the code pages (not the
    branch itself), or an unmapped address.
    """
    return draw(
        st.one_of(
            st.integers(A + length, CODE + 2 * PAGE - 1),
            st.integers(CODE, A - 1),
            st.integers(LANDING, LANDING + (1 << 30)),
        )
    )


@st.composite
def relative_branches(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    """A jcc/jmp/call/loop/jrcxz encoding with a displacement that does not hit itself."""
    form = draw(st.sampled_from(["jcc8", "jcc32", "jmp8", "jmp32", "call", "loop", "hinted"]))
    cc = draw(st.integers(0, 15))
    if form in ("jcc8", "jmp8", "loop", "hinted"):
        head = {
            "jcc8": bytes([0x70 + cc]),
            "jmp8": b"\xeb",
            "loop": draw(
                st.sampled_from([b"\xe0", b"\xe1", b"\xe2", b"\xe3", b"\x67\xe2", b"\x67\xe3"])
            ),
            "hinted": bytes([draw(st.sampled_from([0x2E, 0x3E, 0x67])), 0x70 + cc]),
        }[form]
        rel, size = draw(st.integers(-128, 127)), 1
    else:
        head = {
            "jcc32": bytes([0x0F, 0x80 + cc]),
            "jmp32": b"\xe9",
            "call": draw(st.sampled_from([b"\xe8", b"\xf2\xe8", b"\x66\x66\x48\xe8"])),
        }[form]
        rel, size = draw(st.integers(-(1 << 31), (1 << 31) - 1)), 4
    length = len(head) + size
    if -length <= rel < 0:
        rel = -length - 1  # never back into the branch itself
    regs = draw(register_files)
    return head + rel.to_bytes(size, "little", signed=True), draw(status_flags), regs


@EMULATION
@given(st.lists(relative_branches(), min_size=40, max_size=40))
def test_relative_branch_emulation_matches_cpu(
    harness: Path, branches: list[tuple[bytes, int, list[int]]]
) -> None:
    check_emulations(harness, [(c, _case(c, r, s, rsp=SP)) for c, s, r in branches])


@st.composite
def returns_and_indirect(draw: st.DrawFn) -> tuple[bytes, dict[str, int], int]:
    """ret, ret $n, and call/jmp through a register (with bnd/notrack prefixes)."""
    target = _landing(draw, 4)
    kind = draw(st.sampled_from(["ret", "reti", "repz", "bnd", "reg"]))
    if kind == "reg":
        reg = draw(st.integers(0, 15))
        prefix = draw(st.sampled_from([b"", b"\x3e", b"\xf2"]))
        rex = b"\x41" if reg >= 8 else b""
        op = draw(st.sampled_from([0xD0, 0xE0]))  # call, jmp
        name = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")[reg & 7]
        name = f"r{reg}" if reg >= 8 else name
        code = prefix + rex + bytes([0xFF, op | reg & 7])
        return code, {} if name == "rsp" else {name: target}, target
    code = {"ret": b"\xc3", "repz": b"\xf3\xc3", "bnd": b"\xf2\xc3"}.get(kind)
    if code is None:
        code = b"\xc2" + draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
    return code, {}, target


@EMULATION
@given(st.lists(st.tuples(returns_and_indirect(), register_files), min_size=30, max_size=30))
def test_return_and_register_indirect_emulation_matches_cpu(
    harness: Path, picks: list[tuple[tuple[bytes, dict[str, int], int], list[int]]]
) -> None:
    items = []
    for (code, fixed, target), regs in picks:
        case = _case(code, regs, 0, rsp=SP, **fixed)
        case.write(SP, target.to_bytes(8, "little"))
        items.append((code, case))
    check_emulations(harness, items)


LOW = 0x4000_0000  # a page below 4 GiB for the 32-bit address
MEMORY_INDIRECT = [
    "call *0x10(%rdi)", "jmp *(%rax,%rcx,8)", "call *0x40(%rsp)", "call *-0x8(%rsp)",
    "jmp *0x100(%rip)", "notrack jmp *0x18(%rbx)", "bnd jmp *0x20(%r12)",
    "call *(%r13,%r14,2)", "jmp *0x28(%eax)",
]  # fmt: skip


def test_memory_indirect_emulation_matches_cpu(build: Builder, harness: Path) -> None:
    """call/jmp through memory read their target before pushing, as the CPU does."""
    items = []
    for n, code in enumerate(assemble(build, MEMORY_INDIRECT)):
        mem = decode(code, A)[0].encoding.mem()
        regs = pointer_regs() | {"rcx": 3, "r14": 5, "rip": A}
        if mem.addr32:
            regs["rax"] = 0xABCD_0000_0000_0000 | LOW  # only the low half counts
        case = standard_case(regs)
        case.map(LOW, PAGE, "rw")
        case.write(A, code)
        where = mem.disp + (A + len(code) if mem.rip else 0)
        where += regs[GPR[mem.base]] if mem.base is not None else 0
        where += regs[GPR[mem.index]] * mem.scale if mem.index is not None else 0
        where &= 0xFFFF_FFFF if mem.addr32 else M64
        case.write(where, (LANDING + 0x40 * n).to_bytes(8, "little"))
        items.append((code, case))
    check_emulations(harness, items)


def test_segment_override_adds_fs_base() -> None:
    """call *%fs:0x28 (no native run: the harness's own TLS is not ours to jump through)."""
    displaced = plan(bytes.fromhex("64ff142528000000"), 0x1000)
    assert isinstance(displaced, Emulated)
    regs = UserRegs()
    regs.rsp, regs.fs_base = 0x8000, 0x7000
    memory = {0x7028: (0xDEAD000).to_bytes(8, "little")}
    written: dict[int, bytes] = {}
    displaced.apply(regs, written.__setitem__, lambda a, n: memory[a])
    assert (regs.rip, regs.rsp) == (0xDEAD000, 0x7FF8)
    assert written == {0x7FF8: (0x1008).to_bytes(8, "little")}


def test_apply_touches_no_register_when_memory_fails() -> None:
    def refuse_write(address: int, data: bytes) -> None:
        raise OSError("stack page not there")

    def refuse_read(address: int, size: int) -> bytes:
        raise OSError("not mapped")

    for hexcode in ("55", "e800000000", "c3", "5d", "ff5710", "ff2500000000"):
        displaced = plan(bytes.fromhex(hexcode), 0x1000)
        assert isinstance(displaced, Emulated)
        regs = UserRegs()
        regs.rsp, regs.rip, regs.rdi = 0x8000, 0x1000, 0x9000
        before = regs.as_dict()
        with pytest.raises(OSError):
            displaced.apply(regs, refuse_write, refuse_read)
        assert regs.as_dict() == before, hexcode


def test_emulated_forms_and_facts() -> None:
    expect = {
        "f30f1efa": EmulatedForm.NOP,
        "55": EmulatedForm.PUSH,
        "4157": EmulatedForm.PUSH,
        "5d": EmulatedForm.POP,
        "4889e5": EmulatedForm.MOV,
        "4883ec18": EmulatedForm.ALU,
        "31c0": EmulatedForm.ALU,
        "488d0510000000": EmulatedForm.LEA,
        "e800000000": EmulatedForm.CALL,
        "eb00": EmulatedForm.JUMP,
        "7400": EmulatedForm.BRANCH,
        "e2fe": EmulatedForm.BRANCH,
        "c3": EmulatedForm.RETURN,
    }
    for hexcode, form in expect.items():
        displaced = plan(bytes.fromhex(hexcode) + b"\x90" * 8, 0x1000)
        assert isinstance(displaced, Emulated) and displaced.form is form, hexcode
        assert displaced.length == len(hexcode) // 2 and displaced.address == 0x1000
    lea = plan(bytes.fromhex("488d0510000000"), 0x1000)
    assert lea.rip_relative and lea.rip_target == 0x1017
    # Look-alikes that are not the emulated forms go out of line.
    for hexcode in ("4190", "f30f1ec8", "6655", "f0ff00", "4883d001", "66b80100", "8b07"):
        assert isinstance(plan(bytes.fromhex(hexcode), 0x1000), OutOfLine), hexcode


def test_prefix_and_rex_parsing() -> None:
    """A REX byte counts only right before the opcode; legacy prefixes are kept in order."""
    assert parse(bytes.fromhex("4866488b00")).prefixes == b"\x66"
    assert parse(bytes.fromhex("4866488b00")).w
    assert not parse(bytes.fromhex("48668b00")).w  # REX voided by the prefix after it
    assert parse(bytes.fromhex("f390")).ext == 0
    enc = parse(bytes.fromhex("6765488b4c8810"))  # mov %gs:0x10(%eax,%ecx,4),%rcx
    mem = enc.mem()
    assert (mem.base, mem.index, mem.scale, mem.disp) == (0, 1, 4, 0x10)
    assert mem.addr32 and mem.segment is Segment.GS and enc.reg == 1
    enc = parse(bytes.fromhex("c4e27d180500000000"))  # vbroadcastss (%rip),%ymm0 (VEX)
    assert enc.rip_relative and enc.disp_at == 5
