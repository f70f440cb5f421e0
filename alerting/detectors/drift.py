"""Slow drift: how far the series has travelled over a long window, spikes and steps removed.

The series is cut into time blocks of ``block_s`` (15 min); each block is summarised by its median
and the last ``blocks`` medians are kept (96 × 15 min = 24 h). The statistic is the sum of the
block-to-block changes over the window after dropping the largest ``trim`` share of them by size
(scaled back up by the share kept). A drift moves every block a little, so trimming barely touches
it; a level shift or a spike puts its change into one or two block steps, and trimming removes
them, so the other detectors keep their own faults. A 24-hour window also cancels the daily cycle
of temperature-driven quantities, which would otherwise look like a 12-hour drift.

The threshold is a change in the quantity's own unit (``change_half``, e.g. 0.3 pH in 24 h): a
drift is judged by what it does to the measurement, and the registry gives it per quantity. The
score is recomputed when a block closes and held in between; it is 0 until ``min_coverage`` of the
window has data, so after a restart it needs ``warm_up`` with a window of history.

Memory: ``blocks`` medians + at most ``block_cap`` samples of the open block.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from itertools import pairwise

from alerting.detectors.base import finite, ramp_score


class DriftDetector:
    __slots__ = (
        "_block",
        "_blocks",
        "_index",
        "_score",
        "block_cap",
        "block_s",
        "blocks",
        "change_half",
        "change_zero",
        "gate",
        "min_coverage",
        "name",
        "trim",
    )

    inputs = 1

    def __init__(
        self,
        *,
        change_half: float,
        change_zero: float | None = None,
        block_s: float = 900.0,
        blocks: int = 96,
        trim: float = 0.1,
        min_coverage: float = 0.75,
        block_cap: int = 256,
        gate: float = 0.5,
    ) -> None:
        zero = change_half / 2.0 if change_zero is None else change_zero
        if not 0 <= zero < change_half or block_s <= 0 or blocks < 4 or not 0 <= trim < 0.5:
            raise ValueError("drift: need 0 <= change_zero < change_half, blocks >= 4, trim < 0.5")
        self.name = "drift"
        self.change_half = change_half
        self.change_zero = zero
        self.block_s = block_s
        self.blocks = blocks
        self.trim = trim
        self.min_coverage = min_coverage
        self.block_cap = block_cap
        self.gate = gate  # unused: medians over blocks need no protection from single outliers
        self._blocks: deque[tuple[int, float]] = deque(maxlen=blocks)
        self._block: list[float] = []
        self._index: int | None = None
        self._score = 0.0

    def _close(self) -> None:
        values = sorted(self._block)
        n = len(values)
        m = n >> 1
        median = values[m] if n & 1 else 0.5 * (values[m - 1] + values[m])
        assert self._index is not None
        self._blocks.append((self._index, median))
        self._block = []

    def _evaluate(self, now_index: int) -> float:
        first = now_index - self.blocks
        kept = [m for i, m in self._blocks if i >= first]
        if len(kept) < max(4, math.ceil(self.min_coverage * self.blocks)):
            return 0.0
        diffs = [b - a for a, b in pairwise(kept)]
        drop = int(self.trim * len(diffs))
        if drop:
            diffs.sort(key=abs)
            diffs = diffs[: len(diffs) - drop]
        total = sum(diffs) * (len(diffs) + drop) / len(diffs)
        return ramp_score(abs(total), self.change_zero, self.change_half)

    def update(self, ts: float, value: float) -> float:
        if not finite(value) or not finite(ts):
            return self._score
        index = math.floor(ts / self.block_s)
        if self._index is not None and index < self._index:
            return self._score  # a late sample for a block already closed: dropped
        if index != self._index:
            if self._block:
                self._close()
                self._score = self._evaluate(index)
            self._index = index
        if len(self._block) < self.block_cap:
            self._block.append(value)
        return self._score

    @property
    def history_s(self) -> float:
        """The window judged, in seconds: what a warm-up must restore (alerting/warmup.py)."""
        return self.block_s * self.blocks

    def state_size(self) -> int:
        return 2 * len(self._blocks) + len(self._block) + 2

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, value in history:
            update(ts, value)

    def reset(self) -> None:
        self._blocks.clear()
        self._block = []
        self._index = None
        self._score = 0.0
