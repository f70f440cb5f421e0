"""HJ 212 collector throughput and CPU, against a bare framing server under the same load.

Method: simulated stations (``simulators/hj212_station.py``) run in separate processes, so their
CPU is not the server's, each station on its own TCP connection sending real-time data (CN 2011,
five parameters, ~300 bytes) every ``--interval`` seconds for ``--duration`` seconds, spread evenly
over the interval. In this process, one after the other:

  (a) platform: :class:`collectors.hj212.Hj212Collector` with a real Spool (fsync ``interval``)
      and Ingestor — frame, CRC, parse, authenticate, map codes, validate, spool, reply (Flag=5,
      replies sent once durable). Afterwards the spool is read back: every reading a station sent
      must be there (``lost`` = sent − stored, must be 0) and every one must have been answered;
  (b) bare: an asyncio Protocol that only splits the byte stream on CR LF and counts (Flag=4,
      no replies): the floor for any asyncio server reading this load;
  (c) optional (``--streams``): the same bare framing with ``asyncio.start_server`` and
      ``readuntil``, to show what a stream reader per connection costs (why the collector is a
      Protocol).

CPU is this process's CPU time (all threads, so the spool's fsync thread counts) over wall time,
measured over the steady part of the run (after every station has started, before the end).
``capacity`` is packets/s ÷ CPU fraction: what one core would take at 100 %.

Usage: python benchmarks/hj212.py [--stations 1000] [--duration 30] [--interval 1.0]
       [--sim-procs 1] [--streams]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.hj212 import Hj212Collector, Station  # noqa: E402
from collectors.metrics import Metrics  # noqa: E402
from collectors.pipeline import Ingestor  # noqa: E402
from collectors.records import decode_record  # noqa: E402
from collectors.spool import Spool  # noqa: E402
from protocols.catalog import default_catalog  # noqa: E402
from protocols.directory import DeviceInfo, StaticDirectory  # noqa: E402
from protocols.reading import ReadingValidator  # noqa: E402
from simulators.hj212_station import station_mn, station_password  # noqa: E402
from weijian.config import FsyncPolicy  # noqa: E402


@dataclass
class Phase:
    name: str
    sent: int = 0  # good real-time packets the stations wrote
    received: int = 0  # packets the server handled (or framed, for the bare servers)
    stored: int | None = None  # readings read back from the spool
    replies: int | None = None  # replies matched by the stations
    write_failures: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    steady_rate: float = 0.0  # packets/s over the steady window
    steady_cpu: float = 0.0  # CPU fraction over the steady window
    sim_cpu: float = 0.0  # the simulators' CPU fraction (for context)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_packet(self) -> float:
        return self.steady_cpu / self.steady_rate * 1e6 if self.steady_rate else float("nan")

    @property
    def capacity(self) -> float:
        return self.steady_rate / self.steady_cpu if self.steady_cpu else float("nan")


async def drive(
    phase: Phase, port: int, args: argparse.Namespace, flag: int, counter: Callable[[], int]
) -> None:
    """Run the simulator processes against ``port`` and sample ``counter`` and our CPU."""
    n, k = args.stations, max(1, args.sim_procs)
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    procs = []
    first = 0
    for share in shares:
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "simulators.hj212_station",
                "--port",
                str(port),
                "--stations",
                str(share),
                "--first",
                str(first),
                "--interval",
                str(args.interval),
                "--duration",
                str(args.duration),
                "--drain",
                "15",
                "--flag",
                str(flag),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
        )
        first += share
    samples: list[tuple[float, float, int]] = []
    t0, cpu0 = time.perf_counter(), time.process_time()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter(), time.process_time(), counter()))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    sampler.cancel()
    phase.wall_s = time.perf_counter() - t0
    phase.cpu_s = time.process_time() - cpu0
    sim_cpu = 0.0
    for p, (out, _) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"simulator exited with {p.returncode}")
        totals = json.loads(out.decode().strip().splitlines()[-1])
        phase.sent += totals["realtime"] - totals["write_failures"]
        phase.write_failures += totals["write_failures"]
        phase.replies = (phase.replies or 0) + totals["replies_matched"]
        sim_cpu += totals["cpu_s"] / totals["wall_s"]
    phase.sim_cpu = sim_cpu
    # Steady window: from one interval after the first packet (every station has started) to
    # just before the stations stop.
    started = next((t for t, _, c in samples if c > 0), samples[0][0])
    lo, hi = started + args.interval + 1.0, started + args.duration - 1.0
    window = [s for s in samples if lo <= s[0] <= hi]
    if len(window) >= 2:
        (ta, ca, na), (tb, cb, nb) = window[0], window[-1]
        phase.steady_rate = (nb - na) / (tb - ta)
        phase.steady_cpu = (cb - ca) / (tb - ta)


async def platform_phase(args: argparse.Namespace, tmp: Path) -> Phase:
    phase = Phase("platform (collector + spool)")
    n = args.stations
    devices = [
        DeviceInfo(f"ws-{i:05d}", f"tenant{i % 10}", f"site-{i:05d}", "water_station", "110105")
        for i in range(n)
    ]
    stations = {
        station_mn(i): Station.with_password(d, station_password(i), "water_station_ws900")
        for i, d in enumerate(devices)
    }
    spool = Spool(tmp / "spool", fsync=FsyncPolicy(args.fsync), fsync_interval_s=0.2)
    async with spool:
        ingestor = Ingestor(
            StaticDirectory(devices), ReadingValidator(default_catalog()), spool, Metrics()
        )
        async with Hj212Collector(
            ingestor,
            stations.get,
            host="127.0.0.1",
            port=0,
            max_connections=n + 100,
            max_connections_per_peer=n + 100,  # every simulated station is on loopback
            idle_timeout_s=None,
        ) as collector:
            await drive(phase, collector.port, args, 5, lambda: collector.stats.packets)
            phase.received = collector.stats.packets
            phase.extra = {
                "errors": dict(collector.errors),
                "rejected": dict(ingestor.metrics.ingest.rejected),
                "connections_total": collector.stats.connections_total,
                "replies_sent": collector.stats.replies_sent,
                "fsyncs": spool.stats.fsyncs,
            }
        stored = 0
        while True:
            batch = await spool.read_batch(100_000, timeout=0.05)
            if not batch.records:
                break
            stored += sum(1 for r in batch.records if decode_record(r)[0] != "!")
        phase.stored = stored
    return phase


class _Bare(asyncio.Protocol):
    def __init__(self, count: list[int]) -> None:
        self.count = count
        self.buf = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while (i := buf.find(b"\r\n", start)) >= 0:
            self.count[0] += 1
            start = i + 2
        del buf[:start]


async def bare_phase(args: argparse.Namespace) -> Phase:
    phase = Phase("bare Protocol (split on CR LF)")
    count = [0]
    protocols: list[_Bare] = []

    def factory() -> _Bare:
        p = _Bare(count)
        protocols.append(p)
        return p

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    await drive(phase, port, args, 4, lambda: count[0])
    phase.received = count[0]
    server.close()
    for p in protocols:
        if p.transport is not None:
            p.transport.close()
    await server.wait_closed()
    return phase


async def streams_phase(args: argparse.Namespace) -> Phase:
    phase = Phase("bare start_server (readuntil)")
    count = [0]
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n")
                count[0] += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    await drive(phase, port, args, 4, lambda: count[0])
    phase.received = count[0]
    server.close()
    for w in writers:
        w.close()
    await server.wait_closed()
    return phase


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"\nHJ 212: {args.stations} station connections, one 2011 packet each per "
        f"{args.interval:g} s, {args.duration:g} s, spool fsync={args.fsync}"
    )
    head = (
        f"{'':32} {'sent':>8} {'received':>9} {'stored':>8} {'lost':>5} {'replies':>8} "
        f"{'pkt/s':>8} {'CPU':>6} {'µs/pkt':>7} {'capacity':>9} {'sim CPU':>8}"
    )
    print(head)
    for p in phases:
        lost = "-" if p.stored is None else str(p.sent - p.stored)
        stored = "-" if p.stored is None else str(p.stored)
        replies = "-" if p.stored is None else str(p.replies)
        print(
            f"{p.name:32} {p.sent:>8} {p.received:>9} {stored:>8} {lost:>5} {replies:>8} "
            f"{p.steady_rate:>8.0f} {p.steady_cpu:>6.1%} {p.cpu_us_per_packet:>7.1f} "
            f"{p.capacity:>9.0f} {p.sim_cpu:>8.1%}"
        )
    platform, bare = phases[0], phases[1] if len(phases) > 1 else None
    if bare is not None and bare.cpu_us_per_packet:
        print(
            f"\nCPU per packet, platform / bare framing: "
            f"{platform.cpu_us_per_packet / bare.cpu_us_per_packet:.1f}×"
        )
    for p in phases[2:]:
        if bare is not None and bare.cpu_us_per_packet:
            print(
                f"CPU per packet, {p.name} / bare Protocol: "
                f"{p.cpu_us_per_packet / bare.cpu_us_per_packet:.1f}×"
            )
    print(f"platform details: {json.dumps(platform.extra)}")
    if platform.stored is not None and platform.sent != platform.stored:
        print(f"LOST {platform.sent - platform.stored} readings", file=sys.stderr)
        raise SystemExit(1)
    if platform.replies != platform.sent:
        missing = platform.sent - (platform.replies or 0)
        print(f"{missing} packets not acknowledged", file=sys.stderr)
        raise SystemExit(1)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="weijian-hj212-bench-") as tmp:
        phases = [await platform_phase(args, Path(tmp))]
    if not args.no_bare:
        phases.append(await bare_phase(args))
    if args.streams:
        phases.append(await streams_phase(args))
    report(phases, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between packets")
    parser.add_argument("--sim-procs", type=int, default=1, help="simulator processes")
    parser.add_argument("--fsync", default="interval", choices=[p.value for p in FsyncPolicy])
    parser.add_argument("--no-bare", action="store_true", help="skip the bare reference")
    parser.add_argument("--streams", action="store_true", help="also run the start_server one")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
