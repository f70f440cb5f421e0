"""A real HTTP server that records requests: the receiving end for webhook and SMS tests.

Not a mock: it listens on a loopback port and speaks HTTP through aiohttp, so the client code
under test does its real work (connect, send, time out). Scripted answers let a test make the
receiver fail (``500`` then ``200``) or hang (``HANG``: never answer). Also used by benchmarks
that measure the time from a reading to its notification.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

HANG = -1  # a scripted status that never answers


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the server answered (HANG for requests left hanging)
    received: float = field(default_factory=time.monotonic)


class RecordingHttpServer:
    """``async with RecordingHttpServer(statuses=[500, 200]) as server: server.url``.

    Each request takes the next scripted status; when the script runs out, ``default_status``.
    """

    def __init__(
        self,
        statuses: Iterable[int] = (),
        *,
        default_status: int = 200,
        response_body: bytes = b'{"ok": true}',
    ) -> None:
        self.script = list(statuses)
        self.default_status = default_status
        self.response_body = response_body
        self.requests: list[RecordedRequest] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answered(self, status: int = 200) -> list[RecordedRequest]:
        return [r for r in self.requests if r.status == status]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        status = self.script.pop(0) if self.script else self.default_status
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                request.query_string,
                dict(request.headers),
                body,
                status,
            )
        )
        self.arrived.set()
        if status == HANG:
            await asyncio.Event().wait()  # until the client gives up or the server closes
        return web.Response(status=status, body=self.response_body, content_type="application/json")

    async def __aenter__(self) -> RecordingHttpServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._sock is not None:
            self._sock.close()
