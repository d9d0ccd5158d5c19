"""Where a created process first stops: exec, preinit, postinit or main.

* ``exec``: the exec event stop; nothing of the program has run, not even ld.so.
* ``preinit``: every library is mapped and relocated, no initialiser has run.
  For a dynamic executable that is ld.so's first consistent ``r_brk`` point
  (the executable's ``DT_PREINIT_ARRAY`` and the libraries' constructors run
  after it, from ``_dl_init``); for a static one, the first of the
  executable's own initialisers.
* ``postinit``: every initialiser has run and main has not. glibc runs the
  executable's ``DT_INIT`` and ``DT_INIT_ARRAY`` last, from
  ``__libc_start_main``, so the point is the return from the last of them: a
  breakpoint on that function's entry reads the return address off the stack
  and plants a one-shot breakpoint there, which fires only in the same frame
  (same stack pointer). Without initialisers of its own, main's first
  instruction, or else (dynamic) the entry point: ld.so jumps there once every
  library's initialisers have run.
* ``main``: the first instruction of main, found by its symbol or, in stripped
  executables, from the argument ``_start`` passes to ``__libc_start_main``.

Where a point cannot be found, the nearest earlier one is used (main, then
postinit, preinit, exec) and the arrival's ``note`` says why. While armed, a
rendezvous holds the process at its exec stops (``Tracee.stop_on_exec``) so that
it can arm again in the new image before anything of it runs; with
``follow_exec`` it keeps doing so after arriving, which makes "stop at main after
every exec" one loop.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtproc._sys import procfs
from dtproc.breakpoints import AddressSpace, Breakpoint, BreakpointAction
from dtproc.elf import ElfFile, RelocationType
from dtproc.errors import DtprocError, ProcessDied
from dtproc.events import BreakpointHit, Event, Exec, Exited, Killed, SignalReceived
from dtproc.insn import Flow, Instruction, decode
from dtproc.modules import Module
from dtproc.rtld import RState, RtldAgent
from dtproc.types import ProcessState

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

_START_WINDOW: Final = 96
_WORD: Final = struct.Struct("<Q")
_U64: Final = (1 << 64) - 1


class _Dt(enum.IntEnum):
    """Dynamic tags of the initialisers (``dtproc.elf.DynamicTag`` does not list them)."""

    INIT = 12
    INIT_ARRAY = 25
    INIT_ARRAYSZ = 27
    PREINIT_ARRAY = 32
    PREINIT_ARRAYSZ = 33


class StopPoint(enum.Enum):
    EXEC = "exec"
    PREINIT = "preinit"
    POSTINIT = "postinit"
    MAIN = "main"

    @classmethod
    def parse(cls, text: str) -> StopPoint:
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise DtprocError(f"unknown stop point {text!r}: use one of {names}") from None


_EARLIER: Final = {
    StopPoint.MAIN: StopPoint.POSTINIT,
    StopPoint.POSTINIT: StopPoint.PREINIT,
    StopPoint.PREINIT: StopPoint.EXEC,
}


@dataclass(frozen=True, slots=True)
class Arrival:
    """The process is stopped at ``point`` (``requested`` unless it had to fall back)."""

    requested: StopPoint
    point: StopPoint
    address: int | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Initializers:
    """The executable's own initialisers, at run-time addresses, in the order they run."""

    preinit_array: tuple[int, ...]
    init: int | None  # DT_INIT (``_init``)
    init_array: tuple[int, ...]

    @property
    def in_order(self) -> tuple[int, ...]:
        return (*self.preinit_array, *(() if self.init is None else (self.init,)), *self.init_array)

    @property
    def run_by_libc(self) -> tuple[int, ...]:
        """What ``__libc_start_main`` runs (ld.so runs a dynamic executable's preinit_array)."""
        return (*(() if self.init is None else (self.init,)), *self.init_array)


class Rendezvous:
    """Arms the breakpoint (or rtld hook) for one stop point and recognises the arrival.

    Feed it every event from :meth:`Tracee.wait`; :meth:`arrived` returns the
    :class:`Arrival` when the process got there (the thread stays stopped). An
    :class:`~dtproc.events.Exec` while armed arms again in the new image, the
    process being held at its exec stop: resume it unless ``arrived`` returned
    the exec arrival itself.
    """

    def __init__(
        self, tracee: Tracee, rtld: RtldAgent | None = None, *, follow_exec: bool = False
    ) -> None:
        self.tracee = tracee
        self.rtld = rtld if rtld is not None else RtldAgent(tracee)
        self._own_rtld = rtld is None
        self.follow_exec = follow_exec
        self.requested = StopPoint.EXEC
        self.point = StopPoint.EXEC
        self.note: str | None = None
        self._armed = False
        self._space: AddressSpace | None = None
        self._bps: list[Breakpoint] = []
        self._stop_at: int | None = None  # the address whose hit is the arrival
        self._waiting_rtld = False
        self._rtld_hit = False
        self._calls_left = 0
        self._return_sp = 0
        self._saved_stop_on_exec: bool | None = None

    @property
    def armed(self) -> bool:
        return self._armed

    # -- arming ------------------------------------------------------------------------
    def arm(self, requested: StopPoint) -> Arrival | None:
        """Prepare to stop at *requested*; an Arrival at once when it is the exec stop."""
        self.disarm()
        self._hold_exec()
        self.requested = requested
        self.note = None
        point = requested
        failures: list[str] = []
        while point is not StopPoint.EXEC:
            reason = self._arm_point(point)
            if reason is None:
                break
            failures.append(f"no {point.value} point ({reason})")
            point = _EARLIER[point]
        self.point = point
        if failures:
            self.note = (
                f"pid {self.tracee.pid}: {'; '.join(failures)}: stopping at {point.value} instead"
            )
        if point is StopPoint.EXEC:
            return self._arrive(point, None)
        self._armed = True
        self._space = self.tracee.address_space
        return None

    def _arm_point(self, point: StopPoint) -> str | None:
        """Plant what *point* needs; None when done, else why it cannot be found."""
        if point is StopPoint.PREINIT:
            return self._arm_preinit()
        if point is StopPoint.POSTINIT:
            return self._arm_postinit()
        return self._plant_stop(
            find_main(self.tracee), "main has no symbol and _start does not show where it is"
        )

    def _arm_preinit(self) -> str | None:
        main = self.tracee.modules.main
        elf = main.elf if main is not None else None
        if elf is None:
            return "its executable is not a readable ELF file"
        if not elf.is_static:
            if not self.rtld.attach():
                return "its dynamic linker's r_debug and _dl_debug_state are not found"
            self._waiting_rtld = True
            self._rtld_hit = False
            self.rtld.on_state(self._on_rtld_state)
            return None
        return self._plant_stop(
            first_initializer(self.tracee), "a static executable without initialisers"
        )

    def _arm_postinit(self) -> str | None:
        main = self.tracee.modules.main
        if main is None or main.elf is None:
            return "its executable is not a readable ELF file"
        inits = initializers(self.tracee)
        last_ones = inits.in_order if main.elf.is_static else inits.run_by_libc
        if not last_ones or not main.contains(last_ones[-1]):
            # Nothing of the executable's own to wait for: main, or (dynamic) its entry
            # point, which ld.so jumps to once every library's initialisers have run.
            address = find_main(self.tracee)
            if address is None and not main.elf.is_static:
                address = entry_point(self.tracee)
            return self._plant_stop(
                address, "the executable has no initialisers and main is not found"
            )
        last = last_ones[-1]
        self._calls_left = inits.in_order.count(last)
        self._bps.append(self.tracee.add_breakpoint(last, self._on_last_initializer))
        return None

    def _plant_stop(self, address: int | None, why_not: str) -> str | None:
        """A breakpoint whose hit is the arrival; *why_not* when there is no address."""
        if address is None:
            return why_not
        self._stop_at = address
        self._bps.append(self.tracee.add_breakpoint(address, _stop_here))
        return None

    def _on_last_initializer(self, tracee: Tracee, tid: int) -> BreakpointAction | None:
        """Entered the last initialiser: catch its return (in this frame only)."""
        self._calls_left -= 1
        if self._calls_left > 0:
            return None
        sp = tracee.registers(tid).rsp
        (ret,) = _WORD.unpack(tracee.read(sp, _WORD.size))
        self._return_sp = (sp + _WORD.size) & _U64
        self._stop_at = ret
        self._remove_breakpoints()
        self._bps.append(tracee.add_breakpoint(ret, self._on_return))
        return None

    def _on_return(self, tracee: Tracee, tid: int) -> BreakpointAction | None:
        if tracee.registers(tid).rsp != self._return_sp:
            return None  # another frame (recursion, another thread) passing by
        return BreakpointAction.STOP

    def _on_rtld_state(self, state: RState) -> BreakpointAction | None:
        if not self._waiting_rtld or state is not RState.CONSISTENT:
            return None
        self._waiting_rtld = False
        self._rtld_hit = True
        return BreakpointAction.STOP

    # -- arriving ------------------------------------------------------------------------
    def arrived(self, event: Event) -> Arrival | None:
        """Whether *event* (from ``Tracee.wait``) is the arrival we armed for."""
        if isinstance(event, Exec):
            return self._on_exec()
        if not self._armed or not isinstance(event, BreakpointHit):
            return None
        if self._stop_at is not None and event.address == self._stop_at:
            return self._arrive(self.point, event.address)
        if self._rtld_hit and event.address == self.rtld.r_brk:
            return self._arrive(self.point, event.address)
        return None

    def _on_exec(self) -> Arrival | None:
        """A new image: what was planted went with the old one; arm again in this one."""
        if not (self._armed or self.follow_exec):
            return None
        self._forget()
        return self.arm(self.requested)

    def _arrive(self, point: StopPoint, address: int | None) -> Arrival:
        arrival = Arrival(self.requested, point, address, self.note)
        self.disarm()
        return arrival

    def disarm(self) -> None:
        """Remove what is planted; stop holding exec stops unless following execs."""
        if self._space is not None and self._space is not self._current_space():
            self._forget()
        self._remove_breakpoints()
        self.rtld.off_state(self._on_rtld_state)
        self._waiting_rtld = False
        self._rtld_hit = False
        self._stop_at = None
        self._armed = False
        self._space = None
        if not self.follow_exec:
            self._release_exec()

    def close(self) -> None:
        """Disarm and stop following execs (and detach the rtld agent if it is our own)."""
        self.follow_exec = False
        self.disarm()
        if self._own_rtld:
            self.rtld.detach()

    def _remove_breakpoints(self) -> None:
        for bp in self._bps:
            bp.remove()
        self._bps.clear()

    def _forget(self) -> None:
        """Drop breakpoints of an image that is gone, without writing into the new one."""
        self._bps.clear()
        self._space = None

    def _current_space(self) -> AddressSpace | None:
        try:
            return self.tracee.address_space
        except DtprocError:
            return None

    def _hold_exec(self) -> None:
        if self._saved_stop_on_exec is None:
            self._saved_stop_on_exec = self.tracee.stop_on_exec
            self.tracee.stop_on_exec = True

    def _release_exec(self) -> None:
        if self._saved_stop_on_exec is not None:
            self.tracee.stop_on_exec = self._saved_stop_on_exec
            self._saved_stop_on_exec = None


def _stop_here(tracee: Tracee, tid: int) -> BreakpointAction:
    return BreakpointAction.STOP


# ---------------------------------------------------------------------- finding points
def find_main(tracee: Tracee) -> int | None:
    """main's address: its symbol, else what ``_start`` hands to ``__libc_start_main``."""
    main = tracee.modules.main
    if main is None:
        return None
    table = main.symbols
    if table is not None:
        sym = table.lookup("main")
        if sym is not None and sym.is_function and sym.value:
            return sym.value + main.bias
    return _main_from_start(tracee, main)


def _main_from_start(tracee: Tracee, main: Module) -> int | None:
    """Decode ``_start``: the last value put in %rdi before the first call is main.

    Known forms: ``mov $main, %rdi`` (non-PIE), ``lea main(%rip), %rdi`` (PIE) and the
    GOT load ``mov main@GOTPCREL(%rip), %rdi`` that linkers leave unrelaxed. Any other
    instruction that mentions %rdi makes it unknown: better no main than a wrong one.
    """
    entry = entry_point(tracee)
    if entry is None:
        return None
    rdi: int | None = None
    for insn in decode(tracee.read_partial(entry, _START_WINDOW), entry):
        if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
            return rdi if rdi is not None and main.contains(rdi) else None
        if any(reg in insn.op_str for reg in ("%rdi", "%edi", "%di")):
            rdi = _loaded_into_rdi(tracee, main, insn)
    return None


def _loaded_into_rdi(tracee: Tracee, main: Module, insn: Instruction) -> int | None:
    text = insn.op_str
    if not text.endswith((", %rdi", ", %edi")):
        return None
    if insn.mnemonic.startswith("lea"):
        return insn.rip_target
    if not insn.mnemonic.startswith("mov"):
        return None
    if text.startswith("$"):
        return int(text[1:].split(",")[0], 0)
    return None if insn.rip_target is None else _pointer_at(tracee, main, insn.rip_target)


def _pointer_at(tracee: Tracee, main: Module, address: int) -> int | None:
    """The pointer the executable keeps at *address*, as it will be once relocated.

    GNU ld writes a RELATIVE relocation's addend in place too; where the word is 0
    the relocation itself says.
    """
    word = tracee.read_partial(address, _WORD.size)
    value = _WORD.unpack(word)[0] if len(word) == _WORD.size else 0
    if not value and main.elf is not None:
        try:
            rel = main.elf.relocations().at(address - main.bias)
        except DtprocError:
            rel = None
        if rel is not None and rel.type == RelocationType.R_X86_64_RELATIVE:
            value = rel.addend
    return _absolute(main, value) if value else None


def entry_point(tracee: Tracee) -> int | None:
    """Where the kernel starts the executable (``AT_ENTRY``), or None if auxv is unreadable."""
    try:
        return procfs.read_auxv(tracee.pid).get(procfs.AT_ENTRY)
    except OSError:
        return None


def initializers(tracee: Tracee) -> Initializers:
    """The executable's initialisers, from its dynamic section (or sections, if static).

    Read from the process's memory so that what the file says is what runs; words
    not yet relocated (a PIE at its exec stop) get the load bias added.
    """
    main = tracee.modules.main
    if main is None or main.elf is None:
        return Initializers((), None, ())
    dyn = dict(main.elf.dynamic)
    if _Dt.INIT in dyn or _Dt.INIT_ARRAY in dyn or _Dt.PREINIT_ARRAY in dyn:
        return Initializers(
            _array(tracee, main, dyn.get(_Dt.PREINIT_ARRAY), dyn.get(_Dt.PREINIT_ARRAYSZ, 0)),
            _absolute(main, dyn[_Dt.INIT]) if dyn.get(_Dt.INIT) else None,
            _array(tracee, main, dyn.get(_Dt.INIT_ARRAY), dyn.get(_Dt.INIT_ARRAYSZ, 0)),
        )
    return _from_sections(tracee, main, main.elf)


def _from_sections(tracee: Tracee, main: Module, elf: ElfFile) -> Initializers:
    def array(name: str) -> tuple[int, ...]:
        sec = elf.section(name)
        return () if sec is None else _array(tracee, main, sec.addr, sec.size)

    init = elf.section(".init")
    return Initializers(
        array(".preinit_array"),
        None if init is None or not init.size else init.addr + main.bias,
        array(".init_array"),
    )


def _array(tracee: Tracee, main: Module, vaddr: int | None, size: int) -> tuple[int, ...]:
    if not vaddr or size <= 0:
        return ()
    data = tracee.read_partial(vaddr + main.bias, size)
    words = (int(w) for (w,) in _WORD.iter_unpack(data[: len(data) - len(data) % _WORD.size]))
    return tuple(_absolute(main, w) for w in words if w not in (0, _U64))


def _absolute(main: Module, value: int) -> int:
    return value if main.contains(value) else (value + main.bias) & _U64


def first_initializer(tracee: Tracee) -> int | None:
    """The first of the executable's own initialisers: preinit_array, _init, init_array."""
    found = initializers(tracee).in_order
    return found[0] if found else None


# ---------------------------------------------------------------------- driving
def run_to(
    tracee: Tracee, point: StopPoint | str, rtld: RtldAgent | None = None
) -> tuple[Arrival, list[Event]]:
    """Run a process stopped at its exec event until it reaches *point*; stop it there.

    Returns the arrival and the events seen on the way. If the program execs on the
    way, the point is looked for again in the new image. Stopping events that are
    not the arrival (breakpoints without a callback, intercepted signals) are passed
    over: the process goes on. The rtld agent watches the start-up either way, so
    the module list is current at the arrival; one made here is detached again.
    Raises :class:`~dtproc.errors.ProcessDied` if the process ends first.
    """
    target = StopPoint.parse(point) if isinstance(point, str) else point
    rv = Rendezvous(tracee, rtld)
    try:
        arrival = rv.arm(target)
        if arrival is not None:
            return arrival, []
        rv.rtld.attach()
        return _drive(tracee, rv)
    finally:
        rv.close()


def _drive(tracee: Tracee, rv: Rendezvous) -> tuple[Arrival, list[Event]]:
    seen: list[Event] = []
    tracee.resume()
    while True:
        event = tracee.wait()
        if event is None:
            if tracee.state in (ProcessState.UNDEAD, ProcessState.DEAD, ProcessState.LOST):
                raise ProcessDied(tracee.pid, f"failed to control pid {tracee.pid}: it is gone")
            continue
        seen.append(event)
        got = rv.arrived(event)
        if got is not None:
            tracee.stop()
            return got, seen
        if isinstance(event, (Exited, Killed)):
            raise ProcessDied(tracee.pid, describe_end(tracee.pid, event), None)
        if isinstance(event, Exec):
            rv.rtld.attach()
        if _holds(event):
            tracee.resume()


def _holds(event: Event) -> bool:
    """Events after which (part of) the process waits to be resumed."""
    if isinstance(event, SignalReceived):
        return event.intercepted
    return isinstance(event, (BreakpointHit, Exec))


def describe_end(pid: int, event: Event) -> str:
    """dt_proc's words for a process that ended before we had control of it."""
    if isinstance(event, Killed):
        return f"failed to control pid {pid}: process died from signal {event.signal}"
    status = event.status if isinstance(event, Exited) else 0
    return f"failed to control pid {pid}: process exited with status {status}"
