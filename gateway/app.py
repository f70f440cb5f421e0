"""The FastAPI gateway: staff API over the registry (and, wired by the platform, HTTP ingest).

:func:`create_app` builds an app around a :class:`GatewayContext`; nothing is global, so tests
and the platform each build their own. Routes are synchronous (SQLAlchemy is) and run in
FastAPI's thread pool; see :mod:`gateway.api` for the shared dependencies and
:mod:`gateway.security` for authentication and the access rules. API reference: docs/gateway.md.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from argon2 import PasswordHasher
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import security
from gateway.api import (
    CtxDep,
    alerts,
    check,
    devices,
    get_ctx,
    get_session,
    imports,
    ingest,
    jurisdictions,
    records,
    rules,
    sites,
    tenants,
    users,
)
from gateway.api import audit as audit_api
from gateway.context import GatewayContext
from gateway.errors import error_response, error_responses, install_error_handlers
from gateway.schemas import Health
from protocols.profiles import load_profiles

__all__ = ["BodySizeLimitMiddleware", "create_app", "get_ctx", "get_session"]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("weijian")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, without reading them whole.

    A declared ``Content-Length`` over the limit is refused before a byte is read; otherwise the
    bytes are counted as the app receives them and the read that crosses the limit raises
    :class:`BodyTooLarge` (an HTTPException, so FastAPI's own body parsing passes it through).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._refuse(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"request body larger than {self.max_bytes} bytes"
        )
        response.headers["Connection"] = "close"  # the unread rest of the body is not drained
        await response(scope, receive, send)


def create_app(
    ctx: GatewayContext,
    *,
    profiles: Any = None,
    password_hasher: PasswordHasher | None = None,
) -> FastAPI:
    """The gateway app. ``profiles``: a ProfileSet (default: the shipped profiles);
    ``password_hasher``: argon2 parameters (default: argon2-cffi's; tests pass cheap ones)."""
    app = FastAPI(
        title="Weijian gateway",
        version=_version(),
        description=(
            "Registry of tenants, sites, devices and jurisdictions; device onboarding and "
            "credentials; bulk import; audit. Authenticate with POST /auth/token (OAuth2 "
            "password flow) or an API token. Every error has the body "
            '{"error": {"code", "message", "details"}}.'
        ),
        responses=error_responses(413, 500),
    )
    app.state.ctx = ctx
    app.state.profiles = profiles if profiles is not None else load_profiles()
    app.state.passwords = security.Passwords(password_hasher)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=ctx.settings.max_body_bytes)

    for router in (
        security.router,
        tenants.router,
        sites.router,
        devices.router,
        jurisdictions.router,
        users.router,
        audit_api.router,
        imports.router,
        check.router,
        ingest.router,
        alerts.router,
        records.router,
        rules.router,
    ):
        app.include_router(router)

    @app.get(
        "/health",
        response_model=Health,
        tags=["health"],
        responses=error_responses(503),
        summary="Liveness and registry reachability (no authentication)",
    )
    def health(ctx: CtxDep) -> Any:
        try:
            revision = ctx.registry.revision()
        except Exception:
            log.exception("health check: registry unreachable")
            return error_response(503, "unavailable", "the registry database is unreachable")
        return Health(status="ok", version=app.version, registry_revision=revision)

    return app
