"""Panel factories: the few visualisations the wall and the per-kind dashboards use, configured
for a large screen (big values, few decorations, colours that mean something)."""

from __future__ import annotations

from typing import Any

from grafana.model import GridPos, Json, Panel, Query, Thresholds

#: Grafana unit ids for the catalog's units (protocols/data/quantities.yaml); others get a suffix.
UNITS = {
    "ppm": "ppm",
    "°C": "celsius",
    "kPa": "pressurekpa",
    "%": "percent",
    "m/s": "velocityms",
    "µg/m³": "conugm3",
    "mg/m³": "conmgm3",
    "mV": "mvolt",
    "1": "none",
}
SEVERITY_MAPPING: Json = {
    "options": {
        "info": {"color": "blue", "index": 0, "text": "提示 info"},
        "warning": {"color": "orange", "index": 1, "text": "警告 warning"},
        "critical": {"color": "red", "index": 2, "text": "严重 critical"},
        "emergency": {"color": "dark-red", "index": 3, "text": "紧急 emergency"},
    },
    "type": "value",
}
STATE_MAPPING: Json = {
    "options": {
        "pending": {"color": "text", "index": 0, "text": "待定 pending"},
        "firing": {"color": "red", "index": 1, "text": "告警中 firing"},
        "acknowledged": {"color": "orange", "index": 2, "text": "已确认 acknowledged"},
        "resolved": {"color": "green", "index": 3, "text": "已解除 resolved"},
    },
    "type": "value",
}


def grafana_unit(unit: str | None) -> str:
    if not unit:
        return "none"
    return UNITS.get(unit, f"suffix: {unit}")


def stat(
    title: str,
    grid: GridPos,
    query: Query,
    *,
    description: str,
    thresholds: Thresholds,
    calc: str = "lastNotNull",
    unit: str = "none",
    time_from: str | None = None,
    value_size: int = 72,
    fields: str = "",
    links: list[Json] | None = None,
) -> Panel:
    """A single big number (``calc`` over all rows when the query is in table format)."""
    return Panel(
        type="stat",
        title=title,
        grid=grid,
        targets=[query],
        description=description,
        options={
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "orientation": "auto",
            "reduceOptions": {"calcs": [calc], "fields": fields, "values": False},
            "showPercentChange": False,
            "text": {"titleSize": 22, "valueSize": value_size},
            "textMode": "value",
            "wideLayout": True,
        },
        field_config={
            "defaults": {
                "color": {"mode": "thresholds"},
                "decimals": 0,
                "mappings": [],
                "noValue": "0",
                "thresholds": thresholds.to_json(),
                "unit": unit,
            },
            "overrides": [],
        },
        time_from=time_from,
        hide_time_override=False,
        links=links or [],
    )


def timeseries(
    title: str,
    grid: GridPos,
    queries: list[Query],
    *,
    description: str,
    unit: str,
    thresholds: Thresholds,
    threshold_style: str = "line+area",
    decimals: int | None = None,
    overrides: list[Json] | None = None,
    soft_min: float | None = None,
    draw: str = "line",
) -> Panel:
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "axisBorderShow": False,
            "axisPlacement": "auto",
            "drawStyle": draw,
            "fillOpacity": 0,
            "lineWidth": 2,
            "pointSize": 4,
            "showPoints": "never",
            "spanNulls": 600000,  # gaps longer than 10 minutes are shown as gaps
            "thresholdsStyle": {"mode": threshold_style},
        },
        "thresholds": thresholds.to_json(),
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if soft_min is not None:
        defaults["custom"]["axisSoftMin"] = soft_min
    return Panel(
        type="timeseries",
        title=title,
        grid=grid,
        targets=queries,
        description=description,
        options={
            "legend": {
                "calcs": ["lastNotNull", "max"],
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        field_config={"defaults": defaults, "overrides": overrides or []},
    )


def table(
    title: str,
    grid: GridPos,
    queries: list[Query],
    *,
    description: str,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
    sort_by: list[Json] | None = None,
    time_from: str | None = None,
) -> Panel:
    return Panel(
        type="table",
        title=title,
        grid=grid,
        targets=queries,
        description=description,
        options={
            "cellHeight": "md",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": sort_by or [],
        },
        field_config={
            "defaults": {
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
                "mappings": [],
                "thresholds": Thresholds.of("transparent").to_json(),
            },
            "overrides": overrides or [],
        },
        transformations=transformations or [],
        time_from=time_from,
    )


def bargauge(
    title: str,
    grid: GridPos,
    queries: list[Query],
    *,
    description: str,
    thresholds: Thresholds,
    values: bool = False,
    fields: str = "",
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
    time_from: str | None = None,
) -> Panel:
    return Panel(
        type="bargauge",
        title=title,
        grid=grid,
        targets=queries,
        description=description,
        options={
            "displayMode": "basic",
            "maxVizHeight": 60,
            "minVizHeight": 24,
            "minVizWidth": 8,
            "namePlacement": "left",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": fields, "values": values},
            "showUnfilled": True,
            "sizing": "auto",
            "text": {"titleSize": 18, "valueSize": 26},
            "valueMode": "color",
        },
        field_config={
            "defaults": {
                "color": {"mode": "thresholds"},
                "decimals": 0,
                "min": 0,
                "thresholds": thresholds.to_json(),
                "unit": "none",
            },
            "overrides": overrides or [],
        },
        transformations=transformations or [],
        time_from=time_from,
    )


def state_timeline(
    title: str,
    grid: GridPos,
    queries: list[Query],
    *,
    description: str,
    mappings: list[Json],
) -> Panel:
    return Panel(
        type="state-timeline",
        title=title,
        grid=grid,
        targets=queries,
        description=description,
        options={
            "alignValue": "center",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "mergeValues": True,
            "rowHeight": 0.8,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        },
        field_config={
            "defaults": {
                "color": {"mode": "thresholds"},
                "custom": {"fillOpacity": 80, "lineWidth": 0},
                "mappings": mappings,
                "thresholds": Thresholds.of("text").to_json(),
            },
            "overrides": [],
        },
    )


def by_name(name: str, **properties: Any) -> Json:
    """A field override matched by field (column) name."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in sorted(properties.items())],
    }


def by_regex(pattern: str, **properties: Any) -> Json:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": key, "value": value} for key, value in sorted(properties.items())],
    }


def organize(order: list[str], rename: dict[str, str], hide: list[str] | None = None) -> Json:
    """An "organize fields" transformation: column order, headers, hidden columns."""
    return {
        "id": "organize",
        "options": {
            "excludeByName": {name: True for name in hide or []},
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": rename,
        },
    }
