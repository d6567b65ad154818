"""Channels: subscriptions, per-gateway Redis subscriptions, claims, client publish, presence."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from tests.clients import SseClient, WsClient, until
from tests.integration.cluster import Cluster, cluster, token
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


def ws_url(c: Cluster, gw: int, user: str, allow: list[str] | None = None,
           publish: list[str] | None = None, **params: str) -> str:
    """A connect URL whose token may subscribe to ``allow`` and publish to ``publish``."""
    tok = token(user, channels=allow or ["*"], publish=publish or [])
    query = "&".join([f"token={tok}", *(f"{k}={v}" for k, v in params.items())])
    return f"ws://127.0.0.1:{c.gateways[gw].port}/ws?{query}"


def replies(client: WsClient, kind: str) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") == kind]


def pubsub_channels(redis: RedisServer) -> set[str]:
    return set(redis.cli("PUBSUB", "CHANNELS", "sb:ch:*").split())


def presence(c: Cluster, channel: str) -> dict[str, int]:
    body = c.http.get(f"/v1/channels/{channel}/presence").json()
    return {u["user"]: u["connections"] for u in body["users"]}


async def test_only_subscribers_receive_and_redis_subscriptions_follow_local_subscribers(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        a = await WsClient(ws_url(c, 0, "ann")).start()
        b = await WsClient(ws_url(c, 0, "ben")).start()
        outsider = await WsClient(ws_url(c, 1, "oz")).start()
        assert "sb:ch:room" not in pubsub_channels(redis_server)

        await a.send({"type": "subscribe", "channel": "room"})
        await until(lambda: replies(a, "subscribed"), 5, "subscribed")
        assert pubsub_channels(redis_server) == {"sb:ch:room"}  # one gateway subscribed
        assert a.received[-1]["channel"] == "room"
        await b.send({"type": "subscribe", "channel": "room"})
        await until(lambda: replies(b, "subscribed"), 5, "b subscribed")

        results = [c.publish(channel="room", data=i) for i in range(3)]
        assert [r["stream"] for r in results] == ["ch.room"] * 3
        await until(lambda: a.data("ch.room") == [0, 1, 2] and b.data("ch.room") == [0, 1, 2],
                    5, "channel messages")
        assert [m["offset"] for m in a.messages("ch.room")] == [r["offset"] for r in results]
        c.publish(broadcast=True, data="sync")
        await until(lambda: outsider.data("broadcast") == ["sync"], 5, "outsider in sync")
        assert outsider.messages("ch.room") == []
        # Only gateway 0 has subscribers: Redis sends the channel there and nowhere else.
        assert c.metric(1, "switchboard_gateway_envelopes_received_total") == 1  # just "sync"

        await a.send({"type": "unsubscribe", "channel": "room"})
        await until(lambda: replies(a, "unsubscribed"), 5, "unsubscribed")
        assert pubsub_channels(redis_server) == {"sb:ch:room"}  # b still listens
        await b.close()
        wait_until(lambda: pubsub_channels(redis_server) == set(), 5,
                   "the last local subscriber's leaving unsubscribes the gateway")
        c.publish(channel="room", data="nobody")
        c.publish(broadcast=True, data="sync2")
        await until(lambda: a.data("broadcast") == ["sync", "sync2"], 5, "a in sync")
        assert a.data("ch.room") == [0, 1, 2]
        for cl in (a, outsider):
            await cl.close()


async def test_denied_subscribe_and_publish_get_errors_and_keep_the_connection(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        cl = await WsClient(ws_url(c, 0, "limited", allow=["news-*", "lobby"],
                                   publish=["lobby"])).start()
        await cl.send({"type": "subscribe", "channel": "secret"})
        await cl.send({"type": "subscribe", "channel": "bad name!"})
        await cl.send({"type": "publish", "channel": "news-1", "data": "nope"})
        # a refused publish repeats its id, so the client settles that request at once
        await cl.send({"type": "publish", "channel": "news-1", "data": "nope", "id": "p1"})
        await cl.send({"type": "publish", "channel": "bad name!", "data": 1, "id": 2})
        await cl.send({"type": "publish", "channel": "lobby", "id": 3})
        await until(lambda: len(replies(cl, "error")) == 6, 5, "six errors")
        errors = [(e["code"], e.get("id")) for e in replies(cl, "error")]
        assert errors == [("forbidden", None), ("bad_request", None), ("forbidden", None),
                          ("forbidden", "p1"), ("bad_request", 2), ("bad_request", 3)]
        assert not cl.closed

        await cl.send({"type": "subscribe", "channel": "news-sports"})  # prefix pattern
        await cl.send({"type": "subscribe", "channel": "lobby"})
        await until(lambda: len(replies(cl, "subscribed")) == 2, 5, "allowed subscriptions")
        # A client publish reaches every subscriber, the publisher's own connection included.
        other = await WsClient(ws_url(c, 0, "other", allow=["lobby"])).start()
        await other.send({"type": "subscribe", "channel": "lobby"})
        await until(lambda: replies(other, "subscribed"), 5, "other subscribed")
        await cl.send({"type": "publish", "channel": "lobby", "data": {"hi": 1}, "id": 7})
        await until(lambda: cl.data("ch.lobby") == [{"hi": 1}] and
                    other.data("ch.lobby") == [{"hi": 1}], 5, "client publish delivered")
        ack = replies(cl, "published")
        assert ack and ack[0]["id"] == 7 and ack[0]["offset"] == cl.messages("ch.lobby")[0][
            "offset"]
        for x in (cl, other):
            await x.close()


async def test_a_client_publish_while_redis_is_down_is_refused_then_works_again(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        cl = await WsClient(ws_url(c, 0, "pub", publish=["lobby"])).start()
        await cl.send({"type": "publish", "channel": "lobby", "data": 1, "id": 1})
        await until(lambda: replies(cl, "published"), 5, "first publish acknowledged")
        redis_server.stop()
        await cl.send({"type": "publish", "channel": "lobby", "data": 2, "id": 2})
        await until(lambda: replies(cl, "error"), 10, "refused while Redis is down")
        refusal = replies(cl, "error")[0]
        assert (refusal["code"], refusal["id"]) == ("unavailable", 2)
        assert not cl.closed
        redis_server.start()  # empty: the stream starts again under a new epoch

        # Redis is back once the gateway's publish connection reconnects: retry until acked.
        deadline = time.monotonic() + 15
        while True:
            acks, errors = len(replies(cl, "published")), len(replies(cl, "error"))
            await cl.send({"type": "publish", "channel": "lobby", "data": 3, "id": 3})
            await until(lambda: len(replies(cl, "published")) > acks  # noqa: B023
                        or len(replies(cl, "error")) > errors, 5, "an answer")  # noqa: B023
            if len(replies(cl, "published")) > acks:
                break
            assert time.monotonic() < deadline, "client publishes failed after the restart"
            await asyncio.sleep(0.2)
        assert c.publish(channel="lobby", data="router")["offset"] >= 2  # 3 then this one
        await cl.close()


async def test_presence_after_join_leave_and_gateway_crash(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="0.3") as c:
        a1 = await WsClient(ws_url(c, 0, "amy")).start()
        a2 = await WsClient(ws_url(c, 1, "amy")).start()
        bo = await WsClient(ws_url(c, 1, "bob")).start()
        for cl in (a1, a2, bo):
            await cl.send({"type": "subscribe", "channel": "stage"})
        await until(lambda: all(replies(x, "subscribed") for x in (a1, a2, bo)), 5, "joined")
        assert presence(c, "stage") == {"amy": 2, "bob": 1}

        await a1.send({"type": "unsubscribe", "channel": "stage"})
        await until(lambda: replies(a1, "unsubscribed"), 5, "left")
        wait_until(lambda: presence(c, "stage") == {"amy": 1, "bob": 1}, 5, "after leave")

        c.gateways[1].kill()  # SIGKILL: no chance to clean up its entries
        wait_until(lambda: presence(c, "stage") == {}, 10,
                   "presence forgets a dead gateway's subscribers")
        body = c.http.get("/v1/channels/stage/presence").json()
        assert body == {"channel": "stage", "users": [], "count": 0, "connections": 0}
        assert c.http.get("/v1/channels/bad name/presence").status_code == 422
        await a1.close()


async def test_channel_resume_after_disconnect_is_recovered_with_the_missed_messages(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        first = await WsClient(ws_url(c, 0, "cara", channels="feed")).start()
        assert first.welcome is not None and "ch.feed" in first.welcome["streams"]
        c.publish(channel="feed", data="seen")
        await until(lambda: first.data("ch.feed") == ["seen"], 5, "first message")
        last = first.messages("ch.feed")[-1]
        session = first.welcome["session"]
        await first.close()
        missed = [c.publish(channel="feed", data=f"missed{i}") for i in range(20)]

        # Resume at connect: the cursor covers the channel too.
        cursor = f"ch.feed:{last['epoch']}:{last['offset']}"
        again = await WsClient(ws_url(c, 1, "cara", channels="feed", session=session,
                                      cursor=cursor)).start()
        assert again.welcome is not None and again.welcome["recovered"] is True
        await until(lambda: len(again.data("ch.feed")) == 20, 5, "replayed")
        assert again.data("ch.feed") == [f"missed{i}" for i in range(20)]
        sub = replies(again, "subscribed")
        assert sub and sub[0]["recovered"] is True

        # Resume by subscribe with a cursor on a live connection.
        late = await WsClient(ws_url(c, 0, "dan")).start()
        await late.send({"type": "subscribe", "channel": "feed",
                         "cursor": {"epoch": last["epoch"], "offset": missed[9]["offset"]}})
        await until(lambda: len(late.data("ch.feed")) == 10, 5, "subscribe replay")
        assert late.data("ch.feed") == [f"missed{i}" for i in range(10, 20)]
        assert replies(late, "subscribed")[0]["recovered"] is True
        for x in (again, late):
            await x.close()


async def test_sse_subscribes_at_connect(redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        tok = token("eve", channels=["alerts"])
        sse = await SseClient("127.0.0.1", c.gateways[0].port,
                              f"/sse?token={tok}&channels=alerts,other").start()
        await until(lambda: len(sse.received) >= 3, 5, "welcome, subscribed, error")
        kinds = [m["type"] for m in sse.received[:3]]
        assert kinds == ["welcome", "subscribed", "error"]  # 'other' is not in the claims
        c.publish(channel="alerts", data="fire")
        await until(lambda: sse.data("ch.alerts") == ["fire"], 5, "SSE channel message")
        assert "ch.alerts:" in sse.event_ids[-1]
        await sse.close()


async def test_subscribe_unsubscribe_subscribe_back_to_back_ends_subscribed_and_present(
    redis_server: RedisServer, logdir: Path
) -> None:
    # 60 commands in quick bursts: more than the default inbound burst (50) allows when the
    # loop runs faster than the refill, which would close the client 4129 instead.
    with cluster(redis_server, logdir, gateways=1, SWITCHBOARD_INBOUND_BURST="1000") as c:
        cl = await WsClient(ws_url(c, 0, "flip")).start()
        assert cl.ws is not None
        for i in range(20):
            ch = f"flip{i}"
            # One write: the gateway reads all three in the same loop iteration, so the
            # unsubscribe always overtakes the first subscribe.
            burst = b"".join(
                Frame(Opcode.TEXT, json.dumps({"type": kind, "channel": ch}).encode())
                .serialize(mask=True, extensions=[])
                for kind in ("subscribe", "unsubscribe", "subscribe"))
            cl.ws.transport.write(burst)
            await until(lambda ch=ch: any(m.get("type") == "subscribed" and m["channel"] == ch
                                          for m in cl.received), 5, f"{ch} subscribed")
            answers = [m.get("code") or m["type"] for m in cl.received
                       if m.get("channel") == ch]
            assert sorted(answers) == sorted(["unsubscribed", "superseded", "subscribed"]), answers
            assert presence(c, ch) == {"flip": 1}
            c.publish(channel=ch, data=i)
            await until(lambda ch=ch, i=i: cl.data(f"ch.{ch}") == [i], 5, f"{ch} delivered")
        await cl.close()
