"""Time for the notifier, injectable: production uses the event loop's clock, tests a manual one.

Grouping windows, repeat intervals, escalation deadlines and retry back-off are minutes to hours
in production; a test that slept through them would take as long. Everything time-dependent in
:mod:`alerting.notify` goes through a :class:`Clock`, so a test can jump an hour in one call
(:meth:`ManualClock.advance`) while network I/O (HTTP, SMTP, MQTT) still runs in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (timers are measured on it)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, UTC-aware (for timestamps in messages)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the event loop after ``delay`` seconds of this clock."""
        ...

    async def sleep(self, delay: float) -> None: ...


class SystemClock:
    """The running event loop's monotonic clock and the system's UTC wall clock."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: ``advance(3600)`` fires an hour of timers at once.

    Timers fire in deadline order, each with the clock set to its own deadline, so a callback
    that schedules a follow-up inside the advanced span sees it fire in the same call.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall0 = start or datetime(2025, 1, 1, tzinfo=UTC)
        self._t = 0.0
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, _ManualTimer]] = []

    def monotonic(self) -> float:
        return self._t

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._t)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(self._t + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Timers not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due, in order."""
        target = self._t + max(0.0, seconds)
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._t = max(self._t, deadline)
            timer.cancelled = True
            timer.callback()
        self._t = target
