"""The streaming threshold evaluator: one per (device, rule), a few fields each.

Feed it ``(ts_ms, value, flag)`` in time order; it answers with the condition's state change, if
any (:class:`Change`). Semantics (docs/alerting.md, "Threshold semantics"):

* **for** -- the limit must be breached by every evaluated sample for ``for`` before the
  condition fires; in between it is *pending*, and one sample back inside the limit cancels it.
  ``for`` 0 fires on the first breaching sample.
* **hysteresis** -- once firing, the condition clears only when samples are past the *clear
  value* (on the safe side of the limit) continuously for ``clear_for``. A sample between the
  limit and the clear value keeps it firing and restarts the clear run, so a value hovering at
  the limit does not flap.
* **flapping** -- if the condition fires more than ``1 + flap_max_refires`` times within
  ``flap_window`` (it resolved and re-fired more than ``flap_max_refires`` times), it is marked
  flapping at that firing and then needs ``max(clear_for, flap_stable_for)`` of clear samples to
  resolve. The fire times are remembered across resolutions (at most ``flap_max_refires + 2``).
* **data flags** -- HJ 212 flags outside the rule's evaluated set (default ``N``, ``T``) are
  skipped: neither breaching nor clear. ``T`` (over the measuring range) counts as an exceedance
  for a high-side rule and as clear for a low-side one (the value is at least full scale).
* **time order** -- a sample not newer than the last one seen is ignored and counted as late
  (a replayed or out-of-order reading never rewinds the state).
* **reading conditions** -- a sample whose reading fails the rule's conditions (``beam_on: true``)
  is *not applicable*: skipped, or counted as clear when the rule says ``inapplicable: clear``.

Gaps in the data do not break a ``for`` or ``clear_for`` run: silence is the no-data monitor's
business, and the next sample decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from alerting.model import Severity

DEFAULT_DATA_FLAGS = frozenset({"N", "T"})
OVER_RANGE = "T"


class Phase(StrEnum):
    OK = "ok"
    PENDING = "pending"  # breached, ``for`` not yet passed
    FIRING = "firing"
    CLEARING = "clearing"  # firing, and past the clear value since ``clear_since_ms``


class Change(StrEnum):
    """What one sample changed; ``None`` from :meth:`ThresholdEvaluator.feed` means nothing."""

    PENDING = "pending"  # the condition began to hold
    FIRING = "firing"  # it held for ``for`` (from OK directly when ``for`` is 0)
    CANCELLED = "cancelled"  # it stopped holding before ``for``: never fired
    RESOLVED = "resolved"  # it was clear for ``clear_for``
    ESCALATED = "escalated"  # a firing condition reached a more severe level


@dataclass(frozen=True, slots=True)
class ThresholdParams:
    """A rule's numbers, compiled once and shared by every evaluator of that rule."""

    high: bool  # True: breached above the limit (``>``/``>=``); False: below it
    inclusive: bool  # ``>=``/``<=``
    value: float
    clear_value: float
    for_ms: int = 0
    clear_for_ms: int = 0
    severity: Severity = Severity.CRITICAL
    levels: tuple[tuple[float, Severity], ...] = ()  # deeper limits, increasing severity
    flags: frozenset[str] = DEFAULT_DATA_FLAGS
    inapplicable_clears: bool = False
    flap_max_refires: int = 2
    flap_window_ms: int = 3_600_000  # 0: no flap detection
    flap_stable_ms: int = 1_800_000

    @classmethod
    def simple(
        cls,
        comparator: str,
        value: float,
        *,
        clear: float | None = None,
        for_s: float = 0.0,
        clear_for_s: float = 0.0,
        severity: Severity = Severity.CRITICAL,
        levels: Sequence[tuple[float, Severity]] = (),
        flags: frozenset[str] = DEFAULT_DATA_FLAGS,
        inapplicable_clears: bool = False,
        flap_max_refires: int = 2,
        flap_window_s: float = 3600.0,
        flap_stable_s: float = 1800.0,
    ) -> ThresholdParams:
        if comparator not in ("<", "<=", ">", ">="):
            raise ValueError(f"comparator {comparator!r} is not one of < <= > >=")
        return cls(
            high=comparator[0] == ">",
            inclusive=comparator.endswith("="),
            value=float(value),
            clear_value=float(value if clear is None else clear),
            for_ms=round(for_s * 1000),
            clear_for_ms=round(clear_for_s * 1000),
            severity=severity,
            levels=tuple(levels),
            flags=flags,
            inapplicable_clears=inapplicable_clears,
            flap_max_refires=flap_max_refires,
            flap_window_ms=round(flap_window_s * 1000),
            flap_stable_ms=round(flap_stable_s * 1000),
        )

    def breached(self, v: float) -> bool:
        if self.high:
            return v >= self.value if self.inclusive else v > self.value
        return v <= self.value if self.inclusive else v < self.value

    def past_clear(self, v: float) -> bool:
        """On the safe side of the clear value (the limit itself when there is no band)."""
        return v <= self.clear_value if self.high else v >= self.clear_value

    def level(self, v: float) -> Severity:
        severity = self.severity
        for limit, level_severity in self.levels:
            if (v >= limit) if self.high else (v <= limit):
                severity = level_severity
        return severity


class ThresholdEvaluator:
    """The condition of one rule on one device's series; see the module docstring."""

    __slots__ = (
        "clear_since_ms",
        "evaluated",
        "fires",
        "flapping",
        "last_ms",
        "late",
        "params",
        "phase",
        "severity",
        "since_ms",
        "skipped",
    )

    def __init__(self, params: ThresholdParams) -> None:
        self.params = params  # may be swapped for an overridden rule's; the state is kept
        self.phase = Phase.OK
        self.since_ms = 0  # when the current pending/firing condition began
        self.clear_since_ms = 0
        self.last_ms: int | None = None
        self.severity = params.severity
        self.flapping = False
        self.fires: tuple[int, ...] = ()  # recent firing times, for flap detection
        self.late = 0  # samples ignored for arriving out of order
        self.skipped = 0  # samples ignored for their data flag or reading conditions
        self.evaluated = 0

    @property
    def holds(self) -> bool:
        """The condition is open: pending, firing, or firing and clearing."""
        return self.phase is not Phase.OK

    @property
    def firing(self) -> bool:
        return self.phase is Phase.FIRING or self.phase is Phase.CLEARING

    def restore(
        self,
        phase: Phase,
        since_ms: int,
        severity: Severity | None = None,
        *,
        flapping: bool = False,
    ) -> None:
        """Resume an alert persisted before a restart, so resolving still needs ``clear_for``."""
        self.phase = Phase.FIRING if phase is Phase.CLEARING else phase
        self.since_ms = since_ms
        self.severity = severity if severity is not None else self.params.severity
        self.flapping = flapping

    def feed(
        self, ts_ms: int, value: float, flag: str | None = None, applicable: bool = True
    ) -> Change | None:
        last = self.last_ms
        if last is not None and ts_ms <= last:
            self.late += 1
            return None
        self.last_ms = ts_ms
        p = self.params
        if not applicable:
            if not p.inapplicable_clears:
                self.skipped += 1
                return None
            breached, cleared = False, True
        elif flag is not None and flag not in p.flags:
            self.skipped += 1
            return None
        elif flag == OVER_RANGE:
            breached = p.high
            cleared = not breached
        else:
            breached = p.breached(value)
            cleared = not breached and p.past_clear(value)
        self.evaluated += 1

        phase = self.phase
        if phase is Phase.OK:
            if not breached:
                return None
            self.since_ms = ts_ms
            self.severity = p.level(value)
            if p.for_ms <= 0:
                return self._fire(ts_ms)
            self.phase = Phase.PENDING
            return Change.PENDING
        if phase is Phase.PENDING:
            if not breached:
                self.phase = Phase.OK
                return Change.CANCELLED
            level = p.level(value)
            if level > self.severity:
                self.severity = level
            if ts_ms - self.since_ms >= p.for_ms:
                return self._fire(ts_ms)
            return None
        # FIRING or CLEARING
        if breached:
            self.phase = Phase.FIRING
            level = p.level(value)
            if level > self.severity:
                self.severity = level
                return Change.ESCALATED
            return None
        if not cleared:  # inside the hysteresis band: still firing, the clear run restarts
            self.phase = Phase.FIRING
            return None
        if phase is Phase.FIRING:
            self.phase = Phase.CLEARING
            self.clear_since_ms = ts_ms
        needed = max(p.clear_for_ms, p.flap_stable_ms) if self.flapping else p.clear_for_ms
        if ts_ms - self.clear_since_ms >= needed:
            self.phase = Phase.OK
            self.flapping = False
            return Change.RESOLVED
        return None

    def _fire(self, ts_ms: int) -> Change:
        p = self.params
        self.phase = Phase.FIRING
        keep = p.flap_max_refires + 2
        fires = (*self.fires, ts_ms)[-keep:]
        self.fires = fires
        self.flapping = (
            p.flap_window_ms > 0 and len(fires) == keep and ts_ms - fires[0] <= p.flap_window_ms
        )
        return Change.FIRING
