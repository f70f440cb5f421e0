"""The alert's life: legal and illegal transitions, manual resolve, persistence across restarts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from alerting.lifecycle import (
    AlertBook,
    AlertInfo,
    AlertNotFound,
    LifecycleError,
    ThresholdAlerting,
)
from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from alerting.rules import load_rules
from alerting.store import (
    AlertStore,
    DuplicateOpenAlert,
    alert_event_line,
    alert_event_lines,
)
from gateway.registry.database import Registry, sqlite_url
from gateway.registry.models import AlertRow, AlertTransitionRow
from protocols.reading import Reading
from tests.pg_fixture import fresh_postgres_url, postgres, postgres_url  # noqa: F401

T0 = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
KEY = AlertKey("wp-plant-1", "dw.free_cl.outlet.low")
INFO = AlertInfo(
    tenant="bench-water",
    site="b-plant",
    region="330110",
    kind="water_probe",
    quantity="free_chlorine_mg_l",
    message="free_chlorine_mg_l 0.2 mg/L < 0.3 mg/L",
    limit=0.3,
    standard="GB 5749-2022 表2",
    labels={"confidence": "B"},
)
PENDING, FIRING = AlertState.PENDING, AlertState.FIRING
ACK, RESOLVED = AlertState.ACKNOWLEDGED, AlertState.RESOLVED


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def ids() -> Iterator[str]:
    return (f"a{n}" for n in itertools.count(1))


def book() -> AlertBook:
    return AlertBook(new_id=ids().__next__)


def hold(b: AlertBook, at: float, since: float = 0, **kw) -> list[Transition]:  # type: ignore[no-untyped-def]
    args = {"value": 0.2, "for_s": 300, "info": INFO}
    args.update(kw)
    return b.condition(KEY, holds=True, at=minutes(at), since=minutes(since), **args)


def clear(b: AlertBook, at: float) -> list[Transition]:
    return b.condition(KEY, holds=False, at=minutes(at), value=0.4)


def steps(transitions: list[Transition]) -> list[tuple[AlertState | None, AlertState]]:
    return [(t.from_state, t.to_state) for t in transitions]


# ---- legal transitions ---------------------------------------------------------------------------


def test_created_pending_then_firing_after_for() -> None:
    b = book()
    assert steps(hold(b, 0)) == [(None, PENDING)]
    assert hold(b, 4) == []  # for is 5 minutes
    fired = hold(b, 5)
    assert steps(fired) == [(PENDING, FIRING)]
    alert = b.get(KEY)
    assert alert is not None
    assert alert.id == "a1"
    assert alert.state is FIRING
    assert (alert.started_at, alert.fired_at) == (minutes(0), minutes(5))
    assert (alert.tenant, alert.region, alert.limit, alert.labels) == (
        "bench-water",
        "330110",
        0.3,
        {"confidence": "B"},
    )


def test_a_condition_reported_late_can_open_and_fire_at_once() -> None:
    b = book()
    assert steps(hold(b, 10, since=0)) == [(None, PENDING), (PENDING, FIRING)]
    assert b.get(KEY).started_at == minutes(0)  # type: ignore[union-attr]


def test_pending_cancelled_never_fires() -> None:
    b = book()
    hold(b, 0)
    cancelled = clear(b, 2)
    assert steps(cancelled) == [(PENDING, RESOLVED)]
    assert cancelled[0].actor is None
    alert = b.alert("a1")
    assert alert.fired_at is None
    assert alert.resolved_by is None
    assert KEY not in b


def test_firing_resolves_by_itself() -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    resolved = clear(b, 30)
    assert steps(resolved) == [(FIRING, RESOLVED)]
    assert b.alert("a1").resolved_at == minutes(30)


def test_acknowledged_then_resolved_by_itself() -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    acked = b.acknowledge("a1", "wang.officer", "on my way", minutes(7))
    assert steps(acked) == [(FIRING, ACK)]
    assert (acked[0].actor, acked[0].comment) == ("wang.officer", "on my way")
    alert = b.get(KEY)
    assert alert is not None
    assert (alert.acknowledged_by, alert.ack_comment) == ("wang.officer", "on my way")
    assert hold(b, 8) == []  # still holding: stays acknowledged
    assert steps(clear(b, 40)) == [(ACK, RESOLVED)]


@pytest.mark.parametrize("acknowledged", [False, True])
def test_resolved_by_hand_with_a_reason(acknowledged: bool) -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    if acknowledged:
        b.acknowledge("a1", "wang.officer", None, minutes(6))
    resolved = b.resolve("a1", "wang.officer", "dosing pump primed", minutes(9))
    assert steps(resolved) == [(ACK if acknowledged else FIRING, RESOLVED)]
    assert (resolved[0].actor, resolved[0].comment) == ("wang.officer", "dosing pump primed")
    alert = b.alert("a1")
    assert (alert.resolved_by, alert.resolve_reason) == ("wang.officer", "dosing pump primed")


def test_a_pending_alert_can_be_resolved_by_hand() -> None:
    b = book()
    hold(b, 0)
    assert steps(b.resolve("a1", "wang.officer", "probe being cleaned", minutes(1))) == [
        (PENDING, RESOLVED)
    ]


def test_a_more_severe_level_is_a_severity_change_in_place() -> None:
    b = book()
    hold(b, 0, severity=Severity.CRITICAL, for_s=0)
    changed = hold(b, 1, severity=Severity.EMERGENCY, for_s=0, value=30.0)
    assert steps(changed) == [(FIRING, FIRING)]
    assert changed[0].severity is Severity.EMERGENCY
    assert changed[0].comment == "severity"
    b.acknowledge("a1", "wang.officer", None, minutes(2))
    assert hold(b, 3, severity=Severity.CRITICAL, for_s=0) == []  # never lowered
    b2 = book()
    hold(b2, 0, severity=Severity.WARNING, for_s=0)
    b2.acknowledge("a1", "wang.officer", None, minutes(1))
    assert steps(hold(b2, 2, severity=Severity.CRITICAL, for_s=0)) == [(ACK, ACK)]


def test_one_open_alert_per_key() -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    hold(b, 6)
    assert len(b) == 1
    assert [a.id for a in b.open_alerts()] == ["a1"]
    other = AlertKey("wp-plant-1", "dw.turbidity.high")
    b.condition(other, holds=True, at=minutes(6), info=INFO)
    assert len(b) == 2


# ---- illegal transitions -----------------------------------------------------------------------


def test_illegal_transitions_raise_clear_errors() -> None:
    b = book()
    hold(b, 0)
    with pytest.raises(LifecycleError, match=r"pending .*nothing to acknowledge"):
        b.acknowledge("a1", "wang.officer", None, minutes(1))
    hold(b, 5)
    b.acknowledge("a1", "wang.officer", None, minutes(6))
    with pytest.raises(LifecycleError, match=r"already acknowledged by wang\.officer"):
        b.acknowledge("a1", "li.officer", None, minutes(7))
    with pytest.raises(LifecycleError, match="needs the person's name and a reason"):
        b.resolve("a1", "wang.officer", "  ", minutes(8))
    b.resolve("a1", "wang.officer", "fixed", minutes(8))
    with pytest.raises(LifecycleError, match="cannot acknowledge alert a1: it is already resolved"):
        b.acknowledge("a1", "wang.officer", None, minutes(9))
    with pytest.raises(LifecycleError, match="cannot resolve alert a1: it is already resolved"):
        b.resolve("a1", "wang.officer", "again", minutes(9))
    with pytest.raises(AlertNotFound, match="no such open alert"):
        b.acknowledge("zzz", "wang.officer", None, minutes(9))
    with pytest.raises(ValueError, match="needs its AlertInfo"):
        b.condition(AlertKey("x", "y"), holds=True, at=minutes(9))
    hold(b, 20, since=20, for_s=0)
    with pytest.raises(LifecycleError, match="needs the person's name"):
        b.acknowledge("a2", "", None, minutes(21))


def test_restore_refuses_resolved_and_duplicate_alerts() -> None:
    b = book()
    hold(b, 0)
    alert = b.get(KEY)
    assert alert is not None
    twin = Alert(**{**{f: getattr(alert, f) for f in alert.__slots__}, "id": "other"})
    with pytest.raises(LifecycleError, match="two open alerts"):
        b.restore(twin)
    twin.state = RESOLVED
    with pytest.raises(LifecycleError, match="only open alerts are restored"):
        b.restore(twin)


# ---- manual resolve while the condition still holds ----------------------------------------------


def test_after_a_manual_resolve_a_new_alert_opens_only_after_for_again() -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    b.resolve("a1", "wang.officer", "dosing restored", minutes(10))
    assert KEY not in b
    assert b.tracks(KEY)
    # The detector still reports the condition holding (since minute 0): a new alert, pending
    # from now, not firing at once even though the condition began long ago.
    reopened = hold(b, 11, since=0)
    assert steps(reopened) == [(None, PENDING)]
    assert reopened[0].alert_id == "a2"
    assert b.get(KEY).started_at == minutes(11)  # type: ignore[union-attr]
    assert hold(b, 15, since=0) == []
    assert steps(hold(b, 16, since=0)) == [(PENDING, FIRING)]


def test_a_manual_resolve_followed_by_a_clear_forgets_the_mark() -> None:
    b = book()
    hold(b, 0)
    hold(b, 5)
    b.resolve("a1", "wang.officer", "fixed", minutes(10))
    assert clear(b, 12) == []
    assert not b.tracks(KEY)
    assert steps(hold(b, 30, since=25)) == [(None, PENDING), (PENDING, FIRING)]


# ---- readings → rules → book ---------------------------------------------------------------------


def reading(minute: float, chlorine: float, flag: str | None = None) -> Reading:
    return Reading(
        "bench-water",
        "b-plant",
        "wp-plant-1",
        "water_probe",
        "330110",
        round(minutes(minute).timestamp() * 1000),
        {"free_chlorine_mg_l": chlorine, "ph": 7.2},
        {"free_chlorine_mg_l": flag} if flag else None,
    )


@pytest.fixture(scope="module")
def outlet_rules():  # type: ignore[no-untyped-def]
    return load_rules().for_device(
        "water_probe", "water_plant_outlet", {"disinfectant": "chlorine"}
    )


def feed(engine: ThresholdAlerting, rules, samples) -> list[Transition]:  # type: ignore[no-untyped-def]
    out: list[Transition] = []
    for minute, value, *flag in samples:
        out.extend(engine.observe(reading(minute, value, *flag), rules))
    return out


def test_readings_drive_the_alert_through_the_shipped_rule(outlet_rules) -> None:  # type: ignore[no-untyped-def]
    engine = ThresholdAlerting(book())
    low = feed(engine, outlet_rules, [(m, 0.2) for m in range(8)])
    assert steps(low) == [(None, PENDING), (PENDING, FIRING)]
    assert low[1].at == minutes(5)
    alert = engine.book.get(KEY)
    assert alert is not None
    assert alert.standard is not None
    assert alert.standard.startswith("GB 5749-2022 表2")
    assert "0.2 mg/L < 0.3 mg/L" in alert.message
    assert alert.labels["expected_alert"] == "threshold:free_chlorine_mg_l:low"
    # Maintenance readings are skipped: they neither resolve nor count as clear.
    assert feed(engine, outlet_rules, [(m, 0.6, "M") for m in range(8, 30)]) == []
    # Clear for 10 minutes (clear_for) past the clear value 0.33: resolved by itself.
    resolved = feed(engine, outlet_rules, [(m, 0.4) for m in range(30, 45)])
    assert steps(resolved) == [(FIRING, RESOLVED)]
    assert resolved[0].at == minutes(40)


def test_a_manual_resolve_mid_stream_waits_for_again(outlet_rules) -> None:  # type: ignore[no-untyped-def]
    engine = ThresholdAlerting(book())
    feed(engine, outlet_rules, [(m, 0.2) for m in range(6)])
    engine.book.resolve("a1", "wang.officer", "checked, refilling", minutes(6))
    again = feed(engine, outlet_rules, [(m, 0.2) for m in range(7, 14)])
    assert steps(again) == [(None, PENDING), (PENDING, FIRING)]
    assert again[0].at == minutes(7)
    assert again[1].at == minutes(12)
    assert again[0].alert_id == "a2"


# ---- persistence ---------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


def open_store(path: Path) -> tuple[Registry, AlertStore]:
    registry = Registry.open(sqlite_url(path))
    return registry, AlertStore(registry)


def test_every_transition_is_stored_with_its_alert(db_path: Path) -> None:
    registry, store = open_store(db_path)
    try:
        b = book()
        for transitions in (
            hold(b, 0),
            hold(b, 5),
            b.acknowledge("a1", "wang.officer", "on my way", minutes(6)),
        ):
            store.save_transitions(b, transitions)
        stored = store.get("a1")
        assert stored is not None
        assert stored.state is ACK
        assert stored == b.get(KEY)  # every field round-trips, datetimes in UTC
        history = store.transitions("a1")
        assert steps(history) == [(None, PENDING), (PENDING, FIRING), (FIRING, ACK)]
        assert history[2].actor == "wang.officer"
        assert history[2].at == minutes(6)
        assert history[0].key == KEY
    finally:
        registry.close()


def test_a_restart_neither_loses_nor_duplicates_alerts(db_path: Path, outlet_rules) -> None:  # type: ignore[no-untyped-def]
    registry, store = open_store(db_path)
    engine = ThresholdAlerting(book())
    store.save_transitions(engine.book, feed(engine, outlet_rules, [(m, 0.2) for m in range(8)]))
    registry.close()

    # A new process: the same database file, a book and an engine rebuilt from the store.
    registry, store = open_store(db_path)
    try:
        [restored] = store.open_alerts()
        assert restored.id == "a1"
        assert restored.state is FIRING
        assert restored.key == KEY
        engine = ThresholdAlerting(store.book())
        # Still low: the same alert continues (no new one); then it clears after clear_for.
        still = feed(engine, outlet_rules, [(m, 0.2) for m in range(8, 12)])
        assert still == []
        first_clear = feed(engine, outlet_rules, [(12, 0.4)])
        assert first_clear == []  # a restarted evaluator still waits clear_for
        resolved = feed(engine, outlet_rules, [(m, 0.4) for m in range(13, 23)])
        assert steps(resolved) == [(FIRING, RESOLVED)]
        assert resolved[0].alert_id == "a1"
        store.save_transitions(engine.book, resolved)
        assert store.open_alerts() == []
        assert steps(store.transitions("a1")) == [
            (None, PENDING),
            (PENDING, FIRING),
            (FIRING, RESOLVED),
        ]
    finally:
        registry.close()


def test_a_duplicate_open_alert_is_refused_but_a_new_one_after_resolve_is_not(
    db_path: Path,
) -> None:
    registry, store = open_store(db_path)
    try:
        b = book()
        store.save_transitions(b, hold(b, 0))
        # A second book (another instance, or a restart that lost track) opens the same key.
        rogue = AlertBook(new_id=lambda: "rogue")
        with pytest.raises(DuplicateOpenAlert, match=r"wp-plant-1.*dw\.free_cl\.outlet\.low"):
            store.save_transitions(rogue, hold(rogue, 1))
        assert store.get("rogue") is None  # nothing of it was stored
        assert [a.id for a in store.open_alerts()] == ["a1"]
        store.save_transitions(b, clear(b, 2))
        store.save_transitions(b, hold(b, 3, since=3))  # resolved ones do not count
        assert sorted(a.id for a in store.open_alerts()) == ["a2"]
    finally:
        registry.close()


def duplicate_row(alert_id: str, state: str = "firing") -> dict:
    return {
        "id": alert_id,
        "device_id": "wp-plant-1",
        "rule_id": "dw.free_cl.outlet.low",
        "state": state,
        "severity": 3,
        "tenant_id": "t",
        "site_id": "s",
        "region_code": "330110",
        "kind": "water_probe",
        "message": "",
        "escalation_level": 0,
        "labels": {},
        "updated_at": T0,
    }


def assert_one_open_alert_per_key_in_the_database(registry: Registry) -> None:
    with registry.session() as s, s.begin():
        s.execute(insert(AlertRow), [duplicate_row("x1"), duplicate_row("x0", "resolved")])
        s.execute(insert(AlertRow), [duplicate_row("x2", "resolved")])
    with pytest.raises(IntegrityError), registry.session() as s, s.begin():
        s.execute(insert(AlertRow), [duplicate_row("x3", "pending")])
    with registry.session() as s:
        assert s.execute(select(AlertRow.id).order_by(AlertRow.id)).scalars().all() == [
            "x0",
            "x1",
            "x2",
        ]


def test_the_database_itself_enforces_one_open_alert_per_key_on_sqlite(db_path: Path) -> None:
    registry, _ = open_store(db_path)
    try:
        assert_one_open_alert_per_key_in_the_database(registry)
    finally:
        registry.close()


def test_the_database_itself_enforces_one_open_alert_per_key_on_postgresql(
    fresh_postgres_url: str,  # noqa: F811
) -> None:
    registry = Registry.open(fresh_postgres_url)
    try:
        assert_one_open_alert_per_key_in_the_database(registry)
        with registry.session() as s, s.begin():
            s.execute(delete(AlertRow))
        store = AlertStore(registry)
        b = book()
        store.save_transitions(b, hold(b, 20, since=20, for_s=0))
        with pytest.raises(DuplicateOpenAlert):
            store.save(
                Alert(**{**{f: getattr(b.get(KEY), f) for f in Alert.__slots__}, "id": "y"}),
            )
    finally:
        registry.close()


def test_deleting_an_alert_row_takes_its_transitions(db_path: Path) -> None:
    registry, store = open_store(db_path)
    try:
        b = book()
        store.save_transitions(b, hold(b, 0))
        with registry.session() as s, s.begin():
            s.delete(s.get(AlertRow, "a1"))
        with registry.session() as s:
            assert s.execute(select(AlertTransitionRow)).first() is None
    finally:
        registry.close()


# ---- InfluxDB alert_event lines ------------------------------------------------------------------


def test_each_transition_becomes_an_alert_event_line() -> None:
    b = book()
    transitions = hold(b, 10, since=0) + b.acknowledge("a1", "wang.officer", "ok", minutes(11))
    lines = alert_event_lines(b, transitions)
    assert len(lines) == 3
    created, fired, acked = lines
    ts = round(minutes(10).timestamp() * 1000)
    assert created == (
        "alert_event,device=wp-plant-1,kind=water_probe,region=330110,"
        "rule=dw.free_cl.outlet.low,severity=critical,site=b-plant,state=pending,"
        'tenant=bench-water alert_id="a1",value=0.2,'
        'message="free_chlorine_mg_l 0.2 mg/L < 0.3 mg/L",from_state="created" '
        f"{ts}"
    )
    assert ",state=firing," in fired
    assert 'from_state="pending"' in fired
    assert ",state=acknowledged," in acked
    assert 'actor="wang.officer"' in acked
    assert "value=" not in acked  # a person's action carries no reading


def test_an_alert_event_line_omits_an_empty_region() -> None:
    b = book()
    b.condition(
        KEY,
        holds=True,
        at=T0,
        info=AlertInfo(tenant="t", site="s", region="", kind="water_probe"),
    )
    transition = Transition("a1", KEY, T0, None, PENDING, Severity.CRITICAL)
    line = alert_event_line(b.alert("a1"), transition)
    assert "region=" not in line
    assert line.startswith("alert_event,device=wp-plant-1,kind=water_probe")
