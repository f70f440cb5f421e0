"""CoAP telemetry collector: see docs/coap.md."""

from collectors.coap.collector import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PORT,
    PROTOCOL,
    Authenticate,
    CoapCollector,
    CoapStats,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_PORT",
    "PROTOCOL",
    "Authenticate",
    "CoapCollector",
    "CoapStats",
]
