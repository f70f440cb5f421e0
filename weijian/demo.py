"""``weijian run``: the whole platform on one machine, with simulated devices and a live table.

Mosquitto and InfluxDB run from the OS packages on loopback with their data under ``data_dir``;
their ports are chosen on the first run and kept in ``stack.json``, so a second run finds its data
where it left it. The platform runs with its registry and gateway; the scenario's devices are
onboarded through the gateway's API (as an engineer would) and then driven over their protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from gateway.registry.database import Registry
from gateway.registry.models import User
from gateway.security import Passwords, create_user, set_password
from protocols.influx.client import InfluxClient
from simulators.runner import run_scenario
from simulators.scenario import load_scenario
from weijian.config import Settings
from weijian.livetable import fetch_latest, render
from weijian.platform import Platform
from weijian.stack.influxd import LocalInfluxDB
from weijian.stack.mosquitto import LocalMosquitto
from weijian.stack.process import StackError, free_port, port_open

REFRESH_S = 2.0


def _ports(data_dir: Path, wanted_metrics: int) -> dict[str, int]:
    """Ports kept from the last run, or fresh free ones; each is checked to be free now."""
    path = data_dir / "stack.json"
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = {k: int(v) for k, v in json.loads(path.read_text()).items() if k.endswith("_port")}
    ports: dict[str, int] = {}
    wanted = (
        ("influx_port", 0),
        ("mqtt_port", 0),
        ("metrics_port", wanted_metrics),
        ("gateway_port", 8080),
        ("hj212_port", 9212),
        ("coap_port", 5683),
    )
    for name, default in wanted:
        port = saved.get(name) or default
        if not port or port_open("127.0.0.1", port):
            port = free_port()
        ports[name] = port
    return ports


def _with_local_servers(settings: Settings, **sections: object) -> Settings:
    """The settings pointed at the servers just started (validated again, secrets included)."""
    data = settings.model_dump()
    for name, value in sections.items():
        data[name] = {**data[name], **value} if isinstance(value, dict) else value
    for section in ("influx", "mqtt", "gateway"):
        given = sections.get(section, {})
        for key in ("password", "token", "jwt_secret"):
            secret = getattr(getattr(settings, section), key, None)
            if isinstance(given, dict) and key not in given and secret is not None:
                data[section][key] = secret.get_secret_value()
    return Settings.model_validate(data)


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(args.scenario)
    ports = _ports(data_dir, settings.metrics.port or 9464)

    influx = LocalInfluxDB(data_dir / "influxdb", http_port=ports["influx_port"])
    broker = LocalMosquitto(
        data_dir / "mosquitto", port=ports["mqtt_port"], topic_prefix=settings.mqtt.topic_prefix
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with console.status("starting InfluxDB …"):
            creds = await asyncio.to_thread(influx.start)
        console.print(f"[green]✓[/] InfluxDB {influx.url}  (data in {influx.root})")

        collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
        with console.status("starting Mosquitto …"):
            await asyncio.to_thread(broker.start)
        console.print(f"[green]✓[/] Mosquitto mqtt://127.0.0.1:{broker.port}")
        (data_dir / "stack.json").write_text(
            json.dumps({**ports, "influx_url": influx.url, "mqtt_host": "127.0.0.1"}, indent=1)
            + "\n"
        )

        settings = _with_local_servers(
            settings,
            data_dir=data_dir,
            influx={"url": influx.url, "username": creds.username, "password": creds.password},
            mqtt={
                "host": "127.0.0.1",
                "port": broker.port,
                "username": collector.username,
                "password": collector.password,
            },
            metrics={"port": ports["metrics_port"]},
            gateway={"port": ports["gateway_port"], "public_mqtt_port": broker.port},
            hj212={"port": ports["hj212_port"]},
            coap={"port": ports["coap_port"]},
        )

        def install_accounts(entries: list) -> None:  # type: ignore[type-arg]
            broker.set_devices(entries)
            broker.reload()

        async with Platform(settings, broker_apply=install_accounts) as platform:
            await asyncio.wait_for(platform.mqtt.connected.wait(), 30)
            assert platform.registry is not None
            assert platform.gateway is not None
            password = await asyncio.to_thread(demo_admin, platform.registry, data_dir)
            url = f"http://127.0.0.1:{platform.gateway.port}"
            console.print(
                f"[green]✓[/] platform: gateway {url} (API docs {url}/docs; user admin, password "
                f"in {data_dir / 'admin.credentials'}), metrics "
                f"http://127.0.0.1:{platform.metrics_port}/metrics"
            )
            stop_devices = asyncio.Event()
            with (data_dir / "simulator.log").open("a", encoding="utf-8") as sim_log:
                simulation = asyncio.create_task(
                    run_scenario(
                        scenario,
                        gateway_url=url,
                        username="admin",
                        password=password,
                        mqtt_port=broker.port,
                        **_endpoints(platform),
                        ground_truth_path=data_dir / "truth" / f"{scenario.name}.jsonl",
                        out=sim_log,
                        stop=stop_devices,
                    ),
                    name="simulator",
                )
                console.print(
                    f"[green]✓[/] scenario '{scenario.name}': {len(scenario.devices)} simulated "
                    "devices onboarded through the gateway and reporting; Ctrl-C stops. "
                    "Try: weijian device check <device>\n"
                )
                try:
                    await _show(console, platform, scenario, stop, args, simulation)
                finally:
                    stop_devices.set()
                    report = await simulation
            rates = "; ".join(r.line() for r in report.rates)
            console.print(
                f"\nstopped cleanly: {platform.metrics.ingest.stored} readings stored this run "
                f"({rates}). Data kept in {data_dir}; run again to continue."
            )
        return 0
    except StackError as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    finally:
        broker.stop()
        influx.stop()


async def _show(
    console: Console,
    platform: Platform,
    scenario,
    stop: asyncio.Event,  # type: ignore[no-untyped-def]
    args: argparse.Namespace,
    simulation: asyncio.Task,  # type: ignore[type-arg]
) -> None:
    s = platform.settings
    kinds = {d.kind for d in scenario.devices}
    names = {site.id: site.name for site in scenario.sites}
    deadline = time.monotonic() + args.duration if args.duration else None
    async with InfluxClient.from_settings(s.influx) as client:

        async def table():  # type: ignore[no-untyped-def]
            try:
                latest = await fetch_latest(client, s.influx.database, kinds)
            except Exception as exc:  # InfluxDB restarting: show the last state, say why
                console.log(f"cannot read InfluxDB: {exc}")
                latest = {}
            devices = list(platform.directory)  # type: ignore[call-overload]
            return render(devices, latest, platform.metrics.summary(), names)

        if args.no_table:
            while not _done(stop, deadline, simulation):
                platform.metrics.log_summary()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 10)
            return
        with Live(await table(), console=console, refresh_per_second=1) as live:
            while not _done(stop, deadline, simulation):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REFRESH_S)
                live.update(await table())


def _endpoints(platform: Platform) -> dict[str, int]:
    """Where the simulator's HJ 212 and CoAP devices connect (when those collectors run)."""
    ends = {}
    if platform.hj212 is not None:
        ends["hj212_port"] = platform.hj212.port
    if platform.coap is not None:
        ends["coap_port"] = platform.coap.port
    return ends


def _done(stop: asyncio.Event, deadline: float | None, simulation: asyncio.Task) -> bool:  # type: ignore[type-arg]
    if simulation.done():  # onboarding refused, or the devices stopped: say why, stop
        return True
    return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)


def demo_admin(registry: Registry, data_dir: Path) -> str:
    """The demo's admin account: its password lives in ``admin.credentials`` (mode 0600)."""
    path = data_dir / "admin.credentials"
    with contextlib.suppress(OSError, ValueError):
        user, password = path.read_text().strip().split(":", 1)
        if user == "admin":
            with registry.session() as session:
                row = session.query(User).filter_by(username="admin").one_or_none()
                if row is not None and Passwords().verify(row.password_hash, password):
                    return password
    password = secrets.token_urlsafe(16)
    with registry.session() as session, session.begin():
        row = session.query(User).filter_by(username="admin").one_or_none()
        if row is None:
            create_user(session, "admin", password, "admin", actor="weijian run")
        else:  # the file was lost or edited: a fresh password for the local admin
            set_password(row, password, Passwords())
            row.active = True
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"admin:{password}\n")
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return password
