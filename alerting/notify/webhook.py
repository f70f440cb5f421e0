"""Webhooks: the notification's JSON POSTed to a URL, signed with HMAC-SHA256.

The signature covers ``"<timestamp>." + raw body`` with the endpoint's secret; the timestamp
travels in its own header, so a receiver that rejects old timestamps cannot be fed a captured
request again later (replay), and one that checks the signature knows the body came from us
unaltered. Each retry is signed afresh with a new timestamp. See docs/notifications.md for the
receiver's recipe (:func:`verify_signature` is that recipe).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp
import orjson

from alerting.notify.channel import Channel, PermanentError, RetryableError
from alerting.notify.notification import Notification, Recipient
from alerting.notify.render import payload
from alerting.notify.settings import WebhookEndpoint, WebhookSettings

SIGNATURE_HEADER = "X-Weijian-Signature"
TIMESTAMP_HEADER = "X-Weijian-Timestamp"
DELIVERY_HEADER = "X-Weijian-Delivery"  # the notification id: de-duplicate retries on it
EVENT_HEADER = "X-Weijian-Event"
DEFAULT_TOLERANCE_S = 300.0
RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RESPONSE_BYTES = 64 * 1024


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC of ``timestamp + "." + body``."""
    mac = hmac.new(_key(secret), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time,
    and refuse a timestamp more than ``tolerance_s`` away from its own clock."""
    if not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: rare from webhook receivers; our back-off applies


class WebhookChannel(Channel):
    name = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        links: Mapping[str, str] | None = None,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings.min_severity)
        self.settings = settings
        self.links = dict(links or {})
        self._time = time_source  # real time: receivers compare it to theirs
        self._session: aiohttp.ClientSession | None = None
        # exact URLs first, then prefixes, longest first: the most specific secret wins
        self._exact = {e.url: e for e in settings.endpoints if not e.url.endswith("/")}
        self._prefixes = sorted(
            (e for e in settings.endpoints if e.url.endswith("/")),
            key=lambda e: len(e.url),
            reverse=True,
        )

    def endpoint_for(self, url: str) -> WebhookEndpoint | None:
        if url in self._exact:
            return self._exact[url]
        return next((e for e in self._prefixes if url.startswith(e.url)), None)

    def secret_for(self, url: str) -> str | None:
        endpoint = self.endpoint_for(url)
        if endpoint is not None:
            return endpoint.secret.get_secret_value()
        default = self.settings.default_secret
        return default.get_secret_value() if default is not None else None

    def broadcast_recipients(self, notification: Notification) -> Sequence[Recipient]:
        return [Recipient(self.name, e.url) for e in self.settings.endpoints if e.broadcast]

    async def start(self) -> None:
        self._ensure_session()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                headers={"User-Agent": "weijian-notify/1"},
            )
        return self._session

    def build_request(self, notification: Notification, url: str) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers that will be sent (public for tests and tooling)."""
        secret = self.secret_for(url)
        if secret is None:
            raise PermanentError(
                "no signing secret for this webhook (add it to notify.webhook.endpoints "
                "or set notify.webhook.default_secret)"
            )
        body = orjson.dumps(payload(notification, self.links))
        timestamp = str(int(self._time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            DELIVERY_HEADER: notification.id,
            EVENT_HEADER: str(notification.kind),
        }
        return body, headers

    async def send(self, notification: Notification, recipient: Recipient) -> None:
        body, headers = self.build_request(notification, recipient.address)
        session = self._ensure_session()
        try:
            async with session.post(
                recipient.address, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(MAX_RESPONSE_BYTES)  # let the connection be reused
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except aiohttp.InvalidURL as exc:
            raise PermanentError(f"invalid webhook URL: {exc}") from exc
        except TimeoutError as exc:
            raise RetryableError(f"no answer within {self.settings.timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {status}", retry_after=retry_after)
        raise PermanentError(f"HTTP {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
