"""Modbus collector and probe against real pymodbus servers (TCP, RTU over TCP, RTU on a pty pair).

Every test runs the real path: simulated devices on loopback → ModbusCollector → Ingestor
(validation) → Spool on disk, and reads the spooled records back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from collectors.metrics import Metrics
from collectors.modbus import (
    ModbusCollector,
    ModbusTarget,
    format_report,
    probe,
    target_from_registry,
)
from collectors.pipeline import Ingestor
from collectors.records import EVENT_ROUTE, decode_record
from collectors.spool import Spool
from protocols.catalog import default_catalog
from protocols.directory import DeviceInfo, StaticDirectory
from protocols.profiles import Profile, load_profiles
from protocols.reading import ReadingValidator
from simulators.modbus_device import (
    ModbusDeviceServer,
    PtyPair,
    SimulatedUnit,
    socat_available,
    water_values,
)
from weijian.stack.process import free_port

PROFILES = load_profiles()
WQ = PROFILES["water_probe_wq500"]  # input registers, float32 CDAB + scaled 16-bit integers
PM = PROFILES["pool_monitor_pm300"]  # holding registers, big-endian, int16, uint32, offset
WQ_VALUES = {
    "turbidity_ntu": 0.35,
    "free_chlorine_mg_l": 0.45,
    "ph": 7.21,
    "water_temperature_c": 12.5,
    "conductivity_us_cm": 1234.5,
}
PM_VALUES = {
    "turbidity_ntu": 0.42,
    "free_chlorine_mg_l": 0.62,
    "combined_chlorine_mg_l": 0.18,
    "ph": 7.35,
    "orp_mv": -120.0,
    "water_temperature_c": -2.5,
    "conductivity_us_cm": 15000.0,
}
COLLECTOR_LOG = "collectors.modbus.collector"


def target(
    device: str,
    profile: Profile,
    port: int,
    unit: int,
    *,
    transport: str = "tcp",
    interval: float = 0.2,
    timeout: float = 0.5,
    **line: Any,
) -> ModbusTarget:
    info = DeviceInfo(device, "t-modbus", "site-1", profile.kind, "110105")
    where = (
        {"serial_port": line.pop("serial_port")}
        if transport == "rtu"
        else {
            "host": "127.0.0.1",
            "port": port,
        }
    )
    return ModbusTarget(
        info,
        profile.id,
        transport,  # type: ignore[arg-type]
        unit_id=unit,
        interval_s=interval,
        timeout_s=timeout,
        **where,
        **line,
    )


@pytest.fixture
async def ingestor(tmp_path: Path) -> AsyncIterator[Ingestor]:
    async with Spool(tmp_path / "spool") as spool:
        yield Ingestor(StaticDirectory(), ReadingValidator(default_catalog()), spool, Metrics())


async def until(condition: Callable[[], Any], within_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} (after {within_s:g} s)")
        await asyncio.sleep(0.02)


async def spooled(spool: Spool) -> dict[str, list[dict[str, float]]]:
    """device → the fields of each reading in the spool, in order (events left out)."""
    out: dict[str, list[dict[str, float]]] = {}
    while True:
        batch = await spool.read_batch(10_000, timeout=0)
        if not batch.records:
            return out
        for record in batch.records:
            route, line = decode_record(record)
            if route == EVENT_ROUTE:
                continue
            head, fields, _ts = line.decode().rsplit(" ", 2)
            tags = dict(part.split("=", 1) for part in head.split(",")[1:])
            values = {
                k: float(v.rstrip("i")) for k, v in (f.split("=", 1) for f in fields.split(","))
            }
            out.setdefault(tags["device"], []).append(values)


def modbus_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("modbus")]


async def test_grouped_reads_of_both_profiles_reach_the_spool(ingestor: Ingestor) -> None:
    gateway_units = [
        SimulatedUnit(1, WQ, values=WQ_VALUES),
        SimulatedUnit(2, PM, values=PM_VALUES),
    ]
    rtu_tcp_units = [SimulatedUnit(7, WQ, values=WQ_VALUES)]
    assert len(WQ.read_plan) == len(PM.read_plan) == 1  # each map is one grouped read
    async with (
        ModbusDeviceServer(gateway_units) as gateway,
        ModbusDeviceServer(rtu_tcp_units, transport="rtu_over_tcp") as serial_server,
    ):
        targets = [
            target("wq-tcp", WQ, gateway.port, 1),
            target("pm-tcp", PM, gateway.port, 2),
            target("wq-rtu-tcp", WQ, serial_server.port, 7, transport="rtu_over_tcp"),
        ]
        metrics = ingestor.metrics
        async with ModbusCollector(ingestor, lambda: targets, metrics=metrics) as collector:
            await until(
                lambda: all(u.requests >= 3 for u in gateway_units + rtu_tcp_units),
                5,
                "every unit polled three times",
            )
            exported = generate_latest(metrics.registry).decode()
            assert 'weijian_modbus_polls_total{result="ok"}' in exported
            assert 'weijian_modbus_devices{state="ok"} 3.0' in exported
            assert collector.status("pm-tcp")["state"] == "ok"
        assert modbus_tasks() == []  # stopped: nothing left running
        assert "weijian_modbus" not in generate_latest(metrics.registry).decode()
        stats = collector.stats
        assert stats.polls_failed == 0
        assert stats.readings_stored == stats.polls_ok == stats.requests
        readings = await spooled(ingestor.spool)
    assert readings["wq-tcp"][0] == WQ_VALUES
    assert readings["wq-rtu-tcp"][0] == WQ_VALUES
    assert readings["pm-tcp"][0] == PM_VALUES
    # one request per poll, every poll's reading in the spool
    assert len(readings["wq-tcp"]) == gateway_units[0].requests
    assert len(readings["pm-tcp"]) == gateway_units[1].requests
    assert len(readings["wq-rtu-tcp"]) == rtu_tcp_units[0].requests


async def test_a_dead_and_a_slow_unit_do_not_delay_a_healthy_one(ingestor: Ingestor) -> None:
    """All three share one connection. The intervals differ, so the slow unit's 80 ms answers
    and the dead unit's 80 ms timeouts drift across the healthy unit's slots: a scheduler that
    simply ran whatever was due would make the healthy unit up to 80 ms late, repeatedly."""
    healthy = SimulatedUnit(1, WQ)
    slow = SimulatedUnit(2, WQ, delay_s=0.08)
    dead = SimulatedUnit(3, WQ, silent=True)
    async with ModbusDeviceServer([healthy, slow, dead]) as gateway:
        targets = [
            target("healthy", WQ, gateway.port, 1, interval=0.3),
            target("slow", WQ, gateway.port, 2, interval=0.35),
            target("dead", WQ, gateway.port, 3, interval=0.25, timeout=0.08),
        ]
        async with ModbusCollector(
            ingestor, lambda: targets, failures_before_unreachable=2, backoff_cap_s=0.5
        ) as collector:
            # The first poll of a device cannot be known to be slow: measure after it.
            await until(
                lambda: all(
                    collector.status(t.device.device)["state"] != "pending" for t in targets
                ),
                3,
                "every device polled once",
            )
            collector.reset_lateness()
            before = (healthy.requests, slow.requests, dead.requests)
            await asyncio.sleep(4.0)
            status = {t.device.device: collector.status(t.device.device) for t in targets}
            polls = [u.requests - b for u, b in zip((healthy, slow, dead), before, strict=True)]
    assert status["healthy"]["state"] == "ok"
    assert status["slow"]["state"] == "ok"
    assert status["dead"]["state"] == "unreachable"
    assert polls[0] >= 12, polls  # the healthy unit kept its schedule
    assert polls[1] >= 10, polls  # so did the slow one
    assert polls[2] >= 4, polls  # the dead unit was still tried, on its backoff schedule
    # Waiting behind an 80 ms answer or timeout would show up here.
    assert status["healthy"]["max_lateness_s"] < 0.04, status["healthy"]


async def test_unreachable_after_n_failures_then_recovers_by_itself(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=COLLECTOR_LOG)
    unit = SimulatedUnit(5, PM, values=PM_VALUES, silent=True)
    async with ModbusDeviceServer([unit]) as gateway:
        targets = [target("pm-flaky", PM, gateway.port, 5, interval=0.1, timeout=0.1)]
        async with ModbusCollector(
            ingestor, lambda: targets, failures_before_unreachable=3, backoff_cap_s=0.4
        ) as collector:
            await until(
                lambda: collector.status("pm-flaky")["state"] == "unreachable", 3, "unreachable"
            )
            status = collector.status("pm-flaky")
            assert status["consecutive_failures"] == 3
            assert status["last_ok"] is None
            assert "no answer within 0.1 s" in status["last_error"]
            await asyncio.sleep(1.0)  # retried on the backoff schedule, still unreachable
            assert collector.stats.became_unreachable == 1
            unit.silent = False
            await until(lambda: collector.status("pm-flaky")["state"] == "ok", 3, "recovered")
            assert collector.status("pm-flaky")["last_ok"] is not None
            assert collector.stats.recovered == 1
        readings = await spooled(ingestor.spool)
    messages = [r.getMessage() for r in caplog.records if r.name == COLLECTOR_LOG]
    assert sum("unreachable after 3 failed polls" in m for m in messages) == 1, messages
    assert sum("answers again" in m for m in messages) == 1, messages
    assert readings["pm-flaky"][0] == PM_VALUES


async def test_exception_responses_are_reported_with_device_function_and_registers(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=COLLECTOR_LOG)
    unit = SimulatedUnit(9, WQ, exception_code=2)
    async with ModbusDeviceServer([unit]) as gateway:
        targets = [target("wq-misconfigured", WQ, gateway.port, 9, interval=0.1)]
        async with ModbusCollector(ingestor, lambda: targets, backoff_cap_s=0.2) as collector:
            await until(lambda: collector.stats.exceptions[2] >= 3, 3, "three exception replies")
            status = collector.status("wq-misconfigured")
            assert status["state"] == "failing"  # it answers: reachable, but wrong
            assert "exception 2 (illegal data address)" in status["last_error"]
            unit.exception_code = 6
            await until(lambda: collector.stats.exceptions[6] >= 1, 3, "a busy reply")
            unit.exception_code = None
            await until(
                lambda: collector.status("wq-misconfigured")["state"] == "ok", 3, "clean again"
            )
            assert collector.stats.became_unreachable == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    illegal = [m for m in warnings if "illegal data address" in m]
    assert illegal == [
        f"Modbus device wq-misconfigured (tcp 127.0.0.1:{gateway.port} unit 9) answered "
        "exception 2 (illegal data address) to function 4 (read input registers), "
        "registers 0..9"
    ]  # once, although it happened at every poll
    assert sum("exception 6 (server device busy)" in m for m in warnings) == 1
    assert any("polls cleanly again" in r.getMessage() for r in caplog.records)


async def test_target_list_changes_are_picked_up_without_restart(ingestor: Ingestor) -> None:
    units = [SimulatedUnit(i, WQ) for i in (1, 2, 3)]
    async with ModbusDeviceServer(units) as gateway:
        current = [target("wq-a", WQ, gateway.port, 1, interval=0.1)]
        registry_down = False

        def source() -> list[ModbusTarget]:
            if registry_down:
                raise RuntimeError("registry down")
            return list(current)

        async with ModbusCollector(ingestor, source, refresh_s=0.1) as collector:
            await until(lambda: units[0].requests >= 2, 2, "wq-a polled")
            current.append(target("wq-b", WQ, gateway.port, 2, interval=0.1))
            await until(lambda: units[1].requests >= 2, 2, "added wq-b polled")
            # wq-a removed; wq-b re-wired to unit 3
            current[:] = [target("wq-b", WQ, gateway.port, 3, interval=0.1)]
            await until(lambda: units[2].requests >= 2, 2, "wq-b polled at its new unit id")
            assert collector.devices() == ["wq-b"]
            frozen = (units[0].requests, units[1].requests)
            await asyncio.sleep(0.4)
            assert (units[0].requests, units[1].requests) == frozen  # nobody polls them now
            with pytest.raises(KeyError, match="wq-a"):
                collector.status("wq-a")
            # a failing source keeps the current list
            current.clear()
            registry_down = True
            await asyncio.sleep(0.3)
            assert collector.devices() == ["wq-b"]
            assert collector.status("wq-b")["state"] == "ok"


async def test_probe_shows_the_right_order_in_range_and_a_wrong_one_out() -> None:
    right = SimulatedUnit(1, WQ, values=WQ_VALUES)
    swapped = SimulatedUnit(2, WQ, values=WQ_VALUES, word_order="big")  # manual says CDAB, is ABCD
    silent = SimulatedUnit(3, WQ, silent=True)
    async with ModbusDeviceServer([right, swapped, silent]) as gateway:
        good = await probe(WQ, target("wq-1", WQ, gateway.port, 1))
        bad = await probe(WQ, target("wq-2", WQ, gateway.port, 2))
        mute = await probe(WQ, target("wq-3", WQ, gateway.port, 3, timeout=0.2))
    refused = await probe(WQ, target("wq-4", WQ, free_port(), 1))

    assert good.ok
    by_name = {q.name: q for q in good.quantities}
    turbidity = by_name["turbidity_ntu"]
    assert turbidity.configured == "CDAB"
    assert turbidity.value == 0.35
    assert turbidity.orders_in_range == {"ABCD": False, "CDAB": True, "BADC": False, "DCBA": False}
    assert by_name["ph"].registers == [721]
    assert format_report(good).count("ok") >= 5

    by_name = {q.name: q for q in bad.quantities}
    for name in ("turbidity_ntu", "conductivity_us_cm"):
        q = by_name[name]
        assert q.verdict == "wrong order?", q
        assert q.in_range is False
        assert q.orders_in_range["CDAB"] is False  # what the profile says
        assert q.orders_in_range["ABCD"] is True  # what the device does
        assert q.orders["ABCD"] == pytest.approx(WQ_VALUES[name])
    assert by_name["ph"].verdict == "ok"  # one register: word order does not matter
    assert bad.suggested_order() == "ABCD"
    text = format_report(bad)
    assert "wrong order?" in text
    assert "Hint: every value is in range as ABCD" in text

    assert mute.error is None
    assert all(q.error and "no answer within 0.2 s" in q.error for q in mute.quantities)
    assert "FAILED: no answer within 0.2 s" in format_report(mute)
    assert refused.error is not None
    assert "refused" in refused.error.lower()
    assert "ERROR: cannot connect" in format_report(refused)


async def test_rtu_on_a_serial_line(ingestor: Ingestor) -> None:
    if not socat_available():
        pytest.skip("socat is not installed (apt-get install socat): no pty pair for RTU")
    pytest.importorskip("serial", reason="pyserial is not installed: pymodbus needs it for RTU")
    units = [SimulatedUnit(1, WQ, values=WQ_VALUES), SimulatedUnit(2, PM, values=PM_VALUES)]
    with PtyPair() as (device_side, collector_side):
        line = {"baudrate": 19200, "parity": "N", "stopbits": 1}  # a pty refuses parity bits
        async with ModbusDeviceServer(units, transport="rtu", serial_port=device_side, **line):
            targets = [
                target("wq-485", WQ, 0, 1, transport="rtu", serial_port=collector_side, **line),
                target("pm-485", PM, 0, 2, transport="rtu", serial_port=collector_side, **line),
            ]
            async with ModbusCollector(ingestor, lambda: targets) as collector:
                await until(lambda: collector.stats.polls_ok >= 6, 5, "six polls over RTU")
                assert collector.status("wq-485")["endpoint"] == (f"rtu {collector_side} 19200 8N1")
            readings = await spooled(ingestor.spool)
    assert readings["wq-485"][0] == WQ_VALUES
    assert readings["pm-485"][0] == PM_VALUES
    assert collector.stats.polls_failed == 0


async def test_a_full_spool_holds_readings_then_stores_them(tmp_path: Path) -> None:
    async with Spool(tmp_path / "spool", max_bytes=8000) as spool:
        ingestor = Ingestor(
            StaticDirectory(), ReadingValidator(default_catalog()), spool, Metrics()
        )
        await spool.append([b"x" * 7900])  # leaves no room for a reading (~200 bytes)
        unit = SimulatedUnit(1, WQ, values=WQ_VALUES)
        async with ModbusDeviceServer([unit]) as gateway:
            targets = [target("wq-held", WQ, gateway.port, 1, interval=0.1)]
            async with ModbusCollector(ingestor, lambda: targets, max_held_readings=3) as collector:
                stats = collector.stats
                await until(lambda: stats.readings_dropped["spool_full"] >= 1, 3, "held, then drop")
                assert stats.readings_held == 3
                assert stats.readings_stored == 0
                rejected = ingestor.metrics.ingest.rejected
                assert rejected[("modbus", "spool_full")] == stats.readings_dropped["spool_full"]
                await spool.commit(await spool.read_batch(1))  # the blocker goes: room again
                await until(lambda: stats.readings_stored >= 3, 3, "held readings stored")
                assert stats.readings_held == 0
        readings = await spooled(spool)
    assert readings["wq-held"][0] == WQ_VALUES


async def test_water_signal_models_serve_plausible_registers() -> None:
    source = water_values(seed=7)
    units = [
        SimulatedUnit(1, WQ, device="tap-1", values=source),
        SimulatedUnit(2, PM, device="pool-1", values=source),
    ]
    async with ModbusDeviceServer(units) as gateway:
        reports = [
            await probe(WQ, target("tap-1", WQ, gateway.port, 1)),
            await probe(PM, target("pool-1", PM, gateway.port, 2)),
        ]
    for report in reports:
        assert report.ok, format_report(report)
    free_chlorine = {q.name: q.value for q in reports[0].quantities}["free_chlorine_mg_l"]
    assert free_chlorine is not None
    assert 0 < free_chlorine < 2  # a tap's residual, not the mid-range default


async def test_a_restarted_gateway_is_reconnected(
    ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=COLLECTOR_LOG)
    unit = SimulatedUnit(1, WQ, values=WQ_VALUES)
    gateway = ModbusDeviceServer([unit])
    await gateway.start()
    port = gateway.port
    targets = [target("wq-gw", WQ, port, 1, interval=0.1, timeout=0.2)]
    try:
        async with ModbusCollector(
            ingestor, lambda: targets, failures_before_unreachable=3, backoff_cap_s=0.5
        ) as collector:
            await until(lambda: collector.stats.polls_ok >= 2, 2, "polled")
            await gateway.stop()
            await until(
                lambda: collector.status("wq-gw")["state"] == "unreachable", 5, "unreachable"
            )
            assert collector.stats.connect_failures >= 1
            assert "cannot connect" in collector.status("wq-gw")["last_error"]
            gateway = ModbusDeviceServer([unit], port=port)
            await gateway.start()
            await until(lambda: collector.status("wq-gw")["state"] == "ok", 5, "reconnected")
    finally:
        await gateway.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == COLLECTOR_LOG]
    assert any(f"endpoint tcp 127.0.0.1:{port}: cannot connect" in m for m in messages), messages
    assert any("connected again" in m for m in messages), messages


def test_targets_from_registry_rows_fall_back_to_the_profile() -> None:
    info = DeviceInfo("wq-9", "t", "s", "water_probe")
    tcp = target_from_registry(info, WQ, "modbus_tcp", {"host": "10.0.0.5", "unit_id": 4})
    assert (tcp.transport, tcp.host, tcp.port, tcp.unit_id) == ("tcp", "10.0.0.5", 502, 4)
    assert (tcp.interval_s, tcp.timeout_s) == (WQ.interval_s, 1.0)
    bridged = target_from_registry(info, PM, "modbus_rtu_tcp", {"host": "gw", "port": 4001}, 30)
    assert (bridged.transport, bridged.port, bridged.interval_s, bridged.timeout_s) == (
        "rtu_over_tcp",
        4001,
        30.0,
        2.0,
    )
    rtu = target_from_registry(
        info, WQ, "modbus_rtu", {"serial_port": "/dev/ttyUSB0", "parity": "E"}
    )
    assert rtu.describe_endpoint() == "rtu /dev/ttyUSB0 9600 8E1"
    assert rtu.endpoint == ("rtu", "/dev/ttyUSB0")
    with pytest.raises(ValueError, match="needs host"):
        target_from_registry(info, WQ, "modbus_tcp", {})
    with pytest.raises(ValueError, match="not a Modbus protocol"):
        target_from_registry(info, WQ, "mqtt", {})
