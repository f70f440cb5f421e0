"""Turning a notification into JSON, a subject line, plain text, HTML and an SMS.

Every channel renders from the same functions, so an officer reads the same facts whichever
channel reaches them first. Text is bilingual where it is short (severity, event) because the
readers are Chinese officers while rule ids, standards and logs are ASCII.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from alerting.model import Alert, Severity
from alerting.notify.notification import Notification, NotificationKind

PAYLOAD_VERSION = 1

SEVERITY_ZH = {
    Severity.INFO: "提示",
    Severity.WARNING: "警告",
    Severity.CRITICAL: "严重",
    Severity.EMERGENCY: "紧急",
}
KIND_ZH = {
    NotificationKind.FIRING: "告警",
    NotificationKind.REPEAT: "告警未处理",
    NotificationKind.ESCALATION: "告警升级",
    NotificationKind.ACKNOWLEDGED: "告警已确认",
    NotificationKind.RESOLVED: "告警已解除",
}


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def site_label(alert: Alert) -> str:
    """The site's name if the engine put one in the labels (``site_name``), else its id."""
    name = alert.labels.get("site_name")
    return str(name) if name else alert.site


def alert_links(alert: Alert, templates: Mapping[str, str]) -> dict[str, str]:
    values = {
        "alert_id": alert.id,
        "site": alert.site,
        "tenant": alert.tenant,
        "region": alert.region,
        "device": alert.key.device,
    }
    links = {}
    for name, template in templates.items():
        try:
            links[name] = template.format_map(values)
        except (KeyError, IndexError, ValueError):
            continue  # a bad template must not stop the message; settings tests catch it
    return links


def alert_dict(alert: Alert, links: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": alert.id,
        "device": alert.key.device,
        "rule": alert.key.rule,
        "state": str(alert.state),
        "severity": alert.severity.name.lower(),
        "severity_level": int(alert.severity),
        "tenant": alert.tenant,
        "site": alert.site,
        "region": alert.region,
        "kind": alert.kind,
        "quantity": alert.quantity,
        "message": alert.message,
        "value": alert.value,
        "limit": alert.limit,
        "standard": alert.standard,
        "started_at": iso(alert.started_at),
        "fired_at": iso(alert.fired_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "ack_comment": alert.ack_comment,
        "resolved_at": iso(alert.resolved_at),
        "resolved_by": alert.resolved_by,
        "resolve_reason": alert.resolve_reason,
        "escalation_level": alert.escalation_level,
        "labels": alert.labels,
        "links": alert_links(alert, links),
    }


def payload(notification: Notification, links: Mapping[str, str]) -> dict[str, Any]:
    """The JSON document of webhooks and the MQTT alert topic (documented in docs)."""
    n = notification
    return {
        "version": PAYLOAD_VERSION,
        "id": n.id,
        "event": str(n.kind),
        "severity": n.severity.name.lower(),
        "severity_level": int(n.severity),
        "tenant": n.tenant,
        "site": n.site,
        "region": n.region,
        "group": n.group,
        "escalation_level": n.escalation_level,
        "created_at": iso(n.created_at),
        "summary": subject(n),
        "alerts": [alert_dict(a, links) for a in n.alerts],
    }


def subject(notification: Notification) -> str:
    """E.g. ``[CRITICAL 严重] FIRING 告警 · 水厂A · gb5749.turbidity (+2 more)``."""
    n = notification
    first = n.alerts[0]
    more = f" (+{len(n.alerts) - 1} more)" if len(n.alerts) > 1 else ""
    level = f" · level {n.escalation_level}" if n.kind is NotificationKind.ESCALATION else ""
    return (
        f"[{n.severity.name} {SEVERITY_ZH[n.severity]}] {n.kind.name} {KIND_ZH[n.kind]}"
        f" · {site_label(first)} · {first.key.rule}{more}{level}"
    )


def _alert_line(alert: Alert) -> str:
    parts = [f"[{alert.severity.name}] {alert.key.device} · {alert.key.rule}: {alert.message}"]
    facts = []
    if alert.value is not None:
        facts.append(f"value {alert.value:g}")
    if alert.limit is not None:
        facts.append(f"limit {alert.limit:g}")
    if alert.standard:
        facts.append(alert.standard)
    if alert.fired_at is not None:
        facts.append(f"since {iso(alert.fired_at)}")
    if facts:
        parts.append(f"({', '.join(facts)})")
    return " ".join(parts)


def _footer(n: Notification) -> str:
    if n.kind in (NotificationKind.FIRING, NotificationKind.REPEAT, NotificationKind.ESCALATION):
        return "Acknowledge the alert in Weijian to stop reminders and escalation. 请及时确认处置。"
    return ""


def text(notification: Notification, links: Mapping[str, str]) -> str:
    n = notification
    first = n.alerts[0]
    lines = [
        subject(n),
        "",
        f"Site 场所: {site_label(first)} ({n.site}), tenant {n.tenant}, region {n.region}",
    ]
    if n.kind is NotificationKind.ESCALATION:
        lines.append(f"Escalated to level {n.escalation_level}: not acknowledged in time.")
    lines.append("")
    for alert in n.alerts:
        lines.append("- " + _alert_line(alert))
        if n.kind is NotificationKind.ACKNOWLEDGED and alert.acknowledged_by:
            comment = f": {alert.ack_comment}" if alert.ack_comment else ""
            lines.append(f"  acknowledged by {alert.acknowledged_by}{comment}")
        if n.kind is NotificationKind.RESOLVED:
            how = f"by {alert.resolved_by} ({alert.resolve_reason})" if alert.resolved_by else ""
            lines.append(f"  resolved {iso(alert.resolved_at) or ''} {how}".rstrip())
        for name, url in alert_links(alert, links).items():
            lines.append(f"  {name}: {url}")
    footer = _footer(n)
    if footer:
        lines += ["", footer]
    return "\n".join(lines) + "\n"


def html_body(notification: Notification, links: Mapping[str, str]) -> str:
    n = notification
    e = html.escape
    items = []
    for alert in n.alerts:
        anchors = " ".join(
            f'<a href="{e(url)}">{e(name)}</a>' for name, url in alert_links(alert, links).items()
        )
        items.append(f"<li>{e(_alert_line(alert))} {anchors}</li>")
    footer = _footer(n)
    return (
        f"<html><body><h3>{e(subject(n))}</h3>"
        f"<p>Site 场所: {e(site_label(n.alerts[0]))} ({e(n.site)}), region {e(n.region)}</p>"
        f"<ul>{''.join(items)}</ul>" + (f"<p>{e(footer)}</p>" if footer else "") + "</body></html>"
    )


def sms_text(notification: Notification, links: Mapping[str, str], *, max_chars: int) -> str:
    """One short line: severity, event, site, the first alert's message, how many more."""
    n = notification
    first = n.alerts[0]
    more = f" 等{len(n.alerts)}条" if len(n.alerts) > 1 else ""
    link = next(iter(alert_links(first, links).values()), "")
    body = f"{SEVERITY_ZH[n.severity]}{KIND_ZH[n.kind]} {site_label(first)}: {first.message}{more}"
    tail = f" {link}" if link else ""
    if len(body) + len(tail) > max_chars:
        room = max(1, max_chars - len(tail) - 1)
        body = body[:room] + "…"
    return (body + tail)[:max_chars]
