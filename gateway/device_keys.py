"""Device API keys and CoAP tokens checked on the ingest path without a database round trip.

A verified key is remembered (key id → device, hash) until the registry revision moves, which
every credential change and device change bumps: rotation and revocation take effect at the next
directory refresh (at once in this process, within ``directory_poll_s`` in others). Unknown key
ids are remembered too, bounded, so a flood of made-up keys costs one query per distinct id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from gateway.registry.credentials import parse_key, verify_secret
from gateway.registry.database import Registry
from gateway.registry.models import DeviceCredential

MAX_CACHED = 200_000


@dataclass(frozen=True, slots=True)
class _Entry:
    device: str
    kind: str
    secret_hash: str


class DeviceKeys:
    def __init__(self, registry: Registry, revision: Callable[[], int] | None = None) -> None:
        self.registry = registry
        self._revision_source = revision or registry.revision
        self._cache: dict[str, _Entry | None] = {}
        self._revision: int | None = None
        self._lock = threading.Lock()

    def _entry(self, key_id: str) -> _Entry | None:
        revision = self._revision_source()
        with self._lock:
            if revision != self._revision:
                self._cache.clear()
                self._revision = revision
            if key_id in self._cache:
                return self._cache[key_id]
        with self.registry.session() as session:
            row = session.execute(
                select(
                    DeviceCredential.device_id, DeviceCredential.kind, DeviceCredential.secret_hash
                ).where(DeviceCredential.key_id == key_id, DeviceCredential.revoked_at.is_(None))
            ).first()
        entry = _Entry(*row) if row is not None else None
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key_id] = entry
        return entry

    def device_for(self, presented: str, kind: str) -> str | None:
        """The device a key of ``kind`` belongs to, or None (unknown, revoked or wrong)."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        entry = self._entry(parsed[0])
        if entry is None or entry.kind != kind or not verify_secret(presented, entry.secret_hash):
            return None
        return entry.device
