"""``--redis-shards``: option parsing and the JSON's record of which Redis was used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from loadtest.bench import cluster
from loadtest.bench.__main__ import _parser, redis_summary
from loadtest.bench.cluster import BenchCluster, Usage
from tests.support import ROOT, RedisServer


def test_shards_default_to_one_redis_server() -> None:
    assert _parser().parse_args(["idle"]).redis_shards == 0
    assert _parser().parse_args(["idle", "--redis-shards", "3"]).redis_shards == 3
    assert redis_summary(0) == "single"
    assert redis_summary(4) == {"shards": 4, "nodes": 8}


@pytest.mark.parametrize("bad", ["1", "2", "-1", "three"])
def test_fewer_than_three_shards_is_refused_before_anything_starts(bad: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", "idle", "--redis-shards",
                           bad], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--redis-shards" in proc.stderr


def test_start_cluster_refuses_one_or_two_shards() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        cluster.start_cluster(redis_shards=2)


def test_single_redis_has_no_per_node_cpu() -> None:
    # nothing is started: the fields only read what the dataclass holds
    redis = cast(RedisServer, SimpleNamespace(proc=SimpleNamespace(pid=os.getpid())))
    bench = BenchCluster(redis, Path("/nonexistent"))
    assert bench.redis_pids == [os.getpid()]
    assert bench.redis_info == "single"
    assert bench.redis_node_usage() is None
    assert bench.redis_node_cpu(Usage.of([os.getpid()])) is None
