"""CPU per publish on the router's Redis path, without HTTP: ``python -m loadtest.publish_cpu``.

32 concurrent publishers call :meth:`switchboard.store.Store.publish` over the pipelined
connection (what ``POST /v1/publish`` does after validation) against a private redis-server,
or with ``--shards N`` a private Redis Cluster of N masters and N replicas (the cluster
store: one pipelined connection per master); prints this process's CPU per publish, the
publishes per second and each Redis node's CPU per publish. Unicasts go to ``--users``
users (spread over the slots, so a cluster spreads them over its masters).

The HTTP part of the router is measured by ``python -m loadtest.bench unicast``; this
isolates the publish client, whose per-request figure is steadier than the end-to-end one on a
shared machine. To compare two commits, run it from a worktree of each with ``PYTHONPATH`` set
to that worktree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from typing import Any

import redis
import uvloop

from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from tests.support import start_redis


def redis_cpu(nodes: list[tuple[str, int]]) -> dict[str, float]:
    """Seconds of CPU each Redis node has used so far."""
    out = {}
    for host, port in nodes:
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        out[f"{host}:{port}"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


async def measure(url: str, nodes: list[tuple[str, int]], messages: int,
                  users: int, concurrency: int = 32) -> dict[str, Any]:
    store = Store.open(RedisSettings(redis_url=url, redis_timeout=5), "bench-publish-cpu")
    # routed to no gateway: the publish path alone
    targets = [Target("u", f"nobody{i}") for i in range(users)]
    try:
        for target in targets:  # connections open, scripts loaded
            await store.publish(target, 0)

        async def publisher(k: int) -> None:
            for i in range(messages // concurrency):
                await store.publish(targets[(k + i) % users], {"i": i, "pad": "x" * 64})

        redis_before = redis_cpu(nodes)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(publisher(k) for k in range(concurrency)))
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        redis_after = redis_cpu(nodes)
    finally:
        await store.aclose()
    done = messages // concurrency * concurrency
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_node = {n: round(1e6 * (redis_after[n] - redis_before[n]) / done, 2)
                for n in redis_before}
    return {"publishes": done, "cpu_us_per_publish": round(1e6 * cpu / done, 2),
            "publishes_per_s": round(done / seconds), "redis_cpu_us_per_publish": per_node}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shards", type=int, default=0,
                        help="0: one redis-server; N >= 3: a cluster of N masters, N replicas")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32,
                        help="publishers in flight at once (a router under load has many)")
    parser.add_argument("--pin", action="store_true",
                        help="this process on CPU 0, every Redis process on CPU 1: six Redis "
                             "processes and the client on two shared cores otherwise take "
                             "turns on the same core, and the client's CPU per publish then "
                             "measures the contention more than the client")
    args = parser.parse_args()
    if args.shards:
        from switchboard.localcluster import start_cluster

        cluster = start_cluster(args.shards, 1)
        url, stop = cluster.url, cluster.stop
        nodes = [(n.host, n.port) for n in cluster.nodes]
        pids = [n.pid for n in cluster.nodes]
    else:
        server = start_redis()
        url, stop = server.url, server.stop
        nodes = [("127.0.0.1", server.port)]
        pids = [server.proc.pid]
    if args.pin:
        os.sched_setaffinity(0, {0})
        for pid in pids:
            os.sched_setaffinity(pid, {1})
    try:
        runs = [uvloop.run(measure(url, nodes, args.messages, args.users, args.concurrency))
                for _ in range(args.runs)]
    finally:
        stop()
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
