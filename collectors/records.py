"""What one spool record holds: the tenant (for routing a copy) and one line of line protocol."""

from __future__ import annotations

from protocols.reading import Reading

SEPARATOR = b"\t"  # never part of a tenant id, so the first tab ends the route
EVENT_ROUTE = "!"  # platform events (not readings): agency database only, counted apart


def encode_record(reading: Reading) -> bytes:
    return reading.tenant.encode() + SEPARATOR + reading.to_line().encode()


def decode_record(record: bytes) -> tuple[str, bytes]:
    route, _, line = record.partition(SEPARATOR)
    return route.decode(), line


def encode_event(line: str) -> bytes:
    return EVENT_ROUTE.encode() + SEPARATOR + line.encode()
