"""Scenarios as data, faults with ground truth, offline generation, and live runs: every shipped
scenario loads, groups expand, faults apply exactly inside their windows and are written down,
and the same scenario drives real MQTT devices (and onboards through a real gateway)."""

from __future__ import annotations

import asyncio
import copy
import io
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from protocols.profiles import load_profiles
from simulators.faults import (
    EXPECTED_ALERTS,
    FAULT_TYPES,
    Malformed,
    generate,
    ground_truth,
    parse_duration,
    read_ground_truth,
    write_ground_truth,
)
from simulators.runner import RunnerError, make_runners, run_scenario, runner_class
from simulators.scenario import (
    SCENARIO_DIR,
    SIMULATED_KINDS,
    ScenarioError,
    build_fleet,
    load_scenario,
    scenario_from_data,
    shipped_scenarios,
)
from weijian.stack.mosquitto import LocalMosquitto

DATA = Path(__file__).resolve().parent.parent / "protocols" / "data"
KINDS = yaml.safe_load((DATA / "kinds.yaml").read_text(encoding="utf-8"))
START = datetime(2026, 11, 16, tzinfo=UTC)  # Monday 08:00 in Beijing


def _doc(devices: list[dict[str, Any]], faults: list[dict[str, Any]] = (), **extra: Any) -> dict:
    """A small scenario document: one tenant, one site per venue type, the given devices."""
    return {
        "name": "t",
        "seed": 7,
        "tenants": [{"id": "t1", "name": "T"}],
        "sites": [
            {
                "id": "plant",
                "tenant": "t1",
                "name": "P",
                "region": "330110",
                "venue_type": "water_plant_outlet",
                "lat": 30.4,
                "lon": 120.3,
            },
            {
                "id": "office",
                "tenant": "t1",
                "name": "O",
                "region": "330106",
                "venue": "office",
                "lat": 30.3,
                "lon": 120.1,
            },
            {
                "id": "cssd",
                "tenant": "t1",
                "name": "C",
                "region": "330106",
                "lat": 30.3,
                "lon": 120.1,
            },
            {
                "id": "xray",
                "tenant": "t1",
                "name": "X",
                "region": "330106",
                "lat": 30.3,
                "lon": 120.1,
            },
            {
                "id": "pool",
                "tenant": "t1",
                "name": "S",
                "region": "330106",
                "lat": 30.3,
                "lon": 120.1,
            },
        ],
        "devices": devices,
        "faults": list(faults),
        **extra,
    }


EVERY_KIND = [
    {"id": "probe", "kind": "water_probe", "site": "plant"},
    {"id": "station", "kind": "water_station", "site": "plant"},
    {"id": "pool-1", "kind": "pool_monitor", "site": "pool"},
    {"id": "air", "kind": "air_monitor", "site": "office"},
    {"id": "ster", "kind": "sterilizer", "site": "cssd"},
    {
        "id": "mon",
        "kind": "dose_rate_monitor",
        "site": "xray",
        "params": {"room": {"modality": "fluoroscopy"}},
    },
    {"id": "dos", "kind": "dosimeter", "site": "xray"},
]


# ---- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_shipped_scenario_loads_and_its_devices_sample(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.devices
    assert scenario.sites
    assert scenario.tenants
    venue_types = set(yaml.safe_load((DATA / "venues.yaml").read_text())["venue_types"])
    assert all(site.venue_type in venue_types for site in scenario.sites)
    start = scenario.start or START
    planned = scenario.plan(start, devices=[d.id for d in scenario.devices[:50]])
    for device in planned:
        out = device.emit_ts(start.timestamp() + 3600)
        assert (
            out is None
            or isinstance(out, Malformed)
            or set(out[1]) <= set(KINDS["kinds"][device.kind]["quantities"])
        )


def test_the_scenarios_are_documented_in_one_place() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text()
    for name in shipped_scenarios():
        assert f"`{name}.yaml`" in doc, name
    for fault, alert in EXPECTED_ALERTS.items():
        assert f"`{fault}`" in doc, fault
        assert f"`{alert}`" in doc, alert


def test_the_standard_fault_scenario_has_every_fault_type() -> None:
    scenario = load_scenario("faults")
    assert {f.fault_type.name for f in scenario.faults} == set(FAULT_TYPES)
    assert not load_scenario("clean").faults
    assert len(load_scenario("scale").devices) == 10_000


def test_groups_expand_and_deal_devices_over_sites() -> None:
    scenario = load_scenario("scale")
    ids = [d.id for d in scenario.devices]
    assert ids[:2] == ["sc-am-h00001", "sc-am-h00002"]
    assert ids[-1] == "sc-ster-01000"
    assert len(set(ids)) == 10_000
    per_hotel = Counter(d.site for d in scenario.devices if d.site.startswith("sc-hotel-"))
    assert len(per_hotel) == 500
    assert set(per_hotel.values()) == {10}
    hotels = [s for s in scenario.sites if s.id.startswith("sc-hotel-")]
    assert hotels[0].name == "酒店 1"
    assert hotels[0].venue_type == "hotel"
    assert len({(s.lat, s.lon) for s in hotels}) == 500, "members scatter around the centre"
    assert load_scenario("scale").sites == scenario.sites, "the same scatter on every load"
    # A templated site follows the member's number.
    faults = load_scenario("faults")
    assert faults.device("wp-tap-3").site == "b-tap-3"


def test_scenario_errors_name_the_entry_even_inside_a_group(tmp_path: Path) -> None:
    doc = _doc(
        [
            {
                "id": "p-{n}",
                "count": 3,
                "kind": "water_probe",
                "site": "plant",
                "params": {"chlorine_setpoint_mg_l": -1},
            },
            {"id": "a-{n}", "count": 2, "kind": "air_monitor", "site": "nowhere-*"},
            {"id": "s1", "kind": "sterilizer", "site": "cssd", "protocol": "coap"},
            {"id": "s2", "kind": "sterilizer", "site": "cssd"},
        ],
        [
            {"device": "zz*", "type": "dropout", "start": "1h"},
            {
                "device": "s2",
                "type": "spike",
                "start": "1h",
                "params": {"quantity": "cycle_phase", "magnitude": 1},
            },
            {"device": "p-1", "type": "teleport", "start": "1h"},
        ],
    )
    with pytest.raises(ScenarioError) as err:
        scenario_from_data(doc, "bad.yaml")
    message = str(err.value)
    assert message.startswith("bad.yaml: invalid scenario")
    assert "faults.2: Value error" not in message
    assert "'teleport' is not a fault type" in message
    doc["faults"] = doc["faults"][:2]
    with pytest.raises(ScenarioError) as err:
        scenario_from_data(doc, "bad.yaml")
    message = str(err.value)
    assert "devices[0] (p-1).params.chlorine_setpoint_mg_l" in message
    assert "devices[1] (a-{n}).site: 'nowhere-*' matches no site" in message
    assert "devices[2] (s1).protocol: profile 'sterilizer_ps120' speaks mqtt, not 'coap'" in message
    assert "faults[0] (dropout on zz*).device: 'zz*' matches no device" in message
    assert "'cycle_phase' is not a numeric quantity of sterilizer" in message


# ---- the catalog ------------------------------------------------------------------------------


def test_every_simulated_kind_emits_only_its_catalog_quantities() -> None:
    """kinds.yaml is the contract: a reading with another field is rejected by the platform."""
    scenario = scenario_from_data(_doc(EVERY_KIND))
    assert {d.kind for d in scenario.devices} == set(SIMULATED_KINDS)
    profiles = load_profiles()
    for device in scenario.plan(START):
        allowed = set(KINDS["kinds"][device.kind]["quantities"]) | set(KINDS["common"])
        declared = set(SIMULATED_KINDS[device.kind].quantities)
        assert declared <= allowed, (device.kind, declared - allowed)
        seen: set[str] = set()
        for i in range(0, 2 * 86400, 397):
            _, values = device.emit_ts(START.timestamp() + i)
            seen |= set(values)
            if device.kind == "sterilizer":
                phases = profiles[device.profile].quantities["cycle_phase"].values
                assert values["cycle_phase"] in phases
        assert seen == declared, device.kind
        assert profiles[device.profile].kind == device.kind


def test_import_documents_validate_against_the_gateway_schemas() -> None:
    from gateway.schemas import DeviceCreate, SiteCreate, TenantCreate, check_device
    from simulators.onboarding import _chunks, import_document
    from simulators.runner import station_mn

    profiles = load_profiles()
    for name in ("water", "hospital", "faults", "demo"):
        scenario = load_scenario(name)
        connections = {
            d.id: {"host": "127.0.0.1", "port": 1502, "unit_id": 1}
            if d.protocol == "modbus_tcp"
            else {"mn": station_mn(d.id)}
            if d.protocol == "hj212"
            else {}
            for d in scenario.devices
        }
        document = import_document(scenario, connections)
        for row in document["tenants"]:
            TenantCreate.model_validate(row)
        for row in document["sites"]:
            SiteCreate.model_validate(row)
        for row in document["devices"]:
            values = DeviceCreate.model_validate(row).model_dump()
            _checked, problems = check_device(values, profiles)
            assert not problems, (name, row, problems)
    chunks = _chunks(import_document(load_scenario("scale")))
    assert [sum(len(v) for v in c.values()) for c in chunks][:1] == [2000]
    assert sum(len(c.get("devices", [])) for c in chunks) == 10_000
    assert list(chunks[0]) == ["tenants", "sites", "devices"], "dependency order"


# ---- faults -------------------------------------------------------------------------------------


def _pair(faults: list[dict[str, Any]], devices: list[dict[str, Any]] = EVERY_KIND):
    clean = scenario_from_data(_doc(devices)).plan(START)
    faulted = scenario_from_data(_doc(devices, faults)).plan(START)
    return {d.id: d for d in clean}, {d.id: d for d in faulted}


def test_fault_windows_apply_exactly_and_only_inside() -> None:
    faults = [
        {
            "device": "probe",
            "type": "spike",
            "start": "1h",
            "duration": "2m",
            "params": {"quantity": "turbidity_ntu", "magnitude": 3.0},
        },
        {
            "device": "probe",
            "type": "level_shift",
            "start": "2h",
            "duration": "10m",
            "params": {"quantity": "conductivity_us_cm", "offset": 100},
        },
        {
            "device": "probe",
            "type": "drift",
            "start": "3h",
            "duration": "1h",
            "params": {"quantity": "ph", "total": -0.6},
        },
        {"device": "air", "type": "stuck", "start": "1h", "duration": "30m"},
        {"device": "air", "type": "dropout", "start": "2h", "duration": "15m"},
        {
            "device": "air",
            "type": "clock_skew",
            "start": "3h",
            "duration": "5m",
            "params": {"offset": "-2h"},
        },
        {
            "device": "air",
            "type": "malformed",
            "start": "4h",
            "duration": "5m",
            "params": {"form": "wrong_type"},
        },
        {
            "device": "air",
            "type": "out_of_range",
            "start": "5h",
            "duration": "5m",
            "params": {"quantity": "co2_ppm"},
        },
    ]
    clean, faulted = _pair(faults)
    t0 = START.timestamp()
    windows = {
        # A drift starts from zero and a stuck reading is its window's first: both show one
        # sample later.
        "probe": [(3600, 3720), (7200, 7800), (10830, 14400)],
        "air": [(3630, 5400), (7200, 8100), (10800, 11100), (14400, 14700), (18000, 18300)],
    }
    for device, spans in windows.items():
        for offset in range(0, 6 * 3600, 30):
            ts = t0 + offset
            inside = any(a <= offset < b for a, b in spans)
            got, want = faulted[device].emit_ts(ts), clean[device].emit_ts(ts)
            assert (got != want) == inside, (
                device,
                offset,
                got,
                want,
            )
    ts = t0 + 3600 + 60
    assert faulted["probe"].emit_ts(ts)[1]["turbidity_ntu"] == pytest.approx(
        clean["probe"].emit_ts(ts)[1]["turbidity_ntu"] + 3.0
    )
    # Drift grows linearly from the window's start.
    half = faulted["probe"].emit_ts(t0 + 3 * 3600 + 1800)[1]["ph"]
    assert half == pytest.approx(clean["probe"].emit_ts(t0 + 3 * 3600 + 1800)[1]["ph"] - 0.3)
    # Stuck: every reading in the window is the first one of it.
    stuck = {orjson.dumps(faulted["air"].emit_ts(t0 + 3600 + k * 60)[1]) for k in range(30)}
    assert len(stuck) == 1
    # Dropout: nothing to send; clock skew: the same values, two hours earlier.
    assert faulted["air"].emit_ts(t0 + 7200 + 5) is None
    stamp, values = faulted["air"].emit_ts(t0 + 10800 + 5)
    assert stamp == t0 + 10800 + 5 - 7200
    assert values == clean["air"].emit_ts(t0 + 10800 + 5)[1]
    junk = faulted["air"].emit_ts(t0 + 14400 + 5)
    assert isinstance(junk, Malformed)
    assert junk.reason == "wrong_type"
    assert orjson.loads(junk.json_payload(seq=3))["fields"]["co2_ppm"] == "E-07"
    assert faulted["air"].emit_ts(t0 + 18000 + 5)[1]["co2_ppm"] == 75001.0  # > 50,000 ppm


def test_model_hooks_change_the_physics_and_the_truth_finds_the_effect() -> None:
    faults = [
        {
            "device": "probe",
            "type": "threshold",
            "start": "2h",
            "duration": "1h",
            "params": {"quantity": "free_chlorine_mg_l", "chlorine_factor": 0.2, "limit": 0.3},
        },
        {
            "device": "pool-1",
            "type": "threshold",
            "start": "1d9h",
            "duration": "5h",
            "params": {"quantity": "free_chlorine_mg_l", "chlorine_dosing_factor": 0, "limit": 0.3},
        },
        {"device": "mon", "type": "interlock_failure", "start": "1h", "duration": "8h"},
        {
            "device": "ster",
            "type": "hold_too_short",
            "start": "0s",
            "duration": "12h",
            "params": {"shortfall": "2m"},
        },
        {
            "device": "air",
            "type": "intermittent",
            "start": "1h",
            "duration": "2h",
            "params": {"period": "10m", "down": "4m"},
        },
    ]
    clean, faulted = _pair(faults)
    t0 = START.timestamp()
    inside = faulted["probe"].emit_ts(t0 + 2.5 * 3600)[1]["free_chlorine_mg_l"]
    assert inside < 0.3 < clean["probe"].emit_ts(t0 + 2.5 * 3600)[1]["free_chlorine_mg_l"]
    assert faulted["probe"].emit_ts(t0 + 4 * 3600) == clean["probe"].emit_ts(t0 + 4 * 3600)
    silent = sum(faulted["air"].emit_ts(t0 + 3600 + k * 60) is None for k in range(120))
    assert silent == 12 * 4, "4 minutes down in every 10-minute period"
    rows = {r["device"]: r for r in ground_truth("t", faulted.values(), t0, t0 + 2 * 86400)}
    probe = rows["probe"]
    assert probe["expected_alert"] == "threshold:free_chlorine_mg_l:low"
    assert probe["effect_start"] == "2026-11-16T02:00:00.000Z"
    assert probe["detectable"]
    pool = rows["pool-1"]  # the residual decays for a while before it crosses 0.3
    assert pool["effect_start"] > pool["start"]
    assert pool["detectable"]
    assert rows["mon"]["expected_alert"] == "radiation:dose_rate_high"
    assert rows["mon"]["detail"]["samples_beyond"] > 10  # only while the beam is on
    cycles = rows["ster"]["detail"]["cycles"]
    assert cycles
    assert all(c.startswith("20261116-") for c in cycles)
    # The sterilizer's faulted cycles are whole: each one's hold is 2 minutes short.
    signal = faulted["ster"].signal
    for record in signal.cycles(START, START + timedelta(hours=12)):
        assert record.faults.hold_shortfall_s == 120.0
    assert rows["air"]["expected_alert"] == "nodata:intermittent"


def test_ground_truth_file_lists_every_injected_fault(tmp_path: Path) -> None:
    scenario = load_scenario("faults")
    t0, t1 = scenario.time_range()
    planned = scenario.plan(t0)
    rows = ground_truth(scenario.name, planned, t0.timestamp(), t1.timestamp())
    path = write_ground_truth(rows, tmp_path / "truth.jsonl")
    back = read_ground_truth(path)
    assert back == rows
    injected = [(f.index, f.device) for d in planned for f in d.faults]
    assert sorted((r["fault"], r["device"]) for r in back) == sorted(injected)
    for row in back:
        config = scenario.faults[row["fault"]]
        assert row["type"] == config.fault_type.name
        expected = EXPECTED_ALERTS[row["type"]].split(":{")[0]
        if row["type"] == "clock_skew" and row["params"]["offset"] > 300:
            expected = "ingest:rejected"  # ahead of the platform's clock: refused
        assert row["expected_alert"].startswith(expected)
        start = t0.timestamp() + parse_duration(config.start)
        assert row["start"] == datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert row["detectable"], row
        assert set(row) >= {
            "device",
            "type",
            "start",
            "end",
            "quantity",
            "expected_alert",
            "kind",
            "protocol",
            "site",
            "tenant",
            "region",
            "params",
            "detail",
        }
    reasons = {r["detail"].get("reason") for r in back if r["expected_alert"] == "ingest:rejected"}
    assert reasons == {"out_of_range", "malformed", "wrong_type", "timestamp_out_of_window"}
    # A fault that starts after the run ends never happened.
    assert len(ground_truth(scenario.name, planned, t0.timestamp(), t0.timestamp() + 3600)) < len(
        rows
    )


def test_offline_generation_is_reproducible_and_fast() -> None:
    scenario = load_scenario("faults")
    t0 = scenario.start
    assert t0 is not None

    began = time.perf_counter()
    every = list(generate(scenario, t0 + timedelta(hours=9), duration="6h"))
    seconds = time.perf_counter() - began
    assert len(every) / seconds > 5_000, f"{len(every) / seconds:.0f} ticks/s"
    assert [r.t for r in every] == sorted(r.t for r in every), "time order across devices"
    per_device = Counter(r.device for r in every)
    assert per_device["st-cssd-5"] == 6 * 360
    assert per_device["am-office-5"] == 6 * 60
    assert len(per_device) == len(scenario.devices)

    some = ["am-office-3", "am-office-5", "wp-tap-2", "st-cssd-1", "dr-dsa-mon"]

    def run(s: Any) -> list[Any]:  # fault offsets count from the run's start: here the file's
        return list(generate(s, duration="20h", devices=some))

    first = run(scenario)
    assert first == run(load_scenario("faults"))
    data = yaml.safe_load((SCENARIO_DIR / "faults.yaml").read_text())
    other = run(scenario_from_data({**data, "seed": data["seed"] + 1}))
    assert [r.values for r in other] != [r.values for r in first]
    silent = [r for r in first if r.values is None]
    assert {r.device for r in silent} == {"am-office-3"}  # the dropout 14:00-18:00 local
    assert all(
        datetime(2026, 11, 16, 6, tzinfo=UTC) <= r.t < datetime(2026, 11, 16, 10, tzinfo=UTC)
        for r in silent
    )


def test_a_protocol_without_a_runner_fails_clearly() -> None:
    with pytest.raises(RunnerError, match="no simulator runner for protocol modbus_rtu yet"):
        runner_class("modbus_rtu")
    scenario = scenario_from_data(
        _doc([{"id": "p", "kind": "water_probe", "site": "plant", "protocol": "modbus_rtu"}])
    )
    with pytest.raises(RunnerError, match="modbus_rtu"):
        make_runners(scenario.plan(START), None)  # type: ignore[arg-type]


# ---- live -------------------------------------------------------------------------------------


def _demo_with_faults(interval_s: float) -> Any:
    data = yaml.safe_load((SCENARIO_DIR / "demo.yaml").read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    for device in data["devices"]:
        device["interval_s"] = interval_s
    data["faults"] = [
        {"device": "am-bjcy-0812", "type": "malformed", "start": 0, "params": {"form": "not_json"}},
        {"device": "am-bjcy-1206", "type": "dropout", "start": "1s"},
        {"device": "am-shpd-1518", "type": "clock_skew", "start": 0, "params": {"offset": "-1h"}},
    ]
    return scenario_from_data(data, "demo+faults")


async def test_the_demo_runs_over_mqtt_with_its_faults(mosquitto: LocalMosquitto) -> None:
    from tests.test_mqtt_device import _until, collector

    scenario = _demo_with_faults(0.1)
    began = datetime.now(UTC)
    fleet = build_fleet(scenario, mosquitto.allow_device, port=mosquitto.port, start=began)
    mosquitto.reload()
    await asyncio.sleep(0.3)  # SIGHUP is asynchronous; the fleet retries refused connects anyway
    with collector(mosquitto) as sink:
        async with fleet:
            async with asyncio.timeout(10):
                await fleet.wait_connected()
            await asyncio.sleep(2.5)
        await _until(lambda: len(sink.snapshot()) >= 20)
        received = sink.snapshot()
    stats = fleet.stats()
    by_device: dict[str, list[bytes]] = {}
    for topic, payload in received:
        by_device.setdefault(topic.split("/")[-2], []).append(payload)
    junk = by_device["am-bjcy-0812"]
    assert junk
    assert stats["am-bjcy-0812"].malformed == len(junk)
    for payload in junk:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)
    # The dropout: readings only from the first second, then silence while the others go on.
    silent = [orjson.loads(p) for p in by_device.get("am-bjcy-1206", [])]
    assert stats["am-bjcy-1206"].suppressed > 5
    cut = began + timedelta(seconds=1)
    assert all(datetime.fromisoformat(r["ts"]) < cut for r in silent)
    assert len(by_device["am-zxt-15f"]) > 2 * max(len(silent), 1)
    skewed = [orjson.loads(p) for p in by_device["am-shpd-1518"]]
    assert skewed
    assert all(datetime.fromisoformat(r["ts"]) < began - timedelta(minutes=59) for r in skewed)


async def test_run_scenario_onboards_through_the_gateway_then_drives_mqtt(tmp_path: Path) -> None:
    """The whole path: a real gateway (registry import, credentials), the broker following the
    registry, devices connecting with the secrets onboarding returned, ground truth written."""
    from gateway.app import create_app
    from gateway.broker_sync import BrokerSync
    from gateway.context import GatewayContext
    from gateway.registry.database import Registry, sqlite_url
    from gateway.registry.directory import RegistryDirectory
    from gateway.security import create_user, issue_access_token
    from gateway.server import GatewayServer
    from gateway.settings import GatewaySettings
    from tests.gateway_fixtures import FAST_HASHER, JWT_SECRET, PASSWORD

    broker = LocalMosquitto(tmp_path / "mosquitto")
    broker.start()
    registry = Registry.open(sqlite_url(tmp_path / "registry.db"))
    server = None
    try:
        directory = RegistryDirectory(registry)
        directory.refresh()
        ctx = GatewayContext(
            registry,
            GatewaySettings(),
            jwt_secret=JWT_SECRET,
            directory=directory,
            mqtt_topic_prefix=broker.topic_prefix,
        )

        def apply(entries: list) -> None:
            broker.set_devices(entries)
            broker.reload()

        ctx.device_listeners.append(BrokerSync(registry, broker.topic_prefix, apply))
        with registry.session() as session:
            admin = create_user(
                session, "admin", PASSWORD, "admin", (), None, actor="test", hasher=FAST_HASHER
            )
            session.commit()
            token = issue_access_token(JWT_SECRET, admin, 3600)
        server = GatewayServer(create_app(ctx, password_hasher=FAST_HASHER), "127.0.0.1", 0)
        port = await server.start()
        scenario = _demo_with_faults(0.2)
        out = io.StringIO()
        truth = tmp_path / "truth.jsonl"
        report = await run_scenario(
            scenario,
            gateway_url=f"http://127.0.0.1:{port}",
            token=token,
            mqtt_port=broker.port,
            duration=4.0,
            ground_truth_path=truth,
            report_every_s=1.0,
            out=out,
        )
        (mqtt,) = report.rates
        assert mqtt.devices == 6
        assert mqtt.connected == 6, out.getvalue()
        assert mqtt.achieved_per_s > 0
        assert mqtt.malformed > 0
        assert mqtt.suppressed > 0
        assert "achieved of" in out.getvalue()
        rows = read_ground_truth(truth)
        assert {r["type"] for r in rows} == {"malformed", "dropout", "clock_skew"}
        assert all(r["end"] is None or r["end"] > r["start"] for r in rows)
        # A second run rotates the credentials of the devices that now exist.
        report = await run_scenario(
            scenario,
            gateway_url=f"http://127.0.0.1:{port}",
            token=token,
            mqtt_port=broker.port,
            duration=5.0,  # a device that raced the broker's reload retries within ~1 s
            ground_truth_path=truth,
            out=out,
        )
        assert report.rates[0].connected == 6
    finally:
        if server is not None:
            await server.stop()
        registry.close()
        broker.stop()


def test_speed_above_one_needs_a_duration() -> None:
    with pytest.raises(ValueError, match="needs a duration"):
        asyncio.run(run_scenario("demo", gateway_url="http://127.0.0.1:9", speed=10))


async def test_the_other_protocol_runners_reach_real_collectors(tmp_path: Path) -> None:
    """Modbus servers answer with the scenario's values, an HJ 212 station and CoAP devices reach
    the real collectors with their faults: a bad-CRC frame is not stored, a dropout stops posts."""
    from pymodbus.client import AsyncModbusTcpClient

    from collectors.coap import CoapCollector
    from collectors.hj212 import Hj212Collector, Station
    from collectors.metrics import Metrics
    from collectors.pipeline import Ingestor
    from collectors.records import decode_record
    from collectors.spool import Spool
    from protocols.catalog import default_catalog
    from protocols.directory import DeviceInfo, StaticDirectory
    from protocols.reading import ReadingValidator
    from simulators.mqtt_device import AcceleratedClock
    from simulators.onboarding import DeviceAccount
    from simulators.runner import RunContext, station_mn

    devices = [
        {"id": "probe", "kind": "water_probe", "site": "plant", "interval_s": 0.2},
        {"id": "station", "kind": "water_station", "site": "plant", "interval_s": 0.2},
        {
            "id": "mon",
            "kind": "dose_rate_monitor",
            "site": "xray",
            "interval_s": 0.2,
            "params": {"room": {"modality": "ct"}},
        },
        {"id": "dos", "kind": "dosimeter", "site": "xray", "interval_s": 0.2},
    ]
    faults = [
        {
            "device": "station",
            "type": "malformed",
            "start": 0,
            "duration": "0.7s",
            "params": {"form": "truncated"},
        },
        {"device": "mon", "type": "dropout", "start": "1s"},
        {
            "device": "probe",
            "type": "level_shift",
            "start": 0,
            "params": {"quantity": "conductivity_us_cm", "offset": 1000},
        },
    ]
    scenario = scenario_from_data(_doc(devices, faults))
    start = datetime.now(UTC)
    planned = scenario.plan(start)
    info = {d.id: DeviceInfo(d.id, d.tenant, d.site, d.kind, d.region) for d in planned}
    tokens = {f"wjc_{i:012x}_secret-{d}-0123456789": d for i, d in enumerate(("mon", "dos"))}
    stations = {
        station_mn("station"): Station.with_password(
            info["station"], "p12345", "water_station_ws900"
        )
    }
    accounts = {"station": DeviceAccount("station", "p12345", "hj212")}
    accounts |= {d: DeviceAccount(d, token, "coap_token") for token, d in tokens.items()}
    async with Spool(tmp_path / "spool") as spool:
        ingestor = Ingestor(
            StaticDirectory(list(info.values())),
            ReadingValidator(default_catalog()),
            spool,
            Metrics(),
        )
        async with (
            Hj212Collector(ingestor, stations.get, host="127.0.0.1", port=0) as hj212,
            CoapCollector(ingestor, tokens.get, port=0, auth_in_thread=False) as coap,
        ):
            ctx = RunContext(
                clock=AcceleratedClock(start), hj212_port=hj212.port, coap_port=coap.port
            )
            runners = make_runners(planned, ctx)
            assert sorted(type(r).__name__ for r in runners) == [
                "CoapRunner",
                "Hj212Runner",
                "ModbusRunner",
            ]
            connections: dict[str, dict[str, Any]] = {}
            for runner in runners:
                connections |= await runner.prepare()
            assert connections["station"] == {"mn": station_mn("station")}
            assert connections["probe"]["unit_id"] == 1
            try:
                for runner in runners:
                    await runner.start(accounts)
                probe = load_profiles()["water_probe_wq500"]
                client = AsyncModbusTcpClient("127.0.0.1", port=connections["probe"]["port"])
                await client.connect()
                try:
                    responses = []
                    for request in probe.read_plan:
                        call = (
                            client.read_input_registers
                            if request.function == 4
                            else client.read_holding_registers
                        )
                        r = await call(request.start, count=request.count, device_id=1)
                        responses.append(r.registers)
                finally:
                    client.close()
                served = probe.decode_registers(responses)
                _, clean_values = (
                    scenario_from_data(_doc(devices)).plan(start)[0].emit_ts(time.time())
                )
                assert served["conductivity_us_cm"] > clean_values["conductivity_us_cm"] + 900
                await asyncio.sleep(2.5)
                rates = {r.protocol: r for r in (runner.rates() for runner in runners)}
            finally:
                for runner in runners:
                    await runner.stop()
        batch = await spool.read_batch(100_000, timeout=0.05)
        lines = [line.decode() for route, line in map(decode_record, batch.records) if route != "!"]
    stored = Counter(line.split("device=")[1].split(",")[0] for line in lines)
    assert stored["station"] >= 5, lines[:3]
    assert stored["dos"] >= 5
    assert 2 <= stored["mon"] <= 8, "the monitor went silent after 1 s"
    assert rates["hj212"].malformed >= 2
    assert rates["coap"].suppressed >= 5
    assert rates["modbus"].achieved_per_s > 0
