"""The dynamic-linker agent: glibc's ``r_debug`` protocol, seen from the tracer.

ld.so keeps a ``struct r_debug`` (``_r_debug``) with the head of the link_map
list and calls an empty function, ``r_brk`` (``_dl_debug_state``), whenever it
starts adding objects (RT_ADD), starts removing them (RT_DELETE) and when the
list is consistent again (RT_CONSISTENT). A breakpoint on ``r_brk`` therefore
sees every dlopen and dlclose. At each consistent point the agent re-reads the
module map and tells its subscribers which modules appeared and which went away
-- while the thread that loaded them is still stopped, before any code of a new
library has run (its initialisers run after the consistent point), so a
subscriber can plant breakpoints in it that its very first call will hit.
ld.so holds its load lock across ``r_brk``, so no other thread of the process
can map or unmap an object while that thread is stopped there.

glibc 2.35+ chains one ``r_debug`` per dlmopen namespace through ``r_next``
(``r_version`` 2, set once a second namespace exists); all namespaces share the
one ``r_brk``. The state of the whole process is the "busiest" namespace's.

Where the agent finds things, in order:

* the dynamic linker: the module at ``AT_BASE`` (auxv), which is right for
  renamed or relocated interpreters; a static executable has none.
* ``r_debug``: the executable's ``DT_DEBUG`` (filled in once ld.so ran, so for a
  grabbed process), else ld.so's ``_r_debug`` symbol (at a process's exec stop
  ``DT_DEBUG`` is still 0), else the executable's own ``_r_debug`` (static
  executables carry one for static dlopen).
* ``r_brk``: ``r_debug.r_brk`` once ld.so has filled it in, else the
  ``_dl_debug_state`` symbol of ld.so (or of a static executable).

Breakpoints in objects that went away are dropped without writing (the pages
are gone). Only addresses no longer covered by any module are dropped, so a
module map that changes shape without anything being unmapped never costs a
live breakpoint.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtproc._sys import procfs
from dtproc.breakpoints import AddressSpace, Breakpoint, BreakpointAction
from dtproc.elf import DynamicTag, SegmentType
from dtproc.errors import DtprocError
from dtproc.modules import Module, ModuleMap

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

_MAX_OBJECTS: Final = 65536
_MAX_NAMESPACES: Final = 256
# struct r_debug: r_version (int), r_map, r_brk, r_state (enum), r_ldbase; then, for
# r_version >= 2 (struct r_debug_extended), r_next.
_R_DEBUG: Final = struct.Struct("<i4xQQi4xQQ")
_R_DEBUG_V1_SIZE: Final = 40
_LINK_MAP: Final = struct.Struct("<QQQQQ")  # l_addr, l_name, l_ld, l_next, l_prev
_DYN: Final = struct.Struct("<qQ")


class RState(enum.IntEnum):
    """``r_state``: what ld.so is doing to the list of loaded objects."""

    CONSISTENT = 0
    ADD = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class RDebug:
    """One namespace's ``struct r_debug`` as read from the process."""

    address: int
    version: int
    r_map: int  # head of the namespace's link_map list
    r_brk: int
    state: int  # an RState value, unless the memory is not what we think
    ldbase: int
    next: int  # r_next: the next namespace's r_debug (0 unless version >= 2)


@dataclass(frozen=True, slots=True)
class LinkMapEntry:
    """One object on a namespace's link_map list."""

    namespace: int  # 0 for the base namespace, then in r_next order
    base: int  # l_addr: the load bias
    name: str  # l_name ("" for the executable; dlmopen proxies repeat ld.so's)
    dynamic: int  # l_ld: its dynamic section
    address: int  # of the link_map itself


@dataclass(frozen=True, slots=True)
class ModulesChanged:
    """Delivered at a consistent point: what appeared and what went away since the last one.

    ``tid`` is the thread stopped at ``r_brk`` (the one that loaded or unloaded) while
    subscribers run; ``modules`` is the new module map, also ``Tracee.modules`` by then.
    """

    pid: int
    added: tuple[Module, ...]
    removed: tuple[Module, ...]
    modules: ModuleMap
    tid: int


Subscriber = Callable[[ModulesChanged], None]
StateHook = Callable[[RState], "BreakpointAction | None"]


class RtldAgent:
    """Watches one process's dynamic linker through a breakpoint on ``r_brk``.

    Re-attach (:meth:`attach` again) after the process execs: the breakpoint
    went with the old image. Subscribers and state hooks stay registered.
    """

    def __init__(self, tracee: Tracee) -> None:
        self.tracee = tracee
        self.r_debug = 0
        self.r_brk = 0
        self.state = RState.CONSISTENT
        self.hits = 0
        self.consistent_points = 0
        self._bp: Breakpoint | None = None
        self._space: AddressSpace | None = None
        self._subscribers: list[Subscriber] = []
        self._state_hooks: list[StateHook] = []
        self._known: ModuleMap | None = None

    # -- set-up ----------------------------------------------------------------------
    def attach(self) -> bool:
        """Find r_debug and r_brk and plant the breakpoint; False when there is no rtld.

        Idempotent within one process image; after an exec it attaches to the new one.
        """
        if self.attached:
            return True
        self.reset()
        if not self.locate():
            return False
        self._space = self.tracee.address_space
        self._bp = self.tracee.add_breakpoint(self.r_brk, self._on_brk)
        return True

    def locate(self) -> bool:
        """Find r_debug and r_brk without planting anything (works on read-only grabs too).

        True when there is an r_brk to watch; :meth:`link_map` needs ``r_debug`` only.
        """
        modules = self.tracee.refresh_modules()
        self._known = modules
        owners = _owners(self.tracee.pid, modules)
        self.r_debug = self._find_r_debug(modules, owners)
        self.r_brk = self._find_r_brk(owners)
        if self.r_debug:
            self.state = self._read_state()
        return bool(self.r_brk)

    def detach(self) -> None:
        """Remove the breakpoint (if it is still in this image) and stop watching."""
        if self._bp is not None and self._current_image():
            self._bp.remove()
        self._bp = None
        self._space = None

    def reset(self) -> None:
        """Forget the process image (after an exec); :meth:`attach` finds everything again."""
        self.detach()
        self.r_debug = 0
        self.r_brk = 0
        self.state = RState.CONSISTENT
        self._known = None

    @property
    def attached(self) -> bool:
        """Watching the current image (an exec makes this False until attach())."""
        return self._bp is not None and self._bp.active and self._current_image()

    def _current_image(self) -> bool:
        try:
            return self._space is self.tracee.address_space
        except DtprocError:
            return False  # the process is gone

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call *subscriber* at each consistent point that changed the module list."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def on_state(self, hook: StateHook) -> None:
        """Call *hook* with the state at every r_brk hit (it may stop the thread there)."""
        if hook not in self._state_hooks:
            self._state_hooks.append(hook)

    def off_state(self, hook: StateHook) -> None:
        if hook in self._state_hooks:
            self._state_hooks.remove(hook)

    # -- finding the linker's data ------------------------------------------------------
    def _find_r_debug(self, modules: ModuleMap, owners: list[Module]) -> int:
        main = modules.main
        if main is not None:
            addr = self._dt_debug(main)
            if addr:
                return addr
        return _symbol_in(owners, "_r_debug")

    def _dt_debug(self, main: Module) -> int:
        """The executable's DT_DEBUG as it is in memory (ld.so writes it at start-up)."""
        elf = main.elf
        if elf is None:
            return 0
        dyn = next((s for s in elf.segments if s.type == SegmentType.DYNAMIC), None)
        if dyn is None:
            return 0
        data = self.tracee.read_partial(dyn.vaddr + main.bias, dyn.memsz)
        for tag, value in _DYN.iter_unpack(data[: len(data) - len(data) % _DYN.size]):
            if tag == DynamicTag.NULL:
                break
            if tag == DynamicTag.DEBUG:
                return int(value)
        return 0

    def _find_r_brk(self, owners: list[Module]) -> int:
        if self.r_debug:
            try:
                r_brk = self.read_r_debug(self.r_debug).r_brk
            except DtprocError:
                r_brk = 0
            if r_brk:
                return r_brk
        return _symbol_in(owners, "_dl_debug_state")

    # -- reading the linker's state ---------------------------------------------------
    def read_r_debug(self, address: int) -> RDebug:
        """One namespace's r_debug (``r_next`` only where ``r_version`` says it exists)."""
        raw = self.tracee.read_partial(address, _R_DEBUG.size)
        if len(raw) < _R_DEBUG_V1_SIZE:
            self.tracee.read(address, _R_DEBUG_V1_SIZE)  # raises with the reason
        version, r_map, r_brk, r_state, ldbase, r_next = _R_DEBUG.unpack(
            raw.ljust(_R_DEBUG.size, b"\0")
        )
        return RDebug(
            address, version, r_map, r_brk, r_state, ldbase, r_next if version >= 2 else 0
        )

    def namespaces(self) -> list[RDebug]:
        """The r_debug of every link-map namespace, the base namespace first."""
        out: list[RDebug] = []
        seen: set[int] = set()
        addr = self.r_debug
        while addr and addr not in seen and len(out) < _MAX_NAMESPACES:
            seen.add(addr)
            rd = self.read_r_debug(addr)
            out.append(rd)
            addr = rd.next
        return out

    def current_state(self) -> RState:
        """ADD or DELETE while any namespace is changing, else CONSISTENT."""
        return _overall(rd.state for rd in self.namespaces())

    def _read_state(self) -> RState:
        try:
            return self.current_state()
        except DtprocError:
            return RState.CONSISTENT

    def link_map(self) -> list[LinkMapEntry]:
        """Every loaded object, namespace by namespace, in link order."""
        entries: list[LinkMapEntry] = []
        seen: set[int] = set()
        for index, rd in enumerate(self.namespaces()):
            lm = rd.r_map
            while lm and lm not in seen and len(entries) < _MAX_OBJECTS:
                seen.add(lm)
                l_addr, l_name, l_ld, l_next, _ = _LINK_MAP.unpack(
                    self.tracee.read(lm, _LINK_MAP.size)
                )
                name = self.tracee.read_cstring(l_name).decode(errors="replace") if l_name else ""
                entries.append(LinkMapEntry(index, l_addr, name, l_ld, lm))
                lm = l_next
        return entries

    # -- the breakpoint ---------------------------------------------------------------
    def _on_brk(self, tracee: Tracee, tid: int) -> BreakpointAction | None:
        self.hits += 1
        if not self.r_debug:
            # Found r_brk by symbol but no r_debug: by its first call ld.so has filled in
            # the executable's DT_DEBUG.
            modules = tracee.refresh_modules()
            self.r_debug = self._find_r_debug(modules, _owners(tracee.pid, modules))
        state = self._read_state() if self.r_debug else RState.CONSISTENT
        self.state = state
        if state is RState.CONSISTENT:
            self.consistent_points += 1
            self._announce(tid)
        action: BreakpointAction | None = None
        for hook in list(self._state_hooks):
            if hook(state) is BreakpointAction.STOP:
                action = BreakpointAction.STOP
        return action

    def _announce(self, tid: int) -> None:
        before = self._known
        after = self.tracee.refresh_modules()
        self._known = after
        added, removed = _difference(before, after)
        self._forget_unmapped(removed, after)
        if not added and not removed:
            return
        change = ModulesChanged(self.tracee.pid, added, removed, after, tid)
        for sub in list(self._subscribers):
            sub(change)

    def _forget_unmapped(self, removed: Iterable[Module], now: ModuleMap) -> None:
        """Drop breakpoints whose pages went with a removed module (nothing to restore)."""
        space = self.tracee.address_space
        for mod in removed:
            for start, end in _uncovered(mod.start, mod.end, now):
                space.forget_range(start, end)


def _owners(pid: int, modules: ModuleMap) -> list[Module]:
    """Who may own r_debug: the dynamic linker (at AT_BASE), then the executable."""
    out: list[Module] = []
    try:
        base = procfs.read_auxv(pid).get(procfs.AT_BASE, 0)
    except OSError:
        base = 0
    linker = modules.module_at(base) if base else None
    if linker is not None:
        out.append(linker)
    if modules.main is not None:
        out.append(modules.main)
    return out


def _symbol_in(modules: Iterable[Module], name: str) -> int:
    for mod in modules:
        table = mod.symbols
        sym = table.lookup(name) if table is not None else None
        if sym is not None and sym.value:
            return sym.value + mod.bias
    return 0


def _overall(states: Iterable[int]) -> RState:
    seen = set(states)
    for st in (RState.DELETE, RState.ADD):
        if st in seen:
            return st
    return RState.CONSISTENT


def _identity(mod: Module) -> tuple[str, int, int, int]:
    return (mod.path, mod.start, mod.end, mod.bias)


def _difference(
    before: ModuleMap | None, after: ModuleMap
) -> tuple[tuple[Module, ...], tuple[Module, ...]]:
    old = {_identity(m): m for m in before} if before is not None else {}
    new = {_identity(m): m for m in after}
    added = tuple(m for k, m in new.items() if k not in old)
    removed = tuple(m for k, m in old.items() if k not in new)
    return added, removed


def _uncovered(start: int, end: int, modules: ModuleMap) -> list[tuple[int, int]]:
    """The parts of [start, end) that no module of *modules* covers."""
    out: list[tuple[int, int]] = []
    cursor = start
    for mod in sorted(modules, key=lambda m: m.start):
        if mod.end <= cursor or mod.start >= end:
            continue
        if mod.start > cursor:
            out.append((cursor, mod.start))
        cursor = max(cursor, mod.end)
    if cursor < end:
        out.append((cursor, end))
    return out
