"""dtproc.sdt against real USDT notes, with readelf -n as the oracle."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dtproc import sdt
from dtproc.elf import ElfFile
from dtproc.errors import ElfError
from dtproc.sdt import SdtArg, SdtArgKind, SdtProbe, parse_arg, parse_args

PYTHON = "/usr/bin/python3.11"
PYTHON_PROBES = {
    "function__entry",
    "function__return",
    "line",
    "gc__start",
    "gc__done",
    "import__find__load__start",
    "import__find__load__done",
    "audit",
}


@pytest.fixture(scope="module")
def with_semaphores(build: Callable[..., Path]) -> Path:
    return build("elf_usdt", "-O2", "-DELF_USDT_SEMAPHORES")


@pytest.fixture(scope="module")
def without_semaphores(build: Callable[..., Path]) -> Path:
    return build("elf_usdt", "-O2")


_READELF_PROBE = re.compile(
    r"Provider: (?P<provider>\S+)\s+Name: (?P<name>\S+)\s+"
    r"Location: 0x(?P<pc>[0-9a-f]+), Base: 0x(?P<base>[0-9a-f]+), "
    r"Semaphore: 0x(?P<sem>[0-9a-f]+)\s+Arguments: ?(?P<args>[^\n]*)"
)


def _readelf(path: str | Path) -> list[tuple[str, str, int, int, int, str]]:
    out = subprocess.run(["readelf", "-n", str(path)], check=True, capture_output=True, text=True)
    return [
        (
            m["provider"],
            m["name"],
            int(m["pc"], 16),
            int(m["base"], 16),
            int(m["sem"], 16),
            m["args"],
        )
        for m in _READELF_PROBE.finditer(out.stdout)
    ]


def _ours(probes: Sequence[SdtProbe]) -> list[tuple[str, str, int, int, int, str]]:
    return [(p.provider, p.name, p.pc, p.base, p.semaphore, p.arg_string) for p in probes]


def _check_offsets(elf: ElfFile, probes: Sequence[SdtProbe]) -> None:
    data = Path(elf.path).read_bytes()
    section = elf.section(".probes")
    for probe in probes:
        assert probe.pc_offset is not None
        assert data[probe.pc_offset] == 0x90  # sys/sdt.h puts a nop at every probe site
        if probe.has_semaphore:
            assert section is not None
            assert section.addr <= probe.semaphore < section.addr + section.size
            assert probe.semaphore_offset == section.offset + probe.semaphore - section.addr
        else:
            assert probe.semaphore_offset is None


def test_python_probes_match_readelf() -> None:
    elf = ElfFile.open(PYTHON)
    probes = elf.sdt_probes()
    assert _ours(probes) == _readelf(PYTHON)
    assert {p.name for p in probes} == PYTHON_PROBES
    assert all(p.provider == "python" and p.has_semaphore for p in probes)
    _check_offsets(elf, probes)
    entry = next(p for p in probes if p.name == "function__entry")
    assert [(a.kind, a.size, a.signed) for a in entry.args] == [
        (SdtArgKind.REGISTER, 8, False),
        (SdtArgKind.REGISTER, 8, False),
        (SdtArgKind.REGISTER, 4, True),
    ]
    assert elf.sdt_probes() is probes  # cached


def test_target_with_semaphores(with_semaphores: Path) -> None:
    elf = ElfFile.open(with_semaphores)
    probes = sdt.probes(elf)
    assert _ours(probes) == _readelf(with_semaphores)
    assert [p.name for p in probes] == ["tick", "start", "mixed"]
    _check_offsets(elf, probes)
    for probe in probes:
        sem = elf.symbols.lookup(f"elftest_{probe.name}_semaphore")
        assert sem is not None and sem.value == probe.semaphore
    start = next(p for p in probes if p.name == "start")
    assert start.args == () and start.arg_string == ""
    mixed = next(p for p in probes if p.name == "mixed")
    sizes = [(a.size, a.signed) for a in mixed.args]
    assert sizes == [(1, True), (4, True), (8, True), (2, False), (8, False)]
    small, constant, global_, _, pointer = mixed.args
    assert small.kind is SdtArgKind.REGISTER and small.register_width == 1
    assert constant.kind is SdtArgKind.CONSTANT and constant.constant == -7
    assert global_.kind is SdtArgKind.MEMORY and global_.symbol == "elf_usdt_global"
    assert global_.register == "rip"
    assert pointer.kind is SdtArgKind.REGISTER and pointer.register_width == 8


def test_target_without_semaphores(without_semaphores: Path) -> None:
    elf = ElfFile.open(without_semaphores)
    probes = elf.sdt_probes()
    assert _ours(probes) == _readelf(without_semaphores)
    assert probes and not any(p.has_semaphore for p in probes)
    _check_offsets(elf, probes)


def test_files_without_probes() -> None:
    assert ElfFile.open("/lib/x86_64-linux-gnu/libc.so.6").sdt_probes() == ()


def _first_note_desc(elf: ElfFile) -> int:
    """File offset of the first .note.stapsdt descriptor (header 12 + "stapsdt\\0" 8)."""
    section = elf.section(".note.stapsdt")
    assert section is not None
    return section.offset + 12 + 8


def test_base_adjustment(with_semaphores: Path) -> None:
    """A moved file (prelink) keeps note addresses; .stapsdt.base tells how far it moved."""
    elf = ElfFile.open(with_semaphores)
    desc = _first_note_desc(elf)
    blob = bytearray(Path(with_semaphores).read_bytes())
    base = int.from_bytes(blob[desc + 8 : desc + 16], "little")
    blob[desc + 8 : desc + 16] = (base - 0x1000).to_bytes(8, "little")
    moved = sdt.probes(ElfFile.from_bytes(bytes(blob), "moved"))
    original = elf.sdt_probes()
    assert moved[0].pc == original[0].pc + 0x1000
    assert moved[0].semaphore == original[0].semaphore + 0x1000
    assert moved[0].base == base - 0x1000
    assert moved[1:] == original[1:]


def test_bad_notes_raise_elf_error(with_semaphores: Path) -> None:
    blob = Path(with_semaphores).read_bytes()
    bad = blob.replace(b"2@%si ", b"2@%sq ", 1)
    assert bad != blob
    with pytest.raises(ElfError, match=r"USDT probe elftest:mixed at 0x[0-9a-f]+: .*%sq"):
        sdt.probes(ElfFile.from_bytes(bad, "bad"))
    arm = bytearray(blob)
    arm[18:20] = (183).to_bytes(2, "little")
    with pytest.raises(ElfError, match="USDT arguments of machine 183 are not supported"):
        sdt.probes(ElfFile.from_bytes(bytes(arm), "arm"))


REG, MEM, CONST = SdtArgKind.REGISTER, SdtArgKind.MEMORY, SdtArgKind.CONSTANT


@pytest.mark.parametrize(
    ("text", "kind", "fields"),
    [
        ("8@%rax", REG, {"size": 8, "signed": False, "register": "rax", "register_width": 8}),
        ("-4@%eax", REG, {"size": 4, "signed": True, "register": "rax", "register_width": 4}),
        ("2@%r9w", REG, {"register": "r9", "register_width": 2}),
        ("-1@%sil", REG, {"size": 1, "signed": True, "register": "rsi", "register_width": 1}),
        ("1@%r12b", REG, {"register": "r12", "register_width": 1}),
        ("4@%r10d", REG, {"register": "r10", "register_width": 4}),
        ("1@%ah", REG, {"register": "rax", "register_width": 1, "register_shift": 8}),
        ("-4@$-7", CONST, {"size": 4, "signed": True, "constant": -7, "symbol": None}),
        ("8@$0x10", CONST, {"constant": 16}),
        ("8@$buf+8", CONST, {"constant": 8, "symbol": "buf"}),
        ("-4@-16(%rbp)", MEM, {"size": 4, "register": "rbp", "displacement": -16, "index": None}),
        ("8@(%rdi)", MEM, {"register": "rdi", "displacement": 0}),
        ("8@0x18(%rax,%rbx,4)", MEM, {"register": "rax", "displacement": 24, "index": "rbx"}),
        ("4@(,%rcx,8)", MEM, {"register": None, "index": "rcx", "scale": 8}),
        ("8@8(%rax,%rdx)", MEM, {"register": "rax", "index": "rdx", "scale": 1}),
        ("-8@var(%rip)", MEM, {"register": "rip", "symbol": "var", "displacement": 0}),
        ("8@tab.1+24(%rip)", MEM, {"register": "rip", "symbol": "tab.1", "displacement": 24}),
        ("4@arr(,%rax,4)", MEM, {"register": None, "symbol": "arr", "index": "rax", "scale": 4}),
        ("8@010(%rsp)", MEM, {"register": "rsp", "displacement": 8}),  # GAS reads 010 as octal
        ("%rdi", REG, {"size": 8, "signed": False, "register": "rdi"}),  # v1 notes: no SIZE@
    ],
)
def test_parse_arg_forms(text: str, kind: SdtArgKind, fields: dict[str, object]) -> None:
    arg = parse_arg(text)
    assert arg.kind is kind and arg.text == text
    assert {name: getattr(arg, name) for name in fields} == fields


@pytest.mark.parametrize("text", ["8@%xmm0", "3@%rax", "8@", "8@(%rax", "8@%rax,%rbx", "8@$", "@"])
def test_parse_arg_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_arg(text)


def test_parse_args_and_convert() -> None:
    args = parse_args("8@%rbp 8@%r12 -4@%eax")
    assert [a.register for a in args] == ["rbp", "r12", "rax"]
    assert parse_args("") == ()
    assert SdtArg(1, True, SdtArgKind.REGISTER, "rax").convert(0xFF) == -1
    assert SdtArg(2, False, SdtArgKind.REGISTER, "rax").convert(0x12345) == 0x2345
    assert SdtArg(4, True, SdtArgKind.REGISTER, "rax").convert(0x7FFFFFFF) == 0x7FFFFFFF
    assert SdtArg(8, True, SdtArgKind.REGISTER, "rax").convert(2**64 - 2) == -2
