"""Receipt deadlines end to end (issue 16 part 5): a real redis-server, a gateway, a router
and a ``switchboard webhooks`` dispatcher posting to a real HTTP receiver.

A publish to a user with ``receipt.within_ms`` fires ``message.undelivered`` only if no
session of that user acknowledged the message by the deadline: for the user who was
offline, and for one connected whose client never acked; never for the one who acked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard import receipts, streams
from switchboard import whcontract as wh
from switchboard.localcluster import LocalCluster
from tests.clients import WsClient, until
from tests.integration import test_webhooks
from tests.integration.cluster import token
from tests.integration.test_webhooks import (
    Backend,
    Receiver,
    command,
    hooked_gateway,
    start_dispatcher,
)
from tests.support import API_KEY, Proc, RedisServer, start_router

pytestmark = pytest.mark.integration

WITHIN = 1000  # ms, the shortest deadline allowed
receiver = test_webhooks.receiver  # the recording HTTP receiver, as a fixture here too


def api(router: Proc) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{router.port}",
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


def undelivered(receiver: Receiver, user: str) -> list[dict[str, Any]]:
    return [e for e in receiver.unique("message.undelivered") if e["user"] == user]


def partition_keys(redis: Backend, user: str) -> wh.WebhookKeys:
    return wh.WebhookKeys("sb:", cluster=isinstance(redis, LocalCluster))


def due_score(redis: Backend, user: str) -> str:
    keys = partition_keys(redis, user)
    due = keys.due(keys.partition(streams.user_key(user)))
    return command(redis, "ZSCORE", due, wh.due_member("r", user))


def started(redis: Backend, logdir: Path,
            receiver: Receiver) -> Iterator[tuple[Proc, httpx.Client]]:
    gw = hooked_gateway(redis, logdir, receiver)
    router = start_router(redis, logdir, SWITCHBOARD_WEBHOOK_URL=receiver.url)
    hooks = start_dispatcher(redis, logdir, receiver)
    http = api(router)
    try:
        yield gw, http
    finally:
        http.close()
        for proc in (hooks, router, gw):
            proc.stop()


@pytest.fixture
def hooked(redis_server: RedisServer, logdir: Path,
           receiver: Receiver) -> Iterator[tuple[Proc, httpx.Client]]:
    yield from started(redis_server, logdir, receiver)


@pytest.fixture
def hooked_anywhere(any_redis: Backend, logdir: Path,
                    receiver: Receiver) -> Iterator[tuple[Proc, httpx.Client]]:
    """As ``hooked``, on one redis-server and on a Redis Cluster."""
    yield from started(any_redis, logdir, receiver)


async def test_a_deadline_fires_undelivered_only_for_the_user_who_did_not_ack(
        any_redis: Backend, receiver: Receiver,
        hooked_anywhere: tuple[Proc, httpx.Client]) -> None:
    gw, http = hooked_anywhere
    url = f"ws://127.0.0.1:{gw.port}/ws?token="
    acker = await WsClient(url + token("ana")).start()
    mute = await WsClient(url + token("mo")).start()  # connected, never acks

    def publish(user: str, **extra: Any) -> dict[str, Any]:
        resp = http.post("/v1/publish", json={"user": user, "data": f"for {user}",
                                              "receipt": {"within_ms": WITHIN}, **extra})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        assert body["receipt"] == "pending"
        return body

    sent = {user: publish(user) for user in ("ana", "mo")}
    sent["oz"] = publish("oz", idempotency_key="order-7")  # oz is offline
    await until(lambda: acker.data("user") == ["for ana"], 10, "ana's message")
    await acker.send({"type": "ack", "stream": "user", "epoch": sent["ana"]["epoch"],
                      "offset": sent["ana"]["offset"]})

    [oz] = await _wait(receiver, "oz")
    [mo] = await _wait(receiver, "mo")
    assert (oz["reason"], oz["connections"], oz["idempotency_key"]) == ("not_acked", 0,
                                                                        "order-7")
    assert (mo["reason"], mo["connections"]) == ("not_acked", 1)
    assert "idempotency_key" not in mo
    for event, user in ((oz, "oz"), (mo, "mo")):
        assert (event["epoch"], event["offset"]) == (sent[user]["epoch"],
                                                     sent[user]["offset"])
        assert event["id"] == f"r:{user}/{event['epoch']}/{event['offset']}"
        assert event["deadline_ms"] - event["published_ms"] == WITHIN
    # ana's check has run (her due entry is gone) and every event it could have written is
    # delivered (the outbox is empty): so none is coming for her.
    await until(lambda: due_score(any_redis, "ana") == "", 10, "ana's deadline checked")
    keys = partition_keys(any_redis, "ana")
    out = keys.outbox(keys.partition(streams.user_key("ana")))
    await until(lambda: command(any_redis, "XLEN", out) == "0", 10, "outbox drained")
    assert undelivered(receiver, "ana") == []
    positions = http.get("/v1/users/ana/positions").json()
    assert positions["pending_receipts"] == 0
    assert positions["acked"]["offset"] == sent["ana"]["offset"]
    assert receiver.bad_signatures == 0
    await acker.close()
    await mute.close()


async def _wait(receiver: Receiver, user: str) -> list[dict[str, Any]]:
    await until(lambda: undelivered(receiver, user), 15, f"message.undelivered for {user}")
    return undelivered(receiver, user)


async def test_receipts_are_refused_where_they_cannot_be_kept(
        redis_server: RedisServer, logdir: Path, receiver: Receiver,
        hooked: tuple[Proc, httpx.Client]) -> None:
    _, http = hooked
    body = {"user": "ida", "data": 1, "receipt": {"within_ms": WITHIN}}
    for bad, field in (({"within_ms": WITHIN - 1}, "receipt.within_ms"),
                       ({"within_ms": True}, "receipt.within_ms"),
                       ({"within_ms": WITHIN, "more": 1}, "receipt"), (None, "receipt")):
        resp = http.post("/v1/publish", json={**body, "receipt": bad})
        assert (resp.status_code, resp.json()["field"]) == (422, field), resp.text
    channel = http.post("/v1/publish", json={"channel": "c", "data": 1,
                                             "receipt": {"within_ms": WITHIN}})
    assert (channel.status_code, channel.json()["field"]) == (422, "receipt")
    batch = http.post("/v1/publish/batch", json={"messages": [body]})
    assert (batch.status_code, batch.json()["field"]) == (422, "messages[0].receipt")

    plain_router = start_router(redis_server, logdir)  # no webhook URL: no dispatcher
    try:
        with api(plain_router) as plain:
            refused = plain.post("/v1/publish", json=body)
            assert refused.status_code == 409
            assert refused.json()["error"] == "receipts_unavailable"
            top = plain.get("/v1/users/ida/top").json()
            assert top["offset"] == 0, "nothing stored"
    finally:
        plain_router.stop()

    # The cap: one more receipt than a user may have waiting is refused, nothing stored.
    redis_server.cli("ZADD", receipts.receipts_key("sb:", "ida"),
                     *[x for i in range(receipts.MAX_PENDING) for x in ("9e15", f"E:{i}")])
    full = http.post("/v1/publish", json=body)
    assert full.status_code == 429 and full.json()["error"] == "too_many_receipts"
    assert http.get("/v1/users/ida/top").json()["offset"] == 0
    assert http.post("/v1/publish", json={"user": "ida", "data": 2}).status_code == 200


async def test_a_receipt_whose_stream_lost_its_history_fires_as_epoch_changed(
        redis_server: RedisServer, receiver: Receiver,
        hooked: tuple[Proc, httpx.Client]) -> None:
    _, http = hooked
    sent = http.post("/v1/publish", json={"user": "eve", "data": 1,
                                          "receipt": {"within_ms": WITHIN}}).json()
    # the stream's position is gone (a Redis restart without persistence, meta_ttl): offsets
    # of its next epoch say nothing about this message, so it cannot count as delivered
    redis_server.cli("DEL", f"sb:{{{streams.user_key('eve')}}}:meta")
    [event] = await _wait(receiver, "eve")
    assert (event["reason"], event["epoch"]) == ("epoch_changed", sent["epoch"])


async def test_an_ack_covers_only_what_its_connection_was_sent(
        redis_server: RedisServer, receiver: Receiver,
        hooked: tuple[Proc, httpx.Client]) -> None:
    """Published while the user was offline, then a fresh connection (no cursor) starts at
    the top and never gets it: its ack of a later message must not count for it."""
    gw, http = hooked
    missed = http.post("/v1/publish", json={"user": "uma", "data": "missed",
                                            "receipt": {"within_ms": WITHIN}}).json()
    late = await WsClient(f"ws://127.0.0.1:{gw.port}/ws?token={token('uma')}").start()
    seen = http.post("/v1/publish", json={"user": "uma", "data": "seen",
                                          "receipt": {"within_ms": WITHIN}}).json()
    await until(lambda: late.data("user") == ["seen"], 10, "the message after the connect")
    for offset in (missed["offset"], seen["offset"]):  # the first is dropped: never sent here
        await late.send({"type": "ack", "stream": "user", "epoch": seen["epoch"],
                         "offset": offset})
    [event] = await _wait(receiver, "uma")
    assert event["offset"] == missed["offset"] and event["connections"] == 1
    await until(lambda: due_score(redis_server, "uma") == "", 10, "uma's deadlines checked")
    keys = wh.WebhookKeys("sb:")
    out = keys.outbox(keys.partition(streams.user_key("uma")))
    await until(lambda: redis_server.cli("XLEN", out).strip() == "0", 10, "outbox drained")
    assert [e["offset"] for e in undelivered(receiver, "uma")] == [missed["offset"]]
    assert http.get("/v1/users/uma/positions").json()["acked"]["offset"] == seen["offset"]
    await late.close()
