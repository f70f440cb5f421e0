"""Real servers for the tests: InfluxDB and Mosquitto on free loopback ports, started once.

Nothing here is mocked: the same launchers serve ``weijian run``. Each test that writes data gets
its own database name, so tests stay independent while sharing one server.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from weijian.stack.influxd import InfluxCredentials, LocalInfluxDB
from weijian.stack.mosquitto import LocalMosquitto


@dataclass
class InfluxServer:
    server: LocalInfluxDB
    creds: InfluxCredentials

    @property
    def url(self) -> str:
        return self.creds.url

    def query(self, q: str, db: str | None = None) -> dict:
        """Run InfluxQL as the admin (POST, so DDL works too) and return the decoded JSON."""
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        token = base64.b64encode(f"{self.creds.username}:{self.creds.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def count(self, db: str, measurement: str, field: str) -> int:
        result = self.query(f'SELECT count("{field}") FROM "{measurement}"', db)["results"][0]
        series = result.get("series")
        return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = LocalInfluxDB(tmp_path_factory.mktemp("influxdb"))
    creds = server.start()
    yield InfluxServer(server, creds)
    server.stop()


@pytest.fixture
def influx_db(influx: InfluxServer) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influx.query(f'CREATE DATABASE "{name}"')
    yield name
    influx.query(f'DROP DATABASE "{name}"')


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    broker = LocalMosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
