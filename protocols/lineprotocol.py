"""InfluxDB line protocol encoder for the v1 ``/write`` endpoint: the ingestion hot path.

Every rule below was checked against the real InfluxDB 1.6.7 (``tests/test_lineprotocol.py``
round-trips what this module accepts through ``/write`` and ``/query``) and the 1.x line-protocol
reference; where influxdb-client's ``Point`` differs, the server decided.

* Measurement: ``,`` and space are backslash-escaped. Tag keys, tag values and field keys: ``,``
  ``=`` and space. Nothing else is escaped there (1.x stores any other backslash literally).
* String field values are double-quoted; ``\\`` and ``"`` are escaped, everything else is written
  as is -- **including a newline**. 1.x scans a quoted value up to its closing quote, so a raw
  LF (or CR) inside it round-trips exactly, while an escaped ``\\n`` would be stored as the two
  characters backslash and ``n`` (1.x unescapes only ``\\\\`` and ``\\"``). ``Point`` also writes
  the raw newline. Consequence: one encoded line may contain ``b"\\n"``, so never frame lines by
  splitting on newlines (the writer takes a sequence of lines, the spool is length-framed).
* Names (measurement, tag keys and values, field keys) cannot carry LF or CR (LF ends the line;
  the server strips a CR before the timestamp and InfluxQL cannot name it): ``ValueError``.
  ``Point`` writes them as ``\\n``/``\\r``, which 1.x stores as literal backslash sequences;
  tabs likewise: we write a tab raw, which round-trips.
* A name cannot end with a backslash: it would escape the separator after it ("Tag values
  cannot end with the backslash character, even if it is escaped" -- 1.x reference). ``Point``
  appends a space to such a tag value, which the server then stores as a *different* value
  (``"a\\\\"`` becomes ``"a "``); we refuse instead.
* In a measurement or field key, a backslash directly before ``,`` ``=`` space or ``"`` cannot
  be represented: 1.x unescapes all four there (even ``\\=`` and ``\\"``, which are never
  escaped), so the backslash is lost, or the point becomes unqueryable, or the line is refused.
  Refused. Tag keys and values can carry it: 1.x treats the character after any backslash as
  escaped and unescapes only ``\\,`` ``\\=`` ``\\ ``, so ``a\\,b`` is written ``a\\\\,b``.
* 1.x strips leading tabs and NUL bytes from the measurement and field keys, and treats a line
  starting with ``#`` as a comment (HTTP 204, nothing stored!): refused. ``time`` is refused as
  a tag or field key: 1.x drops a point with a ``time`` tag ("partial write"), and silently
  drops a ``time`` field from a point that has other fields (HTTP 204).
* Tags are sorted by key (InfluxDB's preferred order); empty tag values are omitted. Fields keep
  the caller's order. Floats use ``repr`` (shortest round-trip) and keep an integral float's
  ``.0`` (``Point`` trims it; both parse as float, ours is unambiguous to a reader). Ints get the
  ``i`` suffix and must fit int64. NaN, infinities and an empty field set are refused.

The encoder never trusts its caller to have validated (a bad line costs a bisection in the
writer and a dead letter), but it is fast: escaped names are memoised in small bounded dicts
because an IoT platform writes the same few measurement/tag/field names millions of times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "FieldValue",
    "encode_line",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
]

FieldValue = float | int | bool | str

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Escaped-name memo tables. Bounded by clearing: names repeat heavily, so refilling is cheap, and
# a flood of unique names (a bug upstream) cannot grow memory without limit.
_CACHE_LIMIT = 65_536
_measurements: dict[str, str] = {}
_tag_keys: dict[str, str] = {}
_tag_values: dict[str, str] = {}
_field_keys: dict[str, str] = {}
_series: dict[tuple[object, ...], str] = {}


def _remember(cache: dict, raw: object, escaped: str) -> str:  # type: ignore[type-arg]
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[raw] = escaped
    return escaped


def _check_name(s: str, what: str) -> None:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be str, got {type(s).__name__}")
    if not s:
        raise ValueError(f"{what} is empty")
    if "\n" in s or "\r" in s:
        raise ValueError(
            f"{what} {s[:64]!r} contains a line break, which line protocol cannot carry"
        )
    if s[-1] == "\\":
        raise ValueError(
            f"{what} {s[:64]!r} ends with a backslash, which line protocol cannot carry"
        )


def _check_no_escaped_specials(s: str, what: str, specials: str) -> None:
    if "\\" in s:
        for ch in specials:
            if "\\" + ch in s:
                raise ValueError(
                    f"{what} {s[:64]!r} has a backslash before {ch!r}, "
                    "which InfluxDB 1.x cannot store there"
                )


def escape_measurement(s: str) -> str:
    """Escape a measurement name (``,`` and space); ``ValueError`` if it cannot be represented."""
    cached = _measurements.get(s)
    if cached is not None:
        return cached
    _check_name(s, "measurement")
    if s[0] in "#\t\0":
        raise ValueError(f"measurement {s[:64]!r} starts with {s[0]!r}, which InfluxDB drops")
    _check_no_escaped_specials(s, "measurement", ',= "')
    return _remember(_measurements, s, s.translate(_MEASUREMENT_ESCAPES))


def escape_tag(s: str) -> str:
    """Escape a tag key, tag value or field key (``,`` ``=`` space).

    Refuses what no position can carry (empty, line breaks, trailing backslash); the extra rules
    for field keys and the ``time`` key are applied by :func:`encode_line`.
    """
    cached = _tag_values.get(s)
    if cached is not None:
        return cached
    _check_name(s, "tag")
    return _remember(_tag_values, s, s.translate(_KEY_ESCAPES))


def escape_string_field(s: str) -> str:
    """Escape the inside of a double-quoted string field value (backslash and double quote)."""
    if "\\" in s or '"' in s:
        return s.translate(_STRING_ESCAPES)
    return s


def _escape_tag_key(s: str) -> str:
    _check_name(s, "tag key")
    if s == "time":
        raise ValueError("'time' cannot be a tag key")
    return _remember(_tag_keys, s, s.translate(_KEY_ESCAPES))


def _escape_field_key(s: str) -> str:
    _check_name(s, "field key")
    if s == "time":
        raise ValueError("'time' cannot be a field key")
    if s[0] in "\t\0":
        raise ValueError(f"field key {s[:64]!r} starts with {s[0]!r}, which InfluxDB strips")
    _check_no_escaped_specials(s, "field key", ',= "')
    return _remember(_field_keys, s, s.translate(_KEY_ESCAPES))


def _encode_other(key: str, value: object) -> str:
    """Slow path for subclasses (numpy.float64, IntEnum, str subclasses) and wrong types."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _encode_int(key, int(value))
    if isinstance(value, float):
        return _encode_float(key, float(value))
    if isinstance(value, str):
        return '"' + escape_string_field(str(value)) + '"'
    raise TypeError(f"field {key!r}: unsupported value type {type(value).__name__}")


def _encode_int(key: str, value: int) -> str:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"field {key!r}: {value} does not fit a 64-bit integer")
    return f"{value}i"


def _encode_float(key: str, value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"field {key!r}: {value!r} cannot be stored (NaN/inf)")
    return repr(value)


def _series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """Escaped ``measurement,k=v,...`` (sorted tags, empty values omitted): the slow path."""
    parts = [escape_measurement(measurement)]
    for key, value in sorted(tags.items()):
        if not value:
            continue  # empty (or None) tag values are omitted, as InfluxDB requires
        ek = _tag_keys.get(key)
        if ek is None:
            ek = _escape_tag_key(key)
        ev = _tag_values.get(value)
        if ev is None:
            ev = escape_tag(value)
        parts.append(f",{ek}={ev}")
    return "".join(parts)


def encode_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    time: int | None,
) -> str:
    """One line of line protocol (no trailing newline); ``time`` is in the write's precision."""
    # Memo of the whole escaped series key: a device writes the same measurement and tags on
    # every reading, so this skips the sort and per-tag work (about 15% of the cost per line).
    memo_key = (measurement, *tags.items())
    try:
        prefix = _series.get(memo_key)
    except TypeError:  # an unhashable tag value: let the slow path explain
        prefix = None
        memo_key = None
    if prefix is None:
        prefix = _series_key(measurement, tags)
        if memo_key is not None:
            _remember(_series, memo_key, prefix)  # type: ignore[arg-type]
    parts = [prefix]
    field_keys = _field_keys
    isfinite = math.isfinite
    sep = " "
    for key, value in fields.items():
        ek = field_keys.get(key)
        if ek is None:
            ek = _escape_field_key(key)
        t = type(value)
        if t is float:
            if not isfinite(value):  # type: ignore[arg-type]
                raise ValueError(f"field {key!r}: {value!r} cannot be stored (NaN/inf)")
            parts.append(f"{sep}{ek}={value!r}")
        elif t is int:
            if not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
                raise ValueError(f"field {key!r}: {value} does not fit a 64-bit integer")
            parts.append(f"{sep}{ek}={value}i")
        elif t is str:
            if "\\" in value or '"' in value:  # type: ignore[operator]
                value = value.translate(_STRING_ESCAPES)  # type: ignore[union-attr]
            parts.append(f'{sep}{ek}="{value}"')
        elif t is bool:
            parts.append(f"{sep}{ek}={'true' if value else 'false'}")
        else:
            parts.append(f"{sep}{ek}={_encode_other(key, value)}")
        sep = ","
    if sep == " ":
        raise ValueError(f"measurement {measurement!r}: a point needs at least one field")
    if time is not None:
        if type(time) is not int:
            if isinstance(time, bool) or not isinstance(time, int):
                raise TypeError(f"time must be an int, got {type(time).__name__}")
            time = int(time)
        parts.append(f" {time}")
    return "".join(parts)
