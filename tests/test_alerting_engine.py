"""The alert engine inside the running platform, end to end, with nothing mocked.

The platform runs in registry mode against a real Mosquitto and InfluxDB. A water probe at a
plant outlet is onboarded through the API and polled over Modbus TCP (a simulated probe: the
real path for this kind); its free chlorine falls below GB 5749's 0.3 mg/L. The alert goes
pending, then firing after the rule's ``for`` (shortened for the test by a per-site override,
the audited way a supervisor would), is stored in the registry, written to InfluxDB as
``alert_event`` points and delivered, signed, to the webhook of the officers of the site's
county only. A tenant user may not acknowledge it; an admin does. The platform restarts: the
open alert comes back, not twice. The chlorine recovers: the alert resolves by itself after
``clear_for``, and the officers hear so.

MQTT air monitors then show the no-data monitor: one falls silent and gets its alert, which
clears when it reports again; the broker itself goes down for longer than the silence window
and comes back, and nobody gets an alert for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from alerting.model import AlertKey
from alerting.notify import verify_signature
from alerting.notify.testing import RecordingHttpServer
from alerting.rules import Override, save_override
from alerting.store import AlertStore
from gateway.registry.models import AlertRow
from gateway.security import create_user
from protocols.mqtt_telemetry import telemetry_topic
from protocols.profiles import load_profiles
from simulators.modbus_device import ModbusDeviceServer, SimulatedUnit
from tests.conftest import InfluxServer
from tests.helpers import Publisher, platform_settings
from weijian.config import Settings
from weijian.platform import Platform
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port

PREFIX = "weijian/v1"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SECRET = "webhook-secret-for-tests"
RULE = "dw.free_cl.outlet.low"
PROBE = "wp-outlet"


def _settings(
    tmp_path: Path, influx: InfluxServer, influx_db: str, broker: LocalMosquitto, **alerting: Any
) -> Settings:
    collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    data = platform_settings(tmp_path, influx, broker, influx_db).model_dump(mode="python")
    data["influx"]["password"] = influx.creds.password
    data["mqtt"]["password"] = collector.password
    data["devices_file"] = None
    data["gateway"] = {"port": free_port(), "directory_poll_s": 0.2}
    data["hj212"] = {"port": 0}
    data["coap"] = {"port": 0}
    data["modbus"] = {"refresh_s": 0.3}
    data["writer"] = {"flush_interval_s": 0.2}
    data["alerting"] = {
        "tick_interval_s": 0.2,
        "startup_grace_s": 0,
        "nodata_multiple": 3,
        "nodata_min_silence_s": 1.5,
        "context_refresh_s": 0.5,
        **alerting,
    }
    data["notify"] = {
        "webhook": {"default_secret": SECRET, "timeout_s": 5},
        "group_wait_s": 0.05,
        "repeat_interval_s": None,
        "escalate_after_s": None,
    }
    return Settings.model_validate(data)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, broker: LocalMosquitto, users: bool = True
) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    def apply(entries: list) -> None:
        broker.set_devices(entries)
        broker.reload()

    async with Platform(settings, broker_apply=apply) as platform:
        assert platform.registry is not None
        assert platform.alerts is not None, "registry mode runs the alert engine"
        if users:
            with platform.registry.session() as s, s.begin():
                create_user(s, "boss", "s3cret-pass", "admin", hasher=FAST)
        url = f"http://127.0.0.1:{platform.gateway.port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            client.headers["Authorization"] = await _token(client, "boss")
            yield platform, client


async def _token(client: httpx.AsyncClient, user: str) -> str:
    r = await client.post("/auth/token", data={"username": user, "password": "s3cret-pass"})
    assert r.status_code == 200, r.text
    return f"Bearer {r.json()['access_token']}"


async def until(check: Callable[[], Any], within_s: float, message: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {within_s:.0f} s)")
        await asyncio.sleep(0.1)


def _rows(platform: Platform, device: str, rule: str | None = None) -> list[AlertRow]:
    assert platform.registry is not None
    with platform.registry.session() as session:
        stmt = select(AlertRow).where(AlertRow.device_id == device)
        if rule is not None:
            stmt = stmt.where(AlertRow.rule_id == rule)
        return list(session.execute(stmt.order_by(AlertRow.started_at)).scalars())


def _posts(hook: RecordingHttpServer, path: str, event: str) -> list[dict[str, Any]]:
    out = []
    for request in hook.requests:
        if request.path != path or request.headers.get("X-Weijian-Event") != event:
            continue
        assert verify_signature(
            SECRET,
            request.body,
            request.headers.get("X-Weijian-Timestamp"),
            request.headers.get("X-Weijian-Signature"),
        ), "every delivery is signed with the endpoint's secret"
        out.append(orjson.loads(request.body))
    return out


def _notice(
    hook: RecordingHttpServer, path: str, event: str, alert_id: str
) -> dict[str, Any] | None:
    for body in _posts(hook, path, event):
        for alert in body["alerts"]:
            if alert["id"] == alert_id:
                return alert
    return None


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def test_threshold_alert_lives_end_to_end_and_survives_a_restart(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> None:
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    await asyncio.to_thread(broker.start)
    values = {
        "free_chlorine_mg_l": 0.8,
        "turbidity_ntu": 0.2,
        "ph": 7.2,
        "water_temperature_c": 15.0,
        "conductivity_us_cm": 400.0,
    }
    unit = SimulatedUnit(
        1, load_profiles()["water_probe_wq500"], device=PROBE, values=lambda u, t: values
    )
    unit.update_s = 0.0
    settings = _settings(tmp_path, influx, influx_db, broker)
    try:
        async with (
            RecordingHttpServer() as hook,
            ModbusDeviceServer([unit]) as modbus,
        ):
            await _first_life(settings, broker, hook, modbus, values, influx, influx_db)
            await _second_life(settings, broker, hook, values)
    finally:
        broker.stop()


async def _first_life(
    settings: Settings,
    broker: LocalMosquitto,
    hook: RecordingHttpServer,
    modbus: ModbusDeviceServer,
    values: dict[str, float],
    influx: InfluxServer,
    influx_db: str,
) -> None:
    key = AlertKey(PROBE, RULE)
    async with running(settings, broker) as (platform, client):
        assert platform.alerts is not None
        officers = f"{hook.url}/officer-330110"
        await _post(client, "/tenants", {"id": "plant", "name": "Water plant"})
        await _post(
            client,
            "/jurisdictions",
            {
                "region_code": "330110",
                "name": "Yuhang",
                "officers": [
                    {"name": "Zhang", "channels": [{"type": "webhook", "address": officers}]}
                ],
            },
        )
        await _post(
            client,
            "/jurisdictions",
            {
                "region_code": "330106",
                "name": "Xihu",
                "officers": [
                    {
                        "name": "Li",
                        "channels": [{"type": "webhook", "address": f"{hook.url}/elsewhere"}],
                    }
                ],
            },
        )
        await _post(
            client,
            "/sites",
            {
                "id": "outlet",
                "tenant_id": "plant",
                "name": "出厂水",
                "region_code": "330110",
                "venue_type": "water_plant_outlet",
                "attributes": {"disinfectant": "chlorine"},
            },
        )
        # A supervisor shortens for/clear_for at this site (validated, audited).
        with platform.registry.session() as session, session.begin():
            save_override(
                session,
                platform.alerts.core.ruleset,
                Override.model_validate(
                    {
                        "site_id": "outlet",
                        "rule_id": RULE,
                        "for": 2,
                        "clear_for": 2,
                        "reason": "test: seconds, not minutes",
                    }
                ),
                actor="boss",
            )
        await _post(
            client,
            "/devices",
            {
                "id": PROBE,
                "site_id": "outlet",
                "kind": "water_probe",
                "profile": "water_probe_wq500",
                "protocol": "modbus_tcp",
                "connection": {"host": "127.0.0.1", "port": modbus.port, "unit_id": 1},
                "interval_s": 0.5,
            },
        )
        core = platform.alerts.core
        assert core is not None
        await until(lambda: core.stats.readings >= 3, 15, "the probe's readings reach alerting")
        assert core.book.get(key) is None

        values["free_chlorine_mg_l"] = 0.2  # below 0.3 mg/L
        await until(lambda: core.book.get(key) is not None, 10, "no pending alert")
        pending_seen = core.book.get(key).state.value
        alert = await until(
            lambda: (a := core.book.get(key)) is not None and a.state.value == "firing" and a,
            10,
            "the alert never fired",
        )
        assert pending_seen in ("pending", "firing")
        fired_after = (alert.fired_at - alert.started_at).total_seconds()
        assert 2.0 <= fired_after < 4.0, f"fired {fired_after:.1f} s after it began (for 2 s)"
        assert "site override" in alert.message

        # persisted in the registry, with its history
        rows = await until(
            lambda: [r for r in _rows(platform, PROBE, RULE) if r.state == "firing"],
            5,
            "firing alert not persisted",
        )
        assert len(rows) == 1
        history = await asyncio.to_thread(AlertStore(platform.registry).transitions, alert.id)
        assert [(t.from_state, t.to_state) for t in history][:2] == [
            (None, "pending"),
            ("pending", "firing"),
        ]
        # notified, signed, to the outlet county's officers only
        # (a step from 0.8 to 0.2 mg/L within a poll also trips the anomaly detectors:
        # their alerts are grouped into a message of their own)
        notice = await until(
            lambda: _notice(hook, "/officer-330110", "firing", alert.id), 10, "no notice"
        )
        assert notice["rule"] == RULE
        assert notice["labels"]["site_name"] == "出厂水"
        assert not [r for r in hook.requests if r.path == "/elsewhere"]

        # alert_event points in InfluxDB
        def events() -> list[tuple[str, str]]:
            result = influx.query(
                f'SELECT "from_state", "state" FROM "alert_event" WHERE "rule" = \'{RULE}\'',
                influx_db,
            )["results"][0]
            return (
                [(p[1], p[2]) for p in result["series"][0]["values"]] if "series" in result else []
            )

        await until(lambda: len(events()) >= 2, 15, "alert_event points not written")
        assert events()[:2] == [("created", "pending"), ("pending", "firing")]

        # a tenant user may not acknowledge; an admin may (audited)
        with platform.registry.session() as s, s.begin():
            create_user(s, "plantuser", "s3cret-pass", "tenant_user", (), "plant", hasher=FAST)
        tenant_auth = {"Authorization": await _token(client, "plantuser")}
        refused = await client.post(f"/alerts/{alert.id}/ack", json={}, headers=tenant_auth)
        assert refused.status_code == 403, refused.text
        listed = await client.get("/alerts", headers=tenant_auth)
        assert alert.id in [a["id"] for a in listed.json()["items"]], "but may read it"
        r = await client.post(f"/alerts/{alert.id}/ack", json={"comment": "on my way"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "acknowledged"
        assert r.json()["acknowledged_by"] == "boss"


async def _second_life(
    settings: Settings, broker: LocalMosquitto, hook: RecordingHttpServer, values: dict[str, float]
) -> None:
    """After a restart: the acknowledged alert comes back, once; then it resolves by itself."""
    key = AlertKey(PROBE, RULE)
    async with running(settings, broker, users=False) as (platform, _client):
        assert platform.alerts is not None
        core = platform.alerts.core
        assert core is not None
        restored = core.book.get(key)
        assert restored is not None, "the open alert was restored from the registry"
        alert_id = _rows(platform, PROBE, RULE)[0].id
        assert (restored.id, restored.state.value) == (alert_id, "acknowledged")
        seen = core.stats.readings
        await until(lambda: core.stats.readings >= seen + 4, 15, "no readings after restart")
        rows = _rows(platform, PROBE, RULE)
        assert [(r.id, r.state) for r in rows] == [(alert_id, "acknowledged")], "not twice"

        # the chlorine recovers: resolved by itself after clear_for (2 s), officers told
        values["free_chlorine_mg_l"] = 0.5
        await until(lambda: core.book.get(key) is None, 10, "the alert never resolved")
        row = await until(
            lambda: [r for r in _rows(platform, PROBE, RULE) if r.state == "resolved"],
            5,
            "resolution not persisted",
        )
        assert row[0].resolved_by is None, "resolved by itself, not by a person"
        resolved_after = (row[0].resolved_at - row[0].acknowledged_at).total_seconds()
        assert resolved_after >= 2.0
        await until(lambda: _notice(hook, "/officer-330110", "resolved", alert_id), 10, "not told")


async def test_nodata_alerts_a_silent_device_but_not_a_broker_outage(
    tmp_path: Path, influx: InfluxServer, influx_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    await asyncio.to_thread(broker.start)
    settings = _settings(tmp_path, influx, influx_db, broker, warmup=False)
    devices = ("air-1", "air-2", "air-3")
    publishers: dict[str, Publisher] = {}
    muted: set[str] = set()
    stop = asyncio.Event()
    rng = random.Random(7)
    try:
        async with running(settings, broker) as (platform, client):
            assert platform.alerts is not None
            core = platform.alerts.core
            assert core is not None
            await _post(client, "/tenants", {"id": "hotels", "name": "Hotels"})
            await _post(
                client,
                "/sites",
                {
                    "id": "hotel-a",
                    "tenant_id": "hotels",
                    "name": "Hotel A",
                    "region_code": "110105",
                    "venue_type": "hotel",
                },
            )
            for device in devices:
                answer = await _post(
                    client,
                    "/devices",
                    {
                        "id": device,
                        "site_id": "hotel-a",
                        "kind": "air_monitor",
                        "profile": "air_monitor_iaq8",
                        "protocol": "mqtt",
                        "interval_s": 0.5,
                    },
                )
                (credential,) = answer["credentials"]
                publishers[device] = await until(
                    lambda d=device, p=credential["secret"]: asyncio.to_thread(
                        _publisher, broker.port, d, p
                    ),
                    10,
                    f"{device} cannot connect",
                )

            async def report() -> None:
                while not stop.is_set():
                    for device, pub in publishers.items():
                        if device not in muted:
                            topic = telemetry_topic(PREFIX, "hotels", "hotel-a", device)
                            co2 = 600.0 + rng.randint(-10, 10)  # live: a constant is "stuck"
                        pub.publish(topic, {"ts": time.time(), "fields": {"co2_ppm": co2}})
                    await asyncio.sleep(0.25)

            reporter = asyncio.create_task(report())
            await until(lambda: all(core.last_seen(d) for d in devices), 10, "not all reporting")

            # one device falls silent: no data after 3 × 0.5 s (at least 1.5 s), then back
            muted.add("air-1")
            silent_at = time.monotonic()
            await until(lambda: core.book.get(AlertKey("air-1", "nodata")), 10, "no nodata alert")
            assert time.monotonic() - silent_at >= 1.5
            alert = core.book.get(AlertKey("air-1", "nodata"))
            assert alert.state.value == "firing"
            muted.discard("air-1")
            await until(
                lambda: core.book.get(AlertKey("air-1", "nodata")) is None, 10, "never cleared"
            )

            # the broker goes down for longer than the silence window: a pause, not a storm
            caplog.set_level("INFO", logger="alerting.engine")
            await asyncio.to_thread(broker.stop)
            await until(lambda: not platform.mqtt.connected.is_set(), 10, "still connected")
            await asyncio.sleep(4.0)
            await asyncio.to_thread(broker.start)
            await until(lambda: platform.mqtt.connected.is_set(), 30, "collector not back")
            await asyncio.sleep(4.0)  # longer than the window, with devices reporting again
            assert "no-data checks paused" in caplog.text
            assert "no-data clocks restart now" in caplog.text
            assert all(core.last_seen(d) > time.time() - 2 for d in devices), "reporting again"
            stop.set()
            await reporter
            nodata = [
                r.device_id for d in devices for r in _rows(platform, d) if "nodata" in r.rule_id
            ]
            assert nodata == ["air-1"], "only the device that really fell silent"
            assert core.book.open_alerts() == []
    finally:
        stop.set()
        for pub in publishers.values():
            pub.close()
        broker.stop()


def _publisher(port: int, user: str, password: str) -> Publisher | None:
    try:
        pub = Publisher(port, user, password)
    except (AssertionError, OSError):
        return None
    pub.client.reconnect_delay_set(min_delay=1, max_delay=1)
    return pub
