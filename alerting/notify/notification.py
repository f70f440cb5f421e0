"""What the dispatcher hands to a channel: a message about one or more alerts, and a recipient."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from alerting.model import Alert, Severity


class NotificationKind(StrEnum):
    FIRING = "firing"  # first notice (or the severity went up)
    REPEAT = "repeat"  # still firing, nobody acknowledged
    ESCALATION = "escalation"  # unacknowledged past the deadline: the next level is told
    ACKNOWLEDGED = "acknowledged"  # optional (NotifySettings.notify_on_ack)
    RESOLVED = "resolved"  # cleared by itself or by hand; only for alerts that were notified


@dataclass(frozen=True, slots=True)
class Notification:
    """One message; ``alerts`` are snapshots taken when the transitions were submitted.

    Alerts in one notification share the group key (tenant, site, rule family), the kind and the
    escalation level, so one subject line and one set of recipients fits them all.
    """

    id: str  # uuid4 hex; receivers may de-duplicate retries on it
    kind: NotificationKind
    alerts: tuple[Alert, ...]
    group: str
    tenant: str
    site: str
    region: str
    escalation_level: int
    created_at: datetime

    @property
    def severity(self) -> Severity:
        return max(a.severity for a in self.alerts)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Where one delivery goes: a channel and an address (e-mail, phone, URL or MQTT topic)."""

    channel: str
    address: str
    name: str | None = None  # the officer; None for broadcast sinks (MQTT, command centre)
    region: str | None = None  # the jurisdiction the officer was found in

    def display(self) -> str:
        """The address for logs: phone numbers masked, URL query strings (tokens) dropped."""
        address = self.address
        if self.channel == "sms" and len(address) >= 7:
            address = address[:3] + "*" * (len(address) - 7) + address[-4:]
        elif self.channel == "webhook":
            address = address.split("?", 1)[0]
        return f"{self.name} <{address}>" if self.name else address
