"""Mosquitto (Debian's package) on loopback with password authentication and per-device ACLs."""

from __future__ import annotations

import getpass
import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from weijian.stack.process import ServerProcess, StackError, find_binary, free_port, port_open

CONFIG_TEMPLATE = """\
# Written by weijian; regenerated on every start.
{user_line}
listener {port} 127.0.0.1
allow_anonymous false
password_file {root}/passwd
acl_file {root}/acl
persistence true
persistence_location {root}/data/
autosave_interval 10
# The collector keeps a persistent session: hold its QoS 1 backlog while it restarts.
max_queued_messages 1000000
max_inflight_messages 1000
max_packet_size {max_packet_size}
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages false
"""


@dataclass(frozen=True)
class MqttAccount:
    username: str
    password: str


class LocalMosquitto:
    """Runs ``mosquitto`` with its files under ``root``.

    Accounts live in ``accounts`` (plaintext, mode 0600, in the project-local data directory) and
    are hashed into the password file at every write; ``reload()`` applies changes with SIGHUP.
    """

    COLLECTOR_USER = "weijian-collector"

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        *,
        topic_prefix: str = "weijian/v1",
        max_packet_size: int = 1 << 20,
    ) -> None:
        self.root = root.resolve()
        self.port = port or free_port()
        self.topic_prefix = topic_prefix
        self.max_packet_size = max_packet_size
        self._process: ServerProcess | None = None
        self._device_topics: dict[str, str] = {}

    @property
    def accounts_file(self) -> Path:
        return self.root / "accounts"

    def accounts(self) -> dict[str, str]:
        if not self.accounts_file.exists():
            return {}
        pairs = (line.split(":", 1) for line in self.accounts_file.read_text().splitlines() if line)
        return {user: password for user, password in pairs}

    def ensure_account(self, username: str) -> MqttAccount:
        """Return the account, creating it with a random password if it does not exist yet."""
        accounts = self.accounts()
        if username not in accounts:
            accounts[username] = secrets.token_urlsafe(18)
            self._save_accounts(accounts)
        return MqttAccount(username, accounts[username])

    def allow_device(self, device: str, tenant: str, site: str) -> MqttAccount:
        """A device account that may publish only to its own telemetry topic."""
        self._device_topics[device] = f"{self.topic_prefix}/{tenant}/{site}/{device}/#"
        return self.ensure_account(device)

    def _save_accounts(self, accounts: dict[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{u}:{p}\n" for u, p in sorted(accounts.items())))
        tmp.chmod(0o600)
        os.replace(tmp, self.accounts_file)

    def write_auth_files(self) -> None:
        """Hash the accounts into mosquitto's password file and write the ACL file."""
        self.root.mkdir(parents=True, exist_ok=True)
        passwd = self.root / "passwd"
        tmp = self.root / "passwd.tmp"
        tmp.write_text("".join(f"{u}:{p}\n" for u, p in sorted(self.accounts().items())))
        tmp.chmod(0o600)
        hasher = find_binary("mosquitto_passwd", "/usr/bin", "/usr/sbin")
        subprocess.run([hasher, "-U", str(tmp)], check=True, capture_output=True)
        os.replace(tmp, passwd)
        acl = [
            f"user {self.COLLECTOR_USER}",
            f"topic read {self.topic_prefix}/+/+/+/telemetry",
            f"topic readwrite {self.topic_prefix}/_system/#",
            "",
        ]
        for device, topic in sorted(self._device_topics.items()):
            acl += [f"user {device}", f"topic write {topic}", ""]
        (self.root / "acl").write_text("\n".join(acl))

    def start(self, timeout: float = 15.0) -> None:
        binary = find_binary("mosquitto", "/usr/sbin", "/usr/bin")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.ensure_account(self.COLLECTOR_USER)
        self.write_auth_files()
        # As root, mosquitto drops to user 'mosquitto' unless told otherwise; these files are ours.
        user_line = f"user {getpass.getuser()}"
        config = self.root / "mosquitto.conf"
        config.write_text(
            CONFIG_TEMPLATE.format(
                user_line=user_line,
                port=self.port,
                root=self.root,
                max_packet_size=self.max_packet_size,
            )
        )
        self._process = ServerProcess(
            "mosquitto", [binary, "-c", str(config)], self.root / "mosquitto.log"
        )
        self._process.start(lambda: port_open("127.0.0.1", self.port), timeout)

    def reload(self) -> None:
        """Re-read password and ACL files without dropping connections."""
        self.write_auth_files()
        if self._process is None or not self._process.running:
            raise StackError("mosquitto is not running")
        self._process.signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
