"""Output formats: which sink renders a run."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, TextIO

from dtproc.d.values import Symbolizer

if TYPE_CHECKING:
    from dtproc.d.program import Options
    from dtproc.d.records import Sink


class OutputFormat(enum.Enum):
    DTRACE = "dtrace"  # dtrace's own text
    JSON = "json"  # one JSON object per line and record
    FOLDED = "folded"  # flame-graph input: frame;frame;frame count
    SPEEDSCOPE = "speedscope"  # one speedscope JSON document at the end


def make_sink(
    fmt: OutputFormat, out: TextIO, options: Options, symbolize: Symbolizer | None
) -> Sink:
    """The sink for *fmt*, configured from the program's options."""
    if fmt is OutputFormat.DTRACE:
        from dtproc.d.format_dtrace import TextSink

        return TextSink(
            out,
            quiet=options.quiet,
            symbolize=symbolize,
            strsize=options.strsize,
            stackindent=options.stackindent,
            rawbytes=options.is_set("rawbytes"),
        )
    if fmt is OutputFormat.JSON:
        from dtproc.d.format_json import JsonSink

        return JsonSink(out, symbolize=symbolize)
    if fmt is OutputFormat.FOLDED:
        from dtproc.d.format_folded import FoldedSink

        return FoldedSink(out, symbolize=symbolize)
    from dtproc.d.format_speedscope import SpeedscopeSink

    return SpeedscopeSink(out, symbolize=symbolize)
