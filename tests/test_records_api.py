"""Records through the gateway: who may post, the device key path, validation, idempotent retries,
the listing and its scope, and the end-to-end path into a real alert engine.

The seeded world (tests/gateway_fixtures.py): tenant ``water`` with sites s102 (county 330102) and
s106 (330106) in Hangzhou, tenant ``hospital`` with s206 (330206) in Ningbo; staff of each scope
and a tenant user of ``water``. The engine test runs a real :class:`AlertEngine` on the same
registry with a clock the test moves, as the platform would run it; it reads the records from the
registry (its records feed), whether or not the gateway that took them runs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from alerting.engine import AlertEngine, RegistryContexts
from alerting.store import AlertStore
from gateway.api.records import RECORD_TYPES
from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.registry.database import Registry
from gateway.registry.models import AuditEntry, RecordEventRow
from gateway.settings import GatewaySettings
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import (
    FAST_HASHER,
    JWT_SECRET,
    World,
    device_body,
    make_client,
    site_body,
)
from tests.pg_fixture import (
    fresh_postgres_url,  # noqa: F401  (fixture)
    postgres,  # noqa: F401  (fixture)
    postgres_url,  # noqa: F401  (fixture)
)
from weijian.config import AlertingSettings

H = 3600.0


def now_iso(delta_s: float = 0.0, offset_h: float = 8.0) -> str:
    """Now (plus ``delta_s``) in RFC 3339 with a UTC offset (China Standard Time by default)."""
    local = datetime.now(UTC) + timedelta(seconds=delta_s)
    return local.astimezone(timezone(timedelta(hours=offset_h))).isoformat()


def record(site: str, record_type: str = "disinfection", **extra: Any) -> dict[str, Any]:
    return {"site_id": site, "record_type": record_type, "at": now_iso(-60), **extra}


def rows(world: World) -> list[RecordEventRow]:
    with world.ctx.registry.session() as session:
        return list(session.execute(select(RecordEventRow).order_by(RecordEventRow.id)).scalars())


def record_audit(world: World) -> list[tuple[str, str, str]]:
    with world.ctx.registry.session() as session:
        found = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.entity_id)
            .where(AuditEntry.entity == "record")
            .order_by(AuditEntry.id)
        ).all()
    return [tuple(row) for row in found]  # type: ignore[misc]


# ---- who may post --------------------------------------------------------------------------------


def test_writers_in_scope_and_tenant_users_for_their_own_sites_may_post(world: World) -> None:
    allowed = [
        ("admin", "s206"),
        ("city", "s106"),  # 330100 covers 3301xx
        ("county102", "s102"),
        ("ningbo", "s206"),
        ("wateruser", "s102"),  # the one write a tenant user may make: its own declarations
        ("wateruser", "s106"),
    ]
    for who, site in allowed:
        r = world.post("/records", who, json=record(site, ref=f"{who}-{site}"))
        assert r.status_code == 201, (who, site, r.text)
        body = r.json()
        assert (body["site_id"], body["source"], body["posted_by"]) == (site, "user", who)
    refused = [
        ("county102", "s106"),  # another county
        ("county106", "s102"),
        ("city", "s206"),  # another city
        ("ningbo", "s102"),
        ("wateruser", "s206"),  # another tenant's site
        ("admin", "nowhere"),  # no such site
    ]
    for who, site in refused:
        r = world.post("/records", who, json=record(site))
        assert r.status_code == 422, (who, site, r.text)
        error = r.json()["error"]
        assert error["details"][0]["field"] == "site_id"
        assert error["message"] == f"site {site!r} does not exist"  # existence does not leak
    assert len(rows(world)) == len(allowed)
    # every staff post is audited, as the poster
    assert [(actor, action) for actor, action, _ in record_audit(world)] == [
        (who, "create") for who, _ in allowed
    ]
    # the exception is for records only: a tenant user still cannot change its site
    assert world.patch("/sites/s102", "wateruser", json={"name": "x"}).status_code == 403
    r = world.client.post("/records", json=record("s102"))
    assert r.status_code == 401, r.text


def test_a_retry_answers_the_stored_record_and_stores_nothing_twice(world: World) -> None:
    body = record("s102", "medical_waste_collected", ref="bag-0001")
    first = world.post("/records", "county102", json=body)
    assert first.status_code == 201, first.text
    again = world.post("/records", "county102", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # the same moment in another offset, the code with spaces around it: the same record
    at = datetime.fromisoformat(body["at"]).astimezone(UTC).isoformat()
    same = world.post("/records", "wateruser", json={**body, "at": at, "ref": " bag-0001 "})
    assert same.status_code == 200, same.text
    assert same.json()["id"] == first.json()["id"]
    assert same.json()["posted_by"] == "county102"  # the first poster's row, unchanged
    # no code and a code are different records; so are different codes or types
    for other in ({"ref": None}, {"ref": "bag-0002"}, {"record_type": "medical_waste_produced"}):
        r = world.post("/records", "county102", json={**body, **other})
        assert r.status_code == 201, (other, r.text)
    no_ref = {**body, "ref": None}
    assert world.post("/records", "county102", json=no_ref).status_code == 200
    assert world.post("/records", "county102", json=no_ref).json()["ref"] is None
    assert len(rows(world)) == 4
    assert len(record_audit(world)) == 4  # retries are not audited


def test_a_batch_is_validated_whole_and_stored_all_or_nothing(world: World) -> None:
    good = [record("s102", "medical_waste_collected", ref=f"bag-{i}") for i in range(3)]
    bad = [
        good[0],
        record("s206"),  # outside county102's scope
        {**good[1], "record_type": "lunch"},
        {**good[2], "at": "2026-01-01T00:00:00"},  # no offset
    ]
    r = world.post("/records/batch", "county102", json={"records": bad})
    assert r.status_code == 422, r.text
    fields = sorted(d["field"] for d in r.json()["error"]["details"])
    assert fields == ["records.2.record_type", "records.3.at"]  # schema problems first
    r = world.post("/records/batch", "county102", json={"records": bad[:2]})
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == ["records.1.site_id"]
    assert rows(world) == []

    r = world.post("/records/batch", "county102", json={"records": good})
    assert r.status_code == 201, r.text
    assert (r.json()["created"], r.json()["existing"]) == (3, 0)
    assert [x["ref"] for x in r.json()["records"]] == ["bag-0", "bag-1", "bag-2"]
    r = world.post("/records/batch", "county102", json={"records": good})
    assert r.status_code == 200, r.text
    assert (r.json()["created"], r.json()["existing"]) == (0, 3)
    more = [good[0], record("s102", "medical_waste_collected", ref="bag-3")]
    r = world.post("/records/batch", "wateruser", json={"records": more})
    assert r.status_code == 201, r.text
    assert (r.json()["created"], r.json()["existing"]) == (1, 1)
    assert len(rows(world)) == 4
    assert world.post("/records/batch", "admin", json={"records": []}).status_code == 422
    too_many = {"records": [record("s102", ref=f"b{i}") for i in range(501)]}
    assert world.post("/records/batch", "admin", json=too_many).status_code == 422


def test_validation_names_the_field_and_the_rule(world: World) -> None:
    def refused(change: dict[str, Any]) -> dict[str, Any]:
        r = world.post("/records", "admin", json={**record("s102"), **change})
        assert r.status_code == 422, (change, r.text)
        error = r.json()["error"]
        assert error["code"] == "validation_failed"
        return error["details"][0]

    detail = refused({"record_type": "medical_waste_burnt"})
    assert detail["field"] == "record_type"
    for known in RECORD_TYPES:
        assert known in detail["message"]  # the error lists the types the rules know
    assert set(RECORD_TYPES) >= {"medical_waste_collected", "disinfection", "container_disinfected"}
    assert refused({"at": "2026-01-01T08:00:00"})["type"] == "timezone_aware"
    assert "future" in refused({"at": now_iso(+10 * 60)})["message"]
    assert "30 days" in refused({"at": now_iso(-31 * 86400)})["message"]
    assert "out of range" in refused({"at": "9999-12-31T23:59:59-23:59"})["message"]
    assert refused({"at": "yesterday"})["field"] == "at"
    assert refused({"ref": "bag\n7"})["field"] == "ref"
    assert refused({"ref": "bag\u200b7"})["field"] == "ref"  # a format character
    assert refused({"ref": "x" * 65})["field"] == "ref"
    assert refused({"ref": "   "})["field"] == "ref"
    assert refused({"site_id": "../etc"})["field"] == "site_id"
    assert refused({"weight_kg": 3.5})["field"] == "weight_kg"  # unknown keys are refused
    # within the window, in any offset
    for at in (now_iso(+4 * 60, -5), now_iso(-29 * 86400, 0)):
        assert world.post("/records", "admin", json=record("s102", at=at)).status_code == 201


def test_records_go_with_their_site(world: World) -> None:
    r = world.post("/sites", "admin", json=site_body("s999", "hospital", "330206"))
    assert r.status_code == 201, r.text
    assert world.post("/records", "admin", json=record("s999")).status_code == 201
    assert world.post("/records", "admin", json=record("s206")).status_code == 201
    assert world.delete("/sites/s999", "admin").status_code == 204
    assert [x.site_id for x in rows(world)] == ["s206"]


# ---- devices -------------------------------------------------------------------------------------


def onboard_http_device(world: World, device: str, site: str) -> str:
    r = world.post(
        "/devices",
        "admin",
        json=device_body(device, site, profile="air_monitor_http", protocol="http"),
    )
    assert r.status_code == 201, r.text
    (cred,) = r.json()["credentials"]
    assert cred["kind"] == "api_key"
    return cred["secret"]


def test_a_device_posts_for_its_own_site_with_its_api_key(world: World) -> None:
    key = onboard_http_device(world, "mw-scanner", "s206")
    auth = {"Authorization": f"Bearer {key}"}
    body = {"record_type": "medical_waste_collected", "at": now_iso(-5), "ref": "MW-88"}
    r = world.client.post("/ingest/v1/records", json=body, headers=auth)
    assert r.status_code == 201, r.text
    assert (r.json()["site_id"], r.json()["source"], r.json()["posted_by"]) == (
        "s206",
        "device",
        "mw-scanner",
    )
    r = world.client.post("/ingest/v1/records", json={**body, "site_id": "s206"}, headers=auth)
    assert r.status_code == 200, r.text  # the same record again (site named this time)
    r = world.client.post("/ingest/v1/records", json={**body, "site_id": "s102"}, headers=auth)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["details"][0]["field"] == "site_id"
    batch = {"records": [{**body, "ref": "MW-89"}, {**body, "ref": "MW-90", "site_id": "s102"}]}
    r = world.client.post("/ingest/v1/records/batch", json=batch, headers=auth)
    assert r.status_code == 403, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == ["records.1.site_id"]
    batch["records"].pop()
    r = world.client.post("/ingest/v1/records/batch", json=batch, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["created"] == 1
    assert [(x.site_id, x.source, x.ref) for x in rows(world)] == [
        ("s206", "device", "MW-88"),
        ("s206", "device", "MW-89"),
    ]
    assert record_audit(world) == []  # a device's records are their own trail (source, posted_by)

    # no key, a wrong key, a staff token: 401; a disabled device: 403
    for headers in ({}, {"Authorization": "Bearer wjk_000000000000_nope"}, world.admin):
        r = world.client.post("/ingest/v1/records", json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = world.patch("/devices/mw-scanner", "admin", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    r = world.client.post("/ingest/v1/records", json={**body, "ref": "MW-91"}, headers=auth)
    assert r.status_code == 403, r.text
    assert len(rows(world)) == 2


# ---- reading -------------------------------------------------------------------------------------


def test_the_list_filters_pages_and_keeps_to_the_callers_scope(world: World) -> None:
    posts = [
        ("s102", "medical_waste_collected", "bag-1", -3 * H),
        ("s102", "medical_waste_transferred", "bag-1", -2 * H),
        ("s106", "disinfection", None, -1 * H),
        ("s206", "medical_waste_collected", "bag-1", -30 * 60),
    ]
    for site, kind, ref, delta in posts:
        r = world.post("/records", "admin", json=record(site, kind, ref=ref, at=now_iso(delta)))
        assert r.status_code == 201, r.text

    def listed(query: str, who: str = "admin") -> list[tuple[str, str]]:
        r = world.get(f"/records{query}", who)
        assert r.status_code == 200, r.text
        return [(x["site_id"], x["record_type"]) for x in r.json()["items"]]

    assert listed("") == [
        ("s206", "medical_waste_collected"),  # newest first
        ("s106", "disinfection"),
        ("s102", "medical_waste_transferred"),
        ("s102", "medical_waste_collected"),
    ]
    assert listed("", "county102") == [
        ("s102", "medical_waste_transferred"),
        ("s102", "medical_waste_collected"),
    ]
    assert [s for s, _ in listed("", "wateruser")] == ["s106", "s102", "s102"]
    assert listed("", "ningbo") == [("s206", "medical_waste_collected")]
    assert listed("?site=s206", "wateruser") == []  # another tenant's: nothing, not an error
    assert listed("?tenant=hospital") == [("s206", "medical_waste_collected")]
    assert listed("?region=330106") == [("s106", "disinfection")]
    assert listed("?record_type=medical_waste_collected&ref=bag-1") == [
        ("s206", "medical_waste_collected"),
        ("s102", "medical_waste_collected"),
    ]
    assert listed("?source=device") == []
    since = now_iso(-2.5 * H).replace("+", "%2B")
    until = now_iso(-45 * 60).replace("+", "%2B")
    assert listed(f"?since={since}&until={until}") == [
        ("s106", "disinfection"),
        ("s102", "medical_waste_transferred"),
    ]
    page = world.get("/records?limit=1&offset=1", "admin").json()
    assert (page["total"], len(page["items"]), page["items"][0]["site_id"]) == (4, 1, "s106")
    assert page["items"][0]["ref"] is None
    assert world.get("/records?since=2026-01-01T00:00:00", "admin").status_code == 422
    assert world.get("/records?record_type=lunch", "admin").status_code == 422
    assert world.client.get("/records").status_code == 401


# ---- into the alert engine -----------------------------------------------------------------------


class Clock:
    """The engine's clock: the wall clock, moved forward by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def until(check: Callable[[], Any], within_s: float = 10.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def engine_client(
    world: World,
) -> AsyncIterator[tuple[httpx.AsyncClient, AlertEngine, Clock]]:
    ctx: GatewayContext = world.ctx
    contexts = RegistryContexts(ctx.registry)
    contexts.refresh()
    clock = Clock()
    engine = AlertEngine(
        contexts,
        AlertingSettings(warmup=False, startup_grace_s=0, tick_interval_s=0.05),
        store=AlertStore(ctx.registry),
        clock=clock,
    )
    async with engine:
        ctx.alerts = engine
        app = create_app(ctx, profiles=world.client.app.state.profiles, password_hasher=FAST_HASHER)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, engine, clock
        ctx.alerts = None


async def test_a_bag_not_handed_over_raises_then_clears_through_the_engine(
    world: World, engine_client: tuple[httpx.AsyncClient, AlertEngine, Clock]
) -> None:
    client, engine, clock = engine_client

    async def storage_alerts(who: str = "admin") -> list[dict[str, Any]]:
        r = await client.get("/alerts?rule=record:mw.storage", headers=world.headers[who])
        assert r.status_code == 200, r.text
        return r.json()["items"]

    collected = {"site_id": "s206", "record_type": "medical_waste_collected", "ref": "MW-7"}
    r = await client.post("/records", json={**collected, "at": now_iso(-60)}, headers=world.ningbo)
    assert r.status_code == 201, r.text
    other = {**collected, "ref": "MW-8", "at": now_iso(-30)}  # another bag, handed over in time
    r = await client.post("/records", json=other, headers=world.ningbo)
    assert r.status_code == 201, r.text
    done = {**other, "record_type": "medical_waste_transferred", "at": now_iso()}
    r = await client.post("/records", json=done, headers=world.ningbo)
    assert r.status_code == 201, r.text
    await asyncio.sleep(0.2)
    assert await storage_alerts() == []

    clock.offset = 24 * H + 60  # a day later, MW-7 is still in the temporary store
    alert = (await until(storage_alerts))[0]
    assert (alert["device_id"], alert["site_id"], alert["state"]) == ("s206", "s206", "firing")
    assert (alert["tenant_id"], alert["region_code"], alert["severity"]) == (
        "hospital",
        "330206",
        "warning",
    )
    assert alert["labels"]["waiting"] == 1
    assert await storage_alerts("wateruser") == []  # another tenant's alert
    # a retry of the collection (its stored time, another offset) stores and sends nothing
    r = await client.post(
        "/records", json={**collected, "at": stored_at(world, "MW-7")}, headers=world.ningbo
    )
    assert r.status_code == 200, r.text
    assert [a["id"] for a in await storage_alerts()] == [alert["id"]]

    hand_over = {**collected, "record_type": "medical_waste_transferred", "at": now_iso()}
    r = await client.post("/records", json=hand_over, headers=world.ningbo)
    assert r.status_code == 201, r.text
    assert engine.core is not None
    core = engine.core
    await until(  # the engine reads it at once (the gateway nudges it; its poll would anyway)
        lambda: not [a for a in core.book.open_alerts() if a.key.rule == "record:mw.storage"],
        within_s=2.0,
    )

    async def resolved() -> dict[str, Any] | None:
        body = (await client.get(f"/alerts/{alert['id']}", headers=world.admin)).json()
        return body if body["state"] == "resolved" else None

    alert = await until(resolved)
    assert alert["resolved_by"] is None  # cleared by itself: the record arrived
    assert len(await storage_alerts()) == 1


async def test_a_gateway_without_an_engine_feeds_the_engine_through_the_registry(
    world: World,
) -> None:
    """The gateway that takes the record runs no engine (``ctx.alerts`` None: ``alerting.tap:
    false``, another host); the engine elsewhere on the same registry reads it by its poll."""
    ctx: GatewayContext = world.ctx
    assert ctx.alerts is None
    contexts = RegistryContexts(ctx.registry)
    contexts.refresh()
    clock = Clock()
    engine = AlertEngine(
        contexts,
        AlertingSettings(warmup=False, startup_grace_s=0, tick_interval_s=0.05),
        store=AlertStore(ctx.registry),
        clock=clock,
    )

    def storage_alerts() -> list[dict[str, Any]]:
        r = world.get("/alerts?rule=record:mw.storage", "admin")
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async with engine:
        collected = {"site_id": "s206", "record_type": "medical_waste_collected", "ref": "MW-9"}
        body = {**collected, "at": now_iso(-60)}
        r = await asyncio.to_thread(world.post, "/records", "ningbo", json=body)
        assert r.status_code == 201, r.text
        await until(lambda: engine.stats.records_fed == 1)
        clock.offset = 24 * H + 60
        alert = (await until(lambda: storage_alerts()))[0]
        assert (alert["site_id"], alert["state"], alert["labels"]["waiting"]) == (
            "s206",
            "firing",
            1,
        )
        hand_over = {**collected, "record_type": "medical_waste_transferred", "at": now_iso()}
        r = await asyncio.to_thread(world.post, "/records", "ningbo", json=hand_over)
        assert r.status_code == 201, r.text
        await until(lambda: storage_alerts()[0]["state"] == "resolved")
        assert engine.stats.records_fed == 2


def stored_at(world: World, ref: str) -> str:
    """The stored time of the collection of bag ``ref``, in UTC ("Z")."""
    with world.ctx.registry.session() as session:
        at = session.execute(
            select(RecordEventRow.at).where(
                RecordEventRow.ref == ref, RecordEventRow.record_type == "medical_waste_collected"
            )
        ).scalar_one()
    return at.isoformat()


async def test_a_record_is_kept_when_the_engine_is_not_running(world: World) -> None:
    ctx = world.ctx
    engine = AlertEngine(
        RegistryContexts(ctx.registry),
        AlertingSettings(warmup=False, startup_grace_s=0),
        store=AlertStore(ctx.registry),
    )
    async with engine:
        pass  # started and stopped: record_event raises EngineUnavailable now
    ctx.alerts = engine
    try:
        app = create_app(ctx, profiles=world.client.app.state.profiles, password_hasher=FAST_HASHER)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {"site_id": "s102", "record_type": "disinfection", "at": now_iso(-1)}
            r = await client.post("/records", json=body, headers=world.county102)
            assert r.status_code == 201, r.text
    finally:
        ctx.alerts = None
    with ctx.registry.session() as session:
        assert session.execute(select(func.count()).select_from(RecordEventRow)).scalar_one() == 1


# ---- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.timeout(600)  # the first PostgreSQL test of a session may install and start it
def test_concurrent_retries_store_one_record_on_postgresql(
    fresh_postgres_url: str,  # noqa: F811
    profiles: Any,
) -> None:
    registry = Registry.open(fresh_postgres_url)
    assert registry.engine.dialect.name == "postgresql"
    ctx = GatewayContext(registry, GatewaySettings(), jwt_secret=JWT_SECRET)
    try:
        with make_client(ctx, profiles) as client:
            w = World(client, ctx)
            w.add_user("admin", "admin")
            assert w.post("/tenants", "admin", json={"id": "h", "name": "H"}).status_code == 201
            r = w.post("/sites", "admin", json=site_body("s1", "h", "330206"))
            assert r.status_code == 201, r.text
            for ref in ("MW-1", None):
                answers = post_at_once(w, record("s1", "medical_waste_collected", ref=ref), 4)
                assert sorted(answers) == [200, 200, 200, 201], answers
            listed = w.get("/records", "admin").json()
            assert listed["total"] == 2
            assert sorted(str(x["ref"]) for x in listed["items"]) == ["MW-1", "None"]
    finally:
        registry.close()


def post_at_once(w: World, body: dict[str, Any], n: int) -> list[int]:
    """Post the same record from ``n`` threads at once; their status codes."""
    barrier = threading.Barrier(n)
    answers: list[int] = []

    def post() -> None:
        barrier.wait()
        answers.append(w.post("/records", "admin", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers
