"""Routing alerts to the officers of a site's jurisdiction and delivering them on their channels.

See docs/notifications.md. The alert engine calls :meth:`Dispatcher.submit` for every
transition; everything else (grouping, repeats, escalation, retries) happens in the
dispatcher's own tasks.
"""

from alerting.notify.channel import Channel, DeliveryError, PermanentError, RetryableError
from alerting.notify.clock import Clock, ManualClock, SystemClock
from alerting.notify.dispatcher import (
    Dispatcher,
    NotifyStats,
    build_channels,
    default_group_key,
    rule_family,
)
from alerting.notify.mqtt import MqttAlertChannel
from alerting.notify.notification import Notification, NotificationKind, Recipient
from alerting.notify.routing import (
    Contact,
    Officer,
    OfficerLookup,
    Router,
    officers_from_json,
    region_chain,
    static_lookup,
)
from alerting.notify.settings import (
    EmailSettings,
    MqttAlertSettings,
    NotifySettings,
    SmsHttpSettings,
    WebhookEndpoint,
    WebhookSettings,
)
from alerting.notify.sms import HttpSmsGateway, SmsChannel, SmsGateway
from alerting.notify.smtp import EmailChannel
from alerting.notify.webhook import WebhookChannel, sign, verify_signature

__all__ = [
    "Channel",
    "Clock",
    "Contact",
    "DeliveryError",
    "Dispatcher",
    "EmailChannel",
    "EmailSettings",
    "HttpSmsGateway",
    "ManualClock",
    "MqttAlertChannel",
    "MqttAlertSettings",
    "Notification",
    "NotificationKind",
    "NotifySettings",
    "NotifyStats",
    "Officer",
    "OfficerLookup",
    "PermanentError",
    "Recipient",
    "RetryableError",
    "Router",
    "SmsChannel",
    "SmsGateway",
    "SmsHttpSettings",
    "SystemClock",
    "WebhookChannel",
    "WebhookEndpoint",
    "WebhookSettings",
    "build_channels",
    "default_group_key",
    "officers_from_json",
    "region_chain",
    "rule_family",
    "sign",
    "static_lookup",
    "verify_signature",
]
