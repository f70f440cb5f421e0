"""``site_info``: where each site is, in InfluxDB, so the wall's map can find it.

Coordinates, names and venue types live in the registry; InfluxQL cannot join the registry, and
putting coordinates on every reading or alert would cost a field per point for a value that
changes once in a site's life. Instead the platform writes one small point per site, every
``SITE_INFO_INTERVAL_S`` seconds (and right after a site is created or moved), to the agency
database; the map reads the newest point per site within ``influxql.SITE_INFO_LOOKBACK`` (1 h),
so a deleted site drops off the map within the hour. 10,000 sites every 5 minutes is 33 points/s.

Point (docs/schema.md):

    site_info,region=<code>,site=<id>,tenant=<id>,venue_type=<type>
        name="<site name>",tenant_name="<tenant name>",lat=<float>,lon=<float>,devices=<float>
        <ms timestamp>

``lat``/``lon`` (WGS-84 degrees) are omitted for a site without coordinates (it is then counted
but not mapped); ``tenant_name`` and ``devices`` when the caller does not know them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from protocols.lineprotocol import FieldValue, encode_line

MEASUREMENT = "site_info"
SITE_INFO_INTERVAL_S = 300.0

# Attribute names of the registry's Site row (gateway/registry/models.py) and, second, of a
# scenario's SiteConfig (simulators/scenario.py); mappings may use either.
_ALIASES: dict[str, tuple[str, ...]] = {
    "site": ("id", "site"),
    "tenant": ("tenant_id", "tenant"),
    "name": ("name",),
    "region": ("region_code", "region"),
    "lat": ("latitude", "lat"),
    "lon": ("longitude", "lon"),
    "venue_type": ("venue_type",),
}


def _get(site: Any, key: str) -> Any:
    for name in _ALIASES[key]:
        value = site.get(name) if isinstance(site, Mapping) else getattr(site, name, None)
        if value is not None and not (key == "tenant" and not isinstance(value, str)):
            return value
    return None


def _tenant_name(site: Any) -> str | None:
    explicit = site.get("tenant_name") if isinstance(site, Mapping) else None
    if isinstance(explicit, str):
        return explicit
    tenant = site.get("tenant") if isinstance(site, Mapping) else getattr(site, "tenant", None)
    name = getattr(tenant, "name", None)  # a registry Tenant row, when loaded
    return name if isinstance(name, str) else None


def _devices(site: Any) -> int | None:
    value = site.get("devices") if isinstance(site, Mapping) else getattr(site, "devices", None)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return len(value)
    return None


def site_info_line(site: Any, time_ms: int) -> str:
    """One ``site_info`` line for a registry ``Site`` row, a scenario site or a mapping."""
    site_id, tenant, region = _get(site, "site"), _get(site, "tenant"), _get(site, "region")
    if not (isinstance(site_id, str) and isinstance(tenant, str)):
        raise ValueError(f"site {site_id!r}: a site needs an id and a tenant id")
    tags = {"site": site_id, "tenant": tenant}
    if region:
        tags["region"] = str(region)
    venue = _get(site, "venue_type")
    if venue:
        tags["venue_type"] = str(venue)
    fields: dict[str, FieldValue] = {"name": str(_get(site, "name") or site_id)}
    tenant_name = _tenant_name(site)
    if tenant_name:
        fields["tenant_name"] = tenant_name
    lat, lon = _get(site, "lat"), _get(site, "lon")
    if lat is not None and lon is not None:
        lat, lon = float(lat), float(lon)
        if not (
            math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
        ):
            raise ValueError(f"site {site_id!r}: coordinates ({lat}, {lon}) are not WGS-84 degrees")
        fields["lat"] = lat
        fields["lon"] = lon
    devices = _devices(site)
    if devices is not None:
        fields["devices"] = float(devices)
    return encode_line(MEASUREMENT, tags, fields, time_ms)


def site_info_lines(sites: Iterable[Any], time_ms: int | None = None) -> list[str]:
    """Lines (millisecond precision) for every site, all stamped ``time_ms`` (default: now).

    The platform calls this every ``SITE_INFO_INTERVAL_S`` with the registry's sites and writes
    the lines to the agency database (``/write?db=weijian&precision=ms``).
    """
    stamp = int(time.time() * 1000) if time_ms is None else time_ms
    return [site_info_line(site, stamp) for site in sites]
