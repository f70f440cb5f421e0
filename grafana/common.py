"""Pieces the wall and the per-kind dashboards share: data sources, layout, alert panels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana import influxql as iq
from grafana.model import Annotation, DataSource, GridPos, Panel, Query, QueryVariable, Thresholds
from grafana.panels import SEVERITY_MAPPING, STATE_MAPPING, by_name, organize, stat, table

#: The provisioned agency data source (deploy/grafana/provisioning/datasources).
AGENCY_DS = DataSource("weijian-influxdb")
#: Each tenant organisation's own data source, created by ``weijian grafana sync``.
TENANT_DS = DataSource("weijian-tenant-influxdb")
#: Tag on every Weijian dashboard: the dashboard links and ``sync`` find them by it.
TAG = "weijian"

#: Short bilingual names of the device kinds (protocols/data/kinds.yaml) for legends and bars.
KIND_LABELS = {
    "water_probe": "饮用水探头 water probe",
    "water_station": "水质监测站 water station",
    "pool_monitor": "游泳池水质 pool monitor",
    "sterilizer": "压力蒸汽灭菌器 sterilizer",
    "dose_rate_monitor": "剂量率监测 dose-rate monitor",
    "dosimeter": "个人剂量计 dosimeter",
    "air_monitor": "室内空气 indoor air",
}

ONLINE_WINDOW = "15m"  # "online": reported within this window (docs/grafana.md)


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.line_h = 0

    def place(self, w: int, h: int) -> GridPos:
        if self.x + w > 24:
            self.newline()
        pos = GridPos(self.x, self.y, w, h)
        self.x += w
        self.line_h = max(self.line_h, h)
        return pos

    def newline(self) -> None:
        if self.x:
            self.y += self.line_h
        self.x = 0
        self.line_h = 0

    def row(self) -> int:
        """Start a row header line; returns its y."""
        self.newline()
        y = self.y
        self.y += 1
        return y


@dataclass(frozen=True, slots=True)
class Scope:
    """Which drill-down variables a dashboard has: the agency's four, or a tenant's two (its
    database holds only its own data, so it has no tenant or region to choose)."""

    tags: tuple[str, ...]
    datasource: DataSource

    def filter(self) -> str:
        return iq.var_filter(self.tags)


AGENCY = Scope(("region", "tenant", "site", "device"), AGENCY_DS)
TENANT = Scope(("site", "device"), TENANT_DS)
WALL = Scope(("region",), AGENCY_DS)

_VARIABLE_LABELS = {
    "region": "行政区划 region",
    "tenant": "机构 institution",
    "site": "场所 site",
    "device": "设备 device",
}


def drilldown_variables(scope: Scope, measurements: Sequence[str]) -> list[QueryVariable]:
    """Cascading ``SHOW TAG VALUES``: each variable filtered by the ones before it."""
    source = iq.kinds_regex(measurements) if len(measurements) > 1 else iq.ident(measurements[0])
    out = []
    for i, tag in enumerate(scope.tags):
        previous = iq.var_filter(scope.tags[:i])
        query = f"SHOW TAG VALUES FROM {source} WITH KEY = {iq.ident(tag)}" + (
            f" WHERE {previous}" if previous else ""
        )
        out.append(QueryVariable(tag, _VARIABLE_LABELS[tag], query))
    return out


def alert_annotation(scope: Scope, kinds: Sequence[str]) -> Annotation:
    """Every alert transition of these kinds (and the chosen sites/devices) on the time axes."""
    cond = iq.where("$timeFilter", f'"kind" =~ {iq.kinds_regex(kinds)}', scope.filter())
    query = (
        f'SELECT "message", "state", "severity", "rule", "device" FROM {iq.ident(iq.ALERTS)}{cond}'
    )
    return Annotation("告警 Alerts", query, "message", "severity,state,rule,device")


def open_alerts_table(
    scope: Scope, grid: GridPos, kinds: Sequence[str] | None = None, title: str | None = None
) -> Panel:
    """The open alerts, newest transition first, severity coloured."""
    conditions = [scope.filter()]
    if kinds is not None:
        conditions.append(f'"kind" =~ {iq.kinds_regex(kinds)}')
    columns = ("severity", "state", "tenant", "site", "device", "kind", "rule", "message")
    query = iq.open_alerts(columns, " AND ".join(c for c in conditions if c))
    return table(
        title or "未解除告警 Open alerts",
        grid,
        [Query(query, result_format="table")],
        description=(
            "Alerts fired and not yet resolved (firing or acknowledged): the latest transition "
            "of each device and rule in alert_event within "
            f"{iq.OPEN_ALERT_LOOKBACK}. Acknowledge and close them in the platform."
        ),
        overrides=[
            by_name(
                "severity",
                **{
                    "custom.cellOptions": {"type": "color-background"},
                    "mappings": [SEVERITY_MAPPING],
                },
            ),
            by_name(
                "state",
                **{"custom.cellOptions": {"type": "color-text"}, "mappings": [STATE_MAPPING]},
            ),
            by_name("message", **{"custom.width": 520}),
        ],
        transformations=[
            organize(
                [
                    "Time",
                    "severity",
                    "state",
                    "tenant",
                    "site",
                    "device",
                    "kind",
                    "rule",
                    "message",
                ],
                {
                    "Time": "时间 time",
                    "severity": "级别 severity",
                    "state": "状态 state",
                    "tenant": "机构 institution",
                    "site": "场所 site",
                    "device": "设备 device",
                    "kind": "类型 kind",
                    "rule": "规则 rule",
                    "message": "说明 message",
                },
                hide=["alert_id"],
            )
        ],
        sort_by=[{"desc": True, "displayName": "时间 time"}],
    )


def online_stat(scope: Scope, grid: GridPos, kinds: Sequence[str], title: str) -> Panel:
    """Devices that reported within ``ONLINE_WINDOW`` (a panel time override)."""
    query = iq.count_reporting(kinds, "device", f"$timeFilter AND {scope.filter()}", "online")
    return stat(
        title,
        grid,
        Query(query, result_format="table"),
        description=(
            f"Devices with at least one reading in the last {ONLINE_WINDOW} (any quantity of "
            "their kind). Silent devices are counted under Offline once the no-data monitor "
            "raises their alert."
        ),
        thresholds=Thresholds.of("blue"),
        calc="sum",
        fields="/^online$/",
        time_from=ONLINE_WINDOW,
    )


def alerts_stat(
    scope: Scope, grid: GridPos, title: str, period: str, kinds: Sequence[str] | None = None
) -> Panel:
    """Alerts that fired in ``period`` (a panel time override such as ``now/d``)."""
    conditions = ["$timeFilter", iq.eq("state", "firing"), scope.filter()]
    if kinds is not None:
        conditions.append(f'"kind" =~ {iq.kinds_regex(kinds)}')
    query = (
        f'SELECT count("alert_id") AS "alerts" FROM {iq.ident(iq.ALERTS)}{iq.where(*conditions)}'
    )
    return stat(
        title,
        grid,
        Query(query),
        description="Alerts that fired (firing transitions in alert_event) in the period.",
        thresholds=Thresholds.of("green", (1, "orange"), (10, "red")),
        time_from=period,
    )


def open_count_stat(
    scope: Scope,
    grid: GridPos,
    title: str,
    kinds: Sequence[str] | None = None,
    rule: str | None = None,
) -> Panel:
    """How many alerts are open now (of ``kinds``; of one ``rule``, e.g. ``nodata``)."""
    conditions = [scope.filter()]
    if kinds is not None:
        conditions.append(f'"kind" =~ {iq.kinds_regex(kinds)}')
    if rule is not None:
        conditions.append(f'"rule" = {iq.string(rule)}')
    inner = iq.last_transitions(("state",), " AND ".join(c for c in conditions if c))
    query = f'SELECT count("alert_id") AS "open" FROM ({inner}) WHERE {iq.open_condition()}'
    what = (
        "devices silent for longer than their reporting interval allows" if rule else "open alerts"
    )
    return stat(
        title,
        grid,
        Query(query),
        description=(
            f"Number of {what} (firing or acknowledged; latest transition per device and rule)."
        ),
        thresholds=Thresholds.of("green", (1, "red")),
    )
