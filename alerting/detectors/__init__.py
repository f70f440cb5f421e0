"""Streaming anomaly detectors for what thresholds miss (docs/detectors.md).

One small interface per series (:class:`Detector`): ``update(ts, value) -> score`` in [0, 1],
``state_size()``, ``warm_up(history)``, ``reset()``; deciding is a separate :class:`Decider`.
Which detectors run on which quantity, with which parameters: ``alerting/data/detectors.yaml``
(:func:`load_registry`).
"""

from alerting.detectors.base import Detector, SortedWindow, ramp_score
from alerting.detectors.decider import Decider, Decision
from alerting.detectors.drift import DriftDetector
from alerting.detectors.level_shift import LevelShiftDetector
from alerting.detectors.rate import RateDetector
from alerting.detectors.registry import (
    DETECTOR_TYPES,
    DetectorRegistry,
    DetectorSpec,
    RegistryError,
    SeriesPipeline,
    default_registry,
    load_registry,
)
from alerting.detectors.saturation import SaturationDetector
from alerting.detectors.spike import SpikeDetector
from alerting.detectors.stuck import StuckDetector

__all__ = [
    "DETECTOR_TYPES",
    "Decider",
    "Decision",
    "Detector",
    "DetectorRegistry",
    "DetectorSpec",
    "DriftDetector",
    "LevelShiftDetector",
    "RateDetector",
    "RegistryError",
    "SaturationDetector",
    "SeriesPipeline",
    "SortedWindow",
    "SpikeDetector",
    "StuckDetector",
    "default_registry",
    "load_registry",
    "ramp_score",
]
