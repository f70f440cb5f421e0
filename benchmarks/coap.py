"""CoAP ingest throughput: the collector against a bare aiocoap resource, same client, same run.

Method: N simulated devices (``simulators.coap_device.CoapFleet``, in a process of its own) post
confirmable requests back to back (each device keeps one in flight, as a device does) until each
has sent M messages. The server, in another process, is either

  (a) bare: an aiocoap resource that answers 2.04 at once — the ceiling of an aiocoap server
      with this client on this machine;
  (b) collector: ``CoapCollector`` with the real pipeline — token check (a salted SHA-256 per
      request, as the registry's key cache does), validation, spool append with fsync (group
      commit), 2.04 only once durable. Run with the token check in a worker thread (the default:
      the platform's check may query the database) and inline.

Printed per server: readings/s acknowledged, server and client CPU (1.0 = one core), server CPU
per reading, server RSS, how many responses went separate (empty ACK first), and the ratio to (a).
Usage: python benchmarks/coap.py [--devices 100] [--messages 100] [--batch 1] [--endpoints N]
       [--format json|cbor] [--interval S] [--fsync always|interval|never]
``--interval S`` paces each device (random phase) instead of posting back to back: achieved
vs intended rate and latency at a load below capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET_SALT = b"bench-salt-16byt"


def token_of(i: int) -> str:
    return f"wjc_{i:012x}_bench-secret-{i:08d}-abcdefghij"


def device_of(i: int) -> str:
    return f"gr10-{i:05d}"


def make_authenticate(devices: int) -> Any:
    """Like gateway.device_keys on a warm cache: key id → (device, salted hash), then verify."""
    table = {
        token_of(i)[4:16]: (
            device_of(i),
            hashlib.sha256(SECRET_SALT + token_of(i).encode()).hexdigest(),
        )
        for i in range(devices)
    }

    def authenticate(token: str) -> str | None:
        entry = table.get(token[4:16])
        if entry is None:
            return None
        digest = hashlib.sha256(SECRET_SALT + token.encode()).hexdigest()
        return entry[0] if hmac.compare_digest(digest, entry[1]) else None

    return authenticate


# -- server process ----------------------------------------------------------------------------


async def _serve(conn: Connection, mode: str, devices: int, fsync: str) -> None:
    import aiocoap
    import aiocoap.resource
    from aiocoap import Code, Message

    from collectors.coap import CoapCollector
    from collectors.metrics import Metrics
    from collectors.pipeline import Ingestor
    from collectors.spool import Spool
    from protocols.catalog import default_catalog
    from protocols.directory import DeviceInfo, StaticDirectory
    from protocols.reading import ReadingValidator
    from weijian.config import FsyncPolicy

    class Bare(aiocoap.resource.Resource):
        async def render_post(self, request: Message) -> Message:
            return Message(code=Code.CHANGED)  # no body: the client counts what it sent

    proc = psutil.Process()
    tmp = Path(tempfile.mkdtemp(prefix="coap-bench-"))
    try:
        if mode == "bare":
            site = aiocoap.resource.Site()
            site.add_resource(["t"], Bare())
            context = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", 0), transports=["udp6"]
            )
            port = context.request_interfaces[0].token_interface.message_interface._local_port()
            result = await _measure(conn, port, proc, lambda: {})
            await context.shutdown()
        else:
            directory = StaticDirectory(
                DeviceInfo(device_of(i), "bench", "xray-1", "dose_rate_monitor", "110105")
                for i in range(devices)
            )
            async with Spool(tmp / "spool", fsync=FsyncPolicy(fsync)) as spool:
                metrics = Metrics()
                ingestor = Ingestor(directory, ReadingValidator(default_catalog()), spool, metrics)
                async with CoapCollector(
                    ingestor,
                    make_authenticate(devices),
                    port=0,
                    auth_in_thread=mode == "collector-thread",
                ) as collector:

                    def extra() -> dict[str, Any]:
                        return {
                            "accepted": metrics.ingest.accepted["coap"],
                            "rejected": sum(metrics.ingest.rejected.values()),
                            "separate": collector.stats.separate_responses,
                            "fsyncs": spool.stats.fsyncs,
                        }

                    result = await _measure(conn, collector.port, proc, extra)
        conn.send(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(conn: Connection, port: int, proc: psutil.Process, extra: Any) -> dict:
    conn.send(port)
    assert await asyncio.to_thread(conn.recv) == "begin"
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    assert await asyncio.to_thread(conn.recv) == "end"
    cpu1, t1 = proc.cpu_times(), time.monotonic()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"cpu_s": cpu, "wall_s": t1 - t0, "rss_mb": proc.memory_info().rss / 2**20, **extra()}


def server_main(conn: Connection, mode: str, devices: int, fsync: str) -> None:
    asyncio.run(_serve(conn, mode, devices, fsync))


# -- client process ----------------------------------------------------------------------------


async def _drive(
    started: Any,
    port: int,
    devices: int,
    messages: int,
    batch: int,
    endpoints: int,
    content_format: str,
    interval: float,
) -> dict:
    from simulators.coap_device import CoapFleet, SimulatedCoapDevice

    def values(t: Any) -> dict[str, Any]:
        return {"dose_rate_usv_h": 0.21, "beam_on": False}

    fleet_devices = [
        SimulatedCoapDevice(
            device_of(i),
            "dose_rate_monitor",
            token_of(i),
            interval_s=interval or 0.0005,  # 0.5 ms: shorter than a round trip, back to back
            values=values,
            content_format=content_format,  # type: ignore[arg-type]
        )
        for i in range(devices)
    ]
    fleet = CoapFleet(
        fleet_devices,
        port=port,
        endpoints=endpoints,
        batch_size=batch,
        max_messages=messages,
        jitter=0.02 if interval else 0.0,
        request_timeout_s=30.0,
    )
    started()
    async with fleet:
        await fleet.wait_finished()
    rates = fleet.rates()
    stats = fleet.stats.values()
    return {
        "acked": sum(s.acked for s in stats),
        "acked_readings": sum(s.acked_readings for s in stats),
        "lost": sum(s.lost for s in stats),
        "refused": sum(s.refused for s in stats),
        "unavailable": sum(s.unavailable for s in stats),
        "elapsed_s": rates.elapsed_s,
        "readings_per_s": rates.acked_readings_per_s,
        "msgs_per_s": rates.acked_msgs_per_s,
        "client_cpu": rates.cpu_fraction,
        "recycles": fleet.recycles,
        "p50_ms": rates.latency_p50_ms,
        "p99_ms": rates.latency_p99_ms,
    }


def client_main(q: Any, *args: Any) -> None:
    q.put(asyncio.run(_drive(lambda: q.put("started"), *args)))


# -- orchestration -----------------------------------------------------------------------------


def run(mode: str, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=server_main, args=(child, mode, args.devices, args.fsync))
    server.start()
    port = parent.recv()
    q = ctx.Queue()
    client = ctx.Process(
        target=client_main,
        args=(
            q,
            port,
            args.devices,
            args.messages,
            args.batch,
            args.endpoints or args.devices,
            args.format,
            args.interval,
        ),
    )
    client.start()
    assert q.get(timeout=60) == "started"  # imports done: measure the server from here
    parent.send("begin")
    result = q.get(timeout=900)
    client.join()
    parent.send("end")
    server_result = parent.recv()
    server.join()
    return {**result, **server_result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--messages", type=int, default=100, help="per device")
    p.add_argument("--batch", type=int, default=1, help="readings per message")
    p.add_argument(
        "--endpoints", type=int, default=0, help="client contexts (UDP sockets); 0: one per device"
    )
    p.add_argument("--format", choices=("json", "cbor"), default="json")
    p.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between a device's messages (0: back to back, for capacity)",
    )
    p.add_argument("--fsync", choices=("always", "interval", "never"), default="always")
    p.add_argument(
        "--modes", default="bare,collector-thread,collector-inline", help="comma-separated"
    )
    args = p.parse_args()
    total = args.devices * args.messages * args.batch
    print(
        f"{args.devices} devices x {args.messages} CON messages x {args.batch} reading(s) "
        f"= {total} readings, {args.format}, {args.endpoints or args.devices} client endpoint(s), "
        f"spool fsync={args.fsync}, {psutil.cpu_count()} CPUs"
    )
    if args.interval:
        intended = args.devices * args.batch / args.interval
        print(f"every {args.interval} s per device: intended {intended:,.0f} readings/s")
    header = (
        f"{'server':<18}{'readings/s':>11}{'msgs/s':>9}{'srv CPU':>9}{'µs/rdg':>8}"
        f"{'cli CPU':>9}{'p50 ms':>8}{'p99 ms':>8}{'RSS MB':>8}{'separate':>9}{'lost':>6}"
        f"{'fsyncs':>8}"
    )
    print(header)
    results: dict[str, dict] = {}
    for mode in args.modes.split(","):
        r = run(mode, args)
        results[mode] = r
        srv_cpu = r["cpu_s"] / r["wall_s"]
        per = r["cpu_s"] / max(r["acked_readings"], 1) * 1e6
        print(
            f"{mode:<18}{r['readings_per_s']:>11,.0f}{r['msgs_per_s']:>9,.0f}{srv_cpu:>9.2f}"
            f"{per:>8.0f}{r['client_cpu']:>9.2f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
            f"{r['rss_mb']:>8.0f}{r.get('separate', 0):>9}{r['lost']:>6}{r.get('fsyncs', 0):>8}"
        )
        if mode != "bare" and r.get("accepted") != r["acked_readings"]:
            print(f"  !! acknowledged {r['acked_readings']} but spooled {r.get('accepted')}")
        if r["acked_readings"] != total:
            print(f"  !! {total - r['acked_readings']} readings not acknowledged")
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    bare = results.get("bare")
    if bare:
        for mode, r in results.items():
            if mode != "bare":
                ratio = r["readings_per_s"] / bare["readings_per_s"]
                print(f"ratio {mode}/bare: {ratio:.2f}")


if __name__ == "__main__":
    main()
