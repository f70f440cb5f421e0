"""The registry below the API: the collectors' directory cache, device secrets, broker accounts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from gateway.broker_sync import BrokerSync
from gateway.device_keys import DeviceKeys
from gateway.registry import credentials
from gateway.registry.database import Registry, bump_revision, sqlite_url
from gateway.registry.directory import RegistryDirectory
from gateway.registry.models import Device, DeviceTombstone, Site, Tenant
from protocols.directory import DeviceInfo
from protocols.mosquitto_auth import verify_password
from tests.helpers import connack
from weijian.stack.mosquitto import LocalMosquitto

PREFIX = "weijian/v1"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(sqlite_url(tmp_path / "registry.db"))
    with reg.session() as s, s.begin():
        s.add(Tenant(id="water-co", name="Water Co"))
        s.add(
            Site(
                id="plant-1",
                tenant_id="water-co",
                name="Plant 1",
                region_code="330102",
                venue_type="water_plant_outlet",
            )
        )
    yield reg
    reg.close()


def add_device(
    reg: Registry, device: str, *, protocol: str = "mqtt", status: str = "active"
) -> None:
    with reg.session() as s, s.begin():
        s.execute(delete(DeviceTombstone).where(DeviceTombstone.device_id == device))
        s.add(
            Device(
                id=device,
                site_id="plant-1",
                kind="water_probe",
                profile="water_probe_wq500",
                protocol=protocol,
                interval_s=5.0,
                status=status,
                revision=bump_revision(s),
            )
        )


def test_directory_follows_creates_updates_and_deletes_incrementally(registry: Registry) -> None:
    directory = RegistryDirectory(registry)
    assert directory.refresh() == 0
    assert len(directory) == 0
    add_device(registry, "probe-1")
    add_device(registry, "probe-2")
    add_device(registry, "probe-off", status="disabled")
    assert directory.refresh() == 3
    assert directory.get("probe-1") == DeviceInfo(
        "probe-1", "water-co", "plant-1", "water_probe", "330102"
    )
    assert directory.get("probe-off") is None, "a disabled device must not be accepted"
    assert directory.refresh() == 0, "nothing changed: nothing reloaded"

    with registry.session() as s, s.begin():  # a site moves to another county: its devices follow
        rev = bump_revision(s)
        s.get(Site, "plant-1").region_code = "330106"
        for dev in s.query(Device).filter_by(site_id="plant-1"):
            dev.revision = rev
    with registry.session() as s, s.begin():
        s.get(Device, "probe-2").status = "disabled"
        s.get(Device, "probe-2").revision = bump_revision(s)
    directory.refresh()
    assert directory.get("probe-1").region == "330106"
    assert directory.get("probe-2") is None

    with registry.session() as s, s.begin():
        s.delete(s.get(Device, "probe-1"))
        s.add(DeviceTombstone(device_id="probe-1", revision=bump_revision(s)))
    assert directory.refresh() == 1
    assert directory.get("probe-1") is None
    assert len(directory) == 0
    add_device(registry, "probe-1")  # the same id registered again
    directory.refresh()
    assert directory.get("probe-1") is not None


def test_secrets_are_shown_once_stored_hashed_and_rotation_revokes(registry: Registry) -> None:
    add_device(registry, "probe-1", protocol="http")
    directory = RegistryDirectory(registry)
    directory.refresh()
    keys = DeviceKeys(registry, lambda: directory.revision)
    with registry.session() as s, s.begin():
        mq = credentials.issue(s, "probe-1", "mqtt")
        key = credentials.issue(s, "probe-1", "api_key")
    with registry.session() as s:
        stored = {c.kind: c.secret_hash for c in s.get(Device, "probe-1").credentials}
    assert mq.secret not in stored["mqtt"]
    assert verify_password(mq.secret, stored["mqtt"])
    assert key.secret not in stored["api_key"]
    assert key.secret.startswith("wjk_")
    directory.refresh()
    assert keys.device_for(key.secret, "api_key") == "probe-1"
    assert keys.device_for(key.secret, "coap_token") is None, "a key is only good for its kind"
    assert keys.device_for(key.secret[:-1] + "x", "api_key") is None
    assert keys.device_for("wjk_000000000000_nope", "api_key") is None
    assert keys.device_for("Basic abc", "api_key") is None

    with registry.session() as s, s.begin():
        new = credentials.issue(s, "probe-1", "api_key")
    directory.refresh()  # what the platform's follower does every poll
    assert keys.device_for(key.secret, "api_key") is None, "rotation must revoke the old key"
    assert keys.device_for(new.secret, "api_key") == "probe-1"
    with registry.session() as s, s.begin():
        assert credentials.revoke(s, "probe-1") == 2
    directory.refresh()
    assert keys.device_for(new.secret, "api_key") is None


def test_broker_accounts_follow_the_registry_without_restart(
    registry: Registry, tmp_path: Path
) -> None:
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    broker.start()
    try:
        pid = broker.pid

        def apply(entries: list) -> None:
            broker.set_devices(entries)
            broker.reload()

        sync = BrokerSync(registry, PREFIX, apply)
        add_device(registry, "probe-1")
        add_device(registry, "probe-http", protocol="http")
        with registry.session() as s, s.begin():
            secret = credentials.issue(s, "probe-1", "mqtt").secret
        sync()
        assert [d.username for d in broker.devices()] == ["probe-1"]
        assert broker.devices()[0].publish_topics == (f"{PREFIX}/water-co/plant-1/probe-1/#",)
        assert _wait_rc(broker.port, "probe-1", secret, success=True)
        sync()
        assert sync.syncs == 1, "unchanged registry: the files are not rewritten"

        with registry.session() as s, s.begin():
            credentials.revoke(s, "probe-1", "mqtt")
        sync()
        assert _wait_rc(broker.port, "probe-1", secret, success=False)
        assert broker.pid == pid, "applied by reload, not by a restart"
    finally:
        broker.stop()


def _wait_rc(port: int, user: str, password: str, *, success: bool) -> bool:
    """SIGHUP is asynchronous: poll until the broker answers as expected (or give up)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (connack(port, user, password) == 0) == success:
            return True
        time.sleep(0.1)
    return False
