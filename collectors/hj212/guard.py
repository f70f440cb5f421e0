"""The HJ 212 wrong-password limiter: a station's 6-character PW must not be guessable at line rate.

Sans-IO and single-threaded (the collector calls it from the event loop): every method takes
``now`` (a monotonic clock, the loop's time), so it can be driven and tested without sockets.

Three tables, each bounded by ``AuthLimits.max_tracked`` entries (least recently touched evicted
first) and purged of expired entries by the collector's sweeper:

* **peers** (an IPv4 address, or an IPv6 /64, since one host has a whole /64): ``max_failures``
  *distinct* wrong (MN, PW) pairs within ``window_s`` block the peer for ``block_s``, doubling on
  each further block up to ``block_max_s``. While blocked, its packets are refused without a
  password check and its connections are closed (new ones refused at accept).
* **stations** (the claimed MN): ``station_max_failures`` distinct wrong PWs for one MN within
  ``window_s``, from any peers, lock the MN the same way, against peers that have not proven it:
  a guessing attack spread over many addresses is slowed too.
* **trust** (peer, MN): the peer authenticated that MN within ``trust_s``. A trusted pair is
  exempt from both blocks, so a station keeps working from its usual address while others guess
  its PW, and so do honest stations behind the NAT of a peer that is blocked. Trust is only ever
  earned by a correct PW, and one wrong PW for the pair revokes it (an attacker sharing the
  station's address gets no more guesses than any other peer).

What counts: a wrong PW that was really checked. The same wrong (MN, PW) again within the window
counts once (it reveals nothing new): a station left with a stale PW after a rotation is refused
but never blocked, and neither are its neighbours. A correct PW clears the peer's failures for that
MN only: proving a station one knows must not reset the count for guesses at another. The back-off
level is forgotten ``block_max_s`` after a block ends with no further block. Failures for an MN
are never cleared by its correct PW (the real station's uploads would otherwise reset the count
of a distributed attack on it); they age out of the window.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field

PEER = "peer"
STATION = "station"
MAX_TRUSTED_PER_PEER = 64  # MNs remembered per peer (a data logger may relay several stations)
IPV6_PREFIX = 64
_MAX_LEVEL = 32  # back-off doublings counted (the cap is reached long before)


@dataclass(frozen=True)
class AuthLimits:
    """Settings of :class:`AuthGuard` (``hj212.auth_*`` in weijian/config.py)."""

    max_failures: int = 5
    window_s: float = 600.0
    block_s: float = 60.0
    block_max_s: float = 3600.0
    station_max_failures: int = 10
    trust_s: float = 7 * 86400.0
    max_tracked: int = 10_000

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.station_max_failures < 1:
            raise ValueError("max_failures and station_max_failures must be at least 1")
        if min(self.window_s, self.block_s, self.trust_s) <= 0:
            raise ValueError("window_s, block_s and trust_s must be positive")
        if self.block_max_s < self.block_s:
            raise ValueError("block_max_s must be at least block_s")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")

    def backoff(self, level: int) -> float:
        """The length of block number ``level`` (1, 2, ...): doubling from block_s, capped."""
        return min(self.block_s * 2.0 ** (min(level, _MAX_LEVEL) - 1), self.block_max_s)


@dataclass(frozen=True)
class Refusal:
    """Why a packet (or a connection) is refused unchecked: which scope is blocked, how long."""

    scope: str  # PEER or STATION
    key: str  # the peer key or the MN
    remaining_s: float


@dataclass(frozen=True)
class Block:
    """A block that just started."""

    scope: str
    key: str
    level: int  # 1 for the first block, 2 after the next, ...
    duration_s: float
    failures: int  # the distinct wrong PWs that triggered it


@dataclass(slots=True)
class _Track:
    failures: deque[tuple[float, str, bytes]] = field(default_factory=deque)  # (t, MN, digest)
    blocked_until: float = 0.0
    level: int = 0
    last_failure: float = 0.0

    def expires_at(self, limits: AuthLimits) -> float:
        remembered = self.blocked_until + limits.block_max_s if self.level else 0.0
        return max(self.last_failure + limits.window_s, remembered)


def peer_key(host: str) -> str:
    """The unit a peer is limited by: its IPv4 address, or its IPv6 /64 (an IPv4-mapped IPv6
    address counts as the IPv4 address). Anything else (a Unix socket) is taken as is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class AuthGuard:
    """Counts wrong PWs per peer and per MN, blocks with back-off, remembers proven pairs."""

    def __init__(self, limits: AuthLimits | None = None) -> None:
        self.limits = limits if limits is not None else AuthLimits()
        self._peers: OrderedDict[str, _Track] = OrderedDict()
        self._stations: OrderedDict[str, _Track] = OrderedDict()
        self._trusted: OrderedDict[str, dict[str, float]] = OrderedDict()  # peer -> MN -> time
        self._key = os.urandom(16)  # wrong PWs are kept only as keyed digests, in memory
        self.evicted = 0  # live entries dropped because a table was full

    # -- questions ------------------------------------------------------------------------

    def refusal(self, peer: str, mn: str, now: float) -> Refusal | None:
        """Before checking a packet's PW: None, or why it must be refused unchecked."""
        p = self._peers.get(peer)
        s = self._stations.get(mn)
        peer_left = p.blocked_until - now if p is not None else 0.0
        station_left = s.blocked_until - now if s is not None else 0.0
        if peer_left <= 0 and station_left <= 0:
            return None
        if self.trusted(peer, mn, now):
            return None
        if peer_left > 0:
            return Refusal(PEER, peer, peer_left)
        return Refusal(STATION, mn, station_left)

    def admits(self, peer: str, now: float) -> Refusal | None:
        """At accept: a blocked peer is refused, unless a station authenticated from it lately
        (an honest station behind the same address or NAT keeps connecting)."""
        p = self._peers.get(peer)
        if p is None or p.blocked_until <= now:
            return None
        proven = self._trusted.get(peer)
        if proven and any(now - t <= self.limits.trust_s for t in proven.values()):
            return None
        return Refusal(PEER, peer, p.blocked_until - now)

    def trusted(self, peer: str, mn: str, now: float) -> bool:
        proven = self._trusted.get(peer)
        if not proven:
            return False
        t = proven.get(mn)
        return t is not None and now - t <= self.limits.trust_s

    def blocked(self, now: float) -> dict[str, int]:
        """How many peers and stations are blocked now."""
        return {
            PEER: sum(1 for t in self._peers.values() if t.blocked_until > now),
            STATION: sum(1 for t in self._stations.values() if t.blocked_until > now),
        }

    @property
    def tracked(self) -> int:
        return len(self._peers) + len(self._stations) + len(self._trusted)

    # -- events ---------------------------------------------------------------------------

    def success(self, peer: str, mn: str, now: float) -> None:
        """A correct PW for ``mn`` from ``peer``: trust the pair, clear its failures for it."""
        proven = self._trusted.get(peer)
        if proven is None:
            proven = self._trusted[peer] = {}
            self._bound(self._trusted, now)
        else:
            self._trusted.move_to_end(peer)
            proven.pop(mn, None)  # re-inserted last: the dict stays in age order
        proven[mn] = now
        if len(proven) > MAX_TRUSTED_PER_PEER:
            del proven[next(iter(proven))]
        p = self._peers.get(peer)
        if p is not None and p.failures:
            p.failures = deque(f for f in p.failures if f[1] != mn)

    def failure(self, peer: str, mn: str, pw: str, now: float) -> list[Block]:
        """A wrong PW for ``mn`` from ``peer`` (checked, not refused unchecked): revokes the pair's
        trust and counts towards both limits. Returns the blocks this failure started."""
        proven = self._trusted.get(peer)
        if proven:
            proven.pop(mn, None)
        digest = hashlib.blake2b(
            mn.encode() + b"\0" + pw.encode(), key=self._key, digest_size=12
        ).digest()
        limits = self.limits
        blocks = []
        for scope, table, key, threshold in (
            (PEER, self._peers, peer, limits.max_failures),
            (STATION, self._stations, mn, limits.station_max_failures),
        ):
            block = self._count(scope, table, key, mn, digest, threshold, now)
            if block is not None:
                blocks.append(block)
        return blocks

    def purge(self, now: float) -> None:
        """Forget what has expired (the sweeper calls this; lookups never depend on it)."""
        limits = self.limits
        for table in (self._peers, self._stations):
            for key in [k for k, t in table.items() if t.expires_at(limits) <= now]:
                del table[key]
        for peer in list(self._trusted):
            proven = self._trusted[peer]
            for mn in [m for m, t in proven.items() if now - t > limits.trust_s]:
                del proven[mn]
            if not proven:
                del self._trusted[peer]

    # -- internals ------------------------------------------------------------------------

    def _count(
        self,
        scope: str,
        table: OrderedDict[str, _Track],
        key: str,
        mn: str,
        digest: bytes,
        threshold: int,
        now: float,
    ) -> Block | None:
        track = table.get(key)
        if track is None:
            track = table[key] = _Track()
            self._bound(table, now)
        else:
            table.move_to_end(key)
        failures = track.failures
        horizon = now - self.limits.window_s
        while failures and failures[0][0] < horizon:
            failures.popleft()
        if any(f[2] == digest for f in failures):
            return None  # the same wrong PW again: nothing new was tried
        failures.append((now, mn, digest))
        track.last_failure = now
        if len(failures) < threshold:
            return None
        failures.clear()
        track.level += 1
        duration = self.limits.backoff(track.level)
        track.blocked_until = max(track.blocked_until, now + duration)
        return Block(scope, key, track.level, duration, threshold)

    def _bound(
        self, table: OrderedDict[str, _Track] | OrderedDict[str, dict[str, float]], now: float
    ) -> None:
        limits = self.limits
        while len(table) > limits.max_tracked:
            _key, entry = table.popitem(last=False)
            if isinstance(entry, _Track):
                live = entry.expires_at(limits) > now
            else:
                live = any(now - t <= limits.trust_s for t in entry.values())
            self.evicted += live
