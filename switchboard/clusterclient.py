"""Opening redis-py's async Redis Cluster client from a ``redis+cluster://`` URL.

redis-py discovers the slot map from the seeds, follows MOVED/ASK and re-reads the map after a
failover; we use it for everything but the publish hot path (:mod:`switchboard.clusterpipe`)
and the gateway's sharded subscriptions (:mod:`gateway.sharded`).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from switchboard.redisurl import ClusterUrl, parse_cluster


def node_options(url: ClusterUrl) -> dict[str, Any]:
    """The credentials, TLS and other options of a cluster URL as the keyword arguments of
    redis-py's RedisCluster, async or not (it takes no URL with several hosts)."""
    from redis.connection import SSLConnection, parse_url

    options: dict[str, Any] = parse_url(url.node_template)  # type: ignore[no-untyped-call]
    for where in ("host", "port", "db"):
        options.pop(where, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


def connect_cluster(url: str, timeout: float, *, client_name: str | None = None,
                    max_connections: int = 64) -> tuple[RedisCluster, ClusterUrl]:
    """A cluster client that fails fast (callers answer 503 rather than hang); ValueError for a
    URL it cannot use. Nothing is connected until the first command."""
    parsed = parse_cluster(url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
        **{**node_options(parsed),  # ours win over the URL's: fail fast, one client name
           "socket_timeout": timeout, "socket_connect_timeout": timeout,
           "max_connections": max_connections, "client_name": client_name,
           # A few quick retries ride out a failover's MOVED/ClusterDown window without
           # making a request wait much longer than `timeout` for a slot nobody owns.
           "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3)},
    )
    return client, parsed


# Hash tags by slot, found by counting up ("0", "1", ...) as far as the slots asked for so far
# need: a gateway asks for a few (one canary per master), a test for thousands; every slot
# has one below 110,000.
_tags: dict[int, str] = {}
_counted = 0


def tag_for_slot(slot: int) -> str:
    """The smallest decimal string whose hash slot is ``slot`` (``{tag}`` in a name puts it
    there)."""
    global _counted
    if not 0 <= slot < REDIS_CLUSTER_HASH_SLOTS:
        raise ValueError(f"a slot is 0..{REDIS_CLUSTER_HASH_SLOTS - 1}, not {slot}")
    while slot not in _tags:
        tag = str(_counted)
        _counted += 1
        _tags.setdefault(key_slot(tag.encode()), tag)
    return _tags[slot]
