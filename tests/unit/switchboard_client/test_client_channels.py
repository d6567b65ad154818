"""Channel calls of the Client against the scripted transport (fakes.py):
what goes on the wire, how answers come back, and what a reconnect asks for."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from switchboard_client import (
    Client,
    Message,
    Position,
    Published,
    PublishError,
    Recovery,
    Subscribed,
    SubscribeError,
)
from tests.unit.switchboard_client.fakes import (
    HOLD,
    CloseWith,
    FakeWs,
    error,
    j,
    message,
    scripted,
    subscribed,
    until,
    welcome,
)

TOP = {"user": ("e1", 4), "broadcast": ("b1", 0)}


def answering(allowed: set[str] | None = None, epoch: str = "r1",
              tops: dict[str, int] | None = None) -> Callable[[dict[str, Any]], list[Any]]:
    """A gateway's answers to channel commands (see gateway/commands.py), given at once."""
    offsets = dict(tops or {})
    subscribed_to: set[str] = set()

    def respond(obj: dict[str, Any]) -> list[Any]:
        kind, c = obj["type"], obj.get("channel")
        assert isinstance(c, str)
        if kind == "unsubscribe":
            if c not in subscribed_to:
                return [error("not_subscribed", c)]
            subscribed_to.discard(c)
            return [j({"type": "unsubscribed", "channel": c})]
        if allowed is not None and c not in allowed:
            return [error("forbidden", c, f"your token does not allow you to {kind} {c!r}")]
        if kind == "subscribe":
            subscribed_to.add(c)
            return [subscribed(c, epoch, offsets.setdefault(c, 0))]
        offsets[c] = offsets.get(c, 0) + 1
        out: list[Any] = [j({"type": "published", "id": obj["id"], "channel": c,
                             "epoch": epoch, "offset": offsets[c]})]
        if c in subscribed_to:  # the publisher receives its message like everybody else
            out.append(message(f"ch.{c}", epoch, offsets[c], obj["data"]))
        return out

    return respond


async def take(c: Client, n: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(5):
        async for item in c:
            out.append(item)
            if len(out) == n:
                break
    return out


async def spin(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_subscribe_publish_and_receive_own_message(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), HOLD)
    ws.respond = answering(tops={"room": 3})
    c, _ = scripted(monkeypatch, ws)
    async with c:
        assert await c.subscribe("room") == Subscribed("room", "r1", 3, False)
        assert c.channels == ("room",) and c.positions["ch.room"] == ("r1", 3)
        assert await c.publish("room", {"hi": 1}) == Published("room", "r1", 4)
        assert await c.publish("elsewhere", [1]) == Published("elsewhere", "r1", 1)
        assert await take(c, 1) == [Message("ch.room", "r1", 4, {"hi": 1})]
    assert ws.sent_of("subscribe") == [{"type": "subscribe", "channel": "room"}]
    ids = [o["id"] for o in ws.sent_of("publish")]
    assert len(set(ids)) == 2
    assert ws.sent_of("publish")[0] == {"type": "publish", "channel": "room", "data": {"hi": 1},
                                        "id": ids[0]}


async def test_subscribe_with_a_cursor_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), HOLD)
    ws.respond = lambda obj: [subscribed("room", "r1", 2, recovered=True),
                              message("ch.room", "r1", 3, "c"), message("ch.room", "r1", 4, "d")]
    c, _ = scripted(monkeypatch, ws)
    async with c:
        sub = await c.subscribe("room", cursor=Position("r1", 2))
        assert sub.recovered
        assert [m.data for m in await take(c, 2)] == ["c", "d"]
    assert ws.sent_of("subscribe") == [{"type": "subscribe", "channel": "room",
                                        "cursor": {"epoch": "r1", "offset": 2}}]


async def test_channel_streams_are_deduplicated_and_a_gap_is_resumed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), HOLD)
    first.respond = lambda obj: [subscribed("room", "r1", 3), message("ch.room", "r1", 4, 4),
                                 message("ch.room", "r1", 4, 4), message("ch.room", "r1", 6, 6)]
    second = FakeWs(welcome({**TOP, "ch.room": ("r1", 4)}, resumed=True, recovered=True),
                    subscribed("room", "r1", 4, recovered=True),
                    message("ch.room", "r1", 5, 5), message("ch.room", "r1", 6, 6), HOLD)
    c, script = scripted(monkeypatch, first, second)
    async with c:
        await c.subscribe("room")
        items = await take(c, 3)
    assert [(m.stream, m.data) for m in items] == [("ch.room", 4), ("ch.room", 5),
                                                   ("ch.room", 6)]
    assert first.closed_by_client == (1000, "gap")
    assert script.query(1)["channels"] == "room"
    assert "ch.room:r1:4" in script.query(1)["cursor"].split(",")
    assert second.objs == []  # resubscribed by the connect itself, not by a command
    assert (c.stats.duplicates_dropped, c.stats.gaps_detected) == (1, 1)


async def test_every_reconnect_resubscribes_and_resumes_all_channels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome({**TOP, "ch.news": ("n1", 2)}), subscribed("news", "n1", 2), HOLD)
    first.respond = lambda obj: [subscribed("room", "r1", 7), message("ch.room", "r1", 8, "a"),
                                 message("ch.news", "n1", 3, "x")]
    second = FakeWs(welcome({**TOP, "ch.news": ("n1", 3), "ch.room": ("r1", 8)}, resumed=True,
                            recovered=True),
                    subscribed("news", "n1", 3, recovered=True),
                    subscribed("room", "r1", 8, recovered=True),
                    message("ch.room", "r1", 9, "b"), CloseWith(1012))
    # The third gateway lost the room's history: reported, then delivery goes on.
    third = FakeWs(welcome({**TOP, "ch.news": ("n1", 3), "ch.room": ("q9", 0)}, resumed=True),
                   subscribed("news", "n1", 3, recovered=True), subscribed("room", "q9", 0),
                   message("ch.room", "q9", 1, "c"), HOLD)
    c, script = scripted(monkeypatch, first, second, third, channels=["news"], backoff_base=0)
    async with c:
        assert script.query(0)["channels"] == "news"
        await c.subscribe("room")
        assert [m.data for m in await take(c, 2)] == ["a", "x"]
        first.push(CloseWith(1012))
        items = await take(c, 3)
    assert items == [Message("ch.room", "r1", 9, "b"),
                     Recovery(False, ("ch.room",), "gw-a"), Message("ch.room", "q9", 1, "c")]
    assert script.query(1)["channels"] == "news,room"
    assert set(script.query(1)["cursor"].split(",")) == {
        "user:e1:4", "broadcast:b1:0", "ch.news:n1:3", "ch.room:r1:8"}
    assert "ch.room:r1:9" in script.query(2)["cursor"].split(",")
    assert second.objs == third.objs == []


async def test_calls_made_while_reconnecting_wait_for_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), HOLD)
    second = FakeWs(welcome({**TOP, "ch.room": ("r1", 0)}), subscribed("room", "r1", 0), HOLD)
    second.respond = answering()
    c, script = scripted(monkeypatch, first, second, rng=random.Random(3))
    async with c:
        script.resume.clear()  # hold the client between the two connections
        first.push(CloseWith(1011))
        await until(lambda: c.state == "reconnecting" and len(script.delays) == 1)
        sub = asyncio.create_task(c.subscribe("room"))
        pub = asyncio.create_task(c.publish("lobby", "hi"))
        await spin()
        assert not sub.done() and not pub.done()
        script.resume.set()
        assert await sub == Subscribed("room", "r1", 0, False)
        assert await pub == Published("lobby", "r1", 1)
    assert script.query(1)["channels"] == "room"  # subscribed by the connect
    assert [o["type"] for o in second.objs] == ["publish"]
    assert first.objs == []


async def test_a_refused_subscribe_raises_and_the_connection_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[tuple[str, str]] = []
    ws = FakeWs(welcome(TOP), HOLD)
    ws.respond = answering(allowed={"lobby"})
    c, script = scripted(monkeypatch, ws, on_error=lambda *a: errors.append(a))
    async with c:
        with pytest.raises(SubscribeError) as info:
            await c.subscribe("secret")
        assert (info.value.code, info.value.channel) == ("forbidden", "secret")
        assert "not allow" in info.value.message
        assert c.channels == () and c.state == "open"
        with pytest.raises(PublishError) as pinfo:
            await c.publish("secret", 1)
        assert pinfo.value.code == "forbidden"
        assert await c.subscribe("lobby") == Subscribed("lobby", "r1", 0, False)
        ws.push(message("user", "e1", 5, "still here"))
        assert await take(c, 1) == [Message("user", "e1", 5, "still here")]
    assert errors == []  # answered through the calls, not the callback
    assert len(script.urls) == 1


async def test_unsubscribe_stops_delivery_and_later_connects_forget_the_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome({**TOP, "ch.room": ("r1", 0)}), subscribed("room", "r1", 0),
                   message("ch.room", "r1", 1, "before"), HOLD)
    first.respond = lambda obj: [message("ch.room", "r1", 2, "in flight"),
                                 j({"type": "unsubscribed", "channel": "room"})]
    second = FakeWs(welcome(TOP), HOLD)
    c, script = scripted(monkeypatch, first, second, channels=["room"], backoff_base=0)
    async with c:
        assert await take(c, 1) == [Message("ch.room", "r1", 1, "before")]
        await c.unsubscribe("room")
        assert c.channels == () and "ch.room" not in c.positions
        with pytest.raises(SubscribeError) as info:
            await c.unsubscribe("room")
        assert info.value.code == "not_subscribed"
        first.push(message("ch.room", "r1", 3, "late"))
        first.push(message("user", "e1", 5, "mark"))
        assert await take(c, 1) == [Message("user", "e1", 5, "mark")]
        first.push(CloseWith(1011))
        await until(lambda: c.stats.reconnects == 1)
    assert "channels" not in script.query(1)
    assert "ch.room" not in script.query(1)["cursor"]


async def test_a_publish_whose_connection_ends_is_not_resent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), HOLD)
    second = FakeWs(welcome(TOP), HOLD)
    c, _ = scripted(monkeypatch, first, second, backoff_base=0)
    async with c:
        pub = asyncio.create_task(c.publish("room", "maybe"))
        await until(lambda: len(first.sent_of("publish")) == 1)
        first.push(CloseWith(1011))
        with pytest.raises(PublishError) as info:
            await pub
        assert info.value.code == "disconnected"
        await until(lambda: c.stats.reconnects == 1)
        await spin()
    assert second.objs == []


async def test_a_connect_time_channel_refused_is_reported_and_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[tuple[str, str]] = []
    first = FakeWs(welcome({**TOP, "ch.news": ("n1", 0)}), subscribed("news", "n1", 0),
                   error("forbidden", "secret", "not for you"), CloseWith(1011))
    second = FakeWs(welcome({**TOP, "ch.news": ("n1", 0)}), HOLD)
    c, script = scripted(monkeypatch, first, second, channels=["news", "secret", "news"],
                         on_error=lambda *a: errors.append(a), backoff_base=0)
    async with c:
        await until(lambda: c.stats.reconnects == 1)
        assert c.channels == ("news",)
    assert script.query(0)["channels"] == "news,secret"
    assert script.query(1)["channels"] == "news"
    assert errors == [("forbidden", "not for you")]


async def test_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """request_timeout=0: a call times out unless answered at once (no real waiting)."""
    errors: list[tuple[str, str]] = []
    ws = FakeWs(welcome(TOP), HOLD)
    c, _ = scripted(monkeypatch, ws, request_timeout=0, on_error=lambda *a: errors.append(a))
    async with c:
        with pytest.raises(TimeoutError):
            await c.subscribe("room")
        assert c.channels == ("room",)  # still requested: it completes in the background
        ws.push(subscribed("room", "r1", 5))
        await until(lambda: "ch.room" in c.positions)
        with pytest.raises(TimeoutError):
            await c.subscribe("secret")
        ws.push(error("forbidden", "secret", "nope"))  # nobody waits: reported
        await until(lambda: errors == [("forbidden", "nope")])
        assert c.channels == ("room",)
        with pytest.raises(TimeoutError):
            await c.publish("room", 1)
        with pytest.raises(TimeoutError):
            await c.unsubscribe("room")
        assert not c.channels  # unsubscribed all the same


async def test_a_publish_that_timed_out_before_it_was_sent_never_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), HOLD)
    second = FakeWs(welcome(TOP), HOLD)
    c, script = scripted(monkeypatch, first, second, request_timeout=0, rng=random.Random(1))
    async with c:
        script.resume.clear()
        first.push(CloseWith(1011))
        await until(lambda: len(script.delays) == 1)
        with pytest.raises(TimeoutError):
            await c.publish("room", "too late")
        script.resume.set()
        await until(lambda: c.stats.reconnects == 1)
        await spin()
    assert first.objs == second.objs == []


async def test_closing_or_a_terminal_error_fails_waiting_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), HOLD)
    c, _ = scripted(monkeypatch, ws)
    with pytest.raises(RuntimeError):
        await c.subscribe("room")  # not started
    async with c:
        sub = asyncio.create_task(c.subscribe("room"))
        await until(lambda: ws.sent_of("subscribe") != [])
    with pytest.raises(ConnectionError):
        await sub
    with pytest.raises(ConnectionError):
        await c.publish("room", 1)

    ws = FakeWs(welcome(TOP), HOLD)
    c, _ = scripted(monkeypatch, ws)
    async with c:
        pub = asyncio.create_task(c.publish("room", 1))
        await until(lambda: ws.sent_of("publish") != [])
        ws.push(CloseWith(4003, "forbidden"))
        with pytest.raises(PublishError) as info:  # sent: it may have been stored
            await pub
        assert info.value.code == "disconnected"
        with pytest.raises(ConnectionError):
            await c.subscribe("room")


async def test_msgpack_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), HOLD)
    ws.respond = answering()
    c, _ = scripted(monkeypatch, ws, format="msgpack")
    async with c:
        assert await c.subscribe("room") == Subscribed("room", "r1", 0, False)
        assert await c.publish("other", b"\x00bytes") == Published("other", "r1", 1)
    assert all(isinstance(frame, bytes) for frame in ws.sent)
    assert ws.sent_of("publish")[0]["data"] == b"\x00bytes"


async def test_bad_arguments_raise_before_anything_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        Client("ws://gw.test/ws", token="T", channels=["bad name"])
    ws = FakeWs(welcome(TOP), HOLD)
    c, _ = scripted(monkeypatch, ws)
    async with c:
        with pytest.raises(ValueError):
            await c.subscribe("no spaces")
        with pytest.raises(ValueError):
            await c.subscribe("room", cursor=("r:1", 2))
        with pytest.raises(TypeError):
            await c.publish("room", object())
        with pytest.raises(ValueError):
            await c.publish("", 1)
    assert ws.objs == []
