"""Deciding, kept apart from scoring: when does a stream of scores mean "anomalous"?

A :class:`Decider` turns scores into a state with hysteresis: it goes *on* after ``for_samples``
consecutive scores at or above the on-threshold and *off* after ``clear_samples`` consecutive
scores below the clear threshold (``clear`` < ``threshold``), so a score hovering at the threshold
does not flap. The on-threshold is either fixed (``threshold``: 0.5 is every detector's own
calibrated threshold, see ``ramp_score``) or adaptive: the ``quantile`` of the last ``window``
scores, never below ``threshold`` — for a series whose scores run high for reasons the detector
cannot know, so that only its rarest scores fire.

The pipeline hands ``threshold`` to the detector as its learning ``gate``: points that would fire
are kept out of the baseline (alerting/detectors/base.py).
"""

from __future__ import annotations

from typing import NamedTuple

from alerting.detectors.base import SortedWindow


class Decision(NamedTuple):
    active: bool  # the anomaly is on after this score
    changed: bool  # this score switched it on or off
    threshold: float  # the on-threshold that applied to this score


class Decider:
    __slots__ = (
        "_above",
        "_active",
        "_below",
        "_fixed",
        "_recent",
        "clear",
        "clear_samples",
        "for_samples",
        "quantile",
        "threshold",
    )

    def __init__(
        self,
        threshold: float = 0.5,
        clear: float | None = None,
        *,
        for_samples: int = 1,
        clear_samples: int = 3,
        quantile: float | None = None,
        window: int = 1000,
    ) -> None:
        clear = 0.6 * threshold if clear is None else clear
        if not 0 < threshold <= 1 or not 0 <= clear <= threshold:
            raise ValueError("decider: need 0 < threshold <= 1 and 0 <= clear <= threshold")
        if for_samples < 1 or clear_samples < 1:
            raise ValueError("decider: for_samples and clear_samples must be >= 1")
        if quantile is not None and not 0.5 <= quantile < 1:
            raise ValueError("decider: quantile must be in [0.5, 1)")
        self.threshold = threshold
        self.clear = clear
        self.for_samples = for_samples
        self.clear_samples = clear_samples
        self.quantile = quantile
        self._recent = SortedWindow(window) if quantile is not None else None
        # With a fixed threshold the four possible answers are made once (no allocation per
        # score): (active, changed) → Decision.
        self._fixed = {
            (a, c): Decision(a, c, threshold) for a in (False, True) for c in (False, True)
        }
        self._active = False
        self._above = 0
        self._below = 0

    @property
    def active(self) -> bool:
        return self._active

    def update(self, score: float) -> Decision:
        on = self.threshold
        off = self.clear
        recent = self._recent
        if recent is not None:
            if len(recent) >= 10:
                q = recent.quantile(self.quantile)  # type: ignore[arg-type]
                if q > on:
                    off = off * q / on
                    on = q
            recent.push(score)
        active, changed = self._step(score, on, off)
        if on == self.threshold:
            return self._fixed[active, changed]
        return Decision(active, changed, on)

    def _step(self, score: float, on: float, off: float) -> tuple[bool, bool]:
        if self._active:
            if score < off:
                self._below += 1
                if self._below >= self.clear_samples:
                    self._active = False
                    self._above = self._below = 0
                    return False, True
            else:
                self._below = 0
            return True, False
        if score >= on:
            self._above += 1
            if self._above >= self.for_samples:
                self._active = True
                self._above = self._below = 0
                return True, True
        else:
            self._above = 0
        return False, False

    def state_size(self) -> int:
        return 3 + (len(self._recent) if self._recent is not None else 0)

    def reset(self) -> None:
        self._active = False
        self._above = self._below = 0
        if self._recent is not None:
            self._recent.clear()
