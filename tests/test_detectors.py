"""Conformance suite for every anomaly detector, plus the decider, the registry and IF97.

Every detector type in ``alerting.detectors.DETECTOR_TYPES`` must have a case here (a test fails
otherwise), built from the shipped registry (alerting/data/detectors.yaml), so what is tested is
what runs. Each is held to the same contract: scores in [0, 1] and finite for any finite input,
deterministic, bounded state after 100k updates, warm-up equivalent to live feeding, a stated
false-positive rate on the simulators' clean signals, and a stated delay on its own fault type
from the simulators' fault scenario (docs/detectors.md has the measured numbers).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from alerting.detectors import (
    DETECTOR_TYPES,
    Decider,
    LevelShiftDetector,
    RegistryError,
    SaturationDetector,
    SpikeDetector,
    default_registry,
    load_registry,
    ramp_score,
)
from protocols import steam
from simulators.faults import generate, ground_truth
from simulators.scenario import load_scenario
from simulators.sterilizer import steam as sim_steam

Row = tuple[float, ...]

# ---- one case per detector type ------------------------------------------------------------------


def _registry_detector(kind: str, quantity: str | tuple[str, ...], detector: str) -> Any:
    inputs = (quantity,) if isinstance(quantity, str) else quantity
    for spec in default_registry().for_kind(kind):
        if spec.detector == detector and spec.inputs == inputs:
            return spec.build()
    raise AssertionError(f"the registry runs no {detector} on {kind}.{quantity}")


def _single(rng: random.Random, n: int, scale: float = 1.0) -> Iterator[Row]:
    """A noisy random walk with spikes and steps, one sample a minute."""
    level = 7.0
    for i in range(n):
        level += rng.gauss(0.0, 0.002 * scale)
        if rng.random() < 0.002:
            level += rng.choice((-1.0, 1.0)) * scale
        value = level + rng.gauss(0.0, 0.01 * scale)
        if rng.random() < 0.003:
            value += rng.choice((-5.0, 5.0)) * scale
        yield (1_700_000_000.0 + 60.0 * i, round(value, 2))


def _pair(rng: random.Random, n: int, scale: float = 1.0) -> Iterator[Row]:
    """Chamber temperature and pressure: saturated with noise, sometimes with air."""
    for i in range(n):
        t = 121.0 + 13.0 * (i // 500 % 2) + rng.gauss(0.0, 0.3)
        air = 20.0 if rng.random() < 0.01 else 0.0
        yield (1_700_000_000.0 + 10.0 * i, t, steam.psat_kpa(t) + air + rng.gauss(0.0, 0.3 * scale))


@dataclass(frozen=True)
class Case:
    make: Callable[[], Any]
    rows: Callable[[random.Random, int], Iterator[Row]]
    bound: Callable[[Any], int]  # the state_size the parameters allow
    fp_per_1000: float  # stated bound on decided onsets per 1,000 clean samples
    fault: tuple[str, str | None, float]  # (device in faults.yaml, quantity, max delay in s)


CASES: dict[str, Case] = {
    "spike": Case(
        lambda: _registry_detector("water_probe", "ph", "spike"),
        _single,
        lambda d: d.window + d.max_len + 1,
        0.05,
        ("wp-tap-2", "turbidity_ntu", 2 * 60.0),  # confirmed one sample after the spike
    ),
    "level_shift": Case(
        lambda: _registry_detector("water_probe", "ph", "level_shift"),
        _single,
        lambda d: d.test + d.reference + 1,
        0.05,
        ("wp-tap-3", "conductivity_us_cm", 10 * 60.0),  # half the 10-sample test window moved
    ),
    "drift": Case(
        lambda: _registry_detector("water_probe", "ph", "drift"),
        _single,
        lambda d: 2 * d.blocks + d.block_cap + 2,
        0.05,
        ("wp-tank-1", "ph", 27 * 3600.0),  # −0.7 pH over 2 days reaches 0.3 after ~21 h
    ),
    "stuck": Case(
        lambda: _registry_detector("water_probe", "free_chlorine_mg_l", "stuck"),
        _single,
        lambda d: 3,
        0.05,
        ("wp-tap-4", "free_chlorine_mg_l", 31 * 60.0),  # 30 repeats of a 1-minute reading
    ),
    "rate": Case(
        lambda: _registry_detector("air_monitor", "co2_ppm", "rate"),
        lambda rng, n: _single(rng, n, 500.0),
        lambda d: 2,
        0.05,
        ("am-hotel-1", "co2_ppm", 60.0),  # +3000 ppm within a minute: at the sample itself
    ),
    "steam_saturation": Case(
        lambda: _registry_detector(
            "sterilizer", ("temperature_c", "pressure_kpa"), "steam_saturation"
        ),
        _pair,
        lambda d: d.window + 1,
        0.05,
        ("st-cssd-1", None, 30.0),  # from the first hold sample: the 3-sample median
    ),
}

EXTREMES = (0.0, 1e-300, -1e-300, 1e300, -1e300, 1.7e308, -1.7e308, 1e-5, 42.0)


def test_every_detector_type_has_a_conformance_case() -> None:
    assert set(CASES) == set(DETECTOR_TYPES)


def _feed(det: Any, rows: list[Row]) -> list[float]:
    return [det.update(*row) for row in rows]


def _streams(case: Case, n: int) -> dict[str, list[Row]]:
    rng = random.Random(7)
    width = len(next(case.rows(rng, 1)))
    ts = [1_700_000_000.0 + 60.0 * i for i in range(n)]
    extremes = [rng.choice(EXTREMES) for _ in range(n * (width - 1))]
    return {
        "realistic": list(case.rows(random.Random(1), n)),
        "extremes": [
            (t, *extremes[i * (width - 1) : (i + 1) * (width - 1)]) for i, t in enumerate(ts)
        ],
        "constant": [(t, *([134.0] * (width - 1))) for t in ts],
        "alternating": [
            (t, *([1e300 if i % 2 else -1e300] * (width - 1))) for i, t in enumerate(ts)
        ],
        "odd_clock": [
            (1e9 + rng.choice((0.0, 1.0, -30.0, 1e6)) * i, *row[1:])
            for i, row in enumerate(case.rows(random.Random(2), n))
        ],
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_scores_are_finite_and_in_unit_interval(name: str) -> None:
    case = CASES[name]
    for stream, rows in _streams(case, 3000).items():
        det = case.make()
        for row in rows:
            score = det.update(*row)
            assert math.isfinite(score), (name, stream, row, score)
            assert 0.0 <= score <= 1.0, (name, stream, row, score)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic(name: str) -> None:
    case = CASES[name]
    for rows in _streams(case, 2000).values():
        assert _feed(case.make(), rows) == _feed(case.make(), rows)


@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_is_bounded_after_100k_updates(name: str) -> None:
    case = CASES[name]
    det = case.make()
    sizes = []
    for i, row in enumerate(case.rows(random.Random(3), 100_000)):
        det.update(*row)
        if i % 10_000 == 9_999:
            sizes.append(det.state_size())
    assert max(sizes) <= case.bound(det), sizes
    assert sizes[-1] <= max(sizes[:2]), f"state keeps growing: {sizes}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_warm_up_then_continue_equals_feeding_everything(name: str) -> None:
    case = CASES[name]
    rows = list(case.rows(random.Random(4), 12_000))
    history, live = rows[:8000], rows[8000:]
    straight = case.make()
    _feed(straight, history)
    restarted = case.make()
    restarted.warm_up(history)
    assert _feed(restarted, live) == _feed(straight, live)
    assert restarted.state_size() == straight.state_size()


# ---- simulated data: clean signals, and the fault scenario ------------------------------------

WARM_UP_S = 3 * 86400.0  # history before a run, as the platform reads it back from InfluxDB
CLEAN_SLOW = (
    "cw-plant-probe-1",
    "cw-tap-probe-01",
    "cw-tank-probe-01",
    "cw-plant-station-1",
    "cp-pool-01",
    "cp-hotel-01",
    "cp-office-01",
    "cp-gym-01",
)
CLEAN_FAST = ("ch-ster-01", "ch-ster-02", "ch-ster-03", "ch-ster-04", "ch-dsa-mon-1")


def _by_device(records: Iterator[Any]) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    out: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for r in records:
        if isinstance(r.values, dict):
            out[r.device].append((r.ts.timestamp(), r.values))
    return out


def _history(sim: Any, t0: float, seconds: float) -> list[tuple[float, dict[str, Any]]]:
    """The device's healthy readings before ``t0``: what the platform reads back from InfluxDB
    to warm its detectors up after a restart."""
    signal = sim.new_signal()
    n = int(seconds // sim.interval_s)
    times = [t0 - (n - k) * sim.interval_s for k in range(n)]
    return [(t, signal.sample_ts(t)) for t in times]


@pytest.fixture(scope="module")
def clean_onsets() -> dict[str, tuple[int, int]]:
    """(decided onsets, samples) per detector type over two days of the clean scenario, every
    pipeline warmed up with the three days before (the drift window is 72 h)."""
    scenario = load_scenario("clean")
    start, _ = scenario.time_range(None, None, None)
    planned = {d.id: d for d in scenario.plan(start, devices=CLEAN_SLOW + CLEAN_FAST)}
    data = _by_device(generate(scenario, duration="2d", devices=CLEAN_SLOW + CLEAN_FAST))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for device, rows in data.items():
        sim = planned[device]
        history = _history(sim, start.timestamp(), WARM_UP_S if device in CLEAN_SLOW else 3600.0)
        for pipeline in default_registry().pipelines(sim.kind):
            pipeline.warm_up(history)
            count = totals[pipeline.spec.detector]
            for ts, values in rows:
                result = pipeline.update(ts, values)
                if result is not None:
                    count[1] += 1
                    count[0] += result[1].active and result[1].changed
    return {k: (v[0], v[1]) for k, v in totals.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_false_positive_rate_on_clean_signals(
    name: str, clean_onsets: dict[str, tuple[int, int]]
) -> None:
    onsets, samples = clean_onsets[name]
    least = 1000 if name == "steam_saturation" else 15_000  # the check sees only the holds
    assert samples > least, f"{name} saw too few clean samples ({samples})"
    assert 1000.0 * onsets / samples <= CASES[name].fp_per_1000, (onsets, samples)


FAULT_DEVICES = (
    "wp-tap-2",
    "wp-tap-3",
    "wp-tank-1",
    "wp-tap-4",
    "am-hotel-1",
    "st-cssd-1",
    "am-office-2",
)


@pytest.fixture(scope="module")
def fault_runs() -> dict[str, Any]:
    """Every registry pipeline on the fault scenario's anomaly devices, warmed up with three days
    of the device's healthy signal before the run; returns the onsets and the ground truth."""
    scenario = load_scenario("faults")
    start, end = scenario.time_range(None, None, None)
    planned = {d.id: d for d in scenario.plan(start)}
    truth = ground_truth(scenario.name, list(planned.values()), start.timestamp(), end.timestamp())
    data = _by_device(generate(scenario, devices=FAULT_DEVICES))
    onsets: dict[str, list[tuple[float, str, tuple[str, ...]]]] = defaultdict(list)
    hold_starts: dict[str, list[float]] = defaultdict(list)
    for device in FAULT_DEVICES:
        sim = planned[device]
        pipelines = default_registry().pipelines(sim.kind)
        history = _history(sim, start.timestamp(), WARM_UP_S)
        for pipeline in pipelines:
            pipeline.warm_up(history)
        phase = None
        for ts, values in data[device]:
            if values.get("cycle_phase") == "sterilizing" and phase != "sterilizing":
                hold_starts[device].append(ts)
            phase = values.get("cycle_phase")
            for pipeline in pipelines:
                result = pipeline.update(ts, values)
                if result is not None and result[1].active and result[1].changed:
                    spec = pipeline.spec
                    onsets[device].append((ts, spec.detector, spec.inputs))
    return {"truth": truth, "onsets": onsets, "hold_starts": hold_starts}


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _effect_start(truth: list[dict[str, Any]], device: str, quantity: str | None) -> float:
    for row in truth:
        anomaly = row["expected_alert"].startswith(("anomaly:", "sterilizer"))
        if row["device"] == device and anomaly and quantity in (None, row["quantity"]):
            return _iso(row["effect_start"])
    raise AssertionError(f"no anomaly fault on {device} in the ground truth")


@pytest.mark.parametrize("name", sorted(CASES))
def test_fires_on_its_own_fault_within_stated_delay(name: str, fault_runs: dict[str, Any]) -> None:
    device, quantity, max_delay = CASES[name].fault
    begin = _effect_start(fault_runs["truth"], device, quantity)
    if name == "steam_saturation":  # the check can only see the hold
        begin = min(t for t in fault_runs["hold_starts"][device] if t >= begin)
    hits = [
        ts
        for ts, detector, inputs in fault_runs["onsets"][device]
        if detector == name and ts >= begin and (quantity is None or quantity in inputs)
    ]
    assert hits, f"{name} never fired on {device}"
    assert hits[0] - begin <= max_delay, f"{name} on {device}: {hits[0] - begin:.0f} s"


def test_no_anomaly_before_the_faults(fault_runs: dict[str, Any]) -> None:
    """On the faulted devices, nothing fires before the first fault starts."""
    for device, events in fault_runs["onsets"].items():
        first = min(_iso(r["start"]) for r in fault_runs["truth"] if r["device"] == device)
        early = [e for e in events if e[0] < first]
        assert not early, (device, early)


# ---- the steam check against IAPWS-IF97 ----------------------------------------------------------

# IAPWS-IF97 (2007 revision) verification values: Table 35 (Ps at T) and Table 36 (Ts at p).
IF97_PS = ((300.0, 0.353658941e-2), (500.0, 0.263889776e1), (600.0, 0.123443146e2))
IF97_TS = ((0.1, 0.372755919e3), (1.0, 0.453035632e3), (10.0, 0.584149488e3))


@pytest.mark.parametrize(("t_k", "p_mpa"), IF97_PS)
def test_if97_saturation_pressure(t_k: float, p_mpa: float) -> None:
    assert float(f"{steam.saturation_pressure_mpa(t_k):.8e}") == p_mpa  # the table's 9 digits


@pytest.mark.parametrize(("p_mpa", "t_k"), IF97_TS)
def test_if97_saturation_temperature(p_mpa: float, t_k: float) -> None:
    assert float(f"{steam.saturation_temperature_k(p_mpa):.8e}") == t_k


def test_steam_table_of_the_standards_notes_and_the_simulator() -> None:
    """standards.md §4.1 (computed with IF97), and the simulator's own copy agrees."""
    for t_c, p_abs in ((121, 205.0), (124, 225.2), (132, 286.8), (134, 304.2), (135, 313.2)):
        assert round(steam.psat_kpa(t_c), 1) == p_abs
    for p_gauge, t_c in ((102.8, 120.9), (122.9, 123.9), (184.4, 131.9), (210.7, 134.9)):
        assert round(steam.tsat_c(p_gauge + 101.325), 1) == t_c
    for t_c in (100.0, 121.0, 134.0, 150.0, 300.0):
        assert steam.psat_kpa(t_c) == sim_steam.psat_kpa(t_c)
        assert steam.tsat_c(steam.psat_kpa(t_c)) == pytest.approx(t_c, abs=1e-7)
    assert steam.saturation_excess_kpa(-5.0, 100.0) == 0.0  # outside region 4: no verdict
    with pytest.raises(ValueError, match="region 4"):
        steam.psat_kpa(400.0)


def test_saturation_detector_on_if97_values() -> None:
    """Saturated steam scores 0; +20 kPa of air scores high; the tolerance is the threshold."""
    for excess, low, high in (
        (0.0, 0.0, 0.0),
        (20.0, 0.99, 1.0),
        (5.0, 0.49, 0.51),
        (-20.0, 0.0, 0.0),
    ):
        det = SaturationDetector(tolerance_kpa=5.0)
        scores = [
            det.update(10.0 * i, t, steam.psat_kpa(t) + excess)
            for i, t in enumerate((121.0, 121.5, 122.3, 133.1, 134.0, 135.9))
        ]
        assert all(low <= s <= high for s in scores), (excess, scores)
    det = SaturationDetector()
    assert det.update(0.0, 60.0, 150.0) == 0.0  # below 100 °C the chamber is not steam-filled


def test_saturation_window_restarts_between_holds() -> None:
    det = SaturationDetector(window=3, max_gap_s=120.0)
    for i in range(5):
        det.update(10.0 * i, 134.0, steam.psat_kpa(134.0) + 20.0)
    assert det.update(3600.0, 134.0, steam.psat_kpa(134.0)) == 0.0  # next hold starts clean


# ---- deciding, learning gates, the registry -----------------------------------------------------


def test_ramp_score_scale() -> None:
    assert ramp_score(1.0, 2.0, 4.0) == 0.0
    assert ramp_score(4.0, 2.0, 4.0) == pytest.approx(0.5)
    assert ramp_score(8.0, 2.0, 4.0) > 0.99
    assert ramp_score(math.inf, 2.0, 4.0) == 1.0
    assert ramp_score(math.nan, 2.0, 4.0) == 0.0


def test_decider_hysteresis_does_not_flap() -> None:
    decider = Decider(0.5, 0.3, for_samples=2, clear_samples=3)
    states = [
        decider.update(s) for s in (0.6, 0.4, 0.6, 0.6, 0.45, 0.55, 0.2, 0.2, 0.4, 0.2, 0.2, 0.2)
    ]
    changes = [(i, d.active) for i, d in enumerate(states) if d.changed]
    # on after two in a row (index 3); 0.45 is above the clear level; three below 0.3 clear it
    assert changes == [(3, True), (11, False)]


def test_decider_quantile_raises_the_threshold_for_a_noisy_series() -> None:
    decider = Decider(0.2, quantile=0.99, window=200)
    rng = random.Random(5)
    onsets = 0
    for _ in range(2000):
        result = decider.update(0.2 + 0.3 * rng.random())  # often above the fixed 0.2
        onsets += result.changed and result.active
    assert onsets <= 25
    assert decider.update(1.0).threshold > 0.45


def test_anomalies_are_kept_out_of_the_baseline() -> None:
    """A gated level-shift detector keeps flagging a lasting offset; one that learns from
    everything (gate above 1) accepts it within the reference window."""
    rng = random.Random(6)
    rows = [(60.0 * i, 480.0 + rng.gauss(0, 3) + (250.0 if i >= 400 else 0.0)) for i in range(900)]
    gated = LevelShiftDetector(min_scale=5.0)
    naive = LevelShiftDetector(min_scale=5.0, gate=1.01)
    g = _feed(gated, rows)
    n = _feed(naive, rows)
    assert min(g[420:900]) > 0.9
    assert min(n[700:900]) < 0.1
    spike = SpikeDetector(min_scale=1.0)
    _feed(spike, [(60.0 * i, 10.0 + 0.1 * (i % 3)) for i in range(40)])
    spike.update(2400.0, 500.0)
    assert max(spike._win.values()) < 11.0  # the outlier is held, not learnt


def test_registry_resolution_from_the_profile_and_kind_overrides() -> None:
    registry = default_registry()
    stuck = registry.for_series("pool_monitor", "turbidity_ntu")
    assert {s.detector for s in stuck} == {"spike", "stuck"}
    assert stuck[1].build(resolution=0.001).resolution == 0.001
    assert {s.detector for s in registry.for_series("sterilizer", "temperature_c")} == {"rate"}
    assert registry.for_series("dosimeter", "dose_rate_usv_h") == ()
    assert all(s.why for s in registry.specs if s.detector == "rate")


def test_pipeline_when_filter_feeds_only_the_hold() -> None:
    pipeline = next(
        p
        for p in default_registry().pipelines("sterilizer")
        if p.spec.detector == "steam_saturation"
    )
    air = {"temperature_c": 134.0, "pressure_kpa": steam.psat_kpa(134.0) + 20.0}
    assert pipeline.update(0.0, {**air, "cycle_phase": "heating"}) is None
    assert pipeline.update(10.0, {"cycle_phase": "sterilizing", "temperature_c": 134.0}) is None
    result = pipeline.update(20.0, {**air, "cycle_phase": "sterilizing"})
    assert result is not None
    assert result[0] > 0.99
    assert result[1].active
    assert pipeline.spec.alert == "sterilizer:air_in_chamber"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "quantities: {ph: {resolution: 0.01, detectors: {bogus: {}}}}",
            "quantities.ph.detectors.bogus: unknown detector",
        ),
        (
            "quantities: {ph: {resolution: 0.01, detectors: {spike: {window: 1}}}}",
            "quantities.ph.detectors.spike: spike: need window >= 3",
        ),
        (
            "quantities: {ph: {resolution: 0.01, detectors: {rate: {max_per_min: 1}}}}",
            "quantities.ph.detectors.rate: a rate limit needs 'why'",
        ),
        ("quantities: {ph: {detectors: {stuck: {}}}}", "quantities.ph.resolution: required"),
        ("quantities: {cycle_id: {resolution: 1, detectors: {}}}", "not a numeric quantity"),
        ("kinds: {sterilizer: {ph: {detectors: {}}}}", "sterilizer does not report"),
        (
            "kinds: {sterilizer: {pairs: {x: {type: steam_saturation, inputs: [temperature_c]}}}}",
            "kinds.sterilizer.pairs.x",
        ),
    ],
)
def test_registry_errors_name_the_file_and_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "detectors.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
