"""Modbus collector: polls every device on its own schedule and feeds the shared ingest pipeline.

Lifecycle (an async context manager, like :class:`~collectors.mqtt.collector.MqttCollector`):
``__aenter__`` reads the targets and starts polling (connections open lazily, so a device that is
not there yet only makes its own polls fail); ``__aexit__`` stops taking new polls, lets the ones
in flight finish (cancelling any still running after ``stop_timeout_s``), waits for spooled
readings to become durable, closes every connection and leaves no task behind.

Scheduling. Each device is polled at ``anchor + k·interval`` plus a little jitter, the anchor a
random phase so that devices configured together do not poll together. The next slot follows the
schedule, not the end of the last poll, so lateness never accumulates; a poll that overran by more
than half an interval skips the missed slots (counted) rather than bursting to catch up.

Endpoints. All unit ids behind one (host, port) or one serial line share one connection, and one
worker per connection runs that endpoint's polls one at a time: Modbus RTU is half-duplex, and
most TCP gateways want one request at a time too (``endpoint_concurrency`` opens more connections
to gateways that take parallel requests). Endpoints never wait for each other. On a shared line a
request that will not answer occupies the line until it times out, so a device that is failing,
or known to be slow, is *costly*: it runs only in a gap before the next cheap poll is due, or once
it has waited half an interval. Failing devices are retried on an exponential backoff (from their
interval up to ``backoff_cap_s``) and never retried inline, so a dead unit costs its line at most
one timeout per backoff period.

States (``status(device)``): ``pending`` until the first poll, then ``ok``, ``failing`` (a failed
poll, or Modbus exception responses), ``unreachable`` after ``failures_before_unreachable``
consecutive polls without an answer (logged once; recovery is logged once too).

Readings go through ``Ingestor.submit("modbus", …)`` like every protocol's. A poll has nobody to
acknowledge, but a reading counts as stored only once the spool says it is durable. When the
spool is full the reading is **held** in memory (up to ``max_held_readings``, for at most
``spool_full_hold_s``) and offered again as soon as there is room; past either bound the oldest
is dropped and counted as a ``spool_full`` rejection. Holding longer would only trade memory for
readings that a later poll replaces anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import logging
import math
import random
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collectors.metrics import Metrics
from collectors.modbus.link import ExceptionReply, ModbusLink, NoAnswer, ReadError, exception_name
from collectors.modbus.targets import EndpointKey, ModbusTarget, TargetSource
from collectors.pipeline import Ingestor, Outcome
from collectors.spool import SpoolFull
from protocols.backoff import backoff_delay
from protocols.directory import DeviceInfo
from protocols.profiles import Profile, load_profiles
from protocols.reading import Reason, Rejection

log = logging.getLogger(__name__)

PROTOCOL = "modbus"
State = Literal["pending", "ok", "failing", "unreachable"]
STATES: tuple[State, ...] = ("pending", "ok", "failing", "unreachable")


@dataclass
class ModbusStats:
    """Plain counters (cheap on the hot path), exported to Prometheus at scrape time."""

    polls_ok: int = 0
    polls_failed: int = 0
    polls_skipped: int = 0  # schedule slots missed because a poll overran
    requests: int = 0
    no_answer: int = 0  # requests that timed out or found no connection
    exceptions: Tally[int] = field(default_factory=Tally)  # exception code -> responses
    connect_failures: int = 0
    became_unreachable: int = 0
    recovered: int = 0  # unreachable -> ok
    readings_submitted: int = 0  # accepted by the ingestor (validated, written to the spool)
    readings_stored: int = 0  # ... and durable
    readings_rejected: int = 0  # refused by validation (counted by reason by the ingestor)
    readings_held: int = 0  # waiting in memory for spool room right now
    readings_dropped: Tally[str] = field(default_factory=Tally)  # reason -> readings lost
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def lateness_quantiles(self, qs: tuple[float, ...] = (0.5, 0.99)) -> dict[float, float]:
        """Quantiles of poll start − scheduled time over the last ``maxlen`` polls (empty: {})."""
        samples = sorted(self.lateness_s)
        if not samples:
            return {}
        last = len(samples) - 1
        return {q: samples[min(last, round(q * last))] for q in qs}


class _Device:
    __slots__ = (
        "anchor",
        "cost",
        "due",
        "durations",
        "endpoint",
        "failures",
        "gen",
        "in_flight",
        "last_error",
        "last_ok",
        "lateness",
        "logged",
        "max_lateness",
        "plan",
        "profile",
        "removed",
        "slot",
        "state",
        "target",
    )

    def __init__(self, target: ModbusTarget, profile: Profile, endpoint: _Endpoint) -> None:
        self.target = target
        self.profile = profile
        self.plan = profile.read_plan
        self.endpoint = endpoint
        self.state: State = "pending"
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.cost = 0.0  # expected seconds one poll occupies the line (unknown: assume cheap)
        self.durations: tuple[float, ...] = ()  # the last three, for a cost one outlier can't move
        self.anchor = 0.0
        self.slot = 0
        self.due = 0.0
        self.gen = 0  # bumps whenever a queued heap entry must be ignored
        self.in_flight = False
        self.removed = False
        self.logged: set[str] = set()  # problems already logged since the last good poll
        self.lateness = 0.0  # of the last poll
        self.max_lateness = 0.0  # since added, or since reset_lateness()

    @property
    def name(self) -> str:
        return self.target.device.device

    @property
    def where(self) -> str:
        return f"{self.target.describe_endpoint()} unit {self.target.unit_id}"

    @property
    def max_defer(self) -> float:
        """How long a costly poll may wait for a gap: at most three times what it would cost the
        others, and half an interval (a whole one when failing: its reading is missing anyway)."""
        share = 1.0 if self.state in ("failing", "unreachable") else 0.5
        return min(share * self.target.interval_s, 3.0 * self.cost, 30.0)

    def measured(self, duration: float) -> None:
        """Cost = median of the last three polls: one hiccup does not make a device costly."""
        self.durations = (*self.durations[-2:], duration)
        self.cost = sorted(self.durations)[len(self.durations) // 2]


class _Endpoint:
    """One gateway or serial line: its devices' queue, its connection(s) and their workers."""

    def __init__(self, collector: ModbusCollector, key: EndpointKey, target: ModbusTarget) -> None:
        self.c = collector
        self.key = key
        self.target = target  # the connection parameters (first target seen for this endpoint)
        self.label = target.describe_endpoint()
        n = 1 if target.transport == "rtu" else collector.endpoint_concurrency
        self.links = [ModbusLink(target) for _ in range(n)]
        self.cheap: list[tuple[float, int, int, _Device]] = []
        self.costly: list[tuple[float, int, int, _Device]] = []
        self.devices: set[_Device] = set()
        self.busy = 0
        self.waiters: list[tuple[float, asyncio.Future[None]]] = []
        self.down_until = 0.0
        self.down_error = ""
        self.connect_failures = 0
        self.closing = False
        self.workers = [
            asyncio.create_task(self._work(link), name=f"modbus {self.label} #{i}")
            for i, link in enumerate(self.links)
        ]

    # -- queue -------------------------------------------------------------------------------

    def push(self, dev: _Device) -> None:
        heap = self.costly if dev.cost >= self.c.slow_request_s else self.cheap
        heapq.heappush(heap, (dev.due, next(self.c._seq), dev.gen, dev))
        for when, fut in self.waiters:
            if dev.due < when and not fut.done():
                fut.set_result(None)

    def kick(self) -> None:
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_result(None)

    def _top(self, heap: list[tuple[float, int, int, _Device]]) -> tuple[float, _Device] | None:
        while heap:
            due, _, gen, dev = heap[0]
            if gen == dev.gen and dev.endpoint is self and not dev.removed:
                return due, dev
            heapq.heappop(heap)  # stale: removed, moved or rescheduled since it was queued
        return None

    def _pick(self, now: float) -> tuple[_Device | None, float]:
        """The poll to run now, or None and when to look again."""
        h = self._top(self.cheap)
        k = self._top(self.costly)
        if k is not None and k[0] <= now:
            due, dev = k
            overdue = now - due >= dev.max_defer
            cheap_due = h is not None and h[0] <= now
            fits = h is None or h[0] >= now + dev.cost or self.busy + 1 < len(self.links)
            if overdue or (fits and not cheap_due):
                heapq.heappop(self.costly)
                return dev, now
        if h is not None and h[0] <= now:
            heapq.heappop(self.cheap)
            return h[1], now
        wake = math.inf
        if h is not None:
            wake = h[0]
        if k is not None:
            wake = min(wake, k[0] if k[0] > now else k[0] + k[1].max_defer)
        return None, wake

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        entry = (until, fut)
        self.waiters.append(entry)
        handle = None
        if until != math.inf:
            handle = loop.call_at(until, _resolve, fut)
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            self.waiters.remove(entry)

    # -- connection --------------------------------------------------------------------------

    def connect_failed(self, error: str, now: float) -> None:
        self.connect_failures += 1
        self.c.stats.connect_failures += 1
        cap = min(self.c.backoff_cap_s, 30.0)
        self.down_until = now + backoff_delay(
            self.connect_failures - 1, base=0.5, cap=cap, rng=self.c._rng
        )
        self.down_error = error
        if self.connect_failures == 1:
            log.warning("Modbus endpoint %s: %s; retrying with backoff", self.label, error)

    def connected(self) -> None:
        if self.connect_failures:
            log.info("Modbus endpoint %s connected again", self.label)
        self.connect_failures = 0
        self.down_until = 0.0

    # -- worker ------------------------------------------------------------------------------

    async def _work(self, link: ModbusLink) -> None:
        loop = asyncio.get_running_loop()
        c = self.c
        try:
            while not self.closing:
                dev, wake = self._pick(loop.time())
                if dev is None:
                    await self._sleep(loop, wake)
                    continue
                dev.in_flight = True
                self.busy += 1
                try:
                    async with c._slots:
                        await c._poll(dev, link, self)
                except Exception:  # a bug must not stop the endpoint's other devices
                    log.exception("Modbus poll of device %s failed unexpectedly", dev.name)
                finally:
                    self.busy -= 1
                    dev.in_flight = False
                if not dev.removed:
                    c._reschedule(dev, loop.time())
        finally:
            link.close()

    async def close(self) -> None:
        """Stop after the polls in flight (cancelling them after the collector's stop timeout)."""
        self.closing = True
        self.kick()
        workers = [w for w in self.workers if not w.done()]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=self.c.stop_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for link in self.links:
            link.close()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ModbusCollector:
    """Polls Modbus devices; see the module docstring for lifecycle, scheduling and states."""

    def __init__(
        self,
        ingestor: Ingestor,
        targets: TargetSource,
        *,
        profiles: Mapping[str, Profile] | None = None,
        refresh_s: float = 5.0,
        max_concurrency: int = 512,
        jitter: float = 0.1,
        failures_before_unreachable: int = 3,
        backoff_cap_s: float = 300.0,
        metrics: Metrics | None = None,
        endpoint_concurrency: int = 1,
        retries: int = 1,
        slow_request_s: float = 0.05,
        spool_full_hold_s: float = 30.0,
        max_held_readings: int = 10_000,
        stop_timeout_s: float = 5.0,
        lateness_samples: int = 200_000,
        seed: int | None = None,
    ) -> None:
        """``retries``: immediate retries of a timed-out request, for a device that was ``ok``.

        ``slow_request_s``: a device whose polls take longer (or that is failing) is *costly* and
        waits for a gap on its line. ``max_concurrency`` bounds polls in flight over all
        endpoints; keep it above the number of endpoints or endpoints start waiting for each other.
        """
        if refresh_s <= 0 or jitter < 0 or jitter > 1 or backoff_cap_s <= 0:
            raise ValueError("refresh_s and backoff_cap_s must be positive, jitter within 0..1")
        if min(max_concurrency, endpoint_concurrency, failures_before_unreachable) < 1:
            raise ValueError("concurrency settings and failures_before_unreachable must be >= 1")
        self.ingestor = ingestor
        self._source = targets
        self._profiles: Mapping[str, Profile] = (
            profiles if profiles is not None else load_profiles()
        )
        self.refresh_s = refresh_s
        self.max_concurrency = max_concurrency
        self.jitter = jitter
        self.failures_before_unreachable = failures_before_unreachable
        self.backoff_cap_s = backoff_cap_s
        self.metrics = metrics
        self.endpoint_concurrency = endpoint_concurrency
        self.retries = max(0, retries)
        self.slow_request_s = slow_request_s
        self.spool_full_hold_s = spool_full_hold_s
        self.max_held_readings = max_held_readings
        self.stop_timeout_s = stop_timeout_s
        self.stats = ModbusStats(lateness_s=deque(maxlen=lateness_samples))
        self._rng = random.Random(seed)
        self._seq = itertools.count()
        self._devices: dict[str, _Device] = {}
        self._endpoints: dict[EndpointKey, _Endpoint] = {}
        self._closing_endpoints: set[asyncio.Task[None]] = set()
        self._problems: dict[str, str] = {}  # device -> configuration problem last logged
        self._source_error: str | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._held: deque[tuple[float, DeviceInfo, dict[str, Any]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._prometheus: _PrometheusExport | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> ModbusCollector:
        self._loop = asyncio.get_running_loop()
        if self.metrics is not None:
            export = _PrometheusExport(self)
            try:
                self.metrics.registry.register(export)
                self._prometheus = export
            except ValueError as exc:  # a second collector on the same Metrics
                log.warning("Modbus metrics not exported: %s", exc)
        try:
            await self.refresh()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._refresher = asyncio.create_task(self._refresh_loop(), name="modbus-targets")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        await asyncio.gather(*(ep.close() for ep in endpoints))
        if self._closing_endpoints:
            await asyncio.gather(*self._closing_endpoints, return_exceptions=True)
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
        self._offer_held(final=True)
        if self._pending:  # readings written but not yet durable: count them as they settle
            await asyncio.wait(set(self._pending), timeout=10)
        if self._prometheus is not None and self.metrics is not None:
            with contextlib.suppress(KeyError):
                self.metrics.registry.unregister(self._prometheus)
            self._prometheus = None

    # -- targets -----------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Read the target source now and apply the differences (also runs every refresh_s)."""
        try:
            result = self._source()
            if inspect.isawaitable(result):
                result = await result
            targets = list(result)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._source_error:
                log.error("Modbus target list unavailable (%s); keeping the current one", message)
                self._source_error = message
            return
        self._source_error = None
        self._apply(targets)

    def _apply(self, targets: list[ModbusTarget]) -> None:
        wanted: dict[str, tuple[ModbusTarget, Profile]] = {}
        for target in targets:
            profile = self._profiles.get(target.profile_id)
            device = target.device.device
            if profile is None:
                self._problem(device, f"profile {target.profile_id!r} is not known")
            elif not profile.registers:
                self._problem(device, f"profile {target.profile_id!r} has no register map")
            else:
                self._problems.pop(device, None)
                wanted[device] = (target, profile)
        for name in [n for n in self._devices if n not in wanted]:
            self._remove(self._devices[name])
        for name, (target, profile) in wanted.items():
            dev = self._devices.get(name)
            if dev is None:
                self._add(target, profile)
            elif dev.target != target or dev.profile is not profile:
                self._update(dev, target, profile)

    def _problem(self, device: str, problem: str) -> None:
        if self._problems.get(device) != problem:
            log.error("Modbus device %s not polled: %s", device, problem)
            self._problems[device] = problem

    def _endpoint_for(self, target: ModbusTarget) -> _Endpoint:
        ep = self._endpoints.get(target.endpoint)
        if ep is None:
            ep = self._endpoints[target.endpoint] = _Endpoint(self, target.endpoint, target)
        elif target.transport == "rtu" and ep.target.describe_endpoint() != (
            target.describe_endpoint()
        ):
            self._problem(
                target.device.device,
                f"line settings {target.describe_endpoint()} differ from {ep.label}, "
                "which the line is opened with",
            )
        return ep

    def _first_slot(self, dev: _Device, now: float) -> None:
        interval = dev.target.interval_s
        dev.anchor = now + self._rng.uniform(0.0, interval)
        dev.slot = 0
        dev.due = dev.anchor + self._jitter(interval)

    def _jitter(self, interval: float) -> float:
        return (self._rng.random() - 0.5) * self.jitter * interval

    def _add(self, target: ModbusTarget, profile: Profile) -> None:
        ep = self._endpoint_for(target)
        dev = _Device(target, profile, ep)
        self._devices[dev.name] = dev
        ep.devices.add(dev)
        self._first_slot(dev, self._now())
        ep.push(dev)

    def _remove(self, dev: _Device) -> None:
        dev.removed = True
        dev.gen += 1
        del self._devices[dev.name]
        self._leave(dev.endpoint, dev)

    def _leave(self, ep: _Endpoint, dev: _Device) -> None:
        ep.devices.discard(dev)
        if not ep.devices and self._endpoints.get(ep.key) is ep:
            del self._endpoints[ep.key]
            task = asyncio.create_task(ep.close(), name=f"modbus close {ep.label}")
            self._closing_endpoints.add(task)
            task.add_done_callback(self._closing_endpoints.discard)

    def _update(self, dev: _Device, target: ModbusTarget, profile: Profile) -> None:
        old = dev.target
        if (target.profile_id, target.unit_id, target.endpoint) != (
            old.profile_id,
            old.unit_id,
            old.endpoint,
        ) or profile is not dev.profile:
            dev.state, dev.failures, dev.last_error = "pending", 0, None
            dev.cost, dev.durations = 0.0, ()
            dev.logged.clear()
        dev.target, dev.profile, dev.plan = target, profile, profile.read_plan
        old_ep = dev.endpoint
        new_ep = self._endpoint_for(target)
        if new_ep is not old_ep:
            new_ep.devices.add(dev)
            dev.endpoint = new_ep
            self._leave(old_ep, dev)
        if target.interval_s != old.interval_s:
            self._first_slot(dev, self._now())
            if dev.in_flight:
                dev.slot = -1  # the worker's reschedule moves it to slot 0 of the new anchor
        if not dev.in_flight:
            dev.gen += 1
            new_ep.push(dev)

    # -- status ------------------------------------------------------------------------------

    def status(self, device: str) -> dict[str, Any]:
        """``state`` (pending/ok/failing/unreachable), ``last_ok`` (UTC ISO), ``last_error``."""
        dev = self._devices.get(device)
        if dev is None:
            raise KeyError(f"no Modbus target for device {device!r}")
        return {
            "state": dev.state,
            "last_ok": _iso(dev.last_ok),
            "last_error": dev.last_error,
            "consecutive_failures": dev.failures,
            "endpoint": dev.target.describe_endpoint(),
            "unit_id": dev.target.unit_id,
            "next_poll_in_s": max(0.0, dev.due - self._now()),
            "lateness_s": dev.lateness,
            "max_lateness_s": dev.max_lateness,
        }

    def reset_lateness(self) -> None:
        """Forget lateness measured so far (e.g. after a warm-up), globally and per device."""
        self.stats.lateness_s.clear()
        for dev in self._devices.values():
            dev.max_lateness = 0.0

    def devices(self) -> list[str]:
        return list(self._devices)

    def states(self) -> Tally[str]:
        """How many devices are in each state."""
        return Tally(dev.state for dev in self._devices.values())

    # -- polling -----------------------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def _poll(self, dev: _Device, link: ModbusLink, ep: _Endpoint) -> None:
        loop = self._loop
        assert loop is not None
        stats = self.stats
        started = loop.time()
        late = started - dev.due
        stats.lateness_s.append(late)
        dev.lateness = late
        if late > dev.max_lateness:
            dev.max_lateness = late
        wall = time.time()
        target = dev.target
        plan = dev.plan
        responses: list[list[int] | None] = []
        failure: ReadError | None = None
        silent = False
        try:
            if not link.connected:
                if started < ep.down_until:
                    raise NoAnswer(ep.down_error)
                try:
                    await link.connect(target.timeout_s)
                except NoAnswer as exc:
                    ep.connect_failed(str(exc), loop.time())
                    raise
                ep.connected()
            retries = self.retries if dev.state == "ok" else 0
            for request in plan:
                registers: list[int] | None = None
                if not silent:
                    for attempt in range(retries + 1):
                        stats.requests += 1
                        try:
                            registers = await link.read(
                                request.function,
                                request.start,
                                request.count,
                                target.unit_id,
                                target.timeout_s,
                            )
                        except ExceptionReply as exc:
                            stats.exceptions[exc.code] += 1
                            failure = exc
                            silent = exc.silent
                        except NoAnswer as exc:
                            stats.no_answer += 1
                            if attempt < retries and link.connected:
                                continue
                            failure = exc
                            silent = True
                        break
                responses.append(registers)
        except NoAnswer as exc:
            failure, silent = exc, True
            responses = [None] * len(plan)
        duration = loop.time() - started
        if any(r is not None for r in responses):
            try:
                values = dev.profile.decode_registers(responses)
            except ValueError as exc:
                failure, values = NoAnswer(f"undecodable answer: {exc}"), {}
            if values and not dev.removed:
                self._submit(target.device, {"ts": round(wall, 3), "fields": values})
        if failure is None:
            self._succeeded(dev, duration, wall)
        else:
            self._failed(dev, failure, silent, duration)

    def _succeeded(self, dev: _Device, duration: float, wall: float) -> None:
        self.stats.polls_ok += 1
        previous = dev.state
        if previous != "ok":
            dev.durations = ()  # a timeout's cost says nothing about the answers to come
        dev.measured(duration)
        dev.state, dev.failures, dev.last_ok = "ok", 0, wall
        if previous == "unreachable":
            self.stats.recovered += 1
            log.info("Modbus device %s (%s) answers again", dev.name, dev.where)
        elif dev.logged:
            log.info("Modbus device %s (%s) polls cleanly again", dev.name, dev.where)
        dev.logged.clear()

    def _failed(self, dev: _Device, failure: ReadError, silent: bool, duration: float) -> None:
        self.stats.polls_failed += 1
        previous = dev.state
        dev.failures += 1
        dev.last_error = f"{_iso(time.time())}: {failure}"
        if silent:
            # The next try will likely be as slow: a timeout, or a gateway's exception 11.
            if isinstance(failure, ExceptionReply):
                dev.measured(duration)
            else:
                dev.durations, dev.cost = (), max(duration, dev.target.timeout_s)
            if dev.failures >= self.failures_before_unreachable:
                if previous != "unreachable":
                    self.stats.became_unreachable += 1
                    log.warning(
                        "Modbus device %s (%s) unreachable after %d failed polls: %s; "
                        "retrying with backoff up to %g s",
                        dev.name,
                        dev.where,
                        dev.failures,
                        failure,
                        self.backoff_cap_s,
                    )
                dev.state = "unreachable"
            else:
                dev.state = "failing"
            return
        dev.measured(duration)
        dev.state = "failing"  # it answers, so it is reachable: wrong address, busy, …
        key = str(failure)
        if key not in dev.logged:  # once per distinct problem until a clean poll
            dev.logged.add(key)
            log.warning("Modbus device %s (%s) answered %s", dev.name, dev.where, failure)

    def _reschedule(self, dev: _Device, now: float) -> None:
        interval = dev.target.interval_s
        slot = dev.slot + 1
        if dev.state in ("failing", "unreachable"):
            delay = backoff_delay(
                dev.failures - 1,
                base=interval,
                cap=max(self.backoff_cap_s, interval),
                rng=self._rng,
            )
            slot = max(slot, math.ceil((now + delay - dev.anchor) / interval))
        elif dev.anchor + slot * interval < now - interval / 2:
            caught_up = math.ceil((now - dev.anchor) / interval)
            self.stats.polls_skipped += caught_up - slot
            slot = caught_up
        dev.slot = slot
        dev.due = dev.anchor + slot * interval + self._jitter(interval)
        dev.endpoint.push(dev)

    # -- readings ----------------------------------------------------------------------------

    def _submit(self, device: DeviceInfo, raw: dict[str, Any]) -> bool:
        """Hand one reading to the pipeline; False when the spool is full (the caller holds it)."""
        try:
            outcome = self.ingestor.submit(PROTOCOL, device, [raw])
        except SpoolFull:
            if not self._closing:
                self._hold(device, raw)
            else:
                self._drop(device, 1, "the collector is stopping and the spool is full")
            return False
        self._account(outcome)
        return True

    def _account(self, outcome: Outcome) -> None:
        self.stats.readings_rejected += len(outcome.rejected)
        fut = outcome.durable
        if fut is None:
            return
        n = outcome.accepted
        self.stats.readings_submitted += n
        if fut.done():
            self._settled(n, fut)
        else:
            self._pending.add(fut)
            fut.add_done_callback(partial(self._settled, n))

    def _settled(self, n: int, fut: asyncio.Future[None]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is None:
            self.stats.readings_stored += n
            return
        self.stats.readings_dropped["store_failed"] += n
        log.error(
            "spool could not make %d Modbus reading(s) durable: %s",
            n,
            "cancelled" if fut.cancelled() else fut.exception(),
        )

    def _hold(self, device: DeviceInfo, raw: dict[str, Any]) -> None:
        if len(self._held) >= self.max_held_readings:
            _, old_device, _ = self._held.popleft()
            self._drop(old_device, 1, f"more than {self.max_held_readings} readings held")
        self._held.append((self._now(), device, raw))
        self.stats.readings_held = len(self._held)
        if self._drainer is None or self._drainer.done():
            log.warning(
                "spool full: holding Modbus readings in memory (at most %d, for at most %g s)",
                self.max_held_readings,
                self.spool_full_hold_s,
            )
            self._drainer = asyncio.create_task(self._drain(), name="modbus-held-readings")

    def _drop(self, device: DeviceInfo, n: int, why: str) -> None:
        self.stats.readings_dropped["spool_full"] += n
        for _ in range(n):
            self.ingestor.count_rejection(
                PROTOCOL, device.device, Rejection(Reason.SPOOL_FULL, f"reading dropped: {why}")
            )

    async def _drain(self) -> None:
        spool = self.ingestor.spool
        loop = asyncio.get_running_loop()
        while self._held:
            started = loop.time()
            if not await spool.wait_for_room(1024, timeout=1.0) and loop.time() - started < 0.5:
                await asyncio.sleep(0.5)  # closed or cannot fit: do not spin
            self._offer_held()
        log.info("spool has room again: held Modbus readings stored")

    def _offer_held(self, *, final: bool = False) -> None:
        """Submit held readings in order while the spool takes them; expire the too-old ones."""
        now = self._now()
        held = self._held
        while held and not final and now - held[0][0] > self.spool_full_hold_s:
            _, device, _ = held.popleft()
            self._drop(device, 1, f"spool full for more than {self.spool_full_hold_s:g} s")
        while held:
            _, device, raw = held[0]
            try:
                outcome = self.ingestor.submit(PROTOCOL, device, [raw])
            except (SpoolFull, RuntimeError):  # full, or closed under us
                if not final:
                    break
                held.popleft()
                self._drop(device, 1, "the collector stopped before the spool had room")
                continue
            held.popleft()
            self._account(outcome)
        self.stats.readings_held = len(held)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _PrometheusExport(Collector):
    """The collector's counters in Prometheus format, registered on ``Metrics.registry``."""

    def __init__(self, collector: ModbusCollector) -> None:
        self.c = collector

    def collect(self) -> Iterator[Any]:
        s = self.c.stats
        polls = CounterMetricFamily(
            "weijian_modbus_polls", "Modbus polls by result.", labels=["result"]
        )
        polls.add_metric(["ok"], s.polls_ok)
        polls.add_metric(["failed"], s.polls_failed)
        polls.add_metric(["skipped"], s.polls_skipped)
        yield polls
        exceptions = CounterMetricFamily(
            "weijian_modbus_exceptions",
            "Modbus exception responses by code.",
            labels=["code", "name"],
        )
        for code, n in sorted(s.exceptions.items()):
            exceptions.add_metric([str(code), exception_name(code)], n)
        yield exceptions
        for name, value, text in (
            ("requests", s.requests, "Modbus read requests sent."),
            ("no_answer", s.no_answer, "Modbus requests that timed out or had no connection."),
            ("connect_failures", s.connect_failures, "Failed Modbus connection attempts."),
            ("unreachable", s.became_unreachable, "Times a Modbus device became unreachable."),
            ("recovered", s.recovered, "Times an unreachable Modbus device answered again."),
            ("readings_stored", s.readings_stored, "Modbus readings durable in the spool."),
        ):
            counter = CounterMetricFamily(f"weijian_modbus_{name}", text)
            counter.add_metric([], value)
            yield counter
        dropped = CounterMetricFamily(
            "weijian_modbus_readings_dropped", "Modbus readings lost, by reason.", labels=["reason"]
        )
        for reason, n in s.readings_dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        states = self.c.states()
        devices = GaugeMetricFamily(
            "weijian_modbus_devices", "Modbus devices by state.", labels=["state"]
        )
        for state in STATES:
            devices.add_metric([state], states.get(state, 0))
        yield devices
        held = GaugeMetricFamily("weijian_modbus_readings_held", "Readings waiting for spool room.")
        held.add_metric([], s.readings_held)
        yield held
        lateness = GaugeMetricFamily(
            "weijian_modbus_poll_lateness_seconds",
            "Poll start minus scheduled time over recent polls.",
            labels=["quantile"],
        )
        for q, value in s.lateness_quantiles((0.5, 0.99)).items():
            lateness.add_metric([str(q)], value)
        yield lateness
