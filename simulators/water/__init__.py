"""Simulated drinking-water probes (kind ``water_probe``), HJ 212 water-quality stations (kind
``water_station``) and pool monitors (kind ``pool_monitor``).

See ``signal.py`` for the model: chlorine dosing and decay, turbidity events, pH, temperature,
conductivity; for pools, bather load, combined chlorine, pH dosing and ORP.
"""

from simulators.water.signal import (
    POOL_PROFILE,
    POOL_QUANTITIES,
    PROBE_QUANTITIES,
    SITE_DEFAULTS,
    STATION_QUANTITIES,
    PoolFaults,
    PoolSignal,
    PoolSpec,
    WaterProbeFaults,
    WaterProbeSignal,
    WaterProbeSpec,
    WaterSite,
    WaterStationSignal,
    orp_mv,
    pka_hocl,
)

__all__ = [
    "POOL_PROFILE",
    "POOL_QUANTITIES",
    "PROBE_QUANTITIES",
    "SITE_DEFAULTS",
    "STATION_QUANTITIES",
    "PoolFaults",
    "PoolSignal",
    "PoolSpec",
    "WaterProbeFaults",
    "WaterProbeSignal",
    "WaterProbeSpec",
    "WaterSite",
    "WaterStationSignal",
    "orp_mv",
    "pka_hocl",
]
