"""The alert API on a seeded store: list, filter, scope, one alert's history, counts per day/week/
month in China Standard Time, the high-risk list, and people's actions through a real engine.

Alerts are made the way the engine makes them (an ``AlertBook`` and ``AlertStore``), in three
counties of two tenants, so every scope rule and filter is checked against known answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from alerting.engine import AlertEngine, ContextTable
from alerting.lifecycle import AlertBook, AlertInfo
from alerting.model import AlertKey, Severity
from alerting.store import AlertStore
from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.registry.models import AuditEntry
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import FAST_HASHER, World
from weijian.config import AlertingSettings

T0 = datetime(2025, 1, 1, 17, 0, tzinfo=UTC)  # Thursday 2025-01-02 01:00 in Shanghai

# name: device, rule, tenant, site, region, severity, fired at (None: stays pending), resolved
SPECS: dict[str, tuple[str, str, str, str, str, Severity, datetime | None, bool]] = {
    "a": ("d102", "dw.ph.low", "water", "s102", "330102", Severity.CRITICAL, T0, False),
    "b": ("d102", "nodata", "water", "s102", "330102", Severity.WARNING, T0 + timedelta(1), True),
    "c": (
        "d106",
        "anomaly:spike:ph",
        "water",
        "s106",
        "330106",
        Severity.WARNING,
        T0 + timedelta(days=2),
        False,
    ),
    "d": (
        "d206",
        "rad.h10.ct_dental.high",
        "hospital",
        "s206",
        "330206",
        Severity.EMERGENCY,
        T0 + timedelta(days=8),
        False,
    ),
    "e": (
        "d206",
        "dw.ph.high",
        "hospital",
        "s206",
        "330206",
        Severity.INFO,
        T0 + timedelta(days=40),
        False,
    ),
    "p": ("d106", "dw.tds.high", "water", "s106", "330106", Severity.CRITICAL, None, False),
}


def seed_alerts(store: AlertStore) -> dict[str, str]:
    """The alerts of SPECS through a book, as the engine makes them; name → alert id."""
    book = AlertBook()
    ids = {}
    for name, (device, rule, tenant, site, region, severity, fired, resolved) in SPECS.items():
        key = AlertKey(device, rule)
        at = fired or T0 + timedelta(days=3)
        info = AlertInfo(tenant, site, region, "water_probe", "ph", f"{name}: test alert")
        transitions = book.condition(
            key,
            holds=True,
            at=at,
            value=1.0,
            since=at,
            for_s=0 if fired else 3600,
            severity=severity,
            info=info,
        )
        if resolved:
            transitions += book.condition(key, holds=False, at=at + timedelta(hours=1))
        store.save_transitions(book, transitions)
        ids[name] = transitions[0].alert_id
    return ids


@pytest.fixture
def alerts(world: World) -> dict[str, str]:
    return seed_alerts(AlertStore(world.ctx.registry))


def names(body: dict[str, Any], ids: dict[str, str]) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    return {by_id[item["id"]] for item in body["items"]}


def test_list_filters_and_pagination(world: World, alerts: dict[str, str]) -> None:
    def listed(query: str, who: str = "admin") -> set[str]:
        r = world.get(f"/alerts{query}", who)
        assert r.status_code == 200, r.text
        return names(r.json(), alerts)

    assert listed("") == set(SPECS)
    assert listed("?state=firing") == {"a", "c", "d", "e"}
    assert listed("?state=pending&state=resolved") == {"b", "p"}
    assert listed("?min_severity=critical") == {"a", "d", "p"}
    assert listed("?region=3301") == {"a", "b", "c", "p"}
    assert listed("?region=330106") == {"c", "p"}
    assert listed("?tenant=hospital") == {"d", "e"}
    assert listed("?site=s102") == {"a", "b"}
    assert listed("?device=d206") == {"d", "e"}
    assert listed("?rule=nodata") == {"b"}
    assert listed("?since=2025-01-03T00:00:00%2B08:00&until=2025-01-10T00:00:00%2B08:00") == {
        "b",
        "c",
        "p",
    }
    page = world.get("/alerts?limit=2&offset=1", "admin").json()
    assert page["total"] == 6
    assert [item["id"] for item in page["items"]] == [alerts["d"], alerts["p"]]  # newest first
    item = world.get("/alerts?device=d206&rule=dw.ph.high", "admin").json()["items"][0]
    assert item["severity"] == "info"
    assert item["severity_level"] == 1
    assert item["state"] == "firing"
    assert item["region_code"] == "330206"
    assert world.get("/alerts?since=2025-01-03T00:00:00", "admin").status_code == 422  # naive
    assert world.get("/alerts?state=open", "admin").status_code == 422


def test_scope_follows_the_alerts_region_and_tenant(world: World, alerts: dict[str, str]) -> None:
    def listed(who: str) -> set[str]:
        return names(world.get("/alerts", who).json(), alerts)

    assert listed("county102") == {"a", "b"}
    assert listed("city") == {"a", "b", "c", "p"}
    assert listed("ningbo") == {"d", "e"}
    assert listed("wateruser") == {"a", "b", "c", "p"}
    assert world.get(f"/alerts/{alerts['d']}", "county102").status_code == 404
    assert world.get(f"/alerts/{alerts['d']}", "wateruser").status_code == 404
    r = world.get(f"/alerts/{alerts['b']}", "county102")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "resolved"
    assert body["resolved_by"] is None  # by itself
    assert [(t["from_state"], t["to_state"]) for t in body["transitions"]] == [
        (None, "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
    ]
    assert world.get(f"/alerts/{'0' * 32}", "admin").status_code == 404


def test_counts_per_day_week_and_month_in_china_time(world: World, alerts: dict[str, str]) -> None:
    r = world.get(
        "/alerts/counts?period=day&since=2025-01-01T12:00:00%2B08:00"
        "&until=2025-01-05T00:00:00%2B08:00",
        "admin",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "Asia/Shanghai"
    days = [(b["start"][:10], b["count"]) for b in body["buckets"]]
    # a fired 2025-01-01 17:00 UTC = Jan 2 in Shanghai; b a day later, c two days later
    assert days == [("2025-01-01", 0), ("2025-01-02", 1), ("2025-01-03", 1), ("2025-01-04", 1)]
    assert body["buckets"][0]["start"] == "2025-01-01T00:00:00+08:00"  # rounded down to midnight
    assert body["buckets"][1]["by_severity"]["critical"] == 1
    assert body["total"] == 3

    weeks = world.get(
        "/alerts/counts?period=week&since=2024-12-30T00:00:00%2B08:00"
        "&until=2025-01-20T00:00:00%2B08:00",
        "admin",
    ).json()
    assert [(b["start"][:10], b["count"]) for b in weeks["buckets"]] == [
        ("2024-12-30", 3),  # Monday: a, b, c
        ("2025-01-06", 1),  # d (Jan 9)
        ("2025-01-13", 0),
    ]
    months = world.get(
        "/alerts/counts?period=month&since=2024-12-15T00:00:00Z&until=2025-03-01T00:00:00%2B08:00",
        "admin",
    ).json()
    assert [(b["start"][:7], b["count"]) for b in months["buckets"]] == [
        ("2024-12", 0),
        ("2025-01", 4),
        ("2025-02", 1),  # e, Feb 10; p never fired
    ]
    scoped = world.get(
        "/alerts/counts?period=month&since=2024-12-15T00:00:00Z&until=2025-03-01T00:00:00Z",
        "county102",
    ).json()
    assert scoped["total"] == 2
    default = world.get("/alerts/counts?period=week", "admin").json()
    assert len(default["buckets"]) == 12
    for query in (
        "period=day&since=2025-01-01T00:00:00",  # no offset
        "period=day&since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z",
        "period=day&since=1990-01-01T00:00:00Z&until=2025-01-01T00:00:00Z",  # > 1000 buckets
        "period=year",
    ):
        assert world.get(f"/alerts/counts?{query}", "admin").status_code == 422, query


def test_high_risk_ranks_institutions_by_weighted_alerts(
    world: World, alerts: dict[str, str]
) -> None:
    period = "since=2024-12-01T00:00:00Z&until=2025-03-01T00:00:00Z"
    r = world.get(f"/alerts/high-risk?{period}", "admin")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["site_id"], i["score"], i["alerts"]) for i in items] == [
        ("s206", 8 + 1, 2),  # emergency + info
        ("s102", 4 + 2, 2),  # critical + warning
        ("s106", 2, 1),  # a warning; the pending alert never fired
    ]
    assert items[0]["rank"] == 1
    assert items[0]["tenant_name"] == "Hospital"
    assert items[0]["site_name"] == "Site s206"
    assert items[0]["by_severity"] == {"info": 1, "warning": 0, "critical": 0, "emergency": 1}
    assert items[1]["still_open"] == 1  # b resolved by itself
    tenants = world.get(f"/alerts/high-risk?by=tenant&{period}", "admin").json()["items"]
    assert [(i["tenant_id"], i["score"], i["site_id"]) for i in tenants] == [
        ("hospital", 9, None),
        ("water", 8, None),
    ]
    one = world.get(f"/alerts/high-risk?limit=1&{period}", "admin").json()["items"]
    assert [i["site_id"] for i in one] == ["s206"]
    county = world.get(f"/alerts/high-risk?{period}", "county102").json()["items"]
    assert [i["site_id"] for i in county] == ["s102"]
    bad = "since=2025-03-01T00:00:00Z&until=2024-12-01T00:00:00Z"
    assert world.get(f"/alerts/high-risk?{bad}", "admin").status_code == 422


def test_actions_refused_without_an_engine_or_a_writer_role(
    world: World, alerts: dict[str, str]
) -> None:
    a, b = alerts["a"], alerts["b"]
    r = world.post(f"/alerts/{a}/ack", "admin", json={"comment": "on my way"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert world.post(f"/alerts/{a}/ack", "wateruser", json={}).status_code == 403
    assert world.post(f"/alerts/{a}/ack", "county106", json={}).status_code == 404
    assert world.post(f"/alerts/{b}/resolve", "admin", json={"reason": "x"}).status_code == 409
    assert world.post(f"/alerts/{a}/resolve", "admin", json={"reason": "  "}).status_code == 422
    assert world.post(f"/alerts/{a}/resolve", "admin", json={}).status_code == 422


@pytest.fixture
async def engine_client(
    world: World, alerts: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, AlertEngine]]:
    ctx: GatewayContext = world.ctx
    engine = AlertEngine(
        ContextTable(),
        AlertingSettings(warmup=False, startup_grace_s=0),
        store=AlertStore(ctx.registry),
    )
    async with engine:
        ctx.alerts = engine
        app = create_app(ctx, profiles=world.client.app.state.profiles, password_hasher=FAST_HASHER)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, engine
        ctx.alerts = None


async def test_ack_and_resolve_go_through_the_engine_and_are_audited(
    world: World, alerts: dict[str, str], engine_client: tuple[httpx.AsyncClient, AlertEngine]
) -> None:
    client, engine = engine_client
    a = alerts["a"]
    assert engine.core is not None
    assert len(engine.core.book) == 5, "the open alerts were restored from the store"

    r = await client.post(
        f"/alerts/{a}/ack", json={"comment": "dosing pump checked"}, headers=world.county102
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged"
    assert r.json()["acknowledged_by"] == "county102"
    assert r.json()["ack_comment"] == "dosing pump checked"
    again = await client.post(f"/alerts/{a}/ack", json={}, headers=world.county102)
    assert again.status_code == 409, again.text
    pending = await client.post(f"/alerts/{alerts['p']}/ack", headers=world.admin)
    assert pending.status_code == 409, "a pending alert cannot be acknowledged"

    r = await client.post(
        f"/alerts/{a}/resolve", json={"reason": "probe recalibrated"}, headers=world.admin
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["resolved_by"]) == ("resolved", "admin")
    detail = (await client.get(f"/alerts/{a}", headers=world.admin)).json()
    assert [(t["to_state"], t["actor"], t["comment"]) for t in detail["transitions"][2:]] == [
        ("acknowledged", "county102", "dosing pump checked"),
        ("resolved", "admin", "probe recalibrated"),
    ]
    assert engine.core.book.get(AlertKey("d102", "dw.ph.low")) is None
    with world.ctx.registry.session() as session:
        trail = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
            .where(AuditEntry.entity == "alert", AuditEntry.entity_id == a)
            .order_by(AuditEntry.id)
        ).all()
    assert [tuple(row) for row in trail] == [
        ("county102", "acknowledge", "dosing pump checked"),
        ("admin", "resolve", "probe recalibrated"),
    ]
