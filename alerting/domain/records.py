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
when the record arrives. Memory: one timestamp per (site, recurring rule), the pending triggers
per (site, follow-up rule), capped at ``max_pending`` (the newest are dropped beyond it).
"""

from __future__ import annotations

import re
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from alerting.domain.findings import Finding, utc
from alerting.model import Severity

RECORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "records.yaml"

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
        return f"record:{self.id}"


class RecordRules(_Strict):
    rules: tuple[RecordRule, ...]

    @model_validator(mode="after")
    def _unique(self) -> RecordRules:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate rule ids: {', '.join(dupes)}")
        return self


def load_record_rules(path: Path | None = None) -> RecordRules:
    """Read and validate the rules; errors name the file and the rule (by index)."""
    path = path or RECORDS_FILE
    try:
        return RecordRules.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from exc


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
        self._by_id = {r.id: r for r in self.rules.rules}

    def watch(self, site: str, since: float, rules: Iterable[str] | None = None) -> None:
        """Expect the recurring records of ``rules`` (default: all) from ``site`` from ``since``."""
        ids = set(self._by_id) if rules is None else set(rules)
        unknown = ids - set(self._by_id)
        if unknown:
            raise ValueError(f"unknown record rules: {', '.join(sorted(unknown))}")
        for rid in ids:
            if self._by_id[rid].type == "recurring":
                self._last.setdefault((site, rid), since)

    def event(self, ev: RecordEvent, now: float | None = None) -> list[Finding]:
        clock = max(self._now, ev.at) if now is None else now
        self._now = max(self._now, clock)
        out: list[Finding] = []
        for rule in self.rules.rules:
            key = (ev.site, rule.id)
            if rule.type == "recurring" and ev.record_type == rule.record:
                self._last[key] = max(self._last.get(key, ev.at), ev.at)
            elif rule.type == "follow_up" and ev.record_type == rule.trigger:
                pending = self._pending.setdefault(key, [])
                if len(pending) < self.max_pending:
                    insort(pending, (ev.at, ev.ref or ""))
            elif rule.type == "follow_up" and ev.record_type == rule.expect:
                pending = self._pending.get(key)
                if pending:  # a coded trigger needs its own code; an uncoded one, any later
                    pending[:] = [
                        (at, ref)
                        for at, ref in pending
                        if not (ref == ev.ref if ref else at <= ev.at)
                    ]
            else:
                continue
            out += self._evaluate(rule, ev.site, clock)
        return out

    def tick(self, now: float) -> list[Finding]:
        """Report what has become overdue by ``now`` (call every minute or so)."""
        self._now = max(self._now, now)
        out: list[Finding] = []
        keys = set(self._last) | {k for k, v in self._pending.items() if v}
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
