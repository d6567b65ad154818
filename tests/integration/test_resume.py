"""Reconnect without loss: replay from the cursor, on any gateway, over WebSocket and SSE."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from tests.clients import Recorder, SseClient, WsClient, until
from tests.integration.cluster import Cluster, cluster, token
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration


def cursor_of(client: Recorder) -> str:
    """The client's position in every stream: welcome positions advanced by what arrived."""
    assert client.welcome is not None
    pos = {name: (p["epoch"], p["offset"]) for name, p in client.welcome["streams"].items()}
    for m in client.messages():
        pos[m["stream"]] = (m["epoch"], m["offset"])
    return ",".join(f"{name}:{e}:{o}" for name, (e, o) in pos.items())


def publish_while_away(c: Cluster, user: str, n: int) -> list[Any]:
    results = c.publish_batch(
        [{"user": user, "data": {"i": i}} if i % 2 == 0 else {"broadcast": True, "data":
                                                                {"i": i}} for i in range(n)])
    assert len(results) == n
    return [{"i": i} for i in range(n)]


async def test_clean_disconnect_then_resume_on_the_other_gateway_loses_nothing(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        first = await WsClient(c.ws_url(0, "alice")).start()
        c.publish(user="alice", data={"i": "before"})
        await until(lambda: len(first.messages()) == 1, 5, "first message")
        session, cursor = first.welcome["session"], cursor_of(first)  # type: ignore[index]
        await first.close()

        sent = publish_while_away(c, "alice", 100)
        again = await WsClient(c.ws_url(1, "alice", session=session, cursor=cursor)).start()
        assert again.welcome is not None
        assert again.welcome["gateway"] != first.welcome["gateway"]  # type: ignore[index]
        assert again.welcome["resumed"] is True and again.welcome["recovered"] is True
        assert again.welcome["session"] == session
        await until(lambda: len(again.messages()) == 100, 10, "100 replayed messages")
        got = [m["data"] for m in again.messages()]
        assert sorted(got, key=lambda d: d["i"]) == sent and len(got) == 100  # each once
        for stream in ("user", "broadcast"):
            offsets = [m["offset"] for m in again.messages(stream)]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # in order
        # Live delivery continues after the replay, without duplicates.
        c.publish(user="alice", data="live")
        await until(lambda: again.data("user")[-1:] == ["live"], 5, "live after replay")
        assert len(again.messages()) == 101
        await again.close()


async def test_sse_resumes_with_last_event_id(redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir) as c:
        port0, port1 = c.gateways[0].port, c.gateways[1].port
        first = await SseClient("127.0.0.1", port0, c.sse_path("sse-user")).start()
        c.publish(user="sse-user", data={"i": "before"})
        await until(lambda: len(first.messages()) == 1, 5, "first message")
        last_id = first.event_ids[-1]
        await first.close()

        sent = publish_while_away(c, "sse-user", 100)
        again = await SseClient("127.0.0.1", port1, c.sse_path("sse-user"),
                                {"Last-Event-ID": last_id}).start()
        assert again.welcome is not None and again.welcome["recovered"] is True
        await until(lambda: len(again.messages()) == 100, 10, "100 replayed over SSE")
        got = [m["data"] for m in again.messages()]
        assert sorted(got, key=lambda d: d["i"]) == sent
        # The latest event id resumes every stream at once.
        user_top = again.messages("user")[-1]["offset"]
        assert f"user:{again.messages('user')[-1]['epoch']}:{user_top}" in again.event_ids[-1]
        await again.close()


async def test_another_users_session_is_refused_4004(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        alice = await WsClient(c.ws_url(0, "alice")).start()
        stolen = alice.welcome["session"]  # type: ignore[index]
        mallory = await WsClient(c.ws_url(0, "mallory", session=stolen)).start()
        await until(lambda: mallory.closed, 5, "mallory closed")
        assert mallory.close_code == 4004 and mallory.welcome is None
        # Alice's own session is untouched and still resumable by her.
        await alice.close()
        back = await WsClient(c.ws_url(0, "alice", session=stolen)).start()
        assert back.welcome is not None and back.welcome["resumed"] is True
        await back.close()


async def test_malformed_cursor_or_session_is_a_400(
    redis_server: RedisServer, logdir: Path
) -> None:
    import httpx

    with cluster(redis_server, logdir, gateways=1) as c:
        port = c.gateways[0].port
        for query in ("cursor=user:abc", "cursor=nope:E:1", "session=not-valid!"):
            resp = httpx.get(f"http://127.0.0.1:{port}/sse?token={token('x')}&{query}")
            assert resp.status_code == 400 and resp.json()["message"], query


async def test_trimmed_history_is_not_recovered_and_positions_at_top(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        # The router writes the logs; give it a tiny history for this test.
        router = c.router
        router.stop()
        from tests.support import start_router

        small = start_router(redis_server, logdir, SWITCHBOARD_HISTORY_SIZE="10")
        try:
            c.router = small
            c.__post_init__()
            first = await WsClient(c.ws_url(0, "trim")).start()
            session, cursor = first.welcome["session"], cursor_of(first)  # type: ignore[index]
            await first.close()
            for chunk in range(5):  # 500 messages; ~ trimming keeps far fewer
                c.publish_batch([{"user": "trim", "data": chunk * 100 + i} for i in range(100)])
            again = await WsClient(c.ws_url(0, "trim", session=session, cursor=cursor)).start()
            assert again.welcome is not None
            assert again.welcome["resumed"] is True and again.welcome["recovered"] is False
            assert again.welcome["streams"]["user"]["offset"] == 500  # positioned at the top
            c.publish(user="trim", data="next")
            await until(lambda: again.data("user") == ["next"], 5, "only new messages")
            assert c.metric(0, "switchboard_gateway_resumes_total", outcome="not_recovered") == 1
            await again.close()
        finally:
            small.stop()


async def test_expired_history_is_not_recovered(redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        c.router.stop()
        from tests.support import start_router

        short = start_router(redis_server, logdir, SWITCHBOARD_HISTORY_TTL="1")
        try:
            c.router = short
            c.__post_init__()
            first = await WsClient(c.ws_url(0, "exp")).start()
            session, cursor = first.welcome["session"], cursor_of(first)  # type: ignore[index]
            await first.close()
            for i in range(5):
                c.publish(user="exp", data=i)
            wait_until(lambda: redis_server.cli("EXISTS", "sb:{u:exp}:log").strip() == "0", 10,
                       "the log to expire")
            again = await WsClient(c.ws_url(0, "exp", session=session, cursor=cursor)).start()
            assert again.welcome is not None and again.welcome["recovered"] is False
            assert again.welcome["streams"]["user"]["offset"] == 5
            assert again.messages() == []
            await again.close()
        finally:
            short.stop()


async def test_pubsub_connection_killed_nothing_lost_after_catch_up(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        client = await WsClient(c.ws_url(0, "kp")).start()
        gw_id = client.welcome["gateway"]  # type: ignore[index]
        store = Store.open(RedisSettings(redis_url=redis_server.url, redis_timeout=2), "test")
        published: list[int] = []

        async def burst(start: int, n: int) -> None:
            for i in range(start, start + n):
                await store.publish(Target("u", "kp"), i)
                published.append(i)

        await burst(0, 10)
        await until(lambda: len(client.messages()) == 10, 5, "first burst")
        killed = redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed.strip() != "0", f"no pub/sub connection of {gw_id} to kill"
        await burst(10, 30)  # published while the gateway resubscribes: pub/sub drops them
        await until(lambda: c.metric(0, "switchboard_gateway_pubsub_reconnects_total") >= 1, 10,
                    "pub/sub reconnect")
        await until(lambda: len(client.messages()) == 40, 10, "every message after catch-up")
        assert client.data("user") == published
        offsets = [m["offset"] for m in client.messages("user")]
        assert offsets == list(range(offsets[0], offsets[0] + 40))
        await store.aclose()
        await client.close()


async def test_recovered_is_false_without_a_cursor_even_with_a_session(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        first = await WsClient(c.ws_url(0, "nc")).start()
        s = first.welcome["session"]  # type: ignore[index]
        await first.close()
        again = await WsClient(c.ws_url(0, "nc", session=s)).start()
        assert again.welcome is not None
        assert again.welcome["resumed"] is True and again.welcome["recovered"] is False
        await asyncio.gather(again.close())


async def test_a_replay_larger_than_the_write_buffer_ceiling_is_paced_not_closed(
    redis_server: RedisServer, logdir: Path
) -> None:
    limit = 128 * 1024
    with cluster(redis_server, logdir, gateways=1,
                 SWITCHBOARD_WRITE_BUFFER_LIMIT=str(limit)) as c:
        first = await WsClient(c.ws_url(0, "big")).start()
        session, cursor = first.welcome["session"], cursor_of(first)  # type: ignore[index]
        await first.close()
        pad = "y" * 8000
        for chunk in range(4):  # 400 x 8 KB = 3.2 MB: 25 times the ceiling
            c.publish_batch([{"user": "big", "data": {"i": chunk * 100 + i, "pad": pad}}
                             for i in range(100)])
        again = await WsClient(c.ws_url(0, "big", session=session, cursor=cursor)).start()
        await until(lambda: len(again.messages()) == 400 or again.closed, 20, "paced replay")
        assert not again.closed, f"closed {again.close_code}"
        assert [m["data"]["i"] for m in again.messages()] == list(range(400))
        assert again.welcome is not None and again.welcome["recovered"] is True
        await again.close()


async def test_a_crowd_resuming_the_same_range_is_replayed_from_shared_log_reads(
    redis_server: RedisServer, logdir: Path
) -> None:
    """A reconnect storm in small: clients that held the same broadcast position come back
    together. Each gets the missed broadcasts exactly once, in order, while the gateway reads
    the range from Redis far fewer times than there are clients."""
    n = 120
    with cluster(redis_server, logdir) as c:
        first = await WsClient(c.ws_url(0, "crowd-0")).start()
        cursor = cursor_of(first).split(",")
        await first.close()
        broadcast = next(p for p in cursor if p.startswith("broadcast:"))
        results = c.publish_batch([{"broadcast": True, "data": i} for i in range(10)])
        top = results[-1]["offset"]

        clients = await asyncio.gather(*(
            WsClient(c.ws_url(1, f"crowd-{i}", cursor=broadcast)).start() for i in range(n)))
        for client in clients:
            assert client.welcome is not None and client.welcome["recovered"] is True
        await until(lambda: all(len(cl.messages("broadcast")) >= 10 for cl in clients), 15,
                    "every replay")
        for client in clients:
            got = client.messages("broadcast")
            assert [m["data"] for m in got] == list(range(10))
            assert got[-1]["offset"] == top
        read = c.metric(1, "switchboard_gateway_log_reads_total", outcome="read")
        shared = c.metric(1, "switchboard_gateway_log_reads_total", outcome="shared")
        assert read + shared == n and shared > read, (read, shared)
        for client in clients:
            await client.close()
