"""Gateway CRUD: tenants, sites, devices, jurisdictions, users; pagination, filters, errors,
onboarding, and the device directory following every device change."""

from __future__ import annotations

from typing import Any

from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import World, device_body, site_body


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error body: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]


def fields(error: dict[str, Any]) -> set[str]:
    return {d["field"] for d in error["details"]}


# ---- tenants -----------------------------------------------------------------------------------


def test_tenant_crud_pagination_and_conflicts(world: World) -> None:
    for i in range(5):
        r = world.post(
            "/tenants", "admin", json={"id": f"t{i}", "name": f"T {i}", "category": "hotel"}
        )
        assert r.status_code == 201, r.text
    page = world.get("/tenants", "admin", params={"limit": 2, "offset": 2, "category": "hotel"})
    assert page.json()["total"] == 5
    assert [t["id"] for t in page.json()["items"]] == ["t2", "t3"]
    assert page.json()["limit"] == 2
    assert page.json()["offset"] == 2

    assert_error(
        world.post("/tenants", "admin", json={"id": "t1", "name": "again"}), 409, "conflict"
    )
    r = world.patch("/tenants/t1", "admin", json={"name": "Renamed", "contact": "0571-1234"})
    assert r.json()["name"] == "Renamed"
    assert r.json()["category"] == "hotel"
    assert_error(world.patch("/tenants/t1", "admin", json={"name": None}), 422, "validation_failed")
    assert world.delete("/tenants/t1", "admin").status_code == 204
    assert_error(world.get("/tenants/t1", "admin"), 404, "not_found")

    error = assert_error(world.delete("/tenants/water", "admin"), 409, "conflict")
    assert "site" in error["message"]
    world.post("/tenants", "admin", json={"id": "lonely", "name": "Lonely"})
    world.add_user("lonelyuser", "tenant_user", tenant="lonely")
    error = assert_error(world.delete("/tenants/lonely", "admin"), 409, "conflict")
    assert "user" in error["message"]


def test_validation_errors_use_the_one_body(world: World) -> None:
    error = assert_error(
        world.post("/sites", "admin", json=site_body("x1", "water", "33010", latitude=91)),
        422,
        "validation_failed",
    )
    assert {"region_code", "latitude"} <= fields(error)
    assert all(d["location"] == "body" for d in error["details"])

    error = assert_error(
        world.post("/sites", "admin", json={**site_body("x1", "water", "330102"), "colour": "red"}),
        422,
        "validation_failed",
    )
    assert "colour" in fields(error)
    error = assert_error(
        world.post("/sites", "admin", json=site_body("x1", "water", "330102", latitude=30.2)),
        422,
        "validation_failed",
    )
    assert "both or neither" in error["message"]
    assert_error(
        world.post("/sites", "admin", json=site_body("x1", "water", "330102", venue_type="casino")),
        422,
        "validation_failed",
    )
    assert_error(
        world.post("/sites", "admin", json=site_body("bad id!", "water", "330102")),
        422,
        "validation_failed",
    )
    assert_error(
        world.post("/sites", "admin", json=site_body("x1", "water", "330102", name="a\x00b")),
        422,
        "validation_failed",
    )
    # NaN is not JSON, but Python's parser accepts it: the schema refuses it.
    raw = (
        '{"id": "x1", "tenant_id": "water", "name": "n", "region_code": "330102", '
        '"venue_type": "pool", "latitude": NaN, "longitude": 1}'
    )
    assert_error(
        world.post("/sites", "admin", content=raw, headers={"Content-Type": "application/json"}),
        422,
        "validation_failed",
    )
    assert_error(
        world.post(
            "/sites", "admin", content="{not json", headers={"Content-Type": "application/json"}
        ),
        422,
        "validation_failed",
    )
    error = assert_error(
        world.get("/sites", "admin", params={"limit": 1001}), 422, "validation_failed"
    )
    assert error["details"][0]["location"] == "query"
    assert_error(world.get("/sites", "admin", params={"offset": 10**30}), 422, "validation_failed")
    assert_error(world.get("/users/99999999999999999999", "admin"), 422, "validation_failed")
    assert_error(
        world.client.put("/sites/s102", headers=world.admin, json={}), 405, "method_not_allowed"
    )
    assert_error(world.client.get("/no/such/thing"), 404, "not_found")
    assert_error(
        world.post("/sites", "admin", json=site_body("x1", "nobody", "330102")),
        422,
        "validation_failed",
    )


def test_unexpected_exception_is_a_logged_500_with_the_error_body(world: World) -> None:
    def boom() -> None:
        raise RuntimeError("bug")

    world.client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    error = assert_error(world.client.get("/boom"), 500, "internal")
    assert "bug" not in error["message"]


# ---- sites -------------------------------------------------------------------------------------


def test_site_filters_immutable_tenant_and_children(world: World) -> None:
    world.post(
        "/sites",
        "admin",
        json=site_body(
            "pool1",
            "hospital",
            "330106",
            venue_type="pool",
            latitude=30.3,
            longitude=120.1,
            attributes={"indoor": True},
        ),
    )
    ids = lambda r: [s["id"] for s in r.json()["items"]]  # noqa: E731
    assert ids(world.get("/sites", "admin", params={"tenant": "water"})) == ["s102", "s106"]
    assert ids(world.get("/sites", "admin", params={"region": "3301"})) == ["pool1", "s102", "s106"]
    assert ids(world.get("/sites", "admin", params={"region": "330106"})) == ["pool1", "s106"]
    assert ids(world.get("/sites", "admin", params={"venue_type": "pool"})) == ["pool1"]
    assert_error(world.get("/sites", "admin", params={"region": "33x"}), 422, "validation_failed")

    site = world.get("/sites/pool1", "admin").json()
    assert site["attributes"] == {"indoor": True}
    assert site["latitude"] == 30.3
    error = assert_error(
        world.patch("/sites/pool1", "admin", json={"tenant_id": "water"}), 422, "validation_failed"
    )
    assert "tenant" in error["message"]
    r = world.patch("/sites/pool1", "admin", json={"tenant_id": "hospital", "name": "Pool"})
    assert r.status_code == 200
    assert r.json()["name"] == "Pool"
    r = world.patch("/sites/pool1", "admin", json={"latitude": None, "longitude": None})
    assert r.json()["latitude"] is None
    assert_error(
        world.patch("/sites/pool1", "admin", json={"latitude": 10}), 422, "validation_failed"
    )

    error = assert_error(world.delete("/sites/s102", "admin"), 409, "conflict")
    assert "device" in error["message"]
    assert world.delete("/sites/pool1", "admin").status_code == 204
    assert_error(world.get("/sites/pool1", "admin"), 404, "not_found")


# ---- devices and onboarding --------------------------------------------------------------------


def test_onboarding_per_protocol(world: World) -> None:
    r = world.post("/devices", "admin", json=device_body("air1", "s102"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["device"]["tenant_id"] == "water"
    assert body["device"]["region_code"] == "330102"
    assert body["device"]["interval_s"] == 60  # the profile's
    (cred,) = body["credentials"]
    assert cred["kind"] == "mqtt"
    assert cred["username"] == "air1"
    assert len(cred["secret"]) >= 20
    connect = body["connect"]
    assert connect["topic"] == "weijian/v1/water/s102/air1/telemetry"
    assert connect["host"] == "127.0.0.1"
    assert connect["port"] == 1883
    assert connect["username"] == "air1"
    assert connect["password"] == cred["secret"]

    r = world.post(
        "/devices",
        "admin",
        json=device_body(
            "web1", "s102", profile="air_monitor_http", protocol="http", interval_s=30
        ),
    )
    assert r.status_code == 201, r.text
    (cred,) = r.json()["credentials"]
    assert cred["kind"] == "api_key"
    assert cred["secret"].startswith("wjk_")
    assert r.json()["connect"]["url"] == "/ingest/v1/readings"
    assert r.json()["connect"]["authorization"] == f"Bearer {cred['secret']}"
    assert r.json()["device"]["interval_s"] == 30

    probe = {
        "id": "probe1",
        "site_id": "s102",
        "kind": "water_probe",
        "profile": "water_probe_wq500",
        "protocol": "modbus_tcp",
        "connection": {"host": "10.0.0.7", "port": 502, "unit_id": 3},
    }
    r = world.post("/devices", "admin", json=probe)
    assert r.status_code == 201, r.text
    assert r.json()["credentials"] == []
    assert "10.0.0.7:502" in r.json()["connect"]["instructions"]
    rtu = {
        **probe,
        "id": "probe2",
        "protocol": "modbus_rtu",
        "connection": {"serial_port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E"},
    }
    assert world.post("/devices", "admin", json=rtu).status_code == 201
    rtu_tcp = {**probe, "id": "probe3", "protocol": "modbus_rtu_tcp"}
    assert world.post("/devices", "admin", json=rtu_tcp).status_code == 201

    station = {
        "id": "ws1",
        "site_id": "s102",
        "kind": "water_station",
        "profile": "water_station_ws900",
        "protocol": "hj212",
        "connection": {"mn": "88888880000001"},
    }
    r = world.post("/devices", "admin", json=station)
    assert r.status_code == 201, r.text
    (cred,) = r.json()["credentials"]
    assert cred["kind"] == "hj212"
    assert cred["secret"]
    assert r.json()["connect"]["mn"] == "88888880000001"
    error = assert_error(
        world.post("/devices", "admin", json={**station, "id": "ws2"}), 409, "conflict"
    )
    assert "MN" in error["message"]

    dose = {
        "id": "dose1",
        "site_id": "s102",
        "kind": "dose_rate_monitor",
        "profile": "dose_rate_monitor_gr10",
        "protocol": "coap",
    }
    r = world.post("/devices", "admin", json=dose)
    assert r.json()["credentials"][0]["kind"] == "coap_token"
    assert r.json()["connect"]["token"] == r.json()["credentials"][0]["secret"]


def test_device_validation(world: World) -> None:
    error = assert_error(
        world.post("/devices", "admin", json=device_body("x", "s102", kind="water_probe")),
        422,
        "validation_failed",
    )
    assert fields(error) == {"kind"}
    error = assert_error(
        world.post("/devices", "admin", json=device_body("x", "s102", protocol="http")),
        422,
        "validation_failed",
    )
    assert fields(error) == {"protocol"}
    assert_error(
        world.post("/devices", "admin", json=device_body("x", "s102", profile="nope")),
        422,
        "validation_failed",
    )
    assert_error(
        world.post("/devices", "admin", json=device_body("x", "s102", protocol="smtp")),
        422,
        "validation_failed",
    )
    assert_error(
        world.post("/devices", "admin", json=device_body("x", "s102", interval_s=0)),
        422,
        "validation_failed",
    )
    error = assert_error(
        world.post(
            "/devices", "admin", json=device_body("x", "s102", connection={"host": "10.0.0.1"})
        ),
        422,
        "validation_failed",
    )
    assert fields(error) == {"connection.host"}
    probe = {
        "id": "x",
        "site_id": "s102",
        "kind": "water_probe",
        "profile": "water_probe_wq500",
        "protocol": "modbus_tcp",
        "connection": {"host": "10.0.0.7", "port": 70000, "unit_id": 248},
    }
    error = assert_error(world.post("/devices", "admin", json=probe), 422, "validation_failed")
    assert fields(error) == {"connection.port", "connection.unit_id"}
    probe["connection"] = {"port": 502}
    error = assert_error(world.post("/devices", "admin", json=probe), 422, "validation_failed")
    assert fields(error) == {"connection.host"}
    probe.update(
        protocol="modbus_rtu",
        connection={"serial_port": "/dev/ttyUSB0", "baudrate": 1234, "parity": "X"},
    )
    error = assert_error(world.post("/devices", "admin", json=probe), 422, "validation_failed")
    assert fields(error) == {"connection.baudrate", "connection.parity"}
    station = {
        "id": "x",
        "site_id": "s102",
        "kind": "water_station",
        "profile": "water_station_ws900",
        "protocol": "hj212",
        "connection": {"mn": "x" * 25},
    }
    assert_error(world.post("/devices", "admin", json=station), 422, "validation_failed")
    assert_error(world.post("/devices", "admin", json=device_body("d102", "s102")), 409, "conflict")
    assert_error(
        world.post("/devices", "admin", json=device_body("x", "nosite")), 422, "validation_failed"
    )
    error = assert_error(
        world.patch("/devices/d102", "admin", json={"protocol": "hj212"}), 422, "validation_failed"
    )
    assert "protocol" in fields(error)


def test_device_filters(world: World) -> None:
    world.post(
        "/devices",
        "admin",
        json=device_body(
            "web1", "s106", profile="air_monitor_http", protocol="http", status="disabled"
        ),
    )
    ids = lambda **p: [d["id"] for d in world.get("/devices", "admin", params=p).json()["items"]]  # noqa: E731
    assert ids() == ["d102", "d106", "d206", "web1"]
    assert ids(tenant="water") == ["d102", "d106", "web1"]
    assert ids(site="s106") == ["d106", "web1"]
    assert ids(protocol="http") == ["web1"]
    assert ids(status="active") == ["d102", "d106", "d206"]
    assert ids(region="3302") == ["d206"]
    assert ids(kind="air_monitor", region="330106") == ["d106", "web1"]
    assert ids(kind="sterilizer") == []
    page = world.get("/devices", "admin", params={"limit": 1, "offset": 3}).json()
    assert page["total"] == 4
    assert [d["id"] for d in page["items"]] == ["web1"]
    assert_error(
        world.get("/devices", "admin", params={"status": "broken"}), 422, "validation_failed"
    )


def test_directory_follows_device_changes(world: World) -> None:
    directory = world.ctx.directory
    assert directory is not None
    assert world.post("/devices", "admin", json=device_body("new1", "s102")).status_code == 201
    info = directory.get("new1")
    assert info is not None
    assert (info.tenant, info.site, info.region) == ("water", "s102", "330102")

    revision = world.get("/devices/new1", "admin").json()["revision"]
    r = world.patch("/devices/new1", "admin", json={"status": "disabled"})
    assert r.json()["revision"] > revision
    assert directory.get("new1") is None
    world.patch("/devices/new1", "admin", json={"status": "active"})
    assert directory.get("new1") is not None

    r = world.patch("/sites/s102", "admin", json={"region_code": "330108"})
    assert r.status_code == 200, r.text
    assert directory.get("new1").region == "330108"
    assert directory.get("d102").region == "330108"
    assert world.get("/devices/d102", "admin").json()["region_code"] == "330108"

    r = world.patch("/devices/new1", "admin", json={"site_id": "s106"})
    assert r.json()["site_id"] == "s106"
    assert directory.get("new1").site == "s106"

    assert world.delete("/devices/new1", "admin").status_code == 204
    assert directory.get("new1") is None
    assert_error(world.get("/devices/new1", "admin"), 404, "not_found")
    # Re-created under the same id: the tombstone goes, the device is back.
    assert world.post("/devices", "admin", json=device_body("new1", "s206")).status_code == 201
    assert directory.get("new1").site == "s206"
    fresh = type(directory)(world.ctx.registry)
    fresh.refresh()
    assert {d.device for d in fresh} == {"d102", "d106", "d206", "new1"}


def test_credential_rotation_and_revocation(world: World) -> None:
    first = world.post("/devices", "admin", json=device_body("air1", "s102")).json()
    old = first["credentials"][0]
    r = world.post("/devices/air1/credentials/mqtt", "admin")
    assert r.status_code == 200, r.text
    new = r.json()["credential"]
    assert new["secret"] != old["secret"]
    assert new["key_id"] != old["key_id"]
    assert r.json()["connect"]["password"] == new["secret"]
    listed = world.get("/devices/air1/credentials", "admin").json()
    assert [(c["key_id"], c["revoked_at"] is None) for c in listed] == [
        (old["key_id"], False),
        (new["key_id"], True),
    ]
    assert all("secret" not in c and "secret_hash" not in c for c in listed)
    error = assert_error(
        world.post("/devices/air1/credentials/api_key", "admin"), 422, "validation_failed"
    )
    assert "mqtt" in error["message"]
    assert_error(
        world.post("/devices/air1/credentials/password", "admin"), 422, "validation_failed"
    )
    assert world.delete(
        "/devices/air1/credentials", "admin", params={"kind": "api_key"}
    ).json() == {"revoked": 0}
    assert world.delete("/devices/air1/credentials", "admin").json() == {"revoked": 1}
    listed = world.get("/devices/air1/credentials", "admin").json()
    assert all(c["revoked_at"] is not None for c in listed)


# ---- jurisdictions and users -------------------------------------------------------------------


def test_jurisdictions(world: World) -> None:
    officer = {
        "name": "Li Wei",
        "role": "inspector",
        "channels": [
            {"type": "email", "address": "li@example.cn"},
            {"type": "sms", "address": "+8613800000000"},
        ],
    }
    r = world.post(
        "/jurisdictions",
        "admin",
        json={"region_code": "330102", "name": "Shangcheng", "officers": [officer]},
    )
    assert r.status_code == 201, r.text
    world.post("/jurisdictions", "admin", json={"region_code": "330206", "name": "Beilun"})
    assert_error(
        world.post("/jurisdictions", "admin", json={"region_code": "330102", "name": "again"}),
        409,
        "conflict",
    )
    bad = {**officer, "channels": [{"type": "email", "address": "not an address"}]}
    assert_error(
        world.post(
            "/jurisdictions",
            "admin",
            json={"region_code": "330106", "name": "X", "officers": [bad]},
        ),
        422,
        "validation_failed",
    )
    r = world.patch("/jurisdictions/330102", "admin", json={"officers": []})
    assert r.json()["officers"] == []
    listed = world.get("/jurisdictions", "admin", params={"region": "3301"}).json()
    assert [j["region_code"] for j in listed["items"]] == ["330102"]
    assert world.delete("/jurisdictions/330206", "admin").status_code == 204
    assert_error(world.get("/jurisdictions/330206", "admin"), 404, "not_found")


def test_users_role_rules(world: World) -> None:
    base = {"username": "newbie", "password": "long enough password"}
    for body in (
        {**base, "role": "county_admin"},
        {**base, "role": "county_admin", "region_codes": ["330100"]},
        {**base, "role": "city_admin", "region_codes": ["330102"]},
        {**base, "role": "tenant_user"},
        {**base, "role": "admin", "tenant_id": "water"},
        {**base, "role": "emperor"},
        {**base, "role": "admin", "password": "short"},
    ):
        assert_error(world.post("/users", "admin", json=body), 422, "validation_failed")
    assert_error(
        world.post("/users", "admin", json={**base, "role": "tenant_user", "tenant_id": "nobody"}),
        422,
        "validation_failed",
    )
    r = world.post(
        "/users",
        "admin",
        json={**base, "role": "county_admin", "region_codes": ["330102", "330106"]},
    )
    assert r.status_code == 201, r.text
    user = r.json()
    assert "password" not in user
    assert "password_hash" not in user
    assert_error(world.post("/users", "admin", json={**base, "role": "admin"}), 409, "conflict")
    assert_error(
        world.patch(f"/users/{user['id']}", "admin", json={"role": "tenant_user"}),
        422,
        "validation_failed",
    )
    r = world.patch(
        f"/users/{user['id']}",
        "admin",
        json={"role": "tenant_user", "region_codes": [], "tenant_id": "water"},
    )
    assert r.status_code == 200, r.text
    listed = world.get("/users", "admin", params={"role": "tenant_user"}).json()
    assert {u["username"] for u in listed["items"]} == {"newbie", "wateruser"}

    admin_id = world.users["admin"]
    error = assert_error(
        world.patch(f"/users/{admin_id}", "admin", json={"active": False}), 409, "conflict"
    )
    assert "last active admin" in error["message"]
    assert_error(world.delete(f"/users/{admin_id}", "admin"), 409, "conflict")
    assert world.delete(f"/users/{user['id']}", "admin").status_code == 204
    assert_error(world.get(f"/users/{user['id']}", "admin"), 404, "not_found")


# ---- app ---------------------------------------------------------------------------------------


def test_health_and_openapi(world: World) -> None:
    r = world.client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    spec = world.client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Weijian gateway"
    schemas = spec["components"]["schemas"]
    assert "ErrorResponse" in schemas
    assert "HTTPValidationError" not in schemas
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert any(code.startswith("2") for code in responses), (method, path)
            takes_input = operation.get("parameters") or operation.get("requestBody")
            if takes_input:
                assert "422" in responses, (method, path)
            if path not in ("/health", "/auth/token"):
                assert "401" in responses, (method, path)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, code)
