"""Alerting when the platform runs as several workers sharing one MQTT subscription.

The broker hands each MQTT message to one worker; the alert engine still needs every reading.
Worker 0 runs it, fed all MQTT telemetry by a tap (collectors/mqtt/tap.py: its own unshared
subscription) and the readings it ingests itself over other protocols (here HTTP) by its
ingestor; the MQTT readings its own share brings skip the engine. Nothing is mocked: a real
Mosquitto and InfluxDB, two platforms in one process with the settings ``serve --workers 2``
gives its workers (``worker_settings``), and ``weijian serve --workers 2`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from alerting.rules import Override, load_rules, save_override
from collectors.mqtt.tap import MqttTap
from gateway.registry.database import Registry, bump_revision
from gateway.registry.models import AlertRow, Device, Site, Tenant
from gateway.security import create_user
from protocols.mqtt_telemetry import telemetry_topic
from tests.conftest import InfluxServer
from tests.helpers import Publisher, metric, platform_settings, serve_env, wait_for
from weijian.config import Settings
from weijian.platform import Platform
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port
from weijian.workers import worker_settings

PREFIX = "weijian/v1"
RULE = "air.co2.rest.high"  # GB 37488: CO₂ ≤ 1000 ppm where people sleep (hotels)
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SITE = "hotel-a"
TAP_MESSAGES = "weijian_alerting_tap_messages_total"


def _base(tmp_path: Path, influx: InfluxServer, influx_db: str, broker: LocalMosquitto) -> Settings:
    data = platform_settings(tmp_path, influx, broker, influx_db).model_dump(mode="python")
    data["influx"]["password"] = influx.creds.password
    data["mqtt"]["password"] = broker.ensure_account(LocalMosquitto.COLLECTOR_USER).password
    data["devices_file"] = None  # registry mode: the alert engine runs
    data["gateway"] = {"port": free_port(), "directory_poll_s": 0.2}
    data["hj212"] = {"port": 0}
    data["coap"] = {"port": 0}
    data["writer"] = {"flush_interval_s": 0.2}
    data["alerting"] = {
        "tick_interval_s": 0.2,
        "startup_grace_s": 60,  # no no-data alerts in these short runs
        "context_refresh_s": 0.5,
        "warmup": False,
    }
    return Settings.model_validate(data)


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, influx: InfluxServer, influx_db: str, *, ingest: bool | None = None
) -> AsyncIterator[tuple[Platform, Platform, LocalMosquitto, httpx.AsyncClient]]:
    """Worker 0 (gateway, alert engine, tap) and worker 1, as ``serve --workers 2`` sets them
    (``ingest``: the ``mqtt.ingest`` setting; unset, worker 0 stores no MQTT telemetry)."""
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    await asyncio.to_thread(broker.start)
    base = _base(tmp_path, influx, influx_db, broker)
    base = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"ingest": ingest})})
    s0, s1 = worker_settings(base, 0), worker_settings(base, 1)
    assert (s0.alerting.tap, s1.alerting.tap) == (True, False)
    assert (s0.mqtt.ingest, s1.mqtt.ingest) == ((True, True) if ingest else (False, True))

    def apply(entries: list) -> None:
        broker.set_devices(entries)
        broker.reload()

    try:
        async with (
            Platform(s0, broker_apply=apply) as w0,
            Platform(s1) as w1,
        ):
            assert w0.alerts is not None
            assert isinstance(w0.alert_tap, MqttTap)
            assert (w1.alerts, w1.alert_tap) == (None, None), "one engine in the deployment"
            assert w0.registry is not None
            with w0.registry.session() as s, s.begin():
                create_user(s, "boss", "s3cret-pass", "admin", hasher=FAST)
            url = f"http://127.0.0.1:{w0.gateway.port}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                r = await client.post(
                    "/auth/token", data={"username": "boss", "password": "s3cret-pass"}
                )
                assert r.status_code == 200, r.text
                client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
                yield w0, w1, broker, client
    finally:
        await asyncio.to_thread(broker.stop)


async def until(check: Callable[[], Any], within_s: float, message: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {within_s:.0f} s)")
        await asyncio.sleep(0.05)


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def _hotel(w0: Platform, client: httpx.AsyncClient) -> None:
    """A hotel whose CO₂ rule fires on the first reading over 1000 ppm, clears after 1 s."""
    await _post(client, "/tenants", {"id": "hotels", "name": "Hotels"})
    await _post(
        client,
        "/sites",
        {
            "id": SITE,
            "tenant_id": "hotels",
            "name": "Hotel A",
            "region_code": "110105",
            "venue_type": "hotel",
        },
    )
    assert w0.registry is not None
    assert w0.alerts is not None
    assert w0.alerts.core is not None
    with w0.registry.session() as session, session.begin():
        save_override(
            session,
            w0.alerts.core.ruleset,
            Override.model_validate(
                {"site_id": SITE, "rule_id": RULE, "for": 0, "clear_for": 1, "reason": "test"}
            ),
            actor="boss",
        )


async def _device(
    w0: Platform, w1: Platform, client: httpx.AsyncClient, device: str, protocol: str
) -> str:
    """Register a device through worker 0's API; its secret, once both workers know it."""
    answer = await _post(
        client,
        "/devices",
        {
            "id": device,
            "site_id": SITE,
            "kind": "air_monitor",
            "profile": "air_monitor_iaq8",
            "protocol": protocol,
            "interval_s": 1,
        },
    )
    (credential,) = answer["credentials"]
    assert w1.directory is not None
    await until(lambda: w1.directory.get(device) is not None, 10, "worker 1 never saw the device")
    return credential["secret"]


async def _publisher(broker: LocalMosquitto, device: str, secret: str) -> Publisher:
    async def connect() -> Publisher | None:
        try:
            return await asyncio.to_thread(Publisher, broker.port, device, secret)
        except (AssertionError, OSError):
            return None  # the broker's accounts follow the registry a moment later

    deadline = time.monotonic() + 10
    while (pub := await connect()) is None:
        assert time.monotonic() < deadline, f"{device} cannot connect"
        await asyncio.sleep(0.2)
    return pub


def _rows(w0: Platform, device: str) -> list[AlertRow]:
    assert w0.registry is not None
    with w0.registry.session() as session:
        stmt = select(AlertRow).where(AlertRow.device_id == device, AlertRow.rule_id == RULE)
        return list(session.execute(stmt).scalars())


def _mqtt_accepted(w: Platform) -> int:
    return w.metrics.ingest.accepted["mqtt"]


def test_serve_workers_put_the_engine_on_worker_0_unless_kept_off(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path)
    assert [worker_settings(base, i).alerting.tap for i in range(3)] == [True, False, False]
    off = base.model_copy(update={"alerting": base.alerting.model_copy(update={"tap": False})})
    assert [worker_settings(off, i).alerting.tap for i in range(2)] == [False, False]
    assert base.alerting.tap is None, "a process with only mqtt.share_group runs no engine"
    # mqtt.ingest is worker 0's setting: false never leaves the deployment without a collector
    never = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"ingest": False})})
    assert [worker_settings(never, i).mqtt.ingest for i in range(3)] == [False, True, True]
    assert [worker_settings(base, i).mqtt.ingest for i in range(2)] == [False, True]
    fixed = base.model_copy(update={"devices_file": tmp_path / "devices.yaml"})
    assert worker_settings(fixed, 0).mqtt.ingest is True, "no engine, no reason not to ingest"


@pytest.mark.parametrize("ingest", [None, True], ids=["worker0-judges-only", "worker0-ingests"])
async def test_two_workers_alert_once_on_every_reading_once_and_resolve(
    tmp_path: Path, influx: InfluxServer, influx_db: str, ingest: bool | None
) -> None:
    async with two_workers(tmp_path, influx, influx_db, ingest=ingest) as (w0, w1, broker, client):
        assert w0.alerts is not None
        assert w0.alert_tap is not None
        core = w0.alerts.core
        assert core is not None
        tap = w0.alert_tap
        await _hotel(w0, client)
        secret = await _device(w0, w1, client, "air-mq", "mqtt")
        api_key = await _device(w0, w1, client, "air-http", "http")
        pub = await _publisher(broker, "air-mq", secret)
        try:
            # 20 readings over the limit, then 20 good ones: one device, spread over both workers
            t0 = time.time() - 30
            topic = telemetry_topic(PREFIX, "hotels", SITE, "air-mq")
            n = 40
            for k in range(n):
                co2 = (1500.0 if k < 20 else 600.0) + k % 7
                pub.publish(topic, {"ts": t0 + k * 0.5, "fields": {"co2_ppm": co2}}, key=k)
            await until(lambda: len(pub.acked) == n, 15, "not every reading acknowledged")
            await until(
                lambda: _mqtt_accepted(w0) + _mqtt_accepted(w1) == n, 10, "not all ingested"
            )
            shares = (_mqtt_accepted(w0), _mqtt_accepted(w1))
            if ingest:  # both store: the readings are spread over the shared subscription
                assert min(shares) > 0, f"one worker got every reading: {shares}"
            else:  # the alert process judges them all and stores none
                assert shares == (0, n)
                assert w0.mqtt is None
            # readings worker 0 ingests itself over HTTP reach the engine through its ingestor
            r = await client.post(
                "/ingest/v1/readings",
                json={
                    "readings": [{"ts": t0 + k, "fields": {"co2_ppm": 600.0 + k}} for k in range(5)]
                },
                headers={"Authorization": f"Bearer {api_key}"},
            )
            assert r.status_code == 200, r.text
            await until(lambda: core.stats.readings >= n + 5, 10, "readings not evaluated")
            await asyncio.sleep(1.0)  # anything evaluated twice would show up by now
            assert core.stats.readings == n + 5, "every reading evaluated exactly once"
            assert (tap.stats.received, tap.stats.evaluated, tap.stats.dropped_invalid) == (
                n,
                n,
                0,
            )
            assert core.last_seen("air-http") is not None

            # fired once, and resolved by the good readings (clear_for 1 s of reading time)
            rows = await until(
                lambda: [r for r in _rows(w0, "air-mq") if r.state == "resolved"],
                10,
                "the alert did not resolve",
            )
            assert len(_rows(w0, "air-mq")) == 1, "the alert fired exactly once"
            assert rows[0].resolved_by is None, "resolved by the readings, not a person"
            assert rows[0].fired_at is not None
            assert not _rows(w0, "air-http")
            listed = await client.get("/alerts", params={"device": "air-mq"})
            assert listed.status_code == 200, listed.text
            mine = [a for a in listed.json()["items"] if a["rule_id"] == RULE]
            assert [a["state"] for a in mine] == ["resolved"]
        finally:
            pub.close()


async def test_the_tap_drops_invalid_messages_and_counts_no_ingest_rejection(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    # worker 0 ingesting too (mqtt.ingest true): its collector and its tap see the same messages
    async with two_workers(tmp_path, influx, influx_db, ingest=True) as (w0, w1, broker, client):
        assert w0.alerts is not None
        assert w0.alert_tap is not None
        core = w0.alerts.core
        assert core is not None
        tap = w0.alert_tap
        await _hotel(w0, client)
        secret = await _device(w0, w1, client, "air-bad", "mqtt")
        pub = await _publisher(broker, "air-bad", secret)
        try:
            topic = telemetry_topic(PREFIX, "hotels", SITE, "air-bad")
            t0 = time.time() - 30
            messages: list[bytes | dict[str, Any]] = [
                {"ts": t0, "fields": {"co2_ppm": 600.0}},
                b"{not json",  # the whole message refused
                {"ts": t0 + 1, "fields": {"co2_ppm": -5.0}},  # out of range
                {"ts": t0 + 2, "fields": {"no_such_quantity": 1.0}},
                {  # one good reading, one bad, in one message
                    "readings": [
                        {"ts": t0 + 3, "fields": {"co2_ppm": 610.0}},
                        {"ts": t0 + 4, "fields": {"co2_ppm": "high"}},
                    ]
                },
                {"ts": t0 + 5, "fields": {"co2_ppm": 620.0}},
            ]
            for k, body in enumerate(messages):
                pub.publish(topic, body, key=k)
            await until(lambda: len(pub.acked) == len(messages), 15, "not all acknowledged")
            await until(lambda: tap.stats.received == len(messages), 10, "the tap missed some")

            def rejected(w: Platform) -> int:
                return sum(n for (p, _), n in w.metrics.ingest.rejected.items() if p == "mqtt")

            await until(lambda: rejected(w0) + rejected(w1) == 4, 10, "rejections not counted")
            await until(lambda: core.stats.readings == 3, 10, "good readings not evaluated")
            await asyncio.sleep(1.0)
            assert rejected(w0) + rejected(w1) == 4, "each refusal counted once, by its worker"
            assert min(rejected(w0), rejected(w1)) > 0, "both workers ingested some"
            assert _mqtt_accepted(w0) + _mqtt_accepted(w1) == 3
            assert (tap.stats.evaluated, tap.stats.dropped_invalid) == (3, 4)
            assert core.stats.readings == 3
            # the tap's own counters are on worker 0's /metrics; ingest rejections are not doubled
            text = w0.metrics.registry.get_sample_value
            assert text("weijian_alerting_tap_dropped_invalid_total") == 4
            assert text("weijian_alerting_tap_readings_evaluated_total") == 3
            assert text("weijian_alerting_readings_evaluated_total") == 3
            assert w1.metrics.registry.get_sample_value(TAP_MESSAGES) is None
        finally:
            pub.close()


async def test_a_restarted_worker_0_judges_what_its_tap_session_kept(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    """While worker 0 is down, worker 1 ingests and the broker keeps the tap's copies."""
    async with two_workers(tmp_path, influx, influx_db) as (w0, w1, broker, client):
        await _hotel(w0, client)
        secret = await _device(w0, w1, client, "air-r", "mqtt")
        settings0 = w0.settings
        pub = await _publisher(broker, "air-r", secret)
        topic = telemetry_topic(PREFIX, "hotels", SITE, "air-r")
        t0 = time.time() - 30
        try:
            await w0.aclose()  # worker 0 stops (its tap's session stays on the broker)
            for k in range(10):
                pub.publish(topic, {"ts": t0 + k, "fields": {"co2_ppm": 1500.0 + k}}, key=k)
            await until(lambda: len(pub.acked) == 10, 15, "not acknowledged")

            def apply(entries: list) -> None:
                broker.set_devices(entries)
                broker.reload()

            async with Platform(settings0, broker_apply=apply) as again:
                assert again.alerts is not None
                assert again.alert_tap is not None
                core = again.alerts.core
                assert core is not None
                await until(lambda: core.stats.readings == 10, 15, "the queued copies not judged")
                assert again.alert_tap.stats.evaluated == 10
                await until(
                    lambda: [r.state for r in _rows(again, "air-r")] == ["firing"],
                    10,
                    "no alert from the readings sent while worker 0 was down",
                )
                await until(
                    lambda: _mqtt_accepted(w1) + _mqtt_accepted(again) == 10, 10, "not ingested"
                )
        finally:
            pub.close()


@pytest.mark.slow
def test_serve_with_two_workers_runs_one_engine_fed_by_the_tap(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    """``weijian serve --workers 2`` in registry mode: worker 0 alone judges, every reading once."""
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    broker.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    registry_url = f"sqlite:///{data_dir / 'registry.db'}"
    _seed(registry_url)
    device = broker.allow_device("air-1", "hotels", SITE)
    broker.reload()
    port = _two_free_ports()
    env = serve_env(
        influx,
        broker,
        data_dir,
        influx_db,
        port,
        WEIJIAN_INFLUX__TENANT_DATABASES="false",
        WEIJIAN_GATEWAY__ENABLED="false",
        WEIJIAN_GATEWAY__REGISTRY_URL=registry_url,
        WEIJIAN_HJ212__ENABLED="false",
        WEIJIAN_COAP__ENABLED="false",
        WEIJIAN_MODBUS__ENABLED="false",
        WEIJIAN_ALERTING__WARMUP="false",
        WEIJIAN_ALERTING__STARTUP_GRACE_S="60",
        WEIJIAN_ALERTING__TICK_INTERVAL_S="0.2",
    )
    del env["WEIJIAN_DEVICES_FILE"]  # registry mode
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "weijian.cli", "serve", "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    pub = None
    try:
        wait_for(
            lambda: (
                metric(port, TAP_MESSAGES) is not None
                and metric(port + 1, "weijian_readings_stored_total") is not None
            ),
            60,
            "workers up",
        )
        assert metric(port + 1, "weijian_alerting_readings_evaluated_total") is None
        time.sleep(1.0)  # both subscribed
        pub = Publisher(broker.port, "air-1", device.password)
        topic = telemetry_topic(PREFIX, "hotels", SITE, "air-1")
        t0 = time.time() - 60
        n = 60
        for k in range(n):
            co2 = (1500.0 if 10 <= k < 30 else 600.0) + k % 5
            pub.publish(topic, {"ts": t0 + k * 0.5, "fields": {"co2_ppm": co2}}, key=k)
        wait_for(lambda: len(pub.acked) == n, 20, "not all acknowledged")
        wait_for(
            lambda: metric(port, "weijian_alerting_readings_evaluated_total") == n,
            20,
            "not every reading evaluated",
        )
        shares = (
            metric(port, "weijian_readings_accepted_total") or 0,
            metric(port + 1, "weijian_readings_accepted_total") or 0,
        )
        assert shares == (0, n), "worker 0 judges every reading and stores none (mqtt.ingest)"
        time.sleep(1.0)
        assert metric(port, "weijian_alerting_readings_evaluated_total") == n, "once each"
        assert metric(port, "weijian_alerting_tap_readings_evaluated_total") == n

        def rows() -> list[tuple[str, str]]:
            registry = Registry.open(registry_url)
            try:
                with registry.session() as session:
                    found = session.execute(select(AlertRow).where(AlertRow.rule_id == RULE))
                    return [(r.device_id, r.state) for r in found.scalars()]
            finally:
                registry.close()

        wait_for(lambda: rows() == [("air-1", "resolved")], 20, f"one resolved alert: {rows()}")
    finally:
        if pub is not None:
            pub.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
        broker.stop()
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert text.count("alerting runs in this process (alerting.tap)") == 1, text[-3000:]
    assert text.count("alerting not in this process") == 1
    assert text.count("MQTT ingest off in this process") == 1, "worker 0 only"


def _two_free_ports() -> int:
    """A port free now, with the next one free too (worker i serves metrics on port + i)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _seed(url: str) -> None:
    """A hotel and its air monitor, straight into the registry; the CO₂ rule fires at once."""
    registry = Registry.open(url)
    try:
        with registry.session() as s, s.begin():
            s.add(Tenant(id="hotels", name="Hotels"))
            revision = bump_revision(s)
            s.add(
                Site(
                    id=SITE,
                    tenant_id="hotels",
                    name="Hotel A",
                    region_code="110105",
                    venue_type="hotel",
                    attributes={},
                )
            )
            s.flush()
            s.add(
                Device(
                    id="air-1",
                    site_id=SITE,
                    kind="air_monitor",
                    profile="air_monitor_iaq8",
                    protocol="mqtt",
                    connection={},
                    interval_s=1.0,
                    status="active",
                    revision=revision,
                )
            )
            s.flush()
            save_override(
                s,
                load_rules(),
                Override.model_validate(
                    {"site_id": SITE, "rule_id": RULE, "for": 0, "clear_for": 1, "reason": "test"}
                ),
                actor="test",
            )
    finally:
        registry.close()
