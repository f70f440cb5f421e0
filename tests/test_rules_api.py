"""Rules and per-site overrides through the gateway: reading the standards, who may change a limit,
validation that names the site and the rule, the audit trail, and the change reaching a real
alert engine at once.

The seeded world (tests/gateway_fixtures.py): tenant ``water`` with secondary-supply sites s102
(county 330102) and s106 (330106) in Hangzhou, tenant ``hospital`` with s206 (330206) in Ningbo.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from alerting.engine import AlertEngine, RegistryContexts
from alerting.rules import load_rules
from alerting.store import AlertStore
from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.registry.models import AuditEntry
from protocols.reading import Reading
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import FAST_HASHER, World, device_body
from weijian.config import AlertingSettings

RULE = "dw.turbidity.high"  # > 1.0 NTU, clears at 0.9, for 5 min (GB 5749)
STRICT = {"value": 0.5, "for_s": 0, "reason": "hospital supply: the district's stricter target"}


def audit(world: World) -> list[tuple[str, str, str, str]]:
    with world.ctx.registry.session() as session:
        found = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.entity_id, AuditEntry.detail)
            .where(AuditEntry.entity == "rule_override")
            .order_by(AuditEntry.id)
        ).all()
    return [tuple(row) for row in found]  # type: ignore[misc]


def test_everyone_signed_in_reads_the_rules_with_their_sources(world: World) -> None:
    everything = world.get("/rules", "wateruser")
    assert everything.status_code == 200, everything.text
    rules = everything.json()
    assert len(rules) == len(load_rules())
    assert all(r["standard"] and r["clause"] and r["confidence"] in "ABC" for r in rules)
    probe = world.get("/rules?kind=water_probe&quantity=turbidity_ntu", "county102").json()
    assert RULE in {r["id"] for r in probe}
    assert all("water_probe" in r["kinds"] and r["quantity"] == "turbidity_ntu" for r in probe)
    assert world.client.get("/rules").status_code == 401


def test_a_county_admin_overrides_a_rule_for_a_site_in_its_county(world: World) -> None:
    path = f"/sites/s102/rule-overrides/{RULE}"
    created = world.request("PUT", path, "county102", json=STRICT)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["site_id"], body["rule_id"], body["value"], body["for_s"]) == (
        "s102",
        RULE,
        0.5,
        0.0,
    )
    assert body["created_by"] == "county102"
    # the site's effective rules show it, with its reason; the neighbouring site keeps the file's
    effective = {r["id"]: r for r in world.get("/sites/s102/rules", "wateruser").json()}
    turbidity = effective[RULE]
    assert (turbidity["value"], turbidity["for_s"], turbidity["override_reason"]) == (
        0.5,
        0.0,
        STRICT["reason"],
    )
    assert turbidity["clear_value"] == pytest.approx(0.4)  # the hysteresis band moved with it
    other = {r["id"]: r for r in world.get("/sites/s106/rules", "admin").json()}[RULE]
    assert (other["value"], other["override_reason"]) == (1.0, None)
    # replaced: 200, same row; listed; both changes audited with the reason
    replaced = world.request(
        "PUT", path, "county102", json={"enabled": False, "reason": "probe being replaced"}
    )
    assert replaced.status_code == 200, replaced.text
    assert [o["rule_id"] for o in world.get("/sites/s102/rule-overrides", "admin").json()] == [RULE]
    assert RULE not in {
        r["id"] for r in world.get("/sites/s102/rules", "admin").json() if r["enabled"]
    }
    # removing it takes a reason too, and the file's rule applies again
    assert world.delete(path, "county102").status_code == 422
    removed = world.delete(f"{path}?reason=probe%20replaced", "county102")
    assert removed.status_code == 204, removed.text
    assert world.delete(f"{path}?reason=again", "county102").status_code == 404
    assert world.get("/sites/s102/rule-overrides", "admin").json() == []
    assert audit(world) == [
        ("county102", "rule_override.create", f"s102:{RULE}", STRICT["reason"]),
        ("county102", "rule_override.update", f"s102:{RULE}", "probe being replaced"),
        ("county102", "rule_override.delete", f"s102:{RULE}", "probe replaced"),
    ]


def test_who_may_not_change_a_limit(world: World) -> None:
    path = f"/sites/s102/rule-overrides/{RULE}"
    # a tenant user is judged by the limits: it may read them, never change them
    assert world.request("PUT", path, "wateruser", json=STRICT).status_code == 403
    assert world.get("/sites/s102/rule-overrides", "wateruser").status_code == 200
    # outside one's jurisdiction the site does not exist
    assert world.request("PUT", path, "county106", json=STRICT).status_code == 404
    assert world.request("PUT", path, "ningbo", json=STRICT).status_code == 404
    assert world.get("/sites/s206/rules", "wateruser").status_code == 404
    assert world.client.put(path, json=STRICT).status_code == 401
    assert audit(world) == []


def test_overrides_are_validated_like_the_rule_files(world: World) -> None:
    def put(rule: str, body: dict[str, Any]) -> Any:
        return world.request("PUT", f"/sites/s102/rule-overrides/{rule}", "admin", json=body)

    assert put("no.such.rule", STRICT).status_code == 404
    wrong_side = put(RULE, {"value": 0.5, "clear_value": 0.7, "reason": "x"})
    assert wrong_side.status_code == 422, wrong_side.text
    message = wrong_side.json()["error"]["message"]
    assert "site 's102'" in message
    assert RULE in message
    nothing = put(RULE, {"reason": "no change"})
    assert nothing.status_code == 422
    assert "overrides nothing" in nothing.json()["error"]["message"]
    for bad in (
        {"value": 0.5},  # no reason
        {"value": 0.5, "reason": "   "},
        {"value": 0.5, "reason": "line\nbreak"},
        {"value": "NaN", "reason": "x"},
        {"value": 0.5, "severity": "apocalyptic", "reason": "x"},
        {"value": 0.5, "for_s": -1, "reason": "x"},
        {"value": 0.5, "limit": 3, "reason": "x"},  # unknown field
    ):
        assert put(RULE, bad).status_code == 422, bad
    assert audit(world) == []


@pytest.fixture
async def engine_client(world: World) -> AsyncIterator[tuple[httpx.AsyncClient, AlertEngine]]:
    ctx: GatewayContext = world.ctx
    r = world.post(
        "/devices",
        "admin",
        json=device_body(
            "probe-102",
            "s102",
            kind="water_probe",
            profile="water_probe_wq500",
            protocol="modbus_tcp",
            connection={"host": "127.0.0.1", "port": 1502, "unit_id": 1},
        ),
    )
    assert r.status_code == 201, r.text
    contexts = RegistryContexts(ctx.registry)
    contexts.refresh()
    ctx.device_listeners.append(contexts.refresh)  # as the platform wires it
    engine = AlertEngine(
        contexts,
        AlertingSettings(warmup=False, startup_grace_s=0, tick_interval_s=0.05),
        store=AlertStore(ctx.registry),
    )
    async with engine:
        ctx.alerts = engine
        app = create_app(ctx, profiles=world.client.app.state.profiles, password_hasher=FAST_HASHER)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, engine
        ctx.alerts = None


async def test_an_override_judges_the_next_reading(
    world: World, engine_client: tuple[httpx.AsyncClient, AlertEngine]
) -> None:
    client, engine = engine_client

    def reading(ntu: float) -> Reading:
        return Reading(
            "water",
            "s102",
            "probe-102",
            "water_probe",
            "330102",
            int(time.time() * 1000),
            {"turbidity_ntu": ntu},
        )

    def open_turbidity() -> list[Any]:
        assert engine.core is not None
        return [a for a in engine.core.book.open_alerts() if a.key == ("probe-102", RULE)]

    engine.listener(reading(0.7))  # within GB 5749's 1 NTU
    assert open_turbidity() == []
    r = await client.put(f"/sites/s102/rule-overrides/{RULE}", json=STRICT, headers=world.admin)
    assert r.status_code == 201, r.text
    await asyncio.sleep(0.05)
    engine.listener(reading(0.7))  # the same value now breaks the site's 0.5, `for` 0
    alerts = open_turbidity()
    assert [(a.state.value, a.limit) for a in alerts] == [("firing", 0.5)]
    assert alerts[0].labels["override"] == STRICT["reason"]
    # the override removed, a good reading under the file's rule clears it (clear_for permitting)
    r = await client.delete(f"/sites/s102/rule-overrides/{RULE}?reason=done", headers=world.admin)
    assert r.status_code == 204, r.text
    engine.listener(reading(0.2))
    assert engine.core is not None
    assert engine.core.stats.errors == 0
