"""The registry as the collectors' device directory: an in-memory dict kept exact by revision.

A lookup on the ingest path is one dict access. Freshness comes from polling one integer (the
registry revision) and, when it moved, loading only the devices changed since (plus tombstones of
deleted ones); a process that changes the registry itself calls :meth:`refresh` at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy import select

from gateway.registry.database import Registry
from gateway.registry.models import Device, DeviceTombstone, Site
from protocols.directory import DeviceInfo

log = logging.getLogger(__name__)

ACTIVE = "active"


class RegistryDirectory:
    """Active devices of the registry by id; unknown, disabled and deleted devices are absent."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._devices: dict[str, DeviceInfo] = {}
        self._revision = -1
        self._lock = threading.Lock()
        self.reloads = 0

    def get(self, device: str) -> DeviceInfo | None:
        return self._devices.get(device)

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._devices.values()))

    @property
    def revision(self) -> int:
        return self._revision

    def refresh(self) -> int:
        """Apply changes since the last refresh; returns how many devices changed."""
        with self._lock:
            current = self.registry.revision()
            if current == self._revision:
                return 0
            since = self._revision
            query = (
                select(
                    Device.id,
                    Site.tenant_id,
                    Device.site_id,
                    Device.kind,
                    Site.region_code,
                    Device.status,
                )
                .join(Site, Device.site_id == Site.id)
                .where(Device.revision > since)
            )
            with self.registry.engine.connect() as connection:
                rows = connection.execute(query).all()
                gone = (
                    connection.execute(
                        select(DeviceTombstone.device_id).where(DeviceTombstone.revision > since)
                    )
                    .scalars()
                    .all()
                )
            # Build aside and swap: readers on other threads never see a half-applied change.
            devices = dict(self._devices) if since >= 0 else {}
            for device_id in gone:
                devices.pop(device_id, None)
            for device_id, tenant, site, kind, region, status in rows:
                if status == ACTIVE:
                    devices[device_id] = DeviceInfo(device_id, tenant, site, kind, region)
                else:
                    devices.pop(device_id, None)
            self._devices = devices
            self._revision = current
            self.reloads += 1
            return len(rows) + len(gone)

    async def follow(self, interval_s: float = 1.0) -> None:
        """Poll the registry revision forever (run as a task); errors are logged, not fatal."""
        while True:
            try:
                changed = await asyncio.to_thread(self.refresh)
                if changed:
                    log.info(
                        "device directory: %d device(s) changed, %d active", changed, len(self)
                    )
            except Exception:
                log.exception("device directory refresh failed; keeping the previous devices")
            await asyncio.sleep(interval_s)
