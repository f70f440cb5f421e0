"""Serve the gateway inside the platform's event loop (uvicorn, no process of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The platform owns SIGINT/SIGTERM (graceful drain); uvicorn must not take them over.
        yield


class GatewayServer:
    """``await start()`` binds and serves; ``await stop()`` finishes in-flight requests first."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, start_within_s: float = 10.0) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"cannot serve the gateway on {self.host}:{self.requested_port} ({exc}); "
                "set WEIJIAN_GATEWAY__PORT to a free port"
            ) from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._serve(sock), name="gateway")
        deadline = asyncio.get_running_loop().time() + start_within_s
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what went wrong
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the gateway did not start in time")
            await asyncio.sleep(0.02)
        return self.port

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = self._task = None
