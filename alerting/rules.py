"""Threshold rules as data: the limits of the national standards, per device kind and venue.

The rule files (``alerting/data/rules/*.yaml``, format in docs/alerting.md) name the standard,
clause and confidence grade beside every value, so a supervisor can read, audit and override them.
They are validated here at load time against the quantity catalog (protocols/data) and the venue
types, and every problem is reported with the file and the rule it is in -- a wrong limit must
stop the platform from starting, not silently never fire.

Per-site overrides live in the registry (``RuleOverride``), are validated exactly like the files
and audited in the same transaction (``save_override``); ``RuleSet.effective`` applies them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from alerting.model import Severity
from alerting.thresholds import ThresholdParams
from gateway.registry.models import AuditEntry, RuleOverride, utcnow
from protocols.catalog import DATA_DIR as PROTOCOL_DATA_DIR
from protocols.catalog import Catalog, default_catalog
from protocols.reading import DATA_FLAGS

RULES_DIR = Path(__file__).resolve().parent / "data" / "rules"
VENUES_FILE = PROTOCOL_DATA_DIR / "venues.yaml"

Comparator = Literal["<", "<=", ">", ">="]
Confidence = Literal["A", "B", "C"]
RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,119}$")
EXPECTED_ALERT = re.compile(r"^[a-z_]+(:[a-z0-9_]+)+$")
_CACHE_LIMIT = 4096

# ---- durations -----------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:ms|min|s|m|h|d)\s*)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"1h30m"`` or a timedelta; never negative."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value.strip()):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 0, 90, '90s', '5m', '1h30m')")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {value!r} must be finite and not negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class RuleError(ValueError):
    """Invalid rules or overrides; every line names the file (or site) and the rule."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# ---- the file format (validated with pydantic) -----------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LevelSpec(_Strict):
    value: float
    severity: str


class ClearSpec(_Strict):
    value: float | tuple[float, float] | None = None  # [low side, high side] for a range rule
    for_: Duration | None = Field(default=None, alias="for")


class FlapSpec(_Strict):
    max_refires: int = Field(default=2, ge=0)
    window: Duration = 3600.0  # 0: no flap detection
    stable_for: Duration = 1800.0


class DefaultsSpec(_Strict):
    for_: Duration = Field(default=300.0, alias="for")
    clear_for: Duration = 300.0
    data_flags: list[str] = ["N", "T"]
    flap: FlapSpec = FlapSpec()


class AttributeSpec(_Strict):
    description: str
    values: list[Any] = Field(min_length=1)


class RuleSpec(_Strict):
    id: str
    quantity: str
    unit: str | None = None
    kinds: list[str] = Field(min_length=1)
    context: dict[str, Any] = {}
    comparator: Comparator | None = None
    value: float | None = None
    range: tuple[float, float] | None = None
    severity: str = "critical"
    levels: list[LevelSpec] = []
    for_: Duration | None = Field(default=None, alias="for")
    clear: ClearSpec | None = None
    standard: str = Field(min_length=1)
    clause: str = Field(min_length=1)
    confidence: Confidence
    data_flags: list[str] | None = None
    expected_alert: str | None = None
    inapplicable: Literal["skip", "clear"] = "skip"
    enabled: bool = True
    note: str = ""
    flap: FlapSpec | None = None

    @field_validator("confidence", mode="before")
    @classmethod
    def _grade(cls, value: Any) -> Any:
        # standards.md writes "C-verify" in places: the grade is the letter.
        return value[:1].upper() if isinstance(value, str) and value else value


class RuleFile(_Strict):
    description: str = ""
    defaults: DefaultsSpec = DefaultsSpec()
    attributes: dict[str, AttributeSpec] = {}  # the site attributes this file's rules may test
    rules: list[dict[str, Any]] = Field(min_length=1)


# ---- compiled rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """One context condition: any of ``values`` (``None``: the attribute is absent)."""

    values: frozenset[Any]
    negate: bool = False

    def __call__(self, present: bool, value: Any) -> bool:
        hit = (value if present else None) in self.values
        return hit != self.negate

    def describe(self) -> str:
        shown = ", ".join(sorted("(absent)" if v is None else str(v) for v in self.values))
        return ("not " if self.negate else "") + shown


_MISSING = object()


@dataclass(frozen=True, slots=True)
class Rule:
    """One side of one limit, with everything the evaluator, the alert and the audit need."""

    id: str
    quantity: str
    kinds: frozenset[str]
    venue_types: frozenset[str] | None  # None: any venue
    attributes: tuple[tuple[str, Match], ...]  # site attributes
    when: tuple[tuple[str, Match], ...]  # conditions on the reading's other fields
    comparator: str
    value: float
    severity: Severity
    levels: tuple[tuple[float, Severity], ...]
    for_s: float
    clear_value: float
    clear_for_s: float
    standard: str
    clause: str
    confidence: str
    data_flags: frozenset[str]
    expected_alert: str
    inapplicable: str
    enabled: bool
    note: str
    flap_max_refires: int
    flap_window_s: float
    flap_stable_s: float
    unit: str | None
    source: str  # the rule file's name
    override_reason: str | None = None  # set when a per-site override changed this rule
    params: ThresholdParams = field(init=False, compare=False, repr=False)

    @property
    def high(self) -> bool:
        return self.comparator[0] == ">"

    @property
    def direction(self) -> str:
        return "high" if self.high else "low"

    @property
    def needs_verification(self) -> bool:
        """Grade C: the value was not read in the standard's text; a supervisor must check it."""
        return self.confidence == "C"

    @property
    def citation(self) -> str:
        return f"{self.standard} {self.clause}"

    def __post_init__(self) -> None:
        # Compiled once: every evaluator of this rule shares it (the hot path reads only this).
        params = ThresholdParams(
            high=self.comparator[0] == ">",
            inclusive=self.comparator.endswith("="),
            value=self.value,
            clear_value=self.clear_value,
            for_ms=round(self.for_s * 1000),
            clear_for_ms=round(self.clear_for_s * 1000),
            severity=self.severity,
            levels=self.levels,
            flags=self.data_flags,
            inapplicable_clears=self.inapplicable == "clear",
            flap_max_refires=self.flap_max_refires,
            flap_window_ms=round(self.flap_window_s * 1000),
            flap_stable_ms=round(self.flap_stable_s * 1000),
        )
        object.__setattr__(self, "params", params)

    def applies_to(
        self, kind: str, venue_type: str | None, attributes: Mapping[str, Any] | None
    ) -> bool:
        if not self.enabled or kind not in self.kinds:
            return False
        if self.venue_types is not None and venue_type not in self.venue_types:
            return False
        attrs = attributes or {}
        for name, match in self.attributes:
            value = attrs.get(name, _MISSING)
            if not match(value is not _MISSING, value):
                return False
        return True

    def applicable(self, fields: Mapping[str, Any]) -> bool:
        """The reading meets the rule's reading conditions (a missing field does not)."""
        for name, match in self.when:
            value = fields.get(name, _MISSING)
            if value is _MISSING or not match(True, value):
                return False
        return True

    def describe(self, value: float | None, unit: str | None = None) -> str:
        """For a person: the value against the limit, where, and on what authority."""
        shown_unit = unit or self.unit
        u = f" {shown_unit}" if shown_unit and shown_unit != "1" else ""  # pH has unit "1"
        shown = "?" if value is None else f"{value:g}"
        where = "/".join(sorted(self.venue_types)) if self.venue_types else "any venue"
        grade = (
            "grade C: limit unverified, check the official text"
            if self.needs_verification
            else f"grade {self.confidence}"
        )
        text = (
            f"{self.quantity} {shown}{u} {self.comparator} {self.value:g}{u} at {where} "
            f"({self.citation}; {grade})"
        )
        if self.override_reason is not None:
            text += f" [site override: {self.override_reason}]"
        return text


# ---- overrides ---------------------------------------------------------------------------------

OVERRIDE_FIELDS = ("value", "clear_value", "clear_for", "for_", "severity", "enabled")


class Override(_Strict):
    """A per-site change to one rule; ``None`` leaves the rule's own setting."""

    site_id: str
    rule_id: str
    value: float | None = None
    clear_value: float | None = None
    clear_for: Duration | None = None
    for_: Duration | None = Field(default=None, alias="for")
    severity: str | None = None
    enabled: bool | None = None
    reason: str = ""
    created_by: str = ""

    @classmethod
    def from_row(cls, row: RuleOverride) -> Override:
        return cls(
            site_id=row.site_id,
            rule_id=row.rule_id,
            value=row.value,
            clear_value=row.clear_value,
            clear_for=row.clear_for_s,
            for_=row.for_s,
            severity=row.severity,
            enabled=row.enabled,
            reason=row.reason,
            created_by=row.created_by,
        )

    def changes(self) -> dict[str, Any]:
        return {
            name: getattr(self, name) for name in OVERRIDE_FIELDS if getattr(self, name) is not None
        }


# ---- the rule set ------------------------------------------------------------------------------


class RuleSet:
    """All loaded rules, with per-context selection (cached) and per-site overrides."""

    def __init__(
        self,
        rules: Iterable[Rule],
        catalog: Catalog | None = None,
        venue_types: Iterable[str] | None = None,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.by_id: dict[str, Rule] = {rule.id: rule for rule in self.rules}
        self.catalog = catalog or default_catalog()
        self.venue_types = frozenset(venue_types if venue_types is not None else load_venues())
        # Only attributes some rule tests are part of the cache key (not lat/lon, names...).
        self._attribute_names = tuple(
            sorted({name for rule in self.rules for name, _ in rule.attributes})
        )
        self._by_kind: dict[str, tuple[Rule, ...]] = {}
        for rule in self.rules:
            for kind in rule.kinds:
                self._by_kind[kind] = (*self._by_kind.get(kind, ()), rule)
        self._cache: dict[tuple[Any, ...], list[Rule]] = {}

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __getitem__(self, rule_id: str) -> Rule:
        return self.by_id[rule_id]

    def get(self, rule_id: str) -> Rule | None:
        return self.by_id.get(rule_id)

    def for_device(
        self, kind: str, venue_type: str | None, attributes: Mapping[str, Any] | None = None
    ) -> list[Rule]:
        """The rules that apply to a device of ``kind`` at a site of this venue and attributes."""
        attrs = attributes or {}
        key = (
            kind,
            venue_type,
            *(_hashable(attrs.get(name, _MISSING)) for name in self._attribute_names),
        )
        cached = self._cache.get(key)
        if cached is None:
            cached = [
                rule
                for rule in self._by_kind.get(kind, ())
                if rule.applies_to(kind, venue_type, attrs)
            ]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = cached
        return list(cached)

    def apply(self, rule: Rule, override: Override) -> Rule:
        """The rule as the override changes it, validated like a rule file; ``RuleError`` if not."""
        where = f"site {override.site_id!r}: override of rule {rule.id!r}"
        problems: list[str] = []
        changes: dict[str, Any] = {"override_reason": override.reason or "(no reason given)"}
        if override.value is not None:
            changes["value"] = float(override.value)
            if override.clear_value is None:  # the hysteresis band moves with the limit
                changes["clear_value"] = float(override.value) + rule.clear_value - rule.value
        if override.clear_value is not None:
            changes["clear_value"] = float(override.clear_value)
        if override.for_ is not None:
            changes["for_s"] = float(override.for_)
        if override.clear_for is not None:
            changes["clear_for_s"] = float(override.clear_for)
        if override.enabled is not None:
            changes["enabled"] = override.enabled
        if override.severity is not None:
            try:
                changes["severity"] = Severity.parse(override.severity)
            except KeyError:
                problems.append(f"{where}: unknown severity {override.severity!r}")
        if problems:
            raise RuleError(problems)
        candidate = replace(rule, **changes)
        problems = check_rule(candidate, self.catalog, self.venue_types, where=where)
        if problems:
            raise RuleError(problems)
        return candidate

    def effective(
        self,
        site_id: str,
        rules: Iterable[Rule],
        overrides: Iterable[Override | RuleOverride],
    ) -> list[Rule]:
        """``rules`` with the site's overrides applied; rules an override disables are left out."""
        mine: dict[str, Override] = {}
        for item in overrides:
            override = item if isinstance(item, Override) else Override.from_row(item)
            if override.site_id == site_id:
                mine[override.rule_id] = override
        out: list[Rule] = []
        for rule in rules:
            override = mine.get(rule.id)
            if override is not None:
                rule = self.apply(rule, override)
            if rule.enabled:
                out.append(rule)
        return out


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


# ---- loading and validation --------------------------------------------------------------------


def load_venues(path: Path = VENUES_FILE) -> frozenset[str]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return frozenset(raw["venue_types"])


def load_rules(
    directory: Path | str | None = None,
    *,
    catalog: Catalog | None = None,
    venue_types: Iterable[str] | None = None,
) -> RuleSet:
    """Every ``*.yaml`` in ``directory`` (default: the shipped rules), validated as a whole."""
    folder = Path(directory) if directory is not None else RULES_DIR
    catalog = catalog or default_catalog()
    venues = frozenset(venue_types) if venue_types is not None else load_venues()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise RuleError([f"{folder}: no rule files (*.yaml)"])
    problems: list[str] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in files:
        file_rules, file_problems = _load_file(path, catalog, venues)
        problems.extend(file_problems)
        for rule in file_rules:
            if rule.id in seen:
                problems.append(
                    f"{path.name}: rule {rule.id!r}: duplicate id (also in {seen[rule.id]})"
                )
                continue
            seen[rule.id] = path.name
            rules.append(rule)
    if problems:
        raise RuleError(problems)
    return RuleSet(rules, catalog, venues)


def _load_file(
    path: Path, catalog: Catalog, venues: frozenset[str]
) -> tuple[list[Rule], list[str]]:
    name = path.name
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return [], [f"{name}: cannot read: {exc}"]
    try:
        spec = RuleFile.model_validate(raw)
    except ValidationError as exc:
        return [], [f"{name}: {_explain(exc)}"]
    rules: list[Rule] = []
    problems: list[str] = []
    for index, raw_rule in enumerate(spec.rules):
        rule_id = raw_rule.get("id") if isinstance(raw_rule, dict) else None
        where = f"{name}: rule {rule_id!r}" if rule_id else f"{name}: rule #{index + 1}"
        try:
            rule_spec = RuleSpec.model_validate(raw_rule)
        except ValidationError as exc:
            problems.append(f"{where}: {_explain(exc)}")
            continue
        built, built_problems = _build(rule_spec, spec, name, catalog, where)
        problems.extend(built_problems)
        for rule in built:
            rule_problems = check_rule(
                rule, catalog, venues, where=f"{name}: rule {rule.id!r}", attributes=spec.attributes
            )
            problems.extend(rule_problems)
            if not rule_problems:
                rules.append(rule)
    return rules, problems


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def _build(
    spec: RuleSpec, file: RuleFile, source: str, catalog: Catalog, where: str
) -> tuple[list[Rule], list[str]]:
    """One rule, or two for a ``range`` (ids ``<id>.low`` and ``<id>.high``)."""
    problems: list[str] = []
    if RULE_ID.match(spec.id) is None:
        problems.append(f"{where}: id must be lower-case letters, digits, '.', '_' or '-'")
    try:
        severity = Severity.parse(spec.severity)
    except KeyError:
        problems.append(f"{where}: unknown severity {spec.severity!r}")
        severity = Severity.CRITICAL
    levels: list[tuple[float, Severity]] = []
    for level in spec.levels:
        try:
            levels.append((level.value, Severity.parse(level.severity)))
        except KeyError:
            problems.append(f"{where}: unknown severity {level.severity!r} in levels")
    venue_types, attributes, when, context_problems = _context(spec.context, catalog, where)
    problems.extend(context_problems)
    defaults = file.defaults
    flap = spec.flap or defaults.flap
    clear = spec.clear or ClearSpec()
    flags = spec.data_flags if spec.data_flags is not None else defaults.data_flags

    sides: list[tuple[str, str, float, float | None]] = []  # id, comparator, value, clear value
    if spec.range is not None:
        if spec.comparator is not None or spec.value is not None:
            problems.append(f"{where}: give either comparator and value, or range, not both")
        if spec.levels:
            problems.append(f"{where}: levels need one side: write a rule per side, not range")
        if spec.expected_alert is not None:
            problems.append(f"{where}: expected_alert is derived per side for a range rule")
        lo, hi = spec.range
        if lo >= hi:
            problems.append(f"{where}: range [{lo}, {hi}] must have low < high")
        clear_lo = clear_hi = None
        if isinstance(clear.value, tuple):
            clear_lo, clear_hi = clear.value
        elif clear.value is not None:
            problems.append(f"{where}: a range rule's clear value is [low side, high side]")
        sides = [(f"{spec.id}.low", "<", lo, clear_lo), (f"{spec.id}.high", ">", hi, clear_hi)]
    else:
        if spec.comparator is None or spec.value is None:
            problems.append(f"{where}: needs comparator and value, or range")
        elif isinstance(clear.value, tuple):
            problems.append(f"{where}: clear value must be one number (a list is for range)")
        else:
            sides = [(spec.id, spec.comparator, spec.value, clear.value)]
    if problems:
        return [], problems

    rules = []
    for rule_id, comparator, value, clear_value in sides:
        direction = "high" if comparator[0] == ">" else "low"
        rules.append(
            Rule(
                id=rule_id,
                quantity=spec.quantity,
                kinds=frozenset(spec.kinds),
                venue_types=venue_types,
                attributes=attributes,
                when=when,
                comparator=comparator,
                value=float(value),
                severity=severity,
                levels=tuple(levels),
                for_s=spec.for_ if spec.for_ is not None else defaults.for_,
                clear_value=float(value if clear_value is None else clear_value),
                clear_for_s=clear.for_ if clear.for_ is not None else defaults.clear_for,
                standard=spec.standard,
                clause=spec.clause,
                confidence=spec.confidence,
                data_flags=frozenset(flags),
                expected_alert=spec.expected_alert or f"threshold:{spec.quantity}:{direction}",
                inapplicable=spec.inapplicable,
                enabled=spec.enabled,
                note=spec.note.strip(),
                flap_max_refires=flap.max_refires,
                flap_window_s=flap.window,
                flap_stable_s=flap.stable_for,
                unit=spec.unit,
                source=source,
            )
        )
    return rules, []


def _context(
    context: Mapping[str, Any], catalog: Catalog, where: str
) -> tuple[
    frozenset[str] | None, tuple[tuple[str, Match], ...], tuple[tuple[str, Match], ...], list[str]
]:
    """Split ``context``: ``venue_type``; quantities (reading conditions); site attributes."""
    problems: list[str] = []
    venue_types: frozenset[str] | None = None
    attributes: list[tuple[str, Match]] = []
    when: list[tuple[str, Match]] = []
    for name, raw in context.items():
        if name == "venue_type":
            values = raw if isinstance(raw, list) else [raw]
            if not values or not all(isinstance(v, str) for v in values):
                problems.append(f"{where}: context.venue_type must be a venue type or a list")
                continue
            venue_types = frozenset(values)
            continue
        negate = False
        if isinstance(raw, dict):
            if set(raw) != {"not"}:
                problems.append(f"{where}: context.{name}: a mapping must be {{not: [...]}}")
                continue
            negate, raw = True, raw["not"]
        values = raw if isinstance(raw, list) else [raw]
        if not values or any(isinstance(v, dict | list) for v in values):
            problems.append(f"{where}: context.{name}: give a value, a list, or {{not: [...]}}")
            continue
        match = Match(frozenset(values), negate)
        (when if name in catalog.quantities else attributes).append((name, match))
    return venue_types, tuple(sorted(attributes)), tuple(sorted(when)), problems


def _fits(value: Any, value_type: str) -> bool:
    if value_type == "bool":
        return isinstance(value, bool)
    if value_type == "str":
        return isinstance(value, str)
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_rule(
    rule: Rule,
    catalog: Catalog,
    venue_types: frozenset[str],
    *,
    where: str,
    attributes: Mapping[str, AttributeSpec] | None = None,
) -> list[str]:
    """Everything that can be wrong with a compiled rule (or an overridden one)."""
    problems: list[str] = []
    q = catalog.quantities.get(rule.quantity)
    if q is None:
        return [f"{where}: unknown quantity {rule.quantity!r} (protocols/data/quantities.yaml)"]
    if q.type not in ("float", "int"):
        return [f"{where}: quantity {rule.quantity!r} is {q.type}, a threshold needs a number"]
    for kind in sorted(rule.kinds):
        spec = catalog.kinds.get(kind)
        if spec is None:
            problems.append(f"{where}: unknown device kind {kind!r} (protocols/data/kinds.yaml)")
        elif rule.quantity not in spec.quantities:
            problems.append(f"{where}: kind {kind!r} does not measure {rule.quantity!r}")
    if rule.venue_types is not None:
        for venue in sorted(rule.venue_types - venue_types):
            problems.append(f"{where}: unknown venue type {venue!r} (protocols/data/venues.yaml)")
    if rule.unit is not None and rule.unit != q.unit:
        problems.append(
            f"{where}: unit {rule.unit!r} does not match {rule.quantity!r}, which is in {q.unit!r}"
        )

    def in_range(what: str, v: float) -> None:
        if not math.isfinite(v):
            problems.append(f"{where}: {what} {v!r} is not a finite number")
        elif (q.low is not None and v < q.low) or (q.high is not None and v > q.high):
            problems.append(
                f"{where}: {what} {v:g} is outside {rule.quantity}'s physical range "
                f"[{q.low:g}, {q.high:g}] {q.unit}"
            )

    in_range("value", rule.value)
    in_range("clear value", rule.clear_value)
    if rule.high and rule.clear_value > rule.value:
        problems.append(
            f"{where}: clear value {rule.clear_value:g} is on the wrong side of the limit "
            f"{rule.comparator} {rule.value:g} (it must be <= the limit)"
        )
    if not rule.high and rule.clear_value < rule.value:
        problems.append(
            f"{where}: clear value {rule.clear_value:g} is on the wrong side of the limit "
            f"{rule.comparator} {rule.value:g} (it must be >= the limit)"
        )
    previous_value, previous_severity = rule.value, rule.severity
    for value, severity in rule.levels:
        in_range("level value", value)
        beyond = value > previous_value if rule.high else value < previous_value
        if not beyond:
            problems.append(
                f"{where}: level {value:g} must lie beyond {previous_value:g} "
                f"({'above' if rule.high else 'below'} the limit and the previous level)"
            )
        if severity <= previous_severity:
            problems.append(
                f"{where}: level {value:g} has severity {severity.name.lower()}, not more "
                f"severe than {previous_severity.name.lower()}"
            )
        previous_value, previous_severity = value, severity
    for what, seconds in (
        ("for", rule.for_s),
        ("clear for", rule.clear_for_s),
        ("flap window", rule.flap_window_s),
        ("flap stable_for", rule.flap_stable_s),
    ):
        if not math.isfinite(seconds) or seconds < 0:
            problems.append(f"{where}: {what} {seconds!r} is not a valid duration")
    unknown_flags = sorted(rule.data_flags - DATA_FLAGS)
    if unknown_flags:
        problems.append(
            f"{where}: data_flags {unknown_flags} are not HJ 212 flags "
            f"({''.join(sorted(DATA_FLAGS))})"
        )
    if EXPECTED_ALERT.match(rule.expected_alert) is None:
        problems.append(
            f"{where}: expected_alert {rule.expected_alert!r} is not a:b[:c] vocabulary"
        )
    elif rule.expected_alert.startswith("threshold:"):
        wanted = f"threshold:{rule.quantity}:{rule.direction}"
        if rule.expected_alert != wanted:
            problems.append(
                f"{where}: expected_alert {rule.expected_alert!r} should be {wanted!r} "
                "(threshold:<quantity>:low|high, the simulators' vocabulary)"
            )
    for name, match in rule.when:
        cq = catalog.quantities[name]
        for kind in sorted(rule.kinds):
            spec = catalog.kinds.get(kind)
            if spec is not None and name not in spec.quantities:
                problems.append(
                    f"{where}: reading condition {name!r} is not measured by kind {kind!r}"
                )
        for v in match.values:
            ok = _fits(v, cq.type)
            if not ok:
                problems.append(
                    f"{where}: reading condition {name}: {v!r} is not a {cq.type} like {name}"
                )
    if attributes is not None:
        for name, match in rule.attributes:
            declared = attributes.get(name)
            if declared is None:
                known = ", ".join(sorted(attributes)) or "none declared"
                problems.append(
                    f"{where}: context.{name} is neither a quantity nor a site attribute "
                    f"declared in this file's attributes ({known})"
                )
                continue
            for v in match.values:
                if v is not None and v not in declared.values:
                    problems.append(
                        f"{where}: context.{name}: {v!r} is not one of {declared.values}"
                    )
    return problems


# ---- overrides in the registry, audited --------------------------------------------------------


def _override_snapshot(row: RuleOverride) -> dict[str, Any]:
    return {
        "site_id": row.site_id,
        "rule_id": row.rule_id,
        "value": row.value,
        "clear_value": row.clear_value,
        "clear_for_s": row.clear_for_s,
        "for_s": row.for_s,
        "severity": row.severity,
        "enabled": row.enabled,
        "reason": row.reason,
        "created_by": row.created_by,
    }


def _audit(
    session: Session,
    actor: str,
    action: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    detail: str,
) -> None:
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor[:64],
            action=action[:32],
            entity="rule_override",
            entity_id=entity_id[:128],
            before=before,
            after=after,
            detail=detail,
        )
    )


def save_override(
    session: Session, ruleset: RuleSet, override: Override, *, actor: str
) -> RuleOverride:
    """Create or replace a site's override of one rule, validated, audited in the same transaction.

    The caller commits (or rolls back) the session: the override and its audit entry go together.
    """
    rule = ruleset.get(override.rule_id)
    where = f"site {override.site_id!r}: override of rule {override.rule_id!r}"
    if rule is None:
        raise RuleError([f"{where}: no such rule"])
    if not override.reason.strip():
        raise RuleError([f"{where}: a reason is required (it is shown beside the limit)"])
    if not override.changes():
        raise RuleError([f"{where}: overrides nothing (value, clear, for, severity, enabled)"])
    ruleset.apply(rule, override)  # raises RuleError naming the site and the rule
    row = session.execute(
        select(RuleOverride).where(
            RuleOverride.site_id == override.site_id, RuleOverride.rule_id == override.rule_id
        )
    ).scalar_one_or_none()
    before = _override_snapshot(row) if row is not None else None
    if row is None:
        row = RuleOverride(site_id=override.site_id, rule_id=override.rule_id)
        session.add(row)
    row.value = override.value
    row.clear_value = override.clear_value
    row.clear_for_s = override.clear_for
    row.for_s = override.for_
    row.severity = Severity.parse(override.severity).name.lower() if override.severity else None
    row.enabled = override.enabled
    row.reason = override.reason.strip()
    row.created_by = actor
    row.created_at = utcnow()
    _audit(
        session,
        actor,
        "rule_override.create" if before is None else "rule_override.update",
        f"{override.site_id}:{override.rule_id}",
        before,
        _override_snapshot(row),
        override.reason.strip(),
    )
    session.flush()
    return row


def delete_override(
    session: Session, site_id: str, rule_id: str, *, actor: str, reason: str
) -> bool:
    """Remove a site's override (audited); False if there was none."""
    row = session.execute(
        select(RuleOverride).where(RuleOverride.site_id == site_id, RuleOverride.rule_id == rule_id)
    ).scalar_one_or_none()
    if row is None:
        return False
    _audit(
        session,
        actor,
        "rule_override.delete",
        f"{site_id}:{rule_id}",
        _override_snapshot(row),
        None,
        reason,
    )
    session.delete(row)
    session.flush()
    return True


def site_overrides(session: Session, site_id: str | None = None) -> list[Override]:
    """The overrides of one site (or all sites), as ``Override`` values for ``effective``."""
    query = select(RuleOverride).order_by(RuleOverride.site_id, RuleOverride.rule_id)
    if site_id is not None:
        query = query.where(RuleOverride.site_id == site_id)
    return [Override.from_row(row) for row in session.execute(query).scalars()]
