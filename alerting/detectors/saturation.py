"""Steam saturation: chamber pressure against IAPWS-IF97 saturation at the chamber temperature.

A two-input detector (``temperature_c``, ``pressure_kpa``) for a sterilizer's saturated-steam
phases: during the hold the chamber must hold saturated steam, so P = Psat(T). Air left in the
chamber (a failed pre-vacuum, a leak) adds its partial pressure on top, and the steam in contact
with the load is then cooler than the thermometer in the drain suggests (WS 310.3; standards.md
§4). The score grows with the excess ``P − Psat(T)`` beyond the instrument uncertainty:
0 below ``tolerance_kpa/2``, 0.5 at ``tolerance_kpa`` (5 kPa: ±0.3 kPa transducer noise plus
±0.5 kPa from a 0.1 °C temperature step at 134 °C leave a wide margin). The median of the last
``window`` excesses is scored, so one glitched sample does not fire; a pause longer than
``max_gap_s`` (the end of one hold, the start of the next) empties that window.

The pipeline feeds it only during the phases named in the registry (``when: cycle_phase``),
because outside them the chamber holds air or vacuum and the check means nothing. Samples below
``min_temp_c`` are ignored for the same reason. Memory: ``window`` numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from alerting.detectors.base import finite, ramp_score
from protocols.steam import saturation_excess_kpa


class SaturationDetector:
    __slots__ = (
        "_last",
        "_recent",
        "gate",
        "max_gap_s",
        "min_temp_c",
        "name",
        "tolerance_kpa",
        "window",
    )

    inputs = 2

    def __init__(
        self,
        *,
        tolerance_kpa: float = 5.0,
        window: int = 3,
        min_temp_c: float = 100.0,
        max_gap_s: float = 120.0,
        gate: float = 0.5,
    ) -> None:
        if tolerance_kpa <= 0 or window < 1:
            raise ValueError("steam_saturation: need tolerance_kpa > 0 and window >= 1")
        self.name = "steam_saturation"
        self.tolerance_kpa = tolerance_kpa
        self.window = window
        self.min_temp_c = min_temp_c
        self.max_gap_s = max_gap_s
        self.gate = gate  # unused: the reference is physics, not a learnt baseline
        self._recent: deque[float] = deque(maxlen=window)
        self._last = 0.0

    def excess(self) -> float:
        """Median excess pressure (kPa) over the recent window; 0.0 before any sample."""
        values = sorted(self._recent)
        n = len(values)
        if not n:
            return 0.0
        m = n >> 1
        return values[m] if n & 1 else 0.5 * (values[m - 1] + values[m])

    def update(self, ts: float, temperature_c: float, pressure_kpa: float) -> float:
        if not (finite(ts) and finite(temperature_c) and finite(pressure_kpa)):
            return 0.0
        if temperature_c < self.min_temp_c:
            return 0.0
        if abs(ts - self._last) > self.max_gap_s:
            self._recent.clear()
        self._last = ts
        self._recent.append(saturation_excess_kpa(temperature_c, pressure_kpa))
        return ramp_score(self.excess(), 0.5 * self.tolerance_kpa, self.tolerance_kpa)

    def state_size(self) -> int:
        return len(self._recent) + 1

    def warm_up(self, history: Iterable[tuple[float, ...]]) -> None:
        update = self.update
        for ts, temperature_c, pressure_kpa in history:
            update(ts, temperature_c, pressure_kpa)

    def reset(self) -> None:
        self._recent.clear()
        self._last = 0.0
