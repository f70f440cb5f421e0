"""Faults as data: what goes wrong, when, on which device, and the alert it should raise.

A scenario's ``faults:`` entries (docs/scenarios.md) are validated here into fault types with typed
parameters, resolved per device into absolute windows (``plan_faults``), and applied **between the
signal model and the transport** by :class:`FaultedSignal`, so the transports stay simple: they ask
``emit(t)`` and get either ``(ts, values)`` to send, ``None`` (nothing is sent: the device is
silent), or a :class:`Malformed` marker (send something the platform must reject).

Two mechanisms, one per kind of fault:

* **Model hooks** act on the physics: a chlorine dosing failure (the residual decays as the water
  ages), an interlock failure (the beam's scatter leaks out of the room), a sterilizer hold cut
  short. The model's own ``faults`` object is swapped while the fault is active; a sterilizer takes
  a *schedule* instead, so every cycle is faulted as a whole or not at all.
* **Wrapper faults** act on what the instrument reports: spikes, level shifts, drift, a stuck
  sensor, out-of-range values, dropouts, intermittent links, clock skew, malformed messages.

Every fault becomes one ground-truth row per device (``ground_truth``; JSON Lines, format in
docs/scenarios.md) naming the **expected alert** in a fixed vocabulary (``EXPECTED_ALERTS``) that
the detection benchmark matches against. For faults whose effect depends on the physics (a
threshold crossed some time after dosing fails; a dose rate above 2.5 µSv/h only while the beam
is on; the sterilizer cycles a window actually catches), the row also gives the *effect* window,
computed from the noiseless model, and whether the fault is detectable at all.

``generate`` is the offline mode: a scenario's readings for a time range, with faults, without
any network — a time-ordered stream of ``Record(device, t, values | None | Malformed, ts)``.
"""

from __future__ import annotations

import fnmatch
import heapq
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Protocol

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from protocols.catalog import default_catalog
from simulators.air_monitor.signal import _GOLDEN, _M64, _mix64, _uniform

if TYPE_CHECKING:
    from simulators.scenario import Scenario

# ---- durations and times ------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")
_DURATION = re.compile(r"^([+-]?)\s*((?:\d+(?:\.\d+)?\s*(?:ms|min|s|m|h|d|w)\s*)+)$")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"2h"``, ``"1h30m"``, ``"-2h"`` or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        match = _DURATION.match(text)
        if match:
            sign = -1.0 if match.group(1) == "-" else 1.0
            return sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(match.group(2)))
    raise ValueError(f"{value!r} is not a duration (e.g. 90, '90s', '15m', '2h', '1d12h', '-2h')")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, the wire format's timestamp."""
    t = datetime.fromtimestamp(ts, UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def parse_instant(value: Any) -> datetime:
    """A timezone-aware datetime from an ISO 8601 string or a datetime (YAML parses those)."""
    if isinstance(value, datetime):
        t = value
    elif isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is neither a duration nor an ISO 8601 time") from None
    else:
        raise ValueError(f"{value!r} is neither a duration nor an ISO 8601 time")
    if t.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (write e.g. 2026-11-16T08:00:00+08:00)")
    return t


# ---- what a transport gets ---------------------------------------------------------------------

#: Malformed-message forms → the platform's rejection reason (``protocols.reading.Reason``).
MALFORMED_FORMS: dict[str, str] = {
    "not_json": "malformed",  # bytes that are not JSON at all (a garbled serial line)
    "truncated": "malformed",  # JSON cut off mid-document
    "no_fields": "no_fields",  # a reading with an empty fields object
    "wrong_type": "wrong_type",  # a number sent as text ("E-07", a sensor error code)
    "unknown_quantity": "unknown_quantity",  # a field the kind does not measure
}
MalformedForm = Literal["not_json", "truncated", "no_fields", "wrong_type", "unknown_quantity"]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message the platform must reject. Transports render it in their own framing; JSON ones
    (MQTT, HTTP, CoAP) use :meth:`json_payload`."""

    form: str
    ts: float
    values: Mapping[str, Any]

    @property
    def reason(self) -> str:
        return MALFORMED_FORMS[self.form]

    def json_payload(self, seq: int | None = None) -> bytes:
        doc: dict[str, Any] = {"ts": iso(self.ts), "fields": dict(self.values)}
        if seq is not None:
            doc["seq"] = seq
        if self.form == "not_json":
            return b"\x15ERR 0x1F \xff\xfe sensor bus timeout"
        if self.form == "truncated":
            text = orjson.dumps(doc)
            return text[: max(len(text) // 2, 1)]
        if self.form == "no_fields":
            doc["fields"] = {}
        elif self.form == "wrong_type":
            fields = doc["fields"]
            name = next((k for k, v in fields.items() if _is_number(v)), None)
            fields[name or "error"] = "E-07"
        else:  # unknown_quantity
            doc["fields"]["sensor_error_code"] = 7
        return orjson.dumps(doc)


Emission = tuple[float, dict[str, Any]] | Malformed | None
"""What a device puts on the wire at one tick: ``(timestamp, values)``, nothing, or junk."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---- fault types and their parameters -----------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ThresholdParams(_Params):
    """Push ``quantity`` past a limit: through the model's fault hooks (extra keys, e.g.
    ``chlorine_factor: 0.2``), or by ``value`` / ``offset`` / ``factor`` on the reading."""

    model_config = ConfigDict(frozen=True, extra="allow")
    quantity: str
    direction: Literal["low", "high"] | None = None
    limit: float | None = Field(default=None, description="Where the effect window is measured")
    value: float | None = None
    offset: float | None = None
    factor: float | None = Field(default=None, ge=0)

    @property
    def hook(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _one_mechanism(self) -> ThresholdParams:
        given = [n for n in ("value", "offset", "factor") if getattr(self, n) is not None]
        if self.hook:
            given.append("model hook " + ", ".join(sorted(self.hook)))
        if len(given) != 1:
            raise ValueError(
                "give exactly one of: model fault fields (e.g. chlorine_factor), value, offset, "
                f"factor (got {', '.join(given) or 'none'})"
            )
        return self


class SpikeParams(_Params):
    quantity: str
    magnitude: float | None = Field(default=None, description="Added to the reading")
    factor: float | None = Field(default=None, ge=0, description="Multiplies the reading")

    @model_validator(mode="after")
    def _one(self) -> SpikeParams:
        if (self.magnitude is None) == (self.factor is None):
            raise ValueError("give exactly one of magnitude, factor")
        return self


class LevelShiftParams(_Params):
    quantity: str
    offset: float | None = None
    factor: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> LevelShiftParams:
        if (self.offset is None) == (self.factor is None):
            raise ValueError("give exactly one of offset, factor")
        return self


class DriftParams(_Params):
    quantity: str
    rate_per_h: float | None = Field(default=None, description="Change per hour from the start")
    total: float | None = Field(default=None, description="Change reached at the window's end")

    @model_validator(mode="after")
    def _one(self) -> DriftParams:
        if (self.rate_per_h is None) == (self.total is None):
            raise ValueError("give exactly one of rate_per_h, total")
        return self


class StuckParams(_Params):
    quantity: str | None = Field(default=None, description="None: the whole reading freezes")


class NoParams(_Params):
    pass


class IntermittentParams(_Params):
    period: Duration = Field(default=600.0, gt=0, description="One outage per period")
    down: Duration = Field(default=180.0, gt=0, description="Length of each outage")

    @model_validator(mode="after")
    def _down_within_period(self) -> IntermittentParams:
        if self.down >= self.period:
            raise ValueError("down must be shorter than period (else it is a dropout)")
        return self


class ClockSkewParams(_Params):
    offset: Duration = Field(description="Added to the device's timestamps, e.g. '-2h'")

    @model_validator(mode="after")
    def _nonzero(self) -> ClockSkewParams:
        if self.offset == 0:
            raise ValueError("offset must not be zero")
        return self


class OutOfRangeParams(_Params):
    quantity: str
    value: float | None = Field(default=None, description="Default: 1.5 × the physical maximum")


class MalformedParams(_Params):
    form: MalformedForm = "not_json"
    probability: float = Field(default=1.0, gt=0, le=1, description="Share of messages garbled")


class HoldTooShortParams(_Params):
    shortfall: Duration = Field(default=120.0, gt=0, description="The hold ends this much early")


class TemperatureLowParams(_Params):
    deficit_c: float = Field(default=2.0, gt=0, le=30, description="Hold below the set-point")


class AirInChamberParams(_Params):
    excess_kpa: float = Field(default=15.0, gt=0, le=200, description="P above P_sat(T)")


class InterlockFailureParams(_Params):
    leakage_factor: float = Field(default=10.0, gt=1, le=1e6, description="× beam contribution")
    limit: float = Field(default=2.5, gt=0, description="µSv/h, GBZ 130-2020 §6.3.1 a/b")


@dataclass(frozen=True)
class KindInfo:
    """What the fault layer needs to know about a simulated kind."""

    name: str
    quantities: tuple[str, ...]
    fault_model: type[BaseModel] | None = None  # the model's own faults object, if it has hooks

    @property
    def numeric(self) -> frozenset[str]:
        catalog = default_catalog().quantities
        return frozenset(
            q for q in self.quantities if q in catalog and catalog[q].type in ("float", "int")
        )


@dataclass(frozen=True)
class FaultType:
    """One fault type: its parameters, where it applies and the alert it should raise."""

    name: str
    summary: str
    params: type[_Params]
    alert: str  # expected alert; "{quantity}" and "{direction}" are filled in for thresholds
    kinds: frozenset[str] | None = None  # None: any kind
    quantity: Literal["required", "optional", "none"] = "none"
    hook: Callable[[Any], dict[str, Any]] | None = None  # params → model fault fields

    def validate(self, raw: Mapping[str, Any], kind: KindInfo) -> tuple[_Params, list[str]]:
        """Typed parameters for a device of ``kind``, or the problems (field: message)."""
        try:
            params = self.params.model_validate(dict(raw))
        except ValidationError as exc:
            return NoParams(), [
                f"params.{'.'.join(str(p) for p in e['loc'])}: "
                f"{e['msg'].removeprefix('Value error, ')}".replace("params.: ", "params: ")
                for e in exc.errors()
            ]
        problems: list[str] = []
        if self.kinds is not None and kind.name not in self.kinds:
            problems.append(
                f"type {self.name!r} applies to {', '.join(sorted(self.kinds))}, not {kind.name!r}"
            )
            return params, problems
        quantity = getattr(params, "quantity", None)
        if quantity is not None and quantity not in kind.numeric:
            problems.append(
                f"params.quantity: {quantity!r} is not a numeric quantity of {kind.name} "
                f"({', '.join(sorted(kind.numeric))})"
            )
        if isinstance(params, ThresholdParams):
            problems.extend(_check_threshold(params, kind))
        return params, problems


def _check_threshold(params: ThresholdParams, kind: KindInfo) -> list[str]:
    problems = []
    if params.hook:
        if kind.fault_model is None:
            return [f"params: {kind.name} has no model fault hooks; use value, offset or factor"]
        allowed = set(kind.fault_model.model_fields)
        unknown = sorted(set(params.hook) - allowed)
        if unknown:
            problems.append(
                f"params: {', '.join(unknown)} not a field of {kind.fault_model.__name__} "
                f"(or of quantity, direction, limit, value, offset, factor); its fields: "
                f"{', '.join(sorted(allowed))}"
            )
        else:
            try:
                kind.fault_model.model_validate(params.hook)
            except ValidationError as exc:
                problems.extend(
                    f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
    if not problems and threshold_direction(params) is None:
        problems.append("params.direction: cannot tell low from high here; give direction")
    return problems


# Model hook field → (quantity it moves, direction given the field's value).
HOOK_EFFECTS: dict[str, tuple[str, Callable[[float], str]]] = {
    "chlorine_factor": ("free_chlorine_mg_l", lambda v: "low" if v < 1 else "high"),
    "chlorine_dosing_factor": ("free_chlorine_mg_l", lambda v: "low" if v < 1 else "high"),
    "turbidity_offset_ntu": ("turbidity_ntu", lambda v: "high"),
    "ph_offset": ("ph", lambda v: "low" if v < 0 else "high"),
    "acid_dosing_factor": ("ph", lambda v: "high" if v < 1 else "low"),
}


def threshold_direction(params: ThresholdParams) -> str | None:
    """The breach's direction: given, or implied by the mechanism."""
    if params.direction is not None:
        return params.direction
    if params.value is not None and params.limit is not None:
        return "low" if params.value < params.limit else "high"
    if params.offset is not None:
        return "low" if params.offset < 0 else "high"
    if params.factor is not None:
        return "low" if params.factor < 1 else "high"
    for name, value in params.hook.items():
        effect = HOOK_EFFECTS.get(name)
        if effect is not None and effect[0] == params.quantity:
            return effect[1](value)
    return None


_STERILIZER = frozenset({"sterilizer"})
_RADIATION = frozenset({"dose_rate_monitor", "dosimeter"})

FAULT_TYPES: dict[str, FaultType] = {
    t.name: t
    for t in (
        FaultType(
            "threshold",
            "push a quantity past its limit (model hook, or value/offset/factor)",
            ThresholdParams,
            "threshold:{quantity}:{direction}",
            quantity="required",
        ),
        FaultType(
            "spike",
            "a short excursion (default: one sample)",
            SpikeParams,
            "anomaly:spike",
            quantity="required",
        ),
        FaultType(
            "level_shift",
            "a sudden lasting offset or gain change",
            LevelShiftParams,
            "anomaly:level_shift",
            quantity="required",
        ),
        FaultType(
            "drift",
            "a slow linear drift (an ageing electrode)",
            DriftParams,
            "anomaly:drift",
            quantity="required",
        ),
        FaultType(
            "stuck",
            "the reading freezes at its last value (flatline)",
            StuckParams,
            "anomaly:stuck",
            quantity="optional",
        ),
        FaultType("dropout", "the device falls silent", NoParams, "nodata"),
        FaultType(
            "intermittent",
            "the link drops for `down` once every `period`",
            IntermittentParams,
            "nodata:intermittent",
        ),
        FaultType(
            "clock_skew",
            "the device's clock is off by `offset`",
            ClockSkewParams,
            "device:clock_skew",
        ),
        FaultType(
            "out_of_range",
            "a value outside the quantity's physical range",
            OutOfRangeParams,
            "ingest:rejected",
            quantity="required",
        ),
        FaultType(
            "malformed", "messages the platform cannot parse", MalformedParams, "ingest:rejected"
        ),
        FaultType(
            "hold_too_short",
            "the sterilization hold ends early",
            HoldTooShortParams,
            "sterilizer:hold_too_short",
            kinds=_STERILIZER,
            hook=lambda p: {"hold_shortfall_s": p.shortfall},
        ),
        FaultType(
            "temperature_low",
            "the hold runs below the set-point",
            TemperatureLowParams,
            "sterilizer:temperature_low",
            kinds=_STERILIZER,
            hook=lambda p: {"hold_temp_deficit_c": p.deficit_c},
        ),
        FaultType(
            "air_in_chamber",
            "air in the chamber: pressure above saturation",
            AirInChamberParams,
            "sterilizer:air_in_chamber",
            kinds=_STERILIZER,
            hook=lambda p: {"air_excess_kpa": p.excess_kpa},
        ),
        FaultType(
            "bd_test_missing",
            "the daily Bowie-Dick test is not run",
            NoParams,
            "sterilizer:bd_test_missing",
            kinds=_STERILIZER,
            hook=lambda p: {"skip_bowie_dick": True},
        ),
        FaultType(
            "interlock_failure",
            "beam-on scatter leaks outside the shielded room",
            InterlockFailureParams,
            "radiation:dose_rate_high",
            kinds=_RADIATION,
            hook=lambda p: {"leakage_factor": p.leakage_factor},
        ),
    )
}
ALIASES = {"flatline": "stuck", "breach": "threshold", "silent": "dropout"}

#: Protocols whose devices send messages with their own timestamps. A polled Modbus device
#: sends neither: the collector reads registers and stamps the reading itself.
MESSAGE_PROTOCOLS = frozenset({"mqtt", "http", "coap", "hj212"})
NEEDS_MESSAGES = frozenset({"malformed", "clock_skew"})


def protocol_problem(fault_name: str, protocol: str) -> str | None:
    """Why a fault type cannot happen on a device speaking ``protocol`` (None: it can)."""
    name = ALIASES.get(fault_name, fault_name)
    if name in NEEDS_MESSAGES and protocol not in MESSAGE_PROTOCOLS:
        return (
            f"type {name!r} needs a device that sends messages "
            f"({', '.join(sorted(MESSAGE_PROTOCOLS))}), not a polled {protocol} device"
        )
    return None


#: The expected-alert vocabulary (fault type → alert string; see docs/scenarios.md).
EXPECTED_ALERTS: dict[str, str] = {name: t.alert for name, t in FAULT_TYPES.items()}


def fault_type(name: str) -> FaultType | None:
    return FAULT_TYPES.get(ALIASES.get(name, name))


# ---- a scenario's fault entries -----------------------------------------------------------------


class FaultConfig(BaseModel):
    """One ``faults:`` entry: a device id or glob, a type, a window and the type's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(min_length=1, description="Device id, or a glob such as 'probe-00*'")
    type: str
    start: Any = Field(description="Offset from the run's start ('2h', 7200) or ISO 8601 time")
    duration: Any = Field(default=None, description="'30m'; none: until the run ends")
    params: dict[str, Any] = Field(default_factory=dict)
    note: str = ""

    @model_validator(mode="after")
    def _times(self) -> FaultConfig:
        self.start_offset_or_time()
        if self.duration is not None and parse_duration(self.duration) <= 0:
            raise ValueError(f"duration {self.duration!r} must be positive")
        if fault_type(self.type) is None:
            raise ValueError(
                f"type {self.type!r} is not a fault type ({', '.join(sorted(FAULT_TYPES))})"
            )
        return self

    @property
    def fault_type(self) -> FaultType:
        found = fault_type(self.type)
        assert found is not None
        return found

    def start_offset_or_time(self) -> float | datetime:
        if isinstance(self.start, datetime):
            return parse_instant(self.start)
        try:
            return parse_duration(self.start)
        except ValueError:
            return parse_instant(self.start)

    def window(self, run_start: float, interval_s: float) -> tuple[float, float]:
        """Absolute [start, end) in unix seconds; ``end`` is ``inf`` when open-ended. A spike
        without a duration lasts one reporting interval, so it hits exactly one sample."""
        begin = self.start_offset_or_time()
        start = begin.timestamp() if isinstance(begin, datetime) else run_start + begin
        if self.duration is not None:
            return start, start + parse_duration(self.duration)
        if self.fault_type.name == "spike":
            return start, start + interval_s
        return start, math.inf

    def matches(self, device_id: str) -> bool:
        return device_id == self.device or fnmatch.fnmatchcase(device_id, self.device)


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault resolved for one device: absolute window, typed parameters, model hook fields."""

    index: int  # position in the scenario's ``faults:`` list
    type: str
    device: str
    start: float
    end: float  # math.inf: until the run ends
    params: Any
    hook: Mapping[str, Any] = field(default_factory=dict)

    @property
    def quantity(self) -> str | None:
        return getattr(self.params, "quantity", None)

    def active(self, ts: float) -> bool:
        return self.start <= ts < self.end


class PlannedDevice(Protocol):
    """What ``plan_faults`` needs of a device."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def interval_s(self) -> float: ...


def plan_faults(
    faults: Sequence[FaultConfig],
    devices: Iterable[PlannedDevice],
    kinds: Mapping[str, KindInfo],
    run_start: float,
) -> dict[str, list[PlannedFault]]:
    """Every fault entry resolved for each device it matches (entries keep their order)."""
    devices = list(devices)
    out: dict[str, list[PlannedFault]] = {}
    for index, config in enumerate(faults):
        ftype = config.fault_type
        for device in devices:
            if not config.matches(device.id):
                continue
            params, problems = ftype.validate(config.params, kinds[device.kind])
            if problems:  # the scenario validated this already; a direct caller may not have
                raise ValueError(f"faults[{index}] on {device.id}: {'; '.join(problems)}")
            start, end = config.window(run_start, device.interval_s)
            if ftype.hook is not None:
                hook = ftype.hook(params)
            elif isinstance(params, ThresholdParams):
                hook = params.hook
            else:
                hook = {}
            out.setdefault(device.id, []).append(
                PlannedFault(index, ftype.name, device.id, start, end, params, hook)
            )
    return out


# ---- applying faults: the wrapper between signal and transport ----------------------------------


def _quantity_bounds(quantity: str) -> tuple[float, float]:
    q = default_catalog().quantities[quantity]
    low = -math.inf if q.low is None else q.low
    high = math.inf if q.high is None else q.high
    return low, high


def out_of_range_value(quantity: str) -> float:
    """A value the platform must reject: 1.5 × the physical maximum (or below the minimum)."""
    low, high = _quantity_bounds(quantity)
    if math.isfinite(high):
        return round(high * 1.5 + 1.0, 3)
    return round(low - abs(low) * 0.5 - 1.0, 3)


def _clamp(quantity: str, value: float) -> float:
    low, high = _quantity_bounds(quantity)
    return round(min(max(value, low), high), 6)


class FaultedSignal:
    """A device's signal with its planned faults applied: ``emit(t)`` is what goes on the wire.

    Stateless apart from the model itself and the frozen values of stuck sensors (taken from the
    first sample inside the window), so the same times give the same emissions.
    """

    __slots__ = (
        "_first",
        "_hooked",
        "_key",
        "_last",
        "_sample_ts",
        "_stuck",
        "_toggled",
        "faults",
        "healthy",
        "signal",
    )

    def __init__(self, signal: Any, faults: Sequence[PlannedFault], *, seed: int = 0) -> None:
        self.signal = signal
        self.faults = tuple(sorted(faults, key=lambda f: (f.start, f.index)))
        self._sample_ts = signal.sample_ts
        self._key = _mix64((seed * _GOLDEN + 0xFA17) & _M64)
        self._stuck: dict[int, Any] = {}
        self._first = min((f.start for f in self.faults), default=math.inf)
        self._last = max((f.end for f in self.faults), default=-math.inf)
        self.healthy = getattr(signal, "faults", None)
        hooked = [f for f in self.faults if f.hook]
        if hooked and hasattr(signal, "fault_schedule"):
            # A sterilizer: each cycle runs with the faults in force when it starts.
            signal.fault_schedule = _schedule(self.healthy, hooked)
            self._toggled: tuple[PlannedFault, ...] = ()
        else:
            self._toggled = tuple(hooked)
        self._hooked: tuple[PlannedFault, ...] = ()

    def truth(self, t: datetime) -> Any:
        return self.signal.truth(t)

    def emit(self, t: datetime) -> tuple[datetime, dict[str, Any]] | Malformed | None:
        """What the device sends at ``t`` (timezone-aware): ``(timestamp, values)`` — the
        timestamp differs from ``t`` under clock skew — nothing, or a malformed message."""
        ts = t.timestamp()
        out = self.emit_ts(ts)
        if out is None or isinstance(out, Malformed):
            return out
        stamp, values = out
        return (t if stamp == ts else t + timedelta(seconds=stamp - ts)), values

    def emit_ts(self, ts: float) -> Emission:
        if ts < self._first or ts >= self._last:
            if self._hooked:
                self._set_hooks(())
            return ts, self._sample_ts(ts)
        active = [f for f in self.faults if f.start <= ts < f.end]
        if self._toggled:
            hooked = tuple(f for f in active if f.hook)
            if hooked != self._hooked:
                self._set_hooks(hooked)
        for f in active:
            if f.type == "dropout" or (f.type == "intermittent" and self._link_down(f, ts)):
                return None
        values = self._sample_ts(ts)
        stamp = ts
        garble: PlannedFault | None = None
        for f in active:
            p = f.params
            kind = f.type
            if kind == "threshold":
                if not f.hook:
                    q = p.quantity
                    if p.value is not None:
                        values[q] = _clamp(q, p.value)
                    elif p.offset is not None:
                        values[q] = _clamp(q, values[q] + p.offset)
                    else:
                        values[q] = _clamp(q, values[q] * p.factor)
            elif kind == "spike":
                q = p.quantity
                v = values[q] + p.magnitude if p.magnitude is not None else values[q] * p.factor
                values[q] = _clamp(q, v)
            elif kind == "level_shift":
                q = p.quantity
                v = values[q] + p.offset if p.offset is not None else values[q] * p.factor
                values[q] = _clamp(q, v)
            elif kind == "drift":
                q = p.quantity
                rate = p.rate_per_h
                if rate is None:
                    rate = p.total / ((f.end - f.start) / 3600.0) if math.isfinite(f.end) else 0.0
                values[q] = _clamp(q, values[q] + rate * (ts - f.start) / 3600.0)
            elif kind == "stuck":
                frozen = self._stuck.get(f.index)
                if frozen is None:
                    frozen = self._stuck[f.index] = (
                        values[p.quantity] if p.quantity else dict(values)
                    )
                if p.quantity:
                    values[p.quantity] = frozen
                else:
                    values = dict(frozen)
            elif kind == "out_of_range":
                q = p.quantity
                values[q] = p.value if p.value is not None else out_of_range_value(q)
            elif kind == "clock_skew":
                stamp = ts + p.offset
            elif kind == "malformed" and (
                p.probability >= 1.0
                or _uniform(self._key ^ f.index, int(ts * 1000)) < p.probability
            ):
                garble = f
        if garble is not None:
            return Malformed(garble.params.form, stamp, values)
        return stamp, values

    def _link_down(self, f: PlannedFault, ts: float) -> bool:
        """One outage of ``down`` per ``period``, at a random (hashed) place in the period."""
        period, down = f.params.period, f.params.down
        k = math.floor((ts - f.start) / period)
        begin = f.start + k * period + _uniform(self._key ^ (f.index + 1), k) * (period - down)
        return begin <= ts < begin + down

    def _set_hooks(self, hooked: tuple[PlannedFault, ...]) -> None:
        self._hooked = hooked
        self.signal.faults = _merge(self.healthy, hooked)


def _merge(healthy: Any, faults: Iterable[PlannedFault]) -> Any:
    update: dict[str, Any] = {}
    for f in faults:
        update.update(f.hook)
    if not update:
        return healthy
    return type(healthy).model_validate({**healthy.model_dump(), **update})


def _schedule(healthy: Any, faults: Sequence[PlannedFault]) -> Callable[[float], Any]:
    """A sterilizer fault schedule: the faults active at a cycle's start, merged (cached)."""
    cache: dict[tuple[int, ...], Any] = {}

    def schedule(ts: float) -> Any:
        active = tuple(f.index for f in faults if f.start <= ts < f.end)
        merged = cache.get(active)
        if merged is None:
            merged = cache[active] = _merge(healthy, [f for f in faults if f.index in active])
        return merged

    return schedule


# ---- ground truth -------------------------------------------------------------------------------


class TruthDevice(PlannedDevice, Protocol):
    """What the ground truth needs of a planned device (``scenario.SimDevice`` has it all)."""

    @property
    def tenant(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def faults(self) -> Sequence[PlannedFault]: ...

    def new_signal(self) -> Any: ...


def expected_alert(fault: PlannedFault, protocol: str = "mqtt") -> tuple[str, dict[str, Any]]:
    """The alert a fault should raise, and details (the rejection reason for ``ingest:*``).
    On HJ 212 and CoAP a message that does not parse is rejected as ``malformed`` whatever its
    form (a frame with a bad CRC; a cut-off document)."""
    ftype = FAULT_TYPES[fault.type]
    p = fault.params
    if fault.type == "threshold":
        return ftype.alert.format(quantity=p.quantity, direction=threshold_direction(p)), {}
    if fault.type == "clock_skew":
        if p.offset > 300 or p.offset < -30 * 86400:  # the ingest window: now − 30 d … now + 300 s
            return "ingest:rejected", {"reason": "timestamp_out_of_window"}
        return ftype.alert, {}
    if fault.type == "out_of_range":
        return ftype.alert, {"reason": "out_of_range"}
    if fault.type == "malformed":
        reason = MALFORMED_FORMS[p.form]
        if protocol == "hj212" or (protocol == "coap" and p.form in ("not_json", "truncated")):
            reason = "malformed"
        return ftype.alert, {"reason": reason}
    return ftype.alert, {}


def ground_truth(
    scenario: str,
    devices: Iterable[TruthDevice],
    run_start: float,
    run_end: float | None = None,
) -> list[dict[str, Any]]:
    """One row per (fault entry, device), ordered by start; faults starting at or after
    ``run_end`` never happen and are left out. Format: docs/scenarios.md."""
    rows = []
    for device in devices:
        for fault in device.faults:
            if run_end is not None and fault.start >= run_end:
                continue
            end = fault.end if run_end is None else min(fault.end, run_end)
            alert, detail = expected_alert(fault, device.protocol)
            effect = _effect(device, fault, end, run_end)
            params = fault.params.model_dump(exclude_none=True)
            rows.append(
                {
                    "scenario": scenario,
                    "fault": fault.index,
                    "device": device.id,
                    "kind": device.kind,
                    "protocol": device.protocol,
                    "tenant": device.tenant,
                    "site": device.site,
                    "region": device.region,
                    "type": fault.type,
                    "quantity": fault.quantity,
                    "start": iso(fault.start),
                    "end": iso(end) if math.isfinite(end) else None,
                    "expected_alert": alert,
                    "detectable": effect.detectable,
                    "effect_start": iso(effect.start) if effect.start is not None else None,
                    "effect_end": iso(effect.end) if effect.end is not None else None,
                    "params": params,
                    "detail": {**detail, **effect.detail},
                }
            )
    rows.sort(key=lambda r: (r["start"], r["fault"], r["device"]))
    return rows


def write_ground_truth(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """JSON Lines, one fault per line, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
    return path


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


@dataclass(frozen=True)
class _Effect:
    start: float | None
    end: float | None
    detectable: bool
    detail: dict[str, Any] = field(default_factory=dict)


_TAIL_S = 6 * 3600.0  # how long after a fault a stateful model may stay beyond the limit


def _effect(device: TruthDevice, fault: PlannedFault, end: float, run_end: float | None) -> _Effect:
    """When the fault shows in the noiseless model: the window beyond the limit (thresholds,
    interlock failures), the cycles it catches (sterilizers), or simply its own window."""
    p = fault.params
    if fault.type in ("hold_too_short", "temperature_low", "air_in_chamber", "bd_test_missing"):
        return _sterilizer_effect(device, fault, end)
    if fault.type == "interlock_failure":
        return _scan(device, fault, end, run_end, "dose_rate_usv_h", p.limit, "high")
    if fault.type == "threshold" and p.limit is not None:
        return _scan(device, fault, end, run_end, p.quantity, p.limit, threshold_direction(p))
    if not math.isfinite(end) or end <= fault.start:
        return _Effect(fault.start, None, end > fault.start)
    return _Effect(fault.start, end, True)


def _scan(
    device: TruthDevice,
    fault: PlannedFault,
    end: float,
    run_end: float | None,
    quantity: str,
    limit: float,
    direction: str | None,
) -> _Effect:
    """Step the noiseless model (with this fault alone) at the reporting interval and report
    where ``quantity`` is beyond ``limit``; a stateful model may stay there after the fault."""
    signal = device.new_signal()
    healthy = getattr(signal, "faults", None)
    step = device.interval_s
    start = fault.start
    if not math.isfinite(end):
        end = start + 7 * 86400.0
    stop = end + max(_TAIL_S, end - start)
    if run_end is not None:
        stop = min(stop, run_end)
    beyond: list[float] = []
    signal.truth(datetime.fromtimestamp(start - step, UTC))  # warm up healthy
    hooked = False
    t = start
    while t < stop:
        inside = t < end
        if fault.hook and inside != hooked:
            signal.faults = _merge(healthy, [fault]) if inside else healthy
            hooked = inside
        value = signal.truth(datetime.fromtimestamp(t, UTC))[quantity]
        if inside and not fault.hook:
            value = _generic_threshold(fault.params, value)
        if (value < limit) if direction == "low" else (value > limit):
            beyond.append(t)
        elif not inside:
            break  # back within the limit after the fault: the effect is over
        t += step
    if not beyond:
        return _Effect(None, None, False, {"limit": limit, "samples_beyond": 0})
    return _Effect(
        beyond[0],
        beyond[-1] + step,
        True,
        {"limit": limit, "samples_beyond": len(beyond)},
    )


def _generic_threshold(p: ThresholdParams, value: float) -> float:
    if p.value is not None:
        return p.value
    if p.offset is not None:
        return value + p.offset
    return value * (p.factor if p.factor is not None else 1.0)


def _sterilizer_effect(device: TruthDevice, fault: PlannedFault, end: float) -> _Effect:
    """The cycles that start inside the window (each is faulted whole), from a fresh model."""
    stop = end if math.isfinite(end) else fault.start + 7 * 86400.0
    signal = device.new_signal()
    window = (datetime.fromtimestamp(fault.start, UTC), datetime.fromtimestamp(stop, UTC))
    if fault.type == "bd_test_missing":
        tests = [c for c in signal.cycles(*window) if c.is_bowie_dick]
        missing = [c.start.timestamp() for c in tests]
        if not missing:
            return _Effect(None, None, False, {"missing_bd_tests": []})
        return _Effect(
            missing[0],
            missing[-1] + 3600.0,
            True,
            {"missing_bd_tests": [iso(ts) for ts in missing]},
        )
    signal.fault_schedule = _schedule(signal.faults, [fault])
    cycles = [c for c in signal.cycles(*window) if fault.start <= c.start.timestamp() < stop]
    if not cycles:
        return _Effect(None, None, False, {"cycles": []})
    return _Effect(
        cycles[0].start.timestamp(),
        cycles[-1].end.timestamp(),
        True,
        {"cycles": [c.cycle_id for c in cycles]},
    )


# ---- offline mode -------------------------------------------------------------------------------


class Record(NamedTuple):
    """One scheduled tick of one device. ``t``: when it happens (true time); ``values``: what is
    sent (``None``: nothing is sent; ``Malformed``: junk is); ``ts``: the timestamp the device
    writes into the reading (``t`` unless its clock is skewed)."""

    device: str
    t: datetime
    values: dict[str, Any] | Malformed | None
    ts: datetime


def device_phase(seed: int, interval_s: float) -> float:
    """A device's first tick after the run's start, in [0, interval): spreads devices out."""
    return _uniform(_mix64((seed * _GOLDEN + 0x0FF1) & _M64), 0) * interval_s


def generate(
    scenario: Scenario,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    duration: float | str | timedelta | None = None,
    devices: Iterable[str] | None = None,
) -> Iterator[Record]:
    """The scenario's readings over [start, end), faults included, in time order, no network.

    ``start`` defaults to the scenario's ``start``; the range to ``end``, else ``duration``, else
    the scenario's ``duration``. ``devices`` restricts the output to those ids (the others are not
    even sampled). Every device reports every ``interval_s`` from a seeded phase.
    """
    t0, t1 = scenario.time_range(start, end, duration)
    planned = scenario.plan(t0)
    wanted = None if devices is None else set(devices)
    emitters = [d for d in planned if wanted is None or d.id in wanted]
    # Tick k of device i is at bases[i] + k·interval (multiplied, not summed: no float creep).
    bases = [t0.timestamp() + device_phase(d.seed, d.interval_s) for d in emitters]
    steps = [0] * len(emitters)
    heap = [(base, i) for i, base in enumerate(bases)]
    heapq.heapify(heap)
    stop = t1.timestamp()
    while heap:
        ts, i = heap[0]
        if ts >= stop:
            break
        device = emitters[i]
        out = device.emit_ts(ts)
        t = datetime.fromtimestamp(ts, UTC)
        if out is None or isinstance(out, Malformed):
            stamp = t if out is None else datetime.fromtimestamp(out.ts, UTC)
            yield Record(device.id, t, out, stamp)
        else:
            stamp = t if out[0] == ts else datetime.fromtimestamp(out[0], UTC)
            yield Record(device.id, t, out[1], stamp)
        steps[i] += 1
        heapq.heapreplace(heap, (bases[i] + steps[i] * device.interval_s, i))


def stable_seed(*parts: object) -> int:
    """A seed from text parts, stable across runs and Python versions (crc32)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())
