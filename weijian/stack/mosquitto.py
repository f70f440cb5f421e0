"""Mosquitto (Debian's package) on loopback with password authentication and per-device ACLs."""

from __future__ import annotations

import getpass
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protocols.mosquitto_auth import (
    DeviceAccess,
    ReloadError,
    ServiceAccount,
    hash_password,
    read_device_entries,
    reload_broker,
    verify_password,
    write_device_entries,
    write_managed_block,
)
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


def _verifies(password: str, encoded: str | None) -> bool:
    try:
        return encoded is not None and verify_password(password, encoded)
    except ValueError:
        return False


class LocalMosquitto:
    """Runs ``mosquitto`` with its files under ``root``, following the compose broker's contract.

    ``passwd`` and ``acl`` are written with :mod:`protocols.mosquitto_auth`: service accounts
    (the collector, anything made with ``ensure_account``) in the managed block, devices outside
    it. Device entries persist in those files across restarts. Accounts this class invents
    itself also keep their plaintext in ``accounts`` (mode 0600, project-local data directory)
    so the demo and simulators can log in; devices installed with ``set_devices`` (hashes from
    the registry) have none. Changes are made in memory and applied by ``reload()`` (or
    ``start()``): files rewritten, then SIGHUP, with no restart.
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
        self._lock = threading.RLock()
        self._services: set[str] = {self.COLLECTOR_USER}
        self._service_hashes: dict[str, str] = {}
        self._devices: dict[str, DeviceAccess] | None = None  # loaded from the files on first use

    # ---- files -------------------------------------------------------------------------------

    @property
    def accounts_file(self) -> Path:
        return self.root / "accounts"

    @property
    def passwd_file(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    @property
    def pid(self) -> int | None:
        """The running broker's process id (what ``reload()`` signals)."""
        if self._process is None or self._process.proc is None or not self._process.running:
            return None
        return self._process.proc.pid

    # ---- accounts ----------------------------------------------------------------------------

    def accounts(self) -> dict[str, str]:
        """Plaintext passwords of the accounts this class created (not registry-hashed ones)."""
        if not self.accounts_file.exists():
            return {}
        pairs = (line.split(":", 1) for line in self.accounts_file.read_text().splitlines() if line)
        return {user: password for user, password in pairs}

    def _save_accounts(self, accounts: dict[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.accounts_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{u}:{p}\n" for u, p in sorted(accounts.items())))
        tmp.chmod(0o600)
        os.replace(tmp, self.accounts_file)

    def _password(self, username: str) -> str:
        accounts = self.accounts()
        if username not in accounts:
            accounts[username] = secrets.token_urlsafe(18)
            self._save_accounts(accounts)
        return accounts[username]

    def _device_map(self) -> dict[str, DeviceAccess]:
        if self._devices is None:
            found = read_device_entries(self.passwd_file, self.acl_file)
            # Files from before the managed block had the collector's section outside it.
            self._devices = {d.username: d for d in found if d.username not in self._services}
        return self._devices

    def ensure_account(self, username: str) -> MqttAccount:
        """Return the account, creating it with a random password if it does not exist yet.

        A name that is not a device becomes a service account (managed block); the collector
        gets its read grants, others may only connect. A device installed with a registry hash
        has no password known here: ValueError rather than a password that would not work.
        """
        with self._lock:
            device = self._device_map().get(username)
            if device is not None:
                known = self.accounts().get(username)
                if known is None or not _verifies(known, device.password_hash):
                    raise ValueError(f"{username}'s password was issued by the registry")
                return MqttAccount(username, known)
            password = self._password(username)
            self._services.add(username)
            return MqttAccount(username, password)

    def allow_device(self, device: str, tenant: str, site: str) -> MqttAccount:
        """A device account that may publish only to its own telemetry topic."""
        with self._lock:
            if device == self.COLLECTOR_USER:
                raise ValueError(f"{device} is the collector's account, not a device")
            self._services.discard(device)
            password = self._password(device)
            devices = self._device_map()
            current = devices.get(device)
            encoded = current.password_hash if current else None
            if not _verifies(password, encoded):
                encoded = hash_password(password)
            assert encoded is not None
            topic = f"{self.topic_prefix}/{tenant}/{site}/{device}/#"
            devices[device] = DeviceAccess(device, encoded, (topic,))
            return MqttAccount(device, password)

    def set_devices(self, devices: Iterable[DeviceAccess]) -> None:
        """Replace every device entry with externally hashed ones (the registry's); then reload().

        Plaintext passwords kept for devices are dropped unless they still match the new hash.
        """
        with self._lock:
            given = list(devices)
            new = {d.username: d for d in given}
            if len(new) != len(given):
                raise ValueError("a device is given twice")
            clash = sorted(set(new) & self._services)
            if clash:
                raise ValueError(f"{', '.join(clash)} are service accounts, not devices")
            self._devices = new
            accounts = self.accounts()
            kept = {
                user: password
                for user, password in accounts.items()
                if user in self._services
                or (user in new and _verifies(password, new[user].password_hash))
            }
            if kept != accounts:
                self._save_accounts(kept)

    def revoke_device(self, device: str) -> bool:
        """Remove a device's account and grants (and its kept plaintext); apply with reload().

        Returns whether the device had an entry.
        """
        with self._lock:
            existed = self._device_map().pop(device, None) is not None
            accounts = self.accounts()
            if device in accounts and device not in self._services:
                del accounts[device]
                self._save_accounts(accounts)
            return existed

    def devices(self) -> list[DeviceAccess]:
        """The device entries ``reload()`` writes, sorted by username."""
        with self._lock:
            return sorted(self._device_map().values(), key=lambda d: d.username)

    def _service_accounts(self) -> list[ServiceAccount]:
        accounts = self.accounts()
        on_disk = {
            user: encoded
            for user, _, encoded in (
                line.partition(":")
                for line in (
                    self.passwd_file.read_text().splitlines() if self.passwd_file.exists() else ()
                )
            )
        }
        services = []
        for user in sorted(self._services):
            password = accounts.get(user) or self._password(user)
            encoded = self._service_hashes.get(user) or on_disk.get(user)
            if not _verifies(password, encoded):
                encoded = hash_password(password)
            assert encoded is not None
            self._service_hashes[user] = encoded
            acl: tuple[str, ...] = ()
            if user == self.COLLECTOR_USER:
                acl = (
                    f"topic read {self.topic_prefix}/+/+/+/telemetry",
                    f"topic readwrite {self.topic_prefix}/_system/#",
                )
            services.append(ServiceAccount(user, encoded, acl))
        return services

    def write_auth_files(self) -> bool:
        """Write the managed block, then the device entries; True if either file changed."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            devices = self._device_map()  # before the block moves: it decides what is a device
            passwd, acl = self.passwd_file, self.acl_file
            block = write_managed_block(passwd, acl, self._service_accounts())
            return write_device_entries(passwd, acl, devices.values()) or block

    # ---- process -----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        binary = find_binary("mosquitto", "/usr/sbin", "/usr/bin")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
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

    def reload(self) -> bool:
        """Apply account changes without dropping connections: rewrite the files, SIGHUP.

        Signals even when the files did not change (they may have been written by someone
        else). Returns whether this call changed them. SIGHUP is asynchronous: the broker
        applies it a moment later.
        """
        changed = self.write_auth_files()
        pid = self.pid
        if pid is None:
            raise StackError("mosquitto is not running")
        try:
            reload_broker(pid=pid)
        except ReloadError as err:
            raise StackError(str(err)) from err
        return changed

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
