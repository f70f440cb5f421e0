"""Detector warm-up from the real InfluxDB: raw history for the short detectors, hourly rollups
for drift, whose 72-hour window a few hours of raw readings cannot restore."""

from __future__ import annotations

import math
import time

import pytest

from alerting.detectors import default_registry
from alerting.warmup import history_needed, warm_up
from protocols.influx.client import InfluxClient
from protocols.influx.schema import ensure_schema, rollup_query
from protocols.lineprotocol import encode_line
from tests.conftest import InfluxServer

KIND = "water_probe"
STEP_S = 600  # one reading every 10 minutes
HOURS = 80
DRIFT_PER_DAY = 0.35  # pH, an electrode drifting (the detector's half score is 0.3 in 72 h)


def _ph(device: str, ts: float, t0: float) -> float:
    wobble = 0.02 * math.sin(ts / 977.0)  # not flat: the stuck detector must stay quiet
    if device == "drifting":
        return 7.2 + DRIFT_PER_DAY * (ts - t0) / 86400.0 + wobble
    return 7.2 + wobble


def _drift(pipelines: list) -> object:
    return next(p for p in pipelines if p.spec.detector == "drift")


async def test_drift_is_restored_from_hourly_rollups(influx: InfluxServer, influx_db: str) -> None:
    now = time.time()
    t0 = math.floor((now - HOURS * 3600) / STEP_S) * STEP_S
    stamps = [t0 + i * STEP_S for i in range(int((now - 60 - t0) // STEP_S))]
    devices = ("drifting", "steady")
    lines = [
        encode_line(
            KIND,
            {"tenant": "t", "site": "s", "device": d},
            {"ph": _ph(d, ts, t0), "turbidity_ntu": 0.2},
            int(ts * 1000),
        )
        for d in devices
        for ts in stamps
    ]
    registry = default_registry()
    async with InfluxClient(
        influx.url, username=influx.creds.username, password=influx.creds.password
    ) as client:
        await ensure_schema(client, influx_db)
        await client.write(influx_db, "\n".join(lines).encode())
        # what the hourly continuous query would have written over those days
        cq = rollup_query(influx_db, "rollup_1h", "1h", where=f"time >= {int(t0)}s")
        await client.query(cq, db=influx_db, method="POST")

        warmed = {d: registry.pipelines(KIND) for d in devices}
        cold = {d: registry.pipelines(KIND) for d in devices}
        replayed = await warm_up(
            client, influx_db, {d: (KIND, warmed[d]) for d in devices}, 6 * 3600, max_points=500
        )
        cold_replayed = await warm_up(
            client,
            influx_db,
            {d: (KIND, [p for p in cold[d] if not history_needed(p)]) for d in devices},
            6 * 3600,
        )

    raw_in_window = sum(1 for ts in stamps if ts > now - 6 * 3600)
    assert cold_replayed == 2 * raw_in_window  # no rollups read for short detectors
    assert replayed > cold_replayed + 2 * 60  # plus ~74 hourly means per device

    # what the previous warm-up (raw readings only) gave drift
    for d in devices:
        _drift(cold[d]).warm_up(
            [(ts, {"ph": _ph(d, ts, t0)}) for ts in stamps if ts > now - 6 * 3600]
        )

    # the next hour's readings, as they would arrive live
    later = [stamps[-1] + STEP_S * (i + 1) for i in range(7)]
    scores: dict[str, float] = {}
    cold_scores: dict[str, float] = {}
    for d in devices:
        for ts in later:
            values = {"ph": _ph(d, ts, t0), "turbidity_ntu": 0.2}
            score, _ = _drift(warmed[d]).update(ts, values)
            cold_score, _ = _drift(cold[d]).update(ts, values)
        scores[d], cold_scores[d] = score, cold_score
        assert len(_drift(warmed[d]).detector._blocks) >= 0.75 * 72

    # the electrode that drifted 1.05 pH over the 72-hour window is seen at once after the
    # restart; the steady one is not; a detector warmed from raw history alone is blind
    assert scores["drifting"] > 0.9
    assert scores["steady"] == 0.0
    assert cold_scores["drifting"] == 0.0


async def test_without_rollups_the_raw_history_still_warms_up(
    influx: InfluxServer, influx_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database without the schema's retention policies (no ``rollup_1h``): the rollup read
    fails, is logged once, and every device still gets its raw history."""
    now = time.time()
    stamps = [now - 3600 + i * STEP_S for i in range(5)]
    lines = [
        encode_line(KIND, {"tenant": "t", "site": "s", "device": d}, {"ph": 7.2}, int(ts * 1000))
        for d in ("a", "b")
        for ts in stamps
    ]
    registry = default_registry()
    pipelines = {d: registry.pipelines(KIND) for d in ("a", "b")}
    async with InfluxClient(
        influx.url, username=influx.creds.username, password=influx.creds.password
    ) as client:
        await client.write(influx_db, "\n".join(lines).encode())
        with caplog.at_level("WARNING", logger="alerting.warmup"):
            replayed = await warm_up(
                client, influx_db, {d: (KIND, p) for d, p in pipelines.items()}, 6 * 3600
            )
    assert replayed == 2 * len(stamps)
    assert sum("no hourly rollups" in r.message for r in caplog.records) == 1
