"""Shared fixtures: compile C targets once per session, and reap every process a test starts."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

TARGETS = Path(__file__).parent / "targets"


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("targets")


Builder = Callable[..., Path]


@pytest.fixture(scope="session")
def build(build_dir: Path) -> Builder:
    """Compile ``tests/targets/NAME.c`` (or ``source=`` text) with gcc, cached by flags.

    ``build("spin", "-O2", "-pthread")`` returns the path of the executable.
    ``shared=True`` builds a shared library (``-shared -fPIC``).
    """

    def _build(
        name: str,
        *flags: str,
        source: str | None = None,
        shared: bool = False,
        suffix: str = "",
        lang: str = "c",
    ) -> Path:
        if source is None:
            src = TARGETS / f"{name}.{lang}"
            text = src.read_text()
        else:
            text = source
        key = hashlib.sha1((text + "\0".join(flags) + str(shared)).encode()).hexdigest()[:10]
        ext = ".so" if shared else ""
        out = build_dir / f"{name}{suffix}-{key}{ext}"
        if out.exists():
            return out
        srcfile = build_dir / f"{name}-{key}.{lang}"
        srcfile.write_text(text)
        compiler = "g++" if lang == "cpp" else "gcc"
        cmd = [compiler, "-g", *flags, "-o", str(out), str(srcfile)]
        if shared:
            cmd[1:1] = ["-shared", "-fPIC"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out

    return _build


class Reaper:
    """Remembers pids a test started and makes sure none outlives it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def spawn(
        self, argv: Sequence[str | os.PathLike[str]], **kw: object
    ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([str(a) for a in argv], **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def adopt(self, pid: int) -> None:
        self.pids.append(pid)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                _kill_hard(p.pid)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.pids:
            _kill_hard(pid)


def _kill_hard(pid: int) -> None:
    for sig in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            wpid, _ = os.waitpid(pid, os.WNOHANG)
            if wpid:
                return
        except ChildProcessError:
            return
        time.sleep(0.01)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    try:
        yield r
    finally:
        r.cleanup()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
