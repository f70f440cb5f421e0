"""Small typed builders for Grafana's classic dashboard JSON model (schemaVersion 41, Grafana 11.6).

Why our own: the dashboards need a handful of panel types and one data source type, so a few
dataclasses that render exactly the JSON Grafana stores are easier to review than a generated SDK,
and the output is deterministic by construction: no timestamps, ids assigned in layout order,
uids chosen by us, keys sorted when written (``dashboard_json``).

Schema version: Grafana 11.6 saves dashboards with ``schemaVersion: 41`` (migration 41 dropped
``timepicker.time_options``, grafana/grafana#100135 and #100554, released in 11.6.0). A dashboard
provisioned at 41 is not migrated on load, so what is committed here is what Grafana shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 41
GRID_COLUMNS = 24
INFLUXDB = "influxdb"

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DataSource:
    """A data source reference by uid (the provisioned one, or a tenant organisation's)."""

    uid: str
    type: str = INFLUXDB

    def ref(self) -> Json:
        return {"type": self.type, "uid": self.uid}


@dataclass(frozen=True, slots=True)
class GridPos:
    x: int
    y: int
    w: int
    h: int

    def to_json(self) -> Json:
        return {"h": self.h, "w": self.w, "x": self.x, "y": self.y}

    def overlaps(self, other: GridPos) -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )


@dataclass(frozen=True, slots=True)
class Query:
    """One raw InfluxQL target. ``alias`` uses Grafana's $tag_x / $m / $col patterns."""

    query: str
    ref_id: str = "A"
    result_format: str = "time_series"  # or "table"
    alias: str = ""
    hide: bool = False

    def to_json(self, ds: DataSource) -> Json:
        out: Json = {
            "datasource": ds.ref(),
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        if self.hide:
            out["hide"] = True
        return out


@dataclass(frozen=True, slots=True)
class Step:
    color: str
    value: float | None  # None: the base step


@dataclass(frozen=True, slots=True)
class Thresholds:
    steps: tuple[Step, ...]

    def to_json(self) -> Json:
        return {
            "mode": "absolute",
            "steps": [{"color": s.color, "value": s.value} for s in self.steps],
        }

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(s.value for s in self.steps if s.value is not None)

    @staticmethod
    def of(base: str, *steps: tuple[float, str]) -> Thresholds:
        return Thresholds((Step(base, None), *(Step(c, v) for v, c in steps)))


@dataclass(slots=True)
class Panel:
    """One panel; ``field_config``/``options`` are the panel plugin's own JSON."""

    type: str
    title: str
    grid: GridPos
    targets: list[Query] = field(default_factory=list)
    description: str = ""
    options: Json = field(default_factory=dict)
    field_config: Json = field(default_factory=lambda: {"defaults": {}, "overrides": []})
    transformations: list[Json] = field(default_factory=list)
    time_from: str | None = None
    hide_time_override: bool = False
    interval: str | None = None
    links: list[Json] = field(default_factory=list)

    def to_json(self, panel_id: int, ds: DataSource) -> Json:
        out: Json = {
            "datasource": ds.ref(),
            "description": self.description,
            "fieldConfig": self.field_config,
            "gridPos": self.grid.to_json(),
            "id": panel_id,
            "options": self.options,
            "targets": [t.to_json(ds) for t in self.targets],
            "title": self.title,
            "transformations": self.transformations,
            "type": self.type,
        }
        if self.time_from is not None:
            out["timeFrom"] = self.time_from
            out["hideTimeOverride"] = self.hide_time_override
        if self.interval is not None:
            out["interval"] = self.interval
        if self.links:
            out["links"] = self.links
        return out


@dataclass(slots=True)
class Row:
    """A row header (collapsed rows are not used: everything is visible on the wall)."""

    title: str
    y: int

    def to_json(self, panel_id: int) -> Json:
        return {
            "collapsed": False,
            "gridPos": GridPos(0, self.y, GRID_COLUMNS, 1).to_json(),
            "id": panel_id,
            "panels": [],
            "title": self.title,
            "type": "row",
        }


@dataclass(frozen=True, slots=True)
class QueryVariable:
    """A template variable filled by ``SHOW TAG VALUES`` (drill-down: region → tenant → site →
    device). ``.*`` as the All value keeps the query short with 10,000 devices."""

    name: str
    label: str
    query: str
    multi: bool = True
    include_all: bool = True

    def to_json(self, ds: DataSource) -> Json:
        return {
            "allValue": ".*" if self.include_all else None,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}
            if self.include_all
            else {},
            "datasource": ds.ref(),
            "definition": self.query,
            "hide": 0,
            "includeAll": self.include_all,
            "label": self.label,
            "multi": self.multi,
            "name": self.name,
            "options": [],
            "query": {"query": self.query, "refId": "InfluxVariableQueryEditor-VariableQuery"},
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
            "sort": 1,
            "type": "query",
        }


@dataclass(frozen=True, slots=True)
class Annotation:
    """Alert transitions from ``alert_event`` drawn on every time axis of the dashboard."""

    name: str
    query: str
    text_column: str
    tags_column: str
    color: str = "red"

    def to_json(self, ds: DataSource) -> Json:
        return {
            "datasource": ds.ref(),
            "enable": True,
            "hide": False,
            "iconColor": self.color,
            "name": self.name,
            "target": {
                "fromAnnotations": True,
                "query": self.query,
                "rawQuery": True,
                "refId": "Anno",
                "tagsColumn": self.tags_column,
                "textColumn": self.text_column,
                "textEditor": True,
            },
        }


def _builtin_annotation() -> Json:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


@dataclass(slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    tags: list[str]
    items: list[Panel | Row] = field(default_factory=list)
    variables: list[QueryVariable] = field(default_factory=list)
    annotations: list[Annotation] = field(default_factory=list)
    refresh: str = "1m"
    time_from: str = "now-24h"
    links: list[Json] = field(default_factory=list)

    def to_json(self, ds: DataSource) -> Json:
        panels: list[Json] = []
        for index, item in enumerate(self.items, start=1):
            panels.append(item.to_json(index) if isinstance(item, Row) else item.to_json(index, ds))
        return {
            "annotations": {
                "list": [_builtin_annotation(), *(a.to_json(ds) for a in self.annotations)]
            },
            "description": self.description,
            "editable": False,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "links": self.links,
            "liveNow": False,
            "panels": panels,
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "tags": self.tags,
            "templating": {"list": [v.to_json(ds) for v in self.variables]},
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "monday",
        }


def dashboard_json(doc: Json) -> str:
    """The committed form: sorted keys, two-space indent, UTF-8 text, trailing newline."""
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
