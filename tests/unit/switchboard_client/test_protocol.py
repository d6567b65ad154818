"""The client's protocol decisions, without I/O: positions, duplicates, gaps, lost history,
cursors, connect URLs and what each close code or HTTP refusal leads to."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard_client.policy import Next, after_close, after_refusal, retry_after
from switchboard_client.protocol import (
    Gap,
    Message,
    Position,
    Presence,
    ProtocolViolation,
    Recovery,
    Tracker,
    Verdict,
    classify,
    connect_url,
    decode,
    encode,
    format_cursor,
    parse_message,
    parse_presence,
    parse_welcome,
)


def welcome(streams: dict[str, tuple[str, int]], *, recovered: bool = False,
            resumed: bool = False) -> dict[str, Any]:
    return {
        "type": "welcome", "session": "S1", "gateway": "gw-a", "user": "alice",
        "resumed": resumed, "recovered": recovered,
        "streams": {s: {"epoch": e, "offset": o} for s, (e, o) in streams.items()},
    }


def msg(stream: str, epoch: str, offset: int, data: Any = None) -> Message:
    return Message(stream, epoch, offset, data)


def positioned(**streams: tuple[str, int]) -> Tracker:
    t = Tracker()
    assert t.on_welcome(parse_welcome(welcome(streams)), sent={}) is None
    return t


# -- close codes and refusals ---------------------------------------------------------------

CLOSE_POLICY = [
    (1000, Next.BACKOFF), (1001, Next.BACKOFF), (1006, Next.BACKOFF), (None, Next.BACKOFF),
    (1009, Next.BACKOFF), (1011, Next.BACKOFF), (1013, Next.BACKOFF),
    (1012, Next.JITTER),
    (4001, Next.NEW_TOKEN), (4003, Next.FORBIDDEN), (4004, Next.SESSION_UNKNOWN),
    (4000, Next.TERMINAL), (4002, Next.TERMINAL), (4099, Next.TERMINAL),
    (4100, Next.BACKOFF), (4108, Next.BACKOFF), (4129, Next.BACKOFF), (4199, Next.BACKOFF),
    (4200, Next.JITTER), (4201, Next.JITTER), (4299, Next.JITTER),
    (1008, Next.BACKOFF), (3000, Next.BACKOFF), (4300, Next.BACKOFF),  # unknown: keep trying
]


@pytest.mark.parametrize(("code", "action"), CLOSE_POLICY)
def test_close_code_policy(code: int | None, action: Next) -> None:
    assert after_close(code) is action


@pytest.mark.parametrize(("status", "action"), [
    (401, Next.NEW_TOKEN), (403, Next.FORBIDDEN), (429, Next.BACKOFF), (503, Next.BACKOFF),
    (500, Next.BACKOFF), (404, Next.BACKOFF), (502, Next.BACKOFF),
])
def test_handshake_refusal_policy(status: int, action: Next) -> None:
    assert after_refusal(status) is action


def test_retry_after() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 1.5 ") == 1.5
    assert retry_after("-2") == 0.0
    assert retry_after(None) is None
    assert retry_after("") is None
    assert retry_after("soon") is None
    assert retry_after("inf") is None
    # HTTP-date form, relative to "now" (1994-11-06 08:49:37 UTC is 784111777).
    assert retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now=784111777.0) == 10.0
    assert retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now=784111800.0) == 0.0


# -- deliver, drop, gap, new epoch ----------------------------------------------------------

def test_classify() -> None:
    p = Position("e1", 10)
    assert classify(p, "e1", 11) is Verdict.DELIVER
    assert classify(p, "e1", 10) is Verdict.DUPLICATE
    assert classify(p, "e1", 3) is Verdict.DUPLICATE
    assert classify(p, "e1", 12) is Verdict.GAP
    assert classify(p, "e2", 1) is Verdict.NEW_EPOCH
    assert classify(p, "e2", 11) is Verdict.NEW_EPOCH
    assert classify(None, "e1", 99) is Verdict.DELIVER  # a stream we knew nothing of


def test_in_order_messages_are_delivered_and_advance_the_position() -> None:
    t = positioned(user=("e1", 4), broadcast=("b1", 0))
    assert t.on_message(msg("user", "e1", 5, "a"), gateway="gw") == (msg("user", "e1", 5, "a"),)
    assert t.on_message(msg("broadcast", "b1", 1, "x"), gateway="gw") == (
        msg("broadcast", "b1", 1, "x"),)
    assert t.on_message(msg("user", "e1", 6, "b"), gateway="gw") == (msg("user", "e1", 6, "b"),)
    assert t.positions == {"user": ("e1", 6), "broadcast": ("b1", 1)}


def test_duplicates_are_dropped_and_counted() -> None:
    t = positioned(user=("e1", 4))
    t.on_message(msg("user", "e1", 5), gateway="gw")
    assert t.on_message(msg("user", "e1", 5), gateway="gw") == ()
    assert t.on_message(msg("user", "e1", 2), gateway="gw") == ()
    assert t.stats.duplicates_dropped == 2
    assert t.positions["user"] == ("e1", 5)


def test_a_gap_delivers_nothing_and_keeps_the_position_for_the_resume() -> None:
    t = positioned(user=("e1", 4))
    assert t.on_message(msg("user", "e1", 7), gateway="gw") == Gap("user", 5, 7)
    assert t.positions["user"] == ("e1", 4)
    assert t.cursor() == "user:e1:4"
    assert t.stats.gaps_detected == 1


def test_a_new_epoch_reports_lost_history_then_delivers() -> None:
    t = positioned(user=("e1", 40))
    out = t.on_message(msg("user", "e2", 1, "fresh"), gateway="gw-b")
    assert out == (Recovery(False, ("user",), "gw-b"), msg("user", "e2", 1, "fresh"))
    assert t.positions["user"] == ("e2", 1)
    assert t.stats.recoveries_failed == 1


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=60))
def test_whatever_arrives_what_is_delivered_is_consecutive_and_unique(offsets: list[int]) -> None:
    t = positioned(user=("e", 0))
    delivered: list[int] = []
    for offset in offsets:
        out = t.on_message(msg("user", "e", offset), gateway="gw")
        if isinstance(out, Gap):
            assert offset > t.positions["user"].offset + 1
            continue
        delivered.extend(m.offset for m in out if isinstance(m, Message))
    assert delivered == list(range(1, len(delivered) + 1))
    assert t.positions["user"].offset == len(delivered)


# -- welcome: positions and failed recovery -------------------------------------------------

def test_first_welcome_positions_every_stream() -> None:
    t = Tracker()
    w = parse_welcome(welcome({"user": ("e1", 4), "broadcast": ("b1", 9)}))
    assert t.on_welcome(w, sent={}) is None
    assert t.positions == {"user": Position("e1", 4), "broadcast": Position("b1", 9)}


def test_recovered_resume_continues_from_the_cursor() -> None:
    t = positioned(user=("e1", 4))
    sent = dict(t.positions)
    w = parse_welcome(welcome({"user": ("e1", 4)}, resumed=True, recovered=True))
    assert t.on_welcome(w, sent=sent) is None
    assert t.stats.recoveries_failed == 0


def test_unrecovered_resume_names_the_streams_that_jumped() -> None:
    t = positioned(user=("e1", 4), broadcast=("b1", 9), **{"ch.news": ("c1", 2)})
    sent = dict(t.positions)
    w = parse_welcome(welcome(
        {"user": ("e1", 10), "broadcast": ("b1", 9), "ch.news": ("c2", 0)}, resumed=True))
    assert t.on_welcome(w, sent=sent) == Recovery(False, ("user", "ch.news"), "gw-a")
    assert t.positions["user"] == ("e1", 10)  # delivery continues from the top
    assert t.stats.recoveries_failed == 1


def test_unrecovered_resume_with_nothing_missed_is_not_reported() -> None:
    t = positioned(user=("e1", 4))
    w = parse_welcome(welcome({"user": ("e1", 4)}, resumed=False, recovered=False))
    assert t.on_welcome(w, sent=dict(t.positions)) is None


def test_subscribed_and_unsubscribed() -> None:
    t = positioned(user=("e1", 4))
    assert t.on_subscribed("ch.news", Position("c1", 3), recovered=False, gateway="g") is None
    assert t.positions["ch.news"] == ("c1", 3)
    assert t.on_subscribed("ch.news", Position("c1", 8), recovered=False, gateway="g") == (
        Recovery(False, ("ch.news",), "g"))
    t.on_unsubscribed("ch.news")
    assert "ch.news" not in t.positions


# -- cursor and connect URL -----------------------------------------------------------------

def test_cursor_names_every_stream() -> None:
    assert format_cursor({}) == ""
    assert format_cursor({"user": Position("e1", 4), "broadcast": Position("b1", 0),
                          "ch.a-b_c": Position("Zz9", 12)}) == (
        "user:e1:4,broadcast:b1:0,ch.a-b_c:Zz9:12")


def test_connect_url() -> None:
    url = connect_url("ws://gw:8080/ws?x=1&token=old", token="a.b-c_d", session="S1",
                      cursor="user:e1:4,broadcast:b1:0", channels=["news", "ops"])
    parts = urlsplit(url)
    assert parts.path == "/ws"
    assert parse_qs(parts.query) == {"x": ["1"], "token": ["a.b-c_d"], "session": ["S1"],
                                     "cursor": ["user:e1:4,broadcast:b1:0"],
                                     "channels": ["news,ops"]}
    assert "cursor=user:e1:4,broadcast:b1:0" in url  # readable in gateway logs
    assert connect_url("wss://gw/ws") == "wss://gw/ws"
    assert connect_url("ws://gw/ws", token="t") == "ws://gw/ws?token=t"


# -- frames ---------------------------------------------------------------------------------

def test_frames_round_trip_in_both_formats() -> None:
    obj = {"type": "ping"}
    text = encode(obj, "json")
    binary = encode(obj, "msgpack")
    assert isinstance(text, str) and isinstance(binary, bytes)
    assert decode(text) == obj and decode(binary) == obj
    raw = msgpack.packb({"type": "message", "stream": "user", "epoch": "e", "offset": 1,
                         "data": {"k": [1, 2]}})
    assert parse_message(decode(raw)) == Message("user", "e", 1, {"k": [1, 2]})


@pytest.mark.parametrize("frame", ["not json", "[1,2]", '{"no":"type"}', b"\xc1", b"\x01"])
def test_undecodable_frames_are_protocol_violations(frame: str | bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode(frame)


@pytest.mark.parametrize("obj", [
    {"type": "message", "epoch": "e", "offset": 1},
    {"type": "message", "stream": "user", "epoch": 5, "offset": 1},
    {"type": "message", "stream": "user", "epoch": "e", "offset": "1"},
    {"type": "message", "stream": "user", "epoch": "e", "offset": True},
])
def test_malformed_messages_are_protocol_violations(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolViolation):
        parse_message(obj)


def test_the_first_message_must_be_a_welcome() -> None:
    with pytest.raises(ProtocolViolation):
        parse_welcome({"type": "message"})
    with pytest.raises(ProtocolViolation):
        parse_welcome({"type": "welcome", "streams": {"user": {"epoch": "e"}}})


def test_presence_events_parse_and_malformed_ones_are_violations() -> None:
    ok = {"type": "presence", "channel": "c", "event": "leave", "user": "u", "conn": "k"}
    assert parse_presence(ok) == Presence("c", "leave", "u", "k")
    for bad in ({**ok, "event": "wave"}, {**ok, "conn": 7}, {**ok, "user": None},
                {"type": "presence"}):
        with pytest.raises(ProtocolViolation):
            parse_presence(bad)
