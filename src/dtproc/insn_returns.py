"""Where a function returns, for return probes (DTrace pid provider semantics on x86).

A return probe fires at every instruction by which control leaves the function for its
caller: each near ``ret`` (``ret``, ``ret $n``, ``repz ret``, ``bnd ret``) and each tail
call, a jump out of the function whose callee then returns to our caller. The function is
swept linearly, as DTrace does; the sweep stops at the first bytes that do not decode (data
in a hand-written function, or a truncated last instruction) and says where.

Deciding about jumps:

* ``jmp rel`` to a target outside the function is a tail call; inside, a local branch.
* ``jcc``/``loop``/``jrcxz`` out of the function is a *conditional* tail call (clang emits
  them): a return only when taken, which the caller learns by emulating the branch.
* ``jmp *mem`` with an index register is switch dispatch through a jump table; through a
  base register or ``disp(%rip)`` (a GOT slot, a vtable entry) it is a tail call.
* ``jmp *reg`` is switch dispatch when it carries ``notrack`` (how gcc -fcf-protection
  marks jump-table jumps) or when an indexed load (the table read: ``movslq (%rdx,%rax,4)``,
  ``mov (%rdx,%rax,8)``, movzx/movsx) precedes it within the last few straight-line
  instructions; otherwise it is a tail call through a pointer.

Compilers split functions into hot and cold parts (gcc's ``foo.cold``); jumps between the
parts are not tail calls, so the caller passes the other part's range as ``also_inside``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from dtproc.insn_decode import Flow, Instruction, decode
from dtproc.insn_encoding import DS, Escape, OpMap

_TABLE_LOOKBACK = 8  # straight-line instructions searched for a jump table's load
_TABLE_LOADS = frozenset(
    {(OpMap.PRIMARY, 0x8B), (OpMap.PRIMARY, 0x63)}
    | {(OpMap.M0F, op) for op in (0xB6, 0xB7, 0xBE, 0xBF)}
)


class ReturnKind(enum.Enum):
    RET = "ret"
    TAIL_CALL = "tail call"  # an unconditional jump out of the function
    COND_TAIL_CALL = "conditional tail call"  # a return only when the branch is taken


@dataclass(frozen=True, slots=True)
class ReturnSite:
    """A return-probe site: ``offset`` from the function's start; ``target`` is where a
    direct tail call goes (``None`` for ``ret`` and indirect tail calls).
    """

    offset: int
    kind: ReturnKind
    target: int | None = None


@dataclass(frozen=True, slots=True)
class ReturnSites:
    """What a sweep of one function found.

    ``jump_tables`` are the offsets of indirect jumps judged to be switch dispatch (not
    return sites); ``undecodable`` is the offset where the sweep stopped, ``None`` when
    every byte of the function decoded.
    """

    sites: tuple[ReturnSite, ...]
    jump_tables: tuple[int, ...]
    undecodable: int | None


def return_sites(
    code: bytes, start: int, *, also_inside: Sequence[tuple[int, int]] = ()
) -> ReturnSites:
    """Return sites of the function whose bytes ``code`` start at address ``start``.

    ``also_inside`` lists further ``(low, high)`` address ranges (high exclusive) that
    belong to the same function, such as its ``.cold`` part.
    """
    insns = decode(code, start)
    ranges = [(start, start + len(code)), *also_inside]

    def outside(target: int) -> bool:
        return not any(low <= target < high for low, high in ranges)

    sites: list[ReturnSite] = []
    tables: list[int] = []
    for i, insn in enumerate(insns):
        offset = insn.address - start
        flow = insn.flow
        if flow is Flow.RETURN:
            sites.append(ReturnSite(offset, ReturnKind.RET))
        elif flow is Flow.JUMP and insn.target is not None and outside(insn.target):
            sites.append(ReturnSite(offset, ReturnKind.TAIL_CALL, insn.target))
        elif flow is Flow.BRANCH and insn.target is not None and not insn.encoding.xbegin:
            if outside(insn.target):
                sites.append(ReturnSite(offset, ReturnKind.COND_TAIL_CALL, insn.target))
        elif flow is Flow.INDIRECT_JUMP:
            if _is_jump_table(insns, i):
                tables.append(offset)
            else:
                sites.append(ReturnSite(offset, ReturnKind.TAIL_CALL))
    decoded = insns[-1].end - start if insns else 0
    return ReturnSites(tuple(sites), tuple(tables), None if decoded == len(code) else decoded)


def _is_jump_table(insns: Sequence[Instruction], i: int) -> bool:
    enc = insns[i].encoding
    if enc.has_memory:
        return enc.mem().index is not None
    if DS in enc.prefixes:  # notrack
        return True
    for prev in reversed(insns[max(0, i - _TABLE_LOOKBACK) : i]):
        if prev.flow is not Flow.NEXT:
            return False
        pe = prev.encoding
        if (
            pe.escape is Escape.LEGACY
            and (pe.opmap, pe.opcode) in _TABLE_LOADS
            and pe.has_memory
            and pe.mem().index is not None
        ):
            return True
    return False
