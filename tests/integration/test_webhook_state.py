"""What a gateway writes for the webhook dispatcher (gateway/webhookstate.py) and how the
dispatcher's sweep leaves a dead gateway's connections (switchboard/webhooks/sweep.py),
against a real redis-server: a write is applied once even when its reply never came, and a
sweep leaves every connection of a dead roster, whatever incarnation wrote it."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from gateway import webhookstate
from gateway.ports import Registration
from gateway.webhookstate import WebhookState
from switchboard import contract, streams
from switchboard import whcontract as wh
from switchboard.config import GatewaySettings, WebhookSettings
from switchboard.store import text
from switchboard.webhooks.sweep import Sweeper
from tests.clients import until, until_async
from tests.relay import Relay
from tests.support import RedisServer

pytestmark = pytest.mark.integration

GATEWAY = "gw-under-test"
NODE_KEYS = wh.WebhookKeys()


def settings(redis_server: RedisServer, url: str | None = None,
             timeout: float = 0.3) -> GatewaySettings:
    # no debounce: a write applied twice would report a second online/offline at once
    return GatewaySettings(redis_url=url or redis_server.url, redis_timeout=timeout,
                           webhook_url="http://127.0.0.1:9/unused", webhook_offline_delay=0)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    c = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield c
    finally:
        await c.aclose()


async def events_of(client: Any, entity: str,
                    keys: wh.WebhookKeys = NODE_KEYS) -> list[tuple[str, str]]:
    entries = await client.xrange(keys.outbox(keys.partition(entity)))
    found = [json.loads(fields[b"e"]) for _, fields in entries]
    return [(e["type"], e.get("reason", "")) for e in found
            if e["id"].startswith(entity + "/")]


class Running:
    """A WebhookState with its sending loop, over its own pipelined connection."""

    def __init__(self, redis_server: RedisServer, gateway_id: str = GATEWAY, *,
                 url: str | None = None, timeout: float = 0.3) -> None:
        s = settings(redis_server, url, timeout)
        self.redis = webhookstate.connection(s, gateway_id)
        self.state = WebhookState(s, gateway_id, self.redis)
        self.task = asyncio.create_task(self.state.run())

    async def flushed(self) -> None:
        assert await self.state.flushed(15), "webhook state not written"

    def close(self) -> None:
        self.task.cancel()
        self.redis.close()


def reg(user: str, conn: str, *channels: str) -> Registration:
    return Registration(user=user, conn_id=conn, session_id=streams.random_id(),
                        channels=channels)


async def test_a_write_applied_after_its_timeout_is_not_applied_again(
        redis_server: RedisServer, client: Any) -> None:
    running = Running(redis_server)
    try:
        await until(lambda: running.state.started, 10, "first write")
        redis_server.proc.send_signal(signal.SIGSTOP)  # Redis holds the write, unanswered
        try:
            alice = reg("alice", "a1")
            running.state.connected(alice)
            running.state.disconnected(alice)
            await until(lambda: running.state.failures >= 1, 10, "the write timed out")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        await running.flushed()
        # Redis applied the timed-out write when it went on; sending it again changed nothing
        assert running.state.repeats >= 1
        assert await events_of(client, "u:alice") == [("user.online", ""),
                                                       ("user.offline", "closed")]
    finally:
        running.close()


async def test_the_sweep_leaves_every_connection_of_a_dead_roster(
        redis_server: RedisServer, client: Any) -> None:
    running = Running(redis_server)
    try:
        alice, bob = reg("alice", "a1", "room"), reg("bob", "b1")
        running.state.connected(alice)
        running.state.connected(bob)
        # The registry entry was lost: alice is written again under a new incarnation, and
        # the gateway dies before bob is (his entry is still under the first one).
        running.state.new_incarnation()
        running.state.connected(alice)
        await running.flushed()
    finally:
        running.close()
    s = settings(redis_server)
    sweeper = Sweeper(WebhookSettings(redis_url=s.redis_url, webhook_offline_delay=0),
                      client, wh.WebhookKeys())
    registry = contract.Keys().gateway(GATEWAY)
    await client.set(registry, "alive")
    await sweeper.sweep()  # a gateway with a registry entry is alive: nothing happens
    assert await events_of(client, "u:bob") == [("user.online", "")]
    await client.delete(registry)
    await sweeper.sweep()
    assert await events_of(client, "u:alice") == [("user.online", ""),
                                                   ("user.offline", "gateway_lost")]
    assert await events_of(client, "u:bob") == [("user.online", ""),
                                                 ("user.offline", "gateway_lost")]
    assert [t for t, _ in await events_of(client, "c:room")] == [
        "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
    assert sweeper.swept == 2  # alice's entry (rewritten in place) and bob's, each once
    assert not await client.smembers(wh.WebhookKeys().dead_rosters())
    await sweeper.sweep()  # swept once: a second sweep reports nothing
    assert len(await events_of(client, "u:alice")) == 2


async def test_a_gateway_starting_under_its_predecessors_id_moves_its_roster_aside(
        redis_server: RedisServer, client: Any) -> None:
    first = Running(redis_server)
    try:
        first.state.connected(reg("carol", "c1"))
        await first.flushed()
    finally:
        first.close()  # dies: nothing unregistered
    second = Running(redis_server)  # the same gateway id, alive (a registry entry)
    try:
        await client.set(contract.Keys().gateway(GATEWAY), "alive")
        second.state.connected(reg("dave", "d1"))
        await second.flushed()
    finally:
        second.close()
    keys = wh.WebhookKeys()
    roster = {k.decode(): v.decode() for k, v in
              (await client.hgetall(keys.roster(GATEWAY))).items()}
    assert set(roster) == {wh.ROSTER_INC, "d1"}  # only what the living one wrote
    sweeper = Sweeper(WebhookSettings(redis_url=redis_server.url, webhook_offline_delay=0),
                      client, keys)
    await sweeper.sweep()
    assert await events_of(client, "u:carol") == [("user.online", ""),
                                                   ("user.offline", "gateway_lost")]
    assert await events_of(client, "u:dave") == [("user.online", "")]


async def connections_named(client: Any, name: str) -> int:
    return sum(1 for c in await client.client_list() if c["name"] == name)


async def test_a_first_copy_arriving_after_its_repeat_is_not_applied(
        redis_server: RedisServer, client: Any, relay: Relay) -> None:
    running = Running(redis_server, url=relay.url)
    name = f"{settings(redis_server).prefix}webhooks:{GATEWAY}"
    try:
        await until(lambda: running.state.started, 10, "first write")
        assert relay.hold() == 1  # what the state's connection sends now stays in flight
        alice = reg("alice", "a1")
        running.state.connected(alice)
        await until(lambda: running.state.failures >= 1, 10, "the write timed out")
        await running.flushed()  # sent again, over a new connection
        running.state.disconnected(alice)
        await running.flushed()
        relay.release()  # the first copy arrives: after its repeat, and after the offline
        await until_async(lambda: _one(client, name), 10, "the first connection gone")
        # the new connection had Redis close the old one first: the late copy never ran
        assert await events_of(client, "u:alice") == [("user.online", ""),
                                                       ("user.offline", "closed")]
    finally:
        running.close()


async def _one(client: Any, name: str) -> bool:
    return await connections_named(client, name) == 1


async def test_a_marker_changed_under_the_watch_is_no_repeat(
        redis_server: RedisServer, client: Any, relay: Relay) -> None:
    # a long timeout: the transaction is held in flight, not timed out
    running = Running(redis_server, url=relay.url, timeout=30)
    try:
        await until(lambda: running.state.started, 10, "first write")
        assert relay.hold(b"*1\r\n$5\r\nMULTI") == 1  # WATCH and SENT go through
        running.state.connected(reg("alice", "a1"))
        await until(lambda: b"EXEC" in relay.held(), 10, "the transaction in flight")
        # someone else (a second process under our id) writes the marker meanwhile
        await client.set(wh.WebhookKeys().sent(GATEWAY), "not ours")
        relay.release()  # EXEC finds the WATCH set off, though this transaction never ran
        await running.flushed()
        assert running.state.repeats == 0
        assert await events_of(client, "u:alice") == [("user.online", "")]
    finally:
        running.close()


async def test_a_sweep_goes_past_what_it_cannot_leave_and_comes_back_for_it(
        redis_server: RedisServer, client: Any) -> None:
    keys = wh.WebhookKeys()
    # Dead rosters that are no hashes: each fails its sweep. Ten of them, so that in any
    # order Redis lists the set in, a sweep that stopped at the first failure would most
    # likely never reach the real one.
    for n in range(10):
        await client.sadd(keys.dead_rosters(), wh.dead_member(f"gw-broken-{n}", "t"))
        await client.set(keys.dead_roster(f"gw-broken-{n}", "t"), "not a roster")
    running = Running(redis_server)
    try:
        for user in ("alice", "bob", "carol"):
            running.state.connected(reg(user, f"{user}-1"))
        await running.flushed()
    finally:
        running.close()
    # carol's leave cannot be written yet: her connection hash is of the wrong type
    carol_conns = keys.user("carol")[1]
    held = await client.hgetall(carol_conns)
    await client.delete(carol_conns)
    await client.set(carol_conns, "broken")
    sweeper = Sweeper(WebhookSettings(redis_url=redis_server.url, webhook_offline_delay=0),
                      client, keys)
    await sweeper.sweep()
    for user in ("alice", "bob"):
        assert await events_of(client, f"u:{user}") == [("user.online", ""),
                                                         ("user.offline", "gateway_lost")]
    assert await events_of(client, "u:carol") == [("user.online", "")]
    # her leave was not dropped: once it can be written, the next sweep writes it
    await client.delete(carol_conns)
    await client.hset(carol_conns, mapping=held)
    await sweeper.sweep()
    assert await events_of(client, "u:carol") == [("user.online", ""),
                                                   ("user.offline", "gateway_lost")]
    assert sweeper.swept == 3
    # what could not be swept stays listed, for a later sweep; the swept roster is gone
    left = {text(m) for m in await client.smembers(keys.dead_rosters())}
    assert left == {wh.dead_member(f"gw-broken-{n}", "t") for n in range(10)}


async def test_writes_after_a_script_flush_on_the_open_connection_are_whole(
        redis_server: RedisServer, client: Any) -> None:
    running = Running(redis_server)
    try:
        running.state.connected(reg("alice", "a1"))
        await running.flushed()
        await client.script_flush()  # the connection stays: nothing reloads on a reconnect
        # each transaction calls other scripts: each must bring the loads of its own
        running.state.connected(reg("bob", "b1", "room"))
        await running.flushed()
        await client.script_flush()
        running.state.disconnected(reg("bob", "b1", "room"))
        await running.flushed()
        assert await events_of(client, "u:alice") == [("user.online", "")]
        assert await events_of(client, "u:bob") == [("user.online", ""),
                                                    ("user.offline", "closed")]
        assert [t for t, _ in await events_of(client, "c:room")] == [
            "channel.occupied", "presence.join", "presence.leave", "channel.vacated"]
        # the roster's plain commands ran beside the scripts: bob's entries came and went
        roster = await client.hgetall(wh.WebhookKeys().roster(GATEWAY))
        assert {text(f) for f in roster} == {wh.ROSTER_INC, wh.roster_field("a1")}
    finally:
        running.close()
