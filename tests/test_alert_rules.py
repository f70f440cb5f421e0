"""Threshold rules as data: the shipped files, load-time validation, selection, site overrides."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from alerting.model import Severity
from alerting.rules import (
    RULES_DIR,
    Override,
    RuleError,
    delete_override,
    load_rules,
    parse_duration,
    save_override,
    site_overrides,
)
from gateway.registry.database import Registry, sqlite_url
from gateway.registry.models import AuditEntry, RuleOverride, Site, Tenant
from simulators.faults import EXPECTED_ALERTS

# ---- the shipped rules -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules():  # type: ignore[no-untyped-def]
    return load_rules()


def test_every_shipped_rule_file_loads_and_carries_its_authority(rules) -> None:  # type: ignore[no-untyped-def]
    files = {p.name for p in RULES_DIR.glob("*.yaml")}
    assert files == {
        "drinking_water.yaml",
        "pools.yaml",
        "public_places_air.yaml",
        "radiation.yaml",
        "sterilization.yaml",
    }
    assert {rule.source for rule in rules} == files
    for rule in rules:
        assert rule.standard, rule.id
        assert rule.clause, rule.id
        assert rule.confidence in ("A", "B", "C"), rule.id
        assert rule.data_flags == frozenset("NT"), rule.id
        assert rule.expected_alert.startswith("threshold:") or rule.expected_alert in set(
            EXPECTED_ALERTS.values()
        ), rule.id


def test_grade_c_limits_are_flagged_for_a_supervisor(rules) -> None:  # type: ignore[no-untyped-def]
    high = rules["dw.free_cl.high"]
    assert high.needs_verification
    assert "unverified" in high.describe(2.4, "mg/L")
    assert not rules["dw.free_cl.outlet.low"].needs_verification


@pytest.mark.parametrize(
    ("rule_id", "comparator", "value", "severity", "confidence"),
    [
        ("dw.free_cl.outlet.low", "<", 0.3, Severity.CRITICAL, "B"),
        ("dw.free_cl.tap.low", "<", 0.05, Severity.CRITICAL, "B"),
        ("dw.free_cl.high", ">", 2.0, Severity.CRITICAL, "C"),
        ("dw.turbidity.high", ">", 1.0, Severity.CRITICAL, "B"),
        ("dw.ph.low", "<", 6.5, Severity.CRITICAL, "B"),
        ("dw.ph.high", ">", 8.5, Severity.CRITICAL, "B"),
        ("pool.free_cl.low", "<", 0.3, Severity.CRITICAL, "B"),
        ("pool.free_cl.high", ">", 1.0, Severity.CRITICAL, "B"),
        ("pool.combined_cl.high", ">", 0.4, Severity.CRITICAL, "B"),
        ("pool.ph.low", "<", 7.0, Severity.CRITICAL, "B"),
        ("pool.ph.high", ">", 7.8, Severity.CRITICAL, "B"),
        ("pool.orp.low", "<", 650, Severity.CRITICAL, "B"),
        ("pool.turbidity.high", ">", 1.0, Severity.CRITICAL, "B"),
        ("pool.water_temperature.low", "<", 23, Severity.WARNING, "C"),
        ("pool.water_temperature.high", ">", 30, Severity.WARNING, "C"),
        ("air.co2.rest.high", ">", 1000, Severity.CRITICAL, "B"),
        ("air.co2.other.high", ">", 1500, Severity.CRITICAL, "B"),
        ("air.pm10.high", ">", 150, Severity.CRITICAL, "B"),
        ("air.pm25.high", ">", 75, Severity.WARNING, "C"),
        ("air.hcho.high", ">", 0.10, Severity.CRITICAL, "B"),
        ("air.humidity.low", "<", 40, Severity.WARNING, "B"),
        ("air.humidity.high", ">", 65, Severity.WARNING, "B"),
        ("rad.h10.fluoroscopy.high", ">", 2.5, Severity.CRITICAL, "B"),
        ("rad.h10.ct_dental.high", ">", 2.5, Severity.CRITICAL, "B"),
        ("rad.h10.radiography.high", ">", 25, Severity.CRITICAL, "B"),
        ("ster.hold.temperature.low", "<", 121, Severity.CRITICAL, "C"),
    ],
)
def test_the_standards_limits_are_encoded(  # type: ignore[no-untyped-def]
    rules, rule_id: str, comparator: str, value: float, severity: Severity, confidence: str
) -> None:
    rule = rules[rule_id]
    assert (rule.comparator, rule.value, rule.severity, rule.confidence) == (
        comparator,
        value,
        severity,
        confidence,
    )


def test_radiation_rules_are_gated_on_the_beam(rules) -> None:  # type: ignore[no-untyped-def]
    rule = rules["rad.h10.fluoroscopy.high"]
    assert rule.applicable({"dose_rate_usv_h": 9.0, "beam_on": True})
    assert not rule.applicable({"dose_rate_usv_h": 9.0, "beam_on": False})
    assert not rule.applicable({"dose_rate_usv_h": 9.0})  # no interlock signal: not judged
    assert rule.inapplicable == "skip"
    assert rule.levels == ((25.0, Severity.EMERGENCY),)
    assert rules["ster.hold.temperature.low"].inapplicable == "clear"


def test_expected_alerts_match_the_simulators_vocabulary(rules) -> None:  # type: ignore[no-untyped-def]
    assert rules["dw.free_cl.outlet.low"].expected_alert == "threshold:free_chlorine_mg_l:low"
    assert rules["dw.turbidity.high"].expected_alert == "threshold:turbidity_ntu:high"
    assert rules["pool.ph.high"].expected_alert == "threshold:ph:high"
    assert rules["rad.h10.ct_dental.high"].expected_alert == EXPECTED_ALERTS["interlock_failure"]
    assert rules["ster.hold.temperature.low"].expected_alert == EXPECTED_ALERTS["temperature_low"]


def test_docs_list_every_shipped_rule(rules) -> None:  # type: ignore[no-untyped-def]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "alerting.md").read_text()
    missing = [rule.id for rule in rules if f"| `{rule.id}` |" not in docs]
    assert missing == [], "add these rules to the table in docs/alerting.md"


# ---- selection -----------------------------------------------------------------------------------


def ids(rules, *args) -> set[str]:  # type: ignore[no-untyped-def]
    return {rule.id for rule in rules.for_device(*args)}


def test_for_device_selects_by_kind_venue_and_disinfectant(rules) -> None:  # type: ignore[no-untyped-def]
    outlet = ids(rules, "water_probe", "water_plant_outlet", {"disinfectant": "chlorine"})
    assert {"dw.free_cl.outlet.low", "dw.free_cl.high", "dw.turbidity.high"} <= outlet
    assert "dw.free_cl.tap.low" not in outlet
    tap = ids(rules, "water_probe", "tap", {"disinfectant": "chlorine"})
    assert "dw.free_cl.tap.low" in tap
    assert "dw.free_cl.outlet.low" not in tap
    assert "dw.free_cl.tap.low" in ids(rules, "water_station", "secondary_supply", {})
    # A site that declares no disinfectant is watched as chlorinated; a chloraminating one is not.
    assert "dw.free_cl.outlet.low" in ids(rules, "water_probe", "water_plant_outlet", None)
    chloramine = ids(rules, "water_probe", "water_plant_outlet", {"disinfectant": "chloramine"})
    assert "dw.free_cl.outlet.low" not in chloramine
    assert {"dw.total_cl.outlet.low", "dw.total_cl.high", "dw.free_cl.high"} <= chloramine
    # Chlorine dioxide rules only where declared, and only for kinds that measure it.
    clo2 = {"disinfectant": "chlorine_dioxide"}
    assert "dw.clo2.high" in ids(rules, "water_probe", "tap", clo2)
    assert "dw.clo2.high" not in ids(rules, "water_station", "tap", clo2)
    # The turbidity exception for small supplies.
    small = ids(rules, "water_probe", "tap", {"small_supply": True})
    assert "dw.turbidity.small_supply.high" in small
    assert "dw.turbidity.high" not in small
    # No drinking-water rules on a pool monitor, nor at a pool.
    assert not any(i.startswith("dw.") for i in ids(rules, "pool_monitor", "pool", {}))
    assert not any(i.startswith("dw.") for i in ids(rules, "water_probe", "pool", {}))


def test_for_device_selects_the_radiation_clause_by_room_type(rules) -> None:  # type: ignore[no-untyped-def]
    room = {"shielded": True}
    assert ids(rules, "dose_rate_monitor", "xray_room", {**room, "room_type": "dsa"}) == {
        "rad.h10.fluoroscopy.high"
    }
    assert ids(rules, "dose_rate_monitor", "xray_room", {**room, "room_type": "dr"}) == {
        "rad.h10.radiography.high"
    }
    assert ids(rules, "dose_rate_monitor", "xray_room", room) == {"rad.h10.ct_dental.high"}
    assert ids(rules, "dose_rate_monitor", "xray_room", {"shielded": False}) == set()
    assert ids(rules, "dosimeter", "xray_room", room) == set()  # personal dose: not these rules


def test_for_device_selects_air_limits_by_venue_and_business(rules) -> None:  # type: ignore[no-untyped-def]
    hotel = ids(rules, "air_monitor", "hotel", {})
    assert "air.co2.rest.high" in hotel
    assert "air.co2.other.high" not in hotel
    office = ids(rules, "air_monitor", "public_place", {"business": "office"})
    assert "air.co2.other.high" in office
    assert "air.nh3.other.high" in office
    barber = ids(rules, "air_monitor", "public_place", {"business": "barber"})
    assert "air.nh3.barber.high" in barber
    assert "air.nh3.other.high" not in barber
    assert "air.air_speed.shops.high" in barber
    assert "air.air_speed.other.high" not in barber
    assert "air.h2s.sulphur_spring.high" in ids(
        rules, "air_monitor", "bath", {"sulphur_spring": True}
    )
    assert "air.h2s.sulphur_spring.high" not in ids(rules, "air_monitor", "bath", {})
    assert "air.humidity.pool.high" in ids(rules, "air_monitor", "pool", {})


def test_for_device_caches_per_relevant_context_only(rules) -> None:  # type: ignore[no-untyped-def]
    rules._cache.clear()
    first = rules.for_device("water_probe", "tap", {"disinfectant": "chlorine", "lat": 1.0})
    again = rules.for_device("water_probe", "tap", {"disinfectant": "chlorine", "lat": 2.0})
    assert first == again
    assert len(rules._cache) == 1
    first.clear()  # callers get a copy
    assert rules.for_device("water_probe", "tap", {"disinfectant": "chlorine"})


# ---- validation: every error names the file and the rule -----------------------------------------

GOOD = """
  - id: t.cl.low
    quantity: free_chlorine_mg_l
    unit: mg/L
    kinds: [water_probe]
    context: {venue_type: tap, disinfectant: chlorine}
    comparator: "<"
    value: 0.05
    clear: {value: 0.06, for: 10m}
    standard: GB 5749-2022
    clause: 表2
    confidence: B
"""

HEADER = """
defaults: {for: 5m}
attributes:
  disinfectant: {description: how, values: [chlorine, chloramine]}
rules:
"""


def write_rules(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    return path


def bad(**changes: str) -> str:
    """GOOD with lines replaced: key → new line (or '' to drop the line)."""
    lines = []
    for line in textwrap.dedent(GOOD).strip("\n").splitlines():
        key = line.strip().removeprefix("- ").split(":")[0]
        if key in changes:
            if changes[key]:
                indent = line[: len(line) - len(line.lstrip())]
                lines.append(indent + changes[key])
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_a_good_rule_file_loads(tmp_path: Path) -> None:
    write_rules(tmp_path, "water.yaml", GOOD)
    rules = load_rules(tmp_path)
    rule = rules["t.cl.low"]
    assert (rule.for_s, rule.clear_value, rule.clear_for_s) == (300.0, 0.06, 600.0)
    assert rule.expected_alert == "threshold:free_chlorine_mg_l:low"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"quantity": "quantity: free_chlorine"}, "unknown quantity 'free_chlorine'"),
        ({"kinds": "kinds: [water_probe, air_monitor]"}, "kind 'air_monitor' does not measure"),
        ({"kinds": "kinds: [water_meter]"}, "unknown device kind 'water_meter'"),
        (
            {"context": "context: {venue_type: [tap, tapwater], disinfectant: chlorine}"},
            "unknown venue type 'tapwater'",
        ),
        ({"unit": "unit: ppm"}, "unit 'ppm' does not match"),
        ({"value": "value: 25"}, "outside free_chlorine_mg_l's physical range"),
        ({"clear": "clear: {value: 0.04}"}, "clear value 0.04 is on the wrong side"),
        ({"clear": "clear: {value: 0.06, for: soon}"}, "is not a duration"),
        ({"clear": "clear: {value: 0.06, for: -5m}"}, "is not a duration"),
        ({"comparator": 'comparator: "=="'}, "comparator"),
        ({"confidence": "confidence: D"}, "confidence"),
        ({"standard": ""}, "standard"),
        ({"context": "context: {venue_type: tap, disinfect: chlorine}"}, "context.disinfect"),
        ({"context": "context: {venue_type: tap, disinfectant: bleach}"}, "'bleach' is not one of"),
        ({"context": "context: {venue_type: tap, beam_on: true}"}, "reading condition 'beam_on'"),
        (
            {"id": "- id: t.cl.low\n  expected_alert: threshold:free_chlorine_mg_l:high"},
            "should be 'threshold:free_chlorine_mg_l:low'",
        ),
        ({"id": "- id: t.cl.low\n  data_flags: [N, X]"}, "are not HJ 212 flags"),
        (
            {"id": "- id: t.cl.low\n  levels: [{value: 0.1, severity: emergency}]"},
            "level 0.1 must lie beyond 0.05",
        ),
        (
            {"id": "- id: t.cl.low\n  levels: [{value: 0.01, severity: warning}]"},
            "not more severe than critical",
        ),
        ({"severity": "", "id": "- id: t.cl.low\n  severity: dire"}, "unknown severity 'dire'"),
        ({"comparator": "", "value": ""}, "needs comparator and value, or range"),
        ({"id": "- id: t.cl.low\n  range: [0.5, 0.1]"}, "give either comparator and value"),
        ({"quantity": "quantity: cycle_phase"}, "a threshold needs a number"),
        ({"id": "- id: t.cl.low\n  surprise: 1"}, "surprise"),
    ],
)
def test_each_validation_error_names_the_file_and_the_rule(
    tmp_path: Path, changes: dict[str, str], expected: str
) -> None:
    write_rules(tmp_path, "water.yaml", bad(**changes))
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    message = str(caught.value)
    assert "water.yaml: rule 't.cl.low'" in message, message
    assert expected in message, message


def test_range_rules_validate_each_side(tmp_path: Path) -> None:
    body = bad(comparator="", value="", clear="clear: {value: [6.4, 8.4]}", id="- id: t.ph")
    body = body.replace("free_chlorine_mg_l", "ph").replace("unit: mg/L", 'unit: "1"')
    write_rules(tmp_path, "ph.yaml", body.replace("kinds:", "range: [6.5, 8.5]\n  kinds:"))
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    assert "ph.yaml: rule 't.ph.low': clear value 6.4 is on the wrong side" in str(caught.value)
    assert "t.ph.high" not in str(caught.value)


def test_duplicate_ids_across_files_name_both(tmp_path: Path) -> None:
    write_rules(tmp_path, "a.yaml", GOOD)
    write_rules(tmp_path, "b.yaml", GOOD)
    with pytest.raises(
        RuleError, match=r"b\.yaml: rule 't\.cl\.low': duplicate id \(also in a\.yaml\)"
    ):
        load_rules(tmp_path)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    write_rules(tmp_path, "a.yaml", bad(value="value: 25"))
    write_rules(tmp_path, "b.yaml", bad(id="- id: t.other", unit="unit: NTU"))
    (tmp_path / "c.yaml").write_text("rules: [ {id: x\n")
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    problems = caught.value.problems
    assert any(p.startswith("a.yaml: rule 't.cl.low': value 25") for p in problems)
    assert any(p.startswith("b.yaml: rule 't.other': unit 'NTU'") for p in problems)
    assert any(p.startswith("c.yaml: cannot read") for p in problems)


def test_a_rule_without_an_id_is_named_by_its_position(tmp_path: Path) -> None:
    write_rules(tmp_path, "a.yaml", bad() + bad(id="- note: no id"))
    with pytest.raises(RuleError, match=r"a\.yaml: rule #2: .*id"):
        load_rules(tmp_path)


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == parse_duration(90) == 90
    assert parse_duration("0s") == 0
    for wrong in ("-5m", "soon", True, -1, float("inf")):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(wrong)


# ---- per-site overrides, audited ---------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(sqlite_url(tmp_path / "registry.db"))
    with reg.session() as s, s.begin():
        s.add(Tenant(id="small-water", name="Small Water"))
        s.add(
            Site(
                id="village-1",
                tenant_id="small-water",
                name="Village works",
                region_code="330110",
                venue_type="tap",
                attributes={"disinfectant": "chlorine"},
            )
        )
    yield reg
    reg.close()


def audit_rows(reg: Registry) -> list[AuditEntry]:
    with reg.session() as s:
        return list(s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars())


def test_an_override_is_validated_saved_audited_and_applied(registry: Registry, rules) -> None:  # type: ignore[no-untyped-def]
    override = Override(
        site_id="village-1",
        rule_id="dw.turbidity.high",
        value=3.0,
        clear_value=2.7,
        for_="15m",
        reason="small supply, source limited (GB 5749 表1 注)",
    )
    with registry.session() as s, s.begin():
        save_override(s, rules, override, actor="chen.officer")
    [entry] = audit_rows(registry)
    assert (entry.actor, entry.action, entry.entity) == (
        "chen.officer",
        "rule_override.create",
        "rule_override",
    )
    assert entry.entity_id == "village-1:dw.turbidity.high"
    assert entry.before is None
    assert entry.after["value"] == 3.0
    assert entry.after["for_s"] == 900

    with registry.session() as s:
        stored = site_overrides(s, "village-1")
    assert stored[0].created_by == "chen.officer"
    site_rules = rules.for_device("water_probe", "tap", {"disinfectant": "chlorine"})
    effective = {r.id: r for r in rules.effective("village-1", site_rules, stored)}
    turbidity = effective["dw.turbidity.high"]
    assert (turbidity.value, turbidity.clear_value, turbidity.for_s) == (3.0, 2.7, 900.0)
    assert turbidity.params.value == 3.0  # the evaluator sees the override
    assert "site override" in turbidity.describe(3.5, "NTU")
    assert effective["dw.ph.low"] is rules["dw.ph.low"]  # untouched rules are the same objects
    # Another site's overrides do not apply here.
    assert rules.effective("village-2", site_rules, stored) == site_rules

    # Updating records before and after; disabling drops the rule from the effective set.
    with registry.session() as s, s.begin():
        save_override(
            s,
            rules,
            Override(site_id="village-1", rule_id="dw.turbidity.high", enabled=False, reason="off"),
            actor="li.chief",
        )
    update = audit_rows(registry)[-1]
    assert update.action == "rule_override.update"
    assert update.before["value"] == 3.0
    assert update.after["enabled"] is False
    with registry.session() as s:
        stored = site_overrides(s, "village-1")
    assert "dw.turbidity.high" not in {
        r.id for r in rules.effective("village-1", site_rules, stored)
    }

    with registry.session() as s, s.begin():
        assert delete_override(s, "village-1", "dw.turbidity.high", actor="li.chief", reason="back")
    assert audit_rows(registry)[-1].action == "rule_override.delete"
    with registry.session() as s:
        assert site_overrides(s) == []
        assert s.execute(select(func.count()).select_from(RuleOverride)).scalar() == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"rule_id": "dw.nope", "value": 1.0}, "no such rule"),
        ({"value": 1.0, "reason": " "}, "a reason is required"),
        ({}, "overrides nothing"),
        ({"value": 25.0}, "outside free_chlorine_mg_l's physical range"),
        ({"value": 0.1, "clear_value": 0.08}, "clear value 0.08 is on the wrong side"),
        ({"severity": "dire"}, "unknown severity 'dire'"),
    ],
)
def test_an_invalid_override_names_site_and_rule_and_writes_nothing(
    registry: Registry,
    rules,
    fields: dict,
    expected: str,  # type: ignore[no-untyped-def]
) -> None:
    args = {"site_id": "village-1", "rule_id": "dw.free_cl.tap.low", "reason": "test"}
    args.update(fields)
    with pytest.raises(RuleError) as caught, registry.session() as s, s.begin():
        save_override(s, rules, Override(**args), actor="chen.officer")
    assert f"site 'village-1': override of rule '{args['rule_id']}'" in str(caught.value)
    assert expected in str(caught.value)
    assert audit_rows(registry) == []


def test_an_override_of_the_limit_moves_the_hysteresis_band_with_it(rules) -> None:  # type: ignore[no-untyped-def]
    rule = rules["ster.hold.temperature.low"]
    assert rule.clear_value == rule.value
    moved = rules.apply(rule, Override(site_id="s", rule_id=rule.id, value=132, reason="134 only"))
    assert moved.value == moved.clear_value == 132
    high = rules["dw.free_cl.high"]  # > 2.0, clears at 1.9
    lowered = rules.apply(high, Override(site_id="s", rule_id=high.id, value=1.5, reason="policy"))
    assert (lowered.value, lowered.clear_value) == (1.5, pytest.approx(1.4))


def test_overrides_go_with_their_site(registry: Registry, rules) -> None:  # type: ignore[no-untyped-def]
    with registry.session() as s, s.begin():
        save_override(
            s,
            rules,
            Override(site_id="village-1", rule_id="dw.free_cl.high", value=1.5, reason="policy"),
            actor="chen.officer",
        )
    with registry.session() as s, s.begin():
        s.execute(delete(Site).where(Site.id == "village-1"))
    with registry.session() as s:
        assert site_overrides(s) == []
