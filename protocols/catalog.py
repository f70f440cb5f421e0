"""Quantities and device kinds, loaded from the data files beside this module.

A quantity's name fixes its unit (``turbidity_ntu`` is always NTU), so a number never travels
without knowing what it measures. A kind is one InfluxDB measurement and lists what it may report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.datafile import load_yaml_model

DATA_DIR = Path(__file__).resolve().parent / "data"
ValueType = Literal["float", "int", "bool", "str"]
_M = TypeVar("_M", bound=BaseModel)


class QuantitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: str | None = None
    description: str
    type: ValueType = "float"
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _range_is_ordered(self) -> QuantitySpec:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)} has its bounds reversed")
        if self.type in ("float", "int") and self.unit is None:
            raise ValueError("a numeric quantity needs a unit")
        return self


class KindSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    quantities: list[str] = Field(min_length=1)


class _QuantitiesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantities: dict[str, QuantitySpec]


class _KindsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    common: list[str] = []
    kinds: dict[str, KindSpec]


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str | None
    type: ValueType
    description: str
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    description: str
    quantities: frozenset[str]


class CatalogError(ValueError):
    """A data file is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class Catalog:
    quantities: Mapping[str, Quantity]
    kinds: Mapping[str, Kind]

    @classmethod
    def load(cls, quantities_path: Path, kinds_path: Path) -> Catalog:
        qfile = _parse(quantities_path, _QuantitiesFile)
        kfile = _parse(kinds_path, _KindsFile)
        quantities = {
            name: Quantity(
                name=name,
                unit=spec.unit,
                type=spec.type,
                description=spec.description,
                low=spec.range[0] if spec.range else None,
                high=spec.range[1] if spec.range else None,
            )
            for name, spec in qfile.quantities.items()
        }
        kinds: dict[str, Kind] = {}
        for name, kind in kfile.kinds.items():
            listed = [*kind.quantities, *kfile.common]
            unknown = sorted(set(listed) - quantities.keys())
            if unknown:
                raise CatalogError(
                    f"{kinds_path}: kind {name!r} lists unknown quantities {unknown}; "
                    f"define them in {quantities_path.name}"
                )
            kinds[name] = Kind(name, kind.description, frozenset(listed))
        return cls(quantities, kinds)


def _parse(path: Path, model: type[_M]) -> _M:
    return load_yaml_model(path, model, CatalogError)


@cache
def default_catalog() -> Catalog:
    return Catalog.load(DATA_DIR / "quantities.yaml", DATA_DIR / "kinds.yaml")
