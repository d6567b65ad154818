"""Messages published through the router reach exactly the right clients, on any gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.clients import SseClient, WsClient, until
from tests.integration.cluster import cluster
from tests.support import RedisServer

pytestmark = pytest.mark.integration


async def test_unicast_and_broadcast_reach_exactly_the_right_connections(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        gw = c.gateways
        alice = [
            await WsClient(c.ws_url(0, "alice")).start(),
            await WsClient(c.ws_url(1, "alice"), msgpack_wire=True).start(),
            await SseClient("127.0.0.1", gw[0].port, c.sse_path("alice")).start(),
            await SseClient("127.0.0.1", gw[1].port, c.sse_path("alice")).start(),
        ]
        bob = [
            await WsClient(c.ws_url(1, "bob")).start(),
            await SseClient("127.0.0.1", gw[0].port, c.sse_path("bob")).start(),
        ]
        everyone = alice + bob
        # Every connection is positioned before its first message, on both gateways.
        assert {cl.welcome["gateway"] for cl in alice if cl.welcome} == {
            alice[0].welcome["gateway"], alice[1].welcome["gateway"]} and len(
            {alice[0].welcome["gateway"], alice[1].welcome["gateway"]}) == 2

        unicast = [c.publish(user="alice", data={"n": i}) for i in range(5)]
        broadcast = c.publish_batch([{"broadcast": True, "data": f"b{i}"} for i in range(5)])
        to_bob = c.publish(user="bob", data="just bob")

        first = unicast[0]["offset"]
        assert [r["offset"] for r in unicast] == list(range(first, first + 5))
        assert len({r["epoch"] for r in unicast}) == 1
        b0 = broadcast[0]["offset"]
        assert [r["offset"] for r in broadcast] == list(range(b0, b0 + 5))

        await until(lambda: all(len(cl.messages("broadcast")) == 5 for cl in everyone), 10,
                    "broadcasts everywhere")
        await until(lambda: all(len(cl.messages("user")) == 5 for cl in alice), 10,
                    "alice's unicasts")
        await until(lambda: all(len(cl.messages("user")) == 1 for cl in bob), 10,
                    "bob's unicast")
        for cl in alice:
            assert cl.data("user") == [{"n": i} for i in range(5)]
            assert [m["offset"] for m in cl.messages("user")] == [r["offset"] for r in unicast]
            assert cl.data("broadcast") == [f"b{i}" for i in range(5)]
        for cl in bob:
            assert cl.data("user") == ["just bob"]  # nothing of alice's
            assert cl.messages("user")[0]["offset"] == to_bob["offset"]
        # SSE event ids are full cursors: the last one names both streams at their tops.
        last_id = alice[2].event_ids[-1]
        assert f"user:{unicast[-1]['epoch']}:{unicast[-1]['offset']}" in last_id
        assert f"broadcast:{broadcast[-1]['epoch']}:{broadcast[-1]['offset']}" in last_id
        await asyncio.gather(*(cl.close() for cl in everyone))


async def test_welcome_positions_clients_at_the_current_top(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        done = [c.publish(user="carol", data=i) for i in range(3)]
        client = await WsClient(c.ws_url(0, "carol")).start()
        assert client.welcome is not None
        assert client.welcome["streams"]["user"] == {"epoch": done[-1]["epoch"], "offset": 3}
        assert client.welcome["resumed"] is False
        nxt = c.publish(user="carol", data="next")
        await until(lambda: client.messages("user"), 5, "next message")
        assert client.messages("user") == [{"type": "message", "stream": "user", "epoch":
                                            nxt["epoch"], "offset": 4, "data": "next"}]
        # The router's view of the user's connections names the gateway it is on.
        conns = c.http.get("/v1/users/carol/connections").json()
        assert conns["count"] == 1
        await client.close()
        await until(lambda: c.http.get("/v1/users/carol/connections").json()["count"] == 0, 10,
                    "connection removed from the map")


async def test_router_disconnect_closes_the_users_connections_with_4201(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        a = await WsClient(c.ws_url(0, "dave")).start()
        b = await WsClient(c.ws_url(1, "dave")).start()
        other = await WsClient(c.ws_url(0, "erin")).start()
        resp = c.http.post("/v1/users/dave/disconnect", json={"reason": "banned"})
        assert resp.status_code == 200, resp.text
        await until(lambda: a.closed and b.closed, 10, "dave disconnected")
        assert a.close_code == b.close_code == 4201
        c.publish(broadcast=True, data="still here")
        await until(lambda: other.data("broadcast") == ["still here"], 10, "erin unaffected")
        await other.close()
