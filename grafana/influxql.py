"""InfluxQL the dashboards share, written once so every panel asks the same question the same way.

Everything here is plain InfluxQL 1.x (what InfluxDB 1.x serves natively and 2.x/3.x through the
v1 API), checked against the real InfluxDB 1.6.7 by tests/test_grafana.py. Grafana substitutes
``$timeFilter``, ``$__interval`` and the template variables before sending a query.

Two InfluxQL limits shape these queries:

* No COUNT(DISTINCT tag) and no COALESCE: "how many devices reported" is a union of one subquery
  per quantity (``last(q) AS v ... GROUP BY device``: a device appears if it sent *any* quantity),
  then ``count`` per device, then ``count`` of devices. A device that sends only some of its
  kind's quantities is still counted once.
* Results are split per source measurement and nothing can join across measurements; per-kind
  breakdowns use that (``$m`` aliases). Totals use Grafana's table format: a sum over the
  per-kind rows for devices (each device has one kind), a distinct count of the tag column for
  tenants and sites (which can have devices of several kinds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from protocols.catalog import Catalog, default_catalog
from protocols.influx.schema import quote_ident

ALERTS = "alert_event"
SITE_INFO = "site_info"
STERILIZER_CYCLE = "sterilizer_cycle"

#: Severity tag values of ``alert_event`` (alerting.model.Severity, lower case) and their rank.
SEVERITY_LEVELS: tuple[tuple[str, int], ...] = (
    ("info", 1),
    ("warning", 2),
    ("critical", 3),
    ("emergency", 4),
)
#: States of an open alert as the wall shows it: fired and not yet resolved (pending is not yet
#: an alert anyone is told about).
OPEN_STATES = ("firing", "acknowledged")
#: How far back the last transition of an open alert is looked for.
OPEN_ALERT_LOOKBACK = "90d"
#: ``site_info`` is rewritten every few minutes (grafana/site_info.py); older points are stale.
SITE_INFO_LOOKBACK = "1h"

ident = quote_ident


def string(value: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def eq(key: str, value: str) -> str:
    """``"key" = 'value'`` (a tag or string field compared with a literal)."""
    return f"{ident(key)} = {string(value)}"


def sources(measurements: Iterable[str]) -> str:
    return ", ".join(ident(m) for m in measurements)


def var_filter(tags: Sequence[str]) -> str:
    """``"tag" =~ /^$tag$/`` for each drill-down variable (the variable is named like the tag)."""
    return " AND ".join(f"{ident(tag)} =~ /^${tag}$/" for tag in tags)


def where(*conditions: str) -> str:
    kept = [c for c in conditions if c]
    return " WHERE " + " AND ".join(kept) if kept else ""


def kinds_regex(kinds: Iterable[str]) -> str:
    """An anchored regex literal matching exactly these kind names (tag values)."""
    return "/^(" + "|".join(sorted(kinds)) + ")$/"


def numeric_quantities(kind: str, catalog: Catalog | None = None) -> list[str]:
    """The numeric fields of a kind, sorted: what "the device reported" is judged on."""
    cat = catalog or default_catalog()
    return sorted(
        q for q in cat.kinds[kind].quantities if cat.quantities[q].type in ("float", "int")
    )


def presence_union(
    kinds: Iterable[str], group_by: str, condition: str, catalog: Catalog | None = None
) -> str:
    """Subqueries (comma-separated, for a FROM clause) with one row per ``group_by`` value per
    quantity it reported under ``condition``; each row's time is its last report."""
    cat = catalog or default_catalog()
    by_quantity: dict[str, list[str]] = {}
    for kind in sorted(set(kinds)):
        for q in numeric_quantities(kind, cat):
            by_quantity.setdefault(q, []).append(kind)
    parts = [
        f'(SELECT last({ident(q)}) AS "v" FROM {sources(ms)}{where(condition)} '
        f"GROUP BY {ident(group_by)})"
        for q, ms in sorted(by_quantity.items())
    ]
    return ", ".join(parts)


def count_reporting(
    kinds: Iterable[str],
    group_by: str,
    condition: str,
    alias: str,
    catalog: Catalog | None = None,
) -> str:
    """How many distinct ``group_by`` tag values (devices, sites, tenants) reported under
    ``condition``; one row per source measurement (sum them for a total)."""
    union = presence_union(kinds, group_by, condition, catalog)
    return (
        f'SELECT count("c") AS {ident(alias)} FROM '
        f'(SELECT count("v") AS "c" FROM {union} GROUP BY {ident(group_by)})'
    )


def reporting_groups(
    kinds: Iterable[str],
    group_by: str,
    condition: str,
    catalog: Catalog | None = None,
) -> str:
    """One row per (measurement, ``group_by`` value) that reported under ``condition``: a
    tenant or site with several kinds of device appears once per kind, so count its distinct
    values (Grafana's ``distinctCount`` over the tag column of the table format)."""
    union = presence_union(kinds, group_by, condition, catalog)
    return f'SELECT count("v") AS "reports" FROM {union} GROUP BY {ident(group_by)}'


def last_transitions(columns: Sequence[str], condition: str = "") -> str:
    """The latest ``alert_event`` per (device, rule) -- at most one open alert per pair -- with
    ``columns`` (tags or fields) from that same point."""
    selected = ", ".join(ident(c) for c in columns)
    cond = where(f"time > now() - {OPEN_ALERT_LOOKBACK}", condition)
    return (
        f'SELECT last("alert_id") AS "alert_id", {selected} FROM {ident(ALERTS)}{cond} '
        'GROUP BY "device", "rule"'
    )


def open_condition() -> str:
    return "(" + " OR ".join(f'"state" = {string(s)}' for s in OPEN_STATES) + ")"


def open_alerts(columns: Sequence[str], condition: str = "") -> str:
    """Open alerts, one row each, with ``columns``."""
    inner = last_transitions(("state", *[c for c in columns if c != "state"]), condition)
    selected = ", ".join(ident(c) for c in ("alert_id", *columns))
    return f"SELECT {selected} FROM ({inner}) WHERE {open_condition()}"


def worst_open_severity(group_by: str, condition: str = "") -> str:
    """Per ``group_by`` tag value: the rank (1 info .. 4 emergency) of its worst open alert.

    InfluxQL cannot rank a tag value, so each severity is its own subquery that yields a
    constant (``count(x) * 0 + rank``) for the groups having open alerts of that severity.
    """
    inner = last_transitions(("state", "severity", group_by), condition)
    parts = [
        f'(SELECT count("alert_id") * 0 + {rank} AS "level" FROM ({inner}) '
        f'WHERE {open_condition()} AND "severity" = {string(severity)} '
        f"GROUP BY {ident(group_by)})"
        for severity, rank in SEVERITY_LEVELS
    ]
    return f'SELECT max("level") AS "worst" FROM {", ".join(parts)} GROUP BY {ident(group_by)}'
