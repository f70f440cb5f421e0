"""Scores per second per core for each anomaly detector alone, against references in the same run.

Method: each detector, built from the shipped registry (alerting/data/detectors.yaml), is fed
``--samples`` (default 1e6) samples of a realistic series (a random walk with noise, rare spikes
and steps, one a minute, as Python floats) in one loop on one core; the time per ``update`` is
reported in µs and as scores/s. In the same run, for the same data, two references:

* **bare loop**: a plain Python function doing the same per-sample arithmetic with local
  variables — no objects, no method calls, no gate or confirmation logic. The ratio
  detector/bare is what the interface (one object per series, a method call, the state in slots)
  costs.
* **numpy**: the batch equivalent over the whole array at once, where there is one (sliding
  medians in chunks, run lengths by cumsum, vectorised IF97). It is what a detector could cost if
  it could see the future, which a stream cannot; it shows where numpy would pay.

Also: ``numpy per sample`` — calling numpy on the window for every sample (np.median of 31
values), the naive way of "using numpy" in a streaming detector; and the full pipeline (registry
``SeriesPipeline.update``: reading dict in, decider included).

Usage: python benchmarks/detectors.py [--samples 1000000] [--only spike,rate]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerting.detectors import default_registry  # noqa: E402
from protocols import steam  # noqa: E402

LN2 = math.log(2.0)


def series(n: int, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0.0, 0.002, n)) + 7.0
    steps = np.cumsum(np.where(rng.random(n) < 0.0005, rng.choice([-0.5, 0.5], n), 0.0))
    spikes = np.where(rng.random(n) < 0.001, rng.choice([-3.0, 3.0], n), 0.0)
    values = np.round(walk + steps + spikes + rng.normal(0.0, 0.01, n), 2)
    ts = 1.7e9 + 60.0 * np.arange(n)
    return ts.tolist(), values.tolist()


def chamber(n: int, seed: int = 2) -> tuple[list[float], list[float], list[float]]:
    rng = np.random.default_rng(seed)
    t = 134.0 + 1.2 + 0.2 * np.sin(np.arange(n) / 9.0) + rng.normal(0.0, 0.05, n)
    p = np.array([steam.psat_kpa(x) for x in t[:1000]])  # template, tiled (cheap to build)
    p = np.resize(p, n) + np.where(rng.random(n) < 0.01, 15.0, 0.0) + rng.normal(0.0, 0.3, n)
    t = np.resize(t[:1000], n)
    ts = 1.7e9 + 10.0 * np.arange(n)
    return ts.tolist(), np.round(t, 1).tolist(), np.round(p, 1).tolist()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- bare per-sample references: the same arithmetic, no interface ----------------------------


def bare_spike(values: list[float], window: int, zero: float, half: float, floor: float) -> None:
    ring: deque[float] = deque()
    srt: list[float] = []
    for x in values:
        if len(ring) >= window // 2:
            n = len(srt)
            med = srt[n >> 1] if n & 1 else 0.5 * (srt[(n >> 1) - 1] + srt[n >> 1])
            q1, q3 = srt[int(0.25 * (n - 1))], srt[int(0.75 * (n - 1))]
            scale = max((q3 - q1) / 1.349, floor)
            u = (abs(x - med) / scale - zero) / (half - zero)
            _ = 1.0 - math.exp(-LN2 * u * u) if u > 0 else 0.0
        if len(ring) == window:
            del srt[bisect_left(srt, ring.popleft())]
        ring.append(x)
        insort(srt, x)


def bare_level_shift(values: list[float], test: int, ref: int, floor: float) -> None:
    tr: deque[float] = deque()
    ts_: list[float] = []
    rr: deque[float] = deque()
    rs: list[float] = []
    for x in values:
        if len(tr) == test:
            old = tr.popleft()
            del ts_[bisect_left(ts_, old)]
            if len(rr) == ref:
                del rs[bisect_left(rs, rr.popleft())]
            rr.append(old)
            insort(rs, old)
        tr.append(x)
        insort(ts_, x)
        if len(rs) >= ref // 2:
            n, m = len(rs), len(ts_)
            d = abs(ts_[m >> 1] - rs[n >> 1])
            scale = max((rs[int(0.75 * (n - 1))] - rs[int(0.25 * (n - 1))]) / 1.349, floor)
            u = (d / scale - 4.0) / 4.0
            _ = 1.0 - math.exp(-LN2 * u * u) if u > 0 else 0.0


def bare_drift(ts: list[float], values: list[float], block_s: float, blocks: int) -> None:
    meds: deque[float] = deque(maxlen=blocks)
    block: list[float] = []
    index = None
    for t, x in zip(ts, values, strict=True):
        i = math.floor(t / block_s)
        if i != index:
            if block:
                block.sort()
                meds.append(block[len(block) >> 1])
                diffs = sorted((b - a for a, b in zip(meds, list(meds)[1:], strict=False)), key=abs)
                _ = sum(diffs[: len(diffs) - len(diffs) // 10])
            block = []
            index = i
        block.append(x)


def bare_stuck(values: list[float], tol: float, samples: int) -> None:
    anchor = None
    run = 0
    zero = samples / 2.0
    for x in values:
        if anchor is not None and abs(x - anchor) <= tol:
            run += 1
        else:
            anchor, run = x, 1
        u = (run - zero) / (samples - zero)
        _ = 1.0 - math.exp(-LN2 * u * u) if u > 0 else 0.0


def bare_rate(ts: list[float], values: list[float], max_per_s: float) -> None:
    t0, v0 = ts[0], values[0]
    for t, x in zip(ts, values, strict=True):
        r = abs(x - v0) / max(abs(t - t0), 1.0) / max_per_s
        u = (r - 0.5) / 0.5
        s = 1.0 - math.exp(-LN2 * u * u) if u > 0 else 0.0
        if s < 0.5:
            t0, v0 = t, x


def bare_saturation(temps: list[float], pressures: list[float], tol: float) -> None:
    psat = steam.psat_kpa
    recent: deque[float] = deque(maxlen=3)
    for t, p in zip(temps, pressures, strict=True):
        recent.append(p - psat(t))
        s = sorted(recent)
        u = (s[len(s) >> 1] - 0.5 * tol) / (0.5 * tol)
        _ = 1.0 - math.exp(-LN2 * u * u) if u > 0 else 0.0


# ---- numpy batch equivalents ----------------------------------------------------------------


def np_rolling_median(values: np.ndarray, window: int, chunk: int = 100_000) -> None:
    for i in range(0, len(values), chunk):
        part = values[i : i + chunk + window - 1]
        if len(part) >= window:
            np.median(sliding_window_view(part, window), axis=1)


def np_stuck(values: np.ndarray, tol: float) -> None:
    change = np.abs(np.diff(values)) > tol
    ids = np.concatenate(([0], np.cumsum(change)))
    starts = np.concatenate(([0], np.flatnonzero(change) + 1))
    _ = np.arange(len(values)) - starts[ids] + 1


def np_rate(ts: np.ndarray, values: np.ndarray, max_per_s: float) -> None:
    _ = np.abs(np.diff(values)) / np.maximum(np.diff(ts), 1.0) / max_per_s


def np_saturation(temps: np.ndarray, pressures: np.ndarray) -> None:
    n = (
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
    tk = temps + 273.15
    th = tk + n[8] / (tk - n[9])
    a = th * th + n[0] * th + n[1]
    b = n[2] * th * th + n[3] * th + n[4]
    c = n[5] * th * th + n[6] * th + n[7]
    psat = (2.0 * c / (-b + np.sqrt(b * b - 4.0 * a * c))) ** 4 * 1000.0
    _ = pressures - psat


def np_drift(values: np.ndarray, per_block: int) -> None:
    usable = len(values) // per_block * per_block
    meds = np.median(values[:usable].reshape(-1, per_block), axis=1)
    _ = np.diff(meds)


def numpy_per_sample_median(values: list[float], window: int) -> None:
    ring: deque[float] = deque(maxlen=window)
    for x in values:
        ring.append(x)
        np.median(np.fromiter(ring, float, len(ring)))


# ---- the run ---------------------------------------------------------------------------------


def references(
    name: str, d: Any, ts: list[float], values: list[float], ts_a: np.ndarray, values_a: np.ndarray
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(bare loop, numpy batch) for the single-input detector ``d`` of type ``name``."""
    if name == "spike":
        return (
            lambda: bare_spike(values, d.window, d.z_zero, d.z_half, d.min_scale),
            lambda: np_rolling_median(values_a, d.window),
        )
    if name == "level_shift":
        return (
            lambda: bare_level_shift(values, d.test, d.reference, d.min_scale),
            lambda: (np_rolling_median(values_a, d.test), np_rolling_median(values_a, d.reference)),
        )
    if name == "drift":
        return (
            lambda: bare_drift(ts, values, d.block_s, d.blocks),
            lambda: np_drift(values_a, int(d.block_s // 60)),
        )
    if name == "stuck":
        return (
            lambda: bare_stuck(values, d.tolerance, d.samples),
            lambda: np_stuck(values_a, d.tolerance),
        )
    return (
        lambda: bare_rate(ts, values, d.max_per_s),
        lambda: np_rate(ts_a, values_a, d.max_per_s),
    )


def spec_for(detector: str, kind: str, inputs: tuple[str, ...]) -> Any:
    return next(
        s
        for s in default_registry().for_kind(kind)
        if s.detector == detector and s.inputs == inputs
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--only", default="", help="comma-separated detector types")
    args = parser.parse_args(argv)
    n = args.samples
    only = set(filter(None, args.only.split(",")))
    ts, values = series(n)
    ts_a, values_a = np.asarray(ts), np.asarray(values)
    cts, temps, pressures = chamber(n)
    temps_a, pressures_a = np.asarray(temps), np.asarray(pressures)

    rows: list[tuple[str, float, float | None, float | None]] = []

    def run(
        name: str, feed: Callable[[], Any], bare: Callable[[], Any], batch: Callable[[], Any] | None
    ) -> None:
        if only and name not in only:
            return
        t_det = timed(feed)
        t_bare = timed(bare)
        t_np = timed(batch) if batch is not None else None
        rows.append((name, t_det, t_bare, t_np))

    ph = ("ph",)
    for name, kind, inputs in (
        ("spike", "water_probe", ph),
        ("level_shift", "water_probe", ph),
        ("drift", "water_probe", ph),
        ("stuck", "water_probe", ("free_chlorine_mg_l",)),
        ("rate", "water_probe", ph),
    ):
        det = spec_for(name, kind, inputs).build()
        upd = det.update

        def feed(upd: Callable[..., float] = upd) -> None:
            for t, x in zip(ts, values, strict=True):
                upd(t, x)

        bare, batch = references(name, det, ts, values, ts_a, values_a)
        run(name, feed, bare, batch)

    sat = spec_for("steam_saturation", "sterilizer", ("temperature_c", "pressure_kpa")).build()

    def feed_sat() -> None:
        upd = sat.update
        for t, a, b in zip(cts, temps, pressures, strict=True):
            upd(t, a, b)

    run(
        "steam_saturation",
        feed_sat,
        lambda: bare_saturation(temps, pressures, sat.tolerance_kpa),
        lambda: np_saturation(temps_a, pressures_a),
    )

    print(
        f"{n:,} samples per detector, one core, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}\n"
    )
    print(
        f"{'detector':18s} {'µs/update':>10s} {'scores/s':>11s} {'bare µs':>9s} "
        f"{'det/bare':>9s} {'numpy µs':>9s} {'det/numpy':>10s}"
    )
    for name, t_det, t_bare, t_np in rows:
        us = t_det / n * 1e6
        bare_us = t_bare / n * 1e6 if t_bare else float("nan")
        np_us = t_np / n * 1e6 if t_np else float("nan")
        print(
            f"{name:18s} {us:10.2f} {n / t_det:11,.0f} {bare_us:9.2f} {us / bare_us:9.2f} "
            f"{np_us:9.3f} {us / np_us:10.0f}"
        )

    if not only or "pipeline" in only:
        pipeline = spec_for("spike", "water_probe", ph).pipeline()
        readings = [{"ph": x, "free_chlorine_mg_l": 0.5} for x in values[:200_000]]
        t_pipe = timed(lambda: [pipeline.update(t, r) for t, r in zip(ts, readings, strict=False)])
        print(
            f"\npipeline (spike + decider, reading dict in): "
            f"{t_pipe / len(readings) * 1e6:.2f} µs/update"
        )
    if not only or "numpy_per_sample" in only:
        m = min(n, 100_000)
        t_nps = timed(lambda: numpy_per_sample_median(values[:m], 31))
        det = spec_for("spike", "water_probe", ph).build()
        t_sw = timed(lambda: [det.update(t, x) for t, x in zip(ts[:m], values[:m], strict=True)])
        print(
            f"numpy per sample (np.median of the 31-value window each update): "
            f"{t_nps / m * 1e6:.2f} µs/update, vs the whole spike detector "
            f"(SortedWindow) {t_sw / m * 1e6:.2f} µs/update"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
