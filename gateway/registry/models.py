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
    text,
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
        utc = value.astimezone(UTC)
        # PostgreSQL's timestamptz reads a naive value in the session's time zone: give it the
        # zone. SQLite stores text and would keep "+00:00" in it: give it naive UTC.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

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
    # When the password was last set (gateway.security.set_password); JWTs issued in an earlier
    # second are refused. NULL: set before migration 0004 added the column (not recorded).
    password_changed_at: Mapped[datetime | None] = mapped_column(default=None)


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


# ---- alerting: per-site rule overrides, alerts and their transitions (alerting/) ---------------


class RuleOverride(Base):
    """A site's change to one threshold rule (alerting/rules.py); audited in ``audit_log``.

    ``None`` in a field leaves the rule file's setting; one override per (site, rule).
    """

    __tablename__ = "rule_overrides"
    __table_args__ = (UniqueConstraint("site_id", "rule_id", name="uq_rule_overrides_site_rule"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    rule_id: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    clear_value: Mapped[float | None] = mapped_column(Float, default=None)
    clear_for_s: Mapped[float | None] = mapped_column(Float, default=None)
    for_s: Mapped[float | None] = mapped_column(Float, default=None)
    severity: Mapped[str | None] = mapped_column(String(16), default=None)
    enabled: Mapped[bool | None] = mapped_column(Boolean, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# A partial unique index: at most one open (not resolved) alert per (device, rule), enforced by
# the database itself on SQLite and PostgreSQL, so two detector instances (or a restart racing a
# late write) can never open a duplicate.
OPEN_ALERT_WHERE = text("state != 'resolved'")


class AlertRow(Base):
    """The current state of one alert (alerting.model.Alert); its history is in transitions.

    No foreign keys to devices or sites: an alert is a historical record that outlives them.
    ``severity`` is ``alerting.model.Severity``'s value (1 info … 4 emergency), so it sorts.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "ux_alerts_open_device_rule",
            "device_id",
            "rule_id",
            unique=True,
            sqlite_where=OPEN_ALERT_WHERE,
            postgresql_where=OPEN_ALERT_WHERE,
        ),
        Index("ix_alerts_state_severity", "state", "severity"),
        Index("ix_alerts_site_started", "site_id", "started_at"),
        Index("ix_alerts_region_started", "region_code", "started_at"),
        Index("ix_alerts_tenant_started", "tenant_id", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[int] = mapped_column(Integer)
    tenant_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str] = mapped_column(String(64))
    region_code: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[str | None] = mapped_column(String(64), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float, default=None)
    limit_value: Mapped[float | None] = mapped_column(Float, default=None)
    standard: Mapped[str | None] = mapped_column(String(200), default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    fired_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), default=None)
    ack_comment: Mapped[str | None] = mapped_column(Text, default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(64), default=None)
    resolve_reason: Mapped[str | None] = mapped_column(Text, default=None)
    notified_at: Mapped[datetime | None] = mapped_column(default=None)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AlertTransitionRow(Base):
    """One step of an alert's life (alerting.model.Transition), written with the alert row."""

    __tablename__ = "alert_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    from_state: Mapped[str | None] = mapped_column(String(16), default=None)  # None: created
    to_state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(64), default=None)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    value: Mapped[float | None] = mapped_column(Float, default=None)


# ---- records: what sites declare (medical waste hand-overs, disinfections; alerting/domain) -----


class RecordEventRow(Base):
    """A record a site declared through the gateway (``POST /records``, ``/ingest/v1/records``).

    The records monitor's input (alerting/domain/records.py): the alert engine reads the new rows
    by ``id`` (which only grows: ``AUTOINCREMENT`` on SQLite) and replays the recent ones at its
    start. One row per (site, record type, time, ref): a retry of the same declaration finds the
    row already there. ``ref`` is ``""`` when the record carries no bag or batch code (the API
    shows ``null``), so that the unique constraint holds on every backend (NULLs are distinct in
    a SQL unique constraint). Records go with their site.
    """

    __tablename__ = "record_events"
    __table_args__ = (
        UniqueConstraint(
            "site_id", "record_type", "at", "ref", name="uq_record_events_site_type_at_ref"
        ),
        Index("ix_record_events_site_at", "site_id", "at"),
        # ids only grow, never reused after a delete: the alert engine reads new rows by id
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    record_type: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(index=True)  # when the record says it happened
    ref: Mapped[str] = mapped_column(String(64), default="")  # "" = no code
    source: Mapped[str] = mapped_column(String(8))  # user | device
    posted_by: Mapped[str] = mapped_column(String(64))  # username or device id
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
