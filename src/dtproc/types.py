"""Small pure data types shared across layers."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProcessState(enum.Enum):
    """A process as DTrace's libproc sees it."""

    RUNNING = "running"
    STOPPED = "stopped"
    UNDEAD = "undead"  # it has exited (a zombie until its parent reaps it)
    LOST = "lost"  # it exists but we no longer control it
    DEAD = "dead"  # released: the handle is closed


class ReleaseMode(enum.Enum):
    """What happens to a process when dtproc lets go of it."""

    DETACH = "detach"  # let it run on, as if we had never been there
    KILL = "kill"  # kill it (default for processes dtproc created)
    HANG = "hang"  # leave it stopped (default when someone else had stopped it)


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """pid plus start time: a reused pid is never mistaken for the process we had."""

    pid: int
    start_time: int
