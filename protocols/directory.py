"""Who a device is: the identity the platform trusts, looked up by device id.

Collectors accept data only from devices the directory knows. The registry (gateway) provides the
real directory; :class:`StaticDirectory` serves the embedded demo, tests and benchmarks from a YAML
file, and notices when that file changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device: str
    tenant: str
    site: str
    kind: str
    region: str = ""


class DeviceDirectory(Protocol):
    def get(self, device: str) -> DeviceInfo | None: ...


class StaticDirectory:
    """Devices from a list, optionally backed by a YAML file re-read when its mtime changes."""

    def __init__(self, devices: Iterable[DeviceInfo] = (), path: Path | None = None) -> None:
        self._devices: dict[str, DeviceInfo] = {d.device: d for d in devices}
        self._path = path
        self._mtime_ns: int | None = None
        if path is not None:
            self.refresh()

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> StaticDirectory:
        return cls(_info(row, "rows") for row in rows)

    def get(self, device: str) -> DeviceInfo | None:
        return self._devices.get(device)

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._devices.values())

    def add(self, info: DeviceInfo) -> None:
        self._devices[info.device] = info

    def refresh(self) -> bool:
        """Re-read the file if it changed; returns whether anything was reloaded."""
        if self._path is None:
            return False
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime_ns:
            return False
        raw = yaml.safe_load(self._path.read_text(encoding="utf-8")) or {}
        rows = raw.get("devices", []) if isinstance(raw, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{self._path}: expected a mapping with a 'devices' list")
        self._devices = {d.device: d for d in (_info(row, str(self._path)) for row in rows)}
        self._mtime_ns = mtime
        return True

    def save(self, path: Path) -> None:
        rows = [
            {
                "device": d.device,
                "tenant": d.tenant,
                "site": d.site,
                "kind": d.kind,
                "region": d.region,
            }
            for d in self._devices.values()
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"devices": rows}, allow_unicode=True, sort_keys=False))
        os.replace(tmp, path)


def _info(row: Mapping[str, str], source: str) -> DeviceInfo:
    try:
        return DeviceInfo(
            device=str(row["device"]),
            tenant=str(row["tenant"]),
            site=str(row["site"]),
            kind=str(row["kind"]),
            region=str(row.get("region", "")),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{source}: device row {row!r} lacks {exc}") from exc
