"""Onboard a scenario's tenants, sites and devices through the gateway, as an engineer would.

Everything goes over the public HTTP API, so the demo and ``weijian simulate`` exercise the same
path as a real onboarding:

1. ``POST /import?mode=upsert`` in chunks (the gateway takes at most 10,000 rows and 1 MiB per
   request): tenants, then sites, then devices with the profile, protocol and connection
   parameters each protocol runner gives (a Modbus server's host, port and unit id; a station's
   MN). The import answers with the credentials of the devices it *created*;
2. ``POST /devices/{id}/credentials/{kind}`` for every device that existed already (the registry
   keeps only hashes, so the secret must be rotated to be known: the old one stops working).

The credential kind follows the protocol: ``mqtt`` (broker password), ``coap_token``, ``hj212``
(the station's PW), ``api_key`` (HTTP); polled Modbus devices need none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from simulators.scenario import AIR_VENUE_TYPES, Scenario

VENUE_TYPES = AIR_VENUE_TYPES  # kept for callers of the first version
CONCURRENCY = 8
CHUNK_ROWS = 2000  # rows per import request: well inside the gateway's 1 MiB body limit

#: Credential kind a device speaking each protocol needs (gateway.registry.credentials).
CREDENTIAL_KINDS: dict[str, str | None] = {
    "mqtt": "mqtt",
    "http": "api_key",
    "coap": "coap_token",
    "hj212": "hj212",
    "modbus_tcp": None,
    "modbus_rtu_tcp": None,
    "modbus_rtu": None,
}


class OnboardingError(RuntimeError):
    """The gateway refused the scenario; the message carries its answer."""


@dataclass(frozen=True)
class DeviceAccount:
    """A device's secret as issued: ``username`` (MQTT: the device id), ``password`` (the secret:
    MQTT password, CoAP token, HJ 212 PW or API key), its credential ``kind``."""

    username: str
    password: str
    kind: str = "mqtt"
    key_id: str | None = None


def import_document(
    scenario: Scenario, connections: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The scenario as a registry import (docs/gateway.md); ``connections``: device id →
    connection parameters (Modbus host/port/unit id, HJ 212 MN)."""
    connections = connections or {}
    tenants = []
    for t in scenario.tenants:
        row: dict[str, Any] = {"id": t.id, "name": t.name}
        if t.category:
            row["category"] = t.category
        tenants.append(row)
    sites = []
    for site in scenario.sites:
        row = {
            "id": site.id,
            "tenant_id": site.tenant,
            "name": site.name,
            "region_code": site.region,
            "latitude": site.lat,
            "longitude": site.lon,
            "venue_type": site.venue_type or AIR_VENUE_TYPES.get(site.venue or "", "public_place"),
        }
        if site.address:
            row["address"] = site.address
        if site.attributes:
            row["attributes"] = dict(site.attributes)
        sites.append(row)
    devices = []
    for d in scenario.devices:
        row = {
            "id": d.id,
            "site_id": d.site,
            "kind": d.kind,
            "profile": d.profile,
            "protocol": d.protocol,
            "interval_s": d.interval_s,
        }
        if d.id in connections:
            row["connection"] = dict(connections[d.id])
        devices.append(row)
    return {"tenants": tenants, "sites": sites, "devices": devices}


def _chunks(document: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, list[Any]]]:
    """Import bodies of at most ``CHUNK_ROWS`` rows, in dependency order."""
    out: list[dict[str, list[Any]]] = []
    current: dict[str, list[Any]] = {}
    size = 0
    for resource in ("tenants", "sites", "devices"):
        for row in document.get(resource, []):
            if size >= CHUNK_ROWS:
                out.append(current)
                current, size = {}, 0
            current.setdefault(resource, []).append(row)
            size += 1
    if current:
        out.append(current)
    return out


async def login(session: aiohttp.ClientSession, base_url: str, username: str, password: str) -> str:
    async with session.post(
        f"{base_url}/auth/token", data={"username": username, "password": password}
    ) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise OnboardingError(f"login as {username!r} refused ({resp.status}): {body}")
        return str(body["access_token"])


def _account(answer: Mapping[str, Any]) -> DeviceAccount:
    return DeviceAccount(
        username=str(answer.get("username") or answer.get("device") or ""),
        password=str(answer["secret"]),
        kind=str(answer.get("kind", "mqtt")),
        key_id=answer.get("key_id"),
    )


async def onboard(
    base_url: str,
    scenario: Scenario,
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    connections: Mapping[str, Mapping[str, Any]] | None = None,
    devices: Sequence[str] | None = None,
) -> dict[str, DeviceAccount]:
    """Upsert the scenario into the registry; return a fresh secret per device that needs one
    (keyed by device id; Modbus devices have none). ``devices`` limits credentials to those ids."""
    base_url = base_url.rstrip("/")
    wanted = None if devices is None else set(devices)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if token is None:
            if username is None or password is None:
                raise ValueError("give a token, or a username and password")
            token = await login(session, base_url, username, password)
        headers = {"Authorization": f"Bearer {token}"}
        accounts: dict[str, DeviceAccount] = {}
        for body in _chunks(import_document(scenario, connections)):
            async with session.post(
                f"{base_url}/import",
                params={"dry_run": "false", "mode": "upsert"},
                json=body,
                headers=headers,
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 200 or not answer.get("ok", False):
                    raise OnboardingError(f"import refused ({resp.status}): {_brief(answer)}")
            for issued in answer.get("credentials", []):
                account = _account(issued)
                accounts[str(issued["device"])] = DeviceAccount(
                    account.username or str(issued["device"]),
                    account.password,
                    account.kind,
                    account.key_id,
                )
        limit = asyncio.Semaphore(CONCURRENCY)

        async def rotate(device: str, kind: str) -> tuple[str, DeviceAccount]:
            async with (
                limit,
                session.post(
                    f"{base_url}/devices/{device}/credentials/{kind}", headers=headers
                ) as resp,
            ):
                answer = await resp.json(content_type=None)
                if resp.status not in (200, 201):
                    raise OnboardingError(
                        f"{device}: credentials refused ({resp.status}): {_brief(answer)}"
                    )
            issued = answer.get("credential") or answer
            account = _account(issued)
            return device, DeviceAccount(
                account.username or device, account.password, account.kind, account.key_id
            )

        todo = []
        for d in scenario.devices:
            kind = CREDENTIAL_KINDS.get(d.protocol or "")
            if kind is None or d.id in accounts or (wanted is not None and d.id not in wanted):
                continue
            todo.append(rotate(d.id, kind))
        for device, account in await asyncio.gather(*todo):
            accounts[device] = account
    if wanted is not None:
        accounts = {k: v for k, v in accounts.items() if k in wanted}
    return accounts


def _brief(answer: Any, limit: int = 2000) -> str:
    text = str(answer)
    return text if len(text) <= limit else text[:limit] + " …"
