"""Stuck or flat-lined sensors: the value stops changing beyond the instrument's resolution.

A live measurement is noisy at the resolution it reports (a chlorine probe's last digit flickers),
so a run of ``samples`` readings all within ``tolerance`` of the run's first reading means the
sensor, its transmitter or the gateway is repeating itself. ``tolerance`` defaults to half the
``resolution``, i.e. bit-identical repeats; set it to one resolution step to also catch a sensor
that flickers by one digit around a frozen value. ``samples`` must be long enough that a quiet but
live signal never stays that still: the registry sets it per quantity from the clean simulator
runs (the longest natural run seen, with a wide margin).

The score is 0 up to ``samples/2`` repeats, 0.5 at ``samples``, and stays up until the value moves.
There is no baseline to protect, so ``gate`` is unused. Memory: three numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerting.detectors.base import finite, ramp_score


class StuckDetector:
    __slots__ = ("_anchor", "_run", "gate", "name", "resolution", "samples", "tolerance", "zero")

    inputs = 1

    def __init__(
        self,
        *,
        resolution: float,
        samples: int = 30,
        tolerance: float | None = None,
        gate: float = 0.5,
    ) -> None:
        if resolution <= 0 or samples < 2:
            raise ValueError("stuck: need resolution > 0 and samples >= 2")
        self.name = "stuck"
        self.resolution = resolution
        self.samples = samples
        self.tolerance = resolution / 2.0 if tolerance is None else tolerance
        self.zero = samples / 2.0
        self.gate = gate
        self._anchor: float | None = None
        self._run = 0

    def update(self, ts: float, value: float) -> float:
        if not finite(value):
            return 0.0
        anchor = self._anchor
        if anchor is not None and abs(value - anchor) <= self.tolerance:
            self._run += 1
        else:
            self._anchor = value
            self._run = 1
        return ramp_score(self._run, self.zero, self.samples)

    def state_size(self) -> int:
        return 3

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, value in history:
            update(ts, value)

    def reset(self) -> None:
        self._anchor = None
        self._run = 0
