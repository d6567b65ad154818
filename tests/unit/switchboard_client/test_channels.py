"""Channel requests without I/O (switchboard_client.channels): what is sent when, how each reply
is matched to its request, and what a reconnect asks for."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard_client.channels import (
    Channels,
    Effects,
    Published,
    Request,
    Resolution,
    Subscribed,
    check_channel,
    check_cursor,
)
from switchboard_client.errors import PublishError, SubscribeError
from switchboard_client.protocol import Position, Recovery, Tracker, Welcome

STREAMS = {"user": Position("u1", 4), "broadcast": Position("b1", 0)}


def welcome(**channels: tuple[str, int]) -> Welcome:
    streams = dict(STREAMS)
    streams.update({f"ch.{c}": Position(*p) for c, p in channels.items()})
    return Welcome("S1", "gw-a", "alice", False, False, streams)


def connected(*channels: str, **positioned: tuple[str, int]) -> Channels:
    """A book whose connection asked for ``channels`` and was welcomed with ``positioned``."""
    ch = Channels(Tracker(), channels)
    ask = ch.connect_request()
    w = welcome(**positioned)
    ch.tracker.on_welcome(w, sent=ask.resumed)
    fx = ch.opened(w)
    assert fx.frames == [] and fx.resolved == []
    return ch


def subscribed(channel: str, epoch: str = "c1", offset: int = 0,
               recovered: bool = False) -> dict[str, Any]:
    return {"type": "subscribed", "channel": channel, "epoch": epoch, "offset": offset,
            "recovered": recovered}


def error(code: str, channel: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": f"{code}!", "channel": channel, **extra}


def published(channel: str, msg_id: int, offset: int = 1) -> dict[str, Any]:
    return {"type": "published", "id": msg_id, "channel": channel, "epoch": "c1",
            "offset": offset}


def only(fx: Effects) -> Resolution:
    assert len(fx.resolved) == 1, fx.resolved
    return fx.resolved[0]


# -- names and cursors ----------------------------------------------------------------------

def test_channel_names_and_cursors_are_checked_before_anything_is_sent() -> None:
    assert check_channel("a-b_C9") == "a-b_C9"
    for bad in ["", "x" * 65, "bad name", "a.b", "é", 5, None]:
        with pytest.raises(ValueError):
            check_channel(bad)
    assert check_cursor(("e1", 4)) == Position("e1", 4)
    assert check_cursor(Position("e1", 0)) == Position("e1", 0)
    for bad_cursor in [("e:1", 4), ("e1", -1), ("e1", True), ("e1", "4"), ("", 1), "e1:4",
                       ("e1",), None]:
        with pytest.raises(ValueError):
            check_cursor(bad_cursor)
    with pytest.raises(ValueError):
        Channels(Tracker(), ["ok", "not ok"])


# -- subscribe, unsubscribe -----------------------------------------------------------------

def test_subscribe_sends_and_the_reply_positions_the_stream() -> None:
    ch = connected()
    req, fx = ch.subscribe("room")
    assert fx.frames == [{"type": "subscribe", "channel": "room"}] and fx.resolved == []
    assert ch.accepts("ch.room") and not ch.accepts("ch.other") and ch.accepts("user")
    fx = ch.on_reply(subscribed("room", "c1", 7))
    assert only(fx) == Resolution(req, Subscribed("room", "c1", 7, False))
    assert ch.tracker.positions["ch.room"] == ("c1", 7)
    assert ch.active == {"room"} and fx.frames == [] and fx.items == []


def test_subscribe_with_a_cursor_asks_for_the_replay() -> None:
    ch = connected()
    _, fx = ch.subscribe("room", Position("c1", 3))
    assert fx.frames == [{"type": "subscribe", "channel": "room",
                          "cursor": {"epoch": "c1", "offset": 3}}]
    assert only(ch.on_reply(subscribed("room", "c1", 3, recovered=True))).result == (
        Subscribed("room", "c1", 3, True))
    assert ch.wanted == {"room": None}  # from now on the tracker's position counts


def test_a_second_subscribe_joins_the_first_and_a_third_is_refused() -> None:
    ch = connected()
    first, _ = ch.subscribe("room")
    again, fx = ch.subscribe("room")
    assert again is first and fx.frames == []
    ch.on_reply(subscribed("room"))
    with pytest.raises(SubscribeError) as info:
        ch.subscribe("room")
    assert (info.value.code, info.value.channel) == ("already_subscribed", "room")


def test_unsubscribe() -> None:
    ch = connected("room", room=("c1", 5))
    ch.on_reply(subscribed("room", "c1", 5))  # the connect-time announce
    req, fx = ch.unsubscribe("room")
    assert fx.frames == [{"type": "unsubscribe", "channel": "room"}]
    assert not ch.accepts("ch.room")  # nothing of it is delivered from now on
    assert only(ch.on_reply({"type": "unsubscribed", "channel": "room"})) == Resolution(req)
    assert "ch.room" not in ch.tracker.positions and ch.active == set()
    with pytest.raises(SubscribeError) as info:
        ch.unsubscribe("room")
    assert info.value.code == "not_subscribed"


def test_not_subscribed_from_the_gateway_completes_an_unsubscribe() -> None:
    ch = connected("room", room=("c1", 5))
    req, _ = ch.unsubscribe("room")  # sent before the announce was read
    ch.on_reply(subscribed("room", "c1", 5))
    assert only(ch.on_reply(error("not_subscribed", "room"))) == Resolution(req)


@pytest.mark.parametrize("code", ["forbidden", "too_many_channels", "unavailable",
                                  "bad_request"])
def test_a_refused_subscribe_raises_and_drops_the_channel(code: str) -> None:
    ch = connected()
    req, _ = ch.subscribe("room")
    r = only(ch.on_reply(error(code, "room")))
    assert r.request is req and isinstance(r.error, SubscribeError)
    assert (r.error.code, r.error.message, r.error.channel) == (code, f"{code}!", "room")
    assert ch.wanted == {} and ch.pending() == []
    assert ch.connect_request().channels == ()


# -- publish --------------------------------------------------------------------------------

def test_publishes_carry_ids_and_replies_match_by_id_in_any_order() -> None:
    ch = connected()
    a, fx_a = ch.publish("room", {"n": 1})
    b, fx_b = ch.publish("room", None)
    assert fx_a.frames == [{"type": "publish", "channel": "room", "data": {"n": 1}, "id": a.id}]
    assert fx_b.frames == [{"type": "publish", "channel": "room", "data": None, "id": b.id}]
    assert a.id != b.id
    assert only(ch.on_reply(published("room", b.id, 9))) == Resolution(
        b, Published("room", "c1", 9))
    r = only(ch.on_reply(error("unavailable", "room", id=a.id)))
    assert r.request is a and isinstance(r.error, PublishError) and r.error.code == "unavailable"
    assert ch.pending() == []


def test_errors_without_an_id_go_to_the_oldest_publish_of_their_channel() -> None:
    ch = connected()
    a, _ = ch.publish("secret", 1)
    other, _ = ch.publish("lobby", 2)
    b, _ = ch.publish("secret", 3)
    assert only(ch.on_reply(error("forbidden", "secret"))).request is a
    assert only(ch.on_reply(error("forbidden", "secret"))).request is b
    assert [r.request for r in ch.on_reply(published("lobby", other.id)).resolved] == [other]


def test_a_publish_waits_behind_a_subscribe_of_its_channel_so_errors_are_not_ambiguous() -> None:
    ch = connected()
    sub, fx = ch.subscribe("room")
    pub, fx = ch.publish("room", "hi")
    assert fx.frames == []  # held: a forbidden now could be either's
    _, fx = ch.publish("elsewhere", "x")
    assert len(fx.frames) == 1  # other channels are not held
    fx = ch.on_reply(error("forbidden", "room"))
    assert only(fx).request is sub
    assert fx.frames == [{"type": "publish", "channel": "room", "data": "hi", "id": pub.id}]
    r = only(ch.on_reply(error("forbidden", "room")))
    assert r.request is pub and isinstance(r.error, PublishError)


def test_a_subscribe_waits_for_the_publishes_before_it() -> None:
    ch = connected()
    pub, _ = ch.publish("room", "hi")
    sub, fx = ch.subscribe("room")
    assert fx.frames == []
    later, fx = ch.publish("room", "later")
    assert fx.frames == []  # nothing overtakes the subscribe
    fx = ch.on_reply(published("room", pub.id))
    assert fx.frames == [{"type": "subscribe", "channel": "room"}]
    fx = ch.on_reply(subscribed("room", "c1", 1))
    assert only(fx).request is sub
    assert [f["id"] for f in fx.frames] == [later.id]


def test_subscribe_unsubscribe_subscribe_run_in_call_order() -> None:
    ch = connected()
    s1, fx = ch.subscribe("room")
    u, fx2 = ch.unsubscribe("room")
    s2, fx3 = ch.subscribe("room")
    assert [f["type"] for f in fx.frames + fx2.frames + fx3.frames] == ["subscribe"]
    assert s2 is not s1 and ch.accepts("ch.room")
    fx = ch.on_reply(subscribed("room", "c1", 4))
    assert only(fx).request is s1 and fx.frames == [{"type": "unsubscribe", "channel": "room"}]
    fx = ch.on_reply({"type": "unsubscribed", "channel": "room"})
    assert only(fx).request is u and fx.frames == [{"type": "subscribe", "channel": "room"}]
    assert "ch.room" not in ch.tracker.positions  # the second subscription starts afresh
    assert only(ch.on_reply(subscribed("room", "c1", 6))).request is s2
    assert ch.tracker.positions["ch.room"] == ("c1", 6)


# -- connections ----------------------------------------------------------------------------

def test_a_reconnect_asks_for_every_wanted_channel_and_resumes_it() -> None:
    ch = connected("news", news=("n1", 2))
    ch.on_reply(subscribed("news", "n1", 2))
    ch.subscribe("room")
    ch.on_reply(subscribed("room", "r1", 7))
    ch.subscribe("late", Position("l1", 3))  # not answered before the connection ends
    ch.tracker.positions["ch.room"] = Position("r1", 9)  # as if 8 and 9 were delivered
    assert ch.closed() == Effects()
    ask = ch.connect_request()
    assert ask.channels == ("news", "room", "late")
    assert ask.cursor == {**STREAMS, "ch.news": ("n1", 2), "ch.room": ("r1", 9),
                          "ch.late": ("l1", 3)}
    assert "ch.late" not in ask.resumed  # the caller's cursor: its result reports on it


def test_the_connect_time_announce_answers_requests_without_frames() -> None:
    ch = Channels(Tracker(), ["news"])
    waiting, fx = ch.subscribe("news")  # before the first welcome: answered by the announce
    sub, fx2 = ch.subscribe("room")  # not connected: waits
    assert fx.frames == fx2.frames == []
    ask = ch.connect_request()
    assert ask.channels == ("news", "room")
    w = welcome(news=("n1", 2), room=("r1", 0))
    ch.tracker.on_welcome(w, sent=ask.resumed)
    assert ch.opened(w).frames == []
    assert only(ch.on_reply(subscribed("news", "n1", 2))).request is waiting
    assert only(ch.on_reply(subscribed("room", "r1", 0))).request is sub


def test_a_channel_refused_at_connect_is_dropped_and_reported() -> None:
    ch = connected("news", "secret", news=("n1", 2))
    pub, fx = ch.publish("secret", "x")  # goes out before the announce is read
    assert len(fx.frames) == 1
    fx = ch.on_reply(error("forbidden", "secret"))  # the announce, not the publish's answer
    assert fx.resolved == [] and fx.unmatched == [("forbidden", "forbidden!")]
    assert "secret" not in ch.wanted and not ch.accepts("ch.secret")
    r = only(ch.on_reply(error("forbidden", "secret")))
    assert r.request is pub and isinstance(r.error, PublishError)
    assert ch.connect_request().channels == ("news",)


def test_a_subscribe_answered_by_a_refusal_at_connect() -> None:
    ch = Channels(Tracker())
    req, _ = ch.subscribe("secret")
    ch.connect_request()
    ch.opened(welcome())
    r = only(ch.on_reply(error("forbidden", "secret")))
    assert r.request is req and isinstance(r.error, SubscribeError)
    assert ch.wanted == {}


def test_what_is_in_flight_when_the_connection_ends() -> None:
    ch = connected("gone", gone=("g1", 0))
    ch.on_reply(subscribed("gone", "g1", 0))
    pub, _ = ch.publish("room", "maybe stored")
    sub, _ = ch.subscribe("room")  # behind the publish: not sent
    unsub, _ = ch.unsubscribe("gone")
    fx = ch.closed()
    assert [r.request for r in fx.resolved] == [pub, unsub]
    assert isinstance(fx.resolved[0].error, PublishError)
    assert fx.resolved[0].error.code == "disconnected"
    assert fx.resolved[1].error is None
    assert ch.pending() == [sub]
    assert ch.connect_request().channels == ("room",)
    assert ch.opened(welcome(room=("r1", 0))).frames == []  # the announce answers it
    assert only(ch.on_reply(subscribed("room", "r1", 0))).request is sub


def test_requests_made_during_a_handshake_go_out_at_the_welcome() -> None:
    ch = connected("a", "b", a=("a1", 0), b=("b1", 0))
    for name in ("a", "b"):
        ch.on_reply(subscribed(name, f"{name}1", 0))
    ch.closed()
    ask = ch.connect_request()  # the next connection's URL is fixed here
    sub, _ = ch.subscribe("c")
    gone, _ = ch.unsubscribe("a")
    refused, _ = ch.unsubscribe("b")
    pub, _ = ch.publish("d", 1)
    assert ch.pending() and ask.channels == ("a", "b")
    w = welcome(a=("a1", 0))  # b is no longer allowed
    ch.tracker.on_welcome(w, sent=ask.resumed)
    fx = ch.opened(w)
    assert fx.frames == [{"type": "subscribe", "channel": "c"},
                         {"type": "unsubscribe", "channel": "a"},
                         {"type": "publish", "channel": "d", "data": 1, "id": pub.id}]
    assert only(fx).request is refused  # the gateway did not subscribe it: nothing to undo
    fx = ch.on_reply(subscribed("a", "a1", 0))  # announce of a channel being unsubscribed
    assert fx.resolved == [] and fx.items == []
    assert ch.on_reply(error("forbidden", "b")) == Effects()  # nobody wants b any more
    assert only(ch.on_reply({"type": "unsubscribed", "channel": "a"})).request is gone
    assert only(ch.on_reply(subscribed("c", "c1", 0))).request is sub


def test_abandoning_drops_only_an_unsent_publish() -> None:
    ch = Channels(Tracker())
    queued, _ = ch.publish("room", "never sent")
    assert ch.abandon(queued) == Effects() and ch.pending() == []
    ch.connect_request()
    assert ch.opened(welcome()).frames == []
    sent, _ = ch.publish("room", "sent")
    later, _ = ch.publish("room", "later")
    ch.abandon(sent)  # its answer must still be matched to it, not to `later`
    assert only(ch.on_reply(error("forbidden", "room"))).request is sent
    assert only(ch.on_reply(error("forbidden", "room"))).request is later


def test_a_resubscribe_that_lost_messages_is_reported() -> None:
    ch = connected("room", room=("r1", 5))
    ch.on_reply(subscribed("room", "r1", 5))
    fx = ch.on_reply(subscribed("room", "r2", 0))  # e.g. a late duplicate announce
    assert fx.items == [Recovery(False, ("ch.room",), "gw-a")]


def test_errors_for_nobody_are_unmatched() -> None:
    ch = connected()
    assert ch.on_reply({"type": "error", "code": "bad_request", "message": "m",
                        "channel": None}).unmatched == [("bad_request", "m")]
    assert ch.on_reply(error("forbidden", "room")).unmatched == [("forbidden", "forbidden!")]
    assert ch.on_reply(subscribed("nobody")) == Effects()  # not wanted: ignored
    assert "ch.nobody" not in ch.tracker.positions
    assert ch.on_reply(published("room", 99)) == Effects()


# -- every reply finds its request, whatever the interleaving --------------------------------

class Gateway:
    """A model of gateway/commands.py for one connection: commands are handled in order;
    checks answer at once, subscribes and publishes later, in any order."""

    def __init__(self, allowed: set[str], rng: random.Random) -> None:
        self.allowed = allowed
        self.rng = rng
        self.subscribed: set[str] = set()
        self.joining: dict[str, int] = {}  # channel -> pending join token
        self.later: list[dict[str, Any]] = []  # async answers not sent yet
        self.out: list[dict[str, Any]] = []
        self.offset = 0

    def handle(self, frame: dict[str, Any]) -> None:
        c = frame["channel"]
        if frame["type"] == "subscribe":
            if c not in self.allowed:
                self.out.append(error("forbidden", c))
            elif c in self.subscribed or c in self.joining:
                self.out.append(error("already_subscribed", c))
            else:
                self.joining[c] = len(self.later)
                self.later.append({"join": c})
        elif frame["type"] == "unsubscribe":
            if c in self.subscribed or c in self.joining:
                self.subscribed.discard(c)
                self.joining.pop(c, None)
                self.out.append({"type": "unsubscribed", "channel": c})
            else:
                self.out.append(error("not_subscribed", c))
        elif c not in self.allowed:
            self.out.append(error("forbidden", c))
        else:
            self.offset += 1
            self.later.append(published(c, frame["id"], self.offset))

    def step(self) -> None:
        """Finish one async task, chosen at random."""
        task = self.later.pop(self.rng.randrange(len(self.later)))
        if "join" not in task:
            self.out.append(task)
            return
        c = task["join"]
        if c in self.joining:
            del self.joining[c]
            self.subscribed.add(c)
            self.out.append(subscribed(c, "c1", 0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sub", "unsub", "pub", "step", "read"]),
                          st.sampled_from(["ok", "no"])), max_size=60),
       st.integers(0, 2**32))
def test_every_reply_is_matched_to_its_own_request(ops: list[tuple[str, str]],
                                                   seed: int) -> None:
    rng = random.Random(seed)
    gw = Gateway({"ok"}, rng)
    ch = connected()
    calls: dict[int, tuple[str, str]] = {}
    answers: dict[int, Resolution] = {}

    def apply(fx: Effects) -> None:
        for frame in fx.frames:
            gw.handle(frame)
        for r in fx.resolved:
            assert r.request.id not in answers
            answers[r.request.id] = r

    def call(kind: str, channel: str) -> None:
        try:
            if kind == "sub":
                req, fx = ch.subscribe(channel)
            elif kind == "unsub":
                req, fx = ch.unsubscribe(channel)
            else:
                req, fx = ch.publish(channel, "x")
        except SubscribeError:
            return
        calls.setdefault(req.id, (kind, channel))
        apply(fx)

    for op, channel in ops:
        if op in ("sub", "unsub", "pub"):
            call(op, channel)
        elif op == "step" and gw.later:
            gw.step()
        elif op == "read" and gw.out:
            apply(ch.on_reply(gw.out.pop(0)))
    while gw.later or gw.out:  # let everything finish
        if gw.later:
            gw.step()
        while gw.out:
            apply(ch.on_reply(gw.out.pop(0)))

    assert ch.pending() == []
    assert set(answers) == set(calls)
    for rid, (kind, channel) in calls.items():
        r = answers[rid]
        assert r.request.channel == channel
        if channel == "no" and kind != "unsub":
            expected = SubscribeError if kind == "sub" else PublishError
            assert isinstance(r.error, expected) and r.error.code == "forbidden"
        elif kind == "sub":
            assert r.error is None and isinstance(r.result, Subscribed)
        elif kind == "pub":
            assert r.error is None and isinstance(r.result, Published)
        else:
            assert r.error is None and r.result is None
    # The client and the gateway agree on what is subscribed.
    assert set(ch.wanted) == gw.subscribed == ch.active


def test_request_ids_are_unique() -> None:
    ch = connected()
    ids = {ch.publish("a", i)[0].id for i in range(100)}
    assert len(ids) == 100 and all(isinstance(i, int) for i in ids)
    assert isinstance(ch.pending()[0], Request)
