"""The router HTTP API against a real redis-server and a real router process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from switchboard import contract, streams
from tests.support import (
    API_KEY,
    ROOT,
    Proc,
    RedisServer,
    start_redis,
    start_router,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_BODY = 4096
MAX_BATCH = 5
ROUTER_ENV = {"SWITCHBOARD_MAX_BODY": str(MAX_BODY), "SWITCHBOARD_MAX_BATCH": str(MAX_BATCH)}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEYS = contract.Keys()


def client_for(router: Proc, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def log_entries(server: RedisServer, stream_key: str) -> list[tuple[bytes, contract.Message]]:
    db = redis.Redis(port=server.port)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], db.xrange(KEYS.log(stream_key)))
    finally:
        db.close()
    decoded = []
    for entry_id, fields in entries:
        msg = contract.unpack(fields[b"e"])
        assert isinstance(msg, contract.Message)
        decoded.append((entry_id, msg))
    return decoded


def publishes_counted(http: httpx.Client, target: str, outcome: str) -> float:
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "switchboard_router_publishes":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {
                    "target": target, "outcome": outcome,
                }:
                    return sample.value
    raise AssertionError("switchboard_router_publishes_total is missing from /metrics")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Proc]]:
    """One Redis and router for tests that use streams of their own (unique names)."""
    server = start_redis()
    try:
        router = start_router(server, tmp_path_factory.mktemp("logs"), **ROUTER_ENV)
        try:
            yield server, router
        finally:
            router.stop()
    finally:
        server.stop()


@pytest.fixture
def api(shared: tuple[RedisServer, Proc]) -> Iterator[httpx.Client]:
    with client_for(shared[1], headers=AUTH) as http:
        yield http


@pytest.fixture
def router(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    """A router of its own, on the test's own Redis (for tests that stop Redis or the router)."""
    proc = start_router(redis_server, logdir, **ROUTER_ENV)
    try:
        yield proc
    finally:
        proc.stop()


# -- auth and errors --------------------------------------------------------------------------


def test_v1_refuses_requests_without_a_valid_api_key(shared: tuple[RedisServer, Proc]) -> None:
    body = {"broadcast": True, "data": "secret"}
    with client_for(shared[1]) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-key"},
                        {"Authorization": f"Basic {API_KEY}"}, {"Authorization": "Bearer"}):
            for resp in (http.post("/v1/publish", json=body, headers=headers),
                         http.get("/v1/cluster", headers=headers)):
                assert resp.status_code == 401, headers
                assert resp.headers["www-authenticate"] == "Bearer"
                assert resp.json()["error"] == "unauthorized"
        # probes and the API description stay open
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/metrics").status_code == 200
        assert http.get("/openapi.json").status_code == 200


def test_malformed_bodies_are_400(api: httpx.Client) -> None:
    for raw in (b"{", b"", b"[1, 2]", b'"text"'):
        resp = api.post("/v1/publish", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, raw
        assert resp.json()["error"] == "malformed_body"
    resp = api.post("/v1/publish", content=b"\xc1",
                    headers={"Content-Type": "application/msgpack"})
    assert resp.status_code == 400


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"data": 1}, ["user", "channel", "broadcast"]),
        ({"user": "alice", "channel": "news", "data": 1}, ["user", "channel"]),
        ({"broadcast": True, "channel": "news", "data": 1}, ["channel", "broadcast"]),
        ({"user": "has space", "data": 1}, ["user"]),
        ({"user": "", "data": 1}, ["user"]),
        ({"channel": "dots.are.not.allowed", "data": 1}, ["channel"]),
        ({"channel": "c" * 65, "data": 1}, ["channel"]),
        ({"user": "alice"}, ["data"]),
        ({"broadcast": True, "data": 1, "idempotency_key": ""}, ["idempotency_key"]),
    ],
)
def test_invalid_publish_bodies_are_422_naming_the_field(
    api: httpx.Client, body: dict[str, Any], named: list[str]
) -> None:
    resp = api.post("/v1/publish", json=body)
    assert resp.status_code == 422
    error = resp.json()
    assert error["error"] == "invalid"
    for field in named:
        assert f"'{field}'" in error["message"]


def test_bodies_over_max_body_are_413(api: httpx.Client) -> None:
    oversized = {"broadcast": True, "data": "x" * MAX_BODY}
    resp = api.post("/v1/publish", json=oversized)
    assert resp.status_code == 413
    assert resp.json()["error"] == "body_too_large"

    # Without Content-Length (chunked), the limit applies to the bytes actually read.
    raw = httpx.Request("POST", "/", json=oversized).content

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    resp = api.post("/v1/publish", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413


def test_unsupported_content_type_is_415(api: httpx.Client) -> None:
    resp = api.post("/v1/publish", content=b"broadcast=1",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415
    assert resp.json()["error"] == "unsupported_media_type"


def test_unknown_routes_and_methods_answer_json(api: httpx.Client) -> None:
    resp = api.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"
    resp = api.get("/v1/publish")
    assert resp.status_code == 405
    assert resp.json()["error"] == "method_not_allowed"


# -- publishing -------------------------------------------------------------------------------


def test_broadcast_offsets_grow_by_one_and_the_log_holds_each_message(
    redis_server: RedisServer, router: Proc
) -> None:
    with client_for(router, headers=AUTH) as http:
        results = [http.post("/v1/publish", json={"broadcast": True, "data": {"n": n}}).json()
                   for n in range(5)]
    assert [r["offset"] for r in results] == [1, 2, 3, 4, 5]
    assert {r["epoch"] for r in results} == {results[0]["epoch"]}
    assert {r["stream"] for r in results} == {"broadcast"}

    entries = log_entries(redis_server, streams.BROADCAST_KEY)
    assert [entry_id for entry_id, _ in entries] == [b"1-0", b"2-0", b"3-0", b"4-0", b"5-0"]
    assert [msg.data for _, msg in entries] == [{"n": n} for n in range(5)]
    assert {msg.epoch for _, msg in entries} == {results[0]["epoch"]}


def test_msgpack_bodies_and_answers(shared: tuple[RedisServer, Proc], api: httpx.Client) -> None:
    channel = unique("bin")
    body = msgpack.packb({"channel": channel, "data": {"raw": b"\x00\xff"}}, use_bin_type=True)
    resp = api.post("/v1/publish", content=body, headers={
        "Content-Type": "application/msgpack", "Accept": "application/msgpack"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/msgpack"
    result = msgpack.unpackb(resp.content)
    assert result["stream"] == f"ch.{channel}"
    assert result["offset"] == 1

    # Binary payloads reach the log as binary; without Accept the answer is JSON.
    resp = api.post("/v1/publish", content=body, headers={"Content-Type": "application/msgpack"})
    assert resp.json()["offset"] == 2
    _, msg = log_entries(shared[0], streams.channel_key(channel))[0]
    assert msg.data == {"raw": b"\x00\xff"}


def test_an_idempotency_key_stores_a_retried_message_once(
    shared: tuple[RedisServer, Proc], api: httpx.Client
) -> None:
    user = unique("idem")
    body = {"user": user, "data": "charge #17", "idempotency_key": "charge-17"}
    first = api.post("/v1/publish", json=body).json()
    retry = api.post("/v1/publish", json=body).json()
    assert first["duplicate"] is False
    assert retry["duplicate"] is True
    assert (retry["epoch"], retry["offset"]) == (first["epoch"], first["offset"])

    following = api.post("/v1/publish", json={"user": user, "data": "next"}).json()
    assert following["offset"] == first["offset"] + 1
    assert len(log_entries(shared[0], streams.user_key(user))) == 2


def test_a_batch_is_all_or_nothing_on_validation(
    shared: tuple[RedisServer, Proc], api: httpx.Client
) -> None:
    channel = unique("batch")
    messages: list[dict[str, Any]] = [{"channel": channel, "data": n} for n in range(3)]
    bad = [*messages[:2], {"channel": channel}, messages[2]]
    resp = api.post("/v1/publish/batch", json={"messages": bad})
    assert resp.status_code == 422
    error = resp.json()
    assert error["index"] == 2
    assert "messages[2]" in error["message"]
    assert "'data'" in error["message"]

    too_many = {"messages": [{"channel": channel, "data": n} for n in range(MAX_BATCH + 1)]}
    resp = api.post("/v1/publish/batch", json=too_many)
    assert resp.status_code == 413
    assert resp.json()["error"] == "batch_too_large"
    assert log_entries(shared[0], streams.channel_key(channel)) == []

    mixed = [*messages, {"broadcast": True, "data": "all"}]
    resp = api.post("/v1/publish/batch", json={"messages": mixed})
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["stream"] for r in results] == [f"ch.{channel}"] * 3 + ["broadcast"]
    assert [r["offset"] for r in results[:3]] == [1, 2, 3]
    entries = log_entries(shared[0], streams.channel_key(channel))
    assert [msg.data for _, msg in entries] == [0, 1, 2]


def test_publish_counter_counts_by_target_and_outcome(api: httpx.Client) -> None:
    before = publishes_counted(api, "user", "ok")
    dup_before = publishes_counted(api, "user", "duplicate")
    body = {"user": unique("metrics"), "data": 1, "idempotency_key": "once"}
    api.post("/v1/publish", json=body).raise_for_status()
    api.post("/v1/publish", json=body).raise_for_status()
    assert publishes_counted(api, "user", "ok") == before + 1
    assert publishes_counted(api, "user", "duplicate") == dup_before + 1


# -- Redis outage -----------------------------------------------------------------------------


def test_503_while_redis_is_down_then_recovery(redis_server: RedisServer, router: Proc) -> None:
    body = {"broadcast": True, "data": "hello"}
    with client_for(router, headers=AUTH) as http:
        assert http.post("/v1/publish", json=body).status_code == 200
        redis_server.stop()

        for resp in (
            http.post("/v1/publish", json=body),
            http.post("/v1/publish/batch", json={"messages": [body]}),
            http.get("/v1/cluster"),
            http.get("/v1/users/alice/connections"),
            http.get("/readyz"),
        ):
            assert resp.status_code == 503, resp.request.url
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["error"] == "redis_unavailable"
        assert http.get("/healthz").status_code == 200

        redis_server.start()
        recovered = wait_until(
            lambda: (r := http.post("/v1/publish", json=body)).status_code == 200 and r,
            timeout=15, what="publishing to work again after the Redis restart",
        )
        assert isinstance(recovered, httpx.Response)
        assert recovered.json()["offset"] >= 1
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/publish/batch", json={"messages": [body]}).status_code == 200
    assert len(log_entries(redis_server, streams.BROADCAST_KEY)) >= 2


# -- users and cluster ------------------------------------------------------------------------


def register_gateway(db: redis.Redis, gid: str, connections: int, draining: bool = False) -> None:
    """Write a registry entry the way a live gateway's heartbeat does."""
    now = int(time.time() * 1000)
    db.hset(KEYS.gateway(gid), mapping={
        "host": "127.0.0.1", "port": 8080, "connections": connections, "ws": connections,
        "sse": 0, "draining": "1" if draining else "0", "started": now - 5000, "heartbeat": now,
    })
    db.zadd(KEYS.gateways(), {gid: now})


def test_cluster_reports_gateways_and_imbalance(redis_server: RedisServer, router: Proc) -> None:
    with client_for(router, headers=AUTH) as http:
        assert http.get("/v1/cluster").json() == {
            "gateways": [], "total_connections": 0, "imbalance": 1.0,
        }
        db = redis.Redis(port=redis_server.port)
        try:
            register_gateway(db, "gw-a", 30)
            register_gateway(db, "gw-b", 10)
            register_gateway(db, "gw-c", 2, draining=True)
        finally:
            db.close()
        cluster = http.get("/v1/cluster").json()
    assert [g["id"] for g in cluster["gateways"]] == ["gw-a", "gw-b", "gw-c"]
    assert cluster["total_connections"] == 42
    assert cluster["imbalance"] == 1.5  # 30 / mean(30, 10); the draining gateway is left out
    assert cluster["gateways"][2]["draining"] is True
    assert 0 <= cluster["gateways"][0]["heartbeat_age_s"] < 60


def test_connections_and_disconnect_reach_the_gateway(
    redis_server: RedisServer, router: Proc
) -> None:
    user = "team/alice"  # user ids may hold '/', so the path parameter must too
    db = redis.Redis(port=redis_server.port)
    pubsub = db.pubsub()  # type: ignore[no-untyped-call]
    try:
        register_gateway(db, "gw-1", 1)
        db.hset(KEYS.conns(user), mapping={"conn-1": "gw-1"})
        pubsub.subscribe(KEYS.gateway_channel("gw-1"))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"

        with client_for(router, headers=AUTH) as http:
            listed = http.get("/v1/users/team%2Falice/connections").json()
            assert listed == {"user": user, "connections": [{"conn": "conn-1", "gateway": "gw-1"}],
                              "count": 1}
            resp = http.post("/v1/users/team%2Falice/disconnect",
                             json={"code": 4200, "reason": "rebalance"})
            assert resp.json() == {"user": user, "gateways": 1}
            bad = http.post("/v1/users/team%2Falice/disconnect", json={"code": 1000})
            assert bad.status_code == 422
            assert "'code'" in bad.json()["message"]

        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert contract.unpack(message["data"]) == contract.Control(
            contract.OP_DISCONNECT, (user, 4200, "rebalance"))
    finally:
        pubsub.close()
        db.close()


# -- documentation and process ----------------------------------------------------------------


def test_openapi_documents_publish_for_json_and_msgpack(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    publish = doc["paths"]["/v1/publish"]["post"]
    content = publish["requestBody"]["content"]
    assert set(content) == {"application/json", "application/msgpack"}
    ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "data" in doc["components"]["schemas"][ref]["properties"]
    assert publish["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Error")


def test_openapi_documents_the_webhook_receiver(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    post = doc["webhooks"]["events"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    batch = doc["components"]["schemas"][ref]
    assert set(batch["required"]) == {"time_ms", "events"}
    event = doc["components"]["schemas"]["WebhookEvent"]
    assert set(event["properties"]["type"]["enum"]) == {
        "user.online", "user.offline", "channel.occupied", "channel.vacated", "presence.join",
        "presence.leave", "webhook.overflow"}
    headers = {p["name"].lower() for p in post["parameters"] if p["in"] == "header"}
    assert {"x-switchboard-signature", "x-switchboard-batch"} <= headers


def test_sigterm_shuts_the_router_down_cleanly(router: Proc) -> None:
    assert router.stop() == 0


def test_the_router_refuses_to_start_without_api_keys(redis_server: RedisServer) -> None:
    env = {**os.environ, "SWITCHBOARD_REDIS_URL": redis_server.url, "SWITCHBOARD_API_KEYS": ""}
    done = subprocess.run([sys.executable, "-m", "switchboard.cli", "router"], env=env, cwd=ROOT,
                          capture_output=True, timeout=30)
    assert done.returncode != 0
    assert b"API key" in done.stderr
