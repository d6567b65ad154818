"""The order of a connect's refusals (gateway.handshake.decide), and that the cheap checks
spare the expensive ones: 405 not GET, 403 origin, then admission (503 / 429) before the token
(401), then 400 for malformed resume parameters. Admission is not asked when the origin is
refused; the token is not verified when admission refuses.

The last tests go through the real Gateway and Connection (in process, on the in-memory
backplane) to check the same order as HTTP statuses a client gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from gateway.admission import refusal
from gateway.errors import HandshakeRefused
from gateway.handshake import Attempt, decide
from gateway.http import OriginPolicy
from gateway.ports import Accepted
from switchboard.auth import Claims, TokenError
from switchboard.streams import Position
from tests.unit.gateway.inproc import Client, Env, until

GOOD_ORIGIN = "https://app.example.com"
BAD_ORIGIN = "https://evil.example.net"
CLAIMS = Claims(user="alice", expires=float("inf"), channels=("*",), publish=("*",))
MAX_CHANNELS = 3


class Calls:
    """Fakes for the two expensive steps, recording whether they ran."""

    def __init__(self, admit: HandshakeRefused | None = None, token_ok: bool = True) -> None:
        self.admitted = 0
        self.authenticated = 0
        self._admit = admit
        self._token_ok = token_ok

    def admit(self) -> HandshakeRefused | None:
        self.admitted += 1
        return self._admit

    def authenticate(self) -> Claims:
        self.authenticated += 1
        if not self._token_ok:
            raise TokenError("token expired")
        return CLAIMS


def run(calls: Calls, *, method: str = "GET", origin: str | None = GOOD_ORIGIN,
        params: dict[str, str] | None = None, last_event_id: str | None = None) -> Accepted:
    attempt = Attempt(method, params or {}, origin, "gw.example.com", last_event_id)
    return decide(attempt, origins=OriginPolicy([GOOD_ORIGIN]), admit=calls.admit,
                  authenticate=calls.authenticate, max_channels=MAX_CHANNELS)


def refused(calls: Calls, **kwargs: object) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as info:
        run(calls, **kwargs)  # type: ignore[arg-type]
    return info.value


# Everything a request can get wrong at once, but the method.
BAD_PARAMS = {"session": "not a session!", "cursor": "garbage", "channels": "bad name"}
UNAVAILABLE = refusal(503, "unavailable", "gateway is draining", 2)
RATE_LIMITED = refusal(429, "rate_limited", "connect rate exceeded", 1)


def test_405_comes_first_and_costs_nothing() -> None:
    calls = Calls(admit=UNAVAILABLE, token_ok=False)
    r = refused(calls, method="POST", origin=BAD_ORIGIN, params=BAD_PARAMS)
    assert (r.status, r.code) == (405, "method_not_allowed")
    assert ("Allow", "GET") in r.headers
    assert (calls.admitted, calls.authenticated) == (0, 0)


def test_403_origin_before_admission_and_the_token() -> None:
    calls = Calls(admit=UNAVAILABLE, token_ok=False)
    r = refused(calls, origin=BAD_ORIGIN, params=BAD_PARAMS)
    assert (r.status, r.code) == (403, "origin_forbidden")
    assert (calls.admitted, calls.authenticated) == (0, 0), "admit not asked for a bad origin"


@pytest.mark.parametrize("refusal_", [UNAVAILABLE, RATE_LIMITED], ids=["503", "429"])
def test_admission_refuses_before_the_token_is_verified(refusal_: HandshakeRefused) -> None:
    calls = Calls(admit=refusal_, token_ok=False)
    r = refused(calls, params=BAD_PARAMS)
    assert r is refusal_
    assert r.retry_after is not None and r.retry_after >= 1
    assert (calls.admitted, calls.authenticated) == (1, 0), "no signature check under a flood"


def test_401_token_before_malformed_parameters() -> None:
    calls = Calls(token_ok=False)
    r = refused(calls, params=BAD_PARAMS)
    assert (r.status, r.code) == (401, "unauthorized")
    assert ("WWW-Authenticate", 'Bearer realm="switchboard"') in r.headers
    assert (calls.admitted, calls.authenticated) == (1, 1)


def test_a_request_without_origin_is_not_a_browser_and_is_allowed() -> None:
    accepted = run(Calls(), origin=None)
    assert accepted.claims is CLAIMS


@pytest.mark.parametrize(("params", "code"), [
    ({"session": "has-dash"}, "bad_session"),
    ({"session": "x" * 33}, "bad_session"),
    ({"cursor": "user:E1"}, "bad_cursor"),
    ({"cursor": "nosuch:E1:1"}, "bad_cursor"),
    ({"cursor": "user:E1:-1"}, "bad_cursor"),
    ({"channels": "room,bad.name"}, "bad_channel"),
    ({"channels": "a,b,c,d"}, "too_many_channels"),
])
def test_400_for_malformed_resume_parameters(params: dict[str, str], code: str) -> None:
    calls = Calls()
    r = refused(calls, params=params)
    assert (r.status, r.code) == (400, code)
    assert (calls.admitted, calls.authenticated) == (1, 1)


def test_400s_are_checked_in_order_session_cursor_channels() -> None:
    assert refused(Calls(), params=BAD_PARAMS).code == "bad_session"
    assert refused(Calls(), params={**BAD_PARAMS, "session": "S1"}).code == "bad_cursor"
    assert refused(Calls(), params={"cursor": "user:E:1", "channels": "x y"}).code == \
        "bad_channel"


def test_accepted_request_carries_session_cursor_and_channels() -> None:
    accepted = run(Calls(), params={"session": "S1", "cursor": "user:E1:4,ch.room:E2:0",
                                    "channels": "room,room,lobby,,"})
    assert accepted.claims is CLAIMS
    assert accepted.request.session == "S1"
    assert accepted.request.cursor == {"user": Position("E1", 4), "ch.room": Position("E2", 0)}
    assert accepted.request.channels == ("room", "lobby")  # de-duplicated, in order


def test_repeating_a_channel_does_not_count_against_the_limit() -> None:
    accepted = run(Calls(), params={"channels": "a,b,c,a,b,c"})
    assert accepted.request.channels == ("a", "b", "c")


def test_last_event_id_is_the_sse_cursor_and_wins_over_the_query() -> None:
    accepted = run(Calls(), params={"cursor": "user:Old:1"},
                   last_event_id="user:New:9,broadcast:B:2")
    assert accepted.request.cursor == {"user": Position("New", 9),
                                       "broadcast": Position("B", 2)}
    assert refused(Calls(), last_event_id="nonsense").code == "bad_cursor"


# -- the same order as HTTP statuses, through the real gateway --------------------------------


async def status_of(connect: Callable[[], Client]) -> tuple[int, dict[str, str]]:
    client = connect()
    await until(lambda: client.status is not None, "an HTTP answer")
    assert client.status is not None
    return client.status, (json.loads(client.body) if client.body else {})


async def test_the_gateway_answers_in_the_same_order(env: Env) -> None:
    node = env.node(allowed_origins=(GOOD_ORIGIN,))

    status, body = await status_of(lambda: node.connect(
        "alice", method="POST", headers={"Origin": BAD_ORIGIN}))
    assert status == 405

    status, body = await status_of(lambda: node.connect(
        "alice", token="forged", headers={"Origin": BAD_ORIGIN}))
    assert (status, body["error"]) == (403, "origin_forbidden")

    status, body = await status_of(lambda: node.connect(
        "alice", token="forged", session="bad session"))
    assert (status, body["error"]) == (401, "unauthorized")

    status, body = await status_of(lambda: node.connect("alice", session="bad session"))
    assert (status, body["error"]) == (400, "bad_session")

    # Not ready (the backend is down): 503 even for a forged token, but still 403 first.
    env.cluster.go_down()
    status, body = await status_of(lambda: node.connect("alice", token="forged"))
    assert (status, body["error"]) == (503, "unavailable")
    status, body = await status_of(lambda: node.connect(
        "alice", token="forged", headers={"Origin": BAD_ORIGIN}))
    assert status == 403
    env.cluster.come_back()
    await until(lambda: node.backplane.unready is None, "the gateway to be ready again")

    ok = node.connect("alice", headers={"Origin": GOOD_ORIGIN})
    assert (await ok.welcomed())["user"] == "alice"
    assert ok.status == 101


async def test_the_gateway_refuses_past_its_accept_rate_before_the_token(env: Env) -> None:
    node = env.node(accept_rate=0.001, accept_burst=1)
    first = await node.welcomed("alice")
    assert first.status == 101
    status, body = await status_of(lambda: node.connect("bob", token="forged"))
    assert (status, body["error"]) == (429, "rate_limited")
