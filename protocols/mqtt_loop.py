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

MAX_PACKETS_PER_WAKEUP = 200


class AsyncioMqttLoop:
    """Attach to a client before ``connect``; ``stop()`` detaches and cancels the misc task."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self._misc: asyncio.Task[None] | None = None
        self._sock: Any = None
        self._flush_scheduled = False
        self._writer_registered = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self._writer_registered = False
        self.loop.add_reader(sock, self._read)
        # paho writes a byte to this socket pair for every outgoing packet, to wake its own
        # network thread; with no such thread it is a wasted syscall per PUBACK.
        wake = getattr(client, "_sockpairW", None)
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.close()
            client._sockpairW = None  # type: ignore[attr-defined]
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        if self._misc is None or self._misc.done():
            self._misc = self.loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._writer_registered = False
        self._sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Write once at the end of this loop iteration (all PUBACKs queued by then go together);
        # wait for writability only if the kernel's buffer is full.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._writer_registered:
            self._writer_registered = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(sock)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sock is None:
            return
        self.client.loop_write()
        if self.client.want_write() and not self._writer_registered and self._sock is not None:
            self._writer_registered = True
            self.loop.add_writer(self._sock, self._write)

    def _read(self) -> None:
        """Handle every packet already buffered, up to a bound, in one loop wake-up.

        paho's public ``loop_read`` reads one packet per call whatever ``max_packets`` says, which
        costs an event-loop iteration per message: draining here took a collector from ~9 k to
        the numbers in benchmarks/ingest.py. paho is pinned below 3, where ``_packet_read`` and
        ``_loop_rc_handle`` exist; without them we fall back to the public call.
        """
        client = self.client
        packet_read = getattr(client, "_packet_read", None)
        rc_handle = getattr(client, "_loop_rc_handle", None)
        if packet_read is None or rc_handle is None:
            client.loop_read()
            return
        for _ in range(MAX_PACKETS_PER_WAKEUP):
            if client.socket() is None:
                return
            rc = packet_read()
            if rc == mqtt.MQTT_ERR_AGAIN:
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                rc_handle(rc)  # closes the socket and reports the disconnect, as loop_read would
                return

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
