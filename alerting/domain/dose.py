"""Cumulative personal dose against the period, annual and five-year limits (GB 18871, GBZ 128).

A personal-dosimeter reader reports ``dose_msv``: Hp(10) accumulated since the start of the
current monitoring period (1–3 months, a property of the dosimeter's issuance), and its counter
starts again from zero at the next period. One :class:`DoseMonitor` per dosimeter turns those
readings into the worker's dose history and checks, at every reading:

* the **period** dose against the investigation level, 5 mSv/a pro-rated to the period
  (0.42 mSv for a month, 1.25 mSv for a quarter);
* the **rolling 12 months** (closed periods that ended in the last 365 days, plus the current
  one) against 20 mSv;
* the **calendar year** (periods that started this local year, plus the current) against 50 mSv;
* the **five years** (the last 5 × 365 days) against 100 mSv (20 mSv/a averaged over 5 years).

A period ends when the counter resets: a reading lower than the previous one by more than
``reset_tolerance_msv`` (the counter, not the calendar, is the truth: a reader exchanged late or a
dosimeter swapped mid-period is still handled). The closed period's dose is its highest reading.

Findings are raised when a sum first exceeds its limit and cleared when it no longer does (a new
period, a year rolling over, old periods ageing out). The limits are a table with the standard
and grade beside each value (:data:`DOSE_LIMITS`). Memory: one entry per closed period, for five
years (60 monthly periods), capped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from alerting.domain.findings import Finding, utc
from alerting.model import Severity

_YEAR_S = 365.0 * 86400.0
_MAX_PERIODS = 400  # closed periods kept; older ones are merged pairwise beyond this


@dataclass(frozen=True, slots=True)
class DoseLimit:
    rule: str
    scope: str  # "period" | "rolling_12_months" | "calendar_year" | "five_years"
    limit_msv: float  # for "period": the annual investigation level, pro-rated per period
    severity: Severity
    standard: str
    confidence: str


#: The dose rules (reference/standards.md §3.2–3.3). Candidates for a data file beside the others.
DOSE_LIMITS: tuple[DoseLimit, ...] = (
    DoseLimit(
        "dose:investigation_level",
        "period",
        5.0,
        Severity.WARNING,
        "GBZ 128-2019 调查水平: 年有效剂量 5 mSv, 按监测周期折算",
        "B (5 mSv/a); C (pro-rating per period)",
    ),
    DoseLimit(
        "dose:rolling_12_months",
        "rolling_12_months",
        20.0,
        Severity.CRITICAL,
        "GB 18871-2002 附录B B1: 职业照射 连续5年平均有效剂量 20 mSv/a",
        "B",
    ),
    DoseLimit(
        "dose:calendar_year",
        "calendar_year",
        50.0,
        Severity.EMERGENCY,
        "GB 18871-2002 附录B B1: 任何一年中的有效剂量 50 mSv",
        "B",
    ),
    DoseLimit(
        "dose:five_years",
        "five_years",
        100.0,
        Severity.EMERGENCY,
        "GB 18871-2002 附录B B1: 连续5年 5 × 20 mSv",
        "B",
    ),
)


@dataclass(frozen=True, slots=True)
class DosePeriod:
    start: float  # unix seconds of the period's first reading
    end: float  # of its last reading
    dose_msv: float  # its highest cumulative reading
    year: int  # the local calendar year the period started in


class DoseMonitor:
    """One dosimeter's dose history; ``update`` returns findings raised or cleared."""

    def __init__(
        self,
        device: str,
        *,
        period_months: int = 1,
        utc_offset_h: float = 8.0,
        limits: tuple[DoseLimit, ...] = DOSE_LIMITS,
        reset_tolerance_msv: float = 0.005,
    ) -> None:
        if not 1 <= period_months <= 12:
            raise ValueError("period_months must be 1..12 (GBZ 128: usually 1, at most 3)")
        self.device = device
        self.period_months = period_months
        self.tz = timezone(timedelta(hours=utc_offset_h))
        self.limits = limits
        self.reset_tolerance_msv = reset_tolerance_msv
        self.closed: deque[DosePeriod] = deque()
        self._start: float | None = None  # the current period
        self._last_ts = 0.0
        self._last = 0.0
        self._max = 0.0
        self._open: dict[str, Severity] = {}

    def level(self, limit: DoseLimit) -> float:
        """The limit for this monitor: pro-rated to the period for the investigation level."""
        if limit.scope == "period":
            return limit.limit_msv * self.period_months / 12.0
        return limit.limit_msv

    def _year(self, ts: float) -> int:
        return datetime.fromtimestamp(ts, self.tz).year

    def sums(self, now: float) -> dict[str, float]:
        """Dose (mSv) per scope at ``now``: the current period, rolling 12 months, this calendar
        year, five years."""
        current = self._max if self._start is not None else 0.0
        year = self._year(now)
        rolling = current + sum(p.dose_msv for p in self.closed if p.end > now - _YEAR_S)
        five = current + sum(p.dose_msv for p in self.closed if p.end > now - 5 * _YEAR_S)
        in_year = sum(p.dose_msv for p in self.closed if p.year == year)
        if self._start is not None and self._year(self._start) == year:
            in_year += current
        return {
            "period": current,
            "rolling_12_months": rolling,
            "calendar_year": in_year,
            "five_years": five,
        }

    def update(self, ts: float, dose_msv: float) -> list[Finding]:
        if not math.isfinite(dose_msv) or dose_msv < 0:
            return []
        if self._start is None:
            self._start = ts
        elif dose_msv < self._last - self.reset_tolerance_msv:  # counter reset: a new period
            self._close()
            self._start = ts
        self._last_ts = ts
        self._last = dose_msv
        self._max = max(self._max, dose_msv)
        return self._check(ts)

    def _close(self) -> None:
        assert self._start is not None
        self.closed.append(
            DosePeriod(self._start, self._last_ts, self._max, self._year(self._start))
        )
        self._max = 0.0
        horizon = self._last_ts - 5 * _YEAR_S
        while self.closed and self.closed[0].end <= horizon:
            self.closed.popleft()
        if len(self.closed) > _MAX_PERIODS:
            a = self.closed.popleft()
            b = self.closed.popleft()
            self.closed.appendleft(DosePeriod(a.start, b.end, a.dose_msv + b.dose_msv, b.year))

    def _check(self, ts: float) -> list[Finding]:
        sums = self.sums(ts)
        out = []
        for limit in self.limits:
            value = sums[limit.scope]
            level = self.level(limit)
            over = value > level
            was = limit.rule in self._open
            if over == was:
                continue
            if over:
                self._open[limit.rule] = limit.severity
            else:
                del self._open[limit.rule]
            scope = limit.scope.replace("_", " ")
            message = (
                f"{self.device}: {scope} dose {value:.3f} mSv exceeds {level:.3g} mSv"
                if over
                else f"{self.device}: {scope} dose {value:.3f} mSv back within {level:.3g} mSv"
            )
            out.append(
                Finding(
                    rule=limit.rule,
                    subject=self.device,
                    at=utc(ts),
                    severity=limit.severity,
                    message=f"{message} ({limit.standard}, grade {limit.confidence})",
                    active=over,
                    value=round(value, 6),
                    limit=level,
                    standard=limit.standard,
                    detail={"scope": limit.scope, "period_months": self.period_months},
                )
            )
        return out

    def state_size(self) -> int:
        return 4 * len(self.closed) + 4 + len(self._open)
