"""Platform events through the spool: the agency database always, a tenant's copy when routed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from collectors.forwarder import Forwarder
from collectors.metrics import Metrics
from collectors.records import encode_event, encode_record
from collectors.spool import Spool
from protocols.catalog import default_catalog
from protocols.directory import DeviceInfo
from protocols.influx.client import InfluxClient
from protocols.influx.writer import BatchWriter, FileDeadLetter
from protocols.lineprotocol import encode_line
from protocols.reading import ReadingValidator
from tests.conftest import InfluxServer


async def test_events_reach_the_agency_database_and_only_their_tenants_copy(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    tenant_prefix = f"{influx_db}_t_"
    for tenant in ("acme", "other"):
        influx.query(f'CREATE DATABASE "{tenant_prefix}{tenant}"')
    now = int(time.time() * 1000)
    alert = encode_line("alert_event", {"device": "d1", "tenant": "acme"}, {"value": 1.0}, now)
    rejection = encode_line("ingest_rejection", {"device": "x"}, {"detail": "bad"}, now)
    reading = ReadingValidator(default_catalog()).validate(
        DeviceInfo("d2", "other", "s", "air_monitor"), {"fields": {"co2_ppm": 500}}
    )
    metrics = Metrics()
    dead = FileDeadLetter(tmp_path / "dead.jsonl")
    try:
        async with (
            Spool(tmp_path / "spool") as spool,
            InfluxClient(
                influx.url, username=influx.creds.username, password=influx.creds.password
            ) as client,
        ):
            await spool.append(
                [encode_event(alert, "acme"), encode_event(rejection), encode_record(reading)]
            )
            forwarder = Forwarder(
                spool,
                BatchWriter(client, dead_letter=dead),
                metrics,
                database=influx_db,
                tenant_prefix=tenant_prefix,
                flush_interval_s=0.05,
            )
            task = asyncio.create_task(forwarder.run())
            assert await forwarder.drained(10)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        dead.close()
    assert influx.count(influx_db, "alert_event", "value") == 1
    assert influx.count(influx_db, "ingest_rejection", "detail") == 1
    assert influx.count(f"{tenant_prefix}acme", "alert_event", "value") == 1
    assert influx.count(f"{tenant_prefix}other", "alert_event", "value") == 0
    assert influx.count(f"{tenant_prefix}acme", "ingest_rejection", "detail") == 0
    assert influx.count(f"{tenant_prefix}other", "air_monitor", "co2_ppm") == 1
    assert (metrics.ingest.stored, metrics.ingest.stored_events) == (1, 2)
    for tenant in ("acme", "other"):
        influx.query(f'DROP DATABASE "{tenant_prefix}{tenant}"')
