"""The alert engine: readings in, alert transitions out -- persisted, written to InfluxDB, notified.

Two layers, so that the detection benchmark runs exactly what the platform runs:

* :class:`DetectionCore` is synchronous and does no I/O and keeps no clock of its own. Per reading
  it looks up the device's context (site venue type, attributes, overrides: the effective rules,
  cached per device until the context table's ``generation`` moves), runs the threshold rules
  (:class:`~alerting.lifecycle.ThresholdAlerting`), the anomaly detectors of
  ``alerting/data/detectors.yaml`` (one :class:`~alerting.detectors.SeriesPipeline` per device and
  detector; a decider's on/off is the condition of the alert ``anomaly:<detector>:<quantity>``),
  the domain monitors (a :class:`~alerting.domain.SterilizerMonitor` per sterilizer, a
  :class:`~alerting.domain.DoseMonitor` per dosimeter) and feeds the
  :class:`~alerting.nodata.NoDataMonitor`. :meth:`DetectionCore.tick` (the caller's clock) runs
  the no-data check, the clock-skew check and the records monitor. Everything goes through one
  :class:`~alerting.lifecycle.AlertBook`, so there is one open alert per (device, rule) whoever
  raised it.
* :class:`AlertEngine` is the platform's service around it: an ingest listener (synchronous, on
  the loop thread, a few dict lookups and the evaluators per reading), a bounded queue of
  transitions drained by a background task that persists them (``AlertStore.save`` in a thread),
  writes ``alert_event`` lines to the spool and hands them to the notifier at once; a periodic
  tick; the records feed (the records sites post, read from the registry's ``record_events`` by
  id, whichever process stored them); the book restored from the store on start; detector
  warm-up from InfluxDB; people's acknowledgements and manual resolutions. Detection never waits
  on the database or a channel.

docs/alerting.md ("The engine") describes the data flow, restarts, pauses and the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from alerting.detectors import DetectorRegistry, SeriesPipeline, default_registry
from alerting.detectors.decider import Decision
from alerting.domain import (
    CycleRecord,
    DoseMonitor,
    Finding,
    RecordEvent,
    RecordRules,
    RecordsMonitor,
    SterilizationTable,
    SterilizerMonitor,
)
from alerting.lifecycle import AlertBook, AlertInfo, ThresholdAlerting
from alerting.model import Alert, AlertKey, AlertState, Severity, Transition
from alerting.nodata import NODATA, Expectation, NoDataChange, NoDataMonitor
from alerting.rules import Override, Rule, RuleError, RuleSet, load_rules
from alerting.store import DuplicateOpenAlert, alert_event_line
from alerting.warmup import warm_up
from collectors.records import encode_event
from protocols.catalog import Catalog, default_catalog
from protocols.lineprotocol import encode_line
from protocols.reading import Reading

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOCK_SKEW = "device:clock_skew"
ANOMALY_FAMILY = "anomaly"
_NORMAL_FLAG = "N"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ---- what the engine knows about devices and sites -----------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteContext:
    """A site as the rules see it: where (region routes the alert), what (venue, attributes)."""

    site: str
    tenant: str
    region: str
    name: str = ""
    venue_type: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """One active device: its kind, its expected reporting interval, its profile and site."""

    device: str
    kind: str
    interval_s: float
    site: SiteContext
    profile: str | None = None


class ContextTable:
    """Device and site contexts in memory, replaced whole; ``generation`` moves on every change.

    Lookups are dict reads on the loop thread; :meth:`replace` may run on another thread (the
    registry is read there) and swaps the dicts, so readers never see a half-applied change.
    """

    def __init__(
        self, devices: Iterable[DeviceContext] = (), sites: Iterable[SiteContext] = ()
    ) -> None:
        self._devices: dict[str, DeviceContext] = {}
        self._sites: dict[str, SiteContext] = {}
        self.generation = 0
        self.replace(devices, sites)

    def replace(self, devices: Iterable[DeviceContext], sites: Iterable[SiteContext] = ()) -> bool:
        """Install a new snapshot; True (and a new generation) if anything differs."""
        new_devices = {d.device: d for d in devices}
        new_sites = {s.site: s for s in sites}
        for d in new_devices.values():
            new_sites.setdefault(d.site.site, d.site)
        if new_devices == self._devices and new_sites == self._sites:
            return False
        self._sites = new_sites
        self._devices = new_devices
        self.generation += 1
        return True

    def get(self, device: str) -> DeviceContext | None:
        return self._devices.get(device)

    def site(self, site: str) -> SiteContext | None:
        return self._sites.get(site)

    def devices(self) -> Mapping[str, DeviceContext]:
        return self._devices

    def __len__(self) -> int:
        return len(self._devices)


# ---- the core ------------------------------------------------------------------------------------


@dataclass
class CoreStats:
    readings: int = 0
    transitions: int = 0
    unknown_devices: int = 0  # readings of devices without a context (rules chosen by kind only)
    late: int = 0  # readings older than the device's newest, skipped by detectors and monitors
    errors: int = 0


class _DeviceState:
    """What the core keeps per device: the effective rules and the stateful detectors."""

    __slots__ = (
        "device",
        "dose",
        "generation",
        "info",
        "kind",
        "lag",
        "last_arrival",
        "last_ts",
        "pipelines",
        "rules",
        "skew_open",
        "skew_since",
        "sterilizer",
    )

    def __init__(self, device: str, kind: str) -> None:
        self.device = device
        self.kind = kind
        self.generation = -1
        self.rules: list[Rule] = []
        self.pipelines: list[SeriesPipeline] = []
        self.sterilizer: SterilizerMonitor | None = None
        self.dose: DoseMonitor | None = None
        self.info: tuple[str, str, str] = ("", "", "")  # tenant, site, region
        self.last_ts = -math.inf  # newest reading time fed to detectors/monitors (s)
        self.last_arrival = -math.inf
        self.lag = 0.0  # arrival - newest reading time, at the last arrival
        self.skew_since: float | None = None
        self.skew_open = False


class DetectionCore:
    """Readings and ticks in, transitions out; no I/O (see the module docstring).

    ``now`` is the time the core starts (the no-data monitor's clocks start there). The caller
    passes each reading's arrival time to :meth:`observe` and its clock to :meth:`tick`, so a
    benchmark can run a simulated clock through the very same code.
    """

    def __init__(
        self,
        contexts: ContextTable,
        *,
        now: float,
        book: AlertBook | None = None,
        ruleset: RuleSet | None = None,
        detectors: DetectorRegistry | None = None,
        catalog: Catalog | None = None,
        resolutions: Callable[[str | None], Mapping[str, float]] | None = None,
        nodata_multiple: float = 3.0,
        nodata_min_silence_s: float = 60.0,
        skew_s: float = 300.0,
        skew_for_s: float = 300.0,
        sterilization_table: SterilizationTable | None = None,
        record_rules: RecordRules | None = None,
        utc_offset_h: float = 8.0,
    ) -> None:
        self.contexts = contexts
        self.book = book if book is not None else AlertBook()
        self.catalog = catalog or default_catalog()
        self.ruleset = ruleset if ruleset is not None else load_rules(catalog=self.catalog)
        self.detectors = detectors if detectors is not None else default_registry()
        self.thresholds = ThresholdAlerting(self.book, self.catalog)
        self.nodata = NoDataMonitor(
            self._expectations,
            multiple=nodata_multiple,
            min_silence_s=nodata_min_silence_s,
            now=now,
        )
        self.records = RecordsMonitor(record_rules)
        self.skew_s = skew_s
        self.skew_for_s = skew_for_s
        self.utc_offset_h = utc_offset_h
        self._sterilization_table = sterilization_table
        self._resolutions = resolutions or (lambda profile: {})
        self._states: dict[str, _DeviceState] = {}
        self._expected: tuple[int, dict[str, Expectation]] = (-1, {})
        self._known: tuple[int, frozenset[str]] = (
            contexts.generation,
            frozenset(contexts.devices()),
        )
        # Open no-data alerts per device: None for the whole device, else the quantity. The core,
        # not the monitor, clears them -- when data arrives (see _nodata).
        self._nodata_open: dict[str, set[str | None]] = {}
        # Closed sterilizer cycles (pass or fail), for the caller to write as sterilizer_cycle
        # points; bounded: a caller that never drains them loses the oldest.
        self.cycle_records: deque[CycleRecord] = deque(maxlen=10_000)
        self.stats = CoreStats()
        self._warned_overrides: set[str] = set()
        for alert in self.book.open_alerts():
            self._track_restored(alert)

    # ---- readings --------------------------------------------------------------------------------

    def observe(self, reading: Reading, arrival: float) -> list[Transition]:
        """One accepted reading (``arrival``: when the platform got it, epoch seconds)."""
        self.stats.readings += 1
        device = reading.device
        st = self._states.get(device)
        if st is None or st.generation != self.contexts.generation or st.kind != reading.kind:
            st = self._prepare(reading, st)
        fields = reading.fields
        out: list[Transition] = self.thresholds.observe(reading, st.rules) if st.rules else []
        ts = reading.time_ms / 1000.0
        newest = ts > st.last_ts
        if newest:
            st.last_ts = ts
        else:
            self.stats.late += 1
        st.lag = arrival - st.last_ts
        if arrival > st.last_arrival:
            st.last_arrival = arrival
        if newest:
            if st.pipelines:
                values = fields
                flags = reading.flags
                if flags:  # a flagged value (maintenance, calibration, fault) is not the signal
                    values = {k: v for k, v in fields.items() if flags.get(k, _NORMAL_FLAG) == "N"}
                for pipeline in st.pipelines:
                    result = pipeline.update(ts, values)
                    if result is not None and result[1].changed:
                        out += self._anomaly(st, pipeline, result[0], result[1], ts, values)
            if st.sterilizer is not None:
                findings = st.sterilizer.update(ts, fields)
                if findings:
                    out += self._findings(findings)
            if st.dose is not None:
                dose = fields.get("dose_msv")
                if isinstance(dose, int | float) and not isinstance(dose, bool):
                    findings = st.dose.update(ts, float(dose))
                    if findings:
                        out += self._findings(findings)
        self.nodata.seen(device, fields.keys(), arrival)
        marks = self._nodata_open.get(device)
        if marks:
            out += self._data_back(device, marks, fields, arrival)
        if out:
            self.stats.transitions += len(out)
        return out

    def _prepare(self, reading: Reading, st: _DeviceState | None) -> _DeviceState:
        """(Re)build a device's state after its first reading or a context change; detectors and
        monitors survive a context change as long as the kind stays the same."""
        device, kind = reading.device, reading.kind
        ctx = self.contexts.get(device)
        if st is None or st.kind != kind:
            st = _DeviceState(device, kind)
            resolutions = self._resolutions(ctx.profile if ctx is not None else None)
            try:
                st.pipelines = self.detectors.pipelines(kind, resolutions)
            except KeyError:  # a kind the detector file does not know
                st.pipelines = []
            if kind == "sterilizer":
                st.sterilizer = SterilizerMonitor(
                    device,
                    table=self._sterilization_table,
                    utc_offset_h=self.utc_offset_h,
                    on_record=self.cycle_records.append,
                )
            elif kind == "dosimeter":
                months = 1
                if ctx is not None:
                    raw = ctx.site.attributes.get("dose_period_months", 1)
                    months = raw if isinstance(raw, int) and 1 <= raw <= 12 else 1
                st.dose = DoseMonitor(device, period_months=months, utc_offset_h=self.utc_offset_h)
            self._states[device] = st
        st.generation = self.contexts.generation
        if ctx is None:
            self.stats.unknown_devices += 1
            st.info = (reading.tenant, reading.site, reading.region)
            st.rules = self.ruleset.for_device(kind, None, None)
            return st
        site = ctx.site
        st.info = (site.tenant, site.site, site.region)
        rules = self.ruleset.for_device(kind, site.venue_type, site.attributes)
        if site.overrides:
            try:
                rules = self.ruleset.effective(site.site, rules, site.overrides)
            except RuleError as exc:  # validated when saved; a rule file changed under it since
                if site.site not in self._warned_overrides:
                    self._warned_overrides.add(site.site)
                    log.error("site %s: overrides not applied: %s", site.site, exc)
        st.rules = rules
        return st

    # ---- anomalies, findings ---------------------------------------------------------------------

    def _anomaly(
        self,
        st: _DeviceState,
        pipeline: SeriesPipeline,
        score: float,
        decision: Decision,
        ts: float,
        values: Mapping[str, Any],
    ) -> list[Transition]:
        spec = pipeline.spec
        quantity = spec.inputs[0]
        anomaly = spec.alert.startswith(ANOMALY_FAMILY + ":")
        # "anomaly:spike" on turbidity is the alert "anomaly:spike:turbidity_ntu"; a domain alert
        # (the live steam check raises "sterilizer:air_in_chamber") keeps its name, so it merges
        # with the cycle monitor's verdict: one open alert per (device, rule).
        rule = f"{spec.alert}:{quantity}" if anomaly else spec.alert
        key = AlertKey(st.device, rule)
        at = utc(ts)
        raw = values.get(quantity)
        value = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        if not decision.active:
            if not self.book.tracks(key):
                return []
            return self.book.condition(key, holds=False, at=at, value=value)
        info = None
        if key not in self.book:
            tenant, site, region = st.info
            shown = ", ".join(
                f"{q} {values[q]:g}"
                for q in spec.inputs
                if isinstance(values.get(q), int | float) and not isinstance(values.get(q), bool)
            )
            what = spec.detector.replace("_", " ")
            info = AlertInfo(
                tenant=tenant,
                site=site,
                region=region,
                kind=st.kind,
                quantity=quantity,
                message=(
                    f"{shown}: {what} anomaly on {st.device} (score {score:.2f} ≥ "
                    f"{decision.threshold:.2f}); the instrument or the process needs a look"
                ),
                labels={
                    "expected_alert": spec.alert,
                    "detector": spec.detector,
                    "score": round(score, 3),
                    "rule_family": ANOMALY_FAMILY if anomaly else spec.alert.split(":")[0],
                },
            )
        return self.book.condition(
            key,
            holds=True,
            at=at,
            value=value,
            since=at,
            for_s=0.0,
            severity=Severity.WARNING if anomaly else Severity.CRITICAL,
            info=info,
        )

    def _findings(self, findings: Iterable[Finding]) -> list[Transition]:
        out: list[Transition] = []
        for f in findings:
            key = f.key
            if not f.active:
                if self.book.tracks(key):
                    out += self.book.condition(key, holds=False, at=f.at, value=f.value)
                continue
            info = None
            if key not in self.book:
                tenant, site, region, kind = self._where(f.subject)
                info = AlertInfo(
                    tenant=tenant,
                    site=site,
                    region=region,
                    kind=kind,
                    message=f.message,
                    limit=f.limit,
                    standard=f.standard,
                    labels={"expected_alert": f.rule, **_jsonable(dict(f.detail))},
                )
            out += self.book.condition(
                key,
                holds=True,
                at=f.at,
                value=f.value,
                since=f.at,
                for_s=0.0,
                severity=f.severity,
                info=info,
            )
        return out

    def _where(self, subject: str) -> tuple[str, str, str, str]:
        """tenant, site, region, kind of a finding's subject: a device, or a site (records)."""
        st = self._states.get(subject)
        if st is not None:
            return (*st.info, st.kind)
        ctx = self.contexts.get(subject)
        if ctx is not None:
            return ctx.site.tenant, ctx.site.site, ctx.site.region, ctx.kind
        site = self.contexts.site(subject)
        if site is not None:
            return site.tenant, site.site, site.region, "site"
        return "", subject, "", "site"

    def record_event(self, event: RecordEvent, now: float | None = None) -> list[Transition]:
        """A record a site posted (medical waste sealed, collected, handed over; a disinfection).

        The gateway's ``POST /records`` and ``/ingest/v1/records`` (gateway/api/records.py) store
        them in the registry, which :class:`AlertEngine` reads (its records feed) and replays at
        its start: overdue records are raised by :meth:`tick` when their deadline passes.
        """
        out = self._findings(self.records.event(event, now))
        self.stats.transitions += len(out)
        return out

    # ---- the clock -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Transition]:
        """Silence, clock skew and overdue records as of ``now`` (call every few seconds)."""
        out: list[Transition] = []
        generation = self.contexts.generation
        if generation != self._known[0]:
            out += self._devices_changed(now)
        for change in self.nodata.check(now):
            out += self._nodata(change)
        out += self._skew(now)
        out += self._findings(self.records.tick(now))
        if out:
            self.stats.transitions += len(out)
        return out

    def _devices_changed(self, now: float) -> list[Transition]:
        """New devices start their silence clock now (not at the engine's start: a device
        registered today is not "silent since yesterday"); removed ones lose their device-level
        alerts (no-data, clock skew), which nothing else would ever clear."""
        devices = frozenset(self.contexts.devices())
        before = self._known[1]
        self._known = (self.contexts.generation, devices)
        for device in devices - before:
            self.nodata.seen(device, (), now)
        out: list[Transition] = []
        at = utc(now)
        for alert in self.book.open_alerts():
            device, rule = alert.key.device, alert.key.rule
            if device in devices:
                continue
            if rule in (CLOCK_SKEW, NODATA) or rule.startswith(NODATA + ":"):
                out += self.book.condition(alert.key, holds=False, at=at)
                self._nodata_open.pop(device, None)
        return out

    def _expectations(self) -> Mapping[str, Expectation]:
        generation = self.contexts.generation
        if self._expected[0] != generation:
            self._expected = (
                generation,
                {
                    d.device: Expectation(
                        d.interval_s, d.site.tenant, d.site.site, d.site.region, d.kind
                    )
                    for d in self.contexts.devices().values()
                    if d.interval_s > 0
                },
            )
        return self._expected[1]

    def _nodata(self, change: NoDataChange) -> list[Transition]:
        key = AlertKey(change.device, change.rule)
        if not change.holds:
            # The monitor also reports "back" when a pause ends (it restarts every clock), for
            # devices still silent; the core clears a no-data alert only when data arrives.
            return []
        if key in self.book:
            return []
        ctx = self.contexts.get(change.device)
        tenant, site, region = (
            (ctx.site.tenant, ctx.site.site, ctx.site.region) if ctx is not None else ("", "", "")
        )
        what = change.device if change.quantity is None else f"{change.quantity} of {change.device}"
        info = AlertInfo(
            tenant=tenant,
            site=site,
            region=region,
            kind=ctx.kind if ctx is not None else "",
            quantity=change.quantity,
            message=(
                f"no data: nothing from {what} for {change.silent_for_s:.0f} s "
                f"(expected every {change.expected_interval_s:g} s)"
            ),
            limit=self.nodata.window(Expectation(change.expected_interval_s)),
            labels={
                "expected_alert": NODATA,
                "expected_interval_s": change.expected_interval_s,
            },
        )
        at = utc(change.at)
        out = self.book.condition(
            key,
            holds=True,
            at=at,
            value=round(change.silent_for_s, 1),
            since=at,
            for_s=0.0,
            severity=Severity.WARNING,
            info=info,
        )
        self._nodata_open.setdefault(change.device, set()).add(change.quantity)
        return out

    def _data_back(
        self, device: str, marks: set[str | None], fields: Mapping[str, Any], arrival: float
    ) -> list[Transition]:
        out: list[Transition] = []
        at = utc(arrival)
        for quantity in list(marks):
            if quantity is not None and quantity not in fields:
                continue
            marks.discard(quantity)
            rule = NODATA if quantity is None else f"{NODATA}:{quantity}"
            out += self.book.condition(AlertKey(device, rule), holds=False, at=at)
        if not marks:
            del self._nodata_open[device]
        return out

    def _skew(self, now: float) -> list[Transition]:
        """A live device whose newest timestamp lags its arrival by more than ``skew_s`` for
        ``skew_for_s``: its clock is wrong (the data is stored at the wrong time). A backlog
        delivered after an outage lags too, but only for as long as it takes to drain."""
        out: list[Transition] = []
        for device, st in self._states.items():
            ctx = self.contexts.get(device)
            interval = ctx.interval_s if ctx is not None else 60.0
            if now - st.last_arrival > 2.0 * interval + 5.0:
                continue  # not live: silence is the no-data monitor's business
            skewed = abs(st.lag) > self.skew_s
            key = AlertKey(device, CLOCK_SKEW)
            if skewed:
                if st.skew_since is None:
                    st.skew_since = now
                if not st.skew_open and now - st.skew_since >= self.skew_for_s:
                    st.skew_open = True
                    if key in self.book:
                        continue
                    tenant, site, region = st.info
                    side = "behind" if st.lag > 0 else "ahead of"
                    info = AlertInfo(
                        tenant=tenant,
                        site=site,
                        region=region,
                        kind=st.kind,
                        message=(
                            f"{device}: its clock is {abs(st.lag):.0f} s {side} the platform's; "
                            "its readings are stored at the wrong time (set the device's clock, "
                            "e.g. NTP)"
                        ),
                        limit=self.skew_s,
                        labels={"expected_alert": CLOCK_SKEW},
                    )
                    at = utc(now)
                    out += self.book.condition(
                        key,
                        holds=True,
                        at=at,
                        value=round(st.lag, 1),
                        since=at,
                        severity=Severity.WARNING,
                        info=info,
                    )
            else:
                st.skew_since = None
                if st.skew_open or key in self.book:
                    st.skew_open = False
                    out += self.book.condition(
                        key, holds=False, at=utc(now), value=round(st.lag, 1)
                    )
        return out

    # ---- restarts and people ---------------------------------------------------------------------

    def _track_restored(self, alert: Alert) -> None:
        rule = alert.key.rule
        if rule == NODATA:
            self._nodata_open.setdefault(alert.key.device, set()).add(None)
        elif rule.startswith(NODATA + ":"):
            quantity = rule[len(NODATA) + 1 :]
            self._nodata_open.setdefault(alert.key.device, set()).add(quantity)

    def last_seen(self, device: str) -> float | None:
        """When the device's newest reading arrived (epoch seconds), None if never since start."""
        st = self._states.get(device)
        return st.last_arrival if st is not None and st.last_arrival > -math.inf else None

    def pipelines(self, device: str) -> list[SeriesPipeline]:
        """The device's detector pipelines, created from its context if needed (warm-up)."""
        st = self._states.get(device)
        if st is None:
            ctx = self.contexts.get(device)
            if ctx is None:
                return []
            probe = Reading(
                ctx.site.tenant, ctx.site.site, device, ctx.kind, ctx.site.region, 0, {}
            )
            st = self._prepare(probe, None)
        return st.pipelines

    def flush(self, now: float) -> list[Transition]:
        """Judge the sterilizer cycles still open (the end of a replay)."""
        out: list[Transition] = []
        for st in self._states.values():
            if st.sterilizer is not None:
                out += self._findings(st.sterilizer.flush(now))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


CYCLE_MEASUREMENT = "sterilizer_cycle"


def cycle_line(record: CycleRecord, tenant: str, site: str, region: str) -> str:
    """One ``sterilizer_cycle`` point (docs/schema.md) at the cycle's end: the cycle record a
    CSSD's printout would be checked against, for the sterilizer dashboard's cycle table."""
    tags = {
        "device": record.device,
        "site": site,
        "tenant": tenant,
        "region": region,
        "programme": record.programme,
        "passed": "true" if record.passed else "false",
    }
    fields: dict[str, Any] = {"cycle_id": record.cycle_id, "hold_s": float(record.hold_s)}
    for name in ("min_temp_c", "max_temp_c", "max_saturation_excess_kpa"):
        value = getattr(record, name)
        if value is not None and math.isfinite(value):
            fields[name] = float(value)
    fields["reasons"] = ",".join(record.reasons)
    return encode_line(
        CYCLE_MEASUREMENT,
        {k: v for k, v in tags.items() if v},
        fields,
        round(record.end.timestamp() * 1000),
    )


# ---- the platform's service ---------------------------------------------------------------------


@dataclass
class EngineStats:
    transitions: int = 0
    persisted: int = 0  # transitions saved in the registry
    persist_errors: int = 0
    dropped: int = 0  # transitions pushed out of the full queue (oldest first)
    events_spooled: int = 0  # alert_event lines written to the spool
    events_lost: int = 0  # alert_event lines refused by a full or closed spool
    cycles_spooled: int = 0  # sterilizer_cycle lines written to the spool
    listener_errors: int = 0
    warmed_up: int = 0  # readings replayed into detectors at start
    records_fed: int = 0  # records read from the registry (record_events) and evaluated
    record_errors: int = 0  # records feed: failed reads of the registry, records not evaluated


@dataclass(slots=True)
class _Queued:
    alert: Alert | None  # a snapshot at the transition, or None for a notifier update
    transition: Transition | None
    notify: tuple[str, datetime | None, int] | None = None  # alert id, notified_at, level
    seq: int = 0


def _snapshot(alert: Alert) -> Alert:
    snap = copy.copy(alert)
    snap.labels = dict(alert.labels)
    return snap


RECORD_BATCH = 1000  # records feed: rows read per query (more are read at once if there are)
RECORD_WAIT_S = 300.0  # records feed: how long an id skipped over is looked for
RECORD_MAX_MISSING = 10_000


class EngineUnavailable(RuntimeError):
    """The engine is not running (stopped, or not started in this process)."""


class AlertEngine:
    """The detector as a platform service: ``async with AlertEngine(...) as engine``.

    ``store``: an :class:`~alerting.store.AlertStore` (None: nothing persisted, e.g. a bench);
    ``spool``: where ``alert_event`` lines go (the forwarder writes them to the agency database);
    ``dispatcher``: the notifier; ``connected``: False while the platform cannot hear devices
    (the MQTT collector's connection), which pauses the no-data monitor; ``refresh``: re-reads
    the contexts (run in a thread every ``context_refresh_s``); ``attach``: called with the
    reading listener once the engine is ready (the platform appends it to the ingestor's
    listeners). ``settings`` is the platform's ``AlertingSettings``.
    """

    def __init__(
        self,
        contexts: ContextTable,
        settings: Any,
        *,
        store: Any = None,
        spool: Any = None,
        dispatcher: Any = None,
        connected: Callable[[], bool] | None = None,
        refresh: Callable[[], Any] | None = None,
        attach: Callable[[Callable[[Reading], None]], None] | None = None,
        influx: Any = None,
        influx_database: str = "weijian",
        resolutions: Callable[[str | None], Mapping[str, float]] | None = None,
        ruleset: RuleSet | None = None,
        detectors: DetectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.contexts = contexts
        self.settings = settings
        self.store = store
        self.spool = spool
        self.dispatcher = dispatcher
        self._connected = connected
        self._refresh = refresh
        self._attach = attach
        self.influx = influx
        self.influx_database = influx_database
        self._resolutions = resolutions
        self._ruleset = ruleset
        self._detectors = detectors
        self.clock = clock
        self.core: DetectionCore | None = None
        self.stats = EngineStats()
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._seq = 0
        self._persisted_seq = 0
        self._persisted = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._running = False
        self._last_error_log = 0.0
        self._paused: set[str] = set()  # the no-data monitor's pause reasons, as set here
        # the records feed (see feed_records): the highest record_events id evaluated, the ids
        # below it not seen yet (id -> until when to look for it, monotonic)
        self._records_last = 0
        self._records_missing: dict[int, float] = {}
        self._records_wake = asyncio.Event()
        self._records_lock = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> AlertEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        book = await asyncio.to_thread(self.store.book) if self.store is not None else AlertBook()
        now = self.clock()
        self._started = now
        self.core = DetectionCore(
            self.contexts,
            now=now,
            book=book,
            ruleset=self._ruleset,
            detectors=self._detectors,
            resolutions=self._resolutions,
            nodata_multiple=s.nodata_multiple,
            nodata_min_silence_s=s.nodata_min_silence_s,
            skew_s=s.clock_skew_s,
            skew_for_s=s.clock_skew_for_s,
        )
        if s.startup_grace_s > 0:
            self._paused.add("startup")
            self.core.nodata.pause("startup")
        restored = book.open_alerts()
        if restored:
            log.info("alerting: %d open alert(s) restored from the registry", len(restored))
        self._records_last, self._records_missing = 0, {}
        if self.store is not None:  # records posted before the restart, replayed silently
            since, sites = self.core.records.replay_since(restored, now)
            replay = await asyncio.to_thread(self.store.replay_records, since, sites)
            self.core.records.restore(replay.events, restored)
            # the feed goes on from there: nothing committed since is lost, nothing seen twice
            self._records_last = replay.last_id
            self._records_missing = dict.fromkeys(
                replay.missing[-RECORD_MAX_MISSING:], time.monotonic() + RECORD_WAIT_S
            )
            log.info(
                "alerting: %d record event(s) replayed into the records monitor",
                len(replay.events),
            )
        if self.dispatcher is not None:
            at = datetime.fromtimestamp(now, UTC)
            for alert in restored:  # the notifier resumes reminders and escalation
                if alert.state is AlertState.FIRING:
                    self.dispatcher.submit(
                        Transition(
                            alert.id,
                            alert.key,
                            at,
                            AlertState.FIRING,
                            AlertState.FIRING,
                            alert.severity,
                        ),
                        alert,
                    )
        if s.warmup and self.influx is not None:
            await self._warm_up()
        self._running = True
        self._tasks = [
            asyncio.create_task(self._write(), name="alerting-writer"),
            asyncio.create_task(self._tick(), name="alerting-tick"),
        ]
        if self.store is not None:
            self._records_wake.set()  # at once: what was committed since the replay
            self._tasks.append(asyncio.create_task(self._feed(), name="alerting-records"))
        if self._attach is not None:
            self._attach(self.listener)
        log.info(
            "alerting: %d rules, %d detector specs, %d device(s) expected",
            len(self.core.ruleset),
            len(self.core.detectors.specs),
            len(self.contexts),
        )

    async def aclose(self) -> None:
        """Stop evaluating, then persist and spool what is queued (bounded by a few seconds)."""
        if not self._running:
            return
        self._running = False
        for task in self._tasks[1:]:  # the tick and the records feed
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake.set()
        writer = self._tasks[0] if self._tasks else None
        if writer is not None:
            try:
                await asyncio.wait_for(self._drained(), timeout=10.0)
            except TimeoutError:
                log.warning(
                    "alerting: %d transition(s) not persisted at shutdown", len(self._queue)
                )
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._tasks.clear()

    async def _drained(self) -> None:
        async with self._persisted:
            await self._persisted.wait_for(lambda: self._persisted_seq >= self._seq)

    async def _warm_up(self) -> None:
        assert self.core is not None
        s = self.settings
        targets = {
            device: (ctx.kind, self.core.pipelines(device))
            for device, ctx in self.contexts.devices().items()
        }
        started = time.monotonic()
        try:
            replayed = await asyncio.wait_for(
                warm_up(
                    self.influx,
                    self.influx_database,
                    targets,
                    s.warmup_window_s,
                    max_points=s.warmup_max_points,
                ),
                timeout=s.warmup_timeout_s,
            )
        except Exception as exc:  # InfluxDB down or slow: detectors start cold, that is all
            log.warning("alerting: detector warm-up skipped (%s)", exc or type(exc).__name__)
            return
        self.stats.warmed_up = replayed
        log.info(
            "alerting: detectors warmed up with %d reading(s) in %.1f s",
            replayed,
            time.monotonic() - started,
        )

    # ---- the hot path ----------------------------------------------------------------------------

    def listener(self, reading: Reading) -> None:
        """The ingest listener: never raises, never waits (the ingestor calls it inline)."""
        core = self.core
        if core is None or not self._running:
            return
        try:
            transitions = core.observe(reading, self.clock())
        except Exception:
            self.stats.listener_errors += 1
            core.stats.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 60.0:
                self._last_error_log = now
                log.exception("alerting: reading of %s not evaluated", reading.device)
            return
        if transitions:
            self._emit(transitions)

    def _emit(self, transitions: Sequence[Transition]) -> int:
        """Queue for persistence and the spool, submit to the notifier; returns the last seq."""
        assert self.core is not None
        book = self.core.book
        limit = self.settings.queue_size
        for transition in transitions:
            alert = book.alert(transition.alert_id)
            if transition.from_state is None:
                self._decorate(alert)
            self.stats.transitions += 1
            if self.dispatcher is not None:
                self.dispatcher.submit(transition, alert)
            self._enqueue(_Queued(_snapshot(alert), transition), limit)
        return self._seq

    def _enqueue(self, item: _Queued, limit: int) -> None:
        if len(self._queue) >= limit:
            self._queue.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error(
                    "alerting: persistence queue full; %d transition(s) dropped so far",
                    self.stats.dropped,
                )
        self._seq += 1
        item.seq = self._seq
        self._queue.append(item)
        self._wake.set()

    def _decorate(self, alert: Alert) -> None:
        """Labels for people and the notifier: the site's name."""
        site = self.contexts.site(alert.site)
        if site is not None and site.name and "site_name" not in alert.labels:
            alert.labels["site_name"] = site.name

    def notified(self, alert: Alert) -> None:
        """The notifier's ``on_alert_update``: persist ``notified_at`` and ``escalation_level``."""
        if not self._running:
            return
        self._enqueue(
            _Queued(None, None, (alert.id, alert.notified_at, alert.escalation_level)),
            self.settings.queue_size,
        )

    # ---- background ------------------------------------------------------------------------------

    async def _write(self) -> None:
        batch_limit = 500
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(batch_limit, len(self._queue)))]
                self._spool(batch)
                if self.store is not None:
                    await self._persist(batch)
                else:
                    self.stats.persisted += sum(1 for item in batch if item.transition)
                async with self._persisted:
                    self._persisted_seq = batch[-1].seq
                    self._persisted.notify_all()

    def _spool(self, batch: Sequence[_Queued]) -> None:
        if self.spool is None:
            return
        records = [  # the agency database and the tenant's copy (its own dashboards)
            encode_event(alert_event_line(item.alert, item.transition), item.alert.tenant or None)
            for item in batch
            if item.alert is not None and item.transition is not None
        ]
        if not records:
            return
        try:
            self.spool.append(records)
            self.stats.events_spooled += len(records)
        except Exception as exc:  # spool full or closed: the registry still has every transition
            self.stats.events_lost += len(records)
            log.warning("alerting: %d alert_event line(s) not spooled: %s", len(records), exc)

    def _spool_cycles(self, core: DetectionCore) -> None:
        """Closed sterilizer cycles as ``sterilizer_cycle`` points (agency and tenant copies)."""
        if not core.cycle_records:
            return
        records = []
        while core.cycle_records:
            record = core.cycle_records.popleft()
            tenant, site, region, _ = core._where(record.device)
            records.append(encode_event(cycle_line(record, tenant, site, region), tenant or None))
        if self.spool is None:
            return
        try:
            self.spool.append(records)
            self.stats.cycles_spooled += len(records)
        except Exception as exc:
            self.stats.events_lost += len(records)
            log.warning("alerting: %d sterilizer_cycle line(s) not spooled: %s", len(records), exc)

    async def _persist(self, batch: Sequence[_Queued]) -> None:
        """Save each alert's latest snapshot with its transitions, in order; retry while the
        database is down (the queue keeps filling meanwhile, bounded)."""
        groups: dict[str, tuple[Alert, list[Transition]]] = {}
        notes: list[tuple[str, datetime | None, int]] = []
        for item in batch:
            if item.notify is not None:
                notes.append(item.notify)
                continue
            assert item.alert is not None
            assert item.transition is not None
            entry = groups.get(item.alert.id)
            if entry is None:
                groups[item.alert.id] = (item.alert, [item.transition])
            else:
                groups[item.alert.id] = (item.alert, [*entry[1], item.transition])
        attempt = 0
        while True:
            try:
                saved = await asyncio.to_thread(self._save, groups, notes)
                self.stats.persisted += saved
                return
            except Exception as exc:
                attempt += 1
                self.stats.persist_errors += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.error("alerting: cannot persist alerts (attempt %d): %s", attempt, exc)
                if not self._running and attempt >= 3:
                    return
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)))

    def _save(
        self,
        groups: Mapping[str, tuple[Alert, list[Transition]]],
        notes: Sequence[tuple[str, datetime | None, int]],
    ) -> int:
        saved = 0
        for alert, transitions in groups.values():
            try:
                self.store.save(alert, transitions)
                saved += len(transitions)
            except DuplicateOpenAlert as exc:  # another writer opened one: keep theirs, say so
                log.error("alerting: %s", exc)
        if notes:
            _save_notify_fields(self.store.registry, notes)
        return saved

    async def _tick(self) -> None:
        s = self.settings
        refresh_every = s.context_refresh_s
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(s.tick_interval_s)
            core = self.core
            if core is None:
                continue
            now = self.clock()
            try:
                if self._refresh is not None and time.monotonic() - last_refresh >= refresh_every:
                    last_refresh = time.monotonic()
                    await asyncio.to_thread(self._refresh)
                self._pauses(core, now)
                transitions = core.tick(now)
                if transitions:
                    self._emit(transitions)
                self._spool_cycles(core)
            except Exception:
                log.exception("alerting: tick failed")

    def _pauses(self, core: DetectionCore, now: float) -> None:
        """Startup grace and the MQTT connection: silence counts only while devices can be heard."""
        monitor, paused = core.nodata, self._paused
        if "startup" in paused and now - self._started >= self.settings.startup_grace_s:
            paused.discard("startup")
            monitor.resume("startup", now)
        if self._connected is None:
            return
        connected = self._connected()
        if not connected and "mqtt" not in paused:
            log.warning("alerting: MQTT disconnected; no-data checks paused")
            paused.add("mqtt")
            monitor.pause("mqtt")
        elif connected and "mqtt" in paused:
            log.info("alerting: MQTT connected; no-data clocks restart now")
            paused.discard("mqtt")
            monitor.resume("mqtt", now)

    # ---- the records feed ------------------------------------------------------------------------

    def poll_records(self) -> None:
        """Read the new records now rather than at the next poll (any thread; never waits, never
        raises): the gateway calls it after storing records. A no-op when the engine is not
        running in this process -- the engine that runs reads them from the registry anyway."""
        loop = self._loop
        if loop is None or not self._running:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._records_wake.set)

    async def _feed(self) -> None:
        """Every ``tick_interval_s``, or at once when :meth:`poll_records` asks."""
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            timer = loop.call_later(self.settings.tick_interval_s, self._records_wake.set)
            try:
                await self._records_wake.wait()
            finally:
                timer.cancel()
            self._records_wake.clear()
            try:
                await self.feed_records()
                failures = 0
            except Exception as exc:  # the registry is down: read again at the next poll
                failures += 1
                self.stats.record_errors += 1
                if failures == 1 or failures % 100 == 0:
                    log.error("alerting: cannot read new records (attempt %d): %s", failures, exc)

    async def feed_records(self) -> int:
        """Read the records stored since the last read (``record_events``, ``id >`` the highest
        seen; first: the highest at the start-up replay) and evaluate each once, by id, on the
        loop; returns how many. The registry is the feed, whoever stored the record: a gateway
        in this process, another process (``alerting.tap: false``) or another host.

        On PostgreSQL ids are taken before commit, so a lower id can become visible after a
        higher one: an id skipped over is looked for in every read for :data:`RECORD_WAIT_S`
        (a rolled-back or deleted row's id is given up then). SQLite hands ids out in commit
        order and never twice (``AUTOINCREMENT``)."""
        if self.store is None or self.core is None or not self._running:
            return 0
        async with self._records_lock:
            fed = 0
            while True:
                clock = time.monotonic()
                missing = self._records_missing
                for row_id in [i for i, until in missing.items() if until < clock]:
                    del missing[row_id]
                found = await asyncio.to_thread(
                    self.store.new_records, self._records_last, list(missing), RECORD_BATCH
                )
                fresh = 0
                for row_id, event in found:
                    if row_id > self._records_last:
                        fresh += 1
                        self._skipped(row_id, clock + RECORD_WAIT_S)
                        self._records_last = row_id
                    elif missing.pop(row_id, None) is None:
                        continue  # seen already
                    fed += self._evaluate_record(row_id, event)
                if fresh < RECORD_BATCH or not self._running:
                    return fed

    def _skipped(self, row_id: int, until: float) -> None:
        """Ids between the highest seen and ``row_id``: not committed yet, or never will be."""
        missing = self._records_missing
        first = max(self._records_last + 1, row_id - RECORD_MAX_MISSING)
        for i in range(first, row_id):
            missing[i] = until
        while len(missing) > RECORD_MAX_MISSING:  # the oldest first (ids come in order)
            del missing[next(iter(missing))]

    def _evaluate_record(self, row_id: int, event: RecordEvent) -> int:
        core = self.core
        assert core is not None
        try:
            transitions = core.record_event(event, self.clock())
        except Exception:
            self.stats.record_errors += 1
            log.exception("alerting: record %d (%s) not evaluated", row_id, event)
            return 0
        self.stats.records_fed += 1
        if transitions:
            self._emit(transitions)
        return 1

    # ---- people's actions (any thread) -----------------------------------------------------------

    def acknowledge(self, alert_id: str, by: str, comment: str | None) -> Alert:
        """Acknowledge through the book (``LifecycleError``/``AlertNotFound`` as the book raises
        them); returns the alert once the transition is persisted."""
        return self._call(self._act, "acknowledge", alert_id, by, comment)

    def resolve(self, alert_id: str, by: str, reason: str) -> Alert:
        """Resolve by hand, with a reason; the book's rules apply (see alerting/lifecycle.py)."""
        return self._call(self._act, "resolve", alert_id, by, reason)

    def record_event(self, event: RecordEvent) -> None:
        """A record from elsewhere than the registry's ``record_events`` (a bench, a test):
        evaluated on the loop thread; blocks the calling thread (never the loop's) until it is.
        ``EngineUnavailable`` when the engine is not running. The records the gateway stores reach
        the engine through the records feed (:meth:`feed_records`): never hand one of those in
        here as well, it would be evaluated twice (a bag counted twice)."""

        async def run() -> None:
            assert self.core is not None
            transitions = self.core.record_event(event, self.clock())
            if transitions:
                self._emit(transitions)

        self._call(run)

    async def _act(self, action: str, alert_id: str, by: str, text: str | None) -> Alert:
        core = self.core
        if core is None or not self._running:
            raise EngineUnavailable("the alert engine is not running")
        at = datetime.fromtimestamp(self.clock(), UTC)
        if action == "acknowledge":
            transitions = core.book.acknowledge(alert_id, by, text, at)
        else:
            transitions = core.book.resolve(alert_id, by, text or "", at)
        seq = self._emit(transitions)
        alert = _snapshot(core.book.alert(alert_id))
        try:
            async with self._persisted:
                await asyncio.wait_for(
                    self._persisted.wait_for(lambda: self._persisted_seq >= seq), timeout=10.0
                )
        except TimeoutError:
            log.warning("alerting: %s of %s not yet persisted after 10 s", action, alert_id)
        return alert

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        loop = self._loop
        if loop is None or not self._running:
            raise EngineUnavailable("the alert engine is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("call the engine's blocking methods from another thread")
        future = asyncio.run_coroutine_threadsafe(fn(*args), loop)
        try:
            return future.result(timeout=15.0)
        except TimeoutError:
            future.cancel()
            raise EngineUnavailable("the alert engine did not answer in time") from None


def _save_notify_fields(registry: Any, notes: Sequence[tuple[str, datetime | None, int]]) -> None:
    """What the notifier learnt: first notice sent, escalation level (never lowered)."""
    from sqlalchemy import select

    from gateway.registry.models import AlertRow

    with registry.session() as session, session.begin():
        ids = {alert_id for alert_id, _, _ in notes}
        rows = {
            row.id: row
            for row in session.execute(select(AlertRow).where(AlertRow.id.in_(ids))).scalars()
        }
        for alert_id, notified_at, level in notes:
            row = rows.get(alert_id)
            if row is None:
                continue
            if notified_at is not None and row.notified_at is None:
                row.notified_at = notified_at
            if level > (row.escalation_level or 0):
                row.escalation_level = level


# ---- the registry as the context source ---------------------------------------------------------


class RegistryContexts(ContextTable):
    """The contexts (and the officers of each jurisdiction) read from the registry database.

    :meth:`refresh` runs in a thread (on start, when the registry revision moves, and every
    ``context_refresh_s`` for what does not move it: site attributes, overrides, officers).
    """

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry
        self._officers: dict[str, list[Any]] = {}

    def refresh(self) -> bool:
        from sqlalchemy import select

        from alerting.notify import officers_from_json
        from alerting.rules import site_overrides
        from gateway.registry.models import Device, Jurisdiction, Site

        with self.registry.session() as session:
            overrides: dict[str, list[Override]] = {}
            for override in site_overrides(session):
                overrides.setdefault(override.site_id, []).append(override)
            sites = {
                row.id: SiteContext(
                    site=row.id,
                    tenant=row.tenant_id,
                    region=row.region_code,
                    name=row.name,
                    venue_type=row.venue_type,
                    attributes=dict(row.attributes or {}),
                    overrides=tuple(overrides.get(row.id, ())),
                )
                for row in session.execute(select(Site)).scalars()
            }
            devices = [
                DeviceContext(device_id, kind, float(interval or 0), sites[site_id], profile)
                for device_id, kind, interval, site_id, profile in session.execute(
                    select(
                        Device.id, Device.kind, Device.interval_s, Device.site_id, Device.profile
                    ).where(Device.status == "active")
                ).all()
                if site_id in sites
            ]
            officers = {
                row.region_code: officers_from_json(row.officers)
                for row in session.execute(select(Jurisdiction)).scalars()
            }
        self._officers = officers
        return self.replace(devices, sites.values())

    def officers(self, region: str) -> list[Any]:
        """The notifier's officer lookup (in memory: it runs on the event loop)."""
        return self._officers.get(region, [])


def profile_resolutions() -> Callable[[str | None], Mapping[str, float]]:
    """Profile id → {quantity: resolution} from the shipped profiles (for the detectors)."""
    from protocols.profiles import load_profiles

    profiles = load_profiles()
    cache: dict[str | None, Mapping[str, float]] = {}

    def resolutions(profile: str | None) -> Mapping[str, float]:
        found = cache.get(profile)
        if found is None:
            found = {}
            if profile is not None and profile in profiles:
                found = {
                    q: entry.resolution
                    for q, entry in profiles[profile].quantities.items()
                    if entry.resolution is not None
                }
            cache[profile] = found
        return found

    return resolutions
