"""What is mapped in a process, and its symbols, named the way DTrace users name them.

A module is one ELF object mapped in the address space: the main executable
(``a.out``), each shared library (``libc.so.6``, by basename or full path), the
dynamic linker and the vDSO. Files are opened through ``/proc/PID/map_files`` so
that deleted files and other mount namespaces work; parsed files are shared
through the ELF reader's cache, so a module map is cheap to rebuild after every
dlopen.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from dtproc._sys import procfs
from dtproc.elf import ElfFile, ElfSymbol, SymbolBinding, SymbolTable, SymbolType
from dtproc.errors import DtprocError, ElfError

MAIN_MODULE: Final = "a.out"
VDSO: Final = "[vdso]"


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbol at its run-time address in one process."""

    name: str
    address: int
    size: int
    module: str
    type: SymbolType
    versioned_name: str

    @property
    def is_ifunc(self) -> bool:
        return self.type is SymbolType.IFUNC

    @property
    def is_function(self) -> bool:
        return self.type in (SymbolType.FUNC, SymbolType.IFUNC)


@dataclass(frozen=True, slots=True)
class Module:
    """One mapped ELF object."""

    name: str  # the file's basename ("[vdso]" for the vDSO); "a.out" also names the executable
    path: str  # the path /proc/PID/maps shows
    start: int  # lowest mapped address
    end: int  # end of the highest mapping
    bias: int  # run-time address minus file vaddr
    elf: ElfFile | None = field(compare=False, repr=False)
    is_main: bool = False
    soname: str = ""  # DT_SONAME of a shared library ("" for executables and unnamed objects)

    @property
    def object_name(self) -> str:
        """The name DTrace shows: the basename of the dynamic linker's name for the object.

        ld.so names a library by what it was asked for -- normally its soname
        (``libstdc++.so.6``), not the file a symlink leads to (``libstdc++.so.6.0.30``,
        which /proc/PID/maps shows); the vDSO is ``linux-vdso.so.1``; the executable
        goes by its file's basename.
        """
        return self.soname or self.name

    @property
    def is_vdso(self) -> bool:
        return self.path == VDSO

    @property
    def basename(self) -> str:
        return os.path.basename(self.path.removesuffix(" (deleted)"))

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every name DTrace accepts: basename, full path, ``a.out`` for the executable, and
        the library name without its version (``libc.so``) or without ``.so`` (``libc``)."""
        names = [self.object_name, self.name, self.path]
        if self.is_main:
            names.append(MAIN_MODULE)
        for full in {self.object_name, self.basename}:
            stem, dot_so, _ = full.partition(".so")
            if dot_so:
                names += [stem + dot_so, stem]
        return tuple(dict.fromkeys(names))

    def matches(self, pattern: str) -> bool:
        """Whether a probe description's module field (globs allowed) names this module."""
        if any(ch in pattern for ch in "*?["):
            return any(fnmatch.fnmatchcase(n, pattern) for n in self.aliases)
        return pattern in self.aliases

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    @property
    def symbols(self) -> SymbolTable | None:
        return self.elf.full_symbols() if self.elf is not None else None

    def symbol(self, sym: ElfSymbol) -> Symbol:
        return Symbol(
            sym.name, sym.value + self.bias, sym.size, self.name, sym.type, sym.versioned_name
        )


ReadMemory = Callable[[int, int], bytes]


class ModuleMap:
    """An immutable snapshot of the modules of one process."""

    def __init__(self, modules: Sequence[Module]) -> None:
        self.modules: Final = tuple(modules)
        ordered = sorted(self.modules, key=lambda m: m.start)
        self._starts = [m.start for m in ordered]
        self._ordered = ordered

    @classmethod
    def read(cls, pid: int, read_memory: ReadMemory) -> ModuleMap:
        """Build the map from /proc/PID/maps; *read_memory* reads the vDSO image."""
        return cls(_modules_of(pid, read_memory))

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def main(self) -> Module | None:
        return next((m for m in self.modules if m.is_main), None)

    def module_at(self, address: int) -> Module | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and self._ordered[i].contains(address):
            return self._ordered[i]
        return None

    def named(self, pattern: str) -> list[Module]:
        return [m for m in self.modules if m.matches(pattern)]

    def lookup(self, module: str | None, name: str) -> Symbol | None:
        """The symbol *name* in *module* (None: every module, in load order)."""
        for mod in self.modules if module is None else self.named(module):
            table = mod.symbols
            if table is None:
                continue
            sym = table.lookup(name)
            if sym is not None:
                return mod.symbol(sym)
        return None

    def functions(self, module: Module, pattern: str) -> list[Symbol]:
        """Functions of *module* matching a glob, one per address (aliases folded)."""
        table = module.symbols
        if table is None:
            return []
        seen: dict[int, ElfSymbol] = {}
        for sym in table.glob(pattern, functions_only=True):
            if sym.value and sym.value not in seen:
                seen[sym.value] = sym
        return [module.symbol(s) for s in seen.values()]

    def symbolize(self, address: int) -> str:
        """As dtrace prints a frame: ``libc.so.6`getppid+0x4``, ``ls`main``, a PLT stub
        ``ls`malloc@plt``, ``ls`0x55d0c3a1b2f0`` (an absolute pc: no symbol covers it), or
        ``0x7f...`` (no module does)."""
        mod = self.module_at(address)
        if mod is None:
            return f"0x{address:x}"
        table = mod.symbols
        found = table.at(address - mod.bias) if table is not None else None
        if found is None:
            plt = mod.elf.plt_entry_at(address - mod.bias) if mod.elf is not None else None
            if plt is None:
                return f"{mod.object_name}`0x{address:x}"
            name, off = plt
        else:
            sym, off = found
            name = canonical_name(table, sym) if table is not None else sym.name
        obj = mod.object_name
        return f"{obj}`{name}+0x{off:x}" if off else f"{obj}`{name}"

    def resolve(self, address: int) -> tuple[Module, ElfSymbol | None, int] | None:
        """(module, symbol or None, offset into the symbol or the module's file vaddr)."""
        mod = self.module_at(address)
        if mod is None:
            return None
        table = mod.symbols
        found = table.at(address - mod.bias) if table is not None else None
        if found is None:
            return mod, None, address - mod.bias
        return mod, found[0], found[1]


_BINDING_RANK: Final = {SymbolBinding.GLOBAL: 0, SymbolBinding.WEAK: 0}
_canonical: OrderedDict[int, tuple[SymbolTable, dict[int, str]]] = OrderedDict()
_canonical_lock = threading.Lock()
_CANONICAL_CACHE: Final = 64


def _preference(sym: ElfSymbol) -> tuple[int, int, int, str]:
    """DTrace's canonical name among aliases (libproc's rule): global or weak before local,
    then the fewest leading underscores,
    then shortest (``gnu_get_libc_version`` over ``__gnu_get_libc_version``)."""
    underscores = len(sym.name) - len(sym.name.lstrip("_"))
    return (_BINDING_RANK.get(sym.binding, 2), underscores, len(sym.name), sym.name)


def canonical_name(table: SymbolTable, sym: ElfSymbol) -> str:
    """The one name DTrace uses for the function at *sym*'s address."""
    if not sym.is_function:
        return sym.name
    with _canonical_lock:
        hit = _canonical.get(id(table))
        if hit is not None and hit[0] is table:
            _canonical.move_to_end(id(table))
            return hit[1].get(sym.value, sym.name)
    best: dict[int, ElfSymbol] = {}
    for candidate in table.functions():
        cur = best.get(candidate.value)
        if cur is None or _preference(candidate) < _preference(cur):
            best[candidate.value] = candidate
    names = {value: s.name for value, s in best.items()}
    with _canonical_lock:
        _canonical[id(table)] = (table, names)
        while len(_canonical) > _CANONICAL_CACHE:
            _canonical.popitem(last=False)
    return names.get(sym.value, sym.name)


_vdso_images: dict[bytes, ElfFile] = {}


def _vdso(image: bytes) -> ElfFile:
    """The vDSO is the same image in every process of one kernel: parse it once."""
    elf = _vdso_images.get(image)
    if elf is None:
        elf = _vdso_images[image] = ElfFile.from_bytes(image, VDSO)
    return elf


def _modules_of(pid: int, read_memory: ReadMemory) -> list[Module]:
    maps = procfs.read_maps(pid)
    exe = procfs.exe_path(pid)
    groups: list[list[procfs.Mapping]] = []
    latest: dict[tuple[str, int, str], list[procfs.Mapping]] = {}
    for m in maps:
        if m.path != VDSO and (not m.path.startswith("/") or m.inode == 0):
            continue
        key = (m.dev, m.inode, m.path)
        group = latest.get(key)
        # A file mapped again from a lower offset is another copy of it (a dlmopen namespace
        # loads its own libc.so.6): one module per copy, never one spanning them all.
        # (Within one copy offsets never go down; two segments may share a page.)
        if group is None or m.offset < group[-1].offset:
            group = latest[key] = []
            groups.append(group)
        group.append(m)
    modules = [mod for g in groups if (mod := _module(pid, g, exe, read_memory)) is not None]
    # Load order as DTrace searches it: the executable first, then by address.
    modules.sort(key=lambda m: (not m.is_main, m.start))
    return modules


def _module(
    pid: int, maps: list[procfs.Mapping], exe: str, read_memory: ReadMemory
) -> Module | None:
    first = maps[0]
    start, end = first.start, max(m.end for m in maps)
    if first.path == VDSO:
        try:
            vdso = _vdso(read_memory(first.start, first.end - first.start))
        except DtprocError:
            return None
        bias = first.start - vdso.min_vaddr
        return Module(VDSO, VDSO, start, end, bias, vdso, soname=_soname(vdso))
    path = first.path.removesuffix(" (deleted)")
    elf = _open_mapped(pid, first, path)
    if elf is None:
        return None
    anchor = next((m for m in maps if m.offset == 0), None) or next(
        (m for m in maps if m.executable), first
    )
    try:
        bias = elf.load_bias(anchor.start, anchor.offset, anchor.perms)
    except ElfError:
        return None
    is_main = path == exe.removesuffix(" (deleted)")
    soname = "" if is_main else _soname(elf)
    return Module(os.path.basename(path), first.path, start, end, bias, elf, is_main, soname)


def _open_mapped(pid: int, mapping: procfs.Mapping, path: str) -> ElfFile | None:
    """The file behind a mapping: by its path when that is the very file (same device
    and inode), else through /proc/PID/map_files (deleted files, other mount namespaces)."""
    candidates = [f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"]
    if not mapping.deleted and _same_file(path, mapping):
        candidates.insert(0, path)
    for candidate in candidates:
        try:
            return ElfFile.open(candidate)
        except ElfError:
            continue
    return None


def _same_file(path: str, mapping: procfs.Mapping) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_ino == mapping.inode and mapping.dev == (
        f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    )


def _soname(elf: ElfFile) -> str:
    try:
        return os.path.basename(elf.soname or "")
    except ElfError:
        return ""
