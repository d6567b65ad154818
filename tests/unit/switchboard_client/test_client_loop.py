"""The client's reconnect loop against a scripted transport (fakes.py):
what the application sees, and what the client asks the gateway for on each reconnect."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from switchboard_client import (
    AuthError,
    Client,
    Forbidden,
    Message,
    Recovery,
    SessionError,
    TerminalClose,
)
from tests.unit.switchboard_client.fakes import (
    HOLD,
    CloseWith,
    FakeWs,
    j,
    message,
    refused,
    scripted,
    until,
    welcome,
)

TOP = {"user": ("e1", 4), "broadcast": ("b1", 0)}


async def take(c: Client, n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(5):
        async for item in c:
            out.append(item)
            if len(out) == n:
                break
    return out


async def test_delivers_in_order_from_the_welcome_position(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), message("user", "e1", 5, "a"), message("broadcast", "b1", 1, "x"),
                message("user", "e1", 6, "b"), HOLD)
    c, script = scripted(monkeypatch, ws)
    async with c:
        assert (c.state, c.session, c.gateway, c.user) == ("open", "S1", "gw-a", "alice")
        items = await take(c, 3)
        assert items == [Message("user", "e1", 5, "a"), Message("broadcast", "b1", 1, "x"),
                         Message("user", "e1", 6, "b")]
        assert c.positions == {"user": ("e1", 6), "broadcast": ("b1", 1)}
    assert script.query(0) == {"token": "T0"}  # no session or cursor on a first connect
    assert script.kwargs[0]["subprotocols"] == ["switchboard.v1.json"]
    assert ws.closed_by_client == (1000, "client closed")
    assert c.state == "closed"
    assert c.stats.connects == 1 and c.stats.reconnects == 0


async def test_a_gap_resumes_at_once_from_the_last_delivered_position(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), message("user", "e1", 5, "a"), message("user", "e1", 8, "d"))
    second = FakeWs(welcome({"user": ("e1", 5), "broadcast": ("b1", 0)}, resumed=True,
                            recovered=True),
                    message("user", "e1", 5, "a"),  # replay overlaps: dropped
                    message("user", "e1", 6, "b"), message("user", "e1", 7, "c"),
                    message("user", "e1", 8, "d"), HOLD)
    c, script = scripted(monkeypatch, first, second)
    async with c:
        items = await take(c, 4)
    assert [m.data for m in items] == ["a", "b", "c", "d"]
    assert first.closed_by_client == (1000, "gap")
    assert script.delays == []  # no backoff before filling a gap
    assert script.query(1) == {"token": "T0", "session": "S1",
                               "cursor": "user:e1:5,broadcast:b1:0"}
    s = c.stats
    assert (s.gaps_detected, s.reconnects, s.duplicates_dropped, s.recoveries_failed) == (
        1, 1, 1, 0)


async def test_an_unrecovered_resume_is_reported_before_later_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeWs(welcome(TOP), message("user", "e1", 5, "a"), CloseWith(1011))
    second = FakeWs(welcome({"user": ("e1", 9), "broadcast": ("b1", 0)}, gateway="gw-b",
                            resumed=True, recovered=False),
                    message("user", "e1", 10, "j"), HOLD)
    c, _ = scripted(monkeypatch, first, second, backoff_base=0)
    async with c:
        items = await take(c, 3)
    assert items == [Message("user", "e1", 5, "a"),
                     Recovery(recovered=False, streams=("user",), gateway="gw-b"),
                     Message("user", "e1", 10, "j")]
    assert c.stats.recoveries_failed == 1


async def test_a_new_epoch_is_reported_then_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome(TOP), message("user", "e2", 1, "fresh"), HOLD)
    c, _ = scripted(monkeypatch, ws)
    async with c:
        items = await take(c, 2)
    assert items == [Recovery(False, ("user",), "gw-a"), Message("user", "e2", 1, "fresh")]


@pytest.mark.parametrize("status", [401, 403])
async def test_refusals_without_a_remedy_raise_from_async_with(
        monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    c, script = scripted(monkeypatch, refused(status))
    with pytest.raises(AuthError if status == 401 else Forbidden) as info:
        async with c:
            pytest.fail("must not connect")
    assert getattr(info.value, "code", None) == status
    assert c.state == "closed"
    assert len(script.urls) == 1


async def test_a_refused_token_is_replaced_once_by_the_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["bad", "good"])

    async def provider() -> str:
        return next(tokens)

    c, script = scripted(monkeypatch, refused(401), FakeWs(welcome(TOP), HOLD),
                         token=None, token_provider=provider)
    async with c:
        assert c.state == "open"
    assert [script.query(i)["token"] for i in range(2)] == ["bad", "good"]
    assert script.delays == []  # retried immediately


async def test_a_provider_whose_fresh_token_is_refused_too_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def provider() -> str:
        return "bad"

    c, script = scripted(monkeypatch, refused(401), refused(401), token=None,
                         token_provider=provider)
    with pytest.raises(AuthError):
        await c.start()
    assert len(script.urls) == 2


async def test_close_4001_fetches_a_new_token_and_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def provider() -> str:
        return "renewed"

    first = FakeWs(welcome(TOP), CloseWith(4001, "token expired"))
    c, script = scripted(monkeypatch, first, FakeWs(welcome(TOP), HOLD), token="old",
                         token_provider=provider)
    async with c:
        await until(lambda: c.stats.reconnects == 1, "reconnected")
    assert script.query(1)["token"] == "renewed"
    assert script.query(1)["session"] == "S1"


@pytest.mark.parametrize(("code", "error"), [
    (4001, AuthError), (4003, Forbidden), (4004, SessionError), (4002, TerminalClose),
])
async def test_terminal_closes_are_raised_from_iteration_after_earlier_items(
        monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]) -> None:
    ws = FakeWs(welcome(TOP), message("user", "e1", 5, "a"), CloseWith(code, "no"))
    c, script = scripted(monkeypatch, ws)
    received = []
    async with c:
        with pytest.raises(error) as info:
            async for item in c:
                received.append(item)
        assert c.state == "closed"
        with pytest.raises(error):  # and again, for whoever iterates next
            await c.__anext__()
    assert received == [Message("user", "e1", 5, "a")]
    assert len(script.urls) == 1  # never reconnected
    assert getattr(info.value, "code", code) == code


@pytest.mark.parametrize("code", [1000, 1001, None, 1009, 1011, 1013, 4108, 4129])
async def test_backoff_closes_reconnect_within_the_first_bound(
        monkeypatch: pytest.MonkeyPatch, code: int | None) -> None:
    c, script = scripted(monkeypatch, FakeWs(welcome(TOP), CloseWith(code)),
                         FakeWs(welcome(TOP), HOLD), rng=random.Random(7))
    async with c:
        await until(lambda: c.stats.reconnects == 1, "reconnected")
    assert len(script.delays) == 1 and 0 <= script.delays[0] <= 0.5
    assert "session" in script.query(1) and "cursor" in script.query(1)


@pytest.mark.parametrize("code", [1012, 4200, 4201])
async def test_moves_reconnect_after_the_hint_or_a_short_jitter(
        monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    hinted = FakeWs(welcome(TOP), j({"type": "reconnect", "after_ms": 2500, "reason": "drain"}),
                    CloseWith(code))
    unhinted = FakeWs(welcome(TOP), CloseWith(code))
    c, script = scripted(monkeypatch, hinted, unhinted, FakeWs(welcome(TOP), HOLD))
    async with c:
        await until(lambda: c.stats.reconnects == 2, "reconnected twice")
    assert script.delays[0] == 2.5
    assert 0 <= script.delays[1] <= 1.0


async def test_retry_after_replaces_the_backoff_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    c, script = scripted(monkeypatch, refused(503, Retry_After="7"), refused(429),
                         ConnectionRefusedError(), FakeWs(welcome(TOP), HOLD),
                         rng=random.Random(1))
    async with c:
        assert c.state == "open"
    assert script.delays[0] == 7.0
    assert 0 <= script.delays[1] <= 1.0 and 0 <= script.delays[2] <= 2.0  # attempts 2 and 3


async def test_errors_pings_and_state_changes_reach_the_application(
        monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[tuple[str, str]] = []
    states: list[str] = []
    ws = FakeWs(welcome(TOP), j({"type": "error", "code": "denied", "message": "no channel"}),
                j({"type": "unknown-future-type"}), "{not json", CloseWith(1011))
    c, _ = scripted(monkeypatch, ws, FakeWs(welcome(TOP), HOLD),
                    on_error=lambda *a: errors.append(a), on_state=states.append, backoff_base=0)
    async with c:
        await until(lambda: c.stats.reconnects == 1, "reconnected")
        assert errors == [("denied", "no channel")]
        rtt = await c.ping()
        assert 0 <= rtt < 5
    assert states == ["open", "reconnecting", "open", "closed"]


async def test_a_slow_application_pauses_reading_and_loses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = FakeWs(welcome({"user": ("e1", 0)}),
                *(message("user", "e1", n, n) for n in range(1, 51)), HOLD)
    c, _ = scripted(monkeypatch, ws, max_queue=5)
    async with c:
        await until(lambda: c._queue.full(), "queue full")
        for _ in range(20):
            await asyncio.sleep(0)
        assert ws.frames.qsize() > 30  # the reader waits for the application
        items = await take(c, 50)
    assert [m.data for m in items] == list(range(1, 51))


async def test_close_ends_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = scripted(monkeypatch, FakeWs(welcome(TOP), HOLD))
    await c.start()
    received: list[Any] = []

    async def consume() -> None:
        async for item in c:
            received.append(item)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await c.close()
    async with asyncio.timeout(5):
        await consumer  # StopAsyncIteration, no error
    assert received == []
    await c.close()  # idempotent
    with pytest.raises(ConnectionError):
        await c.ping()
