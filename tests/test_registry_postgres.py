"""The registry on PostgreSQL: migrations, a CRUD round trip through the gateway, concurrency.

SQLite is the embedded default and every other gateway test runs on it; this module runs the same
code once against a real PostgreSQL server (``tests/pg_fixture.py``, skipped with the reason when
no server can be had), each test in a fresh database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from gateway.context import GatewayContext
from gateway.registry.database import Registry, alembic_config, bump_revision
from gateway.registry.directory import RegistryDirectory
from gateway.registry.models import AuditEntry, Base, DeviceCredential, DeviceTombstone, Tenant
from gateway.settings import GatewaySettings
from tests.gateway_fixtures import (
    JWT_SECRET,
    World,
    device_body,
    make_client,
    profiles,  # noqa: F401  (fixture)
    profiles_dir,  # noqa: F401  (fixture)
    site_body,
)
from tests.pg_fixture import (
    TIMINGS,
    fresh_postgres_url,  # noqa: F401  (fixture)
    postgres,  # noqa: F401  (fixture)
    postgres_url,  # noqa: F401  (fixture)
)

# The first test's setup may install (apt-get) and start the server.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def pg_world(fresh_postgres_url: str, profiles: Any) -> Iterator[World]:  # noqa: F811
    """The gateway app over a registry migrated to head in an empty PostgreSQL database."""
    registry = Registry.open(fresh_postgres_url)
    assert registry.engine.dialect.name == "postgresql"
    directory = RegistryDirectory(registry)
    directory.refresh()
    ctx = GatewayContext(registry, GatewaySettings(), jwt_secret=JWT_SECRET, directory=directory)
    try:
        with make_client(ctx, profiles) as client:
            world = World(client, ctx)
            world.add_user("admin", "admin")
            yield world
    finally:
        registry.close()


def created(response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_server_started(postgres_url: str) -> None:  # noqa: F811
    """The server answers on its URL; reports how long getting it took (visible with ``-rA``)."""
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    install = TIMINGS["install_s"]
    print(
        f"postgres {version}: install {'not needed' if install is None else f'{install:.1f} s'}, "
        f"initdb {TIMINGS['initdb_s'] or 0.0:.2f} s, start {TIMINGS['start_s'] or 0.0:.2f} s"
    )


def test_upgrade_to_head_matches_the_models_and_downgrade_empties(
    fresh_postgres_url: str,  # noqa: F811
) -> None:
    config = alembic_config(fresh_postgres_url)
    command.upgrade(config, "head")
    engine = create_engine(fresh_postgres_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            head = ScriptDirectory.from_config(config).get_current_head()
            assert context.get_current_revision() == head

        command.downgrade(config, "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
            assert MigrationContext.configure(connection).get_current_revision() is None

        command.upgrade(config, "head")
        registry = Registry.open(fresh_postgres_url, migrate=False)  # check_schema passes
        try:
            assert registry.revision() == 0
        finally:
            registry.close()
    finally:
        engine.dispose()


def test_crud_round_trip_through_the_gateway(pg_world: World) -> None:
    w = pg_world
    registry = w.ctx.registry
    directory = w.ctx.directory
    assert directory is not None
    created(w.post("/tenants", "admin", json={"id": "water", "name": "Water", "category": "hotel"}))
    created(w.post("/sites", "admin", json=site_body("s102", "water", "330102")))
    created(w.post("/sites", "admin", json=site_body("s106", "water", "330106")))

    # Onboarding issues what each protocol needs, shown once and stored hashed.
    body = created(w.post("/devices", "admin", json=device_body("air1", "s102")))
    (mqtt,) = body["credentials"]
    assert mqtt["kind"] == "mqtt"
    assert body["connect"]["password"] == mqtt["secret"]
    assert body["device"]["region_code"] == "330102"
    body = created(
        w.post(
            "/devices",
            "admin",
            json=device_body("web1", "s102", profile="air_monitor_http", protocol="http"),
        )
    )
    (key,) = body["credentials"]
    assert key["kind"] == "api_key"
    assert w.ctx.device_keys.device_for(key["secret"], "api_key") == "web1"
    with registry.session() as session:
        hashes = session.execute(select(DeviceCredential.secret_hash)).scalars().all()
    assert len(hashes) == 2
    assert mqtt["secret"] not in hashes
    assert key["secret"] not in hashes

    # HJ 212 MNs are unique: a JSON ->> query on PostgreSQL.
    station = {
        "id": "ws1",
        "site_id": "s106",
        "kind": "water_station",
        "profile": "water_station_ws900",
        "protocol": "hj212",
        "connection": {"mn": "88888880000001"},
    }
    created(w.post("/devices", "admin", json=station))
    r = w.post("/devices", "admin", json={**station, "id": "ws2"})
    assert r.status_code == 409, r.text

    # Filters and pagination (region prefix with LIKE, ordering, totals).
    page = w.get("/devices", "admin", params={"region": "3301", "limit": 2}).json()
    assert page["total"] == 3
    assert [d["id"] for d in page["items"]] == ["air1", "web1"]
    page = w.get("/devices", "admin", params={"region": "330106"}).json()
    assert [d["id"] for d in page["items"]] == ["ws1"]

    # Times come back aware and in UTC.
    read = w.get("/devices/air1", "admin").json()
    created_at = datetime.fromisoformat(read["created_at"])
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=5)

    # Moving a site to another county: its devices follow on the ingest path.
    info = directory.get("air1")
    assert info is not None
    assert (info.tenant, info.site, info.region) == ("water", "s102", "330102")
    before = read["revision"]
    created(w.patch("/sites/s102", "admin", json={"region_code": "330108"}))
    assert directory.get("air1").region == "330108"
    assert directory.get("web1").region == "330108"
    assert w.get("/devices/air1", "admin").json()["revision"] > before
    fresh = RegistryDirectory(registry)
    fresh.refresh()
    assert {(d.device, d.region) for d in fresh} == {
        ("air1", "330108"),
        ("web1", "330108"),
        ("ws1", "330106"),
    }

    # Disabled devices leave the directory; deleted ones leave a tombstone.
    created(w.patch("/devices/web1", "admin", json={"status": "disabled"}))
    assert directory.get("web1") is None
    assert w.delete("/devices/air1", "admin").status_code == 204
    assert directory.get("air1") is None
    assert w.get("/devices/air1", "admin").status_code == 404
    with registry.session() as session:
        tombstone = session.get(DeviceTombstone, "air1")
        assert tombstone is not None
        assert tombstone.revision == registry.revision()
        # The device's credentials went with it (ON DELETE CASCADE).
        assert (
            session.execute(
                select(DeviceCredential.id).where(DeviceCredential.device_id == "air1")
            ).all()
            == []
        )
    fresh.refresh()
    assert {d.device for d in fresh} == {"ws1"}

    # Re-created under the same id: the tombstone goes.
    created(w.post("/devices", "admin", json=device_body("air1", "s106")))
    assert directory.get("air1").site == "s106"
    with registry.session() as session:
        assert session.get(DeviceTombstone, "air1") is None

    # Children still attached: 409, not an IntegrityError 500; then everything goes.
    assert w.delete("/sites/s106", "admin").status_code == 409
    assert w.delete("/tenants/water", "admin").status_code == 409
    for device in ("air1", "web1", "ws1"):
        assert w.delete(f"/devices/{device}", "admin").status_code == 204
    for site in ("s102", "s106"):
        assert w.delete(f"/sites/{site}", "admin").status_code == 204
    assert w.delete("/tenants/water", "admin").status_code == 204
    assert len(directory) == 0

    # Every change audited, in the same transactions.
    with registry.session() as session:
        actions = session.execute(
            select(AuditEntry.action, AuditEntry.entity).where(AuditEntry.actor == "admin")
        ).all()
    assert ("delete", "tenant") in actions
    assert ("issue_credentials", "device") in actions
    audit = w.get("/audit", "admin", params={"entity": "device", "action": "delete"}).json()
    assert audit["total"] == 4


def test_revisions_stay_unique_under_concurrent_writers(pg_world: World) -> None:
    w = pg_world
    created(w.post("/tenants", "admin", json={"id": "water", "name": "Water"}))
    created(w.post("/sites", "admin", json=site_body("s102", "water", "330102")))
    start = w.ctx.registry.revision()
    per_thread = 8
    barrier = threading.Barrier(2)
    results: dict[str, list[Any]] = {"a": [], "b": []}

    def writer(name: str) -> None:
        barrier.wait()
        for i in range(per_thread):
            response = w.post("/devices", "admin", json=device_body(f"{name}{i}", "s102"))
            results[name].append(response)

    threads = [threading.Thread(target=writer, args=(name,)) for name in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    responses = results["a"] + results["b"]
    assert [r.status_code for r in responses] == [201] * (2 * per_thread), [
        r.text for r in responses if r.status_code != 201
    ]
    # Onboarding stamps the device, then bumps again for its credentials: no two alike.
    revisions = [r.json()["device"]["revision"] for r in responses]
    assert len(set(revisions)) == len(revisions)
    final = w.ctx.registry.revision()
    assert all(start < revision < final for revision in revisions)
    read = w.get("/devices", "admin", params={"limit": 1000}).json()["items"]
    assert sorted(d["revision"] for d in read) == sorted(revisions)

    expected = {f"{name}{i}" for name in results for i in range(per_thread)}
    directory = w.ctx.directory
    assert directory is not None
    directory.refresh()
    assert {d.device for d in directory} == expected
    fresh = RegistryDirectory(w.ctx.registry)
    fresh.refresh()
    assert {d.device for d in fresh} == expected


def test_the_revision_row_is_locked_until_commit(fresh_postgres_url: str) -> None:  # noqa: F811
    """A second writer waits for the first one's commit: revisions are handed out in order."""
    registry = Registry.open(fresh_postgres_url)
    first_bumped = threading.Event()
    got: dict[str, Any] = {}
    hold_s = 0.5

    def first() -> None:
        with registry.session() as session, session.begin():
            got["first"] = bump_revision(session)
            first_bumped.set()
            time.sleep(hold_s)

    def second() -> None:
        first_bumped.wait(10)
        started = time.perf_counter()
        with registry.session() as session, session.begin():
            got["second"] = bump_revision(session)
        got["waited"] = time.perf_counter() - started

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert (got["first"], got["second"]) == (1, 2)
        assert got["waited"] >= hold_s * 0.6
        assert registry.revision() == 2
    finally:
        registry.close()


def test_times_are_right_whatever_the_session_time_zone(fresh_postgres_url: str) -> None:  # noqa: F811
    url = fresh_postgres_url + "?options=-c%20timezone%3DAsia/Shanghai"
    registry = Registry.open(url)
    try:
        with registry.session() as session, session.begin():
            session.add(Tenant(id="t1", name="T1"))
        with registry.session() as session:
            tenant = session.get(Tenant, "t1")
            assert tenant is not None
            assert abs(datetime.now(UTC) - tenant.created_at) < timedelta(minutes=5)
    finally:
        registry.close()
