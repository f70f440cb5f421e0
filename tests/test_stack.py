"""The embedded stack's launchers: servers start with authentication on and refuse strangers."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from weijian.stack.influxd import LocalInfluxDB
from weijian.stack.mosquitto import LocalMosquitto


def _connects(port: int, username: str | None, password: str | None) -> bool:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    outcome: list[bool] = []
    client.on_connect = lambda c, u, f, rc, p: outcome.append(not rc.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    assert outcome, "no CONNACK within 5 s"
    return outcome[0]


def test_mosquitto_refuses_anonymous_and_wrong_passwords(mosquitto: LocalMosquitto) -> None:
    account = mosquitto.ensure_account(LocalMosquitto.COLLECTOR_USER)
    assert _connects(mosquitto.port, account.username, account.password)
    assert not _connects(mosquitto.port, None, None)
    assert not _connects(mosquitto.port, account.username, account.password + "x")


def test_mosquitto_reload_admits_a_new_device_without_restart(mosquitto: LocalMosquitto) -> None:
    account = mosquitto.allow_device("stack-test-dev", "t1", "s1")
    mosquitto.reload()
    deadline = time.monotonic() + 5
    while not _connects(mosquitto.port, account.username, account.password):
        assert time.monotonic() < deadline, "new account not accepted after SIGHUP"
        time.sleep(0.1)


def test_influxdb_requires_authentication(influx) -> None:
    data = urllib.parse.urlencode({"q": "SHOW DATABASES"}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{influx.url}/query", data=data, timeout=5)
    assert err.value.code == 401
    err.value.close()  # an HTTPError holds the response's socket
    assert "results" in influx.query("SHOW DATABASES")


def test_influxdb_restart_keeps_data_and_admin(tmp_path) -> None:
    server = LocalInfluxDB(tmp_path / "influx")
    creds = server.start()
    server.stop()
    again = LocalInfluxDB(tmp_path / "influx", http_port=server.http_port)
    assert again.start() == creds
    again.stop()
