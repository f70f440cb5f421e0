"""Saturated-steam pressure of the measured chamber temperature, computed by InfluxQL.

In the hold phase a sterilizer chamber must hold saturated steam, so its pressure is fixed by its
temperature (WS 310.3; reference/standards.md §4). Drawing Psat(T) beside the measured pressure
shows air in the chamber (pressure above the line) or superheat (below) at a glance, with no
extra measurement to write: InfluxQL 1.x has ``pow`` and ``sqrt``, enough for the explicit
IAPWS-IF97 region-4 equation (30) that protocols/steam.py and the cycle monitor use. Nested
subqueries stand in for the equation's intermediate variables (InfluxQL has no ``LET``):

    theta = T + n9 / (T - n10)                      (T in K)
    A = theta² + n1·theta + n2,  B = n3·theta² + n4·theta + n5,  C = n6·theta² + n7·theta + n8
    Psat = (2C / (-B + sqrt(B² - 4AC)))⁴  MPa

tests/test_grafana.py runs these queries on InfluxDB and compares with protocols/steam.py.
"""

from __future__ import annotations

# IAPWS-IF97 (2007 revised release), Table 34.
N = (
    0.11670521452767e4,
    -0.72421316703206e6,
    -0.17073846940092e2,
    0.12020824702470e5,
    -0.32325550322333e7,
    0.14915108613530e2,
    -0.48232657361591e4,
    0.40511340542057e6,
    -0.23855557567849,
    0.65017534844798e3,
)
KELVIN = 273.15


def _num(x: float) -> str:
    text = repr(float(x))
    if "e" in text or "inf" in text or "nan" in text:
        raise ValueError(f"{x!r} cannot be written as an InfluxQL decimal literal")
    return text


def _poly(var: str, c2: float, c1: float, c0: float) -> str:
    """``c2·v² + c1·v + c0`` with explicit signs (InfluxQL has no unary minus on literals)."""

    def term(c: float, body: str, first: bool) -> str:
        sign = "-" if c < 0 else ("" if first else "+")
        mag = _num(abs(c))
        text = f"{mag} * {body}" if body else mag
        return f"{sign} {text}".strip() if first else f" {sign} {text}"

    v = f'"{var}"'
    return term(c2, f"{v} * {v}", True) + term(c1, v, False) + term(c0, "", False)


def psat_chain(inner: str, group_by: str = "device") -> str:
    """Wrap ``inner`` -- a query yielding fields ``t`` (°C) and ``p`` (kPa) per ``group_by`` -- so
    that it also yields ``p_sat``: the saturation pressure (kPa) at ``t``."""
    n1, n2, n3, n4, n5, n6, n7, n8, n9, n10 = N
    g = f'GROUP BY "{group_by}"'
    tk = f'("t" + {_num(KELVIN)})'
    theta = f'{tk} - {_num(-n9)} / ({tk} - {_num(n10)}) AS "th"'
    level2 = f'SELECT "p", {theta} FROM ({inner}) {g}'
    level3 = (
        f'SELECT "p", {_poly("th", 1.0, n1, n2)} AS "a", {_poly("th", n3, n4, n5)} AS "b", '
        f'{_poly("th", n6, n7, n8)} AS "c" FROM ({level2}) {g}'
    )
    return (
        f'SELECT "p", 1000.0 * pow(2.0 * "c" / (sqrt("b" * "b" - 4.0 * "a" * "c") - "b"), 4) '
        f'AS "p_sat" FROM ({level3}) {g}'
    )
