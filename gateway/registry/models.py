"""The registry's tables: who operates what, where, and who supervises it.

Identifiers of tenants, sites and devices are the same strings that tag every point in InfluxDB
(``protocols.reading.IDENTIFIER``), so they are the primary keys: no surrogate id to translate.
Every change to a device bumps the registry-wide ``revision``; collectors poll that one number and
reload only the devices whose ``revision`` is newer (deletions leave a tombstone), which keeps the
ingest-path cache exact with 100,000 devices without reloading them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite forgets the zone; PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Tenant(Timestamps, Base):
    """An operator: a water company, a hospital, a hotel group."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(32), default="other")
    contact: Mapped[str] = mapped_column(String(200), default="")

    sites: Mapped[list[Site]] = relationship(back_populates="tenant", passive_deletes=True)


class Site(Timestamps, Base):
    """A place devices are installed: a plant outlet, a pool, an X-ray room."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(400), default="")
    region_code: Mapped[str] = mapped_column(String(6), index=True)
    latitude: Mapped[float | None] = mapped_column(Float, default=None)
    longitude: Mapped[float | None] = mapped_column(Float, default=None)
    venue_type: Mapped[str] = mapped_column(String(32))
    # Context the rules need beyond the venue type, e.g. {"shielded": true} for an X-ray room.
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)

    tenant: Mapped[Tenant] = relationship(back_populates="sites")
    devices: Mapped[list[Device]] = relationship(back_populates="site", passive_deletes=True)


class Device(Timestamps, Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))
    # Protocol-specific: Modbus host/port/unit id or serial line; HJ 212 station MN; ...
    connection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    interval_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="active")
    revision: Mapped[int] = mapped_column(Integer, index=True, default=0)

    site: Mapped[Site] = relationship(back_populates="devices")
    credentials: Mapped[list[DeviceCredential]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True
    )


class DeviceTombstone(Base):
    """A deleted device, so caches that poll by revision learn about deletions too."""

    __tablename__ = "device_tombstones"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, index=True)


class RegistryState(Base):
    """One row: the revision of the latest device change."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)


class DeviceCredential(Base):
    """A device secret, stored only as a hash; at most one active per (device, kind)."""

    __tablename__ = "device_credentials"
    __table_args__ = (Index("ix_credential_key_id", "key_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # mqtt | api_key | coap_token | hj212
    key_id: Mapped[str] = mapped_column(String(32))  # public part: finds the row without a scan
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    device: Mapped[Device] = relationship(back_populates="credentials")


class Jurisdiction(Timestamps, Base):
    """A supervision district by its 6-digit administrative division code."""

    __tablename__ = "jurisdictions"

    region_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # [{"name": ..., "role": ..., "channels": [{"type": "email", "address": ...}, ...]}, ...]
    officers: Mapped[list[Any]] = mapped_column(default=list)


class User(Timestamps, Base):
    """Staff: admin, city_admin / county_admin (region codes) or tenant_user (one tenant)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    region_codes: Mapped[list[Any]] = mapped_column(default=list)
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), default=None
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ApiToken(Base):
    """A long-lived staff token (scripts, Grafana sync); hashed, shown once."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_id: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Who changed what, when, with the state before and after (secrets never included)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(128), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
