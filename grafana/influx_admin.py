"""A small synchronous client for InfluxDB's v1 ``/query`` and ``/ping``, for ``grafana sync``.

Sync is a short administrative run driven by grafana-client, which is synchronous; the
platform's async client (protocols/influx/client.py) would need an event loop for a dozen
statements. Credentials go in the Authorization header only (never the URL), and statements
(``CREATE USER ... WITH PASSWORD``) never appear in exception messages.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from protocols.influx.schema import quote_ident, version_kind

__all__ = ["InfluxAuthError", "InfluxV1", "InfluxV1Error"]


class InfluxV1Error(RuntimeError):
    """The server refused or failed a request (message from the server, never the query)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InfluxAuthError(InfluxV1Error):
    """401 (bad credentials) or 403 (credentials fine, privilege missing)."""


class InfluxV1:
    def __init__(self, url: str, username: str, password: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"InfluxV1({self.url!r}, user={self.username!r})"

    def _request(self, path: str, data: bytes | None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Authorization": self._auth}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                message = json.loads(body).get("error", "") or exc.reason
            except ValueError:
                message = body.decode(errors="replace")[:200] or str(exc.reason)
            cls = InfluxAuthError if exc.code in (401, 403) else InfluxV1Error
            raise cls(f"InfluxDB {exc.code}: {message}", exc.code) from None
        except OSError as exc:
            raise InfluxV1Error(f"InfluxDB at {self.url} unreachable: {exc}") from None

    def version(self) -> str:
        """The ``X-Influxdb-Version`` header of ``/ping`` (e.g. ``1.6.7~rc0``, ``v2.7.11``)."""
        _, headers, _ = self._request("/ping", None)
        lowered = {k.lower(): v for k, v in headers.items()}
        return lowered.get("x-influxdb-version", "")

    def version_kind(self) -> str:
        return version_kind(self.version())

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run one statement (POST); its result's series. A statement error raises."""
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        _, _, body = self._request("/query", urllib.parse.urlencode(params).encode())
        doc = json.loads(body)
        if doc.get("error"):
            raise InfluxV1Error(f"InfluxDB: {doc['error']}")
        result = (doc.get("results") or [{}])[0]
        if result.get("error"):
            raise InfluxV1Error(f"InfluxDB: {result['error']}")
        return list(result.get("series", []))

    def rows(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """The statement's rows as column → value mappings (all series concatenated)."""
        out = []
        for series in self.query(q, db):
            columns = series.get("columns", [])
            for values in series.get("values", []):
                out.append(dict(zip(columns, values, strict=False)))
        return out

    def can_login(self, username: str, password: str) -> bool:
        """Whether InfluxDB accepts these credentials (a harmless ``SHOW DATABASES``)."""
        try:
            InfluxV1(self.url, username, password, timeout=self.timeout).query("SHOW DATABASES")
        except InfluxAuthError as exc:
            if exc.status == 401:
                return False
            raise
        return True

    # ---- what sync reads ----------------------------------------------------------------

    def users(self) -> dict[str, bool]:
        """User name → admin."""
        return {row["user"]: bool(row["admin"]) for row in self.rows("SHOW USERS")}

    def databases(self) -> set[str]:
        return {row["name"] for row in self.rows("SHOW DATABASES")}

    def grants(self, user: str) -> dict[str, str]:
        """Database → privilege (``READ``, ``WRITE``, ``ALL PRIVILEGES``) of a user."""
        rows = self.rows(f"SHOW GRANTS FOR {quote_ident(user)}")
        return {r["database"]: r["privilege"] for r in rows if r["privilege"] != "NO PRIVILEGES"}
