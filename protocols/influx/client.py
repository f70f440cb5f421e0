"""Minimal async client for InfluxDB's v1-compatible HTTP API: ``/write``, ``/query``, ``/ping``.

The same three endpoints exist on 1.x natively and on 2.x/3.x as the v1 compatibility API, so
the platform needs nothing else (no Flux, no ``/api/v2``). The client's job is to turn every
outcome into one of a few exception types the batch writer can act on:

* :class:`RetryableError` -- the server or the network is unwell (connection refused/reset,
  timeout, 5xx, 429): the same request may succeed later; ``retry_after`` if the server said.
* :class:`BadDataError` -- the lines themselves are refused (400/422 with a parse, type-conflict,
  partial-write... message). InfluxDB 1.x stores the good lines of such a batch anyway
  ("partial write"); 2.x refuses the whole batch. Either way the writer bisects.
* :class:`TooLargeError` (413), :class:`AuthError` (401/403), :class:`DatabaseNotFoundError`
  (404 database/bucket not found; also 1.x's 500 "retention policy not found") --
  configuration problems, never the data's fault.
* :class:`InfluxError` -- anything else (e.g. a 400 that is not about the lines, like a missing
  ``db``): also configuration. A 400 is called bad data only when its message says so, because
  the writer dead-letters bad data line by line and a misread request error would dead-letter
  every good line.

Secrets (password, token) go into one ``Authorization`` header and nowhere else: not into URLs,
reprs, exception messages or logs. Query text is never put into error messages either (``CREATE
USER ... WITH PASSWORD`` is a query).
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from yarl import URL

if TYPE_CHECKING:
    from weijian.config import InfluxSettings

log = logging.getLogger(__name__)

__all__ = [
    "AuthError",
    "BadDataError",
    "DatabaseNotFoundError",
    "InfluxClient",
    "InfluxError",
    "RetryableError",
    "TooLargeError",
    "parse_retry_after",
]

PRECISIONS = frozenset({"ns", "n", "u", "ms", "s", "m", "h"})

# Substrings (lower case) of the messages InfluxDB gives when the *lines* are at fault:
# 1.x "unable to parse '...': invalid field format", "partial write: field type conflict: ...",
# "partial write: points beyond retention policy dropped=1"; 2.x "unable to parse ...",
# "failure writing points to database: partial write: ..."; 3.x "parsing failed for write_lp".
_BAD_DATA_MARKERS = (
    "unable to parse",
    "partial write",
    "field type conflict",
    "parsing failed",
    "failed to parse",
    "invalid field",
    "invalid tag",
    "invalid line",
    "line protocol",
    "bad timestamp",
    "invalid timestamp",
    "points beyond retention",
    "invalid number",
    "invalid boolean",
    "unbalanced quotes",
    "missing field",
    "missing tag",
    "missing measurement",
)


class InfluxError(Exception):
    """Any failure talking to InfluxDB; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RetryableError(InfluxError):
    """Connection error, timeout, 5xx or 429: the same request may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class BadDataError(InfluxError):
    """InfluxDB refused (some of) the lines: unparsable, field type conflict, partial write."""


class TooLargeError(InfluxError):
    """413: the request body exceeds the server's ``max-body-size``."""


class AuthError(InfluxError):
    """401/403: wrong or missing credentials, or no write permission -- configuration."""


class DatabaseNotFoundError(InfluxError):
    """404 database (or 2.x bucket / DBRP mapping) not found -- configuration."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110: HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_message(body: bytes, headers: Mapping[str, str]) -> str:
    """InfluxDB's own words: 1.x ``{"error"}``, 2.x ``{"message"}``, 3.x ``{"error","data"}``."""
    text = body.decode("utf-8", "replace").strip()
    try:
        decoded = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict):
        message = decoded.get("error") or decoded.get("message")
        if isinstance(message, str) and message:
            data = decoded.get("data")
            if data:  # 3.x puts the rejected lines here
                message = f"{message}: {orjson.dumps(data).decode()[:1000]}"
            return message
    header = headers.get("X-Influxdb-Error")
    if header:
        return header
    return text[:1000] or "(empty body)"


class InfluxClient:
    """One ``aiohttp.ClientSession`` to one InfluxDB; use as ``async with InfluxClient(...)``.

    ``gzip_min_bytes``: compress write bodies at least this large (``Content-Encoding: gzip``).
    Off by default: on loopback it made writes slower (measured in the tests' report); turn it
    on for an InfluxDB across a real network, where bytes cost more than CPU.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float = 10.0,
        gzip_min_bytes: int | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.user is not None:  # credentials in the URL: move them to the header
            username = username or parsed.user
            password = password if password is not None else parsed.password
            parsed = parsed.with_user(None)
        self.url = str(parsed).rstrip("/")
        self.timeout_s = timeout_s
        self.gzip_min_bytes = gzip_min_bytes
        self._headers: dict[str, str] = {}
        if token:
            self._headers["Authorization"] = f"Token {token}"
            self.auth_kind = "token"
        elif username is not None:
            if ":" in username:
                raise ValueError("an InfluxDB username cannot contain ':' (HTTP Basic auth)")
            pair = f"{username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            self.auth_kind = f"basic ({username})"
        else:
            self.auth_kind = "none"
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, s: InfluxSettings) -> InfluxClient:
        return cls(
            s.url,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            token=s.token.get_secret_value() if s.token is not None else None,
            timeout_s=s.timeout_s,
        )

    def __repr__(self) -> str:
        return f"InfluxClient({self.url!r}, auth={self.auth_kind})"

    async def __aenter__(self) -> InfluxClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                raise_for_status=False,
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._get_session()
        what = f"{method} {self.url}{path}"
        try:
            async with session.request(
                method, self.url + path, params=params, data=data, headers=headers
            ) as resp:
                body = await resp.read()
                return resp.status, body, resp.headers
        except TimeoutError as exc:
            raise RetryableError(f"{what}: no answer within {self.timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            # ClientError covers refused/reset connections, server disconnects, payload errors.
            raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _classify(
        status: int, body: bytes, headers: Mapping[str, str], *, write: bool
    ) -> InfluxError:
        message = _error_message(body, headers)
        text = f"HTTP {status}: {message}"
        lowered = message.lower()
        if "retention policy not found" in lowered:  # 1.x answers 500: configuration, not load
            return DatabaseNotFoundError(text, status=status, body=message)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            return RetryableError(text, status=status, body=message, retry_after=retry_after)
        if status in (401, 403):
            return AuthError(text, status=status, body=message)
        if (
            status == 404
            and "not found" in lowered
            and ("database" in lowered or "bucket" in lowered or "dbrp" in lowered)
        ):
            return DatabaseNotFoundError(text, status=status, body=message)
        if status == 413:
            return TooLargeError(text, status=status, body=message)
        if write and status in (400, 422) and any(m in lowered for m in _BAD_DATA_MARKERS):
            return BadDataError(text, status=status, body=message)
        return InfluxError(text, status=status, body=message)

    async def ping(self) -> str | None:
        """The server's version (``X-Influxdb-Version``), or None if unreachable / not InfluxDB."""
        try:
            _, _, headers = await self._request("GET", "/ping")
        except RetryableError as exc:
            log.debug("InfluxDB ping failed: %s", exc)
            return None
        return headers.get("X-Influxdb-Version")

    async def write(
        self, db: str, body: bytes, *, rp: str | None = None, precision: str = "ms"
    ) -> None:
        """POST line protocol to ``/write``; returns on 2xx, raises an :class:`InfluxError` else."""
        if precision not in PRECISIONS:  # 1.x silently treats an unknown precision as ns
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        params = {"db": db, "precision": precision}
        if rp:
            params["rp"] = rp
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip_min_bytes is not None and len(body) >= self.gzip_min_bytes:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        status, resp_body, resp_headers = await self._request(
            "POST", "/write", params=params, data=body, headers=headers
        )
        if 200 <= status < 300:
            return
        raise self._classify(status, resp_body, resp_headers, write=True)

    async def query(
        self, q: str, *, db: str | None = None, epoch: str | None = "ms", method: str = "GET"
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; return the ``results`` list. A statement ``error`` raises InfluxError."""
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        if method.upper() == "POST":
            status, body, headers = await self._request("POST", "/query", data=params)
        elif method.upper() == "GET":
            status, body, headers = await self._request("GET", "/query", params=params)
        else:
            raise ValueError(f"method must be GET or POST, got {method!r}")
        if status != 200:
            raise self._classify(status, body, headers, write=False)
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InfluxError(f"/query answered non-JSON: {body[:200]!r}", status=status) from exc
        if not isinstance(decoded, dict):
            raise InfluxError(f"/query answered {type(decoded).__name__}", status=status)
        if decoded.get("error"):
            raise InfluxError(
                f"query failed: {decoded['error']}", status=status, body=decoded["error"]
            )
        results: list[dict[str, Any]] = decoded.get("results") or []
        for result in results:
            error = result.get("error")
            if error:
                err = InfluxError(
                    f"statement {result.get('statement_id')} failed: {error}",
                    status=status,
                    body=error,
                )
                if "database not found" in error:
                    err = DatabaseNotFoundError(str(err), status=status, body=error)
                raise err
        return results

    async def execute(self, q: str, *, db: str | None = None) -> None:
        """Run InfluxQL that changes something (DDL) with POST; raise if any statement failed."""
        await self.query(q, db=db, epoch=None, method="POST")
