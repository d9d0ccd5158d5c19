"""dtproc.elf against real files, with nm, readelf and pyelftools as oracles."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_ST_INFO_BIND, ENUM_ST_INFO_TYPE, ENUM_ST_SHNDX
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtproc.elf import (
    ElfFile,
    ElfSymbol,
    ElfType,
    RelocationType,
    Section,
    SectionType,
    SymbolBinding,
    SymbolTable,
    SymbolType,
    display_name,
)
from dtproc.errors import ElfError

if TYPE_CHECKING:
    from conftest import Reaper

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LDSO = "/lib64/ld-linux-x86-64.so.2"
PYTHON = "/usr/bin/python3.11"
TRUE = "/bin/true"

# ----------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Targets:
    pie: Path
    nopie: Path
    stripped: Path
    static: Path
    versioned: Path


@pytest.fixture(scope="session")
def targets(build: Callable[..., Path], build_dir: Path) -> Targets:
    script = build_dir / "elf_versioned.map"
    script.write_text(
        "ELFTEST_1 { global: elf_ver_fn; elf_plain; local: *; };\n"
        "ELFTEST_2 { global: elf_ver_fn; } ELFTEST_1;\n"
    )
    return Targets(
        pie=build("elf_basic", "-O2", "-pie", "-fPIE"),
        nopie=build("elf_basic", "-O2", "-no-pie"),
        stripped=build("elf_basic", "-O2", "-s"),
        static=build("elf_basic", "-O2", "-static"),
        versioned=build("elf_versioned", f"-Wl,--version-script={script}", shared=True),
    )


def _files(t: Targets) -> dict[str, str]:
    return {
        "libc": LIBC,
        "ldso": LDSO,
        "python": PYTHON,
        "pie": str(t.pie),
        "nopie": str(t.nopie),
        "stripped": str(t.stripped),
        "static": str(t.static),
        "versioned": str(t.versioned),
    }


FILE_KEYS = ["libc", "ldso", "python", "pie", "nopie", "stripped", "static", "versioned"]


@pytest.fixture(params=FILE_KEYS)
def any_file(request: pytest.FixtureRequest, targets: Targets) -> str:
    return _files(targets)[request.param]


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# ----------------------------------------------------------------------------- oracles


def _nm(path: str, dynamic: bool) -> set[tuple[str, int]]:
    args = ["nm", "--defined-only", *(["-D"] if dynamic else []), path]
    out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    rows = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.add((parts[2], int(parts[0], 16)))
    return rows


def _pyelftools_symbols(path: str) -> set[tuple[str, int, int, int, int, int]]:
    rows = set()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection) or sec["sh_type"] == "SHT_NOBITS":
                continue
            for sym in sec.iter_symbols():
                shndx = sym["st_shndx"]
                if shndx == "SHN_UNDEF" or not sym.name:
                    continue
                info = sym["st_info"]
                rows.add(
                    (
                        sym.name.split("@")[0],
                        sym["st_value"],
                        sym["st_size"],
                        ENUM_ST_INFO_TYPE[info["type"]],
                        ENUM_ST_INFO_BIND[info["bind"]],
                        shndx if isinstance(shndx, int) else ENUM_ST_SHNDX[shndx],
                    )
                )
    return rows


def _ours(table: SymbolTable) -> set[tuple[str, int, int, int, int, int]]:
    return {(s.name, s.value, s.size, s.type.value, s.binding.value, s.shndx) for s in table}


def _ours_nm(table: SymbolTable) -> set[tuple[str, int]]:
    hidden = (SymbolType.FILE, SymbolType.SECTION)
    return {(s.versioned_name, s.value) for s in table if s.type not in hidden}


def _readelf_build_id(path: str) -> bytes | None:
    m = re.search(r"Build ID: ([0-9a-f]+)", _run("readelf", "-n", path))
    return bytes.fromhex(m.group(1)) if m else None


# ----------------------------------------------------------------------------- headers


def test_headers_match_pyelftools(any_file: str) -> None:
    elf = ElfFile.open(any_file)
    with open(any_file, "rb") as f:
        ref = ELFFile(f)
        assert elf.entry == ref["e_entry"]
        assert elf.machine == 62
        assert elf.elf_type.name == ref["e_type"].removeprefix("ET_")
        assert [
            (s.name, int(s.type), int(s.flags), s.addr, s.offset, s.size, s.link, s.info)
            for s in elf.sections
        ] == [
            (
                s.name,
                s.header["sh_type"] if isinstance(s.header["sh_type"], int) else _sht(s),
                s["sh_flags"],
                s["sh_addr"],
                s["sh_offset"],
                s["sh_size"],
                s["sh_link"],
                s["sh_info"],
            )
            for s in ref.iter_sections()
        ]
        assert [(s.offset, s.vaddr, s.filesz, s.memsz, int(s.flags)) for s in elf.segments] == [
            (p["p_offset"], p["p_vaddr"], p["p_filesz"], p["p_memsz"], p["p_flags"])
            for p in ref.iter_segments()
        ]


def _sht(section: object) -> int:
    from elftools.elf.enums import ENUM_SH_TYPE_AMD64, ENUM_SH_TYPE_BASE

    name = section.header["sh_type"]  # type: ignore[attr-defined]
    return int({**ENUM_SH_TYPE_BASE, **ENUM_SH_TYPE_AMD64}[name])


def test_section_lookup_and_data() -> None:
    elf = ElfFile.open(LIBC)
    text = elf.section(".text")
    assert text is not None and text.type is SectionType.PROGBITS
    assert elf.section("no.such.section") is None
    with open(LIBC, "rb") as f:
        f.seek(text.offset)
        assert elf.section_data(".text")[:4096] == f.read(4096)
    bss = elf.section(".bss")
    assert bss is not None and elf.section_data(bss) == b""
    with pytest.raises(ElfError, match=r"no section named \.nope"):
        elf.section_data(".nope")


def test_compressed_section_contents() -> None:
    dbg = ElfFile.open(LIBC).debug_file()
    assert dbg is not None
    sec = dbg.section(".debug_aranges")
    assert sec is not None and sec.flags & sec.flags.COMPRESSED
    with open(dbg.path, "rb") as f:
        ref_section = ELFFile(f).get_section_by_name(".debug_aranges")
        assert ref_section is not None
        ref = ref_section.data()
    assert dbg.section_contents(sec) == ref
    assert dbg.section_data(sec) != ref


# ----------------------------------------------------------------------------- symbols


def test_symbols_match_nm(any_file: str) -> None:
    table = ElfFile.open(any_file).symbols
    assert _ours_nm(table) == _nm(any_file, dynamic=False) | _nm(any_file, dynamic=True)


def test_symbols_match_pyelftools(any_file: str) -> None:
    assert _ours(ElfFile.open(any_file).symbols) == _pyelftools_symbols(any_file)


def test_no_undefined_symbols_and_dedup() -> None:
    table = ElfFile.open(LIBC).symbols
    assert all(s.shndx != 0 for s in table)
    assert len(set(table)) == len(table)


def test_libc_versions_and_lookup() -> None:
    table = ElfFile.open(LIBC).symbols
    memcpy = table.lookup("memcpy")
    assert memcpy is not None
    assert memcpy.versioned_name == "memcpy@@GLIBC_2.14" and memcpy.default_version
    old = table.lookup("memcpy@GLIBC_2.2.5")
    assert old is not None and old.versioned_name == "memcpy@GLIBC_2.2.5"
    assert not old.default_version and old.value != memcpy.value
    assert table.lookup("memcpy@@GLIBC_2.2.5") is None
    assert table.lookup("memcpy@@GLIBC_2.14") == memcpy
    assert {s.versioned_name for s in table.by_name("memcpy")} == {
        "memcpy@@GLIBC_2.14",
        "memcpy@GLIBC_2.2.5",
    }
    start = table.lookup("__libc_start_main")
    assert start is not None and start.version == "GLIBC_2.34"
    assert table.lookup("no_such_symbol_anywhere") is None
    # Version-definition symbols read bare, as nm shows them.
    base = table.lookup("GLIBC_2.2.5")
    assert base is not None and base.version is None and base.versioned_name == "GLIBC_2.2.5"


def test_ifunc_flagged() -> None:
    table = ElfFile.open(LIBC).symbols
    for name in ("strlen", "memcpy"):
        sym = table.lookup(name)
        assert sym is not None and sym.type is SymbolType.IFUNC and sym.is_function


def test_target_symbol_kinds(targets: Targets) -> None:
    table = ElfFile.open(targets.pie).symbols
    kinds = {
        "elf_function": (SymbolType.FUNC, SymbolBinding.GLOBAL),
        "elf_static_function": (SymbolType.FUNC, SymbolBinding.LOCAL),
        "elf_ifunc": (SymbolType.IFUNC, SymbolBinding.GLOBAL),
        "elf_global_counter": (SymbolType.OBJECT, SymbolBinding.GLOBAL),
        "elf_tls_value": (SymbolType.TLS, SymbolBinding.GLOBAL),
        "elf_zero_label": (SymbolType.NOTYPE, SymbolBinding.GLOBAL),
    }
    for name, (stype, binding) in kinds.items():
        sym = table.lookup(name)
        assert sym is not None, name
        assert (sym.type, sym.binding) == (stype, binding), name
    counter = table.lookup("elf_global_counter")
    assert counter is not None and not counter.is_function


def test_versioned_library(targets: Targets) -> None:
    table = ElfFile.open(targets.versioned).symbols
    new = table.lookup("elf_ver_fn")
    old = table.lookup("elf_ver_fn@ELFTEST_1")
    assert new is not None and new.versioned_name == "elf_ver_fn@@ELFTEST_2"
    assert old is not None and old.versioned_name == "elf_ver_fn@ELFTEST_1"
    alias = table.lookup("elf_ver_new")  # the local symbol behind it
    assert alias is not None and alias.value == new.value
    assert table.lookup("elf_plain@@ELFTEST_1") is not None


def test_glob(targets: Targets) -> None:
    table = ElfFile.open(LIBC).symbols
    hits = list(table.glob("str*cpy"))
    names = {s.name for s in hits}
    assert {"strcpy", "strncpy"} <= names
    assert all(re.fullmatch(r"str.*cpy", n) for n in names)
    assert [s.name for s in table.glob("malloc")] == ["malloc"]
    assert list(table.glob("zz_nothing*")) == []
    # Functions come first, each group by address.
    mixed = list(ElfFile.open(targets.pie).symbols.glob("elf_*"))
    kinds = [s.is_function for s in mixed]
    assert kinds == sorted(kinds, reverse=True) and True in kinds and False in kinds
    funcs = [s.value for s in mixed if s.is_function]
    assert funcs == sorted(funcs)
    only = list(ElfFile.open(targets.pie).symbols.glob("elf_*", functions_only=True))
    assert only and all(s.is_function for s in only)
    versions = {s.versioned_name for s in table.glob("memcpy@GLIBC_2.*")}
    assert versions == {"memcpy@@GLIBC_2.14", "memcpy@GLIBC_2.2.5"}
    assert {s.versioned_name for s in table.glob("mem?py@@*")} == {"memcpy@@GLIBC_2.14"}


def test_functions_sorted_with_aliases() -> None:
    table = ElfFile.open(LIBC).symbols
    funcs = table.functions()
    assert [s.value for s in funcs] == sorted(s.value for s in funcs)
    assert all(s.is_function for s in funcs)
    assert len(funcs) == sum(1 for s in table if s.is_function)
    malloc = table.lookup("malloc")
    assert malloc is not None
    at_malloc = [s.name for s in funcs if s.value == malloc.value]
    assert "malloc" in at_malloc and "__libc_malloc" in at_malloc


def test_at_sized_symbols() -> None:
    table = ElfFile.open(LIBC).full_symbols()
    for sym in table.functions()[::7]:
        if sym.size == 0:
            continue
        for off in (0, sym.size // 2, sym.size - 1):
            hit = table.at(sym.value + off)
            assert hit is not None
            found, delta = hit
            assert found.value + delta == sym.value + off
            assert found.value <= sym.value + off < found.value + found.size
    malloc = table.lookup("malloc")
    assert malloc is not None
    assert table.at(malloc.value + 3) == (malloc, 3)
    assert table.at(0) is None


def test_at_prefers_global_default_alias() -> None:
    table = ElfFile.open(LIBC).full_symbols()
    memcpy = table.lookup("memcpy")
    assert memcpy is not None
    hit = table.at(memcpy.value + 1)
    assert hit == (memcpy, 1)


def test_at_zero_sized_fallback(targets: Targets) -> None:
    table = ElfFile.open(targets.pie).symbols
    label = table.lookup("elf_zero_label")
    assert label is not None and label.size == 0
    assert table.at(label.value + 2) == (label, 2)
    # Past the next sized symbol the label no longer reaches.
    following = min(s.value for s in table.functions() if s.value > label.value and s.size)
    hit = table.at(following)
    assert hit is not None and hit[0].name != "elf_zero_label"


def test_symbol_table_from_symbols() -> None:
    a = ElfSymbol("a", None, False, 0x1000, 0x10, SymbolType.FUNC, SymbolBinding.GLOBAL, 1)
    b = ElfSymbol("b", "V1", True, 0x2000, 0, SymbolType.NOTYPE, SymbolBinding.WEAK, 1)
    undefined = ElfSymbol("u", None, False, 0, 0, SymbolType.FUNC, SymbolBinding.GLOBAL, 0)
    table = SymbolTable([a, b, a, undefined], section_ranges=[(0x1000, 0x3000)])
    assert list(table) == [a, b]
    assert table.at(0x1008) == (a, 8)
    assert table.at(0x2004) == (b, 4)
    assert table.at(0x3004) is None  # outside the section
    assert table.lookup("b@@V1") == b and b.versioned_name == "b@@V1"
    assert len(table.union(SymbolTable([undefined]))) == 2


def test_static_and_stripped_tables(targets: Targets) -> None:
    static = ElfFile.open(targets.static)
    assert static.section(".dynsym") is None and static.has_symtab
    assert static.symbols.lookup("main") is not None
    assert static.symbols.lookup("printf") is not None
    stripped = ElfFile.open(targets.stripped)
    assert not stripped.has_symtab
    assert stripped.symbols.lookup("main") is None
    assert stripped.symbols.lookup("elf_function") is None  # not exported from a PIE


def _without_sections(path: str) -> bytearray:
    blob = bytearray(Path(path).read_bytes())
    blob[0x28:0x30] = bytes(8)  # e_shoff
    blob[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    return blob


def test_sectionless_image_uses_dynamic_tags() -> None:
    """With section headers gone (sstrip, memory images), DT_* tags still give .dynsym."""
    for path in (LIBC, TRUE):
        bare = ElfFile.from_bytes(bytes(_without_sections(path)), path + " (no sections)")
        assert bare.sections == ()
        assert set(bare.symbols) == set(ElfFile.open(path).symbols)
        assert bare.build_id == ElfFile.open(path).build_id  # from PT_NOTE


# ----------------------------------------------------------------------------- dynamic, notes


def test_dynamic_fields(targets: Targets, build: Callable[..., Path]) -> None:
    libc = ElfFile.open(LIBC)
    assert libc.soname == "libc.so.6"
    assert list(libc.needed) == ["ld-linux-x86-64.so.2"]
    assert libc.interp == "/lib64/ld-linux-x86-64.so.2"
    assert not libc.is_pie and not libc.is_static
    python = ElfFile.open(PYTHON)
    assert python.elf_type is ElfType.EXEC and not python.is_pie and not python.is_static
    assert "libc.so.6" in python.needed and python.soname is None
    with open(PYTHON, "rb") as f:
        dynamic = ELFFile(f).get_section_by_name(".dynamic")
        assert isinstance(dynamic, DynamicSection)
        tags = dynamic.iter_tags()
        ref = [(_dt(t.entry.d_tag), t.entry.d_val) for t in tags if t.entry.d_tag != "DT_NULL"]
    assert list(python.dynamic) == ref
    pie = ElfFile.open(targets.pie)
    assert pie.is_pie and not pie.is_static and pie.elf_type is ElfType.DYN
    nopie = ElfFile.open(targets.nopie)
    assert not nopie.is_pie and not nopie.is_static and nopie.elf_type is ElfType.EXEC
    static = ElfFile.open(targets.static)
    assert static.is_static and static.interp is None and not static.is_pie
    lib = ElfFile.open(targets.versioned)
    assert not lib.is_pie and not lib.is_static and lib.interp is None
    static_pie = ElfFile.open(build("elf_basic", "-O2", "-static-pie"))
    assert static_pie.is_static and static_pie.is_pie and static_pie.dynamic


def _dt(name: str | int) -> int:
    from elftools.elf.enums import ENUM_D_TAG

    return name if isinstance(name, int) else int(ENUM_D_TAG[name])


def test_build_id_matches_readelf(any_file: str) -> None:
    assert ElfFile.open(any_file).build_id == _readelf_build_id(any_file)


def test_notes_match_readelf() -> None:
    elf = ElfFile.open(PYTHON)
    notes = list(elf.notes())
    owners = re.findall(r"^\s+(\S+)\s+0x[0-9a-f]+\s+\S", _run("readelf", "-n", PYTHON), re.M)
    assert [n.name for n in notes] == owners
    prop = next(n for n in notes if n.type == 5 and n.name == "GNU")  # NT_GNU_PROPERTY_TYPE_0
    assert len(prop.desc) == 16  # 8-byte aligned note parsed with 8-byte padding


def test_min_vaddr_and_address_maps(targets: Targets) -> None:
    assert ElfFile.open(targets.nopie).min_vaddr == 0x400000
    libc = ElfFile.open(LIBC)
    assert libc.min_vaddr == 0
    text = libc.section(".text")
    assert text is not None
    assert libc.vaddr_to_offset(text.addr + 0x10) == text.offset + 0x10
    assert libc.offset_to_vaddr(text.offset + 0x10) == text.addr + 0x10
    bss = libc.section(".bss")
    assert bss is not None and libc.vaddr_to_offset(bss.addr + bss.size - 1) is None


def test_display_name() -> None:
    assert display_name(LIBC) == "libc.so.6"
    maps = Path("/proc/self/maps").read_text().splitlines()
    line = next(m for m in maps if m.endswith("/libc.so.6"))
    link = f"/proc/self/map_files/{line.split()[0]}"
    assert display_name(link) == "libc.so.6"
    elf = ElfFile.open(link)
    assert elf.real_path == os.path.realpath(LIBC)


def test_vdso_from_memory() -> None:
    line = next(m for m in Path("/proc/self/maps").read_text().splitlines() if "[vdso]" in m)
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(start)
        image = mem.read(end - start)
    vdso = ElfFile.from_bytes(image, "[vdso]")
    sym = vdso.symbols.lookup("__vdso_clock_gettime")
    assert sym is not None and sym.is_function and sym.version == "LINUX_2.6"
    assert vdso.soname == "linux-vdso.so.1"
    assert vdso.debug_file(debug_dirs=()) is None


# ----------------------------------------------------------------------------- relocations, PLT

STDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"


def _pyelftools_relocations(path: str) -> list[tuple[int, int, str, int]]:
    rows = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or sec["sh_type"] != "SHT_RELA":
                continue
            if not sec["sh_flags"] & 2:  # SHF_ALLOC: dynamic relocations only
                continue
            symtab = elf.get_section(sec["sh_link"]) if sec["sh_link"] else None
            for rel in sec.iter_relocations():
                index = rel["r_info_sym"]
                name = symtab.get_symbol(index).name if index and symtab is not None else ""
                rows.append((rel["r_offset"], rel["r_info_type"], name, rel["r_addend"]))
    return rows


def _ours_relocations(elf: ElfFile) -> list[tuple[int, int, str, int]]:
    return [(r.offset, int(r.type), r.sym_name, r.addend) for r in elf.relocations()]


@pytest.mark.parametrize("key", ["libc", "ldso", "python", "pie", "nopie", "static", "versioned"])
def test_relocations_match_pyelftools(key: str, targets: Targets) -> None:
    path = _files(targets)[key]
    assert _ours_relocations(ElfFile.open(path)) == _pyelftools_relocations(path)


def test_relocation_objects_and_lookups() -> None:
    libc = ElfFile.open(LIBC)
    table = libc.relocations()
    assert table is libc.relocations() and len(table) == len(list(table))
    assert table[-1] == list(table)[-1] and table[1:3] == list(table)[1:3]
    with pytest.raises(IndexError):
        table[len(table)]
    kinds = {r.type for r in table}
    assert RelocationType.R_X86_64_IRELATIVE in kinds and RelocationType.R_X86_64_GLOB_DAT in kinds
    assert all(isinstance(k, RelocationType) for k in kinds)
    irelative = table.of_type(RelocationType.R_X86_64_IRELATIVE)
    strlen = libc.symbols.lookup("strlen")
    assert strlen is not None and strlen.type is SymbolType.IFUNC
    assert any(
        r.addend == strlen.value and r.symbol is None and r.sym_name == "" for r in irelative
    )
    assert all(table.at(r.offset) == r for r in irelative)
    assert table.at(1) is None
    # An undefined symbol a relocation names keeps the version it needs.
    python = ElfFile.open(PYTHON).relocations()
    (malloc,) = python.by_symbol("malloc")
    assert malloc.type is RelocationType.R_X86_64_JUMP_SLOT and malloc.symbol is not None
    assert malloc.symbol.shndx == 0 and malloc.symbol.versioned_name == "malloc@GLIBC_2.2.5"
    assert python.plt_slot(0) == python.of_type(RelocationType.R_X86_64_JUMP_SLOT)[0]
    assert python.plt_slot(10**6) is None and python.by_symbol("no such symbol") == []


def test_relocations_without_section_headers() -> None:
    """DT_RELA and DT_JMPREL give the same relocations, also when DT_RELASZ covers both."""
    for path in (LIBC, TRUE, PYTHON):
        bare = ElfFile.from_bytes(bytes(_without_sections(path)), path + " (no sections)")
        assert list(bare.relocations()) == list(ElfFile.open(path).relocations())
        assert bare.plt_entries() == {}
    libc = ElfFile.open(LIBC)
    tags = dict(libc.dynamic)
    rela, relasz, jmprel = tags[_dt("DT_RELA")], tags[_dt("DT_RELASZ")], tags[_dt("DT_JMPREL")]
    assert rela + relasz == jmprel
    dynamic = next(s for s in libc.segments if s.type == 2)
    at = dynamic.offset + 16 * [t for t, _ in libc.dynamic].index(_dt("DT_RELASZ")) + 8
    blob = _without_sections(LIBC)
    blob[at : at + 8] = (relasz + tags[_dt("DT_PLTRELSZ")]).to_bytes(8, "little")
    covering = ElfFile.from_bytes(bytes(blob), "libc with DT_RELASZ over .rela.plt")
    assert list(covering.relocations()) == list(libc.relocations())


def _objdump_plt(path: str) -> dict[int, str]:
    out = _run("objdump", "-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got", path)
    return {int(a, 16): name for a, name in re.findall(r"^([0-9a-f]+) <(.+@plt)>:$", out, re.M)}


PLT_FLAGS = {
    "pie": ("-O2", "-pie", "-fPIE"),
    "nopie": ("-O2", "-no-pie"),
    "now": ("-O2", "-Wl,-z,now"),
    "noplt": ("-O2", "-fno-plt"),
    "ibt-pie": ("-O2", "-fcf-protection=full", "-Wl,-z,ibtplt"),
    "ibt-nopie": ("-O2", "-no-pie", "-fcf-protection=full", "-Wl,-z,ibtplt"),
}


@pytest.mark.parametrize("kind", [*PLT_FLAGS, "libc", "stdc++"])
def test_plt_entries_match_objdump(kind: str, build: Callable[..., Path]) -> None:
    if kind in PLT_FLAGS:
        path = str(build("elf_basic", *PLT_FLAGS[kind], suffix=kind))
    else:
        path = {"libc": LIBC, "stdc++": STDCXX}[kind]
    elf = ElfFile.open(path)
    entries = elf.plt_entries()
    expected = _objdump_plt(path)
    assert {a: entries.get(a) for a in expected} == expected
    assert "printf@plt" in entries.values() or kind in ("noplt", "libc", "stdc++")
    # objdump leaves IBT's lazy .plt stubs unnamed; we name them as their .plt.sec twin.
    lazy = {a: n for a, n in entries.items() if a not in expected}
    plt = elf.section(".plt")
    assert plt is not None
    assert bool(lazy) == kind.startswith("ibt")
    assert all(plt.addr < a < plt.addr + plt.size for a in lazy)
    assert set(lazy.values()) <= set(expected.values())
    for address, name in entries.items():
        assert elf.plt_entry_at(address) == (name, 0)
        assert elf.plt_entry_at(address + 5) == (name, 5)
    assert elf.plt_entry_at(plt.addr) is None  # PLT0 belongs to no symbol


def test_plt_of_static_binary_names_irelative_slots(targets: Targets) -> None:
    static = ElfFile.open(targets.static)
    entries = static.plt_entries()
    irelative = static.relocations().of_type(RelocationType.R_X86_64_IRELATIVE)
    assert entries and len(entries) == len(irelative)
    assert set(entries.values()) == {f"*ABS*+0x{r.addend:x}@plt" for r in irelative}
    stub = min(entries)
    assert static.plt_entry_at(stub + 7) == (entries[stub], 7)
    assert static.plt_entry_at(stub + 8) == (entries[stub + 8], 0)


def test_relocations_of_other_machines_stay_ints() -> None:
    arm = ElfFile.from_bytes(_patched(TRUE, at_12=(183).to_bytes(2, "little")), "arm")
    assert arm.relocations() and not any(
        isinstance(r.type, RelocationType) for r in arm.relocations()
    )
    assert arm.plt_entries() == {}


def test_relocation_errors() -> None:
    libc = ElfFile.open(LIBC)
    rela = libc.section(".rela.dyn")
    assert rela is not None
    shoff = int.from_bytes(Path(LIBC).read_bytes()[0x28:0x30], "little")
    sh_size = shoff + 64 * libc.sections.index(rela) + 0x20
    cases = [
        ({f"at_{sh_size:x}": (rela.size + 1).to_bytes(8, "little")}, "no multiple of 24"),
        ({f"at_{rela.offset + 12:x}": (0xFFFFFF).to_bytes(4, "little")}, "names symbol 16777215"),
    ]
    for edits, reason in cases:
        bad = ElfFile.from_bytes(_patched(LIBC, **edits), "bad libc")
        with pytest.raises(ElfError, match=reason):
            bad.relocations()


# ----------------------------------------------------------------------------- debug files


def test_libc_debug_file_by_build_id() -> None:
    libc = ElfFile.open(LIBC)
    dbg = libc.debug_file()
    assert dbg is not None
    bid = libc.build_id
    assert bid is not None
    assert dbg.path == f"/usr/lib/debug/.build-id/{bid[:1].hex()}/{bid[1:].hex()}.debug"
    assert dbg.build_id == bid and dbg.has_symtab and not libc.has_symtab
    assert libc.debug_file() is dbg  # cached
    assert libc.symbols.lookup("_int_malloc") is None
    full = libc.full_symbols()
    local = full.lookup("_int_malloc")
    assert local is not None and local.binding is SymbolBinding.LOCAL and local.is_function
    assert len(full) > len(libc.symbols)
    assert set(libc.symbols) <= set(full)
    assert _ours_nm(full) == _nm(LIBC, dynamic=True) | _nm(dbg.path, dynamic=False)


def test_full_symbols_without_debug_file(targets: Targets) -> None:
    pie = ElfFile.open(targets.pie)
    assert pie.full_symbols() is pie.symbols


def test_debuglink_with_crc(targets: Targets, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "prog"
    shutil.copy(targets.pie, prog)
    debug = tmp_path / "prog.debug"
    subprocess.run(["objcopy", "--only-keep-debug", prog, debug], check=True)
    strip = ["objcopy", "--strip-all", "--remove-section=.note.gnu.build-id"]
    subprocess.run([*strip, prog], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", prog], check=True)
    elf = ElfFile.open(prog)
    link = elf.debuglink
    assert link is not None and link.name == "prog.debug"
    assert link.crc == zlib.crc32(debug.read_bytes())
    assert elf.build_id is None and not elf.has_symtab
    root = tmp_path / "root"
    assert elf.debug_file(debug_dirs=[str(root)]) is None
    places = [bindir / "prog.debug", bindir / ".debug" / "prog.debug"]
    places.append(Path(str(root) + str(bindir)) / "prog.debug")
    for place in places:
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(debug, place)
        elf = ElfFile.open(prog)
        elf._debug_files.clear()
        found = elf.debug_file(debug_dirs=[str(root)])
        assert found is not None and found.path == str(place)
        local = elf.full_symbols().lookup("elf_static_function")
        assert local is not None and local.binding is SymbolBinding.LOCAL
        place.unlink()
    # A debug file whose CRC does not match is not taken.
    bad = bindir / "prog.debug"
    bad.write_bytes(debug.read_bytes()[:-1] + b"\x01")
    elf._debug_files.clear()
    assert elf.debug_file(debug_dirs=[str(root)]) is None


# ----------------------------------------------------------------------------- load bias


def _mappings(pid: int, path: str) -> list[tuple[int, int, str]]:
    real = os.path.realpath(path)
    rows = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == real:
            rows.append((int(fields[0].split("-")[0], 16), int(fields[2], 16), fields[1]))
    return rows


def _bias(elf: ElfFile, pid: int) -> int:
    """The bias by every mapping that one line identifies: offset 0, executable, writable."""
    maps = _mappings(pid, elf.real_path or elf.path)  # a cached object may carry another path
    clear = [m for m in maps if m[1] == 0 or "x" in m[2] or "w" in m[2]]
    assert len(clear) >= 2
    biases = {elf.load_bias(start, off, perms) for start, off, perms in clear}
    assert len(biases) == 1
    offset0 = next(m for m in maps if m[1] == 0)
    assert elf.load_bias(offset0[0], 0) in biases  # perms are not needed at offset 0
    return biases.pop()


@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_load_bias_of_running_program(kind: str, targets: Targets, reaper: Reaper) -> None:
    exe = getattr(targets, kind)
    proc = reaper.spawn([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    main_addr, printf_addr, counter_addr = (int(x, 16) for x in proc.stdout.readline().split())
    elf = ElfFile.open(exe)
    bias = _bias(elf, proc.pid)
    assert (bias != 0) == (kind == "pie")
    main = elf.symbols.lookup("main")
    counter = elf.symbols.lookup("elf_global_counter")
    assert main is not None and counter is not None
    assert main.value + bias == main_addr
    assert counter.value + bias == counter_addr
    assert elf.min_vaddr + bias == min(start for start, _, _ in _mappings(proc.pid, str(exe)))
    libc = ElfFile.open(LIBC)
    printf = libc.symbols.lookup("printf")
    assert printf is not None and printf.value + _bias(libc, proc.pid) == printf_addr
    proc.stdin.close()
    assert proc.wait(timeout=10) is not None


def test_load_bias_shared_page_needs_perms(targets: Targets) -> None:
    """In a PIE, .rodata's segment and the data segment start in the same file page."""
    elf = ElfFile.open(targets.pie)
    data = next(s for s in elf.segments if s.flags & s.flags.W and s.type == 1)
    shared = data.offset & ~0xFFF
    assert any(s.offset == shared for s in elf.segments if s.type == 1 and s is not data)
    start = 0x555555554000 + (data.vaddr & ~0xFFF)
    assert elf.load_bias(start, shared, "rw-p") == 0x555555554000
    assert elf.load_bias(start - 0x1000, shared, "r--p") == 0x555555554000


def test_load_bias_rejects_unmapped_offset() -> None:
    libc = ElfFile.open(LIBC)
    with pytest.raises(ElfError, match="no PT_LOAD segment maps file offset"):
        libc.load_bias(0x7F0000000000, 0x10000000)


# ----------------------------------------------------------------------------- caching, errors


def test_open_is_cached_by_identity(tmp_path: Path) -> None:
    copy = tmp_path / "true"
    shutil.copy(TRUE, copy)
    first = ElfFile.open(copy)
    assert ElfFile.open(str(copy)) is first
    assert first.symbols is first.symbols
    os.utime(copy, ns=(1, 1))
    assert ElfFile.open(copy) is not first


def test_constructor_is_private() -> None:
    with pytest.raises(TypeError):
        ElfFile(object(), None, "x", None)  # type: ignore[arg-type]


def _patched(path: str, **edits: bytes) -> bytes:
    blob = bytearray(Path(path).read_bytes())
    for offset, value in edits.items():
        at = int(offset.removeprefix("at_"), 16)
        blob[at : at + len(value)] = value
    return bytes(blob)


def test_errors_say_what_is_wrong(tmp_path: Path) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"#!/bin/sh\necho hi\n", "not an ELF file"),
        (b"", "not an ELF file"),
        (b"\x7fELF\x02\x01", "truncated ELF header at offset 0x0"),
        (_patched(TRUE, at_4=b"\x01"), "unsupported class ELF32"),
        (_patched(TRUE, at_5=b"\x02"), "unsupported big-endian ELF"),
        (_patched(TRUE, at_10=b"\x99\x99"), "unknown ELF type 0x9999"),
    ]
    for data, reason in cases:
        with pytest.raises(ElfError, match=reason) as info:
            ElfFile.from_bytes(data, "sample")
        assert info.value.path == "sample" and str(info.value).startswith("sample: ")
    blob = Path(TRUE).read_bytes()
    shoff = int.from_bytes(blob[0x28:0x30], "little")
    cut = tmp_path / "cut"
    cut.write_bytes(blob[: shoff + 10])
    with pytest.raises(ElfError, match=f"truncated section header table at offset 0x{shoff:x}"):
        ElfFile.open(cut)
    with pytest.raises(ElfError, match="not a regular file"):
        ElfFile.open(tmp_path)
    with pytest.raises(ElfError, match="cannot open: No such file"):
        ElfFile.open(tmp_path / "missing")


def test_other_machine_headers_are_readable() -> None:
    aarch64 = ElfFile.from_bytes(_patched(TRUE, at_12=(183).to_bytes(2, "little")), "arm")
    assert aarch64.machine == 183 and aarch64.sections and aarch64.build_id is not None


# ----------------------------------------------------------------------------- hostile input


@dataclass(frozen=True)
class _Base:
    data: bytes
    regions: tuple[tuple[int, int], ...]


def _interesting_regions(data: bytes) -> tuple[tuple[int, int], ...]:
    elf = ElfFile.from_bytes(data, "base")
    regions = [(0, 64)]
    phoff = int.from_bytes(data[0x20:0x28], "little")
    shoff = int.from_bytes(data[0x28:0x30], "little")
    regions.append((phoff, phoff + 56 * len(elf.segments)))
    regions.append((shoff, shoff + 64 * len(elf.sections)))
    wanted = {
        SectionType.DYNSYM,
        SectionType.SYMTAB,
        SectionType.STRTAB,
        SectionType.DYNAMIC,
        SectionType.NOTE,
        SectionType.GNU_VERSYM,
        SectionType.GNU_VERDEF,
        SectionType.GNU_VERNEED,
        SectionType.GNU_HASH,
        SectionType.HASH,
        SectionType.RELA,
    }
    for sec in elf.sections:
        if sec.type in wanted or sec.name in (
            ".gnu_debuglink",
            ".stapsdt.base",
            ".plt",
            ".plt.got",
        ):
            regions.append((sec.offset, sec.offset + min(sec.size, 4096)))
    return tuple((a, b) for a, b in regions if a < b <= len(data))


@pytest.fixture(scope="module")
def fuzz_bases(build: Callable[..., Path], targets: Targets) -> list[_Base]:
    paths = [
        TRUE,
        str(build("elf_basic", "-O1")),
        str(targets.versioned),
        str(build("elf_usdt", "-O2", "-DELF_USDT_SEMAPHORES")),
    ]
    return [_Base(d, _interesting_regions(d)) for d in (Path(p).read_bytes() for p in paths)]


_VALUES = st.one_of(
    st.integers(0, 255).map(lambda b: bytes([b])),
    st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff"]),
    st.integers(0, 2**64 - 1).map(lambda v: v.to_bytes(8, "little")),
    st.integers(0, 0xFFFF).map(lambda v: v.to_bytes(2, "little")),
)


@st.composite
def _mutants(draw: st.DrawFn, bases: list[_Base]) -> bytes:
    base = draw(st.sampled_from(bases))
    blob = bytearray(base.data)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(base.regions))
        at = draw(st.integers(start, end - 1))
        value = draw(_VALUES)
        blob[at : at + len(value)] = value
        del blob[len(base.data) :]
    if draw(st.integers(0, 4)) == 0:
        del blob[draw(st.integers(0, len(blob))) :]
    return bytes(blob)


def _exercise(elf: ElfFile) -> None:
    accessors: list[Callable[[ElfFile], object]] = [
        lambda e: len(e.symbols),
        lambda e: list(e.symbols),
        lambda e: e.symbols.lookup("main"),
        lambda e: e.symbols.at(e.entry),
        lambda e: list(e.symbols.glob("*")),
        lambda e: e.symbols.functions(),
        lambda e: e.dynamic,
        lambda e: e.soname,
        lambda e: e.needed,
        lambda e: e.interp,
        lambda e: e.build_id,
        lambda e: e.debuglink,
        lambda e: list(e.notes()),
        lambda e: (e.is_pie, e.is_static, e.has_symtab, e.min_vaddr),
        lambda e: e.load_bias(0x7F0000000000, 0),
        lambda e: (e.vaddr_to_offset(e.entry), e.offset_to_vaddr(0)),
        lambda e: e.sdt_probes(),
        lambda e: e.full_symbols(),
        lambda e: e.debug_file(),
        lambda e: list(e.relocations()),
        lambda e: e.relocations().by_symbol("malloc"),
        lambda e: e.relocations().at(e.entry),
        lambda e: e.plt_entries(),
        lambda e: e.plt_entry_at(e.entry),
    ]
    accessors += [_section_reader(sec) for sec in elf.sections]
    for accessor in accessors:
        try:
            accessor(elf)
        except ElfError:
            pass


def _section_reader(section: Section) -> Callable[[ElfFile], object]:
    return lambda e: (e.section_data(section), e.section_contents(section))


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_files_raise_only_elf_error(data: st.DataObject, fuzz_bases: list[_Base]) -> None:
    blob = data.draw(_mutants(fuzz_bases))
    try:
        elf = ElfFile.from_bytes(blob, "mutant")
    except ElfError:
        return
    _exercise(elf)
