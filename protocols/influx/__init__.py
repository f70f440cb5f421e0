"""InfluxDB storage through the v1-compatible HTTP API (``/write``, ``/query``, ``/ping``).

Works with InfluxDB 1.x natively and with 2.x/3.x through their v1 compatibility endpoints;
Flux and ``/api/v2`` are never used for data.
"""

from protocols.influx.client import (
    AuthError,
    BadDataError,
    DatabaseNotFoundError,
    InfluxClient,
    InfluxError,
    RetryableError,
    TooLargeError,
)
from protocols.influx.schema import ensure_databases, ensure_schema, version_kind
from protocols.influx.writer import BatchWriter, DeadLetterSink, FileDeadLetter, WriterStats

__all__ = [
    "AuthError",
    "BadDataError",
    "BatchWriter",
    "DatabaseNotFoundError",
    "DeadLetterSink",
    "FileDeadLetter",
    "InfluxClient",
    "InfluxError",
    "RetryableError",
    "TooLargeError",
    "WriterStats",
    "ensure_databases",
    "ensure_schema",
    "version_kind",
]
