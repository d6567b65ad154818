"""Proxied flows in process (real Gateway and Connections, the in-memory backplane, a fake
proxy): a parked connect whose client hangs up, the handshake bound on a parked connect,
and refreshes applied to the connection's claims."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from gateway.proxyrefresh import Refresher
from gateway.proxyrules import Allowed, ConnectGrant, Denied, Refreshed
from switchboard import streams
from tests.unit.gateway.inproc import Env, Node, until


class FakeProxy:
    """Answers what the test says, optionally after an event; records calls."""

    def __init__(self, *, connects: bool = True, refreshes: bool = False,
                 subscribes: bool = False, publishes: bool = False) -> None:
        self.connects = connects
        self.refreshes = refreshes
        self.asks_subscribe = subscribes
        self.asks_publish = publishes
        self.raises: Exception | None = None  # raised by subscribe, publish and refresh
        self.publish_gate: asyncio.Event | None = None
        self.timeout = 0.2
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = 0
        self.grant: ConnectGrant | Denied = ConnectGrant(user="parked")
        self.refreshed: Refreshed | Denied = Refreshed(expire_at=time.time() + 3600)
        self.subscribed: Allowed | Denied = Allowed()

    def subscribes(self, channel: str) -> bool:
        return self.asks_subscribe

    def publishes(self, channel: str) -> bool:
        return self.asks_publish

    async def _wait(self) -> None:
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

    async def connect(self, body: dict[str, Any], budget: float) -> ConnectGrant | Denied:
        self.calls.append(("connect", body))
        await asyncio.wait_for(self._wait(), budget)
        return self.grant

    async def subscribe(self, body: dict[str, Any]) -> Allowed | Denied:
        self.calls.append(("subscribe", body))
        if self.raises is not None:
            raise self.raises
        return self.subscribed

    async def publish(self, body: dict[str, Any]) -> Allowed | Denied:
        self.calls.append(("publish", body))
        if self.raises is not None:
            raise self.raises
        if self.publish_gate is not None:
            await self.publish_gate.wait()
        return Allowed()

    async def refresh(self, body: dict[str, Any]) -> Refreshed | Denied:
        self.calls.append(("refresh", body))
        if self.raises is not None:
            raise self.raises
        return self.refreshed

    async def aclose(self) -> None:
        pass


def with_proxy(node: Node, proxy: FakeProxy) -> None:
    gw = node.gateway
    gw.proxy = proxy
    gw._connect_proxy = proxy if proxy.connects else None
    gw.services = dataclasses.replace(gw.services, proxy=proxy)


async def test_a_client_that_hangs_up_while_parked_cancels_the_call() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy()
    proxy.gate = asyncio.Event()
    with_proxy(node, proxy)
    client = node.connect(token="")
    await until(lambda: proxy.calls, "the connect proxy is asked")
    assert client.status is None  # parked: no answer yet
    client.disconnect()
    await until(lambda: proxy.cancelled == 1, "the call is cancelled")
    assert len(node.gateway.hub) == 0
    await env.close()
    assert env.loop_errors == []


async def test_a_parked_connect_is_answered_within_the_handshake_timeout() -> None:
    env = Env()
    node = env.node(handshake_timeout=0.2)
    proxy = FakeProxy()
    proxy.gate = asyncio.Event()  # never set: the budget ends the call (TimeoutError: a 503 too)
    with_proxy(node, proxy)
    started = time.monotonic()
    client = node.connect(token="")
    await until(lambda: client.status is not None, "an answer")
    assert client.status == 503
    assert time.monotonic() - started < 1.0
    await env.close()


async def test_an_allowed_parked_connect_is_welcomed_with_the_backends_user() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy()
    proxy.grant = ConnectGrant(user="bob", join=("news",), info={"team": "x"})
    with_proxy(node, proxy)
    client = node.connect(token="")
    welcome = await client.welcomed()
    assert welcome["user"] == "bob"
    await client.wait(lambda c: bool(c.of_type("subscribed")), "joined news")
    conn = client.conn
    assert conn.claims.user == "bob" and conn.claims.may_subscribe("news")
    assert getattr(conn.claims, "info", None) == {"team": "x"}
    await env.close()
    assert env.loop_errors == []


async def test_a_refresh_applies_new_claims_and_a_refusal_closes_4001() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy(connects=False, refreshes=True)
    with_proxy(node, proxy)
    client = await node.welcomed("carl")
    refresher = Refresher(node.gateway.services, proxy)
    conn = client.conn
    proxy.refreshed = Refreshed(expire_at=time.time() + 60, channels=("only",),
                                info={"v": 2}, replace_info=True)
    await refresher.refresh(conn, conn.claims.expires)
    assert conn.claims.channels == ("only",)
    assert getattr(conn.claims, "info", None) == {"v": 2}
    assert proxy.calls[-1][1]["user"] == "carl"
    proxy.refreshed = Denied("logged out", 401)
    await refresher.refresh(conn, conn.claims.expires)
    assert await client.wait_closed() == 4001
    await env.close()


async def test_an_unexpected_error_of_the_subscribe_proxy_answers_unavailable() -> None:
    # e.g. the ValueError of a body that cannot be encoded: the join must still end.
    env = Env()
    node = env.node()
    proxy = FakeProxy(connects=False, subscribes=True)
    proxy.raises = ValueError("cannot be sent to the backend: RecursionError")
    with_proxy(node, proxy)
    client = await node.welcomed("dora")
    client.send({"type": "subscribe", "channel": "room"})
    await client.wait(lambda c: bool(c.of_type("error")), "an error")
    assert client.answers() == [("unavailable", "room")]
    assert client.conn.session.joining == {}
    assert not client.conn.session.follows("ch.room")
    await env.close()


async def test_an_unexpected_error_of_the_refresh_proxy_still_closes_1013_at_expiry() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy(connects=False, refreshes=True)
    proxy.raises = RecursionError("maximum recursion depth exceeded")
    with_proxy(node, proxy)
    client = await node.welcomed("erin")
    refresher = Refresher(node.gateway.services, proxy)
    await refresher.refresh(client.conn, time.time() - 1)  # the claims' expiry has passed
    assert await client.wait_closed() == 1013
    await env.close()


async def test_a_connect_granted_until_a_past_time_is_refused_401() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy()
    proxy.grant = ConnectGrant(user="bob", expire_at=time.time() - 10)
    with_proxy(node, proxy)
    client = node.connect(token="")
    await until(lambda: client.status is not None, "an answer")
    assert client.status == 401
    assert len(node.gateway.hub) == 0
    await env.close()


def publishes(*ids: int) -> list[dict[str, Any]]:
    return [{"type": "publish", "channel": "room", "id": i, "data": i} for i in ids]


async def test_proxied_publishes_wait_in_a_bounded_queue_apart_from_subscribes() -> None:
    env = Env()
    node = env.node(inbound_burst=3)
    proxy = FakeProxy(connects=False, publishes=True)
    proxy.publish_gate = asyncio.Event()
    with_proxy(node, proxy)
    client = await node.welcomed("fred")
    client.send(*publishes(1, 2, 3, 4, 5))
    # One asked (held by the backend), two waiting: the burst of three is full.
    await client.wait(lambda c: len(c.of_type("error")) == 2, "two refusals")
    assert [(e["code"], e["id"]) for e in client.of_type("error")] == [
        ("unavailable", 4), ("unavailable", 5)]
    assert [b["data"] for e, b in proxy.calls if e == "publish"] == [1]
    # A subscribe does not wait behind the held publishes.
    client.send({"type": "subscribe", "channel": "room"})
    await client.wait(lambda c: bool(c.of_type("subscribed")), "subscribed")
    assert not client.of_type("published")
    proxy.publish_gate.set()
    await client.wait(lambda c: len(c.of_type("published")) == 3, "three published")
    assert [m["id"] for m in client.of_type("published")] == [1, 2, 3]  # in order
    await client.wait(lambda c: len(c.stream("ch.room")) == 3, "the three messages")
    assert [data for _, _, data in client.stream("ch.room")] == [1, 2, 3]
    await env.close()
    assert env.loop_errors == []


async def test_a_closed_connections_queued_publishes_are_not_asked_about() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy(connects=False, publishes=True)
    proxy.publish_gate = asyncio.Event()
    with_proxy(node, proxy)
    client = await node.welcomed("gina")
    client.send(*publishes(1, 2, 3))
    await until(lambda: len(proxy.calls) == 1, "the first publish asked")
    client.disconnect()
    await client.wait_gone()
    proxy.publish_gate.set()
    await until(lambda: not node.gateway._background, "the queue worked off")
    assert [b["data"] for e, b in proxy.calls if e == "publish"] == [1]
    assert env.cluster.top(streams.channel_key("room")).offset == 0  # nothing stored
    await env.close()
    assert env.loop_errors == []


async def test_a_subscribe_does_not_wait_for_a_held_proxied_publish() -> None:
    env = Env()
    node = env.node()
    proxy = FakeProxy(connects=False, publishes=True)
    proxy.publish_gate = asyncio.Event()
    with_proxy(node, proxy)
    client = await node.welcomed("hal")
    client.send(*publishes(1))
    await until(lambda: len(proxy.calls) == 1, "the publish asked")
    client.send({"type": "subscribe", "channel": "room"})
    await client.wait(lambda c: bool(c.of_type("subscribed")), "subscribed")
    proxy.publish_gate.set()
    await client.wait(lambda c: bool(c.of_type("published")), "published")
    await env.close()
