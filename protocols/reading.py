"""The one reading model every protocol produces, and the checks a reading passes at the door.

A collector turns whatever arrived (a JSON object, Modbus registers, an HJ 212 packet) into a raw
mapping and hands it to :class:`ReadingValidator`; what comes out is a :class:`Reading` that is
safe to store, or a :class:`Rejection` whose reason is one of :class:`Reason` (the metric label).
The hot path is hand-written: it runs for every reading (see docs/protocols.md for the cost).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from protocols.catalog import Catalog, Kind
from protocols.directory import DeviceInfo
from protocols.lineprotocol import encode_line

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
REGION_CODE = re.compile(r"[0-9]{6}")
# HJ 212-2017 Table 8 data flags: N normal, F stopped, M maintenance, S manual value, D fault,
# C calibrating, T over range, B communication error.
DATA_FLAGS = frozenset("NFMSDCTB")
FLAG_SUFFIX = "_flag"

FieldValue = float | int | bool | str


class Reason(StrEnum):
    """Why input was refused. The values are metric labels and API error codes: keep them stable."""

    MALFORMED = "malformed"  # not JSON / not the documented shape
    OVERSIZED = "oversized"
    TOO_MANY_READINGS = "too_many_readings"
    BAD_IDENTIFIER = "bad_identifier"
    UNKNOWN_DEVICE = "unknown_device"
    IDENTITY_MISMATCH = "identity_mismatch"  # topic/credentials say one device, payload another
    BAD_CREDENTIALS = "bad_credentials"  # a known device presented a wrong password or key
    # refused unchecked: its sender (or, for senders it never authenticated from, the device) is
    # blocked for a while after repeated wrong credentials (HJ 212, docs/hj212.md)
    AUTH_BLOCKED = "auth_blocked"
    NO_FIELDS = "no_fields"
    UNKNOWN_QUANTITY = "unknown_quantity"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    BAD_FLAG = "bad_flag"
    SPOOL_FULL = "spool_full"


class Rejection(Exception):
    """Input that cannot become a reading; ``detail`` says which key and why, for a person."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reading:
    tenant: str
    site: str
    device: str
    kind: str
    region: str
    time_ms: int  # UTC, milliseconds since the epoch
    fields: Mapping[str, FieldValue]
    flags: Mapping[str, str] | None = None

    def to_line(self) -> str:
        """Line protocol, millisecond precision: measurement = kind; identity and region as tags."""
        fields: dict[str, FieldValue] = dict(self.fields)
        if self.flags:
            for quantity, flag in self.flags.items():
                fields[quantity + FLAG_SUFFIX] = flag
        tags = {"tenant": self.tenant, "site": self.site, "device": self.device}
        if self.region:
            tags["region"] = self.region
        return encode_line(self.kind, tags, fields, self.time_ms)


def check_identifier(value: object, what: str) -> str:
    if not isinstance(value, str) or IDENTIFIER.fullmatch(value) is None:
        raise Rejection(
            Reason.BAD_IDENTIFIER,
            f"{what} {value!r} must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit",
        )
    return value


class ReadingValidator:
    """Turns raw reading mappings into :class:`Reading` objects for a known device."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_past_s: float = 30 * 86400,
        max_future_s: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.max_past_ms = int(max_past_s * 1000)
        self.max_future_ms = int(max_future_s * 1000)
        self.clock = clock

    def validate(self, device: DeviceInfo, raw: Any, now_ms: int | None = None) -> Reading:
        if not isinstance(raw, dict):
            raise Rejection(Reason.MALFORMED, f"a reading must be a JSON object, got {_kind(raw)}")
        claimed = raw.get("device")
        if claimed is not None and claimed != device.device:
            raise Rejection(
                Reason.IDENTITY_MISMATCH,
                f"payload names device {claimed!r} but arrived as {device.device!r}",
            )
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        time_ms = self._timestamp(raw.get("ts"), now)
        kind = self.catalog.kinds.get(device.kind)
        if kind is None:
            raise Rejection(Reason.UNKNOWN_QUANTITY, f"device kind {device.kind!r} is not defined")
        fields = self._fields(raw.get("fields"), kind)
        flags = self._flags(raw.get("flags"), fields)
        return Reading(
            device.tenant,
            device.site,
            device.device,
            device.kind,
            device.region,
            time_ms,
            fields,
            flags,
        )

    def _timestamp(self, ts: Any, now_ms: int) -> int:
        if ts is None:
            return now_ms  # a device without a clock: stamped on arrival
        if isinstance(ts, bool):
            raise Rejection(
                Reason.BAD_TIMESTAMP, f"ts must be RFC 3339 text or epoch seconds, got {ts!r}"
            )
        if isinstance(ts, int | float):
            if not math.isfinite(ts):
                raise Rejection(Reason.BAD_TIMESTAMP, f"ts {ts!r} is not a finite number")
            time_ms = round(ts * 1000)
        elif isinstance(ts, str):
            try:
                parsed = datetime.fromisoformat(ts)
            except ValueError:
                raise Rejection(Reason.BAD_TIMESTAMP, f"ts {ts[:40]!r} is not RFC 3339") from None
            if parsed.tzinfo is None:
                raise Rejection(Reason.BAD_TIMESTAMP, f"ts {ts!r} has no UTC offset")
            time_ms = round(parsed.timestamp() * 1000)
        else:
            raise Rejection(Reason.BAD_TIMESTAMP, f"ts must be text or a number, got {_kind(ts)}")
        if time_ms < now_ms - self.max_past_ms or time_ms > now_ms + self.max_future_ms:
            raise Rejection(
                Reason.TIMESTAMP_OUT_OF_WINDOW,
                f"ts {ts!r} is outside [now - {self.max_past_ms // 1000}s, "
                f"now + {self.max_future_ms // 1000}s]",
            )
        return time_ms

    def _fields(self, raw: Any, kind: Kind) -> dict[str, FieldValue]:
        if not isinstance(raw, dict) or not raw:
            raise Rejection(Reason.NO_FIELDS, "a reading needs a non-empty 'fields' object")
        out: dict[str, FieldValue] = {}
        quantities = self.catalog.quantities
        for name, value in raw.items():
            if name not in kind.quantities:
                hint = (
                    "not a known quantity"
                    if name not in quantities
                    else f"not measured by {kind.name}"
                )
                raise Rejection(Reason.UNKNOWN_QUANTITY, f"field {str(name)[:64]!r}: {hint}")
            q = quantities[name]
            if q.type == "float" or q.type == "int":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise Rejection(
                        Reason.WRONG_TYPE, f"field {name!r} must be a number, got {_kind(value)}"
                    )
                if not math.isfinite(value):
                    raise Rejection(Reason.NON_FINITE, f"field {name!r} is {value!r}")
                if (q.low is not None and value < q.low) or (q.high is not None and value > q.high):
                    raise Rejection(
                        Reason.OUT_OF_RANGE,
                        f"field {name!r} = {value!r} is outside its physical range "
                        f"[{q.low}, {q.high}] {q.unit}",
                    )
                if q.type == "float":
                    value = float(value)  # one field type forever: InfluxDB refuses int after float
                elif isinstance(value, float):
                    if not value.is_integer():
                        raise Rejection(
                            Reason.WRONG_TYPE, f"field {name!r} must be an integer, got {value!r}"
                        )
                    value = int(value)
            elif q.type == "bool":
                if not isinstance(value, bool):
                    raise Rejection(
                        Reason.WRONG_TYPE, f"field {name!r} must be true/false, got {_kind(value)}"
                    )
            elif not isinstance(value, str) or len(value) > 256:
                raise Rejection(
                    Reason.WRONG_TYPE, f"field {name!r} must be text of at most 256 characters"
                )
            out[name] = value
        return out

    def _flags(self, raw: Any, fields: Mapping[str, FieldValue]) -> dict[str, str] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise Rejection(Reason.BAD_FLAG, f"'flags' must be an object, got {_kind(raw)}")
        for name, flag in raw.items():
            if name not in fields:
                raise Rejection(
                    Reason.BAD_FLAG, f"flag for {str(name)[:64]!r}, which this reading lacks"
                )
            if not isinstance(flag, str) or flag not in DATA_FLAGS:
                raise Rejection(
                    Reason.BAD_FLAG,
                    f"flag {flag!r} for {name!r} is not one of {''.join(sorted(DATA_FLAGS))}",
                )
        return dict(raw) or None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
