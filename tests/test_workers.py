"""Several platform processes share the MQTT load: each message is stored once, by one of them."""

from __future__ import annotations

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
from tests.helpers import Publisher, metric, register, serve_env, wait_for
from weijian.config import Settings
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port
from weijian.workers import DEFAULT_SHARE_GROUP, worker_settings

pytestmark = pytest.mark.slow


def test_each_worker_gets_its_own_identity_and_files_but_the_same_devices(tmp_path: Path) -> None:
    base = Settings(
        data_dir=tmp_path, mqtt={"password": "pw", "client_id": "c"}, metrics={"port": 9500}
    )
    w0, w1 = worker_settings(base, 0), worker_settings(base, 1)
    assert {w0.mqtt.client_id, w1.mqtt.client_id} == {"c-w0", "c-w1"}
    assert w0.mqtt.share_group == w1.mqtt.share_group == DEFAULT_SHARE_GROUP
    assert w0.spool_dir != w1.spool_dir
    assert w0.data_dir != w1.data_dir  # dead letters apart too
    assert w0.registry_url == w1.registry_url == base.registry_url, "one registry for all"
    assert (w0.gateway.enabled, w1.gateway.enabled) == (True, False), "one gateway"
    assert w0.gateway.jwt_secret == w1.gateway.jwt_secret
    fixed = worker_settings(base.model_copy(update={"devices_file": tmp_path / "d.yaml"}), 1)
    assert fixed.devices_file == tmp_path / "d.yaml", "a fixed device list is shared too"
    assert (w0.metrics.port, w1.metrics.port) == (9500, 9501)
    assert w1.mqtt.password is not None
    assert w1.mqtt.password.get_secret_value() == "pw"


def _accepted(port: int) -> float:
    return metric(port, "weijian_readings_accepted_total") or 0.0


def test_two_workers_share_devices_and_store_every_reading_once(
    tmp_path: Path, influx: InfluxServer, influx_db: str, mosquitto: LocalMosquitto
) -> None:
    tenant = f"t{uuid.uuid4().hex[:6]}"
    devices = [DeviceInfo(f"air-w{i}", tenant, "s1", "air_monitor") for i in range(4)]
    directory = StaticDirectory()
    passwords = register(mosquitto, directory, *devices)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    directory.save(data_dir / "devices.yaml")
    port = free_port()
    env = serve_env(
        influx, mosquitto, data_dir, influx_db, port, WEIJIAN_INFLUX__TENANT_DATABASES="false"
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "weijian.cli", "serve", "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    pubs = []
    try:
        wait_for(
            lambda: (
                metric(port, "weijian_readings_stored_total") is not None
                and metric(port + 1, "weijian_readings_stored_total") is not None
            ),
            30,
            "workers up",
        )
        time.sleep(1.0)  # both subscribed
        base = time.time() - 300
        for i, d in enumerate(devices):
            pub = Publisher(mosquitto.port, d.device, passwords[d.device])
            pubs.append(pub)
            topic = telemetry_topic("weijian/v1", d.tenant, d.site, d.device)
            for k in range(100):
                value = i * 1000 + k
                pub.publish(topic, {"ts": base + k, "fields": {"co2_ppm": float(value)}}, key=value)
        expected = {i * 1000 + k for i in range(4) for k in range(100)}
        wait_for(lambda: influx.count(influx_db, "air_monitor", "co2_ppm") == 400, 30, "stored")
        result = influx.query('SELECT "co2_ppm" FROM "air_monitor"', influx_db)["results"][0]
        stored = [int(v[1]) for s in result["series"] for v in s["values"]]
        assert sorted(stored) == sorted(expected), "a reading is missing or stored twice"
        shares = (_accepted(port), _accepted(port + 1))
        assert sum(shares) == 400, shares  # each message went to exactly one worker
        assert min(shares) > 0, f"one worker got everything: {shares}"
    finally:
        for pub in pubs:
            pub.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]
