"""BatchWriter failure semantics, through a real fault-injecting HTTP proxy to the real InfluxDB.

The proxy (aiohttp.web on a free loopback port) forwards to influxd unless told to fail the next
requests (5xx, 429 + Retry-After, 401, a dropped connection, a slow answer) or to refuse bodies
above K lines / B bytes with 413. Every test then counts what really arrived in InfluxDB. The
writer's ``sleep`` is a recorder, so backoff is asserted, not waited for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from protocols.backoff import MAX_RETRY_AFTER_S, backoff_delay, retry_delay
from protocols.influx.client import InfluxClient
from protocols.influx.writer import BatchWriter, FileDeadLetter
from protocols.lineprotocol import encode_line

T0 = 1_700_000_000_000  # ms


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Fault:
    status: int | None = None  # answer this instead of forwarding; None = drop the connection
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # wait this long, then forward (a slow server)
    forward: bool = False  # no fault this time: lets a test aim at the n-th request


class FaultProxy:
    """Forwards /write, /query and /ping to influxd, with faults injected on demand."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.faults: list[Fault] = []
        self.max_lines: int | None = None
        self.max_bytes: int | None = None
        self.forwarded_sizes: list[int] = []  # lines per request that reached influxd
        self.requests = 0
        self.url = ""
        self._session: aiohttp.ClientSession | None = None

    def fail(self, n: int, status: int | None, body: str = "", **headers: str) -> None:
        self.faults.extend(Fault(status, body, dict(headers)) for _ in range(n))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        lines = body.count(b"\n") + 1 if body else 0
        if self.faults:
            fault = self.faults.pop(0)
            if fault.forward:
                pass
            elif fault.delay:
                await asyncio.sleep(fault.delay)
            elif fault.status is None:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=204)
            else:
                return web.Response(
                    status=fault.status,
                    text=fault.body,
                    headers=fault.headers,
                    content_type="application/json",
                )
        too_many = self.max_lines is not None and lines > self.max_lines
        if too_many or (self.max_bytes is not None and len(body) > self.max_bytes):
            return web.json_response({"error": "Request Entity Too Large"}, status=413)
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k in ("Authorization", "Content-Type", "Content-Encoding")
        }
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            if request.path == "/write" and resp.status == 204:
                self.forwarded_sizes.append(lines)
            passed = {
                k: v
                for k, v in resp.headers.items()
                if k in ("Content-Type", "X-Influxdb-Version", "X-Influxdb-Error")
            }
            return web.Response(status=resp.status, body=payload, headers=passed)


@pytest.fixture
async def proxy(influx) -> AsyncIterator[FaultProxy]:
    state = FaultProxy(influx.url)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as session:
        state._session = session
        yield state
    await runner.cleanup()


class MemoryDeadLetter:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, str]] = []

    def put(self, db: str, line: bytes, reason: str) -> None:
        self.items.append((db, line, reason))


class Sleeps:
    """Records requested delays instead of sleeping; ``hook`` runs on each call."""

    def __init__(self, hook: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook is not None:
            await self.hook(len(self.delays))
        await asyncio.sleep(0)


def good_lines(n: int, measurement: str = "air", start: int = 0) -> list[bytes]:
    return [
        encode_line(
            measurement,
            {"device": f"d{i % 17}", "site": "s1"},
            {"co2": 400.0 + i, "temp": 20.5 + (i % 10) / 10},
            T0 + (start + i) * 1000,
        ).encode()
        for i in range(n)
    ]


def make_writer(url: str, influx, **kwargs) -> tuple[BatchWriter, MemoryDeadLetter, Sleeps]:
    client = InfluxClient(
        url,
        username=influx.creds.username,
        password=influx.creds.password,
        timeout_s=kwargs.pop("timeout_s", 10.0),
    )
    dead = MemoryDeadLetter()
    sleeps = kwargs.pop("sleep", None) or Sleeps()
    writer = BatchWriter(
        client,
        dead_letter=dead,
        backoff_base=0.5,
        backoff_cap=30.0,
        rng=random.Random(7),
        sleep=sleeps,
        **kwargs,
    )
    return writer, dead, sleeps


# --- backoff (pure functions, table-tested) -----------------------------------------------------


class FixedRng(random.Random):
    def __init__(self, u: float) -> None:
        super().__init__()
        self.u = u

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.u


@pytest.mark.parametrize(
    ("attempt", "u", "expected"),
    [
        (0, 0.0, 0.25),  # equal jitter: [d/2, d] with d = base * 2**attempt = 0.5
        (0, 1.0, 0.5),
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (3, 1.0, 4.0),
        (6, 0.0, 15.0),  # 0.5 * 64 = 32 capped to 30 -> [15, 30]
        (6, 1.0, 30.0),
        (1000, 1.0, 30.0),  # no overflow
    ],
)
def test_backoff_delay_table(attempt: int, u: float, expected: float) -> None:
    assert backoff_delay(attempt, base=0.5, cap=30.0, rng=FixedRng(u)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (0, None, 0.5),  # plain backoff (u = 1)
        (0, 1.0, 1.0),  # never sooner than Retry-After
        (5, 1.0, 16.0),  # ... but the backoff may be longer
        (0, 60.0, 60.0),  # above cap: max(cap, retry_after) allows it
        (0, 3600.0, MAX_RETRY_AFTER_S),  # bounded by 300 s
        (0, -3.0, 0.5),  # nonsense ignored
        (0, float("nan"), 0.5),
        (20, 0.0, 30.0),
    ],
)
def test_retry_delay_table(attempt: int, retry_after: float | None, expected: float) -> None:
    got = retry_delay(attempt, base=0.5, cap=30.0, retry_after=retry_after, rng=FixedRng(1.0))
    assert got == pytest.approx(expected)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, base=1, cap=1)
    rng = random.Random(1)
    delays = [backoff_delay(4, base=0.5, cap=30.0, rng=rng) for _ in range(1000)]
    assert min(delays) >= 4.0
    assert max(delays) <= 8.0


# --- the writer through the proxy ---------------------------------------------------------------


async def test_clean_write_reports_latency(influx, influx_db: str, proxy: FaultProxy) -> None:
    observed: list[tuple[int, float]] = []
    writer, dead, sleeps = make_writer(
        proxy.url, influx, on_write=lambda n, s: observed.append((n, s))
    )
    async with writer.client:
        assert await writer.write(influx_db, good_lines(500)) == 500
        assert await writer.write(influx_db, []) == 0
    assert influx.count(influx_db, "air", "co2") == 500
    assert len(observed) == 1
    assert observed[0][0] == 500
    assert 0 < observed[0][1] < 5
    assert writer.stats.batches_ok == 1
    assert writer.stats.lines_written == 500
    assert (dead.items, sleeps.delays, writer.stats.retries) == ([], [], 0)


async def test_5xx_is_retried_until_it_succeeds(
    influx, influx_db: str, proxy: FaultProxy, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="protocols.influx.writer")
    proxy.fail(2, 503, '{"error":"unavailable"}')
    proxy.fail(2, 500, '{"error":"timeout"}')
    writer, dead, sleeps = make_writer(proxy.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, good_lines(300)) == 300
    assert influx.count(influx_db, "air", "co2") == 300
    assert writer.stats.retries == 4
    assert len(sleeps.delays) == 4
    for attempt, delay in enumerate(sleeps.delays):  # equal jitter bounds
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert dead.items == []
    assert "timeout" in (writer.stats.last_error or "")
    # One WARNING for the first failure (the next ones are within 30 s), one INFO on recovery.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert influx_db in warnings[0].args  # %s-style, not pre-formatted
    assert any("succeeded after 5 attempts" in r.getMessage() for r in caplog.records)


async def test_429_retry_after_is_honoured(influx, influx_db: str, proxy: FaultProxy) -> None:
    proxy.fail(1, 429, '{"message":"slow down"}', **{"Retry-After": "1"})
    proxy.fail(1, 503, "", **{"Retry-After": "2"})
    writer, dead, sleeps = make_writer(proxy.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, good_lines(50)) == 50
    assert sleeps.delays[0] >= 1.0
    assert sleeps.delays[1] >= 2.0
    assert influx.count(influx_db, "air", "co2") == 50
    assert dead.items == []


async def test_dropped_connections_and_timeouts_are_retried(
    influx, influx_db: str, proxy: FaultProxy
) -> None:
    proxy.fail(2, None)  # close the connection without answering
    proxy.faults.append(Fault(delay=0.5))  # answer too late (the write still lands: dedup)
    writer, dead, _ = make_writer(proxy.url, influx, timeout_s=0.25)
    async with writer.client:
        assert await writer.write(influx_db, good_lines(200)) == 200
    await asyncio.sleep(0.6)  # let the late, forwarded copy land before counting
    assert influx.count(influx_db, "air", "co2") == 200  # exactly once
    assert writer.stats.retries == 3
    assert dead.items == []


async def test_413_splits_in_halves(influx, influx_db: str, proxy: FaultProxy) -> None:
    proxy.max_lines = 100
    writer, dead, sleeps = make_writer(proxy.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, good_lines(1000)) == 1000
    assert influx.count(influx_db, "air", "co2") == 1000
    # 1000 -> 500 -> 250 -> 125 are refused (1 + 2 + 4 + 8 splits); 62/63-line halves pass.
    assert writer.stats.split_413 == 15
    assert writer.stats.batches_ok == 16
    assert sorted(set(proxy.forwarded_sizes)) == [62, 63]
    assert (dead.items, sleeps.delays) == ([], [])


async def test_single_line_too_large_is_dead_lettered(
    influx, influx_db: str, proxy: FaultProxy
) -> None:
    proxy.max_bytes = 2000
    huge = encode_line("air", {"device": "big"}, {"note": "x" * 5000}, T0).encode()
    lines = good_lines(20)
    lines.insert(7, huge)
    writer, dead, _ = make_writer(proxy.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, lines) == 20
    assert influx.count(influx_db, "air", "co2") == 20
    assert dead.items == [(influx_db, huge, "too large")]
    assert writer.stats.dead_lettered == 1
    assert writer.stats.bad_lines == 0


async def test_auth_failures_wait_and_never_dead_letter(
    influx, influx_db: str, proxy: FaultProxy, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy.fail(3, 401, '{"error":"authorization failed"}')
    writer, dead, sleeps = make_writer(proxy.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, good_lines(100)) == 100
    assert writer.stats.auth_failures == 3
    assert len(sleeps.delays) == 3
    assert dead.items == []
    assert influx.count(influx_db, "air", "co2") == 100
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "configuration" in errors[0].getMessage()
    assert influx.creds.password not in caplog.text


async def test_missing_database_waits_until_it_exists(influx, influx_db: str) -> None:
    """Real 404 from influxd: the writer retries; the 'operator' creates the database."""
    db = influx_db + "_late"

    async def create_on_second_sleep(n: int) -> None:
        if n == 2:
            influx.query(f'CREATE DATABASE "{db}"')

    writer, dead, sleeps = make_writer(influx.url, influx, sleep=Sleeps(create_on_second_sleep))
    try:
        async with writer.client:
            assert await writer.write(db, good_lines(40)) == 40
        assert influx.count(db, "air", "co2") == 40
    finally:
        influx.query(f'DROP DATABASE "{db}"')
    assert writer.stats.auth_failures == 2
    assert len(sleeps.delays) == 2
    assert dead.items == []


async def test_bad_lines_among_a_thousand_good_ones(influx, influx_db: str) -> None:
    """Syntax errors and field type conflicts are isolated; every good line is stored once."""
    good = good_lines(1000)
    bad = [
        b"this is not line protocol",
        b"air,device=x co2=",
        b'air,device=x co2="unterminated',
        b"air,device=x co2=1.0 not-a-time",
        b"air,device=x co2=1.0.0 1700000000000",
        b'air,device=x co2="a string now" 1700000500000',  # type conflict: co2 is a float
        b"air,device=x temp=5i 1700000600000",  # type conflict: temp is a float
        b"air,device=x co2=NaN 1700000700000",
        b"air,time=x co2=1.0 1700000800000",
    ]
    rng = random.Random(3)
    lines = list(good)
    positions = sorted(rng.sample(range(1, 1000), len(bad)))  # the first line fixes the types
    for offset, (pos, line) in enumerate(zip(positions, bad, strict=True)):
        lines.insert(pos + offset, line)
    writer, dead, sleeps = make_writer(influx.url, influx)
    async with writer.client:
        assert await writer.write(influx_db, lines) == 1000
    assert influx.count(influx_db, "air", "co2") == 1000
    assert [line for _, line, _ in dead.items] == bad
    reasons = {line: reason for _, line, reason in dead.items}
    assert "unable to parse" in reasons[b"this is not line protocol"]
    assert "field type conflict" in reasons[b'air,device=x co2="a string now" 1700000500000']
    assert "field type conflict" in reasons[b"air,device=x temp=5i 1700000600000"]
    assert "invalid" in reasons[b"air,time=x co2=1.0 1700000800000"]
    assert writer.stats.bad_lines == len(bad)
    assert writer.stats.dead_lettered == len(bad)
    assert writer.stats.lines_written == 1000
    assert sleeps.delays == []


async def test_outage_during_bisection_still_delivers(
    influx, influx_db: str, proxy: FaultProxy
) -> None:
    lines = good_lines(64)
    lines.insert(40, b"garbage line")
    writer, dead, sleeps = make_writer(proxy.url, influx)
    # Request 1 (all 65 lines) gets InfluxDB's 400; requests 2 and 4 (halves) hit an outage.
    proxy.faults = [Fault(forward=True), Fault(503), Fault(forward=True), Fault(None)]
    async with writer.client:
        assert await writer.write(influx_db, lines) == 64
    assert influx.count(influx_db, "air", "co2") == 64
    assert [line for _, line, _ in dead.items] == [b"garbage line"]
    assert len(sleeps.delays) == 2


async def test_cancellation_loses_nothing(influx, influx_db: str, proxy: FaultProxy) -> None:
    proxy.fail(10_000, 503)
    third_retry = asyncio.Event()
    calls = 0

    async def tick(delay: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third_retry.set()
        await asyncio.sleep(0.001)

    writer, dead, _ = make_writer(proxy.url, influx, sleep=tick)
    async with writer.client:
        task = asyncio.create_task(writer.write(influx_db, good_lines(10)))
        await asyncio.wait_for(third_retry.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert dead.items == []
    assert writer.stats.dead_lettered == 0
    assert influx.count(influx_db, "air", "co2") == 0


def test_file_dead_letter_is_json_lines(tmp_path: Path) -> None:
    sink = FileDeadLetter(tmp_path / "dead" / "letters.jsonl")
    sink.put("weijian", '空气,站点=北京 温度="bad" 1'.encode(), "field type conflict")
    sink.put("weijian_t_a", b"\xff\xfe not utf-8", "unable to parse")
    # flushed per call: readable before close
    records = [json.loads(x) for x in sink.path.read_text(encoding="utf-8").splitlines()]
    sink.close()
    assert [r["db"] for r in records] == ["weijian", "weijian_t_a"]
    assert records[0]["line"] == '空气,站点=北京 温度="bad" 1'
    assert records[0]["reason"] == "field type conflict"
    assert records[1]["line"] == "\\xff\\xfe not utf-8"
    assert records[0]["time"].endswith("+00:00")
    assert set(records[0]) == {"time", "db", "line", "reason"}
