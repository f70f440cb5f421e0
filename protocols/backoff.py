"""Retry delays (InfluxDB writer, MQTT reconnects): pure functions, table-tested, not timed.

Capped exponential backoff with **equal jitter**: the n-th retry waits ``d/2 + U(0, d/2)`` where
``d = min(cap, base * 2**n)``. Why not full jitter (``U(0, d)``)? Full jitter spreads many
clients best, but here there are only a few writers (the agency database and the tenant
databases, per collector) against one server that may be down for hours; full jitter would
keep producing near-zero delays and hammer a server that is restarting. Equal jitter still
de-synchronises the writers while guaranteeing at least half of the exponential delay.
"""

from __future__ import annotations

import math
import random

__all__ = ["MAX_RETRY_AFTER_S", "backoff_delay", "retry_delay"]

MAX_RETRY_AFTER_S = 300.0
"""Upper bound on any delay, even one a ``Retry-After`` header asks for: a wrong or hostile
header must not park acknowledged data for hours."""

_MAX_EXPONENT = 62  # 2**62 * any sane base is far beyond any cap; avoids float overflow


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds before retry number ``attempt`` (0 = the first retry), equal jitter, <= ``cap``."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must be >= 0, got base={base}, cap={cap}")
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    half = ceiling / 2.0
    return half + (rng or random).uniform(0.0, half)


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> float:
    """Like :func:`backoff_delay`, but never sooner than the server's ``Retry-After``.

    The result is at most ``max(cap, retry_after)``, itself bounded by ``MAX_RETRY_AFTER_S``.
    A missing, negative or non-finite ``retry_after`` is ignored.
    """
    delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
    if retry_after is None or not math.isfinite(retry_after) or retry_after <= 0:
        return delay
    upper = min(max(cap, retry_after), MAX_RETRY_AFTER_S)
    return min(max(delay, retry_after), upper)
