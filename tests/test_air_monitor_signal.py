"""The indoor-air signal model: reproducible, physically valid, and shaped by occupancy."""

from __future__ import annotations

import math
import random
import statistics
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest
import yaml

from simulators.air_monitor.signal import QUANTITIES, AirMonitorSignal, AirMonitorSpec

VENUES = ("hotel_room", "office", "mall", "gym", "classroom")
BEIJING = timezone(timedelta(hours=8))
# Monday 2026-11-16 00:00 Beijing time.
MONDAY = datetime(2026, 11, 16, tzinfo=BEIJING)
DATA = Path(__file__).resolve().parent.parent / "protocols" / "data"


def _week(signal: AirMonitorSignal, step: timedelta = timedelta(minutes=1), days: int = 7):
    t, end = MONDAY, MONDAY + timedelta(days=days)
    while t < end:
        yield t, signal.sample(t)
        t += step


def test_same_spec_seed_and_times_give_the_same_readings() -> None:
    spec = AirMonitorSpec.for_venue("office")
    times = [MONDAY + timedelta(minutes=7 * i) for i in range(500)]
    first, second = AirMonitorSignal(spec, seed=11), AirMonitorSignal(spec, seed=11)
    a = [first.sample(t) for t in times]
    b = [second.sample(t) for t in times]
    assert a == b
    other = AirMonitorSignal(spec, seed=12)
    assert [other.sample(t) for t in times] != b, "a different seed must give different readings"


def test_irregular_sampling_follows_the_same_curve_as_fine_sampling() -> None:
    """The balances are integrated exactly over elapsed time, so the sampling pattern is irrelevant
    (up to float rounding, which may flip the last digit of a rounded reading)."""
    spec = AirMonitorSpec.for_venue("office")
    fine, sparse = AirMonitorSignal(spec, seed=3), AirMonitorSignal(spec, seed=3)
    rng = random.Random(1)
    t = MONDAY + timedelta(hours=6)
    fine.sample(t)
    sparse.sample(t)
    resolution = {
        "co2_ppm": 1,
        "pm25_ug_m3": 1,
        "pm10_ug_m3": 1,
        "hcho_mg_m3": 0.001,
        "temperature_c": 0.1,
        "humidity_pct": 0.1,
    }
    for _ in range(40):
        gap = timedelta(seconds=rng.uniform(1, 3 * 3600))
        for k in range(1, 61):  # fine: 60 steps through the gap
            fine.sample(t + gap * k / 60)
        t += gap
        got = sparse.sample(t)
        want = fine.sample(t)
        for q in QUANTITIES:
            assert abs(got[q] - want[q]) <= resolution[q] * 1.001, (q, t, got, want)


@pytest.mark.parametrize("venue", VENUES)
def test_a_week_at_one_minute_steps_stays_physically_valid(venue: str) -> None:
    quantities = yaml.safe_load((DATA / "quantities.yaml").read_text())["quantities"]
    allowed = set(
        yaml.safe_load((DATA / "kinds.yaml").read_text())["kinds"]["air_monitor"]["quantities"]
    )
    signal = AirMonitorSignal(AirMonitorSpec.for_venue(venue), seed=5)
    for t, reading in _week(signal):
        assert tuple(reading) == QUANTITIES
        assert set(reading) <= allowed
        for q, v in reading.items():
            lo, hi = quantities[q]["range"]
            assert math.isfinite(v), (venue, t, q, v)
            assert lo <= v <= hi, (venue, t, q, v)
        assert reading["co2_ppm"] >= 0
        assert reading["pm25_ug_m3"] >= 0
        assert reading["hcho_mg_m3"] >= 0
        assert 0 <= reading["humidity_pct"] <= 100
        assert reading["pm10_ug_m3"] >= reading["pm25_ug_m3"], (t, reading)
        # Instrument resolution: CO₂ and PM to 1, HCHO to 0.001, T and RH to 0.1.
        assert reading["co2_ppm"] == int(reading["co2_ppm"])
        assert reading["pm25_ug_m3"] == int(reading["pm25_ug_m3"])
        assert reading["hcho_mg_m3"] == round(reading["hcho_mg_m3"], 3)
        assert reading["temperature_c"] == round(reading["temperature_c"], 1)


def _mean_at_hours(venue: str, hours: set[int], *, weekend: bool, seeds: range) -> float:
    values = []
    for seed in seeds:
        signal = AirMonitorSignal(AirMonitorSpec.for_venue(venue), seed=seed)
        for t, reading in _week(signal, step=timedelta(minutes=15), days=14):
            if t.hour in hours and (t.weekday() >= 5) == weekend:
                values.append(reading["co2_ppm"])
    return statistics.fmean(values)


def test_hotel_room_co2_is_higher_at_night_than_at_three_in_the_afternoon() -> None:
    night = _mean_at_hours("hotel_room", {1, 2, 3, 4}, weekend=False, seeds=range(10))
    afternoon = _mean_at_hours("hotel_room", {15}, weekend=False, seeds=range(10))
    assert night > afternoon + 100, (night, afternoon)


def test_office_co2_peaks_on_weekday_afternoons_and_rests_near_outdoor_at_weekends() -> None:
    spec = AirMonitorSpec.for_venue("office")
    by_hour: dict[int, list[float]] = {h: [] for h in range(24)}
    weekend: list[float] = []
    for seed in range(6):
        signal = AirMonitorSignal(spec, seed=seed)
        for t, reading in _week(signal, step=timedelta(minutes=5), days=14):
            if t.weekday() >= 5:
                weekend.append(reading["co2_ppm"])
            else:
                by_hour[t.hour].append(reading["co2_ppm"])
    profile = {h: statistics.fmean(v) for h, v in by_hour.items()}
    peak = max(profile, key=profile.__getitem__)
    assert 13 <= peak <= 18, f"weekday CO₂ peaks at {peak}:00; profile {profile}"
    assert profile[peak] > spec.outdoor_co2_ppm + 400
    assert profile[3] < spec.outdoor_co2_ppm + 60
    # Weekends: a few people drop in; the mean stays within ~40 ppm of outdoor air.
    assert abs(statistics.fmean(weekend) - spec.outdoor_co2_ppm) < 40, statistics.fmean(weekend)


@pytest.mark.parametrize(("venue", "occupants"), [("hotel_room", 2), ("office", 25), ("gym", 40)])
def test_fixed_occupancy_reaches_the_analytic_steady_state(venue: str, occupants: int) -> None:
    """C_ss = C_out + G·N·1e6/(V·λ): the truth converges to it, the readings scatter around it."""
    spec = AirMonitorSpec.for_venue(venue, fixed_occupancy=occupants, outdoor_co2_swing_ppm=0)
    expected = spec.steady_co2_ppm(occupants)
    assert expected > spec.outdoor_co2_ppm + 300  # the test is about the source term, not C_out
    signal = AirMonitorSignal(spec, seed=9)
    start = MONDAY + timedelta(hours=10)
    signal.sample(start - timedelta(hours=12 / spec.air_change_per_h))
    truth = signal.truth(start)["co2_ppm"]
    assert truth == pytest.approx(expected, abs=0.5)
    readings = [signal.sample(start + timedelta(seconds=30 * i))["co2_ppm"] for i in range(2000)]
    sigma = spec.co2_noise_ppm + spec.co2_noise_rel * expected
    assert statistics.fmean(readings) == pytest.approx(expected, abs=4 * sigma / math.sqrt(2000))
    assert statistics.stdev(readings) == pytest.approx(sigma, rel=0.1)


def test_a_well_ventilated_room_decays_to_outdoor_with_time_constant_one_over_lambda() -> None:
    spec = AirMonitorSpec.for_venue("office", fixed_occupancy=30, outdoor_co2_swing_ppm=0)
    signal = AirMonitorSignal(spec, seed=1)
    t0 = MONDAY + timedelta(hours=12)
    c0 = signal.truth(t0)["co2_ppm"]
    empty = AirMonitorSignal(spec.model_copy(update={"fixed_occupancy": 0}), seed=1)
    empty._co2, empty._ts = c0, t0.timestamp()  # hand over the state: everybody leaves at t0
    tau = timedelta(hours=1 / spec.air_change_per_h)
    excess = empty.truth(t0 + tau)["co2_ppm"] - spec.outdoor_co2_ppm
    assert excess == pytest.approx((c0 - spec.outdoor_co2_ppm) / math.e, rel=1e-9)


def test_formaldehyde_rises_with_temperature_and_humidity_falls_with_it() -> None:
    cool = AirMonitorSignal(AirMonitorSpec.for_venue("hotel_room", setpoint_c=20), seed=4)
    warm = AirMonitorSignal(AirMonitorSpec.for_venue("hotel_room", setpoint_c=28), seed=4)
    hcho_cool = statistics.fmean(r["hcho_mg_m3"] for _, r in _week(cool, timedelta(minutes=10)))
    hcho_warm = statistics.fmean(r["hcho_mg_m3"] for _, r in _week(warm, timedelta(minutes=10)))
    assert hcho_warm > 1.5 * hcho_cool, (hcho_cool, hcho_warm)
    rows = [r for _, r in _week(cool, timedelta(minutes=10))]
    corr = statistics.correlation(
        [r["temperature_c"] for r in rows], [r["humidity_pct"] for r in rows]
    )
    assert corr < -0.3, corr


def test_monitors_in_one_city_share_outdoor_pm25_episodes() -> None:
    spec = AirMonitorSpec.for_venue("office", max_occupancy=0, pm_noise_ug_m3=0, pm_noise_rel=0)
    a = AirMonitorSignal(spec, seed=1, outdoor_seed=110105)
    b = AirMonitorSignal(spec, seed=2, outdoor_seed=110105)
    c = AirMonitorSignal(spec, seed=3)
    times = [MONDAY + timedelta(hours=h) for h in range(0, 24 * 14, 6)]
    pa, pb, pc = ([s.truth(t)["pm25_ug_m3"] for t in times] for s in (a, b, c))
    assert pa == pytest.approx(pb, rel=1e-9)
    assert pa != pytest.approx(pc, rel=0.05)


def test_naive_datetimes_are_refused() -> None:
    signal = AirMonitorSignal(AirMonitorSpec.for_venue("mall"), seed=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        signal.sample(datetime(2026, 11, 22, 13, 0))


def test_spec_fills_venue_defaults_and_names_the_bad_field() -> None:
    spec = AirMonitorSpec.for_venue("classroom", volume_m3=250)
    assert spec.volume_m3 == 250
    assert spec.max_occupancy == 45
    with pytest.raises(pydantic.ValidationError, match="air_change_per_h"):
        AirMonitorSpec.for_venue("gym", air_change_per_h=-1)
    with pytest.raises(pydantic.ValidationError, match="venue"):
        AirMonitorSpec.model_validate({"venue": "spaceship"})
    with pytest.raises(pydantic.ValidationError, match="co2_noise"):
        AirMonitorSpec.for_venue("office", co2_noise=3)  # typo'd field: extra fields are refused


def test_a_sample_costs_well_under_50_microseconds() -> None:
    signal = AirMonitorSignal(AirMonitorSpec.for_venue("office"), seed=1)
    ts0 = datetime(2026, 11, 16, tzinfo=UTC).timestamp()
    signal.sample_ts(ts0)
    n = 20_000
    best = math.inf
    for _ in range(3):  # best of 3: the suite may share the CPU with servers
        start = time.perf_counter()
        for i in range(n):
            signal.sample_ts(ts0 + 5.0 * i)
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 50e-6, f"{best * 1e6:.1f} µs per sample"
