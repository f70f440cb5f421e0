"""What one spool record holds: the tenant (for routing a copy) and one line of line protocol."""

from __future__ import annotations

from protocols.reading import Reading

SEPARATOR = b"\t"  # never part of a tenant id, so the first tab ends the route
EVENT_ROUTE = "!"  # platform events (not readings), counted apart; "!<tenant>" also copies them


def encode_record(reading: Reading) -> bytes:
    return reading.tenant.encode() + SEPARATOR + reading.to_line().encode()


def decode_record(record: bytes) -> tuple[str, bytes]:
    route, _, line = record.partition(SEPARATOR)
    return route.decode(), line


def encode_event(line: str, tenant: str | None = None) -> bytes:
    """A platform event for the agency database, and for ``tenant``'s copy when given (an alert
    of that tenant's device, a sterilizer cycle: what the tenant's own dashboards show)."""
    return (EVENT_ROUTE + (tenant or "")).encode() + SEPARATOR + line.encode()
