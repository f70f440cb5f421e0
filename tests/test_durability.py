"""Nothing acknowledged is lost: InfluxDB outages, broker restarts, SIGKILL of the platform.

Each test publishes readings with unique values, remembers which ones the broker acknowledged to
the device, and at the end compares that set with what InfluxDB holds.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from protocols.directory import DeviceInfo, StaticDirectory
from protocols.mqtt_telemetry import telemetry_topic
from tests.conftest import InfluxServer
from tests.helpers import Publisher, metric, platform_settings, register, serve_env, wait_for
from weijian.platform import Platform
from weijian.stack.influxd import LocalInfluxDB
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port

pytestmark = pytest.mark.slow


def stored_values(influx: InfluxServer, db: str) -> set[int]:
    try:
        result = influx.query('SELECT "co2_ppm" FROM "air_monitor"', db)["results"][0]
    except OSError:
        return set()
    series = result.get("series") or []
    return {int(v[1]) for s in series for v in s["values"]}


def publish_range(pub: Publisher, topic: str, start: int, stop: int, base_ts: float) -> None:
    for i in range(start, stop):
        pub.publish(topic, {"ts": base_ts + i * 0.01, "fields": {"co2_ppm": float(i)}}, key=i)


@pytest.fixture
def own_influx(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = LocalInfluxDB(tmp_path / "influx")
    creds = server.start()
    yield InfluxServer(server, creds)
    server.stop()


async def test_influxdb_outage_mid_stream_every_reading_arrives_once(
    tmp_path: Path, own_influx: InfluxServer, mosquitto: LocalMosquitto
) -> None:
    db = f"outage_{uuid.uuid4().hex[:6]}"
    directory = StaticDirectory()
    dev = DeviceInfo("air-outage", f"t{uuid.uuid4().hex[:6]}", "s1", "air_monitor")
    pw = register(mosquitto, directory, dev)
    settings = platform_settings(tmp_path, own_influx, mosquitto, db)
    topic = telemetry_topic("weijian/v1", dev.tenant, dev.site, dev.device)
    base = time.time() - 600
    async with Platform(settings, directory) as platform:
        await asyncio.wait_for(platform.mqtt.connected.wait(), 10)
        pub = Publisher(mosquitto.port, dev.device, pw[dev.device])
        publish_range(pub, topic, 0, 500, base)
        await asyncio.to_thread(
            wait_for, lambda: len(stored_values(own_influx, db)) == 500, 20, "phase 1"
        )
        own_influx.server.kill()  # abrupt: no flush, connections reset
        publish_range(pub, topic, 500, 1500, base)
        await asyncio.to_thread(
            wait_for, lambda: platform.metrics.ingest.accepted["mqtt"] == 1500, 20, "not spooled"
        )
        await asyncio.sleep(2.5)  # the writer retries against a dead server meanwhile
        assert platform.spool.stats.depth_records > 0
        retries = platform.forwarder.writer.stats.retries + platform.forwarder.prepare_retries
        assert retries > 0, "nothing retried against a dead InfluxDB"
        restarted = LocalInfluxDB(own_influx.server.root, http_port=own_influx.server.http_port)
        restarted.start()
        try:
            publish_range(pub, topic, 1500, 2000, base)
            await asyncio.to_thread(
                wait_for, lambda: len(stored_values(own_influx, db)) == 2000, 60, "after outage"
            )
            assert set(pub.acked) == set(range(2000))
            assert stored_values(own_influx, db) == set(range(2000))
            count = own_influx.count(db, "air_monitor", "co2_ppm")
            assert count == 2000, f"{count} points for 2000 readings: duplicates or loss"
            assert platform.forwarder.writer.stats.dead_lettered == 0
            pub.close()
        finally:
            await platform.aclose()
            restarted.stop()


async def test_broker_restart_collector_reconnects_and_loses_nothing(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    broker = LocalMosquitto(tmp_path / "mqtt")
    directory = StaticDirectory()
    dev = DeviceInfo("air-bounce", f"t{uuid.uuid4().hex[:6]}", "s1", "air_monitor")
    broker.start()
    pw = register(broker, directory, dev)
    settings = platform_settings(tmp_path, influx, broker, influx_db)
    topic = telemetry_topic("weijian/v1", dev.tenant, dev.site, dev.device)
    base = time.time() - 600
    try:
        async with Platform(settings, directory) as platform:
            await asyncio.wait_for(platform.mqtt.connected.wait(), 10)
            pub = Publisher(broker.port, dev.device, pw[dev.device])
            publish_range(pub, topic, 0, 300, base)
            await asyncio.to_thread(wait_for, lambda: len(pub.acked) == 300, 10, "acks")
            broker.stop()
            await asyncio.sleep(0.5)
            assert not platform.mqtt.connected.is_set()
            broker.start()  # same port, same persistence directory
            await asyncio.wait_for(platform.mqtt.connected.wait(), 30)
            await asyncio.to_thread(wait_for, pub.client.is_connected, 30, "device reconnect")
            publish_range(pub, topic, 300, 600, base)
            await asyncio.to_thread(
                wait_for, lambda: len(pub.acked) == 600, 15, "acks after restart"
            )
            await asyncio.to_thread(
                wait_for, lambda: len(stored_values(influx, influx_db)) == 600, 30, "stored"
            )
            assert platform.mqtt.connections >= 2
            pub.close()
        assert stored_values(influx, influx_db) == set(range(600))
    finally:
        broker.stop()


def _start_serve(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "weijian.cli", "serve"],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )


def test_sigkill_of_the_platform_loses_no_acknowledged_reading(
    tmp_path: Path, own_influx: InfluxServer, mosquitto: LocalMosquitto
) -> None:
    """Phase 1 runs with InfluxDB down, so acknowledged readings live only in the spool when the
    platform is SIGKILLed; after a restart they, and everything published meanwhile, must arrive."""
    db = f"kill_{uuid.uuid4().hex[:6]}"
    tenant = f"t{uuid.uuid4().hex[:6]}"
    dev = DeviceInfo("air-kill", tenant, "s1", "air_monitor")
    directory = StaticDirectory()
    pw = register(mosquitto, directory, dev)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    directory.save(data_dir / "devices.yaml")
    metrics_port = free_port()
    env = serve_env(own_influx, mosquitto, data_dir, db, metrics_port)
    own_influx.server.stop()
    topic = telemetry_topic("weijian/v1", dev.tenant, dev.site, dev.device)
    base = time.time() - 600
    proc = _start_serve(env, tmp_path / "serve1.log")
    pub = Publisher(mosquitto.port, dev.device, pw[dev.device])
    try:
        wait_for(
            lambda: metric(metrics_port, "weijian_spool_depth_records") is not None, 20, "serve up"
        )
        publish_range(pub, topic, 0, 1000, base)
        wait_for(lambda: metric(metrics_port, "weijian_spool_depth_records") == 1000, 20, "spooled")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        publish_range(pub, topic, 1000, 1500, base)  # the broker holds these for the session
        wait_for(lambda: len(pub.acked) == 1500, 10, "broker acks")
        restarted = LocalInfluxDB(own_influx.server.root, http_port=own_influx.server.http_port)
        restarted.start()
        proc = _start_serve(env, tmp_path / "serve2.log")
        publish_range(pub, topic, 1500, 2000, base)
        wait_for(lambda: len(stored_values(own_influx, db)) >= 2000, 60, "after restart")
        assert stored_values(own_influx, db) == set(range(2000))
        assert own_influx.count(db, "air_monitor", "co2_ppm") == 2000
        restarted.stop()
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "serve2.log").read_text()[-2000:]
