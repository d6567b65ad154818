"""Client acks and ``GET /v1/users/{U}/positions`` on real Redis (issue 16 part 5): one node
and a Redis Cluster, gateways in their own processes, raw WebSocket clients.

A connection acknowledges offsets of its user stream; its gateway writes them in batches;
the router answers where each session is. An ack of something the connection was never sent
is refused, one of another epoch is dropped, and offsets only ever rise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.localcluster import LocalCluster
from switchboard_client import Client, Message
from tests.clients import WsClient, until, until_async
from tests.integration.cluster import Cluster, cluster, token
from tests.support import RedisServer

pytestmark = pytest.mark.integration


def positions(c: Cluster, user: str) -> dict[str, Any]:
    resp = c.http.get(f"/v1/users/{user}/positions")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def acked(c: Cluster, user: str, session: str) -> int | None:
    for s in positions(c, user)["sessions"]:
        if s["session"] == session and s["acked"] is not None:
            offset: int = s["acked"]["offset"]
            return offset
    return None


def ack(epoch: str, offset: Any, stream: str = "user") -> dict[str, Any]:
    return {"type": "ack", "stream": stream, "epoch": epoch, "offset": offset}


def errors(client: WsClient) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") == "error"]


@pytest.fixture
def c(any_redis: RedisServer | LocalCluster, logdir: Path) -> Iterator[Cluster]:
    """Two gateways and a router, on one node or on a Redis Cluster."""
    with cluster(any_redis, logdir) as started:  # type: ignore[arg-type]
        yield started


async def test_acks_are_written_per_session_and_read_back_as_positions(c: Cluster) -> None:
    first = await WsClient(c.ws_url(0, "ada")).start()
    second = await WsClient(c.ws_url(1, "ada")).start()
    assert first.welcome and second.welcome
    s1, s2 = first.welcome["session"], second.welcome["session"]
    before = positions(c, "ada")
    assert before["acked"] is None
    # the gateways tell the two connections apart: one each
    assert sorted(s["gateway"] for s in before["sessions"]) == sorted(
        [first.welcome["gateway"], second.welcome["gateway"]])
    assert all(s["session"] is None and s["connected"] for s in before["sessions"])

    published = [c.publish(user="ada", data=i) for i in range(3)]
    epoch = published[0]["epoch"]
    await until(lambda: first.data("user") == [0, 1, 2] and second.data("user") == [0, 1, 2],
                10, "three messages to both connections")

    await first.send(ack(epoch, 2))
    await first.send(ack(epoch, 1))  # lower: changes nothing
    await second.send(ack(epoch, 3))
    await until_async(lambda: _is(c, "ada", s1, 2), 10, "the first session's ack written")
    await until_async(lambda: _is(c, "ada", s2, 3), 10, "the second session's ack written")
    now = positions(c, "ada")
    assert now["top"] == {"epoch": epoch, "offset": 3}
    assert now["acked"] == {"epoch": epoch, "offset": 3}
    rows = {s["session"]: s for s in now["sessions"]}
    assert rows[s1]["connected"] and rows[s1]["gateway"] == first.welcome["gateway"]
    assert rows[s2]["gateway"] == second.welcome["gateway"]
    assert len(now["sessions"]) == 2, "a connection that acked is listed once"

    # Past what was sent, another stream, a bad epoch: refused with the documented code.
    await first.send(ack(epoch, 4))
    await first.send(ack(epoch, 1, stream="ch.lobby"))
    await first.send(ack("no-such!", 1))
    await first.send(ack(epoch, True))
    await until(lambda: len(errors(first)) == 4, 10, "four refusals")
    assert {e["code"] for e in errors(first)} == {"bad_request"}
    assert c.metric(0, "switchboard_gateway_acks_total", outcome="refused") == 1
    # An epoch the stream is not in is dropped without a word (the client raced a reset).
    await first.send(ack("otherEpoch1", 1))
    await first.send({"type": "ping"})
    await until(lambda: any(m.get("type") == "pong" for m in first.received), 10, "pong")
    assert len(errors(first)) == 4
    assert c.metric(0, "switchboard_gateway_acks_total", outcome="stale") == 1

    await first.close()
    await until_async(lambda: _disconnected(c, "ada", s1), 10,
                      "a closed connection's session shows as not connected")
    assert acked(c, "ada", s1) == 2, "its ack outlives the connection"
    await second.close()


async def _is(c: Cluster, user: str, session: str, offset: int) -> bool:
    return acked(c, user, session) == offset


async def _disconnected(c: Cluster, user: str, session: str) -> bool:
    return any(s["session"] == session and not s["connected"] and s["gateway"] is None
               for s in positions(c, user)["sessions"])


async def test_a_resumed_session_acks_on_and_an_invalid_user_is_a_404(
        redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        first = await WsClient(c.ws_url(0, "bo")).start()
        assert first.welcome
        session = first.welcome["session"]
        p = c.publish(user="bo", data="a")
        await until(lambda: first.data("user") == ["a"], 10, "a")
        await first.send(ack(p["epoch"], 1))
        await until_async(lambda: _is(c, "bo", session, 1), 10, "ack 1")
        await first.close()
        c.publish(user="bo", data="b")
        again = await WsClient(c.ws_url(0, "bo", session=session,
                                        cursor=f"user:{p['epoch']}:1")).start()
        await until(lambda: again.data("user") == ["b"], 10, "b replayed on resume")
        await again.send(ack(p["epoch"], 2))
        await until_async(lambda: _is(c, "bo", session, 2), 10, "the resumed session's ack")
        row = next(s for s in positions(c, "bo")["sessions"] if s["session"] == session)
        assert row["connected"], "listed with the connection it acked through last"
        assert c.http.get("/v1/users/a%0Ab/positions").status_code == 404
        await again.close()


async def test_the_python_sdk_acks_what_the_application_processed(
        redis_server: RedisServer, logdir: Path) -> None:
    """A message counts as processed once the application asks for the next item; the one
    it still holds is acked when it closes the client."""
    with cluster(redis_server, logdir, gateways=1) as c:
        url = f"ws://127.0.0.1:{c.gateways[0].port}/ws"
        async with Client(url, token=token("cy"), format="msgpack") as sdk:
            quiet = await Client(url, token=token("cy"), ack=False).start()
            for i in range(3):
                c.publish(user="cy", data=i)
            items = aiter(sdk)
            # asking for the third means done with the second; the third is still in hand
            got = [await anext(items) for _ in range(3)]
            assert [m.data for m in got if isinstance(m, Message)] == [0, 1, 2]
            session = sdk.session or ""
            await until_async(lambda: _is(c, "cy", session, 2), 10,
                              "the timer's ack of the two messages processed")
            await quiet.close()
        await until_async(lambda: _is(c, "cy", session, 3), 10, "the ack sent at close")
        sessions = [s["session"] for s in positions(c, "cy")["sessions"]]
        assert sessions == [session], "the client with ack=False acked nothing"
