"""The path every collector shares: identify the device, validate, spool, then acknowledge.

A collector calls :meth:`Ingestor.submit` with what one message carried. Good readings are written
to the spool in one append; the returned future resolves when they are durable, and only then may
the collector acknowledge the device. Bad readings are refused one by one with a counted, logged
reason, so one bad value never costs the good ones in the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collectors.metrics import Metrics
from collectors.records import encode_event, encode_record
from collectors.spool import Spool, SpoolFull
from protocols.directory import DeviceDirectory, DeviceInfo
from protocols.lineprotocol import encode_line
from protocols.reading import IDENTIFIER, Reading, ReadingValidator, Reason, Rejection

log = logging.getLogger(__name__)

ReadingListener = Callable[[Reading], None]
MAX_DEVICES_REMEMBERED = 50_000  # devices whose recent rejections are kept for the onboarding check
REJECTION_MEASUREMENT = "ingest_rejection"
MAX_DETAIL = 500


@dataclass(slots=True)
class Outcome:
    accepted: int = 0
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)
    durable: asyncio.Future[None] | None = None  # None when nothing was accepted


class Ingestor:
    def __init__(
        self,
        directory: DeviceDirectory,
        validator: ReadingValidator,
        spool: Spool,
        metrics: Metrics,
        *,
        log_every_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self.validator = validator
        self.spool = spool
        self.metrics = metrics
        self.listeners: list[ReadingListener] = []  # called with every accepted reading
        # (listener, protocols it does not want): see add_listener
        self._filtered: list[tuple[ReadingListener, frozenset[str]]] = []
        self._log_every_s = log_every_s
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def identify(
        self, protocol: str, device_id: str, tenant: str | None = None, site: str | None = None
    ) -> DeviceInfo:
        """The directory's entry for a device, checked against the identity the transport claims."""
        info = self.directory.get(device_id)
        if info is None:
            raise Rejection(Reason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
        if (tenant is not None and tenant != info.tenant) or (
            site is not None and site != info.site
        ):
            raise Rejection(
                Reason.IDENTITY_MISMATCH,
                f"device {device_id!r} is registered under {info.tenant}/{info.site}, "
                f"not {tenant}/{site}",
            )
        return info

    def add_listener(self, listener: ReadingListener, *, skip: Iterable[str] = ()) -> None:
        """Call ``listener`` inline with each accepted reading, except those that came in over
        one of the protocols in ``skip`` (the alert engine behind an MQTT tap skips ``mqtt``:
        it hears those readings from the tap, and must not judge them twice)."""
        skipped = frozenset(skip)
        if skipped:
            self._filtered.append((listener, skipped))
        else:
            self.listeners.append(listener)

    def validate(
        self, device: DeviceInfo, raw_readings: Sequence[Any], now_ms: int | None = None
    ) -> tuple[list[Reading], list[bytes], list[tuple[int, Rejection]]]:
        """Validate and encode for the spool: the good readings, their records, and the refused
        ones by index. Counts, logs and stores nothing (:meth:`submit` does; the alerting tap
        judges the same messages again and must not)."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        readings: list[Reading] = []
        records: list[bytes] = []
        rejected: list[tuple[int, Rejection]] = []
        for index, raw in enumerate(raw_readings):
            try:
                reading = self.validator.validate(device, raw, now_ms)
                records.append(encode_record(reading))
            except Rejection as rejection:
                rejected.append((index, rejection))
                continue
            except ValueError as exc:  # the encoder refused something validation let through
                rejected.append((index, Rejection(Reason.MALFORMED, str(exc))))
                continue
            readings.append(reading)
        return readings, records, rejected

    def submit(self, protocol: str, device: DeviceInfo, raw_readings: Sequence[Any]) -> Outcome:
        """Validate and spool; raises :class:`SpoolFull` (nothing spooled) when there is no room."""
        outcome = Outcome()
        self.metrics.ingest.received[protocol] += len(raw_readings)
        readings, records, outcome.rejected = self.validate(device, raw_readings)
        for _index, rejection in outcome.rejected:
            self.count_rejection(protocol, device.device, rejection)
        if not records:
            return outcome
        try:
            outcome.durable = self.spool.append(records)
        except SpoolFull:
            self.metrics.ingest.received[protocol] -= len(raw_readings)  # offered again later
            raise
        outcome.accepted = len(records)
        self.metrics.ingest.accepted[protocol] += len(records)
        for listener in self.listeners:
            for reading in readings:
                listener(reading)
        for listener, skip in self._filtered:
            if protocol not in skip:
                for reading in readings:
                    listener(reading)
        return outcome

    def count_rejection(self, protocol: str, device: str, rejection: Rejection) -> None:
        """Count, remember for the device's onboarding check, and log (rate-limited per cause)."""
        reason = rejection.reason.value
        self.metrics.ingest.rejected[(protocol, reason)] += 1
        recent = self.metrics.ingest.recent
        if device not in recent and len(recent) >= MAX_DEVICES_REMEMBERED:
            recent.pop(next(iter(recent)))  # forget the oldest device: memory stays bounded
        recent[device].append((time.time(), reason, rejection.detail))
        key = (device, reason)
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < self._log_every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_logged[key] = now
        more = self._suppressed.pop(key, 0)
        self._store_rejection(protocol, device, rejection, more)
        log.warning(
            "rejected %s input from device=%s reason=%s: %s%s",
            protocol,
            device,
            reason,
            rejection.detail,
            f" (+{more} more like it since last logged)" if more else "",
        )
        if len(self._last_logged) > 100_000:  # bounded memory under a storm of distinct devices
            self._last_logged.clear()

    def _store_rejection(self, protocol: str, device: str, rejection: Rejection, more: int) -> None:
        """Spool the rejection as an event (agency database only), at the logging rate.

        ``weijian device check`` reads these back, so an engineer sees why a device's data is
        refused whichever process refused it. Never fails the caller: it is diagnostics.
        """
        if IDENTIFIER.fullmatch(device) is None:
            device = "_invalid"  # the raw id is in the detail; tags stay clean
        line = encode_line(
            REJECTION_MEASUREMENT,
            {"device": device, "protocol": protocol, "reason": rejection.reason.value},
            {"detail": rejection.detail[:MAX_DETAIL], "suppressed": more},
            int(time.time() * 1000),
        )
        # Spool full, closed or failing: the count and the log line still stand.
        with contextlib.suppress(SpoolFull, RuntimeError, OSError):
            self.spool.append([encode_event(line)])
