"""MQTT collector: subscribes to device telemetry and acknowledges each message once it is spooled.

Lifecycle (an async context manager): ``__aenter__`` connects (retrying in the background if the
broker is not there yet) with a persistent MQTT v5 session, so the broker keeps QoS 1 messages for
us while we are away; messages are handled on the event loop; ``__aexit__`` waits for pending
acknowledgements, then disconnects. PUBACK is sent only when the spool says the message's readings
are durable; a message that is refused as bad input is acknowledged too (redelivering it would not
make it valid), after being counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collectors.pipeline import Ingestor
from collectors.spool import SpoolFull
from protocols.backoff import backoff_delay
from protocols.directory import DeviceInfo
from protocols.mqtt_loop import AsyncioMqttLoop
from protocols.mqtt_telemetry import decode_payload, parse_topic, telemetry_filter
from protocols.reading import Reason, Rejection
from weijian.config import MqttSettings

log = logging.getLogger(__name__)
PROTOCOL = "mqtt"


class MessageRefused(Exception):
    """A telemetry message refused as a whole; ``device`` is ``"?"`` when the topic had none."""

    def __init__(self, device: str, rejection: Rejection) -> None:
        super().__init__(str(rejection))
        self.device = device
        self.rejection = rejection


def read_message(
    settings: MqttSettings, ingestor: Ingestor, topic: str, payload: bytes
) -> tuple[DeviceInfo, list[Any]]:
    """A telemetry message's device (as registered, checked against its topic) and its raw
    readings; raises :class:`MessageRefused`. Counts nothing: the caller decides (the collector
    counts the rejection, the alerting tap only drops the message)."""
    device = "?"
    try:
        if len(payload) > settings.max_payload_bytes:
            raise Rejection(
                Reason.OVERSIZED, f"{len(payload)} bytes; at most {settings.max_payload_bytes}"
            )
        identity = parse_topic(settings.topic_prefix, topic)
        device = identity.device
        info = ingestor.identify(PROTOCOL, identity.device, identity.tenant, identity.site)
        return info, decode_payload(payload)
    except Rejection as rejection:
        raise MessageRefused(device, rejection) from None


class MqttCollector:
    ROLE = "collector"  # in log lines (the alerting tap is a variant)

    def __init__(self, settings: MqttSettings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.client: mqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self._generation = 0  # bumps per connection: an ack never crosses a reconnect
        self._pending: set[asyncio.Future[None]] = set()
        self._backlog: deque[mqtt.MQTTMessage] = deque()
        self._backlog_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._loop_adapter: AsyncioMqttLoop | None = None
        self._closing = False
        self._rng = random.Random()

    async def __aenter__(self) -> MqttCollector:
        s = self.settings
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if s.username:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password else None
            )
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self._loop_adapter = AsyncioMqttLoop(client)
        self._supervisor = asyncio.create_task(self._maintain_connection(), name="mqtt-connection")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._pending:  # let in-flight readings become durable and be acknowledged
            await asyncio.wait(set(self._pending), timeout=10)
        for task in (self._backlog_task, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.client is not None:
            if self.client.is_connected():
                self.client.disconnect()
                # Give the loop a moment to flush DISCONNECT (and the last PUBACKs).
                for _ in range(20):
                    if self.client.socket() is None:
                        break
                    await asyncio.sleep(0.01)
            if self._loop_adapter is not None:
                self._loop_adapter.stop()
            with contextlib.suppress(Exception):
                sock = self.client.socket()
                if sock is not None:
                    sock.close()

    # -- connection -------------------------------------------------------------------------

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        return props

    async def _maintain_connection(self) -> None:
        assert self.client is not None
        attempt = 0
        while not self._closing:
            if self.client.is_connected() or self.connected.is_set():
                attempt = 0
                await asyncio.sleep(0.5)
                continue
            try:
                if self.connections == 0 and attempt == 0:
                    self.client.connect(
                        self.settings.host,
                        self.settings.port,
                        keepalive=self.settings.keepalive_s,
                        clean_start=False,
                        properties=self._connect_properties(),
                    )
                else:
                    self.client.reconnect()
                # Wait for CONNACK (or a refusal) before deciding anything else.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.connected.wait(), timeout=10)
                if self.connected.is_set():
                    continue
            except (OSError, mqtt.WebsocketConnectionError) as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning(
                        "MQTT broker %s:%s unreachable (%s); retrying",
                        self.settings.host,
                        self.settings.port,
                        exc,
                    )
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=15.0, rng=self._rng))

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "MQTT broker refused the %s's connection: %s (check mqtt.username/"
                "password and the broker's ACL)",
                self.ROLE,
                reason,
            )
            return
        self._generation += 1
        self.connections += 1
        topic = telemetry_filter(self.settings.topic_prefix, self.settings.share_group)
        client.subscribe(topic, qos=1)
        log.info(
            "MQTT %s connected to %s:%s (session present: %s), subscribed to %s",
            self.ROLE,
            self.settings.host,
            self.settings.port,
            flags.session_present,
            topic,
        )
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.connected.clear()
        self._generation += 1
        self._backlog.clear()  # unacknowledged: the broker redelivers them to the next session
        if not self._closing:
            log.warning("MQTT %s connection lost (%s); reconnecting", self.ROLE, reason)

    # -- messages ---------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._backlog:  # keep arrival order while the spool is full
            self._backlog.append(msg)
            return
        self._handle(msg)

    def _handle(self, msg: mqtt.MQTTMessage) -> bool:
        """Process one message; False when the spool is full and it must wait."""
        generation = self._generation
        try:
            info, raws = read_message(self.settings, self.ingestor, msg.topic, msg.payload)
        except MessageRefused as refused:
            self.ingestor.count_rejection(PROTOCOL, refused.device, refused.rejection)
            self._ack(msg, generation)
            return True
        try:
            outcome = self.ingestor.submit(PROTOCOL, info, raws)
        except SpoolFull:
            self._backlog.append(msg)
            if self._backlog_task is None or self._backlog_task.done():
                log.warning("spool full: holding MQTT messages unacknowledged until it drains")
                self._backlog_task = asyncio.get_running_loop().create_task(self._drain_backlog())
            return False
        if outcome.durable is None:
            self._ack(msg, generation)
        else:
            fut = outcome.durable
            self._pending.add(fut)
            fut.add_done_callback(lambda f, m=msg, g=generation: self._durable(f, m, g))
        return True

    def _durable(self, fut: asyncio.Future[None], msg: mqtt.MQTTMessage, generation: int) -> None:
        self._pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            log.error(
                "spool failed to make a message durable (%s); it will be redelivered",
                fut.exception() if not fut.cancelled() else "cancelled",
            )
            return
        self._ack(msg, generation)

    def _ack(self, msg: mqtt.MQTTMessage, generation: int) -> None:
        if msg.qos == 0 or self.client is None:
            return
        if generation != self._generation:
            return  # the broker redelivers it on the new connection; that copy gets the ack
        self.client.ack(msg.mid, msg.qos)

    async def _drain_backlog(self) -> None:
        spool = self.ingestor.spool
        while self._backlog:
            await spool.wait_for_room(
                sum(len(m.payload) for m in list(self._backlog)[:100]), timeout=1.0
            )
            while self._backlog:
                if not self._handle(self._backlog[0]):
                    # _handle re-queued it at the end; take that copy back off.
                    self._backlog.pop()
                    break
                self._backlog.popleft()
        log.info("spool has room again: MQTT backlog drained")
