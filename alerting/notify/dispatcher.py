"""The notifier: alert transitions in, grouped and routed messages out, retried per recipient.

Three stages, so that nothing a channel does can slow detection down:

1. ``submit(transition, alert)`` — called by the alert engine on its hot path. It appends a
   snapshot to a bounded queue and returns: O(1), no I/O, never blocks. When the queue is full
   the *oldest* entry is dropped and counted (``stats.dropped``).
2. The planner task drains that queue and keeps, per open alert, what was sent and which timers
   run: grouping windows, the repeat interval, the escalation deadline. It routes each message
   to recipients (officers by jurisdiction, plus broadcast sinks like the MQTT alert topic).
3. One *lane* per (channel, recipient address): a small bounded FIFO with its own task, which
   sends, retries with capped exponential back-off, and moves on. A hung webhook therefore
   stalls only its own lane; other recipients and channels are unaffected. A full lane drops
   its oldest message (counted per channel as ``dropped``).

All timing goes through an injectable :class:`~alerting.notify.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alerting.model import Alert, AlertState, Severity, Transition
from alerting.notify.channel import Channel, DeliveryError, RetryableError
from alerting.notify.clock import Clock, SystemClock, TimerHandle
from alerting.notify.mqtt import MqttAlertChannel
from alerting.notify.notification import Notification, NotificationKind, Recipient
from alerting.notify.routing import OfficerLookup, Router
from alerting.notify.settings import NotifySettings
from alerting.notify.sms import SmsChannel
from alerting.notify.smtp import EmailChannel
from alerting.notify.webhook import WebhookChannel
from protocols.backoff import retry_delay

log = logging.getLogger(__name__)

# Delivery outcomes counted per channel in NotifyStats.deliveries.
QUEUED = "queued"
ATTEMPT = "attempt"
DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"  # permanent error
GAVE_UP = "gave_up"  # retryable errors until retry_max_attempts
DROPPED = "dropped"  # pushed out of a full lane
ABANDONED = "abandoned"  # still queued or in flight when the dispatcher closed

_FIRING_KINDS = (NotificationKind.FIRING, NotificationKind.REPEAT, NotificationKind.ESCALATION)


def rule_family(rule: str) -> str:
    """The part of a rule id before its first ``:``, ``.`` or ``/``.

    ``anomaly:spike:turbidity`` → ``anomaly``; ``nodata:ph`` → ``nodata``;
    ``gb5749.turbidity.outlet`` → ``gb5749``; ``nodata`` → ``nodata``.
    """
    for i, ch in enumerate(rule):
        if ch in ":./" and i > 0:
            return rule[:i]
    return rule


def default_group_key(alert: Alert) -> str:
    """``tenant/site/family``; the engine may set ``labels["rule_family"]`` to choose the family."""
    family = alert.labels.get("rule_family") or rule_family(alert.key.rule)
    return f"{alert.tenant}/{alert.site}/{family}"


@dataclass
class NotifyStats:
    """Counters for metrics; ``deliveries`` is keyed by (channel, outcome)."""

    submitted: int = 0
    dropped: int = 0  # transitions dropped from the full submit queue (oldest first)
    notifications: Counter[str] = field(default_factory=Counter)  # by kind
    unroutable: int = 0  # messages with no recipient at all
    escalations: int = 0
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)

    def delivery_count(self, outcome: str, channel: str | None = None) -> int:
        return sum(
            n
            for (ch, out), n in self.deliveries.items()
            if out == outcome and (channel is None or ch == channel)
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "dropped": self.dropped,
            "notifications": dict(self.notifications),
            "unroutable": self.unroutable,
            "escalations": self.escalations,
            "deliveries": {f"{ch}.{out}": n for (ch, out), n in sorted(self.deliveries.items())},
        }


@dataclass(slots=True)
class _Tracked:
    alert: Alert  # the dispatcher's own copy; escalation_level and notified_at are set on it
    state: AlertState
    level: int
    notified: bool = False
    notified_severity: Severity | None = None
    repeat: TimerHandle | None = None
    escalate: TimerHandle | None = None

    def cancel_timers(self) -> None:
        for timer in (self.repeat, self.escalate):
            if timer is not None:
                timer.cancel()
        self.repeat = self.escalate = None


_GroupKey = tuple[NotificationKind, int, str, str]  # kind, level, region, group name


@dataclass(slots=True)
class _Group:
    alerts: dict[str, Alert] = field(default_factory=dict)  # by alert id, latest snapshot
    timer: TimerHandle | None = None
    last_sent: float | None = None
    cleanup: TimerHandle | None = None


@dataclass(slots=True)
class _Lane:
    queue: deque[tuple[Notification, Recipient]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


def _snapshot(alert: Alert) -> Alert:
    snap = copy.copy(alert)
    snap.labels = dict(alert.labels)
    return snap


def build_channels(settings: NotifySettings) -> dict[str, Channel]:
    """The channels whose settings sections are present."""
    channels: list[Channel] = []
    links = settings.links
    if settings.webhook is not None:
        channels.append(WebhookChannel(settings.webhook, links=links))
    if settings.email is not None:
        channels.append(EmailChannel(settings.email, links=links))
    if settings.sms is not None:
        channels.append(SmsChannel.from_settings(settings.sms, links=links))
    if settings.mqtt is not None:
        channels.append(MqttAlertChannel(settings.mqtt, links=links))
    return {c.name: c for c in channels}


class Dispatcher:
    """Use as ``async with Dispatcher(...) as d: d.submit(t, alert)`` (or ``start``/``aclose``).

    ``submit`` must be called on the event loop's thread. ``on_alert_update`` is called with the
    dispatcher's copy of an alert when it sets ``notified_at`` or raises ``escalation_level``,
    so the alert store can persist them.
    """

    def __init__(
        self,
        settings: NotifySettings,
        router: Router,
        channels: Mapping[str, Channel] | Iterable[Channel],
        *,
        clock: Clock | None = None,
        group_key: Callable[[Alert], str] = default_group_key,
        on_alert_update: Callable[[Alert], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        items = channels.values() if isinstance(channels, Mapping) else channels
        self.channels: dict[str, Channel] = {c.name: c for c in items}
        self.clock: Clock = clock or SystemClock()
        self.group_key = group_key
        self.on_alert_update = on_alert_update
        self.stats = NotifyStats()
        self._rng = rng or random.Random()
        self._inbox: deque[tuple[Transition, Alert]] = deque()
        self._wake = asyncio.Event()
        self._planner: asyncio.Task[None] | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._groups: dict[_GroupKey, _Group] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: NotifySettings, lookup: OfficerLookup, **kwargs: Any
    ) -> Dispatcher:
        return cls(settings, Router(lookup), build_channels(settings), **kwargs)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for channel in self.channels.values():
            try:
                await channel.start()
            except Exception:  # a channel that can't start yet retries per delivery
                log.exception("notify channel %s failed to start", channel.name)
        if self._planner is None:
            self._planner = asyncio.create_task(self._plan(), name="notify-planner")

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Plan what was submitted, send groups still collecting, give lanes
        ``drain_timeout_s`` to finish, then cancel what is left (counted as abandoned)."""
        if self._closed:
            return
        self._closed = True
        if self._planner is not None:
            self._planner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._planner
        self._plan_batch(len(self._inbox))
        for key, group in list(self._groups.items()):
            for timer in (group.timer, group.cleanup):
                if timer is not None:
                    timer.cancel()
            if group.alerts:
                self._flush(key)
        self._groups.clear()
        for tracked in self._tracked.values():
            tracked.cancel_timers()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        for (channel, _), lane in self._lanes.items():
            left = len(lane.queue) + (1 if lane.task is not None and not lane.task.done() else 0)
            if left:
                self.stats.deliveries[(channel, ABANDONED)] += left
                log.warning("notify: %d message(s) for %s abandoned at shutdown", left, channel)
            if lane.task is not None:
                lane.task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("notify channel %s failed to close", channel.name)

    # ---- the hot path -----------------------------------------------------------------------

    def submit(self, transition: Transition, alert: Alert) -> None:
        """Hand over one transition and the alert's current state; returns at once."""
        self.stats.submitted += 1
        if self._closed:  # shutting down: nobody would plan it
            self.stats.dropped += 1
            return
        if len(self._inbox) >= self.settings.queue_size:
            self._inbox.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning(
                    "notify queue full: dropped %d transition(s) so far", self.stats.dropped
                )
        self._inbox.append((transition, _snapshot(alert)))
        self._wake.set()

    @property
    def queued(self) -> int:
        """Transitions not yet planned plus messages waiting or in flight in lanes."""
        in_lanes = sum(len(lane.queue) + (lane.task is not None) for lane in self._lanes.values())
        return len(self._inbox) + in_lanes

    # ---- planning ---------------------------------------------------------------------------

    async def _plan(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                self._plan_batch(500)
                await asyncio.sleep(0)  # let the engine run between batches

    def _plan_batch(self, limit: int) -> None:
        for _ in range(min(limit, len(self._inbox))):
            transition, alert = self._inbox.popleft()
            try:
                self._handle(transition, alert)
            except Exception:
                log.exception("notify: cannot plan %s of alert %s", transition.to_state, alert.id)

    def _handle(self, transition: Transition, alert: Alert) -> None:
        to = transition.to_state
        tracked = self._tracked.get(alert.id)
        if to is AlertState.FIRING:
            if tracked is None:
                tracked = _Tracked(alert, to, alert.escalation_level)
                self._tracked[alert.id] = tracked
                if alert.notified_at is not None:  # resubmitted after a restart: resume quietly
                    tracked.notified = True
                    tracked.notified_severity = alert.severity
                    self._start_timers(tracked)
                    return
                self._add(NotificationKind.FIRING, alert, tracked.level)
                return
            was = tracked.state
            alert.escalation_level = max(alert.escalation_level, tracked.level)
            alert.notified_at = alert.notified_at or tracked.alert.notified_at
            tracked.alert, tracked.state = alert, to
            if not tracked.notified or (
                tracked.notified_severity is not None and alert.severity > tracked.notified_severity
            ):
                self._add(NotificationKind.FIRING, alert, tracked.level)
            elif was is not AlertState.FIRING:
                self._start_timers(tracked)
        elif to is AlertState.ACKNOWLEDGED and transition.from_state is AlertState.ACKNOWLEDGED:
            # A severity change of an acknowledged alert: tell them it got worse (no reminders).
            if tracked is None:
                return
            alert.escalation_level = max(alert.escalation_level, tracked.level)
            alert.notified_at = alert.notified_at or tracked.alert.notified_at
            tracked.alert = alert
            if tracked.notified and alert.severity > (tracked.notified_severity or 0):
                self._add(NotificationKind.FIRING, alert, tracked.level)
        elif to is AlertState.ACKNOWLEDGED:
            notified = alert.notified_at is not None
            level = alert.escalation_level
            if tracked is not None:
                tracked.cancel_timers()
                alert.escalation_level = level = max(level, tracked.level)
                tracked.alert, tracked.state = alert, to
                notified = tracked.notified
            if self.settings.notify_on_ack and notified:
                self._add(NotificationKind.ACKNOWLEDGED, alert, level)
        elif to is AlertState.RESOLVED:
            tracked = self._tracked.pop(alert.id, None)
            level = alert.escalation_level
            if tracked is not None:
                tracked.cancel_timers()
                notified = tracked.notified
                alert.escalation_level = level = max(level, tracked.level)
            else:  # not seen since a restart: the alert itself says whether it was sent
                notified = alert.notified_at is not None or alert.fired_at is not None
            if notified:
                self._add(NotificationKind.RESOLVED, alert, level)

    def _start_timers(self, tracked: _Tracked) -> None:
        s, alert_id = self.settings, tracked.alert.id
        if s.repeat_interval_s is not None and tracked.repeat is None:
            tracked.repeat = self.clock.call_later(
                s.repeat_interval_s, self._guard(self._on_repeat, alert_id)
            )
        if (
            s.escalate_after_s is not None
            and tracked.escalate is None
            and tracked.level < self.router.max_level(tracked.alert.region)
        ):
            tracked.escalate = self.clock.call_later(
                s.escalate_after_s, self._guard(self._on_escalate, alert_id)
            )

    def _on_repeat(self, alert_id: str) -> None:
        tracked = self._tracked.get(alert_id)
        if tracked is None or tracked.state is not AlertState.FIRING:
            return
        tracked.repeat = None
        self._add(NotificationKind.REPEAT, tracked.alert, tracked.level)
        self._start_timers(tracked)

    def _on_escalate(self, alert_id: str) -> None:
        tracked = self._tracked.get(alert_id)
        if tracked is None or tracked.state is not AlertState.FIRING:
            return
        tracked.escalate = None
        if tracked.level >= self.router.max_level(tracked.alert.region):
            return
        tracked.level += 1
        tracked.alert.escalation_level = tracked.level
        self.stats.escalations += 1
        log.warning(
            "alert %s (%s at site %s) not acknowledged after %.0f s: escalated to level %d",
            alert_id,
            tracked.alert.key.rule,
            tracked.alert.site,
            self.settings.escalate_after_s,
            tracked.level,
        )
        self._alert_updated(tracked.alert)
        self._add(NotificationKind.ESCALATION, tracked.alert, tracked.level)
        self._start_timers(tracked)

    def _alert_updated(self, alert: Alert) -> None:
        if self.on_alert_update is not None:
            try:
                self.on_alert_update(_snapshot(alert))
            except Exception:
                log.exception("notify: on_alert_update failed for alert %s", alert.id)

    def _guard(self, fn: Callable[[str], None], arg: str) -> Callable[[], None]:
        def run() -> None:
            if self._closed:
                return
            try:
                fn(arg)
            except Exception:
                log.exception("notify: timer %s failed for %s", fn.__name__, arg)

        return run

    # ---- grouping -------------------------------------------------------------------------

    def _add(self, kind: NotificationKind, alert: Alert, level: int) -> None:
        key: _GroupKey = (kind, level, alert.region, self.group_key(alert))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        if group.cleanup is not None:
            group.cleanup.cancel()
            group.cleanup = None
        group.alerts[alert.id] = alert
        if group.timer is None:
            s, now = self.settings, self.clock.monotonic()
            if group.last_sent is None or now - group.last_sent >= s.group_interval_s:
                delay = s.group_wait_s
            else:
                delay = group.last_sent + s.group_interval_s - now
            group.timer = self.clock.call_later(delay, lambda: self._on_group_due(key))

    def _on_group_due(self, key: _GroupKey) -> None:
        if self._closed:
            return
        try:
            self._flush(key)
        except Exception:
            log.exception("notify: cannot send group %s", key)

    def _flush(self, key: _GroupKey) -> None:
        kind, level, _, name = key
        group = self._groups.get(key)
        if group is None:
            return
        group.timer = None
        alerts = list(group.alerts.values())
        group.alerts.clear()
        if kind in _FIRING_KINDS:
            # Only what is still firing: an alert acknowledged or resolved while its group
            # was collecting is not announced (and then not announced as resolved either) --
            # except an acknowledged alert whose severity rose after it was announced.
            live = [
                t
                for t in (self._tracked.get(a.id) for a in alerts)
                if t is not None
                and (
                    t.state is AlertState.FIRING
                    or (
                        kind is NotificationKind.FIRING
                        and t.state is AlertState.ACKNOWLEDGED
                        and t.notified
                        and t.alert.severity > (t.notified_severity or 0)
                    )
                )
            ]
            now = self.clock.now()
            for tracked in live:
                if kind is NotificationKind.FIRING:
                    first = not tracked.notified
                    tracked.notified = True
                    tracked.notified_severity = tracked.alert.severity
                    tracked.alert.notified_at = now
                    if first:
                        self._alert_updated(tracked.alert)
                    if tracked.state is AlertState.FIRING:
                        self._start_timers(tracked)
            alerts = [t.alert for t in live]
        if alerts:
            group.last_sent = self.clock.monotonic()
            self._emit(kind, level, name, alerts)
        if not self._closed:
            group.cleanup = self.clock.call_later(
                self.settings.group_interval_s, lambda: self._expire_group(key)
            )

    def _expire_group(self, key: _GroupKey) -> None:
        group = self._groups.get(key)
        if group is not None and group.timer is None and not group.alerts:
            del self._groups[key]

    # ---- routing and lanes ----------------------------------------------------------------

    def _emit(self, kind: NotificationKind, level: int, group: str, alerts: list[Alert]) -> None:
        alerts = sorted(alerts, key=lambda a: (-a.severity, a.key.device, a.key.rule))
        first = alerts[0]
        notification = Notification(
            id=uuid.uuid4().hex,
            kind=kind,
            alerts=tuple(_snapshot(a) for a in alerts),
            group=group,
            tenant=first.tenant,
            site=first.site,
            region=first.region,
            escalation_level=level,
            created_at=self.clock.now(),
        )
        self.stats.notifications[str(kind)] += 1
        floors = {name: ch.min_severity for name, ch in self.channels.items()}
        recipients = self.router.recipients(first.region, notification.severity, level, floors)
        for channel in self.channels.values():
            if notification.severity >= channel.min_severity:
                recipients.extend(channel.broadcast_recipients(notification))
        seen: set[tuple[str, str]] = set()
        unique = []
        for r in recipients:
            if (r.channel, r.address) not in seen:
                seen.add((r.channel, r.address))
                unique.append(r)
        if not unique:
            self.stats.unroutable += 1
            log.warning(
                "notify: nobody to tell about %s %s (%d alert(s), site %s, region %s): no "
                "officers on an enabled channel in the region, its city or its province",
                kind,
                notification.id,
                len(alerts),
                first.site,
                first.region,
            )
            return
        log.info(
            "notify: %s %s for site %s (%d alert(s), %s, level %d) to %d recipient(s)",
            kind,
            notification.id,
            first.site,
            len(alerts),
            notification.severity.name.lower(),
            level,
            len(unique),
        )
        for recipient in unique:
            self._enqueue(notification, recipient)

    def _enqueue(self, notification: Notification, recipient: Recipient) -> None:
        key = (recipient.channel, recipient.address)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if len(lane.queue) >= self.settings.lane_queue_size:
            old, _ = lane.queue.popleft()
            self.stats.deliveries[(recipient.channel, DROPPED)] += 1
            log.warning(
                "notify: %s lane to %s is full; dropped %s %s (oldest)",
                recipient.channel,
                recipient.display(),
                old.kind,
                old.id,
            )
        lane.queue.append((notification, recipient))
        self.stats.deliveries[(recipient.channel, QUEUED)] += 1
        if lane.task is None:
            lane.task = asyncio.get_running_loop().create_task(
                self._run_lane(key, lane), name=f"notify-{recipient.channel}"
            )

    async def _run_lane(self, key: tuple[str, str], lane: _Lane) -> None:
        try:
            while lane.queue:
                notification, recipient = lane.queue.popleft()
                await self._deliver(notification, recipient)
        finally:
            lane.task = None
            if not lane.queue and self._lanes.get(key) is lane and not self._closed:
                del self._lanes[key]

    async def _deliver(self, notification: Notification, recipient: Recipient) -> None:
        channel = self.channels[recipient.channel]
        s = self.settings
        started = self.clock.monotonic()
        attempt = 0
        while True:
            self.stats.deliveries[(channel.name, ATTEMPT)] += 1
            error: DeliveryError
            try:
                async with asyncio.timeout(s.send_timeout_s):
                    await channel.send(notification, recipient)
            except DeliveryError as exc:
                error = exc
            except TimeoutError:
                error = RetryableError(f"no result within send_timeout_s={s.send_timeout_s:g}")
            except Exception as exc:  # a channel bug: log it in full, then treat as transient
                log.exception("notify: %s channel raised unexpectedly", channel.name)
                error = RetryableError(f"{type(exc).__name__}: {exc}")
            else:
                self.stats.deliveries[(channel.name, DELIVERED)] += 1
                log.info(
                    "notify: delivered %s %s via %s to %s (attempt %d, %.1f s)",
                    notification.kind,
                    notification.id,
                    channel.name,
                    recipient.display(),
                    attempt + 1,
                    self.clock.monotonic() - started,
                )
                return
            if not error.retryable or attempt + 1 >= s.retry_max_attempts:
                outcome = FAILED if not error.retryable else GAVE_UP
                self.stats.deliveries[(channel.name, outcome)] += 1
                log.error(
                    "notify: %s %s via %s to %s %s after %d attempt(s): %s",
                    notification.kind,
                    notification.id,
                    channel.name,
                    recipient.display(),
                    "failed" if outcome == FAILED else "given up",
                    attempt + 1,
                    error,
                )
                return
            delay = retry_delay(
                attempt,
                base=s.retry_base_s,
                cap=s.retry_cap_s,
                retry_after=error.retry_after,
                rng=self._rng,
            )
            self.stats.deliveries[(channel.name, RETRY)] += 1
            log.warning(
                "notify: %s %s via %s to %s failed (attempt %d): %s; retrying in %.1f s",
                notification.kind,
                notification.id,
                channel.name,
                recipient.display(),
                attempt + 1,
                error,
                delay,
            )
            await self.clock.sleep(delay)
            attempt += 1
