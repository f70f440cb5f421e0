"""The alerting tap: every MQTT telemetry message, for the one alert engine of a deployment whose
collectors share the MQTT subscription.

With ``mqtt.share_group`` (``weijian serve --workers N``, or several hosts) the broker hands each
message to one collector, so no collector sees all of a device's readings; the alert engine needs
them all. The tap is a second MQTT client in the process that runs the engine: its own client id
(``<mqtt.client_id>-tap``), a **non-shared** QoS 1 subscription to the telemetry topic and a
persistent session (``mqtt.session_expiry_s``), so the broker keeps a copy of every message for it
while that process restarts. Each message is read and validated exactly as the collector does
(:func:`~collectors.mqtt.collector.read_message`, :meth:`~collectors.pipeline.Ingestor.validate`),
and each valid reading is handed to ``listener`` (the engine's). It never spools, stores or counts
ingest metrics or rejections: the collectors that ingest the message do that. A message is
acknowledged once its readings were judged; one refused as bad input is dropped (and counted in
:class:`TapStats` only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from collectors.mqtt.collector import MessageRefused, MqttCollector, read_message
from collectors.pipeline import Ingestor, ReadingListener
from protocols.mqtt_telemetry import telemetry_filter
from weijian.config import MqttSettings

log = logging.getLogger(__name__)

TAP_SUFFIX = "-tap"


@dataclass
class TapStats:
    received: int = 0  # messages from the broker
    evaluated: int = 0  # readings handed to the alert engine
    dropped_invalid: int = 0  # messages or readings refused as bad input, as the collector would


def tap_settings(settings: MqttSettings) -> MqttSettings:
    """The collector's connection settings with the tap's own client id and no share group."""
    return settings.model_copy(
        update={"client_id": settings.client_id + TAP_SUFFIX, "share_group": None}
    )


class MqttTap(MqttCollector):
    """``async with MqttTap(mqtt_settings, ingestor, engine.listener)``: reconnects with back-off
    like the collector (it is one, with its own message handling)."""

    ROLE = "alerting tap"

    def __init__(self, settings: MqttSettings, ingestor: Ingestor, listener: ReadingListener):
        super().__init__(tap_settings(settings), ingestor)
        self.listener = listener
        self.stats = TapStats()

    @property
    def topic(self) -> str:
        return telemetry_filter(self.settings.topic_prefix)

    async def __aenter__(self) -> MqttTap:
        await super().__aenter__()
        assert self.client is not None
        self.client.on_subscribe = self._on_subscribe
        return self

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error(
                "MQTT broker refused the alerting tap's subscription to %s (%s): alerts will "
                "not see MQTT readings; the broker's ACL must let user %r read it unshared",
                self.topic,
                refused[0],
                self.settings.username,
            )

    def _handle(self, msg: mqtt.MQTTMessage) -> bool:
        generation = self._generation
        stats = self.stats
        stats.received += 1
        try:
            info, raws = read_message(self.settings, self.ingestor, msg.topic, msg.payload)
        except MessageRefused:
            stats.dropped_invalid += 1
        else:
            readings, _records, rejected = self.ingestor.validate(info, raws)
            stats.dropped_invalid += len(rejected)
            listener = self.listener
            for reading in readings:
                listener(reading)
            stats.evaluated += len(readings)
        self._ack(msg, generation)
        return True
