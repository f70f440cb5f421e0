"""The JSON reading document every JSON-speaking protocol shares (MQTT, HTTP, CoAP JSON).

One reading object, or ``{"readings": [ ... ]}`` with at most :data:`MAX_READINGS` of them.
"""

from __future__ import annotations

from typing import Any

import orjson

from protocols.reading import Reason, Rejection

MAX_READINGS = 1000


def decode_readings(payload: bytes) -> list[Any]:
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
