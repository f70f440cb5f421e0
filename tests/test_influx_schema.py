"""Storage layout on the real InfluxDB 1.6.7: retention policies, continuous queries, rollups."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.influx.client import InfluxClient, RetryableError
from protocols.influx.schema import (
    ROLLUP_EXCLUDED,
    duration_seconds,
    ensure_databases,
    ensure_schema,
    measurements_except,
    rollup_query,
    version_kind,
)
from protocols.lineprotocol import encode_line
from weijian.stack.process import free_port

HOUR_MS = 3_600_000


@pytest.fixture
async def client(influx) -> AsyncIterator[InfluxClient]:
    async with InfluxClient(
        influx.url, username=influx.creds.username, password=influx.creds.password
    ) as c:
        yield c


def retention_policies(influx, db: str) -> dict[str, tuple[str, bool]]:
    series = influx.query(f'SHOW RETENTION POLICIES ON "{db}"')["results"][0]["series"][0]
    return {row[0]: (row[1], row[4]) for row in series["values"]}


def continuous_queries(influx, db: str) -> dict[str, str]:
    for series in influx.query("SHOW CONTINUOUS QUERIES")["results"][0].get("series", []):
        if series["name"] == db:
            return dict(series.get("values") or [])
    return {}


@pytest.mark.parametrize(
    ("version", "kind"),
    [
        ("1.6.7~rc0", "1.x"),
        ("1.8.10", "1.x"),
        ("v2.7.4", "2.x"),
        ("2.0.0-beta.1", "2.x"),
        ("3.0.1", "3.x"),
        ("v3.2.0-nightly", "3.x"),
    ],
)
def test_version_kind(version: str, kind: str) -> None:
    assert version_kind(version) == kind


@pytest.mark.parametrize("version", ["", "unknown", "OSS", "4.0.0", "1"])
def test_version_kind_refuses_the_unknown(version: str) -> None:
    with pytest.raises(ValueError, match="unrecognised"):
        version_kind(version)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("180d", 180 * 86400),
        ("4320h0m0s", 180 * 86400),
        ("INF", 0),
        ("0s", 0),
        ("1h30m0s", 5400),
        ("2w", 14 * 86400),
        ("90m", 5400),
        ("500ms", 0.5),
    ],
)
def test_duration_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


async def test_layout_is_created_and_idempotent(influx, influx_db: str, client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="protocols.influx.schema")
    await ensure_schema(client, influx_db)
    first_cqs = continuous_queries(influx, influx_db)
    caplog.clear()
    await ensure_schema(client, influx_db)  # second run: nothing to do
    assert caplog.records == []
    assert retention_policies(influx, influx_db) == {
        "autogen": ("0s", False),
        "raw": ("4320h0m0s", True),
        "rollup_5m": ("17520h0m0s", False),
        "rollup_1h": ("43800h0m0s", False),
    }
    cqs = continuous_queries(influx, influx_db)
    assert cqs == first_cqs
    assert set(cqs) == {"cq_5m", "cq_1h"}
    assert "RESAMPLE EVERY 5m FOR 15m" in cqs["cq_5m"]
    source = f"FROM {influx_db}.raw./{measurements_except(ROLLUP_EXCLUDED)}/"
    assert f"INTO {influx_db}.rollup_5m.:MEASUREMENT {source}" in cqs["cq_5m"]
    assert "GROUP BY time(5m), *" in cqs["cq_5m"]
    assert "RESAMPLE EVERY 1h FOR 2h" in cqs["cq_1h"]
    assert f"INTO {influx_db}.rollup_1h.:MEASUREMENT {source}" in cqs["cq_1h"]


async def test_changed_settings_take_effect(influx, influx_db: str, client) -> None:
    await ensure_schema(client, influx_db)
    await ensure_schema(client, influx_db, raw_retention="90d", rollup_1h_retention="INF")
    rps = retention_policies(influx, influx_db)
    assert rps["raw"] == ("2160h0m0s", True)
    assert rps["rollup_1h"] == ("0s", False)
    # Someone made another policy the default and edited a CQ by hand: both are put back.
    influx.query(f'ALTER RETENTION POLICY "autogen" ON "{influx_db}" DEFAULT')
    influx.query(f'DROP CONTINUOUS QUERY "cq_5m" ON "{influx_db}"')
    influx.query(
        f'CREATE CONTINUOUS QUERY "cq_5m" ON "{influx_db}" BEGIN SELECT mean(*) INTO '
        f'"{influx_db}"."rollup_5m".:MEASUREMENT FROM "{influx_db}"."raw"./.*/ '
        "GROUP BY time(10m), * END"
    )
    await ensure_schema(client, influx_db, raw_retention="90d", rollup_1h_retention="INF")
    assert retention_policies(influx, influx_db)["raw"] == ("2160h0m0s", True)
    assert "RESAMPLE EVERY 5m FOR 15m" in continuous_queries(influx, influx_db)["cq_5m"]
    # A short retention needs a shorter shard duration; ALTER sets it too.
    await ensure_schema(client, influx_db, raw_retention="1d")
    assert retention_policies(influx, influx_db)["raw"] == ("24h0m0s", True)


async def test_rollups_compute_mean_min_max(influx, influx_db: str, client) -> None:
    """Raw points 2 h in the past, 1-minute spacing; run the CQs' SELECT ... INTO by hand."""
    await ensure_schema(client, influx_db)
    start = (int(time.time() * 1000) - 2 * HOUR_MS) // HOUR_MS * HOUR_MS  # a whole hour
    lines = []
    for i in range(60):
        t = start + i * 60_000
        for device, offset in (("d1", 0.0), ("d2", 1000.0)):
            fields = {
                "co2_ppm": 400.0 + i + offset,
                "rssi_dbm": -60 - i,
                "beam_on": i % 2 == 1,
                "cycle_phase": f"phase {i}",
                "co2_ppm_flag": "N",
            }
            lines.append(encode_line("air_monitor", {"device": device, "site": "s1"}, fields, t))
        event = {"message": f"告警 {i}", "value": 1000.0 + i}
        lines.append(encode_line("alert_event", {"device": "d1"}, event, t))
        lines.append(encode_line("device_status", {"device": "d1"}, {"rejections": i}, t))
        lines.append(encode_line("alert_eventx", {"device": "d1"}, {"value": 1.0 * i}, t))
        lines.append(encode_line("only_text", {"device": "d1"}, {"note": "x"}, t))
    await client.write(influx_db, "\n".join(lines).encode())  # default RP: raw
    raw_count = influx.query('SELECT count("co2_ppm") FROM "raw"."air_monitor"', influx_db)
    assert raw_count["results"][0]["series"][0]["values"][0][1] == 120

    where = f"time >= {start}ms AND time < {start + HOUR_MS}ms"
    await client.execute(rollup_query(influx_db, "rollup_5m", "5m", where=where))
    await client.execute(rollup_query(influx_db, "rollup_1h", "1h", where=where))

    shown = influx.query(f'SHOW FIELD KEYS FROM "{influx_db}"."rollup_5m"./.*/', influx_db)
    series = shown["results"][0]["series"]
    # The events are excluded, a near-miss name is not, a strings-only measurement yields nothing.
    assert [s["name"] for s in series] == ["air_monitor", "alert_eventx"]
    assert dict(series[0]["values"]) == {
        "mean_co2_ppm": "float",
        "min_co2_ppm": "float",
        "max_co2_ppm": "float",
        "mean_rssi_dbm": "float",
        "min_rssi_dbm": "integer",
        "max_rssi_dbm": "integer",
        "min_beam_on": "boolean",
        "max_beam_on": "boolean",
    }
    result = influx.query(
        'SELECT * FROM "rollup_5m"."air_monitor" WHERE "device" = \'d1\'', influx_db
    )
    s = result["results"][0]["series"][0]
    rows = [dict(zip(s["columns"], row, strict=True)) for row in s["values"]]
    assert len(rows) == 12
    assert rows[0]["time"] == start
    assert rows[0]["site"] == "s1"  # tags kept
    assert (rows[0]["mean_co2_ppm"], rows[0]["min_co2_ppm"], rows[0]["max_co2_ppm"]) == (
        402,
        400,
        404,
    )
    assert (rows[11]["mean_co2_ppm"], rows[11]["min_rssi_dbm"], rows[11]["max_rssi_dbm"]) == (
        457,
        -119,
        -115,
    )
    assert (rows[0]["min_beam_on"], rows[0]["max_beam_on"]) == (False, True)

    hourly = influx.query('SELECT * FROM "rollup_1h"."air_monitor" GROUP BY "device"', influx_db)
    by_device = {
        h["tags"]["device"]: dict(zip(h["columns"], h["values"][0], strict=True))
        for h in hourly["results"][0]["series"]
    }
    assert by_device["d1"]["mean_co2_ppm"] == 429.5
    assert by_device["d2"]["mean_co2_ppm"] == 1429.5
    assert (by_device["d1"]["min_co2_ppm"], by_device["d1"]["max_co2_ppm"]) == (400, 459)
    assert by_device["d1"]["mean_rssi_dbm"] == -89.5


@given(
    st.lists(
        st.text(alphabet="adelrtuvcis_nxA\n", min_size=1, max_size=15)
        | st.sampled_from(["alert_event", "device_status", "alert_even", "alert_events"]),
        max_size=5,
    ),
    st.text(alphabet="adelrtuvcis_nxA\n", min_size=1, max_size=15)
    | st.sampled_from(["alert_event", "device_status", "alert_even", "device_statuses"]),
)
def test_measurements_except_is_an_exact_complement(excluded: list[str], name: str) -> None:
    """Python's re agrees with RE2 on this subset (groups, classes, anchors, (?s))."""
    regex = measurements_except(excluded or ROLLUP_EXCLUDED)
    assert (re.fullmatch(regex, name) is not None) == (name not in (excluded or ROLLUP_EXCLUDED))


async def test_ensure_databases(influx, influx_db: str, client) -> None:
    names = [f"{influx_db}_agency", f"{influx_db}_t_a", f"{influx_db}_agency"]
    try:
        await ensure_databases(client, names, raw_retention="30d")
        for db in set(names):
            assert retention_policies(influx, db)["raw"] == ("720h0m0s", True)
            assert set(continuous_queries(influx, db)) == {"cq_5m", "cq_1h"}
    finally:
        for db in set(names):
            influx.query(f'DROP DATABASE "{db}"')


async def test_not_on_2x_or_3x_and_not_when_unreachable(caplog) -> None:
    caplog.set_level(logging.INFO, logger="protocols.influx.schema")
    async with InfluxClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as nowhere:
        # A 2.x/3.x server gets no DDL at all (this client could not send any).
        await ensure_schema(nowhere, "weijian", version="v2.7.4")
        await ensure_schema(nowhere, "weijian", version="3.0.1")
        assert "DBRP" in caplog.text
        with pytest.raises(RetryableError, match="unreachable"):
            await ensure_schema(nowhere, "weijian")
        with pytest.raises(RetryableError, match="unreachable"):
            await ensure_databases(nowhere, ["weijian"])


async def test_bad_retention_setting(client, influx_db: str) -> None:
    with pytest.raises(ValueError, match="not like"):
        await ensure_schema(client, influx_db, raw_retention="180 days; DROP DATABASE x")
