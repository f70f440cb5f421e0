"""No data: a device — or one quantity of it — that falls silent, and clears when data returns.

A device is silent when nothing arrived for ``multiple`` × its expected interval (and at least
``min_silence_s``). A quantity is silent when the device still reports but no longer sends a
quantity it used to send (learned: seen in ``learn_after`` readings); that catches a dead probe in
a multi-parameter instrument.

**No storms.** Silence is only counted while the platform could have heard the device:
* at start, every device's clock starts at the start (a restart does not make the whole fleet
  "silent since the last reading before the restart");
* :meth:`pause` (the broker connection is down, a collector is down) stops counting, and
  :meth:`resume` restarts every clock at the resume time;
so an outage of the platform, the broker or a collector raises nothing; the devices that stay
silent after it raise their alert one full silence window later.

The monitor is pure bookkeeping: :meth:`seen` on every accepted reading, :meth:`check` on a tick.
Each change it reports is a condition for the alert lifecycle (``holds`` true: open or keep;
false: clear).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

NODATA = "nodata"


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the registry says about a device (its profile's or its own reporting interval)."""

    interval_s: float
    tenant: str = ""
    site: str = ""
    region: str = ""
    kind: str = ""


@dataclass(frozen=True, slots=True)
class NoDataChange:
    device: str
    quantity: str | None  # None: the whole device
    holds: bool  # True: silent (open the alert); False: data is back (clear it)
    at: float  # epoch seconds
    silent_for_s: float
    expected_interval_s: float

    @property
    def rule(self) -> str:
        return NODATA if self.quantity is None else f"{NODATA}:{self.quantity}"


@dataclass(slots=True)
class _Device:
    last_seen: float
    silent: bool = False
    readings: int = 0
    quantities: dict[str, list[float]] = field(default_factory=dict)  # q -> [last_seen, count]
    silent_quantities: set[str] = field(default_factory=set)


class NoDataMonitor:
    def __init__(
        self,
        expected: Callable[[], Mapping[str, Expectation]],
        *,
        multiple: float = 3.0,
        min_silence_s: float = 60.0,
        learn_after: int = 5,
        now: float,
    ) -> None:
        if multiple < 1:
            raise ValueError("multiple must be at least 1 (one expected interval)")
        self._expected = expected
        self.multiple = multiple
        self.min_silence_s = min_silence_s
        self.learn_after = learn_after
        self._started = now
        self._devices: dict[str, _Device] = {}
        self._paused: set[str] = set()
        self.ignored_unknown = 0

    # -- input -----------------------------------------------------------------------------

    def seen(self, device: str, quantities: Iterable[str], at: float) -> None:
        """An accepted reading arrived (``at``: arrival time, not the device's clock)."""
        state = self._devices.get(device)
        if state is None:
            state = self._devices[device] = _Device(last_seen=at)
        state.last_seen = max(state.last_seen, at)
        state.readings += 1
        for q in quantities:
            entry = state.quantities.get(q)
            if entry is None:
                state.quantities[q] = [at, 1]
            else:
                entry[0] = max(entry[0], at)
                entry[1] += 1

    def pause(self, reason: str) -> None:
        """The platform cannot hear devices (e.g. "mqtt"): stop counting silence."""
        self._paused.add(reason)

    def resume(self, reason: str, at: float) -> None:
        self._paused.discard(reason)
        if not self._paused:
            self._restart_clocks(at)

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    def _restart_clocks(self, at: float) -> None:
        for state in self._devices.values():
            # A device already reported silent stays so until it is heard again: the outage
            # says nothing about it, and clearing it here would be a false "data is back".
            if not state.silent:
                state.last_seen = max(state.last_seen, at)
            for q, entry in state.quantities.items():
                if q not in state.silent_quantities:
                    entry[0] = max(entry[0], at)
        self._started = max(self._started, at)

    # -- evaluation ------------------------------------------------------------------------

    def window(self, expected: Expectation) -> float:
        return max(self.multiple * expected.interval_s, self.min_silence_s)

    def check(self, now: float) -> list[NoDataChange]:
        """Changes since the last check: devices/quantities that fell silent or came back."""
        if self._paused:
            return []
        changes: list[NoDataChange] = []
        expected = self._expected()
        for device, exp in expected.items():
            state = self._devices.get(device)
            if state is None:  # never heard since start: its clock starts at the start
                state = self._devices[device] = _Device(last_seen=self._started)
            window = self.window(exp)
            silent_for = now - state.last_seen
            if not state.silent and silent_for > window:
                state.silent = True
                changes.append(NoDataChange(device, None, True, now, silent_for, exp.interval_s))
            elif state.silent and silent_for <= window:
                state.silent = False
                changes.append(NoDataChange(device, None, False, now, silent_for, exp.interval_s))
            if state.silent:
                continue  # the device alert covers its quantities
            for q, (last, count) in state.quantities.items():
                if count < self.learn_after:
                    continue
                q_silent_for = now - last
                if q not in state.silent_quantities and q_silent_for > window:
                    state.silent_quantities.add(q)
                    changes.append(NoDataChange(device, q, True, now, q_silent_for, exp.interval_s))
                elif q in state.silent_quantities and q_silent_for <= window:
                    state.silent_quantities.discard(q)
                    changes.append(
                        NoDataChange(device, q, False, now, q_silent_for, exp.interval_s)
                    )
        for device in [d for d in self._devices if d not in expected]:
            del self._devices[
                device
            ]  # deleted or disabled: forget it (its alerts resolve elsewhere)
        return changes

    def silent_devices(self) -> list[str]:
        return sorted(d for d, s in self._devices.items() if s.silent)
