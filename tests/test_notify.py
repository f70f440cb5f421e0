"""Notification: real receivers for every channel, and the dispatcher's timing on a manual clock.

Webhooks and the SMS gateway go to a real local HTTP server, e-mail to a real aiosmtpd server
(STARTTLS and AUTH included), MQTT to the session's real Mosquitto. Grouping, repeats and
escalation run on a ManualClock, so an hour passes in one call.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from pydantic import SecretStr

from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from alerting.notify import (
    Dispatcher,
    EmailChannel,
    EmailSettings,
    ManualClock,
    MqttAlertChannel,
    MqttAlertSettings,
    Notification,
    NotificationKind,
    NotifySettings,
    Officer,
    PermanentError,
    Recipient,
    RetryableError,
    Router,
    SmsChannel,
    SmsHttpSettings,
    WebhookChannel,
    WebhookEndpoint,
    WebhookSettings,
    region_chain,
    rule_family,
    static_lookup,
    verify_signature,
)
from alerting.notify.testing import HANG, RecordingHttpServer
from weijian.stack.mosquitto import LocalMosquitto

SECRET = "s3cret-for-tests"
COUNTY, CITY, PROVINCE = "330102", "330100", "330000"

# ---- helpers ------------------------------------------------------------------------------------


def make_alert(
    n: int = 0,
    *,
    site: str = "site-1",
    region: str = COUNTY,
    rule: str = "gb5749.turbidity.outlet",
    severity: Severity = Severity.CRITICAL,
    state: AlertState = AlertState.FIRING,
) -> Alert:
    return Alert(
        id=uuid.uuid4().hex,
        key=AlertKey(f"dev-{n}", rule),
        severity=severity,
        state=state,
        tenant="plant-a",
        site=site,
        region=region,
        kind="water_probe",
        quantity="turbidity",
        message=f"浊度 {1.5 + n} NTU 超过限值 1 NTU (dev-{n})",
        value=1.5 + n,
        limit=1.0,
        standard="GB 5749-2022 表1",
        labels={"site_name": "水厂A"},
    )


def move(dispatcher: Dispatcher, alert: Alert, to: AlertState, **changes: Any) -> None:
    """Change the alert's state as the engine would, and submit the transition."""
    before = alert.state
    alert.state = to
    for name, value in changes.items():
        setattr(alert, name, value)
    now = dispatcher.clock.now()
    if to is AlertState.FIRING and alert.fired_at is None:
        alert.fired_at = now
    if to is AlertState.RESOLVED:
        alert.resolved_at = now
    t = Transition(alert.id, alert.key, now, before, to, alert.severity)
    dispatcher.submit(t, alert)


async def until(condition: Callable[[], bool], within: float = 5.0, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message or "condition not met in time"
        await asyncio.sleep(0.005)


async def settle(clock: ManualClock, seconds: float, dispatcher: Dispatcher) -> None:
    """Let submitted transitions be planned, advance the clock, let lanes send."""
    await until(lambda: not dispatcher._inbox)
    await asyncio.sleep(0)
    clock.advance(seconds)
    await until(lambda: dispatcher.queued == 0, message="deliveries still pending")


def bodies(server: RecordingHttpServer, path: str | None = None) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in server.requests if path is None or r.path == path]


def webhook_settings(server: RecordingHttpServer, **kw: Any) -> WebhookSettings:
    return WebhookSettings(
        endpoints=[WebhookEndpoint(url=server.url + "/", secret=SECRET)], timeout_s=5, **kw
    )


def officers(url: str) -> dict[str, list[dict[str, Any]]]:
    """County, city and province officers, each with a webhook at their own path."""
    return {
        COUNTY: [
            {
                "name": "张三",
                "role": "county",
                "channels": [{"type": "webhook", "address": url + "/county"}],
            }
        ],
        CITY: [
            {
                "name": "李四",
                "role": "city",
                "channels": [{"type": "webhook", "address": url + "/city"}],
            }
        ],
        PROVINCE: [
            {
                "name": "王五",
                "role": "province",
                "channels": [{"type": "webhook", "address": url + "/province"}],
            }
        ],
    }


def notification_for(
    alerts: list[Alert], kind: NotificationKind = NotificationKind.FIRING
) -> Notification:
    first = alerts[0]
    return Notification(
        id=uuid.uuid4().hex,
        kind=kind,
        alerts=tuple(alerts),
        group=f"{first.tenant}/{first.site}/gb5749",
        tenant=first.tenant,
        site=first.site,
        region=first.region,
        escalation_level=0,
        created_at=ManualClock().now(),
    )


@pytest.fixture
async def http() -> AsyncIterator[RecordingHttpServer]:
    async with RecordingHttpServer() as server:
        yield server


# ---- routing ------------------------------------------------------------------------------------


def test_region_chain_and_rule_family() -> None:
    assert region_chain("330102") == ["330102", "330100", "330000"]
    assert region_chain("330100") == ["330100", "330000"]
    assert region_chain("330000") == ["330000"]
    assert region_chain("x") == ["x"]
    assert rule_family("anomaly:spike:turbidity") == "anomaly"
    assert rule_family("gb5749.turbidity.outlet") == "gb5749"
    assert rule_family("nodata") == "nodata"


def test_router_falls_back_to_city_and_filters_by_severity() -> None:
    lookup = static_lookup(
        {
            COUNTY: [],  # a county without officers: its city hears first
            CITY: [
                {
                    "name": "李四",
                    "channels": [
                        {"type": "email", "address": "li@example.cn"},
                        {"type": "sms", "address": "13800138000"},
                        {"type": "fax", "address": "n/a"},  # unknown types are ignored
                    ],
                },
                {"channels": []},  # malformed (no name): skipped, not fatal
            ],
            PROVINCE: [Officer("王五", channels=())],  # no contacts: not a tier
        }
    )
    router = Router(lookup)
    floors = {"email": Severity.INFO, "sms": Severity.CRITICAL}
    warning = router.recipients(COUNTY, Severity.WARNING, 0, floors)
    assert [(r.channel, r.address, r.region) for r in warning] == [("email", "li@example.cn", CITY)]
    critical = router.recipients(COUNTY, Severity.CRITICAL, 0, floors)
    assert {r.channel for r in critical} == {"email", "sms"}
    assert router.max_level(COUNTY) == 1  # city, then the province (王五 is an officer)
    assert critical[1].display() == "李四 <138****8000>"  # phone numbers masked in logs


# ---- channels against real servers --------------------------------------------------------------


async def test_webhook_is_signed_and_verifiable(http: RecordingHttpServer) -> None:
    channel = WebhookChannel(
        webhook_settings(http), links={"alert": "https://wj.example/a/{alert_id}"}
    )
    alerts = [make_alert(0), make_alert(1)]
    try:
        await channel.send(notification_for(alerts), Recipient("webhook", http.url + "/hook?t=1"))
    finally:
        await channel.aclose()
    (req,) = http.requests
    ts, sig = req.headers["X-Weijian-Timestamp"], req.headers["X-Weijian-Signature"]
    assert sig.startswith("sha256=")
    assert verify_signature(SECRET, req.body, ts, sig)
    tampered = req.body.replace(b"turbidity", b"turbidit\xc3\xa9")
    assert not verify_signature(SECRET, tampered, ts, sig)
    assert not verify_signature("wrong-secret", req.body, ts, sig)
    assert not verify_signature(SECRET, req.body, str(int(ts) - 1), sig)  # timestamp is signed
    assert not verify_signature(SECRET, req.body, ts, sig, now=int(ts) + 3600)  # replay
    doc = orjson.loads(req.body)
    assert doc["event"] == "firing"
    assert doc["severity"] == "critical"
    assert doc["site"] == "site-1"
    assert doc["region"] == COUNTY
    assert [a["device"] for a in doc["alerts"]] == ["dev-0", "dev-1"]
    assert doc["alerts"][0]["links"]["alert"] == f"https://wj.example/a/{alerts[0].id}"
    assert req.headers["X-Weijian-Delivery"] == doc["id"]


async def test_webhook_without_a_secret_is_refused_not_sent_unsigned(
    http: RecordingHttpServer,
) -> None:
    channel = WebhookChannel(WebhookSettings())
    try:
        with pytest.raises(PermanentError, match="secret"):
            await channel.send(notification_for([make_alert()]), Recipient("webhook", http.url))
    finally:
        await channel.aclose()
    assert http.requests == []


class _Mailbox:
    """aiosmtpd handler: keeps what arrives; refuses RCPT to refuse-*@ addresses."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refuse-perm"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("refuse-temp"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("smtp-tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def smtp_server(tls_files: tuple[Path, Path]) -> AsyncIterator[tuple[_Mailbox, int]]:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = _Mailbox()

    def authenticate(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"wj", b"pw")
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            mailbox,
            hostname="localhost",
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_required=True,
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    yield mailbox, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_email_over_starttls_with_auth(
    smtp_server: tuple[_Mailbox, int], tls_files: tuple[Path, Path]
) -> None:
    mailbox, port = smtp_server
    settings = EmailSettings(
        host="127.0.0.1",
        port=port,
        security="starttls",
        username="wj",
        password="pw",
        sender="alerts@weijian.example",
        ca_file=str(tls_files[0]),
        timeout_s=5,
    )
    channel = EmailChannel(settings)
    alerts = [make_alert(0), make_alert(1)]
    try:
        await channel.send(notification_for(alerts), Recipient("email", "zhang@example.cn", "张三"))
        with pytest.raises(PermanentError, match="550"):
            await channel.send(notification_for(alerts), Recipient("email", "refuse-perm@x.cn"))
        with pytest.raises(RetryableError, match="451"):
            await channel.send(notification_for(alerts), Recipient("email", "refuse-temp@x.cn"))
        bad = EmailChannel(settings.model_copy(update={"password": SecretStr("nope")}))
        with pytest.raises(PermanentError, match="535"):
            await bad.send(notification_for(alerts), Recipient("email", "zhang@example.cn"))
        await bad.aclose()
    finally:
        await channel.aclose()
    ((sender, rcpts, raw),) = mailbox.messages
    assert sender == "alerts@weijian.example"
    assert rcpts == ["zhang@example.cn"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "CRITICAL" in msg["Subject"]
    assert "水厂A" in msg["Subject"]
    assert "gb5749.turbidity.outlet" in msg["Subject"]
    assert "+1 more" in msg["Subject"]
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "dev-0" in plain
    assert "dev-1" in plain
    assert "GB 5749-2022" in plain
    assert "<li>" in html


async def test_email_server_down_is_retryable() -> None:
    channel = EmailChannel(EmailSettings(host="127.0.0.1", port=1, security="none", timeout_s=2))
    try:
        with pytest.raises(RetryableError):
            await channel.send(notification_for([make_alert()]), Recipient("email", "a@b.cn"))
    finally:
        await channel.aclose()


@pytest.fixture
def mqtt_subscriber(mosquitto: LocalMosquitto) -> Iterator[list[tuple[str, bytes]]]:
    account = mosquitto.ensure_account(LocalMosquitto.COLLECTOR_USER)
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(account.username, account.password)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(
        f"{mosquitto.topic_prefix}/_system/alerts/#", qos=1
    )
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    assert subscribed.wait(5), "subscriber not ready"
    yield got
    client.disconnect()
    client.loop_stop()


async def test_mqtt_alert_topic(mosquitto: LocalMosquitto, mqtt_subscriber: list) -> None:
    account = mosquitto.ensure_account(LocalMosquitto.COLLECTOR_USER)
    settings = MqttAlertSettings(
        port=mosquitto.port,
        username=account.username,
        password=account.password,
        topic_prefix=mosquitto.topic_prefix,
    )
    channel = MqttAlertChannel(settings)
    denied = MqttAlertChannel(
        settings.model_copy(update={"topic_template": "{prefix}/_alerts/{region}/{severity}"})
    )
    try:
        await channel.start()
        await denied.start()
        await asyncio.wait_for(channel.connected.wait(), 5)
        await asyncio.wait_for(denied.connected.wait(), 5)
        n = notification_for([make_alert(severity=Severity.EMERGENCY)])
        (recipient,) = channel.broadcast_recipients(n)
        assert recipient.address == f"{mosquitto.topic_prefix}/_system/alerts/{COUNTY}/emergency"
        await channel.send(n, recipient)
        await until(lambda: len(mqtt_subscriber) == 1)
        topic, body = mqtt_subscriber[0]
        assert topic == recipient.address
        assert orjson.loads(body)["alerts"][0]["severity"] == "emergency"
        # Through the dispatcher: a broadcast sink hears even where no officer is registered.
        nobody = static_lookup({})
        async with Dispatcher(NotifySettings(group_wait_s=0), Router(nobody), [channel]) as d:
            move(d, make_alert(region="440305", severity=Severity.WARNING), AlertState.FIRING)
            await until(lambda: len(mqtt_subscriber) == 2)
        assert mqtt_subscriber[1][0].endswith("/_system/alerts/440305/warning")
        assert d.stats.unroutable == 0
        # Outside _system/ the platform's account has no grant: the broker says so (PUBACK 0x87).
        with pytest.raises(PermanentError, match="refused"):
            await denied.send(n, denied.broadcast_recipients(n)[0])
    finally:
        await channel.aclose()
        await denied.aclose()


async def test_sms_gateway_posts_the_template(http: RecordingHttpServer) -> None:
    settings = SmsHttpSettings(
        url=http.url + "/sms/send",
        headers={"X-Api-Key": "k-123"},
        body_template={"mobile": "{phone}", "content": "{text}", "ext": {"ref": "{reference}"}},
        success_field="result.code",
        success_values=["0"],
        prefix="【卫监】",
        max_chars=70,
    )
    http.response_body = b'{"result": {"code": 0}}'
    channel = SmsChannel.from_settings(settings)
    n = notification_for([make_alert(i) for i in range(3)])
    try:
        await channel.send(n, Recipient("sms", "13800138000"))
        http.response_body = b'{"result": {"code": 4085, "msg": "daily limit"}}'
        with pytest.raises(PermanentError, match="4085"):
            await channel.send(n, Recipient("sms", "13800138000"))
    finally:
        await channel.aclose()
    req = http.requests[0]
    assert req.method == "POST"
    assert req.path == "/sms/send"
    assert req.headers["X-Api-Key"] == "k-123"
    body = orjson.loads(req.body)
    assert body["mobile"] == "13800138000"
    assert body["ext"] == {"ref": n.id}
    assert body["content"].startswith("【卫监】严重告警 水厂A")
    assert "等3条" in body["content"]
    assert len(body["content"]) <= 70


# ---- the dispatcher -----------------------------------------------------------------------------


def _dispatcher(
    server: RecordingHttpServer,
    clock: ManualClock | None = None,
    lookup: Any = None,
    channels: list | None = None,
    **settings: Any,
) -> Dispatcher:
    s = NotifySettings(
        webhook=webhook_settings(server),
        **{"group_wait_s": 1.0, "group_interval_s": 60.0, "drain_timeout_s": 1.0, **settings},
    )
    chans = channels if channels is not None else [WebhookChannel(s.webhook)]
    return Dispatcher(s, Router(lookup or static_lookup(officers(server.url))), chans, clock=clock)


async def test_grouping_merges_a_sites_alerts(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock) as d:
        burst = [make_alert(i) for i in range(5)]
        other_site = make_alert(9, site="site-2")
        other_family = make_alert(8, rule="nodata")
        for a in [*burst, other_site, other_family]:
            move(d, a, AlertState.FIRING)
        await settle(clock, 1.0, d)
        docs = bodies(http, "/county")
        assert len(docs) == 3
        merged = next(doc for doc in docs if len(doc["alerts"]) == 5)
        assert merged["group"] == "plant-a/site-1/gb5749"
        assert {a["id"] for a in merged["alerts"]} == {a.id for a in burst}
        # Late arrivals within the group interval wait for it, then go out together.
        late = [make_alert(i) for i in (5, 6)]
        for a in late:
            move(d, a, AlertState.FIRING)
        await settle(clock, 30.0, d)
        assert len(http.requests) == 3
        await settle(clock, 30.0, d)
        assert len(http.requests) == 4
        assert {a["id"] for a in bodies(http)[-1]["alerts"]} == {a.id for a in late}
        assert d.stats.notifications["firing"] == 4


async def test_resolved_only_for_alerts_that_fired(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock, notify_on_ack=True) as d:
        flapping = make_alert(0)
        move(d, flapping, AlertState.FIRING)
        move(d, flapping, AlertState.RESOLVED)  # cleared before the group went out
        real = make_alert(1, rule="nodata")
        move(d, real, AlertState.FIRING)
        await settle(clock, 1.0, d)
        assert [(b["event"], b["alerts"][0]["device"]) for b in bodies(http)] == [
            ("firing", "dev-1")
        ]
        move(d, real, AlertState.ACKNOWLEDGED, acknowledged_by="张三", ack_comment="去现场")
        await settle(clock, 61.0, d)
        move(d, real, AlertState.RESOLVED)
        await settle(clock, 61.0, d)
        events = [b["event"] for b in bodies(http)]
        assert events == ["firing", "acknowledged", "resolved"]
        assert bodies(http)[1]["alerts"][0]["acknowledged_by"] == "张三"


async def test_repeat_while_firing_stops_on_ack(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock, repeat_interval_s=600, escalate_after_s=None) as d:
        alert = make_alert()
        move(d, alert, AlertState.FIRING)
        await settle(clock, 1.0, d)
        for _ in range(2):  # a repeat, too, waits group_wait_s for others of its group
            await settle(clock, 600.0 + 1.0, d)
        assert [b["event"] for b in bodies(http)] == ["firing", "repeat", "repeat"]
        move(d, alert, AlertState.ACKNOWLEDGED, acknowledged_by="张三")
        await settle(clock, 3 * 3600.0, d)
        assert len(http.requests) == 3


async def test_escalation_to_city_then_province(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    updates: list[Alert] = []
    async with _dispatcher(http, clock, repeat_interval_s=None, escalate_after_s=1800) as d:
        d.on_alert_update = updates.append
        alert = make_alert()
        move(d, alert, AlertState.FIRING)
        await settle(clock, 1.0, d)
        assert [r.path for r in http.requests] == ["/county"]
        await settle(clock, 1799.0, d)
        assert len(http.requests) == 1  # not yet
        await settle(clock, 1.0 + 1.0, d)  # the deadline, then group_wait_s
        escalated = http.requests[1:]
        assert sorted(r.path for r in escalated) == ["/city", "/county"]
        doc = orjson.loads(escalated[0].body)
        assert doc["event"] == "escalation"
        assert doc["escalation_level"] == 1
        assert doc["alerts"][0]["escalation_level"] == 1
        assert [u.escalation_level for u in updates] == [0, 1]  # notified_at, then level 1
        assert updates[0].notified_at is not None
        await settle(clock, 1800.0, d)
        assert sorted(r.path for r in http.requests[3:]) == ["/city", "/county", "/province"]
        assert d.stats.escalations == 2
        await settle(clock, 3600.0, d)  # the province is the top: nothing more
        assert len(http.requests) == 6
        move(d, alert, AlertState.RESOLVED)
        await settle(clock, 60.0, d)
        resolved = [r.path for r in http.requests[6:]]
        assert sorted(resolved) == ["/city", "/county", "/province"]  # all who were told


async def test_severity_rise_is_announced_even_when_acknowledged(
    http: RecordingHttpServer,
) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock, repeat_interval_s=600, escalate_after_s=None) as d:
        alert = make_alert(severity=Severity.WARNING)
        move(d, alert, AlertState.FIRING)
        await settle(clock, 1.0, d)
        move(d, alert, AlertState.ACKNOWLEDGED, acknowledged_by="张三")
        # the engine's severity change: from_state == to_state
        alert.severity = Severity.EMERGENCY
        t = Transition(alert.id, alert.key, clock.now(), alert.state, alert.state, alert.severity)
        d.submit(t, alert)
        await settle(clock, 61.0, d)
        assert [(b["event"], b["severity"]) for b in bodies(http)] == [
            ("firing", "warning"),
            ("firing", "emergency"),
        ]
        await settle(clock, 3600.0, d)  # still acknowledged: no reminders
        assert len(http.requests) == 2


async def test_escalation_stops_when_acknowledged(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock, repeat_interval_s=None, escalate_after_s=1800) as d:
        alert = make_alert()
        move(d, alert, AlertState.FIRING)
        await settle(clock, 1.0, d)
        move(d, alert, AlertState.ACKNOWLEDGED, acknowledged_by="张三")
        await settle(clock, 7200.0, d)
        assert [r.path for r in http.requests] == ["/county"]
        assert d.stats.escalations == 0


async def test_failing_channel_is_retried_and_delivered_once() -> None:
    async with RecordingHttpServer(statuses=[500, 503]) as server:
        async with _dispatcher(server, group_wait_s=0, retry_base_s=0.02, retry_cap_s=0.05) as d:
            move(d, make_alert(), AlertState.FIRING)
            await until(lambda: d.stats.delivery_count("delivered") == 1)
            await asyncio.sleep(0.2)
        assert [r.status for r in server.requests] == [500, 503, 200]
        assert d.stats.delivery_count("retry", "webhook") == 2
        assert d.stats.delivery_count("delivered", "webhook") == 1
        assert len({r.headers["X-Weijian-Delivery"] for r in server.requests}) == 1


async def test_client_error_is_not_retried() -> None:
    async with RecordingHttpServer(statuses=[404]) as server:
        async with _dispatcher(server, group_wait_s=0, retry_base_s=0.01) as d:
            move(d, make_alert(), AlertState.FIRING)
            await until(lambda: d.stats.delivery_count("failed") == 1)
            await asyncio.sleep(0.1)
        assert len(server.requests) == 1


async def test_hanging_channel_blocks_neither_others_nor_submit() -> None:
    async with (
        RecordingHttpServer(default_status=HANG) as hook,
        RecordingHttpServer(response_body=b"{}") as sms,
    ):
        lookup = static_lookup(
            {
                COUNTY: [
                    {
                        "name": "张三",
                        "channels": [
                            {"type": "webhook", "address": hook.url + "/county"},
                            {"type": "sms", "address": "13800138000"},
                        ],
                    }
                ]
            }
        )
        s = NotifySettings(
            webhook=WebhookSettings(default_secret=SECRET, timeout_s=30),
            sms=SmsHttpSettings(url=sms.url + "/send"),
            group_wait_s=0,
            drain_timeout_s=0.2,
        )
        d = Dispatcher.from_settings(s, lookup)
        async with d:
            move(d, make_alert(0), AlertState.FIRING)
            await until(lambda: len(sms.requests) == 1, 3, "SMS waited for the hung webhook")
            assert len(hook.requests) == 1
            assert d.stats.delivery_count("delivered", "webhook") == 0
            # The engine's side: submitting stays O(1) while a delivery hangs.
            alerts = [make_alert(i, site=f"other-{i}") for i in range(50)]
            t = Transition(
                "x", alerts[0].key, d.clock.now(), None, AlertState.FIRING, Severity.CRITICAL
            )
            worst = 0.0
            for a in alerts:
                start = time.perf_counter()
                d.submit(t, a)
                worst = max(worst, time.perf_counter() - start)
            assert worst < 0.001, f"submit took {worst * 1e3:.2f} ms"
            await until(lambda: len(sms.requests) == 51, 5)
        assert d.stats.delivery_count("abandoned", "webhook") >= 1


async def test_submit_queue_overflow_drops_oldest(http: RecordingHttpServer) -> None:
    clock = ManualClock()
    async with _dispatcher(http, clock, queue_size=3) as d:
        alerts = [make_alert(i) for i in range(6)]
        for a in alerts:  # no await in between: the planner can't run
            move(d, a, AlertState.FIRING)
        assert d.stats.dropped == 3
        await settle(clock, 1.0, d)
        (doc,) = bodies(http)
        assert {a["id"] for a in doc["alerts"]} == {a.id for a in alerts[3:]}


async def test_lane_overflow_drops_oldest() -> None:
    async with RecordingHttpServer(default_status=HANG) as server:
        d = _dispatcher(server, group_wait_s=0, lane_queue_size=2, drain_timeout_s=0.1)
        async with d:
            for i in range(4):  # different sites: four messages for the same recipient
                move(d, make_alert(i, site=f"site-{i}"), AlertState.FIRING)
                await until(lambda i=i: d.stats.delivery_count("queued") == i + 1)
            await until(lambda: len(server.requests) == 1)
            assert d.stats.delivery_count("dropped", "webhook") == 1  # site-1's, the oldest queued
        assert d.stats.delivery_count("abandoned", "webhook") == 3  # 1 in flight + 2 queued


def test_officers_as_the_gateway_validates_them() -> None:
    """The registry's officer JSON (gateway/schemas.py) is what the lookup parses."""
    from gateway.schemas import JurisdictionCreate

    j = JurisdictionCreate(
        region_code=COUNTY,
        name="上城区",
        officers=[
            {
                "name": "张三",
                "role": "inspector",
                "channels": [
                    {"type": "email", "address": "zhang@example.cn"},
                    {"type": "sms", "address": "+8613800138000"},
                    {"type": "webhook", "address": "https://hooks.example.cn/wj"},
                ],
            }
        ],
    )
    lookup = static_lookup({j.region_code: j.model_dump()["officers"]})
    floors = {"email": Severity.INFO, "sms": Severity.INFO, "webhook": Severity.INFO}
    got = Router(lookup).recipients(COUNTY, Severity.WARNING, 0, floors)
    assert [(r.channel, r.name) for r in got] == [
        ("email", "张三"),
        ("sms", "张三"),
        ("webhook", "张三"),
    ]


def test_settings_parse_severities_and_check_link_templates() -> None:
    from pydantic import ValidationError

    s = NotifySettings.model_validate(
        {"sms": {"url": "http://x/", "min_severity": "emergency"}, "webhook": {"min_severity": 2}}
    )
    assert s.sms is not None
    assert s.sms.min_severity is Severity.EMERGENCY
    assert s.webhook is not None
    assert s.webhook.min_severity is Severity.WARNING
    with pytest.raises(ValidationError, match="not a severity"):
        NotifySettings.model_validate({"webhook": {"min_severity": "loud"}})
    with pytest.raises(ValidationError, match=r"links\.alert"):
        NotifySettings(links={"alert": "https://x/{alert}"})
