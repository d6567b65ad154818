"""Presence events to subscribers (issue 16 part 4), in process on the in-memory backplane:
who is announced, who is told, across gateways, over WebSocket and SSE, and what the
subscribe proxy's answer changes. Every assertion is on the frames a client receives."""

from __future__ import annotations

from typing import Any

from gateway.proxyrules import Allowed
from switchboard.auth import mint
from tests.unit.gateway.inproc import JWT_SECRET, Client, Env, Node, publish, settle
from tests.unit.gateway.test_proxy_flows import FakeProxy, with_proxy


def token(user: str, presence: list[str] | None = None) -> str:
    return mint(JWT_SECRET, user, channels=["*"], publish=["*"], presence=presence)


def events(client: Client) -> list[tuple[str, str, str, str]]:
    """(channel, event, user, conn) of every presence event, in arrival order."""
    return [(m["channel"], m["event"], m["user"], m["conn"])
            for m in client.of_type("presence")]


def conn_of(node: Node, user: str) -> str:
    return next(c.conn_id for c in node.gateway.hub if c.session.user == user)


async def subscribe(client: Client, channel: str) -> None:
    before = len(client.of_type("subscribed"))
    client.send({"type": "subscribe", "channel": channel})
    await client.wait(lambda c: len(c.of_type("subscribed")) > before, f"subscribed {channel}")


async def test_watchers_on_every_gateway_see_joins_and_leaves_of_watchers_only(
        env: Env) -> None:
    a, b = env.node(), env.node()
    ann = await a.welcomed("ann", token=token("ann", ["room"]))
    bob = await b.welcomed("bob", token=token("bob", ["ro*"]))
    pat = await b.welcomed("pat", token=token("pat"))  # did not opt in
    ann_id, bob_id = conn_of(a, "ann"), conn_of(b, "bob")

    await subscribe(ann, "room")
    await ann.wait(lambda c: events(c) == [("room", "join", "ann", ann_id)],
                   "ann is told of her own join")
    await subscribe(bob, "room")
    await subscribe(pat, "room")
    joined = [("room", "join", "ann", ann_id), ("room", "join", "bob", bob_id)]
    await ann.wait(lambda c: events(c) == joined, "ann sees bob join on another gateway")
    await bob.wait(lambda c: events(c) == [("room", "join", "bob", bob_id)],
                   "bob sees his join (ann's came before he subscribed)")

    # pat is neither announced nor told, and presence takes no offsets from the channel
    assert publish(env.cluster, "ch.room", "hello") == 1
    await pat.wait_offset("ch.room", 1)
    await ann.wait_offset("ch.room", 1)
    bob.send({"type": "unsubscribe", "channel": "room"})
    await ann.wait(lambda c: events(c)[-1] == ("room", "leave", "bob", bob_id), "bob leaves")
    pat.disconnect()
    await pat.wait_gone()
    await subscribe(bob, "room")
    await ann.wait(lambda c: events(c)[-1] == ("room", "join", "bob", bob_id), "bob is back")
    ann.disconnect()
    await bob.wait(lambda c: events(c)[-1] == ("room", "leave", "ann", ann_id),
                   "a closed connection's leave reaches the other gateway")
    await settle()
    assert pat.of_type("presence") == []
    assert len(events(ann)) == 4 and len(events(bob)) == 3
    assert publish(env.cluster, "ch.room", "again") == 2
    await bob.wait_offset("ch.room", 2)


async def test_connect_channels_of_an_sse_watcher_are_announced_and_told(env: Env) -> None:
    a, b = env.node(), env.node()
    ws = await b.welcomed("wes", token=token("wes", ["lobby"]), channels="lobby")
    sse = await a.welcomed("sue", sse=True, token=token("sue", ["lobby"]), channels="lobby")
    sue_id, wes_id = conn_of(a, "sue"), conn_of(b, "wes")
    await ws.wait(lambda c: events(c)[-1:] == [("lobby", "join", "sue", sue_id)],
                  "the SSE connection's connect channel is announced")
    ws.disconnect()
    await sse.wait(lambda c: events(c)[-1:] == [("lobby", "leave", "wes", wes_id)],
                   "the SSE connection is told (event: presence)")


async def test_a_channel_not_in_the_presence_claim_carries_no_events(env: Env) -> None:
    node = env.node()
    ann = await node.welcomed("ann", token=token("ann", ["room"]))
    bob = await node.welcomed("bob", token=token("bob", ["room"]))
    await subscribe(ann, "room")
    await subscribe(ann, "other")
    await subscribe(bob, "other")
    await subscribe(bob, "room")
    await ann.wait(lambda c: len(events(c)) == 2, "ann sees both joins of room")
    await settle()
    assert {e[0] for e in events(ann) + events(bob)} == {"room"}


def proxied(env: Env, answer: Any) -> tuple[Node, FakeProxy]:
    node = env.node()
    proxy = FakeProxy(connects=False, subscribes=True)
    proxy.subscribed = answer
    with_proxy(node, proxy)
    return node, proxy


async def test_the_subscribe_proxy_turns_presence_on_over_the_claims(env: Env) -> None:
    node, _ = proxied(env, Allowed(presence=True))
    ann = await node.welcomed("ann", token=token("ann"))  # no presence claim
    await subscribe(ann, "room")
    await ann.wait(lambda c: events(c) == [("room", "join", "ann", conn_of(node, "ann"))],
                   "the backend's presence:true opts her in")


async def test_the_subscribe_proxy_turns_presence_off_over_the_claims(env: Env) -> None:
    node, proxy = proxied(env, Allowed(presence=False))
    watcher = env.node()  # not proxied: its claim decides
    ann = await node.welcomed("ann", token=token("ann", ["room"]))
    wes = await watcher.welcomed("wes", token=token("wes", ["room"]))
    await subscribe(wes, "room")
    await subscribe(ann, "room")
    assert len(proxy.calls) == 1
    publish(env.cluster, "ch.room", "m")
    await ann.wait_offset("ch.room", 1)
    await wes.wait_offset("ch.room", 1)
    ann.disconnect()
    await ann.wait_gone()
    await settle()
    assert events(ann) == [] and [e[2] for e in events(wes)] == ["wes"]

