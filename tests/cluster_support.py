"""Test support for a real local Redis Cluster (:mod:`switchboard.localcluster`).

The ``redis_cluster`` fixture (3 masters, 3 replicas, 1 s node timeout, so a failover takes a
few seconds) is registered in tests/conftest.py: a test just takes it as a parameter.

Every node is a real ``redis-server`` on a free loopback port, stopped by PID when the test
ends, its directory removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from switchboard.clusterclient import tag_for_slot
from switchboard.localcluster import LocalCluster, Node, start_cluster
from switchboard.redisurl import parse_cluster

NODE_TIMEOUT_MS = 1000
START_TIMEOUT = 60.0  # generous: the machine running the tests may be small and busy


@pytest.fixture
def redis_cluster() -> Iterator[LocalCluster]:
    cluster = start_cluster(masters=3, replicas_per_master=1, node_timeout_ms=NODE_TIMEOUT_MS,
                            start_timeout=START_TIMEOUT)
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_client(cluster: LocalCluster, **kwargs: Any) -> RedisCluster:
    """A redis-py cluster client seeded from the cluster's URL, as a gateway would be."""
    seeds = [ClusterNode(host, port) for host, port in parse_cluster(cluster.url).seeds]
    return RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=5.0,
                        **kwargs)


def key_in_slot(slot: int, name: str = "k") -> str:
    """A key that Redis Cluster puts in ``slot``."""
    return f"{name}{{{tag_for_slot(slot)}}}"


def user_on(cluster: LocalCluster, stem: str, where: Callable[[Node], bool]) -> str:
    """A user name (``stem`` and a number) whose slot's master passes ``where``."""
    return next(u for u in (f"{stem}{i}" for i in range(1000))
                if where(cluster.master_of_slot(LocalCluster.slot_of(f"u:{u}"))))
