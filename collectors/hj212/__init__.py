"""HJ 212-2017 collector: a TCP server for monitoring stations (see collector.py, docs/hj212.md)."""

from collectors.hj212.collector import (
    AGGREGATES,
    PROTOCOL,
    Hj212Collector,
    Hj212Stats,
    Station,
    StationLookup,
)
from collectors.hj212.guard import AuthGuard, AuthLimits, peer_key
from collectors.hj212.mapping import CodeTables, Target, realtime_reading

__all__ = [
    "AGGREGATES",
    "PROTOCOL",
    "AuthGuard",
    "AuthLimits",
    "CodeTables",
    "Hj212Collector",
    "Hj212Stats",
    "Station",
    "StationLookup",
    "Target",
    "peer_key",
    "realtime_reading",
]
