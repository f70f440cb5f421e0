"""A load generator's MQTT v5 publisher: QoS 1 PUBLISH and PUBACK on asyncio streams, nothing else.

Why not paho: a benchmark on two cores measures the platform only if the load generator leaves
it the CPU. With paho (a network thread per connection, a ``Properties`` object and a lock per
message) the publishers of ``benchmarks/alerting.py`` took 0.80 of a core at 5,000 messages/s,
more than the platform under test (0.61); this publisher does the same work — one connection
per device, authenticated as that device, every message QoS 1 and its PUBACK timed — in one
event loop per process (the number is printed by the benchmark, "publishers"). It is not a
client: no reconnect, no QoS 2, no subscriptions, no session state; the platform's own MQTT code
uses paho (protocols/mqtt_loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


class MqttProtocolError(RuntimeError):
    pass


class RawPublisher:
    """One device's connection: ``await connect()``, then ``publish()`` (not a coroutine);
    ``acks`` collects each PUBACK's delay in seconds, ``sent_at`` the pending packet ids."""

    def __init__(self, client_id: str, username: str, password: str) -> None:
        self.client_id = client_id
        self.username = username
        self.password = password
        self.acks: list[float] = []
        self.sent_at: dict[int, float] = {}
        self.receive_maximum = 65535
        self.refused = 0  # publishes skipped because the broker's in-flight window was full
        self._next_id = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int, within_s: float = 10.0) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within_s)
        # MQTT 5 CONNECT: "MQTT", level 5, flags username|password|clean start, keep-alive 60 s,
        # no properties; payload: client id, username, password
        variable = _string(b"MQTT") + bytes([5, 0xC2]) + struct.pack("!H", 60) + b"\x00"
        payload = (
            _string(self.client_id.encode())
            + _string(self.username.encode())
            + _string(self.password.encode())
        )
        body = variable + payload
        writer.write(b"\x10" + _varint(len(body)) + body)
        await writer.drain()
        kind, data = await asyncio.wait_for(self._packet(reader), within_s)
        if kind != 0x20 or len(data) < 2 or data[1] != 0:
            code = data[1] if kind == 0x20 and len(data) > 1 else None
            raise MqttProtocolError(f"{self.client_id}: CONNACK refused (reason {code})")
        self._receive_maximum(data[2:])
        self._reader, self._writer = reader, writer
        self._task = asyncio.create_task(self._read_acks())

    def _receive_maximum(self, properties: bytes) -> None:
        length, i = self._read_varint(properties, 0)
        end = i + length
        while i < end:
            prop = properties[i]
            i += 1
            if prop == 0x21:  # Receive Maximum
                self.receive_maximum = struct.unpack_from("!H", properties, i)[0]
                return
            if prop in (0x24, 0x25, 0x28, 0x29, 0x2A):  # one-byte properties
                i += 1
            elif prop in (0x13, 0x22):  # two-byte integers
                i += 2
            elif prop in (0x11, 0x27):  # four-byte integers
                i += 4
            elif prop in (0x12, 0x1A, 0x1C, 0x1F, 0x15, 0x16):  # strings / binary data
                (n,) = struct.unpack_from("!H", properties, i)
                i += 2 + n
            elif prop == 0x26:  # user property: a string pair
                for _ in range(2):
                    (n,) = struct.unpack_from("!H", properties, i)
                    i += 2 + n
            else:
                return  # an unknown property: keep the default, it is only a bound

    @staticmethod
    def _read_varint(data: bytes, i: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, i
            shift += 7

    @staticmethod
    async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        return first & 0xF0, await reader.readexactly(length) if length else b""

    async def _read_acks(self) -> None:
        assert self._reader is not None
        sent_at, acks = self.sent_at, self.acks
        try:
            while True:
                kind, data = await self._packet(self._reader)
                if kind == 0x40:  # PUBACK: packet id, then (v5) a reason code and properties
                    t = sent_at.pop(struct.unpack_from("!H", data)[0], None)
                    if t is not None:
                        acks.append(time.monotonic() - t)
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def publish(self, topic: bytes, payload: bytes) -> float | None:
        """Queue one QoS 1 PUBLISH; the send time (monotonic), or None if the window is full."""
        if len(self.sent_at) >= self.receive_maximum:
            self.refused += 1
            return None
        assert self._writer is not None
        self._next_id = self._next_id % 65535 + 1
        packet_id = self._next_id
        body = _string(topic) + struct.pack("!H", packet_id) + b"\x00" + payload
        t = time.monotonic()
        self.sent_at[packet_id] = t
        self._writer.write(b"\x32" + _varint(len(body)) + body)
        return t

    async def drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")  # DISCONNECT, normal
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
