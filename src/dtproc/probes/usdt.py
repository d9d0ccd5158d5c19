"""The USDT provider: the static probes a program ships (``<sys/sdt.h>``, ``.note.stapsdt``).

``python1234:MODULE:FUNCTION:NAME`` names, in process 1234, the probes of USDT provider
``python``: the provider field is the note's provider followed by the pid, as dtrace spells
USDT providers once ``$target`` is expanded. Probe names are spelled as dtrace spells them:
the ``__`` that C macros need becomes ``-`` (``function__entry`` is ``function-entry``).
FUNCTION is the function whose symbol contains the probe, by the name the pid provider
gives it (empty when no symbol does), and MODULE is as for the pid provider. Every note
is one site; copies of a probe inlined into one function are several sites of one probe.

Argument specs that name a symbol (``8@counter(%rip)``, ``8@$table``) are resolved here,
against the module's symbols and load bias, into absolute addresses and constants: at a hit
:func:`dtproc.probes.context.usdt_arg` needs registers and memory only, never the ELF file.

A probe with a semaphore runs its argument set-up only while the semaphore (an ``unsigned
short`` counter at a fixed address) is non-zero. Kernel uprobes keep it up themselves
(``ref_ctr_offset``); under ptrace :class:`SemaphoreHold` does it by writing memory.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple

from dtproc.d import ProbeDescription, ProbeInfo
from dtproc.errors import DtprocError, ProbeError
from dtproc.modules import Module, ModuleMap, canonical_name
from dtproc.probes.pid import file_position
from dtproc.probes.sites import ProbeIds, ProbeKind, ProbeSite, candidate_modules
from dtproc.sdt import SdtArg, SdtArgKind, SdtProbe

__all__ = [
    "SemaphoreHold",
    "UsdtProbeName",
    "UsdtProvider",
    "dtrace_probe_name",
    "usdt_provider_name",
    "usdt_providers",
]

ReadMemory = Callable[[int, int], bytes]
WriteMemory = Callable[[int, bytes], None]

_SEMAPHORE_SIZE: Final = 2  # sys/sdt.h semaphores are unsigned short
_SEMAPHORE_MAX: Final = (1 << 16) - 1
_U64: Final = (1 << 64) - 1


def dtrace_probe_name(note_name: str) -> str:
    """A note's probe name as dtrace spells it: ``function__entry`` -> ``function-entry``."""
    return note_name.replace("__", "-")


def usdt_provider_name(provider: str, pid: int) -> str:
    """A USDT provider of one process, as descriptions name it: ``python`` -> ``python1234``."""
    return f"{provider}{pid}"


class _Function(NamedTuple):
    name: str  # "" when no function symbol contains the probe
    address: int  # run-time start (the probe's own address when there is no function)


def _function_of(module: Module, note: SdtProbe) -> _Function:
    address = note.pc + module.bias
    table = module.symbols
    found = table.at(note.pc) if table is not None else None
    if table is None or found is None or not found[0].is_function:
        return _Function("", address)
    return _Function(canonical_name(table, found[0]), address - found[1])


def _notes(module: Module, pid: int | None) -> Sequence[SdtProbe]:
    """The module's USDT notes; a malformed note is reported with the process it is in."""
    if module.is_vdso or module.elf is None:
        return ()
    try:
        return module.elf.sdt_probes()
    except DtprocError as exc:
        where = f"pid {pid}: " if pid is not None else ""
        raise ProbeError(f"{where}cannot read the USDT probes of {module.path}: {exc}") from None


class UsdtProbeName(NamedTuple):
    """One USDT probe of a module as ``dtrace -l`` lists it (a row a caller may unpack)."""

    provider: str  # the note's provider, without the pid
    module: str
    function: str
    name: str  # dtrace spelling
    nargs: int


def usdt_providers(modules: Iterable[Module]) -> list[UsdtProbeName]:
    """Every USDT probe of *modules*, once each (inlined copies folded), in note order."""
    seen: dict[tuple[str, str, str, str], UsdtProbeName] = {}
    for module in modules:
        for note in _notes(module, None):
            fn = _function_of(module, note)
            row = UsdtProbeName(
                note.provider, module.name, fn.name, dtrace_probe_name(note.name), len(note.args)
            )
            seen.setdefault(row[:4], row)
    return list(seen.values())


class UsdtProvider:
    """Matches USDT descriptions against one process's modules.

    *read* is not needed to place USDT sites (notes and symbols come from the files); it is
    taken so that the session builds every provider of a process the same way.
    """

    def __init__(self, pid: int, read: ReadMemory, ids: ProbeIds) -> None:
        self.pid = pid
        self._read = read
        self._ids = ids

    def sites(
        self, desc: ProbeDescription, modules: ModuleMap, only: Sequence[Module] | None = None
    ) -> list[ProbeSite]:
        """Every USDT site *desc* names in *modules* (or just in *only*, e.g. newly loaded ones)."""
        out: list[ProbeSite] = []
        for module in candidate_modules(desc, modules, only):
            for note in _notes(module, self.pid):
                site = self._match(desc, module, note)
                if site is not None:
                    out.append(site)
        return out

    def _match(self, desc: ProbeDescription, module: Module, note: SdtProbe) -> ProbeSite | None:
        provider = usdt_provider_name(note.provider, self.pid)
        name = dtrace_probe_name(note.name)
        if not (desc.field_matches(0, provider) and desc.field_matches(3, name)):
            return None
        fn = _function_of(module, note)
        if not desc.field_matches(2, fn.name):
            return None
        info = ProbeInfo(
            self._ids.id_for(provider, module.object_name, fn.name, name),
            provider,
            module.object_name,
            fn.name,
            name,
        )
        address = note.pc + module.bias
        path, file_offset = file_position(module, address, self.pid)
        return ProbeSite(
            info,
            ProbeKind.USDT,
            self.pid,
            address,
            fn.address,
            path,
            file_offset,
            usdt_args=tuple(self._resolved(module, info, i, a) for i, a in enumerate(note.args)),
            semaphore=note.semaphore + module.bias if note.semaphore else 0,
            semaphore_file_offset=note.semaphore_offset or 0,
            module_bias=module.bias,
        )

    def _resolved(self, module: Module, info: ProbeInfo, i: int, arg: SdtArg) -> SdtArg:
        """*arg* with its symbol replaced by the symbol's run-time address.

        ``sym(%rip)`` is the symbol's address itself (the assembler's meaning), so it becomes
        an absolute address with no base register; ``sym(%reg)`` adds the address to the
        displacement; ``$sym`` adds it to the constant.
        """
        if arg.symbol is None:
            return arg
        table = module.symbols
        sym = table.lookup(arg.symbol) if table is not None else None
        if sym is None:
            raise ProbeError(
                f"USDT probe {info}: argument {i} ({arg.text}) refers to symbol "
                f"'{arg.symbol}', which {module.path} does not define (is the file stripped? "
                "install its debug symbols)"
            )
        where = (sym.value + module.bias) & _U64
        if arg.kind is SdtArgKind.CONSTANT:
            return dataclasses.replace(arg, constant=arg.constant + where, symbol=None)
        register = None if arg.register == "rip" else arg.register
        return dataclasses.replace(
            arg, register=register, displacement=arg.displacement + where, symbol=None
        )


class SemaphoreHold:
    """Keeps the semaphores of enabled USDT probes up in one process (the ptrace way).

    Each :meth:`acquire` is undone by exactly one :meth:`release`. Holds are counted per
    semaphore address -- sites of one probe, and sometimes several probes, share one -- and
    the process's counter is raised once while any hold on it lasts: the program only asks
    whether it is zero, and one write each way leaves the least behind if we die in
    between. Others (another tracer, kernel uprobes) may hold the same counter, so it is
    read, changed and written back, never set outright; do it while the process is stopped.
    """

    def __init__(self, pid: int, read: ReadMemory, write: WriteMemory) -> None:
        self.pid = pid
        self._read = read
        self._write = write
        self._holds: dict[int, int] = {}
        self._lock = threading.Lock()

    def holds(self, address: int) -> int:
        """How many holds we have on the semaphore at *address*."""
        with self._lock:
            return self._holds.get(address, 0)

    def acquire(self, site: ProbeSite) -> bool:
        """Raise *site*'s semaphore; False when it has none (nothing to undo then)."""
        address = site.semaphore
        if not address:
            return False
        with self._lock:
            count = self._holds.get(address, 0)
            if count == 0:
                try:
                    self._add(address, 1)
                except DtprocError as exc:
                    raise ProbeError(
                        f"pid {self.pid}: cannot enable the semaphore of USDT probe "
                        f"{site.info} at 0x{address:x}: {exc}"
                    ) from None
            self._holds[address] = count + 1
        return True

    def release(self, site: ProbeSite) -> bool:
        """Undo one :meth:`acquire` of *site*; False when we hold nothing there.

        A process that has exited, or a library since unloaded, is not an error: there is
        nothing left to lower.
        """
        address = site.semaphore
        with self._lock:
            count = self._holds.get(address, 0)
            if count == 0:
                return False
            if count > 1:
                self._holds[address] = count - 1
                return True
            del self._holds[address]
            self._lower_quietly(address)
        return True

    def release_all(self) -> None:
        """Lower every semaphore we hold (at the end of tracing)."""
        with self._lock:
            held, self._holds = self._holds, {}
            for address in held:
                self._lower_quietly(address)

    def forget(self, start: int = 0, end: int = 1 << 64) -> None:
        """Drop holds in ``[start, end)`` without writing: that memory is no longer the same
        (an exec replaced the image, a library was unloaded) and lowering it could corrupt
        whatever is mapped there now."""
        with self._lock:
            self._holds = {a: n for a, n in self._holds.items() if not start <= a < end}

    def _lower_quietly(self, address: int) -> None:
        try:
            self._add(address, -1)
        except DtprocError:
            pass  # the process (or the mapping) is gone: nothing to lower

    def _add(self, address: int, delta: int) -> None:
        value = int.from_bytes(self._read(address, _SEMAPHORE_SIZE), "little")
        value = min(max(value + delta, 0), _SEMAPHORE_MAX)
        self._write(address, value.to_bytes(_SEMAPHORE_SIZE, "little"))
