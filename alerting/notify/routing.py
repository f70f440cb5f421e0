"""Who hears about an alert: the officers of the site's jurisdiction, then the levels above it.

Jurisdictions are keyed by 6-digit administrative division codes: ``330102`` a county/district,
``330100`` its city, ``330000`` its province. The registry stores each jurisdiction's officers
as ``[{"name", "role", "channels": [{"type", "address"}]}]`` (gateway/schemas.py ``Officer``);
the platform turns that into an :data:`OfficerLookup` and injects it, so this module never
touches the database.

Levels. The *tiers* of a region are its chain county → city → province, keeping only the codes
that have officers. Level 0 is the first tier: the county's own officers, or — if the county has
none — its city's, or else its province's. Escalation level *n* adds tier *n*: the audience at
level 1 is tier 0 plus tier 1 (so the county still hears that it was escalated), and so on up to
the last tier; a region with one tier cannot escalate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alerting.model import Severity
from alerting.notify.notification import Recipient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Contact:
    type: str  # "email" | "sms" | "webhook" (the gateway's Channel types)
    address: str
    min_severity: Severity | None = None  # optional per-contact floor on top of the channel's


@dataclass(frozen=True, slots=True)
class Officer:
    name: str
    role: str = ""
    channels: tuple[Contact, ...] = ()


OfficerLookup = Callable[[str], Sequence[Officer]]
"""Region code → that jurisdiction's officers (empty if none or unknown)."""


def officers_from_json(items: Iterable[Mapping[str, Any]] | None) -> list[Officer]:
    """Officers as the registry stores them; malformed entries are skipped with a warning
    (one bad contact must not silence a whole district)."""
    officers = []
    for item in items or ():
        try:
            contacts = []
            for ch in item.get("channels") or ():
                floor = ch.get("min_severity")
                contacts.append(
                    Contact(
                        str(ch["type"]),
                        str(ch["address"]),
                        Severity.parse(floor) if floor is not None else None,
                    )
                )
            officers.append(
                Officer(str(item["name"]), str(item.get("role") or ""), tuple(contacts))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("skipping a malformed officer entry %r: %s", item, exc)
    return officers


def static_lookup(
    jurisdictions: Mapping[str, Iterable[Officer | Mapping[str, Any]]],
) -> OfficerLookup:
    """A lookup over a fixed mapping (a registry snapshot, tests); values may be raw JSON."""
    table: dict[str, list[Officer]] = {}
    for code, officers in jurisdictions.items():
        items = list(officers)
        parsed = [o for o in items if isinstance(o, Officer)]
        parsed += officers_from_json(o for o in items if not isinstance(o, Officer))
        table[code] = parsed
    return lambda code: table.get(code, [])


def region_chain(region: str) -> list[str]:
    """``330102`` → ``["330102", "330100", "330000"]``; a city or province code gives fewer.

    Anything that is not a 6-digit code stands alone.
    """
    if len(region) != 6 or not region.isdigit():
        return [region]
    chain = [region]
    for code in (region[:4] + "00", region[:2] + "0000"):
        if code not in chain:
            chain.append(code)
    return chain


@dataclass(frozen=True, slots=True)
class Tier:
    region: str
    officers: tuple[Officer, ...]


class Router:
    """Alert region + severity + escalation level → the recipients on the enabled channels."""

    def __init__(self, lookup: OfficerLookup) -> None:
        self.lookup = lookup

    def tiers(self, region: str) -> list[Tier]:
        tiers = []
        for code in region_chain(region):
            try:
                officers = tuple(self.lookup(code))
            except Exception:  # the lookup is the platform's; its failure must not stop alerts
                log.exception("officer lookup failed for region %s", code)
                officers = ()
            if officers:
                tiers.append(Tier(code, officers))
        return tiers

    def max_level(self, region: str) -> int:
        """The highest escalation level this region has (0: nobody above the first tier)."""
        return max(0, len(self.tiers(region)) - 1)

    def recipients(
        self,
        region: str,
        severity: Severity,
        level: int,
        floors: Mapping[str, Severity],
    ) -> list[Recipient]:
        """Contacts of tiers 0..level whose type is in ``floors`` (channel → minimum severity)
        and whose floors the severity meets; one per (channel, address)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for tier in self.tiers(region)[: max(0, level) + 1]:
            for officer in tier.officers:
                for contact in officer.channels:
                    floor = floors.get(contact.type)
                    if floor is None or severity < floor:
                        continue
                    if contact.min_severity is not None and severity < contact.min_severity:
                        continue
                    key = (contact.type, contact.address)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(Recipient(contact.type, contact.address, officer.name, tier.region))
        return out
