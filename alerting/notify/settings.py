"""Notifier settings: one pydantic model per channel, and the dispatcher's timing and limits.

``NotifySettings`` is meant to be a section of the platform's settings tree (``notify:`` in the
YAML file, ``WEIJIAN_NOTIFY__...`` in the environment). A channel whose section is ``None`` is
off: officers' contacts of that type are skipped (and counted).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from alerting.model import Severity


def parse_severity(value: Any) -> Severity:
    """A severity by name ("critical", any case), by number (3) or as a numeric string ("3")."""
    try:
        if isinstance(value, str) and value.strip().isdigit():
            return Severity(int(value))
        return Severity.parse(value.strip() if isinstance(value, str) else value)
    except (KeyError, ValueError, TypeError):
        names = ", ".join(s.name.lower() for s in Severity)
        raise ValueError(f"{value!r} is not a severity ({names})") from None


SeverityLevel = Annotated[Severity, BeforeValidator(parse_severity)]
"""A severity given by name (``"critical"``) or by number (3)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookEndpoint(_Section):
    """A receiver's signing secret; ``url`` matches exactly, or as a prefix if it ends in ``/``."""

    url: str
    secret: SecretStr
    broadcast: bool = Field(
        default=False,
        description="Also send every notification here, whoever the officers are "
        "(e.g. a command-centre system).",
    )


class WebhookSettings(_Section):
    endpoints: list[WebhookEndpoint] = []
    default_secret: SecretStr | None = Field(
        default=None,
        description="Secret for officers' webhook URLs not listed in endpoints; without one "
        "such a delivery fails permanently rather than going out unsigned.",
    )
    timeout_s: float = Field(default=10.0, gt=0)
    min_severity: SeverityLevel = Severity.INFO


class EmailSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls",
        description="starttls: upgrade a plain connection (port 587); ssl: implicit TLS "
        "(port 465); none: loopback relays only.",
    )
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "weijian@localhost"
    ca_file: str | None = Field(default=None, description="CA bundle for a private SMTP CA.")
    timeout_s: float = Field(default=15.0, gt=0)
    max_connections: int = Field(default=4, ge=1, description="Concurrent SMTP sessions.")
    min_severity: SeverityLevel = Severity.INFO


class SmsHttpSettings(_Section):
    """A generic HTTP SMS gateway: the request is built from templates (see docs)."""

    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, SecretStr] = Field(
        default={}, description="E.g. an API key header; values are kept out of logs."
    )
    body_format: Literal["json", "form"] = "json"
    body_template: dict[str, Any] = Field(
        default={"phone": "{phone}", "text": "{text}"},
        description="Placeholders {phone} {text} {severity} {reference} in string values.",
    )
    success_field: str | None = Field(
        default=None,
        description="Dotted path into a JSON response that must equal one of success_values "
        "(for providers that answer 200 with an error code).",
    )
    success_values: list[str] = []
    timeout_s: float = Field(default=10.0, gt=0)
    prefix: str = Field(default="", description="Signature required by carriers, e.g. 【卫监】.")
    max_chars: int = Field(default=300, ge=20)
    min_severity: SeverityLevel = Severity.CRITICAL


class MqttAlertSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = "weijian-collector"
    password: SecretStr | None = None
    client_id: str | None = Field(default=None, description="Default: weijian-notify-<random>.")
    topic_prefix: str = "weijian/v1"
    topic_template: str = Field(
        default="{prefix}/_system/alerts/{region}/{severity}",
        description="Placeholders {prefix} {region} {severity} {tenant} {site} {event}.",
    )
    qos: Literal[0, 1, 2] = 1
    keepalive_s: int = 30
    publish_timeout_s: float = Field(default=10.0, gt=0)
    min_severity: SeverityLevel = Severity.INFO


class NotifySettings(_Section):
    webhook: WebhookSettings | None = None
    email: EmailSettings | None = None
    sms: SmsHttpSettings | None = None
    mqtt: MqttAlertSettings | None = None

    group_wait_s: float = Field(
        default=0.5,
        ge=0,
        description="How long the first alert of a group waits for others of the same burst.",
    )
    group_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="After a group's message, later alerts of the group are collected this long.",
    )
    repeat_interval_s: float | None = Field(
        default=3600.0, gt=0, description="Re-send while firing and unacknowledged; None: never."
    )
    escalate_after_s: float | None = Field(
        default=1800.0, gt=0, description="Unacknowledged this long: notify the next level."
    )
    notify_on_ack: bool = False

    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)
    retry_max_attempts: int = Field(default=20, ge=1)
    send_timeout_s: float = Field(
        default=60.0, gt=0, description="Guard around one attempt, whatever the channel does."
    )
    queue_size: int = Field(default=10_000, ge=1, description="Alert transitions not yet planned.")
    lane_queue_size: int = Field(
        default=100, ge=1, description="Messages waiting per (channel, recipient)."
    )
    drain_timeout_s: float = Field(default=5.0, ge=0)
    links: dict[str, str] = Field(
        default={},
        description="Per-alert links, name → template with {alert_id} {site} {tenant} {region} "
        "{device}, e.g. {'alert': 'https://weijian.example/alerts/{alert_id}'}.",
    )

    @field_validator("links")
    @classmethod
    def _links_format(cls, links: dict[str, str]) -> dict[str, str]:
        sample = dict.fromkeys(("alert_id", "site", "tenant", "region", "device"), "x")
        for name, template in links.items():
            try:
                template.format_map(sample)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"links.{name}: {template!r} is not a valid template ({exc}); "
                    "placeholders: {alert_id} {site} {tenant} {region} {device}"
                ) from None
        return links
