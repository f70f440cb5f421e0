"""Signal model of a hospital steam sterilizer (压力蒸汽灭菌器, kind ``sterilizer``) running cycles.

A working day starts with the daily Bowie-Dick (B-D) test in the empty chamber (pre-vacuum
sterilizers only; 134 °C, 3.5 min), then load cycles follow one another with a turnaround for
unloading and loading until the day's end. Each cycle goes through the phases a cycle record shows
(named as the reference controller reports them, profile ``sterilizer_ps120``):

``prevacuum``     pre-vacuum: three pump-downs to ~7 kPa abs with two steam pulses up to ~170 kPa
                  between them (a gravity sterilizer instead purges air with steam at atmospheric
                  pressure, which its controller shows as ``heating``);
``heating``       steam admitted up to the saturation pressure of the hold temperature;
``sterilizing``   the hold: set-point + a controller offset (≈ +1.2 °C, inside WS 310.3's +3 °C
                  band) with a small ripple; 134 °C ≥ 4 min or 121 °C ≥ 20 min (dressings 30 min),
                  WS 310.2;
``exhaust``       steam vented to just above atmospheric pressure;
``drying``        vacuum drying (pre-vacuum) or jacket drying at atmospheric pressure, then filtered
                  air admitted;
``complete``      cycle over, door closed until the operator unloads; then ``idle``.

During heat-up, hold and exhaust the chamber holds saturated steam, so pressure and temperature are
tied by IAPWS-IF97 region 4 (``steam.py``). Pump-downs are exponential (constant pumping speed),
steam admission is linear in pressure, and between cycles the chamber relaxes towards the jacket's
standby temperature (to room temperature after the day's last cycle).

Faults (``SterilizerFaults``; defaults are a healthy machine) are the failure modes a cycle record
must catch (reference/standards.md §4.2): a hold cut short, a hold below the set-point, air or other
non-condensable gas in the chamber (pressure above saturation for the temperature), and a skipped
B-D test. They apply to every cycle built after they are set, including one in progress. A fault
*schedule* (``fault_schedule``: unix time → faults) instead gives each cycle the faults in force
when it starts, so a cycle is faulted as a whole or not at all: the ground truth of a scenario's
sterilizer faults is then a list of whole cycles.

The schedule is a pure function of (seed, local day); a cycle id is ``YYYYMMDD-NN`` (local date,
cycle of the day, B-D test first), as on sterilizer printouts. Instrument: Pt100 chamber probe
(1σ 0.05 °C, 0.1 °C resolution, 0–150 °C) and absolute pressure transducer (1σ 0.3 kPa, 0.1 kPa,
0–400 kPa).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulators.air_monitor.signal import _GOLDEN, _M64, _mix64, _normal, _normal_pair, _uniform
from simulators.sterilizer.steam import psat_kpa, tsat_c

SterilizerType = Literal["pre_vacuum", "gravity"]
#: Phases as the reference controller reports them (``cycle_phase`` in the profile
#: protocols/data/profiles/sterilizer_ps120.yaml). The model never runs a leak test and never
#: aborts, so ``leak_test`` and ``aborted`` do not occur.
Phase = Literal["idle", "leak_test", "prevacuum", "heating", "sterilizing", "exhaust", "drying",
                "complete", "aborted"]
PHASES: tuple[str, ...] = ("idle", "leak_test", "prevacuum", "heating", "sterilizing", "exhaust",
                           "drying", "complete", "aborted")

#: Quantities produced, in payload order (canonical names, protocols/data/kinds.yaml).
QUANTITIES: tuple[str, ...] = ("temperature_c", "pressure_kpa", "cycle_phase", "cycle_id")

_DAY_S = 86400.0
_TWO_PI = 2.0 * math.pi
_PUMP_TAU_S = 75.0  # pump-down time constant: 101 → 7 kPa in ~3.3 min
_PULSE_S = 90.0  # steam pulse, vacuum → pulse_high
_EXHAUST_S = 150.0
_VENT_S = 60.0
_PREHEAT_S = 2700.0  # jacket switched on 45 min before the day's first cycle
_TAU_STANDBY_S = 600.0
_TAU_COOL_S = 3600.0
_TAU_PREHEAT_S = 900.0
_TAU_VACUUM_S = 120.0
_TAU_DRY_S = 300.0
_VACUUM_FLOOR_C = 70.0  # chamber probe during pump-downs (flash evaporation vs hot jacket)
_DRYING_FLOOR_C = 80.0


@dataclass(frozen=True)
class Programme:
    """A sterilizer programme: hold set-point and minimum hold time (WS 310.2 §4.1 values)."""

    name: str
    setpoint_c: float
    hold_s: float
    drying_s: float
    pulses: int  # pre-vacuum conditioning pump-downs; 0 = gravity displacement

    @property
    def is_bowie_dick(self) -> bool:
        return self.name == "bowie_dick"


PROGRAMMES: dict[str, Programme] = {
    p.name: p for p in (
        Programme("bowie_dick", 134.0, 210.0, 60.0, 3),  # B-D test, empty chamber, 3.5 min
        Programme("134", 134.0, 240.0, 900.0, 3),  # pre-vacuum 132–134 °C, ≥4 min
        Programme("121", 121.0, 1200.0, 900.0, 3),  # pre-vacuum 121 °C for heat-sensitive items
        Programme("121_instruments", 121.0, 1200.0, 600.0, 0),  # gravity, instruments ≥20 min
        Programme("121_dressings", 121.0, 1800.0, 900.0, 0),  # gravity, dressings ≥30 min
    )
}
_DEFAULT_MIX = {"pre_vacuum": {"134": 0.85, "121": 0.15},
                "gravity": {"121_instruments": 0.6, "121_dressings": 0.4}}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SterilizerFaults(_Frozen):
    """Injectable faults; the defaults are a healthy machine."""

    hold_shortfall_s: float = Field(default=0.0, ge=0, description="Hold ends this much early")
    hold_temp_deficit_c: float = Field(default=0.0, ge=0, le=30,
                                       description="Hold runs this far below the set-point")
    air_excess_kpa: float = Field(default=0.0, ge=0, le=200,
                                  description="Non-condensable gas: P above P_sat(T)")
    skip_bowie_dick: bool = Field(default=False, description="The daily B-D test is not run")


class SterilizerSpec(_Frozen):
    """Declaration of one sterilizer, its working day and its instrument."""

    sterilizer_type: SterilizerType = "pre_vacuum"
    programme_mix: dict[str, float] = Field(
        default_factory=dict, description="Programme → share of load cycles; {} = type default")
    working_days: Literal["all", "weekdays"] = "all"
    day_start_h: float = Field(default=7.5, ge=0, le=20, description="First cycle, local time")
    day_end_h: float = Field(default=18.0, gt=0, le=22, description="Cycles end before this")
    turnaround_min: float = Field(default=20.0, gt=0, le=600, description="Median unload/load")
    max_cycles_per_day: int = Field(default=20, ge=1, le=60)
    utc_offset_h: float = Field(default=8.0, ge=-12, le=14)

    ambient_kpa: float = Field(default=101.3, ge=50, le=110, description="Site barometric")
    room_temp_c: float = Field(default=25.0, ge=0, le=45)
    standby_temp_c: float = Field(default=85.0, ge=20, le=120, description="Jacket on, idle")
    pulse_low_kpa: float = Field(default=7.0, ge=2, le=30, description="Pre-vacuum pump-down")
    pulse_high_kpa: float = Field(default=170.0, ge=101, le=250, description="Steam pulse peak")
    drying_kpa: float = Field(default=8.0, ge=2, le=50)
    hold_offset_c: float = Field(default=1.2, ge=0, le=3, description="Control above set-point")
    hold_ripple_c: float = Field(default=0.2, ge=0, le=1)

    temp_noise_c: float = Field(default=0.05, ge=0)
    pressure_noise_kpa: float = Field(default=0.3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SterilizerSpec:
        if self.day_end_h <= self.day_start_h:
            raise ValueError("day_end_h must be after day_start_h")
        for name, share in self.programme_mix.items():
            programme = PROGRAMMES.get(name)
            if programme is None or programme.is_bowie_dick:
                raise ValueError(f"unknown load programme {name!r}")
            if (programme.pulses > 0) != (self.sterilizer_type == "pre_vacuum"):
                raise ValueError(f"programme {name!r} does not run on a {self.sterilizer_type}")
            if share < 0:
                raise ValueError("programme shares must be >= 0")
        if self.programme_mix and sum(self.programme_mix.values()) <= 0:
            raise ValueError("programme_mix needs a positive share")
        return self

    def load_programmes(self) -> tuple[tuple[str, float], ...]:
        """(programme, cumulative share) for drawing a load cycle's programme."""
        mix = self.programme_mix or _DEFAULT_MIX[self.sterilizer_type]
        total = sum(mix.values())
        out, acc = [], 0.0
        for name, share in mix.items():
            acc += share / total
            out.append((name, acc))
        return tuple(out)


@dataclass(frozen=True)
class CycleRecord:
    """What a cycle actually did (the truth detection is measured against). Times are UTC."""

    cycle_id: str
    programme: str
    setpoint_c: float
    start: datetime
    hold_start: datetime
    hold_end: datetime
    end: datetime
    faults: SterilizerFaults

    @property
    def is_bowie_dick(self) -> bool:
        return self.programme == "bowie_dick"


# A segment: (t0, t1, phase, shape, p0, p1, temp0, temp_target, tau, air).
# shape "log": P exponential p0 → p1, T relaxes to temp_target with tau;
#       "lin": P linear, T relaxes;  "flat": P = p0, T relaxes;
#       "steam": P linear (+ air·u), T = max(temp0, Tsat(P));
#       "hold": T = temp0 + ripple (amplitude in temp_target), P = Psat(T) + air;
#       "exhaust": P exponential (steam part), T = Tsat(P_steam), + air.
_Seg = tuple[float, float, str, str, float, float, float, float, float, float]


@dataclass(frozen=True)
class _Cycle:
    cycle_id: str
    programme: Programme
    start: float
    end: float
    hold_start: float
    hold_end: float
    temp_end: float
    seg_starts: tuple[float, ...]
    segments: tuple[_Seg, ...]
    faults: SterilizerFaults


FaultSchedule = Callable[[float], SterilizerFaults]
"""``schedule(unix time of a cycle's start)`` → the faults that cycle runs with."""


class SterilizerSignal:
    """Readings of one sterilizer: ``sample(t)`` → chamber temperature (``temperature_c``, the
    catalog's name for air or chamber temperature), pressure, phase, cycle id.

    Stateless apart from caches: everything is a function of (spec, seed, faults, t), so samples
    may come in any order. Assign ``faults`` at any time; cycles are rebuilt with the new faults.
    Or assign ``fault_schedule``, which takes precedence: each cycle runs with the faults in force
    at its start.
    """

    __slots__ = ("_days", "_faults", "_keys", "_off", "_schedule", "seed", "spec")

    _STREAMS = ("sched", "cycle", "weather", "noise")

    def __init__(self, spec: SterilizerSpec, seed: int, *,
                 faults: SterilizerFaults | None = None) -> None:
        self.spec = spec
        self.seed = seed
        base = _mix64((seed * _GOLDEN + 0x57E2) & _M64)
        self._keys = {n: _mix64((base + i + 1) & _M64) for i, n in enumerate(self._STREAMS)}
        self._off = spec.utc_offset_h * 3600.0
        self._faults = faults or SterilizerFaults()
        self._schedule: FaultSchedule | None = None
        self._days: dict[int, tuple[tuple[_Cycle, ...], list[float]]] = {}

    @property
    def faults(self) -> SterilizerFaults:
        return self._faults

    @faults.setter
    def faults(self, faults: SterilizerFaults) -> None:
        self._faults = faults
        self._days.clear()

    @property
    def fault_schedule(self) -> FaultSchedule | None:
        return self._schedule

    @fault_schedule.setter
    def fault_schedule(self, schedule: FaultSchedule | None) -> None:
        self._schedule = schedule
        self._days.clear()

    def _faults_for(self, start: float) -> SterilizerFaults:
        return self._faults if self._schedule is None else self._schedule(start)

    # ---- schedule ------------------------------------------------------------------------------

    def ambient_kpa(self, ts: float) -> float:
        """Barometric pressure: the site's mean plus weather (±~0.8 kPa over a day or two)."""
        x = ts / 43200.0
        i = math.floor(x)
        f = x - i
        w = f * f * (3.0 - 2.0 * f)
        key = self._keys["weather"]
        a, b = _normal(key, i), _normal(key, i + 1)
        return self.spec.ambient_kpa + 0.8 * (a + (b - a) * w)

    def _day(self, day: int) -> tuple[tuple[_Cycle, ...], list[float]]:
        """The cycles of local day ``day`` (days since 1970-01-01), built with current faults,
        and their start times."""
        entry = self._days.get(day)
        if entry is None:
            if len(self._days) > 8:
                self._days.clear()
            cycles = self._build_day(day)
            entry = self._days[day] = (cycles, [c.start for c in cycles])
        return entry

    def _preheat_start(self, day: int) -> float:
        """The jacket comes on 45 min before the scheduled start of the day."""
        return day * _DAY_S - self._off + self.spec.day_start_h * 3600.0 - _PREHEAT_S

    def _build_day(self, day: int) -> tuple[_Cycle, ...]:
        spec = self.spec
        if spec.working_days == "weekdays" and (day + 3) % 7 >= 5:  # 1970-01-01 was a Thursday
            return ()
        key = self._keys["sched"]
        base = day * 4 * (spec.max_cycles_per_day + 1)
        day0 = day * _DAY_S - self._off
        t = round(day0 + spec.day_start_h * 3600.0 + 900.0 * _uniform(key, base))
        end_of_day = day0 + spec.day_end_h * 3600.0
        date = datetime.fromtimestamp(day * _DAY_S, UTC).strftime("%Y%m%d")
        mix = spec.load_programmes()
        cycles: list[_Cycle] = []
        prev: _Cycle | None = None
        preheat = self._preheat_start(day)
        for k in range(spec.max_cycles_per_day + 1):
            index = base + 4 * (k + 1)
            if k == 0 and spec.sterilizer_type == "pre_vacuum":
                programme = PROGRAMMES["bowie_dick"]
            else:
                u = _uniform(key, index)
                programme = PROGRAMMES[next((n for n, c in mix if u < c), mix[-1][0])]
            # The timetable does not depend on faults: lay out the healthy cycle first.
            nominal = self._build_cycle("", programme, t, 0.0, index, SterilizerFaults())
            if nominal.end > end_of_day:
                break
            faults = self._faults_for(t)
            skipped = programme.is_bowie_dick and faults.skip_bowie_dick
            if not skipped:
                if prev is None:  # jacket pre-heated from room temperature
                    temp0 = spec.standby_temp_c + (spec.room_temp_c - spec.standby_temp_c) * (
                        math.exp(-(t - preheat) / _TAU_PREHEAT_S))
                else:
                    temp0 = spec.standby_temp_c + (prev.temp_end - spec.standby_temp_c) * (
                        math.exp(-(t - prev.end) / _TAU_STANDBY_S))
                cycle_id = f"{date}-{len(cycles) + 1:02d}"
                prev = self._build_cycle(cycle_id, programme, t, temp0, index, faults)
                cycles.append(prev)
            gap = spec.turnaround_min * 60.0 * math.exp(0.5 * _normal(key, index + 1))
            t = nominal.end + round(max(gap, 300.0))
        return tuple(cycles)

    def _build_cycle(self, cycle_id: str, programme: Programme, start: float, temp0: float,
                     index: int, faults: SterilizerFaults) -> _Cycle:
        spec = self.spec
        key = self._keys["cycle"]
        z_load, z_offset = _normal_pair(key, index)
        empty = programme.is_bowie_dick
        load = 0.8 if empty else 1.0 + 0.25 * abs(z_load)  # heavier loads heat up slower
        if faults.hold_temp_deficit_c > 0.0:
            hold_c = programme.setpoint_c - faults.hold_temp_deficit_c
        else:
            # Controller offset above the set-point, kept inside the +3 °C band with the ripple.
            hold_c = programme.setpoint_c + min(max(
                spec.hold_offset_c + 0.2 * z_offset, spec.hold_ripple_c + 0.3),
                2.8 - spec.hold_ripple_c)
        air = faults.air_excess_kpa
        ambient = self.ambient_kpa(start)
        segs: list[_Seg] = []
        t, p, temp = start, ambient, temp0

        def add(dur: float, phase: str, shape: str, p1: float, target: float = 0.0,
                tau: float = 1.0, air_kpa: float = 0.0) -> None:
            nonlocal t, p, temp
            dur = float(round(dur))  # the controller works in whole seconds
            seg = (t, t + dur, phase, shape, p, p1, temp, target, tau, air_kpa)
            segs.append(seg)
            t += dur
            temp, p = _evaluate(seg, t)

        if programme.pulses:
            low, high = spec.pulse_low_kpa, spec.pulse_high_kpa
            for i in range(programme.pulses):
                add(_PUMP_TAU_S * math.log(p / low), "prevacuum", "log", low, _VACUUM_FLOOR_C,
                    _TAU_VACUUM_S)
                if i < programme.pulses - 1:
                    add(_PULSE_S, "prevacuum", "steam", high)
        else:  # gravity: steam pushes the air out through the drain (the controller: heating)
            add(300.0, "heating", "lin", ambient + 5.0, 100.0, 60.0)
        add(240.0 * load, "heating", "steam", psat_kpa(hold_c), air_kpa=air)
        hold_start = t
        hold_s = max(programme.hold_s - faults.hold_shortfall_s, 0.0)
        if hold_s > 0.0:
            add(hold_s, "sterilizing", "hold", 0.0, spec.hold_ripple_c, 1.0, air)
        hold_end = t
        add(_EXHAUST_S, "exhaust", "exhaust", ambient + 2.0, air_kpa=air)
        if programme.pulses:
            pump_s = _PUMP_TAU_S * math.log(p / spec.drying_kpa)
            add(pump_s, "drying", "log", spec.drying_kpa, _DRYING_FLOOR_C, _TAU_DRY_S)
            add(max(programme.drying_s - pump_s, 0.0), "drying", "flat", p, _DRYING_FLOOR_C,
                _TAU_DRY_S)
        else:
            add(programme.drying_s, "drying", "lin", ambient, _DRYING_FLOOR_C, _TAU_DRY_S)
        add(_VENT_S, "drying", "lin", ambient, _DRYING_FLOOR_C, _TAU_DRY_S)
        unload = 120.0 + 480.0 * _uniform(key, index + 1)
        add(unload, "complete", "flat", ambient, spec.standby_temp_c, _TAU_STANDBY_S)
        return _Cycle(cycle_id, programme, start, t, hold_start, hold_end, temp,
                      tuple(s[0] for s in segs), tuple(segs), faults)

    # ---- evaluation ----------------------------------------------------------------------------

    def _state(self, ts: float) -> tuple[float, float, str, str]:
        """(temperature, pressure, phase, cycle id) without instrument noise."""
        spec = self.spec
        day = math.floor((ts + self._off) / _DAY_S)
        cycles, starts = self._day(day)
        i = bisect.bisect_right(starts, ts) - 1
        if i >= 0:
            c = cycles[i]
            if ts < c.end:
                seg = c.segments[bisect.bisect_right(c.seg_starts, ts) - 1]
                temp, p = _evaluate(seg, ts)
                return temp, p, seg[2], c.cycle_id
            if i < len(cycles) - 1:  # between cycles: jacket on
                temp = spec.standby_temp_c + (c.temp_end - spec.standby_temp_c) * math.exp(
                    -(ts - c.end) / _TAU_STANDBY_S)
            else:  # after the day's last cycle: jacket off, chamber cools
                temp = spec.room_temp_c + (c.temp_end - spec.room_temp_c) * math.exp(
                    -(ts - c.end) / _TAU_COOL_S)
            return temp, self.ambient_kpa(ts), "idle", c.cycle_id
        temp, cycle_id = spec.room_temp_c, ""
        yesterday = self._day(day - 1)[0]
        if yesterday:
            last = yesterday[-1]
            cycle_id = last.cycle_id
            temp += (last.temp_end - spec.room_temp_c) * math.exp(-(ts - last.end) / _TAU_COOL_S)
        preheat = self._preheat_start(day)
        if cycles and ts >= preheat:
            temp = spec.standby_temp_c + (spec.room_temp_c - spec.standby_temp_c) * math.exp(
                -(ts - preheat) / _TAU_PREHEAT_S)
        return temp, self.ambient_kpa(ts), "idle", cycle_id

    # ---- public API ----------------------------------------------------------------------------

    def sample(self, t: datetime) -> dict[str, Any]:
        """The sterilizer's record at ``t`` (timezone-aware), rounded to the instrument."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, Any]:
        temp, p, phase, cycle_id = self._state(ts)
        n1, n2 = _normal_pair(self._keys["noise"], int(ts * 1000.0))
        temp += n1 * self.spec.temp_noise_c
        p += n2 * self.spec.pressure_noise_kpa
        return {
            "temperature_c": round(min(max(temp, 0.0), 150.0), 1),
            "pressure_kpa": round(min(max(p, 0.0), 400.0), 1),
            "cycle_phase": phase,
            "cycle_id": cycle_id,
        }

    def truth(self, t: datetime) -> dict[str, Any]:
        """Noiseless, unrounded values at ``t``."""
        return dict(zip(QUANTITIES, self._state(t.timestamp()), strict=True))

    def cycles(self, start: datetime, end: datetime) -> list[CycleRecord]:
        """The cycles that start in [start, end), as run with the current faults (or schedule)."""
        t0, t1 = start.timestamp(), end.timestamp()
        first = math.floor((t0 + self._off) / _DAY_S)
        last = math.floor((t1 + self._off) / _DAY_S)
        out = []
        for day in range(first, last + 1):
            for c in self._day(day)[0]:
                if t0 <= c.start < t1:
                    out.append(CycleRecord(
                        c.cycle_id, c.programme.name, c.programme.setpoint_c, _utc(c.start),
                        _utc(c.hold_start), _utc(c.hold_end), _utc(c.end), c.faults))
        return out


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _evaluate(seg: _Seg, ts: float) -> tuple[float, float]:
    """(temperature, pressure) inside one segment at ``ts``."""
    t0, t1, _phase, shape, p0, p1, temp0, target, tau, air = seg
    s = ts - t0
    u = s / (t1 - t0) if t1 > t0 else 1.0
    if shape == "hold":  # target holds the ripple amplitude; starts at temp0, 90 s period
        temp = temp0 + target * math.sin(_TWO_PI * s / 90.0)
        return temp, psat_kpa(temp) + air
    if shape == "steam":
        p = p0 + (p1 - p0) * u
        return max(temp0, tsat_c(p)), p + air * u
    if shape == "exhaust":
        p_steam = (p0 - air) * (p1 / (p0 - air)) ** u
        return tsat_c(p_steam), p_steam + air
    if shape == "log":
        p = p0 * (p1 / p0) ** u
    elif shape == "lin":
        p = p0 + (p1 - p0) * u
    else:
        p = p0
    return target + (temp0 - target) * math.exp(-s / tau), p
