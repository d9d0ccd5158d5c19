"""A speedscope profile (https://www.speedscope.app/file-format-schema.json).

One "sampled" profile per aggregation table (each printa() of a numeric
aggregation, and each one left for the end): every entry is a sample whose
stack is its key as frames, root first (see :mod:`dtproc.d.format_folded`),
weighted by its value. The document is written once, when the run ends.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from dtproc.d.format_folded import AggregationSink, weighted_rows
from dtproc.d.records import AggTable
from dtproc.d.values import Symbolizer

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


class SpeedscopeSink(AggregationSink):
    def __init__(
        self,
        out: TextIO,
        *,
        symbolize: Symbolizer | None = None,
        offsets: bool = False,
        name: str = "dtproc",
    ) -> None:
        super().__init__(out, symbolize=symbolize, offsets=offsets)
        self.name = name
        self.frames: list[dict[str, str]] = []
        self._frame_index: dict[str, int] = {}
        self.profiles: list[dict[str, Any]] = []

    def _frame(self, name: str) -> int:
        i = self._frame_index.get(name)
        if i is None:
            i = self._frame_index[name] = len(self.frames)
            self.frames.append({"name": name})
        return i

    def table(self, table: AggTable) -> None:
        by_name: dict[str, tuple[list[list[int]], list[int]]] = {}
        for name, frames, weight in weighted_rows(table, self.symbolize, self.offsets):
            samples, weights = by_name.setdefault(name, ([], []))
            samples.append([self._frame(f) for f in frames])
            weights.append(weight)
        for name, (samples, weights) in by_name.items():
            self.profiles.append(
                {
                    "type": "sampled",
                    "name": name,
                    "unit": "none",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
            )

    def close(self) -> None:
        doc = {
            "$schema": SCHEMA,
            "shared": {"frames": self.frames},
            "profiles": self.profiles,
            "name": self.name,
            "activeProfileIndex": 0,
            "exporter": "dtproc",
        }
        self.out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self.out.flush()
