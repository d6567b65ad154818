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

from switchboard.redisurl import ClusterUrl, parse_cluster


def node_options(url: ClusterUrl) -> dict[str, Any]:
    """Credentials and TLS options of the URL, as RedisCluster's keyword arguments."""
    from redis.connection import parse_url

    options: dict[str, Any] = parse_url(url.node_template)  # type: ignore[no-untyped-call]
    kwargs: dict[str, Any] = {}
    for name in ("username", "password"):
        if options.get(name):
            kwargs[name] = options[name]
    if "SSL" in str(options.get("connection_class") or ""):
        kwargs["ssl"] = True
        for name, value in options.items():
            if name.startswith("ssl_"):
                kwargs[name] = value
    return kwargs


def connect_cluster(url: str, timeout: float, *, client_name: str | None = None,
                    max_connections: int = 64) -> tuple[RedisCluster, ClusterUrl]:
    """A cluster client that fails fast (callers answer 503 rather than hang); ValueError for a
    URL it cannot use. Nothing is connected until the first command."""
    parsed = parse_cluster(url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max_connections,
        client_name=client_name,
        # A few quick retries ride out a failover's MOVED/ClusterDown window without making a
        # request wait much longer than `timeout` for a slot nobody owns.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
        **node_options(parsed),
    )
    return client, parsed
