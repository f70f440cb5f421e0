"""Ending a collector's persistent session without losing what the broker queued for it.

A process that stops ingesting MQTT (``mqtt.ingest: false``: worker 0 under ``serve --workers N``
when it is the alert process) leaves behind, on the broker, the persistent session it had as a
collector: a member of the shared subscription with a 7-day expiry. Mosquitto keeps routing its
share of the telemetry to that offline session (measured: with two members, one offline, the
online one received 50 of 100 messages), where nothing would store it until it expired.

:class:`RetiringCollector` resumes that session as the collector would, so whatever was queued
is ingested (spooled, acknowledged, stored) like any message; unsubscribes from the shared
filter at once, so nothing new is routed to it; waits until the broker has been quiet for a
moment and every message is durable; then disconnects with a session expiry of 0, which ends
the session on the broker. A fresh process (no session) just connects, finds nothing, and leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collectors.mqtt.collector import MqttCollector
from protocols.mqtt_telemetry import telemetry_filter

log = logging.getLogger(__name__)


class RetiringCollector(MqttCollector):
    ROLE = "retiring collector"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drained = 0  # messages the old session still held
        self.retired = asyncio.Event()
        self._last_message = time.monotonic()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            super()._on_connect(client, userdata, flags, reason, properties)
            return
        self._generation += 1
        self.connections += 1
        topic = telemetry_filter(self.settings.topic_prefix, self.settings.share_group)
        client.unsubscribe(topic)  # nothing new for this session; what it holds still comes
        self._last_message = time.monotonic()
        log.info(
            "MQTT %s %s connected (session present: %s): ingesting what the broker kept for it, "
            "then ending the session",
            self.ROLE,
            self.settings.client_id,
            flags.session_present,
        )
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.drained += 1
        self._last_message = time.monotonic()
        super()._on_message(client, userdata, msg)

    async def retire(self, *, quiet_s: float = 2.0, connect_within_s: float = 60.0) -> bool:
        """Drain and end the session; False if the broker could not be reached in time (the
        session then stays, and the next start tries again)."""
        try:
            await asyncio.wait_for(self.connected.wait(), connect_within_s)
        except TimeoutError:
            log.warning(
                "MQTT %s %s: broker unreachable; its old session (if any) is left for the next "
                "start",
                self.ROLE,
                self.settings.client_id,
            )
            return False
        while True:  # polled: "quiet for a while" is an absence, no event announces it
            if not (self._pending or self._backlog):
                quiet_for = time.monotonic() - self._last_message
                if quiet_for >= quiet_s:
                    break
            await asyncio.sleep(0.1)
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self._closing = True
        assert self.client is not None
        self.client.disconnect(properties=props)
        log.info(
            "MQTT %s %s: session ended after %d queued message(s)",
            self.ROLE,
            self.settings.client_id,
            self.drained,
        )
        self.retired.set()
        return True
