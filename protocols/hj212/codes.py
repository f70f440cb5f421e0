"""HJ 212 parameter codes -> canonical quantities, from ``protocols/data/hj212_codes.yaml``.

The mapping is data a supervisor can audit and override per deployment; it is checked against the
catalog when loaded so that a typo fails at start, naming the file and the code, instead of
silently dropping a parameter at run time.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from protocols.catalog import DATA_DIR, Catalog, CatalogError, default_catalog
from protocols.datafile import load_yaml_model

DEFAULT_PATH = DATA_DIR / "hj212_codes.yaml"
_CODE = re.compile(r"[A-Za-z0-9]{1,16}")  # as the segment parser accepts them


class CodeMapError(CatalogError):
    """The code map is invalid; the message names the file and the code."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    quantity: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    private: bool = False
    source: str
    confidence: Literal["A", "B", "C"]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codes: dict[str, _Entry]


@dataclass(frozen=True, slots=True)
class CodeMapping:
    code: str
    name: str
    quantity: str
    unit: str  # as the station sends it
    scale: float
    offset: float
    private: bool  # not an HJ 212 code: agreed with the vendor
    source: str
    confidence: str

    def to_canonical(self, value: float) -> float:
        """The value in the quantity's canonical unit."""
        return value * self.scale + self.offset


class CodeMap(Mapping[str, CodeMapping]):
    """Read-only code -> :class:`CodeMapping`, with the file it came from."""

    def __init__(self, mappings: Mapping[str, CodeMapping], path: Path) -> None:
        self._by_code = dict(mappings)
        self.path = path

    def __getitem__(self, code: str) -> CodeMapping:
        return self._by_code[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_code)

    def __len__(self) -> int:
        return len(self._by_code)

    def quantity(self, code: str) -> str | None:
        mapping = self._by_code.get(code)
        return mapping.quantity if mapping else None


def load_code_map(path: Path | str | None = None, catalog: Catalog | None = None) -> CodeMap:
    """Load and check a code map (default: the project's); raises :class:`CodeMapError`."""
    if path is None and catalog is None:
        return _default_code_map()
    return _load(Path(path) if path is not None else DEFAULT_PATH, catalog or default_catalog())


@cache
def _default_code_map() -> CodeMap:
    return _load(DEFAULT_PATH, default_catalog())


def _load(path: Path, catalog: Catalog) -> CodeMap:
    parsed = load_yaml_model(path, _File, CodeMapError)
    out: dict[str, CodeMapping] = {}
    claimed: dict[str, str] = {}
    for code, entry in parsed.codes.items():
        where = f"{path}: code {code!r}"
        if _CODE.fullmatch(code) is None:
            raise CodeMapError(f"{where}: a code is 1-16 letters or digits")
        quantity = catalog.quantities.get(entry.quantity)
        if quantity is None:
            raise CodeMapError(
                f"{where}: unknown quantity {entry.quantity!r} (not in quantities.yaml)"
            )
        if quantity.type not in ("float", "int"):
            raise CodeMapError(f"{where}: quantity {entry.quantity!r} is not numeric")
        if not (math.isfinite(entry.scale) and entry.scale != 0 and math.isfinite(entry.offset)):
            raise CodeMapError(f"{where}: scale must be finite and non-zero, offset finite")
        converts = entry.scale != 1 or entry.offset != 0
        if not converts and _unit(entry.unit) != _unit(quantity.unit or ""):
            raise CodeMapError(
                f"{where}: unit {entry.unit!r} differs from {entry.quantity}'s {quantity.unit!r} "
                "but no scale/offset converts it"
            )
        if entry.quantity in claimed:
            raise CodeMapError(
                f"{where}: quantity {entry.quantity!r} is already mapped from code "
                f"{claimed[entry.quantity]!r}"
            )
        claimed[entry.quantity] = code
        out[code] = CodeMapping(
            code=code,
            name=entry.name,
            quantity=entry.quantity,
            unit=entry.unit,
            scale=entry.scale,
            offset=entry.offset,
            private=entry.private,
            source=entry.source,
            confidence=entry.confidence,
        )
    return CodeMap(out, path)


def _unit(unit: str) -> str:
    """Compare units by meaning: µ (micro sign) and μ (Greek mu) are the same."""
    return unicodedata.normalize("NFKC", unit).strip()
