"""Where a created process first stops: exec, preinit, postinit or main.

* ``exec``: the exec event stop; nothing of the program has run, not even ld.so.
* ``preinit``: every library is mapped and relocated, no initialiser has run.
  For a dynamic executable that is ld.so's first consistent ``r_brk`` point; for
  a static one, the first of the executable's own initialisers.
* ``postinit``: every initialiser has run and main has not. glibc runs the
  executable's initialisers inside ``__libc_start_main`` immediately before it
  calls main, so the first instruction of main is that point.
* ``main``: the first instruction of main, found by its symbol or, in stripped
  executables, from the argument ``_start`` passes to ``__libc_start_main``.

Where a point cannot be found, the nearest earlier one is used and the arrival
says so. After the program execs, :meth:`Rendezvous.arm` sets it up again.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtproc._sys import procfs
from dtproc.breakpoints import Breakpoint, BreakpointAction
from dtproc.errors import DtprocError
from dtproc.events import BreakpointHit, Event
from dtproc.insn import Flow, decode
from dtproc.modules import Module
from dtproc.rtld import RState, RtldAgent

if TYPE_CHECKING:
    from dtproc.tracee import Tracee

_START_WINDOW: Final = 96


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
    StopPoint.MAIN: StopPoint.PREINIT,
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


class Rendezvous:
    """Arms the breakpoint (or rtld hook) for one stop point and recognises the arrival."""

    def __init__(self, tracee: Tracee, rtld: RtldAgent) -> None:
        self.tracee = tracee
        self.rtld = rtld
        self.requested = StopPoint.EXEC
        self.point = StopPoint.EXEC
        self.note: str | None = None
        self._bp: Breakpoint | None = None
        self._waiting_rtld = False
        self._rtld_hit = False

    def arm(self, requested: StopPoint) -> Arrival | None:
        """Prepare to stop at *requested*; an Arrival at once when it is the exec stop."""
        self.disarm()
        self.requested = requested
        self.note = None
        point = requested
        while True:
            if point is StopPoint.EXEC:
                self.point = point
                return Arrival(requested, point, None, self.note)
            if self._arm_point(point):
                self.point = point
                return None
            earlier = _EARLIER[point]
            self.note = (
                f"cannot find the {point.value} point of pid {self.tracee.pid}: "
                f"stopping at {earlier.value} instead"
            )
            point = earlier

    def _arm_point(self, point: StopPoint) -> bool:
        if point is StopPoint.PREINIT:
            return self._arm_preinit()
        address = find_main(self.tracee)
        if address is None:
            return False
        self._bp = self.tracee.add_breakpoint(address, _stop_here)
        return True

    def _arm_preinit(self) -> bool:
        main = self.tracee.modules.main
        if main is not None and main.elf is not None and not main.elf.is_static:
            if not self.rtld.attached and not self.rtld.attach():
                return False
            self._waiting_rtld = True
            self._rtld_hit = False
            self.rtld.on_state(self._on_rtld_state)
            return True
        address = first_initializer(self.tracee)
        if address is None:
            return False
        self._bp = self.tracee.add_breakpoint(address, _stop_here)
        return True

    def _on_rtld_state(self, state: RState) -> BreakpointAction | None:
        if not self._waiting_rtld or state is not RState.CONSISTENT:
            return None
        self._waiting_rtld = False
        self._rtld_hit = True
        return BreakpointAction.STOP

    def arrived(self, event: Event) -> Arrival | None:
        """Whether *event* (from ``Tracee.wait``) is the arrival we armed for."""
        if not isinstance(event, BreakpointHit):
            return None
        if self._bp is not None and event.address == self._bp.address:
            self.disarm()
            return Arrival(self.requested, self.point, event.address, self.note)
        if self._rtld_hit and event.address == self.rtld.r_brk:
            self._rtld_hit = False
            return Arrival(self.requested, self.point, event.address, self.note)
        return None

    def disarm(self) -> None:
        if self._bp is not None:
            self._bp.remove()
            self._bp = None
        self._waiting_rtld = False


def _stop_here(tracee: Tracee, tid: int) -> BreakpointAction:
    return BreakpointAction.STOP


def find_main(tracee: Tracee) -> int | None:
    """main's address: its symbol, else what ``_start`` hands to ``__libc_start_main``."""
    modules = tracee.modules
    main = modules.main
    if main is None:
        return None
    table = main.symbols
    if table is not None:
        sym = table.lookup("main")
        if sym is not None and sym.is_function:
            return sym.value + main.bias
    return _main_from_start(tracee, main)


def _main_from_start(tracee: Tracee, main: Module) -> int | None:
    """Decode ``_start``: the last value put in %rdi before the first call is main."""
    try:
        entry = procfs.read_auxv(tracee.pid)[procfs.AT_ENTRY]
        code = tracee.read(entry, _START_WINDOW)
    except (OSError, KeyError, DtprocError):
        return None
    rdi: int | None = None
    for insn in decode(code, entry):
        if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
            return rdi if rdi is not None and main.contains(rdi) else None
        text = insn.op_str
        if not text.endswith(", %rdi") and not text.endswith(", %edi"):
            continue
        if insn.mnemonic.startswith("lea") and insn.rip_target is not None:
            rdi = insn.rip_target
        elif insn.mnemonic.startswith("mov") and text.startswith("$"):
            rdi = int(text[1:].split(",")[0], 0)
    return None


def first_initializer(tracee: Tracee) -> int | None:
    """The first of a static executable's initialisers: preinit_array, _init, init_array."""
    main = tracee.modules.main
    if main is None or main.elf is None:
        return None
    elf = main.elf
    for name in (".preinit_array", ".init", ".init_array"):
        sec = elf.section(name)
        if sec is None or sec.size == 0:
            continue
        if name == ".init":
            return sec.addr + main.bias
        data = elf.section_data(sec)
        for (value,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8]):
            if value not in (0, 0xFFFFFFFFFFFFFFFF):
                return int(value) + (main.bias if elf.is_pie else 0)
    return None


def run_to(
    tracee: Tracee, point: StopPoint | str, rtld: RtldAgent | None = None
) -> tuple[Arrival, list[Event]]:
    """Run a process stopped at its exec event until it reaches *point*; stop it there.

    Returns the arrival and the events seen on the way. If the program execs on the
    way, the point is looked for again in the new image. Raises
    :class:`~dtproc.errors.ProcessDied` if the process ends first.
    """
    from dtproc.errors import ProcessDied
    from dtproc.events import Exec, Exited, Killed

    target = StopPoint.parse(point) if isinstance(point, str) else point
    agent = rtld if rtld is not None else RtldAgent(tracee)
    rv = Rendezvous(tracee, agent)
    seen: list[Event] = []
    arrival = rv.arm(target)
    if arrival is not None:
        return arrival, seen
    tracee.resume()
    while True:
        event = tracee.wait()
        if event is None:
            continue
        seen.append(event)
        got = rv.arrived(event)
        if got is not None:
            tracee.stop()
            return got, seen
        if isinstance(event, Exec):
            agent.reset()
            arrival = rv.arm(target)
            if arrival is not None:
                return arrival, seen
            tracee.resume()
        elif isinstance(event, (Exited, Killed)):
            raise ProcessDied(tracee.pid, describe_end(tracee.pid, event), None)


def describe_end(pid: int, event: Event) -> str:
    """dt_proc's words for a process that ended before we had control of it."""
    from dtproc.events import Killed

    if isinstance(event, Killed):
        return f"failed to control pid {pid}: process died from signal {event.signal}"
    status = getattr(event, "status", 0)
    return f"failed to control pid {pid}: process exited with status {status}"
