"""Helpers shared by the rtld agent and rendezvous tests."""

from __future__ import annotations

from collections.abc import Iterator

from dtproc import Tracee
from dtproc.events import Exited


def made_tracees() -> Iterator[list[Tracee]]:
    """Fixture body: the Tracees a test made, each released (a created one killed) at the end.

    Use as ``_tracees = pytest.fixture(made_tracees, name="tracees")``.
    """
    made: list[Tracee] = []
    try:
        yield made
    finally:
        for t in made:
            t.release()


def finish(t: Tracee, timeout: float = 120) -> Exited:
    """Let the process run to its end; it must exit (not be killed)."""
    t.resume()
    for _ in t.events(timeout=timeout):
        pass
    assert isinstance(t.end, Exited), t.end
    return t.end
