"""Simulated Modbus devices: many unit ids behind one pymodbus server, with faults on purpose.

One :class:`ModbusDeviceServer` is one gateway or serial line: a pymodbus server on a TCP port
(Modbus TCP framing, or RTU framing over TCP like a serial device server) or on a serial port
(RTU), answering for every :class:`SimulatedUnit` given to it. Each unit is a device with a
profile; its registers hold what ``profile.encode_registers`` makes of the values its value source
returns, refreshed every ``update_s`` (lazily, when read). A unit's faults may be changed while it
runs, which is how tests take a device away and bring it back:

* ``silent``: never answers (the collector times out);
* ``exception_code``: answers every read with that Modbus exception (2 illegal address, 6 busy …);
* ``delay_s``: answers that much later;
* ``byte_order`` / ``word_order``: serves every value in that order instead of the profile's,
  like a device whose manual is wrong (what the onboarding probe is for).

An unknown unit id gets exception 11 (gateway target failed to respond) from a TCP server, as a
real gateway answers, and silence on an RTU line, as a real bus does.

:class:`PtyPair` starts ``socat`` for two connected pseudo-terminals: a serial line without
hardware. Run ``python -m simulators.modbus_device --help`` for a server from the command line
(the benchmark uses it to keep the simulator's CPU out of the collector's process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from protocols.profiles import Profile
from protocols.registers import Order, RegisterField

ValueSource = Callable[["SimulatedUnit", float], Mapping[str, float]]
"""``(unit, unix time) -> {quantity: value}``; quantities left out keep their last value."""

Transport = Literal["tcp", "rtu_over_tcp", "rtu"]


def midrange_values(unit: SimulatedUnit, t: float) -> dict[str, float]:
    """A constant reading in the middle of each quantity's range, on the resolution grid."""
    out = {}
    for name in unit.fields:
        entry = unit.profile.quantities[name]
        low, high = entry.range or (0.0, 1.0)
        out[name] = _snap((low + high) / 2, entry.resolution)
    return out


def wave_values(period_s: float = 600.0, depth: float = 0.2) -> ValueSource:
    """Each quantity swings ±``depth`` of its range around the middle, phase set by the unit id.

    Cheap (the benchmark serves 10,000 units with it) and never leaves the instrument's range.
    """

    def source(unit: SimulatedUnit, t: float) -> dict[str, float]:
        out = {}
        phase = (unit.unit_id * 0.618) % 1.0
        for i, name in enumerate(unit.fields):
            entry = unit.profile.quantities[name]
            low, high = entry.range or (0.0, 1.0)
            swing = math.sin(2 * math.pi * (t / period_s + phase + i / 7))
            out[name] = _snap((low + high) / 2 + depth * (high - low) / 2 * swing, entry.resolution)
        return out

    return source


def water_values(seed: int = 0, **spec: Any) -> ValueSource:
    """Values from the water signal models (simulators/water/signal.py), one model per unit.

    A ``water_probe`` unit gets :class:`WaterProbeSignal` (``site`` in ``spec``, default
    ``tap``), a ``pool_monitor`` unit :class:`PoolSignal`; other keywords go to the spec. Each
    unit's model is seeded from ``seed`` and its device name, so every unit reads differently.
    """
    from simulators.water.signal import PoolSignal, PoolSpec, WaterProbeSignal, WaterProbeSpec

    models: dict[int, Any] = {}

    def source(unit: SimulatedUnit, t: float) -> dict[str, float]:
        model = models.get(id(unit))
        if model is None:
            unit_seed = seed ^ zlib.crc32(unit.device.encode())
            if unit.profile.kind == "pool_monitor":
                model = PoolSignal(PoolSpec(**spec), unit_seed)
            else:
                options = {"site": "tap", **spec}
                model = WaterProbeSignal(WaterProbeSpec.for_site(**options), unit_seed)
            models[id(unit)] = model
        sample = model.sample_ts(t)
        return {name: sample[name] for name in unit.fields if name in sample}

    return source


def _snap(value: float, resolution: float | None) -> float:
    if not resolution:
        return value
    return round(round(value / resolution) * resolution, 10)


class SimulatedUnit:
    """One device behind a simulated gateway; change the fault attributes at any time."""

    def __init__(
        self,
        unit_id: int,
        profile: Profile,
        *,
        device: str | None = None,
        values: ValueSource | Mapping[str, float] | None = None,
        update_s: float = 1.0,
        silent: bool = False,
        exception_code: int | None = None,
        delay_s: float = 0.0,
        byte_order: Order | None = None,
        word_order: Order | None = None,
    ) -> None:
        if not 1 <= unit_id <= 255:  # 248..255 only behind TCP gateways; RTU stops at 247
            raise ValueError(f"unit id {unit_id} is not within 1..255")
        if not profile.registers:
            raise ValueError(f"profile {profile.id} has no register map")
        self.unit_id = unit_id
        self.profile = profile
        self.device = device or f"{profile.id}-{unit_id}"
        self.update_s = update_s
        self.silent = silent
        self.exception_code = exception_code
        self.delay_s = delay_s
        self.requests = 0  # reads this unit received (answered or not)
        self.fields: dict[str, RegisterField] = {}
        self._source: ValueSource
        if values is None:
            self._source = midrange_values
        elif callable(values):
            self._source = values
        else:
            fixed = dict(values)
            self._source = lambda unit, t: fixed
        self.values: dict[str, float] = {}
        self._updated = -math.inf
        self._orders: tuple[Order | None, Order | None] = (byte_order, word_order)
        self._encoded: dict[int, dict[int, int]] = {3: {}, 4: {}}
        self._stale = {3: True, 4: True}
        self._build_fields()

    # -- register map ------------------------------------------------------------------------

    @property
    def byte_order(self) -> Order | None:
        return self._orders[0]

    @byte_order.setter
    def byte_order(self, order: Order | None) -> None:
        self._orders = (order, self._orders[1])
        self._build_fields()

    @property
    def word_order(self) -> Order | None:
        return self._orders[1]

    @word_order.setter
    def word_order(self, order: Order | None) -> None:
        self._orders = (self._orders[0], order)
        self._build_fields()

    def _build_fields(self) -> None:
        byte_order, word_order = self._orders
        fields = {}
        for name, f in self.profile.register_fields.items():
            fields[name] = dataclasses.replace(
                f,
                byte_order=byte_order or f.byte_order,
                word_order=word_order or f.word_order,
            )
        self.fields = fields
        self._updated = -math.inf  # re-encode on the next read

    def set_values(self, values: Mapping[str, float]) -> None:
        """Serve these values from now on (until the value source runs again)."""
        self.values.update(values)
        self._encode()

    def _refresh(self, now: float) -> None:
        self._updated = now
        self.values.update(self._source(self, time.time()))
        self._encode()

    def _encode(self) -> None:
        encoded: dict[int, dict[int, int]] = {3: {}, 4: {}}
        for name, value in self.values.items():
            f = self.fields.get(name)
            if f is None:
                continue
            low, high = f.value_bounds()
            for i, word in enumerate(f.encode(min(max(value, low), high))):
                encoded[f.function][f.address + i] = word
        self._encoded = encoded
        self._stale = {3: True, 4: True}

    def registers(self, function: int) -> dict[int, int]:
        """address → register value as currently served for ``function`` (3 or 4)."""
        return dict(self._encoded[function])

    def sim_device(self) -> SimDevice:
        """The pymodbus device: each function's span of the map, unmapped addresses refused."""
        blocks: dict[int, list[SimData]] = {}
        for function in (3, 4):
            spans = [f for f in self.profile.register_fields.values() if f.function == function]
            if spans:
                start = min(f.address for f in spans)
                end = max(f.end for f in spans)
                blocks[function] = [
                    SimData(start, values=[0] * (end - start), datatype=DataType.REGISTERS)
                ]
            else:
                blocks[function] = [SimData(0, datatype=DataType.INVALID)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.unit_id,
            simdata=(bits, list(bits), blocks[3], blocks[4]),
            action=self._action,
        )

    async def _action(
        self,
        function: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before answering; it is where the faults and the updates live."""
        self.requests += 1
        if self.silent:
            raise NoSuchIdException(f"unit {self.unit_id} is silent")  # the server stays mute
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.exception_code is not None:
            return ExcCodes(self.exception_code)
        if function in (3, 4):
            now = time.monotonic()
            if now - self._updated >= self.update_s:
                self._refresh(now)
            if self._stale[function]:
                for addr, word in self._encoded[function].items():
                    registers[addr - start] = word
                self._stale[function] = False
        return None


async def _no_such_unit(*_args: Any) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE


async def _silent_unit(*_args: Any) -> ExcCodes | None:
    raise NoSuchIdException("no such unit on this line")


class ModbusDeviceServer:
    """One simulated gateway (TCP) or serial line (RTU) answering for many units.

    ``port=0`` picks a free port; read :attr:`port` after start. An async context manager.
    """

    def __init__(
        self,
        units: Iterable[SimulatedUnit],
        *,
        transport: Transport = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        self.units: dict[int, SimulatedUnit] = {}
        for unit in units:
            if unit.unit_id in self.units:
                raise ValueError(f"unit id {unit.unit_id} appears twice")
            self.units[unit.unit_id] = unit
        if transport == "rtu" and not serial_port:
            raise ValueError("an RTU server needs serial_port")
        self.transport = transport
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self._line = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def unit(self, unit_id: int) -> SimulatedUnit:
        return self.units[unit_id]

    async def start(self) -> None:
        catch_all = SimDevice(  # every address valid, so the action (not the map) answers
            0,
            simdata=[SimData(0, count=65536, datatype=DataType.REGISTERS)],
            action=_silent_unit if self.transport != "tcp" else _no_such_unit,
        )
        devices = [u.sim_device() for u in self.units.values()] + [catch_all]
        if self.transport == "rtu":
            server: ModbusTcpServer | ModbusSerialServer = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=str(self.serial_port),
                ignore_missing_devices=True,
                **self._line,  # type: ignore[arg-type]
            )
        else:
            server = ModbusTcpServer(
                devices,
                framer=FramerType.SOCKET if self.transport == "tcp" else FramerType.RTU,
                address=(self.host, self.port),
                ignore_missing_devices=True,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self.transport != "rtu":
            listener: Any = server.transport
            self.port = int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports' close callbacks run

    async def __aenter__(self) -> ModbusDeviceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- a serial line without hardware ------------------------------------------------------------

_PTY_LINE = re.compile(r"PTY is (\S+)")


def socat_available() -> bool:
    return shutil.which("socat") is not None


class PtyPair:
    """Two pseudo-terminals wired together by ``socat``: what one writes, the other reads.

    ``with PtyPair() as (a, b):`` serve RTU on ``a``, poll on ``b``. The process is ended and
    its pipe closed on exit.
    """

    def __init__(self, socat: str = "socat") -> None:
        self.socat = socat
        self.paths: tuple[str, str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None

    def open(self, timeout_s: float = 5.0) -> tuple[str, str]:
        if shutil.which(self.socat) is None:
            raise FileNotFoundError(f"{self.socat} is not installed (apt-get install socat)")
        proc = self._proc = subprocess.Popen(
            [self.socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        text = ""
        deadline = time.monotonic() + timeout_s
        try:
            # Unbuffered reads: a buffered readline would hide lines from select().
            while "starting data transfer loop" not in text:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError(f"socat gave no pty pair within {timeout_s:g} s: {text!r}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"socat exited ({proc.wait()}): {text!r}")
                text += chunk.decode(errors="replace")
            found = _PTY_LINE.findall(text)
            if len(found) != 2:
                raise RuntimeError(f"socat did not name two ptys: {text!r}")
        except BaseException:
            self.close()
            raise
        # socat may log more (e.g. on close): keep reading so it never blocks on a full pipe.
        self._drain = threading.Thread(target=_drain, args=(proc.stderr,), daemon=True)
        self._drain.start()
        self.paths = (found[0], found[1])
        return self.paths

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
            self._drain = None
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> tuple[str, str]:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        for _ in stream:
            pass


# -- command line: a fleet of gateways in its own process --------------------------------------


def build_fleet(
    profile: Profile,
    endpoints: int,
    units_per_endpoint: int,
    *,
    values: ValueSource | None = None,
    update_s: float = 5.0,
) -> list[list[SimulatedUnit]]:
    """``endpoints`` lists of units with ids 1..units_per_endpoint (at most 255 per endpoint)."""
    if not 1 <= units_per_endpoint <= 255:
        raise ValueError("units per endpoint must be within 1..255")
    source = values or wave_values()
    return [
        [
            SimulatedUnit(
                unit_id,
                profile,
                device=f"{profile.id}-{e:03d}-{unit_id:03d}",
                values=source,
                update_s=update_s,
            )
            for unit_id in range(1, units_per_endpoint + 1)
        ]
        for e in range(endpoints)
    ]


async def _serve(args: argparse.Namespace) -> None:
    from protocols.profiles import load_profiles

    profile = load_profiles()[args.profile]
    fleet = build_fleet(profile, args.endpoints, args.units, update_s=args.update_s)
    servers = [
        ModbusDeviceServer(units, transport=args.transport, host=args.host) for units in fleet
    ]
    for server in servers:
        await server.start()
    # Thousands of long-lived register maps: keep them out of the cyclic GC's full collections,
    # whose pauses would otherwise show up as answers late by tens of milliseconds.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closing our stdin stops us too
    print(json.dumps({"host": args.host, "ports": [s.port for s in servers]}), flush=True)
    await stop.wait()
    loop.remove_reader(sys.stdin.fileno())
    for server in servers:
        await server.stop()
    total = sum(u.requests for units in fleet for u in units)
    print(json.dumps({"requests": total}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve simulated Modbus devices until stdin closes or SIGTERM. Prints "
        '{"host": ..., "ports": [...]} when ready.'
    )
    parser.add_argument("--profile", default="water_probe_wq500")
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--units", type=int, default=10, help="unit ids 1..N per endpoint")
    parser.add_argument("--transport", choices=["tcp", "rtu_over_tcp"], default="tcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--update-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
