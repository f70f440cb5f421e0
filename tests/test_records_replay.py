"""A restart of the alert engine loses no record: the stored records are replayed into the records
monitor at start, silently, and the first tick settles what happened while the platform was down.

A real registry (SQLite) and a real :class:`AlertEngine` with its :class:`AlertStore`, run twice
on the same database with a clock the test sets (a fixed morning in China Standard Time). Records
are inserted as the gateway stores them (``record_events``); a running engine reads them from
there (its records feed: ``feed_records``, which the tests call rather than wait for the poll).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alerting.domain.records import RecordEvent, RecordsMonitor
from alerting.engine import AlertEngine, ContextTable, SiteContext
from alerting.lifecycle import AlertBook, AlertInfo
from alerting.model import AlertKey, AlertState, Severity
from alerting.store import AlertStore
from gateway.registry.database import Registry, sqlite_url
from gateway.registry.models import AlertRow, AlertTransitionRow, RecordEventRow, Site, Tenant
from weijian.config import AlertingSettings

H = 3600.0
D = 86400.0
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST).timestamp()
SITE = "ward-3"
STORAGE = "record:mw.storage"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(sqlite_url(tmp_path / "registry.db"))
    with reg.session() as session, session.begin():
        session.add(Tenant(id="hospital", name="City Hospital"))
        session.flush()
        for site in (SITE, "ward-4"):
            session.add(
                Site(
                    id=site,
                    tenant_id="hospital",
                    name=f"Hospital {site}",
                    region_code="330206",
                    venue_type="hospital",
                )
            )
    yield reg
    reg.close()


class Platform:
    """The engine as the platform runs it, restartable, on one registry and one clock."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = AlertStore(registry)
        self.now = T0
        self.engine: AlertEngine | None = None
        self.contexts = ContextTable(
            sites=[SiteContext(s, "hospital", "330206", f"Hospital {s}") for s in (SITE, "ward-4")]
        )

    async def start(self, at: float) -> AlertEngine:
        self.now = at
        self.engine = AlertEngine(
            self.contexts,
            AlertingSettings(warmup=False, startup_grace_s=0, tick_interval_s=0.02),
            store=self.store,
            clock=lambda: self.now,
        )
        await self.engine.start()
        return self.engine

    async def stop(self) -> None:
        assert self.engine is not None
        await self.engine.aclose()
        self.engine = None

    async def post(self, record_type: str, at: float, ref: str | None = None, site: str = SITE):
        """Store the record as the gateway does; a running engine reads it (at once, here)."""
        store_record(self.registry, record_type, at, ref, site)
        if self.engine is not None:
            await self.engine.feed_records()

    async def at(self, now: float) -> None:
        """Move the clock and let a few ticks run, then wait until everything is persisted."""
        self.now = now
        await asyncio.sleep(0.1)
        assert self.engine is not None
        await asyncio.wait_for(self.engine._drained(), 5.0)

    def alerts(self, rule: str | None = None) -> list[AlertRow]:
        with self.registry.session() as session:
            stmt = select(AlertRow).order_by(AlertRow.started_at)
            if rule is not None:
                stmt = stmt.where(AlertRow.rule_id == rule)
            return list(session.execute(stmt).scalars())

    def history(self, alert_id: str) -> list[tuple[str | None, str, int]]:
        with self.registry.session() as session:
            return [
                (t.from_state, t.to_state, t.severity)
                for t in session.execute(
                    select(AlertTransitionRow)
                    .where(AlertTransitionRow.alert_id == alert_id)
                    .order_by(AlertTransitionRow.id)
                ).scalars()
            ]


def store_record(
    registry: Registry, record_type: str, at: float, ref: str | None = None, site: str = SITE
) -> int:
    """Insert a ``record_events`` row as the gateway does; its id."""
    with registry.session() as session, session.begin():
        row = RecordEventRow(
            site_id=site,
            record_type=record_type,
            at=datetime.fromtimestamp(at, UTC),
            ref=ref or "",
            source="user",
            posted_by="nurse",
            received_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
async def platform(registry: Registry) -> AsyncIterator[Platform]:
    p = Platform(registry)
    yield p
    if p.engine is not None:
        await p.stop()


def states(rows: list[AlertRow]) -> list[tuple[str, str, str, int]]:
    return [(r.device_id, r.rule_id, r.state, r.severity) for r in rows]


async def test_a_bag_pending_at_a_restart_is_raised_at_its_deadline_and_escalated(
    platform: Platform,
) -> None:
    await platform.start(T0)
    await platform.post("medical_waste_collected", T0, ref="MW-1")
    await platform.at(T0 + 2 * H)
    await platform.stop()
    assert platform.alerts() == []

    await platform.start(T0 + 10 * H)  # the monitor knows the bag again, and says nothing yet
    await platform.at(T0 + 23 * H)
    assert platform.alerts() == []
    await platform.at(T0 + 24 * H + 60)
    (alert,) = platform.alerts()
    assert (alert.device_id, alert.rule_id, alert.state, alert.severity) == (
        SITE,
        STORAGE,
        "firing",
        int(Severity.WARNING),
    )
    assert (alert.tenant_id, alert.region_code) == ("hospital", "330206")
    await platform.stop()

    await platform.start(T0 + 30 * H)  # restarted with the warning open: not raised twice
    await platform.at(T0 + 31 * H)
    assert len(platform.alerts()) == 1
    await platform.at(T0 + 48 * H + 60)  # escalated on the same alert
    assert states(platform.alerts()) == [(SITE, STORAGE, "firing", int(Severity.CRITICAL))]
    await platform.post("medical_waste_transferred", T0 + 49 * H, ref="MW-1")
    await platform.at(T0 + 49 * H)
    assert states(platform.alerts(STORAGE)) == [(SITE, STORAGE, "resolved", 3)]
    assert platform.history(alert.id) == [
        (None, "pending", 2),
        ("pending", "firing", 2),
        ("firing", "firing", 3),
        ("firing", "resolved", 3),
    ]


async def test_overdue_while_down_is_raised_at_the_first_tick(platform: Platform) -> None:
    await platform.start(T0)
    await platform.post("medical_waste_collected", T0, ref="MW-2")
    await platform.post("disinfection", T0)  # the site is watched for its daily record from now
    await platform.at(T0 + H)
    await platform.stop()

    await platform.start(T0 + 50 * H)  # down for two days
    await platform.at(T0 + 50 * H)
    assert sorted((r.rule_id, r.state, r.severity) for r in platform.alerts()) == [
        ("record:disinfection.daily", "firing", int(Severity.WARNING)),
        (STORAGE, "firing", int(Severity.CRITICAL)),
    ]
    assert {r.device_id for r in platform.alerts()} == {SITE}  # ward-4 never posted: not watched


async def test_an_open_alert_whose_record_arrived_while_down_is_resolved(
    platform: Platform,
) -> None:
    await platform.start(T0)
    await platform.post("medical_waste_collected", T0, ref="MW-3")
    await platform.at(T0 + 25 * H)
    (alert,) = platform.alerts()
    assert alert.state == "firing"
    await platform.stop()

    # the ward hands the bag over while the engine is down: the gateway stores it, nothing more
    await platform.post("medical_waste_transferred", T0 + 26 * H, ref="MW-3")
    await platform.start(T0 + 27 * H)
    await platform.at(T0 + 27 * H)
    (alert,) = platform.alerts()
    assert (alert.state, alert.resolved_by) == ("resolved", None)
    # the hand-over started the container-disinfection clock, as it would have live
    await platform.at(T0 + 50 * H + 60)
    assert [(r.rule_id, r.state) for r in platform.alerts("record:mw.container_disinfection")] == [
        ("record:mw.container_disinfection", "firing")
    ]


async def test_history_raised_and_resolved_before_a_restart_stays_quiet(
    platform: Platform,
) -> None:
    await platform.start(T0)
    await platform.post("medical_waste_produced", T0 - 2 * H, ref="MW-4")
    await platform.post("medical_waste_collected", T0, ref="MW-4")
    await platform.at(T0 + 25 * H)  # late ...
    await platform.post("medical_waste_transferred", T0 + 26 * H, ref="MW-4")  # ... then done
    await platform.post("container_disinfected", T0 + 27 * H, ref="MW-4")  # a coded trigger
    await platform.at(T0 + 27 * H)
    before = states(platform.alerts())
    assert before == [(SITE, STORAGE, "resolved", int(Severity.WARNING))]
    await platform.stop()

    for restart in (T0 + 30 * H, T0 + 6 * D):
        await platform.start(restart)
        await platform.at(restart + 60)
        await platform.at(restart + 3 * D)
        assert states(platform.alerts()) == before
        await platform.stop()


async def test_an_alert_older_than_the_replay_window_is_judged_on_its_own_record(
    platform: Platform,
) -> None:
    await platform.start(T0)
    await platform.post("medical_waste_collected", T0, ref="MW-5")
    await platform.at(T0 + 49 * H)
    assert states(platform.alerts()) == [(SITE, STORAGE, "firing", int(Severity.CRITICAL))]
    await platform.stop()

    later = T0 + 12 * D  # the bag's record is older than the 7-day window now
    await platform.start(later)
    await platform.at(later + 60)
    assert states(platform.alerts()) == [(SITE, STORAGE, "firing", int(Severity.CRITICAL))]
    await platform.post("medical_waste_transferred", later + H, ref="MW-5")
    await platform.at(later + H)
    assert states(platform.alerts()) == [(SITE, STORAGE, "resolved", int(Severity.CRITICAL))]


# ---- the monitor alone ---------------------------------------------------------------------------


def test_restore_reports_nothing_and_takes_the_levels_from_the_open_alerts() -> None:
    live = RecordsMonitor()
    events = [
        RecordEvent(SITE, "medical_waste_collected", T0, "MW-6"),
        RecordEvent("ward-4", "medical_waste_collected", T0 + H, "MW-7"),
    ]
    for ev in events:
        assert live.event(ev, now=ev.at) == []
    found = live.tick(T0 + 30 * H)
    assert [(f.subject, f.severity) for f in found] == [
        (SITE, Severity.WARNING),
        ("ward-4", Severity.WARNING),
    ]
    book = AlertBook()
    for f in found[:1]:  # only ward-3's alert was persisted before the crash
        book.condition(
            f.key,
            holds=True,
            at=f.at,
            since=f.at,
            severity=f.severity,
            info=AlertInfo(  # as the engine makes it: the finding's detail as labels
                "hospital",
                f.subject,
                "330206",
                "site",
                message=f.message,
                labels={"expected_alert": f.rule, **f.detail},
            ),
        )
    book.condition(  # an unrelated alert is ignored
        AlertKey("probe-1", "dw.ph.low"),
        holds=True,
        at=found[0].at,
        info=AlertInfo("water", "plant", "330102", "water_probe", message="x"),
    )
    restored = RecordsMonitor()
    since, sites = restored.replay_since(book.open_alerts(), T0 + 31 * H)
    assert since == T0 + 31 * H - 7 * D  # twice the longest level (48 h) is less than 7 days
    assert sites == {}  # ward-3's clock started within the window
    assert restored.replay_window_s == 7 * D
    restored.restore(events, book.open_alerts())
    again = restored.tick(T0 + 31 * H)
    assert [(f.subject, f.rule, f.active) for f in again] == [("ward-4", STORAGE, True)]
    assert restored.tick(T0 + 32 * H) == []
    assert [(f.subject, f.severity) for f in restored.tick(T0 + 48 * H)] == [
        (SITE, Severity.CRITICAL)
    ]


def test_a_trigger_posted_after_its_expected_record_is_not_left_pending() -> None:
    monitor = RecordsMonitor()
    # the disposer's scanner posted the hand-over first; the ward's collection record came later
    monitor.event(RecordEvent(SITE, "medical_waste_transferred", T0 + 5 * H, "MW-8"), T0 + 5 * H)
    monitor.event(RecordEvent(SITE, "medical_waste_collected", T0, "MW-8"), T0 + 6 * H)
    # an uncoded collection before an (uncoded or coded) hand-over is emptied with the store
    monitor.event(RecordEvent(SITE, "medical_waste_collected", T0 + H), T0 + 6 * H)
    # a code used again on a later day is a new bag
    monitor.event(RecordEvent(SITE, "medical_waste_collected", T0 + D, "MW-8"), T0 + D)
    found = [f for f in monitor.tick(T0 + 2 * D + 60) if f.rule == STORAGE]
    assert [f.detail["waiting"] for f in found] == [1]
    assert found[0].detail["since"] == datetime.fromtimestamp(T0 + D, UTC).isoformat()


def test_an_alert_of_a_rule_since_removed_is_left_alone() -> None:
    book = AlertBook()
    book.condition(
        AlertKey(SITE, "record:mw.retired"),
        holds=True,
        at=datetime.fromtimestamp(T0, UTC),
        info=AlertInfo("hospital", SITE, "330206", "site", message="x"),
    )
    monitor = RecordsMonitor()
    assert monitor.replay_since(book.open_alerts(), T0) == (T0 - 7 * D, {})
    monitor.restore([], book.open_alerts())
    assert monitor.tick(T0 + D) == []
    assert [a.state for a in book.open_alerts()] == [AlertState.FIRING]


# ---- the records feed: the registry, read by id -------------------------------------------------


async def test_the_engine_reads_records_stored_by_others_from_the_registry(
    platform: Platform,
) -> None:
    """No one hands the engine anything: a record stored by a gateway elsewhere (another process,
    another host, ``alerting.tap: false``) is read by the engine's poll and judged."""
    engine = await platform.start(T0)
    store_record(platform.registry, "medical_waste_collected", T0, "MW-10")
    await until(lambda: engine.stats.records_fed == 1)  # the poll (tick_interval_s 0.02)
    await platform.at(T0 + 24 * H + 60)
    (alert,) = platform.alerts()
    assert (alert.rule_id, alert.state, alert.labels["waiting"]) == (STORAGE, "firing", 1)
    store_record(platform.registry, "medical_waste_transferred", T0 + 25 * H, "MW-10")
    await until(lambda: platform.alerts(STORAGE)[0].state == "resolved")
    assert engine.stats.records_fed == 2


async def test_each_record_is_evaluated_once_however_often_it_is_read(platform: Platform) -> None:
    engine = await platform.start(T0)
    store_record(platform.registry, "medical_waste_collected", T0, "MW-11")
    for _ in range(3):
        engine.poll_records()  # nudges, the poll and direct reads, all at once
    fed = await asyncio.gather(*(engine.feed_records() for _ in range(4)))
    await platform.at(T0 + H)
    assert sum(fed) <= 1  # the background poll may have been first
    assert engine.stats.records_fed == 1
    await platform.at(T0 + 24 * H + 60)
    (alert,) = platform.alerts()
    assert alert.labels["waiting"] == 1  # the bag was counted once
    await platform.stop()

    await platform.start(T0 + 25 * H)  # replayed at the start, not read again by the feed
    await platform.at(T0 + 25 * H)
    assert platform.engine is not None
    assert platform.engine.stats.records_fed == 0
    assert platform.engine.core is not None
    assert platform.engine.core.records._since(  # one bag waiting, as before the restart
        platform.engine.core.records._by_id["mw.storage"], SITE
    ) == (T0, 1)


class RacingStore(AlertStore):
    """A gateway commits a record right after the start-up replay has read the table."""

    def __init__(self, registry: Registry, record: tuple[str, float, str]) -> None:
        super().__init__(registry)
        self.record: tuple[str, float, str] | None = record

    def replay_records(self, since: float, sites: Any = None) -> Any:
        replay = super().replay_records(since, sites)
        if self.record is not None:
            store_record(self.registry, *self.record)
            self.record = None
        return replay


async def test_a_record_committed_during_the_start_up_replay_is_not_lost(
    platform: Platform,
) -> None:
    store_record(platform.registry, "medical_waste_collected", T0, "MW-12")  # before: replayed
    platform.store = RacingStore(
        platform.registry, ("medical_waste_collected", T0 + H, "MW-13")
    )  # during: read by the feed
    engine = await platform.start(T0 + 2 * H)
    await until(lambda: engine.stats.records_fed == 1)
    await platform.at(T0 + 25 * H + 60)
    (alert,) = platform.alerts()
    assert (alert.state, alert.labels["waiting"]) == ("firing", 2)  # both bags, once each


async def test_ids_committed_out_of_order_are_still_read(platform: Platform) -> None:
    """On PostgreSQL an id is taken before commit: a lower id may become visible after a higher
    one was read. The feed keeps looking for the ids it skipped (here: rows given explicit ids)."""
    first = store_record(platform.registry, "disinfection", T0 - H, site="ward-4")
    store_row(platform.registry, first + 2, "medical_waste_collected", T0 - H, "MW-14")
    engine = await platform.start(T0)  # first + 1 is still "open" at the start ...
    store_row(platform.registry, first + 4, "medical_waste_collected", T0, "MW-15")
    await until(lambda: engine.stats.records_fed == 1)  # ... and first + 3 when this is read
    store_row(platform.registry, first + 3, "medical_waste_collected", T0, "MW-16")
    store_row(platform.registry, first + 1, "medical_waste_collected", T0 - H, "MW-17")
    await until(lambda: engine.stats.records_fed == 3)
    assert await engine.feed_records() == 0
    await platform.at(T0 + 24 * H + 60)
    (alert,) = platform.alerts(STORAGE)
    assert alert.labels["waiting"] == 4  # MW-14 replayed, MW-15, -16, -17 read: once each


def store_row(
    registry: Registry, row_id: int, record_type: str, at: float, ref: str, site: str = SITE
) -> None:
    with registry.session() as session, session.begin():
        session.add(
            RecordEventRow(
                id=row_id,
                site_id=site,
                record_type=record_type,
                at=datetime.fromtimestamp(at, UTC),
                ref=ref,
                source="device",
                posted_by="scanner",
                received_at=datetime.now(UTC),
            )
        )


async def until(check: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# ---- many sites with old open alerts -------------------------------------------------------------


async def test_a_start_with_1200_sites_holding_old_open_record_alerts(tmp_path: Path) -> None:
    """Each site's alert started before the replay window: the replay asks for each site from its
    own time (in chunks: one OR branch per site made SQLite refuse ~1000 of them)."""
    n = 1200
    registry = Registry.open(sqlite_url(tmp_path / "many.db"))
    collected = T0 - 12 * D  # older than the 7-day window
    fired = datetime.fromtimestamp(collected + 48 * H, UTC)
    sites = [f"site-{i:04d}" for i in range(n)]
    try:
        with registry.session() as session, session.begin():
            session.add(Tenant(id="hospital", name="City Hospital"))
            session.flush()
            for i, site in enumerate(sites):
                session.add(
                    Site(
                        id=site,
                        tenant_id="hospital",
                        name=site,
                        region_code="330206",
                        venue_type="hospital",
                    )
                )
                session.add(
                    AlertRow(
                        id=f"a{i:05d}",
                        device_id=site,
                        rule_id=STORAGE,
                        state="firing",
                        severity=int(Severity.CRITICAL),
                        tenant_id="hospital",
                        site_id=site,
                        region_code="330206",
                        kind="site",
                        message="overdue",
                        started_at=fired,
                        fired_at=fired,
                        labels={
                            "expected_alert": STORAGE,
                            "since": datetime.fromtimestamp(collected - i, UTC).isoformat(),
                        },
                    )
                )
            session.flush()
            for i, site in enumerate(sites):
                session.add(
                    RecordEventRow(
                        site_id=site,
                        record_type="medical_waste_collected",
                        at=datetime.fromtimestamp(collected - i, UTC),
                        ref=f"MW-{i}",
                        source="device",
                        posted_by="scanner",
                        received_at=fired,
                    )
                )
            # before its site's alert started: not needed, not read
            session.add(
                RecordEventRow(
                    site_id=sites[0],
                    record_type="disinfection",
                    at=datetime.fromtimestamp(collected - D, UTC),
                    ref="",
                    source="user",
                    posted_by="nurse",
                    received_at=fired,
                )
            )

        store = AlertStore(registry)
        monitor = RecordsMonitor()
        since, starts = monitor.replay_since(store.open_alerts(), T0)
        assert len(starts) == n
        replay = store.replay_records(since, starts)
        assert len(replay.events) == n
        assert [e.at for e in replay.events] == sorted(e.at for e in replay.events)
        assert {e.record_type for e in replay.events} == {"medical_waste_collected"}
        assert replay.last_id == n + 1

        platform = Platform(registry)
        engine = await platform.start(T0)
        try:
            await platform.at(T0 + 60)  # every bag is still waiting: nothing resolves
            assert engine.stats.transitions == 0
            assert len(platform.alerts()) == n
            await platform.post("medical_waste_transferred", T0 + 120, "MW-7", sites[7])
            await platform.at(T0 + 120)
            assert [(a.device_id, a.state) for a in platform.alerts() if a.state != "firing"] == [
                (sites[7], "resolved")
            ]
        finally:
            await platform.stop()
    finally:
        registry.close()
