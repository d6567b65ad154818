"""The Python SDK against a real gateway and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.auth import mint
from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from switchboard_client import AuthError, Client, Message
from tests.clients import until
from tests.integration.sdk import collecting
from tests.support import JWT_SECRET, Proc, RedisServer, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    proc = start_gateway(redis_server, logdir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    store = Store.open(RedisSettings(redis_url=redis_server.url, redis_timeout=2), "test")
    try:
        yield store
    finally:
        await store.aclose()


def ws_url(proc: Proc) -> str:
    return f"ws://127.0.0.1:{proc.port}/ws"


def data(items: list[Any], stream: str) -> list[Any]:
    return [m.data for m in items if isinstance(m, Message) and m.stream == stream]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_receives_unicast_and_broadcast_in_order(
    gateway: Proc, store: Store, fmt: Any
) -> None:
    async with Client(ws_url(gateway), token=mint(JWT_SECRET, "alice"), format=fmt) as c:
        assert (c.state, c.user) == ("open", "alice") and c.session
        assert set(c.positions) == {"user", "broadcast"}
        async with collecting(c) as items:
            for i in range(5):
                await store.publish(Target("u", "alice"), {"n": i, "bytes": fmt == "msgpack"})
                await store.publish(Target("b"), f"b{i}")
                await store.publish(Target("u", "bob"), "not for alice")
            await until(lambda: len(items) == 10, 10, "10 messages")
        assert data(items, "user") == [{"n": i, "bytes": fmt == "msgpack"} for i in range(5)]
        assert data(items, "broadcast") == [f"b{i}" for i in range(5)]
        user = [m for m in items if isinstance(m, Message) and m.stream == "user"]
        assert [m.offset for m in user] == list(range(user[0].offset, user[0].offset + 5))
        assert c.positions["user"] == (user[-1].epoch, user[-1].offset)
        assert await c.ping() < 5
    assert c.state == "closed"


async def test_a_refused_token_without_a_provider_raises_auth_error(gateway: Proc) -> None:
    with pytest.raises(AuthError) as info:
        async with Client(ws_url(gateway), token="not-a-jwt"):
            pytest.fail("must not connect")
    assert info.value.code == 401


async def test_a_token_provider_replaces_a_refused_token(gateway: Proc) -> None:
    tokens = ["expired-or-garbage", mint(JWT_SECRET, "alice")]
    asked: list[str] = []

    async def provider() -> str:
        asked.append(tokens[len(asked)])
        return asked[-1]

    async with Client(ws_url(gateway), token_provider=provider) as c:
        assert c.state == "open" and c.user == "alice"
    assert len(asked) == 2


async def test_reconnects_by_itself_when_its_gateway_is_replaced(
    redis_server: RedisServer, logdir: Path, store: Store
) -> None:
    old = start_gateway(redis_server, logdir)
    new: Proc | None = None
    states: list[str] = []
    try:
        async with Client(ws_url(old), token=mint(JWT_SECRET, "alice"), on_state=states.append,
                          backoff_base=0.1, backoff_cap=1.0) as c:
            first_gateway = c.gateway
            async with collecting(c) as items:
                await store.publish(Target("u", "alice"), "before")
                await until(lambda: data(items, "user") == ["before"], 10, "first message")

                # Drain: the gateway sends `reconnect` and closes 1012, then exits.
                assert await asyncio.to_thread(old.stop) == 0
                await until(lambda: c.state == "reconnecting", 10, "noticed the drain")
                new = await asyncio.to_thread(start_gateway, redis_server, logdir, old.port)
                await until(lambda: c.state == "open" and c.gateway != first_gateway, 20,
                            "reconnected to the new gateway")
                assert c.stats.reconnects >= 1

                await store.publish(Target("u", "alice"), "after")
                await store.publish(Target("b"), "everyone")
                await until(lambda: "after" in data(items, "user"), 10, "unicast after")
                await until(lambda: "everyone" in data(items, "broadcast"), 10, "broadcast")
        assert data(items, "user")[0] == "before" and data(items, "user")[-1] == "after"
        assert states[:2] == ["open", "reconnecting"] and "open" in states[2:]
    finally:
        old.stop()
        if new is not None:
            new.stop()
