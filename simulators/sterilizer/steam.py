"""Saturated steam for the simulated sterilizer: the IAPWS-IF97 region-4 line of protocols/steam.py.

One implementation serves the simulator (pressure that follows the chamber temperature) and the
detector (pressure above the line means air in the chamber), so they cannot disagree.
"""

from __future__ import annotations

from protocols.steam import (
    KELVIN,
    P_CRIT_MPA,
    P_MIN_MPA,
    T_CRIT_K,
    T_MIN_K,
    psat_kpa,
    saturation_pressure_mpa,
    saturation_temperature_k,
    tsat_c,
)

__all__ = [
    "KELVIN",
    "P_CRIT_MPA",
    "P_MIN_MPA",
    "T_CRIT_K",
    "T_MIN_K",
    "psat_kpa",
    "saturation_pressure_mpa",
    "saturation_temperature_k",
    "tsat_c",
]
