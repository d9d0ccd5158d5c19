"""ustack(): the user stack of a stopped thread, captured now and symbolized later, as DTrace does.

DTrace splits a user stack in two.  When the probe fires, only program counters are recorded:
the pc of frame 0, then the return addresses of its callers, innermost first.  Names are
looked up when the record is printed, by the consumer.  That split is what makes ``@[ustack()]
= count()`` cheap: a stack is a tuple of integers, hashable, and an aggregation with a million
hits symbolizes each distinct stack once.

:func:`capture` is the first half.  It walks the stack with :func:`dtproc.unwind.unwind` over a
:class:`ProcessSpace`: the tracee's module map (re-read once when a pc falls outside it, for a
library loaded since), ``/proc/PID/mem`` read a page at a time (our breakpoints made invisible
in code), and ``/proc/PID/maps`` for stack bounds, kept per module-map generation.  The result,
:class:`UserStack`, holds the pid, the pcs and whether the walk reached the outermost frame.

:class:`Symbolizer` is the second half.  It names each pc the way illumos ``dt_print_ustack``
does (libdtrace's dt_consume.c):

* the symbol is looked up at the pc *as recorded* -- return addresses are not moved back by
  one, unlike gdb's frame names -- and printed as ``module`function+0xoff``, or
  ``module`function`` when the pc is the symbol's first byte;
* ``module`` is the basename of the object's link-map name, as libproc's ``Pobjname``
  gives it: a library by the name the dynamic linker loaded it under (its ``DT_SONAME``,
  ``libstdc++.so.6``, not the file ``libstdc++.so.6.0.30`` the symlink leads to), the vDSO
  as ``linux-vdso.so.1``, the executable by its file's basename (``date`main+0x2e``);
* a pc in a module but in no symbol is ``module`0x<pc>``, with the absolute address;
* a pc in no module is ``0x<pc>``.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from dtproc._sys import procfs
from dtproc._sys.regs import UserRegs
from dtproc.errors import ElfError
from dtproc.modules import VDSO, Module, ModuleMap, canonical_name
from dtproc.unwind import DEFAULT_MAX_FRAMES, unwind

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "MAX_READ",
    "Frame",
    "ProcessSpace",
    "Symbolizer",
    "UserStack",
    "capture",
    "object_name",
]

#: The most one read of the walk asks for; the walker's own reads are a few words each.
MAX_READ: Final = 1024
_PAGE: Final = 4096
_ADDRESS_LIMIT: Final = 1 << 64
# Modules whose frames stay cached, and addresses remembered per module.
_MODULE_CACHE_LIMIT: Final = 256
_ADDRESSES_PER_MODULE: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class UserStack:
    """The pcs of one user stack, innermost first: the pc of frame 0, then return addresses.

    Equal stacks (same pid, pcs and completeness) compare and hash equal, so a stack is an
    aggregation key; ``reason`` (why the walk stopped short) and ``tid`` do not take part,
    since a reason may quote a stack address that differs between otherwise equal stacks.
    """

    pid: int
    pcs: tuple[int, ...]
    complete: bool
    reason: str | None = field(default=None, compare=False)
    tid: int | None = field(default=None, compare=False)
    modules: ModuleMap | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.pcs)

    def frames(self, symbolizer: Symbolizer | None = None) -> tuple[Frame, ...]:
        """Each pc named by *symbolizer*, by default one over the module map of the moment
        the stack was taken (so a library unloaded since still names its frames)."""
        if symbolizer is None:
            if self.modules is None:
                return tuple(Frame(pc, None, None, 0) for pc in self.pcs)
            symbolizer = Symbolizer.of(self.modules)
        return tuple(symbolizer.frame(pc) for pc in self.pcs)

    def __str__(self) -> str:
        """One frame a line, as ``ustack()`` prints them."""
        return "\n".join(frame.text for frame in self.frames())

    def symbolize(self, modules: ModuleMap) -> tuple[Frame, ...]:
        """Each pc named with *modules*, through the symbolizer cached for that map."""
        return self.frames(Symbolizer.of(modules))


@dataclass(frozen=True, slots=True)
class Frame:
    """One named pc.

    ``module`` is the object's name (:func:`object_name`; None: the pc is in no object).
    ``offset`` is the pc's distance from the start of ``function``; without a function, the
    pc's file address in the module (the pc minus the load bias); without a module, 0.
    """

    address: int
    module: str | None
    function: str | None
    offset: int

    @property
    def text(self) -> str:
        """``module`function+0xoff`` as DTrace prints it (see the module docstring)."""
        if self.module is None:
            return f"0x{self.address:x}"
        if self.function is None:
            return f"{self.module}`0x{self.address:x}"
        if self.offset:
            return f"{self.module}`{self.function}+0x{self.offset:x}"
        return f"{self.module}`{self.function}"

    def __str__(self) -> str:
        return self.text


# ----------------------------------------------------------------------------- capture


def capture(
    tracee: Tracee, tid: int, regs: UserRegs, max_frames: int = DEFAULT_MAX_FRAMES
) -> UserStack:
    """Walk the stack of thread *tid* of *tracee*, stopped with registers *regs*.

    Called by :meth:`dtproc.tracee.Tracee.ustack` in the tracee's driving thread (a
    breakpoint callback, a stopped process).  Never raises for a broken stack: the pcs found
    up to the break come back with ``complete=False`` and the reason.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    space = ProcessSpace(tracee)
    walked = unwind(regs, space, max_frames)
    return UserStack(tracee.pid, walked.frames, walked.complete, walked.reason, tid, tracee.modules)


@dataclass(slots=True)
class _Maps:
    """/proc/PID/maps as read for one generation of the module map.

    ``settled`` holds the starts of mappings that were looked at after a re-read and hold no
    module (anonymous code, a JIT, a data file): a pc there does not re-read anything again.
    """

    generation: ModuleMap
    mappings: list[procfs.Mapping]
    starts: list[int]
    settled: set[int] = field(default_factory=set)

    @classmethod
    def read(cls, pid: int, generation: ModuleMap) -> _Maps:
        mappings = sorted(procfs.read_maps(pid), key=lambda m: m.start)
        return cls(generation, mappings, [m.start for m in mappings])

    def at(self, address: int) -> procfs.Mapping | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.mappings[i].end:
            return self.mappings[i]
        return None


_maps_by_tracee: weakref.WeakKeyDictionary[Tracee, _Maps] = weakref.WeakKeyDictionary()
_maps_lock = threading.Lock()


class ProcessSpace:
    """A :class:`dtproc.unwind.AddressSpace` over a live, stopped process, for one walk.

    Memory and maps change while a process runs, so a space is made per capture; what
    outlives it (the parsed maps) is keyed by the module map's generation.  Within one walk
    the module map is re-read at most once (a pc in a library mapped since the last
    rtld event) and ``/proc/PID/maps`` at most once (a pc or stack mapped since).
    """

    def __init__(self, tracee: Tracee) -> None:
        self._tracee = tracee
        self._modules = tracee.modules
        self._maps: _Maps | None = None
        self._maps_reread = False
        self._modules_reread = False
        self._pages: dict[int, bytes] = {}

    # -- AddressSpace
    def module_at(self, address: int) -> Module | None:
        module = self._modules.module_at(address)
        if module is not None:
            return module
        mapping = self._mapping_at(address)
        if mapping is None or mapping.start in self._cached_maps().settled:
            return None
        if _may_be_module(mapping) and not self._modules_reread:
            self._modules_reread = True
            self._modules = self._tracee.refresh_modules()
            self._cached_maps().generation = self._modules
            module = self._modules.module_at(address)
            if module is not None:
                return module
        self._cached_maps().settled.add(mapping.start)
        return None

    def read(self, address: int, size: int) -> bytes:
        """Up to *size* (at most :data:`MAX_READ`) bytes; short at the first unmapped byte.

        The thread is stopped, so memory holds still during a walk: it is read a page at a
        time, once (a 20-frame stack is two or three reads, not thirty).  Pages of modules may
        hold our int3 bytes, replaced by the original code: the walker recognises prologues
        and sigreturn trampolines by their bytes.
        """
        end = address + min(size, MAX_READ)
        if not 0 <= address < end <= _ADDRESS_LIMIT:
            return b""
        page = address & -_PAGE
        data = self._page(page)
        if end <= page + _PAGE or len(data) < _PAGE:
            return data[address - page : end - page]
        return data[address - page :] + self._page(page + _PAGE)[: end - page - _PAGE]

    def _page(self, page: int) -> bytes:
        data = self._pages.get(page)
        if data is None:
            data = self._tracee.read_partial(page, _PAGE)
            # A read-only handle has no breakpoints (and may not ask for them).
            if data and not self._tracee.readonly and self._modules.module_at(page) is not None:
                data = self._tracee.address_space.overlay(page, data)
            self._pages[page] = data
        return data

    def stack_bounds(self, address: int) -> tuple[int, int] | None:
        mapping = self._mapping_at(address)
        if mapping is None or "w" not in mapping.perms:
            return None
        return mapping.start, mapping.end

    # -- the maps
    def _cached_maps(self) -> _Maps:
        if self._maps is None:
            with _maps_lock:
                maps = _maps_by_tracee.get(self._tracee)
            if maps is None or maps.generation is not self._modules:
                maps = self._reread_maps()
            self._maps = maps
        return self._maps

    def _reread_maps(self) -> _Maps:
        self._maps_reread = True
        try:
            maps = _Maps.read(self._tracee.pid, self._modules)
        except OSError:
            maps = _Maps(self._modules, [], [])
        with _maps_lock:
            _maps_by_tracee[self._tracee] = maps
        self._maps = maps
        return maps

    def _mapping_at(self, address: int) -> procfs.Mapping | None:
        """The mapping holding *address*, reading the maps again once if none does."""
        mapping = self._cached_maps().at(address)
        if mapping is None and not self._maps_reread:
            mapping = self._reread_maps().at(address)
        return mapping


def _may_be_module(mapping: procfs.Mapping) -> bool:
    """Whether a module map built now could hold *mapping* (a file, or the vDSO)."""
    return mapping.path == VDSO or (mapping.path.startswith("/") and mapping.inode != 0)


# ----------------------------------------------------------------------------- symbols


class Symbolizer:
    """Names pcs with one module map, the way ``dt_print_ustack`` prints them.

    Frames are cached per module -- its file and where it is loaded -- not per map, so the
    next generation of a process's map (after a dlopen) and other processes running the same
    binary at the same addresses reuse them.  :meth:`of` keeps one symbolizer per map.
    """

    _by_map: weakref.WeakKeyDictionary[ModuleMap, Symbolizer] = weakref.WeakKeyDictionary()
    _modules: OrderedDict[tuple[Module, int], _ModuleFrames] = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, modules: ModuleMap) -> None:
        self.modules: Final = modules

    @classmethod
    def of(cls, modules: ModuleMap) -> Symbolizer:
        """The symbolizer of *modules* (one per module-map generation)."""
        with cls._lock:
            found = cls._by_map.get(modules)
            if found is None:
                found = cls._by_map[modules] = cls(modules)
            return found

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every cached frame (benchmarks measure cold symbolization with this)."""
        with cls._lock:
            cls._by_map.clear()
            cls._modules.clear()

    def frame(self, address: int) -> Frame:
        module = self.modules.module_at(address)
        if module is None:
            return Frame(address, None, None, 0)
        return self._frames_of(module).frame(address)

    def frames(self, addresses: Sequence[int]) -> tuple[Frame, ...]:
        return tuple(self.frame(a) for a in addresses)

    def _frames_of(self, module: Module) -> _ModuleFrames:
        # Module equality leaves out the parsed file; its identity tells a rebuilt binary
        # at the same path and addresses apart (the key keeps that object alive).
        key = (module, id(module.elf))
        cls = type(self)
        with cls._lock:
            found = cls._modules.get(key)
            if found is None:
                found = cls._modules[key] = _ModuleFrames(module)
                if len(cls._modules) > _MODULE_CACHE_LIMIT:
                    cls._modules.popitem(last=False)
            else:
                cls._modules.move_to_end(key)
            return found


class _ModuleFrames:
    """The frames named so far in one loaded module."""

    def __init__(self, module: Module) -> None:
        self.module: Final = module
        self.name: Final = object_name(module)
        self.frames: dict[int, Frame] = {}

    def frame(self, address: int) -> Frame:
        found = self.frames.get(address)
        if found is None:
            if len(self.frames) >= _ADDRESSES_PER_MODULE:
                self.frames.clear()
            found = self.frames[address] = self._name(address)
        return found

    def _name(self, address: int) -> Frame:
        """The symbol holding *address*, else the PLT stub, else none."""
        vaddr = address - self.module.bias
        elf = self.module.elf
        if elf is None:
            return Frame(address, self.name, None, vaddr)
        try:
            table = elf.full_symbols()
            hit = table.at(vaddr)
            if hit is not None:
                return Frame(address, self.name, canonical_name(table, hit[0]), hit[1])
            stub = elf.plt_entry_at(vaddr)
        except ElfError:
            stub = None
        if stub is not None:
            return Frame(address, self.name, stub[0], stub[1])
        return Frame(address, self.name, None, vaddr)


def object_name(module: Module) -> str:
    """The name DTrace gives a module in a stack (see :attr:`Module.object_name`)."""
    return module.object_name
