"""Mosquitto's password and ACL files as data: hash, render, rewrite in place, reload.

Why: the device registry stores only password hashes and must issue, rotate and revoke MQTT
credentials while the broker keeps running. Mosquitto re-reads ``password_file`` and
``acl_file`` on SIGHUP, so a change is "rewrite the files, then signal".

Hashes are Mosquitto 2.x's ``$7$<iterations>$<b64 salt>$<b64 hash>`` (PBKDF2-HMAC-SHA512,
12-byte salt, standard base64 with padding, 101 iterations by default), byte for byte what
``mosquitto_passwd`` writes; ``$6$`` lines (salted SHA-512, mosquitto 1.x) are still verified.

Two writers share the files (docs/deployment.md, "MQTT accounts"):

* the **managed block** of the ACL file, between ``# BEGIN weijian-platform ...`` and
  ``# END weijian-platform``, always at the end of the file, plus the ``passwd`` lines of the
  users named in it, belong to the broker's entrypoint (compose) or to ``LocalMosquitto``
  (embedded) through :func:`write_managed_block`;
* every other line of both files belongs to the device registry, written with
  :func:`write_device_entries`. Device sections sit *above* the block: a ``user`` line applies
  to every ``topic`` line after it, so the block's ``user`` lines must come last.

Both functions write each file atomically (temp file, fsync, ``os.replace``, mode 0600, owner
kept) and serialise Python writers with a lock file beside the ACL; ``passwd`` is replaced
before ``acl``, so a reload in between sees a revoked device without its password.

What Mosquitto 2.0.11 does (pinned by tests/test_mosquitto_auth.py):

* A publish outside the client's ACL is dropped; subscribers never see it. An MQTT v5 client
  publishing at QoS 1 gets PUBACK reason code 135 (0x87, Not authorized); a 3.1.1 PUBACK has
  no reason code, so such a device cannot tell.
* A bad user name or password gets CONNACK 135 (Not authorized) too, not 134 (Bad user name
  or password).
* SIGHUP re-reads both files in the same process (pid unchanged); new connections are judged
  by the new files at once. On that reload the broker also re-checks every *connected*
  client's password against the new file: a revoked device, or one still connected with a
  rotated-out password, is disconnected (socket closed, no DISCONNECT packet, v5 and 3.1.1
  alike), and its reconnects are refused. A connected client whose ACL changed keeps its
  connection and is judged by the new ACL from its next publish.
* That re-check runs the password hash once per connected client, inside the broker's only
  thread: with 2,000 clients connected a reload stalled the broker for 0.16 s at 101
  iterations and for 15 s at 10,000. So keep mosquitto_passwd's 101 iterations, reload only
  when :func:`write_device_entries` reports a change, and batch changes (the compose
  watcher's 2 s poll does).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import os
import signal
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "DeviceAccess",
    "ReloadError",
    "ServiceAccount",
    "hash_password",
    "read_device_entries",
    "reload_broker",
    "render_acl",
    "verify_password",
    "write_device_entries",
    "write_managed_block",
]

DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS)
SALT_BYTES = 12  # mosquitto_passwd's SALT_LEN
DIGEST_BYTES = 64  # SHA-512

# The block's first line is matched by prefix: the entrypoint writes its own wording after it.
BEGIN_MARKER = "# BEGIN weijian-platform"
END_MARKER = "# END weijian-platform"
BEGIN_LINE = f"{BEGIN_MARKER} (rewritten at every broker start; do not edit)"

_ACCESS = ("read", "write", "readwrite", "deny")


# ---- hashing -----------------------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = 101) -> str:
    """A ``$7$`` PBKDF2-HMAC-SHA512 hash exactly as ``mosquitto_passwd`` writes it.

    101 iterations is mosquitto_passwd's default: the broker runs PBKDF2 on every CONNECT and,
    on every reload, once per connected client (see the module notes), so a high count stalls
    the broker long before it slows an attacker holding the file.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, not {iterations}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    if not salt:
        raise ValueError("salt must not be empty")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` or ``$6$`` hash (constant-time comparison).

    Raises ValueError for a string that is not a Mosquitto hash at all (e.g. a plaintext
    password), which is a broken file rather than a wrong password.
    """
    kind, iterations, salt, digest = _parse_hash(encoded)
    secret = password.encode("utf-8")
    if kind == "7":
        actual = hashlib.pbkdf2_hmac("sha512", secret, salt, iterations)
    else:  # $6$: sha512(password || salt), mosquitto 1.x
        actual = hashlib.sha512(secret + salt).digest()
    return hmac.compare_digest(actual, digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_hash(encoded: str) -> tuple[str, int, bytes, bytes]:
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
            iterations = int(parts[2])
            salt, digest = parts[3], parts[4]
            if iterations < 1 or not parts[2].isdigit():
                raise ValueError
            kind = "7"
        elif len(parts) == 4 and parts[0] == "" and parts[1] == "6":
            iterations, salt, digest = 0, parts[2], parts[3]
            kind = "6"
        else:
            raise ValueError
        raw_salt = base64.b64decode(salt, validate=True)
        raw_digest = base64.b64decode(digest, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(
            "not a Mosquitto password hash ($7$<iterations>$<salt>$<hash> or $6$<salt>$<hash>): "
            f"{encoded[:12]!r}..."
        ) from None
    if not raw_salt or len(raw_digest) != DIGEST_BYTES:
        raise ValueError(f"Mosquitto password hash with a bad salt or digest: {encoded[:12]!r}...")
    return kind, iterations, raw_salt, raw_digest


# ---- entries -----------------------------------------------------------------------------------


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not username:
        raise ValueError("MQTT username must be a non-empty string")
    bad = [c for c in username if c in ":#+" or c.isspace() or not c.isprintable()]
    if bad:
        raise ValueError(
            f"MQTT username {username!r} may not contain {''.join(sorted(set(bad)))!r} "
            "(no ':', '#', '+', whitespace or control characters: they break the passwd/ACL "
            "files or the topic wildcards)"
        )


def _check_topic(topic: str, *, owner: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{owner}: ACL topic must be a non-empty string")
    if any(c.isspace() or not c.isprintable() for c in topic):
        raise ValueError(f"{owner}: ACL topic {topic!r} may not contain whitespace or newlines")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{owner}: in ACL topic {topic!r}, '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"{owner}: in ACL topic {topic!r}, '+' must be a whole level")


@dataclass(frozen=True)
class DeviceAccess:
    """A device's broker entry: may connect with ``password_hash`` and publish to its topics."""

    username: str
    password_hash: str
    publish_topics: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_username(self.username)
        _parse_hash(self.password_hash)
        if isinstance(self.publish_topics, str):
            raise ValueError(f"{self.username}: publish_topics must be a tuple of topics")
        object.__setattr__(self, "publish_topics", tuple(self.publish_topics))
        for topic in self.publish_topics:
            _check_topic(topic, owner=self.username)


@dataclass(frozen=True)
class ServiceAccount:
    """A platform account (the collector) in the managed block, with its own ACL lines."""

    username: str
    password_hash: str
    acl_lines: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_username(self.username)
        _parse_hash(self.password_hash)
        if isinstance(self.acl_lines, str):
            raise ValueError(f"{self.username}: acl_lines must be a tuple of lines")
        object.__setattr__(self, "acl_lines", tuple(self.acl_lines))
        for line in self.acl_lines:
            words = line.split()
            # Only topic lines: a `user` or `pattern` line would escape this account's section.
            ok = (
                len(words) in (2, 3)
                and words[0] == "topic"
                and (len(words) == 2 or words[1] in _ACCESS)
                and line == " ".join(words)
            )
            if not ok:
                raise ValueError(
                    f"{self.username}: ACL line {line!r} is not 'topic [read|write|readwrite|"
                    "deny] <topic>'"
                )
            _check_topic(words[-1], owner=self.username)


def render_acl(devices: Iterable[DeviceAccess]) -> str:
    """The device part of the ACL file: a ``user`` section per device, sorted by username.

    It goes above the managed block (a ``user`` line captures every ``topic`` line after it).
    """
    sections = [
        "".join([f"user {d.username}\n", *(f"topic write {t}\n" for t in d.publish_topics)])
        for d in sorted(devices, key=lambda d: d.username)
    ]
    return "\n".join(sections)


def _render_block(body: list[str], begin: str = BEGIN_LINE) -> str:
    return "\n".join([begin, *body, END_MARKER]) + "\n"


@dataclass
class _AclFile:
    outside: list[str]  # lines outside the managed block, in order
    begin: str | None  # the block's first line as found (None: no block)
    block: list[str]  # lines between the markers

    @property
    def managed_users(self) -> set[str]:
        return {line[5:].strip() for line in self.block if line.startswith("user ")}


def _is_begin(line: str) -> bool:
    return line == BEGIN_MARKER or line.startswith(BEGIN_MARKER + " ")


def _split_acl(text: str) -> _AclFile:
    """Separate the managed block; like the entrypoint, an unterminated block runs to EOF."""
    acl = _AclFile([], None, [])
    inside = False
    for line in text.splitlines():
        if not inside and _is_begin(line):
            inside = True
            acl.begin = acl.begin or line
        elif inside and line.strip() == END_MARKER:
            inside = False
        elif inside:
            acl.block.append(line)
        else:
            acl.outside.append(line)
    return acl


def _passwd_user(line: str) -> str:
    return line.split(":", 1)[0]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def read_device_entries(passwd_path: Path, acl_path: Path) -> list[DeviceAccess]:
    """The registry's entries as they are on disk (users named in the managed block excluded).

    Only ``topic write`` grants are returned; a write with :func:`write_device_entries` drops
    any other line outside the block. A ``passwd`` line without an ACL section comes back with
    no topics; an ACL section without a ``passwd`` line is skipped (nobody can log in as it).
    """
    acl = _split_acl(_read(acl_path))
    managed = acl.managed_users
    topics: dict[str, list[str]] = {}
    user: str | None = None
    for line in acl.outside:
        words = line.split()
        if line.startswith("user "):
            user = line[5:].strip()
            topics.setdefault(user, [])
        elif user is not None and len(words) == 3 and words[:2] == ["topic", "write"]:
            topics[user].append(words[2])
    entries = []
    for line in _read(passwd_path).splitlines():
        name, sep, encoded = line.partition(":")
        if sep and name not in managed:
            entries.append(DeviceAccess(name, encoded, tuple(topics.get(name, ()))))
    return entries


# ---- writing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(acl_path: Path) -> Iterator[None]:
    """Serialise Python writers (several registry instances); the entrypoint runs before any."""
    acl_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(acl_path.with_name(f".{acl_path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> bool:
    """Atomically give ``path`` the content ``text`` (0600, owner kept); False if already so."""
    try:
        old = path.read_bytes()
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old, st = None, None
    data = text.encode("utf-8")
    if old == data and st is not None and st.st_mode & 0o777 == 0o600:
        return False
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        # In compose the broker runs as uid 1883 and must still read the file after we replace it.
        if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError as err:
                raise PermissionError(
                    f"cannot give the new {path} to uid {st.st_uid}/gid {st.st_gid} like the old "
                    "one; the broker could not read it. Write it as that user or as root."
                ) from err
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is given twice")
        seen.add(name)


def _outside_text(lines: list[str]) -> str:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines) + "\n\n" if lines else ""


def write_device_entries(
    passwd_path: Path, acl_path: Path, devices: Iterable[DeviceAccess]
) -> bool:
    """Make ``devices`` the registry's whole part of the files; True if either file changed.

    Keeps the managed block and the ``passwd`` lines of the users it names; replaces every
    other ``passwd`` line and every ACL line outside the block (with no block yet, i.e. the
    broker's entrypoint never ran, nothing is kept). Callers reload the broker only when this
    returns True.
    """
    devices = sorted(devices, key=lambda d: d.username)
    _unique((d.username for d in devices), "device")
    with _locked(acl_path):
        acl = _split_acl(_read(acl_path))
        managed = acl.managed_users
        clash = sorted(d.username for d in devices if d.username in managed)
        if clash:
            raise ValueError(
                f"device username(s) {', '.join(clash)} belong to the platform's managed block"
            )
        kept = [line for line in _read(passwd_path).splitlines() if _passwd_user(line) in managed]
        passwd = [f"{d.username}:{d.password_hash}" for d in devices] + kept
        acl_text = render_acl(devices)
        if acl.begin is not None:
            acl_text += ("\n" if acl_text else "") + _render_block(acl.block, acl.begin)
        changed = _replace(passwd_path, "".join(line + "\n" for line in passwd))
        return _replace(acl_path, acl_text) or changed


def write_managed_block(
    passwd_path: Path, acl_path: Path, services: Iterable[ServiceAccount]
) -> bool:
    """Rewrite the platform's own part, as the compose entrypoint does at every broker start.

    Drops the ``passwd`` lines of the users named in the old block and of ``services``, appends
    the services' lines, and puts a fresh block at the end of the ACL file; everything else is
    kept as found. True if either file changed.
    """
    services = list(services)
    _unique((s.username for s in services), "service account")
    names = {s.username for s in services}
    with _locked(acl_path):
        acl = _split_acl(_read(acl_path))
        drop = acl.managed_users | names
        passwd = [
            line for line in _read(passwd_path).splitlines() if _passwd_user(line) not in drop
        ]
        passwd += [f"{s.username}:{s.password_hash}" for s in services]
        body: list[str] = []
        for service in services:
            body += [f"user {service.username}", *service.acl_lines]
        changed = _replace(passwd_path, "".join(line + "\n" for line in passwd))
        acl_text = _outside_text(acl.outside) + _render_block(body)
        return _replace(acl_path, acl_text) or changed


# ---- reload ------------------------------------------------------------------------------------


class ReloadError(RuntimeError):
    """The broker could not be signalled: no such process, no permission, bad pidfile."""


def reload_broker(*, pid: int | None = None, pidfile: Path | None = None) -> None:
    """Send SIGHUP so Mosquitto re-reads its password and ACL files without dropping clients."""
    if (pid is None) == (pidfile is None):
        raise ValueError("give exactly one of pid or pidfile")
    if pidfile is not None:
        try:
            text = Path(pidfile).read_text().strip()
        except OSError as err:
            raise ReloadError(f"cannot read the broker's pidfile {pidfile}: {err}") from err
        try:
            pid = int(text)
        except ValueError:
            raise ReloadError(
                f"the broker's pidfile {pidfile} does not hold a process id: {text[:40]!r}"
            ) from None
    assert pid is not None
    if pid <= 0:  # kill(0 or -n) would signal a whole process group
        raise ReloadError(f"refusing to signal pid {pid}")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid}: the broker is not running") from None
    except PermissionError:
        raise ReloadError(f"not allowed to signal the broker (pid {pid})") from None
