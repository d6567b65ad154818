"""The webhook scripts of the Redis contract (switchboard/whcontract.py) against a real
redis-server: which events each transition writes to the outbox, debounced leaves, a full
outbox and the dispatcher's lease. Arguments are passed as gateway/webhookstate.py and
switchboard/webhooks/dispatcher.py pass them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from switchboard import contract, streams
from switchboard import whcontract as wh
from switchboard.pipelined import Script
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

GATEWAY = "gw1"
HOLDER = "gw1/inc1"
CAP = 1000
TTL_MS = 60_000
SHORT_MS = 300  # a debounce delay the tests wait out (on Redis's clock)
LONG_MS = 5_000  # a debounce delay no test waits out


class Contract:
    """Calls the scripts with the gateway's and the dispatcher's argument order."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.keys = wh.WebhookKeys()
        self._scripts: dict[str, Any] = {}

    def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        if script.sha not in self._scripts:
            self._scripts[script.sha] = self.client.register_script(script.source)
        return self._scripts[script.sha](keys=keys, args=args)

    def user_on(self, user: str, conn: str, *, cap: int = CAP, epoch: str = "") -> int:
        return int(self.run(wh.USER_ON, self.keys.user(user), [
            conn, HOLDER, user, epoch or streams.random_id(), LONG_MS, cap, GATEWAY]))

    def user_off(self, user: str, conn: str, delay: int, *, holder: str = HOLDER,
                 reason: str = "closed") -> int:
        return int(self.run(wh.USER_OFF, self.keys.user(user), [
            conn, holder, user, streams.random_id(), delay, CAP, reason, TTL_MS]))

    def channel_on(self, channel: str, user: str, conn: str, *, cap: int = CAP) -> int:
        return int(self.run(wh.CHANNEL_ON, self.keys.channel(channel), [
            conn, HOLDER, user, channel, streams.random_id(), LONG_MS, cap]))

    def channel_off(self, channel: str, user: str, conn: str, delay: int, *,
                    holder: str = HOLDER) -> int:
        return int(self.run(wh.CHANNEL_OFF, self.keys.channel(channel), [
            conn, holder, user, channel, streams.random_id(), delay, CAP, TTL_MS]))

    def confirm(self, kind: str, *names: str) -> int:
        keys = self.keys.user(names[0]) if kind == "o" else self.keys.channel(names[0])
        user = names[1] if kind == "l" else ""
        return int(self.run(wh.CONFIRM, keys, [
            wh.due_member(kind, *names), kind, names[0], user, streams.random_id(), CAP,
            TTL_MS]))

    def part(self, entity: str) -> int:
        return self.keys.partition(entity)

    def events(self, entity: str) -> list[dict[str, Any]]:
        """The events in the outbox of ``entity``'s partition, oldest first."""
        entries: Any = self.client.xrange(self.keys.outbox(self.part(entity)))
        return [json.loads(fields[b"e"]) for _, fields in entries]

    def total(self) -> int:
        return sum(int(self.client.xlen(self.keys.outbox(p)))
                   for p in range(self.keys.partitions))

    def due_score(self, entity: str, kind: str, *names: str) -> float | None:
        return self.client.zscore(self.keys.due(self.part(entity)), wh.due_member(kind, *names))

    def redis_ms(self) -> int:
        sec, usec = self.client.time()
        return sec * 1000 + usec // 1000

    def wait_past(self, score: float) -> None:
        wait_until(lambda: self.redis_ms() > score, 5, f"Redis time past {score}")

    def state(self, key: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(key)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.fixture
def c(redis_server: RedisServer) -> Iterator[Contract]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield Contract(client)
    finally:
        client.close()


def seqs(events: list[dict[str, Any]], entity: str) -> tuple[set[str], list[int]]:
    """The epochs and the seqs of the ids of ``entity``'s events."""
    parts = [e["id"].split("/") for e in events]
    assert all(p[0] == entity for p in parts), events
    return {p[1] for p in parts}, [int(p[2]) for p in parts]


def test_user_on_emits_one_online_per_user(c: Contract) -> None:
    assert c.user_on("alice", "a1", epoch="E1") == 1
    [ev] = c.events("u:alice")
    assert ev["id"] == "u:alice/E1/1"
    assert (ev["type"], ev["user"], ev["gateway"], ev["conn"]) == \
        ("user.online", "alice", GATEWAY, "a1")
    assert abs(ev["ts_ms"] - c.redis_ms()) < 5_000
    assert c.user_on("alice", "a2") == 0  # another connection of the same user
    assert c.user_on("alice", "a1") == 0  # a repeat
    assert c.total() == 1
    assert c.state(c.keys.user("alice")[0])["state"] == "on"


def test_user_off_only_for_the_last_conn_and_confirmed_once(c: Contract) -> None:
    c.user_on("alice", "a1", epoch="E1")
    c.user_on("alice", "a2")
    assert c.user_off("alice", "a1", SHORT_MS, holder="gw2/other") == 0  # not its holder
    assert c.user_off("alice", "a1", SHORT_MS) == 0  # a2 is still there
    assert c.user_off("alice", "a1", SHORT_MS) == 0  # a repeat
    assert c.total() == 1
    assert c.user_off("alice", "a2", SHORT_MS, reason="kicked") == 1  # scheduled
    assert c.total() == 1
    score = c.due_score("u:alice", "o", "alice")
    assert score is not None
    assert c.state(c.keys.user("alice")[0])["state"] == "leaving"
    c.wait_past(score)
    assert c.confirm("o", "alice") == 1
    online, offline = c.events("u:alice")
    assert offline["id"] == "u:alice/E1/2"
    assert (offline["type"], offline["user"], offline["reason"]) == \
        ("user.offline", "alice", "kicked")
    assert offline["ts_ms"] == score
    assert offline["since_ms"] == score - SHORT_MS
    assert offline["since_ms"] >= online["ts_ms"]
    assert c.due_score("u:alice", "o", "alice") is None
    assert c.confirm("o", "alice") == 0  # a repeat
    assert c.total() == 2
    state = c.keys.user("alice")[0]
    assert c.state(state)["state"] == "off"
    assert 0 < c.client.pttl(state) <= TTL_MS


def test_back_within_the_delay_is_no_event(c: Contract) -> None:
    c.user_on("alice", "a1")
    c.user_off("alice", "a1", 1_000)
    score = c.due_score("u:alice", "o", "alice")
    assert score is not None
    assert c.user_on("alice", "a2") == 0
    assert c.due_score("u:alice", "o", "alice") is None
    c.wait_past(score)
    assert c.confirm("o", "alice") == 0
    assert [e["type"] for e in c.events("u:alice")] == ["user.online"]
    assert c.state(c.keys.user("alice")[0])["state"] == "on"


def test_back_after_the_delay_before_the_confirmer_emits_offline_then_online(
        c: Contract) -> None:
    c.user_on("alice", "a1", epoch="E1")
    c.user_off("alice", "a1", 200, reason="closed")
    score = c.due_score("u:alice", "o", "alice")
    assert score is not None
    c.wait_past(score)
    assert c.user_on("alice", "a2") == 2
    events = c.events("u:alice")
    assert [e["type"] for e in events] == ["user.online", "user.offline", "user.online"]
    assert events[1]["ts_ms"] == score
    assert events[1]["since_ms"] == score - 200
    assert events[1]["reason"] == "closed"
    assert events[2]["conn"] == "a2"
    assert seqs(events, "u:alice") == ({"E1"}, [1, 2, 3])
    assert c.due_score("u:alice", "o", "alice") is None
    assert c.confirm("o", "alice") == 0
    assert c.total() == 3


def test_no_delay_emits_offline_at_once(c: Contract) -> None:
    c.user_on("alice", "a1")
    assert c.user_off("alice", "a1", 0, reason="closed") == 1
    _, offline = c.events("u:alice")
    assert offline["type"] == "user.offline"
    assert offline["since_ms"] == offline["ts_ms"]
    assert c.due_score("u:alice", "o", "alice") is None
    state = c.keys.user("alice")[0]
    assert c.state(state)["state"] == "off"
    assert 0 < c.client.pttl(state) <= TTL_MS
    assert c.user_on("alice", "a2") == 1  # online again: a new transition


def test_channel_join_leave_occupied_vacated(c: Contract) -> None:
    assert c.channel_on("room", "alice", "a1") == 2
    assert [(e["type"], e.get("user")) for e in c.events("c:room")] == \
        [("channel.occupied", None), ("presence.join", "alice")]
    assert c.channel_on("room", "alice", "a2") == 0  # another conn of the same user
    assert c.channel_on("room", "alice", "a1") == 0  # a repeat
    assert c.channel_on("room", "bob", "b1") == 1
    assert c.events("c:room")[-1]["type"] == "presence.join"
    assert c.events("c:room")[-1]["user"] == "bob"
    assert c.total() == 3

    assert c.channel_off("room", "alice", "a1", SHORT_MS, holder="gw2/x") == 0
    assert c.channel_off("room", "alice", "a1", SHORT_MS) == 0  # a2 is still there
    assert c.due_score("c:room", "l", "room", "alice") is None
    assert c.channel_off("room", "alice", "a2", SHORT_MS) == 1
    leave_alice = c.due_score("c:room", "l", "room", "alice")
    assert leave_alice is not None
    assert c.due_score("c:room", "v", "room") is None  # bob is still there
    c.wait_past(leave_alice)
    assert c.confirm("l", "room", "alice") == 1
    assert c.confirm("l", "room", "alice") == 0
    assert c.channel_off("room", "bob", "b1", SHORT_MS) == 1
    leave_bob = c.due_score("c:room", "l", "room", "bob")
    vacate = c.due_score("c:room", "v", "room")
    assert leave_bob is not None and vacate is not None
    assert c.total() == 4  # alice's leave, and nothing yet for bob or the channel
    c.wait_past(max(leave_bob, vacate))
    assert c.confirm("l", "room", "bob") == 1
    assert c.confirm("v", "room") == 1
    assert c.confirm("v", "room") == 0
    events = c.events("c:room")
    assert [(e["type"], e.get("user")) for e in events[3:]] == [
        ("presence.leave", "alice"), ("presence.leave", "bob"), ("channel.vacated", None)]
    assert [e["ts_ms"] for e in events[3:]] == [leave_alice, leave_bob, vacate]
    assert all(e["channel"] == "room" for e in events)
    epochs, seq = seqs(events, "c:room")
    assert len(epochs) == 1
    assert seq == [1, 2, 3, 4, 5, 6]
    assert c.state(c.keys.channel("room")[0])["occupied"] == "0"


def test_channel_rejoin_within_the_delay_cancels_leave_and_vacate(c: Contract) -> None:
    c.channel_on("room", "alice", "a1")
    assert c.channel_off("room", "alice", "a1", 1_000) == 1
    leave = c.due_score("c:room", "l", "room", "alice")
    vacate = c.due_score("c:room", "v", "room")
    assert leave is not None and vacate is not None
    assert c.channel_on("room", "alice", "a3") == 0
    assert c.due_score("c:room", "l", "room", "alice") is None
    assert c.due_score("c:room", "v", "room") is None
    c.wait_past(max(leave, vacate))
    assert c.confirm("l", "room", "alice") == 0
    assert c.confirm("v", "room") == 0
    assert [e["type"] for e in c.events("c:room")] == ["channel.occupied", "presence.join"]


def test_channel_rejoin_after_the_delay_before_the_confirmer_says_what_it_owes(
        c: Contract) -> None:
    c.channel_on("room", "alice", "a1")
    c.channel_on("room", "bob", "b1")
    c.channel_off("room", "bob", "b1", SHORT_MS)
    c.channel_off("room", "alice", "a1", SHORT_MS)
    c.wait_past(max(c.due_score("c:room", "v", "room") or 0,
                    c.due_score("c:room", "l", "room", "alice") or 0))
    assert c.channel_on("room", "alice", "a2") == 4  # the confirmer has not run
    assert [(e["type"], e.get("user")) for e in c.events("c:room")] == [
        ("channel.occupied", None), ("presence.join", "alice"), ("presence.join", "bob"),
        ("presence.leave", "alice"), ("channel.vacated", None), ("channel.occupied", None),
        ("presence.join", "alice")]
    assert c.confirm("l", "room", "bob") == 1  # bob's own leave is still the confirmer's
    assert c.confirm("v", "room") == 0
    assert c.confirm("l", "room", "alice") == 0
    _, order = seqs(c.events("c:room"), "c:room")
    assert order == sorted(order)


def test_channel_no_delay_leaves_and_vacates_at_once(c: Contract) -> None:
    c.channel_on("room", "alice", "a1")
    assert c.channel_off("room", "alice", "a1", 0) == 2
    assert [e["type"] for e in c.events("c:room")] == [
        "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
    assert c.client.zcard(c.keys.due(c.part("c:room"))) == 0


def test_a_full_outbox_counts_losses_and_overflow_reports_them(c: Contract) -> None:
    p = c.part("c:room")
    out, _, lost = c.keys.part_keys(p)
    # a user in the same partition as the channel, so both write to one outbox
    user = next(f"user{i}" for i in range(10_000) if c.part(f"u:user{i}") == p)
    assert c.channel_on("room", "alice", "a1", cap=3) == 2
    assert c.channel_on("room", "bob", "b1", cap=3) == 1
    assert c.channel_on("room", "carol", "c1", cap=3) == 0
    assert c.user_on(user, "u1", cap=3) == 0
    assert c.client.xlen(out) == 3
    assert [(e["type"], e.get("user")) for e in c.events("c:room")] == [
        ("channel.occupied", None), ("presence.join", "alice"), ("presence.join", "bob")]
    counts = c.state(lost)
    assert counts["n"] == "2"
    assert int(counts["first_ms"]) <= int(counts["last_ms"])
    # the state is right though its events were lost
    assert c.state(c.keys.user(user)[0])["state"] == "on"
    assert c.client.hget(c.keys.channel("room")[2], "carol") == b"1"
    assert c.run(wh.PEEK, c.keys.part_keys(p), [])[2] == 2

    c.client.delete(out)
    assert c.run(wh.OVERFLOW, [out, lost], ["X1"]) == 2
    [ev] = c.events("c:room")
    assert (ev["type"], ev["id"], ev["lost"]) == ("webhook.overflow", "overflow/X1", 2)
    assert (ev["from_ms"], ev["to_ms"]) == (int(counts["first_ms"]), int(counts["last_ms"]))
    assert not c.client.exists(lost)
    assert c.run(wh.OVERFLOW, [out, lost], ["X2"]) == 0
    assert c.client.xlen(out) == 1


def test_overflow_is_written_even_into_a_full_outbox(c: Contract) -> None:
    p = c.part("c:room")
    out, _, lost = c.keys.part_keys(p)
    c.channel_on("room", "alice", "a1", cap=1)
    assert c.client.hget(lost, "n") == b"1"
    assert c.run(wh.OVERFLOW, [out, lost], ["X1"]) == 1
    assert [e["type"] for e in c.events("c:room")] == ["channel.occupied", "webhook.overflow"]


def test_peek_reports_length_first_due_and_losses(c: Contract) -> None:
    p = c.part("u:alice")
    assert c.run(wh.PEEK, c.keys.part_keys(p), []) == [0, b"-1", 0]
    c.user_on("alice", "a1")
    c.user_off("alice", "a1", LONG_MS)
    first = c.due_score("u:alice", "o", "alice")
    assert first is not None
    other = next(f"user{i}" for i in range(10_000) if c.part(f"u:user{i}") == p)
    c.user_on(other, "o1", cap=1)  # lost: the outbox holds alice's online
    c.user_off(other, "o1", LONG_MS + 10_000)
    length, due, lost = c.run(wh.PEEK, c.keys.part_keys(p), [])
    assert (length, float(due), lost) == (1, first, 1)


def test_the_lease_has_one_holder_until_it_expires(c: Contract) -> None:
    key = [c.keys.lease()]
    assert c.run(wh.LEASE, key, ["A", 10_000]) == 1
    assert c.run(wh.LEASE, key, ["B", 10_000]) == 0
    assert c.client.get(key[0]) == b"A"
    assert c.run(wh.LEASE, key, ["A", 200]) == 1  # renewed, with a short ttl
    assert 0 < c.client.pttl(key[0]) <= 200
    assert c.run(wh.LEASE, key, ["B", 10_000]) == 0
    wait_until(lambda: c.run(wh.LEASE, key, ["B", 10_000]) == 1, 5, "B takes the lease")
    assert c.client.get(key[0]) == b"B"
    assert c.run(wh.LEASE, key, ["A", 10_000]) == 0


def test_a_lease_is_released_only_by_its_holder(c: Contract) -> None:
    key = [c.keys.lease()]
    assert c.run(wh.LEASE, key, ["A", 10_000]) == 1
    assert c.run(wh.RELEASE, key, ["B"]) == 0  # B's ran out, and A took it meanwhile
    assert c.client.get(key[0]) == b"A"
    assert c.run(wh.RELEASE, key, ["A"]) == 1
    assert c.run(wh.LEASE, key, ["B", 10_000]) == 1  # no wait for the ttl


REGISTRY = contract.Keys().gateway("gw-gone")


def take(c: Contract, *, registry: bool) -> int:
    gateway = "gw-gone"
    keys = [c.keys.roster(gateway), c.keys.dead_roster(gateway, "t1"), c.keys.dead_rosters()]
    if registry:
        keys += [REGISTRY, c.keys.rosters()]
    return int(c.run(wh.TAKE, keys, [wh.dead_member(gateway, "t1"), gateway]))


def test_take_moves_a_dead_roster_aside_and_unlists_a_gateway_with_none(c: Contract) -> None:
    roster, listed = c.keys.roster("gw-gone"), c.keys.rosters()
    c.client.hset(roster, mapping={wh.ROSTER_INC: "i1", "conn1": "i1\tann"})
    c.client.sadd(listed, "gw-gone")
    c.client.hset(REGISTRY, "addr", "127.0.0.1:1")
    assert take(c, registry=True) == 0  # alive: nothing moves
    assert c.client.exists(roster) and c.client.sismember(listed, "gw-gone")
    c.client.delete(REGISTRY)
    assert take(c, registry=True) == 1
    assert not c.client.exists(roster)
    assert c.client.hget(c.keys.dead_roster("gw-gone", "t1"), "conn1") == b"i1\tann"
    assert c.client.smembers(c.keys.dead_rosters()) == {wh.dead_member("gw-gone", "t1").encode()}
    # no roster left: off the list in the same call, not by a later SREM that could remove a
    # gateway which came back and listed itself in between
    assert take(c, registry=True) == -1
    assert not c.client.sismember(listed, "gw-gone")
    # a gateway taking its predecessor's roster passes no list: it lists itself after
    c.client.sadd(listed, "gw-gone")
    assert take(c, registry=False) == -1
    assert c.client.sismember(listed, "gw-gone")
