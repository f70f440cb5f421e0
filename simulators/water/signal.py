"""Signal models of a drinking-water probe and a swimming-pool monitor (GB 5749 / GB 37488 §4.4).

Small physics, so readings cross limits for the reasons real ones do:

* **Free chlorine, drinking water.** At the plant outlet a feedback dosing controller holds the
  residual at its set-point; what is left is the controller's error against demand it cannot
  anticipate (smooth noise, ±~6 %). Downstream, chlorine decays first-order in the bulk water,
  ``C_tap(t) = C_outlet(t − age)·e^(−k(T)·age)`` with ``k(T) = k20·θ^(T−20)`` (θ = 1.07, the usual
  Arrhenius-type demand coefficient), so residuals are lower at taps, lower still behind
  secondary-supply tanks, and lowest on warm summer mornings when the water is oldest.
* **Turbidity**: a low, flow-dependent baseline plus occasional events (filter ripening after a
  backwash at the plant, sediment stirred up by pressure transients in the network) that rise in a
  few minutes and decay exponentially.
* **pH** drifts slowly around 7.2–7.8 (diurnal ±0.05, day-to-day σ 0.05); **water temperature**
  follows a seasonal curve plus a daily swing that is larger in building pipes and roof tanks;
  **conductivity** is lower in the wet season (dilution); TDS is the instrument's EC × factor.
* **Pool.** Bather load follows opening hours (drawn per 15-minute slot). Free chlorine obeys
  ``dC/dt = Kp·(SP − C) − k·C − d·N/V`` (proportional dosing, decay, bather demand), combined
  chlorine ``dCC/dt = (p·N + p0)/V − r·CC`` (chloramines formed from bather nitrogen, removed by
  dilution/UV), pH drifts up towards the CO₂-stripped equilibrium (faster with bathers and
  hypochlorite) and proportional acid dosing holds it just above the set-point, turbidity relaxes
  towards a bather-dependent level at the filter turnover rate. Drivers are constant within a
  slot, so all four are integrated *exactly* (pH piecewise, at its set-point crossing).
* **ORP** follows the empirical log-linear relation with hypochlorous acid,
  ``ORP = E0 + S·log10(HOCl)`` with ``HOCl = FC / (1 + 10^(pH − pKa(T)))`` and Morris's (1966)
  ``pKa(T) = 3000/T − 10.0686 + 0.0253·T`` (T in K). S = 90 mV/decade and E0 = 762 mV (vs Ag/AgCl)
  put free chlorine at pH 7.4, 27 °C at ~720 mV for 0.6 mg/L, ~690 mV for 0.3 and ~650 mV for 0.1,
  so GB 37488's ORP ≥ 650 mV is the looser of its two chlorine criteria, as in practice. Real
  probes differ by tens of mV in E0: both constants are spec fields.
* **Instrument**: Gaussian noise (1σ ≈ half the datasheet accuracy), clipped to the range and
  rounded to the resolution of the kind's reference model (``protocols/data/profiles``): chlorine
  0.01 mg/L, pH 0.01, 0.1 °C, ORP 1 mV; turbidity 0.001 NTU and conductivity 0.1 µS/cm on the
  probe, 0.01 NTU and 1 µS/cm on the pool monitor.

Randomness is the air monitor's counter-based splitmix64 hash of (seed, stream, time): no
generator state, so readings do not depend on call order.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulators.air_monitor.signal import _GOLDEN, _M64, _mix64, _normal, _normal_pair, _uniform

WaterSite = Literal["plant_outlet", "tap", "secondary_supply"]

#: Quantities of a drinking-water probe (kind ``water_probe``), in payload order.
PROBE_QUANTITIES: tuple[str, ...] = (
    "free_chlorine_mg_l", "turbidity_ntu", "ph", "water_temperature_c", "conductivity_us_cm",
    "tds_mg_l",
)
#: Quantities of a pool-water monitor (kind ``pool_monitor``), in payload order.
POOL_QUANTITIES: tuple[str, ...] = (
    "free_chlorine_mg_l", "combined_chlorine_mg_l", "ph", "orp_mv", "turbidity_ntu",
    "water_temperature_c", "conductivity_us_cm",
)

SLOT_S = 900.0
"""Pool drivers (bather load, temperature) are constant within a 15-minute slot."""
_DAY_S = 86400.0
_YEAR_D = 365.2425
_TWO_PI = 2.0 * math.pi
_LN10 = math.log(10.0)

# Per-site defaults. Outlet residual 0.8 mg/L (GB 5749: ≥0.3 at the outlet, ≤2 anywhere); water
# ages of 8 h to a typical tap and ~24 h behind a secondary-supply tank; roof tanks and building
# pipes swing more with the day; taps see more sediment than the clear-well outlet.
SITE_DEFAULTS: dict[str, dict[str, float]] = {
    "plant_outlet": {"water_age_h": 0.0, "temp_daily_amp_c": 0.2, "ph_mean": 7.4,
                     "turbidity_base_ntu": 0.10, "turbidity_events_per_day": 1.0,
                     "turbidity_event_ntu": 0.10, "turbidity_event_tau_min": 20.0},
    "tap": {"water_age_h": 8.0, "temp_daily_amp_c": 1.0, "ph_mean": 7.5,
            "turbidity_base_ntu": 0.20, "turbidity_events_per_day": 0.5,
            "turbidity_event_ntu": 0.30, "turbidity_event_tau_min": 40.0},
    "secondary_supply": {"water_age_h": 24.0, "temp_daily_amp_c": 0.8, "ph_mean": 7.5,
                         "turbidity_base_ntu": 0.25, "turbidity_events_per_day": 0.7,
                         "turbidity_event_ntu": 0.30, "turbidity_event_tau_min": 60.0},
}

# Fraction of the pool's maximum bather load by local hour (weekday, weekend): early swimmers,
# lunch, the after-work peak; open 08-22 at weekends with busy afternoons. Closed at night.
_H = tuple[float, ...]
POOL_PROFILE: tuple[_H, _H] = (
    (0, 0, 0, 0, 0, 0, .15, .35, .2, .1, .1, .15,
     .3, .2, .1, .12, .2, .35, .6, .8, .7, .35, 0, 0),
    (0, 0, 0, 0, 0, 0, 0, 0, .3, .55, .7, .6,
     .45, .55, .75, .85, .8, .6, .5, .55, .5, .3, 0, 0),
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WaterProbeFaults(_Frozen):
    """Injectable faults acting on the water at the probe; defaults are a healthy system.

    ``chlorine_factor`` scales the residual (0 = dosing failure or a contamination demand),
    ``turbidity_offset_ntu`` adds turbidity (filter breakthrough, a main break), ``ph_offset``
    shifts pH (dosing fault, cement leaching). They act at once: the probe sees the new water.
    """

    chlorine_factor: float = Field(default=1.0, ge=0, le=20)
    turbidity_offset_ntu: float = Field(default=0.0, ge=0, le=1000)
    ph_offset: float = Field(default=0.0, ge=-4, le=4)


class WaterProbeSpec(_Frozen):
    """Declaration of one drinking-water sampling point and its probe. Omitted fields take the
    site's defaults (``SITE_DEFAULTS``); noise fields are 1σ per sample."""

    site: WaterSite
    chlorine_setpoint_mg_l: float = Field(default=0.8, gt=0, le=4, description="Outlet residual")
    chlorine_control_sigma: float = Field(default=0.06, ge=0, le=0.5, description="Relative, 1σ")
    water_age_h: float = Field(ge=0, le=240, description="Mean travel time from the outlet")
    age_diurnal_frac: float = Field(default=0.3, ge=0, lt=1, description="Older at night")
    decay_k20_per_h: float = Field(default=0.04, ge=0, le=2, description="Bulk decay at 20 °C")
    decay_theta: float = Field(default=1.07, ge=1, le=1.2, description="k(T) = k20·θ^(T−20)")

    temp_mean_c: float = Field(default=15.0, ge=0, le=35)
    temp_seasonal_amp_c: float = Field(default=9.0, ge=0, le=20)
    temp_peak_doy: float = Field(default=225.0, ge=1, le=366, description="Warmest day of year")
    temp_daily_amp_c: float = Field(ge=0, le=10, description="Peak 16:00 local")

    ph_mean: float = Field(ge=5, le=10)
    ph_diurnal_amp: float = Field(default=0.05, ge=0, le=1, description="Peak 15:00 local")
    ph_day_sigma: float = Field(default=0.05, ge=0, le=1)

    turbidity_base_ntu: float = Field(ge=0, le=100)
    turbidity_events_per_day: float = Field(ge=0, le=24)
    turbidity_event_ntu: float = Field(ge=0, le=100, description="Median event amplitude")
    turbidity_event_tau_min: float = Field(gt=0, le=600, description="Median decay time")

    conductivity_us_cm: float = Field(default=450.0, gt=0, le=5000)
    conductivity_seasonal_frac: float = Field(default=0.08, ge=0, lt=1, description="Wet season")
    tds_factor: float = Field(default=0.65, gt=0, le=1, description="TDS = factor·EC")
    utc_offset_h: float = Field(default=8.0, ge=-12, le=14)

    chlorine_noise_mg_l: float = Field(default=0.01, ge=0)
    chlorine_noise_rel: float = Field(default=0.025, ge=0)
    turbidity_noise_ntu: float = Field(default=0.005, ge=0)
    turbidity_noise_rel: float = Field(default=0.01, ge=0)
    ph_noise: float = Field(default=0.02, ge=0)
    temp_noise_c: float = Field(default=0.05, ge=0)
    conductivity_noise_rel: float = Field(default=0.005, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _site_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("site") in SITE_DEFAULTS:
            return {**SITE_DEFAULTS[data["site"]], **data}
        return data

    @classmethod
    def for_site(cls, site: WaterSite, **overrides: Any) -> WaterProbeSpec:
        return cls.model_validate({"site": site, **overrides})


class PoolFaults(_Frozen):
    """Injectable pool faults. Dosing factors scale the controllers' output (0 = pump failed or
    tank empty, >1 = overdosing); the water then drifts at the rates the physics gives."""

    chlorine_dosing_factor: float = Field(default=1.0, ge=0, le=20)
    acid_dosing_factor: float = Field(default=1.0, ge=0, le=20)


class PoolSpec(_Frozen):
    """Declaration of one indoor pool and its monitor (defaults: a 25 m × 12.5 m public pool)."""

    volume_m3: float = Field(default=500.0, gt=0)
    max_bathers: int = Field(default=150, ge=0)
    fixed_bathers: int | None = Field(default=None, ge=0, description="Pin the load (tests)")
    summer_boost: float = Field(default=0.3, ge=0, le=2, description="Extra load in July/August")
    utc_offset_h: float = Field(default=8.0, ge=-12, le=14)

    chlorine_setpoint_mg_l: float = Field(default=0.6, gt=0, le=10)
    controller_gain_per_h: float = Field(default=4.0, gt=0, le=100, description="Kp")
    chlorine_decay_per_h: float = Field(default=0.05, ge=0, le=5, description="k at 27 °C")
    chlorine_demand_g_per_bather_h: float = Field(default=2.0, ge=0, le=50)
    cc_formation_g_per_bather_h: float = Field(default=0.17, ge=0, le=10)
    cc_background_mg_l_h: float = Field(default=0.005, ge=0, le=1)
    cc_removal_per_h: float = Field(default=0.15, gt=0, le=10, description="Dilution + UV")

    ph_setpoint: float = Field(default=7.4, ge=6.5, le=8.0)
    ph_equilibrium: float = Field(default=8.3, ge=7.0, le=9.5, description="CO₂-stripped water")
    ph_rise_per_h: float = Field(default=0.01, gt=0, le=1, description="κ, empty pool")
    acid_gain_per_h: float = Field(default=0.3, ge=0, le=10)
    ph_noise_sigma: float = Field(default=0.02, ge=0, le=0.5, description="Slow mixing drift")

    water_temp_setpoint_c: float = Field(default=27.0, ge=15, le=40)
    turbidity_base_ntu: float = Field(default=0.15, ge=0, le=100)
    turbidity_bather_ntu: float = Field(default=0.3, ge=0, le=100, description="At full load")
    filter_turnover_h: float = Field(default=4.0, gt=0, le=48)
    conductivity_us_cm: float = Field(default=1100.0, gt=0, le=20000)
    orp_e0_mv: float = Field(default=762.0, ge=0, le=1500, description="ORP at 1 mg/L HOCl")
    orp_slope_mv: float = Field(default=90.0, gt=0, le=300, description="Per decade of HOCl")

    chlorine_noise_mg_l: float = Field(default=0.01, ge=0)
    chlorine_noise_rel: float = Field(default=0.025, ge=0)
    orp_noise_mv: float = Field(default=3.0, ge=0)
    ph_noise: float = Field(default=0.02, ge=0)
    turbidity_noise_ntu: float = Field(default=0.005, ge=0)
    temp_noise_c: float = Field(default=0.05, ge=0)
    conductivity_noise_rel: float = Field(default=0.005, ge=0)

    @model_validator(mode="after")
    def _equilibrium_above_setpoint(self) -> PoolSpec:
        if self.ph_equilibrium <= self.ph_setpoint:
            raise ValueError("ph_equilibrium must be above ph_setpoint (acid only lowers pH)")
        return self


def _keys(seed: int, salt: int, streams: tuple[str, ...]) -> dict[str, int]:
    """One independent hash key per random stream, derived from the device seed."""
    base = _mix64((seed * _GOLDEN + salt) & _M64)
    return {name: _mix64((base + i + 1) & _M64) for i, name in enumerate(streams)}


class _Smooth:
    """Stationary N(0, 1) that varies smoothly on the scale ``spacing_s`` (value noise).

    Hashed normals at knots ``spacing_s`` apart, joined by smoothstep (C¹) and rescaled so the
    variance is 1 between knots too. The two knots in use are cached: samples mostly move forward.
    """

    __slots__ = ("_a", "_b", "_i", "key", "spacing_s")

    def __init__(self, key: int, spacing_s: float) -> None:
        self.key = key
        self.spacing_s = spacing_s
        self._i: int | None = None
        self._a = self._b = 0.0

    def __call__(self, ts: float) -> float:
        x = ts / self.spacing_s
        i = math.floor(x)
        if i != self._i:
            self._i, self._a, self._b = i, _normal(self.key, i), _normal(self.key, i + 1)
        f = x - i
        w = f * f * (3.0 - 2.0 * f)
        return (self._a + (self._b - self._a) * w) / math.sqrt(1.0 - 2.0 * w + 2.0 * w * w)


def _year_phase(ts: float, off_s: float, peak_doy: float) -> float:
    """cos() argument that is 0 on day-of-year ``peak_doy`` (1970-01-01 is day 1)."""
    return _TWO_PI * (((ts + off_s) / _DAY_S) % _YEAR_D + 1.0 - peak_doy) / _YEAR_D


def pka_hocl(t_c: float) -> float:
    """pKa of hypochlorous acid at ``t_c`` °C (Morris 1966): 7.54 at 25 °C."""
    t_k = t_c + 273.15
    return 3000.0 / t_k - 10.0686 + 0.0253 * t_k


def orp_mv(free_chlorine_mg_l: float, ph: float, t_c: float, e0_mv: float = 762.0,
           slope_mv: float = 90.0) -> float:
    """Empirical ORP (mV vs Ag/AgCl) of chlorinated water: E0 + S·log10(HOCl in mg/L)."""
    hocl = free_chlorine_mg_l / (1.0 + 10.0 ** (ph - pka_hocl(t_c)))
    return e0_mv + slope_mv * math.log10(max(hocl, 1e-4))


class WaterProbeSignal:
    """Readings of one drinking-water probe: ``sample(t)`` → canonical fields.

    The model is stateless (every term is a closed-form function of time and the seed), so any
    sampling pattern gives the same curve; ``faults`` may be replaced at any time.
    """

    __slots__ = ("_event_cache", "_keys", "_off", "_sm", "faults", "seed", "spec")

    _STREAMS = ("ctrl_fast", "ctrl_slow", "temp", "ph", "cond", "turb", "turb_day", "noise_a",
                "noise_b", "noise_c")

    def __init__(self, spec: WaterProbeSpec, seed: int, *,
                 faults: WaterProbeFaults | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.faults = faults or WaterProbeFaults()
        self._keys = keys = _keys(seed, 0x3A7E, self._STREAMS)
        self._sm = {name: _Smooth(keys[name], spacing) for name, spacing in (
            ("temp", _DAY_S), ("ctrl_fast", 3600.0), ("ctrl_slow", 6 * 3600.0), ("ph", _DAY_S),
            ("cond", 2 * _DAY_S), ("turb_day", _DAY_S))}
        self._off = spec.utc_offset_h * 3600.0
        self._event_cache: tuple[int, tuple[tuple[float, float, float], ...]] = (-1, ())

    # ---- components ----------------------------------------------------------------------------

    def water_temperature(self, ts: float) -> float:
        spec = self.spec
        hour = (ts + self._off) % _DAY_S / 3600.0
        season = math.cos(_year_phase(ts, self._off, spec.temp_peak_doy))
        return (spec.temp_mean_c + spec.temp_seasonal_amp_c * season
                + spec.temp_daily_amp_c * math.cos(_TWO_PI * (hour - 16.0) / 24.0)
                + 0.3 * self._sm["temp"](ts))

    def outlet_chlorine(self, ts: float) -> float:
        """Residual at the plant outlet: set-point plus the controller's error (two time scales)."""
        spec = self.spec
        err = 0.6 * self._sm["ctrl_fast"](ts) + 0.8 * self._sm["ctrl_slow"](ts)
        return spec.chlorine_setpoint_mg_l * math.exp(spec.chlorine_control_sigma * err)

    def water_age_h(self, ts: float) -> float:
        """Travel time from the outlet: longest around 05:00, when night-time demand is lowest."""
        hour = (ts + self._off) % _DAY_S / 3600.0
        return self.spec.water_age_h * (
            1.0 + self.spec.age_diurnal_frac * math.cos(_TWO_PI * (hour - 5.0) / 24.0))

    def _turbidity_events(self, hour_index: int) -> tuple[tuple[float, float, float], ...]:
        """Events that can still matter in this hour: (start ts, amplitude, tau s); ≤ 1 per hour."""
        if self._event_cache[0] == hour_index:
            return self._event_cache[1]
        spec = self.spec
        p = spec.turbidity_events_per_day / 24.0
        tau_med = spec.turbidity_event_tau_min * 60.0
        lookback = int(8.0 * tau_med / 3600.0) + 2
        key = self._keys["turb"]
        events = []
        for h in range(hour_index - lookback, hour_index + 1):
            if _uniform(key, 4 * h) >= p:
                continue
            start = (h + _uniform(key, 4 * h + 1)) * 3600.0
            za, zt = _normal_pair(key, 4 * h + 2)
            events.append((start, spec.turbidity_event_ntu * math.exp(0.5 * za),
                           tau_med * math.exp(0.3 * zt)))
        self._event_cache = (hour_index, tuple(events))
        return self._event_cache[1]

    def turbidity(self, ts: float) -> float:
        spec = self.spec
        hour = (ts + self._off) % _DAY_S / 3600.0
        # Flow stirs sediment: a little more in the day than at night.
        level = spec.turbidity_base_ntu * (1.0 - 0.2 * math.cos(_TWO_PI * (hour - 5.0) / 24.0))
        level *= math.exp(0.15 * self._sm["turb_day"](ts))
        for start, amp, tau in self._turbidity_events(int(ts // 3600.0)):
            s = ts - start
            if s > 0.0:  # 5-minute rise, then exponential decay
                level += amp * (s / 300.0 if s < 300.0 else math.exp(-(s - 300.0) / tau))
        return level + self.faults.turbidity_offset_ntu

    def _truth(self, ts: float) -> tuple[float, float, float, float, float, float]:
        spec = self.spec
        off = self._off
        temp = self.water_temperature(ts)
        if spec.water_age_h > 0.0:
            age = self.water_age_h(ts)
            k = spec.decay_k20_per_h * spec.decay_theta ** (temp - 20.0)
            chlorine = self.outlet_chlorine(ts - age * 3600.0) * math.exp(-k * age)
        else:
            chlorine = self.outlet_chlorine(ts)
        chlorine *= self.faults.chlorine_factor
        hour = (ts + off) % _DAY_S / 3600.0
        ph = (spec.ph_mean + spec.ph_diurnal_amp * math.cos(_TWO_PI * (hour - 15.0) / 24.0)
              + spec.ph_day_sigma * self._sm["ph"](ts) + self.faults.ph_offset)
        cond = spec.conductivity_us_cm * (
            1.0 - spec.conductivity_seasonal_frac * math.cos(_year_phase(ts, off, 205.0))
        ) * math.exp(0.02 * self._sm["cond"](ts))
        return (chlorine, self.turbidity(ts), ph, temp, cond, spec.tds_factor * cond)

    # ---- public API ----------------------------------------------------------------------------

    def sample(self, t: datetime) -> dict[str, float]:
        """The probe's reading at ``t`` (timezone-aware), rounded to its resolution."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, float]:
        spec = self.spec
        cl, turb, ph, temp, cond, _ = self._truth(ts)
        ms = int(ts * 1000.0)
        n1, n2 = _normal_pair(self._keys["noise_a"], ms)
        n3, n4 = _normal_pair(self._keys["noise_b"], ms)
        n5, _n6 = _normal_pair(self._keys["noise_c"], ms)
        cl += n1 * max(spec.chlorine_noise_mg_l, spec.chlorine_noise_rel * cl)
        turb += n2 * max(spec.turbidity_noise_ntu, spec.turbidity_noise_rel * turb)
        cond_m = min(max(cond * (1.0 + n5 * spec.conductivity_noise_rel), 0.0), 5000.0)
        return {  # ranges and resolutions of the reference probe (profile water_probe_wq500)
            "free_chlorine_mg_l": round(min(max(cl, 0.0), 5.0), 2),
            "turbidity_ntu": round(min(max(turb, 0.0), 100.0), 3),
            "ph": round(min(max(ph + n3 * spec.ph_noise, 0.0), 14.0), 2),
            "water_temperature_c": round(min(max(temp + n4 * spec.temp_noise_c, 0.0), 60.0), 1),
            "conductivity_us_cm": round(cond_m, 1),
            "tds_mg_l": round(cond_m * spec.tds_factor, 1),
        }

    def truth(self, t: datetime) -> dict[str, float]:
        """The noiseless, unrounded values at ``t``."""
        return dict(zip(PROBE_QUANTITIES, self._truth(t.timestamp()), strict=True))


class PoolSignal:
    """Readings of one pool-water monitor: ``sample(t)`` → canonical fields.

    State is four concentrations (free and combined chlorine, pH, turbidity) integrated exactly slot
    by slot from the last sample time; going back in time restarts from a deterministic warm-up.
    ``faults`` act from the last sample time onwards.
    """

    __slots__ = ("_cc", "_drivers", "_fc", "_keys", "_off", "_ph", "_slot", "_sm", "_ts",
                 "_turb", "faults", "seed", "spec")

    WARMUP_H = 48.0
    _STREAMS = ("occ", "occ_day", "temp", "ph", "cond", "noise_a", "noise_b", "noise_c",
                "noise_d")

    def __init__(self, spec: PoolSpec, seed: int, *, faults: PoolFaults | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.faults = faults or PoolFaults()
        self._keys = keys = _keys(seed, 0x9001, self._STREAMS)
        self._sm = {name: _Smooth(keys[name], spacing) for name, spacing in (
            ("temp", _DAY_S / 2), ("ph", 6 * 3600.0), ("cond", 3 * _DAY_S))}
        self._off = spec.utc_offset_h * 3600.0
        self._ts: float | None = None
        self._fc = self._cc = self._ph = self._turb = 0.0
        self._slot: int | None = None
        self._drivers: tuple[float, ...] = ()

    # ---- drivers -------------------------------------------------------------------------------

    def bathers_at_slot(self, slot: int) -> int:
        """Bathers in the water during local slot ``slot`` (slot = local seconds // 900)."""
        spec = self.spec
        if spec.fixed_bathers is not None:
            return spec.fixed_bathers
        n_max = spec.max_bathers
        local_s = slot * SLOT_S
        day = int(local_s // _DAY_S)
        weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        p = POOL_PROFILE[1 if weekend else 0][int(local_s % _DAY_S // 3600)]
        if p <= 0.0 or n_max == 0:
            return 0
        season = 1.0 + spec.summer_boost * max(
            0.0, math.cos(_TWO_PI * ((day % _YEAR_D) + 1.0 - 210.0) / _YEAR_D))
        day_factor = math.exp(0.2 * _normal(self._keys["occ_day"], day) - 0.02)
        mean = min(float(n_max), n_max * p * season * day_factor)
        sd = math.sqrt(max(mean * (1.0 - min(p, 0.99)), 0.25))
        return min(max(round(mean + sd * _normal(self._keys["occ"], slot)), 0), n_max)

    def water_temperature(self, ts: float) -> float:
        """Heated pool: set-point, heater cycling peaking in the afternoon, slow wander."""
        hour = (ts + self._off) % _DAY_S / 3600.0
        return (self.spec.water_temp_setpoint_c + 0.2 * math.cos(_TWO_PI * (hour - 16.0) / 24.0)
                + 0.15 * self._sm["temp"](ts))

    def _compute_drivers(self, slot: int) -> tuple[float, ...]:
        spec = self.spec
        n = self.bathers_at_slot(slot)
        frac = n / spec.max_bathers if spec.max_bathers else 0.0
        mid = (slot + 0.5) * SLOT_S - self._off
        temp = self.water_temperature(mid)
        k = spec.chlorine_decay_per_h * 1.07 ** (temp - 27.0)
        demand = spec.chlorine_demand_g_per_bather_h * n / spec.volume_m3  # mg/L/h
        cc_source = (spec.cc_formation_g_per_bather_h * n / spec.volume_m3
                     + spec.cc_background_mg_l_h)
        kappa = spec.ph_rise_per_h * (1.0 + 2.0 * frac)  # bathers and hypochlorite raise pH
        turb_target = spec.turbidity_base_ntu + spec.turbidity_bather_ntu * frac
        return (k, demand, cc_source, kappa, turb_target, float(n))

    def _drivers_at(self, slot: int) -> tuple[float, ...]:
        if slot != self._slot:
            self._drivers = self._compute_drivers(slot)
            self._slot = slot
        return self._drivers

    # ---- integration ---------------------------------------------------------------------------

    def _step(self, d: tuple[float, ...], dt_h: float) -> None:
        """Advance the four balances exactly over ``dt_h`` hours with constant drivers ``d``."""
        spec, faults = self.spec, self.faults
        k, demand, cc_source, kappa, turb_target, _ = d
        # Free chlorine: dC/dt = a − λC (proportional dosing, decay, demand); it sticks at 0.
        gain = spec.controller_gain_per_h * faults.chlorine_dosing_factor
        lam = gain + k
        a = gain * spec.chlorine_setpoint_mg_l - demand
        if lam > 0.0:
            c_inf = a / lam
            self._fc = max(c_inf + (self._fc - c_inf) * math.exp(-lam * dt_h), 0.0)
        else:
            self._fc = max(self._fc + a * dt_h, 0.0)
        r = spec.cc_removal_per_h
        self._cc = cc_source / r + (self._cc - cc_source / r) * math.exp(-r * dt_h)
        rf = 1.0 / spec.filter_turnover_h
        self._turb = turb_target + (self._turb - turb_target) * math.exp(-rf * dt_h)
        # pH: below the set-point it rises towards pH_eq at rate κ; above it acid dosing (gain Ka)
        # joins in and it relaxes towards (κ·pH_eq + Ka·SP)/(κ + Ka).
        sp, eq = spec.ph_setpoint, spec.ph_equilibrium
        ka = spec.acid_gain_per_h * faults.acid_dosing_factor
        ph = self._ph
        if ph < sp:
            t_cross = math.log((eq - ph) / (eq - sp)) / kappa
            if dt_h <= t_cross:
                self._ph = eq - (eq - ph) * math.exp(-kappa * dt_h)
                return
            ph, dt_h = sp, dt_h - t_cross
        target = (kappa * eq + ka * sp) / (kappa + ka)
        self._ph = target + (ph - target) * math.exp(-(kappa + ka) * dt_h)

    def _advance(self, ts: float) -> None:
        if self._ts is None or ts < self._ts:
            self._warm_up(ts)
        t = self._ts
        assert t is not None
        off = self._off
        while t < ts:
            slot = int((t + off) // SLOT_S)
            end = min(ts, (slot + 1) * SLOT_S - off)
            self._step(self._drivers_at(slot), (end - t) / 3600.0)
            t = end
        self._ts = ts

    def _warm_up(self, ts: float) -> None:
        """Start ``WARMUP_H`` back (slot-aligned) from the empty pool's equilibrium."""
        spec = self.spec
        off = self._off
        start = math.floor((ts + off - self.WARMUP_H * 3600.0) / SLOT_S) * SLOT_S - off
        k = spec.chlorine_decay_per_h
        gain = spec.controller_gain_per_h
        self._fc = gain * spec.chlorine_setpoint_mg_l / (gain + k)
        self._cc = spec.cc_background_mg_l_h / spec.cc_removal_per_h
        kappa, ka = spec.ph_rise_per_h, spec.acid_gain_per_h
        self._ph = (kappa * spec.ph_equilibrium + ka * spec.ph_setpoint) / (kappa + ka)
        self._turb = spec.turbidity_base_ntu
        self._ts = start

    def _truth(self, ts: float) -> tuple[float, ...]:
        self._advance(ts)
        spec = self.spec
        temp = self.water_temperature(ts)
        ph = self._ph + spec.ph_noise_sigma * self._sm["ph"](ts)
        orp = orp_mv(self._fc, ph, temp, spec.orp_e0_mv, spec.orp_slope_mv)
        cond = spec.conductivity_us_cm * math.exp(0.05 * self._sm["cond"](ts))
        return (self._fc, self._cc, ph, orp, self._turb, temp, cond)

    # ---- public API ----------------------------------------------------------------------------

    def sample(self, t: datetime) -> dict[str, float]:
        """The monitor's reading at ``t`` (timezone-aware), rounded to its resolution."""
        if t.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware datetime (readings are UTC)")
        return self.sample_ts(t.timestamp())

    def sample_ts(self, ts: float) -> dict[str, float]:
        spec = self.spec
        fc, cc, ph, orp, turb, temp, cond = self._truth(ts)
        ms = int(ts * 1000.0)
        keys = self._keys
        n1, n2 = _normal_pair(keys["noise_a"], ms)
        n3, n4 = _normal_pair(keys["noise_b"], ms)
        n5, n6 = _normal_pair(keys["noise_c"], ms)
        n7, _n8 = _normal_pair(keys["noise_d"], ms)
        fc_m = fc + n1 * max(spec.chlorine_noise_mg_l, spec.chlorine_noise_rel * fc)
        # Combined = total − free: two measurements, so √2 the error of one.
        cc_m = cc + 1.414 * n2 * max(spec.chlorine_noise_mg_l, spec.chlorine_noise_rel * cc)
        turb_m = turb + n6 * max(spec.turbidity_noise_ntu, 0.01 * turb)
        cond_m = cond * (1.0 + n7 * spec.conductivity_noise_rel)
        return {  # ranges and resolutions of the reference monitor (profile pool_monitor_pm300)
            "free_chlorine_mg_l": round(min(max(fc_m, 0.0), 10.0), 2),
            "combined_chlorine_mg_l": round(min(max(cc_m, 0.0), 5.0), 2),
            "ph": round(min(max(ph + n3 * spec.ph_noise, 0.0), 14.0), 2),
            "orp_mv": float(round(min(max(orp + n4 * spec.orp_noise_mv, -1999.0), 1999.0))),
            "turbidity_ntu": round(min(max(turb_m, 0.0), 20.0), 2),
            "water_temperature_c": round(min(max(temp + n5 * spec.temp_noise_c, 0.0), 50.0), 1),
            "conductivity_us_cm": float(round(min(max(cond_m, 0.0), 20000.0))),
        }

    def truth(self, t: datetime) -> dict[str, float]:
        """The noiseless, unrounded values at ``t``."""
        return dict(zip(POOL_QUANTITIES, self._truth(t.timestamp()), strict=True))

    def bathers(self, t: datetime) -> int:
        return self.bathers_at_slot(int((t.timestamp() + self._off) // SLOT_S))


#: Quantities of an HJ 212 water-quality station (kind ``water_station``), in payload order: those
#: its reference model reports (profile ``water_station_ws900``; no TDS analyser).
STATION_QUANTITIES: tuple[str, ...] = tuple(q for q in PROBE_QUANTITIES if q != "tds_mg_l")


class WaterStationSignal(WaterProbeSignal):
    """Readings of an HJ 212 water-quality station (水质自动监测站, kind ``water_station``).

    The station samples the same water a probe at its sampling point would (``WaterProbeSpec``,
    usually ``plant_outlet``), through the analysers of its reference model: no TDS, turbidity to
    0.01 NTU. Faults are the probe's (``WaterProbeFaults``).
    """

    __slots__ = ()

    def sample_ts(self, ts: float) -> dict[str, float]:
        reading = super().sample_ts(ts)
        del reading["tds_mg_l"]
        reading["turbidity_ntu"] = round(reading["turbidity_ntu"], 2)
        return reading

    def truth(self, t: datetime) -> dict[str, float]:
        values = super().truth(t)
        del values["tds_mg_l"]
        return values
