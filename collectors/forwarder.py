"""Moves spooled readings into InfluxDB: batch by size and time, write, then commit the spool.

The spool cursor advances only after InfluxDB took the batch (or dead-lettered bad lines), so a
crash or an outage replays the uncommitted tail. Replays are harmless: a point is identified by
measurement, tags and time, and InfluxDB keeps one copy of identical points.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

from collectors.metrics import Metrics
from collectors.records import EVENT_ROUTE, decode_record
from collectors.spool import Spool, SpoolBatch
from protocols.backoff import backoff_delay
from protocols.influx.writer import BatchWriter

log = logging.getLogger(__name__)
GATHER_POLL_S = 0.05  # how often a filling batch looks for more records


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        writer: BatchWriter,
        metrics: Metrics,
        *,
        database: str,
        tenant_prefix: str | None,
        batch_lines: int = 5000,
        flush_interval_s: float = 0.5,
        prepare_database: Callable[[str], Awaitable[None]] | None = None,
        max_in_flight: int = 2,
    ) -> None:
        self.spool = spool
        self.writer = writer
        self.metrics = metrics
        self.database = database
        self.tenant_prefix = tenant_prefix  # None: no tenant copies
        self.batch_lines = batch_lines
        self.flush_interval_s = flush_interval_s
        self.prepare_database = prepare_database
        self.max_in_flight = max(1, max_in_flight)
        self._prepared: set[str] = set()
        self.prepare_retries = 0

    async def run(self) -> None:
        """Forward until cancelled; a cancelled batch stays in the spool and is replayed.

        Up to ``max_in_flight`` batches are written at once (InfluxDB ingests faster with two
        writers), but the spool is committed strictly in order: a batch is committed only after
        it and every batch before it are in InfluxDB, so a crash can never skip one.
        """
        in_flight: deque[tuple[SpoolBatch, asyncio.Task[None]]] = deque()
        try:
            while True:
                batch = await self._gather()
                if batch.records:
                    in_flight.append((batch, asyncio.create_task(self._write(batch))))
                while in_flight and (
                    in_flight[0][1].done()
                    or len(in_flight) >= self.max_in_flight
                    or not batch.records
                ):
                    done, task = in_flight.popleft()
                    await task  # the writer retries until written; only a bug raises here
                    await self.spool.commit(done)
        finally:
            for _, task in in_flight:
                task.cancel()

    async def _gather(self) -> SpoolBatch:
        """Up to batch_lines records, waiting at most flush_interval_s after the first arrives."""
        first = await self.spool.read_batch(self.batch_lines, timeout=self.flush_interval_s)
        if not first.records or len(first.records) >= self.batch_lines:
            return first
        records = list(first.records)
        end = first.end
        deadline = time.monotonic() + self.flush_interval_s
        # Let records accumulate rather than reading them one by one as they trickle in.
        while len(records) < self.batch_lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.spool.stats.depth_records < len(records) + self.batch_lines:
                await asyncio.sleep(min(remaining, GATHER_POLL_S))
            more = await self.spool.read_batch(self.batch_lines - len(records), timeout=0)
            if more.records:
                records.extend(more.records)
                end = more.end
        return SpoolBatch(records, end)

    async def _write(self, batch: SpoolBatch) -> None:
        lines: list[bytes] = []
        events: list[bytes] = []
        by_tenant: defaultdict[str, list[bytes]] = defaultdict(list)
        for record in batch.records:
            tenant, line = decode_record(record)
            if tenant.startswith(EVENT_ROUTE):
                events.append(line)
                tenant = tenant[len(EVENT_ROUTE) :]
                if self.tenant_prefix is not None and tenant:
                    by_tenant[tenant].append(line)
                continue
            lines.append(line)
            if self.tenant_prefix is not None and tenant:
                by_tenant[tenant].append(line)
        # The agency database and the tenant copies are independent writes: send them together.
        await asyncio.gather(
            self._write_db(self.database, lines, copy=False),
            *([self._write_events(events)] if events else []),
            *(
                self._write_db(self.tenant_prefix + tenant, tenant_lines, copy=True)  # type: ignore[operator]
                for tenant, tenant_lines in by_tenant.items()
            ),
        )

    async def _write_db(self, database: str, lines: list[bytes], *, copy: bool) -> None:
        await self._prepare(database)
        written = await self.writer.write(database, lines)
        if copy:
            self.metrics.ingest.stored_copies += written
        else:
            self.metrics.ingest.stored += written

    async def _write_events(self, lines: list[bytes]) -> None:
        await self._prepare(self.database)
        self.metrics.ingest.stored_events += await self.writer.write(self.database, lines)

    async def _prepare(self, database: str) -> None:
        if self.prepare_database is None or database in self._prepared:
            return
        attempt = 0
        while True:
            try:
                await self.prepare_database(database)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # InfluxDB down: wait, with the data safe in the spool
                attempt += 1
                self.prepare_retries += 1
                delay = backoff_delay(attempt, base=0.5, cap=30.0)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "cannot prepare database %s yet (%s); retry %d in %.1fs",
                        database,
                        exc,
                        attempt,
                        delay,
                    )
                await asyncio.sleep(delay)
                continue
            self._prepared.add(database)
            return

    async def drained(self, within_s: float) -> bool:
        """Wait until everything spooled so far is in InfluxDB (used at shutdown and in tests)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.spool.stats.depth_records == 0:
                return True
            await asyncio.sleep(0.05)
        return self.spool.stats.depth_records == 0
