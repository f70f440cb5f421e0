"""CoAP collector: devices POST readings to ``/t?k=<token>``; the answer waits for the spool.

Lifecycle (an async context manager, as :class:`~collectors.mqtt.MqttCollector`):
``__aenter__`` binds the UDP socket and starts serving (``port=0`` picks a free port, see
:attr:`CoapCollector.port`); requests are handled on the event loop; ``__aexit__`` stops taking
readings (new requests get 5.03 with Max-Age), waits up to ``drain_timeout_s`` for the requests in
hand to become durable and be answered, then shuts the aiocoap context down.

The acknowledgement rule: a 2.04 is sent only after the accepted readings are durable in the spool.
aiocoap answers a confirmable request with an empty ACK when the handler has not returned within
``EMPTY_ACK_DELAY`` (0.1 s) and then sends the response as a separate confirmable message; the
empty ACK only stops the device's retransmissions, it says nothing about the data. Bad input is
answered with a 4.xx and counted through the ingestor with its reason (see docs/coap.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiocoap
import aiocoap.resource
from aiocoap import Code, Message
from aiocoap.numbers.constants import TransportTuning

from collectors.metrics import Metrics
from collectors.pipeline import Ingestor
from collectors.spool import SpoolFull
from protocols.coap import (
    CONTENT_FORMAT_CBOR,
    CONTENT_FORMAT_JSON,
    CONTENT_FORMATS,
    RESOURCE_PATH,
    decode_document,
    diagnostic,
    encode_reply,
    key_id,
    token_from_query,
)
from protocols.reading import Reason, Rejection

log = logging.getLogger(__name__)
AIOCOAP_LOGGER = f"{__name__}.aiocoap"
# aiocoap logs every Block1 "Continue" and every duplicate at INFO: protocol chatter, not events.
if logging.getLogger(AIOCOAP_LOGGER).level == logging.NOTSET:
    logging.getLogger(AIOCOAP_LOGGER).setLevel(logging.WARNING)
PROTOCOL = "coap"
DEFAULT_PORT = 5683
DEFAULT_MAX_PAYLOAD = 128 << 10  # a full 1000-reading JSON batch, ~128 blocks of 1 KiB
EMPTY_ACK_DELAY_S = TransportTuning.EMPTY_ACK_DELAY
UNKNOWN = "?"  # the device label of input refused before a device was known (as MQTT does)

Authenticate = Callable[[str], "str | Awaitable[str | None] | None"]
"""Presented token → device id, or None. May block (a database lookup on a cache miss)."""


@dataclass
class CoapStats:
    """Plain counters of the CoAP endpoint, for the metrics exporter (``metrics.attach``)."""

    requests: int = 0  # requests that reached the resource (block-wise: once, assembled)
    non_confirmable: int = 0
    responses: Counter[str] = field(default_factory=Counter)  # "2.04" -> count
    separate_responses: int = 0  # answered after EMPTY_ACK_DELAY: an empty ACK went first
    auth_errors: int = 0  # the authenticate callable raised (answered 5.03)
    in_flight: int = 0


class _Reply(Exception):
    """A finished response, raised from inside the checks so each check stays one line."""

    def __init__(self, message: Message) -> None:
        self.message = message


class CoapCollector:
    """The CoAP endpoint: one UDP socket serving ``POST /t`` (see the module docstring)."""

    def __init__(
        self,
        ingestor: Ingestor,
        authenticate: Authenticate,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        metrics: Metrics | None = None,
        auth_in_thread: bool = True,
        ack_timeout_s: float = 30.0,
        retry_after_s: int = 5,
        drain_timeout_s: float = 10.0,
        recv_buffer_bytes: int = 4 << 20,
    ) -> None:
        """``auth_in_thread``: run a synchronous ``authenticate`` in a worker thread (it may do a
        database lookup); pass False only for a pure in-memory lookup. A coroutine function is
        always awaited on the loop."""
        if max_payload < 1:
            raise ValueError("max_payload must be positive")
        self.ingestor = ingestor
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.ack_timeout_s = ack_timeout_s
        self.retry_after_s = retry_after_s
        self.drain_timeout_s = drain_timeout_s
        self.recv_buffer_bytes = recv_buffer_bytes
        self.recv_buffer = 0  # what the kernel granted (Linux reports twice the usable bytes)
        self.stats = CoapStats()
        (metrics or ingestor.metrics).attach("coap", self.stats)
        self._authenticate = authenticate
        self._auth_in_thread = auth_in_thread and not inspect.iscoroutinefunction(authenticate)
        self._context: aiocoap.Context | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> CoapCollector:
        site = aiocoap.resource.Site()
        site.add_resource(RESOURCE_PATH, _TelemetryResource(self))
        self._context = await aiocoap.Context.create_server_context(
            site,
            bind=(self.host, self.port),
            transports=["udp6"],  # the default list would also open TCP, TLS and WebSocket
            loggername=AIOCOAP_LOGGER,
        )
        sock = _server_socket(self._context)
        self.port = int(sock.getsockname()[1])
        # A stalled loop (a GC pause, a busy CPU) must not drop datagrams: at 1,000 requests/s
        # the default ~200 KB buffer holds ~0.2 s of them, and every drop costs its device a
        # 2-3 s retransmission timeout. Linux caps the request at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer_bytes)
        self.recv_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        log.info(
            "CoAP collector listening on udp %s:%d, resource /t (receive buffer %d KiB)",
            self.host,
            self.port,
            self.recv_buffer // 1024,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self.stats.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.drain_timeout_s)
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    # -- the request path ---------------------------------------------------------------------

    async def handle(self, request: Message) -> Message:
        """Answer one (assembled) POST; never raises for bad input."""
        stats = self.stats
        stats.requests += 1
        stats.non_confirmable += request.mtype is aiocoap.NON
        stats.in_flight += 1
        self._idle.clear()
        started = time.monotonic()
        try:
            response = await self._handle(request)
        except _Reply as reply:
            response = reply.message
        finally:
            stats.in_flight -= 1
            if not stats.in_flight:
                self._idle.set()
        stats.responses[response.code.dotted] += 1
        if request.mtype is aiocoap.CON and time.monotonic() - started > EMPTY_ACK_DELAY_S:
            stats.separate_responses += 1
        return response

    async def _handle(self, request: Message) -> Message:
        if self._closing:
            raise _Reply(self._unavailable("shutting_down", "the collector is stopping"))
        device = await self.authenticated(request)
        self.check_size(len(request.payload), device)
        content_format = self._content_format(request, device)
        ingestor = self.ingestor
        try:
            info = ingestor.identify(PROTOCOL, device)
        except Rejection as rejection:
            raise self._refuse(Code.FORBIDDEN, device, rejection) from None
        try:
            raw = decode_document(request.payload, content_format)
        except Rejection as rejection:
            raise self._refuse(Code.BAD_REQUEST, device, rejection) from None
        try:
            outcome = ingestor.submit(PROTOCOL, info, raw)
        except SpoolFull:
            ingestor.count_rejection(
                PROTOCOL, device, Rejection(Reason.SPOOL_FULL, "spool full; asked to retry")
            )
            raise _Reply(self._unavailable("spool_full", "the platform is saturated")) from None
        except OSError as exc:  # the disk refused the write: nothing was kept
            log.error("spool write failed (%s); CoAP devices are asked to retry", exc)
            raise _Reply(self._unavailable("storage_error", "cannot store now")) from None
        if outcome.durable is None:  # every reading refused (each already counted by submit)
            first = "; ".join(f"#{i} {r.reason.value}: {r.detail}" for i, r in outcome.rejected)
            raise _Reply(
                _error(
                    Code.BAD_REQUEST,
                    diagnostic(
                        "all_rejected", f"none of the {len(raw)} reading(s) accepted: {first}"
                    ),
                )
            )
        try:
            await asyncio.wait_for(asyncio.shield(outcome.durable), self.ack_timeout_s)
        except TimeoutError:
            log.error("spool did not make readings durable within %.0fs", self.ack_timeout_s)
            raise _Reply(self._unavailable("not_durable", "storage is slow; retry")) from None
        except Exception as exc:  # the spool's fsync failed: no ack, the device resends
            log.error("spool failed to make readings durable (%s); not acknowledged", exc)
            raise _Reply(
                _error(Code.INTERNAL_SERVER_ERROR, diagnostic("not_durable", "retry later"))
            ) from None
        reply_format = content_format or CONTENT_FORMAT_JSON
        return Message(
            code=Code.CHANGED,
            payload=encode_reply(outcome.accepted, outcome.rejected, reply_format),
            content_format=reply_format,
        )

    async def authenticated(self, request: Message) -> str:
        """The device the request's token belongs to; raises the 4.01 (or 5.03) reply."""
        token = token_from_query(request.opt.uri_query)
        if token is None:
            raise self._refuse(
                Code.UNAUTHORIZED,
                UNKNOWN,
                Rejection(Reason.UNKNOWN_DEVICE, "no token: give exactly one Uri-Query k=<token>"),
            )
        kid = key_id(token)
        device = None
        if kid is not None:  # only token-shaped values cost a lookup (and a thread hop)
            try:
                device = await self._lookup(token)
            except Exception:
                self.stats.auth_errors += 1
                log.exception("CoAP token check failed")
                raise _Reply(
                    self._unavailable("auth_unavailable", "cannot check tokens now")
                ) from None
        if device is None:
            detail = (
                f"token with key id {kid!r} is unknown, revoked or wrong"
                if kid
                else "k is not shaped like a device token (wjc_<key id>_<secret>)"
            )
            raise self._refuse(Code.UNAUTHORIZED, UNKNOWN, Rejection(Reason.UNKNOWN_DEVICE, detail))
        return device

    def check_size(self, size: int, device: str) -> None:
        """Raise the 4.13 reply (Size1 = the limit) for a payload above ``max_payload``."""
        if size > self.max_payload:
            rejection = Rejection(Reason.OVERSIZED, f"{size} bytes; at most {self.max_payload}")
            self.ingestor.count_rejection(PROTOCOL, device, rejection)
            response = _error(
                Code.REQUEST_ENTITY_TOO_LARGE, diagnostic(rejection.reason, rejection.detail)
            )
            response.opt.size1 = self.max_payload
            raise _Reply(response)

    async def _lookup(self, token: str) -> str | None:
        if self._auth_in_thread:
            result = await asyncio.to_thread(self._authenticate, token)
        else:
            result = self._authenticate(token)
        if inspect.isawaitable(result):
            result = await result
        return cast("str | None", result)

    def _content_format(self, request: Message, device: str) -> int | None:
        cf = request.opt.content_format
        if cf is None:
            return None
        value = int(cf)
        if value not in CONTENT_FORMATS:
            raise self._refuse(
                Code.UNSUPPORTED_CONTENT_FORMAT,
                device,
                Rejection(
                    Reason.MALFORMED,
                    f"content-format {value} is not supported; use 50 (JSON) or 60 (CBOR)",
                ),
            )
        return value

    def _refuse(self, code: Code, device: str, rejection: Rejection) -> _Reply:
        self.ingestor.count_rejection(PROTOCOL, device, rejection)
        return _Reply(_error(code, diagnostic(rejection.reason, rejection.detail)))

    def _unavailable(self, what: str, detail: str) -> Message:
        response = _error(Code.SERVICE_UNAVAILABLE, diagnostic(what, detail))
        response.opt.max_age = self.retry_after_s
        return response


class _TelemetryResource(aiocoap.resource.Resource):
    """``/t``: POST only (aiocoap answers 4.05 to other methods)."""

    def __init__(self, collector: CoapCollector) -> None:
        super().__init__()
        self.collector = collector

    async def render_post(self, request: Message) -> Message:
        return await self.collector.handle(request)

    async def render_to_pipe(self, pipe: Any) -> None:
        """Check each Block1 block before aiocoap keeps it: aiocoap itself caps nothing.

        The first block must carry a valid token (so no unauthenticated sender can park data in
        the reassembly buffer), and a transfer stops with 4.13 as soon as its declared Size1 or
        the bytes received so far pass ``max_payload``.
        """
        request = pipe.request
        block1 = request.opt.block1
        if block1 is not None and request.code is Code.POST:
            collector = self.collector
            end = max(block1.start + len(request.payload), request.opt.size1 or 0)
            if block1.block_number == 0 or end > collector.max_payload:
                try:
                    device = await collector.authenticated(request)
                    collector.check_size(end, device)
                except _Reply as reply:
                    collector.stats.responses[reply.message.code.dotted] += 1
                    pipe.add_response(reply.message, is_last=True)
                    return
        await super().render_to_pipe(pipe)


def _error(code: Code, text: bytes) -> Message:
    """An error response whose payload is diagnostic text (no Content-Format, RFC 7252 5.5.2)."""
    return Message(code=code, payload=text)


def _server_socket(context: aiocoap.Context) -> socket.socket:
    """The server's UDP socket: aiocoap exposes neither it nor its port (port 0 needs that)."""
    try:
        transport = context.request_interfaces[0].token_interface.message_interface.transport
        sock = transport.get_extra_info("socket")
    except (AttributeError, IndexError) as exc:  # a different aiocoap layout
        raise RuntimeError(f"cannot find the server socket in this aiocoap version: {exc}") from exc
    if not isinstance(sock, socket.socket):
        raise RuntimeError("cannot find the server socket in this aiocoap version")
    return sock


__all__ = [
    "CONTENT_FORMAT_CBOR",
    "CONTENT_FORMAT_JSON",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_PORT",
    "PROTOCOL",
    "Authenticate",
    "CoapCollector",
    "CoapStats",
]
