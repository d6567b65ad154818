"""gateway/sharded.py without Redis: what a link makes of the replies it reads.

A stub cluster maps every slot to one node, and each link gets a fake transport that records
the commands written; the tests feed the link RESP bytes as Redis would send them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import hiredis
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway import sharded
from gateway.sharded import (
    ShardedSubscriber,
    SubscribeRefused,
    SubscribeTimeout,
    SubscriptionDropped,
    error_code,
)
from switchboard.redisurl import parse_cluster

HASH_SLOTS = 16384


def canary_channel(slot: int) -> str:
    for i in range(100_000):
        name = f"canary{{{i}}}"
        if key_slot(name.encode()) == slot:
            return name
    raise AssertionError(slot)


CANARY = canary_channel(0)


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.host, _, port = name.partition(":")
        self.port = int(port)


class FakeNodes:
    def __init__(self) -> None:
        node = FakeNode("127.0.0.1:7000")
        self.slots_cache = {s: [node] for s in range(HASH_SLOTS)}
        self.refreshes = 0

    def get_node_from_slot(self, slot: int) -> FakeNode:
        return self.slots_cache[slot][0]

    async def initialize(self) -> None:
        self.refreshes += 1


class FakeCluster:
    def __init__(self) -> None:
        self.nodes_manager = FakeNodes()
        self.receivers = 1

    def keyslot(self, key: str) -> int:
        return int(key_slot(key.encode()))

    async def spublish(self, channel: str, payload: str) -> int:
        return self.receivers


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.closing = False
        self._reader = hiredis.Reader()
        self.commands: list[list[bytes]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._reader.feed(bytes(data))
        while (cmd := self._reader.gets()) is not False:
            self.commands.append(cmd)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def push(*items: str | bytes | int) -> bytes:
    """One RESP2 array, as Redis sends a (s)subscribe confirmation or an smessage."""
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        if isinstance(item, int):
            out.append(b":%d\r\n" % item)
        else:
            raw = item.encode() if isinstance(item, str) else item
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def confirm(channel: str, count: int = 1) -> bytes:
    return push("ssubscribe", channel, count)


class Env:
    def __init__(self, timeout: float = 1.0) -> None:
        self.cluster = FakeCluster()
        self.messages: list[tuple[bytes, bytes]] = []
        self.events: list[tuple[Any, ...]] = []  # lost / restored / message, in order
        self.transports: list[FakeTransport] = []
        self.sub = ShardedSubscriber(
            cast(RedisCluster, self.cluster), parse_cluster("redis+cluster://127.0.0.1:7000"),
            client_name="test", timeout=timeout, canary_channel=canary_channel,
            on_message=self.on_message,
            on_lost=lambda chans, why: self.events.append(("lost", chans, why)),
            on_restored=lambda chans: self.events.append(("restored", chans)))
        self.sub._connect = self.connect  # type: ignore[method-assign]

    def on_message(self, channel: bytes, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self.events.append(("message", channel))

    async def connect(self, link: Any) -> None:
        transport = FakeTransport(link)
        self.transports.append(transport)
        link.connection_made(transport)
        link.attach()

    @property
    def link(self) -> Any:
        [link] = self.sub._links.values()
        return link

    def sent(self) -> list[list[bytes]]:
        return self.transports[-1].commands

    def feed(self, *chunks: bytes) -> None:
        self.link.data_received(b"".join(chunks))

    async def settle(self, cond: Any = None, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await asyncio.sleep(0.005)
            if cond is None or cond():
                return
            assert time.monotonic() < deadline, "condition not met"


@pytest.fixture
async def env() -> Any:
    e = Env()
    e.sub.start()
    try:
        yield e
    finally:
        await e.sub.stop()


async def subscribed(env: Env, *channels: str) -> None:
    """want() every channel and confirm canary and channels, in the order sent."""
    waits = [asyncio.ensure_future(env.sub.want(c)) for c in channels]
    await env.settle(lambda: env.transports and len(env.sent()) >= 1 + len(channels))
    env.feed(confirm(CANARY), *(confirm(c) for c in channels))
    await asyncio.gather(*waits)


def test_error_code() -> None:
    assert error_code("MOVED 1234 127.0.0.1:7001") == "MOVED"
    assert error_code("CLUSTERDOWN The cluster is down") == "CLUSTERDOWN"
    assert error_code("NOPERM") == "NOPERM"
    assert {"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"} <= sharded.RETRYABLE


async def test_one_channel_per_command_canary_first(env: Env) -> None:
    await subscribed(env, "a", "b", "c")
    assert env.sent() == [[b"SSUBSCRIBE", c.encode()] for c in (CANARY, "a", "b", "c")]
    # A new link has the canary's deadline to prove itself (its first ping goes out at
    # once): opening a link for a new node's first channel must not flap readiness.
    assert env.sub.unready is None
    await env.sub.ping(100)
    env.feed(push("smessage", CANARY, "100"))
    assert env.sub.unready is None
    assert not env.messages, "canary pings are not messages"


async def test_an_error_reply_belongs_to_the_head_of_the_fifo(env: Env) -> None:
    waits = {c: asyncio.ensure_future(env.sub.want(c)) for c in ("a", "b", "c")}
    await env.settle(lambda: env.transports and len(env.sent()) == 4)
    refreshes = env.cluster.nodes_manager.refreshes
    env.feed(confirm(CANARY), confirm("a"), b"-MOVED 15495 127.0.0.1:7000\r\n", confirm("c"))
    await env.settle(lambda: waits["a"].done() and waits["c"].done())
    assert not waits["b"].done(), "b keeps waiting for its new owner"
    # the repair loop reads the slot map again and subscribes b once more
    await env.settle(lambda: env.sent()[-1] == [b"SSUBSCRIBE", b"b"] and len(env.sent()) == 5)
    assert env.cluster.nodes_manager.refreshes > refreshes
    env.feed(confirm("b"))
    await waits["b"]
    assert not env.events


async def test_a_confirmation_out_of_order_tears_the_link_down(env: Env) -> None:
    await subscribed(env, "a")
    first = env.link
    later = asyncio.ensure_future(env.sub.want("b"))
    await env.settle(lambda: len(env.sent()) == 3)
    env.feed(confirm("zzz"))
    assert first.dead
    assert env.events == [("lost", ["a"], "connection")]
    await env.settle(lambda: len(env.transports) == 2 and len(env.sent()) == 3)
    env.feed(*(confirm(cmd[1].decode()) for cmd in env.sent()))
    await later
    assert env.events[-1] == ("restored", ["a"]), "b was never confirmed: nothing restored"


async def test_redis_dropping_channels_is_reported_before_the_next_message(env: Env) -> None:
    await subscribed(env, "a", "b", "c")
    env.feed(push("sunsubscribe", "a", 2), push("sunsubscribe", "b", 1),
             push("smessage", "c", "after"))
    assert env.events == [("lost", ["a", "b"], "slot_moved"), ("message", b"c")]
    assert env.sub.unready is not None
    await env.settle(lambda: len(env.sent()) == 6)
    assert sorted(env.sent()[-2:]) == [[b"SSUBSCRIBE", b"a"], [b"SSUBSCRIBE", b"b"]]
    order = [cmd[1].decode() for cmd in env.sent()[-2:]]
    env.feed(*(confirm(c) for c in order), push("smessage", "a", "live"))
    assert env.events[2:] == [("restored", order), ("message", b"a")]


async def test_our_own_sunsubscribe_is_not_a_loss(env: Env) -> None:
    await subscribed(env, "a", "b")
    env.sub.drop("a")
    assert env.sent()[-1] == [b"SUNSUBSCRIBE", b"a"]
    env.feed(push("sunsubscribe", "a", 1))
    assert not env.events
    assert not env.sub._pending


async def test_drop_fails_a_pending_want_and_a_late_confirmation_is_ignored(env: Env) -> None:
    await subscribed(env, "x")
    wait = asyncio.ensure_future(env.sub.want("a"))
    await env.settle(lambda: len(env.sent()) == 3)
    env.sub.drop("a")
    with pytest.raises(SubscriptionDropped):
        await wait
    again = asyncio.ensure_future(env.sub.want("a"))  # wanted afresh before Redis answered
    await env.settle(lambda: len(env.sent()) == 5)
    assert env.sent()[2:] == [[b"SSUBSCRIBE", b"a"], [b"SUNSUBSCRIBE", b"a"],
                              [b"SSUBSCRIBE", b"a"]]
    env.feed(confirm("a"))
    await asyncio.sleep(0.01)
    assert not again.done(), "that confirmation answered the dropped want"
    env.feed(push("sunsubscribe", "a", 0), confirm("a"))
    await again
    assert not env.events


async def test_a_refusal_a_retry_cannot_fix_fails_the_want() -> None:
    env = Env()
    env.sub.start()
    try:
        wait = asyncio.ensure_future(env.sub.want("a"))
        await env.settle(lambda: env.transports and len(env.sent()) == 2)
        env.feed(confirm(CANARY), b"-NOPERM no permissions to access a channel\r\n")
        with pytest.raises(SubscribeRefused, match="NOPERM"):
            await wait
        assert "a" not in env.sub._chans
    finally:
        await env.sub.stop()


async def test_want_times_out_and_forgets_a_channel_never_confirmed() -> None:
    env = Env(timeout=0.05)
    env.sub.start()
    try:
        with pytest.raises(SubscribeTimeout) as info:
            await env.sub.want("a")
        assert isinstance(info.value, TimeoutError)
        assert "a" not in env.sub._chans
        assert all(b"a" not in link.channels for link in env.sub._links.values())
        assert [b"SUNSUBSCRIBE", b"a"] in env.sent()
    finally:
        await env.sub.stop()


async def test_connection_lost_reports_only_what_was_confirmed(env: Env) -> None:
    await subscribed(env, "a")
    pending = asyncio.ensure_future(env.sub.want("b"))
    await env.settle(lambda: len(env.sent()) == 3)
    env.link.connection_lost(ConnectionResetError("reset"))
    assert env.events == [("lost", ["a"], "connection")]
    await env.settle(lambda: len(env.transports) == 2 and len(env.sent()) == 3)
    env.feed(confirm(CANARY), *(confirm(cmd[1].decode()) for cmd in env.sent()[1:]))
    await pending
    assert env.events[1:] == [("restored", ["a"])]


async def test_a_ping_reaching_nobody_tears_the_link_down_on_check(env: Env) -> None:
    await subscribed(env, "a")
    await env.sub.ping(1)
    env.feed(push("smessage", CANARY, "1"))
    env.sub.check()
    assert not env.events
    env.cluster.receivers = 0
    await env.sub.ping(2)
    assert env.sub.unready is not None
    env.sub.check()
    assert env.events == [("lost", ["a"], "canary")]


async def test_stop_fails_waiters_and_is_bounded() -> None:
    env = Env()
    env.sub.start()
    wait = asyncio.ensure_future(env.sub.want("a"))
    await env.settle(lambda: env.transports and len(env.sent()) == 2)
    started = time.monotonic()
    await env.sub.stop()
    assert time.monotonic() - started < 1
    with pytest.raises(SubscriptionDropped):
        await wait
    assert env.transports[0].closing


async def test_handler_errors_do_not_break_the_link(env: Env) -> None:
    await subscribed(env, "a")

    def boom(channel: bytes, payload: bytes) -> None:
        if payload == b"bad":
            raise RuntimeError("handler bug")
        env.messages.append((channel, payload))

    env.link._deliver = boom
    env.feed(push("smessage", "a", "bad"), push("smessage", "a", "good"))
    assert env.messages == [(b"a", b"good")]
    assert not env.link.dead
