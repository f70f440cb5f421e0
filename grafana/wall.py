"""The wall (监控大屏): what monitoring staff watch all day on a large screen.

Top line: institutions and sites reporting, devices online / offline, alerts today / this week /
this month. Then a map of the sites coloured by their worst open alert beside the open-alerts
table, and the institutions with the most alerts beside the health of each device kind.
Dark theme (Grafana's default), 30 s refresh, every number large enough to read across a room;
``?kiosk`` hides the chrome. One ``region`` variable lets a district institute show only its own
district on the same wall.

The map needs coordinates, which live in the registry, not in InfluxDB: the platform writes one
``site_info`` point per site every few minutes (grafana/site_info.py, docs/schema.md), and the map
joins it with the worst open alert per site (both keyed by the ``site`` tag) in Grafana.
"""

from __future__ import annotations

from grafana import influxql as iq
from grafana.common import (
    KIND_LABELS,
    TAG,
    WALL,
    Layout,
    alerts_stat,
    online_stat,
    open_alerts_table,
    open_count_stat,
)
from grafana.model import Dashboard, GridPos, Json, Panel, Query, QueryVariable, Thresholds
from grafana.panels import bargauge, by_name, stat
from protocols.catalog import default_catalog

UID = "weijian-wall"
REPORTING_WINDOW = "24h"  # "institutions / sites monitored": reported within this window

WORST_MAPPING: Json = {
    "options": {
        "0": {"color": "green", "index": 0, "text": "正常 OK"},
        "1": {"color": "blue", "index": 1, "text": "提示 info"},
        "2": {"color": "orange", "index": 2, "text": "警告 warning"},
        "3": {"color": "red", "index": 3, "text": "严重 critical"},
        "4": {"color": "dark-red", "index": 4, "text": "紧急 emergency"},
    },
    "type": "value",
}
NO_ALERT_MAPPING: Json = {
    "options": {"match": "null", "result": {"color": "green", "index": 5, "text": "正常 OK"}},
    "type": "special",
}
WORST_THRESHOLDS = Thresholds.of("green", (1, "blue"), (2, "orange"), (3, "red"), (4, "dark-red"))


def _kind_names() -> list[Json]:
    return [by_name(kind, displayName=label) for kind, label in sorted(KIND_LABELS.items())]


def _reporting_stat(grid: GridPos, tag: str, title: str, what: str) -> Panel:
    kinds = sorted(default_catalog().kinds)
    query = iq.reporting_groups(kinds, tag, f"$timeFilter AND {WALL.filter()}")
    return stat(
        title,
        grid,
        Query(query, result_format="table"),
        description=f"Distinct {what} with at least one reading in the last {REPORTING_WINDOW}.",
        thresholds=Thresholds.of("blue"),
        calc="distinctCount",
        fields=f"/^{tag}$/",
        time_from=REPORTING_WINDOW,
    )


def sites_map(grid: GridPos) -> Panel:
    """Sites from ``site_info`` joined by ``site`` with the rank of their worst open alert."""
    site_filter = WALL.filter()
    sites = (
        'SELECT last("lat") AS "lat", last("lon") AS "lon", last("name") AS "name", '
        f'last("tenant_name") AS "tenant_name" FROM {iq.ident(iq.SITE_INFO)}'
        f"{iq.where(f'time > now() - {iq.SITE_INFO_LOOKBACK}', site_filter)} "
        'GROUP BY "site", "tenant"'
    )
    worst = iq.worst_open_severity("site", site_filter)
    marker_style: Json = {
        "color": {"field": "worst", "fixed": "green"},
        "opacity": 0.85,
        "rotation": {"fixed": 0, "max": 360, "min": -360, "mode": "mod"},
        "size": {"fixed": 9, "max": 15, "min": 2},
        "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
        "symbolAlign": {"horizontal": "center", "vertical": "center"},
        "textConfig": {
            "fontSize": 12,
            "offsetX": 0,
            "offsetY": 0,
            "textAlign": "center",
            "textBaseline": "middle",
        },
    }
    return Panel(
        type="geomap",
        title="场所地图 Sites by worst open alert",
        grid=grid,
        targets=[
            Query(sites, ref_id="A", result_format="table"),
            Query(worst, ref_id="B", result_format="table"),
        ],
        description=(
            "Every registered site with coordinates (site_info, written by the platform every "
            "few minutes), coloured by its worst open alert: green none, blue info, orange "
            "warning, red critical, dark red emergency. The basemap needs the tile server; "
            "see docs/grafana.md for offline networks."
        ),
        options={
            "basemap": {"config": {}, "name": "Basemap", "type": "default"},
            "controls": {
                "mouseWheelZoom": True,
                "showAttribution": True,
                "showDebug": False,
                "showMeasure": False,
                "showScale": False,
                "showZoom": True,
            },
            "layers": [
                {
                    "config": {"showLegend": True, "style": marker_style},
                    "location": {"latitude": "lat", "longitude": "lon", "mode": "coords"},
                    "name": "场所 Sites",
                    "tooltip": True,
                    "type": "markers",
                }
            ],
            "tooltip": {"mode": "details"},
            "view": {
                "allLayers": True,
                "id": "fit",
                "lat": 35,
                "lon": 105,
                "padding": 10,
                "zoom": 4,
            },
        },
        field_config={
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": Thresholds.of("green").to_json(),
            },
            "overrides": [
                by_name(
                    "worst",
                    **{
                        "color": {"mode": "thresholds"},
                        "mappings": [WORST_MAPPING, NO_ALERT_MAPPING],
                        "thresholds": WORST_THRESHOLDS.to_json(),
                    },
                )
            ],
        },
        transformations=[
            {"id": "joinByField", "options": {"byField": "site", "mode": "outerTabular"}}
        ],
    )


def most_alerts(grid: GridPos) -> Panel:
    query = (
        'SELECT top("n", "tenant", 10) AS "alerts" FROM (SELECT count("alert_id") AS "n" '
        f"FROM {iq.ident(iq.ALERTS)}"
        f"{iq.where('$timeFilter', iq.eq('state', 'firing'), WALL.filter())}"
        ' GROUP BY "tenant")'
    )
    return bargauge(
        "本月告警最多的机构 Most alerts this month",
        grid,
        [Query(query, result_format="table")],
        description="The ten institutions whose devices fired the most alerts this month.",
        thresholds=Thresholds.of("orange", (10, "red")),
        values=True,
        fields="/^alerts$/",
        transformations=[
            {"id": "sortBy", "options": {"sort": [{"desc": True, "field": "alerts"}]}}
        ],
        time_from="now/M",
    )


def kind_health(grid_online: GridPos, grid_alerts: GridPos) -> list[Panel]:
    """Per device kind: devices online now, and open alerts (no-data alerts included)."""
    kinds = sorted(default_catalog().kinds)
    online = iq.count_reporting(kinds, "device", f"$timeFilter AND {WALL.filter()}", "online")
    inner = iq.last_transitions(("state", "kind"), WALL.filter())
    alerts = (
        f'SELECT count("alert_id") AS "open" FROM ({inner}) '
        f'WHERE {iq.open_condition()} GROUP BY "kind"'
    )
    return [
        bargauge(
            "在线设备（按类型）Online by kind",
            grid_online,
            [Query(online, alias="$m")],
            description="Devices of each kind that reported in the last 15 minutes.",
            thresholds=Thresholds.of("blue"),
            overrides=_kind_names(),
            time_from="15m",
        ),
        bargauge(
            "未解除告警（按类型）Open alerts by kind",
            grid_alerts,
            [Query(alerts, alias="$tag_kind")],
            description="Open alerts (firing or acknowledged) by device kind, no-data included.",
            thresholds=Thresholds.of("green", (1, "orange"), (5, "red")),
            overrides=_kind_names(),
        ),
    ]


def build_wall() -> Dashboard:
    lay = Layout()
    all_kinds = sorted(default_catalog().kinds)
    panels: list[Panel] = [
        _reporting_stat(
            lay.place(3, 4), "tenant", "监测机构 Institutions", "institutions (tenants)"
        ),
        _reporting_stat(lay.place(3, 4), "site", "监测场所 Sites", "sites"),
        online_stat(WALL, lay.place(4, 4), all_kinds, "在线设备 Devices online"),
        open_count_stat(WALL, lay.place(4, 4), "离线设备 Devices offline", rule="nodata"),
        alerts_stat(WALL, lay.place(3, 4), "今日告警 Alerts today", "now/d"),
        alerts_stat(WALL, lay.place(3, 4), "本周告警 This week", "now/w"),
        alerts_stat(WALL, lay.place(4, 4), "本月告警 This month", "now/M"),
        sites_map(lay.place(14, 13)),
        open_alerts_table(WALL, lay.place(10, 13)),
        most_alerts(lay.place(8, 9)),
        *kind_health(lay.place(8, 9), lay.place(8, 9)),
    ]
    return Dashboard(
        uid=UID,
        title="卫监监控大屏 Weijian wall",
        description="Institutions, devices, alerts and the map of sites, for the large screen.",
        tags=[TAG, "wall"],
        items=list(panels),
        variables=[
            QueryVariable("region", "行政区划 region", 'SHOW TAG VALUES WITH KEY = "region"'),
        ],
        refresh="30s",
        time_from="now-24h",
        links=[
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": [TAG, "kind"],
                "targetBlank": False,
                "title": "分类看板 Dashboards",
                "type": "dashboards",
            }
        ],
    )
