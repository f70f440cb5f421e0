"""Storage layout, created on start (InfluxDB 1.x; idempotent, and configuration changes apply).

Per database (the agency database and each tenant's ``weijian_t_<tenant>``):

* retention policies ``raw`` (DEFAULT: what the writer writes to), ``rollup_5m``, ``rollup_1h``;
  an existing policy with another duration is ALTERed, so a changed setting takes effect;
* continuous queries that downsample every measurement generically::

      cq_5m: SELECT mean(*), min(*), max(*) INTO "<db>"."rollup_5m".:MEASUREMENT
             FROM "<db>"."raw"./<all but the events>/ GROUP BY time(5m), *
             RESAMPLE EVERY 5m FOR 15m
      cq_1h: the same from "raw" into "rollup_1h", GROUP BY time(1h) RESAMPLE EVERY 1h FOR 2h

  ``cq_1h`` reads ``raw``, not ``rollup_5m``: from the 5-minute rollup its fields would come out
  as ``mean_mean_x``/``min_min_x``, and a mean of means weights a half-empty 5-minute bucket like
  a full one. ``FOR 15m``/``FOR 2h`` recompute recent buckets so late readings are included.

What comes out, verified on InfluxDB 1.6.7 (tests/test_influx_schema.py): for a float or integer
field ``x`` the rollup has ``mean_x`` (float), ``min_x`` and ``max_x`` (the field's own type);
for a boolean only ``min_x``/``max_x`` (booleans; ``mean`` skips them); string fields (the
``*_flag`` data flags, ``cycle_phase``...) are skipped without error. Tags are kept (``GROUP BY
*``). A measurement of strings only would therefore just yield no rollup rows.

``alert_event``, ``device_status`` and the other events are excluded (``ROLLUP_EXCLUDED``, as
docs/schema.md promises): they are events, not signals, and ``alert_event`` carries a numeric
``value`` whose 5-minute mean would mean nothing. InfluxQL regexes are RE2, which has no negative
lookahead, so the FROM regex is the generated complement of those exact names (it still matches
every other name, including any new device kind, without a list to keep in sync).

A continuous query cannot be altered: one whose text differs from ours is dropped and
recreated. On InfluxDB 2.x/3.x none of this exists through the v1 API (buckets, retention and
DBRP mappings are provisioned there, downsampling by tasks); :func:`ensure_schema` logs that and
returns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Literal

from protocols.influx.client import InfluxClient, InfluxError, RetryableError

log = logging.getLogger(__name__)

__all__ = [
    "ROLLUPS",
    "ROLLUP_EXCLUDED",
    "duration_seconds",
    "ensure_databases",
    "ensure_schema",
    "measurements_except",
    "quote_ident",
    "rollup_query",
    "version_kind",
]

RAW_RP = "raw"
ROLLUP_EXCLUDED = (
    "alert_event",
    "device_status",
    "ingest_rejection",
    "site_info",
    "sterilizer_cycle",
)
ROLLUPS: tuple[tuple[str, str, str, str], ...] = (
    # (continuous query, target retention policy, GROUP BY interval, RESAMPLE FOR)
    ("cq_5m", "rollup_5m", "5m", "15m"),
    ("cq_1h", "rollup_1h", "1h", "2h"),
)

_UNIT_SECONDS = {
    "ns": 1e-9,
    "u": 1e-6,
    "µ": 1e-6,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_DURATION_LITERAL = re.compile(r"(?:[1-9][0-9]*(?:ns|u|µ|ms|s|m|h|d|w)|INF)", re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|u|µ|ms|s|m|h|d|w)")


def version_kind(version: str) -> Literal["1.x", "2.x", "3.x"]:
    """Major line of an ``X-Influxdb-Version`` value (``1.6.7~rc0``, ``v2.7.4``, ``3.0.1``)."""
    match = re.match(r"\s*v?([0-9]+)\.", version or "")
    major = match.group(1) if match else None
    if major == "1":
        return "1.x"
    if major == "2":
        return "2.x"
    if major == "3":
        return "3.x"
    raise ValueError(f"unrecognised InfluxDB version {version!r}")


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    if not name or "\n" in name:
        raise ValueError(f"invalid InfluxQL identifier {name!r}")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def duration_seconds(text: str) -> float:
    """Seconds in an InfluxQL (``180d``, ``INF``) or Go (``4320h0m0s``) duration; 0 means INF."""
    text = text.strip()
    if text.upper() == "INF":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _default_shard_duration(seconds: float) -> str:
    """InfluxDB 1.x's own choice of shard group duration for a retention duration."""
    if seconds == 0 or seconds > 180 * 86400:
        return "7d"
    if seconds >= 2 * 86400:
        return "1d"
    return "1h"


def _re_char(ch: str) -> str:
    return ch if ch.isalnum() or ch == "_" else "\\" + ch


def measurements_except(names: Iterable[str]) -> str:
    """An RE2 regex (anchored) matching every non-empty name except exactly ``names``.

    RE2 has no ``(?!...)``, so this walks a trie of the names: at each prefix, a name may end
    (unless the prefix is an excluded name), continue with a character that leaves the trie, or
    continue along it.
    """
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for name in names:
        if not name:
            raise ValueError("cannot exclude the empty name")
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of an excluded name

    def walk(node: dict, root: bool) -> str:  # type: ignore[type-arg]
        children = sorted(k for k in node if k)
        options = [] if root or "" in node else [""]
        if children:
            options.append("[^" + "".join(_re_char(c) for c in children) + "].*")
        else:
            options.append(".+")
        options += [_re_char(c) + "(?:" + walk(node[c], False) + ")" for c in children]
        return "|".join(options)

    return "(?s)^(?:" + walk(trie, True) + ")$"


def rollup_query(database: str, target_rp: str, interval: str, *, where: str = "") -> str:
    """The SELECT ... INTO a rollup runs (``where``: an optional condition, for a manual run)."""
    db = quote_ident(database)
    condition = f" WHERE {where}" if where else ""
    source = measurements_except(ROLLUP_EXCLUDED).replace("/", "\\/")
    return (
        f"SELECT mean(*), min(*), max(*) INTO {db}.{quote_ident(target_rp)}.:MEASUREMENT "
        f"FROM {db}.{quote_ident(RAW_RP)}./{source}/{condition} GROUP BY time({interval}), *"
    )


def _cq_statement(
    database: str, name: str, target_rp: str, interval: str, resample_for: str
) -> str:
    return (
        f"CREATE CONTINUOUS QUERY {quote_ident(name)} ON {quote_ident(database)} "
        f"RESAMPLE EVERY {interval} FOR {resample_for} "
        f"BEGIN {rollup_query(database, target_rp, interval)} END"
    )


def _normalise_cq(text: str) -> str:
    """Compare our statement with SHOW CONTINUOUS QUERIES' rendering (which drops quotes)."""
    return " ".join(text.replace('"', "").split())


async def ensure_schema(
    client: InfluxClient,
    database: str,
    *,
    raw_retention: str = "180d",
    rollup_5m_retention: str = "730d",
    rollup_1h_retention: str = "1825d",
    version: str | None = None,
) -> None:
    """Create or update ``database``'s retention policies and rollups (1.x only; idempotent).

    ``version``: the server's version if the caller already pinged it (saves a round trip).
    """
    if version is None:
        version = await client.ping()
        if version is None:
            raise RetryableError(
                f"InfluxDB at {client.url} is unreachable; cannot create the schema"
            )
    kind = version_kind(version)
    if kind != "1.x":
        log.info(
            "InfluxDB %s (%s): database %s must exist as a bucket with a DBRP mapping, and "
            "retention/downsampling are configured there; not creating a schema",
            version,
            kind,
            database,
        )
        return
    policies = {
        RAW_RP: raw_retention,
        "rollup_5m": rollup_5m_retention,
        "rollup_1h": rollup_1h_retention,
    }
    for name, duration in policies.items():
        if not _DURATION_LITERAL.fullmatch(duration):
            raise ValueError(f"retention for {name}: {duration!r} is not like '180d' or 'INF'")
    db = quote_ident(database)
    await client.execute(f"CREATE DATABASE {db}")
    await _ensure_retention_policies(client, database, policies)
    await _ensure_continuous_queries(client, database)


async def _ensure_retention_policies(
    client: InfluxClient, database: str, policies: dict[str, str]
) -> None:
    db = quote_ident(database)
    results = await client.query(f"SHOW RETENTION POLICIES ON {db}", epoch=None)
    existing: dict[str, tuple[float, bool]] = {}
    for series in results[0].get("series", []) if results else []:
        columns = series["columns"]
        for row in series.get("values", []):
            values = dict(zip(columns, row, strict=False))
            existing[values["name"]] = (
                duration_seconds(values["duration"]),
                bool(values["default"]),
            )
    for name, duration in policies.items():
        seconds = duration_seconds(duration)
        default = name == RAW_RP
        shard = _default_shard_duration(seconds)
        rp = quote_ident(name)
        suffix = " DEFAULT" if default else ""
        if name not in existing:
            log.info("InfluxDB %s: creating retention policy %s (%s)", database, name, duration)
            await client.execute(
                f"CREATE RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1 "
                f"SHARD DURATION {shard}{suffix}"
            )
        elif existing[name][0] != seconds or (default and not existing[name][1]):
            log.info(
                "InfluxDB %s: altering retention policy %s to %s%s",
                database,
                name,
                duration,
                suffix.lower(),
            )
            await client.execute(
                f"ALTER RETENTION POLICY {rp} ON {db} DURATION {duration} "
                f"SHARD DURATION {shard}{suffix}"
            )


async def _ensure_continuous_queries(client: InfluxClient, database: str) -> None:
    results = await client.query("SHOW CONTINUOUS QUERIES", epoch=None)
    existing: dict[str, str] = {}
    for series in results[0].get("series", []) if results else []:
        if series.get("name") != database:
            continue
        for name, query in series.get("values", []):
            existing[name] = query
    for name, target_rp, interval, resample_for in ROLLUPS:
        statement = _cq_statement(database, name, target_rp, interval, resample_for)
        current = existing.get(name)
        if current is not None and _normalise_cq(current) == _normalise_cq(statement):
            continue
        if current is not None:
            log.info("InfluxDB %s: continuous query %s changed; recreating it", database, name)
            await client.execute(
                f"DROP CONTINUOUS QUERY {quote_ident(name)} ON {quote_ident(database)}"
            )
        else:
            log.info("InfluxDB %s: creating continuous query %s", database, name)
        await client.execute(statement)


async def ensure_databases(
    client: InfluxClient,
    databases: Iterable[str],
    *,
    raw_retention: str = "180d",
    rollup_5m_retention: str = "730d",
    rollup_1h_retention: str = "1825d",
) -> None:
    """:func:`ensure_schema` for each database (agency and tenants), pinging the server once."""
    version = await client.ping()
    if version is None:
        raise RetryableError(f"InfluxDB at {client.url} is unreachable; cannot create the schema")
    seen: set[str] = set()
    for database in databases:
        if database in seen:
            continue
        seen.add(database)
        try:
            await ensure_schema(
                client,
                database,
                raw_retention=raw_retention,
                rollup_5m_retention=rollup_5m_retention,
                rollup_1h_retention=rollup_1h_retention,
                version=version,
            )
        except InfluxError as exc:
            exc.add_note(f"while creating the schema of database {database!r}")
            raise
