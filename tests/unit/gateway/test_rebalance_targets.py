"""Rebalance moves go only to gateways with evidence that they are alive and have room."""

from __future__ import annotations

import dataclasses

from gateway import balance
from switchboard.contract import GatewayInfo

HB = 0.5  # heartbeat interval, seconds
NOW = 1_000_000_000  # ms


def gw(gid: str, connections: int, heartbeat_ms: int, **kw: object) -> GatewayInfo:
    info = GatewayInfo(gateway_id=gid, host="127.0.0.1", port=8080, connections=connections,
                       ws=connections, sse=0, draining=False, started_ms=0,
                       heartbeat_ms=heartbeat_ms)
    return dataclasses.replace(info, **kw)  # type: ignore[arg-type]


def decide(before: list[GatewayInfo], now: list[GatewayInfo], mine: int = 60,
           max_connections: int | None = None) -> balance.Plan:
    return balance.plan("me", mine, before, now, now_ms=NOW, heartbeat_interval=HB,
                        margin=0.2, max_moves=100, max_connections=max_connections)


def test_a_just_killed_gateway_whose_entry_is_still_fresh_attracts_no_moves() -> None:
    # The reported case: 0.3 s after a SIGKILL its entry (30 clients) is younger than any
    # freshness limit, but its heartbeat did not advance across the confirm window.
    dead_before = gw("dead", 30, NOW - 300 - int(balance.confirm_window(HB) * 1000))
    dead_now = gw("dead", 30, dead_before.heartbeat_ms)
    assert (NOW - dead_now.heartbeat_ms) / 1000 <= balance.fresh_limit(HB)
    me = gw("me", 60, NOW - 100)
    p = decide([me, dead_before], [me, dead_now])
    assert p.moves == 0 and p.targets == [] and p.loads == [60]


def test_a_live_peer_whose_heartbeat_advanced_receives_moves_down_to_the_mean() -> None:
    before = [gw("me", 60, NOW - 900), gw("peer", 0, NOW - 800)]
    now = [gw("me", 60, NOW - 100), gw("peer", 0, NOW - 50)]
    p = decide(before, now)
    assert p == balance.Plan(moves=30, loads=[60, 0], targets=["peer"])


def test_only_peers_with_evidence_count_towards_the_mean() -> None:
    before = [gw("live", 20, NOW - 900), gw("dead", 20, NOW - 400),
              gw("draining", 0, NOW - 900), gw("stale", 0, NOW - 9000)]
    now = [gw("live", 20, NOW - 10), gw("dead", 20, NOW - 400),
           gw("draining", 0, NOW - 20, draining=True),
           # advanced, but by the writer's clock far older than a few heartbeats
           gw("stale", 0, NOW - 5000),
           gw("new", 0, NOW - 10),  # not in the first read: no evidence yet
           gw("unready", 0, NOW - 10, ready=False)]
    before.append(gw("unready", 0, NOW - 900, ready=False))
    p = decide(before, now)
    assert p.targets == ["live"]
    assert p.loads == [60, 20] and p.moves == 20


def test_moves_are_capped_by_the_room_the_live_peers_have() -> None:
    before = [gw("a", 40, NOW - 900), gw("b", 0, NOW - 900)]
    now = [gw("a", 40, NOW - 10), gw("b", 0, NOW - 10)]
    # Uncapped: mean 33.3, excess 26. Peers advertising no limit (0) change nothing.
    assert decide(before, now, mine=60).moves == 26
    advertised = [dataclasses.replace(g, max_connections=0) for g in now]
    assert decide(before, advertised, mine=60, max_connections=45).moves == 26
    # Our limit stands in for peers that do not advertise one: a 5, b 45 -> room 50.
    assert decide(before, now, mine=60, max_connections=45).moves == 26
    assert decide(before, now, mine=60, max_connections=20).moves == 0 + 20
    assert decide(before, now, mine=60, max_connections=10).moves == 0 + 10
    # An advertised limit wins over ours; full peers take nobody.
    full = [dataclasses.replace(now[0], max_connections=40),
            dataclasses.replace(now[1], connections=30, max_connections=30)]
    assert decide(before, full, mine=60, max_connections=1000).moves == 0


def test_room_is_the_advertised_or_assumed_limit_less_the_load() -> None:
    assert balance.room(gw("x", 3, NOW), None) is None
    assert balance.room(gw("x", 3, NOW), 5) == 2
    assert balance.room(gw("x", 3, NOW, max_connections=0), 5) is None
    assert balance.room(gw("x", 9, NOW, max_connections=4), None) == 0


def test_alive_needs_an_advanced_and_recent_heartbeat() -> None:
    def ok(before: int | None, now: int) -> bool:
        return balance.alive(gw("p", 0, now), None if before is None else gw("p", 0, before),
                             now_ms=NOW, heartbeat_interval=HB)

    assert ok(NOW - 600, NOW - 100)
    assert not ok(None, NOW - 100)
    assert not ok(NOW - 100, NOW - 100)
    assert not ok(NOW - 100, NOW - 200)  # went backwards: a different writer, no evidence
    assert not ok(NOW - 3000, NOW - 1600)  # 1.6 s > 2 heartbeats + 0.5 s
    assert ok(NOW - 3000, NOW - 1400)


def test_a_peer_that_heartbeated_then_died_is_dead_once_nobody_listens_on_its_channel() -> None:
    # Its heartbeat advanced between the reads (it beat, then was killed): only the fact that
    # its pub/sub channel lost its subscriber tells it apart from a live peer.
    before = [gw("me", 60, NOW - 900), gw("peer", 30, NOW - 1500)]
    beat_then_died = gw("peer", 30, NOW - 300, listening=False)
    assert decide(before, [gw("me", 60, NOW - 100), beat_then_died]).moves == 0
    alive = dataclasses.replace(beat_then_died, listening=True)
    assert decide(before, [gw("me", 60, NOW - 100), alive]).moves > 0
