"""The simulated MQTT fleet against a real Mosquitto with per-device accounts and ACLs."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml

from simulators.air_monitor.signal import AirMonitorSignal, AirMonitorSpec
from simulators.mqtt_device import (
    MAX_BATCH,
    AcceleratedClock,
    MqttFleet,
    SimulatedMqttDevice,
    encode_readings,
    format_ts,
    make_reading,
    telemetry_topic,
)
from simulators.scenario import ScenarioError, build_fleet, directory_entries, load_scenario
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port

AIR_QUANTITIES = set(
    yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "protocols" / "data" / "kinds.yaml").read_text()
    )["kinds"]["air_monitor"]["quantities"]
)
START = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)


# ---- pure parts ---------------------------------------------------------------------------------


def test_reading_and_batch_payloads_match_the_wire_format() -> None:
    t = datetime(2026, 11, 22, 13, 0, 0, 123456, tzinfo=UTC)
    reading = make_reading(t, {"co2_ppm": 612.0}, 17, flags={"co2_ppm": "N"})
    assert reading == {
        "ts": "2026-11-22T13:00:00.123Z",
        "fields": {"co2_ppm": 612.0},
        "seq": 17,
        "flags": {"co2_ppm": "N"},
    }
    beijing_9pm = datetime(2026, 11, 22, 21, 0, tzinfo=timezone(timedelta(hours=8)))
    assert format_ts(beijing_9pm) == "2026-11-22T13:00:00.000Z", "timestamps are sent in UTC"
    assert orjson.loads(encode_readings([reading], batch=False)) == reading
    assert orjson.loads(encode_readings([reading] * 3, batch=True)) == {"readings": [reading] * 3}
    with pytest.raises(ValueError, match="at most 1000"):
        encode_readings([reading] * (MAX_BATCH + 1), batch=True)
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts(datetime(2026, 11, 22))


def test_device_declarations_refuse_bad_topic_levels() -> None:
    signal = AirMonitorSignal(AirMonitorSpec.for_venue("office"), seed=1)
    with pytest.raises(ValueError, match="site"):
        SimulatedMqttDevice("t", "a/b", "d", "air_monitor", "d", "pw", 5, signal)
    with pytest.raises(ValueError, match="interval_s"):
        SimulatedMqttDevice("t", "s", "d", "air_monitor", "d", "pw", 0, signal)


# ---- against the broker -------------------------------------------------------------------------


@dataclass
class Collector:
    """A subscriber with the platform collector's account, on a paho thread of its own."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def by_topic(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        for topic, payload in self.snapshot():
            out[topic].append(orjson.loads(payload))
        return out


@contextmanager
def collector(broker: LocalMosquitto) -> Iterator[Collector]:
    account = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    sink = Collector()
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(account.username, account.password)
    client.on_message = sink.on_message
    client.on_connect = lambda c, *_: c.subscribe(f"{broker.topic_prefix}/+/+/+/telemetry", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(5), "collector could not subscribe"
        yield sink
    finally:
        client.disconnect()
        client.loop_stop()


def _can_connect(port: int, username: str, password: str) -> bool:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    outcome: list[bool] = []
    client.on_connect = lambda c, u, f, rc, p: outcome.append(not rc.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 2
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    return bool(outcome and outcome[0])


def make_devices(
    broker: LocalMosquitto,
    n: int,
    *,
    interval_s: float = 0.05,
    tenant: str = "t-hotels",
    site: str = "s-beijing-01",
    topic_of: dict[int, str] | None = None,
) -> list[SimulatedMqttDevice]:
    """Register ``n`` fresh device accounts (ACL: own topic only) and declare them."""
    tag = uuid.uuid4().hex[:6]
    devices = []
    for i in range(n):
        device = f"am-{tag}-{i}"
        account = broker.allow_device(device, tenant, site)
        signal = AirMonitorSignal(AirMonitorSpec.for_venue("hotel_room"), seed=i)
        devices.append(
            SimulatedMqttDevice(
                tenant,
                site,
                device,
                "air_monitor",
                account.username,
                account.password,
                interval_s,
                signal,
                topic_override=(topic_of or {}).get(i),
            )
        )
    broker.reload()
    deadline = time.monotonic() + 5  # SIGHUP is asynchronous: wait until the last account works
    while not _can_connect(broker.port, devices[-1].username, devices[-1].password):
        assert time.monotonic() < deadline, "new device accounts not active after reload"
        time.sleep(0.05)
    return devices


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll a condition that other threads (the collector) or callbacks make true."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_every_acked_reading_arrives_on_its_own_topic_and_nothing_leaks(
    mosquitto: LocalMosquitto,
) -> None:
    devices = make_devices(mosquitto, 4)
    with collector(mosquitto) as sink:
        threads_before = set(threading.enumerate())
        clock = AcceleratedClock(START, factor=100.0)  # 0.05 s real = 5 s of simulated time
        async with MqttFleet(
            devices, port=mosquitto.port, time_source=clock, max_messages=20
        ) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_finished()
            assert set(threading.enumerate()) == threads_before, "the fleet must not use threads"
        stats = fleet.stats()
        rates = fleet.rates()
        assert asyncio.all_tasks() == {asyncio.current_task()}, "tasks leaked"
        expected = {telemetry_topic(d.tenant, d.site, d.device): d for d in devices}
        await _until(lambda: sum(len(v) for v in sink.by_topic().values()) >= 4 * 20)

    received = sink.by_topic()
    assert set(received) == set(expected)
    for topic, device in expected.items():
        s = stats[device.device]
        assert (s.published, s.acked, s.failed) == (20, 20, 0), s
        readings = received[topic]
        assert sorted(r["seq"] for r in readings) == sorted(s.acked_seqs) == list(range(1, 21))
        times = []
        for r in readings:
            assert set(r) == {"ts", "fields", "seq"}
            assert set(r["fields"]) <= AIR_QUANTITIES, r["fields"]
            assert all(isinstance(v, float) for v in r["fields"].values())
            assert r["ts"].endswith("Z")
            assert len(r["ts"]) == len("2026-11-22T13:00:00.123Z")
            times.append(datetime.fromisoformat(r["ts"]))
        steps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(2.0 < s < 10.0 for s in steps), f"accelerated clock: ~5 s apart, got {steps}"
    assert rates.intended_msgs_per_s == pytest.approx(4 / 0.05)
    assert 0 < rates.acked_msgs_per_s <= rates.published_msgs_per_s


async def test_a_device_cannot_publish_as_another_device(mosquitto: LocalMosquitto) -> None:
    """The intruder authenticates as itself but publishes on the victim's topic: the broker's ACL
    answers PUBACK 0x87 (not authorised) and delivers nothing."""
    victim = "am-victim-" + uuid.uuid4().hex[:6]
    mosquitto.allow_device(victim, "t-offices", "s-shanghai-01")
    victim_topic = telemetry_topic("t-offices", "s-shanghai-01", victim)
    honest, intruder = make_devices(mosquitto, 2, topic_of={1: victim_topic})
    with collector(mosquitto) as sink:
        async with MqttFleet([honest, intruder], port=mosquitto.port, max_messages=5) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_finished()
        honest_topic = honest.topic
        await _until(lambda: len(sink.by_topic().get(honest_topic, [])) >= 5)
        await asyncio.sleep(0.2)  # anything the intruder got through would be here by now
        received = sink.by_topic()
    stats = fleet.stats()
    assert (stats[intruder.device].acked, stats[intruder.device].failed) == (0, 5)
    assert (stats[honest.device].acked, stats[honest.device].failed) == (5, 0)
    assert victim_topic not in received, "the ACL let a device publish as another"


async def test_batch_mode_sends_readings_arrays(mosquitto: LocalMosquitto) -> None:
    (device,) = make_devices(mosquitto, 1, interval_s=0.01)
    with collector(mosquitto) as sink:
        async with MqttFleet([device], port=mosquitto.port, batch_size=5, max_messages=3) as fleet:
            async with asyncio.timeout(10):
                await fleet.wait_finished()
        await _until(lambda: len(sink.snapshot()) >= 3)
        messages = sink.by_topic()[device.topic]
    assert len(messages) == 3
    assert all(set(m) == {"readings"} and len(m["readings"]) == 5 for m in messages)
    seqs = [r["seq"] for m in messages for r in m["readings"]]
    assert sorted(seqs) == list(range(1, 16))
    stats = fleet.stats()[device.device]
    assert (stats.acked, stats.acked_readings) == (3, 15)
    assert fleet.rates().intended_readings_per_s == pytest.approx(100)


async def test_a_wrong_password_is_refused_and_retried_with_backoff(
    mosquitto: LocalMosquitto,
) -> None:
    (device,) = make_devices(mosquitto, 1)
    bad = SimulatedMqttDevice(
        device.tenant,
        device.site,
        device.device,
        device.kind,
        device.username,
        device.password + "x",
        0.05,
        device.signal,
    )
    async with MqttFleet(
        [bad], port=mosquitto.port, backoff_base_s=0.05, backoff_cap_s=0.2, drain_timeout_s=0.1
    ) as fleet:
        await _until(lambda: fleet.stats()[bad.device].refused >= 3)
    stats = fleet.stats()[bad.device]
    assert stats.acked == 0
    assert stats.connects == 0
    assert stats.in_flight == stats.published > 0, "readings stay queued while refused"
    assert asyncio.all_tasks() == {asyncio.current_task()}


def _lone_device(name: str) -> SimulatedMqttDevice:
    signal = AirMonitorSignal(AirMonitorSpec.for_venue("gym"), seed=1)
    return SimulatedMqttDevice("t", "s", name, "air_monitor", name, "pw", 0.05, signal)


async def test_an_unreachable_broker_is_retried_and_stop_leaves_nothing_behind() -> None:
    device = _lone_device("am-nobroker")
    async with MqttFleet(
        [device], port=free_port(), backoff_base_s=0.02, backoff_cap_s=0.05, drain_timeout_s=0.05
    ) as fleet:
        await _until(lambda: fleet.stats()[device.device].connect_errors >= 3)
    stats = fleet.stats()[device.device]
    assert stats.connects == 0
    assert stats.in_flight == stats.published > 0, "readings are held while offline"
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_broker_that_never_answers_connect_is_given_up_on_and_retried() -> None:
    """TCP accepted, no CONNACK: after connect_timeout_s the device hangs up and tries again."""
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read()  # until the device hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    device = _lone_device("am-silent")
    try:
        async with MqttFleet(
            [device],
            port=port,
            connect_timeout_s=0.2,
            backoff_base_s=0.02,
            backoff_cap_s=0.05,
            drain_timeout_s=0.05,
        ) as fleet:
            await _until(lambda: connections >= 3)
    finally:
        server.close()
        await server.wait_closed()
    assert fleet.stats()[device.device].connect_errors >= 2
    assert fleet.stats()[device.device].connects == 0


async def test_devices_reconnect_after_a_broker_restart_without_losing_readings(
    tmp_path: Path,
) -> None:
    broker = LocalMosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        devices = make_devices(broker, 3, interval_s=0.02)
        async with MqttFleet(
            devices, port=broker.port, backoff_base_s=0.1, backoff_cap_s=0.5
        ) as fleet:
            stats = fleet.stats()
            await _until(lambda: all(s.acked >= 10 for s in stats.values()))
            await asyncio.to_thread(broker.stop)
            await _until(lambda: all(s.disconnects >= 1 for s in stats.values()))
            await asyncio.sleep(0.3)  # the devices keep measuring while the broker is away
            queued = {d: s.in_flight for d, s in stats.items()}
            await asyncio.to_thread(broker.start)
            await _until(lambda: all(s.connects >= 2 for s in stats.values()), timeout=10)
            await _until(lambda: all(s.acked > 30 for s in stats.values()))
        for device, s in stats.items():
            assert queued[device] > 5, "readings taken during the outage were held"
            assert s.in_flight == 0
            # At-least-once: every reading taken was acknowledged (retransmits may duplicate).
            assert set(s.acked_seqs) == set(range(1, s.generated + 1)), device
    finally:
        broker.stop()


# ---- scenarios: the demo's file is the one tested -----------------------------------------------


def test_the_demo_scenario_declares_two_tenants_and_feeds_the_directory() -> None:
    scenario = load_scenario("demo")
    assert len(scenario.tenants) == 2
    assert len(scenario.devices) == 6
    rows = directory_entries(scenario)
    assert all(set(row) == {"device", "tenant", "site", "kind", "region"} for row in rows)
    assert {row["region"] for row in rows} == {"110105", "310115", "440106"}
    assert {row["kind"] for row in rows} == {"air_monitor"}
    hotel = next(row for row in rows if row["device"] == "am-bjcy-0812")
    assert (hotel["tenant"], hotel["site"]) == ("huating-hotels", "htl-bj-chaoyang")


def test_scenario_errors_name_the_file_the_entry_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "tenants: [{id: t1, name: T}]\n"
        "sites:\n"
        "  - {id: s1, tenant: t1, name: S, region: 110105, venue: office, lat: 39.9, lon: 116.4}\n"
        "  - {id: s2, tenant: nobody, name: S, region: '1101', lat: 39.9, lon: 116.4}\n"
        "devices:\n"
        "  - {id: d1, kind: air_monitor, site: s1, params: {volume_m3: -5}}\n"
        "  - {id: d2, kind: air_monitor, site: s9}\n"
        "  - {id: d3, kind: teapot, site: s1}\n",
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "sites.1.region" in message  # field-level error, located
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad.with_name("missing.yaml"))
    assert "missing.yaml" in str(err.value)
    bad.write_text(bad.read_text().replace("region: '1101'", "region: '110101'"), encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    message = str(err.value)
    assert "sites[1] (s2).tenant: 'nobody' is not a tenant" in message
    assert "devices[0] (d1).params.volume_m3" in message
    assert "devices[1] (d2).site: 's9' is not a site" in message
    assert "devices[2] (d3).kind: no simulator for 'teapot'" in message


async def test_the_demo_scenario_runs_against_the_broker(mosquitto: LocalMosquitto) -> None:
    scenario = load_scenario("demo")
    fleet = build_fleet(
        scenario, mosquitto.allow_device, port=mosquitto.port, interval_s=0.05, max_messages=3
    )
    mosquitto.reload()
    last = fleet.devices[-1]
    deadline = time.monotonic() + 5
    while not _can_connect(mosquitto.port, last.username, last.password):
        assert time.monotonic() < deadline, "demo accounts not active after reload"
        await asyncio.sleep(0.05)
    with collector(mosquitto) as sink:
        async with fleet:
            async with asyncio.timeout(10):
                await fleet.wait_finished()
        await _until(lambda: len(sink.snapshot()) >= 6 * 3)
        received = sink.by_topic()
    for row in directory_entries(scenario):
        topic = telemetry_topic(row["tenant"], row["site"], row["device"])
        assert sorted(r["seq"] for r in received[topic]) == [1, 2, 3], topic
        assert fleet.stats()[row["device"]].acked == 3
