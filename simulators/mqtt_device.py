"""Simulated MQTT devices: thousands of paho clients driven by one asyncio event loop.

Every device authenticates as itself, because the broker's ACL binds a device account to its own
telemetry topic (sharing one connection between devices is therefore not an option). Threads do
not scale to 10,000 devices, so each paho client is plugged into the running asyncio loop through
paho's socket callbacks, as in paho's ``examples/loop_asyncio.py``: ``on_socket_open`` →
``loop.add_reader(sock, client.loop_read)``, ``on_socket_register_write`` →
``loop.add_writer(sock, client.loop_write)``, and one fleet-wide task calls ``loop_misc()`` every
second for keep-alives. Schedules are ``loop.call_at`` timer handles, not tasks, so an idle device
costs no task and a tick costs a few microseconds plus the signal sample.

Lifecycle (one, documented): ``async with MqttFleet(devices, host, port) as fleet:`` connects
every device (spread over ``connect_spread_s``) and starts its schedule; leaving the block stops the
schedules, waits up to ``drain_timeout_s`` for outstanding PUBACKs, sends DISCONNECT on every
client and closes every socket. No thread is created; the only task is the keep-alive ticker.

Delivery semantics, per device (``DeviceStats``):

* ``published``: messages handed to paho and accepted (sent now, or held while offline);
* ``acked``: PUBACK with a success reason code (0x00, or 0x10 "no matching subscribers");
* ``failed``: PUBACK with an error code (0x87 "not authorised" when the ACL drops it) or refused
  by paho (its offline queue of ``offline_queue`` messages is full);
* ``in_flight`` = published − acked − failed. While the broker is away the device keeps measuring;
  paho holds the messages and (re)sends them after reconnecting, QoS 1 with DUP set.

Faults (``simulators/faults.py``) sit between the signal and this transport: a signal with an
``emit(t)`` method says per tick what to send — ``(timestamp, values)`` (the timestamp differs from
``t`` under clock skew), ``None`` (nothing: counted in ``suppressed``, no seq used) or a
``Malformed`` marker, published at once as its JSON rendering (counted in ``malformed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from protocols.backoff import backoff_delay
from protocols.mqtt_telemetry import MAX_READINGS
from protocols.mqtt_telemetry import telemetry_topic as shared_telemetry_topic
from simulators.faults import Malformed

log = logging.getLogger(__name__)

TOPIC_PREFIX = "weijian/v1"
MAX_BATCH = MAX_READINGS
"""The collector accepts at most this many readings per message."""


class Signal(Protocol):
    """Anything that can say what the instrument reads at time ``t``."""

    def sample(self, t: datetime) -> Mapping[str, Any]: ...


class Emitter(Protocol):
    """A signal with faults applied (``simulators.faults.FaultedSignal``): what goes on the wire."""

    def emit(self, t: datetime) -> tuple[datetime, Mapping[str, Any]] | Malformed | None: ...


def telemetry_topic(tenant: str, site: str, device: str) -> str:
    return shared_telemetry_topic(TOPIC_PREFIX, tenant, site, device)


def format_ts(t: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T13:00:00.123Z`` (aware datetimes only)."""
    if t.tzinfo is None:
        raise ValueError("reading timestamps must be timezone-aware")
    t = t.astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def make_reading(t: datetime, fields: Mapping[str, float], seq: int,
                 flags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One reading object of the wire format: ``{"ts", "fields", "seq"[, "flags"]}``."""
    reading: dict[str, Any] = {"ts": format_ts(t), "fields": dict(fields), "seq": seq}
    if flags:
        reading["flags"] = dict(flags)
    return reading


def encode_readings(readings: list[dict[str, Any]], *, batch: bool) -> bytes:
    """UTF-8 JSON payload: a single reading object, or ``{"readings": [...]}`` (≤ 1000)."""
    if not readings:
        raise ValueError("nothing to encode")
    if not batch:
        if len(readings) != 1:
            raise ValueError("a non-batch message carries exactly one reading")
        return orjson.dumps(readings[0])
    if len(readings) > MAX_BATCH:
        raise ValueError(f"a batch carries at most {MAX_BATCH} readings, got {len(readings)}")
    return orjson.dumps({"readings": readings})


@dataclass(frozen=True)
class SimulatedMqttDevice:
    """Declaration of one device on the wire. ``topic_override`` simulates a misbehaving device
    (one that publishes to another device's topic) so tests can show the broker ACL at work."""

    tenant: str
    site: str
    device: str
    kind: str
    username: str
    password: str
    interval_s: float
    signal: Signal | Emitter
    topic_override: str | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"{self.device}: interval_s must be > 0, got {self.interval_s}")
        for name in ("tenant", "site", "device"):
            value = getattr(self, name)
            if not value or any(c in value for c in "/+#"):
                raise ValueError(f"{self.device}: {name} {value!r} is not a topic level")

    @property
    def topic(self) -> str:
        return self.topic_override or telemetry_topic(self.tenant, self.site, self.device)


@dataclass
class DeviceStats:
    """Counters of one device; ``acked_seqs`` lists the seq of every acknowledged reading."""

    generated: int = 0
    published: int = 0
    acked: int = 0
    failed: int = 0
    acked_readings: int = 0
    missed_ticks: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_errors: int = 0
    refused: int = 0
    suppressed: int = 0  # ticks a fault kept silent (dropout, intermittent link)
    malformed: int = 0  # malformed messages published on purpose
    acked_seqs: array[int] = field(default_factory=lambda: array("q"))

    @property
    def in_flight(self) -> int:
        return self.published - self.acked - self.failed


@dataclass(frozen=True)
class FleetRates:
    """Achieved vs intended rates since the fleet started (messages and readings per second).

    ``cpu_fraction`` is this process's CPU time over wall time (1.0 = one core busy); it includes
    anything else running in the process.
    """

    devices: int
    connected: int
    elapsed_s: float
    intended_msgs_per_s: float
    published_msgs_per_s: float
    acked_msgs_per_s: float
    intended_readings_per_s: float
    acked_readings_per_s: float
    cpu_fraction: float


class AcceleratedClock:
    """A time source for accelerated runs: simulated time = start + factor × elapsed real time."""

    def __init__(self, start: datetime | None = None, factor: float = 1.0) -> None:
        self.start = start or datetime.now(UTC)
        self.factor = factor
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.factor)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Client(mqtt.Client):
    """A paho client that uses a TCP connection opened for it (see ``_open_connection``).

    Overrides paho's private ``_create_socket_connection`` (present throughout paho 2.x; the
    dependency is pinned below 3): the one hook where paho creates its socket.
    """

    preconnected: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is None:
            raise ConnectionError("the fleet opens connections; paho must not connect by itself")
        return sock


class _DeviceRunner:
    """One device's paho client, schedule and counters; all callbacks run on the event loop."""

    def __init__(self, fleet: MqttFleet, spec: SimulatedMqttDevice) -> None:
        self.fleet = fleet
        self.spec = spec
        self.topic = spec.topic
        self.stats = DeviceStats()
        self.connected = False
        self.finished = False
        self.sock: socket.socket | None = None
        self._watching_write = False
        self._seq = 0
        self._messages = 0
        self._batch: list[dict[str, Any]] = []
        self._inflight: dict[int, list[int]] = {}
        self._attempt = 0
        self._due = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._connect_handle: asyncio.TimerHandle | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._emit: Callable[[datetime], Any] | None = getattr(spec.signal, "emit", None)
        self._sample: Callable[[datetime], Mapping[str, Any]] | None = (
            None if self._emit is not None else spec.signal.sample  # type: ignore[union-attr]
        )
        self.connect_task: asyncio.Task[None] | None = None
        client = _Client(CallbackAPIVersion.VERSION2, client_id=spec.device, protocol=mqtt.MQTTv5)
        client.username_pw_set(spec.username, spec.password)
        client.max_queued_messages_set(fleet.offline_queue)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.connect_async(fleet.host, fleet.port, keepalive=fleet.keepalive, clean_start=True)
        self.client = client

    # ---- paho → asyncio glue (paho's loop_asyncio example) -------------------------------------

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.sock = sock
        self.fleet._sockets_changed(+1)
        self.fleet.loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.fleet.loop.remove_reader(sock)
        self.fleet.loop.remove_writer(sock)
        self._watching_write = False
        self.sock = None
        self.fleet._sockets_changed(-1)

    def _on_socket_register_write(self, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        # Where paho's example watches the socket for writability at once (two epoll_ctl calls
        # and one more loop wake-up per message), write directly at the end of this loop
        # iteration instead, and watch the socket only while the kernel's buffer is full.
        self.fleet._write_soon(self)

    def flush(self) -> None:
        """Write what paho has queued; called once per loop iteration by the fleet."""
        if self.sock is None:
            return
        self.client.loop_write()
        if self.sock is not None and self.client.want_write() and not self._watching_write:
            self._watching_write = True
            self.fleet.loop.add_writer(self.sock, self.client.loop_write)

    def _on_socket_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._watching_write:
            self._watching_write = False
            self.fleet.loop.remove_writer(sock)

    # ---- connection ----------------------------------------------------------------------------

    def start(self, connect_at: float, first_tick_at: float) -> None:
        loop = self.fleet.loop
        self._connect_handle = loop.call_at(connect_at, self._connect)
        self._due = first_tick_at
        self._tick_handle = loop.call_at(first_tick_at, self._tick)

    def _connect(self) -> None:
        self._connect_handle = None
        if not self.fleet.stopping:
            self.connect_task = self.fleet.loop.create_task(self._open_connection())

    async def _open_connection(self) -> None:
        """TCP-connect without blocking the loop, then let paho speak MQTT over the socket.

        paho's own connect is a blocking ``socket.create_connection``: one RTT per device, and a
        whole second whenever the broker's accept queue overflows in a connect storm and the SYN
        is dropped, which would stall every other device of the fleet.
        """
        fleet = self.fleet
        family, address = fleet.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(fleet.connect_timeout_s):
                await fleet.loop.sock_connect(sock, address)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.connect_task = None
            self.stats.connect_errors += 1
            log.debug("%s: connect to %s:%s failed: %r", self.spec.device, fleet.host, fleet.port,
                      exc)
            self._schedule_reconnect()
            return
        except BaseException:  # cancelled by stop()
            sock.close()
            raise
        self.connect_task = None
        self.client.preconnected = sock
        try:
            self.client.reconnect()  # paho takes the socket over and sends CONNECT on it
        except OSError as exc:
            self.stats.connect_errors += 1
            log.info("%s: could not send CONNECT: %r", self.spec.device, exc)
            self._schedule_reconnect()
            return
        self._timeout_handle = fleet.loop.call_later(fleet.connect_timeout_s,
                                                     self._connack_timed_out)

    def _connack_timed_out(self) -> None:
        self._timeout_handle = None
        if not self.connected:
            self.stats.connect_errors += 1
            log.info("%s: no CONNACK within %.1f s", self.spec.device, self.fleet.connect_timeout_s)
            self.client.disconnect()  # closes the socket once written; on_disconnect retries

    def _schedule_reconnect(self) -> None:
        if self.fleet.stopping or self._connect_handle is not None:
            return
        # Equal jitter: a fleet that lost its broker comes back spread out, none at once.
        delay = backoff_delay(self._attempt, base=self.fleet.backoff_base_s,
                              cap=self.fleet.backoff_cap_s, rng=self.fleet.rng)
        self._attempt += 1
        self._connect_handle = self.fleet.loop.call_later(delay, self._connect)

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason: ReasonCode, _properties: Any) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        if reason.is_failure:
            # The broker closes the connection itself; on_disconnect schedules the retry.
            self.stats.refused += 1
            log.warning("%s: broker refused the connection: %s", self.spec.device, reason)
            return
        self.connected = True
        self._attempt = 0
        self.stats.connects += 1
        self.fleet._connected_changed(+1)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _properties: Any) -> None:
        if self.connected:
            self.connected = False
            self.fleet._connected_changed(-1)
            if not self.fleet.stopping:
                self.stats.disconnects += 1
                log.info("%s: disconnected (%s); reconnecting", self.spec.device, reason)
        self._schedule_reconnect()

    # ---- schedule and publishing ---------------------------------------------------------------

    def _tick(self) -> None:
        self._tick_handle = None
        fleet = self.fleet
        t = fleet.time_source()
        if self._sample is not None:
            self._seq += 1
            self._batch.append(make_reading(t, self._sample(t), self._seq))
            self.stats.generated += 1
        else:
            self._emit_faulted(t)
        if len(self._batch) >= fleet.batch_size:
            self._publish_batch()
        if fleet.max_messages is not None and self._messages >= fleet.max_messages:
            self._finish()
            return
        interval = self.spec.interval_s
        self._due += interval
        now = fleet.loop.time()
        if self._due < now:  # overloaded: skip the slots we missed rather than burst
            missed = math.ceil((now - self._due) / interval)
            self.stats.missed_ticks += missed
            self._due += missed * interval
        jitter = (fleet.rng.random() * 2.0 - 1.0) * fleet.jitter * interval
        self._tick_handle = fleet.loop.call_at(self._due + jitter, self._tick)

    def _emit_faulted(self, t: datetime) -> None:
        assert self._emit is not None
        out = self._emit(t)
        if out is None:
            self.stats.suppressed += 1
        elif isinstance(out, Malformed):
            self.stats.malformed += 1
            self._publish(out.json_payload(), [])
        else:
            stamp, values = out
            self._seq += 1
            self._batch.append(make_reading(stamp, values, self._seq))
            self.stats.generated += 1

    def _publish_batch(self) -> None:
        readings, self._batch = self._batch, []
        payload = encode_readings(readings, batch=self.fleet.batch_size > 1)
        self._publish(payload, [r["seq"] for r in readings])

    def _publish(self, payload: bytes, seqs: list[int]) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        self._messages += 1
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.stats.published += 1
            self.fleet._totals[0] += 1
            self._inflight[info.mid] = seqs
        else:  # paho's offline queue is full
            self.stats.failed += 1
            self.fleet._totals[2] += 1
            log.debug("%s: paho refused a message: %s", self.spec.device, info.rc)
        self.fleet._check_settled()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Any) -> None:
        seqs = self._inflight.pop(mid, None)
        if seqs is None:
            return
        if reason.is_failure:
            self.stats.failed += 1
            self.fleet._totals[2] += 1
            log.debug("%s: PUBACK %s for seq %s", self.spec.device, reason, seqs)
        else:
            self.stats.acked += 1
            self.stats.acked_readings += len(seqs)
            self.fleet._totals[1] += 1
            if self.fleet.keep_acked_seqs:
                self.stats.acked_seqs.extend(seqs)
        self.fleet._check_settled()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.fleet._finished += 1
            self.fleet._check_settled()

    def stop_schedule(self) -> None:
        for handle in (self._tick_handle, self._connect_handle, self._timeout_handle):
            if handle is not None:
                handle.cancel()
        self._tick_handle = self._connect_handle = self._timeout_handle = None
        if self._batch and self.connected:  # a clean shutdown sends the partial batch
            self._publish_batch()
        self._batch = []

    def close_socket(self) -> None:
        """Last resort at shutdown: drop the socket paho did not close by itself."""
        sock = self.sock
        if sock is not None:
            self.fleet.loop.remove_reader(sock)
            self.fleet.loop.remove_writer(sock)
            sock.close()
            self.sock = None
            self.fleet._sockets_changed(-1)


class MqttFleet:
    """Runs many ``SimulatedMqttDevice`` from one asyncio loop; an async context manager.

    Options: ``batch_size`` readings per message (a batch is ``{"readings": [...]}``),
    ``time_source`` for reading timestamps (e.g. ``AcceleratedClock``; scheduling stays in real
    time), ``max_messages`` per device after which it stops, ``jitter`` (± fraction of the
    interval per tick, on top of a random phase per device), and reconnect backoff bounds.
    """

    def __init__(
        self,
        devices: Iterable[SimulatedMqttDevice],
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        batch_size: int = 1,
        time_source: Callable[[], datetime] = _utc_now,
        max_messages: int | None = None,
        jitter: float = 0.02,
        connect_spread_s: float | None = None,
        keepalive: int = 30,
        connect_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        offline_queue: int = 1000,
        drain_timeout_s: float = 5.0,
        keep_acked_seqs: bool = True,
        seed: int = 0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH}, got {batch_size}")
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if not 0 <= jitter < 0.5:
            raise ValueError("jitter is a fraction of the interval in [0, 0.5)")
        self.devices = list(devices)
        names = [d.device for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("device ids must be unique (they are MQTT client ids)")
        self.host, self.port = host, port
        self.batch_size = batch_size
        self.time_source = time_source
        self.max_messages = max_messages
        self.jitter = jitter
        self.connect_spread_s = connect_spread_s
        self.keepalive = keepalive
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.offline_queue = offline_queue
        self.drain_timeout_s = drain_timeout_s
        self.keep_acked_seqs = keep_acked_seqs
        self.rng = random.Random(seed)
        self.stopping = False
        self._runners: list[_DeviceRunner] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.address: tuple[socket.AddressFamily, Any] = (socket.AF_INET, (host, port))
        self._misc_task: asyncio.Task[None] | None = None
        self._totals = [0, 0, 0]  # published, acked, failed: O(1) "all settled?" checks
        self._finished = 0
        self._connected = 0
        self._open_sockets = 0
        self._pending_writes: list[_DeviceRunner] = []
        self._flush_scheduled = False
        self._settled = asyncio.Event()
        self._drained = asyncio.Event()
        self._all_connected = asyncio.Event()
        self._no_sockets = asyncio.Event()
        self._drained.set()  # nothing published yet
        self._no_sockets.set()
        self._t0 = self._cpu0 = 0.0
        self._t_end: float | None = None
        self._cpu_end = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the fleet is not running")
        return self._loop

    async def __aenter__(self) -> MqttFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("a fleet starts once")
        self._loop = asyncio.get_running_loop()
        # Resolved once for the whole fleet, synchronously: loop.getaddrinfo would start the
        # loop's executor thread, and a numeric address (the usual case) resolves instantly.
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        self.address = (infos[0][0], infos[0][4])
        self._t0, self._cpu0 = self._loop.time(), time.process_time()
        self._runners = [_DeviceRunner(self, d) for d in self.devices]
        for runner in self._runners:
            interval = runner.spec.interval_s
            spread = interval if self.connect_spread_s is None else self.connect_spread_s
            runner.start(connect_at=self._t0 + self.rng.uniform(0.0, spread),
                         first_tick_at=self._t0 + self.rng.uniform(0.0, interval))
        self._misc_task = self._loop.create_task(self._misc_loop(), name="mqtt-fleet-misc")

    async def _misc_loop(self) -> None:
        """Keep-alive pings and ping-timeout detection for every client (paho's loop_misc)."""
        while True:
            await asyncio.sleep(1.0)
            for runner in self._runners:
                if runner.sock is not None:
                    runner.client.loop_misc()

    async def wait_connected(self) -> None:
        """Return once every device has a connection (wrap in ``asyncio.timeout``)."""
        await self._all_connected.wait()

    async def wait_finished(self) -> None:
        """With ``max_messages``: return once every device has sent them all and each message was
        acked or failed (wrap in ``asyncio.timeout``)."""
        if self.max_messages is None:
            raise RuntimeError("wait_finished() needs max_messages")
        await self._settled.wait()

    def _write_soon(self, runner: _DeviceRunner) -> None:
        self._pending_writes.append(runner)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        self._flush_scheduled = False
        pending, self._pending_writes = self._pending_writes, []
        for runner in pending:
            runner.flush()

    def _connected_changed(self, delta: int) -> None:
        self._connected += delta
        if self._connected == len(self._runners):
            self._all_connected.set()

    def _sockets_changed(self, delta: int) -> None:
        self._open_sockets += delta
        if self._open_sockets == 0:
            self._no_sockets.set()
        else:
            self._no_sockets.clear()

    def _check_settled(self) -> None:
        published, acked, failed = self._totals
        if acked + failed >= published:
            self._drained.set()
            if self._finished == len(self._runners):
                self._settled.set()
        else:
            self._drained.clear()

    async def stop(self) -> None:
        """Stop schedules, drain PUBACKs (bounded), DISCONNECT every client, close every socket.

        Messages held for devices that are offline at this point stay unacknowledged and show as
        ``in_flight``; the drain then simply times out.
        """
        if self._loop is None or self.stopping:
            return
        self.stopping = True
        for runner in self._runners:
            runner.stop_schedule()
        connecting = [r.connect_task for r in self._runners if r.connect_task is not None]
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_timeout_s):
                await self._drained.wait()
        self._t_end, self._cpu_end = self._loop.time(), time.process_time()
        for runner in self._runners:
            if runner.sock is not None:
                runner.client.disconnect()  # paho closes the socket once DISCONNECT is written
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._no_sockets.wait()
        for runner in self._runners:
            runner.close_socket()
        if self._misc_task is not None:
            self._misc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc_task
            self._misc_task = None
        unacked = sum(r.stats.in_flight for r in self._runners)
        if unacked:
            log.info("fleet stopped with %d message(s) unacknowledged", unacked)

    # ---- reporting ------------------------------------------------------------------------------

    def stats(self) -> dict[str, DeviceStats]:
        return {r.spec.device: r.stats for r in self._runners}

    def rates(self) -> FleetRates:
        loop = self.loop
        end = self._t_end if self._t_end is not None else loop.time()
        cpu_end = self._cpu_end if self._t_end is not None else time.process_time()
        elapsed = max(end - self._t0, 1e-9)
        stats = [r.stats for r in self._runners]
        intended_readings = sum(1.0 / d.interval_s for d in self.devices)
        return FleetRates(
            devices=len(self._runners),
            connected=self._connected,
            elapsed_s=elapsed,
            intended_msgs_per_s=intended_readings / self.batch_size,
            published_msgs_per_s=sum(s.published for s in stats) / elapsed,
            acked_msgs_per_s=sum(s.acked for s in stats) / elapsed,
            intended_readings_per_s=intended_readings,
            acked_readings_per_s=sum(s.acked_readings for s in stats) / elapsed,
            cpu_fraction=(cpu_end - self._cpu0) / elapsed,
        )
