"""Signal models of an X-ray room's ambient dose-rate monitor and a worker's personal dosimeter.

* **The room** (``XRayRoom``) exposes on a working-day schedule: short radiographs (~0.1 s, up to 30
  an hour), fluoroscopy runs (seconds to minutes, a few an hour) or CT scans (a few seconds). Time
  is cut into cells longer than the longest exposure; a cell holds at most one exposure, present
  with probability rate × hourly profile × cell length, with a log-normal duration and a technique
  factor (kV/mAs, log-normal σ 0.25, clipped to 0.6–1.6). So "is the beam on at t" is O(1).
* **The monitor** (``DoseRateMonitorSignal``) sees natural background (0.1–0.3 µSv/h, slow ±5 %
  wander) plus, while the beam is on, the scatter at 1 m (``scatter_usv_h``) times the shielding's
  transmission (outside the room, 30 cm from the wall) or the inverse square of its distance
  (inside). Defaults keep the outside contribution near 0.6–0.9 µSv/h, well under GBZ 130-2020
  §6.3.1's 2.5 µSv/h; ``leakage_factor`` (an interlock or shielding failure: door open during
  exposure, missing lead) multiplies it past the limit.
* **Counting statistics.** A detector counts; the dose rate is derived. Counts in each update
  period (10 s, aligned to the epoch) are Poisson with mean ∫ m(t) dt, where m = n/(1 + n·τ) is
  the dead-time-limited rate of the true rate n = sensitivity × H*(10) rate. The display shows the
  counts of the last ``integration_s`` (whole update periods), corrected for dead time and divided
  by the sensitivity: a GM tube (the default, as the reference GR-10: 3 cps per µSv/h, 30 s) reads
  background to ±27 % (1σ), a scintillator (50 cps per µSv/h, 10 s) to ±12 %. Exposures shorter
  than the window are averaged over it, as in a real monitor. ``beam_on`` is the interlock signal:
  on if the beam was on at any time in the displayed window.
* **The dosimeter** (``PersonalDosimeterSignal``) integrates the dose rate at the worker's position
  during their shift: in the room under a lead apron for a fraction of exposures (interventional
  and fluoroscopy staff), otherwise behind the control-room shielding. It reports Hp(10), as
  ``dose_msv``, for the current monitoring period (1–3 months, GBZ 128-2019; reset at local
  midnight on the period's first day), background subtracted as dosimetry services do, times a
  per-device calibration factor (σ 5 %; 0.001 mSv resolution), and its own dose rate (silicon
  diode, 2 cps per µSv/h, 60 s, 0.1 µSv/h resolution). The defaults give a fluoroscopy worker
  ~1–1.5 mSv a year, typical of radiology staff; the limits (20 mSv/a averaged, investigation
  level 5 mSv/a) are for the detectors to judge, not modelled here.

Randomness is the air monitor's counter-based splitmix64 hash of (seed, stream, index), so readings
are pure functions of (spec, seed, faults, t). A monitor and a dosimeter in the same room pass the
same ``room_seed`` so that they see the same exposures.
"""

from __future__ import annotations

import bisect
import math
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulators.air_monitor.signal import _GOLDEN, _M64, _mix64, _normal, _normal_pair, _uniform

Modality = Literal["radiography", "fluoroscopy", "ct"]
Detector = Literal["scintillator", "gm"]

#: Quantities of kind ``dose_rate_monitor`` and of the personal-dosimeter reader, in order.
MONITOR_QUANTITIES: tuple[str, ...] = ("dose_rate_usv_h", "beam_on")
DOSIMETER_QUANTITIES: tuple[str, ...] = ("dose_msv", "dose_rate_usv_h")

_DAY_S = 86400.0
_EPOCH = date(1970, 1, 1)

# Per-modality defaults. Scatter at 1 m from the patient while the beam is on: ~30 mSv/h during a
# radiograph, ~2 mSv/h in fluoroscopy, ~3 mSv/h beside a CT gantry. Transmissions are of ~2 mm Pb
# (or concrete equivalent) at the modality's kV and leave 0.6–0.9 µSv/h outside.
MODALITY_DEFAULTS: dict[str, dict[str, float]] = {
    "radiography": {"exposures_per_h": 30, "exposure_median_s": 0.1, "exposure_sigma": 0.7,
                    "exposure_min_s": 0.005, "exposure_max_s": 2.0, "scatter_usv_h": 30000.0,
                    "shielding_transmission": 3e-5},
    "fluoroscopy": {"exposures_per_h": 8, "exposure_median_s": 20.0, "exposure_sigma": 1.0,
                    "exposure_min_s": 1.0, "exposure_max_s": 240.0, "scatter_usv_h": 2000.0,
                    "shielding_transmission": 4e-4},
    "ct": {"exposures_per_h": 10, "exposure_median_s": 8.0, "exposure_sigma": 0.6,
           "exposure_min_s": 1.0, "exposure_max_s": 60.0, "scatter_usv_h": 3000.0,
           "shielding_transmission": 2e-4},
}

# Fraction of the peak exposure rate by local hour (weekday, weekend). Radiography has an evening
# emergency tail, fluoroscopy is scheduled work only, CT runs around the clock.
_H = tuple[float, ...]
ROOM_PROFILES: dict[str, tuple[_H, _H]] = {
    "radiography": (
        (.05, .03, .03, .03, .03, .05, .1, .3, .9, 1, 1, .9, .4, .6, .9, .9, .9, .5,
         .2, .2, .15, .1, .08, .05),
        (.05, .03, .03, .03, .03, .05, .05, .1, .3, .3, .3, .3, .2, .2, .3, .3, .3, .2,
         .15, .15, .1, .1, .08, .05),
    ),
    "fluoroscopy": (
        (0, 0, 0, 0, 0, 0, 0, 0, .6, 1, 1, 1, .3, .5, .9, .9, .9, .3,
         0, 0, 0, 0, 0, 0),
        (0,) * 24,
    ),
    "ct": (
        (.2, .15, .1, .1, .1, .15, .2, .5, .9, 1, 1, .9, .6, .8, 1, 1, .9, .7,
         .5, .5, .4, .35, .3, .25),
        (.2, .15, .1, .1, .1, .15, .2, .3, .5, .6, .6, .6, .5, .5, .6, .6, .6, .5,
         .45, .45, .4, .35, .3, .25),
    ),
}

DETECTOR_DEFAULTS: dict[str, dict[str, float]] = {
    "scintillator": {"sensitivity_cps_per_usv_h": 50.0, "dead_time_us": 2.0, "integration_s": 10.0},
    "gm": {"sensitivity_cps_per_usv_h": 3.0, "dead_time_us": 100.0, "integration_s": 30.0},
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class XRayRoomSpec(_Frozen):
    """Declaration of an X-ray room: what it does and how much leaks. Omitted fields take the
    modality's defaults (``MODALITY_DEFAULTS``)."""

    modality: Modality
    exposures_per_h: float = Field(ge=0, description="At the busiest hour")
    exposure_median_s: float = Field(gt=0)
    exposure_sigma: float = Field(ge=0, le=3, description="Log-normal spread of durations")
    exposure_min_s: float = Field(gt=0)
    exposure_max_s: float = Field(gt=0, le=3600)
    scatter_usv_h: float = Field(ge=0, description="In the room at 1 m while the beam is on")
    shielding_transmission: float = Field(ge=0, le=1, description="Wall, door, window")
    utc_offset_h: float = Field(default=8.0, ge=-12, le=14)

    @model_validator(mode="before")
    @classmethod
    def _modality_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("modality") in MODALITY_DEFAULTS:
            return {**MODALITY_DEFAULTS[data["modality"]], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> XRayRoomSpec:
        if not self.exposure_min_s <= self.exposure_median_s <= self.exposure_max_s:
            raise ValueError("need exposure_min_s <= exposure_median_s <= exposure_max_s")
        if self.exposures_per_h * self.cell_s / 3600.0 > 1.0:
            raise ValueError(f"at most one exposure per {self.cell_s:.0f} s cell: lower "
                             "exposures_per_h or exposure_max_s")
        return self

    @classmethod
    def for_modality(cls, modality: Modality, **overrides: Any) -> XRayRoomSpec:
        return cls.model_validate({"modality": modality, **overrides})

    @property
    def cell_s(self) -> float:
        """Schedule cell: room for the longest exposure and a pause."""
        return max(60.0, 1.25 * self.exposure_max_s)


class RadiationFaults(_Frozen):
    """Injectable faults. ``leakage_factor`` multiplies the beam's contribution at the instrument:
    an interlock failure (door open during exposure) or a shielding defect."""

    leakage_factor: float = Field(default=1.0, ge=0, le=1e6)


class DoseRateMonitorSpec(_Frozen):
    """Declaration of an ambient dose-rate monitor at an X-ray room. Omitted detector fields take
    the detector's defaults (``DETECTOR_DEFAULTS``)."""

    room: XRayRoomSpec
    position: Literal["outside", "inside"] = "outside"
    distance_m: float = Field(default=2.0, ge=0.3, le=20, description="Inside: from the patient")
    background_usv_h: float = Field(default=0.15, ge=0.01, le=1.0)
    detector: Detector = "gm"
    sensitivity_cps_per_usv_h: float = Field(gt=0)
    dead_time_us: float = Field(ge=0, le=1000)
    update_s: float = Field(default=10.0, ge=1, le=600, description="Display update period")
    integration_s: float = Field(ge=1, le=3600, description="Moving window, × update_s")
    range_max_usv_h: float = Field(default=10000.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _detector_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {**DETECTOR_DEFAULTS[data.get("detector", "gm")], **data}
        return data

    @model_validator(mode="after")
    def _window_of_updates(self) -> DoseRateMonitorSpec:
        n = self.integration_s / self.update_s
        if n < 1 or abs(n - round(n)) > 1e-9:
            raise ValueError("integration_s must be a whole number of update_s periods")
        return self

    def beam_usv_h(self) -> float:
        """Contribution at the monitor while the beam is on (technique factor 1, no fault)."""
        room = self.room
        geometry = (room.shielding_transmission if self.position == "outside"
                    else 1.0 / (self.distance_m * self.distance_m))
        return room.scatter_usv_h * geometry


class PersonalDosimeterSpec(_Frozen):
    """Declaration of a radiation worker's electronic personal dosimeter and where they work."""

    room: XRayRoomSpec = Field(default_factory=lambda: XRayRoomSpec.for_modality("fluoroscopy"))
    in_room_fraction: float = Field(default=1.0, ge=0, le=1, description="Exposures spent inside")
    position_factor: float = Field(default=0.5, ge=0, le=10, description="× scatter at 1 m")
    apron_transmission: float = Field(default=0.01, ge=0, le=1, description="Dosimeter under it")
    shift_start_h: float = Field(default=8.0, ge=0, le=24)
    shift_end_h: float = Field(default=17.5, ge=0, le=24)
    weekdays_only: bool = True
    period_months: int = Field(default=1, ge=1, le=3, description="GBZ 128: 1 to 3 months")
    background_usv_h: float = Field(default=0.15, ge=0.01, le=1.0)
    calibration_sigma: float = Field(default=0.05, ge=0, le=0.3)
    sensitivity_cps_per_usv_h: float = Field(default=2.0, gt=0)
    integration_s: float = Field(default=60.0, ge=1, le=600)

    @model_validator(mode="after")
    def _check(self) -> PersonalDosimeterSpec:
        if self.shift_end_h <= self.shift_start_h:
            raise ValueError("shift_end_h must be after shift_start_h")
        return self


def _keys(seed: int, salt: int, streams: tuple[str, ...]) -> dict[str, int]:
    base = _mix64((seed * _GOLDEN + salt) & _M64)
    return {name: _mix64((base + i + 1) & _M64) for i, name in enumerate(streams)}


def _poisson(key: int, index: int, lam: float) -> int:
    """Poisson(lam) from one hash: inversion for small means, normal approximation above 50."""
    if lam <= 0.0:
        return 0
    if lam < 50.0:
        u = _uniform(key, index)
        k, p = 0, math.exp(-lam)
        cum = p
        while u > cum and k < 200:
            k += 1
            p *= lam / k
            cum += p
        return k
    return max(0, round(lam + math.sqrt(lam) * _normal(key, index)))


def _background(key: int, base: float, ts: float) -> float:
    """Natural background with a slow ±5 % wander (radon progeny, weather), 6-hour knots."""
    x = ts / 21600.0
    i = math.floor(x)
    f = x - i
    w = f * f * (3.0 - 2.0 * f)
    a, b = _normal(key, i), _normal(key, i + 1)
    return base * (1.0 + 0.05 * (a + (b - a) * w))


class XRayRoom:
    """The exposures of one room: a pure function of (spec, seed), cached per cell."""

    __slots__ = ("_cache", "_keys", "_off", "cell_s", "profile", "seed", "spec")

    def __init__(self, spec: XRayRoomSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.cell_s = spec.cell_s
        self.profile = ROOM_PROFILES[spec.modality]
        self._keys = _keys(seed, 0x8A7, ("occ", "shape", "start", "in_room"))
        self._off = spec.utc_offset_h * 3600.0
        self._cache: dict[int, tuple[float, float, float] | None] = {}

    def exposure(self, cell: int) -> tuple[float, float, float] | None:
        """(start ts, end ts, technique factor) of the exposure in ``cell``, if there is one."""
        if cell in self._cache:
            return self._cache[cell]
        spec = self.spec
        cell_s = self.cell_s
        t0 = cell * cell_s
        local = t0 + self._off
        weekend = (int(local // _DAY_S) + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        p = spec.exposures_per_h * cell_s / 3600.0 * self.profile[weekend][
            int(local % _DAY_S // 3600)]
        out = None
        if p > 0.0 and _uniform(self._keys["occ"], cell) < p:
            z_d, z_i = _normal_pair(self._keys["shape"], cell)
            dur = min(max(spec.exposure_median_s * math.exp(spec.exposure_sigma * z_d),
                          spec.exposure_min_s), spec.exposure_max_s)
            factor = min(max(math.exp(0.25 * z_i), 0.6), 1.6)
            start = t0 + _uniform(self._keys["start"], cell) * (cell_s - dur)
            out = (start, start + dur, factor)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[cell] = out
        return out

    def in_room(self, cell: int, fraction: float) -> bool:
        """Whether a worker with this in-room fraction stays inside for the cell's exposure."""
        return fraction >= 1.0 or _uniform(self._keys["in_room"], cell) < fraction

    def exposures(self, t0: float, t1: float) -> list[tuple[int, float, float, float]]:
        """(cell, start, end, factor) of exposures overlapping [t0, t1)."""
        out = []
        for cell in range(math.floor(t0 / self.cell_s), math.floor(t1 / self.cell_s) + 1):
            e = self.exposure(cell)
            if e is not None and e[1] > t0 and e[0] < t1:
                out.append((cell, *e))
        return out

    def beam_on(self, ts: float) -> bool:
        e = self.exposure(math.floor(ts / self.cell_s))
        return e is not None and e[0] <= ts < e[1]


class DoseRateMonitorSignal:
    """Readings of one ambient dose-rate monitor: ``sample(t)`` → dose rate and beam state.

    Stateless apart from a small cache of counts per update period; ``faults`` may be replaced at
    any time (periods already counted keep their counts).
    """

    __slots__ = ("_counts", "_keys", "_window", "faults", "room", "seed", "spec")

    def __init__(self, spec: DoseRateMonitorSpec, seed: int, *, room_seed: int | None = None,
                 faults: RadiationFaults | None = None) -> None:
        """``room_seed``: instruments in one room share it, so they see the same exposures."""
        self.spec = spec
        self.seed = seed
        self.room = XRayRoom(spec.room, seed if room_seed is None else room_seed)
        self.faults = faults or RadiationFaults()
        self._keys = _keys(seed, 0xD05E, ("background", "counts"))
        self._window = max(1, round(spec.integration_s / spec.update_s))
        self._counts: dict[int, tuple[int, bool]] = {}

    def expected_usv_h(self, t0: float, t1: float) -> tuple[float, bool]:
        """Mean true H*(10) rate over [t0, t1) and whether the beam was on in it."""
        spec = self.spec
        beam = spec.beam_usv_h() * self.faults.leakage_factor
        dose = 0.0
        u = spec.update_s
        for k in range(math.floor(t0 / u), math.ceil(t1 / u)):  # background per update period
            a, b = max(k * u, t0), min((k + 1) * u, t1)
            dose += _background(self._keys["background"], spec.background_usv_h,
                                (k + 0.5) * u) * (b - a)
        exposures = self.room.exposures(t0, t1)
        for _, start, end, factor in exposures:
            dose += beam * factor * max(min(end, t1) - max(start, t0), 0.0)
        return dose / (t1 - t0), bool(exposures)

    def _period(self, k: int) -> tuple[int, bool]:
        """Counts in update period ``k`` and whether the beam was on in it."""
        hit = self._counts.get(k)
        if hit is not None:
            return hit
        spec = self.spec
        u = spec.update_s
        t0, t1 = k * u, (k + 1) * u
        tau = spec.dead_time_us * 1e-6
        sens = spec.sensitivity_cps_per_usv_h
        bg = _background(self._keys["background"], spec.background_usv_h, (t0 + t1) / 2)
        # Piecewise-constant true rate n → expected observed counts ∫ n/(1 + nτ) dt.
        beam = spec.beam_usv_h() * self.faults.leakage_factor
        exposures = self.room.exposures(t0, t1)
        n_bg = bg * sens
        m_bg = n_bg / (1.0 + n_bg * tau)
        lam = m_bg * u
        for _, start, end, factor in exposures:
            n = (bg + beam * factor) * sens
            lam += (n / (1.0 + n * tau) - m_bg) * (min(end, t1) - max(start, t0))
        hit = (_poisson(self._keys["counts"], k, lam), bool(exposures))
        if len(self._counts) > 64:
            self._counts.clear()
        self._counts[k] = hit
        return hit

    def sample(self, t: datetime) -> dict[str, Any]:
        """The reading at ``t`` (timezone-aware), as displayed after the last completed update."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, Any]:
        spec = self.spec
        last = math.floor(ts / spec.update_s) - 1
        counts, beam_on = 0, False
        for k in range(last - self._window + 1, last + 1):
            c, b = self._period(k)
            counts += c
            beam_on = beam_on or b
        tau = spec.dead_time_us * 1e-6
        m = counts / (self._window * spec.update_s)
        if m * tau >= 0.99:  # paralysed: the instrument shows full scale
            rate = spec.range_max_usv_h
        else:  # dead-time correction, then calibration
            rate = min(m / (1.0 - m * tau) / spec.sensitivity_cps_per_usv_h,
                       spec.range_max_usv_h)
        return {"dose_rate_usv_h": round(rate, 2), "beam_on": beam_on}

    def truth(self, t: datetime) -> dict[str, Any]:
        """Noiseless mean rate over the window ``sample(t)`` reports, and the beam state."""
        u = self.spec.update_s
        t1 = math.floor(t.timestamp() / u) * u
        rate, beam_on = self.expected_usv_h(t1 - self._window * u, t1)
        return {"dose_rate_usv_h": rate, "beam_on": beam_on}


class PersonalDosimeterSignal:
    """Readings of one worker's electronic dosimeter: period Hp(10) and the current dose rate.

    Hp(10) is accumulated day by day from the start of the monitoring period; the running total and
    the daily totals are cached, so forward sampling costs O(1) and a jump back re-sums the days
    from the period start. A day's exposures cost ~0.3 ms to integrate, once.
    """

    __slots__ = ("_calibration", "_cum", "_day_cache", "_day_totals", "_keys", "_off", "faults",
                 "room", "seed", "spec")

    def __init__(self, spec: PersonalDosimeterSpec, seed: int, *, room_seed: int | None = None,
                 faults: RadiationFaults | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.room = XRayRoom(spec.room, seed if room_seed is None else room_seed)
        self.faults = faults or RadiationFaults()
        self._keys = _keys(seed, 0xD051, ("background", "counts", "calibration"))
        self._off = spec.room.utc_offset_h * 3600.0
        self._calibration = math.exp(spec.calibration_sigma * _normal(self._keys["calibration"], 0))
        self._cum: tuple[int, int, float] = (-1, -1, 0.0)  # (period start day, day, µSv before it)
        self._day_cache: dict[int, tuple[list[float], list[float], list[tuple[float, float]]]] = {}
        self._day_totals: dict[int, float] = {}

    def worker_usv_h(self, cell: int, factor: float) -> float:
        """Dose rate at the dosimeter during the exposure in ``cell`` (no background)."""
        spec = self.spec
        room = spec.room
        if self.room.in_room(cell, spec.in_room_fraction):
            geometry = spec.position_factor * spec.apron_transmission
        else:
            geometry = room.shielding_transmission * self.faults.leakage_factor
        return room.scatter_usv_h * factor * geometry

    def _on_shift(self, day: int) -> tuple[float, float] | None:
        spec = self.spec
        if spec.weekdays_only and (day + 3) % 7 >= 5:
            return None
        day0 = day * _DAY_S - self._off
        return day0 + spec.shift_start_h * 3600.0, day0 + spec.shift_end_h * 3600.0

    def _day_doses(self, day: int) -> tuple[list[float], list[float], list[tuple[float, float]]]:
        """The worker's exposures on local ``day``: end times, cumulative µSv after each, and
        (start, µSv/h) of each, all clipped to the shift."""
        hit = self._day_cache.get(day)
        if hit is not None:
            return hit
        ends: list[float] = []
        cum: list[float] = []
        pieces: list[tuple[float, float]] = []
        shift = self._on_shift(day)
        if shift is not None:
            total = 0.0
            for cell, start, end, factor in self.room.exposures(*shift):
                start, end = max(start, shift[0]), min(end, shift[1])
                if end > start:
                    rate = self.worker_usv_h(cell, factor)
                    total += rate * (end - start) / 3600.0
                    ends.append(end)
                    cum.append(total)
                    pieces.append((start, rate))
        if len(self._day_cache) > 4:
            self._day_cache.clear()
        self._day_cache[day] = (ends, cum, pieces)
        return ends, cum, pieces

    def _day_total(self, day: int) -> float:
        """The worker's whole-day dose (µSv), cached: going back re-sums floats, not exposures."""
        total = self._day_totals.get(day)
        if total is None:
            if len(self._day_totals) > 400:
                self._day_totals.clear()
            cum = self._day_doses(day)[1]
            total = self._day_totals[day] = cum[-1] if cum else 0.0
        return total

    def _dose_in_day(self, day: int, ts: float) -> float:
        """Occupational dose (µSv) on ``day`` up to ``ts``."""
        ends, cum, pieces = self._day_doses(day)
        i = bisect.bisect_right(ends, ts)
        dose = cum[i - 1] if i else 0.0
        if i < len(ends) and pieces[i][0] < ts:  # an exposure in progress
            dose += pieces[i][1] * (ts - pieces[i][0]) / 3600.0
        return dose

    def _period_start_day(self, day: int) -> int:
        d = _EPOCH + timedelta(days=day)
        m = d.year * 12 + d.month - 1
        m -= m % self.spec.period_months
        return (date(m // 12, m % 12 + 1, 1) - _EPOCH).days

    def hp10_usv(self, ts: float) -> float:
        """True occupational Hp(10) (µSv) since the start of the monitoring period at ``ts``."""
        day = math.floor((ts + self._off) / _DAY_S)
        start = self._period_start_day(day)
        p_start, p_day, dose = self._cum
        if p_start != start or p_day > day:
            p_start, p_day, dose = start, start, 0.0
        while p_day < day:
            dose += self._day_total(p_day)
            p_day += 1
        self._cum = (p_start, p_day, dose)
        return dose + self._dose_in_day(day, ts)

    def rate_usv_h(self, ts: float) -> float:
        """True dose rate at the dosimeter at ``ts`` (background included)."""
        bg = _background(self._keys["background"], self.spec.background_usv_h, ts)
        day = math.floor((ts + self._off) / _DAY_S)
        shift = self._on_shift(day)
        if shift is None or not shift[0] <= ts < shift[1]:
            return bg
        cell = math.floor(ts / self.room.cell_s)
        e = self.room.exposure(cell)
        if e is None or not e[0] <= ts < e[1]:
            return bg
        return bg + self.worker_usv_h(cell, e[2])

    def _measured_rate(self, ts: float) -> float:
        """Counts over the last completed integration period, converted to µSv/h."""
        spec = self.spec
        period = spec.integration_s
        k = math.floor(ts / period) - 1
        t0, t1 = k * period, (k + 1) * period
        bg = _background(self._keys["background"], spec.background_usv_h, (t0 + t1) / 2)
        dose_usv = bg * period / 3600.0
        shift = self._on_shift(math.floor((t0 + self._off) / _DAY_S))
        if shift is not None:
            for cell, start, end, factor in self.room.exposures(max(t0, shift[0]),
                                                                min(t1, shift[1])):
                overlap = min(end, t1, shift[1]) - max(start, t0, shift[0])
                if overlap > 0:
                    dose_usv += self.worker_usv_h(cell, factor) * overlap / 3600.0
        lam = dose_usv * 3600.0 * spec.sensitivity_cps_per_usv_h
        return _poisson(self._keys["counts"], k, lam) / period / spec.sensitivity_cps_per_usv_h

    def sample(self, t: datetime) -> dict[str, float]:
        """The reader's values at ``t`` (timezone-aware)."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, float]:
        return {
            "dose_msv": round(self.hp10_usv(ts) * self._calibration / 1000.0, 3),
            "dose_rate_usv_h": round(min(self._measured_rate(ts), 10000.0), 1),
        }

    def truth(self, t: datetime) -> dict[str, float]:
        """True Hp(10) (mSv, uncalibrated) and the instantaneous dose rate at the dosimeter."""
        ts = t.timestamp()
        return {"dose_msv": self.hp10_usv(ts) / 1000.0, "dose_rate_usv_h": self.rate_usv_h(ts)}
