"""The dynamic-linker agent: glibc's ``r_debug`` protocol, seen from the tracer.

ld.so keeps a ``struct r_debug`` (``_r_debug``) with the head of the link_map
list and calls an empty function, ``r_brk`` (``_dl_debug_state``), whenever it
starts adding objects (RT_ADD), starts removing them (RT_DELETE) and when the
list is consistent again (RT_CONSISTENT). A breakpoint on ``r_brk`` therefore
sees every dlopen and dlclose; at each consistent point the agent re-reads the
module map and tells its subscribers which modules appeared and which went away
-- while the thread that loaded them is still stopped, before any code of a new
library has run. glibc 2.35+ chains one ``r_debug`` per dlmopen namespace
through ``r_next`` (``r_version`` 2); all share the one ``r_brk``.

At a process's exec stop ld.so has not run: ``r_debug`` is still zero, so the
agent takes ``r_brk`` from ld.so's own ``_dl_debug_state`` symbol. A grabbed
process has it filled in already (also reachable through the executable's
``DT_DEBUG``). Static executables carry their own ``_r_debug`` when they can
dlopen at all.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtproc.breakpoints import Breakpoint, BreakpointAction
from dtproc.errors import DtprocError
from dtproc.modules import Module, ModuleMap

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

DT_DEBUG: Final = 21
_MAX_OBJECTS: Final = 65536
_MAX_NAMESPACES: Final = 256
_R_DEBUG = struct.Struct("<i4xQQi4xQ")  # r_version, r_map, r_brk, r_state, r_ldbase
_LINK_MAP = struct.Struct("<QQQQQ")  # l_addr, l_name, l_ld, l_next, l_prev


class RState(enum.IntEnum):
    CONSISTENT = 0
    ADD = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class LinkMapEntry:
    namespace: int
    base: int  # l_addr: the load bias
    name: str  # l_name ("" for the executable)
    dynamic: int  # l_ld
    address: int  # of the link_map itself


@dataclass(frozen=True, slots=True)
class ModulesChanged:
    """Delivered at a consistent point: what appeared and what went away since the last one."""

    pid: int
    added: tuple[Module, ...]
    removed: tuple[Module, ...]
    modules: ModuleMap


Subscriber = Callable[[ModulesChanged], None]
StateHook = Callable[[RState], "BreakpointAction | None"]


class RtldAgent:
    """Watches one address space's dynamic linker through a breakpoint on ``r_brk``."""

    def __init__(self, tracee: Tracee) -> None:
        self.tracee = tracee
        self.r_debug = 0
        self.r_brk = 0
        self.state = RState.CONSISTENT
        self._bp: Breakpoint | None = None
        self._subscribers: list[Subscriber] = []
        self._state_hooks: list[StateHook] = []
        self._known: ModuleMap | None = None
        self.consistent_points = 0

    # -- set-up ----------------------------------------------------------------------
    def attach(self) -> bool:
        """Find r_debug and r_brk and plant the breakpoint; False when there is no rtld."""
        modules = self.tracee.refresh_modules()
        self._known = modules
        self.r_debug = self._find_r_debug(modules)
        self.r_brk = self._find_r_brk(modules)
        if not self.r_brk:
            return False
        self._bp = self.tracee.add_breakpoint(self.r_brk, self._on_brk)
        return True

    def detach(self) -> None:
        if self._bp is not None:
            self._bp.remove()
            self._bp = None

    def reset(self) -> None:
        """Forget everything after an exec: the breakpoint went with the old image."""
        self._bp = None
        self.r_debug = 0
        self.r_brk = 0
        self.state = RState.CONSISTENT
        self._known = None

    @property
    def attached(self) -> bool:
        return self._bp is not None

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call *subscriber* at each consistent point that changed the module list."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def on_state(self, hook: StateHook) -> None:
        """Call *hook* with the state at every r_brk hit (it may stop the thread there)."""
        self._state_hooks.append(hook)

    def _find_r_debug(self, modules: ModuleMap) -> int:
        main = modules.main
        if main is not None:
            addr = self._dt_debug(main)
            if addr:
                return addr
        for mod in _linkers(modules):
            sym = mod.symbols.lookup("_r_debug") if mod.symbols is not None else None
            if sym is not None:
                return sym.value + mod.bias
        return 0

    def _dt_debug(self, main: Module) -> int:
        elf = main.elf
        if elf is None:
            return 0
        dyn = next((s for s in elf.segments if s.type == 2), None)  # PT_DYNAMIC
        if dyn is None:
            return 0
        try:
            data = self.tracee.read(dyn.vaddr + main.bias, dyn.memsz)
        except DtprocError:
            return 0
        for tag, value in struct.iter_unpack("<qQ", data[: len(data) // 16 * 16]):
            if tag == 0:
                break
            if tag == DT_DEBUG:
                return int(value)
        return 0

    def _find_r_brk(self, modules: ModuleMap) -> int:
        if self.r_debug:
            try:
                _, _, r_brk, _, _ = self._read_r_debug(self.r_debug)
            except DtprocError:
                r_brk = 0
            if r_brk:
                return r_brk
        for mod in _linkers(modules):
            sym = mod.symbols.lookup("_dl_debug_state") if mod.symbols is not None else None
            if sym is not None:
                return sym.value + mod.bias
        return 0

    # -- reading the linker's state ---------------------------------------------------
    def _read_r_debug(self, addr: int) -> tuple[int, int, int, int, int]:
        version, r_map, r_brk, r_state, _ = _R_DEBUG.unpack(self.tracee.read(addr, _R_DEBUG.size))
        r_next = 0
        if version >= 2:
            r_next = int.from_bytes(self.tracee.read(addr + _R_DEBUG.size, 8), "little")
        return version, r_map, r_brk, r_state, r_next

    def namespaces(self) -> list[int]:
        """Addresses of the r_debug of every link-map namespace (base namespace first)."""
        out: list[int] = []
        addr = self.r_debug
        while addr and len(out) < _MAX_NAMESPACES and addr not in out:
            out.append(addr)
            addr = self._read_r_debug(addr)[4]
        return out

    def current_state(self) -> RState:
        """ADD or DELETE while any namespace is changing, else CONSISTENT."""
        states = [self._read_r_debug(ns)[3] for ns in self.namespaces()]
        for st in (RState.DELETE, RState.ADD):
            if st in states:
                return st
        return RState.CONSISTENT

    def link_map(self) -> list[LinkMapEntry]:
        """Every loaded object, namespace by namespace, in link order."""
        entries: list[LinkMapEntry] = []
        seen: set[int] = set()
        for index, ns in enumerate(self.namespaces()):
            lm = self._read_r_debug(ns)[1]
            while lm and lm not in seen and len(entries) < _MAX_OBJECTS:
                seen.add(lm)
                raw = self.tracee.read(lm, _LINK_MAP.size)
                l_addr, l_name, l_ld, l_next, _ = _LINK_MAP.unpack(raw)
                name = self.tracee.read_cstring(l_name).decode(errors="replace") if l_name else ""
                entries.append(LinkMapEntry(index, l_addr, name, l_ld, lm))
                lm = l_next
        return entries

    # -- the breakpoint ---------------------------------------------------------------
    def _on_brk(self, tracee: Tracee, tid: int) -> BreakpointAction | None:
        if not self.r_debug:
            self.r_debug = self._find_r_debug(tracee.refresh_modules())
        try:
            state = self.current_state() if self.r_debug else RState.CONSISTENT
        except DtprocError:
            return None
        self.state = state
        if state is RState.CONSISTENT:
            self.consistent_points += 1
            self._announce()
        action: BreakpointAction | None = None
        for hook in list(self._state_hooks):
            if hook(state) is BreakpointAction.STOP:
                action = BreakpointAction.STOP
        return action

    def _announce(self) -> None:
        before = self._known
        after = self.tracee.refresh_modules()
        self._known = after
        old = {(m.path, m.start): m for m in before} if before is not None else {}
        new = {(m.path, m.start): m for m in after}
        added = tuple(m for k, m in new.items() if k not in old)
        removed = tuple(m for k, m in old.items() if k not in new)
        if removed:
            for mod in removed:
                self.tracee.address_space.forget_range(mod.start, mod.end)
        if not added and not removed:
            return
        change = ModulesChanged(self.tracee.pid, added, removed, after)
        for sub in list(self._subscribers):
            sub(change)


def _linkers(modules: ModuleMap) -> list[Module]:
    """ld.so first (it owns r_debug), then the executable (static binaries own theirs)."""
    lds = [m for m in modules if m.basename.startswith("ld-") or m.basename.startswith("ld.so")]
    main = [m for m in modules if m.is_main]
    return lds + main
