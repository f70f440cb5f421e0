"""Which detectors run on which series, with which parameters: ``alerting/data/detectors.yaml``.

Parameters are data for the same reason limits are: a supervisor tuning false alarms on one kind
of probe should change a number in a file, not code. The file has per-quantity defaults
(``quantities:``), per-kind replacements (``kinds: <kind>: <quantity>:`` replaces that quantity's
whole detector list on that kind, e.g. a sterilizer's chamber temperature is not an air
temperature) and multi-input detectors per kind (``kinds: <kind>: pairs:``). Everything is
validated at load time by building every detector once; errors name the file and the entry.

A :class:`SeriesPipeline` is what the stream processor keeps per (device, detector): the detector,
its decider (whose threshold is the detector's learning gate) and the ``when`` filter (e.g. the
steam check only during ``cycle_phase: sterilizing``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alerting.detectors.base import Detector
from alerting.detectors.decider import Decider, Decision
from alerting.detectors.drift import DriftDetector
from alerting.detectors.level_shift import LevelShiftDetector
from alerting.detectors.rate import RateDetector
from alerting.detectors.saturation import SaturationDetector
from alerting.detectors.spike import SpikeDetector
from alerting.detectors.stuck import StuckDetector
from protocols.catalog import Catalog, default_catalog
from protocols.datafile import load_yaml_model

DETECTORS_FILE = Path(__file__).resolve().parent.parent / "data" / "detectors.yaml"


def _spike(p: Mapping[str, Any], resolution: float) -> SpikeDetector:
    return SpikeDetector(**{"min_scale": 2.0 * resolution, **p})


def _level_shift(p: Mapping[str, Any], resolution: float) -> LevelShiftDetector:
    return LevelShiftDetector(**{"min_scale": 2.0 * resolution, **p})


def _drift(p: Mapping[str, Any], resolution: float) -> DriftDetector:
    return DriftDetector(**p)


def _stuck(p: Mapping[str, Any], resolution: float) -> StuckDetector:
    return StuckDetector(**{"resolution": resolution, **p})


def _rate(p: Mapping[str, Any], resolution: float) -> RateDetector:
    q = dict(p)
    per_min = q.pop("max_per_min", None)
    if per_min is not None:
        q["max_per_s"] = per_min / 60.0
        # A limit per minute judges any change within a minute against that minute: at a 5 s
        # interval, instrument noise between two samples is not a 12-fold rate.
        q.setdefault("min_dt", 60.0)
    return RateDetector(**q)


def _saturation(p: Mapping[str, Any], resolution: float) -> SaturationDetector:
    return SaturationDetector(**p)


#: Detector type → (factory(params, resolution), number of inputs).
DETECTOR_TYPES: dict[str, tuple[Callable[[Mapping[str, Any], float], Any], int]] = {
    "spike": (_spike, 1),
    "level_shift": (_level_shift, 1),
    "drift": (_drift, 1),
    "stuck": (_stuck, 1),
    "rate": (_rate, 1),
    "steam_saturation": (_saturation, 2),
}


class RegistryError(ValueError):
    """The detector file is invalid; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DeciderSpec(_Strict):
    threshold: float = Field(default=0.5, gt=0, le=1)
    clear: float | None = Field(default=None, ge=0, le=1)
    for_samples: int = Field(default=1, ge=1)
    clear_samples: int = Field(default=3, ge=1)
    quantile: float | None = Field(default=None, ge=0.5, lt=1)
    window: int = Field(default=1000, ge=10, le=100_000)


class _Entry(BaseModel):
    """One detector on one series: its parameters, plus what the registry itself reads."""

    model_config = ConfigDict(extra="allow", frozen=True)
    alert: str | None = None
    why: str | None = None  # the justification, for a person (required for rate limits)
    decider: _DeciderSpec | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Series(_Strict):
    resolution: float | None = Field(default=None, gt=0)
    detectors: dict[str, _Entry] = Field(default_factory=dict)


class _Pair(_Strict):
    type: str
    inputs: tuple[str, ...]
    when: dict[str, list[str]] = Field(default_factory=dict)
    alert: str | None = None
    why: str | None = None
    decider: _DeciderSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class _Kind(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    pairs: dict[str, _Pair] = Field(default_factory=dict)

    @property
    def series(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _File(_Strict):
    decider: _DeciderSpec = Field(default_factory=_DeciderSpec)
    quantities: dict[str, _Series] = Field(default_factory=dict)
    kinds: dict[str, _Kind] = Field(default_factory=dict)


@dataclass(frozen=True)
class DetectorSpec:
    """One detector configured for one series of a kind (or every kind, ``kind=None``)."""

    name: str  # the entry's name: the detector type, or a pair's name
    detector: str  # the detector type (a key of DETECTOR_TYPES)
    kind: str | None
    inputs: tuple[str, ...]  # quantities fed to update(), in order
    params: Mapping[str, Any]
    resolution: float  # default when the device's profile does not say
    alert: str  # the alert rule this detector raises, e.g. "anomaly:spike"
    decider: Mapping[str, Any]
    when: Mapping[str, frozenset[str]] = field(default_factory=dict)
    why: str | None = None

    def build(self, resolution: float | None = None) -> Any:
        """A fresh detector; ``resolution`` from the device's profile when it has one."""
        factory = DETECTOR_TYPES[self.detector][0]
        detector = factory(self.params, resolution or self.resolution)
        detector.gate = self.decider["threshold"]
        return detector

    def build_decider(self) -> Decider:
        d = dict(self.decider)
        threshold = d.pop("threshold")
        clear = d.pop("clear")
        return Decider(threshold, clear, **d)

    def pipeline(self, resolution: float | None = None) -> SeriesPipeline:
        return SeriesPipeline(self, self.build(resolution), self.build_decider())


class SeriesPipeline:
    """One detector and its decider on one device's series: what the stream processor keeps."""

    __slots__ = ("_one", "decider", "detector", "spec")

    def __init__(self, spec: DetectorSpec, detector: Detector, decider: Decider) -> None:
        self.spec = spec
        self.detector = detector
        self.decider = decider
        # the common case, one input and no filter, takes a short path
        self._one = spec.inputs[0] if len(spec.inputs) == 1 and not spec.when else None

    def _args(self, values: Mapping[str, Any]) -> tuple[float, ...] | None:
        for quantity, allowed in self.spec.when.items():
            if values.get(quantity) not in allowed:
                return None
        args = []
        for quantity in self.spec.inputs:
            v = values.get(quantity)
            if not isinstance(v, int | float) or isinstance(v, bool):
                return None
            args.append(float(v))
        return tuple(args)

    def update(self, ts: float, values: Mapping[str, Any]) -> tuple[float, Decision] | None:
        """Score and decide one reading (``values``: quantity → value); None when the reading
        does not carry this series' inputs or fails its ``when`` filter."""
        one = self._one
        if one is not None:
            v = values.get(one)
            if v.__class__ is not float:
                if not isinstance(v, int) or isinstance(v, bool):
                    return None
                v = float(v)
            score = self.detector.update(ts, v)
        else:
            args = self._args(values)
            if args is None:
                return None
            score = self.detector.update(ts, *args)  # type: ignore[call-arg]
        return score, self.decider.update(score)

    def warm_up(self, history: Iterable[tuple[float, Mapping[str, Any]]]) -> None:
        """Restore the detector from recent readings (oldest first); the decider starts clear."""
        rows = []
        for ts, values in history:
            args = self._args(values)
            if args is not None:
                rows.append((ts, *args))
        self.detector.warm_up(rows)


class DetectorRegistry:
    def __init__(
        self,
        specs: Iterable[DetectorSpec],
        catalog: Catalog,
        source: str,
        silenced: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.source = source
        self._catalog = catalog
        self._specs = tuple(specs)
        self._silenced = frozenset(silenced)  # (kind, quantity) with an empty detector list
        self._by_kind: dict[str, tuple[DetectorSpec, ...]] = {}

    @property
    def specs(self) -> tuple[DetectorSpec, ...]:
        return self._specs

    def for_kind(self, kind: str) -> tuple[DetectorSpec, ...]:
        """Every detector that runs on a device of ``kind``: the kind's own entries replace the
        quantity defaults for that quantity."""
        found = self._by_kind.get(kind)
        if found is None:
            quantities = self._catalog.kinds[kind].quantities
            own = [s for s in self._specs if s.kind == kind]
            overridden = {s.inputs[0] for s in own if len(s.inputs) == 1}
            overridden |= {q for (k, q) in self._silenced if k == kind}
            defaults = [
                s
                for s in self._specs
                if s.kind is None and s.inputs[0] in quantities and s.inputs[0] not in overridden
            ]
            found = self._by_kind[kind] = tuple(defaults + own)
        return found

    def for_series(self, kind: str, quantity: str) -> tuple[DetectorSpec, ...]:
        return tuple(s for s in self.for_kind(kind) if s.inputs == (quantity,))

    def pipelines(
        self, kind: str, resolutions: Mapping[str, float] | None = None
    ) -> list[SeriesPipeline]:
        """Fresh pipelines for one device; ``resolutions`` from its profile (quantity → step)."""
        res = resolutions or {}
        return [s.pipeline(res.get(s.inputs[0])) for s in self.for_kind(kind)]


def load_registry(path: Path | None = None, catalog: Catalog | None = None) -> DetectorRegistry:
    """Read and validate the detector file (default ``alerting/data/detectors.yaml``)."""
    path = path or DETECTORS_FILE
    catalog = catalog or default_catalog()
    doc = load_yaml_model(path, _File, RegistryError)
    problems: list[str] = []
    specs: list[DetectorSpec] = []
    emptied: set[tuple[str, str]] = set()
    base = doc.decider.model_dump()

    def add_series(where: str, kind: str | None, quantity: str, series: _Series) -> None:
        q = catalog.quantities.get(quantity)
        if q is None or q.type not in ("float", "int"):
            problems.append(f"{where}: {quantity!r} is not a numeric quantity of the catalog")
            return
        default = doc.quantities.get(quantity)
        resolution = series.resolution or (default.resolution if default else None)
        if resolution is None:
            problems.append(f"{where}.resolution: required (the instrument's smallest step)")
            return
        if kind is not None and not series.detectors:
            emptied.add((kind, quantity))
        for name, entry in series.detectors.items():
            spec = _spec(
                f"{where}.detectors.{name}",
                name,
                name,
                kind,
                (quantity,),
                entry.params,
                resolution,
                entry.alert,
                entry.decider,
                {},
                entry.why,
                base,
                problems,
            )
            if spec is not None:
                specs.append(spec)

    for quantity, series in doc.quantities.items():
        add_series(f"quantities.{quantity}", None, quantity, series)
    for kind, kentry in doc.kinds.items():
        where = f"kinds.{kind}"
        if kind not in catalog.kinds:
            problems.append(f"{where}: unknown kind (known: {', '.join(sorted(catalog.kinds))})")
            continue
        for quantity, raw_series in kentry.series.items():
            try:
                series = _Series.model_validate(raw_series)
            except ValidationError as exc:
                problems.append(f"{where}.{quantity}: {_explain(exc)}")
                continue
            if quantity not in catalog.kinds[kind].quantities:
                problems.append(f"{where}.{quantity}: {kind} does not report this quantity")
                continue
            add_series(f"{where}.{quantity}", kind, quantity, series)
        for name, pair in kentry.pairs.items():
            pwhere = f"{where}.pairs.{name}"
            reported = catalog.kinds[kind].quantities
            missing = [q for q in (*pair.inputs, *pair.when) if q not in reported]
            if missing:
                problems.append(f"{pwhere}: {kind} does not report {', '.join(missing)}")
                continue
            when = {q: frozenset(v) for q, v in pair.when.items()}
            spec = _spec(
                pwhere,
                name,
                pair.type,
                kind,
                pair.inputs,
                pair.params,
                0.0,
                pair.alert,
                pair.decider,
                when,
                pair.why,
                base,
                problems,
            )
            if spec is not None:
                specs.append(spec)
    if problems:
        raise RegistryError(f"{path}: " + "; ".join(problems))
    return DetectorRegistry(specs, catalog, str(path), emptied)


def _spec(
    where: str,
    name: str,
    detector: str,
    kind: str | None,
    inputs: tuple[str, ...],
    params: Mapping[str, Any],
    resolution: float,
    alert: str | None,
    decider: _DeciderSpec | None,
    when: Mapping[str, frozenset[str]],
    why: str | None,
    base: Mapping[str, Any],
    problems: list[str],
) -> DetectorSpec | None:
    known = DETECTOR_TYPES.get(detector)
    if known is None:
        problems.append(f"{where}: unknown detector {detector!r} ({', '.join(DETECTOR_TYPES)})")
        return None
    if known[1] != len(inputs):
        problems.append(f"{where}: {detector} takes {known[1]} inputs, got {len(inputs)}")
        return None
    if detector == "rate" and not why:
        problems.append(f"{where}: a rate limit needs 'why' (the physics that makes it impossible)")
    spec = DetectorSpec(
        name=name,
        detector=detector,
        kind=kind,
        inputs=inputs,
        params=dict(params),
        resolution=resolution,
        alert=alert or f"anomaly:{'rate_of_change' if detector == 'rate' else detector}",
        decider={**base, **(decider.model_dump(exclude_unset=True) if decider else {})},
        when=dict(when),
        why=why,
    )
    try:
        spec.build()
        spec.build_decider()
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return None
    return spec


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


@cache
def default_registry() -> DetectorRegistry:
    return load_registry()
