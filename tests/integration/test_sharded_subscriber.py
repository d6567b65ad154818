"""The sharded pub/sub subscriber (gateway/sharded.py) against a real 3-master/3-replica
Redis Cluster: delivery over one link per master, and every way a subscription can go away
(its client killed, its slot resharded, its master SIGKILLed and failed over, its connection
gone deaf) reported through on_lost, then on_restored once Redis confirmed it again, with
publishes afterwards reaching us exactly once.

The cluster's faults are driven from a thread (``asyncio.to_thread``): LocalCluster waits by
polling with blocking sleeps, and the subscriber has to repair itself meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.sharded import ShardedSubscriber
from switchboard.localcluster import LocalCluster, Node
from switchboard.redisurl import parse_cluster
from tests.cluster_support import key_in_slot
from tests.relay import Relay

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # the subscriber's Redis timeout: want() waits twice this
NAME = "sb:test:sharded"
PER_MASTER = 10
WAIT = 30.0  # generous: a small shared machine


def canary_channel(slot: int) -> str:
    return key_in_slot(slot, "sb:canary:")


async def wait_until(what: str, cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


class Harness:
    """A subscriber on the cluster, what it reported, and a separate client to publish."""

    def __init__(self, lc: LocalCluster,
                 remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None) -> None:
        self.lc = lc
        seeds = parse_cluster(lc.url).seeds
        self.cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds],
                                    socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                    address_remap=remap)
        self.pub = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds],
                                socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        self.messages: Counter[tuple[str, str]] = Counter()
        self.events: list[tuple[str, frozenset[str], str]] = []  # (lost|restored, chans, why)
        self.sub = ShardedSubscriber(
            self.cluster, parse_cluster(lc.url), client_name=NAME, timeout=TIMEOUT,
            canary_channel=canary_channel, on_message=self.on_message, on_lost=self.on_lost,
            on_restored=self.on_restored)

    def on_message(self, channel: bytes, payload: bytes) -> None:
        self.messages[channel.decode(), payload.decode()] += 1

    def on_lost(self, channels: list[str], reason: str) -> None:
        assert len(channels) == len(set(channels))
        self.events.append(("lost", frozenset(channels), reason))

    def on_restored(self, channels: list[str]) -> None:
        self.events.append(("restored", frozenset(channels), ""))

    async def start(self) -> None:
        await self.cluster.initialize()
        await self.pub.initialize()
        self.sub.start()

    async def close(self) -> None:
        started = time.monotonic()
        await self.sub.stop()
        assert time.monotonic() - started < 3 * TIMEOUT + 2, "stop() must be bounded"
        await self.cluster.aclose()
        await self.pub.aclose()

    # -- what was reported

    def lost(self, reason: str | None = None) -> set[str]:
        return {c for kind, chans, why in self.events if kind == "lost"
                and (reason is None or why == reason) for c in chans}

    def restored(self) -> set[str]:
        return {c for kind, chans, _ in self.events if kind == "restored" for c in chans}

    def reasons(self) -> set[str]:
        return {why for kind, _, why in self.events if kind == "lost"}

    def assert_paired(self) -> None:
        """Per channel: lost, restored, lost, restored... never twice in a row."""
        state: dict[str, str] = {}
        for kind, chans, _ in self.events:
            for c in chans:
                assert state.get(c, "restored") != kind, f"{c} {kind} twice: {self.events}"
                state[c] = kind
        assert all(s == "restored" for s in state.values()), f"not restored: {state}"

    # -- channels, publishing, proving

    def owner(self, channel: str) -> str:
        return str(self.pub.nodes_manager.get_node_from_slot(self.pub.keyslot(channel)).name)

    def spread(self, per_master: int = PER_MASTER) -> dict[str, list[str]]:
        """``per_master`` channel names for each master, by the master's address."""
        groups: dict[str, list[str]] = {n.addr: [] for n in self.lc.masters()}
        for i in range(100_000):  # bounded; ~30 names cover 3 masters
            name = f"sb:ch:{i}"
            group = groups[self.owner(name)]
            if len(group) < per_master:
                group.append(name)
            if all(len(g) == per_master for g in groups.values()):
                return groups
        raise AssertionError("could not spread channels over the masters")

    async def want_all(self, channels: list[str]) -> None:
        await asyncio.gather(*(self.sub.want(c) for c in channels))

    async def publish(self, channels: list[str], tag: str, timeout: float = WAIT) -> None:
        """SPUBLISH once to each channel (retrying what failed: the cluster may be healing);
        each must reach exactly one subscriber, and arrive."""
        deadline = time.monotonic() + timeout
        for channel in channels:
            while True:
                try:
                    receivers = await self.pub.spublish(channel, f"{tag}:{channel}")
                    break
                except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert receivers == 1, f"SPUBLISH {channel} reached {receivers} subscribers"
        expected = {(c, f"{tag}:{c}") for c in channels}
        await wait_until(f"{tag} messages", lambda: expected <= self.messages.keys(), timeout)

    async def prove(self, timeout: float = WAIT) -> None:
        """Ping rounds (as the gateway's heartbeat does) until unready is None."""
        deadline = time.monotonic() + timeout
        while True:
            await self.sub.ping(int(time.time() * 1000))
            self.sub.check()
            for _ in range(15):
                if self.sub.unready is None:
                    return
                await asyncio.sleep(0.02)
            if time.monotonic() > deadline:
                raise AssertionError(f"still unready after {timeout:.0f}s: {self.sub.unready}")

    def assert_once(self) -> None:
        twice = {k: n for k, n in self.messages.items() if n != 1}
        assert not twice, f"delivered more than once: {twice}"
        assert not any(c.startswith("sb:canary:") for c, _ in self.messages), "canary leaked"


@pytest.fixture
async def harness(redis_cluster: LocalCluster) -> AsyncIterator[Harness]:
    h = Harness(redis_cluster)
    await h.start()
    try:
        yield h
    finally:
        await h.close()


def node_client(node: Node) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, socket_timeout=5, decode_responses=True)


def our_client_ids(node: Node) -> list[int]:
    with node_client(node) as client:
        return [int(c["id"]) for c in client.client_list() if c.get("name") == NAME]


def node_by_addr(lc: LocalCluster, addr: str) -> Node:
    host, _, port = addr.rpartition(":")
    node = lc.by_addr(host, int(port))
    assert node is not None, addr
    return node


async def test_channels_over_every_master_arrive_exactly_once(harness: Harness) -> None:
    assert harness.sub.unready is None, "nothing wanted: nothing to prove"
    groups = harness.spread()
    channels = [c for g in groups.values() for c in g]
    await harness.want_all(channels)
    await harness.want_all(channels[:5])  # idempotent: no second subscription
    # one link per master, each with our name and nothing else of ours there
    for addr in groups:
        assert len(our_client_ids(node_by_addr(harness.lc, addr))) == 1, addr
    await harness.prove()
    await harness.publish(channels, "a")
    await harness.publish(channels, "b")  # a second round on the same subscriptions
    harness.assert_once()
    assert not harness.events

    # drop: SUNSUBSCRIBE; a publish reaches nobody, the others still arrive
    dropped, kept = channels[0], channels[1:]
    harness.sub.drop(dropped)
    deadline = time.monotonic() + WAIT
    while await harness.pub.spublish(dropped, "x") != 0:
        assert time.monotonic() < deadline, "dropped channel still subscribed"
        await asyncio.sleep(0.02)
    await harness.publish(kept, "c")
    harness.assert_once()
    await harness.prove()


async def test_want_follows_moved_from_a_stale_slot_map(harness: Harness) -> None:
    """Our slot map says the wrong master (as after a reshard elsewhere): SSUBSCRIBE gets
    MOVED, the map is read again, and want() returns once the real owner confirmed."""
    groups = harness.spread(1)
    [right, wrong] = list(groups)[:2]
    channel = groups[right][0]
    slot = harness.cluster.keyslot(channel)
    nodes = harness.cluster.nodes_manager
    stale = next(n for n in nodes.nodes_cache.values() if n.name == wrong)
    nodes.slots_cache[slot] = [stale]
    await harness.sub.want(channel)
    assert nodes.get_node_from_slot(slot).name == right, "the map was read again"
    await harness.publish([channel], "moved")
    await harness.prove()
    assert not harness.events, "never confirmed before: nothing to report lost"


async def test_client_kill_is_reported_and_repaired(harness: Harness) -> None:
    groups = harness.spread()
    channels = [c for g in groups.values() for c in g]
    await harness.want_all(channels)
    await harness.prove()
    addr = next(iter(groups))
    node = node_by_addr(harness.lc, addr)
    [client_id] = our_client_ids(node)
    with node_client(node) as client:
        assert client.client_kill_filter(_id=client_id) == 1

    await wait_until("on_lost", lambda: bool(harness.lost()))
    assert harness.events[0] == ("lost", frozenset(groups[addr]), "connection")
    await wait_until("on_restored", lambda: harness.restored() == set(groups[addr]))
    assert harness.lost() == set(groups[addr]), "only the killed link's channels"
    harness.assert_paired()
    ids = our_client_ids(node)
    assert len(ids) == 1 and ids != [client_id], f"one new link to that master, not {ids}"
    await harness.publish(channels, "after")
    await harness.prove()
    harness.assert_once()


async def test_resharded_slots_are_reported_and_followed(harness: Harness) -> None:
    lc = harness.lc
    groups = harness.spread()
    source_addr, target_addr = list(groups)[:2]
    source, target = node_by_addr(lc, source_addr), node_by_addr(lc, target_addr)
    # redis-cli reshard takes the source's lowest slots: channels in those move (as does
    # the source link's canary, in its lowest slot); ones elsewhere stay
    owned = sorted(s for s, nodes in harness.pub.nodes_manager.slots_cache.items()
                   if nodes[0].name == source_addr)
    moving_slots = 20
    movers = [key_in_slot(owned[i], f"sb:mv{i}:") for i in (0, 1, 7, moving_slots - 1)]
    channels = [c for g in groups.values() for c in g] + movers
    await harness.want_all(channels)
    await harness.prove()
    slot_of = {c: harness.pub.keyslot(c) for c in channels}

    await asyncio.to_thread(lc.reshard, moving_slots, source, target, 60.0)
    await harness.pub.nodes_manager.initialize()
    moved = {c for c in channels if slot_of[c] in set(owned[:moving_slots])}
    assert set(movers) <= moved
    assert all(harness.owner(c) == target_addr for c in moved), "reshard moved other slots"

    await wait_until("on_lost for the moved channels", lambda: harness.lost() >= moved)
    await wait_until("on_restored", lambda: harness.restored() >= moved)
    assert harness.lost() == moved, "only channels whose slot moved"
    assert harness.reasons() == {"slot_moved"}
    harness.assert_paired()
    await harness.publish(channels, "after")
    await harness.prove()  # the source link's canary moved too: subscribed again, proven
    harness.assert_once()


async def test_killed_master_fails_over_and_channels_follow(harness: Harness) -> None:
    lc = harness.lc
    groups = harness.spread()
    channels = [c for g in groups.values() for c in g]
    await harness.want_all(channels)
    await harness.prove()
    addr = next(iter(groups))
    victim = node_by_addr(lc, addr)

    await asyncio.to_thread(lc.kill, victim)
    await wait_until("on_lost", lambda: bool(harness.lost()))
    assert harness.events[0] == ("lost", frozenset(groups[addr]), "connection")
    assert harness.sub.unready is not None, "a node's channels are not subscribed"
    promoted = await asyncio.to_thread(lc.wait_failover, victim, 30.0)
    assert promoted is not victim
    await wait_until("on_restored", lambda: harness.restored() == set(groups[addr]))
    assert harness.lost() == set(groups[addr])
    harness.assert_paired()
    await harness.pub.nodes_manager.initialize()
    assert {harness.owner(c) for c in groups[addr]} == {promoted.addr}
    await harness.publish(channels, "after")
    await harness.prove()
    harness.assert_once()


@pytest.fixture
def relays(redis_cluster: LocalCluster) -> Iterator[dict[tuple[str, int], Relay]]:
    """A TCP relay in front of each master: (host, port) of the master -> its relay."""
    started: dict[tuple[str, int], Relay] = {}
    try:
        for node in redis_cluster.masters():
            relay = Relay(node.port)
            relay.start()
            started[node.host, node.port] = relay
        yield started
    finally:
        for relay in started.values():
            relay.close()


async def test_deaf_links_are_found_by_the_canary(redis_cluster: LocalCluster,
                                                  relays: dict[tuple[str, int], Relay]) -> None:
    """Every link runs through a relay that goes silent: nothing errors, Redis still counts
    our subscriptions, only the canary pings not coming back can tell."""
    def remap(addr: tuple[str, int]) -> tuple[str, int]:
        relay = relays.get(addr)
        return addr if relay is None else ("127.0.0.1", relay.port)

    harness = Harness(redis_cluster, remap)
    await harness.start()
    try:
        groups = harness.spread()
        channels = [c for g in groups.values() for c in g]
        await harness.want_all(channels)
        await harness.prove()
        assert {r.deafen() for r in relays.values()} == {1}, "one subscribed link per relay"

        deadline = time.monotonic() + WAIT
        while harness.lost() != set(channels):  # the gateway's heartbeat: ping, then check
            assert time.monotonic() < deadline, f"canary never failed: {harness.events}"
            await harness.sub.ping(int(time.time() * 1000))
            harness.sub.check()
            await asyncio.sleep(0.2)
        assert harness.reasons() == {"canary"}
        await wait_until("on_restored", lambda: harness.restored() == set(channels))
        harness.assert_paired()
        await harness.publish(channels, "after")
        await harness.prove()
        harness.assert_once()
    finally:
        await harness.close()

