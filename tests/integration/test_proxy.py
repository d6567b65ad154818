"""The proxy end to end: real gateway processes on a real redis-server asking a real HTTP
backend, started here on a loopback port, that records every call and can be told to allow,
deny, rewrite, stall or be down.

Every proxied event (connect over WebSocket and SSE, subscribe, client publish, refresh) is
tested allowed, denied, timed out and with the backend down; plus the signature as a backend
verifies it, the concurrency bound and the circuit breaker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import proxyrules
from tests.clients import SseClient, WsClient, until
from tests.integration.cluster import token
from tests.support import API_KEY, Proc, RedisServer, free_port, start_gateway, start_router

pytestmark = pytest.mark.integration

SECRET = "integration-proxy-secret"
Answer = dict[str, Any] | None  # None: close the connection without answering
Decide = Callable[[dict[str, Any]], Answer]


# -- the backend ------------------------------------------------------------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


@dataclass
class Backend:
    """A threaded HTTP server: ``decide(body)`` gives the JSON answer; ``delay`` stalls each
    answer; ``status`` is the HTTP status of answers; ``stop()`` takes it down."""

    decide: Decide = lambda body: {"allow": True}
    delay: float = 0.0
    status: int = 200
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _down: bool = False

    def url(self, event: str) -> str:
        return f"http://127.0.0.1:{self.port}/{event}"

    def events(self, event: str) -> list[Call]:
        return [c for c in list(self.calls) if c.path == f"/{event}"]

    def start(self) -> Backend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pool expects

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if backend._down:
                    self.close_connection = True
                    return
                backend.calls.append(Call(self.path, dict(self.headers.items()), raw,
                                          time.monotonic()))
                if backend.delay:
                    time.sleep(backend.delay)
                answer = backend.decide(json.loads(raw))
                if answer is None:
                    self.close_connection = True
                    return
                out = json.dumps(answer).encode()
                self.send_response(backend.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: new connections are refused, kept-alive ones are dropped unanswered."""
        self._down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend().start()
    try:
        yield b
    finally:
        b.stop()


def proxied(redis: RedisServer, logdir: Path, backend: Backend, *events: str,
            **extra: str) -> Proc:
    env = {f"SWITCHBOARD_PROXY_{e.upper()}_URL": backend.url(e) for e in events}
    env.setdefault("SWITCHBOARD_PROXY_SECRET", SECRET)
    env.setdefault("SWITCHBOARD_PROXY_TIMEOUT", "0.5")
    env.update(extra)
    return start_gateway(redis, logdir, **env)


def ws(gw: Proc, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.port}/ws{query}"


def replies(client: WsClient, kind: str, channel: str | None = None) -> list[dict[str, Any]]:
    return [m for m in client.received if m.get("type") == kind
            and (channel is None or m.get("channel") == channel)]


async def refused(url: str) -> tuple[int, dict[str, str], bytes]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=10):
            pass
    response = info.value.response
    return response.status_code, dict(response.headers.raw_items()), bytes(response.body or b"")


def metric(gw: Proc, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{gw.port}/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


async def alive(client: WsClient) -> bool:
    """The connection still answers (a ping after whatever was refused)."""
    before = len(replies(client, "pong"))
    await client.send({"type": "ping"})
    await until(lambda: len(replies(client, "pong")) > before or client.closed, 5, "pong")
    return not client.closed


# -- connect ----------------------------------------------------------------------------------


async def test_connect_allowed_without_a_token_and_the_backend_sees_the_facts(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "user": "alice", "join": ["news"],
                                   "channels": ["room-*"], "info": {"name": "Alice"}}
    gw = proxied(redis_server, logdir, backend, "connect",
                 SWITCHBOARD_PROXY_HEADERS="Cookie,X-Tenant")
    try:
        client = await WsClient(ws(gw, "?channels=room-1"), additional_headers={
            "Cookie": "sid=abc", "X-Tenant": "t1", "X-Secret": "not forwarded",
            "User-Agent": "proxy-test"}).start()
        assert client.welcome is not None and client.welcome["user"] == "alice"
        await until(lambda: len(replies(client, "subscribed")) == 2, 5, "both channels")
        assert {m["channel"] for m in replies(client, "subscribed")} == {"room-1", "news"}
        # what the backend got
        (call,) = backend.events("connect")
        body = call.body
        assert body["event"] == "connect" and body["transport"] == "ws"
        assert body["remote_addr"] == "127.0.0.1"
        assert body["headers"] == {"cookie": "sid=abc", "x-tenant": "t1"}
        assert body["user_agent"] == "proxy-test"
        assert body["params"] == {"channels": "room-1"}
        assert body["claims"] is None
        # a channel neither the claims nor the join allow is still forbidden
        await client.send({"type": "subscribe", "channel": "other"})
        await until(lambda: replies(client, "error"), 5, "forbidden")
        assert replies(client, "error")[0]["code"] == "forbidden"
        await client.close()
        assert metric(gw, "switchboard_gateway_proxy_calls_total", event="connect",
                      result="allowed") == 1
    finally:
        gw.stop()


async def test_the_signature_verifies_with_the_shared_secret(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "user": "sig"}
    gw = proxied(redis_server, logdir, backend, "connect")
    try:
        client = await WsClient(ws(gw)).start()
        await client.close()
        (call,) = backend.events("connect")
        header = call.headers["X-Switchboard-Signature"]
        assert header.startswith("t=") and ",v1=" in header
        assert proxyrules.verify(SECRET.encode(), header, call.raw, now=time.time())
        assert not proxyrules.verify(b"wrong secret", header, call.raw, now=time.time())
        assert call.headers["X-Switchboard-Event"] == "connect"
        assert SECRET not in gw.output()  # and never logged
    finally:
        gw.stop()


async def test_connect_with_a_token_sends_its_claims_and_may_widen_them(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "publish": ["chat"]}
    gw = proxied(redis_server, logdir, backend, "connect")
    try:
        tok = token("bob", channels=["chat"])
        client = await WsClient(ws(gw, f"?token={tok}&channels=chat")).start()
        assert client.welcome is not None and client.welcome["user"] == "bob"
        claims = backend.events("connect")[0].body["claims"]
        assert claims["user"] == "bob" and claims["channels"] == ["chat"]
        assert "token" not in backend.events("connect")[0].body["params"]
        await until(lambda: replies(client, "subscribed"), 5, "subscribed")
        await client.send({"type": "publish", "channel": "chat", "data": "hi", "id": 1})
        await until(lambda: replies(client, "published"), 5, "published by the granted claim")
        await client.close()
        # a forged token is still 401, the backend is not asked
        status, _, _ = await refused(ws(gw, "?token=forged.token.here"))
        assert status == 401
        assert len(backend.events("connect")) == 1
    finally:
        gw.stop()


async def test_connect_denied_is_403_or_401_with_the_reason(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": False, "reason": "banned",
                                   "status": 401 if body["params"].get("u") == "x" else 403}
    gw = proxied(redis_server, logdir, backend, "connect")
    try:
        status, _, body = await refused(ws(gw))
        assert status == 403
        assert json.loads(body) == {"error": "forbidden", "message": "banned"}
        status, headers, _ = await refused(ws(gw, "?u=x"))
        assert status == 401 and "WWW-Authenticate" in headers
        sse = await SseClient("127.0.0.1", gw.port, "/sse").start()
        assert sse.status == 403
        await sse.close()
        assert metric(gw, "switchboard_gateway_proxy_calls_total", event="connect",
                      result="denied") == 3
    finally:
        gw.stop()


async def test_connect_times_out_as_503_with_retry_after(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.delay = 2.0
    gw = proxied(redis_server, logdir, backend, "connect", SWITCHBOARD_PROXY_TIMEOUT="0.3")
    try:
        started = time.monotonic()
        status, headers, body = await refused(ws(gw))
        assert time.monotonic() - started < 1.5
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert json.loads(body)["error"] == "unavailable"
        sse = await SseClient("127.0.0.1", gw.port, "/sse").start()
        assert sse.status == 503 and "retry-after" in sse.response_headers
        await sse.close()
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="connect",
                      kind="timeout") == 2
    finally:
        gw.stop()


async def test_connect_with_the_backend_down_is_503(
        redis_server: RedisServer, logdir: Path) -> None:
    down = Backend(port=free_port())  # nothing listens there
    gw = proxied(redis_server, logdir, down, "connect")
    try:
        status, headers, _ = await refused(ws(gw))
        assert status == 503 and "Retry-After" in headers
        sse = await SseClient("127.0.0.1", gw.port, "/sse").start()
        assert sse.status == 503
        await sse.close()
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="connect",
                      kind="connection") == 2
        assert httpx.get(f"http://127.0.0.1:{gw.port}/healthz").status_code == 200
    finally:
        gw.stop()


async def test_connect_with_a_malformed_answer_is_503(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True}  # no user, and no token either
    gw = proxied(redis_server, logdir, backend, "connect")
    try:
        status, _, _ = await refused(ws(gw))
        assert status == 503
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="connect",
                      kind="bad_answer") == 1
    finally:
        gw.stop()


async def test_sse_connect_allowed_by_the_proxy(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "user": "eve", "join": ["feed"]}
    gw = proxied(redis_server, logdir, backend, "connect")
    try:
        sse = await SseClient("127.0.0.1", gw.port, "/sse").start()
        assert sse.status == 200 and sse.welcome is not None and sse.welcome["user"] == "eve"
        await until(lambda: any(m.get("type") == "subscribed" for m in sse.received), 5,
                    "joined feed")
        assert backend.events("connect")[0].body["transport"] == "sse"
        await sse.close()
    finally:
        gw.stop()


# -- subscribe --------------------------------------------------------------------------------


def sub_decide(body: dict[str, Any]) -> Answer:
    if body["channel"].startswith("ok"):
        return {"allow": True}
    return {"allow": False, "reason": "members only"}


async def test_subscribe_allowed_denied_and_connect_channels_are_asked_too(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = sub_decide
    gw = proxied(redis_server, logdir, backend, "subscribe",
                 SWITCHBOARD_PROXY_SUBSCRIBE_CHANNELS="ok*,no*")
    try:
        client = await WsClient(ws(gw, f"?token={token('sam', channels=['*'])}"
                                       "&channels=ok1,no1,free")).start()
        await until(lambda: len(replies(client, "subscribed")) + len(replies(client, "error"))
                    == 3, 5, "three answers")
        assert {m["channel"] for m in replies(client, "subscribed")} == {"ok1", "free"}
        (denied,) = replies(client, "error")
        assert denied == {"type": "error", "code": "forbidden", "message": "members only",
                          "channel": "no1"}
        await client.send({"type": "subscribe", "channel": "ok2"})
        await client.send({"type": "subscribe", "channel": "no2"})
        await until(lambda: replies(client, "subscribed", "ok2") and replies(
            client, "error", "no2"), 5, "answers")
        asked = sorted(c.body["channel"] for c in backend.events("subscribe"))
        assert asked == ["no1", "no2", "ok1", "ok2"]  # "free" is not proxied
        body = backend.events("subscribe")[0].body
        assert body["user"] == "sam" and body["conn"] and body["session"]
        assert await alive(client)
        await client.close()
    finally:
        gw.stop()


async def test_the_token_claims_apply_before_the_proxy(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    gw = proxied(redis_server, logdir, backend, "subscribe")
    try:
        client = await WsClient(ws(gw, f"?token={token('tim', channels=['a'])}")).start()
        await client.send({"type": "subscribe", "channel": "b"})
        await until(lambda: replies(client, "error"), 5, "forbidden")
        assert replies(client, "error")[0]["code"] == "forbidden"
        assert backend.events("subscribe") == []
        await client.close()
    finally:
        gw.stop()


async def test_the_subscribe_answer_turns_presence_events_on_or_off(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    # "vip*": on, whatever the token says; anything else: off, whatever the token says
    backend.decide = lambda body: {"allow": True,
                                   "presence": body["channel"].startswith("vip")}
    gw = proxied(redis_server, logdir, backend, "subscribe")
    try:
        plain = await WsClient(ws(gw, f"?token={token('pia', channels=['*'])}")).start()
        keen = await WsClient(ws(gw, "?token=" + token("kai", channels=["*"],
                                                      presence=["*"]))).start()
        for client in (plain, keen):  # one after the other: events come after `subscribed`
            for channel in ("vip1", "room1"):
                await client.send({"type": "subscribe", "channel": channel})
            await until(lambda c=client: len(replies(c, "subscribed")) == 2, 5, "subscribed")
        await until(lambda: len(replies(plain, "presence")) == 2, 5,
                    "pia is told of both joins of vip1, hers and kai's")
        assert {(m["channel"], m["user"]) for m in replies(plain, "presence")} == {
            ("vip1", "pia"), ("vip1", "kai")}
        await until(lambda: len(replies(keen, "presence")) == 1, 5, "kai, of his own join")
        assert replies(keen, "presence")[0]["channel"] == "vip1"
        assert backend.events("subscribe")[0].body["claims"]["presence"] == []
        await keen.close()
        await until(lambda: replies(plain, "presence")[-1]["event"] == "leave", 5, "a leave")
        assert {m["channel"] for m in replies(plain, "presence")} == {"vip1"}
        await plain.close()
    finally:
        gw.stop()


async def test_subscribe_timed_out_or_backend_down_is_unavailable_and_keeps_the_connection(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.delay = 1.5
    gw = proxied(redis_server, logdir, backend, "subscribe", SWITCHBOARD_PROXY_TIMEOUT="0.3")
    try:
        client = await WsClient(ws(gw, f"?token={token('ula', channels=['*'])}")).start()
        started = time.monotonic()
        await client.send({"type": "subscribe", "channel": "slow"})
        await until(lambda: replies(client, "error"), 5, "unavailable")
        assert time.monotonic() - started < 1.2
        assert replies(client, "error")[0]["code"] == "unavailable"
        assert await alive(client)
        backend.stop()
        await client.send({"type": "subscribe", "channel": "slow"})  # may be retried now
        await until(lambda: len(replies(client, "error")) == 2, 5, "unavailable again")
        assert replies(client, "error")[1]["code"] == "unavailable"
        assert await alive(client)
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="subscribe",
                      kind="timeout") == 1
        await client.close()
    finally:
        gw.stop()


# -- publish ----------------------------------------------------------------------------------


def pub_decide(body: dict[str, Any]) -> Answer:
    data = body["data"]
    if data == "bad word":
        return {"allow": True, "data": "*** ****"}
    if data == "spam":
        return {"allow": False, "reason": "no spam"}
    return {"allow": True}


async def test_publish_allowed_rewritten_denied(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = pub_decide
    gw = proxied(redis_server, logdir, backend, "publish")
    try:
        tok = token("val", channels=["chat"], publish=["chat"])
        client = await WsClient(ws(gw, f"?token={tok}&channels=chat")).start()
        await until(lambda: replies(client, "subscribed"), 5, "subscribed")
        for i, data in enumerate(["hello", "bad word", "spam"]):
            await client.send({"type": "publish", "channel": "chat", "data": data, "id": i})
        await until(lambda: len(replies(client, "published")) == 2 and replies(
            client, "error"), 5, "answers")
        (denied,) = replies(client, "error")
        assert denied["code"] == "forbidden" and denied["id"] == 2
        assert denied["message"] == "no spam"
        await until(lambda: len(client.messages("ch.chat")) == 2, 5, "stored messages")
        assert client.data("ch.chat") == ["hello", "*** ****"]  # in order, rewritten
        assert [c.body["data"] for c in backend.events("publish")] == ["hello", "bad word",
                                                                       "spam"]
        await client.close()
    finally:
        gw.stop()


async def test_publish_timed_out_or_backend_down_is_unavailable_and_never_retried(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.delay = 1.5
    gw = proxied(redis_server, logdir, backend, "publish", SWITCHBOARD_PROXY_TIMEOUT="0.3")
    try:
        tok = token("wes", channels=["chat"], publish=["chat"])
        client = await WsClient(ws(gw, f"?token={tok}&channels=chat")).start()
        await client.send({"type": "publish", "channel": "chat", "data": 1, "id": "a"})
        await until(lambda: replies(client, "error"), 5, "unavailable")
        assert replies(client, "error")[0]["code"] == "unavailable"
        assert replies(client, "error")[0]["id"] == "a"
        backend.delay = 0
        backend.decide = lambda body: None  # drops the connection without an answer
        await client.send({"type": "publish", "channel": "chat", "data": 2, "id": "b"})
        await until(lambda: len(replies(client, "error")) == 2, 5, "unavailable again")
        assert replies(client, "error")[1]["code"] == "unavailable"
        assert [c.body["data"] for c in backend.events("publish")] == [1, 2]  # not retried
        backend.stop()
        await client.send({"type": "publish", "channel": "chat", "data": 3, "id": "c"})
        await until(lambda: len(replies(client, "error")) == 3, 5, "down")
        assert client.messages("ch.chat") == []  # nothing was stored
        assert await alive(client)
        await client.close()
    finally:
        gw.stop()


# -- refresh ----------------------------------------------------------------------------------


async def test_refresh_extends_an_expiring_connection(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "expire_at": time.time() + 2,
                                   "info": {"n": len(backend.events("refresh"))}}
    gw = proxied(redis_server, logdir, backend, "refresh", SWITCHBOARD_PROXY_TIMEOUT="0.2")
    try:
        client = await WsClient(ws(gw, f"?token={token('xia', ttl=2)}")).start()
        # past the token's own expiry, still open, refreshed more than once
        await until(lambda: len(backend.events("refresh")) >= 3, 10, "refreshes")
        assert not client.closed and await alive(client)
        calls = backend.events("refresh")
        assert calls[0].body["user"] == "xia" and calls[0].body["info"] is None
        assert calls[1].body["info"] == {"n": 1}  # the info of the last answer comes back
        await client.close()
    finally:
        gw.stop()


async def test_refresh_denied_closes_4001(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": False, "reason": "logged out"}
    gw = proxied(redis_server, logdir, backend, "refresh", SWITCHBOARD_PROXY_TIMEOUT="0.2")
    try:
        client = await WsClient(ws(gw, f"?token={token('yan', ttl=2)}")).start()
        await until(lambda: client.closed, 6, "closed")
        assert client.close_code == 4001
        assert len(backend.events("refresh")) == 1
    finally:
        gw.stop()


@pytest.mark.parametrize("failure", ["timeout", "down"])
async def test_refresh_without_an_answer_closes_1013_at_the_real_expiry(
        redis_server: RedisServer, logdir: Path, backend: Backend, failure: str) -> None:
    if failure == "timeout":
        backend.delay = 1.0
    else:
        backend.stop()
    gw = proxied(redis_server, logdir, backend, "refresh", SWITCHBOARD_PROXY_TIMEOUT="0.2")
    try:
        client = await WsClient(ws(gw, f"?token={token('zoe', ttl=3)}")).start()
        exp = int(time.time() + 3)  # what mint wrote, give or take the second it rounded
        await until(lambda: client.closed, 8, "closed")
        assert client.close_code == 1013
        assert time.time() >= exp - 1.1  # kept until (about) its real expiry
    finally:
        gw.stop()


# -- bounds -----------------------------------------------------------------------------------


async def test_calls_beyond_the_concurrency_limit_are_refused_at_once(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.delay = 1.0
    gw = proxied(redis_server, logdir, backend, "subscribe", SWITCHBOARD_PROXY_TIMEOUT="3",
                 SWITCHBOARD_PROXY_MAX_CONCURRENCY="2")
    try:
        client = await WsClient(ws(gw, f"?token={token('ada', channels=['*'])}")).start()
        started = time.monotonic()
        for i in range(5):
            await client.send({"type": "subscribe", "channel": f"c{i}"})
        await until(lambda: len(replies(client, "error")) == 3, 5, "three refused")
        assert time.monotonic() - started < 0.8  # at once, not after the backend's delay
        assert {m["code"] for m in replies(client, "error")} == {"unavailable"}
        await until(lambda: len(replies(client, "subscribed")) == 2, 5, "two allowed")
        assert len(backend.events("subscribe")) == 2
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="subscribe",
                      kind="overloaded") == 3
        await client.close()
    finally:
        gw.stop()


async def test_parked_connects_beyond_the_limit_get_503_at_once(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.delay = 1.0
    backend.decide = lambda body: {"allow": True, "user": "u"}
    gw = proxied(redis_server, logdir, backend, "connect", SWITCHBOARD_PROXY_TIMEOUT="3",
                 SWITCHBOARD_PROXY_MAX_CONCURRENCY="2")
    try:
        async def attempt() -> int | str:
            try:
                async with connect(ws(gw), open_timeout=10):
                    return "open"
            except InvalidStatus as exc:
                return exc.response.status_code

        results = await asyncio.gather(*(attempt() for _ in range(5)))
        assert sorted(results, key=str) == [503, 503, 503, "open", "open"]
        assert len(backend.events("connect")) == 2
    finally:
        gw.stop()


async def test_the_breaker_spares_the_backend_during_the_cooldown(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.status = 500
    gw = proxied(redis_server, logdir, backend, "subscribe",
                 SWITCHBOARD_PROXY_BREAKER_FAILURES="3", SWITCHBOARD_PROXY_BREAKER_COOLDOWN="2")
    try:
        client = await WsClient(ws(gw, f"?token={token('bea', channels=['*'])}")).start()
        for i in range(3):
            await client.send({"type": "subscribe", "channel": f"f{i}"})
            await until(lambda n=i: len(replies(client, "error")) == n + 1, 5, "failed")
        assert len(backend.events("subscribe")) == 3
        opened = time.monotonic()
        for i in range(5):
            await client.send({"type": "subscribe", "channel": f"g{i}"})
        await until(lambda: len(replies(client, "error")) == 8, 5, "refused at once")
        assert time.monotonic() - opened < 2
        assert len(backend.events("subscribe")) == 3  # no call during the cool-down
        assert metric(gw, "switchboard_gateway_proxy_errors_total", event="subscribe",
                      kind="breaker_open") == 5
        backend.status = 200
        await asyncio.sleep(2.1)  # the cool-down itself is what this waits for
        await client.send({"type": "subscribe", "channel": "h"})
        await until(lambda: replies(client, "subscribed", "h"), 5, "the probe went through")
        assert len(backend.events("subscribe")) == 4
        await client.close()
    finally:
        gw.stop()


async def test_the_router_still_publishes_to_proxied_connections(
        redis_server: RedisServer, logdir: Path, backend: Backend) -> None:
    backend.decide = lambda body: {"allow": True, "user": "pat"}
    gw = proxied(redis_server, logdir, backend, "connect")
    router = start_router(redis_server, logdir)
    try:
        client = await WsClient(ws(gw)).start()
        resp = httpx.post(f"http://127.0.0.1:{router.port}/v1/publish",
                          json={"user": "pat", "data": "to you"},
                          headers={"Authorization": f"Bearer {API_KEY}"})
        assert resp.status_code == 200
        await until(lambda: client.data("user") == ["to you"], 5, "unicast")
        await client.close()
    finally:
        router.stop()
        gw.stop()
