"""How many simulated devices one process drives: a scenario's MQTT fleet against a real broker.

Method: a local Mosquitto (``LocalMosquitto``, as the embedded platform runs it) with one account
and ACL per device, installed hashed as the registry would (``set_devices``); a QoS 1 subscriber in
its own process (``mosquitto_sub``) stands in for the collector, so PUBACKs and fan-out cost what
they cost in production. The scenario (default ``scale``: 9,000 air monitors every 5 s and 1,000
sterilizers every 10 s, 1,900 messages/s) is planned and run by ``build_fleet``, with its faults if
it has any. After every device is connected and a warm-up, a steady-state window measures:

* intended vs achieved messages per second (acknowledged by the broker) and readings per second;
* this process's CPU share (1.0 = one core), the broker's, and this process's resident memory;
* missed ticks (the schedule skipped because the loop was late) and late-reading lag.

``--interval-scale 0.2`` shortens every interval five-fold (5 s → 1 s) to find the ceiling.
``--offline`` measures the offline generator instead (ticks per second, no network).

Usage: python benchmarks/simulator.py [--scenario scale] [--window 60] [--warmup 15]
       [--interval-scale 1.0] [--devices N] [--offline --days 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols.mosquitto_auth import DeviceAccess, hash_password  # noqa: E402
from simulators.faults import generate  # noqa: E402
from simulators.mqtt_device import MqttFleet  # noqa: E402
from simulators.scenario import load_scenario, mqtt_devices  # noqa: E402
from weijian.stack.mosquitto import LocalMosquitto  # noqa: E402


class _Account:
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password


def _subscriber(broker: LocalMosquitto, out: Path) -> subprocess.Popen[bytes]:
    account = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    broker.reload()
    time.sleep(0.5)
    return subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-u",
            account.username,
            "-P",
            account.password,
            "-i",
            "bench-collector",
            "-t",
            f"{broker.topic_prefix}/+/+/+/telemetry",
            "-F",
            "%t",
        ],
        stdout=out.open("wb"),
        stderr=subprocess.DEVNULL,
    )


async def _run(args: argparse.Namespace, broker: LocalMosquitto) -> dict[str, object]:
    scenario = load_scenario(args.scenario)
    start = datetime.now(UTC)
    planned = scenario.plan(start)
    if args.devices:
        planned = planned[: args.devices]
    # Accounts as the registry installs them: hashed, one publish grant per device.
    passwords = {d.id: f"pw-{d.id}" for d in planned}
    t = time.perf_counter()
    broker.set_devices(
        DeviceAccess(
            d.id,
            hash_password(passwords[d.id]),
            (f"{broker.topic_prefix}/{d.tenant}/{d.site}/{d.id}/#",),
        )
        for d in planned
        if d.protocol == "mqtt"
    )
    broker.reload()
    accounts_s = time.perf_counter() - t
    await asyncio.sleep(1.0)  # SIGHUP is asynchronous
    declared = mqtt_devices(planned, lambda d, _t, _s: _Account(d, passwords[d]))
    if args.interval_scale != 1.0:
        declared = [replace(d, interval_s=d.interval_s * args.interval_scale) for d in declared]
    fleet = MqttFleet(declared, "127.0.0.1", broker.port, keep_acked_seqs=False, seed=1)
    me = psutil.Process()
    mosq = psutil.Process(broker.pid)
    rss0 = me.memory_info().rss
    t0 = time.monotonic()
    async with fleet:
        async with asyncio.timeout(300):
            await fleet.wait_connected()
        connect_s = time.monotonic() - t0
        await asyncio.sleep(args.warmup)
        stats0 = fleet.stats()
        acked0 = sum(s.acked for s in stats0.values())
        readings0 = sum(s.acked_readings for s in stats0.values())
        missed0 = sum(s.missed_ticks for s in stats0.values())
        cpu0, mcpu0, w0 = time.process_time(), sum(mosq.cpu_times()[:2]), time.monotonic()
        lags: list[float] = []
        end = w0 + args.window
        loop = asyncio.get_running_loop()
        while time.monotonic() < end:  # how late the loop wakes a 1 s sleeper
            before = loop.time()
            await asyncio.sleep(1.0)
            lags.append((loop.time() - before - 1.0) * 1000.0)
        w1 = time.monotonic()
        cpu1, mcpu1 = time.process_time(), sum(mosq.cpu_times()[:2])
        stats1 = fleet.stats()
        acked1 = sum(s.acked for s in stats1.values())
        readings1 = sum(s.acked_readings for s in stats1.values())
        missed1 = sum(s.missed_ticks for s in stats1.values())
        rss1 = me.memory_info().rss
        rates = fleet.rates()
    elapsed = w1 - w0
    lags.sort()
    return {
        "scenario": scenario.name,
        "devices": len(declared),
        "connect_s": round(connect_s, 1),
        "accounts_s": round(accounts_s, 1),
        "window_s": round(elapsed, 1),
        "intended_msgs_per_s": round(rates.intended_msgs_per_s, 1),
        "achieved_msgs_per_s": round((acked1 - acked0) / elapsed, 1),
        "intended_readings_per_s": round(rates.intended_readings_per_s, 1),
        "achieved_readings_per_s": round((readings1 - readings0) / elapsed, 1),
        "missed_ticks": missed1 - missed0,
        "simulator_cpu": round((cpu1 - cpu0) / elapsed, 3),
        "broker_cpu": round((mcpu1 - mcpu0) / elapsed, 3),
        "simulator_rss_mib_added": round((rss1 - rss0) / 2**20, 1),
        "loop_lag_ms_p50": round(lags[len(lags) // 2], 1) if lags else None,
        "loop_lag_ms_max": round(lags[-1], 1) if lags else None,
    }


def offline(args: argparse.Namespace) -> dict[str, object]:
    scenario = load_scenario(args.scenario)
    start = scenario.start or datetime(2026, 11, 16, tzinfo=UTC)
    began, cpu = time.perf_counter(), time.process_time()
    counts = {"readings": 0, "silent": 0, "malformed": 0}
    for record in generate(scenario, start, start + timedelta(days=args.days)):
        if record.values is None:
            counts["silent"] += 1
        elif isinstance(record.values, dict):
            counts["readings"] += 1
        else:
            counts["malformed"] += 1
    seconds = time.perf_counter() - began
    ticks = sum(counts.values())
    return {
        "scenario": scenario.name,
        "devices": len(scenario.devices),
        "simulated_days": args.days,
        **counts,
        "seconds": round(seconds, 2),
        "ticks_per_s": round(ticks / seconds),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scale")
    parser.add_argument("--devices", type=int, help="only the first N devices")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds after connecting")
    parser.add_argument("--interval-scale", type=float, default=1.0)
    parser.add_argument("--offline", action="store_true", help="offline generator throughput")
    parser.add_argument("--days", type=float, default=1.0, help="offline: simulated days")
    args = parser.parse_args()
    if args.offline:
        print(json.dumps(offline(args), indent=1))
        return
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_sub") is None:
        raise SystemExit("needs mosquitto and mosquitto_sub (Debian: mosquitto, mosquitto-clients)")
    work = Path(tempfile.mkdtemp(prefix="weijian-simbench-"))
    broker = LocalMosquitto(work / "mqtt")
    sub = None
    try:
        broker.start()
        sub = _subscriber(broker, work / "received.txt")
        result = asyncio.run(_run(args, broker))
        time.sleep(1.0)
        sub.terminate()
        sub.wait(10)
        with (work / "received.txt").open("rb") as f:
            result["subscriber_received"] = sum(1 for _ in f)
        result["cpus"] = os.cpu_count()
        print(json.dumps(result, indent=1))
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
            sub.wait()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
