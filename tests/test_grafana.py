"""The Grafana dashboards, provisioning and tenant sync (grafana/), against the real InfluxDB.

Grafana itself cannot run here, so what Grafana would do is checked piece by piece:

* the committed JSON is exactly what the builders produce, and is structurally a Grafana 11.6
  dashboard (schemaVersion 41; the fields Grafana needs; unique ids; a grid without overlaps);
* every panel's, variable's and annotation's InfluxQL, with ``$timeFilter``, ``$__interval`` and
  the template variables substituted the way Grafana does (real values from the data, chosen
  through the variables' own cascading ``SHOW TAG VALUES``), runs on InfluxDB 1.6.7 filled from
  the simulator scenarios and returns data -- for the agency and for a tenant's own credentials;
* every threshold drawn for a quantity is exactly the rule files' limits;
* tenant isolation holds in InfluxDB itself: a tenant's credentials read its database and get an
  authorisation error on any other;
* sync is idempotent (plan, apply, plan again: nothing), through an in-memory Grafana and, once,
  through grafana-client against a stub HTTP server backed by the same fake.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from alerting.domain.dose import DOSE_LIMITS, DoseMonitor
from alerting.domain.sterilizer import CycleRecord, SterilizerMonitor
from alerting.engine import cycle_line
from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from alerting.nodata import NODATA
from alerting.rules import load_rules
from alerting.store import alert_event_line
from grafana import build as grafana_build
from grafana.common import AGENCY_DS, KIND_LABELS, ONLINE_WINDOW, TENANT_DS
from grafana.influx_admin import InfluxAuthError, InfluxV1
from grafana.kinds import (
    INDOOR_AIR,
    KIND_DASHBOARDS,
    STERILIZATION_FILE,
    charted_quantities,
    saturation_thresholds,
)
from grafana.model import SCHEMA_VERSION, GridPos
from grafana.site_info import site_info_lines
from grafana.sync import SyncSettings, apply, observe_grafana, observe_influx, plan, sync
from grafana.tenants import TenantSpec, Viewer, derive_password, influx_user, tenant_specs
from grafana.thresholds import DOSE_PERIODS_DRAWN, limit_thresholds
from protocols.catalog import default_catalog
from protocols.directory import DeviceInfo
from protocols.profiles import load_profiles
from protocols.reading import ReadingValidator, Rejection
from protocols.steam import saturation_pressure_mpa
from simulators.air_monitor.signal import QUANTITIES as AIR_QUANTITIES
from simulators.faults import Malformed, generate, iso
from simulators.scenario import Scenario, load_scenario
from tests.conftest import InfluxServer

ROOT = Path(__file__).resolve().parents[1]
PANEL_TYPES = {"stat", "timeseries", "table", "bargauge", "geomap", "state-timeline", "row"}
TRANSFORMS = {"organize", "joinByField", "sortBy"}
# Panel options per panel type in Grafana 11.6 (public/app/plugins/panel/*/panelcfg.cue and the
# common option groups they include): a key outside these is a typo Grafana would ignore.
_SINGLE_STAT = {"reduceOptions", "text", "orientation", "showPercentChange", "wideLayout"}
PANEL_OPTIONS = {
    "stat": _SINGLE_STAT
    | {"graphMode", "colorMode", "justifyMode", "textMode", "percentChangeColorMode"},
    "bargauge": _SINGLE_STAT
    | {"legend", "displayMode", "valueMode", "namePlacement", "showUnfilled", "textMode"}
    | {"sizing", "minVizWidth", "minVizHeight", "maxVizHeight"},
    "timeseries": {"legend", "tooltip", "timezone", "orientation"},
    "table": {"frameIndex", "showHeader", "showTypeIcons", "sortBy", "footer", "cellHeight"},
    "state-timeline": {"legend", "tooltip", "timezone", "showValue", "rowHeight", "mergeValues"}
    | {"alignValue", "perPage"},
    "geomap": {"view", "controls", "basemap", "layers", "tooltip"},
}
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# The air-monitor simulator models six of the iaq8 profile's quantities; the others get plausible
# values here so that their charts are exercised too (docs/grafana.md says so).
AIR_EXTRAS = {
    "tvoc_mg_m3": 0.21,
    "co_mg_m3": 0.6,
    "nh3_mg_m3": 0.04,
    "h2s_mg_m3": 0.01,
    "air_speed_m_s": 0.12,
}
OFFLINE_DEVICE = "qy-tap-probe-024"  # silent for the last 30 minutes, with a no-data alert


# ------------------------------------------------------------------------------------------
# Test data: three scenarios, time-shifted to end now, plus alerts, cycles and site_info


@dataclass
class Filled:
    db: str
    prefix: str  # tenant databases: prefix + tenant id
    t0: datetime  # the data ends here
    data_start: datetime
    devices: dict[str, DeviceInfo]
    last_seen: dict[str, datetime]
    sites: list[Any]
    open_alerts: list[Alert]  # open at t0 (firing or acknowledged)
    alert_devices: dict[str, str]  # dashboard uid → a device with alerts
    cycles: list[CycleRecord] = field(default_factory=list)


def _window(scenario: Scenario, offset: timedelta, length: timedelta) -> tuple[datetime, datetime]:
    assert scenario.start is not None
    start = scenario.start + offset
    return start, start + length


def _write(influx: InfluxServer, db: str, lines: list[str]) -> None:
    token = base64.b64encode(f"{influx.creds.username}:{influx.creds.password}".encode()).decode()
    for i in range(0, len(lines), 5000):
        request = urllib.request.Request(
            f"{influx.url}/write?db={db}&precision=ms",
            data="\n".join(lines[i : i + 5000]).encode(),
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 204


def _readings(
    scenario: Scenario,
    start: datetime,
    end: datetime,
    shift: timedelta,
    filled: Filled,
    extra: dict[str, float] | None = None,
) -> tuple[list[str], dict[str, list[tuple[float, dict[str, Any]]]]]:
    """Validated readings as lines (timestamps shifted), and the raw ones per device."""
    validator = ReadingValidator(default_catalog())
    sites = {s.id: s for s in scenario.sites}
    infos = {
        d.id: DeviceInfo(d.id, sites[d.site].tenant, d.site, d.kind, sites[d.site].region)
        for d in scenario.devices
    }
    filled.devices.update(infos)
    filled.sites += list(scenario.sites)
    now_ms = int(filled.t0.timestamp() * 1000)
    lines: list[str] = []
    raw: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for rec in generate(scenario, start, end):
        if rec.values is None or isinstance(rec.values, Malformed):
            continue
        stamp = rec.ts + shift
        if rec.device == OFFLINE_DEVICE and stamp > filled.t0 - timedelta(minutes=30):
            continue
        values = dict(rec.values)
        if extra and infos[rec.device].kind == "air_monitor":
            values |= extra
        raw[rec.device].append((rec.ts.timestamp(), values))
        try:
            reading = validator.validate(
                infos[rec.device], {"ts": iso(stamp.timestamp()), "fields": values}, now_ms
            )
        except Rejection:
            continue
        lines.append(reading.to_line())
        filled.last_seen[rec.device] = max(filled.last_seen.get(rec.device, stamp), stamp)
    return lines, raw


def _alert(filled: Filled, device: str, rule: str, severity: Severity, quantity: str) -> Alert:
    info = filled.devices[device]
    return Alert(
        id=uuid.uuid4().hex,
        key=AlertKey(device, rule),
        severity=severity,
        state=AlertState.PENDING,
        tenant=info.tenant,
        site=info.site,
        region=info.region,
        kind=info.kind,
        quantity=quantity,
        message=f"{quantity} at {device} breaks {rule}",
        value=1.0,
    )


def _history(alert: Alert, steps: list[tuple[datetime, AlertState]]) -> list[str]:
    lines, previous = [], None
    for at, state in steps:
        t = Transition(alert.id, alert.key, at, previous, state, alert.severity, value=1.0)
        lines.append(alert_event_line(alert, t))
        previous = state
    alert.state = previous  # type: ignore[assignment]
    return lines


def _alert_lines(filled: Filled) -> list[str]:
    """For one device per dashboard: an acknowledged alert, a resolved one and a fresh firing
    one; plus the no-data alert of the silent probe."""
    t0 = filled.t0
    picks = {
        "weijian-drinking-water": (
            "qy-n-probe-1",
            "dw.free_cl.outlet.low",
            Severity.CRITICAL,
            "free_chlorine_mg_l",
        ),
        "weijian-pools": ("aoti-pool-kids", "pool.ph.high", Severity.WARNING, "ph"),
        "weijian-sterilizers": (
            "rj-ster-3",
            "ster.hold.temperature.low",
            Severity.CRITICAL,
            "temperature_c",
        ),
        "weijian-radiation": (
            "rj-dsa-1-mon",
            "rad.h10.fluoroscopy.high",
            Severity.EMERGENCY,
            "dose_rate_usv_h",
        ),
        "weijian-indoor-air": ("am-shpd-1518", "air.hcho.high", Severity.CRITICAL, "hcho_mg_m3"),
    }
    lines: list[str] = []
    for uid, (device, rule, severity, quantity) in picks.items():
        filled.alert_devices[uid] = device
        acked = _alert(filled, device, rule, severity, quantity)
        lines += _history(
            acked,
            [
                (t0 - timedelta(minutes=50), AlertState.PENDING),
                (t0 - timedelta(minutes=45), AlertState.FIRING),
                (t0 - timedelta(minutes=30), AlertState.ACKNOWLEDGED),
            ],
        )
        closed = _alert(filled, device, rule + ".other", severity, quantity)
        lines += _history(
            closed,
            [
                (t0 - timedelta(minutes=40), AlertState.FIRING),
                (t0 - timedelta(minutes=20), AlertState.RESOLVED),
            ],
        )
        fresh = _alert(filled, device, rule + ".fresh", Severity.WARNING, quantity)
        lines += _history(fresh, [(t0 - timedelta(seconds=5), AlertState.FIRING)])
        filled.open_alerts += [acked, fresh]
    silent = _alert(filled, OFFLINE_DEVICE, NODATA, Severity.WARNING, "")
    lines += _history(silent, [(t0 - timedelta(minutes=10), AlertState.FIRING)])
    filled.open_alerts.append(silent)
    return lines


def _cycle_lines(
    filled: Filled, raw: dict[str, list[tuple[float, dict[str, Any]]]], shift: timedelta
) -> list[str]:
    """The cycle monitor over the simulated sterilizers, written as ``sterilizer_cycle`` by the
    alert engine's own ``cycle_line`` (so a change of its schema reaches these tests)."""
    lines = []
    for device, samples in sorted(raw.items()):
        info = filled.devices[device]
        if info.kind != "sterilizer":
            continue
        monitor = SterilizerMonitor(device)
        for ts, values in samples:
            monitor.update(ts, values)
        monitor.flush()
        for r in monitor.records:
            filled.cycles.append(r)
            lines.append(
                cycle_line(replace(r, end=r.end + shift), info.tenant, info.site, info.region)
            )
    return lines


_SYNCED: set[str] = set()  # tenants whose InfluxDB users the tests created (dropped at the end)


@pytest.fixture(scope="module")
def filled(influx: InfluxServer) -> Iterator[Filled]:
    name = f"gtest_{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC).replace(microsecond=0)
    f = Filled(name, f"{name}_t_", t0, t0 - timedelta(hours=8), {}, {}, [], [], {})
    lines: list[str] = []
    by_tenant: dict[str, list[str]] = defaultdict(list)

    water = load_scenario("water")
    start, end = _window(water, timedelta(hours=8), timedelta(hours=6))
    got, _ = _readings(water, start, end, t0 - end, f)
    lines += got
    hospital = load_scenario("hospital")
    start, end = _window(hospital, timedelta(days=1, hours=6), timedelta(hours=8))
    got, raw = _readings(hospital, start, end, t0 - end, f)
    lines += got
    lines += _cycle_lines(f, raw, t0 - end)
    demo = load_scenario("demo")
    charted = set(charted_quantities(INDOOR_AIR))
    assert set(AIR_EXTRAS) == charted - set(AIR_QUANTITIES), "update AIR_EXTRAS"
    got, _ = _readings(demo, t0 - timedelta(hours=3), t0, timedelta(0), f, AIR_EXTRAS)
    lines += got
    lines += _alert_lines(f)
    lines += site_info_lines(f.sites, int(t0.timestamp() * 1000))
    for line in lines:  # the tenant copies: readings, alert events and cycles (docs/grafana.md)
        match = re.search(r",tenant=([^, ]+)", line)
        if match and not line.startswith("site_info"):
            by_tenant[match.group(1)].append(line)
    influx.query(f'CREATE DATABASE "{name}"')
    _write(influx, name, lines)
    for tenant, tenant_lines in by_tenant.items():
        influx.query(f'CREATE DATABASE "{f.prefix}{tenant}"')
        _write(influx, f.prefix + tenant, tenant_lines)
    yield f
    for tenant in by_tenant:
        influx.query(f'DROP DATABASE "{f.prefix}{tenant}"')
    for tenant in _SYNCED:
        influx.query(f'DROP USER "{influx_user(tenant)}"')
    influx.query(f'DROP DATABASE "{name}"')


# ------------------------------------------------------------------------------------------
# Grafana's substitutions


_SHANGHAI = ZoneInfo("Asia/Shanghai")


def _regex_escape(value: str) -> str:
    """@grafana/data ``escapeRegex``, which the InfluxDB data source applies to each value of a
    multi-value / include-All variable: a backslash before each of
    ``\\ ^ $ * + ? . ( ) | [ ] { } /`` (not before ``-``)."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def _interpolate(values: list[str]) -> str:
    """The InfluxDB data source's ``interpolateQueryExpr`` for our variables (multi, include All,
    custom All value ``.*``): the All value verbatim (custom All values skip the formatter), one
    value escaped (left as is if it parses as a number), several as ``(a|b)``."""
    if values == ["$__all"]:
        return ".*"
    if len(values) == 1:
        (value,) = values
        return value if re.match(r"^\s*[-+]?(\d|\.\d)", value) else _regex_escape(value)
    return "(" + "|".join(_regex_escape(v) for v in values) + ")"


def _period_start(period: str | None, f: Filled) -> datetime:
    """The start of a panel's time range. Calendar periods use China time, but never start after
    the test data does, so results do not depend on the hour the tests run at."""
    t0 = f.t0
    if period is None:
        return t0 - timedelta(hours=24)
    m = re.fullmatch(r"(\d+)([mhd])", period)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return t0 - timedelta(**{unit: int(m.group(1))})
    local = t0.astimezone(_SHANGHAI)
    day = local.replace(hour=0, minute=0, second=0)
    starts = {
        "now/d": day,
        "now/w": day - timedelta(days=local.weekday()),
        "now/M": day.replace(day=1),
    }
    return min(starts[period].astimezone(UTC), f.data_start)


def render(
    query: str, variables: dict[str, list[str]], f: Filled, period: str | None = None
) -> str:
    """The query as Grafana would send it: ``$timeFilter`` as absolute epoch-ms bounds,
    ``$__interval`` for a ~1000 px wide panel, multi-value variables as ``(a|b)``."""
    start = int(_period_start(period, f).timestamp() * 1000)
    end = int((f.t0 + timedelta(seconds=30)).timestamp() * 1000)
    out = query.replace("$timeFilter", f"time >= {start}ms and time <= {end}ms")
    out = out.replace("$__interval", "1m")
    for name, values in variables.items():
        out = out.replace(f"${name}", _interpolate(values))
    assert not re.search(r"\$[A-Za-z_]", out), f"unsubstituted: {out[:300]}"
    return out


def _series(influx: InfluxServer, q: str, db: str) -> list[dict[str, Any]]:
    result = influx.query(q, db)["results"][0]
    assert "error" not in result, f"{result['error']}\n{q[:2000]}"
    return result.get("series", [])


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(zip(s["columns"], v, strict=True)) | s.get("tags", {})
        for s in series
        for v in s["values"]
    ]


def _has_values(series: list[dict[str, Any]]) -> bool:
    """Some row has a non-null value besides time (a count of 0 is data too)."""
    return any(any(x is not None for x in row[1:]) for s in series for row in s.get("values", []))


def _variable_values(
    influx: InfluxServer, dashboard: dict[str, Any], f: Filled, db: str, device: str
) -> dict[str, list[str]]:
    """Choose each variable like a user drilling down to ``device`` (and, where the dashboard
    covers several kinds, one device of each), checking every choice is one the variable's own
    query offers given the choices before it."""
    by_kind: dict[str, str] = {f.devices[device].kind: device}
    kinds = [k for k in dashboard["tags"] if k in KIND_LABELS]
    for kind in kinds:
        if kind not in by_kind:
            same_site = [
                d
                for d, i in f.devices.items()
                if i.kind == kind and i.site == f.devices[device].site
            ]
            anywhere = [
                d for d, i in sorted(f.devices.items()) if i.kind == kind and d in f.last_seen
            ]
            by_kind[kind] = (same_site or anywhere)[0]
    chosen = [f.devices[d] for d in by_kind.values()]
    wanted = {
        "region": sorted({i.region for i in chosen}),
        "tenant": sorted({i.tenant for i in chosen}),
        "site": sorted({i.site for i in chosen}),
        "device": sorted({i.device for i in chosen}),
    }
    values: dict[str, list[str]] = {}
    for var in dashboard["templating"]["list"]:
        offered = {
            row["value"]
            for row in _rows(_series(influx, render(var["query"]["query"], values, f), db))
        }
        assert offered, f"{dashboard['uid']}: variable {var['name']} offers nothing"
        pick = wanted[var["name"]]
        assert set(pick) <= offered, f"{var['name']}: {pick} not among {sorted(offered)[:20]}"
        values[var["name"]] = pick
    return values


def _all(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    return {v["name"]: ["$__all"] for v in dashboard["templating"]["list"]}


def _named_columns(panel: dict[str, Any]) -> set[str]:
    """Columns a panel's options name, which its (table-format) query must therefore return: the
    field a stat or bar gauge reduces (``/^name$/``) and a geomap layer's coordinates and colour."""
    names = set()
    fields = panel["options"].get("reduceOptions", {}).get("fields", "")
    if fields:
        m = re.fullmatch(r"/\^(\w+)\$/", fields)
        assert m, f"{panel['title']}: unexpected field matcher {fields!r}"
        names.add(m.group(1))
    for layer in panel["options"].get("layers", []):
        names |= {layer["location"]["latitude"], layer["location"]["longitude"]}
        names.add(layer["config"]["style"]["color"]["field"])
    return names


def _check_panels(
    influx: InfluxServer,
    dashboard: dict[str, Any],
    variables: dict[str, list[str]],
    f: Filled,
    db: str,
) -> int:
    """Run every target of every panel; each must return data, and together a panel's targets
    must return the columns its options name. Returns the number of queries run."""
    empty, missing, ran = [], [], 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        columns: set[str] = set()
        for target in panel["targets"]:
            q = render(target["query"], variables, f, panel.get("timeFrom"))
            series = _series(influx, q, db)
            ran += 1
            if not _has_values(series):
                empty.append(f"{panel['title']} [{target['refId']}]")
            for s in series:
                columns |= set(s["columns"]) | set(s.get("tags", {}))
        if not empty and not _named_columns(panel) <= columns:
            missing.append(f"{panel['title']}: {sorted(_named_columns(panel) - columns)}")
    assert not empty, f"{dashboard['uid']} {variables}: no data for {empty}"
    assert not missing, (
        f"{dashboard['uid']}: columns named by panel options not returned: {missing}"
    )
    return ran


def _queries(dashboard: dict[str, Any]) -> int:
    """Every InfluxQL query a dashboard holds: panel targets, variables, annotations."""
    targets = sum(len(p.get("targets", [])) for p in dashboard["panels"])
    annotations = sum(1 for a in dashboard["annotations"]["list"] if "target" in a)
    return targets + len(dashboard["templating"]["list"]) + annotations


def _check_annotations(
    influx: InfluxServer,
    dashboard: dict[str, Any],
    variables: dict[str, list[str]],
    f: Filled,
    db: str,
) -> int:
    ran = 0
    for anno in dashboard["annotations"]["list"]:
        if "target" not in anno:
            continue
        rows = _rows(_series(influx, render(anno["target"]["query"], variables, f), db))
        ran += 1
        assert rows, f"{dashboard['uid']}: annotation {anno['name']} found no alert transitions"
        columns = [anno["target"]["textColumn"], *anno["target"]["tagsColumn"].split(",")]
        assert all(c in rows[0] for c in columns), (columns, sorted(rows[0]))
    return ran


def _check_dashboard(
    influx: InfluxServer, doc: dict[str, Any], f: Filled, db: str, device: str
) -> None:
    """Every query of the dashboard -- panels, variables, annotations -- with every variable at
    "All", then drilled down to ``device``; each returns data. Fails if any query was skipped."""
    ran = _check_panels(influx, doc, _all(doc), f, db)
    for var in doc["templating"]["list"]:  # each variable's options with the others at All
        offered = _rows(_series(influx, render(var["query"]["query"], _all(doc), f), db))
        assert offered, f"{doc['uid']}: variable {var['name']} offers nothing"
    ran += len(doc["templating"]["list"])
    ran += _check_annotations(influx, doc, _all(doc), f, db)
    assert ran == _queries(doc), (ran, _queries(doc))
    variables = _variable_values(influx, doc, f, db, device)
    _check_panels(influx, doc, variables, f, db)
    _check_annotations(influx, doc, variables, f, db)


# ------------------------------------------------------------------------------------------
# Committed JSON and structure


def test_committed_dashboards_equal_the_builders_output() -> None:
    assert grafana_build.differences() == [], "run: python -m grafana.build"
    assert grafana_build.render() == grafana_build.render(), "builders must be deterministic"
    text = (ROOT / "grafana" / "dashboards" / "wall.json").read_text(encoding="utf-8")
    assert not re.search(r"20\d\d-\d\d-\d\dT", text), "no timestamps in generated dashboards"


def _all_dashboards() -> list[tuple[str, dict[str, Any], str]]:
    out = [(name, doc, AGENCY_DS.uid) for name, doc in grafana_build.agency_dashboards().items()]
    out += [(f"tenant:{d['uid']}", d, TENANT_DS.uid) for d in grafana_build.tenant_dashboards()]
    return out


@pytest.mark.parametrize(
    ("name", "doc", "ds_uid"), _all_dashboards(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_dashboard_is_a_valid_grafana_11_6_dashboard(
    name: str, doc: dict[str, Any], ds_uid: str
) -> None:
    for key in (
        "uid",
        "title",
        "schemaVersion",
        "panels",
        "templating",
        "annotations",
        "time",
        "refresh",
        "tags",
    ):
        assert key in doc, f"{name}: no {key}"
    assert doc["schemaVersion"] == SCHEMA_VERSION == 41
    assert _UID.match(doc["uid"]), doc["uid"]
    assert doc["timezone"] == "browser"
    assert doc["editable"] is False
    assert "weijian" in doc["tags"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    grids = []
    for panel in doc["panels"]:
        where = f"{name}: panel {panel['id']} {panel['title']!r}"
        assert panel["type"] in PANEL_TYPES, where
        g = panel["gridPos"]
        assert set(g) == {"x", "y", "w", "h"}, where
        assert min(g["w"], g["h"], g["x"] + 1) > 0, where
        assert g["x"] + g["w"] <= 24, where
        pos = GridPos(g["x"], g["y"], g["w"], g["h"])
        assert not [p for p in grids if p.overlaps(pos)], f"{where} overlaps another panel"
        grids.append(pos)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "influxdb", "uid": ds_uid}, where
        assert set(panel["options"]) <= PANEL_OPTIONS[panel["type"]], where
        assert panel["targets"], f"{where}: no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in panel["targets"]:
            assert t["rawQuery"] is True, where
            assert t["query"].startswith(("SELECT", "SHOW")), where
            assert t["resultFormat"] in ("time_series", "table"), where
            assert t["datasource"]["uid"] == ds_uid, where
        assert set(panel["fieldConfig"]) == {"defaults", "overrides"}, where
        for thresholds in _thresholds_in(panel):
            steps = thresholds["steps"]
            assert thresholds["mode"] == "absolute", where
            assert steps[0]["value"] is None, where
            values = [s["value"] for s in steps[1:]]
            assert values == sorted(set(values)), where
        for transformation in panel["transformations"]:
            assert transformation["id"] in TRANSFORMS, where
        if panel.get("timeFrom"):
            assert re.fullmatch(r"\d+[mhd]|now/[dwM]", panel["timeFrom"]), where
    for var in doc["templating"]["list"]:
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == ds_uid
        # The InfluxDB data source's variable query object (VariableQueryEditor's refId).
        assert var["query"]["refId"] == "InfluxVariableQueryEditor-VariableQuery"
        assert var["query"]["query"].startswith("SHOW TAG VALUES")
        assert var["definition"] == var["query"]["query"]
        assert var["name"] in ("region", "tenant", "site", "device")
        assert var["refresh"] in (1, 2)  # on load / on time range change
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["allValue"] == ".*"
        assert var["current"]["value"] == ["$__all"]
    builtin, *ours = doc["annotations"]["list"]
    assert builtin.get("builtIn") == 1
    for anno in ours:
        assert anno["datasource"]["uid"] == ds_uid
        # What the InfluxDB annotation editor saves (raw InfluxQL, text and tags columns).
        target = anno["target"]
        assert target["query"].startswith("SELECT")
        assert "$timeFilter" in target["query"]
        assert target["rawQuery"] is True
        assert target["fromAnnotations"] is True
        assert target["textEditor"] is True
        assert target["textColumn"]
        assert target["tagsColumn"]
        assert anno["enable"] is True
    if name.startswith("tenant:"):
        assert {v["name"] for v in doc["templating"]["list"]} == {"site", "device"}
        text = json.dumps(doc)
        assert "$tenant" not in text, "no cross-tenant variables"
        assert "$region" not in text, "no cross-tenant variables"


def _thresholds_in(panel: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    if "thresholds" in panel["fieldConfig"]["defaults"]:
        found.append(panel["fieldConfig"]["defaults"]["thresholds"])
    for override in panel["fieldConfig"]["overrides"]:
        found += [p["value"] for p in override["properties"] if p["id"] == "thresholds"]
    return found


def test_wall_is_built_for_a_large_screen() -> None:
    wall = grafana_build.agency_dashboards()["wall.json"]
    assert wall["refresh"] == "30s"
    assert max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in wall["panels"]) <= 27, "one screen"
    stats = [p for p in wall["panels"] if p["type"] == "stat"]
    assert len(stats) == 7
    assert all(p["options"]["text"]["valueSize"] >= 60 for p in stats)
    assert {p["type"] for p in wall["panels"]} >= {"geomap", "table", "bargauge"}


def test_every_kind_has_a_label_and_every_profile_quantity_a_chart() -> None:
    assert set(KIND_LABELS) == set(default_catalog().kinds)
    covered = {k for spec in KIND_DASHBOARDS for k in spec.kinds}
    assert covered == set(default_catalog().kinds), "every kind has its dashboard"
    docs = grafana_build.agency_dashboards()
    for spec in KIND_DASHBOARDS:
        queries = json.dumps(docs[f"{spec.file}.json"])
        for quantity in charted_quantities(spec):
            assert f'\\"{quantity}\\"' in queries, f"{spec.uid}: no chart of {quantity}"


def test_online_window_is_at_least_three_reporting_intervals_of_every_profile() -> None:
    minutes = int(ONLINE_WINDOW.removesuffix("m"))
    for profile in load_profiles().values():
        assert minutes * 60 >= 3 * profile.interval_s, profile.id


# ------------------------------------------------------------------------------------------
# Thresholds: one source of truth


_QUANTITY_QUERY = re.compile(
    r'^SELECT (?:mean|max|last)\("(\w+)"\) AS "\w+" FROM ((?:"\w+"(?:, )?)+) WHERE'
)


@functools.cache
def _rules() -> Any:
    return load_rules()


def _rule_values(kinds: set[str], quantity: str) -> list[float]:
    """Straight from the YAML, through the rule loader the detector uses."""
    values: set[float] = set()
    for rule in _rules():
        if rule.enabled and rule.quantity == quantity and rule.kinds & kinds:
            values.add(rule.value)
            values |= {v for v, _ in rule.levels}
    return sorted(values)


def _dose_values() -> list[float]:
    """Straight from the dose monitor: the limits it alerts on, each period one at the levels
    ``DoseMonitor.level`` computes for the drawn period lengths."""
    values = set()
    for limit in DOSE_LIMITS:
        for months in DOSE_PERIODS_DRAWN:
            values.add(DoseMonitor("d", period_months=months).level(limit))
    return sorted(values)


def _expected_limits(kinds: set[str], quantity: str) -> list[float]:
    if quantity == "dose_msv" and "dosimeter" in kinds:
        return _dose_values()
    return _rule_values(kinds, quantity)


def test_thresholds_drawn_are_the_rule_files_limits() -> None:
    checked = 0
    for name, doc, _ in _all_dashboards():
        for panel in doc["panels"]:
            if panel["type"] == "row":
                continue
            if panel["type"] == "timeseries":
                for target in panel["targets"]:
                    m = _QUANTITY_QUERY.match(target["query"])
                    if m and m.group(1) in default_catalog().quantities:
                        kinds = set(re.findall(r'"(\w+)"', m.group(2)))
                        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                        drawn = [s["value"] for s in steps[1:]]
                        assert drawn == _expected_limits(kinds, m.group(1)), (
                            f"{name}: {panel['title']}"
                        )
                        if drawn:
                            style = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]
                            assert style["mode"] != "off", f"{name}: {panel['title']} hides them"
                        checked += 1
            for override in panel["fieldConfig"]["overrides"]:
                props = {p["id"]: p["value"] for p in override["properties"]}
                quantity = override["matcher"]["options"]
                if "thresholds" in props and quantity in default_catalog().quantities:
                    kinds = set(
                        re.findall(r'FROM ((?:"\w+"(?:, )?)+)', panel["targets"][0]["query"])[0]
                        .replace('"', "")
                        .split(", ")
                    )
                    drawn = [s["value"] for s in props["thresholds"]["steps"][1:]]
                    assert drawn == _expected_limits(kinds, quantity), (
                        f"{name}: {panel['title']} {quantity}"
                    )
                    checked += 1
    assert checked >= 40, checked
    water = grafana_build.agency_dashboards()["drinking-water.json"]
    (chlorine,) = [
        p
        for p in water["panels"]
        if p.get("targets")
        and p["targets"][0]["query"].startswith('SELECT mean("free_chlorine_mg_l")')
    ]
    assert [s["value"] for s in chlorine["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None,
        0.05,
        0.3,
        2.0,
    ]


def test_personal_dose_is_drawn_against_the_dose_monitors_limits() -> None:
    """Cumulative dose has no threshold rule: its one source of truth is the dose monitor's
    table (alerting/domain/dose.py), drawn for 1- and 3-month monitoring periods."""
    assert _rule_values({"dosimeter"}, "dose_msv") == [], (
        "a threshold rule on dose_msv now exists: draw it together with DOSE_LIMITS"
    )
    doc = grafana_build.agency_dashboards()["radiation.json"]
    charts = [
        p
        for p in doc["panels"]
        if p["type"] == "timeseries" and '"dose_msv"' in p["targets"][0]["query"]
    ]
    assert len(charts) == 1
    steps = charts[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, *_dose_values()]
    # 5 mSv/a pro-rated: 0.42 mSv a month, 1.25 a quarter; then 20, 50 and 100 mSv.
    assert [round(s["value"], 2) for s in steps[1:]] == [0.42, 1.25, 20.0, 50.0, 100.0]
    # Between the two period levels only monthly-period sites are over: yellow; past 1.25 every
    # site is (warning), past 20 mSv critical, past 50 emergency.
    assert [s["color"] for s in steps] == [
        "green",
        "yellow",
        "orange",
        "red",
        "dark-red",
        "dark-red",
    ]
    assert "dose:investigation_level" in charts[0]["description"]


def test_threshold_colours_follow_the_sites_the_rules_cover() -> None:
    rules = load_rules()

    def colours(kinds: list[str], quantity: str) -> list[tuple[float | None, str]]:
        return [(s.value, s.color) for s in limit_thresholds(rules, kinds, quantity).steps]

    # Below 0.05 every site breaks GB 5749; between 0.05 and 0.3 only plant outlets do.
    assert colours(["water_probe", "water_station"], "free_chlorine_mg_l") == [
        (None, "red"),
        (0.05, "yellow"),
        (0.3, "green"),
        (2.0, "red"),
    ]
    # A hotel room's CO₂ limit is 1000 ppm, other public places' 1500.
    assert colours(["air_monitor"], "co2_ppm") == [
        (None, "green"),
        (1000.0, "yellow"),
        (1500.0, "red"),
    ]
    # 2.5 µSv/h for a typical (undeclared) room; the emergency level at 25 drawn too.
    assert colours(["dose_rate_monitor"], "dose_rate_usv_h")[:3] == [
        (None, "green"),
        (2.5, "red"),
        (25.0, "dark-red"),
    ]


def test_saturation_band_comes_from_the_cycle_checks() -> None:
    checks = yaml.safe_load(STERILIZATION_FILE.read_text(encoding="utf-8"))["checks"]
    tol = checks["saturation_tolerance_kpa"]
    assert saturation_thresholds().values == (-tol, tol)


# ------------------------------------------------------------------------------------------
# Every query against the filled InfluxDB


AGENCY_DOCS = sorted(grafana_build.agency_dashboards().items())


@pytest.mark.parametrize(("file", "doc"), AGENCY_DOCS, ids=[n for n, _ in AGENCY_DOCS])
def test_every_panel_returns_data_for_all_and_for_a_drill_down(
    influx: InfluxServer, filled: Filled, file: str, doc: dict[str, Any]
) -> None:
    # The wall drills down to the district of the silent probe (every wall number is there).
    device = filled.alert_devices.get(doc["uid"], OFFLINE_DEVICE)
    _check_dashboard(influx, doc, filled, filled.db, device)


def test_wall_numbers_match_the_data(influx: InfluxServer, filled: Filled) -> None:
    wall = grafana_build.agency_dashboards()["wall.json"]
    panels = {p["title"]: p for p in wall["panels"]}
    v = _all(wall)

    def total(title: str) -> float:
        """What the stat shows: its reducer over the field its options name."""
        p = panels[title]
        rows = _grafana_table(
            _series(
                influx, render(p["targets"][0]["query"], v, filled, p.get("timeFrom")), filled.db
            )
        )
        (calc,), fields = (
            p["options"]["reduceOptions"]["calcs"],
            p["options"]["reduceOptions"]["fields"],
        )
        column = fields.strip("/^$") if fields else next(k for k in rows[0] if k != "time")
        values = [row[column] for row in rows if row.get(column) is not None]
        return {
            "sum": sum,
            "distinctCount": lambda xs: len(set(xs)),
            "lastNotNull": lambda xs: xs[-1],
        }[calc](values)

    online = {
        d for d, seen in filled.last_seen.items() if seen >= filled.t0 - timedelta(minutes=15)
    }
    assert OFFLINE_DEVICE not in online
    assert total("在线设备 Devices online") == len(online)
    assert total("离线设备 Devices offline") == 1
    assert total("监测机构 Institutions") == len(
        {filled.devices[d].tenant for d in filled.last_seen}
    )
    assert total("监测场所 Sites") == len({filled.devices[d].site for d in filled.last_seen})
    assert total("今日告警 Alerts today") >= 6
    open_rows = _rows(
        _series(
            influx,
            render(panels["未解除告警 Open alerts"]["targets"][0]["query"], v, filled),
            filled.db,
        )
    )
    assert {r["alert_id"] for r in open_rows} == {a.id for a in filled.open_alerts}


def _grafana_table(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grafana 11's InfluxQL table format: one frame, tags as columns
    (pkg/tsdb/influxdb/influxql/buffered/response_parser.go)."""
    return [
        dict(zip(s["columns"], v, strict=True)) | s.get("tags", {})
        for s in series
        for v in s["values"]
    ]


def test_map_joins_site_coordinates_with_the_worst_open_alert(
    influx: InfluxServer, filled: Filled
) -> None:
    wall = grafana_build.agency_dashboards()["wall.json"]
    (geomap,) = [p for p in wall["panels"] if p["type"] == "geomap"]
    frames = {
        t["refId"]: _grafana_table(
            _series(influx, render(t["query"], _all(wall), filled), filled.db)
        )
        for t in geomap["targets"]
    }
    join = geomap["transformations"][0]["options"]["byField"]
    worst = {row[join]: row["worst"] for row in frames["B"]}
    joined = {row[join]: row | {"worst": worst.get(row[join])} for row in frames["A"]}  # outer join
    layer = geomap["options"]["layers"][0]
    lat, lon = layer["location"]["latitude"], layer["location"]["longitude"]
    assert {s.id for s in filled.sites} == set(joined)
    for site in filled.sites:
        assert joined[site.id][lat] == pytest.approx(site.lat)
        assert joined[site.id][lon] == pytest.approx(site.lon)
    expected: dict[str, int] = {}
    for alert in filled.open_alerts:
        expected[alert.site] = max(expected.get(alert.site, 0), int(alert.severity))
    assert worst == expected
    assert layer["config"]["style"]["color"]["field"] == "worst"


def test_saturation_line_is_iapws_if97(influx: InfluxServer, filled: Filled) -> None:
    doc = grafana_build.agency_dashboards()["sterilizers.json"]
    (panel,) = [p for p in doc["panels"] if "P_sat(T)" in p["title"] and "Hold" not in p["title"]]
    inner = re.search(
        r'FROM \((SELECT mean\("temperature_c"\).*?fill\(none\))\)', panel["targets"][0]["query"]
    ).group(1)
    q = render(panel["targets"][0]["query"], _all(doc), filled)
    temps = _rows(_series(influx, render(inner, _all(doc), filled), filled.db))
    psat = _rows(_series(influx, q, filled.db))
    by_key = {(r["device"], r["time"]): r["t"] for r in temps}
    assert len(psat) > 100
    for row in psat[:: max(1, len(psat) // 50)]:
        t = by_key[(row["device"], row["time"])]
        assert row["p_sat"] == pytest.approx(saturation_pressure_mpa(t + 273.15) * 1000, rel=1e-9)
    hold = [c for c in filled.cycles if c.max_saturation_excess_kpa is not None]
    assert hold
    assert any(not c.passed for c in filled.cycles), "the hospital faults fail some cycles"


# ------------------------------------------------------------------------------------------
# Tenants: data access, dashboards, sync


class GrafanaError(Exception):
    """What Grafana answers with an HTTP error: the stub server sends ``status`` + ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class FakeGrafana:
    """An in-memory Grafana with the semantics sync relies on (documented API behaviour), and
    its refusals: the creator of an organisation becomes its Admin; a user created with an OrgId
    joins that organisation with the auto-assigned role (Viewer, GF_USERS_AUTO_ASSIGN_ORG_ROLE)
    and no other; passwords are never returned; a taken organisation name, data source uid or
    name, folder uid or login is a conflict; membership changes of a non-member and a home
    dashboard that does not exist are 404s."""

    def __init__(self, me: str = "admin") -> None:
        self.me_login = me
        self.orgs_by_id: dict[int, str] = {1: "Main Org."}
        self.users_by_login: dict[str, dict[str, Any]] = {
            me: {"id": 1, "login": me, "isGrafanaAdmin": True}
        }
        self.members: dict[int, dict[int, str]] = {1: {1: "Admin"}}
        self.datasources: dict[tuple[int, str], dict[str, Any]] = {}
        self.passwords: dict[tuple[int, str], str] = {}
        self.user_passwords: dict[str, str] = {}
        self.folders: dict[tuple[int, str], str] = {}
        self.boards: dict[tuple[int, str], dict[str, Any]] = {}
        self.homes: dict[int, str] = {}
        self.calls: list[str] = []

    def _login(self, user_id: int) -> str:
        return next(u for u, v in self.users_by_login.items() if v["id"] == user_id)

    def _org(self, org_id: int) -> None:
        if org_id not in self.orgs_by_id:
            raise GrafanaError(404, "Organization not found")

    def me(self) -> str:
        return self.me_login

    def orgs(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in sorted(self.orgs_by_id.items())]

    def create_org(self, name: str) -> int:
        self.calls.append(f"create_org {name}")
        if name in self.orgs_by_id.values():
            raise GrafanaError(409, "Organization name taken")
        oid = max(self.orgs_by_id) + 1
        self.orgs_by_id[oid] = name
        self.members[oid] = {self.users_by_login[self.me_login]["id"]: "Admin"}
        return oid

    def rename_org(self, org_id: int, name: str) -> None:
        self.calls.append(f"rename_org {org_id}")
        self._org(org_id)
        if name in self.orgs_by_id.values():
            raise GrafanaError(409, "Organization name taken")
        self.orgs_by_id[org_id] = name

    def org_members(self, org_id: int) -> list[dict[str, Any]]:
        self._org(org_id)
        return [
            {"orgId": org_id, "userId": u, "login": self._login(u), "role": r}
            for u, r in sorted(self.members[org_id].items())
        ]

    def add_org_member(self, org_id: int, login: str, role: str) -> None:
        self.calls.append(f"add_member {org_id} {login} {role}")
        self._org(org_id)
        assert role in ("Viewer", "Editor", "Admin"), role
        if login not in self.users_by_login:
            raise GrafanaError(404, "User not found")
        uid = self.users_by_login[login]["id"]
        if uid in self.members[org_id]:
            raise GrafanaError(409, "User is already member of this organization")
        self.members[org_id][uid] = role

    def set_org_role(self, org_id: int, user_id: int, role: str) -> None:
        self.calls.append(f"set_role {org_id} {user_id} {role}")
        self._org(org_id)
        if user_id not in self.members[org_id]:
            raise GrafanaError(404, "User not found in organization")
        self.members[org_id][user_id] = role

    def remove_org_member(self, org_id: int, user_id: int) -> None:
        self.calls.append(f"remove_member {org_id} {user_id}")
        self._org(org_id)
        if user_id not in self.members[org_id]:
            raise GrafanaError(404, "User not found in organization")
        del self.members[org_id][user_id]

    def find_user(self, login: str) -> dict[str, Any] | None:
        return self.users_by_login.get(login)

    def user_orgs(self, user_id: int) -> list[dict[str, Any]]:
        return [
            {"orgId": o, "name": self.orgs_by_id[o], "role": m[user_id]}
            for o, m in sorted(self.members.items())
            if user_id in m
        ]

    def create_user(self, login: str, email: str, name: str, password: str, org_id: int) -> int:
        self.calls.append(f"create_user {login} {org_id}")
        self._org(org_id)
        if login in self.users_by_login:
            raise GrafanaError(412, "User with same email or login already exists")
        uid = max(u["id"] for u in self.users_by_login.values()) + 1
        self.users_by_login[login] = {"id": uid, "login": login, "isGrafanaAdmin": False}
        self.user_passwords[login] = password
        self.members[org_id][uid] = "Viewer"
        return uid

    def datasource(self, org_id: int, uid: str) -> dict[str, Any] | None:
        return self.datasources.get((org_id, uid))

    def _store_ds(self, org_id: int, body: dict[str, Any]) -> None:
        for key in ("name", "type", "access", "url", "uid", "jsonData"):
            assert key in body, f"data source without {key}"
        stored = {k: v for k, v in body.items() if k != "secureJsonData"}
        stored |= {"id": 7, "orgId": org_id, "secureJsonFields": {"basicAuthPassword": True}}
        self.datasources[(org_id, body["uid"])] = stored
        self.passwords[(org_id, body["uid"])] = body["secureJsonData"]["basicAuthPassword"]

    def create_datasource(self, org_id: int, body: dict[str, Any]) -> None:
        self.calls.append(f"create_datasource {org_id}")
        self._org(org_id)
        if (org_id, body["uid"]) in self.datasources:
            raise GrafanaError(409, "data source with the same uid already exists")
        if any(o == org_id and d["name"] == body["name"] for (o, _), d in self.datasources.items()):
            raise GrafanaError(409, "data source with the same name already exists")
        self._store_ds(org_id, body)

    def update_datasource(self, org_id: int, uid: str, body: dict[str, Any]) -> None:
        self.calls.append(f"update_datasource {org_id}")
        if (org_id, uid) not in self.datasources:
            raise GrafanaError(404, "Data source not found")
        self._store_ds(org_id, body)

    def folder(self, org_id: int, uid: str) -> dict[str, Any] | None:
        title = self.folders.get((org_id, uid))
        return None if title is None else {"uid": uid, "title": title}

    def create_folder(self, org_id: int, uid: str, title: str) -> None:
        self.calls.append(f"create_folder {org_id}")
        self._org(org_id)
        if (org_id, uid) in self.folders:
            raise GrafanaError(409, "a folder with the same uid already exists")
        self.folders[(org_id, uid)] = title

    def dashboards(self, org_id: int, tag: str) -> list[dict[str, Any]]:
        return [
            {"uid": uid, "folderUid": b["folderUid"], "type": "dash-db"}
            for (o, uid), b in sorted(self.boards.items())
            if o == org_id and tag in b["dashboard"].get("tags", [])
        ]

    def dashboard(self, org_id: int, uid: str) -> dict[str, Any] | None:
        b = self.boards.get((org_id, uid))
        return (
            None
            if b is None
            else {"dashboard": b["dashboard"], "meta": {"folderUid": b["folderUid"]}}
        )

    def save_dashboard(self, org_id: int, dashboard: dict[str, Any], folder_uid: str) -> None:
        self.calls.append(f"save_dashboard {org_id} {dashboard['uid']}")
        if (org_id, folder_uid) not in self.folders:
            raise GrafanaError(400, "folder not found")
        old = self.boards.get((org_id, dashboard["uid"]))
        version = old["dashboard"]["version"] + 1 if old else 1
        # What Grafana stores: the JSON as sent, with its own id and version.
        stored = json.loads(json.dumps(dashboard)) | {
            "id": 100 + len(self.boards),
            "version": version,
        }
        self.boards[(org_id, dashboard["uid"])] = {"dashboard": stored, "folderUid": folder_uid}

    def delete_dashboard(self, org_id: int, uid: str) -> None:
        self.calls.append(f"delete_dashboard {org_id} {uid}")
        if (org_id, uid) not in self.boards:
            raise GrafanaError(404, "Dashboard not found")
        del self.boards[(org_id, uid)]
        if self.homes.get(org_id) == uid:
            del self.homes[org_id]

    def org_preferences(self, org_id: int) -> dict[str, Any]:
        self._org(org_id)
        home = self.homes.get(org_id, "")
        return {"theme": "", "homeDashboardId": 0, "homeDashboardUID": home, "timezone": ""}

    def set_home_dashboard(self, org_id: int, uid: str) -> None:
        self.calls.append(f"set_home {org_id} {uid}")
        if (org_id, uid) not in self.boards:
            raise GrafanaError(404, "Dashboard not found")
        self.homes[org_id] = uid

    def org_of(self, tenant: str) -> int:
        return next(i for i, n in self.orgs_by_id.items() if n.endswith(f"[{tenant}]"))


SECRET = "test-sync-secret-0123456789abcdef"


def _admin(influx: InfluxServer) -> InfluxV1:
    return InfluxV1(influx.url, influx.creds.username, influx.creds.password)


def _tenants() -> list[TenantSpec]:
    return [
        TenantSpec(
            "qingyuan-water",
            "杭州清源水务有限公司",
            frozenset({"water_probe", "water_station"}),
            (Viewer("qy-viewer", "qy@example.com", "清源值班"),),
        ),
        TenantSpec(
            "xh-renji",
            "上海徐汇仁济医院",
            frozenset({"sterilizer", "dose_rate_monitor", "dosimeter"}),
            (Viewer("rj-viewer"),),
        ),
        TenantSpec("huating-hotels", "华庭酒店集团", frozenset({"air_monitor"})),
    ]


def _sync_settings(filled: Filled) -> SyncSettings:
    return SyncSettings(SECRET, influx_url="http://influxdb:8086", database_prefix=filled.prefix)


def _run(
    fake: FakeGrafana,
    influx: InfluxServer,
    filled: Filled,
    tenants: list[TenantSpec],
    settings: SyncSettings | None = None,
) -> Any:
    cfg = settings or _sync_settings(filled)
    admin = _admin(influx)
    seen_g = observe_grafana(fake, tenants, cfg)
    seen_i = observe_influx(admin, tenants, cfg)
    the_plan = plan(tenants, seen_g, seen_i, cfg)
    _SYNCED.update(t.id for t in tenants)
    return apply(the_plan, tenants, fake, admin, cfg, seen_g, new_password=lambda: "initial-pw-123")


def test_sync_creates_tenant_orgs_and_a_second_run_changes_nothing(
    influx: InfluxServer, filled: Filled
) -> None:
    fake = FakeGrafana()
    fake.users_by_login["qy-viewer"] = {"id": 50, "login": "qy-viewer", "isGrafanaAdmin": False}
    fake.members[1][50] = "Viewer"  # auto-assigned to the main org (the agency wall!) earlier
    tenants = _tenants()
    first = _run(fake, influx, filled, tenants)
    assert first.plan.conflicts == []
    assert first.plan.manual == []
    assert first.initial_passwords == {"rj-viewer": "initial-pw-123"}
    for spec in tenants:
        org = fake.org_of(spec.id)
        ds = fake.datasources[(org, TENANT_DS.uid)]
        assert ds["jsonData"]["dbName"] == filled.prefix + spec.id
        assert ds["basicAuthUser"] == influx_user(spec.id)
        assert fake.passwords[(org, TENANT_DS.uid)] == derive_password(SECRET, spec.id)
        uids = {uid for (o, uid) in fake.boards if o == org}
        assert uids == {d["uid"] for d in grafana_build.tenant_dashboards(sorted(spec.kinds or ()))}
        for viewer in spec.viewers:
            uid = fake.users_by_login[viewer.login]["id"]
            assert fake.user_orgs(uid) == [
                {"orgId": org, "name": fake.orgs_by_id[org], "role": "Viewer"}
            ]
    assert fake.members[1] == {1: "Admin"}, "no tenant viewer left in the agency organisation"
    for spec in tenants:  # each organisation opens on its own first dashboard, not the wall
        first_board = grafana_build.tenant_dashboards(sorted(spec.kinds or ()))[0]["uid"]
        assert fake.homes[fake.org_of(spec.id)] == first_board
    grants = _admin(influx).grants(influx_user("xh-renji"))
    assert grants == {filled.prefix + "xh-renji": "READ"}

    calls = len(fake.calls)
    second = _run(fake, influx, filled, tenants)
    assert second.plan.empty, second.plan.describe()
    assert len(fake.calls) == calls

    # The tenant loses its dosimeters... no: it loses every radiation device; a rename; a new
    # secret. Each is one precise change.
    changed = [
        TenantSpec("xh-renji", "仁济医院", frozenset({"sterilizer"}), (Viewer("rj-viewer"),)),
    ]
    rotated = SyncSettings("another-secret-0123456789", database_prefix=filled.prefix)
    third = _run(fake, influx, filled, changed, rotated)
    ops = sorted(a.op for a in third.applied)
    assert ops == sorted(
        [
            "grafana.rename_org",
            "grafana.update_datasource",
            "grafana.delete_dashboard",
            "influx.set_password",
        ]
    ), third.plan.describe()
    assert _run(fake, influx, filled, changed, rotated).plan.empty


def test_sync_reports_conflicts_instead_of_demoting_people(
    influx: InfluxServer, filled: Filled
) -> None:
    fake = FakeGrafana()
    fake.users_by_login["boss"] = {"id": 60, "login": "boss", "isGrafanaAdmin": False}
    fake.members[1][60] = "Editor"
    tenants = [
        TenantSpec(
            "huating-hotels",
            "华庭酒店集团",
            frozenset({"air_monitor"}),
            (Viewer("boss"), Viewer("shared")),
        ),
        TenantSpec("xh-renji", "上海徐汇仁济医院", frozenset({"sterilizer"}), (Viewer("shared"),)),
    ]
    report = _run(fake, influx, filled, tenants)
    assert any("boss is Editor of organisation 1" in c for c in report.plan.conflicts)
    assert any(
        "shared is listed for tenants huating-hotels and xh-renji" in c
        for c in report.plan.conflicts
    )
    assert fake.members[1][60] == "Editor"


def test_tenant_credentials_read_only_their_own_database(
    influx: InfluxServer, filled: Filled
) -> None:
    _run(FakeGrafana(), influx, filled, _tenants())
    own = InfluxV1(influx.url, influx_user("xh-renji"), derive_password(SECRET, "xh-renji"))
    assert (
        own.rows('SELECT count("temperature_c") FROM "sterilizer"', filled.prefix + "xh-renji")[0][
            "count"
        ]
        > 0
    )
    assert own.databases() == {filled.prefix + "xh-renji"}
    for other in (filled.prefix + "qingyuan-water", filled.prefix + "huating-hotels", filled.db):
        with pytest.raises(InfluxAuthError) as refused:
            own.query("SELECT * FROM /.*/ LIMIT 1", other)
        assert refused.value.status == 403
        assert "not authorized" in str(refused.value)
    for statement in (
        f'SELECT * FROM "{filled.db}"."raw"."sterilizer" LIMIT 1',
        "SHOW USERS",
        f'DROP DATABASE "{filled.prefix}xh-renji"',
    ):
        with pytest.raises(InfluxAuthError):
            own.query(statement, filled.prefix + "xh-renji")
    # Read-only: not even its own database can be written.
    token = base64.b64encode(
        f"{influx_user('xh-renji')}:{derive_password(SECRET, 'xh-renji')}".encode()
    ).decode()
    request = urllib.request.Request(
        f"{influx.url}/write?db={filled.prefix}xh-renji",
        data=b"sterilizer,device=forged temperature_c=121.0",
        headers={"Authorization": f"Basic {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as write:
        urllib.request.urlopen(request, timeout=10)
    write.value.close()
    assert write.value.code == 403
    wrong = InfluxV1(influx.url, influx_user("xh-renji"), "not-the-password")
    with pytest.raises(InfluxAuthError) as unauthenticated:
        wrong.query("SHOW DATABASES")
    assert unauthenticated.value.status == 401


@pytest.mark.parametrize("tenant", ["qingyuan-water", "xh-renji", "huating-hotels"])
def test_tenant_dashboards_return_data_with_the_tenants_own_credentials(
    influx: InfluxServer, filled: Filled, tenant: str
) -> None:
    """The tenant's dashboards, run as the tenant's InfluxDB user on its database."""
    _run(FakeGrafana(), influx, filled, _tenants())
    spec = {t.id: t for t in _tenants()}[tenant]
    as_tenant = InfluxServer(
        influx.server,
        type(influx.creds)(influx.url, influx_user(tenant), derive_password(SECRET, tenant)),
    )
    db = filled.prefix + tenant
    docs = grafana_build.tenant_dashboards(sorted(spec.kinds or ()))
    assert docs
    for doc in docs:
        device = filled.alert_devices[doc["uid"]]
        assert filled.devices[device].tenant == tenant
        _check_dashboard(as_tenant, doc, filled, db, device)


def test_tenant_specs_from_registry_like_rows() -> None:
    specs = tenant_specs(
        [{"id": "b-co", "name": "B"}, {"id": "a-co", "name": "A"}],
        [
            {"kind": "sterilizer", "site": {"tenant_id": "a-co"}},
            {"kind": "dosimeter", "tenant_id": "a-co"},
        ],
        [
            {"username": "a1", "role": "tenant_user", "tenant_id": "a-co", "email": "a1@x"},
            {"username": "staff", "role": "city_admin", "tenant_id": None},
            {"username": "gone", "role": "tenant_user", "tenant_id": "a-co", "active": False},
        ],
    )
    assert [s.id for s in specs] == ["a-co", "b-co"]
    assert specs[0].kinds == {"sterilizer", "dosimeter"}
    assert specs[1].kinds == frozenset()
    assert [v.login for v in specs[0].viewers] == ["a1"]
    with pytest.raises(ValueError, match="identifier"):
        TenantSpec("bad id", "x")


def test_site_info_lines() -> None:
    class RegistrySite:  # the attribute names of gateway.registry.models.Site
        id, tenant_id, name, region_code, venue_type = (
            "pool-1",
            "aoti",
            "奥体 游泳馆",
            "330108",
            "pool",
        )
        latitude, longitude, devices = 30.23, 120.22, [object(), object()]

    (line,) = site_info_lines([RegistrySite()], 1_700_000_000_000)
    assert line == (
        "site_info,region=330108,site=pool-1,tenant=aoti,venue_type=pool "
        'name="奥体 游泳馆",lat=30.23,lon=120.22,devices=2.0 1700000000000'
    )
    (no_coords,) = site_info_lines(
        [{"id": "s", "tenant_id": "t", "name": "n", "region_code": "110105"}], 1
    )
    assert "lat=" not in no_coords
    with pytest.raises(ValueError, match="WGS-84"):
        site_info_lines([{"id": "s", "tenant_id": "t", "latitude": 91, "longitude": 0}], 1)


class _Influx2:
    """InfluxDB 2.x as sync sees it: a version, and v1 logins that exist once the operator ran
    the printed commands. It has no InfluxQL user management: any statement fails the test."""

    def __init__(self, working: set[str]) -> None:
        self.working = working

    def version_kind(self) -> str:
        return "2.x"

    def can_login(self, username: str, password: str) -> bool:
        return username in self.working and password == derive_password(SECRET, username[10:])

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        raise AssertionError(f"sync sent InfluxQL to a 2.x server: {q[:40]}")


def test_sync_on_influxdb_2_prints_the_operator_steps_and_sets_up_grafana(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenants = _tenants()[:2]
    settings = SyncSettings(SECRET)
    fake = FakeGrafana()
    influx = _Influx2({influx_user("xh-renji")})  # xh-renji's authorisation already exists
    seen = observe_grafana(fake, tenants, settings)
    the_plan = plan(tenants, seen, observe_influx(influx, tenants, settings), settings)  # type: ignore[arg-type]
    assert not [a for a in the_plan.actions if a.op.startswith("influx.")]
    manual = [m for m in the_plan.manual if m.startswith("qingyuan-water: ")]
    assert len(the_plan.manual) == len(manual) == 3, the_plan.manual
    assert "influx bucket create --org weijian --name weijian_t_qingyuan-water" in manual[0]
    assert "influx v1 dbrp create" in manual[1]
    assert "--db weijian_t_qingyuan-water" in manual[1]
    assert "influx v1 auth create" in manual[2]
    assert "--read-bucket" in manual[2]
    assert "--write-bucket" not in manual[2]
    assert not the_plan.empty, "manual steps left: the plan is not done"
    with caplog.at_level("DEBUG"):
        report = apply(the_plan, tenants, fake, influx, settings, seen)  # type: ignore[arg-type]
    # Grafana is set up all the same: the data source works as soon as the login does.
    for spec in tenants:
        ds = fake.datasources[(fake.org_of(spec.id), TENANT_DS.uid)]
        assert ds["basicAuthUser"] == influx_user(spec.id)
    text = "\n".join([*report.plan.describe(), caplog.text])
    for spec in tenants:
        assert derive_password(SECRET, spec.id) not in text
    assert SECRET not in text


def test_sync_never_prints_or_logs_a_secret(
    influx: InfluxServer, filled: Filled, caplog: pytest.LogCaptureFixture
) -> None:
    """Derived InfluxDB passwords, the sync secret and the viewers' initial passwords appear in
    no plan line and no log record; an InfluxDB error does not echo the statement either."""
    fake = FakeGrafana()
    tenants = _tenants()
    with caplog.at_level("DEBUG"):
        first = _run(fake, influx, filled, tenants)
        rotated = SyncSettings("rotated-secret-0123456789", database_prefix=filled.prefix)
        second = _run(fake, influx, filled, tenants, rotated)
        _run(fake, influx, filled, tenants)  # back to SECRET for the other tests
    assert any(a.op == "influx.set_password" for a in second.applied)
    text = "\n".join([*first.plan.describe(), *second.plan.describe(), caplog.text])
    secrets = [SECRET, rotated.secret, *first.initial_passwords.values()]
    secrets += [derive_password(k, t.id) for k in (SECRET, rotated.secret) for t in tenants]
    assert not [x for x in secrets if x in text]
    assert str(first.plan.describe()).count("\n") == len(first.plan.describe()) - 1
    # The secrets went where they belong: Grafana's secure store and the new user's password.
    assert fake.user_passwords["rj-viewer"] == "initial-pw-123"
    as_tenant = InfluxV1(influx.url, influx_user("xh-renji"), derive_password(SECRET, "xh-renji"))
    assert derive_password(SECRET, "xh-renji") not in repr(as_tenant)
    with pytest.raises(InfluxAuthError) as refused:
        as_tenant.query("CREATE USER \"intruder\" WITH PASSWORD 'sup3r-s3cret-pw'")
    assert "sup3r-s3cret-pw" not in str(refused.value)


def test_weijian_grafana_sync_command(
    influx: InfluxServer,
    filled: Filled,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``weijian grafana sync`` end to end: the registry's tenants, devices and tenant users,
    grafana-client against the stub Grafana, the real InfluxDB; then a second run: nothing."""
    from gateway.registry.database import Registry
    from gateway.registry.models import Device, Site, Tenant, User
    from weijian.cli import main

    registry = Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", migrate=True)
    with registry.session() as s, s.begin():
        s.add(Tenant(id="huating-hotels", name="华庭酒店集团"))
        s.add(Tenant(id="empty-co", name="No devices yet"))
        s.add(
            Site(
                id="ht-1",
                tenant_id="huating-hotels",
                name="华庭 1",
                region_code="310104",
                venue_type="hotel",
            )
        )
        s.add(
            Device(
                id="am-ht-1",
                site_id="ht-1",
                kind="air_monitor",
                profile="air_monitor_iaq8",
                protocol="mqtt",
                interval_s=60.0,
            )
        )
        s.add(
            User(
                username="ht-duty",
                display_name="值班",
                password_hash="x",
                role="tenant_user",
                tenant_id="huating-hotels",
            )
        )
        s.add(User(username="city", password_hash="x", role="city_admin"))
    registry.close()
    for name in list(__import__("os").environ):
        if name.startswith("WEIJIAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WEIJIAN_INFLUX__URL", influx.url)
    monkeypatch.setenv("WEIJIAN_INFLUX__USERNAME", influx.creds.username)
    monkeypatch.setenv("WEIJIAN_INFLUX__PASSWORD", influx.creds.password)
    monkeypatch.setenv("WEIJIAN_INFLUX__TENANT_DATABASE_PREFIX", filled.prefix)
    monkeypatch.setenv("WEIJIAN_GRAFANA_SYNC_SECRET", SECRET)
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "pw")
    _SYNCED.update({"huating-hotels", "empty-co"})
    fake = FakeGrafana()
    with _stub_grafana(fake) as (url, seen):
        argv = ["grafana", "sync", "--grafana-url", url, "--data-dir", str(tmp_path)]
        argv += ["--influx-url", "http://influxdb:8086"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        org = fake.org_of("huating-hotels")
        assert fake.orgs_by_id[org] == "华庭酒店集团 [huating-hotels]"
        assert "empty-co" in " ".join(fake.orgs_by_id.values())
        ds = fake.datasources[(org, TENANT_DS.uid)]
        assert ds["url"] == "http://influxdb:8086"
        assert ds["jsonData"]["dbName"] == filled.prefix + "huating-hotels"
        assert {uid for (o, uid) in fake.boards if o == org} == {"weijian-indoor-air"}
        (line,) = [x for x in out.splitlines() if x.startswith("new viewer ht-duty")]
        password = line.rsplit(" ", 1)[1]
        assert fake.user_passwords["ht-duty"] == password
        user = fake.users_by_login["ht-duty"]["id"]
        assert [(o["orgId"], o["role"]) for o in fake.user_orgs(user)] == [(org, "Viewer")]
        assert "city" not in fake.users_by_login, "staff are not tenant viewers"
        assert (
            "huating-hotels: grafana.create_org: 华庭酒店集团 [huating-hotels]" in out.splitlines()
        )
        assert derive_password(SECRET, "huating-hotels") not in out
        grants = _admin(influx).grants(influx_user("huating-hotels"))
        assert grants == {filled.prefix + "huating-hotels": "READ"}

        seen.clear()
        assert main(argv) == 0
        assert capsys.readouterr().out.splitlines() == ["nothing to do"]
        assert [r for r in seen if r[0] != "GET"] == []


def test_provisioning_is_wired_to_the_dashboards() -> None:
    """The compose stack's Grafana: provisioning folders at Grafana's paths, the data source uid
    the dashboards name, the folder, and the home dashboard inside the mounted directory."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode)
    for kind in ("datasources", "dashboards"):
        source, mode = mounts[f"/etc/grafana/provisioning/{kind}"]
        assert list((ROOT / source).glob("*.yaml")), kind
        assert mode == ["ro"]
    (ds_file,) = (ROOT / "deploy/grafana/provisioning/datasources").glob("*.yaml")
    datasources = yaml.safe_load(ds_file.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert (ds["uid"], ds["type"]) == (AGENCY_DS.uid, AGENCY_DS.type)
    assert ds["uid"] != TENANT_DS.uid
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["access"] == "proxy"
    (provider_file,) = (ROOT / "deploy/grafana/provisioning/dashboards").glob("*.yaml")
    providers = yaml.safe_load(provider_file.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["orgId"] == 1
    assert provider["folderUid"] == SyncSettings("x" * 16).folder_uid
    assert provider["allowUiUpdates"] is False
    source, _ = mounts[provider["options"]["path"]]
    assert (ROOT / source).resolve() == grafana_build.DASHBOARD_DIR
    env = grafana["environment"]
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(provider["options"]["path"])
    assert (grafana_build.DASHBOARD_DIR / home.name).is_file()
    assert (
        json.loads((grafana_build.DASHBOARD_DIR / home.name).read_text())["uid"] == "weijian-wall"
    )
    # Tenant viewers are created with their organisation's id: auto-assignment must be on
    # (otherwise Grafana gives each new user an organisation of their own, as its Admin).
    assert env["GF_USERS_AUTO_ASSIGN_ORG"] == "true"
    assert env["GF_USERS_AUTO_ASSIGN_ORG_ROLE"] == "Viewer"
    assert grafana["image"].startswith("grafana/grafana:11.6.")


# ------------------------------------------------------------------------------------------
# The thin apply step, through grafana-client over HTTP


class _StubGrafana(BaseHTTPRequestHandler):
    """Grafana's HTTP API (the endpoints sync uses) over a FakeGrafana, with Grafana's contract:
    ``/api`` paths and methods as documented; basic auth of the server admin on every request
    (401 otherwise); organisation-scoped endpoints act on the organisation named by
    ``X-Grafana-Org-Id``, or without it on the caller's current organisation (1), and refuse an
    organisation the caller is not a member of; JSON error bodies ``{"message": ...}``."""

    fake: FakeGrafana
    seen: list[tuple[str, str, int | None]]  # (method, path, X-Grafana-Org-Id)
    auth: str

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        header = self.headers.get("X-Grafana-Org-Id")
        self.seen.append((method, url.path, int(header) if header else None))
        if self.headers.get("Authorization") != self.auth:
            return self._send(401, {"message": "Unauthorized"})
        if not url.path.startswith("/api/"):
            return self._send(404, {"message": "Not found"})
        path = url.path.removeprefix("/api")
        f = self.fake
        org = int(header) if header else 1  # no header: the admin's current organisation
        me = f.users_by_login[f.me_login]["id"]
        admin: list[tuple[str, str, Any]] = [  # server-admin APIs: the header does not matter
            ("GET", r"/user", lambda: {"id": me, "login": f.me(), "isGrafanaAdmin": True}),
            ("GET", r"/orgs", f.orgs),
            ("POST", r"/orgs", lambda: {"orgId": f.create_org(body["name"]), "message": "ok"}),
            ("PUT", r"/orgs/(\d+)", lambda i: f.rename_org(int(i), body["name"])),
            ("GET", r"/orgs/(\d+)/users", lambda i: f.org_members(int(i))),
            (
                "POST",
                r"/orgs/(\d+)/users",
                lambda i: f.add_org_member(int(i), body["loginOrEmail"], body["role"]),
            ),
            (
                "PATCH",
                r"/orgs/(\d+)/users/(\d+)",
                lambda i, u: f.set_org_role(int(i), int(u), body["role"]),
            ),
            (
                "DELETE",
                r"/orgs/(\d+)/users/(\d+)",
                lambda i, u: f.remove_org_member(int(i), int(u)),
            ),
            ("GET", r"/users/lookup", lambda: f.find_user(query["loginOrEmail"][0])),
            ("GET", r"/users/(\d+)/orgs", lambda u: f.user_orgs(int(u))),
            (
                "POST",
                r"/admin/users",
                lambda: {
                    "id": f.create_user(
                        body["login"],
                        body["email"],
                        body["name"],
                        body["password"],
                        # Grafana binds the JSON case-insensitively: OrgId or orgId.
                        body.get("orgId", body.get("OrgId", 0)),
                    ),
                    "message": "User created",
                },
            ),
        ]
        scoped: list[tuple[str, str, Any]] = [  # organisation-scoped APIs
            ("GET", r"/datasources/uid/([\w-]+)", lambda u: f.datasource(org, u)),
            ("POST", r"/datasources", lambda: f.create_datasource(org, body)),
            ("PUT", r"/datasources/uid/([\w-]+)", lambda u: f.update_datasource(org, u, body)),
            ("GET", r"/folders/([\w-]+)", lambda u: f.folder(org, u)),
            ("POST", r"/folders", lambda: f.create_folder(org, body["uid"], body["title"])),
            ("GET", r"/search", lambda: f.dashboards(org, query["tag"][0])),
            ("GET", r"/dashboards/uid/([\w-]+)", lambda u: f.dashboard(org, u)),
            ("POST", r"/dashboards/db", lambda: self._save(org, body)),
            ("DELETE", r"/dashboards/uid/([\w-]+)", lambda u: f.delete_dashboard(org, u)),
            ("GET", r"/org/preferences", lambda: f.org_preferences(org)),
            ("PATCH", r"/org/preferences", lambda: self._prefs(org, body)),
        ]
        for routes, org_scoped in ((admin, False), (scoped, True)):
            for verb, pattern, handler in routes:
                m = re.fullmatch(pattern, path)
                if verb != method or not m:
                    continue
                if org_scoped and me not in f.members.get(org, {}):
                    return self._send(401, {"message": "User is not a member of the organization"})
                try:
                    result = handler(*m.groups())
                except GrafanaError as exc:
                    return self._send(exc.status, {"message": exc.message})
                except (AssertionError, KeyError, TypeError) as exc:  # a body Grafana refuses
                    return self._send(400, {"message": f"bad request: {exc!r}"})
                if result is None and method == "GET":
                    return self._send(404, {"message": "Not found"})
                return self._send(200, result if result is not None else {"message": "ok"})
        self._send(404, {"message": f"no route {method} {path}"})

    def _save(self, org: int, body: dict[str, Any]) -> dict[str, Any]:
        assert body["overwrite"] is True
        assert body["dashboard"]["uid"]
        assert body["dashboard"]["title"]
        assert "id" not in body["dashboard"], "a new dashboard is saved without an id"
        self.fake.save_dashboard(org, body["dashboard"], body["folderUid"])
        return {"status": "success", "uid": body["dashboard"]["uid"]}

    def _prefs(self, org: int, body: dict[str, Any]) -> None:
        assert set(body) == {"homeDashboardUID"}, "PATCH only what changes"
        self.fake.set_home_dashboard(org, body["homeDashboardUID"])

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@contextlib.contextmanager
def _stub_grafana(
    fake: FakeGrafana, password: str = "pw"
) -> Iterator[tuple[str, list[tuple[str, str, int | None]]]]:
    """A stub Grafana on a free loopback port: (its URL, the requests it saw)."""
    seen: list[tuple[str, str, int | None]] = []
    auth = "Basic " + base64.b64encode(f"{fake.me_login}:{password}".encode()).decode()
    handler = type("H", (_StubGrafana,), {"fake": fake, "seen": seen, "auth": auth})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


_ORG_SCOPED = re.compile(r"^/api/(datasources|folders|search|dashboards|org/)")


def test_sync_through_grafana_client_over_http(influx: InfluxServer, filled: Filled) -> None:
    from grafana_client import GrafanaApi

    fake = FakeGrafana()
    fake.users_by_login["qy-viewer"] = {"id": 50, "login": "qy-viewer", "isGrafanaAdmin": False}
    fake.members[1][50] = "Viewer"  # auto-assigned to the agency's organisation earlier
    tenants = _tenants()[:2]
    _SYNCED.update(t.id for t in tenants)
    with _stub_grafana(fake) as (url, seen):
        api = GrafanaApi.from_url(url, credential=("admin", "pw"))
        first = sync(api, _admin(influx), tenants, secret=SECRET, database_prefix=filled.prefix)
        assert first.applied
        assert not first.plan.conflicts
        for spec in tenants:
            org = fake.org_of(spec.id)
            ds = fake.datasources[(org, TENANT_DS.uid)]
            assert (ds["basicAuthUser"], ds["jsonData"]["dbName"]) == (
                influx_user(spec.id),
                filled.prefix + spec.id,
            )
            assert fake.passwords[(org, TENANT_DS.uid)] == derive_password(SECRET, spec.id)
            boards = [d["uid"] for d in grafana_build.tenant_dashboards(sorted(spec.kinds or ()))]
            assert {uid for (o, uid) in fake.boards if o == org} == set(boards)
            assert fake.homes[org] == boards[0]
            for viewer in spec.viewers:
                user = fake.users_by_login[viewer.login]["id"]
                assert [(o["orgId"], o["role"]) for o in fake.user_orgs(user)] == [(org, "Viewer")]
        # Every organisation-scoped call named its organisation, never the agency's.
        scoped = [(m, p, o) for m, p, o in seen if _ORG_SCOPED.match(p)]
        assert scoped
        assert all(o is not None and o != 1 for _, _, o in scoped), scoped
        tenant_orgs = {fake.org_of(t.id) for t in tenants}
        assert {o for _, _, o in scoped} == tenant_orgs
        # The agency organisation keeps only its admin; the wall's data source is untouched.
        assert fake.members[1] == {1: "Admin"}
        assert not [k for k in fake.datasources if k[0] == 1]

        seen.clear()
        second = sync(api, _admin(influx), tenants, secret=SECRET, database_prefix=filled.prefix)
        assert second.plan.empty, second.plan.describe()
        assert [r for r in seen if r[0] != "GET"] == [], "a second run changes nothing"

        # Wrong admin password: Grafana's 401 reaches the caller.
        from grafana_client.client import GrafanaUnauthorizedError

        wrong = GrafanaApi.from_url(url, credential=("admin", "nope"))
        with pytest.raises(GrafanaUnauthorizedError):
            sync(wrong, _admin(influx), tenants, secret=SECRET, database_prefix=filled.prefix)


def test_sync_joins_a_tenant_organisation_it_is_not_a_member_of(
    influx: InfluxServer, filled: Filled
) -> None:
    """An organisation of the tenant exists but sync's admin is not in it (another admin made
    it, or was removed): Grafana refuses its contents, so the first run only joins it and says
    so; the second finishes; the third has nothing to do."""
    from grafana_client import GrafanaApi

    fake = FakeGrafana()
    fake.orgs_by_id[7] = "华庭酒店集团 [huating-hotels]"
    fake.members[7] = {}
    tenants = [t for t in _tenants() if t.id == "huating-hotels"]
    _SYNCED.update(t.id for t in tenants)
    with _stub_grafana(fake) as (url, _):
        api = GrafanaApi.from_url(url, credential=("admin", "pw"))

        def run() -> Any:
            return sync(api, _admin(influx), tenants, secret=SECRET, database_prefix=filled.prefix)

        first = run()
        assert [a.op for a in first.applied if a.op.startswith("grafana.")] == [
            "grafana.add_member"
        ]
        assert any("run `weijian grafana sync` again" in m for m in first.plan.manual)
        assert fake.members[7] == {1: "Admin"}
        second = run()
        assert (7, TENANT_DS.uid) in fake.datasources
        assert fake.homes[7] == "weijian-indoor-air"
        assert not second.plan.manual
        assert run().plan.empty
