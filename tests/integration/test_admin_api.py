"""The admin page's router side against a real redis-server, router and gateways: the page
and Basic auth, the channel list, the load history and draining a gateway over Redis."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from switchboard import contract
from switchboard.auth import mint
from tests.support import (
    API_KEY,
    JWT_SECRET,
    Proc,
    RedisServer,
    start_gateway,
    start_router,
    wait_until,
)

pytestmark = pytest.mark.integration

KEYS = contract.Keys()
BEARER = {"Authorization": f"Bearer {API_KEY}"}


def basic(password: str, user: str = "admin") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def router(redis_server: RedisServer, logdir: Path) -> Iterator[Proc]:
    proc = start_router(redis_server, logdir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http(router: Proc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
        yield client


@pytest.fixture
def db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    try:
        yield client
    finally:
        client.close()


def fake_gateway(db: redis.Redis, gateway_id: str) -> None:
    """A registry entry with no process behind it (nobody listens to its channel)."""
    entry = contract.registry_entry(contract.GatewayInfo(
        gateway_id=gateway_id, host="127.0.0.1", port=1, connections=0, ws=0, sse=0,
        draining=False, started_ms=contract.now_ms(), heartbeat_ms=contract.now_ms()))
    db.hset(KEYS.gateway(gateway_id), mapping={k: str(v) for k, v in entry.items()})
    db.expire(KEYS.gateway(gateway_id), 60)
    db.zadd(KEYS.gateways(), {gateway_id: contract.now_ms()})


@contextlib.contextmanager
def ws_connect(gateway: Proc, user: str) -> Iterator[ClientConnection]:
    token = mint(JWT_SECRET, user, channels=["*"], publish=["*"])
    with connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token}", open_timeout=10) as ws:
        welcome = json.loads(ws.recv(timeout=10))
        assert welcome["type"] == "welcome"
        yield ws


# -- the page and its auth -------------------------------------------------------------------


def test_admin_page_asks_browsers_for_basic_credentials(http: httpx.Client) -> None:
    for path in ("/admin", "/admin/admin.js", "/admin/admin.css"):
        resp = http.get(path)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"] == 'Basic realm="switchboard admin"'
        assert resp.json()["error"] == "unauthorized"
        wrong = http.get(path, headers=basic("not-the-key"))
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Basic ")

    page = http.get("/admin", headers=basic(API_KEY))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert '<script type="module" src="/admin/admin.js">' in page.text
    # the Bearer key works too, and any user name goes with the key
    assert http.get("/admin", headers=BEARER).status_code == 200
    script = http.get("/admin/admin.js", headers=basic(API_KEY, user=""))
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert http.get("/admin/admin.css", headers=BEARER).headers["content-type"].startswith(
        "text/css")
    # no query parameter picks another file or the content type
    for query in ("?name=../app.py", "?name=/proc/self/environ", "?name=",
                  "?content_type=text/javascript"):
        resp = http.get("/admin" + query, headers=BEARER)
        assert (resp.status_code, resp.headers["content-type"], resp.text) == (
            200, page.headers["content-type"], page.text), query
    # not part of the API description
    assert not any(p.startswith("/admin") for p in http.get("/openapi.json").json()["paths"])


def test_api_accepts_basic_credentials_and_refuses_basic_state_changes_without_the_header(
        http: httpx.Client) -> None:
    assert http.get("/v1/cluster", headers=basic(API_KEY)).status_code == 200
    # API clients keep getting the Bearer challenge; a failed Basic attempt gets Basic's
    refused = http.get("/v1/cluster")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    refused = http.get("/v1/cluster", headers=basic("wrong"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="switchboard admin"'
    for undecodable in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                        "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        resp = http.get("/v1/cluster", headers={"Authorization": undecodable})
        assert resp.status_code == 401, undecodable
        assert resp.json()["error"] == "unauthorized"

    # CSRF: a Basic-authenticated POST needs X-Switchboard-Admin (FastAPI route and fast path)
    for path, body, status in (
            ("/v1/users/alice/disconnect", {}, 200),
            ("/v1/publish", {"user": "alice", "data": 1}, 200),
            ("/v1/publish/batch", {"messages": [{"user": "alice", "data": 1}]}, 200),
            ("/v1/gateways/gw-none/drain", None, 404)):
        resp = http.post(path, json=body, headers=basic(API_KEY))
        assert resp.status_code == 403, path
        assert resp.json()["error"] == "forbidden"
        assert "X-Switchboard-Admin" in resp.json()["message"]
        ok = http.post(path, json=body, headers={**basic(API_KEY), "X-Switchboard-Admin": "1"})
        assert ok.status_code == status, (path, ok.text)
        # the Bearer key never needs it: browsers do not send it by themselves
        assert http.post(path, json=body, headers=BEARER).status_code == status, path


# -- channels --------------------------------------------------------------------------------


def test_channels_lists_channels_with_live_subscribers_and_their_counts(
        http: httpx.Client, db: redis.Redis) -> None:
    fake_gateway(db, "gw-live")
    entries = {"lobby": [("c1", "alice"), ("c2", "alice"), ("c3", "bob")],
               "news": [("c4", "carol")],
               "ghost": [("c5", "dave")]}  # only through a gateway that is gone
    for channel, conns in entries.items():
        gw = "gw-dead" if channel == "ghost" else "gw-live"
        for conn, user in conns:
            db.hset(KEYS.presence(channel), conn, contract.presence_value(gw, user))
    db.hset(KEYS.conns("alice"), "c1", "gw-live")  # not a presence key: not listed
    db.set("sb:{c:fake}:presenceX", "1")

    listed = http.get("/v1/channels", headers=BEARER)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"truncated": False, "channels": [
        {"channel": "lobby", "users": 2, "connections": 3},
        {"channel": "news", "users": 1, "connections": 1},
    ]}
    # each count is what the channel's presence endpoint says
    for ch in listed.json()["channels"]:
        presence = http.get(f"/v1/channels/{ch['channel']}/presence", headers=BEARER).json()
        assert (presence["count"], presence["connections"]) == (ch["users"], ch["connections"])
    assert not db.exists(KEYS.presence("ghost")), "dead gateways' entries are dropped"

    one = http.get("/v1/channels", params={"limit": 1}, headers=BEARER).json()
    assert one == {"truncated": True,
                   "channels": [{"channel": "lobby", "users": 2, "connections": 3}]}
    for bad in ("0", "501", "ten", "-1", "1e3", "%ff", "%00"):
        resp = http.get(f"/v1/channels?limit={bad}", headers=BEARER)
        assert resp.status_code == 422, bad
        assert resp.json()["error"] == "invalid" and resp.json()["field"] == "limit"


# -- drain -----------------------------------------------------------------------------------


def test_drain_refuses_unknown_malformed_and_deaf_gateways(http: httpx.Client,
                                                           db: redis.Redis) -> None:
    resp = http.post("/v1/gateways/gw-nobody/drain", headers=BEARER)
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "field": "gateway_id",
                           "message": "no gateway 'gw-nobody' in the registry"}
    for bad in ("has space", "x" * 129, "caf\u00e9", "%ff"):
        resp = http.post(f"/v1/gateways/{bad}/drain", headers=BEARER)
        assert resp.status_code in (404, 422), bad
        assert resp.json()["error"] in ("invalid", "not_found")
    fake_gateway(db, "gw-deaf")
    resp = http.post("/v1/gateways/gw-deaf/drain", headers=BEARER)
    assert resp.status_code == 409
    assert resp.json()["error"] == "conflict" and "not listening" in resp.json()["message"]
    assert http.post("/v1/gateways/gw-deaf/drain").status_code == 401


def test_drain_command_drains_the_gateway_like_sigterm_and_it_exits(
        redis_server: RedisServer, logdir: Path, http: httpx.Client) -> None:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID="gw-drained",
                       SWITCHBOARD_DRAIN_WINDOW="1")
    try:
        with ws_connect(gw, "alice") as ws:
            wait_until(lambda: http.get("/v1/users/alice/connections", headers=BEARER)
                       .json()["count"] == 1, 10, "alice's connection in the map")
            resp = http.post("/v1/gateways/gw-drained/drain", headers=BEARER)
            assert resp.status_code == 202, resp.text
            assert resp.json() == {"gateway": "gw-drained", "already_draining": False,
                                   "notified": 1}
            # the client is moved: a reconnect hint, then 1012
            hint = json.loads(ws.recv(timeout=10))
            assert hint["type"] == "reconnect" and hint["reason"] == "drain"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            # then it deregisters and exits 0, as after SIGTERM
            assert gw.proc.wait(timeout=20) == 0
            ids = [g["id"] for g in http.get("/v1/cluster", headers=BEARER).json()["gateways"]]
            assert "gw-drained" not in ids
            assert "drain requested over Redis" in gw.output()
            assert http.post("/v1/gateways/gw-drained/drain", headers=BEARER).status_code == 404
    finally:
        gw.stop()


# -- history ---------------------------------------------------------------------------------


def test_history_samples_connections_and_deliveries_per_second(
        redis_server: RedisServer, logdir: Path, http: httpx.Client, db: redis.Redis) -> None:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID="gw-hist")
    clients = contextlib.ExitStack()
    try:
        for i in range(3):
            clients.enter_context(ws_connect(gw, f"user{i}"))
        def history() -> dict[str, Any]:
            resp = http.get("/v1/cluster/history", headers=BEARER)
            assert resp.status_code == 200, resp.text
            doc: dict[str, Any] = resp.json()
            return doc

        assert history()["interval_s"] > 0 and history()["window_s"] >= 300
        wait_until(lambda: any(s["connections"] == 3 for s in history()["samples"]), 15,
                   "a sample counting the 3 connections")
        sent = 0

        def busy() -> bool:
            nonlocal sent
            for _ in range(20):  # broadcasts: 3 deliveries each
                resp = http.post("/v1/publish", json={"broadcast": True, "data": sent},
                                 headers=BEARER)
                assert resp.status_code == 200
                sent += 1
            return any(s["deliveries_per_s"] > 0 for s in history()["samples"])

        wait_until(busy, 20, "a sample with deliveries per second")
        # the heartbeat carries the cumulative count the rate comes from
        delivered = db.hget(KEYS.gateway("gw-hist"), "delivered")
        assert delivered is not None and int(delivered) > 0
        samples = history()["samples"]
        assert [s["t_ms"] for s in samples] == sorted(s["t_ms"] for s in samples)
        assert {s["gateways"] for s in samples} <= {0, 1}  # 0: before the gateway started
    finally:
        clients.close()
        gw.stop()


# -- Redis Cluster ---------------------------------------------------------------------------


def test_on_redis_cluster_channels_are_listed_and_drain_reaches_the_gateway(
        redis_cluster: Any, logdir: Path) -> None:
    from tests.integration.cluster import cluster

    with cluster(redis_cluster, logdir, gateways=1,  # type: ignore[arg-type]
                 SWITCHBOARD_GATEWAY_ID="gw-in-cluster", SWITCHBOARD_DRAIN_WINDOW="1") as c:
        gw = c.gateways[0]
        channels = ["lobby", "news", "sports", "weather"]  # spread over the masters
        tok = mint(JWT_SECRET, "alice", channels=["*"])
        url = f"ws://127.0.0.1:{gw.port}/ws?token={tok}&channels={','.join(channels)}"
        with connect(url, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            wait_until(lambda: c.http.get("/v1/channels").json()["channels"] == [
                {"channel": ch, "users": 1, "connections": 1} for ch in sorted(channels)],
                15, "every channel listed, from every master")
            resp = c.http.post("/v1/gateways/gw-in-cluster/drain")
            assert resp.status_code == 202, resp.text
            assert resp.json()["notified"] == 1
            messages = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(ws.recv(timeout=10)))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            assert {"type": "reconnect", "reason": "drain"}.items() <= messages[-1].items()
        assert gw.proc.wait(timeout=20) == 0
        assert c.http.post("/v1/gateways/gw-in-cluster/drain").status_code == 404
