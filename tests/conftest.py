from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


# A real 3-master, 3-replica Redis Cluster (tests/cluster_support.py), for any test that asks.
from tests.cluster_support import redis_cluster  # noqa: E402, F401
