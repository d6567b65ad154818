"""Switchboard on a real Redis Cluster (3 masters, 3 replicas): the same contract as one node.

Gateways and the router get a ``redis+cluster://`` URL; users, channels and broadcast live in
slots spread over the three masters, and every delivery goes through sharded pub/sub.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from switchboard.localcluster import LocalCluster, query
from tests.clients import WsClient, until
from tests.cluster_support import cluster_client
from tests.integration.cluster import Cluster, cluster, token
from tests.support import wait_until

pytestmark = pytest.mark.integration


def ws_url(c: Cluster, gw: int, user: str, **params: str) -> str:
    tok = token(user, channels=["*"], publish=["*"])
    query = "&".join([f"token={tok}", *(f"{k}={v}" for k, v in params.items())])
    return f"ws://127.0.0.1:{c.gateways[gw].port}/ws?{query}"


def replies(client: WsClient, kind: str) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") == kind]


def presence(c: Cluster, channel: str) -> dict[str, int]:
    body = c.http.get(f"/v1/channels/{channel}/presence").json()
    return {u["user"]: u["connections"] for u in body["users"]}


def masters_used(redis: RedisCluster, keys: list[str]) -> int:
    return len({redis.get_node_from_key(k).name for k in keys})


async def test_unicast_broadcast_and_channels_reach_the_right_clients_over_sharded_pubsub(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    users = [f"user{i}" for i in range(12)]
    rc = cluster_client(redis_cluster)
    # the users' streams really are spread over the masters
    assert masters_used(rc, [f"sb:{{u:{u}}}:log" for u in users]) == 3
    rc.close()
    with cluster(redis_cluster, logdir) as c:  # type: ignore[arg-type]
        clients = {u: await WsClient(ws_url(c, i % 2, u)).start() for i, u in enumerate(users)}
        room = [await WsClient(ws_url(c, i % 2, f"guest{i}", channels="room")).start()
                for i in range(4)]
        for u in users:
            assert c.publish(user=u, data=f"for {u}")["offset"] == 1
        c.publish(broadcast=True, data="everyone")
        c.publish(channel="room", data="in the room")
        for u, cl in clients.items():
            await until(lambda cl=cl: cl.data("user") and cl.data("broadcast"), 10, u)
        for u, cl in clients.items():
            assert cl.data("user") == [f"for {u}"]
            assert cl.data("broadcast") == ["everyone"]
            assert cl.data("ch.room") == []
        for g in room:
            await until(lambda g=g: g.data("ch.room"), 10, "the room message")
            assert g.data("ch.room") == ["in the room"]
            assert g.data("broadcast") == ["everyone"]
        # a second connection of a user on the other gateway gets the user's messages too
        twin = await WsClient(ws_url(c, 1, "user0")).start()
        c.publish(user="user0", data="both")
        await until(lambda: twin.data("user") == ["both"]
                    and clients["user0"].data("user")[-1:] == ["both"], 10, "both copies")
        assert clients["user0"].data("user") == ["for user0", "both"]
        # a client publish into a channel, and presence
        await room[0].send({"type": "publish", "channel": "room", "data": "from a guest"})
        for g in room:
            await until(lambda g=g: g.data("ch.room")[-1:] == ["from a guest"], 10, "client pub")
        assert presence(c, "room") == {f"guest{i}": 1 for i in range(4)}
        await room[3].close()
        wait_until(lambda: presence(c, "room") == {f"guest{i}": 1 for i in range(3)}, 10,
                   "presence after a leave")
        # the disconnect API reaches the user's connections through its channel
        resp = c.http.post("/v1/users/user5/disconnect", json={"reason": "bye"})
        assert resp.status_code == 200, resp.text
        await until(lambda: clients["user5"].closed, 10, "user5 disconnected")
        conns = c.http.get("/v1/users/user1/connections").json()
        assert len(conns["connections"]) == 1, conns
        for cl in [*clients.values(), *room[:3], twin]:
            await cl.close()
    # Sharded pub/sub only: plain PUBLISH (also from inside a script, which Redis counts the
    # same) would be copied over the cluster bus to every node.
    for node in redis_cluster.nodes:
        stats = query(node, ("INFO", "commandstats"))[0]
        assert "cmdstat_publish:" not in stats, f"{node.addr} ran PUBLISH"
    assert any("cmdstat_spublish:" in query(m, ("INFO", "commandstats"))[0]
               for m in redis_cluster.masters())


async def test_resume_after_a_disconnect_recovers_missed_messages_on_a_cluster(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    with cluster(redis_cluster, logdir) as c:  # type: ignore[arg-type]
        first = await WsClient(ws_url(c, 0, "cara", channels="feed")).start()
        c.publish(user="cara", data="seen")
        c.publish(channel="feed", data="seen")
        await until(lambda: first.data("user") == ["seen"] and first.data("ch.feed") == ["seen"],
                    10, "first messages")
        assert first.welcome is not None
        session = first.welcome["session"]
        cursor = ",".join(f"{s}:{m['epoch']}:{m['offset']}" for s in ("user", "ch.feed")
                          for m in first.messages(s)[-1:])
        await first.close()
        for i in range(10):
            c.publish(user="cara", data=f"u{i}")
            c.publish(channel="feed", data=f"f{i}")
        again = await WsClient(ws_url(c, 1, "cara", channels="feed", session=session,
                                      cursor=cursor)).start()
        assert again.welcome is not None and again.welcome["recovered"] is True
        await until(lambda: len(again.data("user")) == 10 and len(again.data("ch.feed")) == 10,
                    10, "the replay")
        assert again.data("user") == [f"u{i}" for i in range(10)]
        assert again.data("ch.feed") == [f"f{i}" for i in range(10)]
        c.publish(user="cara", data="live")
        await until(lambda: again.data("user")[-1:] == ["live"], 10, "live after resume")
        await again.close()


async def test_a_burst_of_new_users_is_welcomed_not_refused_as_unready(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    """Each new user on a gateway costs an SSUBSCRIBE, and the first channel on a node opens a
    link: subscriptions on their way are not a failure. Readiness counted them, and a connect
    burst got 503s from a healthy gateway."""
    from websockets.asyncio.client import connect

    with cluster(redis_cluster, logdir, gateways=1) as c:  # type: ignore[arg-type]
        gate = asyncio.Semaphore(50)
        refused: list[str] = []
        opened = []

        async def one(i: int) -> None:
            async with gate:
                try:
                    ws = await connect(ws_url(c, 0, f"burst{i}"), open_timeout=20)
                except Exception as exc:  # InvalidStatus 503 is the bug
                    refused.append(str(exc))
                    return
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 20))
                assert welcome["type"] == "welcome"
                opened.append(ws)

        await asyncio.gather(*(one(i) for i in range(300)))
        try:
            assert refused == [], refused[:3]
            assert len(opened) == 300
            assert c.publish(user="burst7", data="hi")["offset"] == 1
        finally:
            for ws in opened:
                await ws.close()


async def test_a_killed_gateways_presence_and_connections_are_forgotten(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    """No script may read another slot, so presence and a user's connections drop a dead
    gateway's entries by reading the registry themselves (on one node the Lua did)."""
    with cluster(redis_cluster, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="0.3") as c:  # type: ignore[arg-type]
        a1 = await WsClient(ws_url(c, 0, "amy", channels="stage")).start()
        a2 = await WsClient(ws_url(c, 1, "amy", channels="stage")).start()
        bo = await WsClient(ws_url(c, 1, "bob", channels="stage")).start()
        wait_until(lambda: presence(c, "stage") == {"amy": 2, "bob": 1}, 10, "all present")
        assert len(c.http.get("/v1/users/amy/connections").json()["connections"]) == 2
        c.gateways[1].kill()  # SIGKILL: it cannot clean up after itself
        wait_until(lambda: presence(c, "stage") == {"amy": 1}, 15,
                   "presence forgets the dead gateway's subscribers")
        conns = c.http.get("/v1/users/amy/connections").json()["connections"]
        assert len(conns) == 1, conns
        assert c.http.get("/v1/users/bob/connections").json()["connections"] == []
        for cl in (a1, a2, bo):
            await cl.close()
