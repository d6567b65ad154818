"""The gateway's flows end to end, in process, without Redis: the real Gateway and Connection
on the in-memory backplane (:mod:`gateway.memory`), driven through real WebSocket and SSE
bytes (:mod:`tests.unit.gateway.inproc`).

Every test asserts what a client would see: the frames it gets, in order, and the close code;
plus the cluster state other parts read (presence, the gateways subscribed to a channel).
Races are made exact with :class:`~tests.unit.gateway.inproc.SteppedBackplane`, which holds a
backplane call while the test publishes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import mover
from switchboard.contract import presence_value
from tests.unit.gateway.inproc import Client, Env, Node, publish, settle, until


@pytest.fixture
async def small_env() -> AsyncIterator[Env]:
    e = Env(history_size=3)
    try:
        yield e
    finally:
        await e.close()


def epoch_of(env: Env, stream_key: str) -> str:
    return env.cluster.top(stream_key).epoch


# -- 1. the welcome ---------------------------------------------------------------------------


async def test_messages_published_while_a_connection_registers_arrive_exactly_once(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    publish(c, "user", "u1")
    publish(c, "user", "u2")
    publish(c, "broadcast", "b1")
    mapped = node.stepped.hold("register.mapped")
    done = node.stepped.hold("register.done")
    client = node.connect("alice")

    await mapped.reached()
    # The map entry is written, the tops are not read yet: these are routed to the gateway
    # live *and* counted in the tops the welcome reports, so they must not be sent.
    publish(c, "user", "u3")
    publish(c, "broadcast", "b2")
    mapped.release()

    await done.reached()
    # The tops are read, the welcome is not out yet: these must follow the welcome.
    publish(c, "user", "u4")
    publish(c, "user", "u5")
    publish(c, "broadcast", "b3")
    await settle()
    assert client.messages == [], "nothing may precede the welcome"
    done.release()

    welcome = await client.welcomed()
    assert welcome["resumed"] is False and welcome["recovered"] is False
    assert welcome["user"] == "alice" and welcome["gateway"] == node.gateway_id
    assert welcome["streams"]["user"] == {"epoch": epoch_of(env, "u:alice"), "offset": 3}
    assert welcome["streams"]["broadcast"] == {"epoch": epoch_of(env, "b"), "offset": 2}
    await client.wait_offset("user", 5)
    await client.wait_offset("broadcast", 3)
    publish(c, "user", "u6")  # live after the welcome; everything before it is settled
    await client.wait_offset("user", 6)
    await settle()
    assert [d for _, _, d in client.stream("user")] == ["u4", "u5", "u6"]
    assert client.offsets("user") == [4, 5, 6]
    assert [d for _, _, d in client.stream("broadcast")] == ["b3"]


async def test_resume_replays_exactly_the_missing_offsets_then_the_live_ones(env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    first = await node.welcomed("alice")
    for i in range(1, 6):
        publish(c, "user", f"m{i}")
    await first.wait_offset("user", 5)
    epoch = first.welcome["streams"]["user"]["epoch"]
    broadcast = first.welcome["streams"]["broadcast"]["epoch"]
    session = first.welcome["session"]
    first.disconnect()  # having processed up to offset 2 only
    await first.wait_gone()
    publish(c, "user", "m6")  # while away
    publish(c, "user", "m7")

    replay = node.stepped.hold("read_logs")
    again = node.connect("alice", session=session,
                         cursor=f"user:{epoch}:2,broadcast:{broadcast}:0")
    await replay.reached()
    publish(c, "user", "m8")  # live while the replay is read
    publish(c, "user", "m9")
    replay.release()

    welcome = await again.welcomed()
    assert welcome["session"] == session
    assert welcome["resumed"] is True and welcome["recovered"] is True
    # positioned at the cursor: the missed messages follow immediately
    assert welcome["streams"]["user"] == {"epoch": epoch, "offset": 2}
    await again.wait_offset("user", 9)
    publish(c, "user", "m10")
    await again.wait_offset("user", 10)
    await settle()
    assert again.stream("user") == [(epoch, i, f"m{i}") for i in range(3, 11)]


async def test_a_cursor_in_an_old_epoch_replays_the_whole_new_epoch_when_its_log_reaches_1(
        env: Env) -> None:
    node = env.node()
    c = env.cluster
    first = await node.welcomed("alice")
    for i in range(1, 4):
        publish(c, "user", f"old{i}")
    await first.wait_offset("user", 3)
    old = first.welcome["streams"]["user"]["epoch"]
    session = first.welcome["session"]
    first.disconnect()
    await first.wait_gone()
    c.expire("u:alice")  # the stream's history is lost; its next message starts a new epoch
    publish(c, "user", "new1")
    publish(c, "user", "new2")
    new = epoch_of(env, "u:alice")
    assert new != old

    again = await node.welcomed("alice", session=session, cursor=f"user:{old}:3")
    welcome = again.welcome
    assert welcome["resumed"] is True
    assert welcome["recovered"] is False  # the old epoch's tail is gone
    assert welcome["streams"]["user"] == {"epoch": new, "offset": 0}
    await again.wait_offset("user", 2)
    publish(c, "user", "new3")
    await again.wait_offset("user", 3)
    await settle()
    assert again.stream("user") == [(new, 1, "new1"), (new, 2, "new2"), (new, 3, "new3")]


async def test_an_sse_client_resumes_from_its_last_event_id(env: Env) -> None:
    node = env.node()
    c = env.cluster
    first = await node.welcomed("alice", sse=True, channels="room")
    publish(c, "user", "u1")
    publish(c, "ch.room", "r1")
    await first.wait_offset("ch.room", 1)
    last_id = first.sse_ids[-1]  # the full cursor after the last event
    assert last_id == first.cursor()
    session = first.welcome["session"]
    first.close()  # the network drops; EventSource reconnects with Last-Event-ID
    await first.wait_gone()
    publish(c, "user", "u2")
    publish(c, "ch.room", "r2")
    again = await node.welcomed("alice", sse=True, channels="room", session=session,
                                headers={"Last-Event-ID": last_id},
                                cursor="user:Stale:0")  # the URL's own cursor is older
    assert again.welcome["resumed"] is True and again.welcome["recovered"] is True
    await again.wait_offset("ch.room", 2)
    await again.wait_offset("user", 2)
    await settle()
    assert again.offsets("user") == [2] and again.offsets("ch.room") == [2]
    assert again.of_type("subscribed")[0]["recovered"] is True


async def test_a_cursor_above_the_top_is_not_recovered_and_starts_at_the_top(env: Env) -> None:
    node = env.node()
    c = env.cluster
    for i in range(1, 4):
        publish(c, "user", i)
    epoch = epoch_of(env, "u:alice")
    client = await node.welcomed("alice", cursor=f"user:{epoch}:99")
    assert client.welcome["recovered"] is False
    assert client.welcome["streams"]["user"] == {"epoch": epoch, "offset": 3}
    publish(c, "user", 4)
    await client.wait_offset("user", 4)
    await settle()
    assert client.offsets("user") == [4]


async def test_a_cursor_the_log_no_longer_covers_is_not_recovered(small_env: Env) -> None:
    env = small_env  # the log keeps 3 messages per stream
    node = env.node()
    c = env.cluster
    publish(c, "user", "old")
    old = epoch_of(env, "u:alice")
    c.expire("u:alice")
    for i in range(1, 6):
        publish(c, "user", i)  # the new epoch's log holds 3..5 only
    new = epoch_of(env, "u:alice")
    for cursor in (f"user:{old}:1", f"user:{new}:1"):  # epoch changed / same epoch, trimmed
        client = await node.welcomed("alice", cursor=cursor)
        assert client.welcome["recovered"] is False, cursor
        assert client.welcome["streams"]["user"] == {"epoch": new, "offset": 5}, cursor
    publish(c, "user", 6)
    for client in node.clients:
        await client.wait_offset("user", 6)
    await settle()
    assert [cl.offsets("user") for cl in node.clients] == [[6], [6]]


async def test_a_session_of_another_user_closes_4004_and_stays_its_owners(env: Env) -> None:
    node = env.node()
    alice = await node.welcomed("alice")
    session = alice.welcome["session"]
    alice.disconnect()
    await alice.wait_gone()

    for _ in range(2):  # a second try must not find the session taken over by the first
        bob = node.connect("bob", session=session)
        assert await bob.wait_closed() == 4004
        assert bob.messages == [], "no welcome for another user's session"
        await bob.wait_gone()

    again = await node.welcomed("alice", session=session)
    assert again.welcome["resumed"] is True and again.welcome["session"] == session


async def test_connect_channels_are_announced_after_the_welcome_and_raced_messages_arrive_once(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    publish(c, "ch.room", "r1")
    done = node.stepped.hold("register.done")
    client = node.connect("alice", channels="room,secret", allowed=["room"])
    await done.reached()
    publish(c, "ch.room", "r2")  # after the top was read, before the welcome
    publish(c, "ch.secret", "s1")
    done.release()
    await client.welcomed()
    await client.wait_offset("ch.room", 2)
    publish(c, "ch.room", "r3")
    await client.wait_offset("ch.room", 3)
    await settle()
    room = epoch_of(env, "c:room")
    assert client.answers() == [("subscribed", "room"), ("forbidden", "secret")]
    assert client.of_type("subscribed")[0] == {
        "type": "subscribed", "channel": "room", "epoch": room, "offset": 1,
        "recovered": False}
    assert client.welcome["streams"]["ch.room"] == {"epoch": room, "offset": 1}
    assert client.stream("ch.room") == [(room, 2, "r2"), (room, 3, "r3")]
    assert client.offsets("ch.secret") == []
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}
    assert not c.presence.get("secret")


# -- 2. subscribe and unsubscribe -------------------------------------------------------------


async def test_subscribe_unsubscribe_subscribe_in_one_read(env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    client = await node.welcomed("alice")
    publish(c, "ch.room", "r1")
    publish(c, "ch.room", "r2")
    joined = node.stepped.hold("join.done")
    client.send({"type": "subscribe", "channel": "room"},
                {"type": "unsubscribe", "channel": "room"},
                {"type": "subscribe", "channel": "room"})
    await joined.reached()  # the second subscribe read the top (2); not answered yet
    publish(c, "ch.room", "r3")
    publish(c, "ch.room", "r4")
    joined.release()
    await client.wait_offset("ch.room", 4)
    publish(c, "ch.room", "r5")
    await client.wait_offset("ch.room", 5)
    await settle()

    # One answer per command; the unsubscribe overtook the first subscribe.
    assert client.answers() == [("unsubscribed", "room"), ("superseded", "room"),
                                ("subscribed", "room")]
    room = epoch_of(env, "c:room")
    subscribed = client.of_type("subscribed")[0]
    assert (subscribed["epoch"], subscribed["offset"]) == (room, 2)
    assert client.stream("ch.room") == [(room, 3, "r3"), (room, 4, "r4"), (room, 5, "r5")]
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}
    assert node.gateway_id in c.channel_subscribers["room"]


async def test_subscribe_then_unsubscribe_in_one_read_leaves_nothing_behind(env: Env) -> None:
    node = env.node()
    c = env.cluster
    client = await node.welcomed("alice")
    client.send({"type": "subscribe", "channel": "room"},
                {"type": "unsubscribe", "channel": "room"})
    await client.wait(lambda cl: len(cl.answers()) == 2, "two answers")
    await until(lambda: node.gateway_id not in c.channel_subscribers.get("room", set()),
                "the gateway to unsubscribe from the channel")
    assert client.answers() == [("unsubscribed", "room"), ("superseded", "room")]
    assert not c.presence.get("room")
    assert c.publish("c:room", "nobody").recipients == 0
    publish(c, "broadcast", "barrier")
    await client.wait_offset("broadcast", 1)
    assert client.offsets("ch.room") == []


async def test_an_unsubscribe_overtaking_a_join_in_flight_takes_its_presence_back(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    client = await node.welcomed("alice")
    joined = node.stepped.hold("join.done")
    client.send({"type": "subscribe", "channel": "room"})
    await joined.reached()
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}
    client.send({"type": "unsubscribe", "channel": "room"})
    publish(c, "ch.room", "after the unsubscribe")
    joined.release()
    await client.wait(lambda cl: len(cl.answers()) == 2, "two answers")
    await until(lambda: not c.presence.get("room"), "the presence entry to go")
    await until(lambda: node.gateway_id not in c.channel_subscribers.get("room", set()),
                "the gateway to unsubscribe from the channel")
    assert client.answers() == [("unsubscribed", "room"), ("superseded", "room")]
    publish(c, "broadcast", "barrier")
    await client.wait_offset("broadcast", 1)
    assert client.offsets("ch.room") == []


async def test_unsubscribe_and_subscribe_again_while_the_first_join_is_in_flight(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    client = await node.welcomed("alice")
    publish(c, "ch.room", "r1")
    joined = node.stepped.hold("join.done")
    client.send({"type": "subscribe", "channel": "room"})
    await joined.reached()  # the first join holds the connection's channel lock
    client.send({"type": "unsubscribe", "channel": "room"},
                {"type": "subscribe", "channel": "room"})
    publish(c, "ch.room", "r2")  # before the second subscribe reads the top
    joined.release()
    await client.wait(lambda cl: len(cl.answers()) == 3, "three answers")
    publish(c, "ch.room", "r3")
    await client.wait_offset("ch.room", 3)
    await settle()
    assert client.answers() == [("unsubscribed", "room"), ("superseded", "room"),
                                ("subscribed", "room")]
    assert client.of_type("subscribed")[0]["offset"] == 2
    assert client.offsets("ch.room") == [3]
    # The first join must not take back the entry the second one owns.
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}
    assert node.gateway_id in c.channel_subscribers["room"]


async def test_a_connection_closed_while_its_join_is_in_flight_leaves_no_presence(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    client = await node.welcomed("alice")
    joining = node.stepped.hold("join")  # before the join's presence write reaches the backend
    client.send({"type": "subscribe", "channel": "room"})
    await joining.reached()
    client.disconnect()
    await client.wait_gone()  # its unregister is applied: nothing to remove yet
    joining.release()
    await settle()
    assert node.gateway_id not in c.channel_subscribers.get("room", set())
    assert not c.presence.get("room"), "a connection that is gone is listed as present"


async def test_subscribe_with_a_cursor_replays_the_missed_messages_then_live_ones(
        env: Env) -> None:
    node = env.node(stepped=True)
    c = env.cluster
    for i in range(1, 6):
        publish(c, "ch.room", f"r{i}")
    room = epoch_of(env, "c:room")
    client = await node.welcomed("alice")
    replay = node.stepped.hold("read_logs")
    client.send({"type": "subscribe", "channel": "room",
                 "cursor": {"epoch": room, "offset": 2}})
    await replay.reached()
    publish(c, "ch.room", "r6")  # live while the replay is read
    replay.release()
    await client.wait_offset("ch.room", 6)
    publish(c, "ch.room", "r7")
    await client.wait_offset("ch.room", 7)
    await settle()
    assert client.of_type("subscribed") == [{"type": "subscribed", "channel": "room",
                                             "epoch": room, "offset": 2, "recovered": True}]
    assert client.stream("ch.room") == [(room, i, f"r{i}") for i in range(3, 8)]
    # the subscribed answer comes before the replay
    kinds = [m["type"] for m in client.messages]
    assert kinds.index("subscribed") < kinds.index("message")


async def test_subscribe_with_a_cursor_in_an_old_epoch_replays_the_new_one(env: Env) -> None:
    node = env.node()
    c = env.cluster
    for i in range(1, 4):
        publish(c, "ch.room", i)
    room = epoch_of(env, "c:room")
    client = await node.welcomed("alice")
    client.send({"type": "subscribe", "channel": "room", "cursor": "OldEpoch:7"})
    await client.wait_offset("ch.room", 3)
    await settle()
    assert client.of_type("subscribed") == [{"type": "subscribed", "channel": "room",
                                             "epoch": room, "offset": 0, "recovered": False}]
    assert client.offsets("ch.room") == [1, 2, 3]


async def test_the_last_local_subscriber_leaving_unsubscribes_the_gateway(env: Env) -> None:
    node = env.node()
    c = env.cluster
    gw = node.gateway_id
    alice = await node.welcomed("alice")
    bob = await node.welcomed("bob")
    for client in (alice, bob):
        client.send({"type": "subscribe", "channel": "room"})
        await client.wait(lambda cl: cl.answers() == [("subscribed", "room")], "subscribed")
    assert gw in c.channel_subscribers["room"]

    alice.send({"type": "unsubscribe", "channel": "room"})
    await alice.wait(lambda cl: ("unsubscribed", "room") in cl.answers(), "unsubscribed")
    await settle()
    assert gw in c.channel_subscribers["room"], "bob still follows the channel here"
    assert c.presence["room"] == {bob.conn.conn_id: presence_value(gw, "bob")}
    publish(c, "ch.room", "for bob")
    await bob.wait_offset("ch.room", 1)
    await settle()
    assert alice.offsets("ch.room") == []

    bob.send({"type": "unsubscribe", "channel": "room"})
    await until(lambda: gw not in c.channel_subscribers["room"],
                "the gateway to unsubscribe from the channel")
    assert not c.presence["room"]
    assert c.publish("c:room", "nobody listens").recipients == 0

    # A subscriber that goes away (rather than unsubscribing) releases the channel too.
    carol = await node.welcomed("carol")
    carol.send({"type": "subscribe", "channel": "room"})
    await carol.wait(lambda cl: cl.answers() == [("subscribed", "room")], "subscribed")
    assert gw in c.channel_subscribers["room"]
    carol.disconnect()
    await carol.wait_gone()
    await until(lambda: gw not in c.channel_subscribers["room"],
                "the gateway to unsubscribe after the last subscriber left")
    assert not c.presence["room"]


# -- 3. the backend losing data or failing ----------------------------------------------------


def split_epochs(client: Client, stream: str) -> list[tuple[str, list[int]]]:
    """The offsets a client got for ``stream``, grouped by consecutive epoch."""
    groups: list[tuple[str, list[int]]] = []
    for epoch, offset, _ in client.stream(stream):
        if not groups or groups[-1][0] != epoch:
            groups.append((epoch, []))
        groups[-1][1].append(offset)
    return groups


def two_epochs(stream: str) -> Callable[[Client], bool]:
    return lambda client: len(split_epochs(client, stream)) == 2


async def connected_everywhere(node: Node) -> Client:
    """alice on the user, broadcast and room streams, each with one message received."""
    c = node.cluster
    client = await node.welcomed("alice", channels="room")
    for stream in ("user", "broadcast", "ch.room"):
        publish(c, stream, "before")
        await client.wait_offset(stream, 1)
    return client


async def test_redis_restarting_empty_delivers_every_later_message_once_from_offset_1(
        env: Env) -> None:
    node = env.node()
    c = env.cluster
    client = await connected_everywhere(node)
    old = {s: client.positions[s].epoch for s in ("user", "broadcast", "ch.room")}
    c.go_down()
    c.come_back(empty=True)
    # Published before the gateway noticed and registered again: in the log only for the
    # user stream (no map entry routes it yet), live but held for the others.
    for stream in old:
        publish(c, stream, "new1")
    for stream in old:
        await client.wait(two_epochs(stream), f"the new epoch of {stream}")
    for stream in old:
        publish(c, stream, "new2")
        await client.wait_offset(stream, 2)
    publish(c, "user", "new3")
    await client.wait_offset("user", 3)
    await settle()
    for stream in old:
        groups = split_epochs(client, stream)
        assert groups[0] == (old[stream], [1]), stream
        assert groups[1][0] != old[stream], stream
        want = [1, 2, 3] if stream == "user" else [1, 2]
        assert groups[1][1] == want, (stream, groups)
    assert client.close_code is None
    assert node.backplane.unready is None
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}


async def test_flushall_while_connected_delivers_the_new_epochs_from_offset_1(env: Env) -> None:
    # Pub/sub survives a FLUSHALL: only the gateway's heartbeat notices its registry entry
    # (and so the user map) is gone.
    node = env.node(heartbeat=True, heartbeat_interval=0.02)
    c = env.cluster
    client = await connected_everywhere(node)
    old = {s: client.positions[s].epoch for s in ("user", "broadcast", "ch.room")}
    c.lose_everything()
    for stream in old:
        publish(c, stream, "new1")
    publish(c, "user", "new2")  # not routed either: the user map is gone too
    for stream in old:
        await client.wait(two_epochs(stream), f"the new epoch of {stream}")
    await client.wait_offset("user", 2)
    publish(c, "user", "new3")
    await client.wait_offset("user", 3)
    await settle()
    for stream in old:
        groups = split_epochs(client, stream)
        assert len(groups) == 2 and groups[0] == (old[stream], [1]), (stream, groups)
        assert groups[1][1] == ([1, 2, 3] if stream == "user" else [1]), (stream, groups)
    # registered again: presence is back and new clients are admitted
    assert c.presence["room"] == {client.conn.conn_id: presence_value(node.gateway_id, "alice")}
    bob = await node.welcomed("bob")
    assert bob.welcome["type"] == "welcome"


async def test_lost_envelopes_are_filled_from_the_log_in_order(env: Env) -> None:
    node = env.node()
    c = env.cluster
    client = await node.welcomed("alice")
    c.drop_envelopes(2)
    for i in range(1, 4):
        publish(c, "user", i)  # 1 and 2 never reach the gateway
    await client.wait_offset("user", 3)
    c.drop_envelopes(1)
    publish(c, "user", 4)  # lost, noticed when 5 arrives
    publish(c, "user", 5)
    await client.wait_offset("user", 5)
    await settle()
    assert client.offsets("user") == [1, 2, 3, 4, 5]
    assert [d for _, _, d in client.stream("user")] == [1, 2, 3, 4, 5]


async def test_a_client_publish_while_the_backend_is_down_gets_unavailable(env: Env) -> None:
    node = env.node()
    c = env.cluster
    client = await node.welcomed("alice")
    client.send({"type": "subscribe", "channel": "room"})
    await client.wait(lambda cl: cl.answers() == [("subscribed", "room")], "subscribed")

    c.go_down()
    client.send({"type": "publish", "channel": "room", "data": "lost?", "id": 7},
                {"type": "subscribe", "channel": "other"})
    await client.wait(lambda cl: len(cl.of_type("error")) == 2, "two errors")
    errors = client.of_type("error")
    assert {(e["code"], e["channel"], e.get("id")) for e in errors} == {
        ("unavailable", "room", 7), ("unavailable", "other", None)}
    assert c.top("c:room").offset == 0, "nothing was stored"
    # While down the gateway admits nobody (503, retry later).
    refused = node.connect("bob")
    await until(lambda: refused.status is not None, "an HTTP answer")
    assert refused.status == 503
    assert json.loads(refused.body)["error"] == "unavailable"

    c.come_back()
    await until(lambda: (node.backplane.unready is None), "the gateway to be ready again")
    client.send({"type": "publish", "channel": "room", "data": "stored", "id": 8})
    await client.wait_offset("ch.room", 1)
    await client.wait(lambda cl: bool(cl.of_type("published")), "published")
    assert client.of_type("published") == [{"type": "published", "id": 8, "channel": "room",
                                            "epoch": epoch_of(env, "c:room"), "offset": 1}]
    assert client.stream("ch.room") == [(epoch_of(env, "c:room"), 1, "stored")]
    assert client.close_code is None


async def test_a_backend_failing_during_registration_closes_1013(env: Env) -> None:
    node = env.node()
    client = node.connect("alice")  # accepted: the welcome's registration comes next
    env.cluster.go_down()
    assert await client.wait_closed() == 1013
    assert client.messages == []
    env.cluster.come_back()
    await client.wait_gone()
    assert len(node.gateway.hub) == 0


async def test_a_connection_closed_while_the_backend_is_down_leaves_no_presence(
        env: Env) -> None:
    node = env.node()
    c = env.cluster
    client = await node.welcomed("alice", channels="room")
    assert c.presence["room"]
    c.go_down()
    client.disconnect()
    await client.wait_gone()
    c.come_back()
    await until(lambda: (node.backplane.unready is None), "the gateway to be ready again")
    await settle()
    assert not c.presence["room"]
    assert not c.conns.get("alice")


# -- 4. drain and rebalance -------------------------------------------------------------------


def moved_by(client: Client, reason: str, code: int) -> bool:
    """The last thing the client got was a reconnect hint for ``reason``, then the close."""
    last = [m for m in client.messages if not (m["type"] == "error" and m.get("close"))]
    hint = last[-1] if last else {}
    return (client.close_code == code and hint.get("type") == "reconnect"
            and hint.get("reason") == reason
            and isinstance(hint.get("after_ms"), int) and 0 <= hint["after_ms"] <= 2000)


async def test_drain_sends_reconnect_then_1012_to_every_client_spread_over_the_window(
        env: Env) -> None:
    node = env.node(drain_window=0.3)
    clients = [await node.welcomed(f"u{i}") for i in range(4)]
    clients.append(await node.welcomed("sse-user", sse=True))
    await asyncio.wait_for(mover.drain(node.services), 5)
    for client in clients:
        assert await client.wait_closed() == 1012
        assert moved_by(client, "drain", 1012), client.messages[-2:]
    sse = clients[-1]
    assert sse.messages[-1] == {"type": "error", "code": 1012, "message": "drain",
                                "close": True}
    times = [cl.closed_at for cl in clients if cl.closed_at is not None]
    assert max(times) - min(times) >= 0.15, "moves are spread over the drain window"
    for client in clients:
        await client.wait_gone()
    assert len(node.gateway.hub) == 0
    assert not any(c for c in env.cluster.conns.values())


async def test_a_draining_gateway_refuses_new_clients_and_deregisters(env: Env) -> None:
    node = env.node(drain_window=0.3)
    clients = [await node.welcomed(f"u{i}") for i in range(3)]
    drain = asyncio.ensure_future(node.gateway.drain())
    await until(lambda: any(cl.close_code for cl in clients), "the drain to start")
    late = node.connect("late")
    await until(lambda: late.status is not None, "an HTTP answer")
    assert late.status == 503
    assert "draining" in json.loads(late.body)["message"]
    await asyncio.wait_for(drain, 5)
    assert [cl.close_code for cl in clients] == [1012] * 3
    assert all(moved_by(cl, "drain", 1012) for cl in clients)
    assert node.gateway_id not in env.cluster.registry


def rebalance_checks(node: Node) -> float:
    value = node.gateway.metrics.registry.get_sample_value(
        "switchboard_gateway_rebalance_checks_total")
    return value or 0.0


async def more_rounds(node: Node, n: int) -> None:
    start = rebalance_checks(node)
    await until(lambda: rebalance_checks(node) >= start + n, f"{n} rebalance rounds",
                timeout=5)


async def test_rebalance_moves_clients_with_4200_only_toward_a_gateway_that_heartbeats(
        env: Env) -> None:
    s: dict[str, Any] = dict(heartbeat_interval=0.05, rebalance_interval=0.4,
                             rebalance_rate=20.0)
    heavy = env.node(heartbeat=True, **s)
    light = env.node(heartbeat=True, **s)
    clients = [await heavy.welcomed(f"u{i}") for i in range(8)]
    for i in range(8):
        publish(env.cluster, f"user:u{i}", "hello")
    for i, client in enumerate(clients):
        await client.wait_offset("user", 1)
        assert client.conn.session.user == f"u{i}"
    resumed: dict[str, Client] = {}

    async def follow_the_hint() -> None:
        # What a client does with a reconnect hint: resume on the other gateway.
        while True:
            for client in clients:
                user = client.welcome["user"]
                if client.close_code == 4200 and user not in resumed:
                    resumed[user] = light.connect(user, session=client.welcome["session"],
                                                  cursor=client.cursor())
            await asyncio.sleep(0.005)

    clients_task = asyncio.ensure_future(follow_the_hint())
    rebalancer = asyncio.ensure_future(mover.rebalance_loop(heavy.services))
    try:
        # 8 against 0: down to the mean, 4 move.
        await until(lambda: len(resumed) == 4, "4 clients to be moved", timeout=5)
        await more_rounds(heavy, 2)
        moved = [cl for cl in clients if cl.close_code is not None]
        assert len(moved) == 4 and len(heavy.gateway.hub) == 4
        assert all(moved_by(cl, "rebalance", 4200) for cl in moved)
        for client in resumed.values():
            welcome = await client.welcomed()
            assert welcome["resumed"] is True and welcome["recovered"] is True
            assert welcome["streams"]["user"]["offset"] == 1

        # The light gateway's registry entry stops advancing (hung or crashed): it must
        # attract nobody, although 10 against 4 would otherwise move 3.
        light.backplane.hang()
        await more_rounds(heavy, 1)  # a round that read the entry before the hang is over
        clients += [await heavy.welcomed(f"v{i}") for i in range(6)]
        await more_rounds(heavy, 2)
        assert len(heavy.gateway.hub) == 10
        assert [cl for cl in clients if cl.close_code is not None] == moved
        assert not any(cl.of_type("reconnect") for cl in clients if cl not in moved)
    finally:
        rebalancer.cancel()
        clients_task.cancel()
        await asyncio.gather(rebalancer, clients_task, return_exceptions=True)

