"""InfluxDB 1.x (Debian's ``influxdb``) on loopback, with authentication on from the first start."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from weijian.stack.process import ServerProcess, StackError, find_binary, free_port

CONFIG_TEMPLATE = """\
# Written by weijian; regenerated on every start.
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  # Flush the WAL often: the embedded default runs on small machines.
  cache-snapshot-write-cold-duration = "1m"

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[continuous_queries]
  enabled = true
  log-enabled = false
  run-interval = "{cq_interval}"

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  log-enabled = false
  max-body-size = {max_body_size}

[logging]
  level = "warn"
"""


@dataclass(frozen=True)
class InfluxCredentials:
    url: str
    username: str
    password: str


class LocalInfluxDB:
    """Runs ``influxd`` with its data under ``root``; creates the admin user on first start."""

    def __init__(
        self,
        root: Path,
        http_port: int | None = None,
        *,
        cq_interval: str = "1s",
        max_body_size: int = 25_000_000,
    ) -> None:
        self.root = root.resolve()
        self.http_port = http_port or free_port()
        self.rpc_port = free_port()
        self.cq_interval = cq_interval
        self.max_body_size = max_body_size
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._process: ServerProcess | None = None

    @property
    def credentials_file(self) -> Path:
        return self.root / "admin.credentials"

    def start(self, timeout: float = 60.0) -> InfluxCredentials:
        binary = find_binary("influxd", "/usr/bin", "/usr/sbin")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(
            CONFIG_TEMPLATE.format(
                root=self.root,
                rpc_port=self.rpc_port,
                http_port=self.http_port,
                cq_interval=self.cq_interval,
                max_body_size=self.max_body_size,
            )
        )
        self._process = ServerProcess(
            "influxd",
            [binary, "run", "-config", str(config), "-pidfile", str(self.root / "influxd.pid")],
            self.root / "influxd.log",
        )
        self._process.start(self._ping, timeout)
        return self._ensure_admin()

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as resp:
                return resp.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def _ensure_admin(self) -> InfluxCredentials:
        """Create the admin user once; its password is kept in the data directory, never in git."""
        if self.credentials_file.exists():
            user, password = self.credentials_file.read_text().strip().split(":", 1)
            return InfluxCredentials(self.url, user, password)
        user, password = "weijian_admin", secrets.token_urlsafe(24)
        query = f"CREATE USER {user} WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
        data = urllib.parse.urlencode({"q": query}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise StackError(
                f"cannot create the InfluxDB admin user ({exc.code}: {exc.read()[:200]!r}); "
                f"{self.root} holds users but not {self.credentials_file.name}: "
                f"remove {self.root} to start afresh"
            ) from exc
        if '"error"' in body:
            raise StackError(f"cannot create the InfluxDB admin user: {body[:300]}")
        self.credentials_file.write_text(f"{user}:{password}\n")
        self.credentials_file.chmod(0o600)
        return InfluxCredentials(self.url, user, password)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def kill(self) -> None:
        """Stop abruptly (tests use it to simulate an outage)."""
        if self._process is not None and self._process.proc is not None:
            self._process.proc.kill()
            self._process.proc.wait(10)
            self._process.proc = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
