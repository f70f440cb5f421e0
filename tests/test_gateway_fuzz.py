"""Property-based tests of the gateway against its own OpenAPI document (schemathesis).

Every operation gets schema-conforming and schema-violating requests, sent in-process through
schemathesis's ASGI transport as three callers: an admin (an API token), a county admin and a
tenant user (JWTs), so the scope rules' code paths are fuzzed too. The registry is pre-filled with
a few tenants, sites, devices, jurisdictions and users, and a hook swaps real ids into the
generated path parameters and bodies part of the time, so requests reach objects that exist.

Whatever is sent: no 5xx; every 4xx/5xx has the one error body ``{"error": {"code", "message",
"details"}}``; documented responses conform to their schema; without credentials nothing but the
open operations succeeds. Generation is derandomized (fixed seed, no example database) and the
example count bounded: about 3,900 requests in ~35 s, the same ones on every run of the same test
selection (Hypothesis also draws literals from the loaded local modules, so selecting other test
files alongside may change some values).

A bug found here gets a regression test of its own at the end of the file (the first one: the
device check answered 500 to an admin for a malformed id, through an unanchored path pattern).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.registry.database import Registry, sqlite_url
from gateway.registry.directory import RegistryDirectory
from gateway.settings import GatewaySettings
from protocols.profiles import load_profiles
from tests.gateway_fixtures import FAST_HASHER, JWT_SECRET, World, make_client, site_body

PROFILES = load_profiles()
# The app the schemas are read from and every generated request goes to; each test points its
# state at a fresh copy of the seeded registry (``fuzz_registry``).
APP = create_app(
    GatewayContext(Registry("sqlite://"), GatewaySettings(), jwt_secret=JWT_SECRET),
    profiles=PROFILES,
    password_hasher=FAST_HASHER,
)
MAX_EXAMPLES = 12  # fuzzing phase, per operation and caller
SEED = 20240611


def _load_schema(*, coverage: bool) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"deterministic": True, "database": "none"},
            "phases": {"coverage": {"enabled": coverage}},
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", APP, config=config)


# The admin reaches every branch, so it also gets the coverage phase (boundary values, each
# parameter missing or of the wrong type, unexpected methods); the scoped callers get the
# examples and fuzzing phases, on the operations where the caller matters.
schema = _load_schema(coverage=True)
ROLE_BLIND = ["/health", "/auth/token", "/ingest/v1/readings"]
scoped_schema = _load_schema(coverage=False).exclude(path=ROLE_BLIND)

# ---- the seeded registry -----------------------------------------------------------------------

TENANTS = ("water", "hospital", "lonely")
SITES = (("s102", "water", "330102"), ("s106", "water", "330106"), ("s206", "hospital", "330206"))
DEVICES: tuple[dict[str, Any], ...] = (
    {"id": "d102", "site_id": "s102", "kind": "air_monitor", "profile": "air_monitor_iaq8",
     "protocol": "mqtt"},
    {"id": "h102", "site_id": "s102", "kind": "air_monitor", "profile": "air_monitor_iaq8",
     "protocol": "http"},
    {"id": "c106", "site_id": "s106", "kind": "dose_rate_monitor",
     "profile": "dose_rate_monitor_gr10", "protocol": "coap"},
    {"id": "w102", "site_id": "s102", "kind": "water_station", "profile": "water_station_ws900",
     "protocol": "hj212", "connection": {"mn": "88888880000001"}},
    # Port 1 on loopback refuses at once, so a fuzzed ?probe=true costs nothing.
    {"id": "m206", "site_id": "s206", "kind": "water_probe", "profile": "water_probe_wq500",
     "protocol": "modbus_tcp", "connection": {"host": "127.0.0.1", "port": 1, "unit_id": 1}},
)  # fmt: skip
JURISDICTIONS = ("330102", "330206")
USERS = (
    ("admin", "admin", (), None),
    ("county102", "county_admin", ("330102",), None),
    ("wateruser", "tenant_user", (), "water"),
    ("ningbo", "city_admin", ("330200",), None),
)

# Real values per path parameter name, swapped in part of the time.
REAL_PATH_VALUES: dict[str, list[Any]] = {
    "tenant_id": list(TENANTS),
    "site_id": [s[0] for s in SITES],
    "device_id": [d["id"] for d in DEVICES],
    "region_code": list(JURISDICTIONS),
    "user_id": [1, 2, 3, 4],
    "token_id": [1],
}
REAL_BODY_VALUES: dict[str, list[Any]] = {
    "tenant_id": list(TENANTS),
    "site_id": [s[0] for s in SITES],
    "region_code": ["330102", "330106", "330206"],
}
# (kind, profile, protocol, connection) combinations the profiles accept.
DEVICE_SHAPES = tuple(
    (d["kind"], d["profile"], d["protocol"], d.get("connection", {})) for d in DEVICES
)


@pytest.fixture(scope="module")
def seeded_registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry file seeded through the API, and a bearer header per caller."""
    directory = tmp_path_factory.mktemp("fuzz-registry")
    path = directory / "registry.db"
    registry = Registry.open(sqlite_url(path))
    ctx = GatewayContext(registry, GatewaySettings(), jwt_secret=JWT_SECRET)
    headers: dict[str, dict[str, str]] = {}
    try:
        with make_client(ctx, PROFILES) as client:
            world = World(client, ctx)
            for name, role, codes, tenant in USERS[:2]:
                world.add_user(name, role, codes, tenant)

            def ok(response: Any) -> Any:
                assert response.status_code in (200, 201), response.text
                return response.json()

            for tenant in TENANTS:
                ok(world.post("/tenants", "admin", json={"id": tenant, "name": tenant.title()}))
            for site, tenant, region in SITES:
                ok(world.post("/sites", "admin", json=site_body(site, tenant, region)))
            for device in DEVICES:
                ok(world.post("/devices", "admin", json=device))
            for code in JURISDICTIONS:
                ok(world.post("/jurisdictions", "admin", json={"region_code": code, "name": code}))
            for name, role, codes, tenant in USERS[2:]:
                world.add_user(name, role, codes, tenant)
            assert sorted(world.users.values()) == REAL_PATH_VALUES["user_id"]
            token = ok(world.post("/auth/api-tokens", "admin", json={"name": "fuzz"}))
            assert token["id"] == 1
            headers = dict(world.headers)
            headers["admin"] = {"Authorization": f"Bearer {token['token']}"}
    finally:
        registry.close()  # closes the WAL: the file alone holds everything
    return {"path": path, "headers": headers}


@pytest.fixture
def fuzz_registry(seeded_registry: dict[str, Any], tmp_path: Path) -> Iterator[GatewayContext]:
    """A fresh copy of the seeded registry behind ``APP`` for one operation and caller."""
    path = tmp_path / "registry.db"
    shutil.copyfile(seeded_registry["path"], path)
    registry = Registry.open(sqlite_url(path), migrate=False)
    directory = RegistryDirectory(registry)
    directory.refresh()
    ctx = GatewayContext(registry, GatewaySettings(), jwt_secret=JWT_SECRET, directory=directory)
    previous = APP.state.ctx
    APP.state.ctx = ctx
    try:
        yield ctx
    finally:
        APP.state.ctx = previous
        registry.close()


# ---- steering generation towards real objects --------------------------------------------------


def _with_real_path_values(params: Any) -> st.SearchStrategy[Any]:
    if not isinstance(params, dict):
        return st.just(params)
    names = [name for name in params if name in REAL_PATH_VALUES]
    if not names:
        return st.just(params)
    real = st.fixed_dictionaries({name: st.sampled_from(REAL_PATH_VALUES[name]) for name in names})
    return st.one_of(st.just(params), real.map(lambda values: {**params, **values}))


def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy) -> Any:
    return strategy.flatmap(_with_real_path_values)


def _with_real_body_values(body: Any) -> st.SearchStrategy[Any]:
    if not isinstance(body, dict):
        return st.just(body)
    replacements: dict[str, st.SearchStrategy[Any]] = {
        name: st.sampled_from(values) for name, values in REAL_BODY_VALUES.items() if name in body
    }
    strategies = [st.just(body)]
    if replacements:
        strategies.append(
            st.fixed_dictionaries(replacements).map(lambda values: {**body, **values})
        )
    if "profile" in body or "kind" in body:

        def device_shape(shape: tuple[str, str, str, dict]) -> dict[str, Any]:
            kind, profile, protocol, connection = shape
            return {
                **body,
                "kind": kind,
                "profile": profile,
                "protocol": protocol,
                "connection": connection,
            }

        shaped = st.sampled_from(DEVICE_SHAPES).map(device_shape)
        if "site_id" in body:
            shaped = st.tuples(shaped, st.sampled_from(REAL_BODY_VALUES["site_id"])).map(
                lambda pair: {**pair[0], "site_id": pair[1]}
            )
        strategies.append(shaped)
    return st.one_of(*strategies)


def before_generate_body(context: Any, strategy: st.SearchStrategy) -> Any:
    return strategy.flatmap(_with_real_body_values)


for _schema in (schema, scoped_schema):
    _schema.hook(before_generate_path_parameters)
    _schema.hook(before_generate_body)


# ---- checks ------------------------------------------------------------------------------------


def error_body_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx answers ``{"error": {"code", "message", "details"}}``."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict), f"error body is not an object: {response.text[:200]}"
    assert set(body) == {"error"}, f"error body keys {sorted(body)}"
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"code", "message", "details"}, f"error keys {sorted(error)}"
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], list)


CHECKS = [not_a_server_error, response_schema_conformance, error_body_shape]


# ---- the tests ---------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one registry per operation and caller, on purpose
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def _call(case: schemathesis.Case, seeded: dict[str, Any], role: str) -> None:
    # The caller's credentials replace whatever Authorization header was generated; with none
    # (``anonymous``), the generated bearer values fuzz the token parsing itself.
    response = case.call_and_validate(headers=dict(seeded["headers"].get(role, {})), checks=CHECKS)
    if role == "anonymous":
        assert not 200 <= response.status_code < 300, (
            f"{case.operation.label} answered {response.status_code} without credentials"
        )


@schema.parametrize()
@FUZZ_SETTINGS
def test_gateway_as_admin(
    case: schemathesis.Case, seeded_registry: dict[str, Any], fuzz_registry: GatewayContext
) -> None:
    _call(case, seeded_registry, "admin")


@pytest.mark.parametrize("role", ["county102", "wateruser", "anonymous"])
@scoped_schema.parametrize()
@FUZZ_SETTINGS
def test_gateway_as_scoped_staff(
    case: schemathesis.Case,
    role: str,
    seeded_registry: dict[str, Any],
    fuzz_registry: GatewayContext,
) -> None:
    _call(case, seeded_registry, role)


@pytest.mark.parametrize("device_id", ["Page size", "x" * 65, "-probe"])
def test_check_of_a_malformed_device_id_is_refused_for_an_admin_too(
    device_id: str, seeded_registry: dict[str, Any], fuzz_registry: GatewayContext
) -> None:
    headers = dict(seeded_registry["headers"]["admin"])
    case = schema["/devices/{device_id}/check"]["GET"].Case(
        path_parameters={"device_id": device_id}
    )
    response = case.call(headers=headers)
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    case.validate_response(response, checks=CHECKS, headers=headers)
