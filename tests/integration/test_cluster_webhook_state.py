"""The gateway's webhook state and the dispatcher's sweep on a real Redis Cluster
(gateway/clusterwebhookstate.py, switchboard/webhooks/sweep.py): without a transaction that
spans slots, a write held by a stopped master and sent again is still applied once in effect,
and the sweep, in steps, leaves every connection of a dead gateway."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway import clusterwebhookstate
from gateway.clusterwebhookstate import ClusterWebhookState
from switchboard import contract, receipts, streams
from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.clusterstore import ClusterStore
from switchboard.config import GatewaySettings, RedisSettings, WebhookSettings
from switchboard.localcluster import LocalCluster, start_cluster
from switchboard.redisurl import parse_cluster
from switchboard.store import Target
from switchboard.webhooks.sweep import Sweeper
from tests.clients import until
from tests.cluster_support import user_on
from tests.integration.test_webhook_state import events_of as node_events_of
from tests.integration.test_webhook_state import reg

pytestmark = pytest.mark.integration

GATEWAY = "gw-under-test"
KEYS = wh.WebhookKeys(cluster=True)


@pytest.fixture
def masters_only() -> Iterator[LocalCluster]:
    """No replicas: a master stopped for seconds is not failed over, it is only late."""
    cluster = start_cluster(masters=3, replicas_per_master=0, node_timeout_ms=1000,
                            start_timeout=60)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def client(masters_only: LocalCluster) -> AsyncIterator[RedisCluster]:
    seeds = [ClusterNode(h, p) for h, p in parse_cluster(masters_only.url).seeds]
    c = RedisCluster(startup_nodes=seeds)
    try:
        yield c
    finally:
        await c.aclose()


def settings(cluster: LocalCluster) -> GatewaySettings:
    # no debounce: a write applied twice would report a second online/offline at once
    return GatewaySettings(redis_url=cluster.url, redis_timeout=0.3,
                           webhook_url="http://127.0.0.1:9/unused", webhook_offline_delay=0)


async def events_of(client: RedisCluster, entity: str) -> list[tuple[str, str]]:
    return await node_events_of(client, entity, KEYS)


class Running:
    def __init__(self, cluster: LocalCluster, gateway_id: str = GATEWAY) -> None:
        s = settings(cluster)
        self.state = ClusterWebhookState(s, gateway_id,
                                         clusterwebhookstate.connection(s, gateway_id))
        self.task = asyncio.create_task(self.state.run())

    async def flushed(self) -> None:
        assert await self.state.flushed(30), "webhook state not written"

    async def close(self) -> None:
        self.task.cancel()
        await self.state.aclose()


async def test_a_write_held_by_a_stopped_master_is_applied_once_in_effect(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    running = Running(masters_only)
    # a user whose master is not the roster's: the roster's entries go first, unhindered,
    # and the scripts are what the stopped master holds
    roster_master = masters_only.master_of_slot(LocalCluster.slot_of(KEYS.roster(GATEWAY)))
    user = user_on(masters_only, "alice", lambda m: m.port != roster_master.port)
    held = masters_only.master_of_slot(KEYS.partition(streams.user_key(user)))
    warm = user_on(masters_only, "warm", lambda m: m.port == held.port)
    try:
        # a connection to that master is open: the write reaches it, and waits there
        running.state.connected(reg(warm, "w1"))
        await running.flushed()
        held.proc.send_signal(signal.SIGSTOP)  # the master keeps every copy, unanswered
        try:
            alice = reg(user, "a1", "room")
            running.state.connected(alice)
            running.state.disconnected(alice)
            # sent again at least once while the first copies wait in the master's socket
            await until(lambda: running.state.failures >= 2, 20, "the write sent again")
        finally:
            held.proc.send_signal(signal.SIGCONT)
        await running.flushed()
        # A repeat of a connect after its disconnect would leave the user online for ever, and
        # with no debounce it would say online, offline, online, offline.
        assert await events_of(client, f"u:{user}") == [("user.online", ""),
                                                       ("user.offline", "closed")]
        assert await client.hlen(KEYS.user(user)[1]) == 0
        assert [t for t, _ in await events_of(client, "c:room")] == [
            "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
        # a1's entries came and went: the roster holds the warm-up connection only
        assert set(await client.hkeys(KEYS.roster(GATEWAY))) == {wh.ROSTER_INC.encode(),
                                                                  b"w1"}
        # the partitions that got events were hinted to the dispatcher
        hinted = {int(p) for p in await client.smembers(KEYS.hints())}
        assert KEYS.partition(streams.user_key(user)) in hinted
    finally:
        await running.close()


async def test_the_sweep_in_steps_leaves_every_connection_of_a_dead_gateway(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    running = Running(masters_only)
    try:
        alice, bob = reg("alice", "a1", "room"), reg("bob", "b1")
        running.state.connected(alice)
        running.state.connected(bob)
        await running.flushed()
    finally:
        await running.close()  # dies with both connected: nothing left by itself
    sweeper = Sweeper(WebhookSettings(redis_url=masters_only.url, webhook_offline_delay=0),
                      client, KEYS)
    registry = contract.Keys().gateway(GATEWAY)
    await client.set(registry, "alive")
    await sweeper.sweep()  # a gateway with a registry entry is alive: nothing happens
    assert await events_of(client, "u:bob") == [("user.online", "")]
    await client.delete(registry)
    await sweeper.sweep()
    for user in ("alice", "bob"):
        assert await events_of(client, f"u:{user}") == [("user.online", ""),
                                                         ("user.offline", "gateway_lost")]
    assert [t for t, _ in await events_of(client, "c:room")] == [
        "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
    assert sweeper.swept == 2
    assert not await client.smembers(KEYS.dead_rosters())
    await sweeper.sweep()  # swept once: a second sweep reports nothing, and unlists it
    assert len(await events_of(client, "u:alice")) == 2
    assert not await client.smembers(KEYS.rosters())


async def test_a_gateway_starting_under_its_predecessors_id_has_its_users_swept(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    first = Running(masters_only)
    try:
        first.state.connected(reg("carol", "c1"))
        await first.flushed()
    finally:
        await first.close()
    second = Running(masters_only)  # the same id, before the first one's entry expired
    try:
        await until(lambda: second.state.started, 20, "roster taken over")
        second.state.connected(reg("dave", "d1"))
        await second.flushed()
        sweeper = Sweeper(WebhookSettings(redis_url=masters_only.url,
                                          webhook_offline_delay=0), client, KEYS)
        await client.set(contract.Keys().gateway(GATEWAY), "alive")  # the second one's
        await sweeper.sweep()
        assert await events_of(client, "u:carol") == [("user.online", ""),
                                                       ("user.offline", "gateway_lost")]
        assert await events_of(client, "u:dave") == [("user.online", "")]
        roster: dict[Any, Any] = await client.hgetall(KEYS.roster(GATEWAY))
        assert b"d1" in roster and b"c1" not in roster
    finally:
        await second.close()


def sweeper_of(cluster: LocalCluster, client: RedisCluster) -> Sweeper:
    return Sweeper(WebhookSettings(redis_url=cluster.url, webhook_offline_delay=0), client,
                   KEYS)


async def test_a_leave_and_rejoin_queued_together_keep_the_roster_entry(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    """A leave and a rejoin of one channel on one connection, queued together: the rejoin's
    roster entry must not go into the leave's batch, whose last step removes it again (the
    member would then be left by no sweep)."""
    running = Running(masters_only)
    try:
        erin = reg("erin", "e1", "room")
        running.state.connected(erin)
        await running.flushed()
        running.state.left(erin, "room")
        running.state.joined(erin, "room")
        await running.flushed()
        assert await client.hexists(KEYS.roster(GATEWAY), wh.roster_field("e1", "room"))
    finally:
        await running.close()  # dies with erin in the room
    await sweeper_of(masters_only, client).sweep()
    assert [t for t, _ in await events_of(client, "c:room")] == [
        "channel.occupied", "presence.join", "presence.leave", "channel.vacated",
        "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
    assert not await client.hlen(KEYS.channel("room")[1])  # nobody left in the room


async def test_a_write_refused_by_the_master_is_sent_again_not_dropped(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    """NOREPLICAS (min-replicas-to-write) means the script never ran: the batch waits,
    the roster keeps the connection, and the leave is written once the master takes it."""
    running = Running(masters_only)
    master = masters_only.master_of_slot(KEYS.partition(streams.user_key("fay")))
    node = redis.Redis(host=master.host, port=master.port, socket_timeout=5)
    try:
        fay = reg("fay", "f1")
        running.state.connected(fay)
        await running.flushed()
        node.config_set("min-replicas-to-write", 1)  # no replicas here: every write refused
        try:
            failures = running.state.failures
            running.state.disconnected(fay)
            await until(lambda: running.state.failures > failures, 20, "the refusal")
            # still held: a gateway dying now leaves fay to the sweep
            assert await client.hexists(KEYS.roster(GATEWAY), "f1")
        finally:
            node.config_set("min-replicas-to-write", 0)
        await running.flushed()
        assert await events_of(client, "u:fay") == [("user.online", ""),
                                                     ("user.offline", "closed")]
        assert not await client.hexists(KEYS.roster(GATEWAY), "f1")
    finally:
        node.close()
        await running.close()


async def test_a_connection_written_again_under_a_new_incarnation_is_swept_either_way(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    """rewritten(): until the state names the new holder, the roster names both, so a sweep
    in between still leaves the connection; once settled it names the new one only."""
    running = Running(masters_only)
    gil = reg("gil", "g1", "den")
    try:
        running.state.connected(gil)
        await running.flushed()
        old = running.state.incarnation
        running.state.rewritten([gil])
        await running.flushed()
        new = running.state.incarnation
        assert new != old
        roster = KEYS.roster(GATEWAY)
        for field in ("g1", wh.roster_field("g1", "den")):
            assert await client.hget(roster, field) == wh.roster_value(new, "gil").encode()
        assert await client.hget(KEYS.user("gil")[1], "g1") == f"{GATEWAY}/{new}".encode()
        # the moment in between, as a gateway dying there leaves it: the state still under
        # the old holder, the roster naming both
        await client.hset(KEYS.user("gil")[1], "g1", f"{GATEWAY}/{old}")
        await client.hset(KEYS.channel("den")[1], "g1", f"{GATEWAY}/{old}")
        both = wh.roster_value(f"{new},{old}", "gil")
        await client.hset(roster, mapping={"g1": both, wh.roster_field("g1", "den"): both})
    finally:
        await running.close()
    await sweeper_of(masters_only, client).sweep()
    assert await events_of(client, "u:gil") == [("user.online", ""),
                                                 ("user.offline", "gateway_lost")]
    assert [t for t, _ in await events_of(client, "c:den")][-2:] == [
        "presence.leave", "channel.vacated"]


async def test_take_slot_is_a_repeatable_move_and_a_finished_token_is_refused(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    g = "gw-dead"
    roster, dead, swept = KEYS.roster(g), KEYS.dead_roster(g, "T1"), KEYS.swept(g, "T1")
    alive = KEYS.alive(g)

    async def take(token_keys: list[str], check_alive: str = "1") -> int:
        return int(await client.eval(wh.TAKE_SLOT.source, 4, *token_keys, alive,
                                     check_alive))

    await client.hset(roster, mapping={"c1": "inc\tuser"})
    await client.set(alive, 1)
    assert await take([roster, dead, swept]) == 0  # alive: not moved
    assert await take([roster, dead, swept], "0") == 1  # a predecessor's: moved anyway
    assert await take([roster, dead, swept]) == 1  # a repeat of a move that was made
    assert await client.hget(dead, "c1") == b"inc\tuser"
    finish = wh.FINISH.source
    assert await client.eval(finish, 2, dead, swept, 60000, wh.ROSTER_INC) == 0  # a conn
    await client.hdel(dead, "c1")
    assert await client.eval(finish, 2, dead, swept, 60000, wh.ROSTER_INC) == 1
    assert not await client.exists(dead)
    await client.hset(roster, mapping={"c2": "inc\tuser"})  # a late move under T1
    assert await take([roster, dead, swept], "0") == -2
    assert await client.hget(roster, "c2") == b"inc\tuser"  # left where it is, listed


async def test_one_master_down_leaves_the_others_partitions_readable(
        masters_only: LocalCluster) -> None:
    client, url = connect_cluster(masters_only.url, 0.5)
    peeker = ClusterPipelined(client, url, 0.5, client_name="test-peek", scripts=[wh.PEEK])
    down = masters_only.masters()[0]
    calls = [(KEYS.part_keys(p), []) for p in range(KEYS.partitions)]
    try:
        assert len(await peeker.run_script_many(wh.PEEK, calls)) == KEYS.partitions
        down.proc.send_signal(signal.SIGSTOP)
        try:
            peeks = await peeker.run_script_many(wh.PEEK, calls, raise_on_error=False)
        finally:
            down.proc.send_signal(signal.SIGCONT)
        failed = {p for p, peek in enumerate(peeks) if isinstance(peek, Exception)}
        owned = {slot for slot, nodes in client.nodes_manager.slots_cache.items()
                 if int(nodes[0].port) == down.port}
        assert owned and failed == owned
    finally:
        peeker.close()
        await client.aclose()


async def test_a_receipt_publish_is_stored_when_its_hint_cannot_be(
        masters_only: LocalCluster, client: RedisCluster) -> None:
    store = ClusterStore.open(RedisSettings(redis_url=masters_only.url, redis_timeout=2),
                              "test-receipt-hint")
    try:
        await client.set(KEYS.hints(), "not a set")  # SADD there fails: WRONGTYPE
        published = await store.publish(Target("u", "hal"), "hi", receipt_ms=5000)
        assert published.offset == 1
        assert await client.zcard(receipts.receipts_key("sb:", "hal")) == 1
    finally:
        await store.aclose()


async def test_a_settled_roster_entry_waits_for_the_state_it_names(
        masters_only: LocalCluster, client: RedisCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """rewritten(): wherever a batch is cut, the entry naming only the new incarnation is
    written after the script that gives the state that holder; until then a sweep must
    still find the old one. Batches of 3 put the cut between the entry's first write and its
    script; the script's master refuses writes meanwhile."""
    roster_master = masters_only.master_of_slot(LocalCluster.slot_of(KEYS.roster(GATEWAY)))
    user = user_on(masters_only, "ida", lambda m: m.port != roster_master.port)
    held = masters_only.master_of_slot(KEYS.partition(streams.user_key(user)))
    node = redis.Redis(host=held.host, port=held.port, socket_timeout=5)
    running = Running(masters_only)
    ida = reg(user, "i1")
    try:
        running.state.connected(ida)
        await running.flushed()
        old = running.state.incarnation
        monkeypatch.setattr(clusterwebhookstate, "CHUNK", 3)
        node.config_set("min-replicas-to-write", 1)
        try:
            failures = running.state.failures
            running.state.rewritten([ida])  # [_inc, listing, entry] | [USER_ON, settle]
            await until(lambda: running.state.failures > failures, 20, "the refusal")
            new = running.state.incarnation
            assert await client.hget(KEYS.user(user)[1], "i1") == f"{GATEWAY}/{old}".encode()
            assert await client.hget(KEYS.roster(GATEWAY), "i1") == wh.roster_value(
                f"{new},{old}", user).encode()
        finally:
            node.config_set("min-replicas-to-write", 0)
        await running.flushed()
        assert await client.hget(KEYS.roster(GATEWAY), "i1") == wh.roster_value(
            new, user).encode()
        assert await client.hget(KEYS.user(user)[1], "i1") == f"{GATEWAY}/{new}".encode()
    finally:
        node.close()
        await running.close()
