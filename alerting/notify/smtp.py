"""E-mail over SMTP with the standard library, one short session per message, in worker threads.

``smtplib`` is blocking, so each send runs in a small thread pool of its own (not the loop's
default executor, which a slow mail server must not exhaust for everyone else). Every socket
operation has a timeout, so a hanging server costs one worker for ``timeout_s`` at most.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from alerting.notify.channel import Channel, DeliveryError, PermanentError, RetryableError
from alerting.notify.notification import Notification, Recipient
from alerting.notify.render import html_body, subject, text
from alerting.notify.settings import EmailSettings


def _from_response(code: int, what: str, message: bytes | str) -> DeliveryError:
    detail = message.decode(errors="replace") if isinstance(message, bytes) else message
    error = RetryableError if 400 <= code < 500 else PermanentError
    return error(f"SMTP {what} refused: {code} {detail}")


class EmailChannel(Channel):
    name = "email"

    def __init__(self, settings: EmailSettings, *, links: Mapping[str, str] | None = None) -> None:
        super().__init__(settings.min_severity)
        self.settings = settings
        self.links = dict(links or {})
        self._executor: ThreadPoolExecutor | None = None

    def build_message(self, notification: Notification, to: str) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = subject(notification)
        msg["From"] = self.settings.sender
        msg["To"] = to
        msg["Date"] = format_datetime(notification.created_at)
        msg["Message-ID"] = make_msgid(idstring=notification.id, domain="weijian")
        msg["X-Weijian-Notification"] = notification.id
        msg["X-Weijian-Event"] = str(notification.kind)
        msg.set_content(text(notification, self.links))
        msg.add_alternative(html_body(notification, self.links), subtype="html")
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.ca_file)

    def _send_blocking(self, msg: EmailMessage, to: str) -> None:
        s = self.settings
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout_s, context=self._tls_context()
            )
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        with smtp:
            smtp.ehlo()
            if s.security == "starttls":
                smtp.starttls(context=self._tls_context())  # raises if the server can't
                smtp.ehlo()
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                smtp.login(s.username, password)
            smtp.send_message(msg, from_addr=s.sender, to_addrs=[to])

    def _send_mapped(self, msg: EmailMessage, to: str) -> None:
        try:
            self._send_blocking(msg, to)
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = next(iter(exc.recipients.values()))
            raise _from_response(code, "recipient", message) from exc
        except smtplib.SMTPResponseException as exc:  # sender, data, auth, helo
            raise _from_response(exc.smtp_code, "command", exc.smtp_error) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"SMTP server does not support it: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentError(f"SMTP server certificate not trusted: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, TLS failure
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, notification: Notification, recipient: Recipient) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.settings.max_connections, thread_name_prefix="weijian-smtp"
            )
        msg = self.build_message(notification, recipient.address)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._send_mapped, msg, recipient.address)

    async def aclose(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # A session still talking to a hung server ends at its socket timeout; don't wait.
            executor.shutdown(wait=False, cancel_futures=True)
