"""Onboarding end to end: the platform with its registry and gateway, a real broker and InfluxDB.

An engineer registers a site and two devices through the API; the MQTT device publishes with the
password it was issued (the broker learned it without a restart), the HTTP device posts a batch
with its API key; `device check` then shows both reporting, with the refused reading and its
reason. Rotation and revocation take effect at once; a device cannot publish as another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from gateway.security import create_user
from protocols.mqtt_telemetry import telemetry_topic
from tests.conftest import InfluxServer
from tests.helpers import Publisher, connack, platform_settings, wait_for
from weijian.config import Settings
from weijian.platform import Platform
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port

PREFIX = "weijian/v1"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
async def stack(
    tmp_path: Path, influx: InfluxServer, influx_db: str
) -> AsyncIterator[tuple[Platform, LocalMosquitto, httpx.AsyncClient]]:
    broker = LocalMosquitto(tmp_path / "mosquitto", topic_prefix=PREFIX)
    await asyncio.to_thread(broker.start)
    collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    base = platform_settings(tmp_path, influx, broker, influx_db)
    data = base.model_dump(mode="python")
    data["influx"]["password"] = influx.creds.password
    data["mqtt"]["password"] = collector.password
    data["devices_file"] = None  # the registry, not a fixed list
    data["gateway"] = {"port": free_port(), "directory_poll_s": 0.2}
    data["hj212"] = {"port": 0}
    data["coap"] = {"port": 0}
    data["modbus"] = {"refresh_s": 0.5}
    settings = Settings.model_validate(data)

    def apply(entries: list) -> None:
        broker.set_devices(entries)
        broker.reload()

    try:
        async with Platform(settings, broker_apply=apply) as platform:
            assert platform.registry is not None
            with platform.registry.session() as s, s.begin():
                create_user(s, "eng", "s3cret-pass", "admin", hasher=FAST)
            await asyncio.wait_for(platform.mqtt.connected.wait(), 10)
            url = f"http://127.0.0.1:{platform.gateway.port}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                token = (
                    await client.post(
                        "/auth/token", data={"username": "eng", "password": "s3cret-pass"}
                    )
                ).json()["access_token"]
                client.headers["Authorization"] = f"Bearer {token}"
                yield platform, broker, client
    finally:
        broker.stop()


async def _eventually(check: Any, within_s: float, message: str) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(message)


async def _register(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/tenants", json={"id": "hotels", "name": "Hotel group"})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/sites",
        json={
            "id": "hotel-a",
            "tenant_id": "hotels",
            "name": "Hotel A",
            "region_code": "110105",
            "latitude": 39.92,
            "longitude": 116.44,
            "venue_type": "hotel",
        },
    )
    assert r.status_code == 201, r.text
    devices = {}
    for device, protocol in (("air-mqtt", "mqtt"), ("air-http", "http"), ("air-other", "mqtt")):
        r = await client.post(
            "/devices",
            json={
                "id": device,
                "site_id": "hotel-a",
                "kind": "air_monitor",
                "profile": "air_monitor_iaq8",
                "protocol": protocol,
                "interval_s": 60,
            },
        )
        assert r.status_code == 201, r.text
        devices[device] = r.json()
    return devices


def _secret(answer: dict[str, Any]) -> str:
    (credential,) = answer["credentials"]
    return credential["secret"]


async def test_engineer_onboards_devices_and_sees_them_report(
    stack: tuple[Platform, LocalMosquitto, httpx.AsyncClient], influx: InfluxServer, influx_db: str
) -> None:
    _, broker, client = stack
    devices = await _register(client)
    mqtt_answer = devices["air-mqtt"]
    assert mqtt_answer["connect"]["topic"] == telemetry_topic(
        PREFIX, "hotels", "hotel-a", "air-mqtt"
    )
    password = _secret(mqtt_answer)

    # The broker learned the new account by reload: publish as the engineer was told to.
    pub = await _eventually(
        lambda: asyncio.to_thread(_try_publisher, broker.port, "air-mqtt", password),
        10,
        "the onboarded MQTT device could not connect",
    )
    try:
        now = time.time()
        pub.publish(mqtt_answer["connect"]["topic"], {"ts": now, "fields": {"co2_ppm": 612}}, 1)
        # ... and cannot publish as another device (the broker's ACL): never stored.
        other = telemetry_topic(PREFIX, "hotels", "hotel-a", "air-other")
        pub.publish(other, {"ts": now, "fields": {"co2_ppm": 9999}}, 2)
        await asyncio.to_thread(wait_for, lambda: len(pub.acked) == 2, 10, "no PUBACKs")
    finally:
        pub.close()

    key = _secret(devices["air-http"])
    r = await client.post(
        "/ingest/v1/readings",
        json={"readings": [{"fields": {"co2_ppm": 700}}, {"fields": {"co2_ppm": "high"}}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"] == [
        {"index": 1, "reason": "wrong_type", "detail": r.json()["rejected"][0]["detail"]}
    ]

    async def stored() -> bool:
        n = await asyncio.to_thread(influx.count, influx_db, "air_monitor", "co2_ppm")
        return n >= 2

    await _eventually(stored, 15, "readings not stored")
    result = influx.query("SELECT co2_ppm, device FROM air_monitor", influx_db)["results"][0]
    by_device = {row[2]: row[1] for row in result["series"][0]["values"]}
    assert by_device == {"air-mqtt": 612.0, "air-http": 700.0}, "nothing stored as air-other"

    async def checked() -> dict[str, Any] | None:
        r = await client.get("/devices/air-http/check")
        body = r.json()
        return body if body["rejections"] else None

    report = await _eventually(checked, 15, "the rejection never reached the check")
    assert report["verdict"] == "reporting"
    assert report["last_fields"]["co2_ppm"] == 700.0
    assert report["rejections"][0]["reason"] == "wrong_type"
    assert any("wrong_type" in advice for advice in report["advice"])
    silent = (await client.get("/devices/air-other/check")).json()
    assert silent["verdict"] == "never_seen"
    assert silent["credentials"] == ["mqtt"]


async def test_rotation_and_revocation_take_effect_without_restart(
    stack: tuple[Platform, LocalMosquitto, httpx.AsyncClient],
) -> None:
    platform, broker, client = stack
    devices = await _register(client)
    pid = broker.pid
    old_key = _secret(devices["air-http"])
    body = {"fields": {"co2_ppm": 650}}

    async def post(key: str) -> int:
        r = await client.post(
            "/ingest/v1/readings", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        return r.status_code

    assert await post(old_key) == 200
    r = await client.post("/devices/air-http/credentials/api_key")
    assert r.status_code == 200, r.text
    new_key = r.json()["credential"]["secret"]
    assert await post(old_key) == 401
    assert await post(new_key) == 200
    assert (await client.delete("/devices/air-http/credentials")).status_code == 200
    assert await post(new_key) == 401
    unauthorized = await client.post("/ingest/v1/readings", json=body)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "unauthorized"

    password = _secret(devices["air-mqtt"])
    await _eventually(
        lambda: asyncio.to_thread(_connects, broker.port, "air-mqtt", password),
        10,
        "device never admitted",
    )
    assert (await client.delete("/devices/air-mqtt/credentials")).status_code == 200

    async def refused() -> bool:
        return not await asyncio.to_thread(_connects, broker.port, "air-mqtt", password)

    await _eventually(refused, 10, "the revoked MQTT device is still admitted")
    r = await client.patch("/devices/air-other", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    assert platform.directory.get("air-other") is None
    assert broker.pid == pid, "applied by reload, not by a restart"


def _try_publisher(port: int, user: str, password: str) -> Publisher | None:
    return Publisher(port, user, password) if _connects(port, user, password) else None


def _connects(port: int, user: str, password: str) -> bool:
    return connack(port, user, password) == 0


ALL_PROTOCOLS = """
name: every-protocol
seed: 7
tenants:
  - {id: water-co, name: Water Co}
  - {id: hospital, name: Hospital}
sites:
  - {id: plant, tenant: water-co, name: Plant, region: "330110", venue_type: water_plant_outlet,
     lat: 30.42, lon: 120.30}
  - {id: pool, tenant: water-co, name: Pool, region: "330108", venue_type: pool,
     lat: 30.23, lon: 120.23}
  - {id: xray, tenant: hospital, name: X-ray, region: "330104", venue_type: xray_room,
     lat: 30.26, lon: 120.19}
  - {id: cssd, tenant: hospital, name: CSSD, region: "330104", venue_type: cssd,
     lat: 30.26, lon: 120.19}
devices:
  - {id: probe-1, kind: water_probe, site: plant, interval_s: 1}
  - {id: pool-1, kind: pool_monitor, site: pool, interval_s: 1}
  - {id: station-1, kind: water_station, site: plant, interval_s: 1}
  - {id: dose-1, kind: dose_rate_monitor, site: xray, interval_s: 1,
     params: {room: {modality: ct}}}
  - {id: badge-1, kind: dosimeter, site: xray, interval_s: 1,
     params: {room: {modality: ct}}}
  - {id: steri-1, kind: sterilizer, site: cssd, interval_s: 1}
"""


async def test_every_protocol_onboards_through_the_registry_and_stores(
    stack: tuple[Platform, LocalMosquitto, httpx.AsyncClient],
    influx: InfluxServer,
    influx_db: str,
    tmp_path: Path,
) -> None:
    """Modbus (polled), HJ 212, CoAP and MQTT devices: registered through the gateway by the
    simulator, their secrets issued by the registry, their readings stored."""
    from simulators.runner import run_scenario

    platform, broker, _client = stack
    scenario = tmp_path / "every-protocol.yaml"
    scenario.write_text(ALL_PROTOCOLS)
    assert platform.hj212 is not None
    assert platform.coap is not None
    assert platform.modbus is not None
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_scenario(
            scenario,
            gateway_url=f"http://127.0.0.1:{platform.gateway.port}",
            username="eng",
            password="s3cret-pass",
            mqtt_port=broker.port,
            hj212_port=platform.hj212.port,
            coap_port=platform.coap.port,
            modbus_bind="127.0.0.1",
            ground_truth_path=tmp_path / "truth.jsonl",
            report_every_s=3600,
            stop=stop,
        )
    )
    kinds = {
        "water_probe": "probe-1",
        "pool_monitor": "pool-1",
        "water_station": "station-1",
        "dose_rate_monitor": "dose-1",
        "dosimeter": "badge-1",
        "sterilizer": "steri-1",
    }

    async def all_stored() -> bool:
        if run.done():
            run.result()  # raise what went wrong
        for kind, device in kinds.items():
            result = await asyncio.to_thread(
                influx.query,
                f"SELECT count(*) FROM \"{kind}\" WHERE device = '{device}'",
                influx_db,
            )
            if not result["results"][0].get("series"):
                return False
        return True

    try:
        await _eventually(all_stored, 45, "not every protocol's device was stored")
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
    assert platform.metrics.ingest.rejected == {}, "healthy simulated devices: nothing refused"

    async def sites_on_the_map() -> bool:  # the wall's geomap reads site_info (docs/schema.md)
        result = await asyncio.to_thread(
            influx.query, 'SELECT last("lat") FROM "site_info" GROUP BY "site"', influx_db
        )
        sites = {s["tags"]["site"] for s in result["results"][0].get("series", [])}
        return {"plant", "pool", "xray", "cssd"} <= sites

    await _eventually(sites_on_the_map, 15, "site_info not written for the registered sites")
