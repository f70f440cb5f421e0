"""HJ 212-2017 collector: a TCP server for monitoring stations, replying only once data is durable.

Lifecycle (an async context manager, like :class:`collectors.mqtt.MqttCollector`): ``__aenter__``
binds the listening socket (``.port`` is then the bound port; port 0 picks a free one) and starts
the idle sweeper; connections are served on the event loop; ``__aexit__`` stops accepting, waits
(up to 10 s) for readings still on their way to the spool so their replies go out, then closes
every connection.

Per connection: a :class:`~protocols.hj212.FrameDecoder` (any chunking; garbage, bad CRC and bad
lengths cost only themselves and the connection stays open), then the data segment, then the
station: its MN must be registered (``lookup``) and its PW must pass ``check_password`` (cached per
connection and MN, so a station's packets are not re-hashed one by one). Wrong PWs are limited
per peer and per MN (:class:`~collectors.hj212.guard.AuthGuard`: a blocked peer's packets are
refused unchecked and its connection closed). One peer (the same key: an IPv4 address or an IPv6
/64) holds at most ``max_connections_per_peer`` connections at once; more are closed at accept.
Real-time data (2011) is
stored as readings; minute, hourly and daily data (2051, 2061, 2031) are acknowledged but not
stored (docs/hj212.md: the platform rolls its own aggregates up from the real-time data). When the
Flag asks for a reply, the reply is written only after the spool says the readings are durable,
and replies leave a connection in the order their packets arrived.

Why an :class:`asyncio.Protocol` and not ``asyncio.start_server``: a station connection carries a
few hundred bytes at a time and every packet is handled synchronously (parse, validate, one spool
append), so a stream reader would add a task per connection, a coroutine switch per read and a
second buffer in front of the decoder's own, for nothing. With a protocol, one ``data_received``
callback does all the work; replies are written from the spool's durability callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone

from collectors.hj212.guard import PEER, AuthGuard, AuthLimits, Block, Refusal, peer_key
from collectors.hj212.mapping import CodeTables, realtime_reading
from collectors.metrics import Metrics
from collectors.pipeline import Ingestor
from collectors.spool import SpoolFull
from protocols.directory import DeviceInfo
from protocols.hj212 import (
    CHINA_TZ,
    CodeMap,
    Command,
    Frame,
    FrameDecoder,
    FrameError,
    Packet,
    SegmentError,
    load_code_map,
    parse_segment,
    reply_for,
)
from protocols.profiles import Profile, load_profiles
from protocols.reading import Reason, Rejection

log = logging.getLogger(__name__)

PROTOCOL = "hj212"
REALTIME = Command.REALTIME_DATA.value
# Acknowledged, counted, not stored: see the module docstring and docs/hj212.md.
AGGREGATES = frozenset(
    {Command.MINUTE_DATA.value, Command.HOURLY_DATA.value, Command.DAILY_DATA.value}
)
_ROOM_BYTES = 4096  # what a few readings need in the spool before a paused connection resumes
_LOG_EVERY_S = 60.0
_MAX_UNATTRIBUTED = 64  # errors held per connection until a station authenticates on it
_MAX_AUTH_CACHE = 64  # MNs remembered per connection (a data logger may relay several stations)
_TRUST_REFRESH_S = 60.0  # a connection re-confirms its stations' trust (AuthGuard) this often


@dataclass(frozen=True)
class Station:
    """A registered station: who it is, its model's profile, and how to check its password.

    ``check_password`` is given the PW as sent and must be cheap and non-blocking (the registry's
    salted SHA-256 compare is): it runs on the event loop, once per connection, MN and PW.
    """

    device: DeviceInfo
    profile_id: str | None
    check_password: Callable[[str], bool]

    @classmethod
    def with_password(
        cls, device: DeviceInfo, password: str, profile_id: str | None = None
    ) -> Station:
        """A station checked against a clear password (tests, demo, benchmarks)."""
        expected = password.encode()
        return cls(device, profile_id, lambda pw: hmac.compare_digest(pw.encode(), expected))


StationLookup = Callable[[str], Station | None]
"""MN -> the registered station, or None. Called for every packet: make it a dict lookup."""


@dataclass
class Hj212Stats:
    """Plain counters (cheap on the hot path); ``errors`` is keyed by a stable reason label."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0  # over max_connections
    connections_per_peer_refused: int = 0  # over max_connections_per_peer from one peer
    connections_blocked: int = 0  # refused at accept: the peer is blocked after wrong PWs
    closed_idle: int = 0
    closed_abuse: int = 0  # too many consecutive errors
    bytes_received: int = 0
    packets: int = 0  # packets from authenticated stations, handled
    commands: Tally[str] = field(default_factory=Tally)  # CN -> packets
    readings_accepted: int = 0  # spooled
    readings_rejected: int = 0  # refused by validation (counted by reason in the ingest metrics)
    aggregates_ignored: Tally[str] = field(default_factory=Tally)  # CN -> packets not stored
    unmapped_codes: Tally[str] = field(default_factory=Tally)  # parameter code -> values dropped
    replies_sent: int = 0
    replies_dropped: int = 0  # the spool failed to make the data durable: no reply, station resends
    # frame errors (FrameErrorReason), segment errors (SegmentErrorReason), unknown_device,
    # bad_password, auth_blocked (refused unchecked: peer or MN blocked), spool_error, lookup_error
    errors: Tally[str] = field(default_factory=Tally)
    auth_blocks: Tally[str] = field(default_factory=Tally)  # "peer" / "station" -> blocks started
    auth_blocked: dict[str, int] = field(default_factory=dict)  # scope -> blocked now (sweeper)
    auth_tracked: int = 0  # AuthGuard entries (peers, MNs, trusted peers), as of the last sweep
    auth_evicted: int = 0  # live AuthGuard entries dropped because a table was full
    packets_per_s: float = 0.0  # over the last sweep interval


class Hj212Collector:
    """Serves HJ 212-2017 stations on ``host:port``; see the module docstring for the lifecycle."""

    def __init__(
        self,
        ingestor: Ingestor,
        lookup: StationLookup,
        *,
        host: str,
        port: int,
        code_map: CodeMap | None = None,
        profiles: Mapping[str, Profile] | None = None,
        max_connections: int = 5000,
        max_connections_per_peer: int = 64,
        idle_timeout_s: float | None = 600.0,
        max_consecutive_errors: int = 20,
        auth: AuthLimits | None = None,
        tz: timezone = CHINA_TZ,
        metrics: Metrics | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_connections_per_peer < 1:
            raise ValueError("max_connections_per_peer must be at least 1")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive (or None for no timeout)")
        self.ingestor = ingestor
        self.lookup = lookup
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.idle_timeout_s = idle_timeout_s
        self.max_consecutive_errors = max_consecutive_errors
        self.tz = tz
        self.metrics = metrics if metrics is not None else ingestor.metrics
        self.stats = Hj212Stats()
        self.guard = AuthGuard(auth)
        self.tables = CodeTables(
            code_map if code_map is not None else load_code_map(),
            profiles if profiles is not None else load_profiles(),
            ingestor.validator.catalog,
        )
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._per_peer: Tally[str] = Tally()  # peer key (guard.peer_key) -> connections open
        self._pending: set[asyncio.Future[None]] = set()
        self._closing = False
        self._last_logged: dict[tuple[str, ...], float] = {}
        self.metrics.attach(PROTOCOL, self.stats)

    @property
    def errors(self) -> Tally[str]:
        """Errors by reason label (a view of ``stats.errors``)."""
        return self.stats.errors

    async def __aenter__(self) -> Hj212Collector:
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=1024, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep(), name="hj212-sweeper")
        log.info("HJ 212 collector listening on %s:%s", self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()  # stop accepting; open connections are closed below
        if self._pending:  # let spooled readings become durable, so their replies go out
            await asyncio.wait(set(self._pending), timeout=10)
        for conn in list(self._connections):
            conn.close()
        for _ in range(100):  # connection_lost arrives on a later loop iteration
            if not self._connections:
                break
            await asyncio.sleep(0.02)
        for conn in list(self._connections):  # a peer that never read its replies
            conn.abort()
        await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- housekeeping -------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Close idle connections and keep ``packets_per_s``: one timer for all connections."""
        loop = asyncio.get_running_loop()
        idle = self.idle_timeout_s
        interval = 5.0 if idle is None else min(max(idle / 4, 0.05), 5.0)
        last_t, last_packets = loop.time(), self.stats.packets
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            packets = self.stats.packets
            self.stats.packets_per_s = (packets - last_packets) / max(now - last_t, 1e-9)
            last_t, last_packets = now, packets
            self._sweep_guard(now)
            if idle is None:
                continue
            for conn in [c for c in self._connections if now - c.last_rx > idle]:
                if conn.backlog or conn.replies:
                    continue  # waiting on the spool: not the station's silence
                self.stats.closed_idle += 1
                log.info("HJ 212 connection %s idle for %.0f s: closing", conn.peer, idle)
                conn.close()

    def _sweep_guard(self, now: float) -> None:
        guard = self.guard
        guard.purge(now)
        stats = self.stats
        stats.auth_blocked = guard.blocked(now)
        stats.auth_tracked = guard.tracked
        if guard.evicted > stats.auth_evicted:
            self._log_limited(
                ("auth_evicted",),
                "HJ 212: wrong-password tables full (hj212.auth_max_tracked=%d): %d live entries "
                "forgotten so far (many peers failing at once?)",
                guard.limits.max_tracked,
                guard.evicted,
            )
            stats.auth_evicted = guard.evicted

    def _blocked(self, block: Block, peer: str, mn: str) -> None:
        """Count and log a block that just started (rate-limited per peer or MN)."""
        self.stats.auth_blocks[block.scope] += 1
        if block.scope == PEER:
            self._log_limited(
                ("auth_block", block.key),
                "HJ 212 peer %s: %d wrong PWs within %.0f s (last for MN %s): its packets are "
                "refused unchecked for %.0f s (block %d)",
                peer,
                block.failures,
                self.guard.limits.window_s,
                mn,
                block.duration_s,
                block.level,
            )
        else:
            self._log_limited(
                ("auth_lock", block.key),
                "HJ 212 MN %s: %d wrong PWs within %.0f s (last from %s): peers that have not "
                "authenticated it are refused unchecked for %.0f s (block %d)",
                mn,
                block.failures,
                self.guard.limits.window_s,
                peer,
                block.duration_s,
                block.level,
            )

    def _log_limited(self, key: tuple[str, ...], msg: str, *args: object) -> None:
        now = asyncio.get_running_loop().time()
        last = self._last_logged.get(key)
        if last is not None and now - last < _LOG_EVERY_S:
            return
        if len(self._last_logged) > 10_000:
            self._last_logged.clear()
        self._last_logged[key] = now
        log.warning(msg, *args)


class _Connection(asyncio.Protocol):
    """One station connection: decoder, authentication cache, ordered replies, back-pressure."""

    def __init__(self, collector: Hj212Collector) -> None:
        self.c = collector
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.key = "?"  # the unit wrong PWs are limited by (guard.peer_key)
        self.decoder = FrameDecoder()
        self.last_rx = 0.0
        self.device: DeviceInfo | None = None  # the last station authenticated here
        # MN -> (station, PW, accepted, when the guard last heard of it)
        self.auth: dict[str, tuple[Station, str, bool, float]] = {}
        self.errors_in_row = 0
        self.unattributed: list[str] = []  # errors before any station authenticated here
        self.backlog: deque[Frame | FrameError] = deque()  # waiting for spool room
        self.replies: deque[tuple[asyncio.Future[None] | None, bytes]] = deque()
        self.waiter: asyncio.Task[None] | None = None
        self.paused: set[str] = set()  # why reading is paused: "spool", "write"
        self.eof = False  # the station half-closed: close once its replies are out
        self.closed = False

    # -- transport callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        c = self.c
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.key = peer_key(str(peer[0]) if isinstance(peer, tuple) else str(peer))
        self.last_rx = now = asyncio.get_running_loop().time()
        if c._closing or len(c._connections) >= c.max_connections:
            c.stats.connections_refused += 1
            c._log_limited(
                ("refused",),
                "HJ 212: refusing %s (%d connections open)",
                self.peer,
                len(c._connections),
            )
            self.closed = True
            transport.abort()
            return
        refusal = c.guard.admits(self.key, now)
        if refusal is not None:
            c.stats.connections_blocked += 1
            c._log_limited(
                ("auth_refused", self.key),
                "HJ 212: refusing connections from %s: blocked after wrong PWs (%.0f s left)",
                self.peer,
                refusal.remaining_s,
            )
            self.closed = True
            transport.abort()
            return
        if c._per_peer[self.key] >= c.max_connections_per_peer:
            c.stats.connections_per_peer_refused += 1
            c._log_limited(
                ("per_peer_refused", self.key),
                "HJ 212: refusing %s: %d connections already open from %s "
                "(hj212.max_connections_per_peer)",
                self.peer,
                c._per_peer[self.key],
                self.key,
            )
            self.closed = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # notice stations that vanished without a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        c._connections.add(self)
        c._per_peer[self.key] += 1
        c.stats.connections_total += 1
        c.stats.connections_open = len(c._connections)

    def data_received(self, data: bytes) -> None:
        c = self.c
        self.last_rx = asyncio.get_running_loop().time()
        c.stats.bytes_received += len(data)
        events = self.decoder.feed(data)
        if not events or self.closed:
            return
        if self.backlog:  # keep arrival order behind packets waiting for spool room
            self.backlog.extend(events)
        else:
            self._run(events)

    def eof_received(self) -> bool:
        self.eof = True
        # Keep the transport open for replies still waiting on the spool, then close.
        return bool(self.replies or self.backlog)

    def connection_lost(self, exc: Exception | None) -> None:
        c = self.c
        was_open = self in c._connections
        self.closed = True
        c._connections.discard(self)
        c.stats.connections_open = len(c._connections)
        if was_open:
            left = c._per_peer[self.key] - 1
            if left > 0:
                c._per_peer[self.key] = left
            else:
                del c._per_peer[self.key]
            for error in self.decoder.close():  # a frame cut short by the disconnect
                self._error(error.reason.value, error.detail, strike=False)
            self._count_unattributed(self.unattributed)
            self.unattributed = []
        if self.waiter is not None:
            self.waiter.cancel()
        self.backlog.clear()
        self.replies.clear()

    def pause_writing(self) -> None:  # the station does not read its replies: stop reading too
        self._pause("write")

    def resume_writing(self) -> None:
        self._resume("write")

    # -- control --------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _finish_if_done(self) -> None:
        if self.eof and not self.replies and not self.backlog:
            self.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused.add(why)

    def _resume(self, why: str) -> None:
        self.paused.discard(why)
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- packets --------------------------------------------------------------------------

    def _run(self, events: list[Frame | FrameError]) -> None:
        for i, event in enumerate(events):
            if self.closed:
                return
            try:
                if isinstance(event, Frame):
                    self._frame(event)
                else:
                    self._error(event.reason.value, event.detail)
            except SpoolFull:
                self.backlog.extend(events[i:])
                self._pause("spool")
                if self.waiter is None:
                    self.c._log_limited(
                        ("spool_full",),
                        "spool full: HJ 212 stations are held (no replies) until it drains",
                    )
                    self.waiter = asyncio.get_running_loop().create_task(self._wait_for_room())
                return

    async def _wait_for_room(self) -> None:
        spool = self.c.ingestor.spool
        try:
            while self.backlog and not self.closed:
                if not await spool.wait_for_room(min(_ROOM_BYTES, spool.max_bytes), timeout=1.0):
                    await asyncio.sleep(0.05)
                if self.closed:
                    return
                events = list(self.backlog)
                self.backlog.clear()
                self._run(events)  # may put them back if the spool is still full
        finally:
            self.waiter = None
        if not self.closed:
            self._resume("spool")
            self._finish_if_done()

    def _frame(self, frame: Frame) -> None:
        """One checked frame. Side effects come after the spool append, which may raise
        :class:`SpoolFull`: the frame is then handled again, from the start, once there is room."""
        c = self.c
        try:
            packet = parse_segment(frame.segment, c.tz)
        except SegmentError as exc:
            self._error(exc.reason.value, exc.message)
            return
        station = self._station(packet)
        if station is None:
            return
        if self.device is None and self.unattributed:
            self._attribute(station.device)
        self.device = station.device
        durable: asyncio.Future[None] | None = None
        cn = packet.cn
        if cn == REALTIME:
            try:
                durable = self._store(packet, station)
            except SpoolFull:
                raise
            except Exception as exc:  # the spool cannot write: no reply, the station resends
                c.stats.errors["spool_error"] += 1
                c._log_limited(("spool_error",), "HJ 212: cannot spool a reading: %s", exc)
                return
        elif cn in AGGREGATES:
            if not c.stats.aggregates_ignored[cn]:
                log.info(
                    "HJ 212 station %s (MN %s) sends CN %s: acknowledged, not stored "
                    "(only real-time data 2011 is stored; see docs/hj212.md)",
                    station.device.device,
                    packet.mn,
                    cn,
                )
            c.stats.aggregates_ignored[cn] += 1
        self.errors_in_row = 0
        c.stats.packets += 1
        c.stats.commands[cn] += 1
        reply = reply_for(packet)
        if reply is not None:
            self._reply(durable, reply)

    def _station(self, packet: Packet) -> Station | None:
        """The registered station whose PW this packet carries, or None (counted)."""
        c = self.c
        mn = packet.mn
        now = self.last_rx
        refusal = c.guard.refusal(self.key, mn, now)
        if refusal is not None:
            self._refuse_blocked(mn, refusal)
            return None
        try:
            station = c.lookup(mn)
        except Exception:  # the registry's problem, not the station's: no strike, no reply
            c.stats.errors["lookup_error"] += 1
            log.exception("HJ 212: station lookup failed for MN %s", mn)
            return None
        if station is None:
            c.stats.errors[Reason.UNKNOWN_DEVICE.value] += 1
            c.ingestor.count_rejection(
                PROTOCOL,
                mn,
                Rejection(
                    Reason.UNKNOWN_DEVICE,
                    f"HJ 212 MN {mn!r} from {self.peer} is not registered (no device has it "
                    "as connection.mn)",
                ),
            )
            self._strike()
            return None
        cached = self.auth.get(mn)
        if cached is not None and cached[0] is station and cached[1] == packet.pw:
            accepted = cached[2]
            if accepted and now - cached[3] > _TRUST_REFRESH_S:  # a long-lived connection
                c.guard.success(self.key, mn, now)
                self.auth[mn] = (station, packet.pw, True, now)
        else:  # first packet, a new PW, or the registry replaced the station (password rotated)
            accepted = bool(station.check_password(packet.pw))
            if len(self.auth) >= _MAX_AUTH_CACHE:
                self.auth.clear()
            self.auth[mn] = (station, packet.pw, accepted, now)
            if accepted:
                c.guard.success(self.key, mn, now)
            else:
                for block in c.guard.failure(self.key, mn, packet.pw, now):
                    c._blocked(block, self.peer, mn)
        if not accepted:
            c.stats.errors["bad_password"] += 1
            c.ingestor.count_rejection(
                PROTOCOL,
                station.device.device,
                Rejection(
                    Reason.BAD_CREDENTIALS,
                    f"wrong HJ 212 password (PW) for MN {mn} from {self.peer}",
                ),
            )
            if c.guard.refusal(self.key, mn, now) is not None:  # this failure started a block
                self.closed = True  # handle nothing more that arrived with it
                self.close()
            else:
                self._strike()
            return None
        return station

    def _refuse_blocked(self, mn: str, refusal: Refusal) -> None:
        """A packet refused without a password check: counted, and the connection closed (a
        blocked peer pays a new TCP connection per try, each refused at accept while it lasts)."""
        c = self.c
        c.stats.errors[Reason.AUTH_BLOCKED.value] += 1
        try:
            station = c.lookup(mn)
        except Exception:
            station = None
        what = (
            f"peer {refusal.key} is blocked"
            if refusal.scope == PEER
            else f"MN {mn} is locked against peers it has not authenticated from"
        )
        c.ingestor.count_rejection(
            PROTOCOL,
            station.device.device if station is not None else mn,
            Rejection(
                Reason.AUTH_BLOCKED,
                f"HJ 212 packet for MN {mn} from {self.peer} refused unchecked: {what} after "
                f"repeated wrong PWs ({refusal.remaining_s:.0f} s left; docs/hj212.md)",
            ),
        )
        self.closed = True  # handle nothing more that arrived with it
        self.close()

    def _store(self, packet: Packet, station: Station) -> asyncio.Future[None] | None:
        """Spool a real-time upload; returns its durability future (None: nothing spooled)."""
        c = self.c
        device = station.device
        mapped = realtime_reading(packet, c.tables.table(station.profile_id, device.kind))
        if mapped.raw is None:
            if mapped.unmapped:
                rejection = Rejection(
                    Reason.UNKNOWN_QUANTITY,
                    f"no parameter of MN {packet.mn}'s packet maps to a {device.kind} quantity: "
                    f"{', '.join(mapped.unmapped[:10])} (codes: profile hj212.codes or "
                    "protocols/data/hj212_codes.yaml)",
                )
            else:
                rejection = Rejection(
                    Reason.NO_FIELDS, f"MN {packet.mn}'s real-time packet carries no value"
                )
            c.ingestor.count_rejection(PROTOCOL, device.device, rejection)
            c.stats.readings_rejected += 1
            self._count_unmapped(device, mapped.unmapped)
            return None
        outcome = c.ingestor.submit(PROTOCOL, device, [mapped.raw])
        c.stats.readings_accepted += outcome.accepted
        c.stats.readings_rejected += len(outcome.rejected)
        if mapped.unmapped:
            self._count_unmapped(device, mapped.unmapped)
        if outcome.durable is not None and not outcome.durable.done():
            c._pending.add(outcome.durable)
            outcome.durable.add_done_callback(c._pending.discard)
        return outcome.durable

    def _count_unmapped(self, device: DeviceInfo, codes: list[str]) -> None:
        c = self.c
        for code in codes:
            c.stats.unmapped_codes[code] += 1
            c._log_limited(
                ("unmapped", device.device, code),
                "HJ 212 station %s sends code %s, which maps to no %s quantity: its values are "
                "dropped (map it in the profile's hj212.codes or in hj212_codes.yaml)",
                device.device,
                code,
                device.kind,
            )

    def _reply(self, durable: asyncio.Future[None] | None, reply: bytes) -> None:
        """Write ``reply`` once ``durable`` resolves, after every earlier reply on this link."""
        if not self.replies and (durable is None or durable.done()):
            if durable is not None and (durable.cancelled() or durable.exception() is not None):
                self._drop_reply(durable)
                return
            self._write(reply)
            return
        self.replies.append((durable, reply))
        if durable is not None and not durable.done():
            durable.add_done_callback(self._flush_replies)

    def _flush_replies(self, _done: object = None) -> None:
        queue = self.replies
        while queue:
            durable, reply = queue[0]
            if durable is not None and not durable.done():
                return
            queue.popleft()
            if durable is not None and (durable.cancelled() or durable.exception() is not None):
                self._drop_reply(durable)
                continue
            self._write(reply)
        self._finish_if_done()

    def _drop_reply(self, durable: asyncio.Future[None]) -> None:
        self.c.stats.replies_dropped += 1
        why = "cancelled" if durable.cancelled() else durable.exception()
        self.c._log_limited(
            ("not_durable",), "HJ 212: spool did not make data durable (%s): no reply sent", why
        )

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        transport.write(data)
        self.c.stats.replies_sent += 1

    # -- errors ---------------------------------------------------------------------------

    def _error(self, label: str, detail: str, *, strike: bool = True) -> None:
        """A frame or segment refused: counted by label, and as ``malformed`` input."""
        c = self.c
        c.stats.errors[label] += 1
        if self.device is not None:
            c.ingestor.count_rejection(
                PROTOCOL, self.device.device, Rejection(Reason.MALFORMED, f"{label}: {detail}")
            )
        elif len(self.unattributed) < _MAX_UNATTRIBUTED:
            # Nobody has authenticated here yet: a connection is almost always one station, so
            # the first that does gets these (``weijian device check`` then shows them).
            self.unattributed.append(f"{label}: {detail}")
        else:
            self._count_unattributed([f"{label}: {detail}"])
        if strike:
            self._strike()

    def _attribute(self, device: DeviceInfo) -> None:
        pending, self.unattributed = self.unattributed, []
        for detail in pending:
            self.c.ingestor.count_rejection(
                PROTOCOL, device.device, Rejection(Reason.MALFORMED, detail)
            )

    def _count_unattributed(self, details: list[str]) -> None:
        """Input no station owned: the platform-wide count and a log line naming the peer."""
        c = self.c
        for detail in details:
            c.ingestor.metrics.ingest.rejected[(PROTOCOL, Reason.MALFORMED.value)] += 1
            label = detail.partition(":")[0]
            c._log_limited(
                ("peer", self.peer.rsplit(":", 1)[0], label),
                "HJ 212 input from %s refused (%s)",
                self.peer,
                detail,
            )

    def _strike(self) -> None:
        self.errors_in_row += 1
        if self.errors_in_row > self.c.max_consecutive_errors and not self.closed:
            self.c.stats.closed_abuse += 1
            self.c._log_limited(
                ("abuse", self.peer.rsplit(":", 1)[0]),
                "HJ 212 connection %s: %d errors in a row, closing",
                self.peer,
                self.errors_in_row,
            )
            self.closed = True  # handle nothing more that arrived with it
            self.close()
