"""Simulated HJ 212-2017 stations: real-time data over real TCP, with faults on purpose.

A :class:`Hj212Station` is a station's data logger: it connects to the platform, sends real-time
data (CN 2011) every ``interval_s`` with the values of a callable ``values(t) -> {quantity:
value}``, optionally minute (2051) and hourly (2061) data with the Min/Avg/Max of what it sent,
asks for replies (Flag=5) and counts the replies it gets back, matched by QN. It reconnects after
a disconnect. :class:`Faults` injects, deterministically, what stations in the field do: packets
split over several writes, several packets in one write, modem garbage between packets, a wrong
CRC, a wrong length field, a wrong password, an unknown MN, a dropped connection. Faulty packets
are counted apart, so a test knows exactly what the platform should accept.

:class:`StationFleet` runs many stations in one process (the benchmark runs a fleet in a process
of its own, ``python -m simulators.hj212_station``, so its CPU is not the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timezone
from types import MappingProxyType
from typing import Any

from protocols.hj212 import (
    CHINA_TZ,
    Command,
    DataFlag,
    Frame,
    FrameDecoder,
    Packet,
    ParamGroup,
    SegmentError,
    encode_frame,
    format_qn,
    format_segment,
    parse_segment,
)

ValuesFn = Callable[[float], Mapping[str, float]]
"""Epoch seconds -> {canonical quantity: value in its canonical unit}."""
FlagsFn = Callable[[float], Mapping[str, str]]
"""Epoch seconds -> {quantity: HJ 212 data flag}; quantities left out are sent as N."""

REPLY_CNS = frozenset({Command.DATA_REPLY.value, Command.NOTIFICATION_REPLY.value})
DEFAULT_ST = "32"  # as the standard's examples; the platform does not check ST (no code for
#                    drinking water exists, so each deployment agrees its own in A0–Z9)


@dataclass(frozen=True)
class Faults:
    """What goes wrong, deterministically: ``*_every = n`` hits packets n, 2n, 3n… (0: never).

    At most one of wrong CRC / wrong length / wrong password / unknown MN applies to a packet (in
    that order); such a packet is *faulty*: the platform must neither store nor acknowledge it.
    Garbage before a packet, splitting and batching leave the packet itself good.
    """

    split_into: int = 1  # write each batch in this many pieces, with a pause between them
    split_pause_s: float = 0.01
    batch: int = 1  # packets per write
    garbage_every: int = 0
    garbage: bytes = b"\x00\xffAT+CSQ\r\n+CSQ: 21,99\r\nOK\r\n"
    bad_crc_every: int = 0
    bad_length_every: int = 0
    wrong_password_every: int = 0
    unknown_mn_every: int = 0
    disconnect_every: int = 0  # close after this packet (replies awaited briefly), reconnect

    def hits(self, every: int, n: int) -> bool:
        return every > 0 and n % every == 0


@dataclass
class StationStats:
    packets: int = 0  # packets written, good and faulty
    good: int = 0  # packets the platform should accept and acknowledge
    faulty: int = 0
    realtime: int = 0  # good 2011 packets (one reading each)
    aggregates: int = 0  # good 2051 / 2061 packets
    replies: int = 0  # 9014 / 9013 received
    replies_matched: int = 0  # replies whose QN is one of ours still awaiting a reply
    other_received: int = 0  # frames from the platform that were not replies
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0  # connections lost or closed on purpose
    write_failures: int = 0  # packets lost because the connection broke while writing
    faults: Tally[str] = field(default_factory=Tally)

    def merge(self, other: StationStats) -> None:
        for name, value in asdict(other).items():
            if name == "faults":
                self.faults.update(other.faults)
            else:
                setattr(self, name, getattr(self, name) + value)


def corrupt_crc(frame: bytes) -> bytes:
    """The same frame with a CRC that does not match its segment."""
    crc = int(frame[-6:-2], 16) ^ 0x5A5A
    return frame[:-6] + f"{crc:04X}".encode() + b"\r\n"


def corrupt_length(frame: bytes, delta: int = 7) -> bytes:
    """The same frame with a length field off by ``delta``."""
    length = int(frame[2:6]) + delta
    return frame[:2] + f"{length:04d}".encode() + frame[6:]


class Hj212Station:
    """One simulated station (data logger); see the module docstring."""

    def __init__(
        self,
        mn: str,
        password: str,
        codes: Mapping[str, str],
        values: ValuesFn,
        *,
        interval_s: float = 60.0,
        flags: FlagsFn | None = None,
        st: str = DEFAULT_ST,
        flag: int = 5,
        minute_interval_min: int | None = None,
        hourly: bool = False,
        tz: timezone = CHINA_TZ,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        reconnect_delay_s: float = 0.5,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if minute_interval_min is not None and 60 % minute_interval_min:
            raise ValueError("minute_interval_min must divide 60 (HJ 212-2017 MinInterval)")
        self.mn = mn
        self.password = password
        self.codes = dict(codes)  # quantity -> parameter code
        self.values = values
        self.flags = flags
        self.interval_s = interval_s
        self.st = st
        self.flag = flag
        self.minute_interval_min = minute_interval_min
        self.hourly = hourly
        self.tz = tz
        self.faults = faults or Faults()
        self.clock = clock
        self.reconnect_delay_s = reconnect_delay_s
        self.stats = StationStats()
        self.awaiting: dict[str, str] = {}  # QN -> CN of good packets sent with a reply requested
        self._last_qn_ms = 0
        self._n = 0  # packets produced
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._acc: dict[str, dict[str, list[float]]] = {"2051": {}, "2061": {}}
        self._acc_flags: dict[str, dict[str, str]] = {"2051": {}, "2061": {}}
        self._acc_start: dict[str, float | None] = {"2051": None, "2061": None}
        self._replied = asyncio.Event()

    @classmethod
    def water(
        cls,
        mn: str,
        password: str,
        spec: Any = None,
        *,
        seed: int = 0,
        codes: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Hj212Station:
        """A water-quality station sampling :class:`simulators.water.WaterProbeSignal`.

        ``codes`` defaults to the WS-900 reference model's (its profile's ``hj212.codes``);
        quantities without a code are not sent.
        """
        from protocols.profiles import load_profiles
        from simulators.water import WaterProbeSignal, WaterProbeSpec

        signal = WaterProbeSignal(spec or WaterProbeSpec(site="plant_outlet"), seed)
        if codes is None:
            settings = load_profiles()["water_station_ws900"].hj212
            assert settings is not None
            codes = settings.codes
        wanted = dict(codes)

        def values(t: float) -> dict[str, float]:
            return {q: v for q, v in signal.sample_ts(t).items() if q in wanted}

        return cls(mn, password, wanted, values, **kwargs)

    # -- packets ----------------------------------------------------------------------------

    def next_qn(self, t: float) -> str:
        """A request id (ms timestamp), strictly increasing per station so replies match."""
        ms = max(int(t * 1000), self._last_qn_ms + 1)
        self._last_qn_ms = ms
        return format_qn(datetime.fromtimestamp(ms / 1000, UTC), self.tz)

    def realtime_packet(self, t: float, *, mn: str | None = None, pw: str | None = None) -> Packet:
        """CN 2011 at ``t`` (DataTime to the second, as the standard writes it)."""
        values = self.values(t)
        flags = self.flags(t) if self.flags is not None else {}
        params = {}
        for quantity, value in values.items():
            code = self.codes.get(quantity)
            if code is None or not math.isfinite(value):
                continue
            flag = DataFlag(flags.get(quantity, "N"))
            params[code] = ParamGroup(code, MappingProxyType({"Rtd": value}), flag)
        self._accumulate(values, flags, t)
        return self._packet(Command.REALTIME_DATA.value, t, int(t), params, mn=mn, pw=pw)

    def aggregate_packet(
        self,
        cn: str,
        start: float,
        stats: Mapping[str, tuple[float, float, float]],
        flags: Mapping[str, str] | None = None,
        *,
        t: float | None = None,
    ) -> Packet:
        """CN 2051 / 2061 / 2031 for the interval starting at ``start``: quantity -> (min, avg,
        max)."""
        params = {}
        for quantity, (low, avg, high) in stats.items():
            code = self.codes.get(quantity)
            if code is None:
                continue
            flag = DataFlag((flags or {}).get(quantity, "N"))
            numbers = {"Min": low, "Avg": avg, "Max": high}
            params[code] = ParamGroup(code, MappingProxyType(numbers), flag)
        return self._packet(cn, self.clock() if t is None else t, int(start), params)

    def _packet(
        self,
        cn: str,
        t: float,
        data_time: float,
        params: Mapping[str, ParamGroup],
        *,
        mn: str | None = None,
        pw: str | None = None,
    ) -> Packet:
        return Packet(
            qn=self.next_qn(t),
            st=self.st,
            cn=cn,
            pw=self.password if pw is None else pw,
            mn=self.mn if mn is None else mn,
            flag=self.flag,
            data_time=datetime.fromtimestamp(data_time, UTC),
            params=params,
        )

    def encode(self, packet: Packet) -> bytes:
        return encode_frame(format_segment(packet, self.tz))

    def _accumulate(self, values: Mapping[str, float], flags: Mapping[str, str], t: float) -> None:
        for cn, on in (("2051", self.minute_interval_min is not None), ("2061", self.hourly)):
            if not on:
                continue
            if self._acc_start[cn] is None:
                self._acc_start[cn] = self._interval_start(cn, t)
            acc, acc_flags = self._acc[cn], self._acc_flags[cn]
            for q, v in values.items():
                acc.setdefault(q, []).append(v)
                flag = flags.get(q, "N")
                if flag != "N":  # the wastewater rule: one abnormal value flags the aggregate
                    acc_flags.setdefault(q, flag)

    def _interval_start(self, cn: str, t: float) -> float:
        seconds = 3600 if cn == "2061" else 60 * (self.minute_interval_min or 1)
        offset = self.tz.utcoffset(None).total_seconds()
        return math.floor((t + offset) / seconds) * seconds - offset

    def _due_aggregates(self, t: float) -> list[Packet]:
        """Aggregates for intervals that ended before ``t`` (sent before the next 2011)."""
        out = []
        for cn in ("2051", "2061"):
            start = self._acc_start[cn]
            if start is None or self._interval_start(cn, t) <= start:
                continue
            stats = {q: (min(v), sum(v) / len(v), max(v)) for q, v in self._acc[cn].items() if v}
            if stats:
                out.append(self.aggregate_packet(cn, start, stats, self._acc_flags[cn], t=t))
            self._acc[cn], self._acc_flags[cn], self._acc_start[cn] = {}, {}, None
        return out

    # -- connection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        self._reader, self._writer = reader, writer
        self.stats.connects += 1
        self._read_task = asyncio.create_task(self._read_replies(reader), name=f"hj212-{self.mn}")

    async def close(self) -> None:
        writer, task = self._writer, self._read_task
        self._writer = self._reader = None
        self._read_task = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            for event in decoder.feed(data):
                if not isinstance(event, Frame):
                    continue
                try:
                    packet = parse_segment(event.segment, self.tz)
                except SegmentError:
                    self.stats.other_received += 1
                    continue
                if packet.cn not in REPLY_CNS:
                    self.stats.other_received += 1
                    continue
                self.stats.replies += 1
                if self.awaiting.pop(packet.qn, None) is not None:
                    self.stats.replies_matched += 1
                self._replied.set()

    def _lost(self) -> None:
        if self._writer is not None:
            self.stats.disconnects += 1
            self._writer.close()
            self._writer = None

    async def write(self, data: bytes) -> bool:
        """Write ``data`` as the faults say (in pieces); False if the connection broke."""
        writer = self._writer
        if writer is None:
            return False
        pieces = max(1, self.faults.split_into)
        step = max(1, math.ceil(len(data) / pieces))
        try:
            for i in range(0, len(data), step):
                if i:
                    await asyncio.sleep(self.faults.split_pause_s)
                writer.write(data[i : i + step])
                await writer.drain()
        except (OSError, RuntimeError):  # RuntimeError: the transport closed under us
            self._lost()
            return False
        return True

    async def wait_for_replies(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Until every good packet that asked for a reply got one; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.awaiting and self.connected:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._replied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replied.wait(), left)
        return not self.awaiting

    # -- sending ----------------------------------------------------------------------------

    def _frame(self, packet: Packet) -> tuple[bytes, bool]:
        """Number the packet, apply this packet's fault; returns (bytes, good)."""
        self._n += 1
        n, f = self._n, self.faults
        kind = None
        if f.hits(f.bad_crc_every, n):
            kind, frame = "bad_crc", corrupt_crc(self.encode(packet))
        elif f.hits(f.bad_length_every, n):
            kind, frame = "bad_length", corrupt_length(self.encode(packet))
        elif f.hits(f.wrong_password_every, n):
            wrong = "x" + self.password[1:] if not self.password.startswith("x") else "y"
            kind, frame = "wrong_password", self.encode(replace(packet, pw=wrong))
        elif f.hits(f.unknown_mn_every, n):
            kind, frame = "unknown_mn", self.encode(replace(packet, mn="F" * len(packet.mn)))
        else:
            frame = self.encode(packet)
        if f.hits(f.garbage_every, n):
            frame = f.garbage + frame
            self.stats.faults["garbage"] += 1
        self.stats.packets += 1
        if kind is not None:
            self.stats.faults[kind] += 1
            self.stats.faulty += 1
            return frame, False
        self.stats.good += 1
        if packet.cn == Command.REALTIME_DATA.value:
            self.stats.realtime += 1
        else:
            self.stats.aggregates += 1
        if packet.needs_reply:
            self.awaiting[packet.qn] = packet.cn
        return frame, True

    async def send_packets(self, packets: Sequence[Packet]) -> None:
        """Frame, fault, batch and write ``packets``; disconnect where the faults say."""
        buffer: list[bytes] = []
        count = 0
        for packet in packets:
            frame, _good = self._frame(packet)
            buffer.append(frame)
            count += 1
            disconnect = self.faults.hits(self.faults.disconnect_every, self._n)
            if len(buffer) >= max(1, self.faults.batch) or disconnect:
                await self._flush(buffer, count)
                buffer, count = [], 0
            if disconnect and self._writer is not None:
                await self.wait_for_replies(1.0)
                self.stats.disconnects += 1
                await self.close()
        if buffer:
            await self._flush(buffer, count)

    async def _flush(self, buffer: list[bytes], count: int) -> None:
        if not await self.write(b"".join(buffer)):
            self.stats.write_failures += count

    async def run(
        self,
        host: str,
        port: int,
        *,
        duration_s: float | None = None,
        count: int | None = None,
        phase_s: float = 0.0,
        drain_s: float = 5.0,
    ) -> StationStats:
        """Send real-time data every ``interval_s`` (from ``phase_s``) for ``duration_s`` or
        ``count`` packets, reconnecting when needed; then wait up to ``drain_s`` for replies."""
        if duration_s is None and count is None:
            raise ValueError("give duration_s or count")
        loop = asyncio.get_running_loop()
        start = loop.time() + phase_s
        end = None if duration_s is None else loop.time() + duration_s
        sent = 0
        try:
            while (count is None or sent < count) and (end is None or loop.time() < end):
                due = start + sent * self.interval_s
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if end is not None and loop.time() >= end:
                    break
                if not self.connected and not await self._reconnect(host, port, end):
                    break
                t = self.clock()
                batch = [*self._due_aggregates(t), self.realtime_packet(t)]
                await self.send_packets(batch)
                sent += 1
            if self.connected:
                await self.wait_for_replies(drain_s)
        finally:
            await self.close()
        return self.stats

    async def _reconnect(self, host: str, port: int, end: float | None) -> bool:
        loop = asyncio.get_running_loop()
        while end is None or loop.time() < end:
            try:
                await self.connect(host, port)
                return True
            except OSError:
                self.stats.connect_failures += 1
                await asyncio.sleep(self.reconnect_delay_s)
        return False


class StationFleet:
    """Many stations in one process, spread evenly over their interval."""

    def __init__(self, stations: Sequence[Hj212Station], host: str, port: int) -> None:
        self.stations = list(stations)
        self.host = host
        self.port = port

    @classmethod
    def numbered(
        cls,
        n: int,
        host: str,
        port: int,
        *,
        codes: Mapping[str, str],
        values: ValuesFn | None = None,
        values_for: Callable[[int], ValuesFn] | None = None,
        mn_prefix: str = "0100A8900016",
        first: int = 0,
        **station_kwargs: Any,
    ) -> StationFleet:
        """Stations ``first .. first + n - 1`` named by :func:`station_mn` and
        :func:`station_password`, all sampling ``values``, or each ``values_for(index)``."""
        if (values is None) == (values_for is None):
            raise ValueError("give values or values_for")
        stations = []
        for i in range(first, first + n):
            fn = values_for(i) if values_for is not None else values
            assert fn is not None
            stations.append(
                Hj212Station(
                    station_mn(i, mn_prefix), station_password(i), codes, fn, **station_kwargs
                )
            )
        return cls(stations, host, port)

    async def run(
        self, *, duration_s: float | None = None, count: int | None = None, drain_s: float = 5.0
    ) -> StationStats:
        n = len(self.stations)
        tasks = [
            asyncio.create_task(
                s.run(
                    self.host,
                    self.port,
                    duration_s=duration_s,
                    count=count,
                    phase_s=s.interval_s * i / max(n, 1),
                    drain_s=drain_s,
                )
            )
            for i, s in enumerate(self.stations)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.totals()

    def totals(self) -> StationStats:
        total = StationStats()
        for s in self.stations:
            total.merge(s.stats)
        return total


def station_mn(index: int, prefix: str = "0100A8900016") -> str:
    """A 24-hex-digit MN (EPC-96 shaped) for station ``index``."""
    return f"{prefix}{index:0{24 - len(prefix)}X}"


def station_password(index: int) -> str:
    """A 6-character PW for station ``index`` (HJ 212-2017: PW is 6 characters)."""
    return f"p{index:05d}"[-6:]


def _steady_values(t: float) -> dict[str, float]:
    """Cheap, plausible water values (the benchmark's load generator must not be the limit)."""
    wobble = (int(t * 10) % 100) / 1000
    return {
        "ph": round(7.3 + wobble, 2),
        "turbidity_ntu": round(0.2 + wobble, 3),
        "water_temperature_c": 18.5,
        "conductivity_us_cm": round(412.5 + wobble * 10, 1),
        "free_chlorine_mg_l": round(0.6 + wobble, 2),
    }


WS900_CODES: Mapping[str, str] = MappingProxyType(
    {
        "ph": "w01001",
        "water_temperature_c": "w01010",
        "conductivity_us_cm": "w01014",
        "turbidity_ntu": "w01003",
        "free_chlorine_mg_l": "wj0001",
    }
)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a fleet and print its totals as JSON (the benchmark's load, in its own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between packets")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--flag", type=int, default=5, help="5: ask for replies, 4: do not")
    parser.add_argument("--water", action="store_true", help="values from the water signal")
    args = parser.parse_args(argv)

    async def go() -> StationStats:
        if args.water:
            fleet = StationFleet(
                [
                    Hj212Station.water(
                        station_mn(i),
                        station_password(i),
                        seed=i,
                        interval_s=args.interval,
                        flag=args.flag,
                    )
                    for i in range(args.first, args.first + args.stations)
                ],
                args.host,
                args.port,
            )
        else:
            fleet = StationFleet.numbered(
                args.stations,
                args.host,
                args.port,
                codes=WS900_CODES,
                values=_steady_values,
                first=args.first,
                interval_s=args.interval,
                flag=args.flag,
            )
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        totals = await fleet.run(duration_s=args.duration, drain_s=args.drain)
        totals_dict = asdict(totals)
        totals_dict["wall_s"] = time.perf_counter() - t0
        totals_dict["cpu_s"] = time.process_time() - cpu0
        print(json.dumps(totals_dict), flush=True)
        return totals

    asyncio.run(go())


if __name__ == "__main__":
    main()
