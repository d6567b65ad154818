"""Arbitrary unicode, lone surrogates included, in every field of every input (hypothesis).

JSON text can spell what UTF-8 cannot carry (``"\\ud800"``), so every string below may hold
lone surrogates, sent as JSON escapes (``ensure_ascii``) or, in msgpack, as the invalid UTF-8
bytes ``surrogatepass`` writes. Against a real router and a real gateway on a real
redis-server:

- router: every field of a publish (single and batch, top level and per message, unknown
  fields too) and of a disconnect body, and the user and channel path parameters; the publish
  routes both on the plain-ASGI fast path and through FastAPI (a request with an ``Origin``,
  which the CORS middleware answers). Property: never a 5xx, and every error a JSON body.
- gateway: every field of every client command (``type``, ``channel``, ``cursor``, ``id``,
  ``data``, unknown fields) in JSON text and msgpack binary frames, on both subprotocols.
  Property: every command is answered (a valid publish without an ``id`` only by the message
  itself), and the connection is never closed (no 1011).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from gateway.wire import ClientMessageError, decode_client
from switchboard import streams
from switchboard.auth import mint
from tests.support import API_KEY, JWT_SECRET, Proc, RedisServer, start_gateway, start_router

pytestmark = pytest.mark.integration

ROUTER_EXAMPLES = 400
GATEWAY_EXAMPLES = 250
ORIGIN = "http://fuzz.test"  # a CORS origin: its publishes go through FastAPI
ANSWERS = ("pong", "error", "subscribed", "unsubscribed", "published")
ANSWER_TIMEOUT = 3.0  # answers take milliseconds; a missing one fails (and shrinks) this soon

# Every code point: st.characters excludes surrogates unless told not to, and the explicit
# range makes them common enough to matter in every short string.
CHAR = st.one_of(st.characters(blacklist_categories=()), st.integers(0xD800, 0xDFFF).map(chr))
TEXT = st.text(alphabet=CHAR, max_size=12)


def scalars(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    # floats include NaN and the infinities, integers go past 64 bits
    return st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), text)


def nested(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(scalars(text), lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(text, kids, max_size=3)), max_leaves=8)


SCALAR = scalars(TEXT)
# Also data with no surrogates: data holding one is refused for it, whatever else it holds.
DATA = st.one_of(nested(TEXT), nested(st.text(max_size=8)))
UNKNOWN = st.dictionaries(TEXT, SCALAR, max_size=2)


def fields(known: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of ``known``, plus unknown fields with arbitrary names."""
    return st.builds(lambda extra, chosen: {**extra, **chosen}, UNKNOWN,
                     st.fixed_dictionaries({}, optional=known))


def either(*valid: Any) -> st.SearchStrategy[Any]:
    """Often a valid value, so validation gets past the field to the next. (A flatmap:
    st.one_of would flatten SCALAR's branches and pick a valid value one time in six.)"""
    return st.booleans().flatmap(lambda ok: st.sampled_from(valid) if ok else SCALAR)


def encode(obj: Any, fmt: str) -> tuple[bytes, bool]:
    """(bytes, is msgpack): JSON with escapes, raw UTF-8 JSON when it can be, or msgpack."""
    if fmt == "msgpack":
        try:
            return msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass"), True
        except (OverflowError, ValueError, TypeError):
            pass  # an integer past 64 bits: JSON can carry it
    if fmt == "json-utf8":
        try:
            return json.dumps(obj, ensure_ascii=False).encode(), False
        except UnicodeEncodeError:
            pass  # a lone surrogate: only the escape can carry it
    return json.dumps(obj, ensure_ascii=True).encode(), False


FORMATS = st.sampled_from(["json-ascii", "json-utf8", "msgpack"])


def path_segment(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# -- router ------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    body: Any = None  # None: no body
    fmt: str = "json-ascii"
    origin: bool = False


PUBLISH = fields({"user": either("alice"), "channel": either("room"),
                  "broadcast": either(True), "data": DATA,
                  "idempotency_key": either("key-1")})
BATCH = fields({"messages": st.one_of(st.lists(st.one_of(PUBLISH, SCALAR), max_size=3),
                                      SCALAR)})
DISCONNECT = fields({"code": either(4201, 4000), "reason": either("bye")})

REQUESTS = st.one_of(
    st.builds(Request, st.just("POST"), st.just("/v1/publish"), PUBLISH, FORMATS,
              st.booleans()),
    st.builds(Request, st.just("POST"), st.just("/v1/publish/batch"), BATCH, FORMATS,
              st.booleans()),
    st.builds(lambda user, body, fmt: Request("POST", f"/v1/users/{user}/disconnect", body,
                                              fmt),
              either("alice").map(path_segment), st.one_of(st.none(), DISCONNECT), FORMATS),
    st.builds(lambda user: Request("GET", f"/v1/users/{user}/connections"),
              either("alice").map(path_segment)),
    st.builds(lambda channel: Request("GET", f"/v1/channels/{channel}/presence"),
              either("room").map(path_segment)),
)


@pytest.fixture
def router(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    proc = start_router(redis_server, logdir, SWITCHBOARD_CORS_ORIGINS=ORIGIN)
    try:
        yield proc
    finally:
        proc.stop()


def test_router_never_answers_5xx_whatever_the_unicode(router: Proc) -> None:
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as http:

        # what the battery found, tried first every run
        @example(req=Request("POST", "/v1/publish", {"user": "a", "data": 1, "\ud800": 1}))
        @example(req=Request("POST", "/v1/publish/batch",
                             {"messages": [{"user": "a", "data": 1, "\udcff": 1}]},
                             origin=True))
        @given(req=REQUESTS)
        @settings(max_examples=ROUTER_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(req: Request) -> None:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            if req.origin:
                headers["Origin"] = ORIGIN
            content = None
            if req.body is not None:
                content, packed = encode(req.body, req.fmt)
                headers["Content-Type"] = "application/msgpack" if packed else "application/json"
            note(f"{req.method} {req.path} {headers} {content!r}")
            resp = http.request(req.method, req.path, content=content, headers=headers)
            statuses[resp.status_code] += 1
            assert resp.status_code < 500, resp.text[:500]
            if resp.status_code >= 400:
                answer = resp.json()
                assert isinstance(answer["error"], str) and isinstance(answer["message"], str)

        run()

    print(f"\nrouter unicode fuzz: {sum(statuses.values())} requests in "
          f"{time.monotonic() - started:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert router.alive()
    assert "Traceback" not in router.output(), router.output()[-3000:]
    assert sum(statuses.values()) >= ROUTER_EXAMPLES * 0.9


# -- gateway -----------------------------------------------------------------------------------


CURSOR = st.one_of(SCALAR, st.builds(lambda e, o: f"{e}:{o}", either("abc"), either(0, 5)),
                   fields({"epoch": either("abc"), "offset": either(0, 3)}))
CHANNEL = either("room", "fz-1")
ID = either(1, "id-1")
PAYLOAD = st.one_of(st.sampled_from([{"n": 1}, "hi", None]), DATA)


def shaped(kind: str, required: dict[str, st.SearchStrategy[Any]],
           optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A command of ``kind`` with its required fields, so that more of them get far."""
    return st.builds(lambda extra, chosen: {**extra, **chosen, "type": kind}, UNKNOWN,
                     st.fixed_dictionaries(required, optional=optional))


COMMAND = st.one_of(
    st.builds(lambda kind, rest: {**rest, "type": kind},
              either("subscribe", "unsubscribe", "publish", "ping"),
              fields({"channel": CHANNEL, "cursor": CURSOR, "id": ID, "data": PAYLOAD})),
    shaped("subscribe", {"channel": CHANNEL}, {"cursor": CURSOR}),
    shaped("unsubscribe", {"channel": CHANNEL}, {}),
    shaped("publish", {"channel": CHANNEL, "data": PAYLOAD}, {"id": ID}),
)
FRAMES = st.lists(st.tuples(COMMAND, FORMATS), min_size=1, max_size=4)


def answers_owed(payload: bytes, binary: bool) -> int:
    """Answers the gateway owes one frame: one each, except a valid publish without an id,
    which is stored and acknowledged only by the message itself."""
    try:
        msg = decode_client(payload, binary)
    except ClientMessageError:
        return 1  # bad_request
    if msg["type"] != "publish" or msg.get("id") is not None or "data" not in msg:
        return 1
    if not streams.valid_channel(msg.get("channel")):
        return 1
    try:  # what the envelope and JSON subscribers can carry: no NaN, no 65-bit integers
        json.dumps(msg["data"], allow_nan=False)
        msgpack.packb(msg["data"], use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return 1
    return 0


@pytest.fixture
def gateway(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_INBOUND_RATE="1000000",
                       SWITCHBOARD_INBOUND_BURST="1000000", SWITCHBOARD_PING_INTERVAL="")
    try:
        yield gw
    finally:
        gw.stop()


def receive_answers(ws: ClientConnection, owed: int, timeout: float) -> list[dict[str, Any]]:
    """Everything received until ``owed`` answers arrived (TimeoutError at the deadline)."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while sum(m.get("type") in ANSWERS for m in received) < owed:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{owed} answers owed, got {received}")
        raw = ws.recv(timeout=left)  # TimeoutError: an answer is missing
        received.append(msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw))
    return received


def test_gateway_answers_every_command_whatever_the_unicode(gateway: Proc) -> None:
    token = mint(JWT_SECRET, "unicode-fuzzer", channels=["*"], publish=["*"])
    url = f"ws://127.0.0.1:{gateway.port}/ws?token={token}"
    cases = [0]
    replies: Counter[str] = Counter()
    started = time.monotonic()

    # what the battery found, tried first every run
    @example(msgpack_wire=True, frames=[({"type": "subscribe", "channel": "\ud800"}, "json-ascii")])
    @example(msgpack_wire=False, frames=[
        ({"type": "publish", "channel": "room", "data": 1, "id": "\ud800"}, "json-ascii")])
    @example(msgpack_wire=False, frames=[
        ({"type": "publish", "channel": "room", "data": {"x": [float("nan")]}}, "msgpack")])
    @example(msgpack_wire=True, frames=[
        ({"type": "publish", "channel": "room", "data": float("inf")}, "json-ascii")])
    @given(msgpack_wire=st.booleans(), frames=FRAMES)
    @settings(max_examples=GATEWAY_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(msgpack_wire: bool, frames: list[tuple[dict[str, Any], str]]) -> None:
        sub = "switchboard.v1.msgpack" if msgpack_wire else "switchboard.v1.json"
        with sync_connect(url, subprotocols=[sub], open_timeout=10) as ws:  # type: ignore[list-item]
            welcome = ws.recv(timeout=10)
            assert b"welcome" in (welcome if isinstance(welcome, bytes) else welcome.encode())
            owed = 1  # the final ping's pong
            try:
                for command, fmt in frames:
                    payload, binary = encode(command, fmt)
                    note(f"{'msgpack' if binary else 'json'} frame {payload!r}")
                    owed += answers_owed(payload, binary)
                    ws.send(payload if binary else payload.decode())
                ws.send(json.dumps({"type": "ping"}))
                received = receive_answers(ws, owed, ANSWER_TIMEOUT)
            except ConnectionClosed as exc:
                pytest.fail(f"closed {exc.rcvd.code if exc.rcvd else None}: {exc}")
            note(f"received {received}")
            replies.update(f"{m['type']}:{m['code']}" if m["type"] == "error" else m["type"]
                           for m in received)
        cases[0] += 1

    run()
    print(f"\ngateway unicode fuzz: {cases[0]} connections in "
          f"{time.monotonic() - started:.1f}s, replies {dict(replies.most_common())}")
    assert gateway.alive()
    log = gateway.output()
    assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]
    assert cases[0] >= GATEWAY_EXAMPLES * 0.9
