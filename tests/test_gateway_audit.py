"""The audit trail: who, what, when, before/after; written with the change; never a secret."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import PASSWORD, World, device_body, site_body
from tests.test_gateway_crud import assert_error


def entries(world: World, **params: object) -> list[dict]:
    r = world.get("/audit", "admin", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_changes_are_recorded_with_actor_before_and_after(world: World) -> None:
    world.post("/sites", "county102", json=site_body("pool", "water", "330102", venue_type="pool"))
    world.patch(
        "/sites/pool", "city", json={"name": "Municipal pool", "latitude": 30.2, "longitude": 120.1}
    )
    world.delete("/sites/pool", "admin")
    trail = entries(world, entity="site", entity_id="pool")
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("delete", "admin"),
        ("update", "city"),
        ("create", "county102"),
    ]
    delete, update, create = trail
    assert create["before"] is None
    assert create["after"]["venue_type"] == "pool"
    assert update["before"]["name"] == "Site pool"
    assert update["after"]["name"] == "Municipal pool"
    assert update["before"]["latitude"] is None
    assert update["after"]["latitude"] == 30.2
    assert delete["before"]["name"] == "Municipal pool"
    assert delete["after"] is None
    assert datetime.fromisoformat(create["at"]) <= datetime.fromisoformat(delete["at"])

    world.patch("/devices/d102", "admin", json={"status": "disabled"})
    (change,) = entries(world, entity="device", entity_id="d102", action="update")
    assert (change["before"]["status"], change["after"]["status"]) == ("active", "disabled")
    assert change["after"]["revision"] > change["before"]["revision"]


def test_no_secret_or_hash_reaches_the_trail(world: World) -> None:
    onboarded = world.post("/devices", "admin", json=device_body("air1", "s102")).json()
    rotated = world.post("/devices/air1/credentials/mqtt", "admin").json()
    web = world.post(
        "/devices",
        "admin",
        json=device_body("web1", "s102", profile="air_monitor_http", protocol="http"),
    ).json()
    token = world.post("/auth/api-tokens", "admin", json={"name": "script"}).json()["token"]
    user = world.post(
        "/users",
        "admin",
        json={
            "username": "newbie",
            "password": "sekrit pass 1",
            "role": "county_admin",
            "region_codes": ["330102"],
        },
    ).json()
    world.patch(f"/users/{user['id']}", "admin", json={"password": "another sekrit 2"})
    secrets = [
        onboarded["credentials"][0]["secret"],
        rotated["credential"]["secret"],
        web["credentials"][0]["secret"],
        token,
        token.split("_", 2)[2],
        "sekrit pass 1",
        "another sekrit 2",
        PASSWORD,
    ]
    dump = json.dumps(entries(world))
    for secret in secrets:
        assert secret not in dump
    for word in ("password_hash", "secret_hash", "$argon2", "sha256$", "$7$"):
        assert word not in dump

    issued = entries(world, entity="device", entity_id="air1", action="issue_credentials")
    assert [e["after"]["credentials"][0]["kind"] for e in issued] == ["mqtt", "mqtt"]
    (password_change,) = entries(world, entity="user", entity_id=str(user["id"]), action="update")
    assert password_change["detail"] == "password changed"
    assert password_change["actor"] == "admin"


def test_a_refused_change_leaves_no_entry(world: World) -> None:
    total = world.get("/audit", "admin").json()["total"]
    assert_error(
        world.post("/tenants", "admin", json={"id": "water", "name": "dup"}), 409, "conflict"
    )
    assert_error(world.delete("/sites/s102", "admin"), 409, "conflict")
    assert_error(world.patch("/sites/s106", "county102", json={"name": "x"}), 404, "not_found")
    assert world.get("/audit", "admin").json()["total"] == total


def test_audit_filters_and_pagination(world: World) -> None:
    everything = world.get("/audit", "admin").json()
    assert everything["total"] >= 10
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids, reverse=True)
    page = world.get("/audit", "admin", params={"limit": 3, "offset": 2}).json()
    assert [e["id"] for e in page["items"]] == ids[2:5]
    assert {e["actor"] for e in entries(world, actor="test")} == {"test"}
    assert {e["entity"] for e in entries(world, entity="tenant")} == {"tenant"}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert entries(world, since=future) == []
    assert len(entries(world, since=past, until=future)) == everything["total"]
    assert_error(
        world.get("/audit", "admin", params={"since": "2025-01-01T00:00:00"}),
        422,
        "validation_failed",
    )
    assert_error(
        world.get("/audit", "admin", params={"since": "9999-12-31T23:59:59-05:00"}),
        422,
        "validation_failed",
    )
    assert_error(
        world.get("/audit", "admin", params={"since": "yesterday"}), 422, "validation_failed"
    )
