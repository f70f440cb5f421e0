"""Batch writer: every line ends up written to InfluxDB or dead-lettered, never silently lost.

:meth:`BatchWriter.write` returns only when each line of the batch is either stored or handed
to the dead-letter sink; until then the caller (the spool) keeps the batch, so cancelling a
write loses nothing. What happens on each failure, and why:

* **Server or network unwell** (:class:`RetryableError`: refused/reset connection, timeout,
  5xx, 429): retry the same batch forever with backoff, honouring ``Retry-After``. InfluxDB may
  be down for hours; the data waits in the spool. WARNING on the first failure, then at most
  every ``LOG_EVERY_S`` with the attempt count, INFO on recovery.
* **413**: split the batch in halves, recursively; a single line still too large is
  dead-lettered ("too large").
* **Bad data** (:class:`BadDataError`): bisect down to the refused lines and dead-letter each
  with InfluxDB's message; write all the others. Re-sending lines InfluxDB already stored is
  harmless (1.x keeps the good lines of a refused batch, and identical points deduplicate).
  Bad data is never retried as is.
* **Credentials, permissions, missing database** (:class:`AuthError`,
  :class:`DatabaseNotFoundError`) and any other unexpected answer: not the data's fault, so it
  is retried with backoff (ERROR logged, rate-limited) until an operator fixes the
  configuration. Good data is never dead-lettered for a configuration problem.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

import orjson

from protocols.backoff import retry_delay
from protocols.influx.client import (
    AuthError,
    BadDataError,
    DatabaseNotFoundError,
    InfluxClient,
    InfluxError,
    RetryableError,
    TooLargeError,
)

log = logging.getLogger(__name__)

__all__ = ["LOG_EVERY_S", "BatchWriter", "DeadLetterSink", "FileDeadLetter", "WriterStats"]

LOG_EVERY_S = 30.0
"""While a batch keeps failing, repeat the log message at most this often."""

REASON_TOO_LARGE = "too large"


@dataclass
class WriterStats:
    batches_ok: int = 0  # successful POSTs
    lines_written: int = 0
    retries: int = 0  # POSTs repeated after a retryable or configuration failure
    split_413: int = 0  # batches split in halves because of a 413
    bad_lines: int = 0  # single lines InfluxDB refused as bad data
    dead_lettered: int = 0  # lines handed to the dead-letter sink (bad or too large)
    auth_failures: int = 0  # 401/403/database-not-found answers
    last_error: str | None = None


class DeadLetterSink(Protocol):
    def put(self, db: str, line: bytes, reason: str) -> None: ...


class FileDeadLetter:
    """Dead letters as JSON Lines ``{"time", "db", "line", "reason"}``, appended and flushed.

    Flushed (not fsynced) per call: a dead letter is rare, and the line is kept for a person to
    inspect and replay, not as the system of record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def put(self, db: str, line: bytes, reason: str) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across calls
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "db": db,
            "line": line.decode("utf-8", "backslashreplace"),
            "reason": reason,
        }
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Failing:
    """Bookkeeping for one batch that keeps failing: attempts, and when we last logged."""

    __slots__ = ("attempt", "last_log", "since")

    def __init__(self) -> None:
        self.attempt = 0
        self.since = time.monotonic()
        self.last_log = -float("inf")

    def should_log(self) -> bool:
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            return True
        return False


class BatchWriter:
    """Writes batches of encoded lines to one InfluxDB with the failure semantics above."""

    def __init__(
        self,
        client: InfluxClient,
        *,
        dead_letter: DeadLetterSink,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rng: random.Random | None = None,
        on_write: Callable[[int, float], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        precision: str = "ms",
    ) -> None:
        self.client = client
        self.dead_letter = dead_letter
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.on_write = on_write
        self.sleep = sleep
        self.precision = precision
        self.stats = WriterStats()

    async def write(self, db: str, lines: Sequence[bytes], *, rp: str | None = None) -> int:
        """Write ``lines`` (no trailing newlines); return how many were stored.

        The rest were dead-lettered. Returns only when every line is accounted for; may be
        cancelled at any await (nothing is dead-lettered because of a cancellation).
        """
        if not lines:
            return 0
        return await self._write(db, list(lines), rp)

    async def _write(self, db: str, lines: list[bytes], rp: str | None) -> int:
        failing: _Failing | None = None
        body = b"\n".join(lines)
        while True:
            started = time.perf_counter()
            try:
                await self.client.write(db, body, rp=rp, precision=self.precision)
            except TooLargeError as exc:
                return await self._too_large(db, lines, rp, exc)
            except BadDataError as exc:
                return await self._bad_data(db, lines, rp, exc)
            except RetryableError as exc:
                failing = failing or _Failing()
                if failing.should_log():
                    log.warning(
                        "InfluxDB write to %s (%d lines) failed, attempt %d, retrying "
                        "(status %s): %s",
                        db,
                        len(lines),
                        failing.attempt + 1,
                        exc.status,
                        exc,
                    )
                await self._back_off(failing, exc, exc.retry_after)
                continue
            except InfluxError as exc:  # auth, missing database, anything unexpected
                failing = failing or _Failing()
                if isinstance(exc, AuthError | DatabaseNotFoundError):
                    self.stats.auth_failures += 1
                if failing.should_log():
                    log.error(
                        "InfluxDB refuses writes to %s (%d lines, attempt %d, status %s): %s -- "
                        "a configuration problem; the data waits, retrying",
                        db,
                        len(lines),
                        failing.attempt + 1,
                        exc.status,
                        exc,
                    )
                await self._back_off(failing, exc, None)
                continue
            elapsed = time.perf_counter() - started
            break
        if failing is not None:
            log.info(
                "InfluxDB write to %s succeeded after %d attempts (%.1f s)",
                db,
                failing.attempt + 1,
                time.monotonic() - failing.since,
            )
        self.stats.batches_ok += 1
        self.stats.lines_written += len(lines)
        if self.on_write is not None:
            self.on_write(len(lines), elapsed)
        return len(lines)

    async def _back_off(
        self, failing: _Failing, exc: InfluxError, retry_after: float | None
    ) -> None:
        self.stats.last_error = str(exc)
        delay = retry_delay(
            failing.attempt,
            base=self.backoff_base,
            cap=self.backoff_cap,
            retry_after=retry_after,
            rng=self.rng,
        )
        failing.attempt += 1
        self.stats.retries += 1
        await self.sleep(delay)

    async def _too_large(
        self, db: str, lines: list[bytes], rp: str | None, exc: TooLargeError
    ) -> int:
        self.stats.last_error = str(exc)
        if len(lines) == 1:
            log.error(
                "InfluxDB refuses a single line as too large for %s (%d bytes, status %s); "
                "dead-lettered",
                db,
                len(lines[0]),
                exc.status,
            )
            self._dead_letter(db, lines[0], REASON_TOO_LARGE)
            return 0
        self.stats.split_413 += 1
        log.info(
            "InfluxDB: batch of %d lines too large for %s (status %s); splitting",
            len(lines),
            db,
            exc.status,
        )
        return await self._halves(db, lines, rp)

    async def _bad_data(
        self, db: str, lines: list[bytes], rp: str | None, exc: BadDataError
    ) -> int:
        self.stats.last_error = str(exc)
        if len(lines) == 1:
            reason = exc.body or str(exc)
            log.warning(
                "InfluxDB refused a line for %s (status %s): %s; dead-lettered",
                db,
                exc.status,
                reason,
            )
            self.stats.bad_lines += 1
            self._dead_letter(db, lines[0], reason)
            return 0
        log.info(
            "InfluxDB refused data in a batch of %d lines for %s (status %s): %s; bisecting",
            len(lines),
            db,
            exc.status,
            exc.body,
        )
        return await self._halves(db, lines, rp)

    async def _halves(self, db: str, lines: list[bytes], rp: str | None) -> int:
        middle = len(lines) // 2
        written = await self._write(db, lines[:middle], rp)
        return written + await self._write(db, lines[middle:], rp)

    def _dead_letter(self, db: str, line: bytes, reason: str) -> None:
        self.dead_letter.put(db, line, reason)
        self.stats.dead_lettered += 1
