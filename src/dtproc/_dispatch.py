"""Per-thread routing of wait statuses to the tracees that thread drives.

ptrace ties every tracee to the thread that attached it, and ``waitid`` with
``__WNOTHREAD`` reports exactly that thread's tracees and children. One
:class:`ThreadContext` per driving thread blocks in that ``waitid`` (GIL
released), reaps the status of whichever tid changed, and routes it: to the
tracee that asked, into the stash of another tracee driven by the same thread,
or, for a brand-new fork child whose parent's fork event is not processed yet,
into an orphan list until its owner claims it. A child of the thread that is no
tracee of ours (the user's own ``subprocess``) is never reaped: while one has a
pending status, waits fall back to polling our own tids.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Protocol

from dtproc._sys import procfs
from dtproc._sys.wait import Interrupted, consume, peek
from dtproc._sys.wake import ThreadTimer, prepare_current_thread, wake

_POLL_MAX = 0.01


class Owner(Protocol):
    """What the dispatcher needs from a tracee: the tids it wants statuses for."""

    def owned_tids(self) -> list[int]: ...


class ThreadContext:
    """The ptrace state of one OS thread: which tids are whose, and its wake-ups."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        prepare_current_thread()
        self._owners: dict[int, Owner] = {}
        self._stash: dict[int, deque[int]] = {}
        self._orphans: dict[int, deque[int]] = {}
        self._timer: ThreadTimer | None = None
        self.wake_pending = False

    # -- ownership -----------------------------------------------------------------
    def register(self, tid: int, owner: Owner) -> None:
        self._owners[tid] = owner

    def unregister(self, tid: int) -> None:
        self._owners.pop(tid, None)
        self._stash.pop(tid, None)

    def owner_of(self, tid: int) -> Owner | None:
        return self._owners.get(tid)

    def claim_orphan(self, tid: int, owner: Owner) -> deque[int]:
        """Take ownership of *tid* and return the statuses reaped before anyone owned it."""
        self._owners[tid] = owner
        return self._orphans.pop(tid, deque())

    # -- waking from other threads ------------------------------------------------
    def wake(self) -> None:
        """Interrupt this thread's blocking wait (callable from any thread)."""
        self.wake_pending = True
        wake(self.ident)

    # -- waiting ------------------------------------------------------------------
    def next_status(self, owner: Owner, deadline: float | None) -> tuple[int, int] | None:
        """Block until one of *owner*'s tids changes state; None on timeout or wake-up."""
        while True:
            stashed = self._take_stashed(owner)
            if stashed is not None:
                return stashed
            if self.wake_pending:
                self.wake_pending = False
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                peeked = self._peek(remaining)
            except Interrupted:
                continue
            except ChildProcessError:
                return None
            if peeked is None:
                continue
            got = self._route(peeked, owner, deadline)
            if got is not None:
                return got

    def _take_stashed(self, owner: Owner) -> tuple[int, int] | None:
        if not self._stash:
            return None
        for tid in owner.owned_tids():
            queue = self._stash.get(tid)
            if queue:
                status = queue.popleft()
                if not queue:
                    del self._stash[tid]
                return tid, status
        return None

    def _peek(self, remaining: float | None) -> int | None:
        if remaining is None:
            res = peek(block=True)
            return res.pid if res else None
        # Something may be waiting already (often, under load): then no timer is needed.
        res = peek(block=False)
        if res is not None:
            return res.pid
        if self._timer is None:
            self._timer = ThreadTimer()
        self._timer.arm(remaining)
        try:
            res = peek(block=True)
        finally:
            self._timer.disarm()
        return res.pid if res else None

    def _route(self, tid: int, owner: Owner, deadline: float | None) -> tuple[int, int] | None:
        holder = self._owners.get(tid)
        if holder is None:
            if procfs_tracer(tid) != self.native_id:  # TracerPid names the tracer thread
                return self._poll_own(owner, deadline)
            orphan_status = _consume(tid)
            if orphan_status is not None:
                self._orphans.setdefault(tid, deque()).append(orphan_status)
            return None
        status = _consume(tid)
        if status is None:
            return None
        if holder is owner:
            return tid, status
        self._stash.setdefault(tid, deque()).append(status)
        return None

    def _poll_own(self, owner: Owner, deadline: float | None) -> tuple[int, int] | None:
        """A foreign child of this thread has news we must not reap: poll our tids instead."""
        delay = 0.0005
        while deadline is None or time.monotonic() < deadline:
            for tid in owner.owned_tids():
                try:
                    status = consume(tid, block=False)
                except ChildProcessError:
                    continue
                if status is not None:
                    return tid, status
            if self.wake_pending:
                return None
            try:
                peeked = peek(block=False)
            except ChildProcessError:
                return None
            if peeked is not None and peeked.pid in self._owners:
                return None  # ours again: back to blocking waits
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        return None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def _consume(tid: int) -> int | None:
    try:
        return consume(tid, block=False)
    except ChildProcessError:
        return None


def procfs_tracer(tid: int) -> int:
    try:
        return procfs.tracer_pid(tid)
    except OSError:
        return 0


_local = threading.local()


def current() -> ThreadContext:
    """The calling thread's context (created on first use)."""
    ctx: ThreadContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = ThreadContext()
        _local.ctx = ctx
    return ctx
