"""Run a scenario against a running platform: onboard through the registry, then drive every
device over its own protocol, with its faults, printing achieved against intended rates.

``run_scenario`` is what ``weijian simulate SCENARIO`` calls (``simulators/cli.py``). The order:

1. the scenario is planned from a start time (simulated time; with ``speed`` > 1 it starts in the
   past so that no timestamp ever runs ahead of the platform's clock) and every protocol it uses
   gets a runner — a protocol without one fails here, before anything is registered;
2. runners that serve (Modbus servers) bind now, so their addresses go into the registry;
3. ``simulators.onboarding.onboard`` imports tenants, sites and devices and returns the secrets;
4. the ground truth of every fault that falls inside the run is written (``simulators/faults.py``);
5. every runner starts; a report line per protocol is printed every ``report_every_s``;
6. after ``duration`` (or Ctrl-C) everything stops and drains.

A runner is a small adapter per protocol (:class:`ProtocolRunner`) around that protocol's device
side: ``MqttFleet`` (``mqtt_device.py``), ``ModbusDeviceServer`` (``modbus_device.py``),
``Hj212Station`` (``hj212_station.py``) and ``CoapFleet`` (``coap_device.py``). Each takes
:class:`~simulators.scenario.SimDevice` objects and asks them ``emit(t)`` on its schedule, so
faults look the same on every wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import importlib
import logging
import random
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TextIO

import orjson

from simulators.faults import Malformed, ground_truth, write_ground_truth
from simulators.mqtt_device import AcceleratedClock, MqttFleet
from simulators.onboarding import DeviceAccount, onboard
from simulators.scenario import Scenario, SimDevice, load_scenario, mqtt_devices

log = logging.getLogger(__name__)


class RunnerError(RuntimeError):
    """A scenario cannot run: a protocol without a runner, a missing credential, …"""


@dataclass(frozen=True)
class RunContext:
    """Where the platform listens, and the simulated clock every runner shares."""

    clock: Callable[[], datetime]
    speed: float = 1.0
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    hj212_host: str = "127.0.0.1"
    hj212_port: int = 9212
    modbus_bind: str = "127.0.0.1"  # where the simulated Modbus servers listen
    modbus_public_host: str | None = None  # the address the collector uses (default: bind)
    seed: int = 0


@dataclass(frozen=True)
class RunnerRates:
    """Achieved vs intended, since the runner started."""

    protocol: str
    devices: int
    connected: int  # devices with a connection (polled devices: serving)
    intended_per_s: float  # messages (Modbus: polls) per second the schedule asks for
    achieved_per_s: float  # acknowledged (Modbus: polls served)
    suppressed: int = 0  # ticks faults kept silent
    malformed: int = 0  # malformed messages sent on purpose

    def line(self) -> str:
        share = 100.0 * self.achieved_per_s / self.intended_per_s if self.intended_per_s else 0.0
        return (
            f"{self.protocol}: {self.connected}/{self.devices} up, {self.achieved_per_s:.1f}/s "
            f"achieved of {self.intended_per_s:.1f}/s intended ({share:.0f} %)"
            + (f", {self.suppressed} silent ticks" if self.suppressed else "")
            + (f", {self.malformed} malformed" if self.malformed else "")
        )


class ProtocolRunner(ABC):
    """Drives a scenario's devices of one protocol. Lifecycle: ``prepare`` (before onboarding:
    connection parameters for the registry), ``start(accounts)``, ``rates()``, ``stop()``."""

    protocols: ClassVar[tuple[str, ...]]
    credential_kind: ClassVar[str | None] = None

    def __init__(self, devices: Sequence[SimDevice], ctx: RunContext) -> None:
        self.devices = list(devices)
        self.ctx = ctx

    async def prepare(self) -> dict[str, dict[str, Any]]:
        """Registry connection parameters per device id (Modbus host/port/unit; HJ 212 MN)."""
        return {}

    @abstractmethod
    async def start(self, accounts: Mapping[str, DeviceAccount]) -> None: ...

    @abstractmethod
    def rates(self) -> RunnerRates: ...

    @abstractmethod
    async def stop(self) -> None: ...

    def secret(self, accounts: Mapping[str, DeviceAccount], device: str) -> DeviceAccount:
        account = accounts.get(device)
        if account is None:
            raise RunnerError(f"{device}: no {self.credential_kind} credential from onboarding")
        return account


# ---- MQTT ---------------------------------------------------------------------------------------


class MqttRunner(ProtocolRunner):
    protocols = ("mqtt",)
    credential_kind = "mqtt"

    def __init__(self, devices: Sequence[SimDevice], ctx: RunContext, **fleet_options: Any):
        super().__init__(devices, ctx)
        self.fleet_options = fleet_options
        self.fleet: MqttFleet | None = None

    async def start(self, accounts: Mapping[str, DeviceAccount]) -> None:
        declared = mqtt_devices(
            self.devices, lambda d, _t, _s: self.secret(accounts, d), speed=self.ctx.speed
        )
        options = {"keep_acked_seqs": False, "seed": self.ctx.seed, **self.fleet_options}
        self.fleet = MqttFleet(
            declared,
            self.ctx.mqtt_host,
            self.ctx.mqtt_port,
            time_source=self.ctx.clock,
            **options,
        )
        await self.fleet.start()

    def rates(self) -> RunnerRates:
        assert self.fleet is not None
        r = self.fleet.rates()
        stats = self.fleet.stats().values()
        return RunnerRates(
            "mqtt",
            r.devices,
            r.connected,
            r.intended_msgs_per_s,
            r.acked_msgs_per_s,
            sum(s.suppressed for s in stats),
            sum(s.malformed for s in stats),
        )

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()


# ---- Modbus -------------------------------------------------------------------------------------

UNITS_PER_SERVER = 247  # unit ids 1..247 on one port, as on one RS-485 line behind a gateway


class ModbusRunner(ProtocolRunner):
    """One ``ModbusDeviceServer`` per 247 devices, each on a free port. Registers are filled from
    ``emit`` at the simulated time whenever the collector polls; a dropout or an intermittent
    link makes the unit silent (the collector times out), which a 1 s ticker switches."""

    protocols = ("modbus_tcp", "modbus_rtu_tcp")

    def __init__(self, devices: Sequence[SimDevice], ctx: RunContext) -> None:
        super().__init__(devices, ctx)
        self.servers: list[Any] = []
        self.units: list[tuple[Any, SimDevice]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._t0 = self._requests0 = 0.0

    async def prepare(self) -> dict[str, dict[str, Any]]:
        md = importlib.import_module("simulators.modbus_device")
        from protocols.profiles import load_profiles

        profiles = load_profiles()
        connections: dict[str, dict[str, Any]] = {}
        clock = self.ctx.clock
        for protocol in self.protocols:
            group = [d for d in self.devices if d.protocol == protocol]
            for first in range(0, len(group), UNITS_PER_SERVER):
                units = []
                for unit_id, device in enumerate(group[first : first + UNITS_PER_SERVER], 1):
                    unit = md.SimulatedUnit(
                        unit_id,
                        profiles[device.profile],
                        device=device.id,
                        values=_modbus_source(device, clock),
                        update_s=min(device.interval_s / self.ctx.speed, 5.0),
                    )
                    units.append(unit)
                    self.units.append((unit, device))
                transport = "tcp" if protocol == "modbus_tcp" else "rtu_over_tcp"
                server = md.ModbusDeviceServer(
                    units, transport=transport, host=self.ctx.modbus_bind
                )
                await server.start()
                self.servers.append(server)
                host = self.ctx.modbus_public_host or self.ctx.modbus_bind
                for unit in units:
                    connections[unit.device] = {
                        "host": host,
                        "port": server.port,
                        "unit_id": unit.unit_id,
                    }
        return connections

    async def start(self, accounts: Mapping[str, DeviceAccount]) -> None:
        self._t0 = time.monotonic()
        self._requests0 = sum(u.requests for u, _ in self.units)
        if any(d.faults for _, d in self.units):
            self._ticker = asyncio.get_running_loop().create_task(self._switch_faults())

    async def _switch_faults(self) -> None:
        """Silence units whose device is in a dropout or a link outage, now (simulated time)."""
        faulted = [(u, d) for u, d in self.units if d.faulted is not None]
        while True:
            ts = self.ctx.clock().timestamp()
            for unit, device in faulted:
                unit.silent = device.emit_ts(ts) is None
            await asyncio.sleep(1.0)

    def rates(self) -> RunnerRates:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        served = sum(u.requests for u, _ in self.units) - self._requests0
        silent = sum(1 for u, _ in self.units if u.silent)
        return RunnerRates(
            "modbus",
            len(self.units),
            len(self.units) - silent,
            sum(self.ctx.speed / d.interval_s for _, d in self.units),
            served / elapsed,
        )

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self.servers:
            await server.stop()


def _modbus_source(device: SimDevice, clock: Callable[[], datetime]) -> Callable[[Any, float], Any]:
    def source(unit: Any, _t: float) -> dict[str, float]:
        out = device.emit_ts(clock().timestamp())
        if out is None or isinstance(out, Malformed):
            return {}  # keep the last values; the ticker silences the unit
        return {q: v for q, v in out[1].items() if q in unit.fields}

    return source


# ---- HJ 212 -------------------------------------------------------------------------------------


def station_mn(device: str) -> str:
    """A 24-hex-digit MN (EPC-96 shaped) derived from the device id, stable across runs."""
    a = zlib.crc32(device.encode())
    b = zlib.crc32(f"mn/{device}".encode())
    return f"0100A890{a:08X}{b:08X}"


class Hj212Runner(ProtocolRunner):
    """One ``Hj212Station`` (data logger) per device, each on its own schedule: real-time data
    (CN 2011) from ``emit``; a malformed message is a frame with a wrong CRC; silence is no
    packet. The PW is the ``hj212`` credential, the MN derived from the device id."""

    protocols = ("hj212",)
    credential_kind = "hj212"

    def __init__(self, devices: Sequence[SimDevice], ctx: RunContext) -> None:
        super().__init__(devices, ctx)
        self.stations: list[tuple[Any, SimDevice]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.sent = 0
        self.suppressed = 0
        self.malformed = 0
        self._t0 = 0.0

    async def prepare(self) -> dict[str, dict[str, Any]]:
        importlib.import_module("simulators.hj212_station")
        return {d.id: {"mn": station_mn(d.id)} for d in self.devices}

    async def start(self, accounts: Mapping[str, DeviceAccount]) -> None:
        hs = importlib.import_module("simulators.hj212_station")
        from protocols.profiles import load_profiles

        profiles = load_profiles()
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        for i, device in enumerate(self.devices):
            settings = profiles[device.profile].hj212
            codes = dict(settings.codes) if settings is not None else {}
            current: dict[str, Any] = {}
            station = hs.Hj212Station(
                station_mn(device.id),
                self.secret(accounts, device.id).password,
                codes,
                lambda _t, current=current: current,
                interval_s=device.interval_s / self.ctx.speed,
            )
            self.stations.append((station, device))
            phase = station.interval_s * i / max(len(self.devices), 1)
            self.tasks.append(loop.create_task(self._run(station, device, current, phase)))

    async def _run(
        self, station: Any, device: SimDevice, current: dict[str, Any], phase: float
    ) -> None:
        hs = importlib.import_module("simulators.hj212_station")
        loop = asyncio.get_running_loop()
        start = loop.time() + phase
        k = 0
        try:
            while not self.stopping.is_set():
                delay = start + k * station.interval_s - loop.time()
                k += 1
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), delay)
                    if self.stopping.is_set():
                        break
                out = device.emit(self.ctx.clock())
                if out is None:
                    self.suppressed += 1
                    continue
                if not station.connected:
                    try:
                        await station.connect(self.ctx.hj212_host, self.ctx.hj212_port)
                    except OSError:
                        station.stats.connect_failures += 1
                        continue
                stamp = out.ts if isinstance(out, Malformed) else out[0].timestamp()
                values = out.values if isinstance(out, Malformed) else out[1]
                current.clear()
                current.update({q: v for q, v in values.items() if q in station.codes})
                packet = station.realtime_packet(stamp)
                if isinstance(out, Malformed):
                    self.malformed += 1
                    await station.write(hs.corrupt_crc(station.encode(packet)))
                else:
                    await station.send_packets([packet])
                    self.sent += 1
        finally:
            await station.close()

    def rates(self) -> RunnerRates:
        elapsed = max(asyncio.get_running_loop().time() - self._t0, 1e-9)
        replies = sum(s.stats.replies_matched for s, _ in self.stations)
        return RunnerRates(
            "hj212",
            len(self.stations),
            sum(1 for s, _ in self.stations if s.connected),
            sum(1.0 / s.interval_s for s, _ in self.stations),
            (replies or self.sent) / elapsed,
            self.suppressed,
            self.malformed,
        )

    async def stop(self) -> None:
        self.stopping.set()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- CoAP ---------------------------------------------------------------------------------------


class CoapRunner(ProtocolRunner):
    """A ``CoapFleet`` without its own schedules: this runner keeps one schedule for all
    devices and posts each device's ``emit`` with ``fleet.send`` (one message in flight per
    device), so silence and clock skew work as on every other wire."""

    protocols = ("coap",)
    credential_kind = "coap_token"

    def __init__(self, devices: Sequence[SimDevice], ctx: RunContext) -> None:
        super().__init__(devices, ctx)
        self.fleet: Any = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self.suppressed = 0
        self.malformed = 0
        self.skipped = 0

    async def start(self, accounts: Mapping[str, DeviceAccount]) -> None:
        cd = importlib.import_module("simulators.coap_device")
        declared = [
            cd.SimulatedCoapDevice(
                d.id,
                d.kind,
                self.secret(accounts, d.id).password,
                d.interval_s / self.ctx.speed,
                lambda t, d=d: d.signal.sample(t),
            )
            for d in self.devices
        ]
        self.fleet = cd.CoapFleet(
            declared, self.ctx.coap_host, self.ctx.coap_port, time_source=self.ctx.clock
        )
        await self.fleet.start(schedules=False)
        self._task = asyncio.get_running_loop().create_task(self._schedule())

    async def _schedule(self) -> None:
        cd = importlib.import_module("simulators.coap_device")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rng = random.Random(self.ctx.seed)
        heap = [
            (t0 + rng.uniform(0, d.interval_s / self.ctx.speed), i)
            for i, d in enumerate(self.devices)
        ]
        heapq.heapify(heap)
        while heap:
            due, i = heap[0]
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            device = self.devices[i]
            interval = device.interval_s / self.ctx.speed
            heapq.heapreplace(heap, (max(due + interval, loop.time()), i))
            busy = self._in_flight.get(device.id)
            if busy is not None and not busy.done():
                self.skipped += 1
                continue
            out = device.emit(self.ctx.clock())
            if out is None:
                self.suppressed += 1
                continue
            if isinstance(out, Malformed):
                self.malformed += 1
                if out.form in ("not_json", "truncated"):
                    reading = {"ts": round(out.ts, 3), "fields": dict(out.values)}
                    send = self.fleet.send(device.id, [reading], fault=cd.CoapFault.MALFORMED)
                else:
                    send = self.fleet.send(device.id, [orjson.loads(out.json_payload())])
            else:
                reading = {"ts": round(out[0].timestamp(), 3), "fields": out[1]}
                send = self.fleet.send(device.id, [reading])
            self._in_flight[device.id] = loop.create_task(send)

    def rates(self) -> RunnerRates:
        assert self.fleet is not None
        r = self.fleet.rates()
        busy = sum(1 for t in self._in_flight.values() if not t.done())
        return RunnerRates(
            "coap",
            r.devices,
            r.devices - busy,
            sum(self.ctx.speed / d.interval_s for d in self.devices),
            r.acked_msgs_per_s,
            self.suppressed,
            self.malformed,
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [t for t in self._in_flight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.stop()


# ---- the registry of runners --------------------------------------------------------------------

RUNNERS: dict[str, type[ProtocolRunner]] = {
    "mqtt": MqttRunner,
    "modbus_tcp": ModbusRunner,
    "modbus_rtu_tcp": ModbusRunner,
    "hj212": Hj212Runner,
    "coap": CoapRunner,
}
_MODULES = {
    MqttRunner: "simulators.mqtt_device",
    ModbusRunner: "simulators.modbus_device",
    Hj212Runner: "simulators.hj212_station",
    CoapRunner: "simulators.coap_device",
}


def runner_class(protocol: str) -> type[ProtocolRunner]:
    """The runner for ``protocol``; a clear error when there is none (or its device side does
    not import)."""
    cls = RUNNERS.get(protocol)
    if cls is None:
        raise RunnerError(f"no simulator runner for protocol {protocol} yet")
    try:
        importlib.import_module(_MODULES[cls])
    except ImportError as exc:
        raise RunnerError(f"no simulator runner for protocol {protocol} yet ({exc})") from exc
    return cls


def make_runners(devices: Sequence[SimDevice], ctx: RunContext) -> list[ProtocolRunner]:
    """One runner per runner class, holding every device of its protocols."""
    by_class: dict[type[ProtocolRunner], list[SimDevice]] = {}
    for device in devices:
        by_class.setdefault(runner_class(device.protocol), []).append(device)
    return [cls(group, ctx) for cls, group in by_class.items()]


# ---- run_scenario -------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What a run did: its simulated time range, the truth file, the last rates per protocol."""

    scenario: str
    start: datetime
    end: datetime | None
    ground_truth: Path | None
    faults: int
    rates: list[RunnerRates] = field(default_factory=list)
    cpu_fraction: float = 0.0


def default_truth_path(scenario: Scenario, start: datetime) -> Path:
    return Path(".weijian") / "truth" / f"{scenario.name}-{start:%Y%m%dT%H%M%SZ}.jsonl"


async def run_scenario(
    scenario: Scenario | str | Path,
    *,
    gateway_url: str,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    mqtt_host: str = "127.0.0.1",
    mqtt_port: int = 1883,
    speed: float = 1.0,
    duration: float | None = None,
    ground_truth_path: str | Path | None = None,
    start: datetime | None = None,
    report_every_s: float = 10.0,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    **endpoints: Any,
) -> RunReport:
    """Onboard the scenario through the gateway and drive every device until ``duration`` real
    seconds have passed (None: until ``stop`` is set, or forever).

    ``speed``: simulated seconds per real second. Above 1, the simulated clock starts
    ``duration × (speed − 1)`` in the past so it reaches now exactly at the end (the platform
    refuses timestamps from the future); that needs a ``duration``. ``start`` overrides it.
    ``endpoints``: ``coap_host``/``coap_port``, ``hj212_host``/``hj212_port``, ``modbus_bind``,
    ``modbus_public_host`` (see :class:`RunContext`). The ground truth goes to
    ``ground_truth_path`` (default ``.weijian/truth/<scenario>-<start>.jsonl``).
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if not speed > 0:
        raise ValueError("speed must be > 0")
    now = datetime.now(UTC)
    if start is None:
        if speed > 1:
            if duration is None:
                raise ValueError(
                    "speed > 1 needs a duration: the simulated clock starts in the past so that "
                    "it never runs ahead of the platform's"
                )
            start = now - timedelta(seconds=duration * (speed - 1))
        else:
            start = now
    write = out or sys.stdout
    clock = AcceleratedClock(start, factor=speed)
    ctx = RunContext(
        clock=clock,
        speed=speed,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        seed=scenario.seed,
        **endpoints,
    )
    planned = scenario.plan(start)
    runners = make_runners(planned, ctx)  # fails before onboarding if a protocol has no runner
    sim_end = None if duration is None else start + timedelta(seconds=duration * speed)
    report = RunReport(scenario.name, start, sim_end, None, 0)
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        connections: dict[str, dict[str, Any]] = {}
        for runner in runners:
            connections.update(await runner.prepare())
        print(
            f"onboarding {len(scenario.devices)} devices of '{scenario.name}' through "
            f"{gateway_url} …",
            file=write,
            flush=True,
        )
        accounts = await onboard(
            gateway_url,
            scenario,
            token=token,
            username=username,
            password=password,
            connections=connections,
        )
        rows = ground_truth(
            scenario.name,
            planned,
            start.timestamp(),
            None if sim_end is None else sim_end.timestamp(),
        )
        path = Path(ground_truth_path) if ground_truth_path else default_truth_path(scenario, start)
        report.ground_truth = write_ground_truth(rows, path)
        report.faults = len(rows)
        print(
            f"{len(accounts)} credentials issued; {len(rows)} faults in the ground truth "
            f"({path}); simulated time starts {start:%Y-%m-%d %H:%M:%S}Z at ×{speed:g}",
            file=write,
            flush=True,
        )
        for runner in runners:
            await runner.start(accounts)
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        stop = stop or asyncio.Event()
        while not stop.is_set():
            wait = report_every_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            _print_rates(runners, write, cpu0, t0)
    finally:
        for runner in runners:
            with contextlib.suppress(AssertionError):
                report.rates.append(runner.rates())
        for runner in runners:
            await runner.stop()
    report.cpu_fraction = (time.process_time() - cpu0) / max(time.monotonic() - t0, 1e-9)
    return report


def _print_rates(runners: Sequence[ProtocolRunner], out: TextIO, cpu0: float, t0: float) -> None:
    cpu = (time.process_time() - cpu0) / max(time.monotonic() - t0, 1e-9)
    lines = []
    for runner in runners:
        with contextlib.suppress(AssertionError):
            lines.append(runner.rates().line())
    print(
        f"[{datetime.now(UTC):%H:%M:%S}] " + "; ".join(lines) + f"; CPU {100 * cpu:.0f} %",
        file=out,
        flush=True,
    )
