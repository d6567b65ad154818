"""Presence events to subscribers on real Redis (issue 16 part 4): one node and a Redis
Cluster, gateways in their own processes, clients over WebSocket (JSON and msgpack) and SSE.

A connection that opted in (the token's ``presence`` claim) is announced and told of the
others' joins and leaves, on whichever gateway they are; one that did not is neither, and the
channel's offsets are untouched by presence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchboard.localcluster import LocalCluster
from tests.clients import Recorder, SseClient, WsClient, until
from tests.integration.cluster import Cluster, cluster, token
from tests.support import RedisServer

pytestmark = pytest.mark.integration


def url(c: Cluster, gw: int, user: str, presence: list[str] | None = None,
        **params: str) -> str:
    tok = token(user, channels=["*"], publish=["*"], presence=presence)
    query = "&".join([f"token={tok}", *(f"{k}={v}" for k, v in params.items())])
    return f"ws://127.0.0.1:{c.gateways[gw].port}/ws?{query}"


def events(client: Recorder) -> list[tuple[str, str, str]]:
    """(event, user, channel) of each presence event received, in order."""
    return [(m["event"], m["user"], m["channel"]) for m in client.received
            if m.get("type") == "presence"]


def conns(client: Recorder) -> set[str]:
    return {m["conn"] for m in client.received if m.get("type") == "presence"}


async def subscribe(client: WsClient, channel: str) -> None:
    await client.send({"type": "subscribe", "channel": channel})
    await until(lambda: any(m.get("type") == "subscribed" and m["channel"] == channel
                            for m in client.received), 10, f"subscribed to {channel}")


async def joins_and_leaves_cross_gateways(c: Cluster) -> None:
    ann = await WsClient(url(c, 0, "ann", ["room"])).start()
    bob = await WsClient(url(c, 1, "bob", ["room*"]), msgpack_wire=True).start()
    pat = await WsClient(url(c, 1, "pat")).start()  # no presence claim
    await subscribe(ann, "room")
    await until(lambda: events(ann) == [("join", "ann", "room")], 10, "ann's own join")
    await subscribe(pat, "room")
    await subscribe(bob, "room")
    await until(lambda: events(ann)[-1:] == [("join", "bob", "room")], 10,
                "ann sees bob join through the other gateway")
    await until(lambda: events(bob) == [("join", "bob", "room")], 10, "bob (msgpack)")

    first = c.publish(channel="room", data="m1")
    assert first["offset"] == 1, "presence events take no offsets"
    await until(lambda: pat.data("ch.room") == ["m1"] and ann.data("ch.room") == ["m1"], 10,
                "the message after the joins")

    await bob.close()
    await until(lambda: events(ann)[-1:] == [("leave", "bob", "room")], 10,
                "a closed connection's leave")
    await pat.close()
    second = c.publish(channel="room", data="m2")
    assert second["offset"] == 2
    await until(lambda: ann.data("ch.room") == ["m1", "m2"], 10, "m2")
    assert events(ann) == [("join", "ann", "room"), ("join", "bob", "room"),
                           ("leave", "bob", "room")]
    assert len(conns(ann)) == 2
    assert not [m for m in pat.received if m.get("type") == "presence"]
    assert c.metric(1, "switchboard_gateway_presence_events_total", outcome="announced") == 2
    assert c.metric(0, "switchboard_gateway_presence_events_total", outcome="delivered") == 3
    await ann.close()


async def test_watchers_on_two_gateways_see_each_others_joins_and_leaves(
        any_redis: RedisServer | LocalCluster, logdir: Path) -> None:
    with cluster(any_redis, logdir) as c:  # type: ignore[arg-type]
        await joins_and_leaves_cross_gateways(c)


async def test_an_sse_watcher_gets_presence_events_for_its_connect_channels(
        redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir) as c:
        tok = token("sue", channels=["*"], presence=["lobby"])
        sse = await SseClient("127.0.0.1", c.gateways[0].port,
                              f"/sse?token={tok}&channels=lobby").start()
        wes = await WsClient(url(c, 1, "wes", ["lobby"], channels="lobby")).start()
        await until(lambda: ("join", "wes", "lobby") in events(sse), 10,
                    "the SSE watcher sees wes join at connect")
        await wes.close()
        await until(lambda: events(sse)[-1:] == [("leave", "wes", "lobby")], 10, "wes leaves")
        kinds: list[Any] = [t for t, m in zip(sse.event_types, sse.received, strict=True)
                            if m.get("type") == "presence"]
        assert kinds and set(kinds) == {"presence"}
        await sse.close()


async def test_a_gateway_stopped_cleanly_sends_its_connections_leaves(
        redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir) as c:
        ann = await WsClient(url(c, 0, "ann", ["room"], channels="room")).start()
        bob = await WsClient(url(c, 1, "bob", ["room"], channels="room")).start()
        await until(lambda: ("join", "bob", "room") in events(ann), 10, "bob joined")
        assert c.gateways[1].stop() == 0  # SIGTERM: drain, then exit
        await until(lambda: events(ann)[-1:] == [("leave", "bob", "room")], 15,
                    "bob's leave, sent before the gateway exited")
        await bob.close()
        await ann.close()
