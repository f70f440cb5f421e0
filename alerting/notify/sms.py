"""SMS through a gateway: a small protocol, a generic HTTP implementation, and the channel.

Chinese SMS providers and in-house SMS platforms are nearly all HTTP APIs, but each wants its
own body. ``HttpSmsGateway`` covers the plain ones from settings alone (URL, headers, a JSON or
form body template, an optional success code in the answer); a provider that needs signed
requests gets its own small ``SmsGateway`` class, and the channel stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from alerting.model import Severity
from alerting.notify.channel import Channel, PermanentError, RetryableError
from alerting.notify.notification import Notification, Recipient
from alerting.notify.render import sms_text
from alerting.notify.settings import SmsHttpSettings

RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RESPONSE_BYTES = 64 * 1024


class SmsGateway(Protocol):
    async def send_sms(self, phone: str, text: str, *, severity: str, reference: str) -> None:
        """Hand one text to the provider; raise ``RetryableError`` / ``PermanentError``."""
        ...

    async def aclose(self) -> None: ...


def fill_template(template: Any, values: Mapping[str, str]) -> Any:
    """Replace ``{name}`` placeholders in every string of a JSON-like template.

    Plain replacement, not ``str.format``: templates are often JSON-ish and full of braces,
    and a text containing ``{`` must not be interpreted.
    """
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template
    if isinstance(template, Mapping):
        return {k: fill_template(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_template(v, values) for v in template]
    return template


def _dig(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, Mapping) or part not in document:
            return None
        document = document[part]
    return document


class HttpSmsGateway:
    def __init__(self, settings: SmsHttpSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
            )
        return self._session

    async def send_sms(self, phone: str, text: str, *, severity: str, reference: str) -> None:
        s = self.settings
        values = {"phone": phone, "text": text, "severity": severity, "reference": reference}
        body = fill_template(s.body_template, values)
        headers = {k: v.get_secret_value() for k, v in s.headers.items()}
        kwargs: dict[str, Any] = {"json": body} if s.body_format == "json" else {"data": body}
        try:
            async with self._ensure_session().request(
                s.method, s.url, headers=headers, allow_redirects=False, **kwargs
            ) as response:
                raw = await response.content.read(MAX_RESPONSE_BYTES)
                status = response.status
        except aiohttp.InvalidURL as exc:
            raise PermanentError(f"invalid SMS gateway URL: {exc}") from exc
        except TimeoutError as exc:
            raise RetryableError(f"SMS gateway: no answer within {s.timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"SMS gateway: {type(exc).__name__}: {exc}") from exc
        if status >= 500 or status in RETRYABLE_STATUS:
            raise RetryableError(f"SMS gateway: HTTP {status}")
        if not 200 <= status < 300:
            raise PermanentError(f"SMS gateway: HTTP {status}")
        if s.success_field:
            try:
                code = _dig(orjson.loads(raw), s.success_field)
            except orjson.JSONDecodeError:
                code = None
            if code is None or str(code) not in s.success_values:
                # Provider codes mix "bad number" with "rate limited"; re-sending a text to an
                # officer risks spam, so this is final (and logged with the provider's answer).
                raise PermanentError(f"SMS gateway refused: {raw[:200].decode(errors='replace')}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SmsChannel(Channel):
    name = "sms"

    def __init__(
        self,
        gateway: SmsGateway,
        *,
        min_severity: Severity = Severity.CRITICAL,
        prefix: str = "",
        max_chars: int = 300,
        links: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(min_severity)
        self.gateway = gateway
        self.prefix = prefix
        self.max_chars = max_chars
        self.links = dict(links or {})

    @classmethod
    def from_settings(
        cls, settings: SmsHttpSettings, *, links: Mapping[str, str] | None = None
    ) -> SmsChannel:
        return cls(
            HttpSmsGateway(settings),
            min_severity=settings.min_severity,
            prefix=settings.prefix,
            max_chars=settings.max_chars,
            links=links,
        )

    def render(self, notification: Notification) -> str:
        room = self.max_chars - len(self.prefix)
        return self.prefix + sms_text(notification, self.links, max_chars=room)

    async def send(self, notification: Notification, recipient: Recipient) -> None:
        await self.gateway.send_sms(
            recipient.address,
            self.render(notification),
            severity=notification.severity.name.lower(),
            reference=notification.id,
        )

    async def aclose(self) -> None:
        await self.gateway.aclose()
