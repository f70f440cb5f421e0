"""The platform in one process: spool, InfluxDB forwarder, collectors, alerting and self-metrics.

``Platform`` is an async context manager; entering it starts every service, leaving it stops them
in the reverse order, letting acknowledged readings reach the spool first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from alerting.engine import AlertEngine, RegistryContexts, profile_resolutions
from alerting.notify import Dispatcher
from alerting.store import AlertStore
from collectors.coap import CoapCollector
from collectors.forwarder import Forwarder
from collectors.hj212 import AuthLimits, Hj212Collector
from collectors.metrics import Metrics
from collectors.modbus import ModbusCollector
from collectors.mqtt import MqttCollector
from collectors.mqtt.collector import PROTOCOL as MQTT_PROTOCOL
from collectors.mqtt.retire import RetiringCollector
from collectors.mqtt.tap import MqttTap
from collectors.pipeline import Ingestor
from collectors.records import encode_event
from collectors.spool import Spool
from gateway.app import create_app
from gateway.broker_sync import BrokerSync
from gateway.context import GatewayContext
from gateway.device_keys import DeviceKeys
from gateway.hj212_stations import StationIndex
from gateway.modbus_targets import modbus_targets
from gateway.registry.database import Registry
from gateway.registry.directory import RegistryDirectory
from gateway.registry.models import Site
from gateway.server import GatewayServer
from grafana.site_info import SITE_INFO_INTERVAL_S, site_info_lines
from protocols.catalog import default_catalog
from protocols.directory import DeviceDirectory, StaticDirectory
from protocols.influx.client import InfluxClient
from protocols.influx.schema import ensure_schema
from protocols.influx.writer import BatchWriter, FileDeadLetter
from protocols.mosquitto_auth import DeviceAccess
from protocols.reading import Reading, ReadingValidator
from weijian.config import Settings
from weijian.secrets import jwt_secret

log = logging.getLogger(__name__)


class Platform:
    """``directory=None``: devices come from the registry, and the gateway serves its API.

    ``broker_apply`` receives the registry's MQTT device entries whenever they change (the
    embedded stack installs them in its own Mosquitto); without it, production settings name the
    broker's shared auth files (``gateway.broker_passwd_file``/``broker_acl_file``).
    """

    def __init__(
        self,
        settings: Settings,
        directory: DeviceDirectory | None = None,
        *,
        broker_apply: Callable[[list[DeviceAccess]], None] | None = None,
    ) -> None:
        self.settings = settings
        if directory is None and settings.devices_file is not None:
            directory = StaticDirectory(path=settings.devices_file)  # a fixed list, no registry
        self.directory: DeviceDirectory | None = directory
        self.registry: Registry | None = None
        self.gateway: GatewayServer | None = None
        self.gateway_ctx: GatewayContext | None = None
        self.broker_sync: BrokerSync | None = None
        self._broker_apply = broker_apply
        self.device_keys: DeviceKeys | None = None
        self.stations: StationIndex | None = None
        self.hj212: Hj212Collector | None = None
        self.coap: CoapCollector | None = None
        self.modbus: ModbusCollector | None = None
        self._field_collectors: list[Any] = []
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.influx: InfluxClient | None = None
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self.ingestor: Ingestor | None = None
        self.mqtt: MqttCollector | None = None
        self.retiring: RetiringCollector | None = None  # an old collector session, being ended
        self.alerts: AlertEngine | None = None  # the detector, when this process runs it
        self.alert_tap: MqttTap | None = None  # its MQTT feed, with a shared subscription
        self.notifier: Dispatcher | None = None
        self.alert_contexts: RegistryContexts | None = None

    async def __aenter__(self) -> Platform:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.influx = await self._stack.enter_async_context(
                InfluxClient.from_settings(s.influx)
            )
            self.spool = await self._stack.enter_async_context(
                Spool.from_settings(s.spool_dir, s.spool)
            )
            self.metrics.attach("spool", self.spool.stats)
            dead_letter = FileDeadLetter(Path(s.data_dir) / "dead-letter.jsonl")
            self._stack.callback(dead_letter.close)
            writer = BatchWriter(
                self.influx,
                dead_letter=dead_letter,
                backoff_base=s.writer.backoff_base_s,
                backoff_cap=s.writer.backoff_cap_s,
                on_write=self.metrics.observe_write,
            )
            self.metrics.attach("writer", writer.stats)
            self.forwarder = Forwarder(
                self.spool,
                writer,
                self.metrics,
                database=s.influx.database,
                tenant_prefix=s.influx.tenant_database_prefix
                if s.influx.tenant_databases
                else None,
                batch_lines=s.writer.batch_lines,
                flush_interval_s=s.writer.flush_interval_s,
                prepare_database=self._prepare_database if s.influx.manage_schema else None,
            )
            if s.influx.manage_schema:
                await self._prepare_agency_database()
            self._tasks.append(asyncio.create_task(self._forward(), name="forwarder"))
            validator = ReadingValidator(
                default_catalog(),
                max_past_s=s.validation.max_past_s,
                max_future_s=s.validation.max_future_s,
            )
            if self.directory is None:
                await self._open_registry()
            assert self.directory is not None
            self.ingestor = Ingestor(self.directory, validator, self.spool, self.metrics)
            if self.registry is not None:
                await self._start_alerting()  # before any collector: no reading goes unjudged
            if s.mqtt.ingest is False:
                log.info(
                    "MQTT ingest off in this process (mqtt.ingest = false)%s",
                    ": it judges every reading through its tap, the other workers store them"
                    if self.alert_tap is not None
                    else "",
                )
                if s.mqtt.share_group is not None:  # its old collector session must not keep
                    # taking a share of the telemetry that nobody stores (collectors/mqtt/retire.py)
                    self.retiring = RetiringCollector(s.mqtt, self.ingestor)
                    await self.retiring.__aenter__()
                    self._tasks.append(
                        asyncio.create_task(self._retire_session(), name="mqtt-retire")
                    )
            else:
                self.mqtt = MqttCollector(s.mqtt, self.ingestor)
                await self.mqtt.__aenter__()
            if s.metrics.port:
                try:
                    self.metrics_port = self.metrics.serve(s.metrics.host, s.metrics.port)
                except OSError as exc:
                    raise RuntimeError(
                        f"cannot serve metrics on {s.metrics.host}:{s.metrics.port} ({exc}); "
                        "set WEIJIAN_METRICS__PORT to a free port, or 0 to turn metrics off"
                    ) from exc
                log.info("metrics at http://%s:%s/metrics", s.metrics.host, self.metrics_port)
            if self.registry is not None:
                await self._start_field_collectors()
            if self.registry is not None and s.gateway.enabled:
                await self._start_gateway()
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _open_registry(self) -> None:
        s = self.settings
        self.registry = await asyncio.to_thread(Registry.open, s.registry_url)
        self._stack.callback(self.registry.close)
        directory = RegistryDirectory(self.registry)
        await asyncio.to_thread(directory.refresh)
        self.directory = directory
        log.info(
            "device registry %s: %d active device(s)", _safe_url(s.registry_url), len(directory)
        )
        apply = self._broker_apply
        g = s.gateway
        if apply is not None:
            self.broker_sync = BrokerSync(self.registry, s.mqtt.topic_prefix, apply)
        elif g.broker_passwd_file is not None and g.broker_acl_file is not None:
            self.broker_sync = BrokerSync.to_files(
                self.registry,
                s.mqtt.topic_prefix,
                g.broker_passwd_file,
                g.broker_acl_file,
                g.broker_pidfile,
            )
        if self.broker_sync is not None:
            await asyncio.to_thread(self.broker_sync)
        self._tasks.append(asyncio.create_task(self._follow_registry(), name="registry"))

    async def _start_field_collectors(self) -> None:
        """HJ 212, CoAP and Modbus: their devices and secrets come from the registry."""
        assert self.registry is not None
        assert self.ingestor is not None
        assert isinstance(self.directory, RegistryDirectory)
        s = self.settings
        directory = self.directory
        registry = self.registry

        def revision() -> int:
            return directory.revision

        self.device_keys = DeviceKeys(registry, revision)
        if s.hj212.enabled:
            self.stations = StationIndex(registry, revision)
            await asyncio.to_thread(self.stations.refresh)
            self.hj212 = Hj212Collector(
                self.ingestor,
                self.stations,
                host=s.hj212.host,
                port=s.hj212.port,
                max_connections=s.hj212.max_connections,
                max_connections_per_peer=s.hj212.max_connections_per_peer,
                idle_timeout_s=s.hj212.idle_timeout_s,
                auth=AuthLimits(
                    max_failures=s.hj212.auth_max_failures,
                    window_s=s.hj212.auth_window_s,
                    block_s=s.hj212.auth_block_s,
                    block_max_s=s.hj212.auth_block_max_s,
                    station_max_failures=s.hj212.auth_station_max_failures,
                    trust_s=s.hj212.auth_trust_s,
                    max_tracked=s.hj212.auth_max_tracked,
                ),
                metrics=self.metrics,
            )
            await self._enter_collector(self.hj212, f"HJ 212 on tcp {s.hj212.host}")
        if s.coap.enabled:
            keys = self.device_keys
            self.coap = CoapCollector(
                self.ingestor,
                lambda token: keys.device_for(token, "coap_token"),
                host=s.coap.host,
                port=s.coap.port,
                max_payload=s.coap.max_payload_bytes,
                metrics=self.metrics,
            )
            await self._enter_collector(self.coap, f"CoAP on udp {s.coap.host}")
        if s.modbus.enabled:

            async def targets() -> list[Any]:
                return await asyncio.to_thread(modbus_targets, registry)

            self.modbus = ModbusCollector(
                self.ingestor,
                targets,
                refresh_s=s.modbus.refresh_s,
                max_concurrency=s.modbus.max_concurrency,
                metrics=self.metrics,
            )
            await self._enter_collector(self.modbus, "Modbus poller")

    async def _enter_collector(self, collector: Any, what: str) -> None:
        try:
            await collector.__aenter__()
        except OSError as exc:
            raise RuntimeError(
                f"cannot start the {what} ({exc}); change its port in settings"
            ) from exc
        self._field_collectors.append(collector)
        port = getattr(collector, "port", None)
        log.info("%s%s started", what, f":{port}" if port else "")

    async def _follow_registry(self) -> None:
        """Other processes (another worker, the CLI) change the registry too: poll its revision,
        and bring the broker's accounts and the station index along when it moved."""
        assert isinstance(self.directory, RegistryDirectory)
        directory = self.directory
        seen = directory.revision
        site_info_due = 0.0  # the wall's map: sites with coordinates, now and every 5 min
        while True:
            try:
                if time.monotonic() >= site_info_due:
                    site_info_due = time.monotonic() + SITE_INFO_INTERVAL_S
                    await self._write_site_info()
            except Exception:
                log.exception("site_info not written; retrying in %d s", SITE_INFO_INTERVAL_S)
            await asyncio.sleep(self.settings.gateway.directory_poll_s)
            try:
                await asyncio.to_thread(directory.refresh)
                if directory.revision != seen:
                    seen = directory.revision
                    await asyncio.to_thread(self._registry_changed)
                    site_info_due = 0.0
            except Exception:
                log.exception("registry refresh failed; keeping the previous devices")

    async def _write_site_info(self) -> None:
        """``site_info`` points (docs/schema.md) into the agency database, through the spool."""
        assert self.registry is not None
        assert self.spool is not None
        registry = self.registry

        def lines() -> list[str]:
            with registry.session() as session:
                sites = (
                    session.execute(
                        select(Site).options(selectinload(Site.tenant), selectinload(Site.devices))
                    )
                    .scalars()
                    .all()
                )
                return site_info_lines(sites)

        found = await asyncio.to_thread(lines)
        if found:
            self.spool.append([encode_event(line) for line in found])

    def _registry_changed(self) -> None:
        """Bring what follows the registry up to date (each part skips work when unchanged)."""
        if self.broker_sync is not None:
            self.broker_sync()
        if self.stations is not None:
            self.stations.refresh()
        if self.alert_contexts is not None:
            try:
                self.alert_contexts.refresh()  # devices, sites, overrides, officers
            except Exception:
                log.exception("alerting contexts not refreshed; the engine's tick retries")

    async def _start_alerting(self) -> None:
        """The alert engine and its notifier, in registry mode, in one process of a deployment.

        The engine needs every reading of a device. One process (no ``mqtt.share_group``) feeds
        it everything it ingests. With a shared MQTT subscription (``weijian serve --workers N``,
        or several hosts) each process ingests only part of the MQTT readings, so the engine runs
        in the one process with ``alerting.tap`` (worker 0 under ``serve --workers``), fed the
        readings it ingests itself over other protocols (HTTP, CoAP, HJ 212, Modbus) by its
        ingestor, and all MQTT telemetry by a tap: a second, unshared subscription
        (collectors/mqtt/tap.py). The MQTT readings its own collector ingests skip the engine
        (they come through the tap too). Other processes run no engine (docs/alerting.md).
        """
        s = self.settings
        assert self.registry is not None
        assert self.ingestor is not None
        if not s.alerting.enabled:
            log.info("alerting disabled (alerting.enabled = false)")
            return
        shared = s.mqtt.share_group is not None
        if shared and not s.alerting.tap:
            log.info(
                "alerting not in this process: the MQTT subscription is shared (group %r) and "
                "alerting.tap is %s; the process with alerting.tap = true runs the alert engine "
                "(under `serve --workers`: worker 0)",
                s.mqtt.share_group,
                "false" if s.alerting.tap is False else "unset",
            )
            return
        contexts = RegistryContexts(self.registry)
        await asyncio.to_thread(contexts.refresh)
        ingestor = self.ingestor

        def attach(listener: Callable[[Reading], None]) -> None:
            # With a tap, MQTT readings reach the engine only through it: not twice.
            ingestor.add_listener(listener, skip=(MQTT_PROTOCOL,) if shared else ())

        def connected() -> bool:
            # No-data checks pause while the engine cannot hear MQTT devices.
            mqtt = self.alert_tap if shared else self.mqtt
            return mqtt is not None and mqtt.connected.is_set()

        engine = AlertEngine(
            contexts,
            s.alerting,
            store=AlertStore(self.registry),
            spool=self.spool,
            connected=connected,
            refresh=contexts.refresh,
            attach=attach,
            influx=self.influx,
            influx_database=s.influx.database,
            resolutions=profile_resolutions(),
        )
        notifier = Dispatcher.from_settings(
            s.notify, contexts.officers, on_alert_update=engine.notified
        )
        engine.dispatcher = notifier
        self.alert_contexts = contexts
        await notifier.start()
        self.notifier = notifier
        await engine.start()
        self.alerts = engine
        self.metrics.attach("alerting", engine)
        if not shared:
            log.info(
                "alerting runs in this process, fed every reading it ingests (MQTT subscription "
                "not shared)"
            )
            return
        tap = MqttTap(s.mqtt, ingestor, engine.listener)
        self.alert_tap = tap  # before entering: aclose() stops it whatever happens next
        await tap.__aenter__()
        self.metrics.attach("alerting_tap", tap.stats)
        log.info(
            "alerting runs in this process (alerting.tap): MQTT telemetry from the tap (client "
            "%r, unshared QoS 1 subscription to %s, persistent session), not from this "
            "process's share of group %r; readings it ingests over HTTP, CoAP, HJ 212 and Modbus "
            "from its ingestor. No other process may set alerting.tap",
            tap.settings.client_id,
            tap.topic,
            s.mqtt.share_group,
        )

    async def _start_gateway(self) -> None:
        assert self.registry is not None
        s = self.settings
        ctx = GatewayContext(
            registry=self.registry,
            settings=s.gateway,
            jwt_secret=jwt_secret(s),
            directory=self.directory if isinstance(self.directory, RegistryDirectory) else None,
            ingestor=self.ingestor,
            influx=self.influx,
            device_keys=self.device_keys,
            influx_database=s.influx.database,
            mqtt_topic_prefix=s.mqtt.topic_prefix,
            alerts=self.alerts,
        )
        ctx.device_listeners.append(self._registry_changed)
        self.gateway_ctx = ctx
        self.gateway = GatewayServer(create_app(ctx), s.gateway.host, s.gateway.port)
        port = await self.gateway.start()
        log.info("gateway at http://%s:%s (API docs at /docs)", s.gateway.host, port)

    async def _retire_session(self) -> None:
        retiring = self.retiring
        assert retiring is not None
        if await retiring.retire():
            with contextlib.suppress(Exception):
                await retiring.__aexit__(None, None, None)
            self.retiring = None

    async def aclose(self) -> None:
        # Stop taking HTTP readings, then collectors (acks for what is spooled), then give the
        # forwarder a moment to drain.
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop()
            self.gateway = None
        for collector in reversed(self._field_collectors):
            with contextlib.suppress(Exception):
                await collector.__aexit__(None, None, None)
        self._field_collectors.clear()
        for collector in (self.mqtt, self.retiring):
            if collector is not None:
                with contextlib.suppress(Exception):
                    await collector.__aexit__(None, None, None)
        self.mqtt = self.retiring = None
        if self.alert_tap is not None:  # what it did not ack waits in its session for the next
            with contextlib.suppress(Exception):
                await self.alert_tap.__aexit__(None, None, None)
            self.alert_tap = None
        # No more readings: persist and spool the last transitions, let the notifier drain.
        if self.alerts is not None:
            with contextlib.suppress(Exception):
                await self.alerts.aclose()
            self.alerts = None
        if self.notifier is not None:
            with contextlib.suppress(Exception):
                await self.notifier.aclose()
            self.notifier = None
        if self.forwarder is not None and self.spool is not None and self._tasks:
            await self.forwarder.drained(3.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.metrics.close()
        await self._stack.aclose()

    async def _prepare_database(self, database: str) -> None:
        assert self.influx is not None
        i = self.settings.influx
        await ensure_schema(
            self.influx,
            database,
            raw_retention=i.raw_retention,
            rollup_5m_retention=i.rollup_5m_retention,
            rollup_1h_retention=i.rollup_1h_retention,
        )

    async def _forward(self) -> None:
        """Run the forwarder; should it ever fail on something unforeseen, log it loudly, re-read
        the uncommitted tail and go on, rather than let readings pile up in the spool unseen."""
        assert self.forwarder is not None
        assert self.spool is not None
        while True:
            try:
                await self.forwarder.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forwarder failed; restarting from the last committed reading")
                self.spool.rewind()
                await asyncio.sleep(1.0)

    async def _prepare_agency_database(self) -> None:
        """Create the schema up front so readers find it; if InfluxDB is down, the forwarder
        retries before its first write, and ingestion does not wait for it."""
        try:
            await asyncio.wait_for(self._prepare_database(self.settings.influx.database), 5)
        except Exception as exc:
            log.warning("InfluxDB schema not ready at start (%s); will retry before writing", exc)

    async def _housekeeping(self) -> None:
        """Pick up device-directory edits and log a summary line now and then."""
        interval = self.settings.metrics.log_interval_s
        elapsed = 0.0
        while True:
            await asyncio.sleep(1.0)
            elapsed += 1.0
            refresh = getattr(self.directory, "refresh", None)
            if refresh is not None and not isinstance(self.directory, RegistryDirectory):
                try:
                    refresh()
                except (OSError, ValueError) as exc:
                    log.error("device directory not reloaded: %s", exc)
            if elapsed >= interval:
                elapsed = 0.0
                self.metrics.log_summary()


def _safe_url(url: str) -> str:
    """The registry URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
