"""The MQTT alert topic: every notification published once, for dashboards and other systems.

Topic ``{prefix}/_system/alerts/{region}/{severity}`` (QoS 1, not retained): a subscriber
takes one district with ``.../alerts/330102/#``, one severity everywhere with
``.../alerts/+/critical``, or everything with ``.../alerts/#``. It lives under ``_system/``
because both broker setups (LocalMosquitto's managed block and the compose broker's
entrypoint) already grant the platform's service account readwrite there; a
``{prefix}/_alerts/...`` topic would need another ACL line in both.

paho runs on its own network thread here (``loop_start``): it connects and reconnects without
ever blocking the event loop, and the PUBACK is handed back to the loop with
``call_soon_threadsafe``. The collector drives paho from the loop instead (protocols/mqtt_loop)
because it handles thousands of messages a second; this channel publishes a few per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from alerting.notify.channel import Channel, PermanentError, RetryableError
from alerting.notify.notification import Notification, Recipient
from alerting.notify.render import payload
from alerting.notify.settings import MqttAlertSettings

log = logging.getLogger(__name__)


class MqttAlertChannel(Channel):
    name = "mqtt"

    def __init__(
        self, settings: MqttAlertSettings, *, links: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings.min_severity)
        self.settings = settings
        self.links = dict(links or {})
        self.client_id = settings.client_id or f"weijian-notify-{secrets.token_hex(4)}"
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self.connected = asyncio.Event()

    def topic(self, notification: Notification) -> str:
        n = notification
        return self.settings.topic_template.format(
            prefix=self.settings.topic_prefix,
            region=n.region or "unknown",
            severity=n.severity.name.lower(),
            tenant=n.tenant,
            site=n.site,
            event=str(n.kind),
        )

    def broadcast_recipients(self, notification: Notification) -> Sequence[Recipient]:
        return [Recipient(self.name, self.topic(notification))]

    async def start(self) -> None:
        if self._client is not None:
            return
        s = self.settings
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if s.username:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password else None
            )
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()

    # ---- paho's thread ------------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT alert channel: broker refused the connection: %s", reason)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # paho holds its own lock here: only hand over to the loop, never call back into paho.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._published, mid, reason)

    # ---- the loop's side ----------------------------------------------------------------------

    def _published(self, mid: int, reason: Any) -> None:
        # publish() registers its future before the loop can run this (no await in between);
        # a PUBACK with no future belongs to a publish that already timed out.
        future = self._waiting.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)

    async def send(self, notification: Notification, recipient: Recipient) -> None:
        if self._client is None:
            await self.start()
        client = self._client
        assert client is not None
        if not self.connected.is_set() or not client.is_connected():
            raise RetryableError("MQTT broker not connected")
        body = orjson.dumps(payload(notification, self.links))
        info = client.publish(recipient.address, body, qos=self.settings.qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RetryableError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = future
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                reason = await future
        except TimeoutError as exc:
            raise RetryableError(f"no PUBACK within {self.settings.publish_timeout_s:g} s") from exc
        finally:
            self._waiting.pop(info.mid, None)
        if reason is not None and getattr(reason, "is_failure", False):
            # Mosquitto answers an ACL denial with PUBACK 0x87 (v5): retrying won't help.
            raise PermanentError(f"broker refused the publish to {recipient.address}: {reason}")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
