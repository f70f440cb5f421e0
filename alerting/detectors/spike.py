"""Spikes: a short excursion that comes back (a Hampel filter with a confirmation step).

Each sample is compared with the median of the last ``window`` accepted samples, in units of a
robust spread (IQR/1.349, floored at ``min_scale`` so a quantized, quiet series does not turn every
least-significant-bit step into a spike). An outlier (score ≥ ``gate``) is not learnt; it is
*held*, and so is every following sample until one is back inside the dead band (z ≤ ``z_zero``).
If that happens within ``max_len`` samples the excursion was a spike, and the sample that comes
back scores the excursion's peak; if not, it was a change of level or a slow natural event (the
level-shift detector's business, or nobody's), so the held samples are learnt and the score
stays 0. "Back" means back to the baseline, not merely under the threshold: a turbidity event that
rises over five minutes and lingers at its peak must not count as a spike.

Why confirm: without it every level shift, threshold breach and the onset of every natural event
(a turbidity rise, a room filling up) starts with a few "spikes". The price is a delay of one
sample after the spike ends. ``confirm=False`` gives the plain Hampel score at once.

Memory: ``window`` + ``max_len`` numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerting.detectors.base import SortedWindow, finite, ramp_score


class SpikeDetector:
    __slots__ = (
        "_held",
        "_peak",
        "_win",
        "confirm",
        "gate",
        "max_len",
        "min_fill",
        "min_scale",
        "name",
        "window",
        "z_half",
        "z_zero",
    )

    inputs = 1

    def __init__(
        self,
        *,
        window: int = 31,
        z_zero: float = 4.0,
        z_half: float = 8.0,
        min_scale: float = 0.0,
        max_len: int = 3,
        confirm: bool = True,
        min_fill: int | None = None,
        gate: float = 0.5,
    ) -> None:
        if window < 3 or max_len < 1 or not 0 <= z_zero < z_half or min_scale < 0:
            raise ValueError("spike: need window >= 3, max_len >= 1, 0 <= z_zero < z_half")
        self.name = "spike"
        self.window = window
        self.z_zero = z_zero
        self.z_half = z_half
        self.min_scale = min_scale
        self.max_len = max_len
        self.confirm = confirm
        self.min_fill = min_fill if min_fill is not None else max(3, window // 2)
        self.gate = gate
        self._win = SortedWindow(window)
        self._held: list[float] = []
        self._peak = 0.0

    def _score(self, value: float) -> float:
        win = self._win
        scale = win.sigma()
        if scale < self.min_scale:
            scale = self.min_scale
        dev = abs(value - win.median())
        if scale <= 0.0:
            return 0.0 if dev == 0.0 else 1.0
        return ramp_score(dev / scale, self.z_zero, self.z_half)

    def update(self, ts: float, value: float) -> float:
        if not finite(value):
            return 0.0
        win = self._win
        if len(win) < self.min_fill:
            win.push(value)
            return 0.0
        score = self._score(value)
        held = self._held
        if not held:
            if score < self.gate:
                win.push(value)
                return score
            held.append(value)
            self._peak = score
            return 0.0 if self.confirm else score
        if score == 0.0:  # back inside the dead band: the excursion was a spike
            win.push(value)
            peak = self._peak
            held.clear()
            self._peak = 0.0
            return peak if self.confirm else score
        held.append(value)  # still out (or in the grey zone): the excursion goes on
        if score > self._peak:
            self._peak = score
        if len(held) > self.max_len:  # not a spike: a new level or a slow event; learn it
            for x in held:
                win.push(x)
            held.clear()
            self._peak = 0.0
            return 0.0 if self.confirm else score
        return 0.0 if self.confirm else score

    def state_size(self) -> int:
        return len(self._win) + len(self._held) + 1

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, value in history:
            update(ts, value)

    def reset(self) -> None:
        self._win.clear()
        self._held.clear()
        self._peak = 0.0
