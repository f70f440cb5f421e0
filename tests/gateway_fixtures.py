"""Shared fixtures for the gateway API tests: a fresh registry per test, a client, staff users.

Import with ``from tests.gateway_fixtures import *``. Passwords use argon2 with the smallest
parameters (the production defaults are argon2-cffi's, set in ``create_app``); tokens are minted
directly except where a test exercises the login itself.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher
from starlette.exceptions import StarletteDeprecationWarning

from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.registry.database import Registry, sqlite_url
from gateway.registry.directory import RegistryDirectory
from gateway.registry.models import User
from gateway.security import create_user, issue_access_token
from gateway.settings import GatewaySettings
from protocols.profiles import PROFILES_DIR, load_profiles

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient and warns at import when only
    # httpx is installed; the client works the same with either.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

__all__ = [
    "FAST_HASHER",
    "JWT_SECRET",
    "PASSWORD",
    "World",
    "api",
    "ctx",
    "make_client",
    "profiles",
    "profiles_dir",
    "registry",
    "seed",
    "world",
]

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
JWT_SECRET = "x" * 32
PASSWORD = "correct horse battery"
HTTP_PROFILE = "air_monitor_http"  # the shipped air monitor, also speaking HTTP


@pytest.fixture(scope="session")
def profiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped profiles, with the air monitor pinned to MQTT only, plus an HTTP variant of it:
    the tests must not depend on which protocols the shipped models happen to list."""
    directory = tmp_path_factory.mktemp("profiles")
    for path in PROFILES_DIR.glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    raw = yaml.safe_load((PROFILES_DIR / "air_monitor_iaq8.yaml").read_text(encoding="utf-8"))
    for profile_id, protocols in (("air_monitor_iaq8", ["mqtt"]), (HTTP_PROFILE, ["mqtt", "http"])):
        raw.update(id=profile_id, protocols=protocols)
        (directory / f"{profile_id}.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return directory


@pytest.fixture(scope="session")
def profiles(profiles_dir: Path) -> Any:
    return load_profiles(profiles_dir)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(sqlite_url(tmp_path / "r.db"))
    yield reg
    reg.close()


@pytest.fixture
def ctx(registry: Registry) -> GatewayContext:
    directory = RegistryDirectory(registry)
    directory.refresh()
    return GatewayContext(registry, GatewaySettings(), jwt_secret=JWT_SECRET, directory=directory)


def make_client(context: GatewayContext, profile_set: Any) -> TestClient:
    app = create_app(context, profiles=profile_set, password_hasher=FAST_HASHER)
    return TestClient(app)


@pytest.fixture
def api(ctx: GatewayContext, profiles: Any) -> Iterator[TestClient]:
    with make_client(ctx, profiles) as client:
        yield client


@dataclass
class World:
    """A seeded registry and a bearer header per staff member."""

    client: TestClient
    ctx: GatewayContext
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> dict[str, str]:
        try:
            return self.__dict__["headers"][name]
        except KeyError:
            raise AttributeError(name) from None

    def add_user(
        self, name: str, role: str, codes: tuple[str, ...] = (), tenant: str | None = None
    ) -> dict[str, str]:
        with self.ctx.registry.session() as session:
            user = create_user(
                session, name, PASSWORD, role, codes, tenant, actor="test", hasher=FAST_HASHER
            )
            session.commit()
            self.users[name] = user.id
            self.headers[name] = bearer(self.ctx, user)
        return self.headers[name]

    def request(self, method: str, path: str, who: str, **kwargs: Any) -> Any:
        headers = {**self.headers[who], **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, who: str, **kwargs: Any) -> Any:
        return self.request("GET", path, who, **kwargs)

    def post(self, path: str, who: str, **kwargs: Any) -> Any:
        return self.request("POST", path, who, **kwargs)

    def patch(self, path: str, who: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, who, **kwargs)

    def delete(self, path: str, who: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, who, **kwargs)


def bearer(context: GatewayContext, user: User) -> dict[str, str]:
    token = issue_access_token(context.jwt_secret, user, context.settings.jwt_ttl_s)
    return {"Authorization": f"Bearer {token}"}


def site_body(site_id: str, tenant: str, region: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": site_id,
        "tenant_id": tenant,
        "name": f"Site {site_id}",
        "region_code": region,
        "venue_type": "secondary_supply",
        **extra,
    }


def device_body(device_id: str, site: str, **extra: Any) -> dict[str, Any]:
    body = {
        "id": device_id,
        "site_id": site,
        "kind": "air_monitor",
        "profile": "air_monitor_iaq8",
        "protocol": "mqtt",
    }
    return {**body, **extra}


def seed(w: World) -> None:
    """Two tenants; sites in Hangzhou 330102 and 330106 and in Ningbo 330206; a device each."""
    ok = {200, 201}
    for tenant in ("water", "hospital"):
        r = w.post("/tenants", "admin", json={"id": tenant, "name": tenant.title()})
        assert r.status_code in ok, r.text
    for site, tenant, region in (
        ("s102", "water", "330102"),
        ("s106", "water", "330106"),
        ("s206", "hospital", "330206"),
    ):
        r = w.post("/sites", "admin", json=site_body(site, tenant, region))
        assert r.status_code in ok, r.text
        r = w.post("/devices", "admin", json=device_body(f"d{site[1:]}", site))
        assert r.status_code in ok, r.text


@pytest.fixture
def world(ctx: GatewayContext, api: TestClient) -> World:
    w = World(api, ctx)
    w.add_user("admin", "admin")
    w.add_user("city", "city_admin", ("330100",))
    w.add_user("ningbo", "city_admin", ("330200",))
    w.add_user("county102", "county_admin", ("330102",))
    w.add_user("county106", "county_admin", ("330106",))
    seed(w)
    w.add_user("wateruser", "tenant_user", tenant="water")
    return w
