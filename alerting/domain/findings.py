"""What a domain monitor reports: a named finding about one subject, raised or cleared.

Findings use the expected-alert vocabulary of docs/scenarios.md (``sterilizer:hold_too_short``,
…) plus this package's own names (``dose:*``, ``record:*``), so the detection benchmark can match
them and the alert lifecycle can key them: one open alert per (subject, rule), which
:attr:`Finding.key` gives. A monitor raises a finding when a condition starts (``active=True``)
and clears it (``active=False``) when the condition ends, so alerts clear by themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerting.model import AlertKey, Severity


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # e.g. "sterilizer:hold_too_short", "dose:investigation_level", "record:mw.storage"
    subject: str  # a device id; a site id for record rules
    at: datetime  # when the monitor knew (UTC)
    severity: Severity
    message: str  # for a person: what, the value against the limit, the standard
    active: bool = True  # False: the condition has cleared
    value: float | None = None
    limit: float | None = None
    standard: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> AlertKey:
        return AlertKey(self.subject, self.rule)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
