"""Durability and accounting tests for the on-disk spool (real files, no filesystem mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.spool import (
    FRAME_OVERHEAD,
    MAX_RECORD_BYTES,
    Spool,
    SpoolFull,
    SpoolStats,
)
from weijian.config import FsyncPolicy, FullPolicy, SpoolSettings

REPO = Path(__file__).resolve().parents[1]
FRAME = 100  # framed size of rec(i): 92 payload bytes + 8 header bytes


def rec(i: int, size: int = FRAME - FRAME_OVERHEAD) -> bytes:
    head = f"{i}:".encode()
    return head + b"x" * (size - len(head))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


async def read_all(spool: Spool, max_records: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while batch := (await spool.read_batch(max_records, timeout=0)).records:
        out.extend(batch)
    return out


async def fill(spool: Spool, n: int, start: int = 0) -> None:
    """Append records one call each (so rotation can happen between any two)."""
    await asyncio.gather(*(spool.append([rec(i)]) for i in range(start, start + n)))


async def test_round_trip_preserves_order_and_bytes(tmp_path: Path) -> None:
    payloads = [bytes([i % 256]) * (1 + i * 37 % 500) for i in range(300)]
    async with Spool(tmp_path) as spool:
        await spool.append(payloads[:100])
        await spool.append(payloads[100:101])
        await spool.append(payloads[101:])
        assert spool.stats.depth_records == 300
        assert spool.stats.depth_bytes == sum(len(p) + FRAME_OVERHEAD for p in payloads)
        got: list[bytes] = []
        while len(got) < 300:
            batch = await spool.read_batch(64)
            assert 0 < len(batch.records) <= 64
            got.extend(batch.records)
            await spool.commit(batch)
        assert got == payloads
        assert spool.stats.depth_records == 0
        assert spool.stats.depth_bytes == 0
        assert spool.stats.committed_records == 300
        assert spool.stats.appended_records == 300


async def test_read_continues_across_rotation_before_commit(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 35)
        assert len(segments(tmp_path)) == 4  # 10 + 10 + 10 + 5 frames
        first = await spool.read_batch(7)
        second = await spool.read_batch(9)  # crosses from segment 1 into segment 2
        third = await spool.read_batch(100)
        assert [r.split(b":")[0] for r in first.records + second.records + third.records] == [
            str(i).encode() for i in range(35)
        ]
        assert (await spool.read_batch(5, timeout=0)).records == []


async def test_commit_deletes_wholly_consumed_segments(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 30)
        names = [p.name for p in segments(tmp_path)]
        assert len(names) == 3
        await spool.commit(await spool.read_batch(15))  # ends mid segment 2
        assert [p.name for p in segments(tmp_path)] == names[1:]
        await spool.commit(await spool.read_batch(5))  # ends exactly at the end of segment 2
        assert [p.name for p in segments(tmp_path)] == names[2:]
        assert json.loads((tmp_path / "cursor").read_text()) == {"seq": 3, "offset": 0}
        assert spool.stats.depth_records == 10
        assert spool.stats.depth_bytes == 10 * FRAME


async def test_reopen_replays_exactly_the_uncommitted_records(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 25)
        first = await spool.read_batch(13)
        await spool.read_batch(5)  # read ahead, never committed: must be replayed
        await spool.commit(first)
        assert (await spool.read_batch(100)).records == [rec(i) for i in range(18, 25)]
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        assert spool.stats.depth_records == 12
        assert spool.stats.depth_bytes == 12 * FRAME
        assert await read_all(spool) == [rec(i) for i in range(13, 25)]
        await fill(spool, 3, start=25)  # appending continues after the recovered tail
        assert await read_all(spool) == [rec(i) for i in range(25, 28)]


async def test_batch_from_before_reopen_cannot_move_the_cursor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await fill(spool, 10)
    stale = await spool.read_batch(4)
    await spool.close()
    await spool.open()
    await spool.commit(stale)
    assert spool.stats.depth_records == 10
    assert await read_all(spool) == [rec(i) for i in range(10)]
    assert "before reopen" in caplog.text
    await spool.close()
    await spool.close()  # idempotent


@pytest.mark.parametrize(
    ("damage", "lost_records", "cut_bytes"),
    [
        pytest.param(lambda b: b[:-30], 1, FRAME - 30, id="truncated-mid-payload"),
        pytest.param(lambda b: b[: -(FRAME - 3)], 1, 3, id="truncated-mid-header"),
        pytest.param(lambda b: b + b"\x07\x00\x00\x00abc", 0, 7, id="garbage-appended"),
        pytest.param(lambda b: b + bytes(4096), 0, 4096, id="zero-filled-tail"),
        pytest.param(lambda b: b[:-1] + b"?", 1, FRAME, id="bad-crc-last-record"),
    ],
)
async def test_torn_tail_is_cut_and_valid_records_survive(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[bytes], bytes],
    lost_records: int,
    cut_bytes: int,
) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 15)
    last = segments(tmp_path)[-1]
    last.write_bytes(damage(last.read_bytes()))

    kept = 15 - lost_records
    with caplog.at_level(logging.WARNING, logger="collectors.spool"):
        async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
            assert spool.stats.truncated_tail_bytes == cut_bytes
            assert spool.stats.depth_records == kept
            assert last.stat().st_size == (kept - 10) * FRAME
            await fill(spool, 2, start=100)
    assert any(r.levelno == logging.WARNING and "truncating" in r.message for r in caplog.records)
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        assert spool.stats.truncated_tail_bytes == 0  # the cut was clean: later appends intact
        assert await read_all(spool) == [rec(i) for i in range(kept)] + [rec(100), rec(101)]


@pytest.mark.parametrize("field_offset", [FRAME_OVERHEAD + 5, 0], ids=["payload-crc", "length"])
async def test_corruption_inside_older_segment_skips_rest_of_that_segment_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field_offset: int
) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 30)
    first = segments(tmp_path)[0]
    flip_byte(first, 3 * FRAME + field_offset)  # damage record 3 of segment 1

    with caplog.at_level(logging.ERROR, logger="collectors.spool"):
        async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
            assert spool.stats.skipped_corrupt_bytes == 7 * FRAME
            assert spool.stats.truncated_tail_bytes == 0
            assert spool.stats.depth_records == 23
            got = await read_all(spool)
    assert got == [rec(i) for i in [0, 1, 2, *range(10, 30)]]
    assert any(r.levelno == logging.ERROR and "corrupt frame" in r.message for r in caplog.records)
    assert first.stat().st_size == 10 * FRAME  # older segments are never truncated


async def test_corruption_found_while_reading_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path, segment_bytes=10 * FRAME) as spool:
        await fill(spool, 15)
        flip_byte(segments(tmp_path)[0], 4 * FRAME + 20)  # bit rot after open() verified it
        got = await read_all(spool)
        assert got == [rec(i) for i in [0, 1, 2, 3, *range(10, 15)]]
        assert spool.stats.skipped_corrupt_bytes == 6 * FRAME
        assert "CRC mismatch" in caplog.text


async def test_cursor_off_frame_boundary_or_unreadable_only_causes_redelivery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        await fill(spool, 10)
    seg = segments(tmp_path)[0]
    (tmp_path / "cursor").write_text(json.dumps({"seq": int(seg.stem), "offset": 3 * FRAME + 5}))
    async with Spool(tmp_path) as spool:
        assert await read_all(spool) == [rec(i) for i in range(3, 10)]
    assert "not a valid frame boundary" in caplog.text

    (tmp_path / "cursor").write_text("{not json")
    async with Spool(tmp_path) as spool:
        assert await read_all(spool) == [rec(i) for i in range(10)]
    assert "unreadable cursor" in caplog.text


async def test_block_raises_spool_full_and_wait_for_room_wakes_on_commit(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10 * FRAME, full_policy=FullPolicy.BLOCK) as spool:
        await fill(spool, 10)
        assert not spool.has_room(FRAME)
        with pytest.raises(SpoolFull):
            spool.append([rec(10)])
        assert spool.stats.full_rejections == 1
        assert spool.stats.depth_records == 10
        assert await spool.wait_for_room(FRAME, timeout=0.01) is False
        assert await spool.wait_for_room(10 * FRAME + 1) is False  # can never fit

        waiter = asyncio.create_task(spool.wait_for_room(3 * FRAME, timeout=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await spool.commit(await spool.read_batch(2))  # frees 2 frames: not enough yet
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await spool.commit(await spool.read_batch(1))
        assert await asyncio.wait_for(waiter, 1) is True
        await spool.append([rec(10), rec(11), rec(12)])
        assert await read_all(spool) == [rec(i) for i in range(3, 13)]


async def test_drop_oldest_evicts_whole_segments_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(
        tmp_path,
        segment_bytes=5 * FRAME,
        max_bytes=10 * FRAME,
        full_policy=FullPolicy.DROP_OLDEST,
    ) as spool:
        await fill(spool, 10)  # segments [0-4] [5-9], exactly full
        in_flight = await spool.read_batch(2)  # forwarder holds records 0-1
        assert spool.has_room(FRAME)
        await spool.append([rec(10)])
        assert spool.stats.dropped_records == 5
        assert spool.stats.dropped_segments == 1
        assert spool.stats.depth_records == 6
        assert spool.stats.depth_bytes == 6 * FRAME
        assert len(segments(tmp_path)) == 2
        await spool.commit(in_flight)  # stale now: must not un-drop or double count
        assert spool.stats.depth_records == 6

        await spool.commit(await spool.read_batch(2))  # records 5-6 delivered
        await fill(spool, 6, start=11)  # exactly fills max_bytes again: nothing dropped
        assert spool.stats.dropped_records == 5
        spool.append([rec(17)])  # drops the rest of [5-9]: 3 undelivered
        assert spool.stats.dropped_records == 8
        assert spool.stats.dropped_segments == 2
        assert await read_all(spool) == [rec(i) for i in range(10, 18)]
    assert "dropped 5 oldest undelivered record(s) in 1 segment(s)" in caplog.text
    async with Spool(tmp_path, segment_bytes=5 * FRAME, max_bytes=10 * FRAME) as spool:
        assert await read_all(spool) == [rec(i) for i in range(10, 18)]


async def test_commit_of_empty_batch_does_not_commit_batches_in_flight(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        await fill(spool, 3)
        in_flight = await spool.read_batch(10)  # a pipelining forwarder is still writing this
        empty = await spool.read_batch(10, timeout=0)
        assert empty.records == []
        await spool.commit(empty)
        assert spool.stats.depth_records == 3
        spool.rewind()
        assert await read_all(spool) == in_flight.records


def test_short_write_is_undone_so_no_garbage_precedes_later_records(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel do a genuine partial write, then EFBIG."""

    async def scenario() -> None:
        async with Spool(tmp_path) as spool:
            await fill(spool, 3)
            seg = segments(tmp_path)[0]
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 * FRAME + 150, hard))
            try:
                with pytest.raises(OSError, match="short write"):
                    spool.append([rec(3, size=292)])  # 300 framed bytes: only 150 fit
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                signal.signal(signal.SIGXFSZ, old_handler)
            assert seg.stat().st_size == 3 * FRAME  # the half frame was cut off again
            assert spool.stats.depth_records == 3
            await spool.append([rec(4)])
            assert await read_all(spool) == [rec(0), rec(1), rec(2), rec(4)]
        async with Spool(tmp_path) as spool:
            assert spool.stats.truncated_tail_bytes == 0
            assert spool.stats.skipped_corrupt_bytes == 0
            assert await read_all(spool) == [rec(0), rec(1), rec(2), rec(4)]

    asyncio.run(scenario())


async def test_append_rejects_empty_and_oversized_records(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=100 * FRAME) as spool:
        with pytest.raises(ValueError, match="1\\.\\."):
            spool.append([rec(0), b""])
        with pytest.raises(ValueError, match="bytes"):
            spool.append([b"x" * (MAX_RECORD_BYTES + 1)])
        with pytest.raises(SpoolFull):
            spool.append([b"x" * (100 * FRAME)])  # larger than max_bytes on its own
        assert spool.stats.depth_records == 0
        assert await spool.append([]) is None
        assert all(p.stat().st_size == 0 for p in segments(tmp_path))


@pytest.mark.parametrize("policy", list(FsyncPolicy))
async def test_fsync_policies_resolve_futures(tmp_path: Path, policy: FsyncPolicy) -> None:
    spool = Spool(tmp_path, fsync=policy, fsync_interval_s=0.01)
    await spool.open()
    futures = [spool.append([rec(i)]) for i in range(200)]
    if policy is FsyncPolicy.ALWAYS:
        assert not any(f.done() for f in futures)  # nothing is acknowledged before an fsync
        await asyncio.wait_for(asyncio.gather(*futures), 5)
        assert spool.stats.fsyncs == 1  # group commit: one fsync for 200 appends
    elif policy is FsyncPolicy.INTERVAL:
        assert all(f.done() for f in futures)
        await asyncio.sleep(0.1)  # ~10 intervals
        assert spool.stats.fsyncs >= 1
    else:
        assert all(f.done() for f in futures)
        await asyncio.sleep(0.02)
        assert spool.stats.fsyncs == 0
    before = spool.stats.fsyncs
    await spool.close()
    assert spool.stats.fsyncs == before + 1  # close always syncs


async def test_always_append_during_fsync_waits_for_the_next_one(tmp_path: Path) -> None:
    async with Spool(tmp_path, fsync=FsyncPolicy.ALWAYS) as spool:
        first = spool.append([rec(0)])
        await asyncio.sleep(0)  # the fsync task takes `first` and starts fsync in a thread
        second = spool.append([rec(1)])
        await first
        assert spool.stats.fsyncs == 1
        assert not second.done()  # written after that fsync started: not yet durable
        await second
        assert spool.stats.fsyncs == 2


async def test_rewind_rereads_uncommitted_records(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=4 * FRAME) as spool:
        await fill(spool, 10)
        first = await spool.read_batch(3)
        await spool.commit(first)
        await spool.read_batch(4)
        await spool.read_batch(100)
        spool.rewind()
        assert await read_all(spool, max_records=2) == [rec(i) for i in range(3, 10)]
        spool.rewind()
        again = await spool.read_batch(100)
        assert again.records == [rec(i) for i in range(3, 10)]
        await spool.commit(again)
        spool.rewind()
        assert (await spool.read_batch(10, timeout=0)).records == []


async def test_read_batch_waits_for_data_and_honours_limits(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        t0 = time.monotonic()
        empty = await spool.read_batch(10, timeout=0.05)
        assert empty.records == []
        assert 0.04 <= time.monotonic() - t0 < 1
        waiter = asyncio.create_task(spool.read_batch(10, timeout=5))
        await asyncio.sleep(0.01)
        spool.append([rec(0)])
        assert (await asyncio.wait_for(waiter, 1)).records == [rec(0)]

        big = b"B" * (300 << 10)  # larger than one read window
        spool.append([rec(1), rec(2), rec(3), big, rec(4)])
        assert (await spool.read_batch(100, max_bytes=2 * 92)).records == [rec(1), rec(2)]
        assert (await spool.read_batch(100, max_bytes=1000)).records == [rec(3)]
        assert (await spool.read_batch(100, max_bytes=10)).records == [big]  # alone: allowed
        assert (await spool.read_batch(100)).records == [rec(4)]


async def test_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    async with Spool(tmp_path):
        with pytest.raises(RuntimeError, match="in use"):
            await Spool(tmp_path).open()


def test_from_settings(tmp_path: Path) -> None:
    s = SpoolSettings(
        fsync=FsyncPolicy.NEVER, max_bytes=123, segment_bytes=45, full_policy="drop_oldest"
    )
    spool = Spool.from_settings(tmp_path, s)
    assert (spool.fsync, spool.max_bytes, spool.segment_bytes, spool.full_policy) == (
        FsyncPolicy.NEVER,
        123,
        45,
        FullPolicy.DROP_OLDEST,
    )
    assert spool.stats == SpoolStats()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=60),
    splits=st.lists(st.integers(1, 9), min_size=1, max_size=10),
    segment_bytes=st.integers(16, 3000),
    read_sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    commit_every=st.integers(1, 4),
)
def test_property_round_trip_and_replay(
    sizes: list[int],
    splits: list[int],
    segment_bytes: int,
    read_sizes: list[int],
    commit_every: int,
) -> None:
    """Any record sizes / append splits / read sizes: order kept, reopen replays the rest."""
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    async def scenario(directory: Path) -> None:
        async with Spool(directory, segment_bytes=segment_bytes, fsync=FsyncPolicy.NEVER) as sp:
            i = k = 0
            while i < len(payloads):
                n = splits[k % len(splits)]
                await sp.append(payloads[i : i + n])
                i, k = i + n, k + 1
            got: list[bytes] = []
            committed = 0
            for k in range(len(payloads)):
                batch = await sp.read_batch(read_sizes[k % len(read_sizes)], timeout=0)
                if not batch.records:
                    break
                got.extend(batch.records)
                if k % commit_every == 0:
                    await sp.commit(batch)
                    committed = len(got)
            assert got == payloads
            assert sp.stats.depth_records == len(payloads) - committed
        async with Spool(directory, segment_bytes=segment_bytes) as sp:
            assert await read_all(sp) == payloads[committed:]

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(scenario(Path(d)))


CRASH_CHILD = """
import asyncio, sys
from pathlib import Path
from collectors.spool import Spool
from weijian.config import FsyncPolicy

async def main() -> None:
    spool = Spool(Path(sys.argv[1]), segment_bytes=16 * 1024, fsync=FsyncPolicy(sys.argv[2]),
                  fsync_interval_s=0.01)
    await spool.open()
    out = sys.stdout

    async def forward() -> None:  # a forwarder that "delivers" by printing, then commits
        while True:
            batch = await spool.read_batch(50, timeout=0.05)
            if batch.records:
                out.write("".join("D %s\\n" % r.split(b":")[0].decode() for r in batch.records))
                out.flush()
                await spool.commit(batch)

    task = asyncio.create_task(forward())
    i = 0
    while True:
        n = 1 + i % 7
        futures = [spool.append([b"%d:%s" % (j, b"x" * (j % 300))]) for j in range(i, i + n)]
        for fut in futures:
            await fut
        out.write("".join("A %d\\n" % j for j in range(i, i + n)))
        out.flush()
        i += n
        await asyncio.sleep(0)

asyncio.run(main())
"""


@pytest.mark.parametrize("policy", [FsyncPolicy.ALWAYS, FsyncPolicy.INTERVAL])
def test_sigkill_loses_no_acknowledged_record(tmp_path: Path, policy: FsyncPolicy) -> None:
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    directory = tmp_path / "spool"
    acked: set[int] = set()
    delivered: set[int] = set()

    def note(line: bytes) -> None:
        kind, num = line.split()
        (acked if kind == b"A" else delivered).add(int(num))

    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(directory), policy.value],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        while len(acked) < 600:  # several segments, several forwarder commits
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), (tmp_path / "stderr").read_text()[-2000:]
            note(line)
        proc.send_signal(signal.SIGKILL)  # mid-run: appends and commits are in flight
        rest = proc.stdout.read()  # includes lines already buffered by readline()
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.split(b"\n")[:-1]:  # complete lines were printed before the kill
        note(line)

    async def replay() -> list[bytes]:
        async with Spool(directory) as spool:
            return await read_all(spool)

    replayed_records = asyncio.run(replay())
    replayed = [int(r.split(b":")[0]) for r in replayed_records]
    for j, r in zip(replayed, replayed_records, strict=True):
        assert r == b"%d:%s" % (j, b"x" * (j % 300))  # intact payloads
    if replayed:  # the uncommitted tail, contiguous, in append order
        assert replayed == list(range(replayed[0], replayed[0] + len(replayed)))
    missing = acked - delivered - set(replayed)
    assert not missing, f"acknowledged records lost: {sorted(missing)[:20]}"
    assert len(set(replayed) & delivered) <= 50  # duplicates: at most the uncommitted batch
    assert delivered, "the forwarder should have committed something before the kill"
