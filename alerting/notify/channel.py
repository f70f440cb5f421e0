"""The one interface every channel implements, and the two ways a delivery can fail.

The dispatcher only needs to know whether trying again might help: a ``RetryableError``
(timeout, connection refused, 5xx, SMTP 4xx) is retried with back-off; a ``PermanentError``
(4xx, SMTP 5xx, a missing secret, a refused ACL) is logged and counted once, because repeating it
would only repeat the refusal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from alerting.model import Severity
from alerting.notify.notification import Notification, Recipient


class DeliveryError(Exception):
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the receiver asked us to wait, if it did


class RetryableError(DeliveryError):
    retryable = True


class PermanentError(DeliveryError):
    retryable = False


class Channel(ABC):
    """A way to reach people. ``name`` is the officer contact type it serves.

    Personal channels (e-mail, SMS, webhook) send to the addresses in officers' contacts;
    a channel may also have broadcast addresses that receive every notification whatever its
    routing (the MQTT alert topic, a command centre's webhook).
    """

    name: ClassVar[str]

    def __init__(self, min_severity: Severity = Severity.INFO) -> None:
        self.min_severity = min_severity

    async def start(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Open long-lived connections (called by the dispatcher's ``start``)."""

    @abstractmethod
    async def send(self, notification: Notification, recipient: Recipient) -> None:
        """Deliver or raise ``DeliveryError``; must return or raise within its own timeout."""

    def broadcast_recipients(self, notification: Notification) -> Sequence[Recipient]:
        """Recipients that get this notification regardless of officers (default: none)."""
        return ()

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections and threads."""
