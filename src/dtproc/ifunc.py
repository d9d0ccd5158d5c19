"""Which implementation an IFUNC symbol runs in one process.

An IFUNC symbol's value (libc's ``strlen``) is its *resolver*: the dynamic linker calls it
once, writes what it returns into a GOT slot, and from then on the program runs that
implementation (``__strlen_avx2``) and never the resolver again.  A probe on the symbol's
own address would fire only when a binding is made, so anything that traces "strlen" has to
find the implementation.  This module does that without running code in the target, by
reading GOT slots the dynamic linker has already filled in:

1. **IRELATIVE**: a module that calls its own IFUNC (libc calls ``strlen``) has an
   ``R_X86_64_IRELATIVE`` relocation whose addend is the resolver.  Those are applied while
   the module is relocated, before any initialiser runs, so the slot holds the
   implementation from the preinit point on.
2. **A bound GOT slot**: a ``JUMP_SLOT``/``GLOB_DAT`` relocation of any module that would
   bind to this resolver.  GLOB_DAT and ``-z now`` slots are bound at load time, lazy
   JUMP_SLOTs after the first call through the PLT (until then they point at a PLT stub).

When neither has happened there is nothing to read and the answer is None: the caller may
wait and ask again, or probe the resolver.  Only the memory-read callback touches the
process, so a stopped, running or read-only-grabbed process all work.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

from dtproc.elf import (
    ElfSymbol,
    Relocation,
    RelocationTable,
    RelocationType,
    SegmentFlags,
    SegmentType,
    SymbolTable,
    SymbolType,
)
from dtproc.errors import DtprocError, ElfError
from dtproc.modules import Module, ModuleMap, ReadMemory, Symbol

__all__ = ["IfuncResolver", "IfuncSource", "IfuncTarget", "resolve_ifunc"]

_GOT_BINDINGS: Final = (RelocationType.R_X86_64_JUMP_SLOT, RelocationType.R_X86_64_GLOB_DAT)
_WORD: Final = 8


class IfuncSource(enum.Enum):
    """Which kind of GOT slot gave the answer."""

    IRELATIVE = "IRELATIVE slot"
    BOUND_GOT = "bound GOT slot"


@dataclass(frozen=True, slots=True)
class IfuncTarget:
    """The implementation an IFUNC resolver chose, as the process will run it."""

    resolver: int  # run-time address of the IFUNC symbol (its resolver)
    address: int  # run-time address of the implementation
    module: str  # module holding the implementation ("libc.so.6")
    name: str | None  # symbol at the implementation ("__strlen_avx2"); None without symbols
    offset: int  # address minus that symbol's start (0 for a function entry)
    source: IfuncSource
    slot: int  # run-time address of the GOT slot the address was read from

    @property
    def label(self) -> str:
        """``libc.so.6`__strlen_avx2`` (``+0xoff`` or a bare address when symbols say less)."""
        if self.name is None:
            return f"{self.module}`0x{self.address:x}"
        return f"{self.module}`{self.name}" + (f"+0x{self.offset:x}" if self.offset else "")


@final
class IfuncResolver:
    """Resolves IFUNC symbols of one module snapshot through *read*.

    Nothing is cached here: the relocation indexes it uses belong to the ELF files (and are
    shared by every process that maps them), and slots are read afresh on every call, so one
    resolver can be asked again after the process has run on.
    """

    def __init__(self, modules: ModuleMap, read: ReadMemory) -> None:
        self._modules: Final = modules
        self._read: Final = read

    def resolve(self, symbol: Symbol) -> IfuncTarget | None:
        """The implementation *symbol* (an IFUNC) runs as, or None when no slot tells yet.

        None also for a symbol that is no IFUNC: no slot then holds anything but itself.
        """
        return self.via_irelative(symbol) or self.via_bound_got(symbol)

    def via_irelative(self, symbol: Symbol) -> IfuncTarget | None:
        """Read the defining module's IRELATIVE slot whose addend is the resolver."""
        defining = self._modules.module_at(symbol.address)
        relocations = _relocations(defining)
        if defining is None or relocations is None:
            return None
        resolver = symbol.address - defining.bias
        for rel in relocations.of_type(RelocationType.R_X86_64_IRELATIVE):
            if rel.addend == resolver:
                found = self._target(symbol, defining.bias + rel.offset, IfuncSource.IRELATIVE)
                if found is not None:
                    return found
        return None

    def via_bound_got(self, symbol: Symbol) -> IfuncTarget | None:
        """Read a JUMP_SLOT/GLOB_DAT slot, of any module, that binds to this resolver.

        A slot counts when its relocation names the resolver or an alias of it (``index`` for
        ``strchr``) in the version the defining module resolves it to, and the slot points
        into the defining module's code outside its PLT: a lazy slot not yet bound points at
        a PLT stub, and an interposed definition (LD_PRELOAD) is not this resolver's choice.
        """
        defining = self._modules.module_at(symbol.address)
        table = None if defining is None else defining.symbols
        if defining is None or table is None:
            return None
        names = _aliases(table.functions(), symbol.address - defining.bias) | {symbol.name}
        for module, rel in self._bindings(table, names, symbol.address - defining.bias):
            found = self._target(symbol, module.bias + rel.offset, IfuncSource.BOUND_GOT)
            if found is not None and self._modules.module_at(found.address) is defining:
                return found
        return None

    def _bindings(
        self, table: SymbolTable, names: set[str], resolver: int
    ) -> Iterator[tuple[Module, Relocation]]:
        """GOT relocations naming *names*, in every module, that bind to *resolver* when
        looked up in the defining module's *table*."""
        for module in self._modules:
            relocations = _relocations(module)
            if relocations is None:
                continue
            for name in names:
                for rel in relocations.by_symbol(name):
                    if rel.type in _GOT_BINDINGS and rel.symbol is not None:
                        bound = table.lookup(_wanted(rel.symbol))
                        if bound is not None and bound.value == resolver:
                            yield module, rel

    def _target(self, symbol: Symbol, slot: int, source: IfuncSource) -> IfuncTarget | None:
        """What *slot* holds, when that is code: not a PLT stub and not the resolver itself."""
        try:
            address = int.from_bytes(self._read(slot, _WORD), "little")
            module = self._modules.module_at(address)
            if address == symbol.address or module is None or module.elf is None:
                return None
            vaddr = address - module.bias
            if not _executable(module, vaddr) or module.elf.plt_entry_at(vaddr) is not None:
                return None
        except DtprocError:  # an unreadable slot, or a corrupt file: no answer from here
            return None
        table = module.symbols
        found = table.at(vaddr) if table is not None else None
        name, offset = (found[0].name, found[1]) if found is not None else (None, 0)
        return IfuncTarget(symbol.address, address, module.name, name, offset, source, slot)


def resolve_ifunc(modules: ModuleMap, read: ReadMemory, symbol: Symbol) -> IfuncTarget | None:
    """One-shot :meth:`IfuncResolver.resolve`."""
    return IfuncResolver(modules, read).resolve(symbol)


def _aliases(functions: Sequence[ElfSymbol], value: int) -> set[str]:
    """Names of the IFUNC symbols at *value* (*functions* is sorted by value)."""
    i = bisect.bisect_left(functions, value, key=lambda s: s.value)
    names: set[str] = set()
    while i < len(functions) and functions[i].value == value:
        if functions[i].type is SymbolType.IFUNC:
            names.add(functions[i].name)
        i += 1
    return names


def _wanted(sym: ElfSymbol) -> str:
    """How a relocation asks for its symbol: ``memcpy@GLIBC_2.14``, or a bare name."""
    return sym.name if sym.version is None else f"{sym.name}@{sym.version}"


def _relocations(module: Module | None) -> RelocationTable | None:
    """*module*'s relocations; None without a readable ELF file (one corrupt library must
    not hide the answer that the others hold)."""
    if module is None or module.elf is None:
        return None
    try:
        return module.elf.relocations()
    except ElfError:
        return None


def _executable(module: Module, vaddr: int) -> bool:
    assert module.elf is not None
    return any(
        seg.type == SegmentType.LOAD
        and seg.flags & SegmentFlags.X
        and seg.vaddr <= vaddr < seg.vaddr + seg.memsz
        for seg in module.elf.segments
    )
