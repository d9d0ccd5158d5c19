"""Probe descriptions: ``provider:module:function:name`` with globs.

A description with fewer than four fields is right-aligned, as in dtrace:
``BEGIN`` is the name, ``malloc:entry`` is function and name. dtrace's
``-P``, ``-m`` and ``-f`` align them on another field instead (``-m
libc.so.6`` is a module, ``-f pid1:libc.so.6:malloc`` ends at the function),
which :meth:`ProbeDescription.parse` takes as *last*. An empty field
matches anything. Fields may use the shell-style globs dtrace's gmatch knows:
``*``, ``?``, ``[abc]``, ``[a-z]``, ``[!abc]`` and ``\\`` to quote.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from dtproc.d.values import ProbeInfo


class ProbeField(enum.IntEnum):
    """The four fields of a probe description, in order."""

    PROVIDER = 0
    MODULE = 1
    FUNCTION = 2
    NAME = 3


class BadProbeDescription(ValueError):
    """The text is not a probe description (more than four fields)."""


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1 if i < n and pattern[i] in "!^" else i)
            if end < 0:
                out.append(re.escape(c))
                continue
            body = pattern[i:end]
            i = end + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("]", "\\]")
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def is_glob(text: str) -> bool:
    """Whether a field uses glob characters (and so may match many probes)."""
    return any(c in text for c in "*?[\\")


@dataclass(frozen=True, slots=True)
class ProbeDescription:
    """One parsed probe description; empty fields match anything."""

    provider: str
    module: str
    function: str
    name: str
    _regexes: tuple[re.Pattern[str] | None, ...] = field(
        default=(), compare=False, repr=False, hash=False
    )

    @classmethod
    def parse(cls, text: str, last: ProbeField = ProbeField.NAME) -> ProbeDescription:
        """Parse *text*, its last part naming field *last* and the others those before it."""
        parts = text.split(":")
        if len(parts) > last + 1:
            raise BadProbeDescription(
                f'invalid probe description "{text}": Overspecified probe description'
            )
        fields = [""] * (last + 1 - len(parts)) + parts + [""] * (3 - last)
        regexes = tuple(_glob_regex(f) if f and is_glob(f) else None for f in fields)
        return cls(fields[0], fields[1], fields[2], fields[3], regexes)

    @classmethod
    def of_probe(cls, probe: ProbeInfo) -> ProbeDescription:
        """The description that names exactly *probe* (a probe id resolved, as dtrace does)."""
        return cls(probe.provider, probe.module, probe.function, probe.name)

    @property
    def fields(self) -> tuple[str, str, str, str]:
        return (self.provider, self.module, self.function, self.name)

    def field_matches(self, index: int, value: str) -> bool:
        """Whether field *index* (0 = provider ... 3 = name) matches *value*."""
        pattern = self.fields[index]
        if not pattern:
            return True
        regex = self._regexes[index] if self._regexes else None
        if regex is None:
            return pattern == value
        return regex.fullmatch(value) is not None

    def matches(self, provider: str, module: str, function: str, name: str) -> bool:
        """Whether a probe with these four names is described by this."""
        return (
            self.field_matches(3, name)
            and self.field_matches(2, function)
            and self.field_matches(1, module)
            and self.field_matches(0, provider)
        )

    def matches_probe(self, probe: ProbeInfo) -> bool:
        return self.matches(probe.provider, probe.module, probe.function, probe.name)

    def __str__(self) -> str:
        return ":".join(self.fields)
