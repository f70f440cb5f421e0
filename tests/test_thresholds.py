"""The streaming threshold evaluator: for, hysteresis, clear_for, flapping, flags, time order."""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.lifecycle import AlertBook, ThresholdAlerting
from alerting.model import AlertState, Severity
from alerting.rules import load_rules
from alerting.thresholds import Change, Phase, ThresholdEvaluator, ThresholdParams
from protocols.catalog import default_catalog
from protocols.reading import Reading

MIN = 60_000


def low_rule(**kw: object) -> ThresholdParams:
    """Free chlorine at a plant outlet: < 0.3, clear at 0.33."""
    args: dict = {"clear": 0.33, "for_s": 300, "clear_for_s": 600}
    args.update(kw)
    return ThresholdParams.simple("<", 0.3, **args)


def run(ev: ThresholdEvaluator, samples: list[tuple[int, float]] | list, flag: str | None = None):
    changes = []
    for item in samples:
        ts, value, *rest = item
        change = ev.feed(ts, value, rest[0] if rest else flag)
        if change is not None:
            changes.append((ts, change))
    return changes


def test_the_condition_must_hold_for_its_duration_before_firing() -> None:
    ev = ThresholdEvaluator(low_rule())
    changes = run(ev, [(i * MIN, 0.2) for i in range(8)])
    assert changes == [(0, Change.PENDING), (5 * MIN, Change.FIRING)]
    assert ev.firing
    assert ev.since_ms == 0


def test_a_pending_condition_that_lets_go_is_cancelled_and_never_fires() -> None:
    ev = ThresholdEvaluator(low_rule())
    values = [0.2, 0.2, 0.2, 0.31, 0.2, 0.2, 0.2, 0.2]  # one sample inside the limit at minute 3
    changes = run(ev, [(i * MIN, v) for i, v in enumerate(values)])
    assert changes == [(0, Change.PENDING), (3 * MIN, Change.CANCELLED), (4 * MIN, Change.PENDING)]
    assert ev.phase is Phase.PENDING
    assert ev.since_ms == 4 * MIN


def test_for_zero_fires_on_the_first_breaching_sample() -> None:
    ev = ThresholdEvaluator(ThresholdParams.simple(">", 2.5, clear=2.0))
    assert ev.feed(0, 1.0) is None
    assert ev.feed(10_000, 2.6) is Change.FIRING


def test_comparators_and_inclusive_limits() -> None:
    assert ThresholdParams.simple("<=", 0.3).breached(0.3)
    assert not ThresholdParams.simple("<", 0.3).breached(0.3)
    assert ThresholdParams.simple(">=", 1.0).breached(1.0)
    assert not ThresholdParams.simple(">", 1.0).breached(1.0)


def test_firing_clears_only_past_the_clear_value_for_clear_for() -> None:
    ev = ThresholdEvaluator(low_rule())
    run(ev, [(i * MIN, 0.2) for i in range(6)])  # firing at minute 5
    assert ev.firing
    # Inside the hysteresis band (0.3 <= v < 0.33): still firing however long it lasts.
    assert run(ev, [(t * MIN, 0.31) for t in range(6, 40)]) == []
    assert ev.phase is Phase.FIRING
    # Past the clear value, but a band sample at minute 45 restarts the clear run.
    band = [(t * MIN, 0.35) for t in range(40, 45)] + [(45 * MIN, 0.32)]
    assert run(ev, band) == []
    clear = [(t * MIN, 0.35) for t in range(46, 60)]
    assert run(ev, clear) == [(56 * MIN, Change.RESOLVED)]
    assert ev.phase is Phase.OK


def test_a_breach_while_clearing_keeps_the_alert_firing_without_a_new_firing() -> None:
    ev = ThresholdEvaluator(low_rule())
    run(ev, [(i * MIN, 0.2) for i in range(6)])
    assert run(ev, [(6 * MIN, 0.4), (7 * MIN, 0.4), (8 * MIN, 0.25), (9 * MIN, 0.4)]) == []
    assert ev.phase is Phase.CLEARING
    assert ev.clear_since_ms == 9 * MIN


def noisy(seed: int, center: float, sigma: float, n: int, start_min: int = 0) -> list:
    rng = random.Random(seed)
    return [((start_min + i) * MIN, rng.gauss(center, sigma)) for i in range(n)]


def test_a_value_hovering_at_the_limit_does_not_flap() -> None:
    ev = ThresholdEvaluator(low_rule())
    breach = [(i * MIN, 0.2) for i in range(10)]
    hover = noisy(1, 0.3, 0.01, 600, start_min=10)  # ten hours around the limit, σ 0.01
    assert sum(v >= 0.3 for _, v in hover) > 200  # it crosses the limit hundreds of times
    changes = run(ev, breach + hover)
    assert [c for _, c in changes] == [Change.PENDING, Change.FIRING]  # fired once, stays firing


def test_without_hysteresis_the_same_signal_would_flap() -> None:
    """The contrast that shows what hysteresis and clear_for are for."""
    bare = ThresholdParams.simple("<", 0.3, for_s=0, clear_for_s=0, flap_window_s=0)
    ev = ThresholdEvaluator(bare)
    changes = run(ev, [(0, 0.2), *noisy(1, 0.3, 0.01, 600, start_min=1)])
    assert sum(c is Change.FIRING for _, c in changes) > 50


def test_a_hovering_signal_before_firing_churns_pending_but_fires_only_on_a_held_run() -> None:
    samples = noisy(2, 0.315, 0.015, 600)  # just above the limit, dipping below it now and then
    changes = run(ThresholdEvaluator(low_rule()), samples)
    assert sum(c is Change.PENDING for _, c in changes) > 50  # it starts pending again and again
    held = longest_run(samples, lambda v: v < 0.3) >= 6  # six low samples in a row: five minutes
    assert (Change.FIRING in {c for _, c in changes}) == held


def longest_run(samples: list, breached) -> int:
    best = cur = 0
    for _, v in samples:
        cur = cur + 1 if breached(v) else 0
        best = max(best, cur)
    return best


def flap_params() -> ThresholdParams:
    return ThresholdParams.simple(
        "<",
        0.3,
        clear=0.33,
        for_s=60,
        clear_for_s=60,
        flap_max_refires=2,
        flap_window_s=3600,
        flap_stable_s=1800,
    )


def cycle(start_min: int) -> list:
    """Low for 3 minutes, then clear for 3: fires at +1 min, resolves at +4 min."""
    return [((start_min + i) * MIN, 0.2 if i < 3 else 0.4) for i in range(6)]


def test_flapping_is_detected_and_then_needs_a_long_stable_clear() -> None:
    ev = ThresholdEvaluator(flap_params())
    changes = run(ev, cycle(0) + cycle(6) + cycle(12))
    assert sum(c is Change.FIRING for _, c in changes) == 3
    assert sum(c is Change.RESOLVED for _, c in changes) == 3
    assert not ev.flapping  # two re-fires: not yet more than max_refires
    changes = run(ev, cycle(18))
    assert [c for _, c in changes] == [Change.PENDING, Change.FIRING]  # third re-fire: flapping
    assert ev.flapping
    assert ev.firing
    # Clear for a long time: resolves only after flap_stable_for (30 min), not clear_for (1 min).
    clear = [(t * MIN, 0.4) for t in range(24, 70)]
    changes = run(ev, clear)
    assert changes == [(51 * MIN, Change.RESOLVED)]  # clear since minute 21, + 30 min
    assert not ev.flapping


def test_flapping_needs_the_refires_within_the_window() -> None:
    ev = ThresholdEvaluator(flap_params())
    for start in (0, 30, 60, 90):  # four firings, but an hour and a half apart
        run(ev, cycle(start))
    assert not ev.flapping
    assert len(ev.fires) == 4  # bounded: at most max_refires + 2 kept


def test_excluded_flags_are_skipped_neither_breaching_nor_clear() -> None:
    ev = ThresholdEvaluator(low_rule())
    run(ev, [(0, 0.2), (MIN, 0.2)])
    # Maintenance (M) and calibration (C) samples with a clear value do not cancel the pending.
    assert run(ev, [(2 * MIN, 0.5, "M"), (3 * MIN, 0.5, "C")]) == []
    assert ev.phase is Phase.PENDING
    assert ev.skipped == 2
    assert run(ev, [(t * MIN, 0.2, "N") for t in range(4, 6)]) == [(5 * MIN, Change.FIRING)]
    # Nor do stopped (F) / fault (D) / comms (B) / manual (S) samples clear a firing one.
    assert run(ev, [(t * MIN, 0.5, f) for t, f in zip(range(6, 30), "FDBS" * 6, strict=True)]) == []
    assert ev.phase is Phase.FIRING
    assert ev.skipped == 26


def test_over_range_counts_as_an_exceedance_for_a_high_rule_and_clear_for_a_low_one() -> None:
    high = ThresholdEvaluator(ThresholdParams.simple(">", 1.0, clear=0.9))
    assert high.feed(0, 0.5, "T") is Change.FIRING  # whatever number came with it
    low = ThresholdEvaluator(ThresholdParams.simple("<", 0.3, for_s=0))
    assert low.feed(0, 0.1) is Change.FIRING
    assert low.feed(MIN, 0.1, "T") is Change.RESOLVED  # at least full scale: not low


def test_a_rule_can_choose_which_flags_count() -> None:
    only_normal = ThresholdParams.simple(">", 1.0, flags=frozenset({"N"}))
    ev = ThresholdEvaluator(only_normal)
    assert ev.feed(0, 5.0, "T") is None
    assert ev.skipped == 1


def test_late_and_out_of_order_samples_are_ignored_and_counted() -> None:
    ev = ThresholdEvaluator(low_rule())
    run(ev, [(i * MIN, 0.2) for i in range(3)])
    assert ev.feed(MIN, 0.5) is None  # older than the last: ignored, no cancel
    assert ev.feed(2 * MIN, 0.5) is None  # a replay of the last timestamp: ignored too
    assert ev.late == 2
    assert ev.phase is Phase.PENDING
    assert run(ev, [(t * MIN, 0.2) for t in range(3, 6)]) == [(5 * MIN, Change.FIRING)]


def test_levels_escalate_a_firing_condition() -> None:
    params = ThresholdParams.simple(
        ">", 2.5, clear=2.0, levels=[(25.0, Severity.EMERGENCY)], severity=Severity.CRITICAL
    )
    ev = ThresholdEvaluator(params)
    assert ev.feed(0, 3.0) is Change.FIRING
    assert ev.severity is Severity.CRITICAL
    assert ev.feed(10_000, 30.0) is Change.ESCALATED
    assert ev.severity is Severity.EMERGENCY
    assert ev.feed(20_000, 3.0) is None
    assert ev.severity is Severity.EMERGENCY


def test_inapplicable_readings_skip_or_clear_as_the_rule_says() -> None:
    skip = ThresholdEvaluator(ThresholdParams.simple(">", 2.5, clear=2.0))
    skip.feed(0, 9.0)
    assert skip.feed(10_000, 0.2, applicable=False) is None
    assert skip.firing
    clears = ThresholdEvaluator(ThresholdParams.simple("<", 121, inapplicable_clears=True))
    clears.feed(0, 119.0)
    assert clears.feed(10_000, 60.0, applicable=False) is Change.RESOLVED


def test_restore_resumes_a_firing_condition_so_clear_for_still_applies() -> None:
    ev = ThresholdEvaluator(low_rule())
    ev.restore(Phase.FIRING, since_ms=0, severity=Severity.CRITICAL)
    assert ev.feed(100 * MIN, 0.5) is None
    assert ev.phase is Phase.CLEARING
    assert ev.feed(110 * MIN, 0.5) is Change.RESOLVED


def test_memory_per_series_is_a_few_fields() -> None:
    ev = ThresholdEvaluator(low_rule())
    assert not hasattr(ev, "__dict__")
    assert len(ThresholdEvaluator.__slots__) <= 12
    assert sys.getsizeof(ev) < 200


# ---- property: firing transitions <= breach runs that held `for` ---------------------------------


def held_runs(samples: list[tuple[int, float, str | None]], params: ThresholdParams) -> int:
    """Maximal runs of consecutive breaching samples (as the evaluator sees them) lasting `for`."""
    count = 0
    run_start: int | None = None
    last_ts: int | None = None
    counted = False
    for ts, value, flag in samples:
        if last_ts is not None and ts <= last_ts:
            continue
        last_ts = ts
        if flag is not None and flag not in params.flags:
            continue
        breached = params.high if flag == "T" else params.breached(value)
        if not breached:
            run_start, counted = None, False
            continue
        if run_start is None:
            run_start = ts
        if not counted and ts - run_start >= params.for_ms:
            count += 1
            counted = True
    return count


sample = st.tuples(
    st.integers(min_value=0, max_value=10 * MIN),  # step from the previous sample (0: a replay)
    st.floats(min_value=0.0, max_value=0.6, allow_nan=False),
    st.sampled_from([None, None, None, "N", "T", "M", "D"]),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(sample, min_size=1, max_size=150),
    for_min=st.integers(min_value=0, max_value=6),
    clear_for_min=st.integers(min_value=0, max_value=6),
    clear_gap=st.floats(min_value=0.0, max_value=0.1),
    jitter=st.lists(st.integers(min_value=-3 * MIN, max_value=0), max_size=150),
)
def test_firings_never_exceed_breach_runs_that_held_for(
    steps: list, for_min: int, clear_for_min: int, clear_gap: float, jitter: list[int]
) -> None:
    params = ThresholdParams.simple(
        "<", 0.3, clear=0.3 + clear_gap, for_s=for_min * 60, clear_for_s=clear_for_min * 60
    )
    samples = []
    ts = 0
    for i, (step, value, flag) in enumerate(steps):
        ts += step
        late = jitter[i] if i < len(jitter) else 0  # some samples arrive out of order
        samples.append((ts + late, value, flag))
    ev = ThresholdEvaluator(params)
    firings = sum(ev.feed(t, v, f) is Change.FIRING for t, v, f in samples)
    assert firings <= held_runs(samples, params)


# ---- the shipped rules, end to end on a scenario's ground truth ----------------------------------


def test_shipped_rules_alert_a_scenario_breach_within_one_interval_after_for() -> None:
    from simulators.faults import Malformed, generate, ground_truth
    from simulators.scenario import load_scenario

    scenario = load_scenario("faults")
    start = scenario.start
    window = (start, start + timedelta(hours=14))  # fault offsets count from the run's start
    device = scenario.device("wp-plant-1")
    site = scenario.site(device.site)
    truth = [
        row
        for row in ground_truth(scenario.name, scenario.plan(start), start.timestamp())
        if row["device"] == "wp-plant-1" and row["type"] == "threshold"
    ]
    assert truth
    assert truth[0]["expected_alert"] == "threshold:free_chlorine_mg_l:low"
    effect = datetime.fromisoformat(truth[0]["effect_start"].replace("Z", "+00:00"))

    rules = load_rules().for_device(device.kind, site.venue_type, dict(site.attributes or {}))
    kind = default_catalog().kinds[device.kind]
    engine = ThresholdAlerting(AlertBook())
    fired = []
    for record in generate(scenario, *window, devices=["wp-plant-1"]):
        if record.values is None or isinstance(record.values, Malformed):
            continue
        fields = {k: v for k, v in record.values.items() if k in kind.quantities}
        reading = Reading(
            "bench-water", site.id, device.id, device.kind, site.region,
            round(record.ts.timestamp() * 1000), fields,
        )  # fmt: skip
        for t in engine.observe(reading, rules):
            if t.to_state is AlertState.FIRING:
                alert = engine.book.alert(t.alert_id)
                fired.append((t.at, alert.labels["expected_alert"], t.key.rule))
    assert [(e, r) for _, e, r in fired] == [
        ("threshold:free_chlorine_mg_l:low", "dw.free_cl.outlet.low")
    ]
    delay = (fired[0][0] - effect).total_seconds()
    rule = load_rules()["dw.free_cl.outlet.low"]
    assert rule.for_s <= delay <= rule.for_s + 60 + 1  # probes report every 60 s
    assert fired[0][0].tzinfo is UTC
