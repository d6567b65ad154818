"""The Python SDK's channel calls against real gateways, a real router and a real redis-server:
subscribe, unsubscribe, publish, refusals, and a subscription that outlives its gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard.auth import mint
from switchboard_client import (
    Client,
    Message,
    Position,
    Presence,
    Published,
    PublishError,
    Recovery,
    Subscribed,
    SubscribeError,
)
from tests.clients import until
from tests.integration.sdk import collecting
from tests.support import API_KEY, JWT_SECRET, Proc, RedisServer, start_gateway, start_router

pytestmark = pytest.mark.integration


@pytest.fixture
def gateways(redis_server: RedisServer, logdir: Path) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(2):
            procs.append(start_gateway(redis_server, logdir))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def router(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    proc = start_router(redis_server, logdir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def api(router: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        yield http


async def publish(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /v1/publish: ``channel=...`` or ``user=...``, and ``data``."""
    resp = await api.post("/v1/publish", json=body)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def url(proc: Proc) -> str:
    return f"ws://127.0.0.1:{proc.port}/ws"


def client(proc: Proc, user: str, *, allow: list[str] | None = None,
           publish_to: list[str] | None = None, **options: Any) -> Client:
    """A client whose token may subscribe to ``allow`` (default any) and publish to
    ``publish_to`` (default none); ``options`` go to the Client."""
    token = mint(JWT_SECRET, user, channels=["*"] if allow is None else allow,
                 publish=publish_to or [])
    return Client(url(proc), token=token, **options)


def on(items: list[Message | Recovery], stream: str) -> list[Message]:
    return [m for m in items if isinstance(m, Message) and m.stream == stream]


def data(items: list[Message | Recovery], stream: str) -> list[Any]:
    return [m.data for m in on(items, stream)]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_subscribe_then_receive_router_published_channel_messages(
        gateways: list[Proc], api: httpx.AsyncClient, fmt: Any) -> None:
    async with client(gateways[0], "ann", format=fmt) as c, collecting(c) as items:
        sub = await c.subscribe("room")
        assert isinstance(sub, Subscribed) and sub.channel == "room" and not sub.recovered
        assert c.channels == ("room",)
        assert c.positions["ch.room"] == (sub.epoch, sub.offset)
        results = [await publish(api, channel="room", data={"n": i}) for i in range(5)]
        await publish(api, channel="other", data="not subscribed")
        await until(lambda: len(data(items, "ch.room")) == 5, 10, "five channel messages")
        assert data(items, "ch.room") == [{"n": i} for i in range(5)]
        assert [m.offset for m in on(items, "ch.room")] == [r["offset"] for r in results]
        assert [m.offset for m in on(items, "ch.room")] == list(
            range(sub.offset + 1, sub.offset + 6))
        assert on(items, "ch.other") == []


async def test_a_client_publish_reaches_other_clients_and_itself(
        gateways: list[Proc], api: httpx.AsyncClient) -> None:
    async with (client(gateways[0], "pam", publish_to=["lobby"]) as pub,
                client(gateways[1], "sid") as sub,
                collecting(pub) as pub_items, collecting(sub) as sub_items):
        await pub.subscribe("lobby")
        await sub.subscribe("lobby")
        acks = [await pub.publish("lobby", {"from": "pam", "n": i}) for i in range(3)]
        assert all(isinstance(a, Published) and a.channel == "lobby" for a in acks)
        assert [a.offset for a in acks] == [acks[0].offset + i for i in range(3)]
        expected = [{"from": "pam", "n": i} for i in range(3)]
        await until(lambda: data(sub_items, "ch.lobby") == expected, 10, "the other client")
        await until(lambda: data(pub_items, "ch.lobby") == expected, 10, "the publisher")
        for items in (pub_items, sub_items):
            assert [(m.epoch, m.offset) for m in on(items, "ch.lobby")] == [
                (a.epoch, a.offset) for a in acks]
        # Publishing needs no subscription.
        await sub.unsubscribe("lobby")
        await pub.publish("lobby", "after")
        await until(lambda: data(pub_items, "ch.lobby")[-1:] == ["after"], 10, "after")


async def test_refusals_raise_and_the_connection_keeps_working(
        gateways: list[Proc], api: httpx.AsyncClient) -> None:
    errors: list[tuple[str, str]] = []
    c = client(gateways[0], "lim", allow=["news-*", "lobby"], publish_to=["lobby"],
               channels=["news-1", "secret"], on_error=lambda *a: errors.append(a))
    async with c, collecting(c) as items:
        await until(lambda: errors != [], 10, "the connect-time refusal")
        assert errors[0][0] == "forbidden" and "secret" in errors[0][1]
        assert c.channels == ("news-1",)

        with pytest.raises(SubscribeError) as sub_info:
            await c.subscribe("secret")
        assert (sub_info.value.code, sub_info.value.channel) == ("forbidden", "secret")
        with pytest.raises(PublishError) as pub_info:
            await c.publish("news-1", "may read, may not write")
        assert pub_info.value.code == "forbidden"
        with pytest.raises(SubscribeError) as again:
            await c.subscribe("news-1")
        assert again.value.code == "already_subscribed"
        assert c.state == "open" and c.stats.connects == 1

        assert (await c.subscribe("news-sport")).channel == "news-sport"  # prefix pattern
        await c.publish("lobby", "allowed")  # publishing needs no subscription
        await publish(api, channel="news-1", data="one")
        await publish(api, channel="news-sport", data="goal")
        await publish(api, user="lim", data="direct")
        await until(lambda: data(items, "user") == ["direct"], 10, "unicast")
        await until(lambda: data(items, "ch.news-sport") == ["goal"], 10, "news-sport")
        assert data(items, "ch.news-1") == ["one"]
        assert await c.ping() < 5
        assert c.stats.connects == 1 and errors[1:] == []


async def test_unsubscribe_stops_delivery(gateways: list[Proc], api: httpx.AsyncClient) -> None:
    async with client(gateways[0], "uma") as c, collecting(c) as items:
        await c.subscribe("room")
        await publish(api, channel="room", data="before")
        await until(lambda: data(items, "ch.room") == ["before"], 10, "first message")
        await c.unsubscribe("room")
        assert c.channels == () and "ch.room" not in c.positions
        with pytest.raises(SubscribeError) as info:
            await c.unsubscribe("room")
        assert info.value.code == "not_subscribed"
        for i in range(3):
            await publish(api, channel="room", data=f"after{i}")
        await publish(api, user="uma", data="mark")  # published after them: arrives after
        await until(lambda: data(items, "user") == ["mark"], 10, "the marker")
        assert data(items, "ch.room") == ["before"]

        # Subscribing again starts afresh, from the channel's current top.
        sub = await c.subscribe("room")
        await publish(api, channel="room", data="again")
        await until(lambda: data(items, "ch.room") == ["before", "again"], 10, "resubscribed")
        assert on(items, "ch.room")[-1].offset == sub.offset + 1


async def test_subscribe_with_a_cursor_replays_what_was_missed(
        gateways: list[Proc], api: httpx.AsyncClient) -> None:
    first = [await publish(api, channel="feed", data=f"m{i}") for i in range(6)]
    kept = Position(first[2]["epoch"], first[2]["offset"])  # the application saw m0..m2
    async with client(gateways[1], "cy") as c, collecting(c) as items:
        sub = await c.subscribe("feed", cursor=kept)
        assert sub.recovered and (sub.epoch, sub.offset) == kept
        await until(lambda: data(items, "ch.feed") == ["m3", "m4", "m5"], 10, "replay")


async def test_a_subscription_survives_its_gateway_being_replaced(
        redis_server: RedisServer, logdir: Path, api: httpx.AsyncClient) -> None:
    """Drain (reconnect + 1012), the port is dead for a while, a new gateway takes it: every
    channel message published meanwhile arrives exactly once, in order."""
    old = start_gateway(redis_server, logdir, SWITCHBOARD_DRAIN_WINDOW="0.2")
    new: Proc | None = None
    sent: dict[str, list[int]] = {"room": [], "news": []}
    stop = asyncio.Event()

    async def publisher() -> None:
        """Publish to both channels, before, during and after the replacement."""
        n = 0
        while not stop.is_set() or n < 60:
            for channel in sent:
                await publish(api, channel=channel, data=n)
                sent[channel].append(n)
            n += 1
            await asyncio.sleep(0.01)  # pace: spread the messages over the outage

    try:
        c = client(old, "rex", publish_to=["room"], channels=["news"], backoff_base=0.1,
                   backoff_cap=0.5)
        async with c, collecting(c) as items:
            await c.subscribe("room")
            first_gateway = c.gateway
            task = asyncio.create_task(publisher())
            try:
                await until(lambda: len(data(items, "ch.room")) >= 5, 10, "some messages")
                assert await asyncio.to_thread(old.stop) == 0  # drain, then exit
                await until(lambda: c.state == "reconnecting", 10, "noticed the drain")
                published_while_down = len(sent["room"])
                await until(lambda: len(sent["room"]) >= published_while_down + 10, 10,
                            "messages published while no gateway listens")
                assert c.state == "reconnecting"
                new = await asyncio.to_thread(start_gateway, redis_server, logdir, old.port)
                await until(lambda: c.state == "open" and c.gateway != first_gateway, 20,
                            "reconnected to the new gateway")
                own = await c.publish("room", "mine")  # and the new connection is usable
            finally:
                stop.set()
                await task
            await until(lambda: len(data(items, "ch.room")) == len(sent["room"]) + 1 and
                        len(data(items, "ch.news")) == len(sent["news"]), 20, "everything")
        room = data(items, "ch.room")
        assert [x for x in room if x != "mine"] == sent["room"]  # exactly once, in order
        assert data(items, "ch.news") == sent["news"]
        assert "mine" in room
        assert [m.offset for m in on(items, "ch.room") if m.data == "mine"] == [own.offset]
        for stream in ("ch.room", "ch.news"):
            offsets = [m.offset for m in on(items, stream)]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        assert not [i for i in items if isinstance(i, Recovery)]
        assert c.stats.reconnects >= 1 and c.stats.recoveries_failed == 0
    finally:
        old.stop()
        if new is not None:
            new.stop()


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_on_presence_reports_who_joins_and_leaves_a_watched_channel(
        gateways: list[Proc], api: httpx.AsyncClient, fmt: Any) -> None:
    seen: list[Presence] = []
    watcher = Client(url(gateways[0]), format=fmt, on_presence=seen.append,
                     token=mint(JWT_SECRET, "wes", channels=["*"], presence=["lobby"]))
    guest = Client(url(gateways[1]),
                   token=mint(JWT_SECRET, "gus", channels=["*"], presence=["lobby"]))
    plain_seen: list[Presence] = []
    plain = client(gateways[1], "pat", on_presence=plain_seen.append)
    async with watcher, plain:
        await watcher.subscribe("lobby")
        await plain.subscribe("lobby")
        await until(lambda: [(p.event, p.user) for p in seen] == [("join", "wes")], 10,
                    "the watcher's own join")
        async with guest:
            await guest.subscribe("lobby")
            await until(lambda: [(p.event, p.user) for p in seen][-1:] == [("join", "gus")],
                        10, "gus joins on the other gateway")
        await until(lambda: [(p.event, p.user) for p in seen][-1:] == [("leave", "gus")], 10,
                    "gus's leave when his client closes")
        assert {p.channel for p in seen} == {"lobby"}
        assert seen[1].conn == seen[2].conn != seen[0].conn
        result = await publish(api, channel="lobby", data="after")
        assert result["offset"] == 1  # presence events take no offsets
        await watcher.unsubscribe("lobby")
    assert plain_seen == []
