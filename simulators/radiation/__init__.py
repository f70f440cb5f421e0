"""Simulated radiation instruments at X-ray rooms: ambient dose-rate monitors (kind
``dose_rate_monitor``) and personal dosimeters (kind ``dosimeter``).

See ``signal.py``: an exposure schedule per room, Poisson counting statistics, leakage faults, and
Hp(10) accumulated over the monitoring period.
"""

from simulators.radiation.signal import (
    DETECTOR_DEFAULTS,
    DOSIMETER_QUANTITIES,
    MODALITY_DEFAULTS,
    MONITOR_QUANTITIES,
    ROOM_PROFILES,
    Detector,
    DoseRateMonitorSignal,
    DoseRateMonitorSpec,
    Modality,
    PersonalDosimeterSignal,
    PersonalDosimeterSpec,
    RadiationFaults,
    XRayRoom,
    XRayRoomSpec,
)

__all__ = [
    "DETECTOR_DEFAULTS",
    "DOSIMETER_QUANTITIES",
    "MODALITY_DEFAULTS",
    "MONITOR_QUANTITIES",
    "ROOM_PROFILES",
    "Detector",
    "DoseRateMonitorSignal",
    "DoseRateMonitorSpec",
    "Modality",
    "PersonalDosimeterSignal",
    "PersonalDosimeterSpec",
    "RadiationFaults",
    "XRayRoom",
    "XRayRoomSpec",
]
