"""Durable on-disk spool between ingestion and the InfluxDB writer.

A reading is acknowledged to its device only once it is in the spool, so the spool must survive
SIGKILL (and, with ``FsyncPolicy.ALWAYS``, power loss) without losing an acknowledged record.
Replays after a restart may repeat the uncommitted tail; InfluxDB deduplicates identical points.

Layout of ``directory``:

* ``<20-digit seq>.seg`` — append-only segments of frames ``<len:u32le><crc32:u32le><payload>``;
* ``cursor`` — JSON ``{"seq": n, "offset": m}``: everything before it has been delivered;
  replaced atomically (temp file + ``os.replace``), never fsynced (a stale cursor only re-delivers);
* ``lock`` — ``flock``-ed while open, so two processes never write the same spool.

Everything runs on the event-loop thread except ``os.fsync``, which runs in a worker thread
(group commit: one fsync covers every append made before it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from weijian.config import FsyncPolicy, FullPolicy, SpoolSettings

log = logging.getLogger(__name__)

__all__ = [
    "FRAME_OVERHEAD",
    "MAX_RECORD_BYTES",
    "Spool",
    "SpoolBatch",
    "SpoolFull",
    "SpoolPosition",
    "SpoolStats",
]

_HEADER = struct.Struct("<II")
FRAME_OVERHEAD = _HEADER.size
"""Bytes added to every record on disk; ``has_room``/``max_bytes`` count framed bytes."""
MAX_RECORD_BYTES = 16 << 20
"""Largest accepted record; a larger length field on disk is treated as corruption."""

_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
_CURSOR = "cursor"
_CURSOR_TMP = "cursor.tmp"
_LOCK = "lock"
_SCAN_CHUNK = 1 << 20
_READ_SLACK = 64 << 10  # extra bytes per pread so headers of a max_bytes batch fit in one read


class SpoolFull(Exception):
    """``append()`` was refused because the spool holds ``max_bytes`` (``FullPolicy.BLOCK``)."""


@dataclass
class SpoolStats:
    """Plain counters, read by the metrics exporter at scrape time (bytes are framed bytes)."""

    appended_records: int = 0
    appended_bytes: int = 0
    committed_records: int = 0
    fsyncs: int = 0
    full_rejections: int = 0
    dropped_records: int = 0
    dropped_segments: int = 0
    truncated_tail_bytes: int = 0
    depth_records: int = 0
    depth_bytes: int = 0
    skipped_corrupt_bytes: int = 0  # corrupt data skipped inside an older (non-last) segment


@dataclass(frozen=True, slots=True)
class SpoolPosition:
    """Opaque place in the spool: a segment offset plus running record/byte ordinals.

    The ordinals make depth accounting O(1) on commit; ``epoch`` ties a position to one
    ``open()`` so a batch read before a reopen cannot move the new cursor.
    """

    seq: int
    offset: int
    record: int = field(compare=False)
    byte: int = field(compare=False)
    epoch: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    records: list[bytes]
    end: SpoolPosition


@dataclass(slots=True)
class _Segment:
    seq: int
    size: int  # bytes of valid, whole frames (the reader never goes past this)
    base_byte: int  # byte ordinal of offset 0 (negative for the segment the cursor started in)
    end_record: int  # record ordinal after the last valid frame

    @property
    def end_byte(self) -> int:
        return self.base_byte + self.size


@dataclass(slots=True)
class _Scan:
    valid_end: int  # offset after the last good frame
    file_size: int
    start: int  # frame boundary at or before the requested start (== valid_end if past it)
    records: int  # good frames ending after ``start``
    error: str | None  # why scanning stopped before file_size


def _segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def _scan_segment(path: Path, start: int) -> _Scan:
    """Validate every frame of a segment; count those at/after ``start``.

    Scanning from offset 0 (not from the cursor) proves the cursor sits on a frame boundary.
    """
    records = 0
    aligned = -1
    with open(path, "rb", buffering=0) as f:
        file_size = os.fstat(f.fileno()).st_size
        buf = b""
        mv = memoryview(buf)
        base = 0  # file offset of buf[0]
        i = 0  # position in buf
        error: str | None = None
        while True:
            have = len(buf) - i
            if have < FRAME_OVERHEAD:
                buf, base, i = buf[i:] + f.read(_SCAN_CHUNK), base + i, 0
                mv = memoryview(buf)
                have = len(buf)
                if have == 0:
                    break
                if have < FRAME_OVERHEAD:
                    error = f"short header ({have} bytes)"
                    break
            length, crc = _HEADER.unpack_from(buf, i)
            if length == 0 or length > MAX_RECORD_BYTES:
                error = f"bad length {length}"
                break
            need = FRAME_OVERHEAD + length
            if have < need:
                buf, base, i = buf[i:] + f.read(max(_SCAN_CHUNK, need - have)), base + i, 0
                mv = memoryview(buf)
                if len(buf) < need:
                    error = f"short payload ({len(buf) - FRAME_OVERHEAD} of {length} bytes)"
                    break
            if zlib.crc32(mv[i + FRAME_OVERHEAD : i + need]) != crc:
                error = "CRC mismatch"
                break
            frame_start = base + i
            i += need
            if base + i > start:
                records += 1
                if aligned < 0:
                    aligned = frame_start
        mv.release()
    valid_end = base + i
    return _Scan(valid_end, file_size, aligned if aligned >= 0 else valid_end, records, error)


class Spool:
    """Append-only segmented log with a single reader and an atomically replaced cursor.

    Not thread-safe: call everything from the event-loop thread that ran ``open()``.
    A single consumer is assumed (one ``read_batch`` caller).
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 << 20,
        max_bytes: int = 1 << 30,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        fsync_interval_s: float = 0.2,
        full_policy: FullPolicy = FullPolicy.BLOCK,
    ) -> None:
        if segment_bytes <= 0 or max_bytes <= 0:
            raise ValueError("segment_bytes and max_bytes must be positive")
        if fsync_interval_s <= 0:
            raise ValueError("fsync_interval_s must be positive")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.fsync = FsyncPolicy(fsync)
        self.fsync_interval_s = fsync_interval_s
        self.full_policy = FullPolicy(full_policy)
        self.stats = SpoolStats()

        self._open = False
        self._epoch = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self._segments: dict[int, _Segment] = {}  # insertion order == seq order
        self._wseg: _Segment | None = None
        self._wfd: int | None = None
        self._writer_broken = False  # a partial write could not be undone; rotate before writing
        self._w_record = 0  # record ordinal after the last appended record
        self._rfd: int | None = None
        self._rfd_seq = -1
        self._committed = SpoolPosition(0, 0, 0, 0, 0)
        self._read = self._committed
        # fsync state: _waiters/_retired_fds are swapped out by each sync, so appends made while
        # an fsync runs land in fresh lists and are covered by the next one.
        self._dirty = False
        self._dir_dirty = False
        self._waiters: list[asyncio.Future[None]] = []
        self._retired_fds: list[int] = []
        self._flush_wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None  # shared resolved future (INTERVAL/NEVER)
        self._readable = asyncio.Event()
        self._room_waiters: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(cls, directory: Path, s: SpoolSettings) -> Spool:
        return cls(
            directory,
            segment_bytes=s.segment_bytes,
            max_bytes=s.max_bytes,
            fsync=s.fsync,
            fsync_interval_s=s.fsync_interval_s,
            full_policy=s.full_policy,
        )

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Lock the directory, recover segments and cursor, start the fsync task."""
        if self._open:
            raise RuntimeError("spool already open")
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RuntimeError(f"spool {self.directory} is in use by another process") from None
        self._lock_fd = lock_fd
        try:
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            self._recover()
        except BaseException:
            self._close_fds()
            raise
        self._epoch += 1
        self._committed = self._pos(self._committed.seq, self._committed.offset, 0)
        self._read = self._committed
        self._done = self._loop.create_future()
        self._done.set_result(None)
        # Fresh events: a reopened spool may run on a different event loop.
        self._flush_wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._open = True
        if self.fsync is not FsyncPolicy.NEVER:
            self._flusher = asyncio.create_task(self._flush_loop(), name="spool-fsync")
            self._flusher.add_done_callback(self._flusher_done)
        log.info(
            "spool %s open: %d segment(s), %d record(s) / %d bytes pending, fsync=%s, full=%s",
            self.directory,
            len(self._segments),
            self.stats.depth_records,
            self.stats.depth_bytes,
            self.fsync,
            self.full_policy,
        )

    async def close(self) -> None:
        """Final fsync (every policy), stop the fsync task, close files. Idempotent."""
        if not self._open:
            return
        self._open = False
        if self._flusher is not None:
            # Let the task finish its current fsync instead of cancelling it: the worker thread
            # would otherwise keep using fds we are about to close.
            # Shielded so cancelling close() cannot cancel the task mid-fsync either.
            self._flush_wake.set()
            await asyncio.shield(self._flusher)
            self._flusher = None
        self._dirty = True
        await self._sync()
        self._readable.set()
        self._wake_room()
        self._close_fds()
        log.info("spool %s closed (%d record(s) pending)", self.directory, self.stats.depth_records)

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _close_fds(self) -> None:
        fds = [self._wfd, self._rfd, self._dir_fd, self._lock_fd, *self._retired_fds]
        self._wfd = self._rfd = self._dir_fd = self._lock_fd = None
        self._rfd_seq = -1
        self._retired_fds = []
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the lock fd releases the flock

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        seqs = sorted(
            int(m.group(1)) for name in os.listdir(self.directory) if (m := _SEGMENT_RE.match(name))
        )
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _CURSOR_TMP).unlink()
        cursor = self._load_cursor()
        cur_seq, cur_off = cursor if cursor is not None else (seqs[0] if seqs else 0, 0)
        for seq in [s for s in seqs if s < cur_seq]:
            # Delivered, but the process died between writing the cursor and deleting them.
            self._unlink_segment(seq)
        seqs = [s for s in seqs if s >= cur_seq]
        if not seqs or seqs[0] != cur_seq:
            cur_off = 0  # cursor segment gone: start at the next one that exists
            if seqs:
                cur_seq = seqs[0]

        self._segments = {}
        self.stats.depth_records = self.stats.depth_bytes = 0
        records = 0
        byte = 0
        for index, seq in enumerate(seqs):
            path = self.directory / _segment_name(seq)
            start = cur_off if seq == cur_seq else 0
            scan = _scan_segment(path, start)
            last = index == len(seqs) - 1
            if scan.error is not None:
                bad = scan.file_size - scan.valid_end
                if last:
                    log.warning(
                        "spool %s: truncating torn/corrupt tail of %s at offset %d: %s "
                        "(%d bytes cut)",
                        self.directory,
                        path.name,
                        scan.valid_end,
                        scan.error,
                        bad,
                    )
                    os.truncate(path, scan.valid_end)
                    self.stats.truncated_tail_bytes += bad
                else:
                    log.error(
                        "spool %s: corrupt frame in %s at offset %d: %s; skipping the rest of "
                        "the segment (%d bytes) and continuing with the next one",
                        self.directory,
                        path.name,
                        scan.valid_end,
                        scan.error,
                        bad,
                    )
                    self.stats.skipped_corrupt_bytes += bad
            if seq == cur_seq and scan.start != start:
                log.error(
                    "spool %s: cursor offset %d in %s is not a valid frame boundary; "
                    "resuming at %d (may re-deliver)",
                    self.directory,
                    start,
                    path.name,
                    scan.start,
                )
                cur_off = start = scan.start
            records += scan.records
            seg = _Segment(seq, scan.valid_end, byte - start, records)
            byte = seg.end_byte
            self._segments[seq] = seg

        if seqs:
            last_seg = self._segments[seqs[-1]]
        else:
            last_seg = self._new_segment(max(cur_seq, 1), records, byte)
            cur_seq, cur_off = last_seg.seq, 0
        self._committed = SpoolPosition(cur_seq, cur_off, 0, 0, 0)
        self._w_record = records
        self._writer_broken = False
        self._open_writer(last_seg)
        self.stats.depth_records = records
        self.stats.depth_bytes = byte

    def _load_cursor(self) -> tuple[int, int] | None:
        path = self.directory / _CURSOR
        try:
            data = json.loads(path.read_bytes())
            seq, offset = int(data["seq"]), int(data["offset"])
            if seq < 0 or offset < 0:
                raise ValueError("negative position")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Safe fallback: replaying from the first segment only re-delivers.
            log.error("spool %s: unreadable cursor (%s); replaying all segments", path, exc)
            return None
        return seq, offset

    def _store_cursor(self) -> None:
        pos = self._committed
        tmp = self.directory / _CURSOR_TMP
        try:
            tmp.write_bytes(json.dumps({"seq": pos.seq, "offset": pos.offset}).encode())
            os.replace(tmp, self.directory / _CURSOR)
        except OSError as exc:
            # Not fatal: an old cursor only causes re-delivery after a restart.
            log.error("spool %s: cannot persist cursor %s: %s", self.directory, pos, exc)

    # ------------------------------------------------------------------ segments

    def _new_segment(self, seq: int, end_record: int, base_byte: int) -> _Segment:
        seg = _Segment(seq, 0, base_byte, end_record)
        self._segments[seq] = seg
        self._dir_dirty = True
        return seg

    def _open_segment_fd(self, seq: int) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.directory / _segment_name(seq), flags, 0o644)

    def _open_writer(self, seg: _Segment) -> None:
        self._wfd = self._open_segment_fd(seg.seq)
        self._wseg = seg

    def _rotate(self) -> None:
        """Start a new segment; the old fd stays open until an fsync has covered it.

        The new file is opened first, so a failure leaves the current writer untouched.
        """
        old = self._wseg
        assert old is not None
        new_fd = self._open_segment_fd(old.seq + 1)
        old_fd, self._wfd = self._wfd, new_fd
        if old_fd is not None:
            if self.fsync is FsyncPolicy.NEVER:
                os.close(old_fd)
            else:
                self._retired_fds.append(old_fd)
        self._wseg = self._new_segment(old.seq + 1, self._w_record, old.end_byte)
        self._writer_broken = False

    def _drop_segment(self, seq: int) -> None:
        del self._segments[seq]
        if self._rfd_seq == seq:
            self._close_reader()  # an open fd would keep the deleted file's space allocated
        self._unlink_segment(seq)

    def _close_reader(self) -> None:
        if self._rfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._rfd)
        self._rfd = None
        self._rfd_seq = -1

    def _unlink_segment(self, seq: int) -> None:
        try:
            (self.directory / _segment_name(seq)).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("spool %s: cannot delete segment %d: %s", self.directory, seq, exc)

    def _pos(self, seq: int, offset: int, record: int) -> SpoolPosition:
        return SpoolPosition(
            seq, offset, record, self._segments[seq].base_byte + offset, self._epoch
        )

    def _next_segment(self, seq: int) -> _Segment | None:
        for s, seg in self._segments.items():
            if s > seq:
                return seg
        return None

    # ------------------------------------------------------------------ append

    def has_room(self, nbytes: int) -> bool:
        """Whether ``append`` of ``nbytes`` framed bytes would succeed now.

        Framed bytes = sum(len(record) + FRAME_OVERHEAD). Under DROP_OLDEST anything up to
        ``max_bytes`` fits (older data is evicted).
        """
        if nbytes > self.max_bytes:
            return False
        if self.full_policy is FullPolicy.DROP_OLDEST:
            return True
        return self.stats.depth_bytes + nbytes <= self.max_bytes

    def append(self, records: Sequence[bytes]) -> asyncio.Future[None]:
        """Write ``records`` now (one ``os.write``); the future resolves once they are durable.

        Synchronous so it can run inside a paho callback on the loop thread. Raises
        ``SpoolFull`` (BLOCK, or a single call larger than ``max_bytes``), ``ValueError`` for an
        empty or oversized record, ``OSError`` if the disk write fails (nothing is kept then).
        """
        wfd = self._wfd
        if not self._open or wfd is None:
            raise RuntimeError("spool is not open")
        if not records:
            assert self._done is not None
            return self._done
        parts: list[bytes] = []
        pack = _HEADER.pack
        crc32 = zlib.crc32
        for record in records:
            n = len(record)
            if not 0 < n <= MAX_RECORD_BYTES:
                # Empty frames are refused so a zero-filled tail (power loss) never parses as data.
                raise ValueError(f"spool record must be 1..{MAX_RECORD_BYTES} bytes, got {n}")
            parts.append(pack(n, crc32(record)))
            parts.append(record)
        data = b"".join(parts)
        size = len(data)
        stats = self.stats
        if stats.depth_bytes + size > self.max_bytes:
            self._make_room(size)
        seg = self._wseg
        assert seg is not None
        if self._writer_broken or (seg.size and seg.size + size > self.segment_bytes):
            self._rotate()
            seg = self._wseg
            assert seg is not None
            wfd = self._wfd
            assert wfd is not None
        try:
            written = os.write(wfd, data)
        except OSError:
            self._undo_partial_write()
            raise
        if written != size:
            self._undo_partial_write()
            raise OSError(errno.ENOSPC, f"short write to spool segment ({written} of {size})")
        count = len(records)
        seg.size += size
        self._w_record += count
        seg.end_record = self._w_record
        stats.appended_records += count
        stats.appended_bytes += size
        stats.depth_records += count
        stats.depth_bytes += size
        self._readable.set()
        if self.fsync is FsyncPolicy.ALWAYS:
            assert self._loop is not None
            fut = self._loop.create_future()
            self._waiters.append(fut)
            self._dirty = True
            self._flush_wake.set()
            return fut
        self._dirty = True
        assert self._done is not None
        return self._done

    def _undo_partial_write(self) -> None:
        """Cut a half-written frame so later appends never follow garbage in the same file."""
        assert self._wseg is not None
        assert self._wfd is not None
        try:
            os.ftruncate(self._wfd, self._wseg.size)
        except OSError as exc:
            log.error(
                "spool %s: cannot undo partial write to segment %d (%s); rotating",
                self.directory,
                self._wseg.seq,
                exc,
            )
            try:
                self._rotate()
            except OSError as exc2:
                # Appending after the garbage would hide later records: refuse until a new
                # segment can be created (append() retries the rotation).
                log.error("spool %s: cannot rotate either: %s", self.directory, exc2)
                self._writer_broken = True

    def _make_room(self, size: int) -> None:
        stats = self.stats
        if size > self.max_bytes or self.full_policy is FullPolicy.BLOCK:
            stats.full_rejections += 1
            raise SpoolFull(
                f"spool {self.directory} full: {stats.depth_bytes} + {size} > {self.max_bytes}"
            )
        dropped_records = dropped_segments = 0
        try:
            while stats.depth_bytes + size > self.max_bytes:
                oldest = next(iter(self._segments.values()))
                if oldest is self._wseg:
                    self._rotate()  # size <= max_bytes, so emptying everything older fits
                lost = oldest.end_record - self._committed.record
                dropped_records += lost
                dropped_segments += lost > 0
                stats.depth_records -= lost
                stats.depth_bytes -= oldest.end_byte - self._committed.byte
                self._drop_segment(oldest.seq)
                nxt = next(iter(self._segments.values()))
                self._committed = SpoolPosition(
                    nxt.seq, 0, oldest.end_record, oldest.end_byte, self._epoch
                )
        finally:  # keep counters and cursor consistent even if a rotation failed midway
            stats.dropped_records += dropped_records
            stats.dropped_segments += dropped_segments
            if self._read.record <= self._committed.record:
                self._read = self._committed
            self._store_cursor()
        log.error(
            "spool %s full (max_bytes=%d): dropped %d oldest undelivered record(s) in %d "
            "segment(s) to fit %d bytes",
            self.directory,
            self.max_bytes,
            dropped_records,
            dropped_segments,
            size,
        )

    # ------------------------------------------------------------------ fsync

    async def _flush_loop(self) -> None:
        always = self.fsync is FsyncPolicy.ALWAYS
        while self._open:
            if always:
                await self._flush_wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_wake.wait(), self.fsync_interval_s)
            self._flush_wake.clear()
            if not self._open:
                return
            if self._dirty or self._dir_dirty:
                await self._sync()

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "spool %s: fsync task died; appends will not be acknowledged",
                self.directory,
                exc_info=task.exception(),
            )

    async def _sync(self) -> None:
        """One group commit: fsync everything written so far, then resolve its waiters."""
        waiters, self._waiters = self._waiters, []
        retired, self._retired_fds = self._retired_fds, []
        fds = [*retired, self._wfd] if self._wfd is not None else retired
        dir_fd = self._dir_fd if self._dir_dirty else None
        self._dirty = self._dir_dirty = False
        error: OSError | None = None
        if fds or dir_fd is not None:
            try:
                await asyncio.to_thread(_fsync_all, fds, dir_fd)
                self.stats.fsyncs += 1
            except OSError as exc:
                # After a failed fsync the kernel may have dropped the dirty pages: do not
                # acknowledge; devices will resend (duplicates are harmless).
                error = exc
                log.error("spool %s: fsync failed: %s", self.directory, exc)
        for fd in retired:
            with contextlib.suppress(OSError):
                os.close(fd)
        for fut in waiters:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(OSError(error.errno, f"spool fsync failed: {error}"))

    # ------------------------------------------------------------------ read / commit

    async def wait_for_room(
        self,
        nbytes: int,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the agreed API
    ) -> bool:
        """Wait until ``has_room(nbytes)``; False on timeout, close, or if it can never fit."""
        if nbytes > self.max_bytes:
            return False
        try:
            async with asyncio.timeout(timeout):
                while not self.has_room(nbytes):
                    if not self._open or self._loop is None:
                        return False
                    fut = self._loop.create_future()
                    self._room_waiters.add(fut)
                    try:
                        await fut
                    finally:
                        self._room_waiters.discard(fut)
        except TimeoutError:
            return False
        return True

    def _wake_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def read_batch(
        self,
        max_records: int,
        max_bytes: int = 8 << 20,
        timeout: float = 1.0,  # noqa: ASYNC109 - part of the agreed API
    ) -> SpoolBatch:
        """Up to ``max_records`` records (and about ``max_bytes`` of payload) after the last read.

        Returns as soon as at least one record is available; waits up to ``timeout`` otherwise
        and may return an empty batch. At least one record is returned even if it alone exceeds
        ``max_bytes``.
        """
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if not self._open:
            raise RuntimeError("spool is not open")
        if self._read.record >= self._w_record:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self._open and self._read.record >= self._w_record:
                        self._readable.clear()
                        await self._readable.wait()
            if not self._open:
                return SpoolBatch([], self._read)
        records: list[bytes] = []
        budget = max_bytes
        pos = self._read
        while len(records) < max_records:
            seg = self._segments[pos.seq]
            if pos.offset >= seg.size:
                nxt = None if seg is self._wseg else self._next_segment(seg.seq)
                if nxt is None:
                    break
                pos = SpoolPosition(nxt.seq, 0, seg.end_record, nxt.base_byte, self._epoch)
                continue
            pos, budget, full = self._read_segment(seg, pos, records, max_records, budget)
            if full:
                break
        self._read = pos
        return SpoolBatch(records, pos)

    def _read_segment(
        self,
        seg: _Segment,
        pos: SpoolPosition,
        out: list[bytes],
        max_records: int,
        budget: int,
    ) -> tuple[SpoolPosition, int, bool]:
        """Append frames of ``seg`` from ``pos`` to ``out``; return (pos, budget, batch full).

        Always makes progress unless the batch is full: a frame that cannot be read back as
        written means the file changed under us, and the rest of the segment is skipped.
        """
        if self._rfd_seq != seg.seq:
            self._close_reader()
            self._rfd = os.open(self.directory / _segment_name(seg.seq), os.O_RDONLY | os.O_CLOEXEC)
            self._rfd_seq = seg.seq
        rfd = self._rfd
        assert rfd is not None
        base = pos.offset
        buf = os.pread(rfd, min(seg.size - base, max(budget, 0) + _READ_SLACK), base)
        n = len(buf)
        i = 0
        record = pos.record
        crc32 = zlib.crc32
        unpack_from = _HEADER.unpack_from
        full = False
        while len(out) < max_records:
            if n - i < FRAME_OVERHEAD:
                if i == 0:
                    return self._skip_corrupt(seg, base, "file shorter than written"), budget, False
                break
            length, crc = unpack_from(buf, i)
            if length == 0 or length > MAX_RECORD_BYTES:
                return self._skip_corrupt(seg, base + i, f"bad length {length}"), budget, False
            if out and length > budget:
                full = True
                break
            end = i + FRAME_OVERHEAD + length
            if end > n:
                if i:
                    break  # continue with a fresh pread from this frame
                # A single frame larger than the read window: fetch exactly that frame.
                buf = os.pread(rfd, FRAME_OVERHEAD + length, base)
                n = len(buf)
                if n < end:
                    return self._skip_corrupt(seg, base, "short payload"), budget, False
            payload = buf[i + FRAME_OVERHEAD : end]
            if crc32(payload) != crc:
                return self._skip_corrupt(seg, base + i, "CRC mismatch"), budget, False
            out.append(payload)
            budget -= length
            record += 1
            i = end
        else:
            full = True
        offset = base + i
        return (
            SpoolPosition(seg.seq, offset, record, seg.base_byte + offset, self._epoch),
            budget,
            full,
        )

    def _skip_corrupt(self, seg: _Segment, offset: int, why: str) -> SpoolPosition:
        """Data changed under us since it was written/verified: skip the rest of the segment."""
        log.error(
            "spool %s: corrupt frame in segment %d at offset %d while reading (%s); "
            "skipping %d bytes",
            self.directory,
            seg.seq,
            offset,
            why,
            seg.size - offset,
        )
        self.stats.skipped_corrupt_bytes += seg.size - offset
        if seg is self._wseg:
            self._rotate()
        return SpoolPosition(seg.seq, seg.size, seg.end_record, seg.end_byte, self._epoch)

    async def commit(self, batch: SpoolBatch) -> None:
        """Mark everything up to ``batch.end`` delivered, persist the cursor, free old segments.

        Committing a batch also commits every earlier one; an empty batch commits nothing.

        Cursor and unlinks are done inline: one small write + rename per batch is cheaper than
        a thread hop and keeps ordering trivial. Stale batches (already committed, or read
        before a reopen) are ignored.
        """
        end = batch.end
        if not self._open:
            raise RuntimeError("spool is not open")
        if not batch.records:
            # An empty batch's end is the read position, which may cover an earlier batch that
            # is still being delivered: committing it must not acknowledge that one.
            return
        if end.epoch != self._epoch:
            log.warning("spool %s: ignoring commit of a batch read before reopen", self.directory)
            return
        if end.record <= self._committed.record:
            return
        old = self._committed
        # Normalise "end of a finished segment" to "start of the next" so it can be deleted.
        seg = self._segments[end.seq]
        while seg is not self._wseg and end.offset >= seg.size:
            nxt = self._next_segment(seg.seq)
            if nxt is None:
                break
            end = SpoolPosition(nxt.seq, 0, end.record, nxt.base_byte, self._epoch)
            seg = nxt
        self._committed = end
        if self._read.record <= end.record:  # also moves off a finished segment deleted below
            self._read = end
        stats = self.stats
        stats.committed_records += end.record - old.record
        stats.depth_records -= end.record - old.record
        stats.depth_bytes -= end.byte - old.byte
        self._store_cursor()
        for seq in [s for s in self._segments if s < end.seq]:
            self._drop_segment(seq)
        self._wake_room()

    def rewind(self) -> None:
        """Re-read from the committed cursor (after the forwarder failed to deliver a batch)."""
        self._read = self._committed
        if self._read.record < self._w_record:
            self._readable.set()


_datasync = getattr(os, "fdatasync", os.fsync)  # the file's data and size, not its timestamps


def _fsync_all(fds: list[int], dir_fd: int | None) -> None:
    for fd in fds:
        _datasync(fd)
    if dir_fd is not None:
        os.fsync(dir_fd)  # makes newly created segment names durable
