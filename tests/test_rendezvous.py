"""Stop rendezvous on real programs: exactly the expected initialisers have run at each point."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TARGETS, Builder
from dtproc import DtprocError, ProcessDied, Tracee
from dtproc.elf import ElfFile
from dtproc.events import BreakpointHit, Exec, Exited
from dtproc.rendezvous import Arrival, Rendezvous, StopPoint, find_main, run_to
from dtproc.rtld import RtldAgent
from rtld_common import finish, made_tracees

STRESS = os.environ.get("DTPROC_STRESS") == "1"
REEXECS = 1000 if STRESS else 150
LIBC = "libc.so.6"

VARIANTS = {
    "pie": (),
    "nopie": ("-no-pie", "-fno-pie"),
    "stripped": ("-s",),
    "stripped-norelax": ("-s", "-Wl,--no-relax"),  # _start loads main from the GOT
    "static": ("-static",),
    "static-stripped": ("-static", "-s"),
    "static-pie": ("-static-pie",),
}
# What has run by the time main starts, in order. Dynamic: ld.so runs the executable's
# preinit_array, then the library's constructor; libc runs the executable's constructor.
# Static: libc runs preinit_array, then init_array in link order (the library comes first).
INITS = ["exe-preinit", "lib-ctor", "exe-ctor"]


@dataclass(frozen=True)
class Target:
    exe: Path
    twin: Path  # the same build with symbols: where main and the initialisers are
    static: bool

    def symbol(self, t: Tracee, name: str) -> int:
        sym = ElfFile.open(self.twin).symbols.lookup(name)
        assert sym is not None, name
        main = t.modules.main
        assert main is not None
        return sym.value + main.bias


def is_static(flags: tuple[str, ...]) -> bool:
    return any(f.startswith("-static") for f in flags)


def build_markers(build: Builder, variant: str, *flags: str) -> Path:
    if is_static(flags):
        lib = [str(TARGETS / "rtld_marklib.c")]  # its constructor comes first in init_array
    else:
        lib = ["-Wl,--no-as-needed", str(build("rtld_marklib", shared=True))]
    return build("rtld_markers", *flags, *lib, suffix=f"-{variant}")


@pytest.fixture(scope="module", params=list(VARIANTS))
def target(build: Builder, request: pytest.FixtureRequest) -> Target:
    flags = VARIANTS[request.param]
    exe = build_markers(build, request.param, *flags)
    twin = build_markers(build, f"{request.param}-twin", *(f for f in flags if f != "-s"))
    return Target(exe, twin, is_static(flags))


@pytest.fixture(scope="module")
def dynamic(build: Builder) -> Target:
    exe = build_markers(build, "pie")
    return Target(exe, exe, False)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    return tmp_path / "marks"


_tracees = pytest.fixture(made_tracees, name="tracees")


def create(tracees: list[Tracee], argv: list[str | Path], marks: Path) -> Tracee:
    t = Tracee.create(argv, env={**os.environ, "RTLD_MARKS": str(marks)})
    tracees.append(t)
    return t


def markers(marks: Path) -> list[str]:
    return marks.read_text().split() if marks.exists() else []


# ---------------------------------------------------------------------- each point
@pytest.mark.parametrize("point", list(StopPoint), ids=[p.value for p in StopPoint])
def test_each_point_sees_exactly_its_initialisers(
    target: Target, point: StopPoint, marks: Path, tracees: list[Tracee]
) -> None:
    t = create(tracees, [target.exe], marks)
    arrival, _ = run_to(t, point)
    assert arrival == Arrival(point, point, arrival.address, None)
    rip = t.registers().rip
    names = {m.name for m in t.modules}
    if point is StopPoint.EXEC:
        assert markers(marks) == [] and arrival.address is None
        assert t.modules.module_at(rip).is_main == target.static  # type: ignore[union-attr]
    elif point is StopPoint.PREINIT:
        assert markers(marks) == []
        if target.static:
            assert LIBC not in names
            assert rip == target.symbol(t, "exe_preinit")  # the first initialiser
        else:
            assert LIBC in names and any(n.startswith("rtld_marklib") for n in names)
            assert t.symbolize(rip) == "ld-linux-x86-64.so.2`_dl_debug_state"
    elif point is StopPoint.POSTINIT:
        assert markers(marks) == INITS
        assert rip == arrival.address != target.symbol(t, "main")
    else:
        assert markers(marks) == INITS
        assert rip == arrival.address == target.symbol(t, "main")
        assert find_main(t) == rip
    if point in (StopPoint.POSTINIT, StopPoint.MAIN):
        assert (LIBC in names) != target.static  # the module list is current
    assert finish(t).status == 0
    assert markers(marks) == [*INITS, "main"]
    assert not t.breakpoints  # run_to leaves nothing behind


@pytest.mark.parametrize("with_ctor", [True, False], ids=["ctor", "no-ctor"])
def test_main_not_found_falls_back_to_postinit_with_a_note(
    build: Builder, marks: Path, tracees: list[Tracee], with_ctor: bool
) -> None:
    """A stripped program whose _start loads main from memory: no way to find main."""
    lib = build("rtld_marklib", shared=True)
    flags = ["-s", "-nostartfiles", "-Wl,--no-as-needed", str(lib)]
    exe = build("rtld_odd_start", *flags, *(["-DWITH_CTOR"] if with_ctor else []))
    t = create(tracees, [exe], marks)
    assert find_main(t) is None
    arrival, _ = run_to(t, "main")
    assert arrival.requested is StopPoint.MAIN and arrival.point is StopPoint.POSTINIT
    assert arrival.note is not None
    assert arrival.note.startswith(f"pid {t.pid}: no main point (")
    assert arrival.note.endswith("stopping at postinit instead")
    expected = ["lib-ctor", "exe-ctor"] if with_ctor else ["lib-ctor"]
    assert markers(marks) == expected
    if not with_ctor:  # no initialiser of its own: ld.so's jump to the entry point is postinit
        assert t.registers().rip == ElfFile.open(exe).entry + t.modules.main.bias  # type: ignore[union-attr]
    assert finish(t).status == 0
    assert markers(marks) == [*expected, "main"]


def test_process_that_dies_first(build: Builder, tracees: list[Tracee]) -> None:
    source = (
        "#include <unistd.h>\n"
        "__attribute__((constructor)) static void quit(void) { _exit(7); }\n"
        "int main(void) { return 0; }\n"
    )
    t = Tracee.create([build("rtld_quits", source=source)])
    tracees.append(t)
    with pytest.raises(ProcessDied, match=f"failed to control pid {t.pid}: .* status 7"):
        run_to(t, "main")


def test_unknown_point() -> None:
    with pytest.raises(DtprocError, match="unknown stop point 'start': use one of exec, "):
        StopPoint.parse("start")


def test_foreign_stops_on_the_way_are_passed_over(
    dynamic: Target, marks: Path, tracees: list[Tracee]
) -> None:
    t = create(tracees, [dynamic.exe], marks)
    ctor = dynamic.symbol(t, "exe_ctor")
    bp = t.add_breakpoint(ctor)  # no callback: a hit stops the thread
    arrival, events = run_to(t, "main")
    assert arrival.point is StopPoint.MAIN
    hits = [e.address for e in events if isinstance(e, BreakpointHit)]
    assert hits == [ctor, arrival.address]  # ours, passed over; then the arrival
    assert bp.hits == 1 and t.breakpoints == [bp]
    bp.remove()
    assert finish(t).status == 0


# ---------------------------------------------------------------------- across exec
@pytest.mark.parametrize(
    "point", [StopPoint.PREINIT, StopPoint.POSTINIT, StopPoint.MAIN], ids=lambda p: p.value
)
@pytest.mark.parametrize("variant", ["pie", "static"])
def test_rendezvous_follows_every_exec(
    build: Builder, marks: Path, tracees: list[Tracee], point: StopPoint, variant: str
) -> None:
    """The program re-execs itself REEXECS times (1,000 with DTPROC_STRESS=1); the
    rendezvous arms itself again in each new image and is reached every time."""
    exe = build_markers(build, variant, *VARIANTS[variant])
    t = create(tracees, [exe, str(REEXECS)], marks)
    expected = [] if point is StopPoint.PREINIT else INITS
    agent = RtldAgent(t)
    rv = Rendezvous(t, agent, follow_exec=True)
    assert rv.arm(point) is None
    arrivals: list[Arrival] = []
    started = time.perf_counter()
    t.resume()
    for event in t.events(timeout=60):
        got = rv.arrived(event)
        if got is not None:
            assert markers(marks) == expected, len(arrivals)
            if point is StopPoint.MAIN:
                regs = t.registers()  # main(argc, argv): argv[1] counts down
                argv1 = int.from_bytes(t.read(regs.rsi + 8, 8), "little")
                assert t.read_cstring(argv1) == str(REEXECS - len(arrivals)).encode()
            arrivals.append(got)
            t.resume()
        elif isinstance(event, Exec):
            assert rv.armed  # armed again in the new image, which is held at its exec stop
            marks.unlink()
            t.resume()
    elapsed = time.perf_counter() - started
    rv.close()
    assert isinstance(t.end, Exited) and t.end.status == 0
    assert len(arrivals) == REEXECS + 1
    assert all(a == Arrival(point, point, a.address) for a in arrivals)
    assert not t.stop_on_exec
    each = elapsed / REEXECS * 1e3
    print(f"\n{REEXECS} re-execs to {point.value} ({variant}): {each:.1f} ms each")


def test_run_to_again_after_each_exec(dynamic: Target, marks: Path, tracees: list[Tracee]) -> None:
    n = 10 if not STRESS else REEXECS
    t = create(tracees, [dynamic.exe, str(n)], marks)
    t.stop_on_exec = True  # every exec stop waits for us
    for left in range(n, -1, -1):
        arrival, _ = run_to(t, "main")
        assert arrival.point is StopPoint.MAIN and t.registers().rip == arrival.address
        assert markers(marks) == INITS
        t.resume()
        event = next(t.events(timeout=10), None)
        if left:
            assert isinstance(event, Exec), event
            marks.unlink()
        else:
            assert event == Exited(t.pid, 0)
    assert t.stop_on_exec
