"""Start a program under ptrace from its very first instruction, without Python in a child.

Forking a threaded Python process and running Python in the child is unsafe,
and a shell trampoline changes the environment (dash exports PWD) and reports
exec errors in its own words. So dtproc ``posix_spawn``\\ s a harmless waiting
room (``sleep``), seizes it, and makes *it* call ``chdir`` and ``execve`` by
injecting those system calls: the exec happens with exactly the argv and
environment given, PATH is searched the way ``execvp`` searches it, and every
failure comes back as a real errno. The successful exec leaves the new program
in its exec event stop: nothing of it has run yet.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Mapping, Sequence

from dtproc._sys import procfs, ptrace
from dtproc._sys.ptrace import Options
from dtproc.errors import DtprocError, ExecFailed, ProcessDied, from_oserror

SYS_MMAP = 9
SYS_EXECVE = 59
SYS_CHDIR = 80
PROT_READ_WRITE = 0x3
MAP_PRIVATE_ANON = 0x22
_EXEC_DONE = object()

# execvp's rule: these errors mean "try the next PATH entry".
_TRY_NEXT = {errno.ENOENT, errno.ESTALE, errno.ENOTDIR, errno.ENODEV, errno.ETIMEDOUT}
_DEFAULT_PATH = "/bin:/usr/bin"


def _waiting_room() -> str:
    found = shutil.which("sleep", path="/usr/bin:/bin")
    if found is None:
        raise DtprocError("cannot start programs: no 'sleep' binary in /usr/bin or /bin")
    return found


def _describe_death(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"process died from signal {os.WTERMSIG(status)}"
    return f"process exited with status {os.WEXITSTATUS(status)}"


class _Injector:
    """Runs system calls inside a stopped, seized process that is about to exec."""

    def __init__(self, pid: int, argv0: str) -> None:
        self.pid = pid
        self.argv0 = argv0
        self.regs = ptrace.getregs(pid)
        self.site = procfs.read_auxv(pid)[procfs.AT_ENTRY]
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # syscall; int3 -- the int3 hands control back after a syscall that returns.
        os.pwrite(self.mem, b"\x0f\x05\xcc", self.site)

    def close(self) -> None:
        os.close(self.mem)

    def write(self, addr: int, data: bytes) -> None:
        os.pwrite(self.mem, data, addr)

    def syscall(self, nr: int, *args: int) -> int | object:
        regs = self.regs.copy()
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # no syscall restart on resume
        regs.rip = self.site
        ptrace.setregs(self.pid, regs)
        ptrace.cont(self.pid, 0)
        return self._result()

    def _result(self) -> int | object:
        while True:
            _, status = os.waitpid(self.pid, 0x40000000)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise ProcessDied(
                    self.pid,
                    f"failed to execute {self.argv0}: {_describe_death(status)} before exec",
                    status,
                )
            event = status >> 16
            sig = os.WSTOPSIG(status)
            if event == ptrace.Event.EXEC:
                return _EXEC_DONE
            if event == 0 and sig == signal.SIGTRAP:
                rax = ptrace.getregs(self.pid).rax
                return rax - (1 << 64) if rax >= 1 << 63 else rax
            if event == ptrace.Event.STOP:
                ptrace.cont(self.pid, 0)  # a late interrupt or group-stop trap: go on
                continue
            if event == 0:
                raise DtprocError(
                    f"failed to execute {self.argv0}: interrupted by signal {sig} before exec"
                )
            ptrace.cont(self.pid, 0)


class _Block:
    """The argv/envp/path strings laid out in the target's memory."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.data = bytearray()

    def string(self, s: str | bytes) -> int:
        raw = s.encode() if isinstance(s, str) else s
        addr = self.base + len(self.data)
        self.data += raw + b"\0"
        return addr

    def pointers(self, addrs: Sequence[int]) -> int:
        while len(self.data) % 8:
            self.data += b"\0"
        addr = self.base + len(self.data)
        for a in [*addrs, 0]:
            self.data += a.to_bytes(8, "little")
        return addr


def _block_size(argv: Sequence[str], env: Mapping[str, str], candidates: Sequence[str]) -> int:
    strings = sum(len(a.encode()) + 1 for a in argv)
    strings += sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    strings += sum(len(c.encode()) + 1 for c in candidates) + 64
    pointers = 8 * (2 * len(argv) + len(env) + 8)
    total = strings + pointers + 4096
    return (total + 4095) & ~4095


def _candidates(argv0: str, env: Mapping[str, str]) -> list[str]:
    if "/" in argv0:
        return [argv0]
    path = env.get("PATH", _DEFAULT_PATH)
    return [os.path.join(d or ".", argv0) for d in path.split(":")]


def spawn_stopped(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    options: Options,
    stdio: Sequence[int | None] = (None, None, None),
) -> int:
    """Create *argv* seized with *options*; return its pid, stopped at its exec event.

    *stdio* gives file descriptors for the program's 0, 1 and 2 (None: inherit ours).
    """
    if not argv:
        raise DtprocError("failed to execute: empty argument list")
    argv0 = argv[0]
    room = _waiting_room()
    pid = os.posix_spawn(
        room,
        [room, "30"],
        {},
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        setsigmask=(),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio) if fd is not None
        ],
    )
    try:
        _seize_room(pid, argv0, options)
        _exec_in(pid, argv, env, cwd)
    except BaseException:
        _kill_room(pid)
        raise
    return pid


def _seize_room(pid: int, argv0: str, options: Options) -> None:
    try:
        ptrace.seize(pid, options)
    except OSError as exc:
        raise from_oserror(exc, pid, f"failed to execute {argv0}") from None
    ptrace.interrupt(pid)
    while True:
        _, status = os.waitpid(pid, 0x40000000)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise ProcessDied(pid, f"failed to execute {argv0}: {_describe_death(status)}", status)
        if status >> 16 == ptrace.Event.STOP:
            return
        # The room's own exec stop (the seize raced with it), or a signal for the
        # room: neither is a place to inject from (an exec stop still has to
        # finish its syscall), so drop it and stop again at the next instruction.
        ptrace.interrupt(pid)
        ptrace.cont(pid, 0)


def _exec_in(pid: int, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> None:
    argv0 = argv[0]
    candidates = _candidates(argv0, env)
    inj = _Injector(pid, argv0)
    try:
        size = _block_size(argv, env, [*candidates, "/bin/sh", cwd or ""])
        base = inj.syscall(SYS_MMAP, 0, size, PROT_READ_WRITE, MAP_PRIVATE_ANON, -1, 0)
        if not isinstance(base, int) or base < 0:
            raise ExecFailed(argv0, "cannot allocate memory for the argument list")
        block = _Block(base)
        arg_ptrs = [block.string(a) for a in argv]
        argv_addr = block.pointers(arg_ptrs)
        envp_addr = block.pointers([block.string(f"{k}={v}") for k, v in env.items()])
        cwd_addr = block.string(cwd) if cwd is not None else 0
        paths = [block.string(c) for c in candidates]
        shell = block.string("/bin/sh")
        inj.write(base, bytes(block.data))
        if cwd is not None:
            rc = inj.syscall(SYS_CHDIR, cwd_addr)
            if isinstance(rc, int) and rc < 0:
                raise ExecFailed(argv0, f"cannot change directory to {cwd}: {os.strerror(-rc)}")
        _execvp(inj, block, candidates, paths, arg_ptrs, argv_addr, envp_addr, shell)
    finally:
        inj.close()


def _execvp(
    inj: _Injector,
    block: _Block,
    candidates: Sequence[str],
    paths: Sequence[int],
    arg_ptrs: Sequence[int],
    argv_addr: int,
    envp_addr: int,
    shell: int,
) -> None:
    seen_eacces = False
    last = errno.ENOENT
    for path_addr in paths:
        rc = inj.syscall(SYS_EXECVE, path_addr, argv_addr, envp_addr)
        if rc is _EXEC_DONE:
            return
        assert isinstance(rc, int)
        err = -rc
        if err == errno.ENOEXEC:
            # execvp runs a file without a #! line with /bin/sh, as a script.
            sh_argv = block.pointers([shell, path_addr, *arg_ptrs[1:]])
            inj.write(block.base, bytes(block.data))
            rc = inj.syscall(SYS_EXECVE, shell, sh_argv, envp_addr)
            if rc is _EXEC_DONE:
                return
            assert isinstance(rc, int)
            err = -rc
        if err == errno.EACCES:
            seen_eacces = True
        elif err not in _TRY_NEXT:
            raise ExecFailed(inj.argv0, os.strerror(err))
        last = err
    raise ExecFailed(inj.argv0, os.strerror(errno.EACCES if seen_eacces else last))


def _kill_room(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        while True:
            _, status = os.waitpid(pid, 0x40000000)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return
    except ChildProcessError:
        return
