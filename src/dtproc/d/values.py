"""Values that flow between the probe backends and the D runtime.

The runtime sees a probe hit only through :class:`ProbeContext`: the backends
(ptrace breakpoints, uprobe samples, kernel counters) each provide one. Stacks
are captured as raw program counters (:class:`StackValue`) and turned into
``module`function+0xoff`` text only when printed, through the symbolizer the
caller gives the output layer, so that a hot probe never pays for symbols.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Symbolizer = Callable[[int, int], str]
"""``symbolize(pid, pc)`` -> ``"libc.so.6`malloc+0x10"``, or ``"0x7f12..."`` if unknown."""


def hex_symbolizer(pid: int, pc: int) -> str:
    """The fallback symbolizer: a raw address, as dtrace prints one it cannot name."""
    return f"0x{pc:x}"


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    """A probe as the output sees it: dtrace's id and four-part name."""

    id: int
    provider: str
    module: str
    function: str
    name: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.module}:{self.function}:{self.name}"


BEGIN_PROBE = ProbeInfo(1, "dtrace", "", "", "BEGIN")
END_PROBE = ProbeInfo(2, "dtrace", "", "", "END")
ERROR_PROBE = ProbeInfo(3, "dtrace", "", "", "ERROR")


@dataclass(frozen=True, slots=True)
class StackValue:
    """A user stack: the pid it was taken in and its pcs, innermost first.

    Hashable, so it can be an aggregation key; symbolized lazily at print time.
    """

    pid: int
    pcs: tuple[int, ...]


class SymKind(enum.Enum):
    """How a symbolic address is printed: usym/ufunc, umod or uaddr."""

    SYM = "usym"
    MOD = "umod"
    ADDR = "uaddr"


@dataclass(frozen=True, slots=True)
class SymAddr:
    """An address in a process, printed as a symbol, module or symbol+offset."""

    kind: SymKind
    pid: int
    addr: int


class MemoryFault(Exception):
    """Raised by :meth:`ProbeContext.read_memory` when the address is not readable."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"cannot read memory at 0x{addr:x}")
        self.addr = addr


class ProbeContext(Protocol):
    """What the runtime may ask about one probe hit.

    Attributes may be computed lazily (properties); the runtime reads only
    what a clause's :class:`~dtproc.d.program.ClauseNeeds` says it uses.
    ``timestamp`` must not change during one hit (dtrace caches it per probe).
    """

    @property
    def pid(self) -> int: ...

    @property
    def tid(self) -> int: ...

    @property
    def ppid(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def cpu(self) -> int: ...

    @property
    def execname(self) -> str: ...

    @property
    def probe(self) -> ProbeInfo: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def walltimestamp(self) -> int: ...

    def arg(self, i: int) -> int:
        """Argument *i* as an unsigned 64-bit integer."""
        ...

    def read_memory(self, addr: int, n: int) -> bytes:
        """Up to *n* bytes at *addr*; raises MemoryFault if the first byte is unreadable.

        May return fewer bytes than asked when the read crosses into an
        unmapped page (copyinstr needs only up to the terminating NUL).
        """
        ...

    def ustack(self, nframes: int) -> StackValue:
        """The user stack, at most *nframes* deep, innermost frame first."""
        ...


def cached_symbolizer(symbolize: Symbolizer | None) -> Symbolizer:
    """*symbolize* (or hex addresses) with each (pid, pc) looked up only once."""
    base = symbolize or hex_symbolizer
    cache: dict[tuple[int, int], str] = {}

    def lookup(pid: int, pc: int) -> str:
        key = (pid, pc)
        text = cache.get(key)
        if text is None:
            text = cache[key] = base(pid, pc)
        return text

    return lookup


@dataclass
class StaticContext:
    """A probe hit whose values are all known up front.

    For hits that are replayed rather than live: a perf sample decoded after
    the fact, a recorded trace, the tracer's own BEGIN/END, a test. Memory is
    a map from address to the bytes known there; anything else faults.
    """

    probe: ProbeInfo
    pid: int = 0
    tid: int = 0
    ppid: int = 0
    uid: int = 0
    gid: int = 0
    cpu: int = 0
    execname: str = ""
    timestamp: int = 0
    walltimestamp: int = 0
    args: tuple[int, ...] = ()
    stack: tuple[int, ...] = ()
    memory: dict[int, bytes] = field(default_factory=dict)

    def arg(self, i: int) -> int:
        return self.args[i] & ((1 << 64) - 1) if i < len(self.args) else 0

    def read_memory(self, addr: int, n: int) -> bytes:
        for base, data in self.memory.items():
            if base <= addr < base + len(data):
                return data[addr - base : addr - base + n]
        raise MemoryFault(addr)

    def ustack(self, nframes: int) -> StackValue:
        return StackValue(self.pid, self.stack[:nframes])
