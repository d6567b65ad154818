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
from tests.unit.gateway.inproc import Env, Node, until


class FakeProxy:
    """Answers what the test says, optionally after an event; records calls."""

    def __init__(self, *, connects: bool = True, refreshes: bool = False) -> None:
        self.connects = connects
        self.refreshes = refreshes
        self.timeout = 0.2
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = 0
        self.grant: ConnectGrant | Denied = ConnectGrant(user="parked")
        self.refreshed: Refreshed | Denied = Refreshed(expire_at=time.time() + 3600)

    def subscribes(self, channel: str) -> bool:
        return False

    def publishes(self, channel: str) -> bool:
        return False

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
        return Allowed()

    async def publish(self, body: dict[str, Any]) -> Allowed | Denied:
        return Allowed()

    async def refresh(self, body: dict[str, Any]) -> Refreshed | Denied:
        self.calls.append(("refresh", body))
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
