"""``weijian serve --workers N``: several platform processes on one machine, one per core.

One Python process saturates one core; the broker is the bus that spreads work further. Each
worker is a full platform (collector, spool, forwarder) in its own process, joined to one MQTT
shared subscription, so the broker hands every message to exactly one of them. A worker has its
own persistent session (``<client_id>-w<i>``), its own data directory (spool, dead letters) and its
own metrics port (``port + i``); all read the same device directory. The parent only starts,
watches and stops them: a worker that dies is restarted, and because its session and spool keep
their names, it picks up where it stopped.

Worker 0 alone runs the gateway, the HJ 212 and CoAP listeners, the Modbus poller and the alert
engine; the engine hears MQTT telemetry through its own unshared subscription, the tap
(collectors/mqtt/tap.py), since the shared one brings it only part of the readings.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from weijian.config import Settings
from weijian.secrets import jwt_secret

log = logging.getLogger(__name__)

DEFAULT_SHARE_GROUP = "weijian-collectors"


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: everything the same but its identity and its files."""
    data = settings.model_dump(mode="python")
    for section in ("influx", "mqtt"):
        for key in ("password", "token"):
            secret = getattr(getattr(settings, section), key, None)
            if secret is not None:
                data[section][key] = secret.get_secret_value()
    data["data_dir"] = Path(settings.data_dir) / f"worker-{index}"
    if settings.devices_file is not None:
        data["devices_file"] = settings.devices_file
    # One registry for all workers; one gateway (worker 0), signing with the parent's key.
    data["gateway"]["registry_url"] = settings.registry_url
    data["gateway"]["jwt_secret"] = jwt_secret(settings)
    data["gateway"]["enabled"] = settings.gateway.enabled and index == 0
    # Listeners on fixed ports and the Modbus poller run once, in worker 0 (no duplicate polls).
    for section in ("hj212", "coap", "modbus"):
        data[section]["enabled"] = getattr(settings, section).enabled and index == 0
    data["spool"]["directory"] = settings.spool_dir / f"worker-{index}"
    data["mqtt"]["client_id"] = f"{settings.mqtt.client_id}-w{index}"
    data["mqtt"]["share_group"] = settings.mqtt.share_group or DEFAULT_SHARE_GROUP
    # The alert engine needs every reading: worker 0 runs it, fed MQTT telemetry by its tap (an
    # unshared subscription), unless the settings keep it off this machine (alerting.tap false).
    alert_process = settings.alerting.tap is not False and index == 0
    data["alerting"]["tap"] = alert_process
    # ... and, where it really runs the engine (registry mode, alerting on), it stores no MQTT
    # telemetry itself: the tap and the engine take about half a core at 5,000 readings/s, and
    # with its share of ingest on top its alerts queued behind its backlog (11 s p99 at 5,000/s
    # on 2 cores; 0.66 s with ingest left to worker 1: docs/alerting.md). `mqtt.ingest` decides.
    if index != 0:  # the setting is worker 0's: the others always store (someone must)
        data["mqtt"]["ingest"] = True
    elif settings.mqtt.ingest is None:
        judges_all = settings.devices_file is None and settings.alerting.enabled
        data["mqtt"]["ingest"] = not (alert_process and judges_all)
    if settings.metrics.port:
        data["metrics"]["port"] = settings.metrics.port + index
    return Settings.model_validate(data)


def supervise(argv_for: Any, count: int, *, restart_delay_s: float = 1.0) -> int:
    """Run ``count`` worker processes until SIGINT/SIGTERM; restart any that exits early."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for i in range(count):
        procs[i] = subprocess.Popen(argv_for(i))
    log.info("started %d workers (pids %s)", count, [p.pid for p in procs.values()])
    worst = 0
    while not stopping:
        time.sleep(0.2)
        for i, proc in list(procs.items()):
            code = proc.poll()
            if code is not None and not stopping:
                log.error(
                    "worker %d exited with code %s; restarting it in %.0fs",
                    i,
                    code,
                    restart_delay_s,
                )
                time.sleep(restart_delay_s)
                procs[i] = subprocess.Popen(argv_for(i))
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for i, proc in procs.items():
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in 30s; killing it", i)
            proc.kill()
            code = proc.wait()
        worst = max(worst, code if code >= 0 else 1)
    return worst


def worker_argv(
    config: Path | None, log_level: str, data_dir: str | None, index: int, count: int
) -> list[str]:
    argv = [sys.executable, "-m", "weijian.cli", "--log-level", log_level]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["serve", "--worker-index", str(index), "--workers", str(count)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    return argv
