"""Signal models of the water, pool, sterilizer and radiation devices: reproducible, in range, and
physically right where the standards look (GB 5749, GB 37488 §4.4, WS 310, GBZ 130, IAPWS-IF97)."""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from simulators.radiation.signal import (
    DOSIMETER_QUANTITIES,
    MONITOR_QUANTITIES,
    DoseRateMonitorSignal,
    DoseRateMonitorSpec,
    PersonalDosimeterSignal,
    PersonalDosimeterSpec,
    RadiationFaults,
    XRayRoomSpec,
)
from simulators.sterilizer.signal import (
    PROGRAMMES,
    SterilizerFaults,
    SterilizerSignal,
    SterilizerSpec,
)
from simulators.sterilizer.signal import QUANTITIES as STERILIZER_QUANTITIES
from simulators.sterilizer.steam import (
    psat_kpa,
    saturation_pressure_mpa,
    saturation_temperature_k,
    tsat_c,
)
from simulators.water.signal import (
    POOL_QUANTITIES,
    PROBE_QUANTITIES,
    PoolFaults,
    PoolSignal,
    PoolSpec,
    WaterProbeFaults,
    WaterProbeSignal,
    WaterProbeSpec,
    orp_mv,
    pka_hocl,
)

BEIJING = timezone(timedelta(hours=8))
MONDAY = datetime(2026, 11, 16, tzinfo=BEIJING)  # Monday 2026-11-16 00:00 Beijing time
SUMMER_MONDAY = datetime(2026, 8, 10, tzinfo=BEIJING)
DATA = Path(__file__).resolve().parent.parent / "protocols" / "data"
SITES = ("plant_outlet", "tap", "secondary_supply")


def _run(signal: Any, start: datetime, step: timedelta, days: float
         ) -> Iterator[tuple[datetime, dict[str, Any]]]:
    t, end = start, start + timedelta(days=days)
    while t < end:
        yield t, signal.sample(t)
        t += step


def _check_names_and_ranges(kind: str, reading: dict[str, Any]) -> None:
    quantities = _yaml("quantities.yaml")["quantities"]
    allowed = set(_yaml("kinds.yaml")["kinds"][kind]["quantities"])
    assert set(reading) <= allowed, (kind, set(reading) - allowed)
    for q, v in reading.items():
        spec = quantities[q]
        if isinstance(v, float):
            assert math.isfinite(v), (q, v)
            lo, hi = spec["range"]
            assert lo <= v <= hi, (q, v)


_YAML: dict[str, Any] = {}


def _yaml(name: str) -> Any:
    if name not in _YAML:
        _YAML[name] = yaml.safe_load((DATA / name).read_text())
    return _YAML[name]


# ---- reproducibility ---------------------------------------------------------------------------

FACTORIES: dict[str, Callable[[int], Any]] = {
    "water_probe": lambda seed: WaterProbeSignal(WaterProbeSpec.for_site("tap"), seed),
    "sterilizer": lambda seed: SterilizerSignal(SterilizerSpec(), seed),
    "dose_rate_monitor": lambda seed: DoseRateMonitorSignal(
        DoseRateMonitorSpec(room=XRayRoomSpec.for_modality("ct")), seed),
    "dosimeter": lambda seed: PersonalDosimeterSignal(PersonalDosimeterSpec(), seed),
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_same_seed_and_times_give_the_same_readings_in_any_order(kind: str) -> None:
    """These models are pure functions of (spec, seed, t): caches must not leak call order."""
    make = FACTORIES[kind]
    times = [MONDAY + timedelta(days=i % 3, hours=7, seconds=41 * i) for i in range(900)]
    first = make(11)
    forward = {t: first.sample(t) for t in sorted(times)}
    shuffled = times[:]
    random.Random(1).shuffle(shuffled)
    signal = make(11)
    assert {t: signal.sample(t) for t in shuffled} == forward
    other = make(12)
    assert [other.sample(t) for t in sorted(times)] != [forward[t] for t in sorted(times)]


def test_the_pool_integrates_to_the_same_readings_whatever_the_sampling() -> None:
    """The pool is a stateful balance, integrated exactly: order and gaps change nothing beyond a
    last-digit rounding flip (a warm-up restarts when time goes backwards)."""
    times = [MONDAY + timedelta(hours=6, seconds=97 * i) for i in range(600)]
    first = PoolSignal(PoolSpec(), 3)
    forward = {t: first.sample(t) for t in times}
    again = PoolSignal(PoolSpec(), 3)
    assert {t: again.sample(t) for t in times} == forward
    shuffled = times[:]
    random.Random(2).shuffle(shuffled)
    signal = PoolSignal(PoolSpec(), 3)
    resolution = {"free_chlorine_mg_l": 0.01, "combined_chlorine_mg_l": 0.01, "ph": 0.01,
                  "orp_mv": 1.0, "turbidity_ntu": 0.01, "water_temperature_c": 0.1,
                  "conductivity_us_cm": 1.0}
    for t in shuffled:
        got = signal.sample(t)
        for q, step in resolution.items():
            assert abs(got[q] - forward[t][q]) <= step * 1.001, (t, q, got, forward[t])


def test_naive_datetimes_are_refused_and_specs_name_the_bad_field() -> None:
    for make in FACTORIES.values():
        with pytest.raises(ValueError, match="timezone-aware"):
            make(1).sample(datetime(2026, 11, 16, 9, 0))
    with pytest.raises(pydantic.ValidationError, match="water_age_h"):
        WaterProbeSpec.for_site("tap", water_age_h=-1)
    with pytest.raises(pydantic.ValidationError, match="ph_equilibrium"):
        PoolSpec(ph_equilibrium=7.0)
    with pytest.raises(pydantic.ValidationError, match="does not run on a gravity"):
        SterilizerSpec(sterilizer_type="gravity", programme_mix={"134": 1.0})
    with pytest.raises(pydantic.ValidationError, match="one exposure per"):
        XRayRoomSpec.for_modality("radiography", exposures_per_h=100)


# ---- drinking water ----------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_a_week_of_drinking_water_is_valid_and_within_gb5749(site: str) -> None:
    signal = WaterProbeSignal(WaterProbeSpec.for_site(site), seed=5)
    rows = [r for _, r in _run(signal, MONDAY, timedelta(minutes=2), 7)]
    for r in rows:
        assert tuple(r) == PROBE_QUANTITIES
        _check_names_and_ranges("water_probe", r)
        assert r["free_chlorine_mg_l"] == round(r["free_chlorine_mg_l"], 2)
        assert r["turbidity_ntu"] == round(r["turbidity_ntu"], 3)
    chlorine = [r["free_chlorine_mg_l"] for r in rows]
    # GB 5749-2022 Table 2: outlet ≥ 0.3, tap ≥ 0.05, anywhere ≤ 2 mg/L.
    assert min(chlorine) >= (0.3 if site == "plant_outlet" else 0.05), min(chlorine)
    assert max(chlorine) <= 2.0
    assert statistics.median(r["turbidity_ntu"] for r in rows) < 0.5
    ph = [r["ph"] for r in rows]
    assert 7.2 <= statistics.mean(ph) <= 7.8
    assert 6.9 < min(ph) <= max(ph) < 8.1
    assert 8 <= statistics.mean(r["water_temperature_c"] for r in rows) <= 20  # November
    assert all(r["tds_mg_l"] == pytest.approx(0.65 * r["conductivity_us_cm"], abs=0.1)
               for r in rows)


def _mean(signal: Any, start: datetime, quantity: str, days: int = 7) -> float:
    return statistics.fmean(r[quantity] for _, r in _run(signal, start, timedelta(minutes=20),
                                                         days))


def test_residual_chlorine_decays_along_the_network_and_faster_when_warm() -> None:
    means = {(site, start): _mean(WaterProbeSignal(WaterProbeSpec.for_site(site), seed=9), start,
                                  "free_chlorine_mg_l")
             for site in SITES for start in (MONDAY, SUMMER_MONDAY)}
    for start in (MONDAY, SUMMER_MONDAY):
        outlet, tap, tank = (means[site, start] for site in SITES)
        assert outlet > tap > tank, (start, outlet, tap, tank)
    # The controller holds the outlet whatever the season; the network's demand rises with T.
    assert means["plant_outlet", SUMMER_MONDAY] == pytest.approx(
        means["plant_outlet", MONDAY], rel=0.08)
    assert means["tap", SUMMER_MONDAY] < 0.9 * means["tap", MONDAY]
    assert means["secondary_supply", SUMMER_MONDAY] < 0.7 * means["secondary_supply", MONDAY]
    probe = WaterProbeSignal(WaterProbeSpec.for_site("tap"), seed=9)
    assert (_mean(probe, SUMMER_MONDAY, "water_temperature_c", 3)
            > _mean(probe, MONDAY, "water_temperature_c", 3) + 6)


def test_turbidity_events_come_and_go() -> None:
    signal = WaterProbeSignal(WaterProbeSpec.for_site("tap", turbidity_events_per_day=4), seed=2)
    values = [signal.truth(t)["turbidity_ntu"]
              for t, _ in _run(signal, MONDAY, timedelta(minutes=5), 7)]
    base = statistics.median(values)
    peaks = sum(1 for a, b in itertools.pairwise(values) if a < base + 0.1 <= b)
    assert 10 <= peaks <= 50, peaks  # ~28 events a week, some overlapping
    assert base < 0.3


def test_water_probe_faults_act_on_the_water_at_once() -> None:
    signal = WaterProbeSignal(WaterProbeSpec.for_site("plant_outlet"), seed=4)
    t = MONDAY + timedelta(hours=10)
    healthy = signal.sample(t)
    signal.faults = WaterProbeFaults(chlorine_factor=0.0, turbidity_offset_ntu=2.0, ph_offset=1.0)
    broken = signal.sample(t + timedelta(minutes=1))
    assert broken["free_chlorine_mg_l"] <= 0.04 < 0.3 <= healthy["free_chlorine_mg_l"]
    assert broken["turbidity_ntu"] > 2.0
    assert broken["ph"] > healthy["ph"] + 0.8


# ---- pool --------------------------------------------------------------------------------------


def test_a_healthy_pool_week_meets_gb37488() -> None:
    signal = PoolSignal(PoolSpec(), seed=5)
    rows = [r for _, r in _run(signal, MONDAY, timedelta(minutes=2), 7)]
    for r in rows:
        assert tuple(r) == POOL_QUANTITIES
        _check_names_and_ranges("pool_monitor", r)
    # GB 37488-2019 §4.4: free chlorine 0.3–1.0, combined ≤ 0.4, pH 7.0–7.8, ORP ≥ 650, ≤ 1 NTU.
    assert all(0.3 <= r["free_chlorine_mg_l"] <= 1.0 for r in rows)
    assert all(r["combined_chlorine_mg_l"] <= 0.4 for r in rows)
    assert all(7.0 <= r["ph"] <= 7.8 for r in rows)
    assert all(r["orp_mv"] >= 650 for r in rows)
    assert all(r["turbidity_ntu"] <= 1.0 for r in rows)
    assert all(23 <= r["water_temperature_c"] <= 30 for r in rows)


def test_orp_follows_hypochlorous_acid() -> None:
    assert pka_hocl(25.0) == pytest.approx(7.54, abs=0.01)
    assert orp_mv(0.6, 7.4, 27.0) == pytest.approx(720, abs=10)
    assert orp_mv(0.3, 7.8, 27.0) > 650 > orp_mv(0.1, 7.6, 27.0)
    assert orp_mv(0.6, 7.8, 27.0) < orp_mv(0.6, 7.2, 27.0)  # more OCl⁻, less HOCl
    assert orp_mv(0.3, 7.4, 27.0) < orp_mv(0.6, 7.4, 27.0)
    # The monitor's readings obey the relation within its noise (ORP ±3 mV, FC and pH errors).
    signal = PoolSignal(PoolSpec(), seed=8)
    residuals = [r["orp_mv"] - orp_mv(r["free_chlorine_mg_l"], r["ph"], r["water_temperature_c"])
                 for _, r in _run(signal, MONDAY, timedelta(minutes=10), 7)]
    assert abs(statistics.fmean(residuals)) < 1.5
    assert statistics.pstdev(residuals) < 6.0


def test_combined_chlorine_follows_the_bather_load() -> None:
    spec = PoolSpec(fixed_bathers=100)
    signal = PoolSignal(spec, seed=1)
    truth = signal.truth(MONDAY + timedelta(days=3))
    steady = (spec.cc_formation_g_per_bather_h * 100 / spec.volume_m3
              + spec.cc_background_mg_l_h) / spec.cc_removal_per_h
    assert truth["combined_chlorine_mg_l"] == pytest.approx(steady, rel=1e-3)
    # Scheduled: Saturday afternoon's crowd leaves more chloramines than the empty night.
    signal = PoolSignal(PoolSpec(), seed=1)
    saturday = MONDAY + timedelta(days=5)
    busy = [signal.truth(saturday + timedelta(hours=17, minutes=m))["combined_chlorine_mg_l"]
            for m in range(0, 60, 10)]
    quiet = [signal.truth(saturday + timedelta(days=1, hours=6, minutes=m))[
        "combined_chlorine_mg_l"] for m in range(0, 60, 10)]
    assert min(busy) > 2 * max(quiet)
    bathers = [signal.bathers(saturday + timedelta(hours=h)) for h in range(24)]
    assert max(bathers) > 80
    assert bathers[3] == 0


def test_pool_dosing_failures_drive_chlorine_orp_and_ph_out_of_range() -> None:
    signal = PoolSignal(PoolSpec(), seed=6)
    start = MONDAY + timedelta(hours=9)
    assert signal.sample(start)["orp_mv"] >= 650
    signal.faults = PoolFaults(chlorine_dosing_factor=0.0)
    later = [signal.sample(start + timedelta(minutes=30 * i)) for i in range(1, 13)]
    assert later[-1]["free_chlorine_mg_l"] < 0.3
    assert later[-1]["orp_mv"] < 650
    signal = PoolSignal(PoolSpec(), seed=6)
    signal.sample(start)
    signal.faults = PoolFaults(acid_dosing_factor=0.0)
    ph = [signal.truth(start + timedelta(hours=h))["ph"] for h in range(0, 97, 6)]
    assert ph[-1] > 7.8 > ph[0]  # CO₂ stripping and hypochlorite push it up over days
    assert all(b > a - 0.05 for a, b in itertools.pairwise(ph))


# ---- sterilizer --------------------------------------------------------------------------------


def test_steam_tables_match_the_iapws_if97_verification_values() -> None:
    # IAPWS-IF97 (2007), Tables 35 and 36.
    assert saturation_pressure_mpa(300.0) == pytest.approx(0.353658941e-2, rel=1e-8)
    assert saturation_pressure_mpa(500.0) == pytest.approx(0.263889776e1, rel=1e-8)
    assert saturation_pressure_mpa(600.0) == pytest.approx(0.123443146e2, rel=1e-8)
    assert saturation_temperature_k(0.1) == pytest.approx(0.372755919e3, rel=1e-8)
    assert saturation_temperature_k(1.0) == pytest.approx(0.453035632e3, rel=1e-8)
    assert saturation_temperature_k(10.0) == pytest.approx(0.584149488e3, rel=1e-8)
    for t_c in (0.5, 20, 100, 121, 134, 200, 300, 370):
        assert tsat_c(psat_kpa(t_c)) == pytest.approx(t_c, abs=1e-6)
    # reference/standards.md §4.1: WS 310.2's ranges are this line (absolute kPa).
    for t_c, p_abs in ((121, 205.0), (124, 225.2), (132, 286.8), (134, 304.2), (135, 313.2)):
        assert round(psat_kpa(t_c), 1) == p_abs
    for bad in (-1.0, 400.0):
        with pytest.raises(ValueError, match="IF97"):
            psat_kpa(bad)
    with pytest.raises(ValueError, match="IF97"):
        tsat_c(30000.0)


def test_every_day_starts_with_a_bowie_dick_test_and_ids_count_cycles() -> None:
    signal = SterilizerSignal(SterilizerSpec(), seed=7)
    for day in range(7):
        start = MONDAY + timedelta(days=day)
        cycles = signal.cycles(start, start + timedelta(days=1))
        assert len(cycles) >= 6
        bd = cycles[0]
        assert bd.is_bowie_dick
        assert bd.setpoint_c == 134.0
        assert (bd.hold_end - bd.hold_start) == timedelta(seconds=210)  # 3.5 min
        assert start + timedelta(hours=7) < bd.start < start + timedelta(hours=8)
        date = start.strftime("%Y%m%d")
        assert [c.cycle_id for c in cycles] == [f"{date}-{i:02d}"
                                                for i in range(1, len(cycles) + 1)]
        assert all(not c.is_bowie_dick for c in cycles[1:])
        assert all(a.end < b.start for a, b in itertools.pairwise(cycles))
        assert cycles[-1].end < start + timedelta(hours=18)
    weekdays = SterilizerSignal(SterilizerSpec(working_days="weekdays"), seed=7)
    saturday = MONDAY + timedelta(days=5)
    assert weekdays.cycles(saturday, saturday + timedelta(days=2)) == []
    skipped = SterilizerSignal(SterilizerSpec(), seed=7,
                               faults=SterilizerFaults(skip_bowie_dick=True))
    first = skipped.cycles(MONDAY, MONDAY + timedelta(days=1))[0]
    assert not first.is_bowie_dick
    assert first.cycle_id.endswith("-01")


def _cycle_samples(signal: SterilizerSignal, cycle: Any, step_s: float = 5.0
                   ) -> list[tuple[datetime, dict[str, Any]]]:
    out, t = [], cycle.start
    while t < cycle.end:
        out.append((t, signal.sample(t)))
        t += timedelta(seconds=step_s)
    return out


def test_cycles_hold_long_enough_at_the_set_point_with_saturated_steam() -> None:
    signal = SterilizerSignal(SterilizerSpec(programme_mix={"134": 0.6, "121": 0.4}), seed=3)
    order = ["prevacuum", "heating", "sterilizing", "exhaust", "drying", "complete"]
    cycles = signal.cycles(MONDAY, MONDAY + timedelta(days=2))
    assert {c.programme for c in cycles} == {"bowie_dick", "134", "121"}
    for cycle in cycles:
        rows = _cycle_samples(signal, cycle)
        phases = [r["cycle_phase"] for _, r in rows]
        assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == order
        assert {r["cycle_id"] for _, r in rows} == {cycle.cycle_id}
        hold = [r for _, r in rows if r["cycle_phase"] == "sterilizing"]
        minimum = PROGRAMMES[cycle.programme].hold_s
        assert len(hold) * 5.0 >= minimum
        assert cycle.hold_end - cycle.hold_start >= timedelta(seconds=minimum)
        setpoint = cycle.setpoint_c  # WS 310.3: set-point ≤ T ≤ set-point + 3 °C throughout
        assert all(setpoint <= r["temperature_c"] <= setpoint + 3 for r in hold)
        assert all(abs(r["pressure_kpa"] - psat_kpa(r["temperature_c"])) < 4.0
                   for r in hold)
        vacuum = min(r["pressure_kpa"] for _, r in rows if r["cycle_phase"] == "prevacuum")
        assert 4.0 <= vacuum <= 11.0
    idle = signal.sample(cycles[0].start - timedelta(minutes=5))
    assert idle["cycle_phase"] == "idle"
    assert abs(idle["pressure_kpa"] - 101.3) < 4


def test_sterilizer_faults_show_in_the_cycle_record() -> None:
    signal = SterilizerSignal(SterilizerSpec(), seed=3)
    day = (MONDAY, MONDAY + timedelta(days=1))
    signal.faults = SterilizerFaults(air_excess_kpa=15.0)
    for cycle in signal.cycles(*day)[:3]:
        hold = [r for _, r in _cycle_samples(signal, cycle) if r["cycle_phase"] == "sterilizing"]
        excess = [r["pressure_kpa"] - psat_kpa(r["temperature_c"]) for r in hold]
        assert all(10.0 < e < 20.0 for e in excess), excess
    signal.faults = SterilizerFaults(hold_shortfall_s=120.0, hold_temp_deficit_c=2.0)
    for cycle in signal.cycles(*day)[:3]:
        minimum = PROGRAMMES[cycle.programme].hold_s
        assert cycle.hold_end - cycle.hold_start == timedelta(seconds=minimum - 120.0)
        hold = [r for _, r in _cycle_samples(signal, cycle) if r["cycle_phase"] == "sterilizing"]
        assert all(r["temperature_c"] < cycle.setpoint_c for r in hold)
        assert all(abs(r["pressure_kpa"] - psat_kpa(r["temperature_c"])) < 4.0
                   for r in hold)
    signal.faults = SterilizerFaults()
    assert signal.cycles(*day)[0].hold_end - signal.cycles(*day)[0].hold_start == timedelta(
        seconds=210)


def test_a_week_of_sterilizer_records_is_valid() -> None:
    signal = SterilizerSignal(SterilizerSpec(sterilizer_type="gravity"), seed=1)
    phases = set()
    for _, r in _run(signal, MONDAY, timedelta(seconds=45), 7):
        assert tuple(r) == STERILIZER_QUANTITIES
        _check_names_and_ranges("sterilizer", r)
        phases.add(r["cycle_phase"])
        assert r["cycle_id"] == "" or re.fullmatch(r"\d{8}-\d{2}", r["cycle_id"])
    assert phases == {"idle", "heating", "sterilizing", "exhaust", "drying", "complete"}
    assert phases <= set(_yaml("profiles/sterilizer_ps120.yaml")["quantities"]["cycle_phase"][
        "values"]), "phases are the reference controller's (profile sterilizer_ps120)"
    cycles = signal.cycles(MONDAY, MONDAY + timedelta(days=7))
    assert {c.programme for c in cycles} == {"121_instruments", "121_dressings"}


# ---- radiation ---------------------------------------------------------------------------------


def _monitor(modality: str, *, seed: int = 1, **kw: Any) -> DoseRateMonitorSignal:
    return DoseRateMonitorSignal(
        DoseRateMonitorSpec(room=XRayRoomSpec.for_modality(modality), **kw), seed)


@pytest.mark.parametrize(("modality", "days"), [("fluoroscopy", 7), ("ct", 2), ("radiography", 2)])
def test_background_and_beam_on_readings_outside_the_room(modality: str, days: int) -> None:
    monitor = _monitor(modality)
    rows = [r for _, r in _run(monitor, MONDAY, timedelta(seconds=10), days)]
    for r in rows[:2000]:
        assert tuple(r) == MONITOR_QUANTITIES
        _check_names_and_ranges("dose_rate_monitor", r)
    off = [r["dose_rate_usv_h"] for r in rows if not r["beam_on"]]
    on = [r["dose_rate_usv_h"] for r in rows if r["beam_on"]]
    assert 0.1 <= statistics.fmean(off) <= 0.3
    assert len(on) > 100
    assert max(on) < 2.5, "GBZ 130-2020 §6.3.1: ≤ 2.5 µSv/h outside a healthy room"
    if modality != "radiography":  # 0.1 s radiographs vanish in a 30 s window, as in reality
        assert statistics.fmean(on) > statistics.fmean(off) + 0.1


def test_an_interlock_failure_pushes_beam_on_readings_past_2_5() -> None:
    monitor = _monitor("fluoroscopy")
    monitor.faults = RadiationFaults(leakage_factor=10.0)
    rows = [r for _, r in _run(monitor, MONDAY, timedelta(seconds=10), 1)]
    assert sum(r["dose_rate_usv_h"] > 2.5 for r in rows if r["beam_on"]) > 50
    assert all(r["dose_rate_usv_h"] < 1.0 for r in rows if not r["beam_on"])


def test_background_counts_are_poisson() -> None:
    monitor = _monitor("fluoroscopy", update_s=30.0)  # GM: 3 cps per µSv/h, 30 s
    spec = monitor.spec
    z = []
    for t, r in _run(monitor, MONDAY, timedelta(seconds=30), 1):  # nights and all: beam off
        if r["beam_on"]:
            continue
        lam = monitor.truth(t)["dose_rate_usv_h"] * spec.sensitivity_cps_per_usv_h * 30.0
        counts = round(r["dose_rate_usv_h"] * spec.sensitivity_cps_per_usv_h * 30.0)
        z.append((counts - lam) / math.sqrt(lam))
    assert abs(statistics.fmean(z)) < 0.1
    assert 0.85 < statistics.pvariance(z) < 1.2


def test_a_monitor_inside_the_room_reads_the_scatter_field() -> None:
    monitor = _monitor("fluoroscopy", position="inside", distance_m=2.0, detector="scintillator")
    on = [r["dose_rate_usv_h"] for _, r in _run(monitor, MONDAY + timedelta(hours=8),
                                                timedelta(seconds=10), 0.4) if r["beam_on"]]
    assert max(on) > 300  # 2 mSv/h at 1 m, /4 at 2 m, technique factor up to 1.6
    assert max(on) < 2000 * 1.6 / 4 + 10


def test_a_fluoroscopy_worker_gets_a_typical_annual_dose() -> None:
    dosimeter = PersonalDosimeterSignal(PersonalDosimeterSpec(), seed=3)
    monthly = []
    for month in range(1, 13):
        first_of_next = datetime(2026 + month // 12, month % 12 + 1, 1, tzinfo=BEIJING)
        reading = dosimeter.sample(first_of_next - timedelta(seconds=1))
        assert tuple(reading) == DOSIMETER_QUANTITIES
        _check_names_and_ranges("dosimeter", reading)
        monthly.append(reading["dose_msv"])
    assert 0.5 <= sum(monthly) <= 2.0, monthly  # radiology staff: ~0.5–2 mSv a year
    assert max(monthly) < 0.42  # under GBZ 128's pro-rated investigation level


def test_hp10_never_decreases_within_a_period_and_resets_at_the_next() -> None:
    monthly = PersonalDosimeterSignal(PersonalDosimeterSpec(), seed=3)
    quarterly = PersonalDosimeterSignal(PersonalDosimeterSpec(period_months=3), seed=3)
    start = datetime(2026, 10, 29, tzinfo=BEIJING)
    previous = {"m": -1.0, "q": -1.0}
    t = start
    while t < start + timedelta(days=5):
        m, q = monthly.sample(t)["dose_msv"], quarterly.sample(t)["dose_msv"]
        if t == datetime(2026, 11, 1, tzinfo=BEIJING):
            assert m == 0.0 < previous["m"], "a new monthly period starts from zero"
            assert q >= previous["q"] > 0, "the quarter runs on from 1 October"
        else:
            assert m >= previous["m"]
            assert q >= previous["q"]
        previous = {"m": m, "q": q}
        t += timedelta(minutes=15)


def test_dosimeter_and_monitor_in_one_room_see_the_same_exposures() -> None:
    room = XRayRoomSpec.for_modality("fluoroscopy")
    monitor = DoseRateMonitorSignal(DoseRateMonitorSpec(room=room), seed=1, room_seed=77)
    dosimeter = PersonalDosimeterSignal(PersonalDosimeterSpec(room=room), seed=2, room_seed=77)
    t = MONDAY + timedelta(hours=9)
    agree = checked = 0
    for i in range(2000):
        ts = t + timedelta(seconds=10 * i)
        worker = dosimeter.truth(ts)["dose_rate_usv_h"]
        beam = monitor.room.beam_on(ts.timestamp())
        agree += (worker > 1.0) == beam
        checked += 1
    assert agree == checked


def test_each_sample_costs_well_under_50_microseconds() -> None:
    """Measured costs (pure Python): probe ~13 µs, pool ~13, sterilizer ~6, dose-rate monitor ~7,
    dosimeter ~9. The budget leaves room for a shared CPU."""
    ts0 = datetime(2026, 11, 16, 1, tzinfo=UTC).timestamp()
    signals = {
        "water_probe": WaterProbeSignal(WaterProbeSpec.for_site("tap"), 1),
        "pool": PoolSignal(PoolSpec(), 1),
        "sterilizer": SterilizerSignal(SterilizerSpec(), 1),
        "dose_rate_monitor": _monitor("ct"),
        "dosimeter": PersonalDosimeterSignal(PersonalDosimeterSpec(), 1),
    }
    n = 3000
    for name, signal in signals.items():
        signal.sample_ts(ts0)
        best = math.inf
        for rep in range(3):  # best of 3: the suite may share the CPU with servers
            base = ts0 + rep * n * 10.0
            start = time.perf_counter()
            for i in range(n):
                signal.sample_ts(base + 10.0 * i)
            best = min(best, (time.perf_counter() - start) / n)
        assert best < 50e-6, f"{name}: {best * 1e6:.1f} µs per sample"
