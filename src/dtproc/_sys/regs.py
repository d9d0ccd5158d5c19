"""The x86-64 general-purpose register set as ptrace reads it (``struct user_regs_struct``)."""

from __future__ import annotations

import ctypes

_FIELDS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip


class UserRegs(ctypes.Structure):
    """One thread's registers; mutable so a caller can change and write them back."""

    _fields_ = [(name, ctypes.c_uint64) for name in _FIELDS]

    # ctypes fields are untyped for mypy; declare them for strict checking.
    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    def copy(self) -> UserRegs:
        new = UserRegs()
        ctypes.pointer(new)[0] = self
        return new

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _FIELDS}

    def __repr__(self) -> str:
        return "UserRegs(" + ", ".join(f"{n}=0x{getattr(self, n):x}" for n in _FIELDS) + ")"


REGISTER_NAMES: tuple[str, ...] = _FIELDS

# DWARF register numbers for x86-64 (System V psABI, figure 3.36).
DWARF_REGS: tuple[str, ...] = (
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)  # fmt: skip
