"""The alert's life as a state machine over alerting/model.py, and the glue from readings to it.

``AlertBook`` holds the open alerts, one per (device, rule) key, and turns condition reports and
people's actions into :class:`~alerting.model.Transition` lists (which the store persists and
writes to InfluxDB). Legal steps::

    (created) → pending → firing → acknowledged → resolved
                   │         └──────────────────────↗ │
                   └─→ resolved (cancelled: never fired, never notified)

plus a *severity change* (``from_state == to_state``) when a firing or acknowledged alert reaches
a more severe level. Anything else -- acknowledging a pending or resolved alert, resolving a
resolved one -- raises :class:`LifecycleError`.

**Manual resolve while the condition still holds.** The person says "handled"; the book believes
them: the alert is resolved, and the key is marked. If the condition is still reported holding,
a NEW alert opens at the next evaluation -- pending from that moment, firing only after the
rule's ``for`` again -- rather than the old one coming back or firing at once. The person gets
``for`` of quiet to fix things; a condition that persists is raised again, as a new alert with its
own id. The mark is dropped once the condition is reported clear.

``ThresholdAlerting`` drives the book from readings: per (device, rule) a
:class:`~alerting.thresholds.ThresholdEvaluator`, and the book's ``condition`` for every sample
the evaluator accepted while the condition holds or the key has an alert.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from alerting.rules import Rule
from alerting.thresholds import Phase, ThresholdEvaluator
from protocols.catalog import Catalog, default_catalog
from protocols.reading import Reading

_RECENT_LIMIT = 10_000


class LifecycleError(ValueError):
    """A transition the alert's life does not allow (the message says which and why)."""


class AlertNotFound(LookupError):
    """No alert with this id is open or was resolved recently in this book."""


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """What a new alert needs beyond its key: where it is and what to tell a person."""

    tenant: str
    site: str
    region: str
    kind: str
    quantity: str | None = None
    message: str = ""
    limit: float | None = None
    standard: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)


def new_alert_id() -> str:
    return uuid.uuid4().hex


def ms_to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


class AlertBook:
    """Open alerts by key (at most one per device and rule) and the rules of their life."""

    def __init__(
        self,
        alerts: Iterable[Alert] = (),
        *,
        new_id: Callable[[], str] = new_alert_id,
        keep_resolved: int = _RECENT_LIMIT,
    ) -> None:
        self._open: dict[AlertKey, Alert] = {}
        self._by_id: dict[str, Alert] = {}
        self._recent: OrderedDict[str, Alert] = OrderedDict()  # resolved, for the store
        self._restart: set[AlertKey] = set()  # manually resolved while holding: `for` again
        self._new_id = new_id
        self._keep_resolved = keep_resolved
        for alert in alerts:
            self.restore(alert)

    # ---- lookups --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def get(self, key: AlertKey) -> Alert | None:
        """The open alert of this key, if any."""
        return self._open.get(key)

    def open_alerts(self) -> list[Alert]:
        return list(self._open.values())

    def tracks(self, key: AlertKey) -> bool:
        """The key has an open alert, or a manual resolve the next clear report must end."""
        return key in self._open or key in self._restart

    def alert(self, alert_id: str) -> Alert:
        """An open alert, or one resolved recently (so the store can persist its last state)."""
        alert = self._by_id.get(alert_id) or self._recent.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"no open or recently resolved alert {alert_id!r}")
        return alert

    def restore(self, alert: Alert) -> None:
        """Take back an open alert loaded from the store after a restart."""
        if not alert.state.open:
            raise LifecycleError(f"alert {alert.id} is resolved; only open alerts are restored")
        existing = self._open.get(alert.key)
        if existing is not None and existing.id != alert.id:
            raise LifecycleError(f"two open alerts for {alert.key}: {existing.id} and {alert.id}")
        self._open[alert.key] = alert
        self._by_id[alert.id] = alert

    # ---- the condition, as the detector reports it -----------------------------------------------

    def condition(
        self,
        key: AlertKey,
        *,
        holds: bool,
        at: datetime,
        value: float | None = None,
        since: datetime | None = None,
        for_s: float = 0.0,
        severity: Severity = Severity.CRITICAL,
        info: AlertInfo | None = None,
        flapping: bool = False,
    ) -> list[Transition]:
        """The condition of ``key`` holds (since ``since``) or not, as of ``at``.

        Holding opens a pending alert if none is open (``info`` is then required) and fires it
        once ``for_s`` has passed since it started; a more severe ``severity`` while firing is a
        severity change. Not holding resolves the open alert (a pending one is cancelled).
        """
        alert = self._open.get(key)
        if not holds:
            self._restart.discard(key)
            if alert is None:
                return []
            return [self._close(alert, at, value, by=None, reason=None)]
        out: list[Transition] = []
        if alert is None:
            if info is None:
                raise ValueError(f"{key}: a new alert needs its AlertInfo")
            restarted = key in self._restart
            self._restart.discard(key)
            started = at if restarted or since is None else min(since, at)
            alert = Alert(
                id=self._new_id(),
                key=key,
                severity=severity,
                state=AlertState.PENDING,
                tenant=info.tenant,
                site=info.site,
                region=info.region,
                kind=info.kind,
                quantity=info.quantity,
                message=info.message,
                value=value,
                limit=info.limit,
                standard=info.standard,
                started_at=started,
                labels=dict(info.labels),
            )
            self._open[key] = alert
            self._by_id[alert.id] = alert
            out.append(self._step(alert, None, AlertState.PENDING, at, value))
        if flapping and not alert.labels.get("flapping"):
            alert.labels["flapping"] = True
        if alert.state is AlertState.PENDING:
            if severity > alert.severity:
                alert.severity = severity
            started = alert.started_at or at
            if (at - started).total_seconds() >= for_s:
                alert.fired_at = at
                alert.value = value
                out.append(self._step(alert, AlertState.PENDING, AlertState.FIRING, at, value))
        elif severity > alert.severity:
            alert.severity = severity
            alert.value = value
            out.append(self._step(alert, alert.state, alert.state, at, value, comment="severity"))
        return out

    # ---- people's actions ------------------------------------------------------------------------

    def acknowledge(
        self, alert_id: str, by: str, comment: str | None, at: datetime
    ) -> list[Transition]:
        """A person takes the alert on; only a firing alert can be acknowledged."""
        alert = self._find_open(alert_id, "acknowledge")
        if not by:
            raise LifecycleError("acknowledging needs the person's name")
        if alert.state is AlertState.PENDING:
            raise LifecycleError(
                f"alert {alert_id} is pending (its condition has not held for its `for` yet): "
                "nothing to acknowledge"
            )
        if alert.state is AlertState.ACKNOWLEDGED:
            raise LifecycleError(
                f"alert {alert_id} is already acknowledged by {alert.acknowledged_by}"
            )
        alert.acknowledged_at = at
        alert.acknowledged_by = by
        alert.ack_comment = comment
        return [
            self._step(
                alert, AlertState.FIRING, AlertState.ACKNOWLEDGED, at, None, by=by, comment=comment
            )
        ]

    def resolve(self, alert_id: str, by: str, reason: str, at: datetime) -> list[Transition]:
        """A person closes the alert by hand, with a reason (the module doc says what follows)."""
        alert = self._find_open(alert_id, "resolve")
        if not by or not reason or not reason.strip():
            raise LifecycleError("resolving by hand needs the person's name and a reason")
        self._restart.add(alert.key)
        return [self._close(alert, at, None, by=by, reason=reason)]

    # ---- internals -------------------------------------------------------------------------------

    def _find_open(self, alert_id: str, action: str) -> Alert:
        alert = self._by_id.get(alert_id)
        if alert is not None:
            return alert
        if alert_id in self._recent:
            raise LifecycleError(f"cannot {action} alert {alert_id}: it is already resolved")
        raise AlertNotFound(f"cannot {action} alert {alert_id}: no such open alert")

    def _close(
        self, alert: Alert, at: datetime, value: float | None, by: str | None, reason: str | None
    ) -> Transition:
        previous = alert.state
        alert.state = AlertState.RESOLVED
        alert.resolved_at = at
        alert.resolved_by = by
        alert.resolve_reason = reason
        del self._open[alert.key]
        del self._by_id[alert.id]
        self._recent[alert.id] = alert
        while len(self._recent) > self._keep_resolved:
            self._recent.popitem(last=False)
        return self._transition(alert, previous, at, value, by, reason)

    def _step(
        self,
        alert: Alert,
        previous: AlertState | None,
        state: AlertState,
        at: datetime,
        value: float | None,
        by: str | None = None,
        comment: str | None = None,
    ) -> Transition:
        alert.state = state
        return self._transition(alert, previous, at, value, by, comment)

    @staticmethod
    def _transition(
        alert: Alert,
        previous: AlertState | None,
        at: datetime,
        value: float | None,
        by: str | None,
        comment: str | None,
    ) -> Transition:
        return Transition(
            alert_id=alert.id,
            key=alert.key,
            at=at,
            from_state=previous,
            to_state=alert.state,
            severity=alert.severity,
            actor=by,
            comment=comment,
            value=value,
        )


# ---- readings → evaluators → book ----------------------------------------------------------------


class ThresholdAlerting:
    """Runs each reading through its device's rules and the book; returns the transitions.

    The caller chooses the rules per device (``RuleSet.for_device`` then ``effective`` for the
    site's overrides). Evaluators are created on first use; one for a key that already has an
    open alert (restored after a restart) resumes it, so resolving still takes ``clear_for``.
    """

    def __init__(self, book: AlertBook, catalog: Catalog | None = None) -> None:
        self.book = book
        self.catalog = catalog or default_catalog()
        self._evaluators: dict[AlertKey, ThresholdEvaluator] = {}
        # device → rule id → its key: the hot path builds no key per rule and reading
        self._keys: dict[str, dict[str, AlertKey]] = {}

    def evaluator(self, key: AlertKey, rule: Rule) -> ThresholdEvaluator:
        evaluator = self._evaluators.get(key)
        if evaluator is None:
            evaluator = ThresholdEvaluator(rule.params)
            alert = self.book.get(key)
            if alert is not None and alert.started_at is not None:
                phase = Phase.PENDING if alert.state is AlertState.PENDING else Phase.FIRING
                evaluator.restore(
                    phase,
                    round(alert.started_at.timestamp() * 1000),
                    alert.severity,
                    flapping=bool(alert.labels.get("flapping")),
                )
            self._evaluators[key] = evaluator
        elif evaluator.params is not rule.params:
            evaluator.params = rule.params  # an override changed: keep the state
        return evaluator

    def observe(self, reading: Reading, rules: Sequence[Rule]) -> list[Transition]:
        out: list[Transition] = []
        fields = reading.fields
        flags = reading.flags
        keys = self._keys.get(reading.device)
        if keys is None:
            keys = self._keys[reading.device] = {}
        for rule in rules:
            raw = fields.get(rule.quantity)
            if raw is None or isinstance(raw, bool | str):
                continue
            value = float(raw)
            key = keys.get(rule.id)
            if key is None:
                key = keys[rule.id] = AlertKey(reading.device, rule.id)
            evaluator = self.evaluator(key, rule)
            before = evaluator.evaluated
            evaluator.feed(
                reading.time_ms,
                value,
                flags.get(rule.quantity) if flags else None,
                rule.applicable(fields) if rule.when else True,
            )
            if evaluator.evaluated == before:
                continue  # late, or skipped for its flag: it decides nothing
            if not evaluator.holds and not self.book.tracks(key):
                continue
            info = None if key in self.book else self._info(reading, rule, value)
            out.extend(
                self.book.condition(
                    key,
                    holds=evaluator.holds,
                    at=ms_to_datetime(reading.time_ms),
                    value=value,
                    since=ms_to_datetime(evaluator.since_ms),
                    for_s=rule.for_s,
                    severity=evaluator.severity,
                    info=info,
                    flapping=evaluator.flapping,
                )
            )
        return out

    def _info(self, reading: Reading, rule: Rule, value: float) -> AlertInfo:
        quantity = self.catalog.quantities.get(rule.quantity)
        unit = quantity.unit if quantity is not None else rule.unit
        labels: dict[str, Any] = {
            "confidence": rule.confidence,
            "expected_alert": rule.expected_alert,
            "clause": rule.clause,
        }
        if rule.needs_verification:
            labels["needs_verification"] = True
        if rule.override_reason is not None:
            labels["override"] = rule.override_reason
        return AlertInfo(
            tenant=reading.tenant,
            site=reading.site,
            region=reading.region,
            kind=reading.kind,
            quantity=rule.quantity,
            message=rule.describe(value, unit),
            limit=rule.value,
            standard=rule.citation,
            labels=labels,
        )
