"""What the webhook dispatcher's look at every partition costs on a Redis Cluster:
``python -m loadtest.webhook_look``.

On a Redis Cluster there is a webhook partition per hash slot, 16,384 of them, and the
dispatcher looks at each one (``PEEK``: outbox length, earliest due, lost count) every
``FULL_LOOK_INTERVAL`` seconds (switchboard/webhooks/dispatcher.py). It does so over its
pipelined connections, one write per master. The baseline, measured in the same run on the
same private cluster, is the same 16,384 calls through redis-py's cluster pipeline. Prints,
per full look and for each way, this process's CPU, the wall time and the masters' CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from redis.asyncio.cluster import RedisCluster

from loadtest.publish_cpu import redis_cpu
from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.localcluster import start_cluster

KEYS = wh.WebhookKeys(cluster=True)


async def pipelined_look(peeker: ClusterPipelined) -> list[Any]:
    return await peeker.run_script_many(
        wh.PEEK, [(KEYS.part_keys(p), []) for p in range(KEYS.partitions)],
        raise_on_error=False)


async def redis_py_look(client: RedisCluster) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for p in range(KEYS.partitions):
        pipe.eval(wh.PEEK.source, 3, *KEYS.part_keys(p))
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


async def timed(look: Callable[[], Awaitable[list[Any]]], looks: int,
                masters: list[tuple[str, int]]) -> dict[str, float]:
    assert len(await look()) == KEYS.partitions  # connections open, scripts loaded
    redis_before = redis_cpu(masters)
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(looks):
        await look()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    redis_after = redis_cpu(masters)
    return {"client_cpu_ms_per_look": round(1000 * cpu / looks, 1),
            "wall_ms_per_look": round(1000 * wall / looks, 1),
            "redis_cpu_ms_per_look": round(1000 * sum(
                redis_after[n] - redis_before[n] for n in redis_after) / looks, 1)}


async def measure(url: str, masters: list[tuple[str, int]], looks: int) -> dict[str, Any]:
    client, parsed = connect_cluster(url, 10.0)
    peeker = ClusterPipelined(client, parsed, 10.0, client_name="bench-look",
                              scripts=[wh.PEEK])
    try:
        ours = await timed(lambda: pipelined_look(peeker), looks, masters)
        base = await timed(lambda: redis_py_look(client), looks, masters)
    finally:
        peeker.close()
        await client.aclose()
    return {"pipelined": ours, "redis_py_pipeline": base,
            "client_cpu_ratio": round(ours["client_cpu_ms_per_look"]
                                      / base["client_cpu_ms_per_look"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3, help="masters of the cluster")
    parser.add_argument("--looks", type=int, default=5, help="full looks per way and run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cluster = start_cluster(args.shards, 0)
    try:
        masters = [(n.host, n.port) for n in cluster.masters()]
        runs = [uvloop.run(measure(cluster.url, masters, args.looks))
                for _ in range(args.runs)]
    finally:
        cluster.stop()
    print(json.dumps({"shards": args.shards, "partitions": KEYS.partitions,
                      "looks": args.looks, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
