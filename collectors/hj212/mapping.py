"""HJ 212 parameter codes -> canonical quantities, per station, and a 2011 packet -> raw reading.

Two sources of codes, one convention (the private ``wj`` codes of ``hj212_codes.yaml``):

* the station's **profile** (``hj212.codes``), when the station names one that has them: it is the
  model's contract, so it is used alone. Its quantities are in the catalog's units by construction
  (profiles are checked against the catalog), so its codes convert nothing;
* otherwise the **global code map** (``protocols/data/hj212_codes.yaml``), with its unit
  conversions.

Either way a code whose quantity the device's kind does not measure is treated as unmapped:
passing it on would make the validator refuse the whole reading for one extra parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.catalog import Catalog
from protocols.hj212 import CodeMap, Packet
from protocols.profiles import Profile


@dataclass(frozen=True, slots=True)
class Target:
    """Where one code's value goes: ``quantity = value * scale + offset``."""

    quantity: str
    scale: float = 1.0
    offset: float = 0.0


CodeTable = Mapping[str, Target]


@dataclass(slots=True)
class Mapped:
    """One packet's reading, and the codes that had nowhere to go."""

    raw: dict[str, Any] | None  # {"ts", "fields", "flags"?}; None when no value mapped
    unmapped: list[str]
    empty: list[str]  # mapped codes that arrived without a value


class CodeTables:
    """Code tables per (profile, kind), built once and reused for every packet."""

    def __init__(
        self, code_map: CodeMap, profiles: Mapping[str, Profile], catalog: Catalog
    ) -> None:
        self.code_map = code_map
        self.profiles = profiles
        self.catalog = catalog
        self._global: dict[str, Target] = {
            code: Target(m.quantity, m.scale, m.offset) for code, m in code_map.items()
        }
        self._tables: dict[tuple[str | None, str], CodeTable] = {}

    def table(self, profile_id: str | None, kind: str) -> CodeTable:
        key = (profile_id, kind)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._build(profile_id, kind)
        return table

    def _build(self, profile_id: str | None, kind: str) -> CodeTable:
        source: Mapping[str, Target] = self._global
        profile = self.profiles.get(profile_id) if profile_id is not None else None
        if profile is not None and profile.hj212 is not None and profile.hj212.codes:
            source = {code: Target(quantity) for quantity, code in profile.hj212.codes.items()}
        kind_info = self.catalog.kinds.get(kind)
        measured = kind_info.quantities if kind_info is not None else ()
        return {code: t for code, t in source.items() if t.quantity in measured}

    def known_profile(self, profile_id: str) -> bool:
        return profile_id in self.profiles


def realtime_reading(packet: Packet, table: CodeTable, value_field: str = "Rtd") -> Mapped:
    """The raw reading (protocols/reading.py shape) of a real-time upload.

    ``ts`` is DataTime (the sampling moment, already an aware datetime); every flag the station
    sent is kept per quantity, including N, so the detector can tell "normal" from "not said".
    """
    fields: dict[str, float] = {}
    flags: dict[str, str] = {}
    unmapped: list[str] = []
    empty: list[str] = []
    for code, group in packet.params.items():
        target = table.get(code)
        if target is None:
            unmapped.append(code)
            continue
        value = group.values.get(value_field)
        if value is None:
            empty.append(code)
            continue
        if target.scale != 1.0 or target.offset != 0.0:
            value = value * target.scale + target.offset
        fields[target.quantity] = value
        if group.flag is not None:
            flags[target.quantity] = group.flag.value
    if not fields or packet.data_time is None:
        return Mapped(None, unmapped, empty)
    raw: dict[str, Any] = {"ts": packet.data_time.timestamp(), "fields": fields}
    if flags:
        raw["flags"] = flags
    return Mapped(raw, unmapped, empty)
