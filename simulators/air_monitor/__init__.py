"""Simulated public-place indoor-air monitor (公共场所室内空气质量监测仪, kind ``air_monitor``).

See ``signal.py`` for the model and ``simulators/README.md`` for the physics and its numbers.
"""

from simulators.air_monitor.signal import (
    OCCUPANCY_PROFILES,
    QUANTITIES,
    VENUE_DEFAULTS,
    AirMonitorSignal,
    AirMonitorSpec,
    VenueType,
)

__all__ = [
    "OCCUPANCY_PROFILES",
    "QUANTITIES",
    "VENUE_DEFAULTS",
    "AirMonitorSignal",
    "AirMonitorSpec",
    "VenueType",
]
