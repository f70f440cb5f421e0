"""Saturated steam for the sterilizer checks: IAPWS-IF97 region 4, pure Python.

During the hold a sterilizer chamber must hold *saturated* steam, so its pressure is fixed by its
temperature; air or another non-condensable gas shows as pressure above that line, superheat as
pressure below it (WS 310.3, reference/standards.md §4). The detector (alerting/) and the simulated
sterilizer (simulators/sterilizer/steam.py re-exports it) share this one implementation of the
public equations: (30) Ps(T) and (31) Ts(p) of the
IAPWS Revised Release on IF97 (2007), coefficients of its Table 34. Both are explicit (a quadratic
in the transformed variable), so there is no iteration; tests check them against the release's
verification tables 35 and 36.

Valid from the triple point (273.15 K, 611.213 Pa) to the critical point (647.096 K, 22.064 MPa).
"""

from __future__ import annotations

import math

_N1 = 0.11670521452767e4
_N2 = -0.72421316703206e6
_N3 = -0.17073846940092e2
_N4 = 0.12020824702470e5
_N5 = -0.32325550322333e7
_N6 = 0.14915108613530e2
_N7 = -0.48232657361591e4
_N8 = 0.40511340542057e6
_N9 = -0.23855557567849
_N10 = 0.65017534844798e3

KELVIN = 273.15
T_MIN_K = 273.15
T_CRIT_K = 647.096
P_MIN_MPA = 611.212677e-6  # Ps(273.15 K): the equation's own lower end
P_CRIT_MPA = 22.064
T_MIN_C = T_MIN_K - KELVIN
T_CRIT_C = T_CRIT_K - KELVIN


def saturation_pressure_mpa(t_k: float) -> float:
    """IF97 eq. (30): saturation pressure (MPa) at ``t_k`` (K), 273.15–647.096 K."""
    if not T_MIN_K <= t_k <= T_CRIT_K:
        raise ValueError(f"IF97 region 4 needs 273.15 K <= T <= 647.096 K, got {t_k}")
    theta = t_k + _N9 / (t_k - _N10)
    a = theta * theta + _N1 * theta + _N2
    b = _N3 * theta * theta + _N4 * theta + _N5
    c = _N6 * theta * theta + _N7 * theta + _N8
    return (2.0 * c / (-b + math.sqrt(b * b - 4.0 * a * c))) ** 4


def saturation_temperature_k(p_mpa: float) -> float:
    """IF97 eq. (31): saturation temperature (K) at ``p_mpa`` (MPa), 611.2 Pa–22.064 MPa."""
    if not P_MIN_MPA * (1.0 - 1e-9) <= p_mpa <= P_CRIT_MPA:
        raise ValueError(f"IF97 region 4 needs 611.2 Pa <= p <= 22.064 MPa, got {p_mpa} MPa")
    beta = p_mpa**0.25
    e = beta * beta + _N3 * beta + _N6
    f = _N1 * beta * beta + _N4 * beta + _N7
    g = _N2 * beta * beta + _N5 * beta + _N8
    d = 2.0 * g / (-f - math.sqrt(f * f - 4.0 * e * g))
    s = _N10 + d
    return (s - math.sqrt(s * s - 4.0 * (_N9 + _N10 * d))) / 2.0


def psat_kpa(t_c: float) -> float:
    """Saturation pressure in kPa (absolute) at ``t_c`` °C: the unit sterilizers report."""
    return saturation_pressure_mpa(t_c + KELVIN) * 1000.0


def tsat_c(p_kpa: float) -> float:
    """Saturation temperature in °C at ``p_kpa`` kPa (absolute)."""
    return saturation_temperature_k(p_kpa / 1000.0) - KELVIN


def saturation_excess_kpa(t_c: float, p_kpa: float) -> float:
    """Measured pressure minus the saturation pressure at the measured temperature (kPa).

    Positive: more pressure than steam alone makes (air, non-condensable gas); negative:
    superheated steam. Temperatures outside IF97 region 4 give 0.0 (no verdict), so a streaming
    caller never has to guard against a probe reading ice or a glitch above the critical point.
    """
    if not T_MIN_C <= t_c <= T_CRIT_C or not math.isfinite(p_kpa):
        return 0.0
    return p_kpa - psat_kpa(t_c)
