"""HJ 212 wrong-password limits: blocks per peer and per MN, never costing an honest station.

The limiter alone (``AuthGuard``, driven by an explicit clock), then the collector over real TCP
on loopback with a real Spool and Ingestor: attackers connect from 127.0.0.2 and up (Linux routes
all of 127/8 to lo), honest stations from 127.0.0.1 unless said otherwise. Periods are shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import pytest
from prometheus_client import generate_latest

from collectors.hj212 import AuthGuard, AuthLimits, peer_key
from collectors.hj212.guard import PEER, STATION
from tests.test_hj212_collector import (
    PLAIN_MN,
    PLAIN_PW,
    WS900_CODES,
    Client,
    Hj212Station,
    _values,
    _wait,
    rig,
    ws_station,
)
from weijian.config import load_settings

A, B = "MN000000000000000000000A", "MN000000000000000000000B"

# -- the limiter on its own -----------------------------------------------------------------


def test_a_peer_is_blocked_after_n_distinct_wrong_pws_with_doubling_back_off() -> None:
    g = AuthGuard(AuthLimits(max_failures=3, window_s=10, block_s=60, block_max_s=200))
    assert g.failure("p", A, "x1", 0) == []
    assert g.failure("p", A, "x1", 1) == []  # the same wrong PW again is not a new guess
    assert g.failure("p", A, "x2", 2) == []
    (block,) = g.failure("p", A, "x3", 3)
    assert (block.scope, block.key, block.level, block.duration_s) == (PEER, "p", 1, 60)
    assert g.refusal("p", A, 3.1) == g.refusal("p", B, 3.1) is not None  # whatever it claims
    assert g.refusal("p", A, 62.9) is not None
    assert g.admits("p", 30) is not None
    assert g.refusal("q", A, 30) is None  # another peer is not concerned
    assert g.refusal("p", A, 63) is None
    assert g.admits("p", 63) is None
    for i, t in enumerate((70, 71, 72)):  # blocked again: twice as long
        blocks = g.failure("p", A, f"y{i}", t)
    assert [(b.level, b.duration_s) for b in blocks] == [(2, 120)]
    for i, t in enumerate((200, 201, 202)):  # and capped at block_max_s
        blocks = g.failure("p", A, f"z{i}", t)
    assert [(b.level, b.duration_s) for b in blocks] == [(3, 200)]
    # block_max_s after the block ends with no new block, the level is forgotten
    g.purge(402 + 200 + 1)
    assert g.tracked == 0
    for i, t in enumerate((700, 701, 702)):
        blocks = g.failure("p", A, f"w{i}", t)
    assert [(b.level, b.duration_s) for b in blocks] == [(1, 60)]


def test_failures_outside_the_window_do_not_add_up() -> None:
    g = AuthGuard(AuthLimits(max_failures=3, window_s=10))
    for t in (0, 6, 12, 18, 24):  # never three within 10 s
        assert g.failure("p", A, f"x{t}", t) == []
    assert g.refusal("p", A, 25) is None
    g.purge(24 + 10)
    assert g.tracked == 0


def test_a_correct_pw_clears_only_that_stations_failures() -> None:
    g = AuthGuard(AuthLimits(max_failures=3, station_max_failures=100))
    g.failure("p", A, "x1", 0)
    g.failure("p", A, "x2", 1)
    g.success("p", A, 2)  # the installer got it right: A's failures are forgiven
    assert g.failure("p", A, "x3", 3) == []
    g.success("p", A, 4)
    # Knowing station A's PW does not buy guesses at station B's: interleaving successes on A
    # does not reset the count for B.
    g.failure("p", B, "y1", 5)
    g.success("p", A, 6)
    g.failure("p", B, "y2", 7)
    g.success("p", A, 8)
    (block,) = g.failure("p", B, "y3", 9)
    assert block.scope == PEER
    # ... and the peer's own trusted station keeps working through the block
    assert g.refusal("p", A, 10) is None
    assert g.refusal("p", B, 10) is not None
    assert g.admits("p", 10) is None  # its connections are accepted: A may reconnect


def test_an_mn_under_distributed_attack_is_locked_except_for_its_own_peer() -> None:
    g = AuthGuard(AuthLimits(max_failures=5, station_max_failures=4))
    g.success("home", A, 0)
    blocks = []
    for i in range(4):  # four peers, one guess each: none is blocked on its own
        blocks += g.failure(f"bot{i}", A, f"guess{i}", 1 + i)
    assert [(b.scope, b.key, b.level) for b in blocks] == [(STATION, A, 1)]
    assert g.refusal("home", A, 5) is None  # the station's usual address: still checked
    assert g.refusal("newcomer", A, 5) == g.refusal("bot0", A, 5)
    assert g.refusal("newcomer", A, 5).scope == STATION  # type: ignore[union-attr]
    assert g.refusal("newcomer", B, 5) is None  # only that MN
    assert g.admits("newcomer", 5) is None  # connections are not refused for an MN lock
    assert g.blocked(5) == {PEER: 0, STATION: 1}
    # the real station's correct PW does not reset the count of the attack on it
    g.success("home", A, 6)
    assert g.refusal("bot1", A, 7) is not None


def test_one_wrong_pw_revokes_a_pairs_trust() -> None:
    g = AuthGuard(AuthLimits(max_failures=2, station_max_failures=100))
    g.success("nat", A, 0)
    assert g.trusted("nat", A, 1)
    g.failure("nat", A, "guess", 2)  # someone behind the station's NAT guessing its PW
    assert not g.trusted("nat", A, 3)
    (block,) = g.failure("nat", A, "guess2", 4)
    assert block.scope == PEER
    assert g.refusal("nat", A, 5) is not None  # no more guesses for the neighbour
    assert g.admits("nat", 5) is not None


def test_trust_expires() -> None:
    g = AuthGuard(AuthLimits(max_failures=1, trust_s=100))
    g.success("p", A, 0)
    g.failure("p", B, "x", 1)
    assert g.refusal("p", A, 50) is None
    assert g.admits("p", 50) is None
    g2 = AuthGuard(AuthLimits(max_failures=1, trust_s=10, block_s=60))
    g2.success("p", A, 0)
    g2.failure("p", B, "x", 1)
    assert g2.refusal("p", A, 20) is not None
    assert g2.admits("p", 20) is not None
    g2.purge(20)
    assert not g2.trusted("p", A, 20)


def test_memory_is_bounded() -> None:
    g = AuthGuard(AuthLimits(max_failures=5, station_max_failures=5, max_tracked=100))
    for i in range(1000):
        g.failure(f"10.0.{i // 250}.{i % 250}", f"MN{i:05d}", "x", float(i))
        g.success(f"10.1.{i // 250}.{i % 250}", f"MN{i:05d}", float(i))
    assert g.tracked == 300  # peers, MNs, trusted peers: 100 each
    assert g.evicted == 3 * 900
    g2 = AuthGuard(AuthLimits(max_failures=100))
    for i in range(100):  # one peer, many MNs: failures kept per peer at most max_failures
        g2.failure("p", f"MN{i:05d}", "x", 0)
        g2.success("p", f"MN{i:05d}", 0)
    assert len(g2._trusted["p"]) == 64


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/hj212.sock", "/run/hj212.sock"),
    ],
)
def test_peer_keys(host: str, key: str) -> None:
    assert peer_key(host) == key


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="block_max_s"):
        AuthLimits(block_s=10, block_max_s=5)
    with pytest.raises(ValueError, match="max_failures"):
        AuthLimits(max_failures=0)


def test_settings_defaults_environment_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings().hj212
    assert (s.auth_max_failures, s.auth_block_s, s.auth_block_max_s) == (5, 60.0, 3600.0)
    assert (
        AuthLimits(
            max_failures=s.auth_max_failures,
            window_s=s.auth_window_s,
            block_s=s.auth_block_s,
            block_max_s=s.auth_block_max_s,
            station_max_failures=s.auth_station_max_failures,
            trust_s=s.auth_trust_s,
            max_tracked=s.auth_max_tracked,
        )
        == AuthLimits()
    )  # the settings' defaults are the limiter's
    monkeypatch.setenv("WEIJIAN_HJ212__AUTH_BLOCK_S", "5")
    assert load_settings().hj212.auth_block_s == 5
    monkeypatch.setenv("WEIJIAN_HJ212__AUTH_BLOCK_MAX_S", "1")
    with pytest.raises(ValueError, match="auth_block_max_s must be at least"):
        load_settings()


# -- the collector over TCP -------------------------------------------------------------------

# Blocks long enough to check them on a loaded machine, short enough to wait one out.
FAST = AuthLimits(max_failures=3, window_s=30, block_s=1.5, block_max_s=3, station_max_failures=50)


async def client_from(ip: str, port: int) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0)))


async def refused(ip: str, port: int, timeout: float = 3.0) -> bool:  # noqa: ASYNC109
    """A connection from ``ip`` is closed by the collector before anything is sent."""
    client = await client_from(ip, port)
    try:
        async with asyncio.timeout(timeout):
            while await client.reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    await client.close()
    return True


async def admitted(ip: str, port: int) -> bool:
    """A connection from ``ip`` stays open (for 0.1 s)."""
    client = await client_from(ip, port)
    try:
        return await client.silent(0.1)
    except (AssertionError, ConnectionResetError):
        return False
    finally:
        await client.close()


def wrong(station: Hj212Station, pw: str, mn: str | None = None) -> bytes:
    packet = station.realtime_packet(time.time())
    return station.encode(replace(packet, pw=pw, mn=mn or packet.mn))


async def test_a_guessing_peer_is_blocked_disconnected_refused_then_released(tmp_path) -> None:
    async with rig(tmp_path, auth=FAST, idle_timeout_s=1.0) as r:
        attacker = ws_station()
        spare = await client_from("127.0.0.2", r.port)  # opened before the block
        client = await client_from("127.0.0.2", r.port)
        for i in range(2):  # below the limit: refused, counted, the connection kept
            await client.send(wrong(attacker, f"bad{i:03d}"))
        await client.send(wrong(attacker, "bad000"))  # a repeat is not a new guess
        assert await client.silent(0.2)
        assert r.collector.errors == {"bad_password": 3}
        started = time.monotonic()
        await client.send(wrong(attacker, "bad002"))  # the third distinct guess
        assert await client.closed_by_peer()
        await client.close()
        assert r.collector.stats.auth_blocks == {"peer": 1}
        assert r.checks == ["bad000", "bad001", "bad000", "bad002"]

        # Blocked: a connection opened before is refused unchecked (even with the right PW) and
        # closed; new connections are refused at accept.
        await spare.send(attacker.encode(attacker.realtime_packet(time.time())))
        assert await spare.closed_by_peer()
        await spare.close()
        assert r.checks == ["bad000", "bad001", "bad000", "bad002"]  # no check while blocked
        assert await refused("127.0.0.2", r.port)
        assert r.collector.stats.connections_blocked >= 1
        assert r.rejected[("hj212", "auth_blocked")] == 1
        reasons = [reason for _, reason, _ in r.ingestor.metrics.ingest.recent["ws-001"]]
        assert reasons == ["bad_credentials"] * 4 + ["auth_blocked"]

        # Another peer is not concerned: the station itself keeps working.
        honest = ws_station(interval_s=0.01)
        stats = await honest.run("127.0.0.1", r.port, count=5)
        assert stats.replies_matched == 5

        # Exported: the rejection reason, the error label, the block, the refused connections.
        await _wait(lambda: r.collector.stats.auth_blocked.get("peer") == 1, timeout=2)
        exported = generate_latest(r.ingestor.metrics.registry).decode()
        assert 'weijian_rejected_total{protocol="hj212",reason="auth_blocked"} 1.0' in exported
        assert 'weijian_rejected_total{protocol="hj212",reason="bad_credentials"} 4.0' in exported
        assert 'weijian_hj212_errors_total{reason="auth_blocked"} 1.0' in exported
        assert 'weijian_hj212_auth_blocks_total{scope="peer"} 1.0' in exported
        assert 'weijian_hj212_auth_blocked{scope="peer"} 1.0' in exported
        assert 'weijian_hj212_connections_refused_total{reason="auth_blocked"}' in exported

        # The block ends after block_s: the right PW from that address works again.
        async with asyncio.timeout(5):
            while not await admitted("127.0.0.2", r.port):  # noqa: ASYNC110 - polling a port
                await asyncio.sleep(0.05)
        assert time.monotonic() - started >= FAST.block_s
        again = ws_station(interval_s=0.01)
        client = await client_from("127.0.0.2", r.port)
        good = again.realtime_packet(time.time())
        await client.send(again.encode(good))
        assert await client.replies(1) == [good.qn]
        await client.close()
        assert len(r.readings) == 5 + 1
        await _wait(lambda: r.collector.stats.auth_blocked.get("peer") == 0, timeout=2)


async def test_a_station_keeps_working_through_a_distributed_attack_on_its_mn(tmp_path) -> None:
    limits = replace(FAST, station_max_failures=6)
    async with rig(tmp_path, auth=limits) as r:
        honest = ws_station(interval_s=0.02)
        run = asyncio.create_task(honest.run("127.0.0.1", r.port, count=80, drain_s=5))
        await _wait(lambda: len(r.readings) >= 1)  # it has authenticated from its address

        # Three addresses, two distinct guesses each at the station's PW: no peer reaches its
        # limit, but the MN does.
        bot = ws_station()
        for k, ip in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
            client = await client_from(ip, r.port)
            await client.send(wrong(bot, f"g{k}-0"), wrong(bot, f"g{k}-1"))
            await _wait(lambda k=k: r.collector.errors["bad_password"] == 2 * (k + 1))
            await client.close()
        assert r.collector.stats.auth_blocks == {"station": 1}
        readings_at_lock = len(r.readings)
        checks_at_lock = len(r.checks)

        # Peers the MN never authenticated from are refused unchecked, even with its right PW
        # (the trade-off: a station that moved to a new address waits out the lock) ...
        newcomer = await client_from("127.0.0.5", r.port)
        await newcomer.send(bot.encode(bot.realtime_packet(time.time())))
        assert await newcomer.closed_by_peer()
        await newcomer.close()
        assert len(r.checks) == checks_at_lock
        # ... only for that MN: another station from that same address is served.
        plain = Hj212Station(PLAIN_MN, PLAIN_PW, WS900_CODES, _values, interval_s=0.01)
        client = await client_from("127.0.0.5", r.port)
        packet = plain.realtime_packet(time.time())
        await client.send(plain.encode(packet))
        assert await client.replies(1) == [packet.qn]
        await client.close()

        # The station itself never noticed: every reading arrived and was acknowledged.
        stats = await run
        assert readings_at_lock < 80, "the attack ended after the station"
        assert stats.replies_matched == 80
        assert not honest.awaiting
        assert len([x for x in r.readings if x.device == "ws-001"]) == 80
        assert r.rejected[("hj212", "auth_blocked")] == 1
        assert r.rejected[("hj212", "bad_credentials")] == 6


async def test_honest_stations_behind_a_blocked_address_keep_working(tmp_path) -> None:
    """A NAT shared with a guesser (or with a misconfigured neighbour)."""
    async with rig(tmp_path, auth=FAST) as r:
        nat = "127.0.0.3"
        station = ws_station(interval_s=0.01)
        client = await client_from(nat, r.port)
        first = station.realtime_packet(time.time())
        await client.send(station.encode(first))
        assert await client.replies(1) == [first.qn]

        plain = Hj212Station(PLAIN_MN, PLAIN_PW, WS900_CODES, _values)
        guesser = await client_from(nat, r.port)
        await guesser.send(*(wrong(plain, f"n{i:05d}") for i in range(3)))
        assert await guesser.closed_by_peer()
        await guesser.close()
        assert r.collector.stats.auth_blocks == {"peer": 1}

        # The station's open connection, and a new one, are still served ...
        packets = [station.realtime_packet(time.time()) for _ in range(3)]
        await client.send(station.encode(packets[0]))
        assert await client.replies(1) == [packets[0].qn]
        await client.close()
        again = await client_from(nat, r.port)  # accepted: a station authenticated from here
        await again.send(*(station.encode(p) for p in packets[1:]))
        assert await again.replies(2) == [p.qn for p in packets[1:]]
        # ... while anything else from the address is refused unchecked, closing its connection,
        # even the right PW of a station not seen from here.
        other = await client_from(nat, r.port)
        await other.send(plain.encode(plain.realtime_packet(time.time())))
        assert await other.closed_by_peer()
        await other.close()
        assert PLAIN_PW not in r.checks
        await again.close()
        assert len(r.readings) == 4


async def test_a_stale_pw_is_refused_but_never_blocks(tmp_path) -> None:
    """A station still sending its old PW after a rotation: no guessing, so no block."""
    async with rig(tmp_path, auth=FAST) as r:
        station = ws_station()
        for k in range(4):  # reconnecting, as such a station does
            client = await client_from("127.0.0.2", r.port)
            await client.send(*(wrong(station, "old123") for _ in range(3)))
            await _wait(lambda k=k: r.collector.errors["bad_password"] == 3 * (k + 1))
            assert await client.silent(0.05)  # refused, not answered, the connection kept
            await client.close()
        assert r.checks == ["old123"] * 4  # once per connection
        assert r.collector.stats.auth_blocks == {}
        assert r.rejected == {("hj212", "bad_credentials"): 12}
        fixed = ws_station(interval_s=0.01)
        client = await client_from("127.0.0.2", r.port)
        packet = fixed.realtime_packet(time.time())
        await client.send(fixed.encode(packet))
        assert await client.replies(1) == [packet.qn]
        await client.close()


# -- connections per peer -------------------------------------------------------------------


async def closed_at_accept(client: Client) -> bool:
    """The collector closed ``client`` (FIN or RST) before anything was sent."""
    with contextlib.suppress(ConnectionResetError):
        await client.closed_by_peer()
    await client.close()
    return True


async def test_one_peer_cannot_hold_more_than_max_connections_per_peer(tmp_path) -> None:
    assert load_settings().hj212.max_connections_per_peer == 64
    async with rig(tmp_path, max_connections_per_peer=3) as r:
        stats = r.collector.stats
        held = [await Client.open(r.port) for _ in range(3)]  # from 127.0.0.1
        await _wait(lambda: stats.connections_open == 3)
        assert await closed_at_accept(await Client.open(r.port))  # the fourth
        assert stats.connections_per_peer_refused == 1
        assert stats.connections_refused == stats.connections_blocked == 0

        # Another address is not concerned.
        other = await client_from("127.0.0.2", r.port)
        assert await other.silent(0.1)
        await _wait(lambda: stats.connections_open == 4)

        # The peer's open connections keep working.
        station = ws_station()
        packet = station.realtime_packet(time.time())
        await held[0].send(station.encode(packet))
        assert await held[0].replies(1) == [packet.qn]

        # Once one closes, a new one is accepted and served.
        await held[1].close()
        await _wait(lambda: stats.connections_open == 3)
        again = await Client.open(r.port)
        packet = station.realtime_packet(time.time() + 1)
        await again.send(station.encode(packet))
        assert await again.replies(1) == [packet.qn]
        assert stats.connections_per_peer_refused == 1
        assert len(r.readings) == 2
        assert r.collector._per_peer == {"127.0.0.1": 3, "127.0.0.2": 1}

        exported = generate_latest(r.ingestor.metrics.registry).decode()
        assert 'weijian_hj212_connections_refused_total{reason="per_peer_limit"} 1.0' in exported
        for c in (*held, other, again):
            await c.close()
        await _wait(lambda: stats.connections_open == 0)
        assert not r.collector._per_peer
