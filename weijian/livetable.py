"""The terminal view of the embedded demo: each device's latest stored values and their age.

It reads back from InfluxDB, not from memory, so what it shows has really been stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from protocols.directory import DeviceInfo
from protocols.influx.client import InfluxClient, InfluxError

# Columns worth a glance, in order, with short headers; other quantities go to an "Other" column.
HEADLINE = {
    "co2_ppm": "CO₂\nppm",
    "pm25_ug_m3": "PM2.5\nµg/m³",
    "pm10_ug_m3": "PM10\nµg/m³",
    "hcho_mg_m3": "HCHO\nmg/m³",
    "temperature_c": "T\n°C",
    "humidity_pct": "RH\n%",
}


@dataclass(frozen=True)
class Latest:
    time_ms: int
    fields: Mapping[str, Any]


async def fetch_latest(client: InfluxClient, database: str, kinds: set[str]) -> dict[str, Latest]:
    """Latest row per device, one query per kind (bounded to the last day to stay cheap)."""
    latest: dict[str, Latest] = {}
    for kind in sorted(kinds):
        try:
            results = await client.query(
                f'SELECT * FROM "{kind}" WHERE time > now() - 1d GROUP BY "device" '
                "ORDER BY time DESC LIMIT 1",
                db=database,
            )
        except InfluxError as exc:
            if "database not found" in str(exc):
                return latest  # nothing written yet
            raise
        for series in results[0].get("series", []) if results else []:
            device = series.get("tags", {}).get("device")
            if not device or not series.get("values"):
                continue
            row = dict(zip(series["columns"], series["values"][0], strict=False))
            ts = int(row.pop("time"))
            fields = {
                k: v
                for k, v in row.items()
                if v is not None and k not in ("tenant", "site", "region")
            }
            latest[device] = Latest(ts, fields)
    return latest


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _age(seconds: float) -> Text:
    style = "green" if seconds < 30 else "yellow" if seconds < 300 else "red"
    label = (
        f"{seconds:.0f}s"
        if seconds < 120
        else f"{seconds / 60:.0f}m"
        if seconds < 7200
        else f"{seconds / 3600:.0f}h"
    )
    return Text(label, style=style)


def render(
    devices: Sequence[DeviceInfo],
    latest: Mapping[str, Latest],
    summary: Mapping[str, Any],
    site_names: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Table:
    now = time.time() if now is None else now
    s = summary
    caption = (
        f"received {s.get('received', 0)} · stored {s.get('stored', 0)} · "
        f"rejected {s.get('rejected', 0)} · spool {s.get('spool_depth', 0)} · "
        f"dead-lettered {s.get('dead_lettered', 0)}"
    )
    if s.get("write_p50_ms") is not None:
        caption += f" · write p50 ≤{s['write_p50_ms']:.0f} ms"
    table = Table(
        title="Weijian · latest readings stored in InfluxDB", caption=caption, expand=True
    )
    show_kind = len({d.kind for d in devices}) > 1
    others = {
        device: ", ".join(
            f"{k}={_fmt(v)}" for k, v in sorted(row.fields.items()) if k not in HEADLINE
        )
        for device, row in latest.items()
    }
    show_other = any(others.values())
    table.add_column("Site", overflow="ellipsis", no_wrap=True, ratio=3)
    table.add_column("Device", overflow="fold", ratio=2)
    if show_kind:
        table.add_column("Kind")
    for header in HEADLINE.values():
        table.add_column(header, justify="right", no_wrap=True)
    if show_other:
        table.add_column("Other")
    table.add_column("Age", justify="right", no_wrap=True)
    names = site_names or {}
    for dev in sorted(devices, key=lambda d: (d.tenant, d.site, d.device)):
        row = latest.get(dev.device)
        cells: list[str | Text] = [names.get(dev.site, dev.site), dev.device]
        if show_kind:
            cells.append(dev.kind)
        if row is None:
            cells += ["–"] * len(HEADLINE) + ([""] if show_other else [])
            table.add_row(*cells, Text("no data", style="dim"))
            continue
        cells += [_fmt(row.fields[q]) if q in row.fields else "–" for q in HEADLINE]
        if show_other:
            cells.append(others.get(dev.device, ""))
        table.add_row(*cells, _age(now - row.time_ms / 1000))
    return table
