"""Emulating a displaced instruction in the tracer: one stop per breakpoint hit, no slot.

Every control transfer that depends on where the instruction sits (call, jmp and jcc by
displacement, loop, jrcxz, and every call, which pushes its own address) is emulated,
because a copy elsewhere would compute the wrong target or push the wrong return address.
On top of that come the forms compilers put at function entries and returns (nops,
endbr64, push/pop, register moves, ``sub $n,%rsp``, ``lea``, ``xor %eax,%eax``,
``test``/``cmp``), which are cheaper to emulate than to run from a scratch slot and need no
slot at all. Anything else goes out of line (:mod:`dtproc.insn_xol`).

Each plan is compiled once into a closure ``apply(regs, write_mem, read_mem)``, because it
runs on every hit, in Python. ``apply`` reads and writes memory *before* it touches any
register: if a callback raises (an unmapped stack page, say), the registers are as they
were and the caller can fall back to another way past the instruction.

Emulated calls and returns do not maintain a CET shadow stack; a process running with
user shadow stacks enabled needs another way past calls and returns.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from dtproc._sys.regs import UserRegs
from dtproc.errors import DisplaceError
from dtproc.insn_decode import Flow, Instruction, PlanFacts
from dtproc.insn_encoding import (
    ADDRSIZE,
    CS,
    DS,
    ES,
    FS,
    GPR,
    GS,
    M32,
    M64,
    OPSIZE,
    REP,
    REPNE,
    SS,
    Encoding,
    Escape,
    MemRef,
    OpMap,
    Segment,
)

WriteMem = Callable[[int, bytes], None]
"""``write_mem(address, data)``: write into the traced process or raise."""
ReadMem = Callable[[int, int], bytes]
"""``read_mem(address, size)``: exactly ``size`` bytes from the traced process, or raise."""
Apply = Callable[[UserRegs, WriteMem, ReadMem], None]

STATUS_FLAGS = 0x8D5  # CF PF AF ZF SF OF
_KEEP_FLAGS = M64 & ~STATUS_FLAGS
_ZF = 0x40
_PARITY = tuple(0 if bin(i).count("1") & 1 else 4 for i in range(256))

_SEGMENTS = frozenset({CS, SS, DS, ES, FS, GS})
# Prefixes a near branch may carry: bnd (F2), a stray rep, branch hints and notrack (2E/3E),
# segment overrides (which only address a memory operand), address size (which only
# addresses a memory operand, or makes loop/jrcxz count in ecx). Operand size is checked apart.
_BRANCH_PREFIXES = _SEGMENTS | {REPNE, REP, OPSIZE, ADDRSIZE}
_NOP_PREFIXES = _SEGMENTS | {OPSIZE, ADDRSIZE}
_LEA_PREFIXES = _SEGMENTS | {ADDRSIZE}


class EmulatedForm(enum.Enum):
    """What kind of instruction an :class:`Emulated` plan stands for."""

    NOP = "nop"  # nop, multi-byte nop, pause, endbr64/endbr32
    PUSH = "push"
    POP = "pop"
    MOV = "mov"  # register to register, immediate to register
    ALU = "alu"  # add/sub/cmp/and/or/xor/test on registers and immediates, with flags
    LEA = "lea"
    CALL = "call"
    JUMP = "jump"
    BRANCH = "branch"  # jcc, loop, loope, loopne, jrcxz, jecxz
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class Emulated(PlanFacts):
    """Run the displaced instruction by calling ``apply(regs, write_mem, read_mem)``.

    ``apply`` updates ``regs`` in place, ``rip`` included (to the next instruction or the
    branch target); the caller then writes the registers back and resumes the thread.
    """

    instruction: Instruction
    form: EmulatedForm
    apply: Apply = field(repr=False, compare=False)


def emulation_for(insn: Instruction) -> Emulated | None:
    """An emulation plan, or ``None`` when the instruction is better run out of line.

    Raises :class:`DisplaceError` for a control transfer that can be neither emulated nor
    moved (a near branch with a 16-bit operand size, whose meaning differs between Intel
    and AMD processors).
    """
    enc = insn.encoding
    if enc.escape is not Escape.LEGACY:
        return None
    if insn.flow in _CONTROL and not enc.xbegin:
        if enc.opsize16:
            raise DisplaceError(
                insn.address,
                f"{insn} ({insn.bytes.hex(' ')}) is a branch with an operand-size prefix; "
                "Intel and AMD processors execute it differently",
            )
        if not enc.prefixes_within(_BRANCH_PREFIXES):
            raise DisplaceError(insn.address, f"{insn}: a lock prefix makes a branch invalid")
        form, apply = _CONTROL[insn.flow](insn, enc)
        return Emulated(insn, form, apply)
    builder = _BUILDERS.get((enc.opmap, enc.opcode))
    if builder is None or insn.flow is not Flow.NEXT:
        return None
    built = builder(insn, enc)
    if built is None:
        return None
    return Emulated(insn, built[0], built[1])


_Built = tuple[EmulatedForm, Apply]


# -- helpers -----------------------------------------------------------------------------


def _goto(target: int) -> Apply:
    def apply(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        regs.rip = target

    return apply


def _address(mem: MemRef, next_ip: int, segment: bool) -> Callable[[UserRegs], int]:
    """Compile the effective address of a memory operand (plus fs/gs base if asked)."""
    amask = M32 if mem.addr32 else M64
    disp, scale = mem.disp, mem.scale
    base = GPR[mem.base] if mem.base is not None else None
    index = GPR[mem.index] if mem.index is not None else None
    if mem.rip:
        const = (next_ip + disp) & amask

        def ea(regs: UserRegs) -> int:
            return const

    elif base is not None and index is not None:

        def ea(regs: UserRegs) -> int:
            value: int = (getattr(regs, base) + getattr(regs, index) * scale + disp) & amask
            return value

    elif base is not None:

        def ea(regs: UserRegs) -> int:
            value: int = (getattr(regs, base) + disp) & amask
            return value

    elif index is not None:

        def ea(regs: UserRegs) -> int:
            value: int = (getattr(regs, index) * scale + disp) & amask
            return value

    else:
        absolute = disp & amask

        def ea(regs: UserRegs) -> int:
            return absolute

    if not segment or mem.segment is Segment.NONE:
        return ea
    seg_base = "fs_base" if mem.segment is Segment.FS else "gs_base"

    def with_segment(regs: UserRegs) -> int:
        value: int = (ea(regs) + getattr(regs, seg_base)) & M64
        return value

    return with_segment


def _push_constant(data: bytes, target: int) -> Apply:
    """Push 8 known bytes and go to ``target``: ``push $imm``, and ``call rel32``."""

    def push(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        sp = (regs.rsp - 8) & M64
        write_mem(sp, data)
        regs.rsp = sp
        regs.rip = target

    return push


def _load64(read_mem: ReadMem, address: int) -> int:
    return int.from_bytes(read_mem(address, 8), "little")


# -- control transfers -------------------------------------------------------------------


def _indirect_target(insn: Instruction, enc: Encoding) -> Callable[[UserRegs, ReadMem], int]:
    """Where ``call *x``/``jmp *x`` go: a register's value or a quadword in memory."""
    if not enc.has_memory:
        name = GPR[enc.rm]

        def from_register(regs: UserRegs, read_mem: ReadMem) -> int:
            value: int = getattr(regs, name)
            return value

        return from_register
    ea = _address(enc.mem(), insn.end, segment=True)

    def from_memory(regs: UserRegs, read_mem: ReadMem) -> int:
        return _load64(read_mem, ea(regs))

    return from_memory


def _call(insn: Instruction, enc: Encoding) -> _Built:
    return_address = insn.end.to_bytes(8, "little")
    target = insn.target
    if target is not None:
        return EmulatedForm.CALL, _push_constant(return_address, target)
    where = _indirect_target(insn, enc)

    def call_indirect(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        destination = where(regs, read_mem)  # read before the push, as the CPU does
        sp = (regs.rsp - 8) & M64
        write_mem(sp, return_address)
        regs.rsp = sp
        regs.rip = destination

    return EmulatedForm.CALL, call_indirect


def _jump(insn: Instruction, enc: Encoding) -> _Built:
    if insn.target is not None:
        return EmulatedForm.JUMP, _goto(insn.target)
    where = _indirect_target(insn, enc)

    def jump_indirect(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        regs.rip = where(regs, read_mem)

    return EmulatedForm.JUMP, jump_indirect


def _return(insn: Instruction, enc: Encoding) -> _Built:
    pop = 8 + (enc.imm & 0xFFFF if enc.opcode == 0xC2 else 0)

    def ret(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        sp = regs.rsp
        regs.rip = _load64(read_mem, sp)
        regs.rsp = (sp + pop) & M64

    return EmulatedForm.RETURN, ret


_Condition = Callable[[int], bool]
_CONDITIONS: tuple[_Condition, ...] = (
    lambda f: bool(f & 0x800),  # o
    lambda f: bool(f & 0x001),  # b, c
    lambda f: bool(f & 0x040),  # e, z
    lambda f: bool(f & 0x041),  # be
    lambda f: bool(f & 0x080),  # s
    lambda f: bool(f & 0x004),  # p
    lambda f: bool(f & 0x80) != bool(f & 0x800),  # l
    lambda f: bool(f & 0x40) or bool(f & 0x80) != bool(f & 0x800),  # le
)


def _branch(insn: Instruction, enc: Encoding) -> _Built:
    target = insn.target
    next_ip = insn.end
    assert target is not None, insn  # every Flow.BRANCH form but xbegin is relative
    if enc.opmap is OpMap.PRIMARY and enc.opcode >= 0xE0:
        return EmulatedForm.BRANCH, _loop(enc, target, next_ip)
    condition = _CONDITIONS[(enc.opcode >> 1) & 7]
    negate = bool(enc.opcode & 1)

    def jcc(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        regs.rip = target if condition(regs.eflags) is not negate else next_ip

    return EmulatedForm.BRANCH, jcc


def _loop(enc: Encoding, target: int, next_ip: int) -> Apply:
    """loopne (E0), loope (E1), loop (E2), jrcxz/jecxz (E3); ecx with an 0x67 prefix."""
    opcode = enc.opcode
    cmask = M32 if enc.addr32 else M64
    if opcode == 0xE3:

        def jrcxz(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
            regs.rip = target if regs.rcx & cmask == 0 else next_ip

        return jrcxz
    want_zf = {0xE0: 0, 0xE1: _ZF, 0xE2: None}[opcode]

    def loop(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        count = (regs.rcx - 1) & cmask
        regs.rcx = count  # counting in ecx clears the upper half, as 32-bit writes do
        taken = count != 0 and (want_zf is None or regs.eflags & _ZF == want_zf)
        regs.rip = target if taken else next_ip

    return loop


_ControlBuilder = Callable[[Instruction, Encoding], _Built]
_CONTROL: dict[Flow, _ControlBuilder] = {
    Flow.CALL: _call,
    Flow.INDIRECT_CALL: _call,
    Flow.JUMP: _jump,
    Flow.INDIRECT_JUMP: _jump,
    Flow.RETURN: _return,
    Flow.BRANCH: _branch,
}


# -- straight-line forms -----------------------------------------------------------------

_Builder = Callable[[Instruction, Encoding], _Built | None]


def _opcode_register(enc: Encoding) -> str:
    """The register of the ``+r`` forms (push, pop, mov imm): opcode bits plus REX.B."""
    return GPR[(enc.opcode & 7) | (enc.ext & 1) << 3]


def _nop(insn: Instruction, enc: Encoding) -> _Built | None:
    if enc.opmap is OpMap.PRIMARY:  # 90, 66 90, f3 90 (pause); with REX.B it is xchg
        ok = enc.prefixes_within(frozenset({OPSIZE, REP})) and not enc.ext & 1
    elif enc.opcode == 0x1F:  # 0f 1f /0: the multi-byte nops, any padding prefixes
        ok = enc.prefixes_within(_NOP_PREFIXES) and enc.reg & 7 == 0
    else:  # f3 0f 1e fa/fb: endbr64/endbr32 (other 0f 1e forms read the shadow stack)
        ok = enc.prefixes == bytes([REP]) and enc.modrm in (0xFA, 0xFB)
    return (EmulatedForm.NOP, _goto(insn.end)) if ok else None


def _push(insn: Instruction, enc: Encoding) -> _Built | None:
    if enc.prefixes:
        return None
    next_ip = insn.end
    if enc.opcode in (0x68, 0x6A):  # push $imm8/$imm32, sign-extended
        return EmulatedForm.PUSH, _push_constant((enc.imm & M64).to_bytes(8, "little"), next_ip)
    name = _opcode_register(enc)

    def push(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        sp = (regs.rsp - 8) & M64
        write_mem(sp, getattr(regs, name).to_bytes(8, "little"))  # push %rsp: the old value
        regs.rsp = sp
        regs.rip = next_ip

    return EmulatedForm.PUSH, push


def _pop(insn: Instruction, enc: Encoding) -> _Built | None:
    if enc.prefixes:
        return None
    next_ip = insn.end
    name = _opcode_register(enc)

    def pop(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        sp = regs.rsp
        value = _load64(read_mem, sp)
        regs.rsp = (sp + 8) & M64
        setattr(regs, name, value)  # after the increment: pop %rsp loads the value
        regs.rip = next_ip

    return EmulatedForm.POP, pop


def _width(enc: Encoding) -> int | None:
    """Operand width of a plain integer form: 64 with REX.W, 32 without, None for 16."""
    if enc.prefixes:
        return None
    return 64 if enc.w else 32


def _mov(insn: Instruction, enc: Encoding) -> _Built | None:
    width = _width(enc)
    if width is None:
        return None
    mask = M64 if width == 64 else M32
    next_ip = insn.end
    if enc.opcode in (0x89, 0x8B):
        if enc.mod != 3:
            return None
        dst, src = GPR[enc.rm], GPR[enc.reg]
        if enc.opcode == 0x8B:
            dst, src = src, dst

        def mov(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
            setattr(regs, dst, getattr(regs, src) & mask)
            regs.rip = next_ip

        return EmulatedForm.MOV, mov
    if enc.opcode == 0xC7:
        if enc.mod != 3 or enc.reg & 7:
            return None
        dst = GPR[enc.rm]
    else:
        dst = _opcode_register(enc)
    value = enc.imm & mask  # imm32 sign-extends into 64 bits, imm64 is whole

    def mov_imm(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        setattr(regs, dst, value)
        regs.rip = next_ip

    return EmulatedForm.MOV, mov_imm


def _lea(insn: Instruction, enc: Encoding) -> _Built | None:
    if not enc.has_memory or not enc.prefixes_within(_LEA_PREFIXES) or enc.opsize16:
        return None
    dst = GPR[enc.reg]
    mask = M64 if enc.w else M32
    next_ip = insn.end
    ea = _address(enc.mem(), next_ip, segment=False)

    def lea(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        setattr(regs, dst, ea(regs) & mask)
        regs.rip = next_ip

    return EmulatedForm.LEA, lea


class _Op(enum.IntEnum):
    """The ALU operations we emulate, numbered as ModRM.reg numbers them in 0x81/0x83."""

    ADD = 0
    OR = 1
    AND = 4
    SUB = 5
    XOR = 6
    CMP = 7
    TEST = 8  # not a group-1 number: 0x85, 0xA9, 0xF7 /0


_REG_REG_OPS = {0x01: _Op.ADD, 0x09: _Op.OR, 0x21: _Op.AND, 0x29: _Op.SUB, 0x31: _Op.XOR}
_REG_REG_OPS |= {0x39: _Op.CMP, 0x85: _Op.TEST}
_REG_REG_OPS |= {op + 2: kind for op, kind in _REG_REG_OPS.items() if kind is not _Op.TEST}
_ACC_IMM_OPS = {0x05: _Op.ADD, 0x0D: _Op.OR, 0x25: _Op.AND, 0x2D: _Op.SUB, 0x35: _Op.XOR}
_ACC_IMM_OPS |= {0x3D: _Op.CMP, 0xA9: _Op.TEST}
_GROUP1_OPS = {int(op): op for op in _Op if op is not _Op.TEST}


def _alu(insn: Instruction, enc: Encoding) -> _Built | None:
    width = _width(enc)
    if width is None:
        return None
    opcode = enc.opcode
    src: str | None = None
    imm = enc.imm
    if opcode in _ACC_IMM_OPS:
        op, dst = _ACC_IMM_OPS[opcode], "rax"
    else:
        if enc.mod != 3:
            return None
        dst = GPR[enc.rm]
        if opcode in _REG_REG_OPS:
            op, src = _REG_REG_OPS[opcode], GPR[enc.reg]
            if opcode & 2:
                dst, src = src, dst
        elif opcode == 0xF7:
            if enc.reg & 7:
                return None  # not, neg, mul, div...
            op = _Op.TEST
        elif (op_or_none := _GROUP1_OPS.get(enc.reg & 7)) is not None:
            op = op_or_none
        else:
            return None  # adc, sbb
    return EmulatedForm.ALU, _arith(op, width, dst, src, imm, insn.end)


def _arith(op: _Op, width: int, dst: str, src: str | None, imm: int, next_ip: int) -> Apply:
    """Compile one ALU operation; flags exactly as the processor sets them.

    AF is architecturally undefined after and/or/xor/test; processors clear it, and so do we.
    """
    mask = (1 << width) - 1
    imm &= mask
    sign_shift = width - 8  # moves the sign bit to SF (bit 7)
    of_shift = width - 12  # moves the sign bit to OF (bit 11)
    write = op not in (_Op.CMP, _Op.TEST)

    if op is _Op.ADD:

        def add(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
            a = getattr(regs, dst) & mask
            b = getattr(regs, src) & mask if src is not None else imm
            full = a + b
            res = full & mask
            regs.eflags = (
                (regs.eflags & _KEEP_FLAGS)
                | full >> width
                | _PARITY[res & 0xFF]
                | (a ^ b ^ res) & 0x10
                | (0 if res else _ZF)
                | (res >> sign_shift) & 0x80
                | ((a ^ res) & (b ^ res)) >> of_shift & 0x800
            )
            setattr(regs, dst, res)
            regs.rip = next_ip

        return add
    if op in (_Op.SUB, _Op.CMP):

        def sub(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
            a = getattr(regs, dst) & mask
            b = getattr(regs, src) & mask if src is not None else imm
            res = (a - b) & mask
            regs.eflags = (
                (regs.eflags & _KEEP_FLAGS)
                | (1 if a < b else 0)
                | _PARITY[res & 0xFF]
                | (a ^ b ^ res) & 0x10
                | (0 if res else _ZF)
                | (res >> sign_shift) & 0x80
                | ((a ^ b) & (a ^ res)) >> of_shift & 0x800
            )
            if write:
                setattr(regs, dst, res)
            regs.rip = next_ip

        return sub
    combine = _LOGIC[op]

    def logic(regs: UserRegs, write_mem: WriteMem, read_mem: ReadMem) -> None:
        a = getattr(regs, dst) & mask
        res = combine(a, getattr(regs, src) & mask if src is not None else imm)
        regs.eflags = (
            (regs.eflags & _KEEP_FLAGS)
            | _PARITY[res & 0xFF]
            | (0 if res else _ZF)
            | (res >> sign_shift) & 0x80
        )
        if write:
            setattr(regs, dst, res)
        regs.rip = next_ip

    return logic


_LOGIC: dict[_Op, Callable[[int, int], int]] = {
    _Op.OR: operator.or_,
    _Op.AND: operator.and_,
    _Op.XOR: operator.xor,
    _Op.TEST: operator.and_,
}

_BUILDERS: dict[tuple[OpMap, int], _Builder] = {
    (OpMap.PRIMARY, 0x90): _nop,
    (OpMap.M0F, 0x1F): _nop,
    (OpMap.M0F, 0x1E): _nop,
    (OpMap.PRIMARY, 0x68): _push,
    (OpMap.PRIMARY, 0x6A): _push,
    **{(OpMap.PRIMARY, op): _push for op in range(0x50, 0x58)},
    **{(OpMap.PRIMARY, op): _pop for op in range(0x58, 0x60)},
    **{(OpMap.PRIMARY, op): _mov for op in (0x89, 0x8B, 0xC7, *range(0xB8, 0xC0))},
    **{(OpMap.PRIMARY, op): _alu for op in (*_REG_REG_OPS, *_ACC_IMM_OPS, 0x81, 0x83, 0xF7)},
    (OpMap.PRIMARY, 0x8D): _lea,
}
