"""Level shifts: a two-window median test.

The median of the last ``test`` samples is compared with the median of a longer ``reference``
window that ends where the test window begins, in units of the reference's robust spread
(IQR/1.349, floored at ``min_scale``). Medians make it indifferent to spikes; the reference's own
spread makes it indifferent to a series' usual wander. A shift shows once half the test window
has moved, so the delay is about ``test/2`` samples.

Keeping the shift out of the baseline: a sample leaving the test window joins the reference only
while the score is below ``gate``. So a sensor that jumps +250 µS/cm keeps scoring high for as
long as the offset lasts (one alert spanning the fault) and drops back when it ends. After
``rebaseline`` consecutive refused samples the new level is accepted as normal: the reference is
refilled from the test window (a recalibrated or replaced probe must not alarm for ever).

Memory: ``test`` + ``reference`` numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerting.detectors.base import SortedWindow, finite, ramp_score


class LevelShiftDetector:
    __slots__ = (
        "_ref",
        "_refused",
        "_test",
        "gate",
        "min_fill",
        "min_scale",
        "name",
        "rebaseline",
        "reference",
        "test",
        "z_half",
        "z_zero",
    )

    inputs = 1

    def __init__(
        self,
        *,
        test: int = 10,
        reference: int = 120,
        z_zero: float = 4.0,
        z_half: float = 8.0,
        min_scale: float = 0.0,
        rebaseline: int = 1440,
        min_fill: int | None = None,
        gate: float = 0.5,
    ) -> None:
        if test < 1 or reference < 3 or not 0 <= z_zero < z_half or rebaseline < 1:
            raise ValueError("level_shift: need test >= 1, reference >= 3, 0 <= z_zero < z_half")
        self.name = "level_shift"
        self.test = test
        self.reference = reference
        self.z_zero = z_zero
        self.z_half = z_half
        self.min_scale = min_scale
        self.rebaseline = rebaseline
        self.min_fill = min_fill if min_fill is not None else max(3, reference // 2)
        self.gate = gate
        self._test = SortedWindow(test)
        self._ref = SortedWindow(reference)
        self._refused = 0

    def _score(self) -> float:
        ref = self._ref
        scale = ref.sigma()
        if scale < self.min_scale:
            scale = self.min_scale
        dev = abs(self._test.median() - ref.median())
        if scale <= 0.0:
            return 0.0 if dev == 0.0 else 1.0
        return ramp_score(dev / scale, self.z_zero, self.z_half)

    def update(self, ts: float, value: float) -> float:
        if not finite(value):
            return 0.0
        test, ref = self._test, self._ref
        leaving = test.oldest() if test.full else None
        test.push(value)
        if len(ref) < self.min_fill:
            if leaving is not None:
                ref.push(leaving)
            return 0.0
        score = self._score()
        if leaving is not None:
            if score < self.gate:
                ref.push(leaving)
                self._refused = 0
            else:
                self._refused += 1
                if self._refused >= self.rebaseline:  # a lasting new level: accept it
                    ref.clear()
                    for x in test.values():
                        ref.push(x)
                    self._refused = 0
        return score

    def state_size(self) -> int:
        return len(self._test) + len(self._ref) + 1

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, value in history:
            update(ts, value)

    def reset(self) -> None:
        self._test.clear()
        self._ref.clear()
        self._refused = 0
