"""Signal model of a public-place indoor-air monitor (GB 37488 quantities).

The model is small physics, not curve fitting, so the numbers move for the reasons real ones do:

* **Occupancy** follows a daily schedule per venue type (hotel rooms at night, offices 9-18 on
  weekdays, malls 10-22, ...), drawn afresh every 15-minute slot with day-to-day variation.
* **CO₂** obeys the single-zone mass balance ``dC/dt = G·N/V·1e6 − λ·(C − C_out)`` (ppm/h; G in
  m³/h per person, V in m³, λ air changes per hour). Occupancy is constant within a slot, so the
  equation is integrated *exactly* (``C ← C_ss + (C − C_ss)·e^(−λΔt)``) slot by slot, whatever the
  gap between two samples: sampling every second or once an hour gives the same curve.
* **PM2.5** relaxes (rate λ + deposition) towards ``F_inf·PM_out + resuspension·N/N_max``; outdoor
  PM2.5 has a day-to-day log-normal factor and a night-time peak. PM10 = PM2.5 / ratio.
* **HCHO** relaxes (rate λ) towards a furniture-emission level that rises exponentially with
  temperature. **Temperature** follows the HVAC set-point with a daily swing plus occupant heat;
  **humidity** comes from a dew point through the Magnus formula, so it falls as temperature rises.
* **Instrument**: Gaussian noise per sample (1σ = half the datasheet accuracy), clipped to the
  physical range and rounded to the instrument's resolution.

All randomness is a pure function of ``(seed, stream, time)`` (a splitmix64 hash), not a stateful
generator: a device's whole state is a handful of floats, reproducibility does not depend on call
order, and a sample costs ~10 µs of pure Python (numpy's per-call overhead would dominate here).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

VenueType = Literal["hotel_room", "office", "mall", "gym", "classroom"]

#: Quantities produced, in payload order (canonical names from protocols/data/quantities.yaml).
QUANTITIES: tuple[str, ...] = (
    "co2_ppm", "pm25_ug_m3", "pm10_ug_m3", "hcho_mg_m3", "temperature_c", "humidity_pct",
)

SLOT_S = 900.0
"""Occupancy and the slow drivers are constant within a 15-minute slot (exact integration)."""

# Probability that a place is occupied (hotel) or fraction of max occupancy (others), by local hour.
# Rows: weekday, weekend. These are the venue's "declaration" of how it is used.
_H = tuple[float, ...]
OCCUPANCY_PROFILES: dict[str, tuple[_H, _H]] = {
    # Guests sleep in; out in the day (cleaning, sightseeing); back in the evening.
    "hotel_room": (
        (.97, .97, .97, .97, .97, .97, .95, .9, .6, .35, .2, .15,
         .1, .1, .1, .1, .1, .15, .3, .45, .6, .75, .9, .95),
        (.97, .97, .97, .97, .97, .97, .97, .95, .8, .6, .4, .25,
         .2, .2, .2, .2, .2, .25, .35, .5, .65, .8, .9, .95),
    ),
    # Arrive 8-9, lunch 12-13 (many eat out), leave 17-19; near empty at weekends.
    "office": (
        (0, 0, 0, 0, 0, 0, 0, .05, .4, .85, .95, .95,
         .55, .85, .95, .95, .95, .8, .35, .15, .08, .03, 0, 0),
        (0, 0, 0, 0, 0, 0, 0, 0, 0, .02, .03, .03,
         .03, .03, .03, .03, .02, .01, 0, 0, 0, 0, 0, 0),
    ),
    # Open 10-22; lunch and evening peaks; busier at weekends.
    "mall": (
        (0, 0, 0, 0, 0, 0, 0, 0, .01, .05, .2, .35,
         .5, .45, .4, .4, .45, .55, .65, .7, .6, .4, .05, 0),
        (0, 0, 0, 0, 0, 0, 0, 0, .01, .05, .35, .55,
         .7, .7, .75, .8, .8, .8, .85, .85, .7, .5, .05, 0),
    ),
    # Early birds, lunch-break sessions, and the after-work peak.
    "gym": (
        (0, 0, 0, 0, 0, 0, .3, .45, .3, .15, .1, .1,
         .3, .2, .1, .1, .1, .35, .7, .9, .85, .55, .15, 0),
        (0, 0, 0, 0, 0, 0, 0, .1, .2, .5, .5, .5,
         .4, .4, .55, .55, .55, .55, .55, .5, .5, .3, .05, 0),
    ),
    # Chinese school day: 8:00-11:50 and 14:00-17:00, midday break at home or in the canteen.
    "classroom": (
        (0, 0, 0, 0, 0, 0, 0, .3, .97, .97, .97, .9,
         .1, .1, .97, .97, .97, .2, 0, 0, 0, 0, 0, 0),
        (0,) * 24,
    ),
}

# Defaults by venue. Volumes are typical rooms; air-change rates are chosen so that full occupancy
# lands near the GB 37488 CO₂ limit (fresh air ~30 m³/h per person in hotels, ~20 elsewhere), which
# is where supervision gets interesting. CO₂ generation: ~15 L/h asleep, 18 at desk work, 25
# walking, 50 exercising, 14 for seated pupils (ASHRAE 62.1 / ASTM D6245 metabolic rates).
VENUE_DEFAULTS: dict[str, dict[str, float]] = {
    "hotel_room": {"volume_m3": 35, "air_change_per_h": 1.6, "max_occupancy": 2,
                   "co2_l_h_per_person": 15, "resuspension_ug_m3": 4, "setpoint_c": 24,
                   "hcho_mg_m3_at_23c": 0.04},
    "office": {"volume_m3": 600, "air_change_per_h": 1.2, "max_occupancy": 30,
               "co2_l_h_per_person": 18, "resuspension_ug_m3": 6, "setpoint_c": 24,
               "hcho_mg_m3_at_23c": 0.03},
    "mall": {"volume_m3": 20000, "air_change_per_h": 1.5, "max_occupancy": 1500,
             "co2_l_h_per_person": 25, "resuspension_ug_m3": 12, "setpoint_c": 24,
             "hcho_mg_m3_at_23c": 0.025},
    "gym": {"volume_m3": 900, "air_change_per_h": 3.0, "max_occupancy": 40,
            "co2_l_h_per_person": 50, "resuspension_ug_m3": 15, "setpoint_c": 21,
            "hcho_mg_m3_at_23c": 0.03},
    "classroom": {"volume_m3": 190, "air_change_per_h": 3.0, "max_occupancy": 45,
                  "co2_l_h_per_person": 14, "resuspension_ug_m3": 20, "setpoint_c": 22,
                  "hcho_mg_m3_at_23c": 0.03},
}


class AirMonitorSpec(BaseModel):
    """Declaration of one monitored room and its instrument. Omitted fields take venue defaults.

    Noise fields are 1σ per sample: half the datasheet accuracy, so ~95 % of readings fall inside
    the stated accuracy (NDIR CO₂ ±(30 ppm + 3 %), laser PM ±max(10 µg/m³, 10 %), electrochemical
    HCHO ±0.01 mg/m³, T ±0.3 °C, RH ±3 %).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    venue: VenueType
    volume_m3: float = Field(gt=0)
    air_change_per_h: float = Field(gt=0, le=50)
    max_occupancy: int = Field(ge=0)
    co2_l_h_per_person: float = Field(ge=0, le=200)
    fixed_occupancy: int | None = Field(
        default=None, ge=0, description="Pin occupancy (tests of the steady state); None = schedule"
    )
    hotel_occupancy_rate: float = Field(default=0.75, ge=0, le=1, description="Nights booked")
    utc_offset_h: float = Field(default=8.0, ge=-12, le=14, description="Schedules are local time")

    outdoor_co2_ppm: float = Field(default=420.0, ge=0)
    outdoor_co2_swing_ppm: float = Field(default=15.0, ge=0, description="Night-time build-up")
    outdoor_pm25_ug_m3: float = Field(default=35.0, ge=0, description="Median outdoor PM2.5")
    outdoor_pm25_day_sigma: float = Field(default=0.5, ge=0, le=2, description="Log-normal, /day")
    infiltration_factor: float = Field(default=0.6, ge=0, le=1)
    pm_deposition_per_h: float = Field(default=0.2, ge=0)
    resuspension_ug_m3: float = Field(ge=0, description="Extra PM2.5 at full occupancy")
    pm25_pm10_ratio: float = Field(default=0.6, gt=0.2, le=1)

    hcho_mg_m3_at_23c: float = Field(ge=0, description="Indoor HCHO at 23 °C (excl. outdoor)")
    hcho_temp_coeff_per_c: float = Field(default=0.07, ge=0, description="Emission ∝ e^(k·ΔT)")
    outdoor_hcho_mg_m3: float = Field(default=0.005, ge=0)

    setpoint_c: float = Field(ge=-10, le=40)
    temp_swing_c: float = Field(default=1.0, ge=0, le=15, description="Daily amplitude, peak 15:00")
    occupant_heat_c: float = Field(default=1.0, ge=0, description="Warming at full occupancy")
    dewpoint_c: float = Field(default=10.0, ge=-30, le=35)
    dewpoint_day_sigma_c: float = Field(
        default=1.5, ge=0, le=10,
        description="Day-to-day dew-point spread; smaller where the HVAC humidifies",
    )

    co2_noise_ppm: float = Field(default=15.0, ge=0)
    co2_noise_rel: float = Field(default=0.015, ge=0)
    pm_noise_ug_m3: float = Field(default=5.0, ge=0)
    pm_noise_rel: float = Field(default=0.05, ge=0)
    hcho_noise_mg_m3: float = Field(default=0.005, ge=0)
    temp_noise_c: float = Field(default=0.15, ge=0)
    rh_noise_pct: float = Field(default=1.5, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _venue_defaults(cls, data: Any) -> Any:
        """Fill omitted fields from the venue's defaults, so a scenario can say just ``office``."""
        if isinstance(data, dict) and data.get("venue") in VENUE_DEFAULTS:
            return {**VENUE_DEFAULTS[data["venue"]], **data}
        return data

    @classmethod
    def for_venue(cls, venue: VenueType, **overrides: Any) -> AirMonitorSpec:
        return cls.model_validate({"venue": venue, **overrides})

    def steady_co2_ppm(self, occupants: int) -> float:
        """Analytic steady state of the mass balance: C_out + G·N·1e6 / (V·λ)."""
        g_m3_h = self.co2_l_h_per_person / 1000.0
        ventilation_m3_h = self.volume_m3 * self.air_change_per_h
        return self.outdoor_co2_ppm + g_m3_h * occupants * 1e6 / ventilation_m3_h


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TWO_PI = 2.0 * math.pi
_INV_2_32 = 1.0 / 4294967296.0


def _mix64(z: int) -> int:
    """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit integer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _uniform(key: int, index: int) -> float:
    """U[0, 1) from (stream key, integer index); counter-based, so no generator state."""
    return (_mix64((key + index * _GOLDEN) & _M64) >> 11) * (1.0 / 9007199254740992.0)


def _normal_pair(key: int, index: int) -> tuple[float, float]:
    """Two independent N(0, 1) from one hash (Box-Muller on its two 32-bit halves)."""
    h = _mix64((key + index * _GOLDEN) & _M64)
    u1 = ((h >> 32) + 1) * _INV_2_32  # (0, 1]: log() is safe
    u2 = (h & 0xFFFFFFFF) * _INV_2_32
    r = math.sqrt(-2.0 * math.log(u1))
    a = _TWO_PI * u2
    return r * math.cos(a), r * math.sin(a)


def _normal(key: int, index: int) -> float:
    return _normal_pair(key, index)[0]


# Random streams: each gets its own key so that, e.g., noise and occupancy never share draws.
_STREAMS = ("occ", "occ_day", "guests", "outdoor", "indoor_day", "noise_a", "noise_b", "noise_c")


def _magnus_hpa(t_c: float) -> float:
    """Saturation vapour pressure over water (Magnus, Sonntag 1990 constants), hPa."""
    return 6.112 * math.exp(17.62 * t_c / (243.12 + t_c))


class AirMonitorSignal:
    """Readings of one monitor: ``sample(t)`` → canonical fields, reproducible for (spec, seed, t).

    State is the last sample time and three concentrations (CO₂, PM2.5, HCHO) plus a one-slot
    cache, so 10,000 monitors fit easily in one process. Samples may come at any times; going
    back in time restarts the integration from a warm-up (deterministically).
    """

    __slots__ = ("_co2", "_day_cache", "_drivers", "_hcho", "_keys", "_offset_s", "_pm25", "_slot",
                 "_ts", "profile", "seed", "spec")

    WARMUP_MAX_H = 24.0

    def __init__(self, spec: AirMonitorSpec, seed: int, *, outdoor_seed: int | None = None) -> None:
        """``outdoor_seed``: monitors in one city share it, so they see the same outdoor weather
        (PM2.5 episodes, humid days); by default each monitor has its own."""
        self.spec = spec
        self.seed = seed
        base = _mix64((seed * _GOLDEN + 0x5EED) & _M64)
        self._keys = {name: _mix64((base + i + 1) & _M64) for i, name in enumerate(_STREAMS)}
        if outdoor_seed is not None:
            self._keys["outdoor"] = _mix64((outdoor_seed * _GOLDEN + 0x0D00) & _M64)
        self._offset_s = spec.utc_offset_h * 3600.0
        self.profile = OCCUPANCY_PROFILES[spec.venue]
        self._ts: float | None = None
        self._co2 = self._pm25 = self._hcho = 0.0
        self._slot: int | None = None
        self._drivers: tuple[float, ...] = ()
        self._day_cache: tuple[Any, ...] = (None, (), ())

    # ---- drivers: everything that is constant within one 15-minute slot -------------------------

    def occupancy_at_slot(self, slot: int) -> int:
        """People in the room during local slot ``slot`` (slot = local seconds // 900)."""
        spec = self.spec
        if spec.fixed_occupancy is not None:
            return spec.fixed_occupancy
        n_max = spec.max_occupancy
        if n_max == 0:
            return 0
        local_s = slot * SLOT_S
        day = int(local_s // 86400)
        hour = int(local_s % 86400 // 3600)
        weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        p = self.profile[1 if weekend else 0][hour]
        if p <= 0.0:
            return 0
        keys = self._keys
        if spec.venue == "hotel_room":
            # A booking runs noon to noon; when booked, 1..max guests who come and go.
            night = int((local_s - 43200) // 86400)
            if _uniform(keys["occ_day"], night) >= spec.hotel_occupancy_rate:
                return 0
            guests = 1 + int(_uniform(keys["guests"], night) * n_max)
            return guests if _uniform(keys["occ"], slot) < p else 0
        # Crowds: day-to-day factor (log-normal, 15 %) and binomial-like scatter per slot.
        day_factor = math.exp(0.15 * _normal(keys["occ_day"], day) - 0.01125)
        mean = min(float(n_max), n_max * p * day_factor)
        sd = math.sqrt(max(mean * (1.0 - min(p, 0.99)), 0.25))
        n = round(mean + sd * _normal(keys["occ"], slot))
        return min(max(n, 0), n_max)

    def _day_normals(self, day: int) -> tuple[float, float, float, float]:
        """Standard normals for one day: outdoor PM2.5, dew point (outdoor stream), T, HCHO."""
        pm, dew = _normal_pair(self._keys["outdoor"], day)
        temp, hcho = _normal_pair(self._keys["indoor_day"], day)
        return pm, dew, temp, hcho

    def _day_noise(self, local_s: float) -> tuple[float, ...]:
        """Day-to-day normals drifting smoothly (linearly between local noons); cached per day."""
        x = local_s / 86400.0 - 0.5
        d0 = math.floor(x)
        if self._day_cache[0] != d0:
            self._day_cache = (d0, self._day_normals(d0), self._day_normals(d0 + 1))
        f = x - d0
        a, b = self._day_cache[1], self._day_cache[2]
        return tuple((1.0 - f) * a[i] + f * b[i] for i in range(4))

    def _compute_drivers(self, slot: int) -> tuple[float, ...]:
        spec = self.spec
        n = self.occupancy_at_slot(slot)
        occ_frac = n / spec.max_occupancy if spec.max_occupancy else 0.0
        mid = (slot + 0.5) * SLOT_S  # local seconds
        hour = mid % 86400 / 3600.0
        lam = spec.air_change_per_h
        # CO₂: outdoor has a night-time build-up peaking around 05:00.
        c_out = spec.outdoor_co2_ppm + spec.outdoor_co2_swing_ppm * math.cos(
            _TWO_PI * (hour - 5.0) / 24.0)
        source_ppm_h = spec.co2_l_h_per_person / 1000.0 * n / spec.volume_m3 * 1e6
        co2_target = c_out + source_ppm_h / lam
        # PM2.5: outdoor median × day factor (log-normal) × diurnal (peak 03:00, low 15:00).
        z_pm, z_dew, z_temp, z_hcho = self._day_noise(mid)
        s = spec.outdoor_pm25_day_sigma
        pm_day = math.exp(s * z_pm - 0.5 * s * s)
        pm_out = spec.outdoor_pm25_ug_m3 * pm_day * (1.0 + 0.25 * math.cos(
            _TWO_PI * (hour - 3.0) / 24.0))
        pm_target = spec.infiltration_factor * pm_out + spec.resuspension_ug_m3 * occ_frac
        # Temperature offsets that are slow: day-to-day (σ 0.5 °C) and occupant heat.
        temp_offset = 0.5 * z_temp + spec.occupant_heat_c * occ_frac
        t_slot = spec.setpoint_c + temp_offset + spec.temp_swing_c * math.cos(
            _TWO_PI * (hour - 15.0) / 24.0)
        hcho_day = math.exp(0.1 * z_hcho)
        hcho_target = spec.outdoor_hcho_mg_m3 + spec.hcho_mg_m3_at_23c * hcho_day * math.exp(
            spec.hcho_temp_coeff_per_c * (t_slot - 23.0))
        # Dew point: day-to-day (σ 1.5 °C by default) plus occupants' moisture (~50 g/h each).
        dew = spec.dewpoint_c + spec.dewpoint_day_sigma_c * z_dew + 1.5 * occ_frac
        return (co2_target, lam, pm_target, lam + spec.pm_deposition_per_h, hcho_target, lam,
                temp_offset, dew, float(n))

    def _drivers_at(self, slot: int) -> tuple[float, ...]:
        if slot != self._slot:
            self._drivers = self._compute_drivers(slot)
            self._slot = slot
        return self._drivers

    # ---- integration ---------------------------------------------------------------------------

    def _advance(self, ts: float) -> None:
        """Integrate the three balances exactly from the last sample time to ``ts``."""
        if self._ts is None or ts < self._ts:
            self._warm_up(ts)
        t = self._ts
        assert t is not None
        off = self._offset_s
        co2, pm, hcho = self._co2, self._pm25, self._hcho
        while t < ts:
            slot = int((t + off) // SLOT_S)
            end = min(ts, (slot + 1) * SLOT_S - off)
            d = self._drivers_at(slot)
            dt_h = (end - t) / 3600.0
            co2 = d[0] + (co2 - d[0]) * math.exp(-d[1] * dt_h)
            pm = d[2] + (pm - d[2]) * math.exp(-d[3] * dt_h)
            hcho = d[4] + (hcho - d[4]) * math.exp(-d[5] * dt_h)
            t = end
        self._co2, self._pm25, self._hcho = co2, pm, hcho
        self._ts = ts

    def _warm_up(self, ts: float) -> None:
        """Start from equilibrium six time constants back (what is left of the start is e⁻⁶).

        The start is aligned to a slot boundary, so two signals whose first samples fall in the same
        slot hold the same state afterwards, however differently they are sampled. Cost: one driver
        computation per slot of warm-up (~80 µs for an office), once per device.
        """
        horizon_s = min(self.WARMUP_MAX_H, 6.0 / self.spec.air_change_per_h) * 3600.0
        off = self._offset_s
        start = math.floor((ts + off - horizon_s) / SLOT_S) * SLOT_S - off
        d = self._drivers_at(int((start + off) // SLOT_S))
        self._co2, self._pm25, self._hcho = d[0], d[2], d[4]
        self._ts = start

    # ---- public API ----------------------------------------------------------------------------

    def sample(self, t: datetime) -> dict[str, float]:
        """The instrument's reading at ``t`` (timezone-aware), rounded to its resolution."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, float]:
        """As ``sample`` but from a POSIX timestamp (skips datetime conversion in hot loops)."""
        true = self._truth(ts)
        spec = self.spec
        keys = self._keys
        ms = int(ts * 1000.0)
        n1, n2 = _normal_pair(keys["noise_a"], ms)
        n3, n4 = _normal_pair(keys["noise_b"], ms)
        n5, n6 = _normal_pair(keys["noise_c"], ms)
        co2 = true[0] + n1 * (spec.co2_noise_ppm + spec.co2_noise_rel * true[0])
        pm_abs, pm_rel = spec.pm_noise_ug_m3, spec.pm_noise_rel
        pm25 = true[1] + n2 * max(pm_abs, pm_rel * true[1])
        # PM10 shares the optical channel: mostly the same error, a little of its own.
        pm10 = true[2] + (0.8 * n2 + 0.6 * n3) * max(pm_abs, pm_rel * true[2])
        hcho = true[3] + n4 * spec.hcho_noise_mg_m3
        temp = true[4] + n5 * spec.temp_noise_c
        rh = true[5] + n6 * spec.rh_noise_pct
        return {
            "co2_ppm": float(round(max(co2, 0.0))),
            "pm25_ug_m3": float(round(max(pm25, 0.0))),
            "pm10_ug_m3": float(round(max(pm10, pm25, 0.0))),
            "hcho_mg_m3": round(max(hcho, 0.0), 3),
            "temperature_c": round(temp, 1),
            "humidity_pct": round(min(max(rh, 0.0), 100.0), 1),
        }

    def truth(self, t: datetime) -> dict[str, float]:
        """The noiseless, unrounded values at ``t`` (what a perfect instrument would read)."""
        return dict(zip(QUANTITIES, self._truth(t.timestamp()), strict=True))

    def occupancy(self, t: datetime) -> int:
        return self.occupancy_at_slot(int((t.timestamp() + self._offset_s) // SLOT_S))

    def _truth(self, ts: float) -> tuple[float, float, float, float, float, float]:
        self._advance(ts)
        spec = self.spec
        d = self._drivers_at(int((ts + self._offset_s) // SLOT_S))
        hour = (ts + self._offset_s) % 86400.0 / 3600.0
        temp = spec.setpoint_c + d[6] + spec.temp_swing_c * math.cos(_TWO_PI * (hour - 15.0) / 24.0)
        dew = min(d[7], temp)
        rh = 100.0 * _magnus_hpa(dew) / _magnus_hpa(temp)
        pm25 = self._pm25
        return (self._co2, pm25, pm25 / spec.pm25_pm10_ratio, self._hcho, temp, rh)
