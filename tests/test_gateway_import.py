"""Bulk import: every problem reported row by row before anything changes; all rows or none."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.context import GatewayContext
from gateway.settings import GatewaySettings
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import World, make_client
from tests.test_gateway_crud import assert_error

CSV = {"Content-Type": "text/csv"}
YAML = {"Content-Type": "application/yaml"}

SITES_WITH_PROBLEMS = """\
id,tenant_id,name,region_code,venue_type,latitude,longitude,attributes.shielded
ok1,water,Good one,330102,pool,30.25,120.16,
bad1,water,Bad region,33010,pool,,,
bad2,nobody,Unknown tenant,330102,hotel,,,
ok1,water,Duplicate of line 2,330102,pool,,,
s102,water,Exists already,330102,pool,,,
bad3,water,"Name with
a line break",330102,xray_room,,,true
bad4,water,Bad venue,330102,casino,,,
bad5,water,Latitude only,330102,pool,30.1,,
"""


def counts(world: World) -> tuple[int, int, int, int]:
    get = lambda path: world.get(path, "admin").json()["total"]  # noqa: E731
    return get("/tenants"), get("/sites"), get("/devices"), get("/audit")


def by_row(report: dict[str, Any]) -> dict[int, list[tuple[str | None, str]]]:
    out: dict[int, list[tuple[str | None, str]]] = {}
    for p in report["problems"]:
        out.setdefault(p["row"], []).append((p["field"], p["message"]))
    return out


def test_csv_dry_run_reports_every_problem_by_line_and_changes_nothing(world: World) -> None:
    before = counts(world)
    r = world.post(
        "/import",
        "admin",
        params={"resource": "sites", "dry_run": "true"},
        content=SITES_WITH_PROBLEMS,
        headers=CSV,
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["ok"] is False
    assert report["applied"] is False
    assert report["dry_run"] is True
    rows = by_row(report)
    assert sorted(rows) == [3, 4, 5, 6, 7, 9, 10]  # CSV line numbers; line 7 spans two lines
    assert [f for f, _ in rows[3]] == ["region_code"]
    assert rows[4] == [("tenant_id", "tenant 'nobody' does not exist")]
    assert rows[5][0][0] == "id"
    assert "row 2" in rows[5][0][1]
    assert rows[6][0][0] == "id"
    assert "already exists" in rows[6][0][1]
    assert rows[7] == [("name", "must not contain control characters (line breaks, tabs, NUL)")]
    assert [f for f, _ in rows[9]] == ["venue_type"]
    assert "both or neither" in rows[10][0][1]
    assert all(p["resource"] == "sites" for p in report["problems"])
    assert {p["id"] for p in report["problems"]} == {
        "bad1",
        "bad2",
        "ok1",
        "s102",
        "bad3",
        "bad4",
        "bad5",
    }
    assert report["summary"]["sites"] == {"rows": 8, "created": 1, "updated": 0, "failed": 7}
    assert counts(world) == before

    # The same file for real: refused with the error body, nothing applied (not even ok1).
    r = world.post(
        "/import", "admin", params={"resource": "sites"}, content=SITES_WITH_PROBLEMS, headers=CSV
    )
    error = assert_error(r, 422, "validation_failed")
    assert len(error["details"]) == len(report["problems"])
    assert {"resource", "row", "id", "field", "message"} <= set(error["details"][0])
    assert counts(world) == before
    assert_error(world.get("/sites/ok1", "admin"), 404, "not_found")


def test_fixed_csv_applies_all_rows(world: World) -> None:
    fixed = """\
id,tenant_id,name,region_code,venue_type,latitude,longitude,attributes.shielded
ok1,water,Good one,330102,pool,30.25,120.16,
ok2,water,Room 2,330106,xray_room,30.1,120.1,true
"""
    r = world.post(
        "/import",
        "admin",
        params={"resource": "sites", "dry_run": "true"},
        content=fixed,
        headers=CSV,
    )
    assert r.json()["ok"] is True
    assert r.json()["applied"] is False
    assert_error(world.get("/sites/ok1", "admin"), 404, "not_found")
    r = world.post("/import", "admin", params={"resource": "sites"}, content=fixed, headers=CSV)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is True
    assert r.json()["summary"]["sites"]["created"] == 2
    site = world.get("/sites/ok2", "admin").json()
    assert site["attributes"] == {"shielded": True}
    assert site["latitude"] == 30.1

    devices = """\
id,site_id,kind,profile,protocol,connection.host,connection.port,connection.unit_id,interval_s
p1,ok1,water_probe,water_probe_wq500,modbus_tcp,10.1.1.1,502,2,30
a1,ok2,air_monitor,air_monitor_iaq8,mqtt,,,,
"""
    r = world.post("/import", "admin", params={"resource": "devices"}, content=devices, headers=CSV)
    assert r.status_code == 200, r.text
    (cred,) = r.json()["credentials"]
    assert cred["device"] == "a1"
    assert cred["kind"] == "mqtt"
    assert cred["secret"]
    probe = world.get("/devices/p1", "admin").json()
    assert probe["connection"] == {"host": "10.1.1.1", "port": 502, "unit_id": 2}
    assert probe["interval_s"] == 30
    assert world.ctx.directory.get("a1") is not None
    assert world.ctx.directory.get("p1").region == "330102"


def test_yaml_import_with_references_inside_the_file(world: World) -> None:
    doc = {
        "tenants": [{"id": "hotelgroup", "name": "Hotel Group", "category": "hotel"}],
        "sites": [
            {
                "id": "h1",
                "tenant_id": "hotelgroup",
                "name": "Hotel 1",
                "region_code": 330102,
                "venue_type": "hotel",
            },
            {
                "id": "h2",
                "tenant_id": "hotelgroup",
                "name": "Hotel 2",
                "region_code": "330106",
                "venue_type": "hotel",
                "attributes": {"rooms": 120},
            },
        ],
        "devices": [
            {
                "id": "h1-air",
                "site_id": "h1",
                "kind": "air_monitor",
                "profile": "air_monitor_iaq8",
                "protocol": "mqtt",
            },
            {
                "id": "h2-ws",
                "site_id": "h2",
                "kind": "water_station",
                "profile": "water_station_ws900",
                "protocol": "hj212",
                "connection": {"mn": 12345678901234},
            },
        ],
    }
    r = world.post("/import", "admin", content=yaml.safe_dump(doc), headers=YAML)
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["devices"]["created"] == 2
    assert {c["device"] for c in r.json()["credentials"]} == {"h1-air", "h2-ws"}
    assert world.get("/devices/h2-ws", "admin").json()["connection"] == {"mn": "12345678901234"}
    assert world.get("/sites/h1", "admin").json()["region_code"] == "330102"

    # Upsert: existing rows updated (a region change re-versions the site's devices).
    doc2 = {
        "sites": [
            {
                "id": "h1",
                "tenant_id": "hotelgroup",
                "name": "Hotel One",
                "region_code": "330108",
                "venue_type": "hotel",
            }
        ]
    }
    assert_error(
        world.post("/import", "admin", content=yaml.safe_dump(doc2), headers=YAML),
        422,
        "validation_failed",
    )
    r = world.post(
        "/import", "admin", params={"mode": "upsert"}, content=yaml.safe_dump(doc2), headers=YAML
    )
    assert r.json()["summary"]["sites"] == {"rows": 1, "created": 0, "updated": 1, "failed": 0}
    assert world.get("/sites/h1", "admin").json()["name"] == "Hotel One"
    assert world.ctx.directory.get("h1-air").region == "330108"


def test_partial_failure_applies_nothing(world: World) -> None:
    before = counts(world)
    doc = {
        "tenants": [{"id": "newco", "name": "New Co"}],
        "sites": [
            {
                "id": "n1",
                "tenant_id": "newco",
                "name": "N1",
                "region_code": "330102",
                "venue_type": "tap",
            }
        ],
        "devices": [
            {
                "id": "n1-a",
                "site_id": "n1",
                "kind": "air_monitor",
                "profile": "air_monitor_iaq8",
                "protocol": "mqtt",
            },
            {
                "id": "n1-b",
                "site_id": "n1",
                "kind": "air_monitor",
                "profile": "air_monitor_iaq8",
                "protocol": "modbus_tcp",
            },
            {
                "id": "n1-c",
                "site_id": "missing",
                "kind": "air_monitor",
                "profile": "air_monitor_iaq8",
                "protocol": "mqtt",
            },
            "not a mapping",
        ],
    }
    r = world.post("/import", "admin", json=doc)
    error = assert_error(r, 422, "validation_failed")
    problems = {(d["resource"], d["row"], d["field"]) for d in error["details"]}
    assert problems == {
        ("devices", 2, "protocol"),
        ("devices", 2, "connection.host"),
        ("devices", 3, "site_id"),
        ("devices", 4, None),
    }
    assert counts(world) == before
    assert_error(world.get("/tenants/newco", "admin"), 404, "not_found")
    assert world.ctx.directory.get("n1-a") is None


def test_import_obeys_scope(world: World) -> None:
    rows = (
        "id,tenant_id,name,region_code,venue_type\nmine,water,M,330102,tap\n"
        "theirs,water,T,330106,tap\n"
    )
    r = world.post(
        "/import",
        "county102",
        params={"resource": "sites", "dry_run": True},
        content=rows,
        headers=CSV,
    )
    (problem,) = r.json()["problems"]
    assert problem["row"] == 3
    assert "330106" in problem["message"]
    upsert = "id,tenant_id,name,region_code,venue_type\ns106,water,Mine now,330106,tap\n"
    r = world.post(
        "/import",
        "county102",
        params={"resource": "sites", "mode": "upsert"},
        content=upsert,
        headers=CSV,
    )
    error = assert_error(r, 422, "validation_failed")
    assert error["details"][0]["message"] == "this id is already in use"
    assert world.get("/sites/s106", "admin").json()["name"] == "Site s106"


def test_malformed_imports(world: World) -> None:
    assert_error(
        world.post("/import", "admin", content="id,name\n", headers=CSV), 422, "validation_failed"
    )
    r = world.post(
        "/import",
        "admin",
        params={"resource": "tenants"},
        content="id,name,colour\nt,n,red\n",
        headers=CSV,
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "colour"
    assert_error(
        world.post("/import", "admin", content="a: [", headers=YAML), 422, "validation_failed"
    )
    assert_error(
        world.post("/import", "admin", content="tenants: 3", headers=YAML), 422, "validation_failed"
    )
    assert_error(
        world.post("/import", "admin", content="users: []", headers=YAML), 422, "validation_failed"
    )
    assert_error(
        world.post("/import", "admin", content=b"\xff\xfe", headers=CSV), 422, "validation_failed"
    )
    assert_error(
        world.post("/import", "admin", content="<x/>", headers={"Content-Type": "application/xml"}),
        415,
        "unsupported_media_type",
    )
    r = world.post(
        "/import",
        "admin",
        params={"resource": "tenants"},
        content="\ufeffid,name\n\nbom,With BOM\n",
        headers=CSV,
    )
    assert r.status_code == 200, r.text
    assert world.get("/tenants/bom", "admin").json()["name"] == "With BOM"


def test_too_many_rows_and_too_large_bodies(
    world: World, ctx: GatewayContext, profiles: Any
) -> None:
    rows = "id,name\n" + "".join(f"t{i},n\n" for i in range(10_001))
    r = world.post("/import", "admin", params={"resource": "tenants"}, content=rows, headers=CSV)
    error = assert_error(r, 413, "payload_too_large")
    assert "10000" in error["message"]
    assert world.get("/tenants", "admin").json()["total"] == 2

    small = GatewayContext(ctx.registry, GatewaySettings(max_body_bytes=1000), ctx.jwt_secret)
    with make_client(small, profiles) as client:
        auth = world.admin
        body = "id,name\n" + "".join(f"t{i},n\n" for i in range(200))
        r = client.post(
            "/import", params={"resource": "tenants"}, content=body, headers={**auth, **CSV}
        )
        assert_error(r, 413, "payload_too_large")

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(100):
                yield b"t,n\n" * 10

        r = client.post(
            "/import", params={"resource": "tenants"}, content=chunks(), headers={**auth, **CSV}
        )
        assert_error(r, 413, "payload_too_large")
        r = client.post(
            "/tenants", content=chunks(), headers={**auth, "Content-Type": "application/json"}
        )
        assert_error(r, 413, "payload_too_large")
        r = client.post(
            "/auth/token",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_error(r, 413, "payload_too_large")
        ok = client.post(
            "/import",
            params={"resource": "tenants"},
            content="id,name\nfits,n\n",
            headers={**auth, **CSV},
        )
        assert ok.status_code == 200, ok.text
    assert world.get("/tenants", "admin").json()["total"] == 3
