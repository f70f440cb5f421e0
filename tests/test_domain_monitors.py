"""Domain monitors: sterilizer cycles over the simulator, personal dose, overdue records."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from alerting.domain import (
    DoseMonitor,
    Finding,
    RecordEvent,
    RecordsMonitor,
    SterilizerMonitor,
    default_sterilization_table,
    load_record_rules,
)
from alerting.model import Severity
from protocols import steam
from simulators.faults import generate, ground_truth
from simulators.scenario import load_scenario
from simulators.sterilizer import SterilizerSignal, SterilizerSpec

CST = timezone(timedelta(hours=8))
H = 3600.0
D = 86400.0

# ---- sterilizer: the hospital scenario, every fault type on its own device -----------------------


@pytest.fixture(scope="module")
def hospital() -> dict[str, Any]:
    """Two days of the hospital scenario's four sterilizers through one monitor each."""
    scenario = load_scenario("hospital")
    start, end = scenario.time_range(None, None, None)
    planned = [d for d in scenario.plan(start) if d.kind == "sterilizer"]
    truth = ground_truth(scenario.name, planned, start.timestamp(), end.timestamp())
    monitors = {d.id: SterilizerMonitor(d.id) for d in planned}
    findings: dict[str, list[Finding]] = defaultdict(list)
    for record in generate(scenario, devices=list(monitors)):
        if isinstance(record.values, dict):
            findings[record.device] += monitors[record.device].update(
                record.ts.timestamp(), record.values
            )
    return {"monitors": monitors, "findings": findings, "truth": truth, "planned": planned}


def test_each_sterilizer_fault_fails_exactly_its_cycles(hospital: dict[str, Any]) -> None:
    expected: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in hospital["truth"]:
        for cycle in row["detail"].get("cycles", []):
            expected[row["device"]][cycle].add(row["expected_alert"])
    assert sum(len(v) for v in expected.values()) >= 15  # the scenario really has faults
    for device, monitor in hospital["monitors"].items():
        failed = {r.cycle_id: set(r.reasons) for r in monitor.records if not r.passed}
        assert failed == {c: a for c, a in expected[device].items()}, device


def test_bd_test_missing_on_exactly_the_skipped_days(hospital: dict[str, Any]) -> None:
    skipped = {
        (row["device"], datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(CST).date())
        for row in hospital["truth"]
        for t in row["detail"].get("missing_bd_tests", [])
    }
    raised = {
        (f.subject, datetime.fromisoformat(f.detail["start"]).astimezone(CST).date())
        for findings in hospital["findings"].values()
        for f in findings
        if f.rule == "sterilizer:bd_test_missing" and f.active
    }
    assert skipped
    assert raised == skipped
    # the next day's B-D test clears it
    cleared = [
        f
        for f in hospital["findings"]["rj-ster-1"]
        if f.rule == "sterilizer:bd_test_missing" and not f.active
    ]
    assert len(cleared) == 1


def test_findings_name_the_rule_and_clear_on_a_good_cycle(hospital: dict[str, Any]) -> None:
    temp_low = hospital["findings"]["rj-ster-3"]
    raised = [f for f in temp_low if f.active]
    assert {f.rule for f in raised} == {"sterilizer:temperature_low"}
    assert all(f.severity is Severity.CRITICAL and f.limit == 121.0 for f in raised)
    assert all(f.value is not None and f.value < 121.0 for f in raised)
    assert "WS 310.3" in (raised[0].standard or "")
    assert [f.active for f in temp_low][-1] is False  # the next good cycle cleared it
    air = [f for f in hospital["findings"]["kb-ster-1"] if f.active]
    assert all(f.value is not None and 10.0 < f.value < 20.0 for f in air)  # +15 kPa injected


def test_cycle_records_of_a_healthy_day() -> None:
    """A fault-free pre-vacuum sterilizer over a day: every cycle passes, the first is the B-D
    test, programmes come out as the simulator ran them, holds are measured to the second."""
    signal = SterilizerSignal(SterilizerSpec(programme_mix={"134": 0.5, "121": 0.5}), seed=11)
    day0 = datetime(2026, 3, 3, tzinfo=CST)
    truth = {c.cycle_id: c for c in signal.cycles(day0, day0 + timedelta(days=1))}
    monitor = SterilizerMonitor("st-1")
    findings = []
    t = day0.timestamp() + 3.7
    while t < day0.timestamp() + D:
        findings += monitor.update(t, signal.sample_ts(t))
        t += 10.0
    records = {r.cycle_id: r for r in monitor.records}
    assert findings == []
    assert set(records) == set(truth)
    assert len(records) >= 8
    first = min(records)
    assert records[first].is_bowie_dick
    assert records[first].programme == "bowie_dick"
    names = {"bowie_dick": "bowie_dick", "134": "prevac_134", "121": "prevac_121"}
    for cycle_id, record in records.items():
        sim = truth[cycle_id]
        assert record.passed, record
        assert record.programme == names[sim.programme]
        assert record.hold_s == pytest.approx((sim.hold_end - sim.hold_start).total_seconds())
        assert record.setpoint_c <= record.min_temp_c <= record.max_temp_c <= record.setpoint_c + 3
        assert abs(record.max_saturation_excess_kpa) < 5.0


def _cycle(
    monitor: SterilizerMonitor,
    t0: float,
    cycle_id: str,
    *,
    hold_s: float = 240.0,
    temp: float = 135.0,
    excess: float = 0.0,
    prevacuum: bool = True,
    end: str = "complete",
) -> list[Finding]:
    """A synthetic cycle every 10 s: phases, a flat hold, then ``end``."""
    out: list[Finding] = []
    t = t0

    def feed(phase: str, n: int, temp_c: float, p: float) -> None:
        nonlocal t
        for _ in range(n):
            out.extend(
                monitor.update(
                    t,
                    {
                        "cycle_phase": phase,
                        "cycle_id": cycle_id,
                        "temperature_c": temp_c,
                        "pressure_kpa": p,
                    },
                )
            )
            t += 10.0

    if prevacuum:
        feed("prevacuum", 30, 80.0, 20.0)
    feed("heating", 20, 110.0, 150.0)
    feed("sterilizing", round(hold_s / 10.0), temp, steam.psat_kpa(temp) + excess)
    if end == "aborted":
        feed("aborted", 3, 100.0, 101.0)
        return out
    feed("exhaust", 10, 105.0, 110.0)
    feed("drying", 20, 80.0, 10.0)
    feed(end, 3, 80.0, 101.0)
    return out


def test_sterilizer_synthetic_failures() -> None:
    monitor = SterilizerMonitor("st-x")
    t0 = datetime(2026, 3, 3, 7, 30, tzinfo=CST).timestamp()
    assert _cycle(monitor, t0, "20260303-01", hold_s=210.0) == []  # the B-D test
    hot = _cycle(monitor, t0 + H, "20260303-02", temp=137.5)
    assert [f.rule for f in hot] == ["sterilizer:temperature_high"]
    dry = _cycle(monitor, t0 + 2 * H, "20260303-03", excess=-12.0)
    assert [f.rule for f in dry] == ["sterilizer:steam_superheated"]
    aborted = _cycle(monitor, t0 + 3 * H, "20260303-04", hold_s=60.0, end="aborted")
    assert {f.rule for f in aborted if f.active} == {
        "sterilizer:cycle_aborted",
        "sterilizer:hold_too_short",
    }
    ok = _cycle(monitor, t0 + 4 * H, "20260303-05")
    assert {f.rule for f in ok if not f.active} == {
        "sterilizer:temperature_high",
        "sterilizer:steam_superheated",
        "sterilizer:cycle_aborted",
        "sterilizer:hold_too_short",
    }
    dressings = _cycle(
        monitor, t0 + 5 * H, "20260303-06", hold_s=1680.0, temp=122.0, prevacuum=False
    )
    assert [f.rule for f in dressings] == ["sterilizer:hold_too_short"]
    assert monitor.records[-1].programme == "gravity_121_dressings"
    assert monitor.records[-1].required_hold_s == 1800.0


def test_bd_rule_needs_the_start_of_the_day() -> None:
    """A monitor started mid-day cannot know whether the B-D test ran before it; cycle ids
    numbered from 01 tell it, ids of another format do not."""
    t0 = datetime(2026, 3, 3, 12, 0, tzinfo=CST).timestamp()
    late = SterilizerMonitor("st-y")
    assert _cycle(late, t0, "20260303-05") == []  # mid-day, 5th cycle: not judged
    assert [f.rule for f in _cycle(late, t0 + D - 4 * H, "20260304-01")] == [
        "sterilizer:bd_test_missing"
    ]  # next day seen from its start: judged
    plain = SterilizerMonitor("st-z")
    assert _cycle(plain, t0, "A17") == []
    gravity = SterilizerMonitor("st-g")
    assert (
        _cycle(gravity, t0 - 4 * H, "20260303-01", hold_s=1200.0, temp=122.0, prevacuum=False) == []
    )  # a gravity sterilizer needs no B-D test


def test_cycle_id_change_and_flush_close_cycles() -> None:
    monitor = SterilizerMonitor("st-f")
    t0 = datetime(2026, 3, 3, 7, 30, tzinfo=CST).timestamp()
    for i in range(30):
        monitor.update(
            t0 + 10 * i,
            {
                "cycle_phase": "sterilizing",
                "cycle_id": "20260303-01",
                "temperature_c": 135.0,
                "pressure_kpa": 313.0,
            },
        )
    monitor.update(
        t0 + 400,
        {
            "cycle_phase": "prevacuum",
            "cycle_id": "20260303-02",
            "temperature_c": 80.0,
            "pressure_kpa": 20.0,
        },
    )
    assert [r.cycle_id for r in monitor.records] == ["20260303-01"]
    monitor.flush(t0 + 500)
    assert [r.cycle_id for r in monitor.records] == ["20260303-01", "20260303-02"]
    assert monitor.records[-1].reasons == ("sterilizer:hold_too_short",)  # no hold seen


def test_sterilization_table_names_its_sources() -> None:
    table = default_sterilization_table()
    holds = {p.id: (p.setpoint_c, p.min_hold_s) for p in table.programmes}
    assert holds["prevac_134"] == (134, 240)
    assert holds["gravity_121_instruments"] == (121, 1200)
    assert holds["gravity_121_dressings"] == (121, 1800)
    assert table.bowie_dick.hold_s == 210
    assert all(p.standard and p.clause and p.confidence for p in table.programmes)


# ---- personal dose -------------------------------------------------------------------------------


def _month_start(year: int, month: int) -> float:
    return datetime(year, month, 1, tzinfo=CST).timestamp()


def test_dose_investigation_level_and_period_reset() -> None:
    monitor = DoseMonitor("dos-1", period_months=1)
    t = _month_start(2026, 3)
    findings = []
    for k in range(30):  # 0.02 mSv a day: 0.6 mSv by the month's end, level 5/12 = 0.417
        findings += monitor.update(t + k * D, 0.02 * k)
    raised = [f for f in findings if f.active]
    assert [f.rule for f in raised] == ["dose:investigation_level"]
    assert raised[0].severity is Severity.WARNING
    assert raised[0].limit == pytest.approx(5.0 / 12.0)
    assert raised[0].value == pytest.approx(0.42)
    cleared = monitor.update(_month_start(2026, 4), 0.0)  # the counter resets: a new period
    assert [(f.rule, f.active) for f in cleared] == [("dose:investigation_level", False)]
    assert len(monitor.closed) == 1
    assert monitor.closed[0].dose_msv == pytest.approx(0.58)
    assert monitor.update(_month_start(2026, 4) + 3600, 0.0005) == []  # small noise: no reset
    quarterly = DoseMonitor("dos-q", period_months=3)
    assert quarterly.update(t, 1.2) == []  # under 1.25 mSv a quarter
    assert [f.rule for f in quarterly.update(t + D, 1.3)] == ["dose:investigation_level"]


def test_dose_rolling_twelve_months_and_calendar_year() -> None:
    monitor = DoseMonitor("dos-2", period_months=1)
    seen: list[Finding] = []
    for month in range(12):  # 1.8 mSv every month of 2026
        start = _month_start(2026, month + 1)
        seen += monitor.update(start, 0.0)
        seen += monitor.update(start + 20 * D, 1.8)
    rolling = [f for f in seen if f.rule == "dose:rolling_12_months"]
    assert rolling
    assert rolling[0].active
    assert rolling[0].severity is Severity.CRITICAL
    assert rolling[0].value == pytest.approx(21.6)
    assert rolling[0].limit == 20.0
    assert datetime.fromtimestamp(rolling[0].at.timestamp(), CST).month == 12
    assert not [f for f in seen if f.rule == "dose:calendar_year"]
    big = monitor.update(_month_start(2026, 12) + 25 * D, 31.0)  # an accident in December
    assert {(f.rule, f.severity) for f in big} == {("dose:calendar_year", Severity.EMERGENCY)}
    sums = monitor.sums(_month_start(2026, 12) + 25 * D)
    assert sums["calendar_year"] == pytest.approx(11 * 1.8 + 31.0)
    new_year = monitor.update(_month_start(2027, 1), 0.0)
    assert ("dose:calendar_year", False) in {(f.rule, f.active) for f in new_year}
    assert monitor.sums(_month_start(2027, 1))["rolling_12_months"] > 20.0  # still in 12 months


def test_dose_monitor_over_the_simulated_dosimeter() -> None:
    """The simulator's dosimeter resets at local midnight on the 1st: two periods close, no
    finding for a typical fluoroscopy worker (~1–1.5 mSv a year)."""
    scenario = load_scenario("hospital")
    start, _ = scenario.time_range(None, None, None)
    device = next(d for d in scenario.plan(start) if d.id == "rj-dsa-1-dos-1")
    signal = device.new_signal()
    monitor = DoseMonitor(device.id, period_months=1)
    t0 = datetime(2026, 10, 20, tzinfo=CST).timestamp()
    findings = []
    last: dict[str, float] = {}
    for k in range(24 * 45):
        ts = t0 + k * H
        reading = signal.sample_ts(ts)
        findings += monitor.update(ts, reading["dose_msv"])
        last[datetime.fromtimestamp(ts, CST).strftime("%Y-%m")] = reading["dose_msv"]
    assert findings == []
    assert [datetime.fromtimestamp(p.start, CST).day for p in monitor.closed] == [20, 1]
    assert monitor.closed[-1].dose_msv == last["2026-11"] > 0.0
    assert monitor.state_size() < 20


# ---- records not uploaded in time ----------------------------------------------------------------


def test_medical_waste_storage_warns_at_24h_and_escalates_at_48h() -> None:
    monitor = RecordsMonitor()
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST).timestamp()
    assert monitor.event(RecordEvent("h-1", "medical_waste_collected", t0)) == []
    assert monitor.tick(t0 + 23 * H) == []
    warn = monitor.tick(t0 + 24 * H + 60)
    assert [(f.rule, f.severity, f.subject) for f in warn] == [
        ("record:mw.storage", Severity.WARNING, "h-1")
    ]
    assert monitor.tick(t0 + 30 * H) == []  # already raised: no repeat
    alarm = monitor.tick(t0 + 48 * H)
    assert [(f.rule, f.severity) for f in alarm] == [("record:mw.storage", Severity.CRITICAL)]
    assert "第十七条" in (alarm[0].standard or "")
    assert alarm[0].limit == 48.0
    done = monitor.event(RecordEvent("h-1", "medical_waste_transferred", t0 + 49 * H))
    assert {(f.rule, f.active) for f in done} == {("record:mw.storage", False)}
    # the hand-over starts the 24-h clock for disinfecting the containers
    late = monitor.tick(t0 + 74 * H)
    assert [f.rule for f in late] == ["record:mw.container_disinfection"]


def test_medical_waste_on_time_and_matched_by_code() -> None:
    monitor = RecordsMonitor()
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST).timestamp()
    for i, code in enumerate(("bag-1", "bag-2")):
        monitor.event(RecordEvent("h-2", "medical_waste_produced", t0 + i * H, ref=code))
    monitor.event(RecordEvent("h-2", "medical_waste_collected", t0 + 20 * H, ref="bag-1"))
    overdue = monitor.tick(t0 + 25 * H + 60)  # bag-2 was not collected: 24 h from 10:00
    assert [(f.rule, f.detail["waiting"]) for f in overdue] == [("record:mw.collection", 1)]
    cleared = monitor.event(RecordEvent("h-2", "medical_waste_collected", t0 + 26 * H, ref="bag-2"))
    assert [(f.rule, f.active) for f in cleared] == [("record:mw.collection", False)]
    ontime = RecordsMonitor()
    ontime.event(RecordEvent("h-3", "medical_waste_produced", t0))
    ontime.event(RecordEvent("h-3", "medical_waste_collected", t0 + 8 * H))
    ontime.event(RecordEvent("h-3", "medical_waste_transferred", t0 + 30 * H))
    ontime.event(RecordEvent("h-3", "container_disinfected", t0 + 31 * H))
    assert ontime.tick(t0 + 10 * D) == []


def test_box_disinfection_ignores_the_bag_code_of_the_hand_over() -> None:
    """A coded hand-over (the bag's code) is followed by an uncoded or differently coded box
    disinfection: the rule says ``match_ref: false``, so either clears it; the storage rule
    still matches bags by code."""
    monitor = RecordsMonitor()
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST).timestamp()
    monitor.event(RecordEvent("h-7", "medical_waste_collected", t0, ref="bag-9"))
    monitor.event(RecordEvent("h-7", "medical_waste_transferred", t0 + 20 * H, ref="bag-9"))
    monitor.event(RecordEvent("h-7", "container_disinfected", t0 + 21 * H, ref="box-3"))
    monitor.event(RecordEvent("h-7", "medical_waste_collected", t0 + 22 * H, ref="bag-10"))
    monitor.event(RecordEvent("h-7", "medical_waste_transferred", t0 + 23 * H, ref="bag-11"))
    monitor.event(RecordEvent("h-7", "container_disinfected", t0 + 24 * H))
    overdue = monitor.tick(t0 + 47 * H)
    # bag-10 was collected but never handed over (bag-11 was another bag): only that is late
    assert [f.rule for f in overdue] == ["record:mw.storage"]


def test_recurring_disinfection_and_wastewater_records() -> None:
    monitor = RecordsMonitor()
    t0 = datetime(2026, 3, 2, 0, 0, tzinfo=CST).timestamp()
    monitor.watch("h-4", since=t0, rules=["wastewater.residual_chlorine"])
    assert monitor.tick(t0 + 11 * H) == []
    due = monitor.tick(t0 + 12 * H)
    assert [(f.rule, f.subject) for f in due] == [("record:wastewater.residual_chlorine", "h-4")]
    assert "GB 18466" in (due[0].standard or "")
    back = monitor.event(RecordEvent("h-4", "wastewater_chlorine_check", t0 + 13 * H))
    assert [f.active for f in back] == [False]
    # a site posting a disinfection record once is expected to keep posting them
    monitor.event(RecordEvent("h-5", "disinfection", t0))
    assert monitor.tick(t0 + 20 * H) == []
    assert [f.rule for f in monitor.tick(t0 + 24.5 * H)] == ["record:disinfection.daily"]
    with pytest.raises(ValueError, match="unknown record rules"):
        monitor.watch("h-4", since=t0, rules=["nope"])


def test_late_upload_of_an_old_trigger_is_overdue_at_once() -> None:
    monitor = RecordsMonitor()
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST).timestamp()
    found = monitor.event(RecordEvent("h-6", "medical_waste_collected", t0), now=t0 + 50 * H)
    assert [(f.rule, f.severity) for f in found] == [("record:mw.storage", Severity.CRITICAL)]


def test_record_rules_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "records.yaml"
    path.write_text(
        "rules:\n  - {id: x, type: follow_up, trigger: a, levels: "
        "[{after: 1h, severity: warning, standard: s, clause: c, confidence: A}]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"records\.yaml: rules\.0.*trigger.*expect"):
        load_record_rules(path)
    rules = load_record_rules()
    assert all(lv.standard and lv.confidence for r in rules.rules for lv in r.levels)
    storage = next(r for r in rules.rules if r.id == "mw.storage")
    assert [lv.after for lv in storage.levels] == [24 * H, 48 * H]


def test_findings_carry_alert_keys() -> None:
    f = Finding("sterilizer:hold_too_short", "st-1", datetime.now(UTC), Severity.CRITICAL, "m")
    assert (f.key.device, f.key.rule) == ("st-1", "sterilizer:hold_too_short")
    assert math.isclose(
        DoseMonitor("d").level(next(x for x in DoseMonitor("d").limits if x.scope == "period")),
        5 / 12,
    )


def test_dose_limits_are_data_and_a_bad_file_names_the_entry(tmp_path: Path) -> None:
    from alerting.domain.dose import DOSE_LIMITS, DOSE_LIMITS_FILE, load_dose_limits

    assert {(lim.rule, lim.scope, lim.limit_msv) for lim in DOSE_LIMITS} == {
        ("dose:investigation_level", "period", 5.0),
        ("dose:rolling_12_months", "rolling_12_months", 20.0),
        ("dose:calendar_year", "calendar_year", 50.0),
        ("dose:five_years", "five_years", 100.0),
    }
    text = DOSE_LIMITS_FILE.read_text(encoding="utf-8")
    path = tmp_path / "dose_limits.yaml"
    path.write_text(text.replace("scope: calendar_year", "scope: fortnight"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dose_limits\.yaml: limits\.2\.scope"):
        load_dose_limits(path)
    path.write_text(text.replace("limit_msv: 20.0", "limit_msv: -1"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"limits\.1\.limit_msv"):
        load_dose_limits(path)
    path.write_text(text.replace("rule: dose:five_years", "rule: dose:calendar_year"), "utf-8")
    with pytest.raises(ValueError, match="duplicate rules: dose:calendar_year"):
        load_dose_limits(path)
    # a limit changed in the file is the limit the monitor applies
    path.write_text(text.replace("limit_msv: 20.0", "limit_msv: 10.0"), encoding="utf-8")
    monitor = DoseMonitor("dos-1", limits=load_dose_limits(path))
    t0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
    findings = monitor.update(t0, 12.0)
    assert "dose:rolling_12_months" in {f.rule for f in findings if f.active}
