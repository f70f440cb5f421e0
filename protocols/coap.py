"""The CoAP telemetry wire format: resource, token query, content formats and the reply body.

Shared by the collector (collectors/coap/) and the simulated devices (simulators/coap_device.py).

The CBOR document has the JSON document's shape (``protocols/json_readings.py``) and is decoded
into the same Python structure, so one validator serves both. CBOR can say more than JSON; what
JSON cannot say is refused or left to the validator:

* tags 0 (RFC 3339 text) and 1 (epoch seconds) around ``ts`` decode to the text or the number
  inside, which is exactly what ``ts`` accepts in JSON;
* bignums (tags 2, 3) are refused as ``malformed``: JSON numbers of our parsers stop at 64 bits,
  and an unbounded integer would overflow the range checks;
* NaN and infinities are real CBOR floats and reach the validator (``non_finite``), as the
  rejection-reason table says for protocols that can carry them;
* duplicate map keys, trailing bytes after the document and nesting deeper than
  :data:`MAX_DEPTH` are ``malformed``; other items (byte strings, undefined, unknown tags) reach
  the validator and are refused there with the field's name (``wrong_type`` and so on).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import cbor2
import orjson

from protocols.json_readings import MAX_READINGS, decode_readings
from protocols.reading import Reason, Rejection

RESOURCE_PATH = ("t",)
"""``POST coap://host:5683/t``: one short path segment, a few bytes on a constrained link."""
TOKEN_QUERY = "k"
"""The device token travels as the Uri-Query ``k=<token>``."""
CONTENT_FORMAT_JSON = 50  # application/json
CONTENT_FORMAT_CBOR = 60  # application/cbor
CONTENT_FORMATS = {CONTENT_FORMAT_JSON: "json", CONTENT_FORMAT_CBOR: "cbor"}
MAX_DEPTH = 16  # reading → fields → value is depth 4; anything deep is not our document
MAX_LISTED_REJECTIONS = 16  # per reply body: it should fit one datagram
MAX_DIAGNOSTIC_BYTES = 200  # diagnostic payloads of error responses (RFC 7252 §5.5.2)
TOKEN_SHAPE = re.compile(r"wjc_[0-9a-f]{12}_[A-Za-z0-9_\-]{1,200}")


class _BigInteger(Exception):
    pass


def _refuse_bignum(value: Any, immutable: bool) -> Any:
    raise _BigInteger


_SEMANTIC_DECODERS = {
    0: lambda value, immutable: value,  # RFC 3339 text: what "ts" takes as text
    1: lambda value, immutable: value,  # epoch seconds: what "ts" takes as a number
    2: _refuse_bignum,
    3: _refuse_bignum,
}


def token_from_query(uri_query: Sequence[str]) -> str | None:
    """The one ``k=`` value among the Uri-Query options, or None (absent or given twice)."""
    prefix = TOKEN_QUERY + "="
    found = [q[len(prefix) :] for q in uri_query if q.startswith(prefix)]
    return found[0] if len(found) == 1 and found[0] else None


def key_id(token: str) -> str | None:
    """The public key id of a well-formed token (safe to log); None if it is not token-shaped."""
    return token[4:16] if TOKEN_SHAPE.fullmatch(token) else None


def readings_of(doc: Any) -> list[Any]:
    """The JSON document's shape rule, for an already decoded document."""
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
    raise Rejection(Reason.MALFORMED, f"payload must be a map/object, got {type(doc).__name__}")


def decode_cbor_readings(payload: bytes) -> list[Any]:
    """The raw reading objects of a CBOR payload (each still to be validated on its own)."""
    fp = io.BytesIO(payload)
    try:
        doc = cbor2.CBORDecoder(
            fp,
            semantic_decoders=_SEMANTIC_DECODERS,
            max_depth=MAX_DEPTH,
            allow_duplicate_keys=False,
        ).decode()
    except cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__, _BigInteger):
            raise Rejection(
                Reason.MALFORMED, "integers beyond 64 bits (CBOR tags 2/3) are not accepted"
            ) from None
        raise Rejection(Reason.MALFORMED, f"payload is not CBOR: {exc}") from None
    except Exception as exc:  # hostile input must never escape as a server error
        raise Rejection(Reason.MALFORMED, f"payload is not CBOR: {exc!r}") from None
    if fp.tell() != len(payload):
        raise Rejection(
            Reason.MALFORMED, f"{len(payload) - fp.tell()} byte(s) after the CBOR document"
        )
    return readings_of(doc)


def decode_document(payload: bytes, content_format: int | None) -> list[Any]:
    """Raw readings of a payload in a supported content format (None: JSON, as documented)."""
    if content_format == CONTENT_FORMAT_CBOR:
        return decode_cbor_readings(payload)
    try:
        return decode_readings(payload)
    except Rejection as rejection:
        if content_format is None:
            raise Rejection(
                rejection.reason, f"{rejection.detail} (no Content-Format: read as JSON)"
            ) from None
        raise


def encode_reply(
    accepted: int, rejected: Sequence[tuple[int, Rejection]], content_format: int
) -> bytes:
    """``{"accepted": n, "rejected": [{"index", "reason"}...]}`` in the request's format.

    At most :data:`MAX_LISTED_REJECTIONS` are listed (``"more": k`` counts the rest), so the
    reply fits one datagram; the details are in the device's onboarding check and the logs.
    """
    body: dict[str, Any] = {
        "accepted": accepted,
        "rejected": [
            {"index": i, "reason": r.reason.value} for i, r in rejected[:MAX_LISTED_REJECTIONS]
        ],
    }
    if len(rejected) > MAX_LISTED_REJECTIONS:
        body["more"] = len(rejected) - MAX_LISTED_REJECTIONS
    if content_format == CONTENT_FORMAT_CBOR:
        return cbor2.dumps(body)
    return orjson.dumps(body)


def diagnostic(code: str, detail: str) -> bytes:
    """``<code>: <detail>`` as UTF-8, cut to :data:`MAX_DIAGNOSTIC_BYTES` on a character."""
    text = f"{code}: {detail}".encode()
    if len(text) <= MAX_DIAGNOSTIC_BYTES:
        return text
    return text[: MAX_DIAGNOSTIC_BYTES - 3].decode(errors="ignore").encode() + b"..."
