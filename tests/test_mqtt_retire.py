"""A process that stops ingesting MQTT ends its old shared-subscription session without loss.

Worker 0 of ``serve --workers N`` ingested its share of telemetry before it became the alert
process (``mqtt.ingest: false``). Its persistent session stays on the broker as a member of the
shared subscription, and Mosquitto keeps routing a share of the telemetry to it while offline.
The retiring collector ingests what was queued there, then ends the session, so the ingesting
workers get everything from then on. Real Mosquitto and InfluxDB, nothing mocked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from protocols.directory import DeviceInfo, StaticDirectory
from protocols.mqtt_telemetry import telemetry_topic
from tests.conftest import InfluxServer
from tests.helpers import Publisher, platform_settings, register, wait_for
from weijian.config import Settings
from weijian.platform import Platform
from weijian.stack.mosquitto import LocalMosquitto

PREFIX = "weijian/v1"


def _settings(
    tmp_path: Path, name: str, influx: InfluxServer, db: str, broker: LocalMosquitto, **mqtt: object
) -> Settings:
    data = platform_settings(tmp_path / name, influx, broker, db).model_dump(mode="python")
    data["influx"]["password"] = influx.creds.password
    data["mqtt"] = {**data["mqtt"], **mqtt}
    data["mqtt"]["password"] = broker.ensure_account(LocalMosquitto.COLLECTOR_USER).password
    return Settings.model_validate(data)


async def _eventually(condition, within_s: float, message: str) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(wait_for, condition, within_s, message)


async def test_a_worker_that_stops_ingesting_drains_and_ends_its_old_session(
    tmp_path: Path, influx: InfluxServer, influx_db: str, mosquitto: LocalMosquitto
) -> None:
    tenant = f"t{uuid.uuid4().hex[:6]}"
    group = f"g{uuid.uuid4().hex[:6]}"
    ids = {"w0": f"c-{group}-w0", "w1": f"c-{group}-w1"}
    directory = StaticDirectory()
    dev = DeviceInfo("air-retire-1", tenant, "s1", "air_monitor")
    passwords = register(mosquitto, directory, dev)
    topic = telemetry_topic(PREFIX, dev.tenant, dev.site, dev.device)
    now = time.time()

    def reading(i: int) -> dict:
        return {"ts": now - 120 + i * 0.01, "fields": {"co2_ppm": 500 + i}}

    old = _settings(
        tmp_path, "w0-old", influx, influx_db, mosquitto, client_id=ids["w0"], share_group=group
    )
    # 1. worker 0 as it was: an ingesting member of the group; then it stops (session kept)
    async with Platform(old, directory) as w0:
        assert w0.mqtt is not None
        await asyncio.wait_for(w0.mqtt.connected.wait(), 10)
    pub = Publisher(mosquitto.port, dev.device, passwords[dev.device])
    try:
        # 2. while nobody is connected, the broker queues these for the old session
        for i in range(30):
            pub.publish(topic, reading(i), key=i)
        await _eventually(lambda: len(pub.acked) == 30, 10, "not all acknowledged")
        new0 = _settings(
            tmp_path,
            "w0-new",
            influx,
            influx_db,
            mosquitto,
            client_id=ids["w0"],
            share_group=group,
            ingest=False,
        )
        new1 = _settings(
            tmp_path,
            "w1",
            influx,
            influx_db,
            mosquitto,
            client_id=ids["w1"],
            share_group=group,
            ingest=True,
        )
        async with Platform(new0, directory) as w0, Platform(new1, directory) as w1:
            assert w0.mqtt is None
            retiring = w0.retiring
            assert retiring is not None
            await asyncio.wait_for(retiring.retired.wait(), 20)
            assert retiring.drained == 30, "what the old session held is ingested"
            # 3. from now on the ingesting worker gets every message
            for i in range(30, 60):
                pub.publish(topic, reading(i), key=i)
            await _eventually(lambda: len(pub.acked) == 60, 10, "not all acknowledged")
            await _eventually(
                lambda: w1.metrics.ingest.accepted["mqtt"] == 30, 10, "worker 1 missed some"
            )
            await _eventually(
                lambda: influx.count(influx_db, "air_monitor", "co2_ppm") == 60,
                20,
                "not all 60 stored",
            )
            assert w0.metrics.ingest.accepted["mqtt"] == 30
            assert w0.retiring is None, "ended and closed"
    finally:
        pub.close()
