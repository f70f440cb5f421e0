"""One Modbus connection (TCP, RTU framing over TCP, or RTU on a serial line) and its read errors.

Shared by the collector and the onboarding probe. Timeouts are ours, per request, not pymodbus's:
units behind one gateway have different ``timeout_s``, and pymodbus has one timeout per client.
pymodbus's own retries and reconnects are off, so the collector alone decides when to try again
(per device, with backoff) and the library never starts background tasks we would have to reap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from collectors.modbus.targets import ModbusTarget

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# A gateway's way of saying "the unit behind me is silent": a missing device, not a bad request.
SILENT_CODES = frozenset({10, 11})
FUNCTION_NAMES = {3: "read holding registers", 4: "read input registers"}
_BACKSTOP_S = 120.0  # pymodbus's own timeout: never reached, ours fires first


def exception_name(code: int) -> str:
    return EXCEPTION_NAMES.get(code, f"exception code {code}")


def describe_read(function: int, start: int, count: int) -> str:
    """``function 4 (read input registers), registers 0..9``: how a person finds it in a manual."""
    name = FUNCTION_NAMES.get(function, "read")
    return f"function {function} ({name}), registers {start}..{start + count - 1}"


class ReadError(Exception):
    """A read that produced no registers; ``str()`` says why, for a person."""


class NoAnswer(ReadError):
    """Nothing usable came back: timeout, no connection, a broken frame, or a silent unit."""


class ExceptionReply(ReadError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, function: int, start: int, count: int) -> None:
        self.code = code
        self.function = function
        self.start = start
        self.count = count
        super().__init__(
            f"exception {code} ({exception_name(code)}) to {describe_read(function, start, count)}"
        )

    @property
    def silent(self) -> bool:
        """The gateway answered for a unit that did not: counts as no answer."""
        return self.code in SILENT_CODES


def _serial_problem(port: str) -> str:
    if not os.path.exists(port):
        return f"no such serial port {port}"
    if not os.access(port, os.R_OK | os.W_OK):
        return f"no permission to open {port}"
    return f"cannot open {port} (in use by another program?)"


class ModbusLink:
    """A lazily opened pymodbus client for one endpoint; reconnects on the read after a loss."""

    def __init__(self, target: ModbusTarget) -> None:
        self.label = target.describe_endpoint()
        self._target = target
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        t = self._target
        if t.transport == "rtu":
            try:
                return AsyncModbusSerialClient(
                    str(t.serial_port),
                    framer=FramerType.RTU,
                    baudrate=t.baudrate,
                    bytesize=t.bytesize,
                    parity=t.parity,
                    stopbits=t.stopbits,
                    timeout=_BACKSTOP_S,
                    retries=0,
                    reconnect_delay=0,
                )
            except RuntimeError as exc:  # pyserial missing
                raise NoAnswer(f"cannot open {self.label}: {exc}") from None
        return AsyncModbusTcpClient(
            str(t.host),
            port=int(t.port or 502),
            framer=FramerType.RTU if t.transport == "rtu_over_tcp" else FramerType.SOCKET,
            timeout=_BACKSTOP_S,
            retries=0,
            reconnect_delay=0,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self, timeout_s: float) -> None:
        """Open the connection, or raise :class:`NoAnswer` saying why (refused, no such port …)."""
        if self.connected:
            return
        self.close()
        client = self._client = self._make_client()
        ok = False
        try:
            async with asyncio.timeout(timeout_s):
                ok = await client.connect()
        except TimeoutError:
            self.close()
            raise NoAnswer(
                f"cannot connect to {self.label}: no connection within {timeout_s:g} s"
            ) from None
        if not ok:
            self.close()
            reason = await self._diagnose(timeout_s)
            raise NoAnswer(f"cannot connect to {self.label}: {reason}")

    async def _diagnose(self, timeout_s: float) -> str:
        """Why the connection failed: pymodbus only logs it, and a person needs the reason."""
        t = self._target
        if t.transport == "rtu":
            return _serial_problem(str(t.serial_port))
        try:
            async with asyncio.timeout(timeout_s):
                _reader, writer = await asyncio.open_connection(t.host, t.port)
        except TimeoutError:
            return f"no connection within {timeout_s:g} s"
        except OSError as exc:  # asyncio's strerror is "Connect call failed (...)": use errno
            return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return "the connection failed once and worked when tried again"

    async def read(
        self, function: int, start: int, count: int, unit: int, timeout_s: float
    ) -> list[int]:
        """``count`` registers from ``start``; raises ExceptionReply or NoAnswer."""
        client = self._client
        if client is None or not client.connected:
            raise NoAnswer(f"not connected to {self.label}")
        call = client.read_input_registers if function == 4 else client.read_holding_registers
        try:
            async with asyncio.timeout(timeout_s):
                response = await call(start, count=count, device_id=unit)
        except TimeoutError:
            raise NoAnswer(
                f"no answer within {timeout_s:g} s to {describe_read(function, start, count)}"
            ) from None
        except ModbusException as exc:
            raise NoAnswer(f"{describe_read(function, start, count)}: {exc}") from None
        if response.isError():
            raise ExceptionReply(
                int(getattr(response, "exception_code", 0)), function, start, count
            )
        registers = response.registers
        if len(registers) < count:
            raise NoAnswer(
                f"{describe_read(function, start, count)}: short answer, "
                f"{len(registers)} of {count} registers"
            )
        return registers

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
