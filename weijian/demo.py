"""``weijian run``: the whole platform on one machine, with simulated devices and a live table.

Mosquitto and InfluxDB run from the OS packages on loopback with their data under ``data_dir``;
their ports are chosen on the first run and kept in ``stack.json``, so a second run finds its data
where it left it. The scenario's devices are onboarded (directory entry and broker account) first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from protocols.directory import DeviceInfo, StaticDirectory
from protocols.influx.client import InfluxClient
from simulators.scenario import build_fleet, directory_entries, load_scenario
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
    for name, default in (("influx_port", 0), ("mqtt_port", 0), ("metrics_port", wanted_metrics)):
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
    for section in ("influx", "mqtt"):
        given = sections.get(section, {})
        for key in ("password", "token"):
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

        directory = StaticDirectory(path=data_dir / "devices.yaml")
        for row in directory_entries(scenario):
            directory.add(DeviceInfo(**row))
            broker.allow_device(row["device"], row["tenant"], row["site"])
        for info in directory:  # devices added by hand keep their accounts too
            broker.allow_device(info.device, info.tenant, info.site)
        directory.save(data_dir / "devices.yaml")
        collector = broker.ensure_account(LocalMosquitto.COLLECTOR_USER)
        with console.status("starting Mosquitto …"):
            await asyncio.to_thread(broker.start)
        console.print(
            f"[green]✓[/] Mosquitto mqtt://127.0.0.1:{broker.port}  "
            f"({len(directory)} device accounts)"
        )
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
        )
        async with Platform(settings, directory) as platform:
            await asyncio.wait_for(platform.mqtt.connected.wait(), 30)
            console.print(
                f"[green]✓[/] platform: MQTT collector connected, metrics "
                f"http://127.0.0.1:{platform.metrics_port}/metrics"
            )
            fleet = build_fleet(
                scenario, lambda d, t, s: broker.allow_device(d, t, s), port=broker.port
            )
            async with fleet:
                console.print(
                    f"[green]✓[/] {len(scenario.devices)} simulated devices of scenario "
                    f"'{scenario.name}' publishing; Ctrl-C stops\n"
                )
                await _show(console, platform, scenario, stop, args)
            rates = fleet.rates()
        console.print(
            f"\nstopped cleanly: {platform.metrics.ingest.stored} readings stored this run "
            f"({rates.acked_readings_per_s:.2f}/s acknowledged vs "
            f"{rates.intended_readings_per_s:.2f}/s intended). Data kept in {data_dir}; "
            "run again to continue."
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
) -> None:
    s = platform.settings
    kinds = {d.kind for d in scenario.devices}
    names = {site.id: site.name for site in scenario.sites}
    deadline = time.monotonic() + args.duration if args.duration else None
    devices = list(platform.directory)  # type: ignore[call-overload]
    async with InfluxClient.from_settings(s.influx) as client:

        async def table():  # type: ignore[no-untyped-def]
            try:
                latest = await fetch_latest(client, s.influx.database, kinds)
            except Exception as exc:  # InfluxDB restarting: show the last state, say why
                console.log(f"cannot read InfluxDB: {exc}")
                latest = {}
            return render(devices, latest, platform.metrics.summary(), names)

        if args.no_table:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                platform.metrics.log_summary()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 10)
            return
        with Live(await table(), console=console, refresh_per_second=1) as live:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REFRESH_S)
                live.update(await table())
