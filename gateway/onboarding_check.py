"""The engineer's "is it working?" for one device: registered, seen, how recently, and why not.

Everything comes from the two places the truth lives: the registry (is the device known, active,
does it hold credentials) and InfluxDB (its last stored reading, and the ``ingest_rejection``
events every collector process writes when it refuses the device's input). So the answer is the
same whichever process received — or refused — the data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from collectors.pipeline import REJECTION_MEASUREMENT
from gateway.registry.database import Registry
from gateway.registry.models import Device, DeviceCredential, Site
from protocols.reading import IDENTIFIER

REJECTION_WINDOW = "24h"
MAX_REJECTIONS = 20
LATE_FACTOR = 3.0  # silent for more than this many expected intervals: "late"


@dataclass
class CheckReport:
    device: str
    registered: bool
    verdict: str  # unregistered | disabled | never_seen | reporting | late | unknown
    status: str | None = None
    tenant: str | None = None
    site: str | None = None
    region: str | None = None
    kind: str | None = None
    profile: str | None = None
    protocol: str | None = None
    interval_s: float | None = None
    credentials: list[str] = field(default_factory=list)
    last_seen: str | None = None
    age_s: float | None = None
    last_fields: dict[str, Any] = field(default_factory=dict)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    influx_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def registry_facts(registry: Registry, device_id: str) -> CheckReport:
    with registry.session() as session:
        row = session.execute(
            select(Device, Site).join(Site, Device.site_id == Site.id).where(Device.id == device_id)
        ).first()
        if row is None:
            return CheckReport(device_id, registered=False, verdict="unregistered")
        device, site = row
        kinds = (
            session.execute(
                select(DeviceCredential.kind).where(
                    DeviceCredential.device_id == device_id, DeviceCredential.revoked_at.is_(None)
                )
            )
            .scalars()
            .all()
        )
        return CheckReport(
            device_id,
            registered=True,
            verdict="unknown",
            status=device.status,
            tenant=site.tenant_id,
            site=site.id,
            region=site.region_code,
            kind=device.kind,
            profile=device.profile,
            protocol=device.protocol,
            interval_s=device.interval_s,
            credentials=sorted(kinds),
        )


async def check_device(
    registry: Registry, influx: Any, database: str, device_id: str, *, now: float | None = None
) -> CheckReport:
    """Registry facts plus what InfluxDB has seen; ``influx`` is an InfluxClient (or None)."""
    if IDENTIFIER.fullmatch(device_id) is None:
        raise ValueError(f"{device_id!r} is not a device id (1-64 of A-Z a-z 0-9 _ . -)")
    report = await asyncio.to_thread(registry_facts, registry, device_id)
    now = time.time() if now is None else now
    if influx is not None:
        try:
            await _influx_facts(report, influx, database, now)
        except Exception as exc:  # InfluxDB down: say so, still answer from the registry
            report.influx_error = str(exc) or type(exc).__name__
    _verdict(report)
    return report


async def _influx_facts(report: CheckReport, influx: Any, database: str, now: float) -> None:
    # Identifiers are [A-Za-z0-9_.-] only (checked above), so quoting them is safe.
    dev = report.device
    if report.kind is not None:
        results = await influx.query(
            f'SELECT * FROM "{report.kind}" WHERE "device" = \'{dev}\' ORDER BY time DESC LIMIT 1',
            db=database,
        )
        series = results[0].get("series") if results else None
        if series:
            columns, values = series[0]["columns"], series[0]["values"][0]
            point = dict(zip(columns, values, strict=True))
            ts_ms = point.pop("time")
            report.last_seen = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat()
            report.age_s = round(now - ts_ms / 1000, 1)
            skip = {"device", "tenant", "site", "region"}
            report.last_fields = {k: v for k, v in point.items() if v is not None and k not in skip}
    results = await influx.query(
        f'SELECT * FROM "{REJECTION_MEASUREMENT}" WHERE "device" = \'{dev}\' '
        f"AND time > now() - {REJECTION_WINDOW} ORDER BY time DESC LIMIT {MAX_REJECTIONS}",
        db=database,
    )
    series = results[0].get("series") if results else None
    if series:
        columns = series[0]["columns"]
        for values in series[0]["values"]:
            point = dict(zip(columns, values, strict=True))
            report.rejections.append(
                {
                    "time": datetime.fromtimestamp(point["time"] / 1000, UTC).isoformat(),
                    "protocol": point.get("protocol"),
                    "reason": point.get("reason"),
                    "detail": point.get("detail"),
                    "more_like_it": int(point.get("suppressed") or 0),
                }
            )


ADVICE = {
    "unknown_device": "the device id is not registered (or is disabled): register it, or fix the "
    "id configured in the device",
    "identity_mismatch": "the device publishes under another tenant/site than registered: use the "
    "topic from its onboarding answer",
    "unknown_quantity": "the payload names fields that its kind does not have: map the device's "
    "parameters to the canonical quantity names (docs/protocols.md)",
    "out_of_range": "values outside the physical range: check the unit and scale (profile)",
    "wrong_type": "a field has the wrong type (e.g. a string for a number)",
    "malformed": "the payload is not the documented JSON document",
    "timestamp_out_of_window": "the device clock is off: sync it (NTP) or omit 'ts'",
    "bad_timestamp": "the 'ts' field is not ISO 8601 or epoch milliseconds",
    "auth_blocked": "refused after repeated wrong passwords (HJ 212 PW) from the address shown: "
    "fix the PW on the station and wait out the block; if nobody was configuring it, someone "
    "is guessing its PW (docs/hj212.md, 'Password guessing')",
}


def _verdict(report: CheckReport) -> None:
    if not report.registered:
        report.verdict = "unregistered"
        report.advice.append("register the device (POST /devices or the bulk import) first")
    elif report.status != "active":
        report.verdict = "disabled"
        report.advice.append(f"the device is {report.status}: its data is refused until active")
    elif report.influx_error is not None:
        report.verdict = "unknown"
        report.advice.append("InfluxDB could not be asked; only registry facts are shown")
    elif report.last_seen is None:
        report.verdict = "never_seen"
        if not report.rejections:
            report.advice.append(_silence_advice(report.protocol))
    elif (
        report.age_s is not None
        and report.interval_s
        and (report.age_s > LATE_FACTOR * report.interval_s)
    ):
        report.verdict = "late"
        report.advice.append(
            f"last reading {report.age_s:.0f} s ago, expected every {report.interval_s:g} s"
        )
    else:
        report.verdict = "reporting"
    for reason in dict.fromkeys(r["reason"] for r in report.rejections):
        if reason in ADVICE:
            report.advice.append(f"{reason}: {ADVICE[reason]}")


def _silence_advice(protocol: str | None) -> str:
    if protocol == "mqtt":
        return (
            "nothing received and nothing refused: check the broker address, the username and "
            "password from onboarding, and the topic (a wrong topic is denied by the broker's ACL "
            "and never reaches the platform)"
        )
    if protocol == "http":
        return "nothing received: check the URL and the key (a wrong key is refused with 401)"
    if protocol == "coap":
        return (
            "nothing received: check the coap:// URI and its token (?k=...); a wrong token is "
            "answered 4.01 and recorded under device '?', so it does not show here"
        )
    if protocol == "hj212":
        return (
            "nothing received: check the station's MN (registered in connection.mn), its PW, "
            "and that it connects to the HJ 212 port; a wrong PW shows here as bad_credentials"
        )
    if protocol and protocol.startswith("modbus"):
        return "nothing polled yet: run the register probe to check address, unit id and order"
    return "nothing received and nothing refused yet"
