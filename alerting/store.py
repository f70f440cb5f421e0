"""Alerts in the registry database (for the API and restarts) and as InfluxDB ``alert_event`` lines.

Every transition is written in one transaction with its alert's row, so the row's state and its
history never disagree. The database enforces one open alert per (device, rule) with a partial
unique index (``state != 'resolved'``); a second open alert for the same key is refused with
:class:`DuplicateOpenAlert` rather than stored. After a restart ``open_alerts()`` hands the open
alerts back to a new :class:`~alerting.lifecycle.AlertBook`, which continues them: nothing is lost
and nothing is opened twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from alerting.domain.records import RecordEvent
from alerting.lifecycle import AlertBook
from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from gateway.registry.database import Registry
from gateway.registry.models import AlertRow, AlertTransitionRow, RecordEventRow
from protocols.lineprotocol import encode_line

ALERT_MEASUREMENT = "alert_event"
RECORD_SCAN = 1000  # the newest record ids read at the replay, to find those not yet committed
SITE_CHUNK = 200  # sites per replay query (one OR branch and two parameters each)
ID_CHUNK = 500  # ids per IN (...) of the records feed


# what the records replay and feed read of a record_events row
_RECORD_COLUMNS = (
    RecordEventRow.id,
    RecordEventRow.site_id,
    RecordEventRow.record_type,
    RecordEventRow.at,
    RecordEventRow.ref,
)


class DuplicateOpenAlert(RuntimeError):
    """The database already holds an open alert for this (device, rule)."""


class AlertStore:
    """Persists alerts and their transitions in the registry database."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def save(self, alert: Alert, transitions: Sequence[Transition] = ()) -> None:
        """The alert's current state and its new transitions, in one transaction."""
        for transition in transitions:
            if transition.alert_id != alert.id:
                raise ValueError(f"transition of {transition.alert_id} saved with {alert.id}")
        try:
            with self.registry.session() as session, session.begin():
                row = session.get(AlertRow, alert.id)
                if row is None:
                    row = AlertRow(id=alert.id)
                    session.add(row)
                _fill(row, alert)
                session.flush()  # the alert row first: transitions reference it
                for transition in transitions:
                    session.add(_transition_row(transition))
        except IntegrityError as exc:
            raise DuplicateOpenAlert(
                f"an open alert for device {alert.key.device!r} and rule {alert.key.rule!r} "
                f"already exists; not storing {alert.id}"
            ) from exc

    def save_transitions(self, book: AlertBook, transitions: Iterable[Transition]) -> None:
        """Save what a book call returned: each alert with its transitions, a transaction each."""
        grouped: dict[str, list[Transition]] = {}
        for transition in transitions:
            grouped.setdefault(transition.alert_id, []).append(transition)
        for alert_id, steps in grouped.items():
            self.save(book.alert(alert_id), steps)

    def open_alerts(self) -> list[Alert]:
        with self.registry.session() as session:
            rows = session.execute(
                select(AlertRow)
                .where(AlertRow.state != AlertState.RESOLVED.value)
                .order_by(AlertRow.started_at)
            ).scalars()
            return [_alert(row) for row in rows]

    def get(self, alert_id: str) -> Alert | None:
        with self.registry.session() as session:
            row = session.get(AlertRow, alert_id)
            return _alert(row) if row is not None else None

    def transitions(self, alert_id: str) -> list[Transition]:
        """An alert's history, oldest first."""
        with self.registry.session() as session:
            rows = session.execute(
                select(AlertTransitionRow, AlertRow.device_id, AlertRow.rule_id)
                .join(AlertRow, AlertRow.id == AlertTransitionRow.alert_id)
                .where(AlertTransitionRow.alert_id == alert_id)
                .order_by(AlertTransitionRow.id)
            ).all()
            return [
                Transition(
                    alert_id=row.alert_id,
                    key=AlertKey(device, rule),
                    at=row.at,
                    from_state=AlertState(row.from_state) if row.from_state else None,
                    to_state=AlertState(row.to_state),
                    severity=Severity(row.severity),
                    actor=row.actor,
                    comment=row.comment,
                    value=row.value,
                )
                for row, device, rule in rows
            ]

    def book(self) -> AlertBook:
        """A new book holding the stored open alerts: how a restarted detector resumes."""
        return AlertBook(self.open_alerts())

    def record_events(
        self, since: float, sites: Mapping[str, float] | None = None
    ) -> list[RecordEvent]:
        """The records sites posted (``record_events``, written by the gateway) whose time is at
        or after ``since`` -- or, for a site of ``sites``, after its own earlier time -- oldest
        first: what the records monitor replays at the engine's start (epoch seconds)."""
        return self.replay_records(since, sites).events

    def replay_records(
        self, since: float, sites: Mapping[str, float] | None = None
    ) -> RecordReplay:
        """:meth:`record_events`, with where the engine's records feed starts (:meth:`new_records`).

        The newest ids are read first (``last_id``, the highest); the records replayed are those
        with ids up to it, and those committed later (``id > last_id``) are the feed's. ``missing``:
        ids below ``last_id`` (among the last :data:`RECORD_SCAN` ids) that were neither present
        when the newest were read nor replayed -- a transaction still open then (on PostgreSQL ids
        are taken before commit, so a lower id may commit after a higher one), or a row deleted or
        rolled back; the feed looks for them a while. Each site of ``sites`` whose time is before
        ``since`` is asked for in chunks of :data:`SITE_CHUNK` (one OR branch per site: SQLite
        refuses an expression tree ~1000 deep, and every backend limits bind parameters).
        """
        start = _from_epoch(since)
        earlier = sorted((site, at) for site, at in (sites or {}).items() if at < since)
        with self.registry.session() as session:
            recent = list(
                session.execute(
                    select(RecordEventRow.id).order_by(RecordEventRow.id.desc()).limit(RECORD_SCAN)
                ).scalars()
            )
            last_id = recent[0] if recent else 0
            found = list(
                session.execute(
                    select(*_RECORD_COLUMNS).where(
                        RecordEventRow.id <= last_id, RecordEventRow.at >= start
                    )
                ).all()
            )
            for i in range(0, len(earlier), SITE_CHUNK):
                chunk = earlier[i : i + SITE_CHUNK]
                found += session.execute(
                    select(*_RECORD_COLUMNS).where(
                        RecordEventRow.id <= last_id,
                        RecordEventRow.at < start,
                        or_(
                            *(
                                and_(
                                    RecordEventRow.site_id == site,
                                    RecordEventRow.at >= _from_epoch(at),
                                )
                                for site, at in chunk
                            )
                        ),
                    )
                ).all()
        found.sort(key=lambda row: (row.at, row.id))
        replayed = {row.id for row in found}
        present = set(recent)
        missing = [
            i
            for i in range(recent[-1] if recent else 1, last_id)
            if i not in present and i not in replayed
        ]
        events = [
            RecordEvent(row.site_id, row.record_type, row.at.timestamp(), row.ref or None)
            for row in found
        ]
        return RecordReplay(events, last_id, missing)

    def new_records(
        self, after: int, missing: Iterable[int] = (), limit: int = 1000
    ) -> list[tuple[int, RecordEvent]]:
        """The records feed: the first ``limit`` rows with ``id > after``, and those of the ids
        ``missing`` that are there now (see :meth:`replay_records`), by id."""
        wanted = sorted(set(missing))
        with self.registry.session() as session:
            found = list(
                session.execute(
                    select(*_RECORD_COLUMNS)
                    .where(RecordEventRow.id > after)
                    .order_by(RecordEventRow.id)
                    .limit(limit)
                ).all()
            )
            for i in range(0, len(wanted), ID_CHUNK):
                found += session.execute(
                    select(*_RECORD_COLUMNS).where(RecordEventRow.id.in_(wanted[i : i + ID_CHUNK]))
                ).all()
        found.sort(key=lambda row: row.id)
        return [
            (row.id, RecordEvent(row.site_id, row.record_type, row.at.timestamp(), row.ref or None))
            for row in found
        ]


@dataclass(frozen=True, slots=True)
class RecordReplay:
    """What :meth:`AlertStore.replay_records` found: the records to replay (oldest first), the
    highest id when they were read, and the ids below it that may still be committed."""

    events: list[RecordEvent]
    last_id: int
    missing: list[int] = field(default_factory=list)


def _from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(max(ts, 0.0), UTC)


def _fill(row: AlertRow, alert: Alert) -> None:
    row.device_id = alert.key.device
    row.rule_id = alert.key.rule
    row.state = alert.state.value
    row.severity = int(alert.severity)
    row.tenant_id = alert.tenant
    row.site_id = alert.site
    row.region_code = alert.region
    row.kind = alert.kind
    row.quantity = alert.quantity
    row.message = alert.message
    row.value = alert.value
    row.limit_value = alert.limit
    row.standard = alert.standard
    row.started_at = alert.started_at
    row.fired_at = alert.fired_at
    row.resolved_at = alert.resolved_at
    # Fields other components may have written to the row (the notifier's, a person's through the
    # API) are kept when this copy of the alert does not know them, never erased.
    row.acknowledged_at = alert.acknowledged_at or row.acknowledged_at
    row.acknowledged_by = alert.acknowledged_by or row.acknowledged_by
    row.ack_comment = alert.ack_comment or row.ack_comment
    row.resolved_by = alert.resolved_by or row.resolved_by
    row.resolve_reason = alert.resolve_reason or row.resolve_reason
    row.notified_at = alert.notified_at or row.notified_at
    row.escalation_level = max(alert.escalation_level, row.escalation_level or 0)
    row.labels = {**(row.labels or {}), **alert.labels}


def _alert(row: AlertRow) -> Alert:
    return Alert(
        id=row.id,
        key=AlertKey(row.device_id, row.rule_id),
        severity=Severity(row.severity),
        state=AlertState(row.state),
        tenant=row.tenant_id,
        site=row.site_id,
        region=row.region_code,
        kind=row.kind,
        quantity=row.quantity,
        message=row.message,
        value=row.value,
        limit=row.limit_value,
        standard=row.standard,
        started_at=row.started_at,
        fired_at=row.fired_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        ack_comment=row.ack_comment,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        resolve_reason=row.resolve_reason,
        notified_at=row.notified_at,
        escalation_level=row.escalation_level,
        labels=dict(row.labels or {}),
    )


def _transition_row(transition: Transition) -> AlertTransitionRow:
    return AlertTransitionRow(
        alert_id=transition.alert_id,
        at=transition.at,
        from_state=transition.from_state.value if transition.from_state else None,
        to_state=transition.to_state.value,
        severity=int(transition.severity),
        actor=transition.actor,
        comment=transition.comment,
        value=transition.value,
    )


# ---- InfluxDB ----------------------------------------------------------------------------------


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def alert_event_line(alert: Alert, transition: Transition) -> str:
    """One ``alert_event`` point (docs/schema.md): tags say what and where, fields the details."""
    tags = {
        "rule": alert.key.rule,
        "severity": transition.severity.name.lower(),
        "state": transition.to_state.value,
        "tenant": alert.tenant,
        "site": alert.site,
        "device": alert.key.device,
        "region": alert.region,
        "kind": alert.kind,
    }
    fields: dict[str, Any] = {"alert_id": alert.id}
    if transition.value is not None:
        fields["value"] = float(transition.value)
    fields["message"] = alert.message
    fields["from_state"] = transition.from_state.value if transition.from_state else "created"
    if transition.actor:
        fields["actor"] = transition.actor
    return encode_line(ALERT_MEASUREMENT, tags, fields, _ms(transition.at))


def alert_event_lines(book: AlertBook, transitions: Iterable[Transition]) -> list[str]:
    """Lines for what a book call returned (write them with millisecond precision)."""
    return [alert_event_line(book.alert(t.alert_id), t) for t in transitions]
