"""HJ 212 collector against real TCP on loopback, a real Spool and Ingestor, simulated stations.

Every test checks what reached the spool (the acknowledgement rule: a reply means durable) and
what was counted, by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collectors.hj212 import Hj212Collector, Station
from collectors.metrics import Metrics
from collectors.pipeline import Ingestor
from collectors.records import decode_record
from collectors.spool import Spool
from protocols.catalog import default_catalog
from protocols.directory import DeviceInfo, StaticDirectory
from protocols.hj212 import Frame, FrameDecoder, data_reply, load_code_map, parse_segment
from protocols.profiles import load_profiles
from protocols.reading import Reading, ReadingValidator
from simulators.hj212_station import (
    WS900_CODES,
    Faults,
    Hj212Station,
    corrupt_crc,
    corrupt_length,
)
from weijian.config import FsyncPolicy, FullPolicy

# standards.md §6.2, verbatim.
REF_MN = "010000A8900016F000169DC0"
REF_REALTIME = (
    b"##0201QN=20240315103000000;ST=32;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&DataTime=20240315103000;w01001-Rtd=7.32,w01001-Flag=N;w01010-Rtd=18.6,w01010-Flag=N;"
    b"w01014-Rtd=412.5,w01014-Flag=N&&7800\r\n"
)
REF_HOURLY = (
    b"##0234QN=20240315110000001;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&DataTime=20240315100000;w01003-Min=0.12,w01003-Avg=0.18,w01003-Max=0.31,"
    b"w01003-Flag=N;w01001-Min=7.20,w01001-Avg=7.31,w01001-Max=7.40,w01001-Flag=N&&6600\r\n"
)
REF_REPLY = (
    b"##0087QN=20240315103000000;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;"
    b"CP=&&&&D1C1\r\n"
)
REF_PW = "123456"

WS = DeviceInfo("ws-001", "waterco", "plant-1", "water_station", "110105")
PLAIN_MN = "0100A89000160000000000A1"  # a station without a profile: the global code map
PLAIN = DeviceInfo("ws-002", "waterco", "plant-2", "water_station", "110105")
PLAIN_PW = "abc123"


@dataclass
class Rig:
    collector: Hj212Collector
    spool: Spool
    ingestor: Ingestor
    checks: list[str] = field(default_factory=list)  # every PW check_password was asked about
    readings: list[Reading] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.collector.port

    @property
    def rejected(self) -> dict[tuple[str, str], int]:
        return dict(self.ingestor.metrics.ingest.rejected)

    async def spooled(self) -> list[str]:
        """Lines of every reading in the spool (events, e.g. rejections, left out)."""
        batch = await self.spool.read_batch(100_000, timeout=0.05)
        lines = [decode_record(r) for r in batch.records]
        return [line.decode() for route, line in lines if route != "!"]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    spool_kwargs: dict[str, Any] | None = None,
    **collector_kwargs: Any,
) -> AsyncIterator[Rig]:
    checks: list[str] = []

    def checked(password: str) -> Callable[[str], bool]:
        def check(pw: str) -> bool:
            checks.append(pw)
            return pw == password

        return check

    stations = {
        REF_MN: Station(WS, "water_station_ws900", checked(REF_PW)),
        PLAIN_MN: Station(PLAIN, None, checked(PLAIN_PW)),
    }
    validator = ReadingValidator(default_catalog(), max_past_s=20 * 365 * 86400)  # 2024 examples
    kwargs = {"fsync": FsyncPolicy.INTERVAL, **(spool_kwargs or {})}
    async with Spool(tmp_path / "spool", **kwargs) as spool:
        ingestor = Ingestor(StaticDirectory([WS, PLAIN]), validator, spool, Metrics())
        collector_kwargs.setdefault("host", "127.0.0.1")
        collector_kwargs.setdefault("port", 0)
        async with Hj212Collector(ingestor, stations.get, **collector_kwargs) as collector:
            r = Rig(collector, spool, ingestor, checks)
            ingestor.listeners.append(r.readings.append)
            yield r


class Client:
    """A bare station connection: bytes out, bytes and replies in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *chunks: bytes, pause_s: float = 0.0) -> None:
        for i, chunk in enumerate(chunks):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            self.writer.write(chunk)
            await self.writer.drain()

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def replies(self, n: int, timeout: float = 5.0) -> list[str]:  # noqa: ASYNC109
        """QNs of the next ``n`` replies."""
        async with asyncio.timeout(timeout):
            while len(self.frames) < n:
                data = await self.reader.read(65536)
                assert data, "connection closed while waiting for replies"
                self.frames += [e for e in self.decoder.feed(data) if isinstance(e, Frame)]
        out, self.frames = self.frames[:n], self.frames[n:]
        return [parse_segment(f.segment).qn for f in out]

    async def silent(self, seconds: float = 0.2) -> bool:
        """Nothing arrives for ``seconds`` (and the connection stays open)."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected silence, got {data!r}")

    async def closed_by_peer(self, timeout: float = 3.0) -> bool:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _values(t: float) -> dict[str, float]:
    return {
        "ph": 7.31,
        "turbidity_ntu": 0.25,
        "water_temperature_c": 18.5,
        "conductivity_us_cm": 412.5,
        "free_chlorine_mg_l": 0.62,
    }


def ws_station(**kwargs: Any) -> Hj212Station:
    return Hj212Station(REF_MN, REF_PW, WS900_CODES, _values, **kwargs)


async def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling counters the code under test keeps
            await asyncio.sleep(0.01)


# -- the standard's examples -----------------------------------------------------------------


async def test_reference_packets_end_to_end_and_reply_only_after_durable(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        loop = asyncio.get_running_loop()
        released: asyncio.Future[None] = loop.create_future()
        real_append = r.spool.append

        def gated_append(records: Any) -> asyncio.Future[None]:
            inner = real_append(records)
            outer: asyncio.Future[None] = loop.create_future()
            released.add_done_callback(
                lambda _: inner.add_done_callback(lambda _: outer.set_result(None))
            )
            return outer

        r.spool.append = gated_append  # type: ignore[method-assign]
        client = await Client.open(r.port)
        await client.send(REF_REALTIME)
        await _wait(lambda: len(r.readings) == 1)
        assert await client.silent(0.3), "replied before the reading was durable"
        released.set_result(None)
        assert await client.read_exactly(len(REF_REPLY)) == REF_REPLY  # byte for byte

        (reading,) = r.readings
        assert reading.device == "ws-001"
        assert reading.kind == "water_station"
        assert reading.fields == {
            "ph": 7.32,
            "water_temperature_c": 18.6,
            "conductivity_us_cm": 412.5,
        }
        assert reading.flags == {"ph": "N", "water_temperature_c": "N", "conductivity_us_cm": "N"}
        # DataTime 2024-03-15 10:30:00 is Beijing time
        assert reading.time_ms == int(datetime(2024, 3, 15, 2, 30, tzinfo=UTC).timestamp() * 1000)
        (line,) = await r.spooled()
        assert line.startswith("water_station,")
        assert 'ph_flag="N"' in line
        assert "ph=7.32" in line

        # Hourly data: acknowledged, counted, not stored (docs/hj212.md).
        r.spool.append = real_append  # type: ignore[method-assign]
        await client.send(REF_HOURLY)
        expected = data_reply(parse_segment(REF_HOURLY[6:-6].decode()))
        assert await client.read_exactly(len(expected)) == expected
        assert r.collector.stats.aggregates_ignored == {"2061": 1}
        # The 9014 example sent by a station: a reply is never answered.
        await client.send(REF_REPLY)
        assert await client.silent(0.2)
        assert len(r.readings) == 1
        assert r.collector.stats.commands == {"2011": 1, "2061": 1, "9014": 1}
        assert r.collector.errors == {}
        assert r.rejected == {}
        await client.close()


# -- real-time stream from a simulated station ------------------------------------------------


async def test_valid_stream_is_stored_with_fields_time_and_flags(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        station = ws_station(
            interval_s=0.01, flags=lambda t: {"turbidity_ntu": "T", "free_chlorine_mg_l": "M"}
        )
        before = time.time()
        stats = await station.run("127.0.0.1", r.port, count=20, drain_s=5)
        assert stats.realtime == 20
        assert stats.replies_matched == 20
        assert not station.awaiting
        assert len(r.readings) == 20
        for reading in r.readings:
            assert reading.fields == {
                "ph": 7.31,
                "turbidity_ntu": 0.25,
                "water_temperature_c": 18.5,
                "conductivity_us_cm": 412.5,
                "free_chlorine_mg_l": 0.62,  # private code wj0001, via the WS-900 profile
            }
            assert reading.flags == {
                "ph": "N",
                "turbidity_ntu": "T",
                "water_temperature_c": "N",
                "conductivity_us_cm": "N",
                "free_chlorine_mg_l": "M",
            }
            assert int(before) * 1000 <= reading.time_ms <= (time.time() + 1) * 1000
        lines = await r.spooled()
        assert len(lines) == 20
        assert 'turbidity_ntu_flag="T"' in lines[0]
        assert 'free_chlorine_mg_l_flag="M"' in lines[0]
        assert r.collector.stats.readings_accepted == 20
        assert r.collector.stats.replies_sent == 20
        assert r.checks == [REF_PW]  # one check per connection, not per packet


async def test_replies_follow_group_commits_in_packet_order(tmp_path: Path) -> None:
    """fsync=always: replies wait for each fsync and still leave in the order packets came."""
    async with rig(tmp_path, spool_kwargs={"fsync": FsyncPolicy.ALWAYS}) as r:
        station = ws_station()
        client = await Client.open(r.port)
        packets = [station.realtime_packet(time.time()) for _ in range(30)]
        frames = [station.encode(p) for p in packets]
        await client.send(b"".join(frames[:10]))
        for frame in frames[10:]:  # and one by one, so they span several group commits
            await client.send(frame)
        assert await client.replies(30) == [p.qn for p in packets]
        assert r.spool.stats.fsyncs >= 1
        await client.close()


async def test_a_station_that_half_closes_still_gets_its_replies(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        loop = asyncio.get_running_loop()
        released: asyncio.Future[None] = loop.create_future()
        real_append = r.spool.append

        def gated_append(records: Any) -> asyncio.Future[None]:
            real_append(records)
            return released

        r.spool.append = gated_append  # type: ignore[method-assign]
        station = ws_station()
        packets = [station.realtime_packet(time.time()) for _ in range(3)]
        client = await Client.open(r.port)
        await client.send(b"".join(station.encode(p) for p in packets))
        client.writer.write_eof()
        await _wait(lambda: len(r.readings) == 3)
        assert await client.silent(0.2)
        released.set_result(None)
        assert await client.replies(3) == [p.qn for p in packets]
        assert await client.closed_by_peer()
        await client.close()


async def test_water_signal_station_and_minute_data(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        water = Hj212Station.water(REF_MN, REF_PW, seed=3, interval_s=0.01)
        stats = await water.run("127.0.0.1", r.port, count=3)
        assert stats.replies_matched == 3
        assert set(r.readings[0].fields) == set(WS900_CODES)

        # Simulated time: 30 s per packet, so minute data (2051) is due every other packet.
        base = time.time() - 600
        ticks = iter(range(1000))
        station = ws_station(
            interval_s=0.01,
            minute_interval_min=1,
            clock=lambda: base + 30 * next(ticks),
        )
        stats = await station.run("127.0.0.1", r.port, count=10)
        assert stats.aggregates >= 4
        assert stats.replies_matched == stats.good == 10 + stats.aggregates
        assert r.collector.stats.aggregates_ignored["2051"] == stats.aggregates
        assert len(r.readings) == 3 + 10


# -- faults -----------------------------------------------------------------------------------


async def test_each_framing_fault_is_counted_and_the_connection_kept(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        station = ws_station()
        good = [station.realtime_packet(time.time()) for _ in range(7)]
        frames = [station.encode(p) for p in good]
        bad = station.encode(station.realtime_packet(time.time()))
        client = await Client.open(r.port)
        third = len(frames[0]) // 3
        # 1. one packet split over several writes (and reads)
        await client.send(
            frames[0][:third], frames[0][third : 2 * third], frames[0][2 * third :], pause_s=0.05
        )
        # 2. several packets in one write
        await client.send(frames[1] + frames[2])
        # 3. garbage between packets
        await client.send(b"\x00\xffAT+CSQ\r\nNO CARRIER\r\n" + frames[3])
        # 4. a wrong CRC, then a good packet in the same write
        await client.send(corrupt_crc(bad) + frames[4])
        # 5. a wrong length field
        await client.send(corrupt_length(bad) + frames[5])
        # 6. a packet cut short by the next one (a station resending after a partial write)
        await client.send(frames[6][:40] + frames[6])
        qns = await client.replies(7)
        assert qns == [p.qn for p in good]
        assert len(r.readings) == 7
        assert r.collector.errors == {"garbage": 1, "bad_crc": 1, "bad_length": 1, "truncated": 1}
        # attributed to the station authenticated on this connection
        assert r.rejected == {("hj212", "malformed"): 4}
        reasons = [reason for _, reason, _ in r.ingestor.metrics.ingest.recent["ws-001"]]
        assert reasons == ["malformed"] * 4
        assert r.collector.stats.connections_open == 1
        await client.close()


async def test_errors_before_authentication_go_to_the_station_that_follows(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        station = ws_station()
        bad = corrupt_crc(station.encode(station.realtime_packet(time.time())))
        good = station.realtime_packet(time.time())
        client = await Client.open(r.port)
        await client.send(bad + station.encode(good))
        assert await client.replies(1) == [good.qn]
        assert r.rejected == {("hj212", "malformed"): 1}
        (entry,) = r.ingestor.metrics.ingest.recent["ws-001"]
        assert entry[1] == "malformed"
        assert entry[2].startswith("bad_crc: ")
        await client.close()
        # a connection that never authenticates: counted platform-wide when it closes
        stranger = await Client.open(r.port)
        await stranger.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await stranger.close()
        await _wait(lambda: r.collector.stats.connections_open == 0)
        assert r.rejected == {("hj212", "malformed"): 2}
        assert r.collector.errors == {"bad_crc": 1, "garbage": 1}


async def test_simulated_station_faults_reconnects_and_loses_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        faults = Faults(
            split_into=3,
            split_pause_s=0.002,
            batch=2,
            garbage_every=3,
            bad_crc_every=5,
            bad_length_every=7,
            wrong_password_every=11,
            unknown_mn_every=13,
            disconnect_every=8,
        )
        station = ws_station(interval_s=0.005, faults=faults)
        stats = await station.run("127.0.0.1", r.port, count=40, drain_s=5)
        assert stats.faulty == sum(
            stats.faults[k] for k in ("bad_crc", "bad_length", "wrong_password", "unknown_mn")
        )
        assert stats.good + stats.faulty == 40
        assert stats.replies_matched == stats.good
        assert stats.write_failures == 0
        assert len(r.readings) == stats.realtime == stats.good
        errors = r.collector.errors
        assert errors["bad_crc"] == stats.faults["bad_crc"]
        assert errors["bad_length"] == stats.faults["bad_length"]
        assert errors["bad_password"] == stats.faults["wrong_password"]
        assert errors["unknown_device"] == stats.faults["unknown_mn"]
        assert errors["garbage"] == stats.faults["garbage"]
        assert stats.connects == 1 + 40 // 8 - (40 % 8 == 0)
        assert r.collector.stats.connections_total == stats.connects


async def test_wrong_password_is_refused_counted_and_not_answered(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        station = ws_station()
        client = await Client.open(r.port)
        wrong = station.realtime_packet(time.time())
        await client.send(station.encode(replace(wrong, pw="000000")))
        # HJ 212-2017 has no platform-to-station refusal (9011 QnRtn is site -> platform): silence
        assert await client.silent(0.3)
        assert r.readings == []
        assert r.collector.errors == {"bad_password": 1}
        assert r.rejected == {("hj212", "bad_credentials"): 1}
        # the right password on the same connection still works, and is checked once
        good = [station.realtime_packet(time.time()) for _ in range(3)]
        await client.send(b"".join(station.encode(p) for p in good))
        assert await client.replies(3) == [p.qn for p in good]
        assert len(r.readings) == 3
        assert r.checks == ["000000", REF_PW]
        await client.close()


async def test_unknown_mn_is_counted_and_not_answered(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        stranger = Hj212Station("FFFF0000FFFF0000FFFF0000", "123456", WS900_CODES, _values)
        client = await Client.open(r.port)
        await client.send(stranger.encode(stranger.realtime_packet(time.time())))
        assert await client.silent(0.3)
        assert r.collector.errors == {"unknown_device": 1}
        assert r.rejected == {("hj212", "unknown_device"): 1}
        assert r.readings == []
        await client.close()


async def test_codes_outside_the_map_or_the_kind_are_dropped_and_counted(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        # No profile: the global map. w01018 (COD) is unmapped; a01001 maps to temperature_c,
        # which a water_station does not measure; wj0001 is free chlorine.
        station = Hj212Station(
            PLAIN_MN,
            PLAIN_PW,
            {"ph": "w01001", "cod": "w01018", "air_t": "a01001", "free_chlorine_mg_l": "wj0001"},
            lambda t: {"ph": 7.1, "cod": 12.0, "air_t": 21.0, "free_chlorine_mg_l": 0.4},
            interval_s=0.01,
        )
        stats = await station.run("127.0.0.1", r.port, count=2)
        assert stats.replies_matched == 2
        assert [x.fields for x in r.readings] == [{"ph": 7.1, "free_chlorine_mg_l": 0.4}] * 2
        assert r.collector.stats.unmapped_codes == {"w01018": 2, "a01001": 2}
        # a packet with nothing we can store is refused by reason, and still acknowledged
        only_cod = Hj212Station(PLAIN_MN, PLAIN_PW, {"cod": "w01018"}, lambda t: {"cod": 9.0})
        stats = await only_cod.run("127.0.0.1", r.port, count=1)
        assert stats.replies_matched == 1
        assert r.rejected == {("hj212", "unknown_quantity"): 1}
        assert len(r.readings) == 2


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    async with rig(tmp_path, idle_timeout_s=0.3) as r:
        client = await Client.open(r.port)
        started = time.monotonic()
        assert await client.closed_by_peer(3.0)
        assert 0.25 < time.monotonic() - started < 2.0
        assert r.collector.stats.closed_idle == 1
        assert r.collector.stats.connections_open == 0
        await client.close()


async def test_a_stream_of_errors_closes_the_connection(tmp_path: Path) -> None:
    async with rig(tmp_path, max_consecutive_errors=3) as r:
        station = ws_station()
        bad = corrupt_crc(station.encode(station.realtime_packet(time.time())))
        client = await Client.open(r.port)
        await client.send(bad * 3)
        assert await client.silent(0.2)  # three in a row are tolerated
        await client.send(bad)
        assert await client.closed_by_peer()
        assert r.collector.stats.closed_abuse == 1
        assert r.collector.errors["bad_crc"] >= 4
        await client.close()


async def test_connections_over_the_limit_are_refused(tmp_path: Path) -> None:
    async with rig(tmp_path, max_connections=2) as r:
        first, second = await Client.open(r.port), await Client.open(r.port)
        await _wait(lambda: r.collector.stats.connections_open == 2)
        third = await Client.open(r.port)
        assert await third.closed_by_peer()
        assert r.collector.stats.connections_refused == 1
        for c in (first, second, third):
            await c.close()


async def test_spool_full_holds_replies_until_room_and_loses_nothing(tmp_path: Path) -> None:
    spool_kwargs = {"max_bytes": 1500, "full_policy": FullPolicy.BLOCK}
    async with rig(tmp_path, spool_kwargs=spool_kwargs) as r:
        n = iter(range(1000))  # distinct values: a duplicate or a loss would show
        station = Hj212Station(
            REF_MN,
            REF_PW,
            WS900_CODES,
            lambda t: {"ph": 7.0, "turbidity_ntu": next(n) / 100},
            interval_s=0.005,
        )
        run = asyncio.create_task(station.run("127.0.0.1", r.port, count=30, drain_s=10))
        await _wait(lambda: r.spool.stats.full_rejections > 0)
        await asyncio.sleep(0.2)
        assert station.awaiting, "replies sent for readings that were never spooled"
        delivered: list[bytes] = []
        while len(delivered) < 30:  # the forwarder's part: read, deliver, commit
            batch = await r.spool.read_batch(5, timeout=1.0)
            delivered += batch.records
            await r.spool.commit(batch)
        stats = await run
        assert stats.replies_matched == 30
        assert len(delivered) == 30
        assert len(set(delivered)) == 30
        assert r.collector.stats.readings_accepted == 30


# -- data -------------------------------------------------------------------------------------


def test_profiles_use_the_global_code_map_convention() -> None:
    """One convention: a profile's hj212.codes agree with protocols/data/hj212_codes.yaml."""
    codes = load_code_map()
    checked = 0
    for profile in load_profiles().values():
        if profile.hj212 is None:
            continue
        for quantity, code in profile.hj212.codes.items():
            assert code in codes, f"{profile.id}: {code} is not in hj212_codes.yaml"
            assert codes[code].quantity == quantity, f"{profile.id}: {code} is {quantity} here"
            checked += 1
    assert checked >= 5
    assert dict(load_profiles()["water_station_ws900"].hj212.codes) == dict(WS900_CODES)  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [0, -1])
def test_collector_refuses_nonsense_limits(bad: int) -> None:
    validator = ReadingValidator(default_catalog())
    ingestor = Ingestor(StaticDirectory(), validator, Spool(Path("/nonexistent")), Metrics())
    with pytest.raises(ValueError, match="max_connections"):
        Hj212Collector(ingestor, {}.get, host="127.0.0.1", port=0, max_connections=bad)
