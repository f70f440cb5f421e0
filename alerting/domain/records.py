"""Records not uploaded in time: disinfection logs, medical-waste hand-overs (standards.md §5).

Sites post events through the gateway — ``RecordEvent(site, record_type, at, ref)``: a bag of
medical waste sealed, collected into the temporary store, handed to the disposer; a disinfection
done. The rules (alerting/data/records.yaml, each level with its standard, clause and grade) say
what must follow what, and when:

* ``recurring``: a record of one type is due regularly; overdue once a level's ``after`` has
  passed since the last one (or since the site was put under :meth:`RecordsMonitor.watch`; a site
  that posts such a record once is watched from then on);
* ``follow_up``: every ``trigger`` record must be followed by an ``expect`` record within a
  level's ``after``. A trigger with a ``ref`` (the bag's code) is cleared only by an expected
  record with the same code; one without is cleared by any expected record at or after it (a
  hand-over empties the store).

The monitor is driven by events and a clock (:meth:`RecordsMonitor.tick`), so an overdue record
is reported when the deadline passes, not when something else happens to arrive. One finding per
(site, rule), named ``record:<rule id>``: raised at the first level, escalated at the next, cleared
when the record arrives. Records may arrive out of order (a scanner uploading its backlog after a
ward's post): a trigger whose expected record already arrived — same code, or any at or after it
for an uncoded trigger — is not left pending.

Restarts: the gateway stores every record (``record_events``), and the engine hands the recent
ones (:attr:`RecordsMonitor.replay_window_s`, see :meth:`RecordsMonitor.replay_since`) back with
the open ``record:*`` alerts to :meth:`RecordsMonitor.restore`, which rebuilds the state without
reporting anything; the next :meth:`~RecordsMonitor.tick` raises what fell due meanwhile and
clears what arrived meanwhile.

Memory: one timestamp per (site, recurring rule), the pending triggers per (site, follow-up
rule), capped at ``max_pending`` (the newest are dropped beyond it), and the codes of the expected
records of the last :attr:`~RecordsMonitor.replay_window_s` (for out-of-order arrivals), capped
likewise (the oldest are forgotten).
"""

from __future__ import annotations

import re
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from alerting.domain.findings import Finding, utc
from alerting.model import Alert, Severity
from protocols.datafile import duplicates, load_yaml_model

RECORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "records.yaml"
RULE_PREFIX = "record:"
MIN_REPLAY_S = 7 * 86400.0

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:min|s|m|h|d)\s*)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d)")


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and _DURATION.match(value.strip()):
        return sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    raise ValueError(f"{value!r} is not a positive duration (e.g. 3600, '24h', '1d12h')")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Strict):
    after: Annotated[float, BeforeValidator(_duration)]
    severity: Annotated[Severity, BeforeValidator(Severity.parse)]
    standard: str
    clause: str
    confidence: Literal["A", "B", "C"]


class RecordRule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    type: Literal["recurring", "follow_up"]
    record: str | None = None  # recurring: the record type due
    trigger: str | None = None  # follow_up: the record that starts the clock
    expect: str | None = None  # follow_up: the record that stops it
    # follow_up: a coded trigger waits for an expected record with the same code; False when
    # the two records' codes name different things (a bag handed over, a box disinfected)
    match_ref: bool = True
    levels: tuple[Level, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> RecordRule:
        if self.type == "recurring" and (not self.record or self.trigger or self.expect):
            raise ValueError("a recurring rule names `record` (and no trigger/expect)")
        if self.type == "follow_up" and (not self.trigger or not self.expect or self.record):
            raise ValueError("a follow_up rule names `trigger` and `expect` (and no record)")
        if list(self.levels) != sorted(self.levels, key=lambda lv: lv.after):
            raise ValueError("levels must be in increasing `after`")
        return self

    @property
    def name(self) -> str:
        return f"{RULE_PREFIX}{self.id}"


class RecordRules(_Strict):
    rules: tuple[RecordRule, ...]

    @model_validator(mode="after")
    def _unique(self) -> RecordRules:
        dupes = duplicates(r.id for r in self.rules)
        if dupes:
            raise ValueError(f"duplicate rule ids: {', '.join(dupes)}")
        return self

    def record_types(self) -> tuple[str, ...]:
        """Every record type the rules name (trigger, expect or recurring record), sorted."""
        names = {n for r in self.rules for n in (r.record, r.trigger, r.expect) if n}
        return tuple(sorted(names))


def load_record_rules(path: Path | None = None) -> RecordRules:
    """Read and validate the rules; errors name the file and the rule (by index)."""
    return load_yaml_model(path or RECORDS_FILE, RecordRules)


@cache
def default_record_rules() -> RecordRules:
    return load_record_rules()


@dataclass(frozen=True, slots=True)
class RecordEvent:
    site: str
    record_type: str
    at: float  # unix seconds: when the record says it happened
    ref: str | None = None  # a bag's or batch's code, when the site sends one


class RecordsMonitor:
    """Overdue records across sites; ``event`` and ``tick`` return findings raised or cleared."""

    def __init__(self, rules: RecordRules | None = None, *, max_pending: int = 10_000) -> None:
        self.rules = rules or default_record_rules()
        self.max_pending = max_pending
        self._now = float("-inf")
        self._last: dict[tuple[str, str], float] = {}  # recurring: last record (or watch start)
        self._pending: dict[tuple[str, str], list[tuple[float, str]]] = {}  # follow_up
        self._level: dict[tuple[str, str], int] = {}  # level index reported, per (site, rule)
        # follow_up: the latest expected record, and per code, so a late trigger finds it
        self._done_at: dict[tuple[str, str], float] = {}
        self._done_refs: dict[tuple[str, str], dict[str, float]] = {}
        self._by_id = {r.id: r for r in self.rules.rules}
        longest = max(lv.after for r in self.rules.rules for lv in r.levels)
        self._replay_window_s = max(2.0 * longest, MIN_REPLAY_S)

    def watch(self, site: str, since: float, rules: Iterable[str] | None = None) -> None:
        """Expect the recurring records of ``rules`` (default: all) from ``site`` from ``since``."""
        ids = set(self._by_id) if rules is None else set(rules)
        unknown = ids - set(self._by_id)
        if unknown:
            raise ValueError(f"unknown record rules: {', '.join(sorted(unknown))}")
        for rid in ids:
            if self._by_id[rid].type == "recurring":
                self._last.setdefault((site, rid), since)

    @property
    def replay_window_s(self) -> float:
        """How far back records matter after a restart: twice the longest level, at least 7 d."""
        return self._replay_window_s

    def event(self, ev: RecordEvent, now: float | None = None) -> list[Finding]:
        clock = max(self._now, ev.at) if now is None else now
        self._now = max(self._now, clock)
        out: list[Finding] = []
        for rule in self._apply(ev):
            out += self._evaluate(rule, ev.site, clock)
        return out

    def _apply(self, ev: RecordEvent) -> list[RecordRule]:
        """Update the state with one record; the rules it concerns."""
        touched: list[RecordRule] = []
        uncoded = RecordEvent(ev.site, ev.record_type, ev.at) if ev.ref else ev
        for rule in self.rules.rules:
            key = (ev.site, rule.id)
            e = ev if rule.match_ref else uncoded  # the rule may ignore the record's code
            if rule.type == "recurring" and e.record_type == rule.record:
                self._last[key] = max(self._last.get(key, e.at), e.at)
            elif rule.type == "follow_up" and e.record_type == rule.trigger:
                if self._already_done(key, e):
                    continue
                pending = self._pending.setdefault(key, [])
                if len(pending) < self.max_pending:
                    insort(pending, (e.at, e.ref or ""))
            elif rule.type == "follow_up" and e.record_type == rule.expect:
                self._remember_done(key, e)
                pending = self._pending.get(key)
                if pending:  # a coded trigger needs its own code; an uncoded one, any later
                    pending[:] = [
                        (at, ref)
                        for at, ref in pending
                        if not (ref == e.ref if ref else at <= e.at)
                    ]
            else:
                continue
            touched.append(rule)
        return touched

    def _already_done(self, key: tuple[str, str], ev: RecordEvent) -> bool:
        """A trigger arriving after its expected record (same code, or any for an uncoded one)
        at or after its time."""
        if ev.ref:
            return self._done_refs.get(key, {}).get(ev.ref, float("-inf")) >= ev.at
        return self._done_at.get(key, float("-inf")) >= ev.at

    def _remember_done(self, key: tuple[str, str], ev: RecordEvent) -> None:
        self._done_at[key] = max(self._done_at.get(key, ev.at), ev.at)
        if not ev.ref:
            return
        refs = self._done_refs.setdefault(key, {})
        latest = max(refs.pop(ev.ref, ev.at), ev.at)
        refs[ev.ref] = latest  # re-inserted: the dict stays roughly oldest first
        horizon = max(self._now, ev.at) - self.replay_window_s
        while refs and (len(refs) > self.max_pending or next(iter(refs.values())) < horizon):
            del refs[next(iter(refs))]

    # ---- restarts ----------------------------------------------------------------------------

    def replay_since(
        self, open_alerts: Iterable[Alert], now: float
    ) -> tuple[float, dict[str, float]]:
        """What to replay after a restart: records from ``now - replay_window_s``, and for each
        site with an open ``record:*`` alert whose clock started earlier, from that start (so
        the alert is judged on the record that started it) — ``(since, {site: since})``."""
        since = now - self.replay_window_s
        sites: dict[str, float] = {}
        for alert in open_alerts:
            if self._rule_of(alert) is None:
                continue
            start = _label_time(alert.labels.get("since"))
            if start is None and alert.started_at is not None:
                start = alert.started_at.timestamp() - self.replay_window_s
            if start is None:
                continue
            start -= 1.0  # float ↔ datetime rounding
            site = alert.key.device
            if start < min(since, sites.get(site, since)):
                sites[site] = start
        return since, sites

    def restore(self, events: Iterable[RecordEvent], open_alerts: Iterable[Alert]) -> None:
        """Rebuild a fresh monitor after a restart, reporting nothing.

        ``events``: the stored records (oldest first; see :meth:`replay_since`); ``open_alerts``:
        the alert book's open alerts, of which the ``record:*`` ones (subject: the site) set the
        level already reported. The next :meth:`tick` then raises what became overdue while the
        platform was down, escalates what passed its next level, and clears the open alerts
        whose record has arrived; history whose alert was raised and cleared stays quiet.
        """
        for ev in events:
            self._apply(ev)
            self._now = max(self._now, ev.at)
        for alert in open_alerts:
            rule = self._rule_of(alert)
            if rule is None:
                continue
            reached = [i for i, lv in enumerate(rule.levels) if lv.severity <= alert.severity]
            self._level[(alert.key.device, rule.id)] = max(reached, default=0)

    def _rule_of(self, alert: Alert) -> RecordRule | None:
        name = alert.key.rule
        return self._by_id.get(name[len(RULE_PREFIX) :]) if name.startswith(RULE_PREFIX) else None

    def tick(self, now: float) -> list[Finding]:
        """Report what has become overdue by ``now`` (call every minute or so)."""
        self._now = max(self._now, now)
        out: list[Finding] = []
        # with the levels reported: an alert restored for a record no longer waited for clears
        keys = set(self._last) | {k for k, v in self._pending.items() if v} | set(self._level)
        for site, rid in sorted(keys):
            out += self._evaluate(self._by_id[rid], site, now)
        return out

    def _since(self, rule: RecordRule, site: str) -> tuple[float | None, int]:
        """When the clock started for (site, rule), and how many records are waiting."""
        key = (site, rule.id)
        if rule.type == "recurring":
            last = self._last.get(key)
            return last, 0 if last is None else 1
        pending = self._pending.get(key)
        return (pending[0][0], len(pending)) if pending else (None, 0)

    def _evaluate(self, rule: RecordRule, site: str, now: float) -> list[Finding]:
        key = (site, rule.id)
        since, waiting = self._since(rule, site)
        level = -1
        if since is not None:
            age = now - since
            for i, lv in enumerate(rule.levels):
                if age >= lv.after:
                    level = i
        reported = self._level.get(key, -1)
        if level == reported:
            return []
        if level < 0:
            del self._level[key]
            first = rule.levels[0]
            return [
                Finding(
                    rule=rule.name,
                    subject=site,
                    at=utc(now),
                    severity=first.severity,
                    message=f"{site}: {self._what(rule)} received",
                    active=False,
                    standard=f"{first.standard} {first.clause}",
                    detail={"rule": rule.id},
                )
            ]
        self._level[key] = level
        lv = rule.levels[level]
        assert since is not None
        hours = (now - since) / 3600.0
        return [
            Finding(
                rule=rule.name,
                subject=site,
                at=utc(now),
                severity=lv.severity,
                message=(
                    f"{site}: {self._what(rule)} overdue — {hours:.1f} h since "
                    f"{utc(since):%Y-%m-%d %H:%M} UTC, limit {lv.after / 3600:g} h "
                    f"({lv.standard} {lv.clause}, grade {lv.confidence})"
                ),
                value=round(hours, 3),
                limit=lv.after / 3600.0,
                standard=f"{lv.standard} {lv.clause}",
                detail={"rule": rule.id, "since": utc(since).isoformat(), "waiting": waiting},
            )
        ]

    @staticmethod
    def _what(rule: RecordRule) -> str:
        if rule.type == "recurring":
            return f"record {rule.record!r}"
        return f"{rule.expect!r} after {rule.trigger!r}"


def _label_time(value: Any) -> float | None:
    """An alert label's ISO time (``since``) as epoch seconds, None if absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None
