"""Mosquitto's password/ACL files as a library, checked against mosquitto_passwd and real brokers.

Each broker test starts its own ``LocalMosquitto`` (revocation and rotation change accounts);
the compose path runs deploy/mosquitto/docker-entrypoint.sh with its file watcher for real.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from protocols import mosquitto_auth
from protocols.mosquitto_auth import (
    DeviceAccess,
    ReloadError,
    ServiceAccount,
    hash_password,
    read_device_entries,
    reload_broker,
    render_acl,
    verify_password,
    write_device_entries,
    write_managed_block,
)
from tests.helpers import connack as _connack
from tests.helpers import wait_for
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import free_port, port_open

ENTRYPOINT = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "docker-entrypoint.sh"
PREFIX = "weijian/v1"
NOT_AUTHORIZED = 135  # MQTT v5 reason code 0x87
# 2.0.11 refuses a bad user name or password with CONNACK 0x87 too (not 0x86).
REFUSED = NOT_AUTHORIZED

pytestmark = pytest.mark.skipif(
    not shutil.which("mosquitto_passwd") or not Path("/usr/sbin/mosquitto").exists(),
    reason="Debian's mosquitto is not installed",
)


def _passwd_line(tmp_path: Path, user: str, password: str, *extra: str) -> str:
    """The hash mosquitto_passwd itself writes for ``password``."""
    path = tmp_path / f"mp-{uuid.uuid4().hex[:6]}"
    path.touch()
    subprocess.run(
        ["mosquitto_passwd", *extra, "-b", str(path), user, password],
        check=True,
        capture_output=True,
        timeout=10,
    )
    name, encoded = path.read_text().strip().split(":", 1)
    assert name == user
    return encoded


def _device(name: str, password: str, tenant: str = "t1", site: str = "s1") -> DeviceAccess:
    return DeviceAccess(name, hash_password(password), (f"{PREFIX}/{tenant}/{site}/{name}/#",))


def _topic(name: str, tenant: str = "t1", site: str = "s1") -> str:
    return f"{PREFIX}/{tenant}/{site}/{name}/telemetry"


# ---- hashes -----------------------------------------------------------------------------------


def test_hash_is_byte_for_byte_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    theirs = _passwd_line(tmp_path, "dev-1", "s3cret:with colon ü")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", theirs), theirs
    salt = base64.b64decode(theirs.split("$")[3])
    assert len(salt) == 12
    assert hash_password("s3cret:with colon ü", salt=salt) == theirs
    assert verify_password("s3cret:with colon ü", theirs)
    assert not verify_password("s3cret:with colon u", theirs)

    ours = hash_password("s3cret")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", ours), ours
    assert ours != hash_password("s3cret"), "a fresh salt every time"
    assert verify_password("s3cret", hash_password("s3cret", iterations=1000))

    legacy = _passwd_line(tmp_path, "dev-1", "old-device", "-H", "sha512")
    assert legacy.startswith("$6$")
    assert verify_password("old-device", legacy)
    assert not verify_password("old-device!", legacy)
    for broken in ("plaintext", "$7$abc$AAAA$AAAA", "$6$!!$AAAA", "$7$101$AAAA$AAAA"):
        with pytest.raises(ValueError, match="hash"):
            verify_password("x", broken)

    # Cheap on purpose (mosquitto runs it on every CONNECT): report the cost.
    started = time.perf_counter()
    for _ in range(200):
        hash_password("s3cret")
    per_hash = (time.perf_counter() - started) / 200
    print(f"hash_password: {per_hash * 1e6:.0f} µs per password")
    assert per_hash < 0.01


def test_bad_usernames_topics_and_acl_lines_are_refused_clearly() -> None:
    good = hash_password("x")
    for name in ("", "a:b", "a b", "a\nb", "dev#1", "dev+1", "tab\t"):
        with pytest.raises(ValueError, match="username"):
            DeviceAccess(name, good, ())
    for topic in ("", "a b", "a/#/b", "a/b#", "a/+x/b", "a\n"):
        with pytest.raises(ValueError, match="topic"):
            DeviceAccess("dev", good, (topic,))
    with pytest.raises(ValueError, match="hash"):
        DeviceAccess("dev", "plaintext-password", ())
    with pytest.raises(ValueError, match="ACL line"):
        ServiceAccount("svc", good, ("user other",))
    assert DeviceAccess("dev", good, ["a/+/b/#"]).publish_topics == ("a/+/b/#",)


def test_render_acl_sorts_devices_into_user_sections() -> None:
    good = hash_password("x")
    text = render_acl(
        [DeviceAccess("b", good, ("t/b/#",)), DeviceAccess("a", good, ("t/a/1", "t/a/2"))]
    )
    assert text == "user a\ntopic write t/a/1\ntopic write t/a/2\n\nuser b\ntopic write t/b/#\n"
    assert render_acl([]) == ""


# ---- the two-writer files ---------------------------------------------------------------------


def _run_entrypoint(auth_dir: Path, password: str = "collector-pw", *cmd: str) -> None:
    subprocess.run(
        ["sh", str(ENTRYPOINT), *(cmd or ("true",))],
        env={
            "PATH": os.environ["PATH"],
            "MOSQUITTO_AUTH_DIR": str(auth_dir),
            "MQTT_COLLECTOR_PASSWORD": password,
        },
        check=True,
        capture_output=True,
        timeout=10,
    )


def test_device_entries_keep_the_entrypoints_block_and_are_idempotent(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    passwd, acl = auth / "passwd", auth / "acl"
    _run_entrypoint(auth)
    collector_line = passwd.read_text()
    block = acl.read_text()
    assert collector_line.startswith("weijian-collector:$7$")

    devices = [_device("dev-2", "p2"), _device("dev-1", "p1", "t9", "s9")]
    assert write_device_entries(passwd, acl, devices) is True
    lines = passwd.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["dev-1", "dev-2", "weijian-collector"]
    assert lines[-1] + "\n" == collector_line, "the collector's line is kept byte for byte"
    text = acl.read_text()
    assert text.endswith(block), "the managed block is kept, last"
    assert text.index("user dev-1") < text.index("user dev-2") < text.index("# BEGIN")
    assert f"topic write {PREFIX}/t9/s9/dev-1/#" in text
    for path in (passwd, acl):
        assert path.stat().st_mode & 0o777 == 0o600

    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (passwd, acl)}
    assert write_device_entries(passwd, acl, reversed(devices)) is False, "same set, any order"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (passwd, acl)} == before
    assert {d.username: d for d in read_device_entries(passwd, acl)} == {
        d.username: d for d in devices
    }

    # A container restart re-runs the entrypoint: the registry's entries stay, once each.
    _run_entrypoint(auth, "collector-pw-2")
    assert passwd.read_text().count("dev-1:") == 1
    assert passwd.read_text().count("weijian-collector:") == 1
    assert acl.read_text().count("# BEGIN weijian-platform") == 1
    assert sorted(read_device_entries(passwd, acl), key=lambda d: d.username) == sorted(
        devices, key=lambda d: d.username
    )
    assert write_device_entries(passwd, acl, devices) is False, "the entrypoint's layout is ours"

    # Revocation: an empty set leaves only the platform's part.
    assert write_device_entries(passwd, acl, []) is True
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["weijian-collector"]
    assert acl.read_text().startswith("# BEGIN weijian-platform")
    assert not [p.name for p in auth.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_managed_block_written_from_python_follows_the_same_contract(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    passwd, acl = auth / "passwd", auth / "acl"
    _run_entrypoint(auth)
    write_device_entries(passwd, acl, [_device("dev-1", "p1")])
    old_service = ServiceAccount("old-collector", hash_password("x"), ())
    write_managed_block(passwd, acl, [old_service])
    # The old block's users lose their lines (weijian-collector), devices keep theirs.
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == [
        "dev-1",
        "old-collector",
    ]
    collector = ServiceAccount(
        "weijian-collector", hash_password("pw"), (f"topic read {PREFIX}/+/+/+/telemetry",)
    )
    assert write_managed_block(passwd, acl, [collector]) is True
    assert write_managed_block(passwd, acl, [collector]) is False
    assert "old-collector" not in passwd.read_text()
    text = acl.read_text()
    assert text.count("# BEGIN weijian-platform") == 1
    assert text.rstrip().endswith("# END weijian-platform")
    assert text.index("user dev-1") < text.index("user weijian-collector")
    # And the entrypoint takes a Python-written block over.
    _run_entrypoint(auth)
    assert acl.read_text().count("# BEGIN weijian-platform") == 1
    assert passwd.read_text().count("weijian-collector:") == 1
    assert write_device_entries(passwd, acl, [_device("dev-1", "p1")]) is True  # new salt
    with pytest.raises(ValueError, match="managed block"):
        write_device_entries(passwd, acl, [_device("weijian-collector", "p")])
    with pytest.raises(ValueError, match="twice"):
        write_device_entries(passwd, acl, [_device("dev-1", "a"), _device("dev-1", "b")])


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    write_device_entries(passwd, acl, [_device("dev-1", "p1")])
    old = (passwd.read_bytes(), acl.read_bytes(), passwd.stat().st_ino)

    def fail(*_args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mosquitto_auth.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_device_entries(passwd, acl, [_device("dev-2", "p2")])
    monkeypatch.undo()
    assert (passwd.read_bytes(), acl.read_bytes(), passwd.stat().st_ino) == old
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "acl",
        "passwd",
    ], "no temp file left behind"
    write_device_entries(passwd, acl, [_device("dev-2", "p2")])
    assert passwd.stat().st_ino != old[2], "replaced, never rewritten in place"


def test_reload_broker_errors_name_the_problem(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(ReloadError, match=f"no process {gone.pid}"):
        reload_broker(pid=gone.pid)
    with pytest.raises(ReloadError, match="cannot read"):
        reload_broker(pidfile=tmp_path / "missing.pid")
    (tmp_path / "bad.pid").write_text("mosquitto\n")
    with pytest.raises(ReloadError, match="does not hold a process id"):
        reload_broker(pidfile=tmp_path / "bad.pid")
    with pytest.raises(ReloadError, match="refusing"):
        reload_broker(pid=0)
    with pytest.raises(ValueError, match="exactly one"):
        reload_broker()


# ---- real brokers -----------------------------------------------------------------------------


class _Client:
    """A paho v5 client that records CONNACK, PUBACK reason codes, disconnects and messages."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"auth-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.dropped = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, 5, "no CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connack is None:
            self.connack = rc.value

    def _on_disconnect(self, client: mqtt.Client, *_args: Any) -> None:
        self.dropped.set()
        client.disconnect()  # no reconnecting: a dropped client stays dropped in the test

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, 5, f"no PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    b = LocalMosquitto(tmp_path / "mqtt")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def collector(broker: LocalMosquitto) -> Iterator[_Client]:
    account = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    client = _Client(broker.port, account.username, account.password)
    client.client.subscribe(f"{PREFIX}/+/+/+/telemetry", qos=1)
    assert client.subscribed.wait(5)
    yield client
    client.close()


def test_hashes_from_python_and_from_mosquitto_passwd_both_log_in(
    broker: LocalMosquitto, tmp_path: Path
) -> None:
    theirs = _passwd_line(tmp_path, "dev-m", "from-mosquitto-passwd")
    broker.set_devices(
        [
            _device("dev-p", "from-python"),
            DeviceAccess("dev-m", theirs, (f"{PREFIX}/t1/s1/dev-m/#",)),
        ]
    )
    broker.reload()
    wait_for(lambda: _connack(broker.port, "dev-p", "from-python") == 0, 10, "python hash")
    assert _connack(broker.port, "dev-m", "from-mosquitto-passwd") == 0
    assert _connack(broker.port, "dev-p", "from-python!") == REFUSED
    # The collector's own line survived set_devices (it lives in the managed block).
    account = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    assert _connack(broker.port, account.username, account.password) == 0
    assert "from-python" not in broker.passwd_file.read_text()


def test_a_device_cannot_publish_as_another(broker: LocalMosquitto, collector: _Client) -> None:
    a = broker.allow_device("dev-a", "t1", "s1")
    broker.allow_device("dev-b", "t1", "s1")
    broker.reload()
    wait_for(lambda: _connack(broker.port, a.username, a.password) == 0, 10, "dev-a admitted")
    device = _Client(broker.port, a.username, a.password)
    try:
        # mosquitto 2.0.11 tells an MQTT v5 publisher: PUBACK 0x87 Not authorized.
        assert device.publish(_topic("dev-b"), b"forged") == NOT_AUTHORIZED
        assert device.publish(_topic("dev-a"), b"real") == 0
        wait_for(lambda: collector.messages, 10, "own topic not delivered")
        time.sleep(0.1)  # one connection's packets are handled in order; nothing else may follow
        assert collector.messages == [(_topic("dev-a"), b"real")]
    finally:
        device.close()


def test_a_revoked_device_is_dropped_and_refused_without_a_restart(
    broker: LocalMosquitto, collector: _Client
) -> None:
    a = broker.allow_device("dev-a", "t1", "s1")
    broker.reload()
    wait_for(lambda: _connack(broker.port, a.username, a.password) == 0, 10, "dev-a admitted")
    device = _Client(broker.port, a.username, a.password)
    pid = broker.pid
    try:
        assert device.publish(_topic("dev-a"), b"before") == 0
        assert broker.revoke_device("dev-a") is True
        assert "dev-a" not in broker.accounts()
        assert broker.reload() is True
        # 2.0.11 re-checks connected clients on reload: the revoked one is disconnected at once
        # (the socket is closed; no DISCONNECT packet), so it cannot publish anything more.
        assert device.dropped.wait(3), "a connected revoked device kept its connection"
        assert _connack(broker.port, a.username, a.password) == REFUSED
        assert broker.pid == pid, "applied by SIGHUP, not a restart"
        time.sleep(0.1)
        assert collector.messages == [(_topic("dev-a"), b"before")]
    finally:
        device.close()
    assert broker.revoke_device("dev-a") is False
    assert broker.reload() is False, "nothing left to change"


def test_rotation_refuses_the_old_password_and_accepts_the_new(broker: LocalMosquitto) -> None:
    broker.set_devices([_device("dev-r", "old-password")])
    broker.reload()
    wait_for(lambda: _connack(broker.port, "dev-r", "old-password") == 0, 10, "dev-r admitted")
    connected = _Client(broker.port, "dev-r", "old-password")
    pid = broker.pid
    try:
        broker.set_devices([_device("dev-r", "new-password")])
        assert broker.reload() is True
        wait_for(lambda: _connack(broker.port, "dev-r", "new-password") == 0, 10, "new password")
        assert _connack(broker.port, "dev-r", "old-password") == REFUSED
        assert broker.pid == pid
        # A session opened with the old password is closed too (same re-check as revocation).
        assert connected.dropped.wait(3)
    finally:
        connected.close()


def test_embedded_broker_keeps_device_entries_across_restarts(tmp_path: Path) -> None:
    first = LocalMosquitto(tmp_path / "mqtt")
    account = first.allow_device("dev-k", "t1", "s1")
    first.set_devices([*first.devices(), _device("dev-h", "hashed-only")])
    first.start()
    first.stop()
    again = LocalMosquitto(tmp_path / "mqtt", port=first.port)
    assert [d.username for d in again.devices()] == ["dev-h", "dev-k"]
    assert again.accounts()["dev-k"] == account.password
    assert "dev-h" not in again.accounts(), "no plaintext for registry-hashed devices"
    assert again.ensure_account("dev-k") == account
    with pytest.raises(ValueError, match="registry"):
        again.ensure_account("dev-h")
    assert again.write_auth_files() is False, "hashes are reused, not re-salted"
    again.start()
    try:
        assert _connack(again.port, "dev-k", account.password) == 0
        assert _connack(again.port, "dev-h", "hashed-only") == 0
    finally:
        again.stop()


# ---- the compose broker's watcher -------------------------------------------------------------


def _entrypoint(tmp_path: Path, *cmd: str) -> subprocess.Popen[bytes]:
    with (tmp_path / "entrypoint.log").open("wb") as log:
        return subprocess.Popen(
            ["sh", str(ENTRYPOINT), *cmd],
            env={
                "PATH": os.environ["PATH"],
                "MOSQUITTO_AUTH_DIR": str(tmp_path / "auth"),
                "MQTT_COLLECTOR_PASSWORD": "collector-pw",
                "MOSQUITTO_AUTH_POLL": "0.1",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _end(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_watcher_reloads_the_real_broker_when_the_registry_writes(tmp_path: Path) -> None:
    port = free_port()
    auth = tmp_path / "auth"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
        f"allow_anonymous false\npassword_file {auth}/passwd\nacl_file {auth}/acl\n"
    )
    process = _entrypoint(tmp_path, "/usr/sbin/mosquitto", "-c", str(conf))
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 5, "broker did not listen")
        assert write_device_entries(auth / "passwd", auth / "acl", [_device("dev-w", "pw")])
        # No signal from us: the entrypoint's watcher notices the change and sends SIGHUP.
        wait_for(lambda: _connack(port, "dev-w", "pw") == 0, 10, "watcher did not reload")
        assert write_device_entries(auth / "passwd", auth / "acl", [])
        wait_for(lambda: _connack(port, "dev-w", "pw") == REFUSED, 10, "not revoked")
        assert process.poll() is None, "the broker was restarted or killed"
        log = (tmp_path / "entrypoint.log").read_text()
        assert f"sent SIGHUP to mosquitto (pid {process.pid})" in log
    finally:
        _end(process)


def test_watcher_waits_until_the_broker_handles_sighup(tmp_path: Path) -> None:
    """SIGHUP would kill a process that has no handler yet: the change is held until it has."""
    hups = tmp_path / "hups"
    fake = tmp_path / "bin" / "mosquitto"  # comm is the script's name, as for the real broker
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "sleep 0.6\n"
        f"trap 'echo hup >>{hups}' HUP\n"
        f"echo ready >{tmp_path}/ready\n"
        "while :; do sleep 0.05; done\n"
    )
    fake.chmod(0o755)
    process = _entrypoint(tmp_path, str(fake))
    try:
        auth = tmp_path / "auth"
        wait_for(lambda: (auth / "acl").exists() and (auth / "passwd").stat().st_size, 10, "files")
        time.sleep(0.2)
        write_device_entries(auth / "passwd", auth / "acl", [_device("dev-1", "p")])
        time.sleep(0.3)  # several polls while the "broker" has no SIGHUP handler yet
        assert process.poll() is None, "signalled before the handler was installed"
        assert not hups.exists()
        wait_for(lambda: hups.exists(), 10, "the pending change was never signalled")
        write_device_entries(auth / "passwd", auth / "acl", [])
        wait_for(lambda: hups.read_text().count("hup") == 2, 10, "second change not signalled")
        time.sleep(0.3)
        assert hups.read_text().count("hup") == 2, "unchanged files must not be signalled"
        assert process.poll() is None
    finally:
        _end(process)
    assert process.returncode == -signal.SIGTERM


def test_registry_staged_by_another_user_is_merged_and_applied(tmp_path: Path) -> None:
    """Compose: the platform (another container and user) writes only registry/{passwd,acl};
    the broker's watcher merges them under its own platform part and reloads."""
    port = free_port()
    auth = tmp_path / "auth"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
        f"allow_anonymous false\npassword_file {auth}/passwd\nacl_file {auth}/acl\n"
    )
    process = _entrypoint(tmp_path, "/usr/sbin/mosquitto", "-c", str(conf))
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 5, "broker did not listen")
        staged = auth / "registry"
        assert staged.is_dir()
        impostor = DeviceAccess("weijian-collector", hash_password("stolen"), ("x/#",))
        write_device_entries(staged / "passwd", staged / "acl", [_device("dev-s", "pw")])
        wait_for(lambda: _connack(port, "dev-s", "pw") == 0, 10, "staged device not applied")
        text = (auth / "acl").read_text()
        assert text.index("user dev-s") < text.index("# BEGIN weijian-platform")
        assert _connack(port, "weijian-collector", "collector-pw") == 0

        # The staging area cannot take over a platform account.
        (staged / "passwd").write_text(f"weijian-collector:{impostor.password_hash}\n")
        (staged / "acl").write_text("user weijian-collector\ntopic write x/#\n")
        wait_for(lambda: _connack(port, "dev-s", "pw") == REFUSED, 10, "dev-s not removed")
        assert _connack(port, "weijian-collector", "stolen") == REFUSED
        assert _connack(port, "weijian-collector", "collector-pw") == 0
        assert "x/#" not in (auth / "acl").read_text()
        assert process.poll() is None
    finally:
        _end(process)
