"""Physically impossible rates of change: |dv/dt| beyond what the quantity can do.

The rate is measured against the last *plausible* sample, not the last sample: a reading that
jumps impossibly is not learnt (``gate``), so the value that follows is judged against the last
good one. Because the allowed change grows with the time since that good sample, a real change of
level is accepted as soon as it is physically reachable, so the detector cannot lock up.

``max_per_s`` comes from the registry's per-quantity table (alerting/data/detectors.yaml), where
each entry says why that rate is impossible for the quantity (heat capacity, sensor response,
valve and pump sizes). The score is 0 below half the maximum and 0.5 at the maximum.

Memory: two numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerting.detectors.base import finite, ramp_score


class RateDetector:
    __slots__ = ("_t", "_v", "gate", "max_per_s", "min_dt", "name")

    inputs = 1

    def __init__(self, *, max_per_s: float, min_dt: float = 1.0, gate: float = 0.5) -> None:
        if max_per_s <= 0 or min_dt <= 0:
            raise ValueError("rate: need max_per_s > 0 and min_dt > 0")
        self.name = "rate_of_change"
        self.max_per_s = max_per_s
        self.min_dt = min_dt  # a duplicate timestamp is not an infinitely fast change
        self.gate = gate
        self._t: float | None = None
        self._v = 0.0

    def update(self, ts: float, value: float) -> float:
        if not finite(value) or not finite(ts):
            return 0.0
        if self._t is None:
            self._t, self._v = ts, value
            return 0.0
        dt = abs(ts - self._t)
        if dt < self.min_dt:
            dt = self.min_dt
        rate = abs(value - self._v) / dt / self.max_per_s
        score = ramp_score(rate, 0.5, 1.0)
        if score < self.gate:
            self._t, self._v = ts, value
        return score

    def state_size(self) -> int:
        return 2

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, value in history:
            update(ts, value)

    def reset(self) -> None:
        self._t = None
        self._v = 0.0
