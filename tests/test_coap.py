"""CoAP collector against simulated devices over real UDP: a real aiocoap server on loopback, a
real spool (fsync always) and the shared ingestor."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import orjson
import pytest
from aiocoap import Code, Message

import collectors.spool as spool_module
from collectors.coap import CoapCollector
from collectors.metrics import Metrics
from collectors.pipeline import Ingestor
from collectors.records import EVENT_ROUTE, decode_record
from collectors.spool import Spool
from protocols.catalog import default_catalog
from protocols.directory import DeviceInfo, StaticDirectory
from protocols.reading import ReadingValidator
from simulators.coap_device import (
    EXPECTED_CODE,
    CoapFault,
    CoapFleet,
    FaultWindow,
    SimulatedCoapDevice,
)

MONITOR = DeviceInfo("gr10-1", "t-hosp", "ct-room-2", "dose_rate_monitor", "440106")
READER = DeviceInfo("dr20-1", "t-hosp", "ct-room-2", "dosimeter", "440106")
GHOST = "gr10-ghost"  # has a token, but is not in the directory
TOKENS = {
    "wjc_0123456789ab_monitor-secret-0123456789": MONITOR.device,
    "wjc_abcdef012345_reader-secret-abcdefghijk": READER.device,
    "wjc_fedcba987654_ghost-secret-zyxwvutsrqpo": GHOST,
}
MONITOR_TOKEN, READER_TOKEN, GHOST_TOKEN = TOKENS
MAX_PAYLOAD = 48 << 10


@dataclass
class Rig:
    spool: Spool
    ingestor: Ingestor
    collector: CoapCollector
    client: aiocoap.Context

    @property
    def base(self) -> str:
        return f"coap://127.0.0.1:{self.collector.port}/t"

    async def post(
        self,
        payload: bytes,
        *,
        token: str | None = MONITOR_TOKEN,
        content_format: int | None = 50,
        confirmable: bool = True,
        code: Code = Code.POST,
    ) -> Message:
        uri = self.base + (f"?k={token}" if token is not None else "")
        message = Message(
            code=code,
            uri=uri,
            payload=payload,
            content_format=content_format,
            transport_tuning=aiocoap.Reliable if confirmable else aiocoap.Unreliable,
        )
        return await asyncio.wait_for(self.client.request(message).response, 10)

    @property
    def rejected(self) -> dict[tuple[str, str], int]:
        return dict(self.ingestor.metrics.ingest.rejected)


def _ingestor(spool: Spool) -> Ingestor:
    directory = StaticDirectory([MONITOR, READER])
    return Ingestor(directory, ReadingValidator(default_catalog()), spool, Metrics())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with Spool(tmp_path / "spool") as spool:
        ingestor = _ingestor(spool)
        async with CoapCollector(ingestor, TOKENS.get, port=0, max_payload=MAX_PAYLOAD) as coll:
            client = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                yield Rig(spool, ingestor, coll, client)
            finally:
                await client.shutdown()


async def spooled_lines(spool: Spool) -> list[str]:
    """Every reading line spooled so far (platform events such as rejections left out)."""
    lines: list[str] = []
    while True:
        batch = await spool.read_batch(10_000, timeout=0.05)
        if not batch.records:
            return lines
        for record in batch.records:
            route, line = decode_record(record)
            if route != EVENT_ROUTE:
                lines.append(line.decode())


def _now() -> float:
    return round(time.time() - 1, 3)


async def test_json_and_cbor_readings_arrive_in_the_spool(rig: Rig) -> None:
    t = _now()
    one = {"ts": t, "fields": {"dose_rate_usv_h": 0.18, "beam_on": False}}
    batch = {"readings": [{"ts": t + i, "fields": {"dose_rate_usv_h": 0.2 + i}} for i in range(3)]}
    r = await rig.post(orjson.dumps(one))
    assert (r.code, r.opt.content_format, orjson.loads(r.payload)) == (
        Code.CHANGED,
        50,
        {"accepted": 1, "rejected": []},
    )
    r = await rig.post(orjson.dumps(batch), content_format=None)  # no option: JSON
    assert r.code == Code.CHANGED
    assert orjson.loads(r.payload)["accepted"] == 3

    iso = datetime.fromtimestamp(t + 10, UTC).isoformat()
    cbor_batch = {
        "readings": [
            {"ts": cbor2.CBORTag(1, t + 11), "fields": {"dose_msv": 0.125, "dose_rate_usv_h": 1}},
            {"ts": cbor2.CBORTag(0, iso), "fields": {"dose_msv": 0.126}},
            {"ts": t + 12, "fields": {"dose_msv": float("nan")}},  # CBOR can say NaN
        ]
    }
    r = await rig.post(cbor2.dumps(cbor_batch), token=READER_TOKEN, content_format=60)
    assert r.code == Code.CHANGED
    assert r.opt.content_format == 60
    assert cbor2.loads(r.payload) == {
        "accepted": 2,
        "rejected": [{"index": 2, "reason": "non_finite"}],
    }

    lines = await spooled_lines(rig.spool)
    assert len(lines) == 6
    assert lines[0] == (
        "dose_rate_monitor,device=gr10-1,region=440106,site=ct-room-2,tenant=t-hosp "
        f"dose_rate_usv_h=0.18,beam_on=false {round(t * 1000)}"
    )
    reader_lines = [line for line in lines if line.startswith("dosimeter,device=dr20-1,")]
    assert [line.rsplit(" ", 1)[1] for line in reader_lines] == [
        str(round((t + 11) * 1000)),
        str(round((t + 10) * 1000)),
    ]
    assert "dose_msv=0.125,dose_rate_usv_h=1" in reader_lines[0]  # float field, as in JSON
    ingest = rig.ingestor.metrics.ingest
    assert (ingest.received["coap"], ingest.accepted["coap"]) == (7, 6)
    assert rig.rejected == {("coap", "non_finite"): 1}
    assert rig.collector.stats.responses == Counter({"2.04": 3})


async def _blocks_without_size1(rig: Rig, total: int) -> Message:
    """A Block1 transfer as a device that never says Size1 would send it, block by block."""
    payload = b" " * total
    response: Message | None = None
    for number, start in enumerate(range(0, total, 1024)):
        chunk = payload[start : start + 1024]
        more = start + 1024 < total
        message = Message(
            code=Code.POST,
            uri=f"{rig.base}?k={MONITOR_TOKEN}",
            payload=chunk,
            content_format=50,
            block1=(number, more, 6),
        )
        response = await rig.client.request(message, handle_blockwise=False).response
        if response.code != Code.CONTINUE:
            return response
    assert response is not None
    return response


async def test_every_error_code_is_answered_and_counted_with_its_reason(rig: Rig) -> None:
    good = orjson.dumps({"fields": {"dose_rate_usv_h": 0.2}})
    cases: list[tuple[str, Callable[[], Any], Code, str]] = [
        ("no token", lambda: rig.post(good, token=None), Code.UNAUTHORIZED, "unknown_device"),
        (
            "wrong secret",
            lambda: rig.post(good, token=MONITOR_TOKEN[:-1] + "X"),
            Code.UNAUTHORIZED,
            "unknown_device",
        ),
        (
            "not a token",
            lambda: rig.post(good, token="hunter2"),
            Code.UNAUTHORIZED,
            "unknown_device",
        ),
        (
            "block-wise, wrong secret",  # refused at the first block: nothing is reassembled
            lambda: rig.post(b" " * 5000, token=MONITOR_TOKEN[:-1] + "X"),
            Code.UNAUTHORIZED,
            "unknown_device",
        ),
        (
            "registered nowhere",
            lambda: rig.post(good, token=GHOST_TOKEN),
            Code.FORBIDDEN,
            "unknown_device",
        ),
        (
            "text/plain",
            lambda: rig.post(good, content_format=0),
            Code.UNSUPPORTED_CONTENT_FORMAT,
            "malformed",
        ),
        (
            "Size1 too big",
            lambda: rig.post(b" " * (MAX_PAYLOAD + 1)),
            Code.REQUEST_ENTITY_TOO_LARGE,
            "oversized",
        ),
        (
            "blocks past the cap",
            lambda: _blocks_without_size1(rig, MAX_PAYLOAD + 2048),
            Code.REQUEST_ENTITY_TOO_LARGE,
            "oversized",
        ),
        ("not JSON", lambda: rig.post(b'{"fields": '), Code.BAD_REQUEST, "malformed"),
        (
            "NaN literal",
            lambda: rig.post(b'{"fields": {"dose_rate_usv_h": NaN}}'),
            Code.BAD_REQUEST,
            "malformed",
        ),
        (
            "cut CBOR",
            lambda: rig.post(cbor2.dumps({"fields": {}})[:-1], content_format=60),
            Code.BAD_REQUEST,
            "malformed",
        ),
        (
            "CBOR bignum",
            lambda: rig.post(
                cbor2.dumps({"fields": {"dose_rate_usv_h": 2**80}}), content_format=60
            ),
            Code.BAD_REQUEST,
            "malformed",
        ),
        (
            "CBOR trailing bytes",
            lambda: rig.post(cbor2.dumps({"fields": {}}) + b"\x00", content_format=60),
            Code.BAD_REQUEST,
            "malformed",
        ),
        ("a list", lambda: rig.post(b"[1, 2]"), Code.BAD_REQUEST, "malformed"),
        (
            "1001 readings",
            lambda: rig.post(orjson.dumps({"readings": [{"fields": {"beam_on": True}}] * 1001})),
            Code.BAD_REQUEST,
            "too_many_readings",
        ),
        (
            "all rejected",
            lambda: rig.post(b'{"fields": {"dose_rate_usv_h": -3}}'),
            Code.BAD_REQUEST,
            "out_of_range",
        ),
    ]
    expected: Counter[tuple[str, str]] = Counter()
    for name, send, code, reason in cases:
        response = await send()
        assert response.code == code, (name, response.code, response.payload)
        expected[("coap", reason)] += 1
        assert rig.rejected == expected, name
        assert response.opt.content_format is None, name  # diagnostic text (RFC 7252 5.5.2)
        assert response.payload.decode().startswith(
            "all_rejected:" if name == "all rejected" else f"{reason}:"
        ), (name, response.payload)
        if code == Code.REQUEST_ENTITY_TOO_LARGE:
            assert response.opt.size1 == MAX_PAYLOAD
    # the onboarding check sees the device's own refusals with their details
    details = [d for _, _, d in rig.ingestor.metrics.ingest.recent[MONITOR.device]]
    assert any("outside its physical range" in d for d in details)
    # unauthenticated input is counted under "?" and names only the public key id
    anonymous = [d for _, _, d in rig.ingestor.metrics.ingest.recent["?"]]
    assert any("'0123456789ab'" in d for d in anonymous)
    assert not any("monitor-secret" in d for d in anonymous)
    # methods other than POST: aiocoap's own 4.05, not input we count
    r = await rig.post(b"", code=Code.GET)
    assert r.code == Code.METHOD_NOT_ALLOWED
    # still serving, and nothing bad reached the spool
    assert (await rig.post(good)).code == Code.CHANGED
    assert len(await spooled_lines(rig.spool)) == 1


async def test_spool_full_answers_503_with_max_age_until_it_drains(tmp_path: Path) -> None:
    async with Spool(tmp_path / "spool", max_bytes=1500) as spool:
        ingestor = _ingestor(spool)
        async with CoapCollector(ingestor, TOKENS.get, port=0, retry_after_s=7) as collector:
            client = await aiocoap.Context.create_client_context(transports=["udp6"])
            rig = Rig(spool, ingestor, collector, client)
            try:
                reading = orjson.dumps({"fields": {"dose_rate_usv_h": 0.2}})
                codes = [(await rig.post(reading)).code for _ in range(20)]
                assert Code.CHANGED in codes
                assert codes[-1] == Code.SERVICE_UNAVAILABLE
                full = await rig.post(reading)
                assert full.code == Code.SERVICE_UNAVAILABLE
                assert full.opt.max_age == 7
                assert full.payload.startswith(b"spool_full:")
                refused = codes.count(Code.SERVICE_UNAVAILABLE) + 1
                assert rig.rejected == {("coap", "spool_full"): refused}
                batch = await spool.read_batch(10_000, timeout=0.1)  # the forwarder catches up
                await spool.commit(batch)
                assert (await rig.post(reading)).code == Code.CHANGED  # the retry gets in
            finally:
                await client.shutdown()


@pytest.fixture
def slow_fsync(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """fsync takes 0.3 s; returns the monotonic times at which fsyncs finished."""
    done: list[float] = []
    real = spool_module._fsync_all

    def slow(fds: list[int], dir_fd: int | None) -> None:
        time.sleep(0.3)
        real(fds, dir_fd)
        done.append(time.monotonic())

    monkeypatch.setattr(spool_module, "_fsync_all", slow)
    return done


async def test_answer_comes_only_after_the_readings_are_durable(
    rig: Rig, slow_fsync: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    futures: list[asyncio.Future[None]] = []
    append = rig.spool.append

    def recording_append(records: Any) -> asyncio.Future[None]:
        fut = append(records)
        futures.append(fut)
        return fut

    monkeypatch.setattr(rig.spool, "append", recording_append)
    for confirmable in (True, False):
        futures.clear()
        fsyncs = rig.spool.stats.fsyncs
        sent = time.monotonic()
        payload = orjson.dumps({"ts": _now(), "fields": {"dose_rate_usv_h": 0.2}})
        response = await rig.post(payload, confirmable=confirmable)
        received = time.monotonic()
        assert response.code == Code.CHANGED
        assert len(futures) == 1
        assert futures[0].done()
        assert rig.spool.stats.fsyncs == fsyncs + 1
        assert slow_fsync[-1] <= received
        assert received - sent >= 0.3
        # A CON answered later than EMPTY_ACK_DELAY: an empty ACK went first, then this
        # separate response (a CON itself); a NON request gets a NON answer.
        assert response.mtype == (aiocoap.CON if confirmable else aiocoap.NON)
    assert rig.collector.stats.separate_responses == 1
    assert rig.collector.stats.non_confirmable == 1


async def test_leaving_the_context_answers_requests_in_hand(
    tmp_path: Path, slow_fsync: list[float]
) -> None:
    async with Spool(tmp_path / "spool") as spool:
        ingestor = _ingestor(spool)
        client = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            async with CoapCollector(ingestor, TOKENS.get, port=0) as collector:
                rig = Rig(spool, ingestor, collector, client)
                pending = asyncio.create_task(rig.post(b'{"fields": {"dose_rate_usv_h": 0.2}}'))
                await asyncio.sleep(0.15)  # received, waiting for its 0.3 s fsync
                assert collector.stats.in_flight == 1
            assert (await pending).code == Code.CHANGED
            assert collector.stats.in_flight == 0
        finally:
            await client.shutdown()


async def test_authenticate_may_be_async_and_its_failure_is_a_503(tmp_path: Path) -> None:
    calls: list[str] = []

    async def lookup(token: str) -> str | None:
        calls.append(token)
        if token == READER_TOKEN:
            raise ConnectionError("registry database unreachable")
        return TOKENS.get(token)

    async with Spool(tmp_path / "spool") as spool:
        ingestor = _ingestor(spool)
        async with CoapCollector(ingestor, lookup, port=0) as collector:
            client = await aiocoap.Context.create_client_context(transports=["udp6"])
            rig = Rig(spool, ingestor, collector, client)
            try:
                ok = await rig.post(b'{"fields": {"beam_on": true}}')
                down = await rig.post(b'{"fields": {"dose_msv": 1}}', token=READER_TOKEN)
                unshaped = await rig.post(b"{}", token="wjc_short")
            finally:
                await client.shutdown()
    assert ok.code == Code.CHANGED
    assert down.code == Code.SERVICE_UNAVAILABLE
    assert down.opt.max_age == 5
    assert unshaped.code == Code.UNAUTHORIZED
    assert calls == [MONITOR_TOKEN, READER_TOKEN]  # a value not shaped like a token: no lookup
    assert collector.stats.auth_errors == 1
    assert rig.rejected == {("coap", "unknown_device"): 1}


async def test_simulated_devices_with_faults_and_every_good_reading_arrives(rig: Rig) -> None:
    start = datetime.now(UTC)
    monitor = SimulatedCoapDevice.dose_rate_monitor(
        MONITOR.device, MONITOR_TOKEN, seed=3, interval_s=0.05, content_format="json"
    )
    reader = SimulatedCoapDevice.dosimeter_reader(
        READER.device,
        READER_TOKEN,
        seed=4,
        interval_s=0.05,
        content_format="cbor",
        # its scheduled messages of the first 0.3 s go non-confirmable
        faults=(FaultWindow(CoapFault.NON_CONFIRMABLE, start, start + timedelta(seconds=0.3)),),
    )
    async with CoapFleet(
        [monitor, reader], port=rig.collector.port, max_messages=8, endpoints=1
    ) as fleet:
        await asyncio.wait_for(fleet.wait_finished(), 10)
        # faults on demand, interleaved with good messages
        for fault in CoapFault:
            for device in (MONITOR.device, READER.device):
                code = await fleet.send(device, fault=fault)
                assert code == EXPECTED_CODE[fault], (device, fault, code)
                assert await fleet.send(device) == "2.04"
    stats = fleet.stats
    for device in (MONITOR.device, READER.device):
        s = stats[device]
        assert s.lost == 0
        assert s.unavailable == 0
        assert s.acked == 8 + 4 + 1  # scheduled, good ones between faults, the NON fault
        assert s.acked_readings == s.acked
        assert s.refused == 3
        scheduled_non = s.faults["non_confirmable"] - 1  # the reader's NON window
        assert s.faults == {f.value: 1 for f in CoapFault} | {"non_confirmable": 1 + scheduled_non}
        assert (scheduled_non > 0) == (device == READER.device)
    truth = [f for f in fleet.truth if f.device == MONITOR.device]
    assert [(f.fault, f.code) for f in truth] == [(f, EXPECTED_CODE[f]) for f in CoapFault]

    lines = await spooled_lines(rig.spool)
    per_device = Counter(line.split(",device=")[1].split(",")[0] for line in lines)
    assert per_device == {MONITOR.device: 13, READER.device: 13}
    assert all(" dose_msv=" in line for line in lines if line.startswith("dosimeter,"))
    assert all("beam_on=" in line for line in lines if line.startswith("dose_rate_monitor,"))
    assert rig.rejected == {
        ("coap", "unknown_device"): 2,
        ("coap", "malformed"): 2,
        ("coap", "oversized"): 2,
    }
    rates = fleet.rates()
    assert rates.acked_readings_per_s > 0
    assert rates.devices == 2


async def test_fleet_replaces_its_client_context_before_message_ids_wrap(rig: Rig) -> None:
    """A context reusing a message id within 247 s gets a stale answer and hangs (measured at
    request 65,537); the fleet moves to a fresh context (a new source port) well before."""
    device = SimulatedCoapDevice(
        MONITOR.device, MONITOR.kind, MONITOR_TOKEN, 60.0, lambda t: {"beam_on": False}
    )
    fleet = CoapFleet([device], port=rig.collector.port, recycle_after=4)
    await fleet.start(schedules=False)  # messages on demand only
    try:
        codes = [await fleet.send(MONITOR.device) for _ in range(10)]
    finally:
        await fleet.stop()
    assert codes == ["2.04"] * 10
    assert fleet.recycles == 2
    assert len(await spooled_lines(rig.spool)) == 10


async def test_a_failed_fsync_is_never_acknowledged(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fds: list[int], dir_fd: int | None) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_all", failing)
    response = await rig.post(b'{"fields": {"dose_rate_usv_h": 0.2}}')
    assert response.code == Code.INTERNAL_SERVER_ERROR
    assert response.payload.startswith(b"not_durable:")
    assert rig.collector.stats.responses == Counter({"5.00": 1})
