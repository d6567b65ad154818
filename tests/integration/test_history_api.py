"""The history API (``GET .../messages``, ``GET .../top``) against a real redis-server and a
real router process, and once on a real Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
import pytest
import redis

from switchboard import contract, streams
from switchboard.localcluster import LocalCluster
from tests.cluster_support import cluster_client
from tests.support import API_KEY, Proc, RedisServer, start_redis, start_router, wait_until

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEYS = contract.Keys()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def client_for(router: Proc) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{router.port}", headers=AUTH, timeout=10)


def publish_many(http: httpx.Client, target: dict[str, Any], n: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, n, 100):
        batch = [{**target, "data": {"n": i}} for i in range(start, min(n, start + 100))]
        resp = http.post("/v1/publish/batch", json={"messages": batch})
        assert resp.status_code == 200, resp.text
        results += resp.json()["results"]
    return results


def get(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    resp = http.get(path, params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return cast(dict[str, Any], resp.json())


def offsets(page: dict[str, Any]) -> list[int]:
    return [m["offset"] for m in page["messages"]]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Proc]]:
    server = start_redis()
    try:
        router = start_router(server, tmp_path_factory.mktemp("logs"))
        try:
            yield server, router
        finally:
            router.stop()
    finally:
        server.stop()


@pytest.fixture
def api(shared: tuple[RedisServer, Proc]) -> Iterator[httpx.Client]:
    with client_for(shared[1]) as http:
        yield http


@pytest.fixture
def db(shared: tuple[RedisServer, Proc]) -> Iterator[redis.Redis]:
    client = redis.Redis(port=shared[0].port)
    try:
        yield client
    finally:
        client.close()


# -- paging -----------------------------------------------------------------------------------


def test_paging_through_250_messages_100_at_a_time(api: httpx.Client) -> None:
    channel = unique("paging")
    path = f"/v1/channels/{channel}/messages"
    published = publish_many(api, {"channel": channel}, 250)
    epoch = published[0]["epoch"]

    pages = [get(api, path, since=f"{epoch}:0", limit=100)]
    while pages[-1]["next"] is not None:
        pages.append(get(api, path, since=pages[-1]["next"], limit=100))
    assert [len(p["messages"]) for p in pages] == [100, 100, 50]
    assert [p["next"] for p in pages] == [f"{epoch}:100", f"{epoch}:200", None]
    for page in pages:
        assert page["stream"] == f"ch.{channel}"
        assert page["epoch"] == epoch
        assert page["top"] == {"epoch": epoch, "offset": 250}
        assert page["complete"] is True
        assert page["lost"] is None
    every = [m for p in pages for m in p["messages"]]
    assert [m["offset"] for m in every] == list(range(1, 251))
    assert [m["data"] for m in every] == [{"n": i} for i in range(250)]
    assert all(isinstance(m["published_ms"], int) and m["published_ms"] > 0 for m in every)

    # caught up: nothing after the top; the default page (no since, no last) starts at 1
    assert get(api, path, since=f"{epoch}:250") == {
        "stream": f"ch.{channel}", "epoch": epoch, "top": {"epoch": epoch, "offset": 250},
        "messages": [], "next": None, "complete": True, "lost": None}
    first = get(api, path)
    assert offsets(first) == list(range(1, 101))
    assert first["next"] == f"{epoch}:100"
    assert first["complete"] is True


def test_last_n_messages(api: httpx.Client) -> None:
    user = f"team/{unique('last')}"  # user ids may hold '/'
    path = f"/v1/users/{user.replace('/', '%2F')}/messages"
    published = publish_many(api, {"user": user}, 30)
    epoch = published[0]["epoch"]

    last = get(api, path, last=5)
    assert last["stream"] == "user"
    assert offsets(last) == [26, 27, 28, 29, 30]
    assert (last["next"], last["complete"]) == (None, True)
    # more than the stream holds: from its first message, paged by limit
    more = get(api, path, last=1000, limit=20)
    assert offsets(more) == list(range(1, 21))
    assert (more["next"], more["complete"]) == (f"{epoch}:20", True)
    assert offsets(get(api, path, since=f"{epoch}:27")) == [28, 29, 30]


def test_top_of_each_kind_of_stream(api: httpx.Client) -> None:
    user, channel = unique("top"), unique("top")
    fresh = get(api, f"/v1/users/{user}/top")
    # never published to: it gets its epoch now, at offset 0, and keeps it
    assert fresh["stream"] == "user"
    assert fresh["offset"] == 0
    assert streams.EPOCH_RE.fullmatch(fresh["epoch"])
    assert get(api, f"/v1/users/{user}/top") == fresh
    published = publish_many(api, {"user": user}, 3)
    assert published[0]["epoch"] == fresh["epoch"]  # publishing continues that epoch
    assert get(api, f"/v1/users/{user}/top") == {**fresh, "offset": 3}

    publish_many(api, {"channel": channel}, 2)
    top = get(api, f"/v1/channels/{channel}/top")
    assert (top["stream"], top["offset"]) == (f"ch.{channel}", 2)
    # an empty page of a fresh stream is a position a client can resume from
    empty = get(api, f"/v1/channels/{unique('fresh')}/messages")
    assert (empty["top"]["offset"], empty["messages"], empty["next"], empty["complete"]) == (
        0, [], None, True)

    before = get(api, "/v1/broadcast/top")
    assert before["stream"] == "broadcast"
    api.post("/v1/publish", json={"broadcast": True, "data": "all"}).raise_for_status()
    after = get(api, "/v1/broadcast/top")
    assert after["offset"] == before["offset"] + 1
    page = get(api, "/v1/broadcast/messages", last=1)
    assert page["messages"][0]["data"] == "all"
    assert page["messages"][0]["offset"] == after["offset"]


def test_data_comes_back_as_published(api: httpx.Client) -> None:
    channel = unique("data")
    values: list[Any] = [None, 0, -7, 1.5, "héllo ✓", [1, [2, {"x": None}]], {"a": {"b": []}}]
    for value in values:
        api.post("/v1/publish", json={"channel": channel, "data": value}).raise_for_status()
    binary = msgpack.packb({"channel": channel, "data": {"raw": b"\x00\xff"}}, use_bin_type=True)
    api.post("/v1/publish", content=binary,
             headers={"Content-Type": "application/msgpack"}).raise_for_status()

    page = get(api, f"/v1/channels/{channel}/messages")
    data = [m["data"] for m in page["messages"]]
    assert data[: len(values)] == values
    assert data[-1] == {"raw": "AP8="}  # base64, as a gateway sends binary to JSON clients

    resp = api.get(f"/v1/channels/{channel}/messages", params={"last": 1},
                   headers={"Accept": "application/msgpack"})
    assert resp.headers["content-type"] == "application/msgpack"
    packed = msgpack.unpackb(resp.content)
    assert packed["messages"][0]["data"] == {"raw": b"\x00\xff"}  # binary stays binary


# -- lost history -----------------------------------------------------------------------------


def test_a_since_in_an_old_epoch_says_so_and_starts_at_the_new_epoch(
    api: httpx.Client, db: redis.Redis
) -> None:
    channel = unique("epoch")
    key = streams.channel_key(channel)
    path = f"/v1/channels/{channel}/messages"
    old = publish_many(api, {"channel": channel}, 5)[0]["epoch"]
    db.delete(KEYS.meta(key), KEYS.log(key))  # what a Redis restart without data does

    page = get(api, path, since=f"{old}:3")
    new = page["epoch"]
    assert new != old
    assert page["top"] == {"epoch": new, "offset": 0}
    assert (page["messages"], page["next"]) == ([], None)
    assert (page["complete"], page["lost"]) == (False, "epoch_changed")

    publish_many(api, {"channel": channel}, 3)
    page = get(api, path, since=f"{old}:3")
    assert (page["epoch"], offsets(page)) == (new, [1, 2, 3])
    assert (page["complete"], page["lost"], page["next"]) == (False, "epoch_changed", None)
    # a since above the top counts the same (DESIGN 7)
    above = get(api, path, since=f"{new}:99")
    assert (offsets(above), above["lost"]) == ([1, 2, 3], "epoch_changed")
    # and the new epoch's own positions are complete
    assert get(api, path, since=f"{new}:1")["complete"] is True


def test_a_trimmed_log_says_so_and_pages_from_the_first_message_kept(
    redis_server: RedisServer, logdir: Path
) -> None:
    router = start_router(redis_server, logdir, SWITCHBOARD_HISTORY_SIZE="10")
    try:
        with client_for(router) as http:
            published = publish_many(http, {"broadcast": True}, 400)
            epoch = published[0]["epoch"]
            path = "/v1/broadcast/messages"
            page = get(http, path, since=f"{epoch}:0", limit=1000)
            kept = offsets(page)
            # MAXLEN ~ trims whole stream nodes: at least 10 kept, the oldest ones gone
            assert kept == list(range(kept[0], 401))
            assert 1 < kept[0] <= 391
            assert (page["complete"], page["lost"], page["next"]) == (False, "trimmed", None)
            # a position inside what is kept is complete; one before it is not
            assert get(http, path, since=f"{epoch}:{kept[0]}")["complete"] is True
            assert get(http, path, since=f"{epoch}:{kept[0] - 2}")["lost"] == "trimmed"
            assert get(http, path, last=400)["lost"] == "trimmed"
            assert get(http, path, last=5)["complete"] is True
    finally:
        router.stop()


def test_an_expired_log_says_so_and_points_at_the_top(
    redis_server: RedisServer, logdir: Path
) -> None:
    router = start_router(redis_server, logdir, SWITCHBOARD_HISTORY_TTL="0.5")
    db = redis.Redis(port=redis_server.port)
    try:
        with client_for(router) as http:
            epoch = publish_many(http, {"user": "eve"}, 3)[0]["epoch"]
            wait_until(lambda: not db.exists(KEYS.log(streams.user_key("eve"))), 10,
                       "the log to expire")
            page = get(http, "/v1/users/eve/messages", since=f"{epoch}:1")
            assert page["top"] == {"epoch": epoch, "offset": 3}
            assert (page["messages"], page["next"]) == ([], None)
            assert (page["complete"], page["lost"]) == (False, "trimmed")
    finally:
        db.close()
        router.stop()


# -- bad input and outages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/broadcast/messages", {"since": "abc"}, "since"),
        ("/v1/broadcast/messages", {"since": "E1:"}, "since"),
        ("/v1/broadcast/messages", {"since": "E1:-1"}, "since"),
        ("/v1/broadcast/messages", {"since": "E-1:5"}, "since"),
        ("/v1/broadcast/messages", {"since": "x:E1:1:2"}, "since"),
        ("/v1/broadcast/messages", {"since": "E1:" + "9" * 19}, "since"),
        ("/v1/broadcast/messages", {"since": "broadcast:E1:3"}, "since"),
        ("/v1/broadcast/messages", {"since": "E1:3", "last": 2}, "last"),
        ("/v1/broadcast/messages", {"limit": 0}, "limit"),
        ("/v1/broadcast/messages", {"limit": 1001}, "limit"),
        ("/v1/broadcast/messages", {"limit": "ten"}, "limit"),
        ("/v1/broadcast/messages", {"last": 0}, "last"),
        ("/v1/channels/dots.not.allowed/messages", {}, "channel"),
        ("/v1/channels/dots.not.allowed/top", {}, "channel"),
        ("/v1/users/has%20space/messages", {}, "user"),
        ("/v1/users/a%2Cb/top", {}, "user"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    api: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    resp = api.get(path, params=params)
    assert resp.status_code == 422, resp.text
    error = resp.json()
    assert error["error"] == "invalid"
    assert error["field"] == field


def test_without_an_api_key_is_401(shared: tuple[RedisServer, Proc]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{shared[1].port}") as http:
        for path in ("/v1/broadcast/messages", "/v1/users/alice/top"):
            assert http.get(path).status_code == 401


def test_503_while_redis_is_down(redis_server: RedisServer, logdir: Path) -> None:
    router = start_router(redis_server, logdir)
    try:
        with client_for(router) as http:
            assert http.get("/v1/broadcast/top").status_code == 200
            redis_server.stop()
            for path in ("/v1/broadcast/top", "/v1/broadcast/messages",
                         "/v1/users/alice/messages", "/v1/channels/room/top"):
                resp = http.get(path)
                assert resp.status_code == 503, path
                assert resp.headers["retry-after"] == "1"
                assert resp.json()["error"] == "redis_unavailable"
            redis_server.start()
            wait_until(lambda: http.get("/v1/broadcast/top").status_code == 200, 15,
                       "history reads to work again")
        assert "Traceback" not in router.output()
    finally:
        router.stop()


# -- Redis Cluster ----------------------------------------------------------------------------


def test_history_on_a_redis_cluster(redis_cluster: LocalCluster, logdir: Path) -> None:
    router = start_router(redis_cluster, logdir)  # type: ignore[arg-type]
    rc = cluster_client(redis_cluster)
    try:
        with client_for(router) as http:
            channels = [f"room{i}" for i in range(6)]
            # the streams really are spread over the masters
            assert len({rc.get_node_from_key(KEYS.log(streams.channel_key(c))).name
                        for c in channels}) > 1
            for channel in channels:
                epoch = publish_many(http, {"channel": channel}, 150)[0]["epoch"]
                path = f"/v1/channels/{channel}/messages"
                first = get(http, path, since=f"{epoch}:0")
                second = get(http, path, since=first["next"])
                assert offsets(first) + offsets(second) == list(range(1, 151))
                assert second["next"] is None
                assert get(http, f"/v1/channels/{channel}/top")["offset"] == 150
                assert offsets(get(http, path, last=3)) == [148, 149, 150]

            key = streams.channel_key(channels[0])
            old = get(http, f"/v1/channels/{channels[0]}/top")["epoch"]
            rc.delete(KEYS.meta(key))
            rc.delete(KEYS.log(key))
            page = get(http, f"/v1/channels/{channels[0]}/messages", since=f"{old}:5")
            assert page["epoch"] != old
            assert (page["complete"], page["lost"], page["top"]["offset"]) == (
                False, "epoch_changed", 0)
            assert get(http, "/v1/users/nobody/top")["offset"] == 0
    finally:
        rc.close()
        router.stop()
