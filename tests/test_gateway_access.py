"""Every cross-boundary access is refused: other counties, other cities, other tenants, read-only
roles, dead accounts, expired or revoked tokens.

The seeded world (tests/gateway_fixtures.py): tenant ``water`` has sites s102 (county 330102)
and s106 (330106), tenant ``hospital`` has s206 (Ningbo, 330206); device dNNN on site sNNN.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from gateway.registry.models import User
from gateway.security import issue_access_token
from tests.gateway_fixtures import *  # noqa: F403
from tests.gateway_fixtures import JWT_SECRET, PASSWORD, World, device_body, site_body
from tests.test_gateway_crud import assert_error


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_county_admin_cannot_reach_another_county(world: World) -> None:
    who = "county102"
    assert ids(world.get("/sites", who)) == ["s102"]
    assert ids(world.get("/devices", who)) == ["d102"]
    assert ids(world.get("/sites", who, params={"region": "330106"})) == []
    assert ids(world.get("/devices", who, params={"site": "s106"})) == []
    assert world.get("/sites", who, params={"tenant": "water"}).json()["total"] == 1

    # Reads, changes and deletions of objects in 330106: not found, as if absent.
    for method, path, body in (
        ("GET", "/sites/s106", None),
        ("PATCH", "/sites/s106", {"name": "mine now"}),
        ("DELETE", "/sites/s106", None),
        ("GET", "/devices/d106", None),
        ("PATCH", "/devices/d106", {"status": "disabled"}),
        ("DELETE", "/devices/d106", None),
        ("GET", "/devices/d106/credentials", None),
        ("POST", "/devices/d106/credentials/mqtt", None),
        ("DELETE", "/devices/d106/credentials", None),
    ):
        r = world.request(method, path, who, json=body)
        assert_error(r, 404, "not_found")
    hidden = assert_error(world.get("/sites/s106", who), 404, "not_found")
    absent = assert_error(world.get("/sites/s999", who), 404, "not_found")
    assert hidden["message"] == absent["message"].replace("s999", "s106")

    # Creating in, or moving into, another county: refused.
    error = assert_error(
        world.post("/sites", who, json=site_body("new", "water", "330106")), 403, "forbidden"
    )
    assert "330106" in error["message"]
    assert_error(world.patch("/sites/s102", who, json={"region_code": "330106"}), 403, "forbidden")
    assert_error(
        world.post("/devices", who, json=device_body("new", "s106")), 422, "validation_failed"
    )
    assert_error(
        world.patch("/devices/d102", who, json={"site_id": "s106"}), 422, "validation_failed"
    )
    # Tenant spanning both counties: readable, not changeable by one county.
    assert world.get("/tenants/water", who).status_code == 200
    assert_error(world.patch("/tenants/water", who, json={"name": "x"}), 403, "forbidden")
    assert_error(world.delete("/tenants/water", who), 403, "forbidden")

    # Nothing changed behind the refusals.
    assert world.get("/sites/s106", "admin").json()["name"] == "Site s106"
    assert world.get("/devices/d106", "admin").json()["status"] == "active"
    assert len(world.get("/devices/d106/credentials", "admin").json()) == 1

    # Within its own county it works.
    assert world.post("/sites", who, json=site_body("new", "water", "330102")).status_code == 201
    assert world.post("/devices", who, json=device_body("newd", "new")).status_code == 201
    assert world.patch("/sites/s102", who, json={"name": "ok"}).status_code == 200
    assert world.post("/tenants", who, json={"id": "clinic", "name": "Clinic"}).status_code == 201


def test_city_admin_sees_its_city_only(world: World) -> None:
    assert ids(world.get("/sites", "city")) == ["s102", "s106"]
    assert ids(world.get("/devices", "city")) == ["d102", "d106"]
    assert_error(world.get("/sites/s206", "city"), 404, "not_found")
    assert_error(world.get("/devices/d206", "city"), 404, "not_found")
    assert_error(
        world.patch("/devices/d206", "city", json={"status": "disabled"}), 404, "not_found"
    )
    assert_error(
        world.post("/sites", "city", json=site_body("nb", "hospital", "330206")), 403, "forbidden"
    )
    assert (
        world.post("/sites", "city", json=site_body("hz", "hospital", "330108")).status_code == 201
    )
    # All of tenant water's sites are in Hangzhou: the city admin may change it.
    assert world.patch("/tenants/water", "city", json={"contact": "x"}).status_code == 200
    assert_error(world.patch("/tenants/hospital", "city", json={"contact": "x"}), 403, "forbidden")

    assert ids(world.get("/sites", "ningbo")) == ["s206"]
    assert ids(world.get("/devices", "ningbo")) == ["d206"]
    assert_error(world.get("/sites/s102", "ningbo"), 404, "not_found")


def test_tenant_user_reads_its_own_tenant_only(world: World) -> None:
    who = "wateruser"
    assert ids(world.get("/sites", who)) == ["s102", "s106"]
    assert ids(world.get("/devices", who)) == ["d102", "d106"]
    assert ids(world.get("/tenants", who)) == ["water"]
    assert world.get("/devices/d106", who).status_code == 200
    for path in ("/sites/s206", "/devices/d206", "/tenants/hospital", "/devices/d206/credentials"):
        assert_error(world.get(path, who), 404, "not_found")
    assert ids(world.get("/sites", who, params={"tenant": "hospital"})) == []

    # Read-only: every write refused, even on its own objects.
    for method, path, body in (
        ("POST", "/tenants", {"id": "t9", "name": "n"}),
        ("PATCH", "/tenants/water", {"name": "n"}),
        ("DELETE", "/tenants/water", None),
        ("POST", "/sites", site_body("x", "water", "330102")),
        ("PATCH", "/sites/s102", {"name": "n"}),
        ("DELETE", "/sites/s102", None),
        ("POST", "/devices", device_body("x", "s102")),
        ("PATCH", "/devices/d102", {"status": "disabled"}),
        ("DELETE", "/devices/d102", None),
        ("POST", "/devices/d102/credentials/mqtt", None),
        ("DELETE", "/devices/d102/credentials", None),
        ("POST", "/jurisdictions", {"region_code": "330102", "name": "n"}),
    ):
        assert_error(world.request(method, path, who, json=body), 403, "forbidden")
    r = world.post(
        "/import",
        who,
        params={"resource": "tenants"},
        content="id,name\nt9,n\n",
        headers={"Content-Type": "text/csv"},
    )
    assert_error(r, 403, "forbidden")
    # Whole resources it may not use.
    for path in ("/users", f"/users/{world.users['admin']}", "/audit", "/jurisdictions"):
        assert_error(world.get(path, who), 403, "forbidden")
    assert world.get("/devices/d102", "admin").json()["status"] == "active"


def test_regional_admins_cannot_manage_users_or_jurisdictions(world: World) -> None:
    world.post("/jurisdictions", "admin", json={"region_code": "330106", "name": "Xihu"})
    world.post("/jurisdictions", "admin", json={"region_code": "330102", "name": "Shangcheng"})
    for who in ("city", "county102"):
        assert_error(world.get("/users", who), 403, "forbidden")
        assert_error(
            world.post(
                "/users", who, json={"username": "u", "password": PASSWORD, "role": "admin"}
            ),
            403,
            "forbidden",
        )
        assert_error(
            world.patch(f"/users/{world.users[who]}", who, json={"role": "admin"}), 403, "forbidden"
        )
        assert_error(
            world.patch("/jurisdictions/330102", who, json={"name": "n"}), 403, "forbidden"
        )
    assert [j["region_code"] for j in world.get("/jurisdictions", "county102").json()["items"]] == [
        "330102"
    ]
    assert_error(world.get("/jurisdictions/330106", "county102"), 404, "not_found")
    assert len(world.get("/jurisdictions", "city").json()["items"]) == 2


def test_regional_audit_is_limited_to_own_actions_and_scope(world: World) -> None:
    world.patch("/sites/s106", "admin", json={"name": "changed by admin"})
    world.patch("/sites/s102", "admin", json={"name": "changed by admin"})
    entries = world.get("/audit", "county102", params={"limit": 1000}).json()["items"]
    about = {(e["entity"], e["entity_id"]) for e in entries}
    assert ("site", "s102") in about
    assert ("device", "d102") in about
    assert not about & {("site", "s106"), ("device", "d106"), ("site", "s206")}
    assert all(e["entity"] in ("site", "device") for e in entries)
    everything = world.get("/audit", "admin", params={"limit": 1000}).json()
    assert everything["total"] > len(entries)


def test_role_and_jurisdiction_changes_apply_to_existing_tokens(world: World) -> None:
    uid = world.users["county102"]
    world.patch(f"/users/{uid}", "admin", json={"region_codes": ["330106"]})
    assert ids(world.get("/sites", "county102")) == ["s106"]
    world.patch(f"/users/{uid}", "admin", json={"active": False})
    error = assert_error(world.get("/sites", "county102"), 401, "unauthorized")
    assert "no longer active" in error["message"]
    world.patch(f"/users/{uid}", "admin", json={"active": True})
    assert world.get("/sites", "county102").status_code == 200
    world.delete(f"/users/{uid}", "admin")
    assert_error(world.get("/sites", "county102"), 401, "unauthorized")


def test_bad_tokens_are_refused(world: World) -> None:
    r = world.client.get("/sites")
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    with world.ctx.registry.session() as session:
        admin = session.get(User, world.users["admin"])
        assert admin is not None
        expired = issue_access_token(
            JWT_SECRET, admin, 60, now=datetime.now(UTC) - timedelta(hours=1)
        )
        forged = issue_access_token("y" * 32, admin, 60)
    claims = {"sub": "admin", "uid": world.users["admin"], "role": "admin", "iat": 0}
    without_exp = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    for token, why in (
        (expired, "expired"),
        (forged, "invalid"),
        (without_exp, "invalid"),
        ("garbage", "invalid"),
        ("wjt_nothex_x", "invalid"),
    ):
        r = world.client.get("/sites", headers={"Authorization": f"Bearer {token}"})
        error = assert_error(r, 401, "unauthorized")
        assert why in error["message"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
    none_alg = jwt.encode({**claims, "exp": 2**31}, None, algorithm="none")
    r = world.client.get("/sites", headers={"Authorization": f"Bearer {none_alg}"})
    assert_error(r, 401, "unauthorized")


def test_api_tokens(world: World) -> None:
    r = world.post("/auth/api-tokens", "county102", json={"name": "nightly export"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert token.startswith("wjt_")
    assert r.json()["key_id"] in token
    script = {"Authorization": f"Bearer {token}"}
    assert [s["id"] for s in world.client.get("/sites", headers=script).json()["items"]] == ["s102"]
    me = world.client.get("/auth/me", headers=script).json()
    assert me["username"] == "county102"
    assert me["via"] == "api_token"
    listed = world.get("/auth/api-tokens", "county102").json()["items"]
    assert [t["name"] for t in listed] == ["nightly export"]
    assert "token" not in listed[0]
    assert "secret_hash" not in listed[0]
    assert listed[0]["last_used_at"] is not None
    assert world.get("/auth/api-tokens", "county106").json()["total"] == 0

    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(
        world.client.get("/sites", headers={"Authorization": f"Bearer {tampered}"}),
        401,
        "unauthorized",
    )
    # Someone else cannot revoke it (nor learn it exists); its owner can.
    assert_error(world.delete(f"/auth/api-tokens/{listed[0]['id']}", "county106"), 404, "not_found")
    assert world.delete(f"/auth/api-tokens/{listed[0]['id']}", "county102").status_code == 200
    error = assert_error(world.client.get("/sites", headers=script), 401, "unauthorized")
    assert "revoked" in error["message"]


def test_api_token_of_deactivated_user_is_refused(world: World) -> None:
    token = world.post("/auth/api-tokens", "city", json={"name": "t"}).json()["token"]
    world.patch(f"/users/{world.users['city']}", "admin", json={"active": False})
    assert_error(
        world.client.get("/sites", headers={"Authorization": f"Bearer {token}"}),
        401,
        "unauthorized",
    )


@pytest.mark.parametrize("username", ["county102", "nobody"])
def test_wrong_password_and_unknown_user_look_the_same(world: World, username: str) -> None:
    r = world.client.post("/auth/token", data={"username": username, "password": "wrong password"})
    error = assert_error(r, 401, "unauthorized")
    assert error["message"] == "incorrect username or password"
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_login(world: World) -> None:
    r = world.client.post("/auth/token", data={"username": "county102", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 8 * 3600
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "county102"
    assert claims["role"] == "county_admin"
    assert claims["exp"] - claims["iat"] == 8 * 3600
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert world.client.get("/auth/me", headers=auth).json()["region_codes"] == ["330102"]

    world.patch(f"/users/{world.users['county102']}", "admin", json={"active": False})
    r = world.client.post("/auth/token", data={"username": "county102", "password": PASSWORD})
    assert assert_error(r, 401, "unauthorized")["message"] == "incorrect username or password"
    assert_error(world.client.post("/auth/token", data={"username": "x"}), 422, "validation_failed")
