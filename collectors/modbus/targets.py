"""What the Modbus collector polls: a :class:`ModbusTarget` per device, from a :data:`TargetSource`.

The platform builds targets from the registry (device, profile, protocol, connection parameters);
tests and benchmarks build lists. The collector calls the source again every ``refresh_s``, so a
device added, removed or re-wired in the registry is picked up without a restart.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from protocols.directory import DeviceInfo
from protocols.profiles import ModbusSettings, Profile

Transport = Literal["tcp", "rtu_over_tcp", "rtu"]
TRANSPORTS: tuple[Transport, ...] = get_args(Transport)
# Registry protocol names (gateway/schemas.py) → transport.
REGISTRY_PROTOCOLS: dict[str, Transport] = {
    "modbus_tcp": "tcp",
    "modbus_rtu_tcp": "rtu_over_tcp",
    "modbus_rtu": "rtu",
}


class TargetSource(Protocol):
    """Returns the current targets; may be a coroutine function (e.g. a registry query)."""

    def __call__(self) -> Sequence[ModbusTarget] | Awaitable[Sequence[ModbusTarget]]: ...


EndpointKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModbusTarget:
    """One device to poll, with the connection parameters as the registry stores them.

    ``host``/``port`` are for ``tcp`` and ``rtu_over_tcp`` (RTU frames through a TCP serial
    server); ``serial_port``, ``baudrate``, ``parity``, ``stopbits`` (and ``bytesize``) for
    ``rtu`` on a serial line of the collector's host. Every unit id behind one endpoint shares
    one connection.
    """

    device: DeviceInfo
    profile_id: str
    transport: Transport
    host: str | None = None
    port: int | None = None
    serial_port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    unit_id: int = 1
    interval_s: float = 60.0
    timeout_s: float = 1.0
    bytesize: int = 8

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"Modbus target {self.device.device!r}: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        """What is wrong with these parameters, in words (empty when they are usable)."""
        out: list[str] = []
        if self.transport not in TRANSPORTS:
            out.append(f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
        elif self.transport == "rtu":
            if not self.serial_port:
                out.append("transport rtu needs serial_port")
            if self.parity not in ("N", "E", "O"):
                out.append(f"parity {self.parity!r} is not one of N, E, O")
            if self.stopbits not in (1, 2):
                out.append(f"stopbits {self.stopbits!r} is not 1 or 2")
            if self.bytesize not in (7, 8):
                out.append(f"bytesize {self.bytesize!r} is not 7 or 8")
            if self.baudrate <= 0:
                out.append(f"baudrate {self.baudrate!r} must be positive")
        else:
            if not self.host:
                out.append(f"transport {self.transport} needs host")
            if self.port is None or not 1 <= self.port <= 65535:
                out.append(f"transport {self.transport} needs port 1..65535, got {self.port!r}")
        if not 0 <= self.unit_id <= 255:
            out.append(f"unit_id {self.unit_id!r} is not within 0..255")
        for name in ("interval_s", "timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                out.append(f"{name} {value!r} must be a positive number")
        return out

    @property
    def endpoint(self) -> EndpointKey:
        """The connection this target shares with every other unit behind the same gateway/line."""
        if self.transport == "rtu":
            return ("rtu", str(self.serial_port))
        return (self.transport, str(self.host), str(self.port))

    def describe_endpoint(self) -> str:
        if self.transport == "rtu":
            return (
                f"rtu {self.serial_port} {self.baudrate} "
                f"{self.bytesize}{self.parity}{self.stopbits}"
            )
        return f"{self.transport} {self.host}:{self.port}"


def target_from_registry(
    device: DeviceInfo,
    profile: Profile,
    protocol: str,
    connection: Mapping[str, Any],
    interval_s: float | None = None,
) -> ModbusTarget:
    """A target from a registry row: unset connection parameters fall back to the profile's.

    ``protocol`` is the registry's (``modbus_tcp``, ``modbus_rtu_tcp``, ``modbus_rtu``);
    ``connection`` holds ``host``, ``port``, ``unit_id``, ``timeout_s`` or ``serial_port``,
    ``baudrate``, ``parity``, ``stopbits``, ``bytesize`` (see docs/modbus.md).
    """
    try:
        transport = REGISTRY_PROTOCOLS[protocol]
    except KeyError:
        known = ", ".join(REGISTRY_PROTOCOLS)
        raise ValueError(f"protocol {protocol!r} is not a Modbus protocol ({known})") from None
    settings = profile.modbus or ModbusSettings()

    def pick(key: str, default: Any) -> Any:
        value = connection.get(key)
        return default if value is None else value

    return ModbusTarget(
        device=device,
        profile_id=profile.id,
        transport=transport,
        host=connection.get("host") if transport != "rtu" else None,
        port=int(pick("port", settings.tcp_port)) if transport != "rtu" else None,
        serial_port=connection.get("serial_port") if transport == "rtu" else None,
        baudrate=int(pick("baudrate", settings.serial.baudrate)),
        parity=str(pick("parity", settings.serial.parity)),
        stopbits=int(pick("stopbits", settings.serial.stopbits)),
        bytesize=int(pick("bytesize", settings.serial.bytesize)),
        unit_id=int(pick("unit_id", settings.unit_id)),
        interval_s=float(interval_s if interval_s is not None else profile.interval_s),
        timeout_s=float(pick("timeout_s", settings.timeout_s)),
    )
