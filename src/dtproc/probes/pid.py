"""The pid provider: function entry, return and instruction-offset probes in one process.

``pid1234:MODULE:FUNCTION:NAME`` names, for each matching function of each
matching module, the probe ``entry`` (first instruction), ``return`` (every
``ret`` and every jump that leaves the function: a tail call returns for it) and
instruction offsets in hex (``1c``). An empty or glob NAME matches all three
kinds, offsets included -- one probe per instruction, as in dtrace.

IFUNC symbols (``strlen``, ``memcpy``) are probed where the process really runs
them: the implementation the dynamic linker chose, not the resolver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from dtproc.d import ProbeDescription, ProbeInfo
from dtproc.d.probedesc import is_glob
from dtproc.elf import ElfSymbol, SymbolType
from dtproc.errors import DtprocError, ProbeError
from dtproc.ifunc import IfuncResolver
from dtproc.insn import ReturnKind, instruction_boundaries, return_sites
from dtproc.modules import Module, ModuleMap, canonical_name
from dtproc.probes.sites import ProbeIds, ProbeKind, ProbeSite, ReturnHow, candidate_modules

ReadMemory = Callable[[int, int], bytes]

_RETURN_HOW = {
    ReturnKind.RET: ReturnHow.RET,
    ReturnKind.TAIL_CALL: ReturnHow.TAIL_CALL,
    ReturnKind.COND_TAIL_CALL: ReturnHow.COND_TAIL_CALL,
}
_NAMED = ("entry", "return")


@dataclass(frozen=True, slots=True)
class _Function:
    module: Module  # the module whose symbol names it
    name: str
    address: int  # run-time address of the code that runs (the IFUNC target for IFUNCs)
    size: int
    code_module: Module  # the module holding that code


def provider_name(pid: int) -> str:
    return f"pid{pid}"


def matches_provider(desc: ProbeDescription, pid: int) -> bool:
    return desc.field_matches(0, provider_name(pid))


def module_may_load_later(desc: ProbeDescription, modules: ModuleMap) -> bool:
    """True when the description names a module that is not mapped (yet): dlopen may bring it."""
    pattern = desc.module
    if not pattern or pattern == "a.out":
        return False
    return not any(m.matches(pattern) for m in modules if not m.is_vdso)


class PidProvider:
    """Matches pid-provider descriptions against one process's modules."""

    def __init__(self, pid: int, read: ReadMemory, ids: ProbeIds) -> None:
        self.pid = pid
        self._read = read
        self._ids = ids

    def sites(
        self, desc: ProbeDescription, modules: ModuleMap, only: Sequence[Module] | None = None
    ) -> list[ProbeSite]:
        """Every probe *desc* names in *modules* (or just in *only*, e.g. newly loaded ones)."""
        if not matches_provider(desc, self.pid):
            return []
        resolver = IfuncResolver(modules, self._read)
        out: list[ProbeSite] = []
        for module in candidate_modules(desc, modules, only):
            for fn in self._functions(module, desc.function, resolver, modules):
                out.extend(self._sites_of(desc, fn))
        return out

    def _functions(
        self, module: Module, pattern: str, resolver: IfuncResolver, modules: ModuleMap
    ) -> Iterator[_Function]:
        table = module.symbols
        if table is None:
            return
        if pattern and not is_glob(pattern):
            found = table.lookup(pattern)
            candidates = [found] if found is not None and found.is_function else []
        else:
            candidates = list(table.glob(pattern or "*", functions_only=True))
        seen: set[int] = set()
        for sym in candidates:
            fn = self._function(module, sym, resolver, modules)
            if fn is None or fn.address in seen:
                continue
            seen.add(fn.address)
            yield fn

    def _function(
        self, module: Module, sym: ElfSymbol, resolver: IfuncResolver, modules: ModuleMap
    ) -> _Function | None:
        if not sym.is_function or sym.value == 0:
            return None
        table = module.symbols
        name = canonical_name(table, sym) if table is not None else sym.name
        if sym.type is not SymbolType.IFUNC:
            if sym.size <= 0:
                return None
            return _Function(module, name, sym.value + module.bias, sym.size, module)
        target = resolver.resolve(module.symbol(sym))
        if target is None:
            return None  # not bound yet: probing the resolver would fire once, wrongly
        impl = modules.module_at(target.address)
        table = impl.symbols if impl is not None else None
        found = table.at(target.address - impl.bias) if impl is not None and table else None
        if impl is None or found is None or found[1] != 0 or found[0].size <= 0:
            return None
        return _Function(module, name, target.address, found[0].size, impl)

    def _sites_of(self, desc: ProbeDescription, fn: _Function) -> list[ProbeSite]:
        name = desc.name
        out: list[ProbeSite] = []
        if desc.field_matches(3, "entry"):
            out.append(self._site(fn, "entry", ProbeKind.ENTRY, fn.address))
        if desc.field_matches(3, "return"):
            out.extend(self._returns(fn))
        if name and not is_glob(name) and name not in _NAMED:
            out.append(self._offset_site(fn, name))
        elif not name or is_glob(name):
            out.extend(self._all_offsets(desc, fn))
        return out

    def _code(self, fn: _Function) -> bytes:
        try:
            return self._read(fn.address, fn.size)
        except DtprocError as exc:
            raise ProbeError(
                f"pid {self.pid}: cannot read the code of {fn.module.name}`{fn.name}: {exc}"
            ) from None

    def _returns(self, fn: _Function) -> list[ProbeSite]:
        found = return_sites(self._code(fn), fn.address)
        out = []
        for rs in found.sites:
            site = self._site(
                fn,
                "return",
                ProbeKind.RETURN,
                fn.address + rs.offset,
                return_how=_RETURN_HOW[rs.kind],
                branch_target=rs.target if rs.kind is ReturnKind.COND_TAIL_CALL else None,
            )
            out.append(site)
        return out

    def _offset_site(self, fn: _Function, name: str) -> ProbeSite:
        try:
            offset = int(name, 16)
        except ValueError:
            raise ProbeError(
                f"invalid probe name '{name}' for pid{self.pid}:{fn.module.name}:{fn.name}: "
                "use entry, return, or an instruction offset in hex"
            ) from None
        if offset >= fn.size:
            raise ProbeError(
                f"offset 0x{offset:x} is beyond the end of {fn.module.name}`{fn.name} "
                f"(0x{fn.size:x} bytes)"
            )
        if offset not in instruction_boundaries(self._code(fn), fn.address):
            raise ProbeError(
                f"offset 0x{offset:x} is not on an instruction boundary of "
                f"{fn.module.name}`{fn.name}"
            )
        return self._site(fn, f"{offset:x}", ProbeKind.OFFSET, fn.address + offset)

    def _all_offsets(self, desc: ProbeDescription, fn: _Function) -> list[ProbeSite]:
        out = []
        for offset in instruction_boundaries(self._code(fn), fn.address):
            label = f"{offset:x}"
            if desc.field_matches(3, label):
                out.append(self._site(fn, label, ProbeKind.OFFSET, fn.address + offset))
        return out

    def _site(
        self,
        fn: _Function,
        name: str,
        kind: ProbeKind,
        address: int,
        *,
        return_how: ReturnHow | None = None,
        branch_target: int | None = None,
    ) -> ProbeSite:
        provider = provider_name(self.pid)
        module = fn.module.object_name
        info = ProbeInfo(
            self._ids.id_for(provider, module, fn.name, name), provider, module, fn.name, name
        )
        path, file_offset = file_position(fn.code_module, address, self.pid)
        return ProbeSite(
            info,
            kind,
            self.pid,
            address,
            fn.address,
            path,
            file_offset,
            return_how=return_how,
            branch_target=branch_target,
            module_bias=fn.code_module.bias,
        )


def file_position(module: Module, address: int, pid: int) -> tuple[str, int]:
    """The file and file offset of a run-time address (what a uprobe attaches to)."""
    elf = module.elf
    if elf is None:
        return module.path, 0
    offset = elf.vaddr_to_offset(address - module.bias)
    path = module.path.removesuffix(" (deleted)")
    if not os.path.isabs(path):
        path = f"/proc/{pid}/root{path}"
    return path, offset if offset is not None else 0
