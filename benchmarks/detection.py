"""Detection quality: the standard scenarios, offline, through the platform's detector, scored
against their ground truth.

Method. ``simulators/scenarios/faults.yaml`` (every fault type, 3 days) and ``clean.yaml`` (246
fault-free devices, 2 days by default) are generated offline (``simulators.faults.generate``: no
network, the same readings the live simulators would send). Each tick goes through what the
platform does with it: the reading validator (``protocols.reading.ReadingValidator``, its clock
set to the tick: junk and out-of-window timestamps are rejected as at ingest), then
``alerting.engine.DetectionCore`` -- the engine without I/O: the shipped threshold rules with the
sites' venue types and attributes, the anomaly detectors of ``alerting/data/detectors.yaml``,
the sterilizer and dose monitors, the no-data monitor and the clock-skew check, ticked every
5 s of simulated time (the engine's default) -- with the engine's default settings (no-data after
3 intervals and at least 60 s). Detectors start in steady state: warmed up with the device's
healthy signal before the run (72 h for devices reporting every minute or slower, 6 h for faster
ones), as a platform that has been running has them; the no-data clocks start at the run's start.

Scoring. An alert counts once it fired (pending alerts that never fired are not raised). Its
name is the ``expected_alert`` label (rules name theirs; anomalies ``anomaly:<detector>``, no
data ``nodata``, monitors their finding). It is a *true* alert when the ground truth has a fault
on the same device with that expected alert (``nodata:intermittent`` accepts ``nodata``) and it
fired within [effect_start − one interval, effect_end + 1 h]. Otherwise it is a *consequence*
when it fired within that window of another fault on the same device (a pool whose chlorine
dosing fails also breaks the ORP limit; a frozen instrument raises one ``stuck`` per quantity),
else *false*. Per fault type: recall = detected detectable rows / detectable rows; precision =
true / (true + false) over the alerts with that type's names, with consequences shown apart and
in a strict variant; delay = first true alert's fire time − effect_start. ``ingest:rejected``
rows are not alerts: they are scored against the validator's rejections on the device in the
window. On clean data every fired alert is false: reported per 1,000 device-hours.

Targets (issue 6, item 8): precision and recall ≥ 0.95 for every fault type detectable in
principle; threshold breaches alerted within one reporting interval after ``for``; ≤ 1 false
alert per 1,000 device-hours on clean data.

Usage: python benchmarks/detection.py [--clean-duration 2d] [--only faults|clean] [--alerts]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerting.detectors import default_registry  # noqa: E402
from alerting.engine import (  # noqa: E402
    ContextTable,
    DetectionCore,
    DeviceContext,
    SiteContext,
    profile_resolutions,
)
from alerting.lifecycle import AlertBook  # noqa: E402
from alerting.model import AlertState, Transition  # noqa: E402
from alerting.rules import load_rules  # noqa: E402
from protocols.catalog import default_catalog  # noqa: E402
from protocols.directory import DeviceInfo  # noqa: E402
from protocols.reading import ReadingValidator, Rejection  # noqa: E402
from simulators.faults import Malformed, generate, ground_truth  # noqa: E402
from simulators.scenario import Scenario, load_scenario  # noqa: E402

TICK_S = 5.0
GRACE_S = 3600.0
SLOW_WARMUP_S = 72 * 3600.0
FAST_WARMUP_S = 6 * 3600.0
ACCEPTS = {"nodata:intermittent": {"nodata", "nodata:intermittent"}}
# Not detectable from readings at all, by construction (counted by the collectors instead).
NOT_ALERTS = {"ingest:rejected"}


@dataclass
class Raised:
    alert_id: str
    device: str
    rule: str
    name: str
    started: float
    fired: float | None = None
    resolved: float | None = None
    status: str = "false"  # true | consequence | false
    fault_type: str | None = None


@dataclass
class Run:
    scenario: Scenario
    t0: float
    t1: float
    alerts: dict[str, Raised] = field(default_factory=dict)
    rejections: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    readings: int = 0
    ticks: int = 0
    seconds: float = 0.0
    device_hours: float = 0.0
    intervals: dict[str, float] = field(default_factory=dict)
    truth: list[dict[str, Any]] = field(default_factory=list)
    # (device, quantity) → (time, value) of accepted readings, for the threshold faults' series
    series: dict[tuple[str, str], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def _contexts(scenario: Scenario, planned: Iterable[Any]) -> ContextTable:
    sites = {
        s.id: SiteContext(
            site=s.id,
            tenant=s.tenant,
            region=s.region,
            name=s.name,
            venue_type=s.venue_type,
            attributes=dict(s.attributes),
        )
        for s in scenario.sites
    }
    devices = [DeviceContext(d.id, d.kind, d.interval_s, sites[d.site], d.profile) for d in planned]
    return ContextTable(devices, sites.values())


def _warm_up(core: DetectionCore, planned: Iterable[Any], t0: float) -> int:
    fed = 0
    for sim in planned:
        pipelines = core.pipelines(sim.id)
        if not pipelines:
            continue
        span = SLOW_WARMUP_S if sim.interval_s >= 60 else FAST_WARMUP_S
        n = int(span // sim.interval_s)
        signal = sim.new_signal()
        history = [
            (ts, signal.sample_ts(ts)) for ts in (t0 - (n - k) * sim.interval_s for k in range(n))
        ]
        for pipeline in pipelines:
            pipeline.warm_up(history)
        fed += n
    return fed


def replay(name: str, duration: str | None = None) -> Run:
    scenario = load_scenario(name)
    start, end = scenario.time_range(None, None, duration)
    t0, t1 = start.timestamp(), end.timestamp()
    planned = scenario.plan(start)
    run = Run(scenario, t0, t1)
    run.truth = ground_truth(scenario.name, planned, t0, t1)
    run.intervals = {d.id: d.interval_s for d in planned}
    run.device_hours = len(planned) * (t1 - t0) / 3600.0
    contexts = _contexts(scenario, planned)
    catalog = default_catalog()
    core = DetectionCore(
        contexts,
        now=t0,
        book=AlertBook(),
        ruleset=load_rules(catalog=catalog),
        detectors=default_registry(),
        catalog=catalog,
        resolutions=profile_resolutions(),
    )
    started = time.perf_counter()
    warmed = _warm_up(core, planned, t0)
    print(f"  {name}: detectors warmed up with {warmed:,} samples", file=sys.stderr)
    infos = {d.id: DeviceInfo(d.id, d.tenant, d.site, d.kind, d.region) for d in planned}
    watched: dict[str, list[str]] = defaultdict(list)
    for row in run.truth:
        if row["type"] == "threshold" and row["quantity"]:
            watched[row["device"]].append(row["quantity"])
    clock = [t0]
    validator = ReadingValidator(catalog, clock=lambda: clock[0])
    book = core.book

    def record(transitions: list[Transition]) -> None:
        for t in transitions:
            raised = run.alerts.get(t.alert_id)
            if raised is None:
                alert = book.alert(t.alert_id)
                raised = Raised(
                    t.alert_id,
                    t.key.device,
                    t.key.rule,
                    str(alert.labels.get("expected_alert") or t.key.rule),
                    t.at.timestamp(),
                )
                run.alerts[t.alert_id] = raised
            if t.to_state is AlertState.FIRING and raised.fired is None:
                raised.fired = t.at.timestamp()
            elif t.to_state is AlertState.RESOLVED:
                raised.resolved = t.at.timestamp()

    next_tick = t0 + TICK_S
    for rec in generate(scenario, start, end):
        t = rec.t.timestamp()
        while next_tick <= t:
            record(core.tick(next_tick))
            run.ticks += 1
            next_tick += TICK_S
        values = rec.values
        if values is None:
            continue
        if isinstance(values, Malformed):
            run.rejections[rec.device].append((t, values.reason))
            continue
        clock[0] = t
        try:
            reading = validator.validate(
                infos[rec.device], {"ts": rec.ts.timestamp(), "fields": values}, int(t * 1000)
            )
        except Rejection as exc:
            run.rejections[rec.device].append((t, exc.reason.value))
            continue
        run.readings += 1
        for quantity in watched.get(rec.device, ()):
            value = reading.fields.get(quantity)
            if isinstance(value, float):
                run.series[(rec.device, quantity)].append((reading.time_ms / 1000.0, value))
        record(core.observe(reading, t))
    while next_tick < t1:
        record(core.tick(next_tick))
        next_tick += TICK_S
    run.seconds = time.perf_counter() - started
    return run


# ---- scoring ---------------------------------------------------------------------------------


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def _window(run: Run, row: dict[str, Any]) -> tuple[float, float]:
    interval = run.intervals.get(row["device"], 60.0)
    start = _ts(row["effect_start"]) or _ts(row["start"]) or run.t0
    end = _ts(row["effect_end"]) or _ts(row["end"]) or run.t1
    return start - interval, end + GRACE_S


def _accepts(expected: str) -> set[str]:
    return ACCEPTS.get(expected, {expected})


@dataclass
class TypeScore:
    rows: int = 0
    detectable: int = 0
    detected: int = 0
    true: int = 0
    false: int = 0
    consequence: int = 0
    delays: list[float] = field(default_factory=list)
    after_for: list[float] = field(default_factory=list)  # threshold: fired − (breach + for)
    late: list[str] = field(default_factory=list)  # threshold rows detected after for+interval
    missed: list[str] = field(default_factory=list)


def _breach_due(series: list[tuple[float, float]], rule: Any, since: float) -> float | None:
    """When the rule was due to fire: the first reading at which the readings had breached the
    limit, every one of them, for ``for`` (the rule's own definition of a breach)."""
    begun: float | None = None
    for t, value in series:
        if t < since - rule.for_s - 3600:
            continue
        if rule.params.breached(value):
            begun = t if begun is None else begun
            if t - begun >= rule.for_s and t >= since:
                return t
        else:
            begun = None
    return None


def score(run: Run, rules: dict[str, Any]) -> tuple[dict[str, TypeScore], list[Raised]]:
    fired = [a for a in run.alerts.values() if a.fired is not None]
    rows = [r for r in run.truth if r["expected_alert"] not in NOT_ALERTS]
    name_type: dict[str, str] = {}
    for r in rows:
        for name in _accepts(r["expected_alert"]):
            name_type.setdefault(name, r["type"])
    # classify every fired alert (a fault whose readings are all refused at ingest silences the
    # device: its no-data alert is a consequence, so every row counts here)
    for a in fired:
        for r in run.truth:
            if r["device"] != a.device:
                continue
            lo, hi = _window(run, r)
            if not lo <= (a.fired or 0) <= hi:
                continue
            if a.name in _accepts(r["expected_alert"]):
                a.status, a.fault_type = "true", r["type"]
                break
            if a.status == "false":
                a.status = "consequence"
        if a.fault_type is None:
            a.fault_type = name_type.get(a.name, "(other)")
    scores: dict[str, TypeScore] = defaultdict(TypeScore)
    for r in rows:
        s = scores[r["type"]]
        s.rows += 1
        if not r["detectable"]:
            continue
        s.detectable += 1
        lo, hi = _window(run, r)
        matches = sorted(
            (a.fired or 0)
            for a in fired
            if a.device == r["device"]
            and a.name in _accepts(r["expected_alert"])
            and lo <= (a.fired or 0) <= hi
        )
        label = f"{r['device']} {r['expected_alert']}"
        if not matches:
            s.missed.append(label)
            continue
        s.detected += 1
        effect = _ts(r["effect_start"]) or _ts(r["start"]) or run.t0
        delay = max(0.0, matches[0] - effect)
        s.delays.append(delay)
        if r["type"] == "threshold":
            first = min(
                (a for a in fired if a.device == r["device"] and a.name == r["expected_alert"]),
                key=lambda a: a.fired or 0,
            )
            rule = rules[first.rule]
            due = _breach_due(run.series[(r["device"], rule.quantity)], rule, effect)
            interval = run.intervals[r["device"]]
            if due is None:
                s.late.append(f"{label}: fired, but never breached for {rule.for_s:.0f} s")
            else:
                after = (first.fired or 0) - due
                s.after_for.append(after)
                if after > interval:
                    s.late.append(
                        f"{label}: {after:.0f} s after the breach lasted for {rule.for_s:.0f} s "
                        f"(> one interval, {interval:.0f} s)"
                    )
    for a in fired:
        s = scores[a.fault_type or "(other)"]
        if a.status == "true":
            s.true += 1
        elif a.status == "false":
            s.false += 1
        else:
            s.consequence += 1
    for r in run.truth:
        if r["expected_alert"] in NOT_ALERTS:
            s = scores[f"{r['type']} (ingest)"]
            s.rows += 1
            s.detectable += 1
            lo, hi = _window(run, r)
            if any(lo <= t <= hi for t, _ in run.rejections.get(r["device"], ())):
                s.detected += 1
            else:
                s.missed.append(f"{r['device']} {r['detail'].get('reason')}")
    return dict(scores), fired


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def report_faults(run: Run, rules: dict[str, Any], show_alerts: bool) -> bool:
    scores, fired = score(run, rules)
    print(
        f"\n## faults.yaml — {len(run.intervals)} devices, {(run.t1 - run.t0) / 86400:.0f} days, "
        f"{run.readings:,} readings accepted, {sum(map(len, run.rejections.values())):,} "
        f"rejected; replayed in {run.seconds:.1f} s\n"
    )
    print(
        "| fault type | rows (detectable) | recall | precision | strict | true / false / conseq. "
        "| median delay | max delay | targets |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ok_all = True
    for ftype in sorted(scores):
        s = scores[ftype]
        recall = s.detected / s.detectable if s.detectable else None
        flagged = s.true + s.false
        precision = s.true / flagged if flagged else None
        strict = s.true / (flagged + s.consequence) if flagged + s.consequence else None
        ingest = ftype.endswith("(ingest)")
        verdict = []
        if s.detectable:
            met = recall is not None and recall >= 0.95
            verdict.append("recall ✓" if met else "recall ✗")
            ok_all &= met
        if not ingest and flagged:
            met = precision is not None and precision >= 0.95
            verdict.append("precision ✓" if met else "precision ✗")
            ok_all &= met
        if ftype == "threshold":
            verdict.append("delay ✓" if not s.late else "delay ✗")
            ok_all &= not s.late
        print(
            f"| {ftype} | {s.rows} ({s.detectable}) | {_fmt(recall)} | "
            f"{'n/a' if ingest else _fmt(precision)} | {'n/a' if ingest else _fmt(strict)} | "
            f"{'n/a' if ingest else f'{s.true} / {s.false} / {s.consequence}'} | "
            f"{_duration(statistics.median(s.delays)) if s.delays else '—'} | "
            f"{_duration(max(s.delays)) if s.delays else '—'} | {', '.join(verdict) or '—'} |"
        )
    print()
    th = scores.get("threshold")
    if th is not None and th.after_for:
        print(
            "threshold delay after the breach had lasted its rule's `for` (target: within one "
            f"reporting interval): median {_duration(statistics.median(th.after_for))}, max "
            f"{_duration(max(th.after_for))}; the delays in the table are from the noiseless "
            "model's first tick beyond the limit (a noisy signal crossing slowly breaches "
            "continuously only later)\n"
        )
    for ftype, s in sorted(scores.items()):
        for label in s.missed:
            print(f"- missed ({ftype}): {label}")
        for label in s.late:
            print(f"- late ({ftype}): {label}")
    names = Counter((a.status, a.name) for a in fired if a.status != "true")
    for (status, name), n in sorted(names.items()):
        print(f"- {status}: {n} × {name}")
    if show_alerts:
        for a in sorted(fired, key=lambda a: a.fired or 0):
            when = datetime.fromtimestamp(a.fired or 0).isoformat(timespec="seconds")
            print(f"  {when} {a.device:14} {a.rule:36} {a.status}")
    return ok_all


def report_clean(run: Run, show_alerts: bool) -> bool:
    fired = [a for a in run.alerts.values() if a.fired is not None]
    rate = 1000.0 * len(fired) / run.device_hours
    print(
        f"\n## clean.yaml — {len(run.intervals)} devices, {(run.t1 - run.t0) / 86400:.1f} days, "
        f"{run.device_hours:,.0f} device-hours, {run.readings:,} readings; replayed in "
        f"{run.seconds:.1f} s\n"
    )
    met = rate <= 1.0
    print(
        f"false alerts: {len(fired)} → {rate:.2f} per 1,000 device-hours "
        f"(target ≤ 1: {'✓' if met else '✗'})"
    )
    for name, n in Counter(a.name for a in fired).most_common():
        devices = Counter(a.device for a in fired if a.name == name)
        print(f"- {n} × {name} on {len(devices)} device(s), e.g. {', '.join(list(devices)[:4])}")
    # pending alerts cancelled before their `for`: nobody is told, but each is a row in the
    # registry and two alert_event points (the cost of a value hovering at a limit)
    cancelled = [a for a in run.alerts.values() if a.fired is None]
    print(
        f"pending, cancelled before firing: {len(cancelled)} → "
        f"{1000.0 * len(cancelled) / run.device_hours:.2f} per 1,000 device-hours"
    )
    for rule, n in Counter(a.rule for a in cancelled).most_common(5):
        print(f"- {n} × {rule}")
    if show_alerts:
        for a in sorted(fired, key=lambda a: a.fired or 0):
            when = datetime.fromtimestamp(a.fired or 0).isoformat(timespec="seconds")
            print(f"  {when} {a.device:14} {a.rule}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["faults", "clean"])
    parser.add_argument("--clean-duration", default=None, help="default: the file's (2 days)")
    parser.add_argument("--alerts", action="store_true", help="list every fired alert")
    args = parser.parse_args(argv)
    rules = {rule.id: rule for rule in load_rules()}
    ok = True
    if args.only in (None, "faults"):
        ok &= report_faults(replay("faults"), rules, args.alerts)
    if args.only in (None, "clean"):
        ok &= report_clean(replay("clean", args.clean_duration), args.alerts)
    print(f"\nall targets met: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
