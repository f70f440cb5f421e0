"""The registry's HJ 212 stations as the collector's MN lookup (one dict access per packet).

The index is rebuilt when the registry revision moves (device or credential change), so a new
station, a rotated password or a revoked one takes effect at the next directory refresh. A new
``Station`` object per rebuild also makes open connections check the password again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import select

from collectors.hj212 import Station
from gateway.registry.credentials import verify_secret
from gateway.registry.database import Registry
from gateway.registry.models import Device, DeviceCredential, Site
from protocols.directory import DeviceInfo


class StationIndex:
    def __init__(self, registry: Registry, revision: Callable[[], int]) -> None:
        self.registry = registry
        self._revision = revision
        self._seen: int | None = None
        self._stations: dict[str, Station] = {}
        self._lock = threading.Lock()

    def __call__(self, mn: str) -> Station | None:
        return self._stations.get(mn)

    def __len__(self) -> int:
        return len(self._stations)

    def refresh(self) -> bool:
        """Rebuild if the registry changed; returns whether it did (call from a thread)."""
        revision = self._revision()
        if revision == self._seen:
            return False
        with self._lock:
            query = (
                select(Device, Site.tenant_id, Site.region_code, DeviceCredential.secret_hash)
                .join(Site, Device.site_id == Site.id)
                .outerjoin(
                    DeviceCredential,
                    (DeviceCredential.device_id == Device.id)
                    & (DeviceCredential.kind == "hj212")
                    & DeviceCredential.revoked_at.is_(None),
                )
                .where(Device.protocol == "hj212", Device.status == "active")
            )
            stations: dict[str, Station] = {}
            with self.registry.session() as session:
                for device, tenant, region, secret_hash in session.execute(query):
                    mn = (device.connection or {}).get("mn")
                    if not mn:
                        continue
                    info = DeviceInfo(device.id, tenant, device.site_id, device.kind, region)
                    stations[str(mn)] = Station(info, device.profile, _checker(secret_hash))
            self._stations = stations
            self._seen = revision
        return True


def _checker(secret_hash: str | None) -> Callable[[str], bool]:
    if secret_hash is None:  # no active password: every PW is wrong
        return lambda _pw: False
    return lambda pw: verify_secret(pw, secret_hash)
