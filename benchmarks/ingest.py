"""MQTT → InfluxDB ingest throughput, compared in the same run with its two references.

Method: N simulated devices publish M messages (QoS 1) to a real Mosquitto while the consumer is
away; the consumer's persistent session makes the broker queue them. Then the consumer connects and
we time how long it takes to take them all. Preloading isolates the consumer's capacity from how
fast Python publishers can publish, and gives every consumer the same input.

  (a) bare: a paho subscriber that only counts the messages (auto-ack): the ceiling for any
      Python MQTT consumer on this machine;
  (b) platform: ``weijian serve`` in its own process — validate, spool (fsync), ack, forward to
      InfluxDB; time until InfluxDB holds every reading (and then checked by a count);
  (c) raw InfluxDB: the same points, already encoded, POSTed to /write in 5,000-line batches.

Two modes: one reading per message (compare with (a)), and batched messages (compare with (c)).
Usage: python benchmarks/ingest.py [--messages 30000] [--batch-messages 3000 --batch-size 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols.directory import DeviceInfo, StaticDirectory  # noqa: E402
from protocols.lineprotocol import encode_line  # noqa: E402
from weijian.stack.influxd import LocalInfluxDB  # noqa: E402
from weijian.stack.mosquitto import LocalMosquitto  # noqa: E402
from weijian.stack.process import free_port  # noqa: E402

PREFIX = "weijian/v1"
FIELDS = ("co2_ppm", "pm25_ug_m3", "pm10_ug_m3", "hcho_mg_m3", "temperature_c", "humidity_pct")


def reading(device_index: int, i: int, base: float) -> dict:
    v = float(i)
    return {
        "ts": round(base + i * 0.001, 3),
        "fields": {
            "co2_ppm": 400.0 + (v % 1000),
            "pm25_ug_m3": 10.0 + (v % 50),
            "pm10_ug_m3": 20.0,
            "hcho_mg_m3": 0.03,
            "temperature_c": 21.5,
            "humidity_pct": 45.0 + device_index % 10,
        },
    }


def _publish_worker(
    port: int,
    devices: list[tuple[str, str, str, str]],
    per_device: int,
    batch: int,
    base: float,
    done: mp.Queue,
) -> None:  # type: ignore[type-arg]
    """One process publishing for a slice of devices, each with its own authenticated connection."""
    clients = []
    for name, password, tenant, site in devices:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}", protocol=mqtt.MQTTv5
        )
        c.username_pw_set(name, password)
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(
            (c, f"{PREFIX}/{tenant}/{site}/{name}/telemetry", int(name.rsplit("-", 1)[1]))
        )
    infos = []
    for k in range(per_device):
        for c, topic, idx in clients:
            if batch == 1:
                body = json.dumps(reading(idx, k, base)).encode()
            else:
                body = json.dumps(
                    {"readings": [reading(idx, k * batch + j, base) for j in range(batch)]}
                ).encode()
            infos.append(c.publish(topic, body, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    for c, _, _ in clients:
        c.disconnect()
        c.loop_stop()
    done.put(len(infos))


def preload(
    port: int,
    accounts: list[tuple[str, str, str, str]],
    messages: int,
    batch: int,
    base: float,
    procs: int = 2,
) -> float:
    per_device = messages // len(accounts)
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    slices = [accounts[i::procs] for i in range(procs)]
    t0 = time.perf_counter()
    ps = [
        mp.Process(target=_publish_worker, args=(port, s, per_device, batch, base, q))
        for s in slices
    ]
    for p in ps:
        p.start()
    sent = sum(q.get(timeout=600) for _ in ps)
    for p in ps:
        p.join()
    assert sent == per_device * len(accounts), sent
    return time.perf_counter() - t0


def bare_subscriber(
    port: int, user: str, password: str, expected: int, client_id: str, subscribe_only: bool = False
) -> tuple[float, float]:
    """Count messages with paho's own loop; returns (seconds, cpu seconds)."""
    got = 0
    first = 0.0
    finished = threading.Event()
    props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)

    def on_connect(client, userdata, flags, rc, p):  # type: ignore[no-untyped-def]
        client.subscribe(f"{PREFIX}/+/+/+/telemetry", qos=1)

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        nonlocal got, first
        if got == 0:
            first = time.perf_counter()
        got += 1
        if got >= expected:
            finished.set()

    c.on_connect = on_connect
    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    cpu0 = time.process_time()
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    if subscribe_only:
        subscribed.wait(10)
        c.disconnect()
        c.loop_stop()
        return 0.0, 0.0
    finished.wait(600)
    elapsed = time.perf_counter() - first  # from the first message: connecting is not consuming
    cpu = time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    assert got >= expected, f"bare subscriber got {got} of {expected}"
    return elapsed, cpu


def influx_query(url: str, user: str, password: str, q: str, db: str) -> dict:
    data = urllib.parse.urlencode({"q": q, "db": db}).encode()
    req = urllib.request.Request(
        f"{url}/query",
        data=data,
        headers={"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def count_points(url: str, user: str, password: str, db: str) -> int:
    res = influx_query(url, user, password, 'SELECT count("co2_ppm") FROM "air_monitor"', db)
    series = res["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def metrics(port: int, *names: str) -> dict[str, float]:
    """Sums of the named metrics (all label sets) from one scrape; {} while it is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, http.client.HTTPException):  # not up yet (even a TCP self-connect)
        return {}
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        for name in names:
            if line.startswith((name + " ", name + "{")):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


STORED = "weijian_readings_stored_total"
ACCEPTED = "weijian_readings_accepted_total"
POLL_S = 0.1  # scraping is not free for the platform: keep it rare


def run_platform(
    env: dict[str, str],
    metrics_port: int,
    expected: int,
    log: Path,
    subscribe_only: bool = False,
    workers: int = 1,
) -> dict[str, float]:
    """Start `weijian serve`, time it from its first accepted reading: until every reading is
    accepted (spooled and acknowledged) and until every reading is stored. CPU and memory are
    summed over the platform's processes (the workers and their supervisor)."""
    ports = [metrics_port + i for i in range(workers)]

    def scrape(*names: str) -> dict[str, float] | None:
        parts = [metrics(port, *names) for port in ports]
        if not all(parts):
            return None
        return {n: sum(p[n] for p in parts) for n in names}

    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "weijian.cli", "serve", "--workers", str(workers)],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    family = psutil.Process(proc.pid)

    def cpu_and_rss() -> tuple[float, int]:
        procs = [family, *family.children(recursive=True)]
        cpu = rss = 0
        for p in procs:
            try:
                cpu += sum(p.cpu_times()[:2])
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return cpu, rss

    peak = 0
    accepted_at = 0.0
    try:
        while scrape(STORED) is None:  # interpreter start-up
            if proc.poll() is not None:
                raise RuntimeError(f"platform exited; see {log}")
            time.sleep(0.01)
        if subscribe_only:
            time.sleep(1.0)  # let it subscribe
            return {}
        while not (scrape(ACCEPTED) or {}).get(ACCEPTED):  # connecting is not consuming
            time.sleep(0.01)
        t0 = time.perf_counter()
        cpu0, _ = cpu_and_rss()
        while True:
            now = scrape(STORED, ACCEPTED) or {}
            if not accepted_at and now.get(ACCEPTED, 0) >= expected:
                accepted_at = time.perf_counter() - t0
            if now.get(STORED, 0) >= expected:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"platform exited; see {log}")
            peak = max(peak, cpu_and_rss()[1])
            time.sleep(POLL_S)
            if time.perf_counter() - t0 > 900:
                raise RuntimeError("platform did not store everything in 900 s")
        elapsed = time.perf_counter() - t0
        cpu = cpu_and_rss()[0] - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {
        "stored_s": elapsed,
        "accepted_s": accepted_at or elapsed,
        "cpu_s": cpu,
        "peak_rss_mib": peak / 2**20,
    }


def raw_influx_rate(url: str, user: str, password: str, db: str, lines: list[bytes]) -> float:
    auth = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    t0 = time.perf_counter()
    for i in range(0, len(lines), 5000):
        body = b"\n".join(lines[i : i + 5000])
        req = urllib.request.Request(
            f"{url}/write?db={db}&precision=ms", data=body, headers={"Authorization": auth}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 204
    return len(lines) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--messages", type=int, default=30000, help="single-reading messages")
    ap.add_argument("--batch-messages", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--tenant-copies", choices=["on", "off"], default="on")
    ap.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    ap.add_argument(
        "--workers", type=int, default=1, help="platform processes (weijian serve --workers)"
    )
    ap.add_argument("--modes", default="single,batched", help="which modes to run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="weijian-bench-"))
    influx = LocalInfluxDB(work / "influx")
    creds = influx.start()
    broker = LocalMosquitto(work / "mqtt")
    tenants = [f"bench-t{i}" for i in range(4)]
    devices = [
        DeviceInfo(f"bench-dev-{i:05d}", tenants[i % 4], f"site-{i % 20}", "air_monitor", "110105")
        for i in range(args.devices)
    ]
    accounts = []
    for d in devices:
        acc = broker.allow_device(d.device, d.tenant, d.site)
        accounts.append((d.device, acc.password, d.tenant, d.site))
    broker.start()
    collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
    print(
        f"# {args.devices} devices, {args.workers} platform worker(s), fsync={args.fsync}, "
        f"tenant copies {args.tenant_copies}; "
        f"InfluxDB {creds.url}, Mosquitto :{broker.port}; {os.cpu_count()} cores"
    )
    results = {}
    try:
        for mode, messages, batch in (
            ("single", args.messages, 1),
            ("batched", args.batch_messages, args.batch_size),
        ):
            if mode not in args.modes.split(","):
                continue
            readings = messages * batch
            db = f"bench_{mode}"
            data_dir = work / f"data-{mode}"
            data_dir.mkdir()
            StaticDirectory(devices).save(data_dir / "devices.yaml")
            metrics_port = free_port()
            env = {
                **os.environ,
                "WEIJIAN_DATA_DIR": str(data_dir),
                "WEIJIAN_INFLUX__URL": creds.url,
                "WEIJIAN_INFLUX__USERNAME": creds.username,
                "WEIJIAN_INFLUX__PASSWORD": creds.password,
                "WEIJIAN_INFLUX__DATABASE": db,
                "WEIJIAN_INFLUX__TENANT_DATABASE_PREFIX": f"{db}_t_",
                "WEIJIAN_INFLUX__TENANT_DATABASES": "true"
                if args.tenant_copies == "on"
                else "false",
                "WEIJIAN_MQTT__PORT": str(broker.port),
                "WEIJIAN_MQTT__PASSWORD": collector.password,
                "WEIJIAN_MQTT__CLIENT_ID": f"bench-platform-{mode}",
                "WEIJIAN_SPOOL__FSYNC": args.fsync,
                "WEIJIAN_METRICS__PORT": str(metrics_port),
                "WEIJIAN_METRICS__LOG_INTERVAL_S": "5",
                "PYTHONPATH": str(ROOT),
            }
            bare_id = f"bench-bare-{mode}-{uuid.uuid4().hex[:4]}"
            # Register both consumers' sessions, then let devices publish while they are away.
            bare_subscriber(
                broker.port, collector.username, collector.password, 0, bare_id, subscribe_only=True
            )
            run_platform(
                env,
                metrics_port,
                0,
                work / f"platform-{mode}.log",
                subscribe_only=True,
                workers=args.workers,
            )
            base = time.time() - 3600 * (2 if mode == "single" else 1)
            pre = preload(broker.port, accounts, messages, batch, base)
            print(
                f"\n## {mode}: {messages} messages × {batch} reading(s) = {readings} readings "
                f"(published in {pre:.1f} s)"
            )
            bare_s, bare_cpu = bare_subscriber(
                broker.port, collector.username, collector.password, messages, bare_id
            )
            plat = run_platform(
                env, metrics_port, readings, work / f"platform-{mode}.log", workers=args.workers
            )
            plat_s, plat_cpu, plat_rss = plat["stored_s"], plat["cpu_s"], plat["peak_rss_mib"]
            stored = count_points(creds.url, creds.username, creds.password, db)
            lines = []
            for d in devices:
                for k in range(readings // len(devices)):
                    r = reading(int(d.device.rsplit("-", 1)[1]), k, base)
                    lines.append(
                        encode_line(
                            "air_monitor",
                            {
                                "tenant": d.tenant,
                                "site": d.site,
                                "device": d.device,
                                "region": d.region,
                            },
                            r["fields"],
                            int(r["ts"] * 1000),
                        ).encode()
                    )
            raw_db = f"raw_{mode}"
            influx_query(
                creds.url, creds.username, creds.password, f'CREATE DATABASE "{raw_db}"', raw_db
            )
            raw_rate = raw_influx_rate(creds.url, creds.username, creds.password, raw_db, lines)
            bare_rate = messages * batch / bare_s
            plat_rate = readings / plat_s
            loss = readings - stored
            print(
                f"bare paho subscriber : {messages / bare_s:10,.0f} msg/s "
                f"({bare_rate:,.0f} readings/s), "
                f"CPU {bare_cpu / bare_s:.0%}"
            )
            print(
                f"platform (stored)    : {plat_rate:10,.0f} readings/s, "
                f"CPU {plat_cpu / plat_s:.0%} "
                f"of a core, peak RSS {plat_rss:.0f} MiB, stored {stored}/{readings} (loss {loss})"
            )
            print(
                f"platform (accepted)  : {readings / plat['accepted_s']:10,.0f} readings/s "
                "(validated, spooled, acknowledged)"
            )
            print(
                f"raw InfluxDB /write  : {raw_rate:10,.0f} points/s "
                "(5,000-line batches, one writer)"
            )
            print(f"ratio platform/bare  : {plat_rate / bare_rate:.2f}")
            print(f"ratio platform/raw   : {plat_rate / raw_rate:.2f}")
            results[mode] = {
                "bare_readings_s": bare_rate,
                "platform_readings_s": plat_rate,
                "raw_points_s": raw_rate,
                "loss": loss,
                "platform_cpu": plat_cpu / plat_s,
                "platform_peak_rss_mib": plat_rss,
                "platform_accepted_readings_s": readings / plat["accepted_s"],
            }
        print("\n" + json.dumps(results, indent=1))
    finally:
        broker.stop()
        influx.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
