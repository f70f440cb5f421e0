"""Per-kind dashboards: drinking water, pools, sterilizers, radiation, indoor air.

Each has the drill-down variables (region → institution → site → device; a tenant's copy only
site → device), alert transitions as annotations, a status line, the open alerts, the latest
readings coloured by the limits, and one chart per quantity the kind's device profiles report
(protocols/data/profiles) with the limits of the rule files drawn as thresholds
(grafana/thresholds.py). Sterilizers and radiation add their own views (cycles and the
saturation line; beam state and personal dose).

``build_kind_dashboard(spec, scope)`` builds the agency dashboard (``AGENCY``) or a tenant
organisation's copy (``TENANT``) from the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from alerting.rules import RULES_DIR
from grafana import influxql as iq
from grafana.common import (
    AGENCY,
    KIND_LABELS,
    TAG,
    Layout,
    Scope,
    alert_annotation,
    alerts_stat,
    drilldown_variables,
    online_stat,
    open_alerts_table,
    open_count_stat,
)
from grafana.model import Dashboard, Json, Panel, Query, Row, Thresholds
from grafana.panels import by_name, grafana_unit, organize, stat, state_timeline, table, timeseries
from grafana.saturation import psat_chain
from grafana.thresholds import describe_quantity_limits, quantity_thresholds
from protocols.catalog import default_catalog
from protocols.profiles import load_profiles

STERILIZATION_FILE = RULES_DIR.parent / "sterilization.yaml"


@dataclass(frozen=True, slots=True)
class KindDashboard:
    uid: str
    file: str
    title: str
    description: str
    kinds: tuple[str, ...]
    order: tuple[str, ...] = ()  # charts first in this order, then the rest alphabetically


DRINKING_WATER = KindDashboard(
    "weijian-drinking-water",
    "drinking-water",
    "饮用水 Drinking water",
    "Plant outlets, taps and secondary supply (GB 5749-2022): probes and HJ 212 stations.",
    ("water_probe", "water_station"),
    ("turbidity_ntu", "free_chlorine_mg_l", "ph"),
)
POOLS = KindDashboard(
    "weijian-pools",
    "pools",
    "游泳池 Pools",
    "Swimming-pool water (GB 37488-2019 §4.4): disinfectant, pH, ORP, clarity, temperature.",
    ("pool_monitor",),
    ("free_chlorine_mg_l", "combined_chlorine_mg_l", "ph", "orp_mv", "turbidity_ntu"),
)
STERILIZERS = KindDashboard(
    "weijian-sterilizers",
    "sterilizers",
    "压力蒸汽灭菌 Sterilizers",
    "Steam sterilizers (WS 310.2/310.3-2016): chamber temperature and pressure against "
    "saturated steam, cycle phases and the pass/fail record of every cycle.",
    ("sterilizer",),
)
RADIATION = KindDashboard(
    "weijian-radiation",
    "radiation",
    "放射防护 Radiation",
    "X-ray rooms (GBZ 130-2020): dose rate outside the shielding while the beam is on; "
    "personal dosimeters' cumulative dose for the monitoring period (GBZ 128-2019).",
    ("dose_rate_monitor", "dosimeter"),
)
INDOOR_AIR = KindDashboard(
    "weijian-indoor-air",
    "indoor-air",
    "公共场所室内空气 Indoor air",
    "Hotels, malls, baths and other public places (GB 37488-2019 §4.1-4.2).",
    ("air_monitor",),
    ("co2_ppm", "pm25_ug_m3", "pm10_ug_m3", "hcho_mg_m3", "tvoc_mg_m3"),
)
KIND_DASHBOARDS = (DRINKING_WATER, POOLS, STERILIZERS, RADIATION, INDOOR_AIR)


def charted_quantities(spec: KindDashboard) -> list[str]:
    """Numeric quantities some device profile of these kinds reports (battery/RSSI aside)."""
    catalog = default_catalog()
    profiles = load_profiles()
    common = {"battery_pct", "rssi_dbm"}
    reported = {
        q
        for kind in spec.kinds
        for profile in profiles.for_kind(kind)
        for q in profile.quantities
        if catalog.quantities[q].type in ("float", "int") and q not in common
    }
    first = [q for q in spec.order if q in reported]
    return first + sorted(reported - set(first))


def quantity_title(quantity: str) -> str:
    q = default_catalog().quantities[quantity]
    unit = f" ({q.unit})" if q.unit and q.unit != "1" else ""
    return f"{q.description}{unit}"


def quantity_unit(quantity: str) -> str:
    return grafana_unit(default_catalog().quantities[quantity].unit)


def _series(
    scope: Scope, kinds: Sequence[str], quantity: str, agg: str = "mean", condition: str = ""
) -> Query:
    cond = iq.where("$timeFilter", scope.filter(), condition)
    return Query(
        f"SELECT {agg}({iq.ident(quantity)}) AS {iq.ident(quantity)} "
        f"FROM {iq.sources(kinds)}{cond} "
        'GROUP BY time($__interval), "device" fill(none)',
        alias="$tag_device",
    )


def quantity_chart(
    scope: Scope,
    kinds: Sequence[str],
    quantity: str,
    grid_w: int,
    lay: Layout,
    *,
    agg: str = "mean",
    title: str | None = None,
    threshold_style: str = "line+area",
    log_scale: bool = False,
) -> Panel:
    """One quantity per device, with the rule files' limits for these kinds drawn."""
    panel = timeseries(
        title or quantity_title(quantity),
        lay.place(grid_w, 8),
        [_series(scope, kinds, quantity, agg)],
        description=describe_quantity_limits(kinds, quantity),
        unit=quantity_unit(quantity),
        thresholds=quantity_thresholds(kinds, quantity),
        threshold_style=threshold_style,
    )
    if log_scale:
        panel.field_config["defaults"]["custom"]["scaleDistribution"] = {"log": 10, "type": "log"}
    return panel


def latest_table(
    scope: Scope, kinds: Sequence[str], quantities: Sequence[str], lay: Layout
) -> Panel:
    """Each device's latest value of each quantity in the last hour, cells coloured by limits."""
    selected = ", ".join(f"last({iq.ident(q)}) AS {iq.ident(q)}" for q in quantities)
    query = (
        f"SELECT {selected} FROM {iq.sources(kinds)}{iq.where('$timeFilter', scope.filter())} "
        'GROUP BY "site", "device"'
    )
    overrides: list[Json] = [
        by_name(
            q,
            **{
                "custom.cellOptions": {"mode": "basic", "type": "color-background"},
                "displayName": quantity_title(q),
                "thresholds": quantity_thresholds(kinds, q).to_json(),
                "unit": quantity_unit(q),
            },
        )
        for q in quantities
    ]
    return table(
        "最新读数 Latest readings (last hour)",
        lay.place(24, 8),
        [Query(query, result_format="table")],
        description="Each device's latest value of each quantity in the last hour, coloured "
        "green / yellow / red by the limits of the rule files (see each chart's description).",
        overrides=overrides,
        transformations=[
            organize(
                ["site", "device", *quantities],
                {"site": "场所 site", "device": "设备 device"},
                ["Time"],
            )
        ],
        time_from="1h",
    )


def _status_line(scope: Scope, spec: KindDashboard, lay: Layout) -> list[Panel]:
    return [
        online_stat(scope, lay.place(6, 4), spec.kinds, "在线设备 Devices online"),
        open_count_stat(scope, lay.place(6, 4), "未解除告警 Open alerts", kinds=spec.kinds),
        alerts_stat(scope, lay.place(6, 4), "今日告警 Alerts today", "now/d", kinds=spec.kinds),
        alerts_stat(scope, lay.place(6, 4), "本周告警 This week", "now/w", kinds=spec.kinds),
    ]


def _generic(scope: Scope, spec: KindDashboard, lay: Layout) -> list[Panel | Row]:
    quantities = charted_quantities(spec)
    items: list[Panel | Row] = [*_status_line(scope, spec, lay)]
    items.append(open_alerts_table(scope, lay.place(24, 7), kinds=spec.kinds))
    items.append(latest_table(scope, spec.kinds, quantities, lay))
    items.append(Row("趋势 Trends", lay.row()))
    items += [quantity_chart(scope, spec.kinds, q, 12, lay) for q in quantities]
    return items


@cache
def _sterilization_checks() -> tuple[float, str, str]:
    """(saturation tolerance kPa, severity of air, severity of superheat) from the cycle table."""
    raw = yaml.safe_load(Path(STERILIZATION_FILE).read_text(encoding="utf-8"))
    severity = raw.get("severity", {})
    return (
        float(raw["checks"]["saturation_tolerance_kpa"]),
        severity.get("air_in_chamber", "critical"),
        severity.get("steam_superheated", "warning"),
    )


_SEVERITY_COLOR = {"info": "blue", "warning": "orange", "critical": "red", "emergency": "dark-red"}


def saturation_thresholds() -> Thresholds:
    """±tolerance around saturated steam, coloured by the cycle checks' severities."""
    tol, air, superheat = _sterilization_checks()
    return Thresholds.of(_SEVERITY_COLOR[superheat], (-tol, "green"), (tol, _SEVERITY_COLOR[air]))


def _sterilizer(scope: Scope, spec: KindDashboard, lay: Layout) -> list[Panel | Row]:
    kind = spec.kinds
    src = iq.ident("sterilizer")
    cycles = iq.ident(iq.STERILIZER_CYCLE)
    flt = scope.filter()
    items: list[Panel | Row] = [
        online_stat(scope, lay.place(6, 4), kind, "在线灭菌器 Sterilizers online"),
        stat(
            "今日灭菌周期 Cycles today",
            lay.place(6, 4),
            Query(
                f'SELECT count("cycle_id") AS "cycles" FROM {cycles}{iq.where("$timeFilter", flt)}'
            ),
            description="Cycles closed today (sterilizer_cycle, written by the cycle monitor).",
            thresholds=Thresholds.of("blue"),
            time_from="now/d",
        ),
        stat(
            "今日不合格周期 Failed cycles today",
            lay.place(6, 4),
            Query(
                f'SELECT count("cycle_id") AS "failed" FROM {cycles}'
                f"{iq.where('$timeFilter', iq.eq('passed', 'false'), flt)}"
            ),
            description="Cycles that failed a physical check today (hold time, temperature band, "
            "saturated steam, B-D test); their reasons are in the cycle table.",
            thresholds=Thresholds.of("green", (1, "red")),
            time_from="now/d",
        ),
        open_count_stat(scope, lay.place(6, 4), "未解除告警 Open alerts", kinds=kind),
    ]
    passed_mapping: Json = {
        "options": {
            "false": {"color": "red", "index": 1, "text": "不合格 FAIL"},
            "true": {"color": "green", "index": 0, "text": "合格 pass"},
        },
        "type": "value",
    }
    columns = [
        "site",
        "device",
        "cycle_id",
        "programme",
        "passed",
        "hold_s",
        "min_temp_c",
        "max_temp_c",
        "max_saturation_excess_kpa",
        "reasons",
    ]
    cycle_query = (
        f"SELECT {', '.join(iq.ident(c) for c in columns)} FROM {cycles}"
        f"{iq.where('$timeFilter', flt)} ORDER BY time DESC"
    )
    items.append(
        table(
            "灭菌周期记录 Cycle record",
            lay.place(24, 8),
            [Query(cycle_query, result_format="table")],
            description="One row per closed cycle: programme (inferred from the hold plateau), "
            "hold time, hold temperature range, the largest pressure excess over saturated steam, "
            "pass/fail and the reasons (alerting/domain/sterilizer.py).",
            overrides=[
                by_name(
                    "passed",
                    **{
                        "custom.cellOptions": {"type": "color-background"},
                        "mappings": [passed_mapping],
                    },
                ),
                by_name("hold_s", unit="s"),
                by_name("min_temp_c", unit="celsius", decimals=1),
                by_name("max_temp_c", unit="celsius", decimals=1),
                by_name(
                    "max_saturation_excess_kpa",
                    **{
                        "custom.cellOptions": {"mode": "basic", "type": "color-text"},
                        "decimals": 1,
                        "thresholds": saturation_thresholds().to_json(),
                        "unit": "pressurekpa",
                    },
                ),
            ],
            transformations=[
                organize(
                    ["Time", *columns],
                    {
                        "Time": "结束时间 end",
                        "site": "场所 site",
                        "device": "设备 device",
                        "cycle_id": "周期 cycle",
                        "programme": "程序 programme",
                        "passed": "结果 result",
                        "hold_s": "维持时间 hold",
                        "min_temp_c": "最低温度 min T",
                        "max_temp_c": "最高温度 max T",
                        "max_saturation_excess_kpa": "超饱和压力 P−Psat",
                        "reasons": "原因 reasons",
                    },
                )
            ],
        )
    )
    items.append(open_alerts_table(scope, lay.place(24, 6), kinds=kind))
    items.append(Row("周期曲线 Cycle curves", lay.row()))
    items.append(
        quantity_chart(
            scope,
            kind,
            "temperature_c",
            12,
            lay,
            title="腔体温度 Chamber temperature (°C)",
            threshold_style="dashed",
        )
    )
    means = (
        'SELECT mean("temperature_c") AS "t", mean("pressure_kpa") AS "p" FROM '
        f"{src}{iq.where('$timeFilter', flt)}"
        ' GROUP BY time($__interval), "device" fill(none)'
    )
    items.append(
        timeseries(
            "压力与饱和蒸汽压 Pressure and saturation P_sat(T)",
            lay.place(12, 8),
            [Query(psat_chain(means), alias="$tag_device $col")],
            description="Measured absolute pressure (p) and the saturated-steam pressure at the "
            "measured temperature (p_sat, IAPWS-IF97). During the hold they must coincide: "
            "pressure above p_sat means air in the chamber, below it superheated steam.",
            unit="pressurekpa",
            thresholds=Thresholds.of("transparent"),
            threshold_style="off",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* p_sat$"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                    ],
                }
            ],
        )
    )
    hold = (
        'SELECT mean("temperature_c") AS "t", mean("pressure_kpa") AS "p" FROM '
        f"{src}{iq.where('$timeFilter', iq.eq('cycle_phase', 'sterilizing'), flt)}"
        ' GROUP BY time($__interval), "device" fill(none)'
    )
    tol, _, _ = _sterilization_checks()
    items.append(
        timeseries(
            "保持期超饱和压力 Hold: P − P_sat(T)",
            lay.place(12, 8),
            [
                Query(
                    f'SELECT "p" - "p_sat" AS "excess" FROM ({psat_chain(hold)}) GROUP BY "device"',
                    alias="$tag_device",
                )
            ],
            description="Pressure minus saturated-steam pressure during the sterilizing phase. "
            f"Beyond ±{tol:g} kPa (checks.saturation_tolerance_kpa in "
            "alerting/data/sterilization.yaml) the steam is not saturated: air (above) or "
            "superheat (below).",
            unit="pressurekpa",
            thresholds=saturation_thresholds(),
            threshold_style="line+area",
            draw="points",
        )
    )
    phases = load_profiles().for_kind("sterilizer")[0].quantities["cycle_phase"].values or ()
    colors = {"idle": "text", "sterilizing": "green", "aborted": "red", "complete": "blue"}
    items.append(
        state_timeline(
            "周期阶段 Cycle phase",
            lay.place(12, 8),
            [
                Query(
                    f'SELECT last("cycle_phase") AS "phase" FROM {src}'
                    f"{iq.where('$timeFilter', flt)} "
                    'GROUP BY time($__interval), "device" fill(none)',
                    alias="$tag_device",
                )
            ],
            description="The controller's phase (profile sterilizer_ps120).",
            mappings=[
                {
                    "options": {
                        p: {"color": colors.get(p, "orange"), "index": i, "text": p}
                        for i, p in enumerate(phases)
                    },
                    "type": "value",
                }
            ],
        )
    )
    return items


def _radiation(scope: Scope, spec: KindDashboard, lay: Layout) -> list[Panel | Row]:
    flt = scope.filter()
    items: list[Panel | Row] = [
        online_stat(scope, lay.place(6, 4), ("dose_rate_monitor",), "在线剂量率仪 Monitors online"),
        online_stat(scope, lay.place(6, 4), ("dosimeter",), "在线剂量计 Dosimeters online"),
        open_count_stat(scope, lay.place(6, 4), "未解除告警 Open alerts", kinds=spec.kinds),
        alerts_stat(scope, lay.place(6, 4), "今日告警 Alerts today", "now/d", kinds=spec.kinds),
    ]
    items.append(open_alerts_table(scope, lay.place(24, 6), kinds=spec.kinds))
    items.append(Row("机房周围剂量当量率 Dose rate outside X-ray rooms", lay.row()))
    items.append(
        quantity_chart(
            scope,
            ("dose_rate_monitor",),
            "dose_rate_usv_h",
            16,
            lay,
            agg="max",
            title="周围剂量当量率 H*(10) rate (µSv/h, max per interval)",
            log_scale=True,
        )
    )
    items.append(
        state_timeline(
            "出束状态 Beam",
            lay.place(8, 8),
            [
                Query(
                    f'SELECT last("beam_on") AS "beam_on" FROM {iq.ident("dose_rate_monitor")}'
                    f"{iq.where('$timeFilter', flt)} "
                    'GROUP BY time($__interval), "device" fill(none)',
                    alias="$tag_device",
                )
            ],
            description="The room's interlock signal: dose-rate limits apply while the beam is on.",
            mappings=[
                {
                    "options": {
                        "false": {"color": "text", "index": 1, "text": "关 off"},
                        "true": {"color": "orange", "index": 0, "text": "出束 on"},
                    },
                    "type": "value",
                }
            ],
        )
    )
    items.append(Row("个人剂量 Personal dose", lay.row()))
    items.append(
        quantity_chart(
            scope,
            ("dosimeter",),
            "dose_msv",
            12,
            lay,
            agg="max",
            title="本监测周期累计个人剂量 Hp(10) this period (mSv)",
        )
    )
    items.append(
        quantity_chart(
            scope,
            ("dosimeter",),
            "dose_rate_usv_h",
            12,
            lay,
            agg="max",
            title="佩戴者剂量率 Dose rate at the wearer (µSv/h)",
            log_scale=True,
        )
    )
    items.append(latest_table(scope, ("dosimeter",), ["dose_msv"], lay))
    return items


def build_kind_dashboard(spec: KindDashboard, scope: Scope = AGENCY) -> Dashboard:
    lay = Layout()
    if spec is STERILIZERS:
        items = _sterilizer(scope, spec, lay)
    elif spec is RADIATION:
        items = _radiation(scope, spec, lay)
    else:
        items = _generic(scope, spec, lay)
    kinds_text = ", ".join(KIND_LABELS[k] for k in spec.kinds)
    return Dashboard(
        uid=spec.uid,
        title=spec.title,
        description=f"{spec.description} Kinds: {kinds_text}.",
        tags=[TAG, "kind", *spec.kinds],
        items=items,
        variables=drilldown_variables(scope, spec.kinds),
        annotations=[alert_annotation(scope, spec.kinds)],
        refresh="1m",
        time_from="now-24h",
        links=[
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "卫监 Weijian",
                "type": "dashboards",
            }
        ],
    )
