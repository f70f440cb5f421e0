"""The MQTT telemetry contract: topic scheme and JSON payload (see docs/protocols.md).

Topic ``{prefix}/{tenant}/{site}/{device}/telemetry``; payload one reading object, or
``{"readings": [ ... ]}`` with at most :data:`MAX_READINGS` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from protocols.json_readings import MAX_READINGS, decode_readings
from protocols.reading import Reason, Rejection, check_identifier

decode_payload = decode_readings  # the MQTT payload is the shared JSON reading document
__all__ = ["MAX_READINGS", "decode_payload"]
TELEMETRY = "telemetry"


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    tenant: str
    site: str
    device: str


def telemetry_topic(prefix: str, tenant: str, site: str, device: str) -> str:
    return f"{prefix}/{tenant}/{site}/{device}/{TELEMETRY}"


def telemetry_filter(prefix: str, share_group: str | None = None) -> str:
    """The collector's subscription; a shared group spreads devices over several instances."""
    pattern = f"{prefix}/+/+/+/{TELEMETRY}"
    return f"$share/{share_group}/{pattern}" if share_group else pattern


def parse_topic(prefix: str, topic: str) -> TopicIdentity:
    if not topic.startswith(prefix + "/"):
        raise Rejection(Reason.MALFORMED, f"topic {topic[:120]!r} is not under {prefix!r}")
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 4 or parts[3] != TELEMETRY:
        raise Rejection(
            Reason.MALFORMED, f"topic {topic[:120]!r} is not {prefix}/tenant/site/device/telemetry"
        )
    return TopicIdentity(
        check_identifier(parts[0], "tenant"),
        check_identifier(parts[1], "site"),
        check_identifier(parts[2], "device"),
    )


def encode_reading(fields: dict[str, Any], ts: str | float | None = None, **extra: Any) -> bytes:
    """A device-side helper for simulators and examples: one reading as payload bytes."""
    doc: dict[str, Any] = {"fields": fields, **extra}
    if ts is not None:
        doc["ts"] = ts
    return orjson.dumps(doc)
