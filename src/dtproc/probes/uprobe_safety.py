"""Which probe sites a kernel uprobe may take without harming the target.

Measured on this project's machine (Linux 6.18, a CPU with AVX-512): a uprobe on an
instruction with a VEX or EVEX prefix makes the kernel execute something else in its
place -- ``vpbroadcastb %esi,%ymm17`` at the entry of glibc's ``__strchrnul_evex`` gave
``ls`` garbled output under our uprobe backend and under bpftrace alike, and wrong results
in 996 of 1000 calls of a test function. The kernel's instruction decoder for uprobes
treats those prefixes as legacy opcodes. Other instructions it refuses outright
(``lock bts``, some VEX forms) fail at open time with "cannot handle the instruction".

So before a site goes to the uprobe backend its first instruction is decoded from the
file (what the kernel will copy out of line) and anything but a legacy encoding stays on
ptrace, whose breakpoints emulate or relocate such instructions correctly.
"""

from __future__ import annotations

import functools
import os

from dtproc.errors import DtprocError
from dtproc.insn import decode
from dtproc.insn_encoding import Escape
from dtproc.probes.sites import ProbeSite

_LONGEST = 15


def uprobe_hazard(site: ProbeSite) -> str | None:
    """Why a uprobe at *site* would harm or fail the target, or None when it is safe."""
    return _hazard_at(site.path, site.file_offset)


@functools.lru_cache(maxsize=8192)
def _hazard_at(path: str, offset: int) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    try:
        code = os.pread(fd, _LONGEST, offset)
    finally:
        os.close(fd)
    try:
        insns = decode(code, 0, 1)
    except DtprocError:
        insns = []
    if not insns:
        return f"the bytes at {path}+0x{offset:x} do not decode as an instruction"
    insn = insns[0]
    if insn.encoding.escape is not Escape.LEGACY:
        kind = insn.encoding.escape.value.upper()
        return (
            f"its instruction ({insn}) is {kind}-encoded: this kernel's uprobes run such "
            "instructions wrongly"
        )
    return None
