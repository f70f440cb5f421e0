"""Device secrets: issued once, stored hashed, rotated and revoked without restarting anything.

Each protocol gets what it can present:

| credential | protocol | presented as |
|---|---|---|
| ``mqtt`` | MQTT | username = device id, password (hashed in Mosquitto's own ``$7$`` PBKDF2 format,
  so the broker's password file is written straight from the registry) |
| ``api_key`` | HTTP ingest | ``Authorization: Bearer wjk_<key id>_<secret>`` |
| ``coap_token`` | CoAP | the same shape, ``wjc_<key id>_<secret>`` |
| ``hj212`` | HJ 212 | the station's ``PW`` (6 characters, the field's maximum) |

API keys and tokens carry a public key id, so verifying one is an indexed lookup plus one salted
SHA-256: they are 190-bit random strings, where a slow hash buys nothing (a slow hash is for
passwords people choose). The HJ 212 password is short because the standard says so; it is
hashed the same way and only ever compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.registry.database import bump_revision
from gateway.registry.models import DeviceCredential, utcnow
from protocols.mosquitto_auth import hash_password

CREDENTIAL_KINDS = ("mqtt", "api_key", "coap_token", "hj212")
# What a device speaking each protocol needs to be issued at onboarding.
PROTOCOL_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "mqtt": ("mqtt",),
    "http": ("api_key",),
    "coap": ("coap_token",),
    "hj212": ("hj212",),
    # Polled by the collector: the device never authenticates to us.
    "modbus_tcp": (),
    "modbus_rtu_tcp": (),
    "modbus_rtu": (),
}
_PREFIX = {"api_key": "wjk", "coap_token": "wjc"}
_HJ212_ALPHABET = string.ascii_letters + string.digits
# HJ 212-2017 Table 4 gives PW as C9 including "PW=": six characters is what stations accept.
HJ212_PASSWORD_LENGTH = 6


@dataclass(frozen=True)
class IssuedSecret:
    """The only time a secret is seen in clear: returned to the caller, never stored."""

    device: str
    kind: str
    secret: str
    username: str | None = None  # MQTT
    key_id: str | None = None


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def verify_secret(secret: str, encoded: str) -> bool:
    try:
        scheme, salt_hex, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    expected = hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode()).hexdigest()
    return hmac.compare_digest(expected, digest)


def parse_key(presented: str) -> tuple[str, str] | None:
    """``wjk_<key id>_<secret>`` → (key id, whole key); None if it is not shaped like one."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] not in _PREFIX.values() or len(parts[1]) != 12:
        return None
    return parts[1], presented


def active_credential(session: Session, device: str, kind: str) -> DeviceCredential | None:
    return session.execute(
        select(DeviceCredential).where(
            DeviceCredential.device_id == device,
            DeviceCredential.kind == kind,
            DeviceCredential.revoked_at.is_(None),
        )
    ).scalar_one_or_none()


def issue(session: Session, device: str, kind: str, *, now: datetime | None = None) -> IssuedSecret:
    """A new secret of ``kind`` for ``device``; the previous one of that kind is revoked."""
    if kind not in CREDENTIAL_KINDS:
        raise ValueError(f"credential kind {kind!r} is not one of {', '.join(CREDENTIAL_KINDS)}")
    revoke(session, device, kind, now=now)
    key_id = secrets.token_hex(6)
    if kind == "mqtt":
        secret = secrets.token_urlsafe(24)
        stored = hash_password(secret)
        issued = IssuedSecret(device, kind, secret, username=device, key_id=key_id)
    elif kind == "hj212":
        secret = "".join(secrets.choice(_HJ212_ALPHABET) for _ in range(HJ212_PASSWORD_LENGTH))
        stored = hash_secret(secret)
        issued = IssuedSecret(device, kind, secret, key_id=key_id)
    else:
        secret = f"{_PREFIX[kind]}_{key_id}_{secrets.token_urlsafe(24)}"
        stored = hash_secret(secret)
        issued = IssuedSecret(device, kind, secret, key_id=key_id)
    session.add(
        DeviceCredential(
            device_id=device,
            kind=kind,
            key_id=key_id,
            secret_hash=stored,
            created_at=now or utcnow(),
        )
    )
    bump_revision(session)  # key caches on the ingest path drop what they knew
    return issued


def revoke(
    session: Session, device: str, kind: str | None = None, *, now: datetime | None = None
) -> int:
    """Revoke the device's active credentials (of one kind, or all); returns how many."""
    query = select(DeviceCredential).where(
        DeviceCredential.device_id == device, DeviceCredential.revoked_at.is_(None)
    )
    if kind is not None:
        query = query.where(DeviceCredential.kind == kind)
    rows = session.execute(query).scalars().all()
    for row in rows:
        row.revoked_at = now or utcnow()
    session.flush()
    if rows:
        bump_revision(session)
    return len(rows)
