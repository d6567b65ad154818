"""The Python SDK and the proxy's ``unavailable``: a connect-time channel the subscribe
proxy could not decide stays wanted (asked again at the next connect), and a subscribe on
the same connection is sent, not left waiting for an announce that already came."""

from __future__ import annotations

from switchboard_client.channels import Channels, Subscribed
from switchboard_client.errors import SubscribeError
from switchboard_client.protocol import Position, Tracker, Welcome

STREAMS = {"user": Position("u1", 4), "broadcast": Position("b1", 0)}


def opened(*channels: str) -> Channels:
    ch = Channels(Tracker(), channels)
    ask = ch.connect_request()
    w = Welcome("S1", "gw-a", "alice", False, False, dict(STREAMS))
    ch.tracker.on_welcome(w, sent=ask.resumed)
    ch.opened(w)
    return ch


def unavailable(channel: str) -> dict[str, str]:
    return {"type": "error", "code": "unavailable", "message": "try again", "channel": channel}


def test_a_connect_time_channel_left_undecided_stays_wanted_and_can_be_asked_again() -> None:
    ch = opened("room")
    fx = ch.on_reply(unavailable("room"))
    assert fx.unmatched == [("unavailable", "try again")]
    assert "room" in ch.wanted and "room" not in ch.announcing
    assert ch.connect_request().channels == ("room",)  # the next connect asks again
    ch = opened("room")
    ch.on_reply(unavailable("room"))
    request, fx = ch.subscribe("room")  # asked again on this connection: sent at once
    assert fx.frames == [{"type": "subscribe", "channel": "room"}]
    done = ch.on_reply({"type": "subscribed", "channel": "room", "epoch": "c1", "offset": 0,
                        "recovered": False})
    assert done.resolved[0].request is request
    assert done.resolved[0].result == Subscribed("room", "c1", 0, False)


def test_a_subscribe_waiting_for_the_announce_fails_with_a_retryable_code() -> None:
    ch = Channels(Tracker())
    request, _ = ch.subscribe("room")
    ask = ch.connect_request()
    w = Welcome("S1", "gw-a", "alice", False, False, dict(STREAMS))
    ch.tracker.on_welcome(w, sent=ask.resumed)
    ch.opened(w)
    fx = ch.on_reply(unavailable("room"))
    (resolution,) = fx.resolved
    assert resolution.request is request
    assert isinstance(resolution.error, SubscribeError)
    assert resolution.error.code == "unavailable"
