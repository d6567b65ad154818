"""Regressions from a bad-input battery: lone surrogates in names we quote back, NaN in data.

JSON text may spell a lone surrogate (``"\\ud800"``); Python decodes it into a str that UTF-8
cannot carry, so an answer repeating it could not be encoded:

- the router answered 500 instead of 422 for an unknown field named so (both the plain-ASGI
  publish routes and the FastAPI ones);
- the gateway closed the WebSocket 1011 when its ``error`` reply repeated such a channel;
- a client ``publish`` with such an ``id`` was stored but never answered (its ``published``
  reply failed in a background task).

And a client could publish NaN or Infinity (JSON ``NaN`` literals, msgpack floats), which the
router refuses: JSON subscribers got ``null``, msgpack subscribers NaN.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from switchboard.auth import mint
from switchboard.config import RouterSettings
from tests.clients import WsClient, until
from tests.integration.test_fastpath import AUTH, JSON, KEY, Apps, make_apps, same_answer
from tests.support import JWT_SECRET, Proc, RedisServer, start_gateway

pytestmark = pytest.mark.integration

ANSWERS = ("pong", "error", "subscribed", "unsubscribed", "published")


# -- router ------------------------------------------------------------------------------------


@pytest.fixture
async def apps(redis_server: RedisServer) -> AsyncIterator[Apps]:
    settings = RouterSettings(redis_url=redis_server.url, api_keys=(KEY,))
    async with make_apps(settings) as made:
        yield made


UNKNOWN_FIELD_CASES = [
    ("/v1/publish", b'{"user":"a","data":1,"\\ud800":1}', "\\ud800"),
    ("/v1/publish", b'{"\\udcff":1}', "\\udcff"),
    ("/v1/publish/batch", b'{"messages":[{"user":"a","data":1}],"\\ud800":1}', "\\ud800"),
    ("/v1/publish/batch", b'{"messages":[{"user":"a","data":1,"\\ud800":1}]}',
     "messages[0].\\ud800"),
]


@pytest.mark.parametrize(("path", "body", "field"), UNKNOWN_FIELD_CASES)
async def test_an_unknown_field_named_by_a_lone_surrogate_is_422(
    apps: Apps, path: str, body: bytes, field: str
) -> None:
    # same_answer sends it to the fast path and to the FastAPI route: both must agree
    status, answer = await same_answer(apps, path, content=body, headers={**AUTH, **JSON})
    assert status == 422, answer
    assert answer["error"] == "invalid"
    assert answer["field"] == field  # quoted back, with the surrogate as an escape


async def test_a_disconnect_body_with_a_lone_surrogate_field_is_422(apps: Apps) -> None:
    fast_client, _ = apps.clients()
    async with fast_client:
        answer = await fast_client.post("/v1/users/alice/disconnect", content=b'{"\\udcff":1}',
                                        headers={**AUTH, **JSON})
    assert answer.status_code == 422, answer.content
    assert answer.json()["field"] == "\\udcff"


# -- gateway -----------------------------------------------------------------------------------


@pytest.fixture
def gateway(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    gw = start_gateway(redis_server, logdir)
    try:
        yield gw
    finally:
        gw.stop()
        assert "Traceback" not in gw.output(), gw.output()[-3000:]
        assert "never retrieved" not in gw.output(), gw.output()[-3000:]


async def connect(gw: Proc, user: str, msgpack_wire: bool = False) -> WsClient:
    token = mint(JWT_SECRET, user, channels=["*"], publish=["*"])
    client = await WsClient(f"ws://127.0.0.1:{gw.port}/ws?token={token}",
                            msgpack_wire=msgpack_wire).start()
    assert client.welcome is not None
    return client


def answers(client: WsClient) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") in ANSWERS]


async def send_raw(client: WsClient, frame: str | bytes) -> dict[str, Any]:
    """Send one frame and return its answer (the one after those already received)."""
    assert client.ws is not None
    before = len(answers(client))
    await client.ws.send(frame)
    await until(lambda: len(answers(client)) > before or client.closed, 10, "an answer")
    assert not client.closed, f"closed {client.close_code}"
    return answers(client)[before]


@pytest.mark.parametrize("msgpack_wire", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
async def test_a_lone_surrogate_channel_is_an_error_reply_not_a_1011(
    gateway: Proc, kind: str, msgpack_wire: bool
) -> None:
    client = await connect(gateway, "sur", msgpack_wire)
    try:
        # A text frame carries JSON whatever the subprotocol: the reply is msgpack then.
        command = {"type": kind, "channel": "\ud800", "data": 1, "id": 7}
        reply = await send_raw(client, json.dumps(command, ensure_ascii=True))
        assert reply["type"] == "error", reply
        assert reply["code"] == ("not_subscribed" if kind == "unsubscribe" else "bad_request")
        assert reply["channel"] == "\\ud800"
        assert (await send_raw(client, json.dumps({"type": "ping"})))["type"] == "pong"
    finally:
        await client.close()


async def published_after_refusal(gw: Proc, publisher: WsClient, refused: str | bytes,
                                  channel: str) -> dict[str, Any]:
    """Send ``refused``, then a valid publish; a subscriber must get only the valid one."""
    watcher = await connect(gw, "watcher")
    try:
        assert (await send_raw(watcher, json.dumps({"type": "subscribe", "channel": channel})
                               ))["type"] == "subscribed"
        reply = await send_raw(publisher, refused)
        ok = await send_raw(publisher, json.dumps(
            {"type": "publish", "channel": channel, "data": "ok", "id": "ok"}))
        assert ok["type"] == "published", ok
        await until(lambda: watcher.messages(f"ch.{channel}"), 10, "the valid message")
        assert watcher.data(f"ch.{channel}") == ["ok"]  # nothing of the refused one
        assert watcher.messages(f"ch.{channel}")[0]["offset"] == ok["offset"] == 1
        return reply
    finally:
        await watcher.close()


@pytest.mark.parametrize("msgpack_wire", [False, True], ids=["json", "msgpack"])
async def test_a_lone_surrogate_publish_id_is_refused_before_it_is_stored(
    gateway: Proc, msgpack_wire: bool
) -> None:
    publisher = await connect(gateway, "pub", msgpack_wire)
    try:
        frame = json.dumps({"type": "publish", "channel": "ids", "data": 1, "id": "\ud800"})
        reply = await published_after_refusal(gateway, publisher, frame, "ids")
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
        assert reply["channel"] == "ids"
    finally:
        await publisher.close()


NON_FINITE_JSON = ["NaN", "Infinity", "-Infinity", "1e999", '{"a":[1,{"b":NaN}]}']


@pytest.mark.parametrize("msgpack_wire", [False, True], ids=["json-wire", "msgpack-wire"])
@pytest.mark.parametrize("data", NON_FINITE_JSON)
async def test_json_nan_or_infinity_is_refused_like_the_router_does(
    gateway: Proc, data: str, msgpack_wire: bool
) -> None:
    publisher = await connect(gateway, "nan", msgpack_wire)
    try:
        frame = '{"type":"publish","channel":"nan","id":3,"data":' + data + "}"
        reply = await published_after_refusal(gateway, publisher, frame, "nan")
        assert reply == {"type": "error", "code": "bad_request", "channel": "nan", "id": 3,
                         "message": reply["message"]}
        assert "NaN" in reply["message"]
    finally:
        await publisher.close()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_msgpack_nan_or_infinity_is_refused(gateway: Proc, value: float) -> None:
    publisher = await connect(gateway, "mp", msgpack_wire=True)
    try:
        # no id: the error is the only answer there is
        frame = msgpack.packb({"type": "publish", "channel": "mp", "data": {"x": [value]}})
        reply = await published_after_refusal(gateway, publisher, frame, "mp")
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    finally:
        await publisher.close()

