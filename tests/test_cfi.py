"""dtproc.cfi against real files, with ``readelf -wF`` and pyelftools as oracles.

readelf prints every FDE's decoded table row by row; we ask :meth:`CfiTable.rules_at` for each
row's location and compare every column.  pyelftools also gives the expression bytes, but it
crashes on libc (``DW_CFA_GNU_args_size``), so it checks ld.so and our own targets only.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtproc.cfi import (
    CfaKind,
    CfiTable,
    FrameRules,
    FrameSource,
    RegisterRule,
    RuleKind,
)
from dtproc.cfi_expr import MAX_EXPRESSION_STEPS, evaluate, read_sleb128, read_uleb128
from dtproc.elf import ElfFile
from dtproc.errors import ElfError, UnwindError

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LDSO = "/lib64/ld-linux-x86-64.so.2"
PYTHON = "/usr/bin/python3.11"
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"

# readelf's names for x86-64 DWARF registers (binutils dwarf.c), "ra" for the RA column.
_READELF_REGS = [
    *("rax rdx rcx rbx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip".split()),
    *(f"xmm{i}" for i in range(16)),
    *(f"st{i}" for i in range(8)),
    *(f"mm{i}" for i in range(8)),
]
_REG_NUMBERS = {name: i for i, name in enumerate(_READELF_REGS)}


# ----------------------------------------------------------------------------- readelf


@dataclass(frozen=True)
class ReadelfFde:
    source: FrameSource
    offset: int
    start: int
    end: int
    columns: tuple[str, ...]  # "CFA", then register names
    rows: dict[int, tuple[str, ...]]  # location -> cells; the last row printed wins


_FDE = re.compile(
    r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)"
)
_CELL = re.compile(r"r\d+ \([^)]*\)|\S+")


def readelf_fdes(path: str | Path) -> list[ReadelfFde]:
    # readelf exits 1 on some system libraries after printing everything (a debuglink it
    # cannot follow), so only its output counts.
    text = subprocess.run(
        ["readelf", "-wF", str(path)], capture_output=True, text=True, check=False
    ).stdout
    assert "Contents of the" in text
    fdes: list[ReadelfFde] = []
    source = FrameSource.EH_FRAME
    current: tuple[int, int, int] | None = None
    columns: tuple[str, ...] = ()
    rows: dict[int, tuple[str, ...]] = {}

    def close() -> None:
        if current is not None and rows:
            fdes.append(ReadelfFde(source, *current, columns, dict(rows)))

    for line in text.splitlines():
        if line.startswith("Contents of the "):
            close()
            current = None
            source = FrameSource.DEBUG_FRAME if ".debug_frame" in line else FrameSource.EH_FRAME
        elif m := _FDE.match(line):
            close()
            current = (int(m[1], 16), int(m[2], 16), int(m[3], 16))
            rows = {}
        elif "CIE" in line.split()[3:4]:
            close()
            current = None
        elif line.startswith("   LOC"):
            columns = tuple(line.split()[1:])
        elif current is not None and re.match(r"^[0-9a-f]{16} ", line):
            loc, rest = line.split(maxsplit=1)
            rows[int(loc, 16)] = tuple(_CELL.findall(rest))
    close()
    return fdes


def _cfa_cell(rules: FrameRules) -> str:
    if rules.cfa.kind is CfaKind.EXPRESSION:
        return "exp"
    return f"{_READELF_REGS[rules.cfa.register]}{rules.cfa.offset:+d}"


def _rule_cell(rule: RegisterRule | None) -> str:
    if rule is None or rule.kind is RuleKind.UNDEFINED:
        return "u"
    return {
        RuleKind.SAME_VALUE: lambda r: "s",
        RuleKind.OFFSET: lambda r: f"c{r.value:+d}",
        RuleKind.VAL_OFFSET: lambda r: f"v{r.value:+d}",
        RuleKind.REGISTER: lambda r: f"r{r.value} ({_READELF_REGS[r.value]})",
        RuleKind.EXPRESSION: lambda r: "exp",
        RuleKind.VAL_EXPRESSION: lambda r: "vexp",
    }[rule.kind](rule)


def _column_number(name: str, ra: int) -> int:
    return ra if name == "ra" else _REG_NUMBERS[name]


def compare_with_readelf(table: CfiTable, fdes: list[ReadelfFde]) -> int:
    """Every row of every FDE; returns the number of rows compared."""
    compared = 0
    for fde in fdes:
        for loc, cells in fde.rows.items():
            if loc >= fde.end:
                continue  # a PLT's program may advance to the FDE's end: no pc is there
            rows = table.fde_at(loc)
            assert rows is not None, f"no FDE for 0x{loc:x} ({fde})"
            assert (rows.fde.start, rows.fde.end) == (fde.start, fde.end)
            assert (rows.fde.source, rows.fde.offset) == (fde.source, fde.offset)
            rules = table.rules_at(loc)
            assert rules is not None
            ours = [_cfa_cell(rules)]
            ours += [
                _rule_cell(rules.rule(_column_number(c, rules.return_address)))
                for c in fde.columns[1:]
            ]
            assert tuple(ours) == cells, f"{table.elf.path} at 0x{loc:x}: {fde.columns}"
            shown = {_column_number(c, rules.return_address) for c in fde.columns[1:]}
            assert {n for n, _ in rules.registers} <= shown
            compared += 1
    return compared


@pytest.fixture(scope="module")
def targets(build: Callable[..., Path]) -> dict[str, Path]:
    no_eh = ("-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
    return {
        "pie": build("uw_basic", "-O2", "-pthread"),
        "debug_frame": build("uw_basic", "-O2", "-pthread", *no_eh),
        "cpp": build("uw_cpp", "-O2", lang="cpp"),
        "ops": build("uw_cfa_ops", "-O1"),
        "bad": build("uw_cfa_bad", "-O1"),
    }


@pytest.fixture(scope="module")
def vdso_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with open("/proc/self/maps") as f:
        line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(lo)
        data = mem.read(hi - lo)
    path = tmp_path_factory.mktemp("vdso") / "vdso.so"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("path", [LIBC, LDSO, PYTHON, LIBSTDCXX])
def test_system_libraries_match_readelf(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    fdes = readelf_fdes(path)
    table = CfiTable.for_elf(ElfFile.open(path))
    assert compare_with_readelf(table, fdes) > 1000
    assert len(list(table.fdes())) >= len(fdes)


@pytest.mark.parametrize("name", ["pie", "debug_frame", "cpp", "ops"])
def test_targets_match_readelf(targets: dict[str, Path], name: str) -> None:
    fdes = readelf_fdes(targets[name])
    table = CfiTable.for_elf(ElfFile.open(targets[name]))
    assert compare_with_readelf(table, fdes) > 10
    if name == "debug_frame":
        assert any(f.source is FrameSource.DEBUG_FRAME for f in fdes)


def test_vdso_from_bytes_matches_readelf(vdso_file: Path) -> None:
    elf = ElfFile.from_bytes(vdso_file.read_bytes(), "[vdso]")
    assert compare_with_readelf(CfiTable.for_elf(elf), readelf_fdes(vdso_file)) > 5


def test_hand_written_cfa_programs(targets: dict[str, Path]) -> None:
    """uw_cfa_ops.c spells out the instructions compilers rarely emit; check what they mean."""
    elf = ElfFile.open(targets["ops"])
    table = CfiTable.for_elf(elf)
    sym = elf.symbols.lookup("uw_ops_all")
    assert sym is not None
    end = table.fde_at(sym.value)
    assert end is not None and end.fde.source is FrameSource.EH_FRAME
    kinds = {rule.kind for rules in end.rows for _, rule in rules.registers}
    assert kinds == set(RuleKind)
    assert any(rules.cfa.kind is CfaKind.EXPRESSION for rules in end.rows)
    signal = elf.symbols.lookup("uw_ops_signal")
    assert signal is not None
    rules = table.rules_at(signal.value)
    assert rules is not None and rules.signal_frame and rules.outermost
    dwarf64 = elf.symbols.lookup("uw_ops_dwarf64")
    assert dwarf64 is not None
    rows = table.fde_at(dwarf64.value + 1)
    assert rows is not None and rows.fde.source is FrameSource.DEBUG_FRAME
    rules = rows.at(dwarf64.value + 1)
    assert rules is not None and rules.cfa.offset == 16
    assert rules.rule(6) == RegisterRule(RuleKind.OFFSET, -16)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("uw_bad_restore", "restore_state without"),
        ("uw_bad_nesting", "nests deeper than"),
        ("uw_bad_opcode", "unknown CFA instruction 0x3f"),
        ("uw_bad_truncated", "truncated CFA program"),
    ],
)
def test_bad_programs_raise(targets: dict[str, Path], function: str, message: str) -> None:
    elf = ElfFile.open(targets["bad"])
    table = CfiTable.for_elf(elf)
    assert not table.has_header_table  # ld gave up on the header: the linear index serves
    sym = elf.symbols.lookup(function)
    assert sym is not None
    with pytest.raises(ElfError, match=message):
        table.rules_at(sym.value)
    main = elf.symbols.lookup("main")
    assert main is not None and table.rules_at(main.value) is not None


def test_step_applies_every_rule_kind(targets: dict[str, Path]) -> None:
    """The row of uw_ops_all that has one rule of each kind, applied to known registers."""
    elf = ElfFile.open(targets["ops"])
    sym = elf.symbols.lookup("uw_ops_all")
    assert sym is not None
    rows = CfiTable.for_elf(elf).fde_at(sym.value)
    assert rows is not None
    rules = next(r for r in rows.rows if len({rule.kind for _, rule in r.registers}) == 7)
    rbp, bias = 0x7000, 0x10000
    cfa = rbp + 16
    memory = {cfa - 24: 0xB0B, cfa + 16: 0x5151, cfa - 16: 0xBBBB, cfa - 8: 0xCA11}

    def read(addr: int, size: int) -> bytes:
        return memory[addr].to_bytes(8, "little")[:size]

    regs = {0: 0xAAAA, 6: rbp, 7: rbp - 8, 12: 0x1212, 13: 0x1313, 14: 0x1414, 16: sym.value}
    caller = rules.step(regs, read, bias)
    assert caller == {
        1: 0xCA11,  # rdx: expression breg6 +8 (= cfa - 8), loaded
        2: rbp + 16,  # rcx: val_expression breg6 +16
        3: 0xB0B,  # rbx: c-24
        4: 0x5151,  # rsi: c+16 (GNU_negative_offset_extended)
        6: 0xBBBB,  # rbp: c-16
        7: cfa,
        13: 0x1313,  # same value
        14: 0xAAAA,  # in rax
        15: cfa - 8,  # v-8
        16: 0xCA11,
    }
    with pytest.raises(UnwindError, match="register 6"):
        rules.step({7: 0x100, 16: 0}, read, bias)
    with pytest.raises(UnwindError, match="cannot read a saved register"):
        rules.step(regs, _no_memory, bias)


# ----------------------------------------------------------------------------- pyelftools


def _pyelftools_rows(path: Path | str) -> Iterator[tuple[int, dict[object, object]]]:
    with open(path, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        entries = []
        if dwarf.has_EH_CFI():
            entries += list(dwarf.EH_CFI_entries())
        if dwarf.has_CFI():
            entries += list(dwarf.CFI_entries())
        for entry in entries:
            if not isinstance(entry, FDE):
                continue
            for row in entry.get_decoded().table:
                yield row["pc"], row


_PYELFTOOLS_KINDS = {
    "UNDEFINED": RuleKind.UNDEFINED,
    "SAME_VALUE": RuleKind.SAME_VALUE,
    "OFFSET": RuleKind.OFFSET,
    "VAL_OFFSET": RuleKind.VAL_OFFSET,
    "REGISTER": RuleKind.REGISTER,
    "EXPRESSION": RuleKind.EXPRESSION,
    "VAL_EXPRESSION": RuleKind.VAL_EXPRESSION,
}


@pytest.mark.parametrize("name", ["ldso", "pie", "debug_frame", "cpp"])
def test_pyelftools_rules_and_expressions(targets: dict[str, Path], name: str) -> None:
    path = LDSO if name == "ldso" else targets[name]
    table = CfiTable.for_elf(ElfFile.open(path))
    last: dict[int, dict[object, object]] = {}
    for pc, row in _pyelftools_rows(path):
        last[pc] = row  # pyelftools repeats a location when an advance is zero
    assert last
    for pc, row in last.items():
        rules = table.rules_at(pc)
        assert rules is not None, hex(pc)
        cfa = row["cfa"]
        if cfa.expr is not None:
            assert rules.cfa.expression == bytes(cfa.expr)
        else:
            assert (rules.cfa.register, rules.cfa.offset) == (cfa.reg, cfa.offset)
        for reg, rule in row.items():
            if not isinstance(reg, int):
                continue
            ours = rules.rule(reg)
            assert ours is not None and ours.kind is _PYELFTOOLS_KINDS[rule.type], (hex(pc), reg)
            if rule.type in ("EXPRESSION", "VAL_EXPRESSION"):
                assert ours.expression == bytes(rule.arg)
            elif rule.type not in {"UNDEFINED", "SAME_VALUE"}:
                assert ours.value == rule.arg


# ----------------------------------------------------------------------------- .eh_frame_hdr


def _rewrite_hdr(
    path: Path, enc: int, entries: list[tuple[int, int]], extra: bytes = b""
) -> ElfFile:
    """The file with its .eh_frame_hdr table re-encoded in *enc* (entries as given)."""
    elf = ElfFile.open(path)
    hdr = elf.section(".eh_frame_hdr")
    assert hdr is not None
    data = bytearray(path.read_bytes())
    old = elf.section_data(hdr)
    fmt = {0x02: "H", 0x03: "I", 0x04: "Q", 0x0A: "h", 0x0B: "i", 0x0C: "q"}[enc & 0x0F]
    size = struct.calcsize(fmt)
    table_at = 12
    body = bytearray(old[:4] + old[4:8] + struct.pack("<I", len(entries)))
    body[3] = enc
    for i, (pc, fde) in enumerate(entries):
        for j, value in enumerate((pc, fde)):
            pos = table_at + (2 * i + j) * size
            if enc & 0x70 == 0x10:
                value -= hdr.addr + pos
            elif enc & 0x70 == 0x30:
                value -= hdr.addr
            body += struct.pack("<" + fmt, value)
    body += extra
    assert len(body) <= hdr.size
    data[hdr.offset : hdr.offset + len(body)] = body
    return ElfFile.from_bytes(bytes(data), f"{path} (hdr 0x{enc:02x})")


def _hdr_entries(elf: ElfFile) -> list[tuple[int, int]]:
    hdr = elf.section(".eh_frame_hdr")
    assert hdr is not None
    data = elf.section_data(hdr)
    (count,) = struct.unpack_from("<I", data, 8)
    values = struct.unpack_from(f"<{2 * count}i", data, 12)
    return [(values[i] + hdr.addr, values[i + 1] + hdr.addr) for i in range(0, 2 * count, 2)]


@pytest.mark.parametrize(
    ("enc", "keep"),
    [
        (0x3B, 1),  # datarel sdata4: what ld writes
        (0x1B, 1),  # pcrel sdata4
        (0x03, 1),  # udata4, absolute
        (0x0B, 1),  # sdata4, absolute
        (0x04, 2),  # udata8: half the table fits; the rest goes through the linear index
        (0x3C, 2),  # datarel sdata8
        (0x1C, 2),  # pcrel sdata8
        (0x02, 1),  # udata2, absolute (a small target: addresses fit)
        (0x3A, 1),  # datarel sdata2
    ],
)
def test_eh_frame_hdr_encodings(targets: dict[str, Path], enc: int, keep: int) -> None:
    path = targets["pie"]
    original = CfiTable.for_elf(ElfFile.open(path))
    entries = _hdr_entries(ElfFile.open(path))
    changed = CfiTable.for_elf(_rewrite_hdr(path, enc, entries[: len(entries) // keep]))
    assert changed.has_header_table
    for fde in original.fdes():
        for pc in (fde.start, (fde.start + fde.end) // 2, fde.end - 1):
            assert changed.rules_at(pc) == original.rules_at(pc)
    assert changed.rules_at(0) is None


def test_eh_frame_hdr_indirect(targets: dict[str, Path]) -> None:
    """DW_EH_PE_indirect: each table entry points at the 8-byte value it stands for."""
    path = targets["pie"]
    elf = ElfFile.open(path)
    hdr = elf.section(".eh_frame_hdr")
    assert hdr is not None
    entries = _hdr_entries(elf)[: (hdr.size - 12) // 32]
    slots_at = hdr.addr + 12 + 16 * len(entries)
    pointers, slots = [], b""
    for i, (pc, fde) in enumerate(entries):
        pointers.append((slots_at + 16 * i, slots_at + 16 * i + 8))
        slots += struct.pack("<QQ", pc, fde)
    changed = CfiTable.for_elf(_rewrite_hdr(path, 0x84, pointers, slots))
    assert changed.has_header_table
    original = CfiTable.for_elf(elf)
    for pc, _ in entries:
        assert changed.rules_at(pc) == original.rules_at(pc)


def test_no_hdr_uses_linear_index(targets: dict[str, Path]) -> None:
    path = targets["pie"]
    elf = ElfFile.open(path)
    broken = _rewrite_hdr(path, 0x3B, [])
    assert broken.section(".eh_frame_hdr") is not None
    original, changed = CfiTable.for_elf(elf), CfiTable.for_elf(broken)
    assert original.has_header_table and not changed.has_header_table
    for fde in original.fdes():
        assert changed.rules_at(fde.start) == original.rules_at(fde.start)


def test_hdr_pointing_nowhere(targets: dict[str, Path]) -> None:
    """A header table whose FDE addresses are wrong still finds every FDE (linearly)."""
    path = targets["pie"]
    elf = ElfFile.open(path)
    entries = [(pc, fde + 3) for pc, fde in _hdr_entries(elf)]
    original, changed = CfiTable.for_elf(elf), CfiTable.for_elf(_rewrite_hdr(path, 0x3B, entries))
    assert changed.has_header_table
    for fde in original.fdes():
        assert changed.rules_at(fde.start) == original.rules_at(fde.start)


# ----------------------------------------------------------------------------- robustness


def _corrupted(path: Path, seed: int, flips: int) -> ElfFile:
    import random

    elf = ElfFile.open(path)
    sec = elf.section(".eh_frame")
    assert sec is not None
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        data[sec.offset + rng.randrange(sec.size)] = rng.randrange(256)
    return ElfFile.from_bytes(bytes(data), f"{path} (seed {seed})")


@pytest.mark.parametrize("seed", range(40))
def test_corrupt_eh_frame_raises_elf_error_only(targets: dict[str, Path], seed: int) -> None:
    path = targets["cpp"]
    table = CfiTable.for_elf(_corrupted(path, seed, flips=1 + seed % 8))
    pcs = [f.start for f in CfiTable.for_elf(ElfFile.open(path)).fdes()]
    for pc in pcs:
        try:
            rules = table.rules_at(pc)
        except ElfError:
            continue
        if rules is not None:
            regs = dict.fromkeys(range(17), 0x7FFF0000)
            try:
                rules.step(regs, lambda addr, size: bytes(size))
            except UnwindError:
                pass


def test_tables_are_cached_per_file() -> None:
    elf = ElfFile.open(LIBC)
    assert CfiTable.for_elf(elf) is CfiTable.for_elf(elf)
    with pytest.raises(TypeError):
        CfiTable(object(), elf)


# ----------------------------------------------------------------------------- expressions


def _no_memory(addr: int, size: int) -> bytes:
    raise OSError(f"no memory at 0x{addr:x}")


def test_leb128() -> None:
    assert read_uleb128(bytes([0xE5, 0x8E, 0x26]), 0) == (624485, 3)
    assert read_sleb128(bytes([0xC0, 0xBB, 0x78]), 0) == (-123456, 3)
    assert read_sleb128(bytes([0x7F]), 0) == (-1, 1)


EXPRESSIONS = [
    # (bytes, regs, expected)
    (bytes([0x77, 0x08]), {7: 0x1000}, 0x1008),  # breg7 +8
    (bytes([0x92, 0x10, 0x78]), {16: 0x50}, 0x48),  # bregx rip -8
    (bytes([0x31, 0x32, 0x22]), {}, 3),  # lit1 lit2 plus
    (bytes([0x35, 0x32, 0x1C]), {}, 3),  # 5 - 2
    (bytes([0x32, 0x35, 0x1C]), {}, (1 << 64) - 3),  # 2 - 5 wraps
    (bytes([0x3F, 0x33, 0x1A]), {}, 3),  # 15 & 3
    (bytes([0x31, 0x34, 0x24]), {}, 16),  # 1 << 4
    (bytes([0x09, 0xF0, 0x34, 0x26]), {}, (1 << 64) - 1),  # -16 >>a 4
    (bytes([0x09, 0xF0, 0x34, 0x25]), {}, ((1 << 64) - 16) >> 4),  # logical shift
    (bytes([0x09, 0xFF, 0x30, 0x2D]), {}, 1),  # -1 < 0 (signed)
    (bytes([0x31, 0x32, 0x2B]), {}, 0),  # 1 > 2
    (bytes([0x31, 0x31, 0x29]), {}, 1),  # eq
    (bytes([0x10, 0xE5, 0x8E, 0x26]), {}, 624485),  # constu
    (bytes([0x11, 0x7F]), {}, (1 << 64) - 1),  # consts -1
    (bytes([0x31, 0x32, 0x16, 0x1C]), {}, 1),  # swap: 2 - 1
    (bytes([0x31, 0x32, 0x14, 0x22, 0x22]), {}, 4),  # over: 1 2 1 -> plus plus
    (bytes([0x31, 0x32, 0x33, 0x17]), {}, 2),  # rot: 1 2 3 -> 3 1 2
    (bytes([0x31, 0x32, 0x15, 0x01]), {}, 1),  # pick 1
    (bytes([0x31, 0x12, 0x22]), {}, 2),  # dup plus
    (bytes([0x31, 0x32, 0x13]), {}, 1),  # drop
    (bytes([0x31, 0x23, 0x80, 0x01]), {}, 129),  # plus_uconst 128
    (bytes([0x30, 0x28, 0x01, 0x00, 0x31, 0x32]), {}, 2),  # bra not taken
    (bytes([0x31, 0x31, 0x28, 0x01, 0x00, 0x35, 0x96]), {}, 1),  # bra taken over lit5; nop
    (bytes([0x2F, 0x01, 0x00, 0x35, 0x37]), {}, 7),  # skip over lit5
    (bytes([0x08, 0xFE, 0x1F]), {}, (1 << 64) - 254),  # const1u neg
    (bytes([0x09, 0xFE, 0x19]), {}, 2),  # const1s abs
    (bytes([0x0B, 0x00, 0x80]), {}, (1 << 64) - 32768),  # const2s
    (bytes([0x0C, 1, 0, 0, 0x80]), {}, 0x80000001),  # const4u
    (bytes([0x0E, *range(8)]), {}, 0x0706050403020100),  # const8u
    (bytes([0x39, 0x33, 0x1B]), {}, 3),  # div
    (bytes([0x39, 0x09, 0xFD, 0x1B]), {}, (1 << 64) - 3),  # 9 / -3
    (bytes([0x3A, 0x33, 0x1D]), {}, 1),  # mod
    (bytes([0x33, 0x34, 0x1E]), {}, 12),  # mul
    (bytes([0x31, 0x34, 0x21, 0x36, 0x27]), {}, 3),  # or, xor
    (bytes([0x30, 0x20]), {}, (1 << 64) - 1),  # not
    (bytes([0x56]), {6: 42}, 42),  # reg6 as a value
    (bytes([0x90, 0x06]), {6: 43}, 43),  # regx
    (bytes([0x9C]), {}, 0xCFA),  # call_frame_cfa
    (bytes([0x03, *(0x1000).to_bytes(8, "little")]), {}, 0x1000 + 0x5000),  # addr + bias
]


@pytest.mark.parametrize(("expr", "regs", "expected"), EXPRESSIONS)
def test_expression_values(expr: bytes, regs: dict[int, int], expected: int) -> None:
    assert evaluate(expr, regs, _no_memory, cfa=0xCFA, bias=0x5000) == expected


def test_expression_memory() -> None:
    memory = {0x2000: (0x1122334455667788).to_bytes(8, "little")}

    def read(addr: int, size: int) -> bytes:
        return memory[addr][:size]

    assert evaluate(bytes([0x77, 0x00, 0x06]), {7: 0x2000}, read) == 0x1122334455667788
    assert evaluate(bytes([0x77, 0x00, 0x94, 0x02]), {7: 0x2000}, read) == 0x7788
    # DW_CFA_expression rules start with the CFA pushed.
    assert evaluate(bytes([0x23, 0x10]), {}, read, push=(0x100,)) == 0x110


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (bytes([0x2F, 0xFD, 0xFF]), "operations"),  # skip -3: an endless loop
        (bytes([0x30, 0x12, 0x2F, 0xFC, 0xFF]), "pushes more than"),  # dup forever
        (bytes([0x22]), "empty stack"),
        (bytes([0x76, 0x00]), "register 6"),
        (bytes([0x30, 0x06]), "cannot read"),
        (bytes([0x30, 0x30, 0x1B]), "divides by zero"),
        (bytes([0x2F, 0x40, 0x00]), "outside"),
        (bytes([0x0E, 0x01]), "truncated"),
        (bytes([0xE0]), "unsupported"),
        (bytes([0x9C]), "no CFA"),
        (bytes([0x30, 0x94, 0x09]), "deref_size"),
        (bytes([0x31, 0x15, 0x05]), "stack entry"),
    ],
)
def test_expression_errors(expr: bytes, message: str) -> None:
    with pytest.raises(UnwindError, match=message):
        evaluate(expr, {}, _no_memory)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_random_expressions_terminate(expr: bytes) -> None:
    try:
        evaluate(expr, {i: i * 0x1000 for i in range(17)}, lambda a, n: bytes(n), cfa=0x8000)
    except UnwindError:
        pass


def test_step_budget_is_bounded() -> None:
    assert MAX_EXPRESSION_STEPS <= 10_000


# ----------------------------------------------------------------------------- pointers

_VADDR, _TEXT, _DATA, _FUNC = 0x4000, 0x1000, 0x9000, 0x1234


@pytest.mark.parametrize(
    ("encoding", "raw", "expected"),
    [
        (0x00, struct.pack("<Q", 0xDEAD), 0xDEAD),  # absptr
        (0x01, bytes([0xE5, 0x8E, 0x26]), 624485),  # uleb128
        (0x09, bytes([0x7F]), (1 << 64) - 1),  # sleb128 -1
        (0x02, struct.pack("<H", 0xFFFF), 0xFFFF),
        (0x0A, struct.pack("<h", -2), (1 << 64) - 2),
        (0x13, struct.pack("<I", 0x10), _VADDR + 1 + 0x10),  # pcrel: from the field itself
        (0x1B, struct.pack("<i", -0x10), _VADDR + 1 - 0x10),
        (0x1C, struct.pack("<q", 0x20), _VADDR + 1 + 0x20),
        (0x23, struct.pack("<I", 0x8), _TEXT + 8),  # textrel
        (0x33, struct.pack("<I", 0x8), _DATA + 8),  # datarel
        (0x43, struct.pack("<I", 0x8), _FUNC + 8),  # funcrel
        (0x50, bytes(7) + struct.pack("<Q", 0xABC), 0xABC),  # aligned: the next 8-byte slot
    ],
)
def test_pointer_encodings(encoding: int, raw: bytes, expected: int) -> None:
    from dtproc.cfi import _Bases, _FrameSection

    section = _FrameSection(
        ElfFile.open(LIBC), b"\0" + raw, _VADDR, FrameSource.EH_FRAME, _Bases(_TEXT, _DATA)
    )
    value, end = section.pointer(1, encoding, 0, func=_FUNC)
    assert value == expected
    assert end == len(raw) + 1


def test_pointer_errors() -> None:
    from dtproc.cfi import _Bases, _FrameSection

    section = _FrameSection(
        ElfFile.open(LIBC), bytes(16), 0, FrameSource.EH_FRAME, _Bases(None, None)
    )
    with pytest.raises(ElfError, match="data-relative pointer"):
        section.pointer(0, 0x3B, 0)
    with pytest.raises(ElfError, match="unknown pointer encoding 0x7b"):
        section.pointer(0, 0x7B, 0)
    with pytest.raises(ElfError, match="indirect pointer"):
        section.pointer(0, 0x80, 0)  # *0 is in no section of libc
