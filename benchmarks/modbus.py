"""Modbus collector at scale: 10,000 simulated probes polled every 5 s by one collector process.

Method: a separate process (``python -m simulators.modbus_device``) serves ``--probes`` units over
``--endpoints`` TCP servers (250 unit ids each by default), so the simulator's CPU is not counted
against the collector. This process runs the real collector → Ingestor → Spool (fsync policy
``interval``) path. After one interval of warm-up (every device has polled once and every
connection is open) it measures for ``--seconds``:

* achieved poll rate against the intended ``probes / interval``;
* lateness (poll start − scheduled time), p50 / p99 / max;
* readings lost: the spool is reopened afterwards and its records counted against the polls that
  succeeded (must be 0);
* collector CPU: this process's CPU time / wall time over the window (spool fsync thread
  included), and CPU per poll.

Then, in the same run and against the same servers, the reference: raw pymodbus
``read_input_registers`` in a tight loop, one connection per endpoint like the collector, for
``--reference-seconds``; it prints the raw read rate, its CPU per read, and the ratios.

Usage: python benchmarks/modbus.py [--probes 10000] [--endpoints 40] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from collectors.metrics import Metrics  # noqa: E402
from collectors.modbus import ModbusCollector, ModbusTarget  # noqa: E402
from collectors.pipeline import Ingestor  # noqa: E402
from collectors.records import EVENT_ROUTE, decode_record  # noqa: E402
from collectors.spool import Spool  # noqa: E402
from protocols.catalog import default_catalog  # noqa: E402
from protocols.directory import DeviceInfo, StaticDirectory  # noqa: E402
from protocols.profiles import load_profiles  # noqa: E402
from protocols.reading import ReadingValidator  # noqa: E402
from weijian.config import FsyncPolicy  # noqa: E402

PROFILE = "water_probe_wq500"


def start_simulator(endpoints: int, units: int, profile: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.modbus_device",
            "--profile",
            profile,
            "--endpoints",
            str(endpoints),
            "--units",
            str(units),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"simulator exited with {proc.wait()}")
    return proc, json.loads(line)["ports"]


def stop_simulator(proc: subprocess.Popen) -> int:
    """Close its stdin (it stops), return how many requests it served."""
    try:
        out, _ = proc.communicate(timeout=30)  # closes its stdin: the simulator stops
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return -1
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return int(lines[-1]["requests"]) if lines else -1


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return (
        ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")
    )


async def count_spooled(directory: Path) -> int:
    readings = 0
    async with Spool(directory, fsync=FsyncPolicy.NEVER) as spool:
        while True:
            batch = await spool.read_batch(10_000, timeout=0)
            if not batch.records:
                return readings
            readings += sum(
                1 for record in batch.records if decode_record(record)[0] != EVENT_ROUTE
            )
            await spool.commit(batch)


async def run_collector(args: argparse.Namespace, ports: list[int], sim: psutil.Process) -> dict:
    profile = load_profiles()[args.profile]
    kind = profile.kind
    targets: list[ModbusTarget] = []
    for e, port in enumerate(ports):
        for unit in range(1, args.units + 1):
            if len(targets) == args.probes:
                break
            device = DeviceInfo(f"wq-{e:03d}-{unit:03d}", "bench", f"site-{e:03d}", kind, "110105")
            targets.append(
                ModbusTarget(
                    device,
                    profile.id,
                    "tcp",
                    host="127.0.0.1",
                    port=port,
                    unit_id=unit,
                    interval_s=args.interval,
                    timeout_s=args.timeout,
                )
            )
    directory = StaticDirectory(t.device for t in targets)
    me = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="weijian-modbus-bench-") as tmp:
        spool_dir = Path(tmp) / "spool"
        async with Spool(spool_dir, fsync=FsyncPolicy.INTERVAL, fsync_interval_s=0.2) as spool:
            metrics = Metrics()
            ingestor = Ingestor(directory, ReadingValidator(default_catalog()), spool, metrics)
            collector = ModbusCollector(
                ingestor, lambda: targets, metrics=metrics, refresh_s=30.0, seed=1
            )
            stalls: list[float] = []
            async with collector:
                await asyncio.sleep(args.interval + 1.0)  # every device polled once, all connected
                watcher = asyncio.create_task(watch_loop(stalls))
                s = collector.stats
                collector.reset_lateness()
                ok0, failed0, skipped0 = s.polls_ok, s.polls_failed, s.polls_skipped
                cpu0, sim0, t0 = cpu_seconds(me), cpu_seconds(sim), time.monotonic()
                await asyncio.sleep(args.seconds)
                wall = time.monotonic() - t0
                cpu, sim_cpu = cpu_seconds(me) - cpu0, cpu_seconds(sim) - sim0
                lateness = list(s.lateness_s)
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                window = {
                    "polls_ok": s.polls_ok - ok0,
                    "polls_failed": s.polls_failed - failed0,
                    "polls_skipped": s.polls_skipped - skipped0,
                }
            stats = collector.stats
        spooled = await count_spooled(spool_dir)
    polls = window["polls_ok"] + window["polls_failed"]
    return {
        "probes": len(targets),
        "endpoints": len(ports),
        "wall_s": wall,
        "intended_rate": len(targets) / args.interval,
        "achieved_rate": polls / wall,
        **window,
        "lateness_p50_ms": quantile(lateness, 0.5) * 1000,
        "lateness_p99_ms": quantile(lateness, 0.99) * 1000,
        "lateness_max_ms": max(lateness) * 1000 if lateness else float("nan"),
        "stall_max_ms": max(stalls, default=0.0) * 1000,
        "cpu_fraction": cpu / wall,
        "cpu_us_per_poll": cpu / polls * 1e6 if polls else float("nan"),
        "sim_cpu_fraction": sim_cpu / wall,
        "total_polls_ok": stats.polls_ok,
        "total_polls_failed": stats.polls_failed,
        "readings_stored": stats.readings_stored,
        "readings_rejected": stats.readings_rejected,
        "readings_dropped": sum(stats.readings_dropped.values()),
        "spooled": spooled,
        "lost": stats.polls_ok - spooled,
    }


async def run_reference(
    args: argparse.Namespace, ports: list[int], sim: psutil.Process, rate: float | None
) -> dict:
    """Raw pymodbus reads, one connection per endpoint, each cycling over its units.

    ``rate=None``: a tight loop (the client's ceiling). Otherwise paced at ``rate`` reads/s in
    all, like the collector's schedule but without scheduling, decoding or the pipeline: the CPU
    difference is what the collector adds.
    """
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=5, retries=0) for p in ports]
    for client in clients:
        await client.connect()
    plan = load_profiles()[args.profile].read_plan
    units_per = min(args.units, -(-args.probes // len(ports)))
    reads = 0
    errors = 0
    stop_at = 0.0
    period = len(clients) * len(plan) / rate if rate else 0.0

    async def loop(index: int, client: AsyncModbusTcpClient) -> None:
        nonlocal reads, errors
        loop_time = asyncio.get_running_loop().time
        unit = 0
        due = loop_time() + period * index / len(clients)
        while time.monotonic() < stop_at:
            if period:
                due += period
                delay = due - loop_time()
                if delay > 0:
                    await asyncio.sleep(delay)
            unit = unit % units_per + 1
            for request in plan:
                call = (
                    client.read_input_registers
                    if request.function == 4
                    else client.read_holding_registers
                )
                response = await call(request.start, count=request.count, device_id=unit)
                if response.isError():
                    errors += 1
                reads += 1

    me = psutil.Process()
    cpu0, sim0, t0 = cpu_seconds(me), cpu_seconds(sim), time.monotonic()
    stop_at = t0 + args.reference_seconds
    try:
        await asyncio.gather(*(loop(i, c) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            client.close()
    wall = time.monotonic() - t0
    cpu, sim_cpu = cpu_seconds(me) - cpu0, cpu_seconds(sim) - sim0
    return {
        "reads": reads,
        "errors": errors,
        "rate": reads / wall,
        "cpu_fraction": cpu / wall,
        "cpu_us_per_read": cpu / reads * 1e6 if reads else float("nan"),
        "sim_cpu_fraction": sim_cpu / wall,
    }


async def watch_loop(stalls: list[float]) -> None:
    """Record how late a 10 ms timer fires: stalls of the whole event loop (GC, the host)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.01)
        stalls.append(loop.time() - before - 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=40)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reference-seconds", type=float, default=10.0)
    parser.add_argument("--profile", default=PROFILE)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    args.units = -(-args.probes // args.endpoints)
    if args.units > 255:
        parser.error("at most 255 unit ids per TCP endpoint: raise --endpoints")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(
        f"simulator: {args.endpoints} endpoints × {args.units} units ({args.profile}), "
        f"separate process; collector: {args.probes} probes every {args.interval:g} s",
        flush=True,
    )
    proc, ports = start_simulator(args.endpoints, args.units, args.profile)
    sim = psutil.Process(proc.pid)
    try:
        result = asyncio.run(run_collector(args, ports, sim))
        tight = asyncio.run(run_reference(args, ports, sim, None))
        paced = asyncio.run(run_reference(args, ports, sim, result["achieved_rate"]))
    finally:
        served = stop_simulator(proc)
    r = result
    print(
        f"\nModbus collector, {r['probes']} probes / {r['endpoints']} endpoints, "
        f"{r['wall_s']:.0f} s measured after {args.interval + 1:g} s warm-up"
    )
    print(
        f"  poll rate      {r['achieved_rate']:8.0f} /s   (intended {r['intended_rate']:.0f} /s, "
        f"{100 * r['achieved_rate'] / r['intended_rate']:.1f} %)"
    )
    print(
        f"  polls          ok {r['polls_ok']}, failed {r['polls_failed']}, "
        f"skipped slots {r['polls_skipped']}"
    )
    print(
        f"  lateness       p50 {r['lateness_p50_ms']:.1f} ms, p99 {r['lateness_p99_ms']:.1f} ms, "
        f"max {r['lateness_max_ms']:.1f} ms   (target p99 ≤ 250 ms); "
        f"event-loop stalls: max {r['stall_max_ms']:.0f} ms"
    )
    print(
        f"  readings       {r['total_polls_ok']} good polls, {r['spooled']} in the spool, "
        f"lost {r['lost']} (stored {r['readings_stored']}, rejected {r['readings_rejected']}, "
        f"dropped {r['readings_dropped']})"
    )
    print(
        f"  collector CPU  {100 * r['cpu_fraction']:.0f} % of a core, "
        f"{r['cpu_us_per_poll']:.0f} µs per poll; simulator {100 * r['sim_cpu_fraction']:.0f} %"
    )
    print(
        f"\nReference: raw pymodbus reads, {len(ports)} connections, {args.reference_seconds:g} s"
    )
    for name, ref in (("tight loop", tight), (f"paced at {r['achieved_rate']:.0f}/s", paced)):
        print(
            f"  {name:<16} {ref['rate']:8.0f} reads/s, {100 * ref['cpu_fraction']:.0f} % CPU, "
            f"{ref['cpu_us_per_read']:.0f} µs per read ({ref['errors']} errors); "
            f"simulator {100 * ref['sim_cpu_fraction']:.0f} %"
        )
    print("\nRatios")
    print(
        "  collector poll rate / raw tight-loop read rate  "
        f"{r['achieved_rate'] / tight['rate']:.2f}"
    )
    print(
        "  collector CPU / raw reads at the same rate      "
        f"{r['cpu_fraction'] / paced['cpu_fraction']:.2f}  "
        f"(+{r['cpu_us_per_poll'] - paced['cpu_us_per_read']:.0f} µs per poll for scheduling, "
        "decoding, validation and the spool)"
    )
    capacity = r["achieved_rate"] / r["cpu_fraction"] if r["cpu_fraction"] else float("nan")
    print(
        f"  collector capacity at one core ≈ {capacity:.0f} polls/s "
        f"(≈ {capacity * args.interval:.0f} probes at {args.interval:g} s)"
    )
    print(f"  simulator served {served} requests in all")
    if args.json:
        print(json.dumps({"collector": result, "tight": tight, "paced": paced}, indent=2))
    ok = r["lost"] == 0 and r["lateness_p99_ms"] <= 250
    print("\nPASS" if ok else "\nMISSED TARGET", flush=True)
    os._exit(0 if ok else 1)  # skip the slow teardown of 10k objects


if __name__ == "__main__":
    main()
