"""HJ 212-2017 collector: a TCP server for monitoring stations (see collector.py, docs/hj212.md)."""

from collectors.hj212.collector import (
    AGGREGATES,
    PROTOCOL,
    Hj212Collector,
    Hj212Stats,
    Station,
    StationLookup,
)
from collectors.hj212.mapping import CodeTables, Target, realtime_reading

__all__ = [
    "AGGREGATES",
    "PROTOCOL",
    "CodeTables",
    "Hj212Collector",
    "Hj212Stats",
    "Station",
    "StationLookup",
    "Target",
    "realtime_reading",
]
