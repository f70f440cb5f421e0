"""Line protocol encoder: an oracle (influxdb-client's Point), the real InfluxDB, and golden cases.

What the encoder accepts must round-trip exactly through InfluxDB 1.x; what it refuses must be
exactly what line protocol cannot carry (see the module docstring of protocols.lineprotocol).
"""

from __future__ import annotations

import base64
import math
import urllib.request
import uuid

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from protocols.lineprotocol import (
    encode_line,
    escape_measurement,
    escape_string_field,
    escape_tag,
)

# ---------------------------------------------------------------------------------------------
# Strategies

# Characters that mean something to line protocol (or to InfluxDB's scanner), drawn often;
# anything else Unicode has (Chinese, emoji, accents, controls) comes from st.characters().
SPECIALS = [",", "=", " ", "\\", '"', "'", "#", "\t", "\0", "_", "中", "文", "温度", "é", "🚀"]
RARE = ["\n", "\r"]  # refused in names; rare so most examples are accepted


def names(*, tabs: bool = True) -> st.SearchStrategy[str]:
    specials = [c for c in SPECIALS if tabs or c != "\t"]
    # Weighted by repetition: specials and plain letters often, line breaks rarely.
    common = st.sampled_from(specials * 4 + list("abkxyz") * 4 + RARE)
    other = st.characters(codec="utf-8", exclude_characters="" if tabs else "\t")
    return st.lists(st.one_of(common, common, other), min_size=1, max_size=8).map("".join)


def string_values() -> st.SearchStrategy[str]:
    chars = st.one_of(
        st.sampled_from(['"', "\\", "\n", "\r\n", " ", ",", "=", "中文", "\t"]),
        st.characters(codec="utf-8"),  # no lone surrogates: they are not text
    )
    return st.lists(chars, max_size=12).map("".join)


def _off_integer(f: float) -> float:
    """A float whose repr does not end in ".0" (|f| >= 1e16 already prints with an exponent)."""
    if not repr(f).endswith(".0"):
        return f
    return f + 0.5 if abs(f) < 2**50 else f * 1e10


def field_values(*, dotzero: bool = True) -> st.SearchStrategy[object]:
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if not dotzero:  # move integral floats off the integers instead of filtering (too many)
        floats = floats.map(_off_integer)
    return st.one_of(
        floats,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.booleans(),
        string_values(),
    )


def points(*, tabs: bool = True, dotzero: bool = True) -> st.SearchStrategy[tuple]:
    return st.tuples(
        names(tabs=tabs),
        st.dictionaries(names(tabs=tabs), st.one_of(names(tabs=tabs), st.just("")), max_size=4),
        st.dictionaries(names(tabs=tabs), field_values(dotzero=dotzero), min_size=1, max_size=5),
        st.integers(min_value=0, max_value=2**41),  # milliseconds, up to year 2039
    )


def must_refuse(measurement: str, tags: dict[str, str], fields: dict[str, object]) -> bool:
    """An independent statement of what line protocol (as InfluxDB 1.x parses it) cannot carry."""

    def bad_name(s: str) -> bool:
        return not s or "\n" in s or "\r" in s or s.endswith("\\")

    if bad_name(measurement) or measurement[0] in "#\t\0":
        return True
    escaped_specials = ("\\,", "\\=", "\\ ", '\\"')  # 1.x unescapes these in both positions
    if any(seq in measurement for seq in escaped_specials):
        return True
    for key, value in tags.items():
        if value and (bad_name(key) or bad_name(value) or key == "time"):
            return True
    for key in fields:
        if bad_name(key) or key == "time" or key[0] in "\t\0":
            return True
        if any(seq in key for seq in escaped_specials):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# (a) influxdb-client's Point as an oracle


@settings(max_examples=600, deadline=None)
@given(points(tabs=False, dotzero=False))
def test_matches_influxdb_client_point(point: tuple) -> None:
    """Same bytes as Point for everything both accept.

    Documented differences, normalised here and nowhere else:
    * Point sorts fields by key; we keep the caller's order -> we are given sorted fields.
    * Point trims ".0" from integral floats ("1.0" -> "1"); we keep it (platform rule: a float
      must look like one) -> the oracle only sees floats whose repr does not end in ".0"
      (the golden table and the server round trip cover those).
    * Point escapes a tab in names as the two characters "\\t", which InfluxDB 1.x stores
      literally (a different name); we write the tab raw, which round-trips -> no tabs here;
      the round-trip test below covers them.
    * Point writes "a\\ " for a tag value ending in a backslash (the server then stores "a ");
      Point escapes line breaks in names as "\\n"; we refuse both (must_refuse).
    """
    measurement, tags, fields, time = point
    if must_refuse(measurement, tags, fields):
        event("refused")
        with pytest.raises(ValueError):  # noqa: PT011 - any refusal message is fine
            encode_line(measurement, tags, fields, time)
        return
    event("compared with Point")
    ours = encode_line(measurement, tags, dict(sorted(fields.items())), time)
    p = Point(measurement).time(time, write_precision="ms")
    for key, value in tags.items():
        p.tag(key, value)
    for key, value in fields.items():
        p.field(key, value)
    assert ours == p.to_line_protocol()


@settings(max_examples=300, deadline=None)
@given(points())
def test_refuses_exactly_what_line_protocol_cannot_carry(point: tuple) -> None:
    measurement, tags, fields, time = point
    if must_refuse(measurement, tags, fields):
        with pytest.raises(ValueError):  # noqa: PT011
            encode_line(measurement, tags, fields, time)
    else:
        line = encode_line(measurement, tags, fields, time)
        assert line.endswith(f" {time}")


# ---------------------------------------------------------------------------------------------
# (b) Round trip through the real InfluxDB 1.x


def _read_back(influx, db: str) -> list[tuple[str, dict[str, str], dict[str, object], int]]:
    """Every stored point as (measurement, tags, fields, time).

    ``FROM /.*/`` rather than a quoted name: InfluxQL cannot quote every name line protocol can
    store (a NUL byte, for one), and each database here holds one measurement.
    """
    out = []
    result = influx.query("SELECT * FROM /.*/ GROUP BY *", db)["results"][0]
    assert "error" not in result, result
    for series in result.get("series", []):
        tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
        for row in series["values"]:
            values = dict(zip(series["columns"], row, strict=True))
            time = values.pop("time")
            fields = {k: v for k, v in values.items() if v is not None}
            out.append((series["name"], tags, fields, time))
    return out


def _field_types(influx, db: str) -> dict[str, str]:
    result = influx.query("SHOW FIELD KEYS", db)["results"][0]
    return {k: t for series in result.get("series", []) for k, t in series["values"]}


INFLUX_TYPE = {float: "float", int: "integer", bool: "boolean", str: "string"}


def _write(influx, db: str, body: str) -> None:
    token = base64.b64encode(f"{influx.creds.username}:{influx.creds.password}".encode()).decode()
    req = urllib.request.Request(
        f"{influx.url}/write?db={db}&precision=ms",
        data=body.encode(),
        headers={"Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(point=points())
def test_round_trip_through_real_influxdb(influx, influx_db: str, point: tuple) -> None:
    """Write with /write?precision=ms, read back with /query: identical names, values, types.

    Each example gets its own database (creating one takes ~5 ms) so field types of one example
    cannot conflict with another's; ``influx_db`` only provides the unique base name.
    """
    measurement, tags, fields, time = point
    assume(not must_refuse(measurement, tags, fields))
    # A tag and a field with the same key come back as "k" and "k_1": InfluxQL naming, not
    # encoding; keep them apart.
    assume(not ({k for k, v in tags.items() if v} & set(fields)))
    line = encode_line(measurement, tags, fields, time)
    db = f"{influx_db}_{uuid.uuid4().hex[:6]}"
    influx.query(f'CREATE DATABASE "{db}"')
    try:
        _write(influx, db, line)
        stored = _read_back(influx, db)
        types = _field_types(influx, db)
    finally:
        influx.query(f'DROP DATABASE "{db}"')
    expected_tags = {k: v for k, v in tags.items() if v}
    # JSON from InfluxDB prints an integral float without exponent or ".0" (3.9e+16 comes back
    # as 39000000000000000): the field type says it is a float, so compare it as one.
    stored = [
        (m, t, {k: float(v) if types.get(k) == "float" else v for k, v in f.items()}, ts)
        for m, t, f, ts in stored
    ]
    assert stored == [(measurement, expected_tags, fields, time)], line
    assert types == {k: INFLUX_TYPE[type(v)] for k, v in fields.items()}, line


def test_newlines_inside_string_fields_survive_a_multi_line_body(influx, influx_db: str) -> None:
    lines = [
        encode_line("note", {"dev": "a"}, {"text": "first\nsecond"}, 1000),
        encode_line("note", {"dev": "b"}, {"text": "windows\r\nline"}, 1000),
        encode_line("note", {"dev": "c"}, {"text": 'quote " and \\ and\n'}, 1000),
    ]
    _write(influx, influx_db, "\n".join(lines))
    stored = sorted(_read_back(influx, influx_db), key=lambda p: p[1]["dev"])
    assert [p[2]["text"] for p in stored] == [
        "first\nsecond",
        "windows\r\nline",
        'quote " and \\ and\n',
    ]


def test_point_trailing_backslash_changes_the_stored_tag(influx, influx_db: str) -> None:
    """Why we refuse a trailing backslash instead of copying Point: the server keeps "a "."""
    line = Point("m").tag("t", "a\\").field("f", 1.0).time(1000, write_precision="ms")
    _write(influx, influx_db, line.to_line_protocol())
    assert _read_back(influx, influx_db)[0][1] == {"t": "a "}
    with pytest.raises(ValueError, match="backslash"):
        encode_line("m", {"t": "a\\"}, {"f": 1.0}, 1000)


def test_chinese_round_trip(influx, influx_db: str) -> None:
    line = encode_line(
        "空气质量",
        {"站点": "北京 朝阳,一号", "设备": "甲=乙"},
        {"温度": 21.5, "备注": "正常，无异常"},
        1000,
    )
    _write(influx, influx_db, line)
    assert _read_back(influx, influx_db) == [
        (
            "空气质量",
            {"站点": "北京 朝阳,一号", "设备": "甲=乙"},
            {"温度": 21.5, "备注": "正常，无异常"},
            1000,
        )
    ]


# ---------------------------------------------------------------------------------------------
# (c) Golden cases from the InfluxDB 1.x line protocol reference (and a few of ours)

GOLDEN = [
    # reference: "Write a point with special characters"
    (
        (
            '"measurement with quo⚡️es and emoji"',
            {"tag key with sp🚀ces": 'tag,value,with"commas"'},
            {"field_k\\ey": 'string field value, only " need be esc🍭ped'},
            None,
        ),
        '"measurement\\ with\\ quo⚡️es\\ and\\ emoji"'
        ',tag\\ key\\ with\\ sp🚀ces=tag\\,value\\,with"commas"'
        ' field_k\\ey="string field value, only \\" need be esc🍭ped"',
    ),
    (
        ("weather", {"location": "us-midwest"}, {"temperature": 82.0}, 1465839830100400200),
        "weather,location=us-midwest temperature=82.0 1465839830100400200",
    ),
    (("mymeas", {}, {"value": -1.234456e78}, None), "mymeas value=-1.234456e+78"),
    (("mymeas", {}, {"value": 1}, None), "mymeas value=1i"),
    (("mymeas", {}, {"value": "stringing along"}, None), 'mymeas value="stringing along"'),
    (("mymeas", {}, {"value": True}, None), "mymeas value=true"),
    (("mymeas", {}, {"value": False}, None), "mymeas value=false"),
    (
        ("cpu", {"region": "us west", "host": "server,01", "empty": ""}, {"value": 0.64}, 1),
        "cpu,host=server\\,01,region=us\\ west value=0.64 1",
    ),
    (("m", {"k=1": "v=2"}, {"f=3": 1.5, "g h": 2.0}, 7), "m,k\\=1=v\\=2 f\\=3=1.5,g\\ h=2.0 7"),
    (("m,1 2", {}, {"f": 1e-7}, 0), "m\\,1\\ 2 f=1e-07 0"),
    (("m", {}, {"f": 1e16, "g": -0.0, "h": 5e-324}, None), "m f=1e+16,g=-0.0,h=5e-324"),
    (
        ("m", {}, {"a": 2**63 - 1, "b": -(2**63)}, None),
        "m a=9223372036854775807i,b=-9223372036854775808i",
    ),
    (("m", {}, {"s": 'C:\\temp\\"x"'}, None), 'm s="C:\\\\temp\\\\\\"x\\""'),
    (("m", {}, {"s": "line1\nline2"}, None), 'm s="line1\nline2"'),
    (("m", {}, {"s": ""}, None), 'm s=""'),
    (("m", {"t": "a\\,b"}, {"f": 1.0}, None), "m,t=a\\\\,b f=1.0"),
    (("m", {"t": "a\\b"}, {"k\\x": 1.0}, None), "m,t=a\\b k\\x=1.0"),
    (("m", {"t": "a\tb"}, {"f": 1.0}, None), "m,t=a\tb f=1.0"),
    (
        ("m", {"b": "2", "a": "1", "B": "3"}, {"z": 1.0, "y": 2.0}, None),
        "m,B=3,a=1,b=2 z=1.0,y=2.0",
    ),
    (
        ("空气", {"站点": "北京"}, {"温度": 21.5, "备注": "正常"}, 1000),
        '空气,站点=北京 温度=21.5,备注="正常" 1000',
    ),
]


@pytest.mark.parametrize(("args", "expected"), GOLDEN)
def test_golden(args: tuple, expected: str) -> None:
    assert encode_line(*args) == expected


REFUSED = [
    (("", {}, {"f": 1.0}), "empty"),
    (("m\nx", {}, {"f": 1.0}), "line break"),
    (("m", {"t": "a\nb"}, {"f": 1.0}), "line break"),
    (("m", {"t\r": "v"}, {"f": 1.0}), "line break"),
    (("m", {}, {"f\n": 1.0}), "line break"),
    (("m\\", {}, {"f": 1.0}), "backslash"),
    (("m", {"t\\": "v"}, {"f": 1.0}), "backslash"),
    (("m", {}, {"f\\": 1.0}), "backslash"),
    (("#m", {}, {"f": 1.0}), "starts with"),
    (("\tm", {}, {"f": 1.0}), "starts with"),
    (("m", {}, {"\tf": 1.0}), "starts with"),
    (("m\\,x", {}, {"f": 1.0}), "backslash before"),
    (("m", {}, {"k\\=x": 1.0}), "backslash before"),
    (("m\\=x", {}, {"f": 1.0}), "backslash before"),  # 1.x would store "m=x"
    (("m", {}, {'k\\"x': 1.0}), "backslash before"),  # 1.x would store 'k"x'
    (("m", {}, {"f": math.nan}), "NaN/inf"),
    (("m", {}, {"f": math.inf}), "NaN/inf"),
    (("m", {}, {"f": -math.inf}), "NaN/inf"),
    (("m", {}, {}), "at least one field"),
    (("m", {}, {"f": 2**63}), "64-bit"),
    (("m", {}, {"f": -(2**63) - 1}), "64-bit"),
    (("m", {}, {"time": 1.0}), "'time'"),
    (("m", {"time": "x"}, {"f": 1.0}), "'time'"),
]


@pytest.mark.parametrize(("args", "message"), REFUSED)
def test_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_line(*args, 1000)


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        encode_line("m", {}, {"f": None}, 1)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        encode_line("m", {}, {"f": 1.0}, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_line("m", {}, {"f": 1.0}, True)
    with pytest.raises(TypeError):
        encode_line("m", {"t": 3}, {"f": 1.0}, 1)  # type: ignore[dict-item]


def test_subclasses_are_encoded_as_their_base_type() -> None:
    from enum import IntEnum

    class Level(IntEnum):
        HIGH = 3

    class Celsius(float):
        def __repr__(self) -> str:
            return "Celsius(...)"

    assert encode_line("m", {}, {"l": Level.HIGH, "c": Celsius(1.5)}, None) == "m l=3i,c=1.5"


def test_escape_helpers() -> None:
    assert escape_measurement("a b,c=d") == "a\\ b\\,c=d"
    assert escape_tag("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_string_field('say "hi" \\o/') == 'say \\"hi\\" \\\\o/'
    assert escape_string_field("plain") == "plain"
    with pytest.raises(ValueError, match="line break"):
        escape_tag("a\nb")
