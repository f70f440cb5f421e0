"""Alerting speed: the detector's cost per reading, the anomaly detectors' scores per second, and
the latency from a reading's publication to its notification at 5,000 readings/s.

1. **Listener path** (in process, one core). Six hours of ``clean.yaml`` (every device kind,
   ~125,000 readings, validated as at ingest) go through ``AlertEngine.listener`` -- what the
   ingestor calls for every accepted reading: context lookup, threshold rules, anomaly detectors,
   domain monitors, the no-data bookkeeping, and queueing any transition. Reported as µs per
   reading and readings/s per core, split into its parts, and as the share of a core it takes
   at the ingest benchmark's rates (docs/performance.md: 8,078 readings/s for one process with
   one reading per message; 48,780 readings/s with 100 readings per message).
2. **Anomaly detectors alone**: the same readings through every device's detector pipelines only
   (``SeriesPipeline.update``: the score and the decider), as scores/s per core, per detector.
3. **Publication → notification** on the real stack: Mosquitto, InfluxDB and ``weijian serve``
   (registry mode, the shipped defaults: ``fsync=always``, notifier ``group_wait_s`` 0.5 s) in
   their own processes; publishers (two processes, one MQTT connection per device, QoS 1, one
   reading per message; by default the asyncio publisher of benchmarks/mqtt_load.py, which leaves
   the platform the CPU that paho's thread-per-connection clients took, ``--publisher paho``)
   send ``--rate`` readings/s of indoor air from ``--devices`` devices for
   ``--seconds``. Meanwhile ``--probes`` devices, each at a site in a district of its own (own
   notification group, own officer: one webhook lane each), report once a second and, once
   each at a random moment, publish a CO₂ reading far over GB 37488's 1500 ppm; their sites
   override the rule's ``for`` to 0, so that reading fires its alert at once. A local webhook
   server (alerting/notify/testing.py) is every officer's endpoint. Latency: the probe's
   ``publish()`` call to the webhook request's arrival (both ``time.monotonic()``, one machine).
   References in the same run: publish → PUBACK from the broker (every reading: the transport),
   and publish → the same probe reading queryable in InfluxDB (a reading that is only stored;
   the forwarder flushes every second). The CPU of the platform, the publishers and the broker
   is sampled over the steady part of the run (the publishers share the machine).
   ``--workers N`` runs ``weijian serve --workers N`` instead: N processes on one shared MQTT
   subscription, worker 0 running the alert engine fed by its MQTT tap (every message, through
   an unshared subscription); the platform's CPU is then the workers' together, and each
   worker's share is printed too, with how many readings worker 0's engine judged.

Usage: python benchmarks/alerting.py [--seconds 30] [--rate 5000] [--skip-e2e | --only-e2e]
       [--no-alerting] [--fsync always|interval|never] [--workers N] [--keep]
       [--publisher raw|paho]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerting.engine import (  # noqa: E402
    AlertEngine,
    ContextTable,
    DeviceContext,
    SiteContext,
    profile_resolutions,
)
from alerting.notify.testing import RecordingHttpServer  # noqa: E402
from protocols.catalog import default_catalog  # noqa: E402
from protocols.directory import DeviceInfo  # noqa: E402
from protocols.reading import Reading, ReadingValidator, Rejection  # noqa: E402
from weijian.config import AlertingSettings  # noqa: E402

PREFIX = "weijian/v1"
INGEST_RATES = {"1 reading/message": 8078, "100 readings/message": 48780}
PROBE_RULE = "air.co2.other.high"
SECRET = "bench-webhook-secret"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- 1 and 2: in process -----------------------------------------------------------------------


def clean_readings(hours: float) -> tuple[ContextTable, list[tuple[Reading, float]]]:
    from simulators.faults import generate
    from simulators.scenario import load_scenario

    scenario = load_scenario("clean")
    start, end = scenario.time_range(None, None, f"{hours}h")
    planned = scenario.plan(start)
    sites = {
        s.id: SiteContext(s.id, s.tenant, s.region, s.name, s.venue_type, dict(s.attributes))
        for s in scenario.sites
    }
    contexts = ContextTable(
        [DeviceContext(d.id, d.kind, d.interval_s, sites[d.site], d.profile) for d in planned],
        sites.values(),
    )
    infos = {d.id: DeviceInfo(d.id, d.tenant, d.site, d.kind, d.region) for d in planned}
    validator = ReadingValidator(default_catalog())
    out = []
    for rec in generate(scenario, start, end):
        if not isinstance(rec.values, dict):
            continue
        t = rec.t.timestamp()
        try:
            reading = validator.validate(
                infos[rec.device], {"ts": rec.ts.timestamp(), "fields": rec.values}, int(t * 1000)
            )
        except Rejection:
            continue
        out.append((reading, t))
    return contexts, out


async def listener_cost(contexts: ContextTable, readings: list[tuple[Reading, float]]) -> None:
    """Each pass replays the readings shifted later in time (fresh samples for every evaluator
    and detector: a replayed timestamp would be skipped as late and cost almost nothing)."""
    clock = [readings[0][1]]
    span = readings[-1][1] - readings[0][1] + 3600.0
    passes = [0]
    engine = AlertEngine(
        contexts,
        AlertingSettings(warmup=False, startup_grace_s=0),
        resolutions=profile_resolutions(),
        clock=lambda: clock[0],
    )

    def run() -> float:
        passes[0] += 1
        shift = passes[0] * span
        shifted = [
            (dataclasses.replace(r, time_ms=r.time_ms + round(shift * 1000)), t + shift)
            for r, t in readings
        ]
        listener = engine.listener
        cpu0 = time.process_time()
        for reading, t in shifted:
            clock[0] = t
            listener(reading)
        return (time.process_time() - cpu0) / len(shifted)

    async with engine:
        core = engine.core
        assert core is not None
        run()  # builds every device's state: first-reading costs are not the steady state
        full = run()
        transitions = engine.stats.transitions
        # The parts: the same engine with all but one part taken out of every device's state.
        states = core._states
        saved = {d: (st.rules, st.pipelines, st.sterilizer, st.dose) for d, st in states.items()}

        def only(rules: bool, pipelines: bool, monitors: bool) -> float:
            for device, st in states.items():
                r, p, ster, dose = saved[device]
                st.rules = r if rules else []
                st.pipelines = p if pipelines else []
                st.sterilizer, st.dose = (ster, dose) if monitors else (None, None)
            return run()

        bare = only(False, False, False)
        parts = {
            "threshold rules": only(True, False, False) - bare,
            "anomaly detectors": only(False, True, False) - bare,
            "domain monitors (sterilizer cycles, dose)": only(False, False, True) - bare,
            "the rest (context, no-data, clock skew, listener)": bare,
        }
    print(f"\n## 1. Listener path — {len(readings):,} readings of clean.yaml per pass, one core\n")
    print("| part | µs per reading | readings/s per core |")
    print("|---|---|---|")
    for name, cost in (("all of it", full), *parts.items()):
        rate = f"{1 / cost:,.0f}" if cost > 0 else "—"
        print(f"| {name} | {cost * 1e6:.1f} | {rate} |")
    print(f"\n({transitions} transitions: the detectors started cold, without warm-up)\n")
    print(
        "| ingest rate (docs/performance.md) | alerting's share of one core | both in one process |"
    )
    print("|---|---|---|")
    for name, rate in INGEST_RATES.items():
        combined = 1.0 / (1.0 / rate + full)
        print(
            f"| {name}: {rate:,} readings/s | {100 * full * rate:.0f} % | "
            f"≈ {combined:,.0f} readings/s (estimate) |"
        )


def detector_scores(contexts: ContextTable, readings: list[tuple[Reading, float]]) -> None:
    from alerting.detectors import default_registry

    registry = default_registry()
    resolutions = profile_resolutions()
    pipelines: dict[str, list[Any]] = {}
    for device, ctx in contexts.devices().items():
        pipelines[device] = registry.pipelines(ctx.kind, resolutions(ctx.profile))
    by_type: Counter[str] = Counter()
    cpu_by_type: Counter[str] = Counter()
    scores = 0
    cpu_total = 0.0
    for reading, _ in readings:
        ts = reading.time_ms / 1000.0
        for pipeline in pipelines[reading.device]:
            t0 = time.process_time_ns()
            result = pipeline.update(ts, reading.fields)
            dt = time.process_time_ns() - t0
            if result is not None:
                name = pipeline.spec.detector
                by_type[name] += 1
                cpu_by_type[name] += dt
                scores += 1
                cpu_total += dt
    # the per-call timer costs about as much as a cheap detector: time the loop bare as well
    cpu0 = time.process_time()
    for reading, _ in readings:
        ts = reading.time_ms / 1000.0 + 1e6
        for pipeline in pipelines[reading.device]:
            pipeline.update(ts, reading.fields)
    bare = time.process_time() - cpu0
    print(f"\n## 2. Anomaly detectors alone — {scores:,} scores, one core\n")
    print(
        f"all detectors together (untimed loop): {scores / bare:,.0f} scores/s per core "
        f"({bare / scores * 1e6:.2f} µs per score incl. decider)\n"
    )
    print("| detector | scores | µs per score (timed per call) | scores/s per core |")
    print("|---|---|---|---|")
    for name, n in by_type.most_common():
        us = cpu_by_type[name] / n / 1000
        print(f"| {name} | {n:,} | {us:.2f} | {1e6 / us:,.0f} |")


# ---- 3: end to end ---------------------------------------------------------------------------


def _ticks(
    clients: list[Any],
    rate: float,
    seconds: float,
    probe_times: dict[str, float],
    rng: Any,
    t_start: float,
) -> Any:
    """The publishers' schedule, every 10 ms from ``t_start``: ``(items, tick_end)`` with items
    ``(client, co2, probe_alert)``. Background devices in turn at ``rate`` in all; each probe
    (``client[3]``) once a second, with its one high reading at ``probe_times[name]`` s."""
    background = [x for x in clients if not x[3]]
    probes = [x for x in clients if x[3]]
    end = t_start + seconds
    per_tick = rate * 0.01
    owed = 0.0
    k = 0
    next_probe_round = t_start
    pending = dict(probe_times)  # device -> seconds after start
    tick = t_start
    while (now := time.monotonic()) < end:
        items: list[tuple[Any, float, bool]] = []
        owed += per_tick
        while owed >= 1 and background:
            items.append((background[k % len(background)], 600.0 + rng.randint(-15, 15), False))
            k += 1
            owed -= 1
        if now >= next_probe_round:
            next_probe_round += 1.0
            for x in probes:
                due = pending.get(x[2])
                if due is not None and now - t_start >= due:
                    del pending[x[2]]
                    items.append((x, 3000.0, True))
                else:
                    items.append((x, 600.0 + rng.randint(-15, 15), False))
        tick += 0.01
        yield items, tick


def _publisher(
    port: int,
    devices: list[tuple[str, str, str, str, bool]],
    rate: float,
    start_at: float,
    seconds: float,
    probe_times: dict[str, float],
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """One process: a connection per device; ``rate`` readings/s in total, paced every 10 ms.
    Probe devices report once a second and send their one high reading at ``probe_times``."""
    rng = random.Random(len(devices))
    lock = threading.Lock()
    sent_at: dict[tuple[int, int], float] = {}
    acks: list[float] = []
    probes_sent: dict[str, float] = {}
    clients = []
    for i, (name, password, tenant, site, probe) in enumerate(devices):
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}", protocol=mqtt.MQTTv5
        )
        c.username_pw_set(name, password)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)

        def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any, i=i) -> None:
            now = time.monotonic()
            with lock:
                t = sent_at.pop((i, mid), None)
                if t is not None:
                    acks.append(now - t)

        c.on_publish = on_publish
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append((c, f"{PREFIX}/{tenant}/{site}/{name}/telemetry", name, probe))
    deadline = time.time() + 30
    while not all(c.is_connected() for c, *_ in clients):
        if time.time() > deadline:
            raise RuntimeError("publishers could not connect")
        time.sleep(0.05)
    while time.time() < start_at:
        time.sleep(0.005)
    t_start = time.monotonic()
    sent = 0

    def publish(c: Any, topic: str, co2: float, index: int) -> float:
        body = json.dumps({"ts": time.time(), "fields": {"co2_ppm": co2}}).encode()
        t = time.monotonic()
        info = c.publish(topic, body, qos=1)
        with lock:
            sent_at[(index, info.mid)] = t
        return t

    index_of = {name: i for i, (_, _, name, _) in enumerate(clients)}
    for items, tick in _ticks(clients, rate, seconds, probe_times, rng, t_start):
        for (c, topic, name, _), co2, alert in items:
            t = publish(c, topic, co2, index_of[name])
            if alert:
                probes_sent[name] = t
            sent += 1
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    achieved = sent / (time.monotonic() - t_start)
    time.sleep(3.0)  # let the last PUBACKs come back
    for c, *_ in clients:
        c.disconnect()
        c.loop_stop()
    with lock:
        out.put({"acks": acks, "probes": probes_sent, "sent": sent, "achieved": achieved})


def _raw_publisher(
    port: int,
    devices: list[tuple[str, str, str, str, bool]],
    rate: float,
    start_at: float,
    seconds: float,
    probe_times: dict[str, float],
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """:func:`_publisher`'s schedule and measurements with :mod:`benchmarks.mqtt_load`'s
    publisher: one event loop, no thread per connection (the default: see that module)."""
    from benchmarks.mqtt_load import RawPublisher

    async def run() -> dict[str, Any]:
        rng = random.Random(len(devices))
        clients = []
        for name, password, tenant, site, probe in devices:
            c = RawPublisher(f"bench-{name}", name, password)
            await c.connect("127.0.0.1", port)
            topic = f"{PREFIX}/{tenant}/{site}/{name}/telemetry".encode()
            clients.append((c, topic, name, probe))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t_start = time.monotonic()
        sent = 0
        probes_sent: dict[str, float] = {}
        for items, tick in _ticks(clients, rate, seconds, probe_times, rng, t_start):
            for (c, topic, name, _), co2, alert in items:
                body = json.dumps({"ts": time.time(), "fields": {"co2_ppm": co2}}).encode()
                t = c.publish(topic, body)
                if alert and t is not None:
                    probes_sent[name] = t
                sent += 1
            for c, *_ in clients:
                await c.drain()
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        achieved = sent / (time.monotonic() - t_start)
        await asyncio.sleep(3.0)  # let the last PUBACKs come back
        for c, *_ in clients:
            await c.close()
        refused = sum(c.refused for c, *_ in clients)
        if refused:
            print(f"publisher: {refused} publish(es) skipped, in-flight window full", flush=True)
        acks = [a for c, *_ in clients for a in c.acks]
        return {"acks": acks, "probes": probes_sent, "sent": sent - refused, "achieved": achieved}

    out.put(asyncio.run(run()))


def probe_region(i: int) -> str:
    """Each probe in a district of its own, with its own officer: own group, own lane."""
    return f"34{i:02d}01"


def _seed_registry(
    url: str, devices: list[tuple[str, str, float]], probes: list[str], hook: str
) -> None:
    """Tenant, sites, devices, the districts' officers (webhooks), the probes' overrides."""
    from alerting.rules import Override, load_rules, save_override
    from gateway.registry.database import Registry, bump_revision
    from gateway.registry.models import Device, Jurisdiction, Site, Tenant

    registry = Registry.open(url)
    ruleset = load_rules()
    regions = {f"site-{p}": probe_region(i) for i, p in enumerate(probes)}
    try:
        with registry.session() as s, s.begin():
            s.add(Tenant(id="bench", name="Bench"))
            for region in ("330106", *regions.values()):
                officer = {
                    "name": f"Officer {region}",
                    "channels": [{"type": "webhook", "address": f"{hook}/officers-{region}"}],
                }
                s.add(Jurisdiction(region_code=region, name=region, officers=[officer]))
            revision = bump_revision(s)
            for site in sorted({site for _, site, _ in devices}):
                s.add(
                    Site(
                        id=site,
                        tenant_id="bench",
                        name=site,
                        region_code=regions.get(site, "330106"),
                        venue_type="public_place",
                        attributes={},
                    )
                )
            s.flush()
            for device, site, interval in devices:
                s.add(
                    Device(
                        id=device,
                        site_id=site,
                        kind="air_monitor",
                        profile="air_monitor_iaq8",
                        protocol="mqtt",
                        connection={},
                        interval_s=interval,
                        status="active",
                        revision=revision,
                    )
                )
            s.flush()
            for probe in probes:
                save_override(
                    s,
                    ruleset,
                    Override.model_validate(
                        {
                            "site_id": f"site-{probe}",
                            "rule_id": PROBE_RULE,
                            "for": 0,
                            "reason": "benchmark: fire on the first reading over the limit",
                        }
                    ),
                    actor="bench",
                )
    finally:
        registry.close()


def _serve(
    tmp: Path,
    config: dict[str, Any],
    metrics_port: int,
    log_level: str = "warning",
    workers: int = 1,
) -> subprocess.Popen[bytes]:
    """``weijian serve`` with these settings, in its own process(es); returns once it is up
    (every worker's metrics endpoint answers: worker ``i`` serves on ``metrics_port + i``)."""
    (tmp / "settings.yaml").write_text(yaml.safe_dump(config))
    with open(tmp / "serve.log", "wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "weijian.cli",
                "--log-level",
                log_level,
                "--config",
                str(tmp / "settings.yaml"),
                "serve",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.time() + 60
    while True:
        try:
            for i in range(workers):
                urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port + i}/metrics", timeout=1
                ).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(
                    "weijian serve did not start:\n" + (tmp / "serve.log").read_text()
                ) from None
            time.sleep(0.2)


def _free_ports(count: int) -> int:
    """A port free now with the ``count - 1`` after it free too (a worker's metrics each)."""
    import socket

    from weijian.stack.process import free_port

    for _ in range(100):
        port = free_port()
        try:
            for i in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + i))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {count} consecutive free ports")


def _worker_index(process: psutil.Process) -> int:
    argv = process.cmdline()
    return int(argv[argv.index("--worker-index") + 1]) if "--worker-index" in argv else -1


def _metric(port: int, name: str) -> float | None:
    """A counter's value from a worker's /metrics (None: not exported there)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _stored(creds: Any, until: float, seen: dict[str, float]) -> None:
    """Poll InfluxDB for the probes' high readings: when each became queryable (stored)."""
    import base64

    import aiohttp

    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    query = 'SELECT "co2_ppm", "device" FROM "air_monitor" WHERE "co2_ppm" > 2000'
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as session:
        while time.monotonic() < until:
            try:
                async with session.get(
                    f"{creds.url}/query", params={"q": query, "db": "bench"}
                ) as response:
                    body = await response.json()
                now = time.monotonic()
                for series in body["results"][0].get("series") or ():
                    for _, _, device in series["values"]:
                        seen.setdefault(device, now)
            except (aiohttp.ClientError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.05)


async def end_to_end(
    rate: float,
    seconds: float,
    background_n: int,
    probe_n: int,
    keep: bool = False,
    fsync: str = "always",
    alerting: bool = True,
    workers: int = 1,
    publisher: str = "raw",
) -> None:
    from weijian.stack.influxd import LocalInfluxDB
    from weijian.stack.mosquitto import LocalMosquitto

    tmp = Path(tempfile.mkdtemp(prefix="wj-alert-bench-"))
    broker = LocalMosquitto(tmp / "mosquitto", topic_prefix=PREFIX)
    influx = LocalInfluxDB(tmp / "influxdb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        creds = influx.start()
        interval = background_n / max(1.0, rate - probe_n)
        background = [
            (f"bg-{i:04d}", f"bg-site-{i % 20:02d}", interval) for i in range(background_n)
        ]
        probes = [f"probe-{i:03d}" for i in range(probe_n)]
        devices = background + [(p, f"site-{p}", 1.0) for p in probes]
        accounts = []
        for device, site, _ in devices:
            account = broker.allow_device(device, "bench", site)
            accounts.append((device, account.password, "bench", site, device.startswith("probe")))
        collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
        broker.start()
        async with RecordingHttpServer() as hook:
            url = f"sqlite:///{tmp / 'registry.db'}"
            _seed_registry(url, devices, probes, hook.url)
            metrics_port = _free_ports(workers)
            config = {
                "data_dir": str(tmp / "data"),
                "influx": {
                    "url": creds.url,
                    "username": creds.username,
                    "password": creds.password,
                    "database": "bench",
                },
                "mqtt": {"port": broker.port, "password": collector.password},
                "metrics": {"port": metrics_port},
                "gateway": {"enabled": False, "registry_url": url},
                "hj212": {"enabled": False},
                "coap": {"enabled": False},
                "modbus": {"enabled": False},
                "spool": {"fsync": fsync},
                "alerting": {"enabled": alerting, "warmup": False},
                "notify": {
                    "webhook": {"default_secret": SECRET},
                    "repeat_interval_s": None,
                    "escalate_after_s": None,
                },
            }
            proc = await asyncio.to_thread(
                _serve, tmp, config, metrics_port, "info" if keep else "warning", workers
            )
            await asyncio.sleep(2.0)
            rng = random.Random(11)
            probe_times = {p: rng.uniform(3.0, max(4.0, seconds - 5.0)) for p in probes}
            start_at = time.time() + 5.0 + len(accounts) / 200
            out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
            slices = [accounts[0::2], accounts[1::2]]
            senders = [
                mp.Process(
                    target=_raw_publisher if publisher == "raw" else _publisher,
                    args=(broker.port, part, rate / 2, start_at, seconds, probe_times, out),
                )
                for part in slices
            ]
            for w in senders:
                w.start()
            stored: dict[str, float] = {}
            wait = max(0.0, start_at - time.time()) + seconds
            poller = asyncio.create_task(_stored(creds, time.monotonic() + wait + 20.0, stored))
            await asyncio.sleep(max(0.0, start_at - time.time()) + 1.0)
            # CPU over the steady part of the run (not the publishers' connecting)
            ps = psutil.Process(proc.pid)
            platform = [ps]  # with workers: the supervisor, then worker 0, 1, ...
            if workers > 1:
                platform += sorted(ps.children(), key=_worker_index)
            for x in platform:
                x.cpu_percent(None)
            others = {"publishers": [psutil.Process(w.pid) for w in senders]}
            if broker.pid is not None:
                others["mosquitto"] = [psutil.Process(broker.pid)]
            for group in others.values():
                for other in group:
                    other.cpu_percent(None)
            psutil.cpu_percent(None)
            await asyncio.sleep(max(0.0, seconds - 2.0))
            per_process = [x.cpu_percent(None) / 100.0 for x in platform]
            cpu = sum(per_process)
            machine = psutil.cpu_percent(None) * psutil.cpu_count() / 100.0
            shares = {
                name: sum(x.cpu_percent(None) for x in group) / 100.0
                for name, group in others.items()
            }
            await asyncio.sleep(1.0)
            results = [await asyncio.to_thread(out.get, True, 120) for _ in senders]
            for w in senders:
                w.join(30)
            await asyncio.sleep(3.0)  # the last notifications
            pending = set(probes) - set(stored)
            deadline = time.monotonic() + 20.0
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                pending = set(probes) - set(stored)
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            judged = [
                _metric(metrics_port + i, "weijian_alerting_readings_evaluated_total")
                for i in range(workers)
            ]
            arrivals: dict[str, float] = {}
            messages = 0
            for request in hook.requests:
                body = json.loads(request.body)
                messages += 1
                for alert in body.get("alerts", ()):
                    if alert.get("rule") == PROBE_RULE and body.get("event") == "firing":
                        arrivals.setdefault(alert["device"], request.received)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        influx.stop()
    acks = [a for r in results for a in r["acks"]]
    sent_probes = {k: v for r in results for k, v in r["probes"].items()}
    latencies = [arrivals[p] - t for p, t in sent_probes.items() if p in arrivals]
    stored_latencies = [stored[p] - t for p, t in sent_probes.items() if p in stored]
    achieved = sum(r["achieved"] for r in results)
    sent = sum(r["sent"] for r in results)
    split = (
        " (" + ", ".join(f"worker {i} {c:.2f}" for i, c in enumerate(per_process[1:])) + ")"
        if workers > 1
        else ""
    )
    print(
        f"\n## 3. Publication → notification — {achieved:,.0f} readings/s published "
        f"(asked {rate:,.0f}) for {seconds:.0f} s, {len(devices)} devices, spool fsync={fsync}, "
        f"alerting {'on' if alerting else 'OFF'}, "
        + (f"`serve --workers {workers}` (alerting in worker 0, MQTT tap)" if workers > 1 else "")
        + ("one process" if workers == 1 else "")
        + f"; CPU (cores): platform {cpu:.2f}{split}, "
        + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
        + f", whole machine {machine:.2f} of {psutil.cpu_count()}\n"
    )
    if alerting:
        print(f"readings judged by the alert engine, per worker: {judged} ({sent:,} published)\n")
    print("| path | n | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|")
    for name, values in (
        ("publish → PUBACK from the broker (every reading)", acks),
        ("publish → queryable in InfluxDB (the probe readings, stored)", stored_latencies),
        ("publish → webhook notification (the probe readings, alerted)", latencies),
    ):
        cells = " | ".join(f"{pct(values, q) * 1000:.0f} ms" for q in (0.5, 0.9, 0.99, 1.0))
        print(f"| {name} | {len(values):,} | {cells} |")
    missing = sorted(set(sent_probes) - set(arrivals))
    print(
        f"\n{len(arrivals)} of {len(sent_probes)} probe alerts notified; {messages} webhook "
        f"messages in all (anomaly alerts of the same readings are grouped apart)"
        + (f"; not notified: {', '.join(missing[:5])}" if missing else "")
    )
    if alerting:
        p99 = pct(latencies, 0.99)
        print(f"target p99 ≤ 1 s: {'met' if p99 <= 1.0 else 'missed'} ({p99 * 1000:.0f} ms)")
    if keep:
        print(f"(kept {tmp}: serve.log, settings.yaml)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=6.0, help="clean.yaml hours for 1 and 2")
    parser.add_argument("--seconds", type=float, default=30.0, help="end-to-end run length")
    parser.add_argument("--rate", type=float, default=5000.0, help="end-to-end readings/s")
    parser.add_argument("--devices", type=int, default=100, help="background devices")
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--only-e2e", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory and logs")
    parser.add_argument("--fsync", default="always", choices=["always", "interval", "never"])
    parser.add_argument("--no-alerting", action="store_true", help="reference: ingest only")
    parser.add_argument(
        "--workers", type=int, default=1, help="`weijian serve --workers N` (alerting: worker 0)"
    )
    parser.add_argument(
        "--publisher",
        default="raw",
        choices=["raw", "paho"],
        help="load generator: raw asyncio MQTT (benchmarks/mqtt_load.py) or paho, thread each",
    )
    args = parser.parse_args(argv)
    if not args.only_e2e:
        contexts, readings = clean_readings(args.hours)
        asyncio.run(listener_cost(contexts, readings))
        detector_scores(contexts, readings)
    if not args.skip_e2e:
        asyncio.run(
            end_to_end(
                args.rate,
                args.seconds,
                args.devices,
                args.probes,
                args.keep,
                args.fsync,
                not args.no_alerting,
                args.workers,
                args.publisher,
            )
        )
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn")
    raise SystemExit(main())
