"""The broker's password and ACL files follow the registry: MQTT onboarding with no restart.

Every active MQTT device with an active credential becomes one entry: its username (the device
id), the stored ``$7$`` hash, and write access to ``{prefix}/{tenant}/{site}/{device}/#`` only,
so a device can publish as nobody else. Disabled, deleted and revoked devices drop out; the
broker applies the new files on SIGHUP and refuses them from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from gateway.registry.database import Registry
from gateway.registry.models import Device, DeviceCredential, Site
from protocols.mosquitto_auth import DeviceAccess, reload_broker, write_device_entries

log = logging.getLogger(__name__)


def device_entries(registry: Registry, topic_prefix: str) -> list[DeviceAccess]:
    query = (
        select(Device.id, Site.tenant_id, Site.id, DeviceCredential.secret_hash)
        .join(Site, Device.site_id == Site.id)
        .join(DeviceCredential, DeviceCredential.device_id == Device.id)
        .where(
            Device.status == "active",
            DeviceCredential.kind == "mqtt",
            DeviceCredential.revoked_at.is_(None),
        )
        .order_by(Device.id)
    )
    with registry.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        DeviceAccess(device, secret_hash, (f"{topic_prefix}/{tenant}/{site}/{device}/#",))
        for device, tenant, site, secret_hash in rows
    ]


class BrokerSync:
    """Writes the registry's device entries with ``apply`` whenever asked; skips if unchanged."""

    def __init__(
        self,
        registry: Registry,
        topic_prefix: str,
        apply: Callable[[list[DeviceAccess]], None],
    ) -> None:
        self.registry = registry
        self.topic_prefix = topic_prefix
        self._apply = apply
        self._last: list[DeviceAccess] | None = None
        self.syncs = 0

    def __call__(self) -> None:
        entries = device_entries(self.registry, self.topic_prefix)
        if entries == self._last:
            return
        self._apply(entries)
        self._last = entries
        self.syncs += 1
        log.info("broker accounts updated: %d MQTT device(s)", len(entries))

    @classmethod
    def to_files(
        cls,
        registry: Registry,
        topic_prefix: str,
        passwd_file: Path,
        acl_file: Path,
        pidfile: Path | None = None,
    ) -> BrokerSync:
        """Production: the files shared with the broker; without a pidfile the broker's own
        watcher (deploy/mosquitto/docker-entrypoint.sh) sends itself SIGHUP on change."""

        def apply(entries: list[DeviceAccess]) -> None:
            if write_device_entries(passwd_file, acl_file, entries) and pidfile is not None:
                reload_broker(pidfile=pidfile)

        return cls(registry, topic_prefix, apply)
