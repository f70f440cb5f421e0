"""HJ 212-2017 framing, sans-IO: ``##`` + 4-digit length + data segment + 4 hex CRC + CR LF.

:class:`FrameDecoder` takes bytes as they come off a TCP connection, in any chunking, and returns
frames and error events. It never raises on input and never waits on a broken frame for longer
than one maximum frame, so one bad packet costs only itself: the decoder reports it with a
machine-readable :class:`FrameErrorReason` (a metric label) and resyncs at the next ``##``.

Decisions the standard leaves open:

- The length counts **bytes** of the UTF-8 data segment (what a byte-stream receiver can check).
  A frame whose length matches the segment's *character* count instead, with a correct CRC, is
  accepted too, since both readings of "characters" exist in the field.
- A CR LF inside the declared segment ends the frame early (``bad_length``): the segment's fields
  never contain one, and trusting it keeps a too-large length from swallowing the next packets.
- A bad frame that contains another ``##`` is cut there, so a truncated packet followed by a good
  one costs only the truncated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocols.hj212.crc import crc16, format_crc

HEADER = b"##"
TERMINATOR = b"\r\n"
MAX_SEGMENT = 1024  # §6.3 Table 2: the data segment is 0–1024 characters
OVERHEAD = len(HEADER) + 4 + 4 + len(TERMINATOR)
MAX_FRAME = MAX_SEGMENT + OVERHEAD
SAMPLE_BYTES = 32
_HASH = 0x23
_HEX = frozenset(b"0123456789abcdefABCDEF")


class FrameErrorReason(StrEnum):
    """Why bytes did not make a frame. The values are metric labels: keep them stable."""

    GARBAGE = "garbage"  # bytes outside any frame (before or between ## headers)
    BAD_LENGTH = "bad_length"  # length not 4 digits, or disagrees with where the frame ends
    TOO_LONG = "too_long"  # declared length above 1024
    BAD_CRC = "bad_crc"  # CRC field not 4 hex digits, or not the data segment's CRC
    BAD_TERMINATOR = "bad_terminator"  # no CR LF where the length says, nor anywhere close
    TRUNCATED = "truncated"  # a new ## header (or the end of the stream) cut the frame short
    BAD_ENCODING = "bad_encoding"  # the data segment is not UTF-8


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame. ``offset`` is where its ``##`` sits in the stream fed so far."""

    segment: str
    crc: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that were dropped, and why; ``sample`` holds their first bytes for a log line."""

    reason: FrameErrorReason
    detail: str
    offset: int
    size: int
    sample: bytes


class _Run:
    """Dropped bytes still being collected into one event (a garbage run, or a resync skip)."""

    __slots__ = ("detail", "limit", "offset", "reason", "sample", "size")

    def __init__(self, reason: FrameErrorReason, detail: str, offset: int, limit: int) -> None:
        self.reason = reason
        self.detail = detail
        self.offset = offset
        self.limit = limit  # bytes after which the run is reported and a new one starts
        self.size = 0
        self.sample = bytearray()

    def add(self, data: bytes | bytearray) -> None:
        if len(self.sample) < SAMPLE_BYTES:
            self.sample += data[: SAMPLE_BYTES - len(self.sample)]
        self.size += len(data)

    def event(self) -> FrameError:
        detail = self.detail or f"{self.size} bytes outside any frame"
        return FrameError(self.reason, detail, self.offset, self.size, bytes(self.sample))


class FrameDecoder:
    """Streaming decoder for one connection; holds at most one frame's bytes between feeds."""

    def __init__(self, *, max_segment: int = MAX_SEGMENT, garbage_report_bytes: int = 4096) -> None:
        if not 0 <= max_segment <= 9999:
            raise ValueError("max_segment must fit the 4-digit length field")
        self.max_segment = max_segment
        self.max_frame = max_segment + OVERHEAD
        self.garbage_report_bytes = max(1, garbage_report_bytes)
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._run: _Run | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than one maximum frame)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | FrameError]:
        """Decode what ``data`` completes; incomplete tails wait for the next call."""
        self._buf += data
        out: list[Frame | FrameError] = []
        pos = 0
        while True:
            nxt = self._step(pos, out)
            if nxt is None:
                break
            pos = nxt
        if pos:
            del self._buf[:pos]
            self._base += pos
        return out

    def close(self) -> list[FrameError]:
        """End of stream: report a frame cut short and any pending dropped bytes, then reset."""
        out: list[Frame | FrameError] = []
        buf = self._buf
        if buf.startswith(HEADER) and len(buf) > len(HEADER):
            self._flush_run(out)
            out.append(
                FrameError(
                    FrameErrorReason.TRUNCATED,
                    f"stream ended {len(buf)} bytes into a frame",
                    self._base,
                    len(buf),
                    bytes(buf[:SAMPLE_BYTES]),
                )
            )
        elif buf:
            self._drop(0, len(buf), out)
        self._flush_run(out)
        self._base += len(buf)
        buf.clear()
        return [e for e in out if isinstance(e, FrameError)]

    # -- internals -------------------------------------------------------------------------------

    def _step(self, pos: int, out: list[Frame | FrameError]) -> int | None:
        """Handle the bytes from ``pos``: return where to continue, or None to wait for more."""
        buf = self._buf
        n = len(buf)
        if pos >= n:
            return None
        i = buf.find(HEADER, pos)
        if i < 0:
            end = n - 1 if buf[n - 1] == _HASH else n  # a lone '#' may start the next header
            if end > pos:
                self._drop(pos, end, out)
            return end if end > pos else None
        # In a run of '#', the header is the last two before the first other byte.
        while i + 2 < n and buf[i + 2] == _HASH:
            i += 1
        if i > pos:
            self._drop(pos, i, out)
        if i + 2 >= n:
            return i if i > pos else None
        self._flush_run(out)
        decided = self._candidate(i, out)
        if decided is None:  # wait at the header: what was dropped before it is accounted for
            return i if i > pos else None
        return decided

    def _candidate(self, s: int, out: list[Frame | FrameError]) -> int | None:
        """A frame starts at ``s`` (``##`` + one non-'#' byte). Decide it or wait."""
        buf = self._buf
        n = len(buf)
        for k in range(s + 2, min(s + 6, n)):
            if not 0x30 <= buf[k] <= 0x39:
                field = bytes(buf[s + 2 : k + 1])  # up to the culprit: same for any chunking
                return self._skip(
                    s,
                    s + 2,
                    FrameErrorReason.BAD_LENGTH,
                    f"length field {field!r}… is not 4 decimal digits",
                    out,
                )
        if n < s + 6:
            return None
        length = int(buf[s + 2 : s + 6])
        if length > self.max_segment:
            return self._skip(
                s,
                s + 6,
                FrameErrorReason.TOO_LONG,
                f"declared data segment of {length} bytes exceeds {self.max_segment}",
                out,
            )
        seg = s + 6
        crc_at = seg + length
        term = crc_at + 4
        end = term + 2
        # A CR LF before the CRC's end means the frame ended early (or was cut by a new one).
        p = buf.find(TERMINATOR, seg, min(n, term + 1))
        if p >= 0:
            q = buf.find(HEADER, s + 2, p)
            if q >= 0:
                return self._cut(s, q, f"new ## header {q - s} bytes into the frame", out)
            actual = p - 4 - seg
            return self._emit(
                s,
                p + 2,
                FrameErrorReason.BAD_LENGTH,
                f"length field says {length} bytes but the frame ends after {max(actual, 0)}",
                out,
            )
        if n < end:
            return None
        if buf[term:end] == TERMINATOR:
            return self._complete(s, seg, crc_at, end, out)
        # No CR LF where the length says: the length is too small, or the tail is damaged.
        window = s + self.max_frame
        p = buf.find(TERMINATOR, term, min(n, window))
        q = buf.find(HEADER, s + 2, min(n, window))
        if q >= 0 and (p < 0 or q < p):
            if q < end:  # the next frame began inside this one: this one was cut short
                return self._cut(s, q, f"new ## header {q - s} bytes into the frame", out)
            return self._cut(
                s,
                q,
                f"no CR LF after byte {end - s}, next ## header {q - s} bytes in",
                out,
                FrameErrorReason.BAD_TERMINATOR,
            )
        if p >= 0:
            lenient = self._char_counted(s, seg, p, length, out)
            if lenient is not None:
                return lenient
            return self._emit(
                s,
                p + 2,
                FrameErrorReason.BAD_LENGTH,
                f"length field says {length} bytes but the frame ends after {p - 4 - seg}",
                out,
            )
        if n >= window:
            return self._skip(
                s,
                window,
                FrameErrorReason.BAD_TERMINATOR,
                f"no CR LF within {self.max_frame} bytes of the header",
                out,
            )
        return None

    def _complete(
        self, s: int, seg: int, crc_at: int, end: int, out: list[Frame | FrameError]
    ) -> int:
        buf = self._buf
        field = bytes(buf[crc_at : crc_at + 4])
        if not all(b in _HEX for b in field):
            return self._cut_inner(
                s, end, FrameErrorReason.BAD_CRC, f"CRC field {field!r} is not 4 hex digits", out
            )
        received = int(field, 16)
        computed = crc16(memoryview(buf)[seg:crc_at])
        if received != computed:
            return self._cut_inner(
                s,
                end,
                FrameErrorReason.BAD_CRC,
                f"CRC {field.decode()} received, {format_crc(computed)} "
                "computed over the data segment",
                out,
            )
        try:
            segment = buf[seg:crc_at].decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._emit(
                s,
                end,
                FrameErrorReason.BAD_ENCODING,
                f"data segment is not UTF-8 at byte {exc.start}",
                out,
            )
        out.append(Frame(segment, received, self._base + s, end - s))
        return end

    def _char_counted(
        self, s: int, seg: int, p: int, length: int, out: list[Frame | FrameError]
    ) -> int | None:
        """Accept a frame whose length counts characters, not bytes, if its CRC is right."""
        buf = self._buf
        crc_at = p - 4
        if crc_at <= seg:
            return None
        try:
            segment = buf[seg:crc_at].decode("utf-8")
        except UnicodeDecodeError:
            return None
        field = bytes(buf[crc_at:p])
        if len(segment) != length or not all(b in _HEX for b in field):
            return None
        if int(field, 16) != crc16(memoryview(buf)[seg:crc_at]):
            return None
        out.append(Frame(segment, int(field, 16), self._base + s, p + 2 - s))
        return p + 2

    def _emit(
        self, s: int, end: int, reason: FrameErrorReason, detail: str, out: list[Frame | FrameError]
    ) -> int:
        """Report ``buf[s:end]`` as one error and continue after it."""
        out.append(
            FrameError(
                reason,
                detail,
                self._base + s,
                end - s,
                bytes(self._buf[s : min(end, s + SAMPLE_BYTES)]),
            )
        )
        return end

    def _cut(
        self,
        s: int,
        q: int,
        detail: str,
        out: list[Frame | FrameError],
        reason: FrameErrorReason = FrameErrorReason.TRUNCATED,
    ) -> int:
        return self._emit(s, q, reason, detail, out)

    def _cut_inner(
        self, s: int, end: int, reason: FrameErrorReason, detail: str, out: list[Frame | FrameError]
    ) -> int:
        """A rejected frame ends at ``end`` unless it holds another ``##``: resync there."""
        q = self._buf.find(HEADER, s + 2, end)
        return self._emit(s, q if q >= 0 else end, reason, detail, out)

    def _skip(
        self,
        s: int,
        upto: int,
        reason: FrameErrorReason,
        detail: str,
        out: list[Frame | FrameError],
    ) -> int:
        """The frame's extent is unknown: drop to the next ``##``, counting it all as this error."""
        self._run = _Run(reason, detail, self._base + s, self.max_frame)
        self._run.add(self._buf[s:upto])
        return upto

    def _drop(self, start: int, end: int, out: list[Frame | FrameError]) -> None:
        """Account dropped bytes to the current run, starting a garbage run when needed."""
        buf = self._buf
        while start < end:
            run = self._run
            if run is None:
                run = self._run = _Run(
                    FrameErrorReason.GARBAGE, "", self._base + start, self.garbage_report_bytes
                )
            take = min(end - start, run.limit - run.size)
            run.add(buf[start : start + take])
            start += take
            if run.size >= run.limit:
                self._flush_run(out)

    def _flush_run(self, out: list[Frame | FrameError]) -> None:
        if self._run is not None:
            if self._run.size:
                out.append(self._run.event())
            self._run = None


def encode_frame(segment: str) -> bytes:
    """Wrap a data segment in header, byte length, CRC and CR LF."""
    data = segment.encode("utf-8")
    if len(data) > MAX_SEGMENT:
        raise ValueError(f"data segment of {len(data)} bytes exceeds {MAX_SEGMENT}")
    if TERMINATOR in data:
        raise ValueError("a data segment cannot contain CR LF")
    return b"%s%04d%s%s%s" % (HEADER, len(data), data, format_crc(crc16(data)).encode(), TERMINATOR)


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one complete frame; raise ValueError naming the reason otherwise."""
    decoder = FrameDecoder()
    events = [*decoder.feed(data), *decoder.close()]
    if len(events) == 1 and isinstance(events[0], Frame):
        return events[0]
    errors = [e for e in events if isinstance(e, FrameError)]
    if errors:
        raise ValueError(f"{errors[0].reason}: {errors[0].detail}")
    raise ValueError(f"expected one frame, got {len(events)}")
