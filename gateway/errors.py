"""One error body for every failure the gateway reports, so clients parse errors one way.

Every error, whether raised by our routes, by FastAPI's request validation, by routing (404,
405), by authentication, by the body-size limit or by a bug, is answered as::

    {"error": {"code": "not_found", "message": "site 'x' not found", "details": [...]}}

``code`` is a stable machine-readable word (see :data:`STATUS_CODES` plus a few specific ones
such as ``conflict``); ``message`` is for people; ``details`` lists field-level problems as
``{"field": "connection.port", "location": "body", "message": ..., "type": ...}``. Request
values are never echoed back: a rejected body may hold a password.

A bug must never leak a traceback or a half-written response: :class:`InternalErrorMiddleware`
turns any unhandled exception into a logged ``500 internal``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}
BEARER = {"WWW-Authenticate": "Bearer"}


class ErrorDetail(BaseModel):
    """One problem: which field (dotted path), where (body/query/path/header), and why."""

    model_config = ConfigDict(extra="allow")

    field: str | None = None
    location: str | None = None
    message: str
    type: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer."""

    error: ErrorBody


class ApiError(Exception):
    """Raised anywhere below a route; rendered as the one error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = [dict(d) for d in details]
        self.headers = dict(headers or {})


def problem(field: str | None, message: str, type: str = "value_error", **extra: Any) -> dict:
    """A detail entry for a body field (``location`` defaults to ``body``)."""
    return {
        "field": field,
        "location": extra.pop("location", "body"),
        "message": message,
        "type": type,
        **extra,
    }


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident!r} not found")


def conflict(message: str, details: Sequence[Mapping[str, Any]] = ()) -> ApiError:
    return ApiError(409, "conflict", message, details)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def unauthorized(message: str = "authentication required") -> ApiError:
    return ApiError(401, "unauthorized", message, headers=BEARER)


def invalid(details: Sequence[Mapping[str, Any]], message: str | None = None) -> ApiError:
    count = len(details)
    text = message or (details[0]["message"] if count == 1 else f"{count} problems")
    return ApiError(422, "validation_failed", text, details)


def error_body(code: str, message: str, details: Sequence[Mapping[str, Any]] = ()) -> dict:
    return {"error": {"code": code, "message": message, "details": [dict(d) for d in details]}}


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    code = code or STATUS_CODES.get(status, "error")
    message = message or _phrase(status)
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid or expired credentials (WWW-Authenticate: Bearer)",
    403: "Authenticated, but the role may not do this",
    404: "Not found, or outside the caller's jurisdiction",
    409: "Conflicts with existing data (duplicate id, children still attached, ...)",
    413: "Request body larger than the gateway accepts",
    415: "Unsupported content type",
    422: "Validation failed; details name each field",
    500: "Internal error (logged)",
    503: "Temporarily unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error body for these statuses."""
    return {
        s: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(s, _phrase(s))}
        for s in statuses
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


# ---- handlers ----------------------------------------------------------------------------------


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers or None)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else _phrase(status)
    if status == 404 and message == "Not Found":
        message = f"nothing at {request.url.path}"
    elif status == 405 and message == "Method Not Allowed":
        message = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(status, None, message, (), headers or None)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [_detail(err) for err in exc.errors()]
    message = details[0]["message"] if len(details) == 1 else f"{len(details)} problems"
    if len(details) == 1 and details[0]["field"]:
        message = f"{details[0]['field']}: {message}"
    return error_response(422, "validation_failed", message, details)


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # Routes check references and duplicates first; this is the race between check and commit.
    log.info("integrity error answered as 409: %s", exc)
    return error_response(409, "conflict", "the change conflicts with existing data; retry")


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # SQLite busy beyond its timeout, PostgreSQL gone: the client may retry; not a bug of ours.
    log.warning("registry database unavailable: %s", exc)
    return error_response(
        503,
        "unavailable",
        "the registry database is busy or unreachable; retry",
        headers={"Retry-After": "5"},
    )


def _detail(err: Mapping[str, Any]) -> dict[str, Any]:
    loc = [str(part) for part in err.get("loc", ())]
    location = loc[0] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else None
    field = ".".join(loc[1:] if location else loc) or None
    return {
        "field": field,
        "location": location,
        "message": _message(err),
        "type": str(err.get("type", "value_error")),
    }


def _message(err: Mapping[str, Any]) -> str:
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def pydantic_details(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> list[dict]:
    """Details for a pydantic ``ValidationError.errors()`` raised outside FastAPI's parsing."""
    out = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        field = ".".join(p for p in (prefix, loc) if p) or None
        out.append(problem(field, _message(err), str(err.get("type", ""))))
    return out


class InternalErrorMiddleware:
    """Any exception nobody handled becomes a logged 500 with the error body (pure ASGI).

    Starlette's own ``ServerErrorMiddleware`` would answer too but re-raises afterwards; here
    the exception ends with the log line, so servers and test clients see a normal response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(500, "internal", "internal error; it has been logged")
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path of ``app`` to the one error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_middleware(InternalErrorMiddleware)
