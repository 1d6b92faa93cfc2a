"""Bounded-memory statistics of a stream of rows, for the run report: a reservoir of examples and numeric
summaries whose memory does not grow with the stream (a 2M-question run is read once, never held).

Distributions keep a *bounded sample* (a reservoir of at most `SAMPLE_VALUES` values) plus the exact count, mean,
min and max; the report's histograms are drawn from the sample. A uniform sample of 20K values draws the same
histogram shape as all 2M values to within a percent or so per bin, and needs no bin range chosen in advance
(reward scores have no known range)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

SAMPLE_VALUES = 20_000


class Reservoir:
    """A uniform sample of at most `size` items of a stream of unknown length (Vitter's algorithm R), seeded so a
    report is the same every time it is drawn from the same data."""

    def __init__(self, size: int, seed: int = 0):
        if size < 0:
            raise ValueError(f"reservoir size must be >= 0, got {size}")
        self.size, self.seen, self.items = size, 0, []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.add(item)


class NumericSummary:
    """Exact count / mean / min / max of a stream of numbers and a bounded sample of them (see the module doc).
    Non-finite values (NaN, inf) are counted apart and left out of the rest."""

    def __init__(self, sample_size: int = SAMPLE_VALUES, seed: int = 0):
        self.sample = Reservoir(sample_size, seed)
        self.total, self.low, self.high, self.non_finite = 0.0, math.inf, -math.inf, 0

    @property
    def count(self) -> int:
        return self.sample.seen

    def add(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            self.non_finite += 1
            return
        self.sample.add(value)
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def to_json(self) -> dict[str, Any]:
        """count, mean, min, max, non_finite and the sample (a list of floats), for the report cache."""
        n = self.count
        return {"count": n, "mean": self.total / n if n else None, "min": self.low if n else None,
                "max": self.high if n else None, "non_finite": self.non_finite, "sample": list(self.sample.items)}


def words(text: Any) -> int:
    """A text's length in whitespace-separated words (cheap at 2M rows, and readable; tokens need a tokenizer)."""
    return len(str(text).split()) if text is not None else 0
