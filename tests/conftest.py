from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.localcluster import LocalCluster
from tests.relay import Relay
from tests.support import RedisServer, start_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    """A TCP relay in front of redis_server that a test can hold, release or cut."""
    r = Relay(redis_server.port)
    r.start()
    try:
        yield r
    finally:
        r.close()


# A real 3-master, 3-replica Redis Cluster (tests/cluster_support.py), for any test that asks.
from tests.cluster_support import redis_cluster  # noqa: E402, F401


@pytest.fixture(params=["one_node", "redis_cluster"])
def any_redis(request: pytest.FixtureRequest) -> RedisServer | LocalCluster:
    """The test runs twice: on one redis-server and on a Redis Cluster (both started real)."""
    name = "redis_server" if request.param == "one_node" else "redis_cluster"
    backend: RedisServer | LocalCluster = request.getfixturevalue(name)
    return backend
