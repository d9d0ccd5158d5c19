"""Layer 2: dtproc's own ELF64 reader (headers, symbols, notes, build-id, debug files,
dynamic relocations and PLT stubs).

Tracing needs symbols of dozens of libraries at once, and a Python ELF library that builds an
object per field takes 50-450 ms per symbol table.  This reader instead bulk-unpacks whole
tables with ``struct.iter_unpack`` and keeps symbols as plain tuples until someone asks for
one, so libc's dynamic symbols cost a few milliseconds.

Bytes come through ``os.pread`` on a descriptor held open for the life of the :class:`ElfFile`
(not ``mmap``: a file truncated under an ``mmap`` kills the process with SIGBUS, and a held
descriptor keeps ``/proc/PID/map_files`` entries readable after their process is gone).  Only
the headers are read on open; every table is read and parsed on first use and then cached,
and :meth:`ElfFile.open` itself is cached per file identity.

Input is untrusted: every count is bounded by the file size, every offset is checked before
it is used, and every linked structure is walked with an iteration budget, so a corrupt file
raises :class:`~dtproc.errors.ElfError` instead of hanging or allocating without bound.
"""

from __future__ import annotations

import bisect
import enum
import fnmatch
import itertools
import os
import re
import stat
import struct
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, final, overload

from dtproc.errors import ElfError

if TYPE_CHECKING:
    from dtproc.sdt import SdtProbe

__all__ = [
    "DEBUG_DIRS",
    "EM_X86_64",
    "DebugLink",
    "DynamicTag",
    "ElfFile",
    "ElfSymbol",
    "ElfType",
    "Note",
    "Relocation",
    "RelocationTable",
    "RelocationType",
    "Section",
    "SectionFlags",
    "SectionType",
    "Segment",
    "SegmentFlags",
    "SegmentType",
    "SymbolBinding",
    "SymbolTable",
    "SymbolType",
    "display_name",
]

EM_X86_64: Final = 62
PAGE_SIZE: Final = 0x1000
#: Roots searched for separate debug files (``.build-id`` links and ``.gnu_debuglink`` copies).
DEBUG_DIRS: Final[tuple[str, ...]] = ("/usr/lib/debug",)

SHN_UNDEF: Final = 0
SHN_LORESERVE: Final = 0xFF00
SHN_XINDEX: Final = 0xFFFF
_NT_GNU_BUILD_ID: Final = 3
_VER_FLG_BASE: Final = 1
_VERSYM_HIDDEN: Final = 0x8000
_DF_1_PIE: Final = 0x08000000
_PN_XNUM: Final = 0xFFFF
_ELFCOMPRESS_ZLIB: Final = 1
_ELFCOMPRESS_ZSTD: Final = 2
# zlib cannot expand data by more than about 1032:1, so a larger claimed size is a lie.
_ZLIB_MAX_RATIO: Final = 1032
_CACHE_LIMIT: Final = 128
_CRC_CHUNK: Final = 1 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_DYN = struct.Struct("<QQ")
_NHDR = struct.Struct("<III")
_CHDR = struct.Struct("<IIQQ")
_VERDEF = struct.Struct("<HHHHIII")
_VERDAUX = struct.Struct("<II")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")
_U32 = struct.Struct("<I")
_HASH_HDR = struct.Struct("<II")
_GNU_HASH_HDR = struct.Struct("<IIII")
_RELA = struct.Struct("<QQq")


class ElfType(enum.Enum):
    """``e_type``: what kind of image the file is."""

    NONE = 0
    REL = 1
    EXEC = 2
    DYN = 3
    CORE = 4


class SymbolType(enum.Enum):
    """``STT_*``; unknown OS/processor-specific codes read as NOTYPE."""

    NOTYPE = 0
    OBJECT = 1
    FUNC = 2
    SECTION = 3
    FILE = 4
    COMMON = 5
    TLS = 6
    IFUNC = 10  # STT_GNU_IFUNC


class SymbolBinding(enum.Enum):
    """``STB_*``; unknown OS/processor-specific codes read as GLOBAL."""

    LOCAL = 0
    GLOBAL = 1
    WEAK = 2
    UNIQUE = 10  # STB_GNU_UNIQUE


class SegmentType(enum.IntEnum):
    """``PT_*`` values dtproc knows; others stay plain ints in :attr:`Segment.type`."""

    NULL = 0
    LOAD = 1
    DYNAMIC = 2
    INTERP = 3
    NOTE = 4
    SHLIB = 5
    PHDR = 6
    TLS = 7
    GNU_EH_FRAME = 0x6474E550
    GNU_STACK = 0x6474E551
    GNU_RELRO = 0x6474E552
    GNU_PROPERTY = 0x6474E553


class SegmentFlags(enum.IntFlag):
    X = 1
    W = 2
    R = 4


class SectionType(enum.IntEnum):
    """``SHT_*`` values dtproc knows; others stay plain ints in :attr:`Section.type`."""

    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    RELA = 4
    HASH = 5
    DYNAMIC = 6
    NOTE = 7
    NOBITS = 8
    REL = 9
    SHLIB = 10
    DYNSYM = 11
    INIT_ARRAY = 14
    FINI_ARRAY = 15
    PREINIT_ARRAY = 16
    GROUP = 17
    SYMTAB_SHNDX = 18
    RELR = 19
    GNU_ATTRIBUTES = 0x6FFFFFF5
    GNU_HASH = 0x6FFFFFF6
    GNU_VERDEF = 0x6FFFFFFD
    GNU_VERNEED = 0x6FFFFFFE
    GNU_VERSYM = 0x6FFFFFFF
    X86_64_UNWIND = 0x70000001


class SectionFlags(enum.IntFlag):
    WRITE = 0x1
    ALLOC = 0x2
    EXECINSTR = 0x4
    MERGE = 0x10
    STRINGS = 0x20
    INFO_LINK = 0x40
    LINK_ORDER = 0x80
    OS_NONCONFORMING = 0x100
    GROUP = 0x200
    TLS = 0x400
    COMPRESSED = 0x800
    GNU_RETAIN = 0x200000
    EXCLUDE = 0x80000000


class DynamicTag(enum.IntEnum):
    """``DT_*`` tags dtproc reads; :attr:`ElfFile.dynamic` keeps raw ints for all tags."""

    NULL = 0
    NEEDED = 1
    PLTRELSZ = 2
    HASH = 4
    STRTAB = 5
    SYMTAB = 6
    RELA = 7
    RELASZ = 8
    RELAENT = 9
    STRSZ = 10
    SYMENT = 11
    SONAME = 14
    PLTREL = 20
    DEBUG = 21
    JMPREL = 23
    FLAGS = 30
    GNU_HASH = 0x6FFFFEF5
    VERSYM = 0x6FFFFFF0
    FLAGS_1 = 0x6FFFFFFB
    VERDEF = 0x6FFFFFFC
    VERDEFNUM = 0x6FFFFFFD
    VERNEED = 0x6FFFFFFE
    VERNEEDNUM = 0x6FFFFFFF


class RelocationType(enum.IntEnum):
    """``R_X86_64_*``: the relocation types of x86-64 (other machines' stay plain ints)."""

    R_X86_64_NONE = 0
    R_X86_64_64 = 1
    R_X86_64_PC32 = 2
    R_X86_64_GOT32 = 3
    R_X86_64_PLT32 = 4
    R_X86_64_COPY = 5
    R_X86_64_GLOB_DAT = 6
    R_X86_64_JUMP_SLOT = 7
    R_X86_64_RELATIVE = 8
    R_X86_64_GOTPCREL = 9
    R_X86_64_32 = 10
    R_X86_64_32S = 11
    R_X86_64_16 = 12
    R_X86_64_PC16 = 13
    R_X86_64_8 = 14
    R_X86_64_PC8 = 15
    R_X86_64_DTPMOD64 = 16
    R_X86_64_DTPOFF64 = 17
    R_X86_64_TPOFF64 = 18
    R_X86_64_TLSGD = 19
    R_X86_64_TLSLD = 20
    R_X86_64_DTPOFF32 = 21
    R_X86_64_GOTTPOFF = 22
    R_X86_64_TPOFF32 = 23
    R_X86_64_PC64 = 24
    R_X86_64_GOTOFF64 = 25
    R_X86_64_GOTPC32 = 26
    R_X86_64_GOT64 = 27
    R_X86_64_GOTPCREL64 = 28
    R_X86_64_GOTPC64 = 29
    R_X86_64_GOTPLT64 = 30
    R_X86_64_PLTOFF64 = 31
    R_X86_64_SIZE32 = 32
    R_X86_64_SIZE64 = 33
    R_X86_64_GOTPC32_TLSDESC = 34
    R_X86_64_TLSDESC_CALL = 35
    R_X86_64_TLSDESC = 36
    R_X86_64_IRELATIVE = 37
    R_X86_64_RELATIVE64 = 38
    R_X86_64_GOTPCRELX = 41
    R_X86_64_REX_GOTPCRELX = 42


_ELF_TYPES = {m.value: m for m in ElfType}
_SEGMENT_TYPES = {m.value: m for m in SegmentType}
_SECTION_TYPES = {m.value: m for m in SectionType}
_RELOCATION_TYPES = {m.value: m for m in RelocationType}
# Indexed by the 4-bit st_info fields: table lookups keep the symbol hot path free of enum calls.
_SYM_TYPES: tuple[SymbolType, ...] = tuple(
    SymbolType(c) if c in SymbolType._value2member_map_ else SymbolType.NOTYPE for c in range(16)
)
_SYM_BINDINGS: tuple[SymbolBinding, ...] = tuple(
    SymbolBinding(c) if c in SymbolBinding._value2member_map_ else SymbolBinding.GLOBAL
    for c in range(16)
)
_FUNC_CODES: Final = frozenset({SymbolType.FUNC.value, SymbolType.IFUNC.value})
# Types whose st_value is no address in the image (TLS values are offsets into the TLS block).
_NON_ADDRESS_CODES: Final = frozenset(
    {SymbolType.SECTION.value, SymbolType.FILE.value, SymbolType.TLS.value}
)
_BINDING_RANK: tuple[int, ...] = tuple(
    {SymbolBinding.LOCAL: 0, SymbolBinding.WEAK: 1}.get(b, 2) for b in _SYM_BINDINGS
)


@dataclass(frozen=True, slots=True)
class Segment:
    """One program header."""

    type: SegmentType | int
    flags: SegmentFlags
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True, slots=True)
class Section:
    """One section header, with its name resolved."""

    name: str
    type: SectionType | int
    flags: SectionFlags
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    addralign: int


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note; ``name`` has its terminating NUL removed."""

    name: str
    type: int
    desc: bytes


@dataclass(frozen=True, slots=True)
class DebugLink:
    """Contents of ``.gnu_debuglink``: the debug file's base name and its CRC-32."""

    name: str
    crc: int


@dataclass(frozen=True, slots=True)
class ElfSymbol:
    """One symbol; ``value`` is the unrelocated file vaddr (add the load bias).

    Symbol tables hold defined symbols only; a :class:`Relocation` may name an undefined
    one (``shndx`` 0, ``version`` from the version it needs, such as ``GLIBC_2.2.5``).
    """

    name: str
    version: str | None
    default_version: bool
    value: int
    size: int
    type: SymbolType
    binding: SymbolBinding
    shndx: int

    @property
    def is_function(self) -> bool:
        return self.type in (SymbolType.FUNC, SymbolType.IFUNC) and self.shndx != SHN_UNDEF

    @property
    def versioned_name(self) -> str:
        if self.version is None:
            return self.name
        return f"{self.name}{'@@' if self.default_version else '@'}{self.version}"


@dataclass(frozen=True, slots=True)
class Relocation:
    """One dynamic relocation (RELA): what the dynamic linker writes where.

    ``offset`` is the file vaddr of the patched word (add the load bias); ``symbol`` is the
    symbol-table entry it names (None for index 0, as RELATIVE and IRELATIVE have) and
    ``sym_name`` that entry's bare name (empty without one).
    """

    offset: int
    type: RelocationType | int
    symbol: ElfSymbol | None
    sym_name: str
    addend: int


# A symbol before it is materialised: (name, version, default_version, value, size, st_info,
# shndx).  Tuples are what iter_unpack hands us anyway; ElfSymbol objects cost ~1 us each.
_Row = tuple[str, str | None, bool, int, int, int, int]


def _row_of(sym: ElfSymbol) -> _Row:
    info = sym.binding.value << 4 | sym.type.value
    return (sym.name, sym.version, sym.default_version, sym.value, sym.size, info, sym.shndx)


def _symbol_of(row: _Row) -> ElfSymbol:
    name, version, default, value, size, info, shndx = row
    return ElfSymbol(
        name, version, default, value, size, _SYM_TYPES[info & 0xF], _SYM_BINDINGS[info >> 4], shndx
    )


def _split_version(name: str) -> tuple[str, str | None, bool]:
    """``"memcpy@@GLIBC_2.14"`` -> ``("memcpy", "GLIBC_2.14", True)``; ``@`` gives False."""
    at = name.find("@")
    if at <= 0:
        return name, None, False
    if name.startswith("@@", at):
        return name[:at], name[at + 2 :], True
    return name[:at], name[at + 1 :], False


def _rank(row: _Row) -> tuple[bool, bool, int]:
    """Preference among same-named symbols: functions, then not hidden, then binding."""
    not_hidden = row[1] is None or row[2]
    return (row[5] & 0xF) in _FUNC_CODES, not_hidden, _BINDING_RANK[row[5] >> 4]


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True, slots=True)
class _AddressIndex:
    """Sorted views for address lookups: sized symbols by start, zero-sized ones apart."""

    starts: list[int]
    ends: list[int]
    max_ends: list[int]  # running maximum of ends: bounds the backward scan for containers
    sized: list[int]
    zero_starts: list[int]
    zero: list[int]


@final
class SymbolTable:
    """An immutable set of defined symbols with name, glob and address lookups.

    Built from ``.dynsym`` and ``.symtab`` (exact duplicates removed).  Indexes are built on
    first use, and :class:`ElfSymbol` objects only for the symbols a caller actually sees.
    ``section_ranges`` are the ``(start, end)`` vaddr ranges of allocated sections: :meth:`at`
    only considers symbols inside one (symbols in non-allocated sections such as
    ``.gnu.warning.*`` have no address), and a zero-sized label only reaches addresses of its
    own section.  Without ranges every value counts as an address.
    """

    __slots__ = ("_addr", "_by_name", "_functions", "_objs", "_ranges", "_rows", "_values")

    def __init__(
        self,
        symbols: Iterable[ElfSymbol] = (),
        *,
        section_ranges: Iterable[tuple[int, int]] = (),
    ) -> None:
        self._setup([_row_of(s) for s in symbols if s.shndx != SHN_UNDEF], section_ranges)

    @classmethod
    def _from_rows(cls, rows: Iterable[_Row], ranges: Iterable[tuple[int, int]]) -> SymbolTable:
        table = cls.__new__(cls)
        table._setup(rows, ranges)
        return table

    def _setup(self, rows: Iterable[_Row], ranges: Iterable[tuple[int, int]]) -> None:
        self._rows: tuple[_Row, ...] = tuple(dict.fromkeys(rows))
        self._objs: list[ElfSymbol | None] = [None] * len(self._rows)
        self._ranges: tuple[tuple[int, int], ...] = tuple(sorted(ranges))
        self._by_name: dict[str, list[int]] | None = None
        self._functions: tuple[ElfSymbol, ...] | None = None
        self._addr: _AddressIndex | None = None
        self._values: list[int] | None = None

    def union(self, other: SymbolTable) -> SymbolTable:
        """This table plus *other*'s symbols (this table's section ranges are kept)."""
        return SymbolTable._from_rows(self._rows + other._rows, self._ranges)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ElfSymbol]:
        return (self._symbol(i) for i in range(len(self._rows)))

    def __repr__(self) -> str:
        return f"<SymbolTable of {len(self._rows)} symbols>"

    def _symbol(self, i: int) -> ElfSymbol:
        sym = self._objs[i]
        if sym is None:
            sym = self._objs[i] = _symbol_of(self._rows[i])
        return sym

    def _names(self) -> dict[str, list[int]]:
        index = self._by_name
        if index is None:
            index = {}
            for i, row in enumerate(self._rows):
                index.setdefault(row[0], []).append(i)
            self._by_name = index
        return index

    def _named(self, name: str) -> list[int]:
        """Row indexes matching *name*: ``@`` pins the version, ``@@`` also needs the default."""
        base, version, want_default = _split_version(name)
        hits = self._names().get(base, [])
        if version is None:
            return hits
        rows = self._rows
        return [i for i in hits if rows[i][1] == version and (rows[i][2] or not want_default)]

    def by_name(self, name: str) -> list[ElfSymbol]:
        """Every symbol called *name* (all versions, or the one version *name* spells out)."""
        return [self._symbol(i) for i in self._named(name)]

    def lookup(self, name: str) -> ElfSymbol | None:
        """The symbol *name* most likely means: see :func:`_rank` for the preference."""
        hits = self._named(name)
        if not hits:
            return None
        rows = self._rows
        best = max(hits, key=lambda i: (_rank(rows[i]), -i))
        return self._symbol(best)

    def glob(self, pattern: str, *, functions_only: bool = False) -> Iterator[ElfSymbol]:
        """Symbols whose name matches the fnmatch *pattern*: functions first, each by address.

        A ``@VER``/``@@VER`` suffix in *pattern* (itself a glob) filters on the version.
        """
        base, vpattern, want_default = _split_version(pattern)
        index = self._names()
        if _has_magic(base):
            match = re.compile(fnmatch.translate(base)).match
            hits = [i for name, idx in index.items() if match(name) for i in idx]
        else:
            hits = list(index.get(base, ()))
        rows = self._rows
        if vpattern is not None:
            vmatch = re.compile(fnmatch.translate(vpattern)).match
            hits = [
                i
                for i in hits
                if rows[i][1] is not None
                and vmatch(rows[i][1] or "")
                and (rows[i][2] or not want_default)
            ]
        hits.sort()
        funcs = self._by_value(i for i in hits if rows[i][5] & 0xF in _FUNC_CODES)
        yield from (self._symbol(i) for i in funcs)
        if not functions_only:
            others = self._by_value(i for i in hits if rows[i][5] & 0xF not in _FUNC_CODES)
            yield from (self._symbol(i) for i in others)

    def _by_value(self, indexes: Iterable[int]) -> list[int]:
        """Row indexes sorted by value; the sort is stable, so ties keep table order."""
        values = self._values
        if values is None:
            values = self._values = [row[3] for row in self._rows]
        return sorted(indexes, key=values.__getitem__)

    def functions(self) -> Sequence[ElfSymbol]:
        """Defined functions (FUNC and IFUNC) sorted by value; aliases are all kept."""
        funcs = self._functions
        if funcs is None:
            rows = self._rows
            idx = self._by_value(i for i, row in enumerate(rows) if row[5] & 0xF in _FUNC_CODES)
            funcs = self._functions = tuple(self._symbol(i) for i in idx)
        return funcs

    def _address_index(self) -> _AddressIndex:
        index = self._addr
        if index is None:
            rows = self._rows
            usable = self._in_ranges(
                self._by_value(
                    i
                    for i, row in enumerate(rows)
                    if row[5] & 0xF not in _NON_ADDRESS_CODES
                    and (row[6] < SHN_LORESERVE or row[6] == SHN_XINDEX)
                )
            )
            sized = [i for i in usable if rows[i][4] > 0]
            zero = [i for i in usable if rows[i][4] == 0]
            starts = [rows[i][3] for i in sized]
            ends = [rows[i][3] + rows[i][4] for i in sized]
            max_ends = list(itertools.accumulate(ends, max))
            zero_starts = [rows[i][3] for i in zero]
            index = self._addr = _AddressIndex(starts, ends, max_ends, sized, zero_starts, zero)
        return index

    def at(self, addr: int) -> tuple[ElfSymbol, int] | None:
        """The symbol containing file vaddr *addr*, and *addr*'s offset into it.

        The innermost sized symbol whose range holds *addr* wins (ties go by :func:`_rank`).
        Failing that, a zero-sized label counts when it is the nearest symbol start before
        *addr* and lies in the same section (assembly labels such as ``_start`` in old crt1).
        """
        index = self._address_index()
        hit = self._containing(index, addr)
        if hit is None:
            hit = self._zero_sized_before(index, addr)
        if hit is None:
            return None
        return self._symbol(hit), addr - self._rows[hit][3]

    def _containing(self, index: _AddressIndex, addr: int) -> int | None:
        i = bisect.bisect_right(index.starts, addr) - 1
        while i >= 0 and index.max_ends[i] > addr:
            if index.ends[i] > addr:
                return self._best_at(index.starts, index.sized, i, addr, index.ends)
            i -= 1
        return None

    def _best_at(
        self, starts: list[int], order: list[int], i: int, addr: int, ends: list[int] | None
    ) -> int:
        """Best-ranked entry among those starting where entry *i* starts (and holding addr)."""
        start = starts[i]
        rows = self._rows
        best = order[i]
        j = i - 1
        while j >= 0 and starts[j] == start:
            cand = order[j]
            if (ends is None or ends[j] > addr) and _rank(rows[cand]) >= _rank(rows[best]):
                best = cand
            j -= 1
        return best

    def _zero_sized_before(self, index: _AddressIndex, addr: int) -> int | None:
        i = bisect.bisect_right(index.zero_starts, addr) - 1
        if i < 0:
            return None
        start = index.zero_starts[i]
        # A sized symbol starting between the label and addr ends the label's reach.
        if bisect.bisect_right(index.starts, addr) != bisect.bisect_right(index.starts, start):
            return None
        if self._range_of(start) != self._range_of(addr):
            return None
        return self._best_at(index.zero_starts, index.zero, i, addr, None)

    def _in_ranges(self, ordered: list[int]) -> list[int]:
        """The rows (sorted by value) whose value lies in a section range: one merge pass."""
        if not self._ranges:
            return ordered
        merged: list[list[int]] = []
        for start, end in self._ranges:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        rows = self._rows
        kept: list[int] = []
        j = 0
        for i in ordered:
            value = rows[i][3]
            while j < len(merged) and merged[j][1] <= value:
                j += 1
            if j == len(merged):
                break
            if merged[j][0] <= value:
                kept.append(i)
        return kept

    def _range_of(self, addr: int) -> tuple[int, int] | None:
        """The section range holding *addr*; without ranges everything is one range."""
        if not self._ranges:
            return (0, 1 << 64)
        i = bisect.bisect_right(self._ranges, (addr, 1 << 64)) - 1
        if i >= 0 and self._ranges[i][0] <= addr < self._ranges[i][1]:
            return self._ranges[i]
        return None


# r_offset, r_info, r_addend: a relocation before it is materialised.
_RelRow = tuple[int, int, int]
_TYPE_MASK: Final = 0xFFFFFFFF
_IRELATIVE: Final = RelocationType.R_X86_64_IRELATIVE


@dataclass(frozen=True, slots=True)
class _RelocationRun:
    """Consecutive relocations read from one table, and the symbol table they index."""

    start: int  # index of the run's first relocation in the whole RelocationTable
    rows: list[_RelRow]
    symbols: Sequence[_Row]  # every entry by index, undefined ones included
    plt: bool  # the DT_JMPREL table: IBT's lazy PLT stubs push indexes into it


@final
class RelocationTable(Sequence[Relocation]):
    """The dynamic relocations of one file, in file order, with offset/type/name lookups.

    Kept as the tuples ``struct.iter_unpack`` makes: a :class:`Relocation` object is only
    built for an entry someone looks at, because libraries can have 100 000 of them.
    Made by :meth:`ElfFile.relocations`.
    """

    __slots__ = ("_by_name", "_by_offset", "_by_type", "_objs", "_runs", "_starts", "_x86_64")

    def __init__(self, token: object, runs: Sequence[_RelocationRun], x86_64: bool) -> None:
        if token is not _TOKEN:
            raise TypeError("RelocationTable objects come from ElfFile.relocations()")
        self._runs: Final = tuple(runs)
        self._starts: Final = [run.start for run in self._runs]
        self._x86_64: Final = x86_64
        total = sum(len(run.rows) for run in self._runs)
        self._objs: list[Relocation | None] = [None] * total
        self._by_offset: dict[int, int] | None = None
        self._by_type: dict[int, list[int]] | None = None
        self._by_name: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self._objs)

    def __repr__(self) -> str:
        return f"<RelocationTable of {len(self._objs)} relocations>"

    @overload
    def __getitem__(self, index: int) -> Relocation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Relocation]: ...

    def __getitem__(self, index: int | slice) -> Relocation | list[Relocation]:
        if isinstance(index, slice):
            return [self._relocation(i) for i in range(len(self._objs))[index]]
        return self._relocation(range(len(self._objs))[index])

    def __iter__(self) -> Iterator[Relocation]:
        return (self._relocation(i) for i in range(len(self._objs)))

    def _locate(self, i: int) -> tuple[_RelocationRun, _RelRow]:
        run = self._runs[bisect.bisect_right(self._starts, i) - 1]
        return run, run.rows[i - run.start]

    def _relocation(self, i: int) -> Relocation:
        rel = self._objs[i]
        if rel is None:
            run, (offset, info, addend) = self._locate(i)
            rtype = info & _TYPE_MASK
            symbol = None
            if info >> 32:
                symbol = _symbol_of(run.symbols[info >> 32])
            rel = self._objs[i] = Relocation(
                offset,
                _RELOCATION_TYPES.get(rtype, rtype) if self._x86_64 else rtype,
                symbol,
                "" if symbol is None else symbol.name,
                addend,
            )
        return rel

    def _all_rows(self) -> Iterator[tuple[int, _RelocationRun, _RelRow]]:
        for run in self._runs:
            for j, row in enumerate(run.rows):
                yield run.start + j, run, row

    def at(self, offset: int) -> Relocation | None:
        """The (first) relocation that patches file vaddr *offset*."""
        index = self._by_offset
        if index is None:
            index = {}
            for i, _, row in self._all_rows():
                index.setdefault(row[0], i)
            self._by_offset = index
        found = index.get(offset)
        return None if found is None else self._relocation(found)

    def of_type(self, rtype: RelocationType | int) -> list[Relocation]:
        """Every relocation of one type, in file order."""
        index = self._by_type
        if index is None:
            index = {}
            for i, _, row in self._all_rows():
                index.setdefault(row[1] & _TYPE_MASK, []).append(i)
            self._by_type = index
        return [self._relocation(i) for i in index.get(int(rtype), ())]

    def by_symbol(self, name: str) -> list[Relocation]:
        """Every relocation naming a symbol called *name* (any version), in file order."""
        index = self._by_name
        if index is None:
            index = {}
            for i, run, row in self._all_rows():
                if row[1] >> 32:
                    index.setdefault(run.symbols[row[1] >> 32][0], []).append(i)
            self._by_name = index
        return [self._relocation(i) for i in index.get(name, ())]

    def plt_slot(self, index: int) -> Relocation | None:
        """Entry *index* of the DT_JMPREL table (``.rela.plt``): what a lazy stub pushes."""
        run = next((r for r in self._runs if r.plt), None)
        if run is None or not 0 <= index < len(run.rows):
            return None
        return self._relocation(run.start + index)


@final
class _Reader:
    """Bounds-checked random access to one image: a file descriptor or bytes in memory."""

    __slots__ = ("__weakref__", "_closer", "_data", "_fd", "path", "size")

    def __init__(self, path: str, size: int, *, fd: int = -1, data: bytes | None = None) -> None:
        self.path = path
        self.size = size
        self._fd = fd
        self._data = data
        self._closer = weakref.finalize(self, os.close, fd) if fd >= 0 else None

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset > self.size or size > self.size - offset:
            raise ElfError(
                self.path,
                f"truncated {what} at offset 0x{offset:x}: needs 0x{size:x} bytes, "
                f"the file has 0x{self.size:x}",
            )
        if self._data is not None:
            return self._data[offset : offset + size]
        chunks: list[bytes] = []
        done = 0
        while done < size:
            try:
                chunk = os.pread(self._fd, size - done, offset + done)
            except OSError as exc:
                raise ElfError(self.path, f"cannot read {what}: {exc.strerror}") from exc
            if not chunk:
                raise ElfError(self.path, f"file shrank while reading {what}")
            chunks.append(chunk)
            done += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _cstring(path: str, table: bytes, offset: int, what: str) -> str:
    if offset >= len(table):
        raise ElfError(
            path, f"{what}: string offset 0x{offset:x} is past its string table (0x{len(table):x})"
        )
    end = table.find(b"\0", offset)
    if end < 0:
        raise ElfError(path, f"{what}: unterminated string at offset 0x{offset:x}")
    return table[offset:end].decode("utf-8", "backslashreplace")


def _unpack(st: struct.Struct, path: str, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    if offset < 0 or offset + st.size > len(data):
        raise ElfError(path, f"truncated {what} at offset 0x{offset:x}")
    return st.unpack_from(data, offset)


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & -align


def _parse_notes(path: str, data: bytes, align: int, where: str) -> Iterator[Note]:
    """Walk a note region; 8-byte alignment is honoured where the producer asked for it."""
    align = 8 if align == 8 else 4
    pos = 0
    while len(data) - pos >= _NHDR.size:
        namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
        desc_start = pos + _align_up(_NHDR.size + namesz, align)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            raise ElfError(path, f"truncated note at offset 0x{pos:x} of {where}")
        raw_name = data[pos + _NHDR.size : pos + _NHDR.size + namesz]
        name = raw_name.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        yield Note(name, ntype, data[desc_start:desc_end])
        pos = desc_start + _align_up(descsz, align)


@dataclass(frozen=True, slots=True)
class _ElfHeader:
    """The ELF header fields after ``e_ident``."""

    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True, slots=True)
class _VersionSource:
    """Where symbol versions live: versym array and the verdef/verneed chains."""

    versym: bytes
    verdef: bytes
    verdef_count: int
    verneed: bytes
    verneed_count: int
    strtab: bytes


@dataclass(frozen=True, slots=True)
class _RelaSource:
    """One relocation table to read: its bytes, a name for messages, where its symbols are."""

    data: bytes
    what: str
    link: int | None  # section index of its symbol table; None: the DT_SYMTAB one
    plt: bool  # the DT_JMPREL table


@dataclass(frozen=True, slots=True)
class _PltStub:
    start: int
    size: int
    name: str


_ENDBR64: Final = b"\xf3\x0f\x1e\xfa"
_BND: Final = b"\xf2"
_JMP_INDIRECT: Final = b"\xff\x25"  # jmp *rel32(%rip)
_PUSH_IMM32: Final = b"\x68"
_JMP_REL32: Final = b"\xe9"
_PLT_SECTIONS: Final = frozenset({".plt", ".plt.sec", ".plt.got", ".plt.bnd"})


def _display_target(path: str) -> str:
    if path.startswith("/proc/") and "/map_files/" in path:
        try:
            return os.readlink(path).removesuffix(" (deleted)")
        except OSError:
            return path
    return path


def display_name(path: str | os.PathLike[str]) -> str:
    """A short module name for *path*: its basename, after /proc/PID/map_files links.

    Independent of SONAME on purpose: users name modules by the file they see in maps.
    """
    return os.path.basename(_display_target(os.fspath(path)))


_TOKEN: Final = object()
_cache: OrderedDict[tuple[int, int, int, int], ElfFile] = OrderedDict()
_cache_lock = threading.Lock()


@final
class ElfFile:
    """One ELF64 little-endian image, parsed lazily.

    Made by :meth:`open` (cached per file identity) or :meth:`from_bytes` (e.g. the vDSO
    read from a process).  Headers of any ELF64 LE file are read; symbols, notes and dynamic
    data are machine independent, but USDT argument decoding is x86-64 only.
    """

    def __init__(self, token: object, reader: _Reader, path: str, real_path: str | None) -> None:
        if token is not _TOKEN:
            raise TypeError("ElfFile objects come from ElfFile.open() or ElfFile.from_bytes()")
        self._reader: Final = reader
        self.path: Final = path
        # Where the file really is (map_files links resolved): anchors .gnu_debuglink lookups.
        self.real_path: Final = real_path
        hdr = _ElfHeader(*self._read_ehdr()[1:])
        if hdr.type not in _ELF_TYPES:
            raise ElfError(path, f"unknown ELF type 0x{hdr.type:x}")
        self.elf_type: Final = _ELF_TYPES[hdr.type]
        self.machine: Final = hdr.machine
        self.entry: Final = hdr.entry
        first = self._first_section_header(hdr.shoff, hdr.shentsize)
        self.sections: Final = self._read_sections(hdr, first)
        phnum = first[7] if hdr.phnum == _PN_XNUM and first is not None else hdr.phnum
        self.segments: Final = self._read_segments(hdr.phoff, hdr.phentsize, phnum)
        self._loads: Final = tuple(s for s in self.segments if s.type == SegmentType.LOAD)
        self._by_name: Final[dict[str, Section]] = {}
        for sec in self.sections:
            self._by_name.setdefault(sec.name, sec)
        self._debug_files: dict[tuple[str, ...], ElfFile | None] = {}

    # ----------------------------------------------------------------- construction

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ElfFile:
        """Open *path*, or return the cached object for the same (dev, inode, size, mtime)."""
        spath = os.fspath(path)
        try:
            fd = os.open(spath, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ElfError(spath, f"cannot open: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ElfError(spath, "not a regular file")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with _cache_lock:
                hit = _cache.get(key)
                if hit is not None:
                    _cache.move_to_end(key)
        except BaseException:
            os.close(fd)
            raise
        if hit is not None:
            os.close(fd)
            return hit
        reader = _Reader(spath, st.st_size, fd=fd)
        try:
            elf = cls(_TOKEN, reader, spath, os.path.realpath(_display_target(spath)))
        except BaseException:
            reader.close()
            raise
        with _cache_lock:
            elf = _cache.setdefault(key, elf)
            while len(_cache) > _CACHE_LIMIT:
                _cache.popitem(last=False)
        return elf

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> ElfFile:
        """Parse an image held in memory; *name* stands in for the path in messages."""
        blob = bytes(data)
        return cls(_TOKEN, _Reader(name, len(blob), data=blob), name, None)

    @staticmethod
    def clear_cache() -> None:
        """Forget every cached :meth:`open` result (for benchmarks and long-lived tools)."""
        with _cache_lock:
            _cache.clear()

    def __repr__(self) -> str:
        return f"<ElfFile {self.path} {self.elf_type.name}>"

    def _error(self, reason: str) -> ElfError:
        return ElfError(self.path, reason)

    def _read_ehdr(self) -> tuple[int, ...]:
        size = self._reader.size
        head = self._reader.read(0, min(size, _EHDR.size), "ELF header")
        if len(head) < 4 or head[:4] != b"\x7fELF":
            raise self._error("not an ELF file")
        if len(head) < 7:
            raise self._error("truncated ELF header at offset 0x0")
        if head[4] == 1:
            raise self._error("unsupported class ELF32: only 64-bit ELF files are supported")
        if head[4] != 2:
            raise self._error(f"invalid ELF class {head[4]}")
        if head[5] == 2:
            raise self._error("unsupported big-endian ELF: only little-endian files are supported")
        if head[5] != 1:
            raise self._error(f"invalid ELF data encoding {head[5]}")
        if head[6] != 1:
            raise self._error(f"unsupported ELF version {head[6]}")
        if len(head) < _EHDR.size:
            raise self._error(f"truncated ELF header at offset 0x0 (file is {size} bytes)")
        return _EHDR.unpack(head)

    def _first_section_header(self, shoff: int, shentsize: int) -> tuple[int, ...] | None:
        """Section header 0, which holds counts that overflow the ELF header (>= 0xff00)."""
        if shoff == 0:
            return None
        if shentsize < _SHDR.size:
            raise self._error(f"section header entry size {shentsize} is below {_SHDR.size}")
        return _SHDR.unpack(self._reader.read(shoff, _SHDR.size, "section header table"))

    def _read_table(self, offset: int, entsize: int, count: int, what: str) -> list[bytes]:
        data = self._reader.read(offset, entsize * count, what)
        return [data[i * entsize : i * entsize + entsize] for i in range(count)]

    def _read_sections(self, hdr: _ElfHeader, first: tuple[int, ...] | None) -> tuple[Section, ...]:
        if first is None:
            return ()
        shnum = first[5] if hdr.shnum == 0 else hdr.shnum
        shstrndx = first[6] if hdr.shstrndx == SHN_XINDEX else hdr.shstrndx
        table = self._read_table(hdr.shoff, hdr.shentsize, shnum, "section header table")
        raw = [_SHDR.unpack_from(entry) for entry in table]
        names = b""
        if shstrndx != SHN_UNDEF:
            if shstrndx >= len(raw):
                raise self._error(
                    f"section name table index {shstrndx} is out of range ({len(raw)} sections)"
                )
            _, stype, _, _, offset, size = raw[shstrndx][:6]
            if stype != SectionType.NOBITS:
                names = self._reader.read(offset, size, "section name string table")
        return tuple(self._section(names, fields) for fields in raw)

    def _section(self, names: bytes, fields: tuple[int, ...]) -> Section:
        name_off, stype, flags, addr, offset, size, link, info, align, entsize = fields
        name = _cstring(self.path, names, name_off, "section name") if names else ""
        return Section(
            name,
            _SECTION_TYPES.get(stype, stype),
            SectionFlags(flags),
            addr,
            offset,
            size,
            link,
            info,
            entsize,
            align,
        )

    def _read_segments(self, phoff: int, phentsize: int, phnum: int) -> tuple[Segment, ...]:
        if phnum == 0:
            return ()
        if phentsize < _PHDR.size:
            raise self._error(f"program header entry size {phentsize} is below {_PHDR.size}")
        segments = []
        for entry in self._read_table(phoff, phentsize, phnum, "program header table"):
            ptype, flags, offset, vaddr, _paddr, filesz, memsz, align = _PHDR.unpack_from(entry)
            segments.append(
                Segment(
                    _SEGMENT_TYPES.get(ptype, ptype),
                    SegmentFlags(flags),
                    offset,
                    vaddr,
                    filesz,
                    memsz,
                    align,
                )
            )
        return tuple(segments)

    # ----------------------------------------------------------------- sections

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def _resolve(self, section: Section | str) -> Section:
        if isinstance(section, Section):
            return section
        found = self._by_name.get(section)
        if found is None:
            raise self._error(f"no section named {section}")
        return found

    def section_data(self, section: Section | str) -> bytes:
        """Raw bytes of a section (empty for NOBITS), exactly as stored in the file."""
        sec = self._resolve(section)
        if sec.type == SectionType.NOBITS:
            return b""
        return self._reader.read(sec.offset, sec.size, f"section {sec.name or '?'}")

    def section_contents(self, section: Section | str) -> bytes:
        """Section bytes with ``SHF_COMPRESSED`` (zlib) undone, as debug files need."""
        sec = self._resolve(section)
        data = self.section_data(sec)
        if not sec.flags & SectionFlags.COMPRESSED:
            return data
        ctype, _, size, _ = _unpack(_CHDR, self.path, data, 0, f"compression header of {sec.name}")
        if ctype == _ELFCOMPRESS_ZSTD:
            raise self._error(
                f"section {sec.name} is zstd-compressed, which the standard library cannot read"
            )
        if ctype != _ELFCOMPRESS_ZLIB:
            raise self._error(f"section {sec.name} has unknown compression type {ctype}")
        if size == 0:
            return b""
        if size > _ZLIB_MAX_RATIO * len(data) + 1024:
            raise self._error(f"section {sec.name} claims an impossible size 0x{size:x}")
        try:
            out = zlib.decompressobj().decompress(data[_CHDR.size :], size)
        except zlib.error as exc:
            raise self._error(f"section {sec.name} is corrupt: {exc}") from exc
        if len(out) != size:
            raise self._error(f"section {sec.name} decompresses to {len(out)} of {size} bytes")
        return out

    def _sections_of_type(self, stype: SectionType) -> list[Section]:
        return [s for s in self.sections if s.type == stype]

    def _linked(self, sec: Section, what: str) -> bytes:
        if not 0 < sec.link < len(self.sections):
            raise self._error(f"{what} section {sec.name} links to missing section {sec.link}")
        return self.section_data(self.sections[sec.link])

    @cached_property
    def has_symtab(self) -> bool:
        return any(s.size for s in self._sections_of_type(SectionType.SYMTAB))

    # ----------------------------------------------------------------- addresses

    @cached_property
    def min_vaddr(self) -> int:
        """Lowest PT_LOAD vaddr, page aligned down: where the first mapping starts."""
        if not self._loads:
            return 0
        return min(s.vaddr for s in self._loads) & ~(PAGE_SIZE - 1)

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset holding *vaddr*, or None when no file byte backs it (e.g. .bss)."""
        for seg in self._loads:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        if not self._loads:
            for sec in self.sections:
                if (
                    sec.flags & SectionFlags.ALLOC
                    and sec.type != SectionType.NOBITS
                    and sec.addr <= vaddr < sec.addr + sec.size
                ):
                    return sec.offset + (vaddr - sec.addr)
        return None

    def offset_to_vaddr(self, off: int) -> int | None:
        for seg in self._loads:
            if seg.offset <= off < seg.offset + seg.filesz:
                return seg.vaddr + (off - seg.offset)
        return None

    def load_bias(self, map_start: int, map_offset: int, perms: str | None = None) -> int:
        """Bias (runtime address minus file vaddr) of a /proc/PID/maps mapping of this file.

        The mapping is matched to the PT_LOAD that put it there: one whose page-aligned file
        offset equals *map_offset*, else one whose file range holds it.  Segments can share
        a file page (read-only data and the RELRO start of the data segment, say), and then
        one mapping cannot tell them apart: *perms* (``"r-xp"``) narrows the choice by the
        execute and write bits, and the offset-0 or executable mapping of a file is never
        ambiguous, so callers with all the mappings should use one of those.
        """
        page = ~(PAGE_SIZE - 1)
        held = [s for s in self._loads if s.offset & page <= map_offset < s.offset + s.filesz]
        if perms is not None:
            fitting = [s for s in held if _perms_fit(s.flags, perms)]
            held = fitting or held  # mprotect may have changed the mapping: fall back
        if not held:
            raise self._error(f"no PT_LOAD segment maps file offset 0x{map_offset:x}")
        seg = next((s for s in held if s.offset & page == map_offset), held[0])
        return map_start - (seg.vaddr - seg.offset + map_offset)

    def _address_ranges(self) -> list[tuple[int, int]]:
        ranges = [
            (s.addr, s.addr + s.size)
            for s in self.sections
            if s.flags & SectionFlags.ALLOC and not s.flags & SectionFlags.TLS and s.size
        ]
        return ranges or [(s.vaddr, s.vaddr + s.memsz) for s in self._loads if s.memsz]

    def _read_vaddr(self, vaddr: int, size: int | None, what: str) -> bytes:
        """Bytes at *vaddr*; *size* None means up to the end of the segment's file data."""
        for seg in self._loads:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                start = seg.offset + (vaddr - seg.vaddr)
                if size is None:
                    size = seg.filesz - (vaddr - seg.vaddr)
                return self._reader.read(start, size, what)
        raise self._error(f"{what} at vaddr 0x{vaddr:x} is outside every PT_LOAD segment")

    # ----------------------------------------------------------------- dynamic

    @cached_property
    def dynamic(self) -> Sequence[tuple[int, int]]:
        """``(d_tag, d_val)`` pairs of PT_DYNAMIC (or ``.dynamic``), up to DT_NULL."""
        seg = next((s for s in self.segments if s.type == SegmentType.DYNAMIC), None)
        if seg is not None:
            data = self._reader.read(seg.offset, seg.filesz, "dynamic segment")
        else:
            secs = self._sections_of_type(SectionType.DYNAMIC)
            if not secs:
                return ()
            data = self.section_data(secs[0])
        entries: list[tuple[int, int]] = []
        for tag, val in _DYN.iter_unpack(data[: len(data) - len(data) % _DYN.size]):
            if tag == DynamicTag.NULL:
                break
            entries.append((tag, val))
        return tuple(entries)

    def _dyn(self, tag: DynamicTag) -> int | None:
        return next((val for t, val in self.dynamic if t == tag), None)

    @cached_property
    def _dynstr(self) -> bytes:
        addr = self._dyn(DynamicTag.STRTAB)
        if addr is None:
            raise self._error("dynamic section has no DT_STRTAB")
        size = self._dyn(DynamicTag.STRSZ)
        return self._read_vaddr(addr, size, "dynamic string table")

    @cached_property
    def soname(self) -> str | None:
        val = self._dyn(DynamicTag.SONAME)
        return None if val is None else _cstring(self.path, self._dynstr, val, "DT_SONAME")

    @cached_property
    def needed(self) -> Sequence[str]:
        return tuple(
            _cstring(self.path, self._dynstr, val, "DT_NEEDED")
            for tag, val in self.dynamic
            if tag == DynamicTag.NEEDED
        )

    @cached_property
    def interp(self) -> str | None:
        seg = next((s for s in self.segments if s.type == SegmentType.INTERP), None)
        if seg is None:
            return None
        data = self._reader.read(seg.offset, seg.filesz, "PT_INTERP")
        return data.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")

    @cached_property
    def is_pie(self) -> bool:
        """A position-independent executable (DF_1_PIE, or ET_DYN with an interpreter and no
        SONAME for linkers older than binutils 2.31); libc.so.6 has PT_INTERP but is no PIE."""
        if self.elf_type is not ElfType.DYN:
            return False
        if (self._dyn(DynamicTag.FLAGS_1) or 0) & _DF_1_PIE:
            return True
        return self.interp is not None and self.soname is None

    @cached_property
    def is_static(self) -> bool:
        """No dynamic linker will run: no PT_INTERP, and ET_EXEC, no PT_DYNAMIC or static-pie."""
        if self.interp is not None or self.elf_type not in (ElfType.EXEC, ElfType.DYN):
            return False
        if self.elf_type is ElfType.EXEC or not self.dynamic:
            return True
        return bool((self._dyn(DynamicTag.FLAGS_1) or 0) & _DF_1_PIE)

    # ----------------------------------------------------------------- notes

    def notes(self, section: Section | str | None = None) -> Iterator[Note]:
        """Notes of one section, or of every SHT_NOTE section (PT_NOTE without sections)."""
        if section is not None:
            sec = self._resolve(section)
            return _parse_notes(self.path, self.section_data(sec), sec.addralign, sec.name)
        return self._notes_of(self._sections_of_type(SectionType.NOTE), allocated_only=False)

    def _notes_of(self, secs: list[Section], *, allocated_only: bool) -> Iterator[Note]:
        if allocated_only:
            secs = [s for s in secs if s.flags & SectionFlags.ALLOC]
        if self.sections:
            for sec in secs:
                yield from _parse_notes(self.path, self.section_data(sec), sec.addralign, sec.name)
            return
        for seg in self.segments:
            if seg.type == SegmentType.NOTE:
                data = self._reader.read(seg.offset, seg.filesz, "PT_NOTE segment")
                yield from _parse_notes(self.path, data, seg.align, "PT_NOTE segment")

    @cached_property
    def build_id(self) -> bytes | None:
        # Its own section when there is one (a corrupt neighbour then does not hide it), else
        # allocated notes only: .note.stapsdt can hold thousands of notes that never matter.
        secs = [
            s for s in self._sections_of_type(SectionType.NOTE) if s.name == ".note.gnu.build-id"
        ]
        notes = self._notes_of(
            secs or self._sections_of_type(SectionType.NOTE), allocated_only=True
        )
        for note in notes:
            if note.type == _NT_GNU_BUILD_ID and note.name == "GNU" and note.desc:
                return note.desc
        return None

    @cached_property
    def debuglink(self) -> DebugLink | None:
        sec = self.section(".gnu_debuglink")
        if sec is None:
            return None
        data = self.section_data(sec)
        name = _cstring(self.path, data, 0, ".gnu_debuglink")
        crc_at = _align_up(data.index(b"\0") + 1, 4)
        (crc,) = _unpack(_U32, self.path, data, crc_at, ".gnu_debuglink CRC")
        return DebugLink(name, crc)

    def sdt_probes(self) -> Sequence[SdtProbe]:
        """USDT probes of ``.note.stapsdt`` (see :mod:`dtproc.sdt`)."""
        return self._sdt_probes

    @cached_property
    def _sdt_probes(self) -> Sequence[SdtProbe]:
        from dtproc import sdt  # sdt builds on this module

        return sdt.probes(self)

    # ----------------------------------------------------------------- debug files

    def debug_file(self, debug_dirs: Sequence[str] | None = None) -> ElfFile | None:
        """The separate debug file: by build-id first, then ``.gnu_debuglink`` (CRC-checked)
        in the file's directory, its ``.debug/`` and ``<root>/<directory>/``."""
        roots = DEBUG_DIRS if debug_dirs is None else tuple(debug_dirs)
        if roots not in self._debug_files:
            self._debug_files[roots] = self._by_build_id(roots) or self._by_debuglink(roots)
        return self._debug_files[roots]

    def _by_build_id(self, roots: tuple[str, ...]) -> ElfFile | None:
        bid = self.build_id
        if bid is None or len(bid) < 2:
            return None
        digest = bid.hex()
        for root in roots:
            cand = _try_open(os.path.join(root, ".build-id", digest[:2], digest[2:] + ".debug"))
            if cand is not None and cand is not self and cand.build_id == bid:
                return cand
        return None

    def _by_debuglink(self, roots: tuple[str, ...]) -> ElfFile | None:
        link = self.debuglink
        if link is None or self.real_path is None or os.path.basename(link.name) != link.name:
            return None
        folder = os.path.dirname(self.real_path)
        places = [os.path.join(folder, link.name), os.path.join(folder, ".debug", link.name)]
        places += [os.path.join(root + folder, link.name) for root in roots]
        for place in places:
            cand = _try_open(place)
            if cand is not None and cand is not self and cand.crc32() == link.crc:
                return cand
        return None

    def crc32(self) -> int:
        """CRC-32 of the whole file, as ``.gnu_debuglink`` records it."""
        crc = 0
        for start in range(0, self._reader.size, _CRC_CHUNK):
            size = min(_CRC_CHUNK, self._reader.size - start)
            crc = zlib.crc32(self._reader.read(start, size, "file contents"), crc)
        return crc

    def full_symbols(self) -> SymbolTable:
        """Own symbols, plus the debug file's ``.symtab`` when this file is stripped."""
        return self._full_symbols

    @cached_property
    def _full_symbols(self) -> SymbolTable:
        if self.has_symtab:
            return self.symbols
        dbg = self.debug_file()
        if dbg is None or not dbg.has_symtab:
            return self.symbols
        return self.symbols.union(dbg.symbols)

    # ----------------------------------------------------------------- symbols

    @cached_property
    def symbols(self) -> SymbolTable:
        """``.dynsym`` and ``.symtab`` merged (``.dynsym`` from DT_SYMTAB without sections)."""
        rows: list[_Row] = []
        dynsyms = [s for s in self._sections_of_type(SectionType.DYNSYM) if s.size]
        if dynsyms:
            sec = dynsyms[0]
            strtab = self._linked(sec, "symbol")
            rows += self._rows(self.section_data(sec), strtab, sec.name, self._section_versions())
        elif not self.sections and self._dyn(DynamicTag.SYMTAB) is not None:
            rows += self._dynamic_rows()
        for sec in self._sections_of_type(SectionType.SYMTAB):
            if sec.size:
                rows += self._rows(self.section_data(sec), self._linked(sec, "symbol"), sec.name)
        return SymbolTable._from_rows(rows, self._address_ranges())

    def _rows(
        self,
        data: bytes,
        strtab: bytes,
        what: str,
        versions: _VersionSource | None = None,
        *,
        every_entry: bool = False,
    ) -> list[_Row]:
        """Rows of the defined, named symbols; *every_entry* keeps them all, in index order."""
        if len(data) % _SYM.size:
            raise self._error(f"symbol table {what} size 0x{len(data):x} is no multiple of 24")
        count = len(data) // _SYM.size
        versym: Iterable[int] = itertools.repeat(0)
        vermap: dict[int, tuple[str, bool]] = {}
        if versions is not None:
            if len(versions.versym) < 2 * count:
                raise self._error(f"version table of {what} is shorter than its {count} symbols")
            versym = struct.unpack_from(f"<{count}H", versions.versym)
            vermap = self._version_map(versions)
        # Latin-1 maps bytes 1:1 to code points, so string offsets stay byte offsets and one
        # C-level decode replaces thousands of small ones; non-ASCII names are fixed up below.
        text = strtab.decode("latin-1")
        fix_utf8 = not strtab.isascii()
        find = text.find
        get = vermap.get
        rows: list[_Row] = []
        append = rows.append
        entries = zip(versym, _SYM.iter_unpack(data), strict=False)  # versym may be endless
        for v, (st_name, info, _other, shndx, value, size) in entries:
            if (shndx == SHN_UNDEF or st_name == 0) and not every_entry:
                continue
            end = find("\0", st_name)
            if end < 0:
                raise self._error(f"a symbol in {what} has a bad name offset 0x{st_name:x}")
            name = text[st_name:end]
            if fix_utf8 and not name.isascii():
                name = name.encode("latin-1").decode("utf-8", "backslashreplace")
            ver = get(v & ~_VERSYM_HIDDEN)
            if ver is not None and ver[0] != name:  # nm shows version-definition symbols bare
                append((name, ver[0], ver[1] and not v & _VERSYM_HIDDEN, value, size, info, shndx))
            elif "@" in name:  # .symtab spells versions out: "memcpy@@GLIBC_2.14"
                base, version, default = _split_version(name)
                append((base, version, default, value, size, info, shndx))
            else:
                append((name, None, False, value, size, info, shndx))
        return rows

    def _section_versions(self) -> _VersionSource | None:
        versym = self._sections_of_type(SectionType.GNU_VERSYM)
        if not versym or not versym[0].size:
            return None
        verdef = self._sections_of_type(SectionType.GNU_VERDEF)
        verneed = self._sections_of_type(SectionType.GNU_VERNEED)
        chains = [s for s in verdef[:1] + verneed[:1] if s.size]
        strtab = self._linked(chains[0], "version") if chains else b""
        return _VersionSource(
            self.section_data(versym[0]),
            self.section_data(verdef[0]) if verdef else b"",
            verdef[0].info if verdef else 0,
            self.section_data(verneed[0]) if verneed else b"",
            verneed[0].info if verneed else 0,
            strtab,
        )

    def _version_map(self, src: _VersionSource) -> dict[int, tuple[str, bool]]:
        """Version index -> (name, defined here); the base (file name) entry is no version."""
        out: dict[int, tuple[str, bool]] = {}
        path = self.path

        def unpack(st: struct.Struct, data: bytes, off: int, what: str) -> tuple[int, ...]:
            return _unpack(st, path, data, off, what)

        def version(name_off: int) -> str:
            return _cstring(path, src.strtab, name_off, "symbol version name")

        data = src.verdef
        off = 0
        for _ in range(min(src.verdef_count or len(data), len(data) // _VERDEF.size)):
            _, flags, ndx, cnt, _, aux, nxt = unpack(_VERDEF, data, off, "version definition")
            if cnt and not flags & _VER_FLG_BASE:
                name_off, _ = unpack(_VERDAUX, data, off + aux, "version definition name")
                out[ndx & ~_VERSYM_HIDDEN] = (version(name_off), True)
            if nxt == 0:
                break
            off += nxt
        data = src.verneed
        budget = len(data) // _VERNAUX.size  # bounds the nested walk, cycles included
        off = 0
        for _ in range(min(src.verneed_count or len(data), len(data) // _VERNEED.size)):
            _, cnt, _, aux, nxt = unpack(_VERNEED, data, off, "version dependency")
            aoff = off + aux
            for _ in range(min(cnt, budget)):
                budget -= 1
                _, _, other, name_off, anext = unpack(_VERNAUX, data, aoff, "version need")
                out[other & ~_VERSYM_HIDDEN] = (version(name_off), False)
                if anext == 0:
                    break
                aoff += anext
            if nxt == 0 or budget <= 0:
                break
            off += nxt
        for reserved in (0, 1):  # VER_NDX_LOCAL and VER_NDX_GLOBAL mean "no version"
            out.pop(reserved, None)
        return out

    def _dynamic_rows(self, *, every_entry: bool = False) -> list[_Row]:
        """Dynamic symbols of a file without section headers, found through DT_* tags."""
        symtab = self._dyn(DynamicTag.SYMTAB) or 0
        count = self._dynamic_symbol_count()
        data = self._read_vaddr(symtab, count * _SYM.size, "dynamic symbol table")
        versions = None
        versym = self._dyn(DynamicTag.VERSYM)
        if versym is not None:
            verdef = self._dyn(DynamicTag.VERDEF)
            verneed = self._dyn(DynamicTag.VERNEED)
            versions = _VersionSource(
                self._read_vaddr(versym, 2 * count, "DT_VERSYM"),
                b"" if verdef is None else self._read_vaddr(verdef, None, "DT_VERDEF"),
                self._dyn(DynamicTag.VERDEFNUM) or 0,
                b"" if verneed is None else self._read_vaddr(verneed, None, "DT_VERNEED"),
                self._dyn(DynamicTag.VERNEEDNUM) or 0,
                self._dynstr,
            )
        return self._rows(
            data, self._dynstr, "dynamic symbol table", versions, every_entry=every_entry
        )

    def _dynamic_symbol_count(self) -> int:
        """Symbol count from DT_HASH's nchain, or by walking DT_GNU_HASH's last chain."""
        sysv = self._dyn(DynamicTag.HASH)
        if sysv is not None:
            header = self._read_vaddr(sysv, _HASH_HDR.size, "DT_HASH")
            return _unpack(_HASH_HDR, self.path, header, 0, "DT_HASH")[1]
        gnu = self._dyn(DynamicTag.GNU_HASH)
        if gnu is None:
            raise self._error("has DT_SYMTAB but neither DT_HASH nor DT_GNU_HASH to size it")
        data = self._read_vaddr(gnu, None, "DT_GNU_HASH")
        nbuckets, symoffset, bloom, _ = _unpack(_GNU_HASH_HDR, self.path, data, 0, "DT_GNU_HASH")
        buckets_at = _GNU_HASH_HDR.size + 8 * bloom
        if buckets_at + 4 * nbuckets > len(data):
            raise self._error("truncated DT_GNU_HASH buckets")
        last = max(struct.unpack_from(f"<{nbuckets}I", data, buckets_at), default=0)
        if last < symoffset:
            return symoffset
        chain_at = buckets_at + 4 * nbuckets - 4 * symoffset
        while True:  # each step reads 4 bytes further on, so truncation ends it
            (value,) = _unpack(_U32, self.path, data, chain_at + 4 * last, "DT_GNU_HASH chain")
            last += 1
            if value & 1:
                return last

    # ----------------------------------------------------------------- relocations, PLT

    def relocations(self) -> RelocationTable:
        """Dynamic relocations: every allocated SHT_RELA section (``.rela.dyn``,
        ``.rela.plt``), or the DT_RELA and DT_JMPREL tables when section headers are gone.

        Left out: link-time relocations (``.rela.text`` of objects, ``--emit-relocs``), which
        patch sections rather than the loaded image; RELR-packed ones (DT_RELR), which only
        ever add the load bias to a pointer; and SHT_REL/DT_REL tables, which x86-64 never uses.
        """
        return self._relocations

    @cached_property
    def _relocations(self) -> RelocationTable:
        sources = self._section_rela() if self.sections else self._dynamic_rela()
        symbol_tables: dict[int, Sequence[_Row]] = {}
        runs = []
        start = 0
        for src in sources:
            if len(src.data) % _RELA.size:
                raise self._error(
                    f"relocation table {src.what} size 0x{len(src.data):x} is no multiple of 24"
                )
            symbols = self._symbols_for(src, symbol_tables)
            runs.append(_RelocationRun(start, list(_RELA.iter_unpack(src.data)), symbols, src.plt))
            start += len(runs[-1].rows)
        return RelocationTable(_TOKEN, runs, self.machine == EM_X86_64)

    def _section_rela(self) -> list[_RelaSource]:
        jmprel = self._dyn(DynamicTag.JMPREL)
        sources = []
        for sec in self._sections_of_type(SectionType.RELA):
            if not sec.flags & SectionFlags.ALLOC or not sec.size:
                continue
            if sec.entsize not in (0, _RELA.size):
                raise self._error(f"relocation section {sec.name} has entry size {sec.entsize}")
            plt = sec.addr == jmprel if jmprel is not None else sec.name == ".rela.plt"
            sources.append(_RelaSource(self.section_data(sec), sec.name, sec.link, plt))
        return sources

    def _dynamic_rela(self) -> list[_RelaSource]:
        entsize = self._dyn(DynamicTag.RELAENT)
        if entsize not in (None, _RELA.size):
            raise self._error(f"DT_RELAENT is {entsize}, not {_RELA.size}")
        jmprel = self._dyn(DynamicTag.JMPREL)
        if self._dyn(DynamicTag.PLTREL) not in (None, DynamicTag.RELA):
            jmprel = None  # a DT_REL table: no x86-64 linker makes one
        plt = (jmprel, jmprel + (self._dyn(DynamicTag.PLTRELSZ) or 0)) if jmprel else (0, 0)
        sources = []
        rela = self._dyn(DynamicTag.RELA)
        if rela is not None:
            # Some linkers let DT_RELASZ cover .rela.plt too: read each relocation once.
            for lo, hi in _subtract((rela, rela + (self._dyn(DynamicTag.RELASZ) or 0)), plt):
                data = self._read_vaddr(lo, hi - lo, "DT_RELA table")
                sources.append(_RelaSource(data, "DT_RELA table", None, False))
        if plt[1] > plt[0]:
            data = self._read_vaddr(plt[0], plt[1] - plt[0], "DT_JMPREL table")
            sources.append(_RelaSource(data, "DT_JMPREL table", None, True))
        return sources

    def _symbols_for(self, src: _RelaSource, cache: dict[int, Sequence[_Row]]) -> Sequence[_Row]:
        """The symbol table *src* indexes, checked to hold its highest index."""
        top = max(memoryview(src.data).cast("Q")[1::3], default=0) >> 32
        if top == 0:
            return ()
        key = -1 if src.link is None else src.link
        if key not in cache:
            cache[key] = self._every_symbol(src)
        symbols = cache[key]
        if top >= len(symbols):
            raise self._error(
                f"a relocation in {src.what} names symbol {top}, "
                f"but its symbol table has {len(symbols)} entries"
            )
        return symbols

    def _every_symbol(self, src: _RelaSource) -> list[_Row]:
        if src.link is None:
            if self._dyn(DynamicTag.SYMTAB) is None:
                raise self._error(f"{src.what} names symbols, but there is no DT_SYMTAB")
            return self._dynamic_rows(every_entry=True)
        sec = self.sections[src.link] if 0 < src.link < len(self.sections) else None
        if sec is None or sec.type not in (SectionType.DYNSYM, SectionType.SYMTAB):
            raise self._error(f"relocation section {src.what} links to no symbol table")
        versions = self._section_versions() if sec.type == SectionType.DYNSYM else None
        strtab = self._linked(sec, "symbol")
        return self._rows(self.section_data(sec), strtab, sec.name, versions, every_entry=True)

    def plt_entries(self) -> Mapping[int, str]:
        """PLT stub vaddr -> its name as objdump and gdb label it: ``malloc@plt``, or
        ``*ABS*+0x9f550@plt`` for a stub through an IRELATIVE slot.

        Stubs of ``.plt``, ``.plt.sec``, ``.plt.got`` and ``.plt.bnd`` in binutils' layouts,
        with and without IBT (``endbr64``) and MPX (``bnd``).  A stub is named by the GOT slot
        it jumps through, or, for IBT's lazy ``.plt`` stubs, by the DT_JMPREL index it pushes.
        Needs section headers (without them nothing says where the PLT is) and x86-64.
        """
        return self._plt_names

    def plt_entry_at(self, vaddr: int) -> tuple[str, int] | None:
        """The PLT stub holding file vaddr *vaddr*: (name, offset into the stub)."""
        stubs = self._plt_stubs
        i = bisect.bisect_right(self._plt_starts, vaddr) - 1
        if i >= 0 and vaddr < stubs[i].start + stubs[i].size:
            return stubs[i].name, vaddr - stubs[i].start
        return None

    @cached_property
    def _plt_names(self) -> Mapping[int, str]:
        return MappingProxyType({stub.start: stub.name for stub in self._plt_stubs})

    @cached_property
    def _plt_starts(self) -> list[int]:
        return [stub.start for stub in self._plt_stubs]

    @cached_property
    def _plt_stubs(self) -> tuple[_PltStub, ...]:
        if self.machine != EM_X86_64:
            return ()
        stubs: list[_PltStub] = []
        for sec in self.sections:
            if (
                sec.name in _PLT_SECTIONS
                and sec.type == SectionType.PROGBITS
                and sec.flags & SectionFlags.EXECINSTR
            ):
                stubs += self._stubs_of(sec)
        return tuple(sorted(stubs, key=lambda stub: stub.start))

    def _stubs_of(self, sec: Section) -> Iterator[_PltStub]:
        data = self.section_data(sec)
        step = _plt_step(sec, data)
        table = self.relocations()
        for off in range(0, len(data) - step + 1, step):
            rel = _stub_relocation(table, data, off, sec.addr + off)
            name = None if rel is None else _plt_label(rel)
            if name is not None:
                yield _PltStub(sec.addr + off, step, name)


def _perms_fit(flags: SegmentFlags, perms: str) -> bool:
    """Whether a mapping with maps *perms* can come from a segment with *flags* (RELRO makes
    writable segments read-only, so only execute, and write when present, must agree)."""
    executable = len(perms) > 2 and perms[2] == "x"
    writable = len(perms) > 1 and perms[1] == "w"
    return executable == bool(flags & SegmentFlags.X) and (
        not writable or bool(flags & SegmentFlags.W)
    )


def _subtract(span: tuple[int, int], hole: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of the interval *span* outside *hole* (both half-open), non-empty only."""
    parts = [(span[0], min(span[1], hole[0])), (max(span[0], hole[1]), span[1])]
    if hole[0] >= hole[1]:
        parts = [span]
    return [(lo, hi) for lo, hi in parts if lo < hi]


def _plt_step(sec: Section, data: bytes) -> int:
    """Stub size: sh_entsize when it is one, else 8 for the ``jmp *slot; xchg %ax,%ax`` stubs
    of static binaries' ``.plt`` (which leave sh_entsize 0), else 16."""
    if sec.entsize in (8, 16):
        return sec.entsize
    return 8 if len(data) % 16 or data[6:8] == b"\x66\x90" else 16


def _stub_relocation(
    table: RelocationTable, data: bytes, off: int, vaddr: int
) -> Relocation | None:
    """The relocation the PLT stub at *off* (file vaddr *vaddr*) goes through.

    ``[endbr64] [bnd] jmp *slot(%rip)`` names its GOT slot; a lazy stub ``[endbr64] push $i;
    [bnd] jmp .plt`` (IBT's ``.plt``, MPX's) the DT_JMPREL entry *i*.  PLT0 is neither.
    """
    pos = off + len(_ENDBR64) if data.startswith(_ENDBR64, off) else off
    jmp = pos + 1 if data.startswith(_BND, pos) else pos
    if data.startswith(_JMP_INDIRECT, jmp) and jmp + 6 <= len(data):
        disp = int.from_bytes(data[jmp + 2 : jmp + 6], "little", signed=True)
        return table.at(vaddr + (jmp - off) + 6 + disp)
    after = pos + 5
    after += data.startswith(_BND, after)
    if data.startswith(_PUSH_IMM32, pos) and data.startswith(_JMP_REL32, after):
        return table.plt_slot(int.from_bytes(data[pos + 1 : pos + 5], "little"))
    return None


def _plt_label(rel: Relocation) -> str | None:
    if rel.sym_name:
        return f"{rel.sym_name}@plt"
    if rel.type == _IRELATIVE:
        return f"*ABS*+0x{rel.addend:x}@plt"
    return None


def _try_open(path: str) -> ElfFile | None:
    try:
        return ElfFile.open(path)
    except ElfError:
        return None
