"""Self-metrics: counters kept as plain integers on the hot path, exported in Prometheus format.

Counting with a dict increment costs ~50 ns; a prometheus_client labelled counter costs about a
microsecond per call, which matters at tens of thousands of readings per second. The exporter reads
the integers (and the spool's and writer's stats) when scraped.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    received: Tally[str] = field(default_factory=Tally)  # protocol -> readings offered
    accepted: Tally[str] = field(default_factory=Tally)  # protocol -> readings spooled
    rejected: Tally[tuple[str, str]] = field(default_factory=Tally)  # (protocol, reason) -> inputs
    stored: int = 0  # readings written to the agency database
    stored_copies: int = 0  # tenant-database copies written
    stored_events: int = 0  # platform events written (e.g. ingest rejections for device check)
    # device -> its last few rejections, for the onboarding check
    recent: defaultdict[str, deque[tuple[float, str, str]]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=20))
    )


class Metrics:
    """One per platform instance (tests run several), each with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingest = IngestStats()
        self._sources: dict[str, Any] = {}
        self.write_seconds = Histogram(
            "weijian_influx_write_seconds",
            "Duration of successful InfluxDB write requests.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_lines = Histogram(
            "weijian_influx_batch_lines",
            "Lines per successful InfluxDB write request.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))
        self._server: Any = None

    def attach(self, name: str, stats: Any) -> None:
        """Export a component's stats dataclass (``spool``, ``writer``) at scrape time."""
        self._sources[name] = stats

    def observe_write(self, lines: int, seconds: float) -> None:
        self.write_seconds.observe(seconds)
        self.batch_lines.observe(lines)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics endpoint on a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def summary(self) -> dict[str, Any]:
        ing = self.ingest
        spool = self._sources.get("spool")
        writer = self._sources.get("writer")
        return {
            "received": sum(ing.received.values()),
            "accepted": sum(ing.accepted.values()),
            "rejected": sum(ing.rejected.values()),
            "stored": ing.stored,
            "spool_depth": getattr(spool, "depth_records", 0),
            "dead_lettered": getattr(writer, "dead_lettered", 0),
            "write_p50_ms": _quantile_ms(self.write_seconds, 0.5),
        }

    def log_summary(self) -> None:
        s = self.summary()
        rejected = ", ".join(f"{p}/{r}={n}" for (p, r), n in sorted(self.ingest.rejected.items()))
        log.info(
            "readings received=%s accepted=%s stored=%s rejected=%s [%s] "
            "spool_depth=%s dead_lettered=%s",
            s["received"],
            s["accepted"],
            s["stored"],
            s["rejected"],
            rejected or "-",
            s["spool_depth"],
            s["dead_lettered"],
        )


def _quantile_ms(hist: Histogram, q: float) -> float | None:
    """Upper bucket bound containing quantile q (coarse, for display)."""
    samples = [s for m in hist.collect() for s in m.samples if s.name.endswith("_bucket")]
    if not samples:
        return None
    total = samples[-1].value
    if total == 0:
        return None
    for s in samples:
        if s.value >= q * total:
            bound = float(s.labels["le"])
            return bound * 1000 if bound != float("inf") else None
    return None


class _StatsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        ing = self.metrics.ingest
        received = CounterMetricFamily(
            "weijian_readings_received", "Readings offered by devices.", labels=["protocol"]
        )
        for proto, n in ing.received.items():
            received.add_metric([proto], n)
        accepted = CounterMetricFamily(
            "weijian_readings_accepted",
            "Readings validated and spooled (acknowledged).",
            labels=["protocol"],
        )
        for proto, n in ing.accepted.items():
            accepted.add_metric([proto], n)
        rejected = CounterMetricFamily(
            "weijian_rejected",
            "Readings or messages refused, by reason.",
            labels=["protocol", "reason"],
        )
        for (proto, reason), n in ing.rejected.items():
            rejected.add_metric([proto, reason], n)
        stored = CounterMetricFamily("weijian_readings_stored", "Readings written to InfluxDB.")
        stored.add_metric([], ing.stored)
        copies = CounterMetricFamily(
            "weijian_tenant_copies_stored", "Tenant-database copies written."
        )
        copies.add_metric([], ing.stored_copies)
        events = CounterMetricFamily(
            "weijian_events_stored", "Platform events (e.g. ingest rejections) written."
        )
        events.add_metric([], ing.stored_events)
        yield from (received, accepted, rejected, stored, copies, events)

        spool = self.metrics._sources.get("spool")
        if spool is not None:
            for name, help_text in (
                ("depth_records", "Readings spooled but not yet in InfluxDB."),
                ("depth_bytes", "Bytes spooled but not yet in InfluxDB."),
            ):
                g = GaugeMetricFamily(f"weijian_spool_{name}", help_text)
                g.add_metric([], getattr(spool, name))
                yield g
            for name, help_text in (
                ("full_rejections", "Appends refused because the spool was full."),
                ("dropped_records", "Records evicted under the drop_oldest policy."),
                ("fsyncs", "fsync calls made by the spool."),
                ("truncated_tail_bytes", "Torn bytes cut from the spool tail at start."),
            ):
                c = CounterMetricFamily(f"weijian_spool_{name}", help_text)
                c.add_metric([], getattr(spool, name, 0))
                yield c
        writer = self.metrics._sources.get("writer")
        if writer is not None:
            for name, help_text in (
                ("batches_ok", "Successful InfluxDB write requests."),
                ("retries", "InfluxDB write attempts retried."),
                ("split_413", "Batches split after 413 Request Entity Too Large."),
                (
                    "dead_lettered",
                    "Lines InfluxDB refused as bad data, kept in the dead-letter file.",
                ),
                ("auth_failures", "Writes refused for credentials or a missing database."),
            ):
                c = CounterMetricFamily(f"weijian_influx_{name}", help_text)
                c.add_metric([], getattr(writer, name, 0))
                yield c
        hj = self.metrics._sources.get("hj212")
        if hj is not None:
            yield from _hj212_families(hj)
        coap = self.metrics._sources.get("coap")
        if coap is not None:
            yield from _coap_families(coap)
        engine = self.metrics._sources.get("alerting")
        if engine is not None:
            yield from _alerting_families(engine)
        tap = self.metrics._sources.get("alerting_tap")
        if tap is not None:
            yield from _tap_families(tap)


def _hj212_families(hj: Any) -> Iterator[Any]:
    """The HJ 212 station server: connections, packets by command, errors by reason, replies."""
    g = GaugeMetricFamily("weijian_hj212_connections", "Open HJ 212 station connections.")
    g.add_metric([], hj.connections_open)
    yield g
    c = CounterMetricFamily(
        "weijian_hj212_packets", "HJ 212 packets handled, by CN.", labels=["cn"]
    )
    for cn, n in hj.commands.items():
        c.add_metric([str(cn)], n)
    yield c
    e = CounterMetricFamily(
        "weijian_hj212_errors", "HJ 212 input refused, by reason.", labels=["reason"]
    )
    for reason, n in hj.errors.items():
        e.add_metric([str(reason)], n)
    yield e
    r = CounterMetricFamily("weijian_hj212_replies", "HJ 212 replies sent once durable.")
    r.add_metric([], hj.replies_sent)
    yield r
    refused = CounterMetricFamily(
        "weijian_hj212_connections_refused",
        "HJ 212 connections refused at accept: over max_connections, over "
        "max_connections_per_peer from one peer, or from a peer blocked after wrong PWs.",
        labels=["reason"],
    )
    refused.add_metric(["max_connections"], hj.connections_refused)
    refused.add_metric(["per_peer_limit"], hj.connections_per_peer_refused)
    refused.add_metric(["auth_blocked"], hj.connections_blocked)
    yield refused
    blocks = CounterMetricFamily(
        "weijian_hj212_auth_blocks",
        "HJ 212 blocks started after repeated wrong PWs, by scope (peer address or station MN).",
        labels=["scope"],
    )
    blocked = GaugeMetricFamily(
        "weijian_hj212_auth_blocked",
        "HJ 212 peers and station MNs blocked now (as of the collector's last sweep).",
        labels=["scope"],
    )
    for scope in ("peer", "station"):
        blocks.add_metric([scope], hj.auth_blocks.get(scope, 0))
        blocked.add_metric([scope], hj.auth_blocked.get(scope, 0))
    yield blocks
    yield blocked


def _coap_families(coap: Any) -> Iterator[Any]:
    """The CoAP resource: responses by code, separate (after-durable) responses, auth errors."""
    c = CounterMetricFamily("weijian_coap_responses", "CoAP responses by code.", labels=["code"])
    for code, n in coap.responses.items():
        c.add_metric([str(code)], n)
    yield c
    for name, help_text in (
        ("separate_responses", "CoAP responses sent separately (after the data was durable)."),
        ("auth_errors", "CoAP requests refused for a missing or bad token."),
        ("non_confirmable", "Non-confirmable CoAP requests."),
    ):
        m = CounterMetricFamily(f"weijian_coap_{name}", help_text)
        m.add_metric([], getattr(coap, name))
        yield m


def _alerting_families(engine: Any) -> Iterator[Any]:
    """The alert engine of this process (alerting/engine.py): what it judged and raised."""
    core = getattr(engine, "core", None)
    stats = getattr(engine, "stats", None)
    for name, value, help_text in (
        (
            "readings_evaluated",
            getattr(getattr(core, "stats", None), "readings", 0),
            "Readings judged by the alert engine in this process.",
        ),
        (
            "transitions",
            getattr(stats, "transitions", 0),
            "Alert transitions raised (created, fired, resolved, ...).",
        ),
        (
            "listener_errors",
            getattr(stats, "listener_errors", 0),
            "Readings the alert engine failed to evaluate.",
        ),
    ):
        c = CounterMetricFamily(f"weijian_alerting_{name}", help_text)
        c.add_metric([], value)
        yield c


def _tap_families(tap: Any) -> Iterator[Any]:
    """The alerting tap (collectors/mqtt/tap.py): every MQTT message, for the alert engine."""
    for name, attr, help_text in (
        ("messages", "received", "MQTT messages received by the alerting tap."),
        ("readings_evaluated", "evaluated", "Readings the alerting tap handed to the engine."),
        (
            "dropped_invalid",
            "dropped_invalid",
            "Messages or readings the alerting tap dropped as bad input (counted as ingest "
            "rejections by the collector that ingested them, not here).",
        ),
    ):
        c = CounterMetricFamily(f"weijian_alerting_tap_{name}", help_text)
        c.add_metric([], getattr(tap, attr))
        yield c
