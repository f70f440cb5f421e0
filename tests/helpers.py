"""Small real-protocol helpers shared by tests: a device that publishes and remembers its acks."""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from protocols.directory import DeviceInfo, StaticDirectory
from weijian.config import InfluxSettings, MetricsSettings, MqttSettings, Settings, SpoolSettings
from weijian.stack.mosquitto import LocalMosquitto


class Publisher:
    """A device's MQTT connection on paho's own thread; ``acked`` holds the PUBACKed keys."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self._lock = threading.Lock()
        self._mid_to_key: dict[int, Any] = {}
        self._early: set[int] = set()  # PUBACKs that arrived before publish() returned the mid
        self.acked: list[Any] = []
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, "publisher did not connect")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # paho holds its own mutex here; never call into paho while holding ours (deadlock).
        with self._lock:
            if mid in self._mid_to_key:
                self.acked.append(self._mid_to_key.pop(mid))
            else:
                self._early.add(mid)

    def publish(
        self, topic: str, payload: bytes | dict[str, Any], key: Any = None, qos: int = 1
    ) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = self.client.publish(topic, body, qos=qos)
        if key is None:
            return
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.append(key)
            else:
                self._mid_to_key[info.mid] = key

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:.0f}s)")
        time.sleep(0.05)


def platform_settings(
    tmp_path: Path,
    influx: Any,
    broker: LocalMosquitto,
    database: str,
    **overrides: Any,
) -> Settings:
    collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    return Settings(
        data_dir=tmp_path / "data",
        influx=InfluxSettings(
            url=influx.url,
            username=influx.creds.username,
            password=influx.creds.password,
            database=database,
            tenant_database_prefix=f"{database}_t_",
        ),
        mqtt=MqttSettings(
            port=broker.port,
            password=collector.password,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
        ),
        spool=overrides.pop("spool", SpoolSettings()),
        metrics=overrides.pop("metrics", MetricsSettings(port=0)),
        **overrides,
    )


def register(
    broker: LocalMosquitto, directory: StaticDirectory, *devices: DeviceInfo
) -> dict[str, str]:
    """Put devices in the directory and give each a broker account; returns device -> password."""
    passwords = {}
    for d in devices:
        directory.add(d)
        passwords[d.device] = broker.allow_device(d.device, d.tenant, d.site).password
    broker.reload()
    time.sleep(0.1)  # SIGHUP is asynchronous
    return passwords


def serve_env(
    influx: Any,
    broker: LocalMosquitto,
    data_dir: Path,
    database: str,
    metrics_port: int,
    **extra: str,
) -> dict[str, str]:
    """Environment for a `weijian serve` subprocess pointed at the test servers."""
    collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    return {
        **os.environ,
        "WEIJIAN_DATA_DIR": str(data_dir),
        "WEIJIAN_DEVICES_FILE": str(data_dir / "devices.yaml"),
        "WEIJIAN_INFLUX__URL": influx.url,
        "WEIJIAN_INFLUX__USERNAME": influx.creds.username,
        "WEIJIAN_INFLUX__PASSWORD": influx.creds.password,
        "WEIJIAN_INFLUX__DATABASE": database,
        "WEIJIAN_MQTT__PORT": str(broker.port),
        "WEIJIAN_MQTT__PASSWORD": collector.password,
        "WEIJIAN_MQTT__CLIENT_ID": f"collector-{uuid.uuid4().hex[:6]}",
        "WEIJIAN_METRICS__PORT": str(metrics_port),
        **extra,
    }


def metric(port: int, name: str) -> float | None:
    """Sum of a metric's samples over all label sets; None while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except (OSError, http.client.HTTPException):  # not up yet (even a TCP self-connect)
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return sum(values) if values else None


def connack(port: int, username: str, password: str) -> int:
    """One MQTT v5 CONNECT; the CONNACK's reason code (no network thread: a refusal is quick)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    client.loop(0.01)
    assert codes, "no CONNACK"
    return codes[0]
