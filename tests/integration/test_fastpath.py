"""The plain-ASGI publish routes answer exactly as the FastAPI routes do (real Redis).

Every request below goes once to the router app (where :class:`router.fastpath.FastPublish`
answers the publish routes) and once to the FastAPI app behind it (the routes OpenAPI
documents); status, media type, body and the headers a client acts on must be the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import httpx
import msgpack
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from router.app import create_app
from router.fastpath import FastPublish
from router.publish import result_body
from switchboard.config import RouterSettings
from switchboard.store import Published, Store, connect, pipelined
from tests.support import RedisServer

pytestmark = pytest.mark.integration

KEY = "fast-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}
SETTINGS = dict(api_keys=(KEY, "other-key"), max_body=2048, max_batch=3)
# Headers a client acts on; the rest (date, server) are the server's, not the route's.
COMPARED = ("content-type", "www-authenticate", "retry-after", "vary",
            "access-control-allow-origin")


@dataclass
class Recorder:
    """The FastAPI app behind the fast path, noting which paths reached it."""

    app: ASGIApp
    paths: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@dataclass
class Apps:
    fast: FastPublish
    behind: Recorder
    store: Store

    def clients(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        def client(app: ASGIApp) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://router")
        return client(self.fast), client(self.behind)


@pytest.fixture
async def apps(redis_server: RedisServer) -> AsyncIterator[Apps]:
    async with make_apps(RouterSettings(redis_url=redis_server.url, **SETTINGS)) as made:
        yield made


@asynccontextmanager
async def make_apps(settings: RouterSettings) -> AsyncIterator[Apps]:
    store = Store(connect(settings.redis_url, 2.0), settings, pipelined(settings, "test"))
    fast = create_app(settings, store)
    behind = Recorder(fast.app)
    fast.app = behind
    try:
        yield Apps(fast, behind, store)
    finally:
        await store.aclose()


def normalized(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """What must match: offsets differ (each app publishes its own copy), the rest may not."""
    media = response.headers.get("content-type", "")
    body: Any = (msgpack.unpackb(response.content) if "msgpack" in media
                 else json.loads(response.content))
    for result in body.get("results", [body]):
        if "offset" in result:
            assert isinstance(result["offset"], int) and result["offset"] > 0
            result["offset"] = "N"
    headers = {h: response.headers[h] for h in COMPARED if h in response.headers}
    return response.status_code, headers, body


async def same_answer(apps: Apps, path: str, **request: Any) -> tuple[int, Any]:
    fast_client, framework_client = apps.clients()
    async with fast_client, framework_client:
        fast = await fast_client.post(path, **request)
        framework = await framework_client.post(path, **request)
    assert normalized(fast) == normalized(framework), (fast.content, framework.content)
    return fast.status_code, normalized(fast)[2]


def msg(user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"user": user, "data": {"n": 1}, **extra}


CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("no key", 401, {"json": msg()}),
    ("another scheme", 401, {"json": msg(), "headers": {"Authorization": f"Basic {KEY}"}}),
    ("unknown key", 401, {"json": msg(), "headers": {"Authorization": "Bearer nope"}}),
    ("scheme in lower case", 200, {"json": msg(), "headers": {"Authorization": f"bearer {KEY}"}}),
    ("second key", 200, {"json": msg(), "headers": {"Authorization": "Bearer other-key"}}),
    ("text/plain", 415, {"content": b"{}", "headers": {**AUTH, "Content-Type": "text/plain"}}),
    ("no content type", 415, {"content": b"{}", "headers": AUTH}),
    ("declared too large", 413, {"content": b"{}", "headers": {
        **AUTH, **JSON, "Content-Length": "999999"}}),
    ("not json", 400, {"content": b"{nope", "headers": {**AUTH, **JSON}}),
    ("an array", 400, {"content": b"[1]", "headers": {**AUTH, **JSON}}),
    ("NaN", 400, {"content": b'{"user":"a","data":NaN}', "headers": {**AUTH, **JSON}}),
    ("unknown field", 422, {"json": msg(extra=1), "headers": AUTH}),
    ("two targets", 422, {"json": {**msg(), "broadcast": True}, "headers": AUTH}),
    ("no data", 422, {"json": {"user": "alice"}, "headers": AUTH}),
    ("bad user", 422, {"json": msg(user="a b"), "headers": AUTH}),
    ("lone surrogate user", 422, {"content": b'{"user":"\\ud800","data":1}',
                                  "headers": {**AUTH, **JSON}}),
    ("channel", 200, {"json": {"channel": "room-1", "data": [1, "two"]}, "headers": AUTH}),
    ("broadcast", 200, {"json": {"broadcast": True, "data": None}, "headers": AUTH}),
    ("json+suffix type", 200, {"content": json.dumps(msg()).encode(), "headers": {
        **AUTH, "Content-Type": "application/vnd.api+json; charset=utf-8"}}),
    ("msgpack in and out", 200, {"content": msgpack.packb(msg()), "headers": {
        **AUTH, "Content-Type": "application/msgpack", "Accept": "application/msgpack"}}),
    ("json preferred", 200, {"json": msg(), "headers": {
        **AUTH, "Accept": "application/msgpack;q=0.5, application/json"}}),
]


@pytest.mark.parametrize(("what", "status", "request_"), CASES, ids=[c[0] for c in CASES])
async def test_publish_answers_as_the_fastapi_route(apps: Apps, what: str, status: int,
                                                    request_: dict[str, Any]) -> None:
    got, _ = await same_answer(apps, "/v1/publish", **request_)
    assert got == status
    assert apps.behind.paths == ["/v1/publish"]  # only the FastAPI copy of the request


BATCH_CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("ok", 200, {"messages": [msg("a"), msg("b"), {"broadcast": True, "data": 1}]}),
    ("one invalid", 422, {"messages": [msg("a"), {"user": "b"}]}),
    ("too many", 413, {"messages": [msg()] * 4}),
    ("not a list", 422, {"messages": {"user": "a"}}),
    ("empty", 422, {"messages": []}),
]


@pytest.mark.parametrize(("what", "status", "body"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
async def test_batch_answers_as_the_fastapi_route(apps: Apps, what: str, status: int,
                                                  body: dict[str, Any]) -> None:
    got, answer = await same_answer(apps, "/v1/publish/batch", json=body, headers=AUTH)
    assert got == status
    if status == 422:
        assert answer["error"] == "invalid"


async def test_a_streamed_body_over_the_limit_is_413(apps: Apps) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(10):
            yield b" " * 500

    fast_client, _ = apps.clients()
    async with fast_client:
        answer = await fast_client.post("/v1/publish", content=chunks(),
                                        headers={**AUTH, **JSON})
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"
    assert apps.behind.paths == []


async def test_a_client_gone_before_its_body_gets_no_answer_and_counts_499(apps: Apps) -> None:
    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                    "method": "POST", "scheme": "http", "path": "/v1/publish",
                    "raw_path": b"/v1/publish", "query_string": b"", "root_path": "",
                    "headers": [(b"authorization", f"Bearer {KEY}".encode()),
                                (b"content-type", b"application/json")],
                    "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    def gone() -> float | None:
        return apps.fast.ctx.metrics.registry.get_sample_value(
            "switchboard_router_http_requests_total",
            {"route": "/v1/publish", "method": "POST", "status": "499"})

    await apps.fast(dict(scope), receive, send)
    assert sent == [] and gone() == 1
    await apps.behind(dict(scope), receive, send)  # the FastAPI route, same metrics object
    assert sent == [] and gone() == 2


async def test_redis_down_is_503_with_retry_after_on_both(apps: Apps,
                                                          redis_server: RedisServer) -> None:
    redis_server.stop()
    status, body = await same_answer(apps, "/v1/publish", json=msg(), headers=AUTH)
    assert status == 503 and body["error"] == "redis_unavailable"
    status, _ = await same_answer(apps, "/v1/publish/batch", json={"messages": [msg()]},
                                  headers=AUTH)
    assert status == 503
    fast_client, _ = apps.clients()
    async with fast_client:
        assert (await fast_client.post("/v1/publish", json=msg(),
                                       headers=AUTH)).headers["retry-after"] == "1"


async def test_other_routes_and_cors_requests_go_to_fastapi(redis_server: RedisServer) -> None:
    settings = RouterSettings(redis_url=redis_server.url, cors_origins=("https://app.example",),
                              **SETTINGS)
    async with make_apps(settings) as apps:
        fast_client, _ = apps.clients()
        async with fast_client:
            assert (await fast_client.get("/v1/cluster", headers=AUTH)).status_code == 200
            plain = await fast_client.post("/v1/publish", json=msg(), headers=AUTH)
            cors = await fast_client.post("/v1/publish", json=msg(), headers={
                **AUTH, "Origin": "https://app.example"})
        assert plain.status_code == cors.status_code == 200
        assert cors.headers["access-control-allow-origin"] == "https://app.example"
        assert apps.behind.paths == ["/v1/cluster", "/v1/publish"]


def test_result_bodies_carry_every_published_field() -> None:
    published = Published(stream="user:a", epoch="e", offset=3, recipients=1, duplicate=False)
    assert list(result_body(published)) == [f.name for f in fields(Published)]
