"""The registry's Modbus devices as the Modbus collector's poll targets, and the register probe.

Collectors import nothing from the gateway; the platform hands the collector
:func:`modbus_targets` as its target source, so a device registered, moved, disabled or deleted
is polled (or not) from the collector's next refresh on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from sqlalchemy import select

from collectors.modbus.probe import format_report, probe
from collectors.modbus.targets import ModbusTarget, target_from_registry
from gateway.registry.database import Registry
from gateway.registry.models import Device, Site
from protocols.directory import DeviceInfo
from protocols.profiles import load_profiles

log = logging.getLogger(__name__)
MODBUS_PROTOCOLS = ("modbus_tcp", "modbus_rtu_tcp", "modbus_rtu")


def _rows(registry: Registry, device_id: str | None = None) -> list[Any]:
    query = (
        select(Device, Site.tenant_id, Site.region_code)
        .join(Site, Device.site_id == Site.id)
        .where(Device.protocol.in_(MODBUS_PROTOCOLS))
    )
    if device_id is None:
        query = query.where(Device.status == "active")
    else:
        query = query.where(Device.id == device_id)
    with registry.session() as session:
        return list(session.execute(query).all())


def _target(device: Device, tenant: str, region: str) -> ModbusTarget:
    info = DeviceInfo(device.id, tenant, device.site_id, device.kind, region)
    profile = load_profiles()[device.profile]
    return target_from_registry(
        info, profile, device.protocol, device.connection or {}, device.interval_s
    )


def modbus_targets(registry: Registry) -> list[ModbusTarget]:
    """Every active Modbus device; one with unusable parameters is logged and skipped."""
    targets = []
    for device, tenant, region in _rows(registry):
        try:
            targets.append(_target(device, tenant, region))
        except (KeyError, ValueError, TypeError) as exc:
            log.error("modbus device %s not polled: %s", device.id, exc)
    return targets


async def probe_device(registry: Registry, device_id: str) -> dict[str, Any]:
    """Read the device's registers once; every quantity under every byte/word order."""
    rows = await asyncio.to_thread(_rows, registry, device_id)
    if not rows:
        return {"error": f"{device_id} is not a registered Modbus device"}
    device, tenant, region = rows[0]
    try:
        target = _target(device, tenant, region)
    except (KeyError, ValueError, TypeError) as exc:
        return {"error": f"cannot build the connection from the registry: {exc}"}
    report = await probe(load_profiles()[device.profile], target)
    return {"text": format_report(report), **_plain(report)}


def _plain(report: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(report):
        return {k: v for k, v in dataclasses.asdict(report).items() if _jsonable(v)}
    return {}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
