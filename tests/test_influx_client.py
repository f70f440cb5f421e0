"""InfluxClient against the real InfluxDB 1.6.7, plus a real stub HTTP server for what 1.x never
answers (429, 503 with Retry-After, 413, timeouts). Nothing in aiohttp is mocked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from pydantic import SecretStr

from protocols.influx.client import (
    AuthError,
    BadDataError,
    DatabaseNotFoundError,
    InfluxClient,
    InfluxError,
    RetryableError,
    TooLargeError,
    parse_retry_after,
)
from weijian.config import InfluxSettings
from weijian.stack.process import free_port


def client_for(influx, **kwargs) -> InfluxClient:
    return InfluxClient(
        influx.url, username=influx.creds.username, password=influx.creds.password, **kwargs
    )


# --- against the real InfluxDB ----------------------------------------------------------------


async def test_ping_returns_the_version(influx) -> None:
    async with client_for(influx) as client:
        version = await client.ping()
    assert version is not None
    assert version.startswith("1.6")


async def test_write_and_query_round_trip(influx, influx_db: str) -> None:
    body = (
        b"air,device=d1 co2=612.5,ok=true,n=3i 1700000000000\nair,device=d2 co2=400.0 1700000060000"
    )
    async with client_for(influx) as client:
        await client.write(influx_db, body)
        results = await client.query('SELECT * FROM "air" GROUP BY "device"', db=influx_db)
        post = await client.query('SELECT count("co2") FROM "air"', db=influx_db, method="POST")
    series = {s["tags"]["device"]: s for s in results[0]["series"]}
    d1 = dict(zip(series["d1"]["columns"], series["d1"]["values"][0], strict=True))
    assert d1 == {"time": 1700000000000, "co2": 612.5, "ok": True, "n": 3}
    assert series["d2"]["values"][0][:2] == [1700000060000, 400]
    assert post[0]["series"][0]["values"][0][1] == 2


async def test_gzip_body_is_accepted(influx, influx_db: str) -> None:
    lines = b"\n".join(b"gz,n=%d v=%d.5 %d" % (i % 7, i, 1700000000000 + i) for i in range(2000))
    async with client_for(influx, gzip_min_bytes=1024) as client:
        await client.write(influx_db, lines)
    assert influx.count(influx_db, "gz", "v") == 2000


async def test_wrong_password_is_an_auth_error(influx, influx_db: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "definitely-wrong-" + influx.creds.password[:4]
    async with InfluxClient(influx.url, username=influx.creds.username, password=secret) as client:
        with pytest.raises(AuthError) as err:
            await client.write(influx_db, b"m f=1.0 1")
        with pytest.raises(AuthError):
            await client.query("SHOW DATABASES")
        assert secret not in repr(client)
    assert err.value.status == 401
    assert "authorization failed" in str(err.value)
    assert secret not in str(err.value)
    assert secret not in caplog.text


async def test_user_without_write_permission_is_an_auth_error(influx, influx_db: str) -> None:
    influx.query(f"CREATE USER reader_{influx_db} WITH PASSWORD 'pw-reader'")
    try:
        influx.query(f'GRANT READ ON "{influx_db}" TO reader_{influx_db}')
        async with InfluxClient(
            influx.url, username=f"reader_{influx_db}", password="pw-reader"
        ) as client:
            with pytest.raises(AuthError) as err:
                await client.write(influx_db, b"m f=1.0 1")
    finally:
        influx.query(f"DROP USER reader_{influx_db}")
    assert err.value.status == 403


async def test_missing_database(influx) -> None:
    async with client_for(influx) as client:
        with pytest.raises(DatabaseNotFoundError) as err:
            await client.write("no_such_db_here", b"m f=1.0 1")
        with pytest.raises(DatabaseNotFoundError):
            await client.query('SELECT * FROM "m"', db="no_such_db_here")
    assert err.value.status == 404
    assert "database not found" in str(err.value)


async def test_missing_retention_policy_is_configuration(influx, influx_db: str) -> None:
    """1.x answers 500 here; retrying is right, but it is not a server in trouble."""
    async with client_for(influx) as client:
        with pytest.raises(DatabaseNotFoundError) as err:
            await client.write(influx_db, b"m f=1.0 1", rp="no_such_rp")
    assert err.value.status == 500
    assert "retention policy not found" in str(err.value)


async def test_bad_lines_are_bad_data(influx, influx_db: str) -> None:
    async with client_for(influx) as client:
        with pytest.raises(BadDataError) as err:
            await client.write(influx_db, b"this is not line protocol")
        assert err.value.status == 400
        assert "unable to parse" in (err.value.body or "")
        await client.write(influx_db, b"m f=1.0 1")
        with pytest.raises(BadDataError) as conflict:
            await client.write(influx_db, b'm f="text" 2')
    assert "field type conflict" in (conflict.value.body or "")


async def test_request_errors_are_not_bad_data(influx) -> None:
    """A 400 that is about the request, not the lines, must not make the writer bisect."""
    async with client_for(influx) as client:
        with pytest.raises(InfluxError) as err:
            await client.write("", b"m f=1.0 1")  # 400 "database is required"
        assert type(err.value) is InfluxError
        assert err.value.status == 400
        with pytest.raises(InfluxError) as syntax:
            await client.query("SELEC nonsense")
        assert type(syntax.value) is InfluxError
        with pytest.raises(ValueError, match="precision"):
            await client.write("x", b"m f=1.0 1", precision="xx")


async def test_statement_errors_raise(influx, influx_db: str) -> None:
    async with client_for(influx) as client:
        with pytest.raises(InfluxError, match="retention policy not found"):
            await client.query(f'SELECT * FROM "{influx_db}"."nope"."m"', db=influx_db)
        await client.execute(
            f'CREATE RETENTION POLICY "short" ON "{influx_db}" DURATION 2h REPLICATION 1'
        )
        with pytest.raises(InfluxError, match="already exists"):
            await client.execute(
                f'CREATE RETENTION POLICY "short" ON "{influx_db}" DURATION 3h REPLICATION 1'
            )


async def test_closed_port_is_retryable(influx) -> None:
    port = free_port()
    async with InfluxClient(f"http://127.0.0.1:{port}", timeout_s=2) as client:
        assert await client.ping() is None
        with pytest.raises(RetryableError) as err:
            await client.write("db", b"m f=1.0 1")
    assert err.value.status is None
    assert err.value.retry_after is None


async def test_from_settings_and_url_credentials(influx, influx_db: str) -> None:
    settings = InfluxSettings(
        url=influx.url,
        username=influx.creds.username,
        password=SecretStr(influx.creds.password),
        timeout_s=5,
    )
    async with InfluxClient.from_settings(settings) as client:
        await client.write(influx_db, b"m f=1.0 1")
        assert influx.creds.password not in repr(client)
    host = influx.url.removeprefix("http://")
    url = f"http://{influx.creds.username}:{influx.creds.password}@{host}"
    async with InfluxClient(url) as client:
        assert influx.creds.password not in client.url
        await client.write(influx_db, b"m f=2.0 2")
    assert influx.count(influx_db, "m", "f") == 2


# --- a real stub server for answers 1.x does not give -----------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stub:
    """A real aiohttp.web server on a free loopback port; each test sets ``handler``."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.seen: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        await request.read()
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    state = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def answer(status: int, body: str = "", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, text=body, headers=headers, content_type="application/json"
        )

    return handler


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        (503, '{"error":"unavailable"}', {"Retry-After": "7"}, RetryableError, 7.0),
        (500, '{"error":"engine: cache-max-memory-size exceeded"}', {}, RetryableError, None),
        (
            429,
            '{"code":"too many requests","message":"slow down"}',
            {"Retry-After": "1"},
            RetryableError,
            1.0,
        ),
        (413, '{"error":"Request Entity Too Large"}', {}, TooLargeError, None),
        (
            422,
            '{"code":"unprocessable entity","message":"partial write: points beyond retention '
            'policy dropped=1"}',
            {},
            BadDataError,
            None,
        ),
        (
            400,
            '{"error":"parsing failed for write_lp endpoint","data":[{"line_number":2}]}',
            {},
            BadDataError,
            None,
        ),
        (
            404,
            '{"code":"not found","message":"bucket \\"x\\" not found"}',
            {},
            DatabaseNotFoundError,
            None,
        ),
        (404, "404 page not found", {}, InfluxError, None),
        (401, '{"code":"unauthorized","message":"unauthorized access"}', {}, AuthError, None),
    ],
)
async def test_status_classification(
    stub: Stub, status: int, body: str, headers: dict, kind: type, retry_after: float | None
) -> None:
    stub.handler = answer(status, body, headers)
    async with InfluxClient(stub.url, token="tok-secret") as client:
        with pytest.raises(InfluxError) as err:
            await client.write("db", b"m f=1.0 1")
    assert type(err.value) is kind
    assert err.value.status == status
    if kind is RetryableError:
        assert err.value.retry_after == retry_after
    assert "tok-secret" not in str(err.value)


async def test_retry_after_http_date(stub: Stub) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    stub.handler = answer(503, "", {"Retry-After": format_datetime(when, usegmt=True)})
    async with InfluxClient(stub.url) as client:
        with pytest.raises(RetryableError) as err:
            await client.write("db", b"m f=1.0 1")
    assert err.value.retry_after is not None
    assert 25 <= err.value.retry_after <= 31


async def test_timeout_is_retryable(stub: Stub) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return web.Response(status=204)

    stub.handler = slow
    async with InfluxClient(stub.url, timeout_s=0.1) as client:
        with pytest.raises(RetryableError, match="no answer within"):
            await client.write("db", b"m f=1.0 1")


async def test_dropped_connection_is_retryable(stub: Stub) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=204)

    stub.handler = drop
    async with InfluxClient(stub.url) as client:
        with pytest.raises(RetryableError):
            await client.write("db", b"m f=1.0 1")


async def test_auth_headers_and_ping_version(stub: Stub) -> None:
    stub.handler = answer(204, "", {"X-Influxdb-Version": "v2.7.4"})
    async with InfluxClient(stub.url, token="tok-123") as client:
        assert await client.ping() == "v2.7.4"
        await client.write("db", b"m f=1.0 1", rp="raw", precision="s")
        assert "tok-123" not in repr(client)
    async with InfluxClient(stub.url, username="u", password="p") as client:
        await client.ping()
    assert stub.seen[0]["Authorization"] == "Token tok-123"
    assert stub.seen[1]["Authorization"] == "Token tok-123"
    assert stub.seen[2]["Authorization"] == "Basic dTpw"  # base64("u:p")


async def test_query_non_json_is_an_error(stub: Stub) -> None:
    stub.handler = answer(200, "not json")
    async with InfluxClient(stub.url) as client:
        with pytest.raises(InfluxError, match="non-JSON"):
            await client.query("SHOW DATABASES")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("1", 1.0),
        ("  120 ", 120.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: retry now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),  # with now = 60 s earlier, see below
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    past = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    now = past - 60 if expected == 60.0 else None
    assert parse_retry_after(header, now=now) == expected
