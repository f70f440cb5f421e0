"""Steam-sterilizer cycle validation from the reading stream (WS 310.2/310.3; standards.md §4).

One :class:`SterilizerMonitor` per device is fed the sterilizer's readings (``temperature_c``,
``pressure_kpa``, ``cycle_phase``, ``cycle_id``) in time order. It cuts the stream into cycles
(a cycle opens at the first active phase and closes at ``complete``, ``idle`` or ``aborted``, or
when the cycle id changes), and judges each closed cycle from its ``sterilizing`` samples:

* the programme, inferred from the hold plateau (alerting/data/sterilization.yaml says how);
* every hold sample within set-point … set-point + 3 °C (``temperature_low``,
  ``temperature_high``);
* the hold at least the programme's minimum, measured at the sampling resolution: the span of the
  hold samples plus one interval, passing within half an interval (``hold_too_short``);
* saturated steam: P − Psat(T) (IAPWS-IF97, protocols/steam.py) beyond the tolerance on at least
  two hold samples (``air_in_chamber``; below it, ``steam_superheated``);
* the daily Bowie-Dick test before the first pre-vacuum load (``bd_test_missing``).

Each closed cycle becomes a :class:`CycleRecord` (pass/fail with reasons) and, when it fails, one
:class:`Finding` per reason. A passing cycle clears the per-cycle findings; the next B-D test
clears ``bd_test_missing``. Memory: one open cycle (its hold temperatures, capped) and the last
``keep_records`` records.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alerting.domain.findings import Finding, utc
from alerting.model import Severity
from protocols.datafile import load_yaml_model
from protocols.steam import saturation_excess_kpa

STERILIZATION_FILE = Path(__file__).resolve().parent.parent / "data" / "sterilization.yaml"

#: Phases of a cycle in progress (the controller's names, profile sterilizer_ps120).
ACTIVE_PHASES = frozenset({"leak_test", "prevacuum", "heating", "sterilizing", "exhaust", "drying"})
_CYCLE_ID = re.compile(r"^(\d{8})-(\d+)$")
_HOLD_CAP = 20_000  # hold temperatures kept per cycle: 5.5 h at 1 s, far beyond any programme
_DT_CAP = 256

SterilizerType = Literal["pre_vacuum", "gravity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Programme(_Strict):
    id: str
    sterilizer: SterilizerType
    load: str
    setpoint_c: float = Field(gt=100, lt=150)
    min_hold_s: float = Field(gt=0)
    standard: str
    clause: str
    confidence: Literal["A", "B", "C"]


class BowieDick(_Strict):
    setpoint_c: float
    hold_s: float = Field(gt=0)
    standard: str
    clause: str
    confidence: Literal["A", "B", "C"]


class Checks(_Strict):
    band_above_c: float = Field(default=3.0, gt=0)
    band_standard: str = ""
    temperature_tolerance_c: float = Field(default=0.0, ge=0)
    saturation_tolerance_kpa: float = Field(default=5.0, gt=0)
    saturation_min_samples: int = Field(default=2, ge=1)
    saturation_standard: str = ""
    hold_tolerance_intervals: float = Field(default=0.5, ge=0, le=2)


class SterilizationTable(_Strict):
    programmes: tuple[Programme, ...] = Field(min_length=1)
    bowie_dick: BowieDick
    checks: Checks = Field(default_factory=Checks)
    severity: dict[str, str] = Field(default_factory=dict)

    def severity_of(self, reason: str) -> Severity:
        return Severity.parse(self.severity.get(reason.removeprefix("sterilizer:"), "critical"))

    def of_type(self, sterilizer: str) -> tuple[Programme, ...]:
        return tuple(p for p in self.programmes if p.sterilizer == sterilizer)


def load_sterilization_table(path: Path | None = None) -> SterilizationTable:
    """Read and validate the programme table; errors name the file and the entry."""
    table = load_yaml_model(path or STERILIZATION_FILE, SterilizationTable)
    for name in table.severity.values():
        Severity.parse(name)
    return table


@cache
def default_sterilization_table() -> SterilizationTable:
    return load_sterilization_table()


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """The verdict on one cycle: what a CSSD's cycle printout would be checked against."""

    cycle_id: str
    device: str
    programme: str  # a programme id, "bowie_dick", "leak_test" or "unknown"
    start: datetime
    end: datetime
    hold_s: float
    min_temp_c: float | None
    max_temp_c: float | None
    max_saturation_excess_kpa: float | None
    passed: bool
    reasons: tuple[str, ...]  # the vocabulary, e.g. ("sterilizer:hold_too_short",)
    setpoint_c: float | None = None
    required_hold_s: float | None = None
    sterilizer_type: str | None = None
    is_bowie_dick: bool = False
    hold_start: datetime | None = None
    hold_end: datetime | None = None


@dataclass(slots=True)
class _Cycle:
    cycle_id: str
    start: float
    last: float
    phases: set[str] = field(default_factory=set)
    aborted: bool = False
    dts: list[float] = field(default_factory=list)
    hold_first: float | None = None
    hold_last: float | None = None
    temps: list[float] = field(default_factory=list)
    t_min: float = math.inf
    t_max: float = -math.inf
    x_max: float = -math.inf
    n_air: int = 0
    n_superheat: int = 0


@dataclass(slots=True)
class _Day:
    eligible: bool  # the monitor saw the day from its start: its first cycle is known
    any_cycle: bool = False
    bd_seen: bool = False
    missing_reported: bool = False


class SterilizerMonitor:
    """Cycle validation for one sterilizer; ``update`` returns the findings of closed cycles."""

    def __init__(
        self,
        device: str,
        *,
        table: SterilizationTable | None = None,
        utc_offset_h: float = 8.0,
        keep_records: int = 200,
        on_record: Callable[[CycleRecord], None] | None = None,
    ) -> None:
        self.device = device
        self.table = table or default_sterilization_table()
        self.tz = timezone(timedelta(hours=utc_offset_h))
        self.records: deque[CycleRecord] = deque(maxlen=keep_records)
        self.on_record = on_record
        self._cur: _Cycle | None = None
        self._first_ts: float | None = None
        self._days: dict[str, _Day] = {}
        self._open: set[str] = set()  # per-cycle rules currently raised
        chk = self.table.checks
        self._tol = chk.saturation_tolerance_kpa
        loads_134 = [
            p.min_hold_s
            for p in self.table.of_type("pre_vacuum")
            if p.setpoint_c == self.table.bowie_dick.setpoint_c
        ]
        self._bd_below_s = min(loads_134) if loads_134 else math.inf

    # ---- the stream ------------------------------------------------------------------------------

    def update(self, ts: float, values: Mapping[str, Any]) -> list[Finding]:
        phase = values.get("cycle_phase")
        if not isinstance(phase, str):
            return []
        if self._first_ts is None:
            self._first_ts = ts
        raw_id = values.get("cycle_id")
        cycle_id = raw_id if isinstance(raw_id, str) else ""
        out: list[Finding] = []
        cur = self._cur
        if cur is not None and cycle_id and cur.cycle_id and cycle_id != cur.cycle_id:
            out += self._close(cur)  # a new cycle began without the old one closing
            cur = self._cur = None
        if cur is None:
            if phase not in ACTIVE_PHASES:
                return out
            cur = self._cur = _Cycle(cycle_id or f"{self.device}@{int(ts)}", ts, ts)
        elif phase not in ACTIVE_PHASES:
            cur.aborted = phase == "aborted"
            cur.last = ts
            out += self._close(cur)
            self._cur = None
            return out
        if len(cur.dts) < _DT_CAP and ts > cur.last:
            cur.dts.append(ts - cur.last)
        cur.last = ts
        cur.phases.add(phase)
        if phase == "sterilizing":
            self._hold_sample(cur, ts, values)
        return out

    def flush(self, ts: float | None = None) -> list[Finding]:
        """Close a cycle left open (the data ended mid-cycle); judged on what was seen."""
        cur = self._cur
        if cur is None:
            return []
        self._cur = None
        if ts is not None:
            cur.last = max(cur.last, ts)
        return self._close(cur)

    def _hold_sample(self, cur: _Cycle, ts: float, values: Mapping[str, Any]) -> None:
        t = values.get("temperature_c")
        p = values.get("pressure_kpa")
        if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
            return
        if cur.hold_first is None:
            cur.hold_first = ts
        cur.hold_last = ts
        if len(cur.temps) < _HOLD_CAP:
            cur.temps.append(float(t))
        cur.t_min = min(cur.t_min, t)
        cur.t_max = max(cur.t_max, t)
        if isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p):
            x = saturation_excess_kpa(float(t), float(p))
            cur.x_max = max(cur.x_max, x)
            if x > self._tol:
                cur.n_air += 1
            elif x < -self._tol:
                cur.n_superheat += 1

    # ---- judging a closed cycle ------------------------------------------------------------------

    def _close(self, cur: _Cycle) -> list[Finding]:
        day, number = self._day_state(cur)
        first = number == 1 if number is not None else not day.any_cycle
        record = self._judge(cur, first)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return self._findings(record, day)

    def _judge(self, cur: _Cycle, first_of_day: bool) -> CycleRecord:
        table, chk = self.table, self.table.checks
        kind: SterilizerType = "pre_vacuum" if "prevacuum" in cur.phases else "gravity"
        interval = _median(cur.dts) if cur.dts else 0.0
        base = {
            "cycle_id": cur.cycle_id,
            "device": self.device,
            "start": utc(cur.start),
            "end": utc(cur.last),
            "sterilizer_type": kind,
        }
        if cur.hold_first is None or cur.hold_last is None:
            if cur.phases <= {"leak_test"} and not cur.aborted:
                return CycleRecord(
                    programme="leak_test",
                    hold_s=0.0,
                    min_temp_c=None,
                    max_temp_c=None,
                    max_saturation_excess_kpa=None,
                    passed=True,
                    reasons=(),
                    **base,
                )
            reason = "sterilizer:cycle_aborted" if cur.aborted else "sterilizer:hold_too_short"
            return CycleRecord(
                programme="unknown",
                hold_s=0.0,
                min_temp_c=None,
                max_temp_c=None,
                max_saturation_excess_kpa=None,
                passed=False,
                reasons=(reason,),
                **base,
            )
        hold_s = cur.hold_last - cur.hold_first + interval
        plateau = _median(cur.temps)
        candidates = table.of_type(kind) or table.programmes
        setpoint = min({p.setpoint_c for p in candidates}, key=lambda s: abs(s - plateau))
        same = [p for p in candidates if p.setpoint_c == setpoint]
        slack = chk.hold_tolerance_intervals * interval
        is_bd = (
            kind == "pre_vacuum"
            and first_of_day
            and (setpoint == table.bowie_dick.setpoint_c and hold_s < self._bd_below_s - slack)
        )
        if is_bd:
            programme, required = "bowie_dick", table.bowie_dick.hold_s
        else:
            chosen = min(same, key=lambda p: abs(p.min_hold_s - hold_s))
            programme, required = chosen.id, chosen.min_hold_s
        reasons = []
        if cur.aborted:
            reasons.append("sterilizer:cycle_aborted")
        if hold_s < required - slack:
            reasons.append("sterilizer:hold_too_short")
        tol = chk.temperature_tolerance_c + 1e-9
        if cur.t_min < setpoint - tol:
            reasons.append("sterilizer:temperature_low")
        if cur.t_max > setpoint + chk.band_above_c + tol:
            reasons.append("sterilizer:temperature_high")
        if cur.n_air >= chk.saturation_min_samples:
            reasons.append("sterilizer:air_in_chamber")
        if cur.n_superheat >= chk.saturation_min_samples:
            reasons.append("sterilizer:steam_superheated")
        return CycleRecord(
            programme=programme,
            hold_s=round(hold_s, 3),
            min_temp_c=cur.t_min,
            max_temp_c=cur.t_max,
            max_saturation_excess_kpa=round(cur.x_max, 3) if math.isfinite(cur.x_max) else None,
            passed=not reasons,
            reasons=tuple(reasons),
            setpoint_c=setpoint,
            required_hold_s=required,
            is_bowie_dick=is_bd,
            hold_start=utc(cur.hold_first),
            hold_end=utc(cur.hold_last + interval),
            **base,
        )

    # ---- the day and its B-D test ----------------------------------------------------------------

    def _day_of(self, cur: _Cycle) -> tuple[str, int | None]:
        """The cycle's local date (YYYYMMDD) and its number that day, from the id if it is the
        printout's ``YYYYMMDD-NN``, else from the clock (number unknown)."""
        match = _CYCLE_ID.match(cur.cycle_id)
        if match:
            return match.group(1), int(match.group(2))
        return datetime.fromtimestamp(cur.start, self.tz).strftime("%Y%m%d"), None

    def _day_state(self, cur: _Cycle) -> tuple[_Day, int | None]:
        key, number = self._day_of(cur)
        day = self._days.get(key)
        if day is None:
            local = date(int(key[:4]), int(key[4:6]), int(key[6:]))
            midnight = datetime(local.year, local.month, local.day, tzinfo=self.tz).timestamp()
            first = self._first_ts if self._first_ts is not None else cur.start
            day = self._days[key] = _Day(eligible=first <= midnight or number == 1)
            for old in sorted(self._days)[:-4]:
                del self._days[old]
        return day, number

    def _findings(self, record: CycleRecord, day: _Day) -> list[Finding]:
        out: list[Finding] = []
        at = record.end
        if record.programme == "leak_test":
            return out
        day.any_cycle = True
        bd = self.table.bowie_dick
        if record.is_bowie_dick:
            day.bd_seen = True
            if "sterilizer:bd_test_missing" in self._open:
                self._open.discard("sterilizer:bd_test_missing")
                out.append(
                    self._finding(
                        "sterilizer:bd_test_missing",
                        at,
                        record,
                        active=False,
                        message=f"B-D test run ({record.cycle_id})",
                        standard=f"{bd.standard} {bd.clause}",
                    )
                )
        elif (
            record.sterilizer_type == "pre_vacuum"
            and day.eligible
            and not day.bd_seen
            and not day.missing_reported
        ):
            day.missing_reported = True
            self._open.add("sterilizer:bd_test_missing")
            out.append(
                self._finding(
                    "sterilizer:bd_test_missing",
                    at,
                    record,
                    message=(
                        f"{self.device}: load cycle {record.cycle_id} ran without the day's "
                        f"Bowie-Dick test"
                    ),
                    standard=f"{bd.standard} {bd.clause} (grade {bd.confidence})",
                )
            )
        for reason in record.reasons:
            self._open.add(reason)
            out.append(
                self._finding(
                    reason,
                    at,
                    record,
                    message=self._describe(reason, record),
                    value=self._value(reason, record),
                    limit=self._limit(reason, record),
                    standard=self._standard(reason, record),
                )
            )
        if record.passed:
            for rule in sorted(self._open - {"sterilizer:bd_test_missing"}):
                self._open.discard(rule)
                out.append(
                    self._finding(
                        rule, at, record, active=False, message=f"cycle {record.cycle_id} passed"
                    )
                )
        return out

    def _finding(
        self,
        rule: str,
        at: datetime,
        record: CycleRecord,
        *,
        message: str,
        active: bool = True,
        value: float | None = None,
        limit: float | None = None,
        standard: str | None = None,
    ) -> Finding:
        return Finding(
            rule=rule,
            subject=self.device,
            at=at,
            severity=self.table.severity_of(rule),
            message=message,
            active=active,
            value=value,
            limit=limit,
            standard=standard,
            detail={
                "cycle_id": record.cycle_id,
                "programme": record.programme,
                "start": record.start.isoformat(),
                "hold_s": record.hold_s,
            },
        )

    def _describe(self, reason: str, r: CycleRecord) -> str:
        head = f"{self.device} cycle {r.cycle_id} ({r.programme}, {r.setpoint_c} °C)"
        if reason == "sterilizer:hold_too_short":
            if r.required_hold_s is None:
                return f"{head}: no sterilizing hold recorded"
            return f"{head}: hold {r.hold_s:.0f} s < {r.required_hold_s:.0f} s"
        if reason == "sterilizer:temperature_low":
            return f"{head}: hold down to {r.min_temp_c} °C, below the set-point"
        if reason == "sterilizer:temperature_high":
            return f"{head}: hold up to {r.max_temp_c} °C, above set-point + 3 °C"
        if reason == "sterilizer:air_in_chamber":
            return (
                f"{head}: pressure {r.max_saturation_excess_kpa} kPa above saturated steam "
                f"(tolerance {self._tol} kPa): air in the chamber"
            )
        if reason == "sterilizer:steam_superheated":
            return f"{head}: pressure below saturation by more than {self._tol} kPa"
        return f"{head}: {reason.removeprefix('sterilizer:').replace('_', ' ')}"

    def _value(self, reason: str, r: CycleRecord) -> float | None:
        return {
            "sterilizer:hold_too_short": r.hold_s,
            "sterilizer:temperature_low": r.min_temp_c,
            "sterilizer:temperature_high": r.max_temp_c,
            "sterilizer:air_in_chamber": r.max_saturation_excess_kpa,
        }.get(reason)

    def _limit(self, reason: str, r: CycleRecord) -> float | None:
        if reason == "sterilizer:hold_too_short":
            return r.required_hold_s
        if reason == "sterilizer:temperature_low":
            return r.setpoint_c
        if reason == "sterilizer:temperature_high" and r.setpoint_c is not None:
            return r.setpoint_c + self.table.checks.band_above_c
        if reason in ("sterilizer:air_in_chamber", "sterilizer:steam_superheated"):
            return self._tol
        return None

    def _standard(self, reason: str, r: CycleRecord) -> str | None:
        chk = self.table.checks
        if reason in ("sterilizer:temperature_low", "sterilizer:temperature_high"):
            return chk.band_standard or None
        if reason in ("sterilizer:air_in_chamber", "sterilizer:steam_superheated"):
            return chk.saturation_standard or None
        if reason == "sterilizer:hold_too_short":
            if r.is_bowie_dick:
                bd = self.table.bowie_dick
                return f"{bd.standard} {bd.clause} (grade {bd.confidence})"
            for p in self.table.programmes:
                if p.id == r.programme:
                    return f"{p.standard} {p.clause} (grade {p.confidence})"
        return None


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    m = n >> 1
    return s[m] if n & 1 else 0.5 * (s[m - 1] + s[m])


__all__ = [
    "ACTIVE_PHASES",
    "STERILIZATION_FILE",
    "CycleRecord",
    "SterilizationTable",
    "SterilizerMonitor",
    "default_sterilization_table",
    "load_sterilization_table",
]
