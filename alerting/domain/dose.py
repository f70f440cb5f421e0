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
period, a year rolling over, old periods ageing out). The limits are data, with the standard and
grade beside each value (``alerting/data/dose_limits.yaml``, :data:`DOSE_LIMITS`). Memory: one
entry per closed period, for five years (60 monthly periods), capped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from alerting.domain.findings import Finding, utc
from alerting.model import Severity
from protocols.datafile import duplicates, load_yaml_model

DOSE_LIMITS_FILE = Path(__file__).resolve().parent.parent / "data" / "dose_limits.yaml"
_YEAR_S = 365.0 * 86400.0
_MAX_PERIODS = 400  # closed periods kept; older ones are merged pairwise beyond this


Scope = Literal["period", "rolling_12_months", "calendar_year", "five_years"]


@dataclass(frozen=True, slots=True)
class DoseLimit:
    rule: str
    scope: Scope
    limit_msv: float  # for "period": the annual investigation level, pro-rated per period
    severity: Severity
    standard: str
    confidence: str


class _LimitEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(pattern=r"^dose:[a-z0-9_]+$")
    scope: Scope
    limit_msv: float = Field(gt=0, allow_inf_nan=False)
    severity: Annotated[Severity, BeforeValidator(Severity.parse)]
    standard: str = Field(min_length=1)
    confidence: str = Field(min_length=1)


class _LimitsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: list[_LimitEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> _LimitsFile:
        dupes = duplicates(e.rule for e in self.limits)
        if dupes:
            raise ValueError(f"duplicate rules: {', '.join(dupes)}")
        return self


def load_dose_limits(path: Path = DOSE_LIMITS_FILE) -> tuple[DoseLimit, ...]:
    """Read and validate the limits; errors name the file and the entry (by index)."""
    parsed = load_yaml_model(path, _LimitsFile)
    return tuple(
        DoseLimit(e.rule, e.scope, e.limit_msv, e.severity, e.standard, e.confidence)
        for e in parsed.limits
    )


#: The dose rules (reference/standards.md §3.2–3.3), from alerting/data/dose_limits.yaml.
DOSE_LIMITS: tuple[DoseLimit, ...] = load_dose_limits()


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
