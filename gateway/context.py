"""What the gateway's routes share: the registry, the device directory and the ingest pipeline.

The platform builds one :class:`GatewayContext` and hands it to :func:`gateway.app.create_app`;
tests build their own. Routes never reach for globals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.device_keys import DeviceKeys
from gateway.registry.database import Registry
from gateway.registry.directory import RegistryDirectory
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


@dataclass
class GatewayContext:
    registry: Registry
    settings: GatewaySettings
    jwt_secret: str
    directory: RegistryDirectory | None = None
    ingestor: Any = None  # collectors.pipeline.Ingestor when this process also ingests
    influx: Any = None  # protocols.influx.client.InfluxClient for the onboarding check
    influx_database: str = "weijian"
    device_keys: Any = None  # gateway.device_keys.DeviceKeys; built from the registry if None
    mqtt_topic_prefix: str = "weijian/v1"
    # alerting.engine.AlertEngine when this process runs the detector: acknowledgements and
    # manual resolutions go through its book (None: the alert API answers 503 for those); posted
    # records nudge it to read them from the registry at once (it reads them anyway).
    alerts: Any = None
    # Called (synchronously, after commit) whenever devices or their credentials changed:
    # the broker's password/ACL files and the directory cache follow the registry.
    device_listeners: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.device_keys is None:
            directory = self.directory
            self.device_keys = DeviceKeys(
                self.registry, (lambda: directory.revision) if directory is not None else None
            )

    def devices_changed(self) -> None:
        if self.directory is not None:
            self.directory.refresh()
        for listener in self.device_listeners:
            try:
                listener()
            except Exception:
                # The registry change is committed; a failed broker sync is retried on the next
                # change and by the periodic sync, and must not turn the API call into a 500.
                log.exception("device change listener %r failed", listener)
