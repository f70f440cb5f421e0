"""Simulated steam sterilizer (压力蒸汽灭菌器, kind ``sterilizer``) and the steam tables it needs.

``steam.py``: IAPWS-IF97 region 4, saturation pressure ⇄ temperature. ``signal.py``: whole cycles
(B-D test, pre-vacuum pulses, heating, sterilizing hold, exhaust, drying) with injectable faults.
"""

from simulators.sterilizer.signal import (
    PHASES,
    PROGRAMMES,
    QUANTITIES,
    CycleRecord,
    Phase,
    Programme,
    SterilizerFaults,
    SterilizerSignal,
    SterilizerSpec,
    SterilizerType,
)
from simulators.sterilizer.steam import (
    psat_kpa,
    saturation_pressure_mpa,
    saturation_temperature_k,
    tsat_c,
)

__all__ = [
    "PHASES",
    "PROGRAMMES",
    "QUANTITIES",
    "CycleRecord",
    "Phase",
    "Programme",
    "SterilizerFaults",
    "SterilizerSignal",
    "SterilizerSpec",
    "SterilizerType",
    "psat_kpa",
    "saturation_pressure_mpa",
    "saturation_temperature_k",
    "tsat_c",
]
