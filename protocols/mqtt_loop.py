"""Drive a paho-mqtt client from an asyncio loop, with no network thread.

paho's socket callbacks tell us when its socket opens, closes and wants writing; we register the
socket with the loop and call paho's ``loop_read``/``loop_write``, plus ``loop_misc`` every second
for keepalive. Message callbacks therefore run on the loop thread, where the rest of a service
lives, so handing a message on costs a function call rather than a thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt


class AsyncioMqttLoop:
    """Attach to a client before ``connect``; ``stop()`` detaches and cancels the misc task."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self._misc: asyncio.Task[None] | None = None
        self._sock: Any = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self.loop.add_reader(sock, self._read)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        if self._misc is None or self._misc.done():
            self._misc = self.loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    def _read(self) -> None:
        # Drain what is buffered in one go: one call per packet would cost a loop iteration each.
        self.client.loop_read(max_packets=100)

    def _write(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            if self.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                # Disconnected; the owner decides about reconnecting. Keep ticking cheaply.
                pass
            await asyncio.sleep(1.0)

    def stop(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._sock is not None:
            self._on_socket_close(self.client, None, self._sock)
