"""The MQTT telemetry contract: topic scheme and JSON payload (see docs/protocols.md).

Topic ``{prefix}/{tenant}/{site}/{device}/telemetry``; payload one reading object, or
``{"readings": [ ... ]}`` with at most :data:`MAX_READINGS` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from protocols.reading import Reason, Rejection, check_identifier

MAX_READINGS = 1000
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


def decode_payload(payload: bytes) -> list[Any]:
    """The raw reading objects of one message (each still to be validated on its own)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejection(Reason.MALFORMED, f"payload is not JSON: {exc}") from None
    if isinstance(doc, dict) and "readings" in doc:
        readings = doc["readings"]
        if not isinstance(readings, list) or not readings:
            raise Rejection(Reason.MALFORMED, "'readings' must be a non-empty array")
        if len(readings) > MAX_READINGS:
            raise Rejection(
                Reason.TOO_MANY_READINGS,
                f"{len(readings)} readings in one message; at most {MAX_READINGS}",
            )
        return readings
    if isinstance(doc, dict):
        return [doc]
    raise Rejection(Reason.MALFORMED, f"payload must be a JSON object, got {type(doc).__name__}")


def encode_reading(fields: dict[str, Any], ts: str | float | None = None, **extra: Any) -> bytes:
    """A device-side helper for simulators and examples: one reading as payload bytes."""
    doc: dict[str, Any] = {"fields": fields, **extra}
    if ts is not None:
        doc["ts"] = ts
    return orjson.dumps(doc)
