"""Limits drawn in panels, taken from the alerting rule files (alerting/data/rules/*.yaml).

One source of truth: a line on a chart is exactly a rule's ``value`` (or one of its escalation
``levels``), so changing a rule file changes the wall at the next ``python -m grafana.build``
(tests/test_grafana.py fails until the committed dashboards are rebuilt).

A chart shows every site of a kind, but limits depend on the site (GB 5749 wants ≥ 0.3 mg/L free
chlorine at a plant outlet and ≥ 0.05 at a tap; GBZ 130 allows 25 µSv/h outside a radiography
room and 2.5 elsewhere). So each band between two limits is coloured by asking the rules
themselves (``Rule.applies_to``) about every kind of site they distinguish (venue type x the
site attributes the rules test):

* green: no site breaks a limit there;
* yellow: some sites do, others do not (venue types disagree: a hotel room's CO₂ limit is
  1000 ppm, a mall's 1500);
* orange / red / dark red: every site breaks a limit, at least at warning / critical / emergency
  severity (blue for info).

"Every site" means the typical site of each venue type, one that declares none of the special
attributes rules test (a foot bath, a chloramine plant, a radiography room): their limits are
drawn as lines too and named in the panel description, but do not recolour the bands. Where rules
exist only for special sites (total chlorine: chloramine plants), those sites are the reference.

Reading conditions (``beam_on: true``, ``cycle_phase: sterilizing``) only gate when a rule is
evaluated; the limit is drawn regardless and the description names the condition.

Cumulative personal dose (``dose_msv``) has no threshold rule: the dose monitor judges it against
its own table, ``alerting.domain.dose.DOSE_LIMITS`` (GBZ 128 investigation level pro-rated to the
monitoring period; GB 18871 annual and five-year limits). ``dose_thresholds`` draws that table, with
the period levels computed by ``DoseMonitor.level`` itself, so the chart and the alerts cannot
disagree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from alerting.domain.dose import DOSE_LIMITS, DoseLimit, DoseMonitor
from alerting.rules import Rule, RuleSet, load_rules
from grafana.model import Step, Thresholds

OK = "green"
SOME_SITES = "yellow"
SEVERITY_COLORS = {1: "blue", 2: "orange", 3: "red", 4: "dark-red"}
_OTHER = "__another_value__"  # an attribute value no rule names (for "not in [...]" contexts)
_ABSENT = "__absent__"  # the site does not declare the attribute


@cache
def default_rules() -> RuleSet:
    """The shipped rule files, loaded and validated once per process."""
    return load_rules()


def rules_for(ruleset: Iterable[Rule], kinds: Iterable[str], quantity: str) -> list[Rule]:
    """Enabled rules on ``quantity`` for any of ``kinds``, sorted by value then id."""
    wanted = set(kinds)
    found = [r for r in ruleset if r.enabled and r.quantity == quantity and r.kinds & wanted]
    return sorted(found, key=lambda r: (r.value, r.id))


def limit_values(rules: Iterable[Rule]) -> tuple[float, ...]:
    """Every value a line is drawn at: each rule's limit and its escalation levels."""
    values = {r.value for r in rules} | {v for r in rules for v, _ in r.levels}
    return tuple(sorted(values))


@dataclass(frozen=True, slots=True)
class _SiteClass:
    kind: str
    venue_type: str | None
    attributes: tuple[tuple[str, Any], ...]


def _site_classes(rules: Sequence[Rule], kinds: Iterable[str], typical: bool) -> list[_SiteClass]:
    """Kinds of site the rules distinguish: venue types x values of the attributes they test.

    ``typical``: only sites that declare none of those attributes (the usual plant, pool, hotel);
    otherwise every named attribute value too (and "another value" where a rule says ``not``).
    """
    venues: set[str | None] = set()
    for rule in rules:
        venues |= set(rule.venue_types) if rule.venue_types is not None else {None}
    choices: dict[str, set[Any]] = {}
    for rule in rules:
        for name, match in rule.attributes:
            options = choices.setdefault(name, {_ABSENT})
            if not typical:
                options |= {v for v in match.values if v is not None}
                if match.negate:
                    options.add(_OTHER)
    names = sorted(choices)
    classes = []
    for kind in sorted(set(kinds)):
        for venue in sorted(venues, key=lambda v: (v is None, v or "")):
            for combo in itertools.product(*(sorted(choices[n], key=repr) for n in names)):
                attrs = tuple((n, v) for n, v in zip(names, combo, strict=True) if v != _ABSENT)
                classes.append(_SiteClass(kind, venue, attrs))
    return classes


def _covered(rules: Sequence[Rule], kinds: Iterable[str], typical: bool) -> list[_SiteClass]:
    return [
        c
        for c in _site_classes(rules, kinds, typical)
        if any(r.applies_to(c.kind, c.venue_type, dict(c.attributes)) for r in rules)
    ]


def _severity_at(rule: Rule, x: float) -> int:
    """The severity rank a value ``x`` raises under ``rule`` (0: not a breach)."""
    breach = x > rule.value if rule.high else x < rule.value
    if not breach:
        return 0
    rank = int(rule.severity)
    for level, severity in rule.levels:
        if (x > level) if rule.high else (x < level):
            rank = max(rank, int(severity))
    return rank


def _probes(values: Sequence[float]) -> list[float]:
    """One value inside each band: below the first limit, between limits, above the last."""
    first, last = values[0], values[-1]
    probes = [first - max(abs(first) * 0.5, 1e-6)]
    probes += [(a + b) / 2 for a, b in itertools.pairwise(values)]
    probes.append(last + max(abs(last), 1.0))
    return probes


def band_colors(rules: Sequence[Rule], kinds: Iterable[str]) -> list[str]:
    """Colour of each band (len(values) + 1 of them) for the limit values of ``rules``."""
    values = limit_values(rules)
    if not values:
        return [OK]
    kinds = list(kinds)
    # Colours are those of typical sites; only if the rules cover no typical site (limits that
    # exist only for, e.g., chloramine plants) are the special sites the reference.
    classes = _covered(rules, kinds, typical=True) or _covered(rules, kinds, typical=False)
    colors = []
    for x in _probes(values):
        ranks = []
        for c in classes:
            applicable = [
                r for r in rules if r.applies_to(c.kind, c.venue_type, dict(c.attributes))
            ]
            ranks.append(max(_severity_at(r, x) for r in applicable))
        if all(ranks):
            colors.append(SEVERITY_COLORS[min(ranks)])
        elif any(ranks):
            colors.append(SOME_SITES)
        else:
            colors.append(OK)
    return colors


def limit_thresholds(ruleset: Iterable[Rule], kinds: Iterable[str], quantity: str) -> Thresholds:
    """Grafana thresholds for ``quantity`` on ``kinds``: one step per rule limit or level."""
    kinds = list(kinds)
    rules = rules_for(ruleset, kinds, quantity)
    values = limit_values(rules)
    colors = band_colors(rules, kinds)
    return Thresholds(
        (Step(colors[0], None), *(Step(c, v) for v, c in zip(values, colors[1:], strict=True)))
    )


def _where(rule: Rule) -> str:
    parts = ["/".join(sorted(rule.venue_types)) if rule.venue_types else "all venues"]
    for name, match in rule.attributes:
        parts.append(f"{name} {match.describe()}")
    for name, match in rule.when:
        parts.append(f"while {name} = {match.describe()}")
    return ", ".join(parts)


def describe_limits(ruleset: Iterable[Rule], kinds: Iterable[str], quantity: str) -> str:
    """Markdown lines naming each drawn limit, where it applies and on what authority."""
    rules = rules_for(ruleset, kinds, quantity)
    if not rules:
        return "No threshold rule covers this quantity (alerting/data/rules): no limit is drawn."
    lines = ["Limits (from alerting/data/rules; yellow bands: only some sites' limit):"]
    for rule in rules:
        unit = f" {rule.unit}" if rule.unit and rule.unit != "1" else ""
        levels = "".join(
            f"; {severity.name.lower()} beyond {value:g}{unit}" for value, severity in rule.levels
        )
        lines.append(
            f"- {rule.comparator} {rule.value:g}{unit} is {rule.severity.name.lower()}{levels} "
            f"({_where(rule)}): {rule.standard} {rule.clause} "
            f"[`{rule.id}`, grade {rule.confidence}]"
        )
    return "\n".join(lines)


# ---- cumulative personal dose (alerting/domain/dose.py) ----------------------------------------

#: Monitoring periods (months) whose investigation level is drawn: the dose monitor's default and
#: the usual GBZ 128 period (1), and the longest GBZ 128 allows (3). A site's own period is its
#: ``dose_period_months`` attribute.
DOSE_PERIODS_DRAWN = (1, 3)
DOSE_QUANTITY = "dose_msv"


def _dose_levels(
    limits: Sequence[DoseLimit], periods: Sequence[int]
) -> list[tuple[float, DoseLimit, int | None]]:
    """(value, limit, period months or None) of every line: a ``period`` limit once per drawn
    period, the others (rolling 12 months, calendar year, five years) once. A single period's
    dose counts whole in each of those sums, so it alone can break them too."""
    out: list[tuple[float, DoseLimit, int | None]] = []
    for limit in limits:
        if limit.scope == "period":
            for months in periods:
                out.append((DoseMonitor("-", period_months=months).level(limit), limit, months))
        else:
            out.append((limit.limit_msv, limit, None))
    return sorted(out, key=lambda t: (t[0], t[1].rule))


def dose_thresholds(
    limits: Sequence[DoseLimit] = DOSE_LIMITS, periods: Sequence[int] = DOSE_PERIODS_DRAWN
) -> Thresholds:
    """Lines for the period's cumulative dose; bands coloured like the rule charts: green below
    every line, yellow where only sites with some period lengths are over, else the lowest
    severity every period length reaches."""
    lines = _dose_levels(limits, periods)
    values = sorted({v for v, _, _ in lines})
    colors = []
    for x in _probes(values):
        ranks = []
        for months in periods:
            over = [
                int(limit.severity) for v, limit, p in lines if x > v and (p is None or p == months)
            ]
            ranks.append(max(over, default=0))
        if all(ranks):
            colors.append(SEVERITY_COLORS[min(ranks)])
        elif any(ranks):
            colors.append(SOME_SITES)
        else:
            colors.append(OK)
    return Thresholds(
        (Step(colors[0], None), *(Step(c, v) for v, c in zip(values, colors[1:], strict=True)))
    )


def describe_dose_limits(
    limits: Sequence[DoseLimit] = DOSE_LIMITS, periods: Sequence[int] = DOSE_PERIODS_DRAWN
) -> str:
    lines = [
        "Limits (from alerting/domain/dose.py DOSE_LIMITS, which the dose monitor alerts on; "
        "yellow band: only sites with a shorter monitoring period):"
    ]
    for value, limit, months in _dose_levels(limits, periods):
        where = (
            f"in a {months}-month monitoring period (site attribute dose_period_months)"
            if months is not None
            else f"over the {limit.scope.replace('_', ' ')}"
        )
        lines.append(
            f"- > {value:.3g} mSv {where} is {limit.severity.name.lower()}: {limit.standard} "
            f"[`{limit.rule}`, grade {limit.confidence}]"
        )
    lines.append(
        "The chart shows the current period's reading; sums over several periods (12 months, "
        "the year, five years) are the dose monitor's, raised as alerts (open-alerts table)."
    )
    return "\n".join(lines)


def quantity_thresholds(kinds: Iterable[str], quantity: str) -> Thresholds:
    """What a chart or a table cell of ``quantity`` on ``kinds`` draws: the dose table for
    personal dose, the rule files' limits for everything else."""
    kinds = list(kinds)
    if quantity == DOSE_QUANTITY and "dosimeter" in kinds:
        return dose_thresholds()
    return limit_thresholds(default_rules(), kinds, quantity)


def describe_quantity_limits(kinds: Iterable[str], quantity: str) -> str:
    kinds = list(kinds)
    if quantity == DOSE_QUANTITY and "dosimeter" in kinds:
        return describe_dose_limits()
    return describe_limits(default_rules(), kinds, quantity)
