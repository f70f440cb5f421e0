"""Simulated CoAP devices: dose-rate monitors and dosimeter readers posting readings over UDP.

A device is a declaration (:class:`SimulatedCoapDevice`: id, kind, token, interval, a value source
``(t) -> {quantity: value}``, JSON or CBOR, confirmable or not, fault windows); a
:class:`CoapFleet` puts many of them on the wire from one process and one event loop, each device
posting ``POST coap://host:port/t?k=<token>`` on its schedule with one message in flight, as a
real constrained device does. Wire format: docs/coap.md.

Two aiocoap facts shape the fleet (measured; see docs/coap.md):

* aiocoap keeps one confirmable exchange in flight per client context and server (NSTART = 1).
  Sharing one context among all devices would make the whole fleet wait on each exchange, fsync
  included (321 requests/s through a 2 ms handler, against 1,518 with 8 contexts). So the fleet
  spreads its devices over ``endpoints`` client contexts (UDP sockets; default one per device up
  to 256, ~3 KB each); a device always uses the same one, so its source address stays put as a
  real device's does.
* The server remembers (client address, message id) for EXCHANGE_LIFETIME (247 s) to drop
  retransmissions; a context sending more than 65,536 messages in that time reuses ids and its
  requests are then answered with stale responses that match nothing, and hang. Each context is
  therefore replaced after ``recycle_after`` messages (the old one is shut down once idle).

Lifecycle: ``async with CoapFleet(devices, host, port) as fleet:`` opens the client contexts and
starts every device's schedule (random phase within its interval); leaving the block stops the
schedules, lets requests in flight finish (up to ``drain_timeout_s``) and shuts the contexts down.

Delivery, per device (:class:`CoapDeviceStats`): ``acked`` counts 2.xx responses (for a
confirmable request the platform answers only once the readings are durable), ``refused`` 4.xx,
``unavailable`` 5.xx, ``lost`` requests with no response within ``request_timeout_s``. Readings of
a 5.xx or lost message stay buffered and go again with the next message (timestamps make the
repeat harmless); readings in a deliberately faulty message are not resent. Every injected fault
is written down in :attr:`CoapFleet.truth` with the response it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import aiocoap
import aiocoap.error
import cbor2
import orjson
from aiocoap import Code, Message

from protocols.coap import CONTENT_FORMATS as WIRE_FORMATS
from protocols.coap import RESOURCE_PATH as WIRE_PATH
from protocols.coap import TOKEN_QUERY
from protocols.json_readings import MAX_READINGS

if TYPE_CHECKING:
    from simulators.radiation import (
        DoseRateMonitorSpec,
        PersonalDosimeterSpec,
        RadiationFaults,
    )

log = logging.getLogger(__name__)

# The wire contract of collectors/coap (docs/coap.md); simulators may not import collectors.
RESOURCE_PATH = WIRE_PATH[0]
CONTENT_FORMATS = {name: number for number, name in WIRE_FORMATS.items()}
DEFAULT_PORT = 5683
MAX_BUFFERED = MAX_READINGS  # readings a device keeps while the platform does not answer
MAX_DEFAULT_ENDPOINTS = 256  # client contexts cost ~3 KB and one socket each

ValueSource = Callable[[datetime], Mapping[str, Any]]
"""What the instrument reads at ``t`` (timezone-aware): canonical quantity → value."""


class CoapFault(StrEnum):
    """Faults a device can be told to commit; :data:`EXPECTED_CODE` is the platform's answer."""

    BAD_TOKEN = "bad_token"  # the token's secret is wrong
    MALFORMED = "malformed"  # the document is cut short: neither JSON nor CBOR parses it
    OVERSIZED = "oversized"  # a valid document padded past the collector's payload limit
    NON_CONFIRMABLE = "non_confirmable"  # NON instead of CON: nothing retransmits it if lost


EXPECTED_CODE: dict[CoapFault, str] = {
    CoapFault.BAD_TOKEN: "4.01",
    CoapFault.MALFORMED: "4.00",
    CoapFault.OVERSIZED: "4.13",
    CoapFault.NON_CONFIRMABLE: "2.04",
}


@dataclass(frozen=True)
class FaultWindow:
    """``fault`` on every message sent in [start, end) of the fleet's clock (None: unbounded)."""

    fault: CoapFault
    start: datetime | None = None
    end: datetime | None = None

    def active(self, t: datetime) -> bool:
        return (self.start is None or t >= self.start) and (self.end is None or t < self.end)


@dataclass(frozen=True)
class InjectedFault:
    """Ground truth of one faulty message: who, what, when, and how the platform answered."""

    device: str
    fault: CoapFault
    at: datetime
    readings: int
    code: str | None  # None: no response within the timeout


@dataclass(frozen=True)
class SimulatedCoapDevice:
    """Declaration of one CoAP device (``kind`` as in protocols/data/kinds.yaml)."""

    device: str
    kind: str
    token: str
    interval_s: float
    values: ValueSource
    content_format: Literal["json", "cbor"] = "json"
    confirmable: bool = True
    faults: tuple[FaultWindow, ...] = ()

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"{self.device}: interval_s must be > 0, got {self.interval_s}")
        if self.content_format not in CONTENT_FORMATS:
            raise ValueError(f"{self.device}: content_format must be 'json' or 'cbor'")

    def fault_at(self, t: datetime) -> CoapFault | None:
        for window in self.faults:
            if window.active(t):
                return window.fault
        return None

    @classmethod
    def dose_rate_monitor(
        cls,
        device: str,
        token: str,
        *,
        seed: int = 0,
        spec: DoseRateMonitorSpec | None = None,
        room_seed: int | None = None,
        radiation_faults: RadiationFaults | None = None,
        interval_s: float = 10.0,
        **options: Any,
    ) -> SimulatedCoapDevice:
        """A GR-10-like ambient monitor outside a fluoroscopy room (``simulators.radiation``)."""
        from simulators.radiation import DoseRateMonitorSignal, DoseRateMonitorSpec, XRayRoomSpec

        spec = spec or DoseRateMonitorSpec(room=XRayRoomSpec.for_modality("fluoroscopy"))
        signal = DoseRateMonitorSignal(spec, seed, room_seed=room_seed, faults=radiation_faults)
        return cls(device, "dose_rate_monitor", token, interval_s, signal.sample, **options)

    @classmethod
    def dosimeter_reader(
        cls,
        device: str,
        token: str,
        *,
        seed: int = 0,
        spec: PersonalDosimeterSpec | None = None,
        room_seed: int | None = None,
        radiation_faults: RadiationFaults | None = None,
        interval_s: float = 300.0,
        **options: Any,
    ) -> SimulatedCoapDevice:
        """A DR-20-like reader of a worker's personal dosimeter (``simulators.radiation``)."""
        from simulators.radiation import PersonalDosimeterSignal, PersonalDosimeterSpec

        signal = PersonalDosimeterSignal(
            spec or PersonalDosimeterSpec(), seed, room_seed=room_seed, faults=radiation_faults
        )

        def values(t: datetime) -> dict[str, Any]:
            sample = dict(signal.sample(t))
            return sample

        return cls(device, "dosimeter", token, interval_s, values, **options)


@dataclass
class CoapDeviceStats:
    ticks: int = 0  # readings sampled
    sent: int = 0  # messages sent (retries included)
    acked: int = 0  # 2.xx responses
    acked_readings: int = 0  # readings the platform said it accepted
    refused: int = 0  # 4.xx responses
    unavailable: int = 0  # 5.xx responses (readings kept for the next message)
    lost: int = 0  # no response within the timeout, or a transport error
    dropped_readings: int = 0  # pushed out of a full buffer while the platform did not answer
    missed_ticks: int = 0  # ticks skipped because the previous message was still in flight
    codes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    last_reply: Any = None  # decoded body of the last 2.xx response


@dataclass(frozen=True)
class CoapFleetRates:
    """Achieved vs intended rates since the fleet started; ``cpu_fraction`` is this process's
    CPU time over wall time (1.0 = one core busy)."""

    devices: int
    elapsed_s: float
    intended_msgs_per_s: float
    sent_msgs_per_s: float
    acked_msgs_per_s: float
    intended_readings_per_s: float
    acked_readings_per_s: float
    cpu_fraction: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def encode_document(readings: Sequence[Mapping[str, Any]], content_format: str) -> bytes:
    """One reading alone, several as ``{"readings": [...]}``, in JSON or CBOR."""
    doc: Any = readings[0] if len(readings) == 1 else {"readings": list(readings)}
    return cbor2.dumps(doc) if content_format == "cbor" else orjson.dumps(doc)


def decode_reply(payload: bytes, content_format: int | None) -> Any:
    with contextlib.suppress(Exception):
        return cbor2.loads(payload) if content_format == 60 else orjson.loads(payload)
    return None


class _Slot:
    """A client context and the requests it has in flight."""

    def __init__(self, context: aiocoap.Context) -> None:
        self.context = context
        self.remote: Any = None  # the server's address as this context resolved it
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()


class _Endpoint:
    """One client context (one UDP socket), replaced after ``recycle_after`` messages."""

    def __init__(self, fleet: CoapFleet) -> None:
        self.fleet = fleet
        self.slot: _Slot | None = None
        self.sent = 0
        self.recycles = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        context = await aiocoap.Context.create_client_context(
            transports=["udp6"], loggername=f"{__name__}.aiocoap"
        )
        self.slot = _Slot(context)
        self.sent = 0

    async def request(self, message: Message, blocks: int) -> Message | None:
        """The response, or None when none came within the fleet's ``request_timeout_s`` (or
        the transport failed)."""
        if self.sent + blocks > self.fleet.recycle_after:
            async with self._opening:
                if self.sent + blocks > self.fleet.recycle_after:
                    await self._recycle()
        slot = self.slot
        assert slot is not None
        self.sent += blocks
        slot.in_flight += 1
        slot.idle.clear()
        if slot.remote is not None:
            # aiocoap resolves a request's URI afresh each time (getaddrinfo in a worker thread,
            # a probe socket): ~1 ms per request. The address from a response skips all that.
            message.remote = slot.remote
        try:
            response = await asyncio.wait_for(
                slot.context.request(message).response, self.fleet.request_timeout_s
            )
            if slot.remote is None:
                slot.remote = response.remote
            return response
        except (TimeoutError, aiocoap.error.Error, OSError) as exc:
            log.debug("CoAP request failed: %r", exc)
            return None
        finally:
            slot.in_flight -= 1
            if not slot.in_flight:
                slot.idle.set()

    async def _recycle(self) -> None:
        old = self.slot
        await self.open()
        self.recycles += 1
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, slot: _Slot) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.idle.wait(), self.fleet.request_timeout_s)
        await slot.context.shutdown()

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        if self.slot is not None:
            await self.slot.context.shutdown()
            self.slot = None


class _DeviceRunner:
    def __init__(self, fleet: CoapFleet, spec: SimulatedCoapDevice, endpoint: _Endpoint) -> None:
        self.fleet = fleet
        self.spec = spec
        self.endpoint = endpoint
        self.stats = CoapDeviceStats()
        self.buffer: deque[dict[str, Any]] = deque()
        self.messages = 0  # scheduled messages sent (max_messages counts these)
        self.task: asyncio.Task[None] | None = None

    def uri(self, token: str) -> str:
        fleet = self.fleet
        return f"coap://{fleet.authority}/{RESOURCE_PATH}?{TOKEN_QUERY}={token}"

    def sample(self, t: datetime) -> dict[str, Any]:
        self.stats.ticks += 1
        return {"ts": round(t.timestamp(), 3), "fields": dict(self.spec.values(t))}

    async def run(self, first_delay: float) -> None:
        fleet = self.fleet
        spec = self.spec
        loop = asyncio.get_running_loop()
        next_at = loop.time() + first_delay
        while not fleet.stopping:
            if fleet.max_messages is not None and self.messages >= fleet.max_messages:
                break
            delay = next_at - loop.time()
            if delay > 0:  # (behind schedule: no sleep at all, not even the loop's 1 ms tick)
                await asyncio.sleep(delay)
            if fleet.stopping:
                break
            self.buffer.append(self.sample(fleet.time_source()))
            while len(self.buffer) > MAX_BUFFERED:
                self.buffer.popleft()
                self.stats.dropped_readings += 1
            if len(self.buffer) >= fleet.batch_size:
                self.messages += 1
                await self.send_buffer()
            jitter = 1.0 + fleet.rng.uniform(-fleet.jitter, fleet.jitter)
            next_at += spec.interval_s * jitter
            now = loop.time()
            if next_at < now:  # the message took longer than the interval: skip, do not burst
                self.stats.missed_ticks += int((now - next_at) // spec.interval_s)
                next_at = now
        fleet._device_finished()

    async def send_buffer(self) -> str | None:
        readings = list(self.buffer)
        fault = self.spec.fault_at(self.fleet.time_source())
        code = await self.send(readings, fault)
        if fault is not None or (code is not None and code[0] in "24"):
            self.buffer.clear()  # delivered, refused for good, or deliberately spoilt
        return code

    async def send(
        self, readings: Sequence[Mapping[str, Any]], fault: CoapFault | None = None
    ) -> str | None:
        """Post ``readings`` as one message (with ``fault`` applied); the response code."""
        fleet = self.fleet
        spec = self.spec
        stats = self.stats
        token = spec.token
        payload = encode_document(readings, spec.content_format)
        confirmable = spec.confirmable
        if fault is CoapFault.BAD_TOKEN:
            token = token[:-1] + ("A" if token[-1] != "A" else "B")
        elif fault is CoapFault.MALFORMED:
            payload = payload[:-1]
        elif fault is CoapFault.OVERSIZED:
            pad = "x" * fleet.oversize_bytes
            doc = {"readings": list(readings), "pad": pad}
            payload = cbor2.dumps(doc) if spec.content_format == "cbor" else orjson.dumps(doc)
        elif fault is CoapFault.NON_CONFIRMABLE:
            confirmable = False
        message = Message(
            code=Code.POST,
            uri=self.uri(token),
            payload=payload,
            content_format=CONTENT_FORMATS[spec.content_format],
            transport_tuning=aiocoap.Reliable if confirmable else aiocoap.Unreliable,
        )
        blocks = max(1, -(-len(payload) // 1024))
        stats.sent += 1
        fleet.totals["sent"] += 1
        started = time.monotonic()
        response = await self.endpoint.request(message, blocks)
        fleet.latencies.append(time.monotonic() - started)
        code = None if response is None else response.code.dotted
        if response is None:
            stats.lost += 1
        else:
            stats.codes[code] += 1
            if response.code.is_successful():
                stats.acked += 1
                fleet.totals["acked"] += 1
                reply = decode_reply(response.payload, response.opt.content_format)
                stats.last_reply = reply
                accepted = reply.get("accepted") if isinstance(reply, dict) else None
                n = accepted if isinstance(accepted, int) else len(readings)
                stats.acked_readings += n
                fleet.totals["acked_readings"] += n
            elif response.code.class_ == 4:
                stats.refused += 1
            else:
                stats.unavailable += 1
        if fault is not None:
            stats.faults[fault.value] += 1
            fleet.truth.append(
                InjectedFault(spec.device, fault, fleet.time_source(), len(readings), code)
            )
        return code


class CoapFleet:
    """Runs many :class:`SimulatedCoapDevice` from one event loop; an async context manager.

    ``batch_size`` readings per message (one sample per tick, sent when the batch is full);
    ``max_messages`` per device after which it stops (:meth:`wait_finished`); ``endpoints``
    client contexts (default: one per device up to 256) shared round-robin; ``time_source`` for
    reading timestamps and fault windows (scheduling stays in real time).
    """

    def __init__(
        self,
        devices: Iterable[SimulatedCoapDevice],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        endpoints: int | None = None,
        batch_size: int = 1,
        time_source: Callable[[], datetime] = _utc_now,
        max_messages: int | None = None,
        jitter: float = 0.02,
        request_timeout_s: float = 60.0,
        recycle_after: int = 50_000,
        oversize_bytes: int = 256 << 10,
        drain_timeout_s: float = 5.0,
        seed: int = 0,
    ) -> None:
        self.devices = list(devices)
        names = [d.device for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("device ids must be unique")
        if not 1 <= batch_size <= MAX_READINGS:
            raise ValueError(f"batch_size must be within 1..{MAX_READINGS}")
        if not 0 <= jitter < 0.5:
            raise ValueError("jitter is a fraction of the interval in [0, 0.5)")
        if not 0 < recycle_after <= 60_000:
            raise ValueError("recycle_after must be within 1..60000 (message ids are 16-bit)")
        self.host, self.port = host, port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.endpoint_count = max(1, endpoints or min(len(self.devices), MAX_DEFAULT_ENDPOINTS))
        self.batch_size = batch_size
        self.time_source = time_source
        self.max_messages = max_messages
        self.jitter = jitter
        self.request_timeout_s = request_timeout_s
        self.recycle_after = recycle_after
        self.oversize_bytes = oversize_bytes
        self.drain_timeout_s = drain_timeout_s
        self.rng = random.Random(seed)
        self.stopping = False
        self.truth: list[InjectedFault] = []
        self.totals: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=100_000)  # request → response, seconds
        self._endpoints: list[_Endpoint] = []
        self._runners: dict[str, _DeviceRunner] = {}
        self._finished = 0
        self._all_finished = asyncio.Event()
        self._t0 = self._cpu0 = 0.0
        self._t_end: float | None = None
        self._cpu_end = 0.0

    async def __aenter__(self) -> CoapFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, *, schedules: bool = True) -> None:
        """Open the endpoints and (unless ``schedules`` is False) start every device."""
        self._endpoints = [_Endpoint(self) for _ in range(self.endpoint_count)]
        for endpoint in self._endpoints:
            await endpoint.open()
        for i, spec in enumerate(self.devices):
            self._runners[spec.device] = _DeviceRunner(
                self, spec, self._endpoints[i % len(self._endpoints)]
            )
        self._t0, self._cpu0 = time.monotonic(), time.process_time()
        if not self.devices or not schedules:
            self._all_finished.set()
            return
        for runner in self._runners.values():
            phase = self.rng.uniform(0, runner.spec.interval_s)
            runner.task = asyncio.get_running_loop().create_task(
                runner.run(phase), name=f"coap-device-{runner.spec.device}"
            )

    async def stop(self) -> None:
        """Stop the schedules, let requests in flight finish, shut the contexts down."""
        self.stopping = True
        tasks = [r.task for r in self._runners.values() if r.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._t_end is None:
            self._t_end, self._cpu_end = time.monotonic(), time.process_time()
        for endpoint in self._endpoints:
            await endpoint.close()

    async def wait_finished(self) -> None:
        """Until every device has sent ``max_messages`` scheduled messages."""
        await self._all_finished.wait()

    def _device_finished(self) -> None:
        self._finished += 1
        if self._finished == len(self._runners):
            self._t_end, self._cpu_end = time.monotonic(), time.process_time()
            self._all_finished.set()

    async def send(
        self,
        device: str,
        readings: Sequence[Mapping[str, Any]] | None = None,
        *,
        fault: CoapFault | None = None,
    ) -> str | None:
        """Post one message now, outside the schedule (default: one fresh sample); the code."""
        runner = self._runners[device]
        if readings is None:
            readings = [runner.sample(self.time_source())]
        return await runner.send(readings, fault)

    @property
    def stats(self) -> dict[str, CoapDeviceStats]:
        return {name: r.stats for name, r in self._runners.items()}

    @property
    def recycles(self) -> int:
        return sum(e.recycles for e in self._endpoints)

    def rates(self) -> CoapFleetRates:
        end = self._t_end if self._t_end is not None else time.monotonic()
        cpu_end = self._cpu_end if self._t_end is not None else time.process_time()
        elapsed = max(end - self._t0, 1e-9)
        per_s = sum(1.0 / d.interval_s for d in self.devices)
        return CoapFleetRates(
            devices=len(self.devices),
            elapsed_s=elapsed,
            intended_msgs_per_s=per_s / self.batch_size,
            sent_msgs_per_s=self.totals["sent"] / elapsed,
            acked_msgs_per_s=self.totals["acked"] / elapsed,
            intended_readings_per_s=per_s,
            acked_readings_per_s=self.totals["acked_readings"] / elapsed,
            cpu_fraction=(cpu_end - self._cpu0) / elapsed,
            latency_p50_ms=_quantile_ms(self.latencies, 0.5),
            latency_p99_ms=_quantile_ms(self.latencies, 0.99),
        )


def _quantile_ms(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
