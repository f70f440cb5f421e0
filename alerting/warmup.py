"""Warm the anomaly detectors up from InfluxDB after a start, so a restart does not blind them.

Two reads per kind and chunk of devices, both bounded whatever the history holds:

* **raw**: the last ``max_points`` readings per device within ``window_s`` (``GROUP BY device``
  makes the ``LIMIT`` per device) — enough for spike, level shift, stuck and rate, which look at
  the last few hundred samples;
* **hourly rollups** (``rollup_1h``, the schema's continuous query: ``mean_<field>`` per hour) for
  detectors whose window is longer than ``window_s`` — drift judges 72 hourly blocks, which raw
  history of a few hours cannot restore. Each such detector first gets one hourly mean per hour
  before the raw history starts, then the raw history like the others. A drift block is a median
  of its samples; the hour's mean stands in for it (the drift statistic trims its largest steps,
  so a mean pulled by one spike barely moves it). Where there is no ``rollup_1h`` (InfluxDB 2.x
  without the operator's tasks, ``manage_schema`` off) that read fails once, is logged, and the
  warm-up goes on with raw history only.

Identifiers are the registry's ``[A-Za-z0-9_.-]``, safe to quote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from alerting.detectors import SeriesPipeline
from protocols.influx.client import InfluxError

log = logging.getLogger(__name__)

ROLLUP_RP = "rollup_1h"
ROLLUP_S = 3600.0
MAX_HISTORY_S = 7 * 86400.0
_SKIP_COLUMNS = frozenset({"time", "device", "tenant", "site", "region"})
_MEAN = "mean_"

History = list[tuple[float, dict[str, Any]]]


def history_needed(pipeline: SeriesPipeline) -> float:
    """Seconds of history the pipeline's detector judges (0: a count of samples, not a time)."""
    return float(getattr(pipeline.detector, "history_s", 0.0))


async def _series(influx: Any, database: str, query: str, prefix: str = "") -> dict[str, History]:
    """device → [(unix seconds, values)] oldest first; ``prefix`` kept and stripped from fields."""
    out: dict[str, History] = {}
    for result in await influx.query(query, db=database):
        for series in result.get("series") or ():
            device = (series.get("tags") or {}).get("device")
            if device is None:
                continue
            columns = series["columns"]
            history: History = []
            for row in reversed(series["values"]):
                point = dict(zip(columns, row, strict=True))
                values = {
                    k[len(prefix) :]: v
                    for k, v in point.items()
                    if v is not None
                    and k not in _SKIP_COLUMNS
                    and k.startswith(prefix)
                    and not k.endswith("_flag")
                }
                history.append((point["time"] / 1000.0, values))
            out[device] = history
    return out


async def warm_up(
    influx: Any,
    database: str,
    devices: Mapping[str, tuple[str, Sequence[SeriesPipeline]]],
    window_s: float,
    *,
    max_points: int = 500,
    chunk: int = 100,
) -> int:
    """Replay each device's recent history into its detectors (oldest first).

    ``devices``: device → (kind, its pipelines). Returns the number of readings replayed (raw
    readings and hourly means)."""
    by_kind: dict[str, list[str]] = {}
    for device, (kind, pipelines) in devices.items():
        if pipelines:
            by_kind.setdefault(kind, []).append(device)
    replayed = 0
    rollups = True
    window = max(1, int(window_s))
    for kind, names in by_kind.items():
        for i in range(0, len(names), chunk):
            part = names[i : i + chunk]
            match = " OR ".join(f"\"device\" = '{d}'" for d in part)
            raw = await _series(
                influx,
                database,
                f'SELECT * FROM "{kind}" WHERE ({match}) AND time > now() - {window}s '
                f'GROUP BY "device" ORDER BY time DESC LIMIT {int(max_points)}',
            )
            longest = max((history_needed(p) for d in part for p in devices[d][1]), default=0.0)
            hourly: dict[str, History] = {}
            if longest > window_s and rollups:
                span = int(min(longest, MAX_HISTORY_S) + ROLLUP_S)
                try:
                    hourly = await _series(
                        influx,
                        database,
                        f'SELECT /^{_MEAN}/ FROM "{ROLLUP_RP}"."{kind}" WHERE ({match}) '
                        f'AND time > now() - {span}s GROUP BY "device" '
                        f"ORDER BY time DESC LIMIT {math.ceil(span / ROLLUP_S)}",
                        prefix=_MEAN,
                    )
                except InfluxError as exc:  # no rollup_1h here (2.x without tasks, no schema)
                    rollups = False
                    log.warning(
                        "alerting: no hourly rollups to warm drift up from (%s); raw history only",
                        exc,
                    )
            for device in part:
                history = raw.get(device, [])
                pipelines = devices[device][1]
                long_ones = [p for p in pipelines if history_needed(p) > window_s]
                if long_ones and device in hourly:
                    # hours wholly before the first raw reading (a drift block must not be
                    # reopened by an hour the raw history also covers)
                    first = history[0][0] if history else math.inf
                    cutoff = math.floor(first / ROLLUP_S) * ROLLUP_S
                    means = [(ts, v) for ts, v in hourly[device] if ts < cutoff]
                    for pipeline in long_ones:
                        pipeline.warm_up(means)
                    replayed += len(means)
                for pipeline in pipelines:
                    pipeline.warm_up(history)
                replayed += len(history)
    return replayed
