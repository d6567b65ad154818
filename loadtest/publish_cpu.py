"""CPU per publish on the router's Redis path, without HTTP: ``python -m loadtest.publish_cpu``.

32 concurrent publishers call :meth:`switchboard.store.Store.publish` over the pipelined
connection (what ``POST /v1/publish`` does after validation) against a private redis-server;
prints this process's CPU per publish. The HTTP part of the router is measured by
``python -m loadtest.bench unicast``; this isolates the publish client, whose per-request
figure is steadier than the end-to-end one on a shared machine. To compare two commits, run it
from a worktree of each with ``PYTHONPATH`` set to that worktree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import uvloop

from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from tests.support import start_redis

CONCURRENCY = 32


async def measure(url: str, messages: int) -> dict[str, float]:
    store = Store.open(RedisSettings(redis_url=url, redis_timeout=5), "bench-publish-cpu")
    target = Target("u", "nobody")  # routed to no gateway: the publish path alone
    try:
        await store.publish(target, 0)  # connection open, scripts loaded

        async def publisher() -> None:
            for i in range(messages // CONCURRENCY):
                await store.publish(target, {"i": i, "pad": "x" * 64})

        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await store.aclose()
    done = messages // CONCURRENCY * CONCURRENCY
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"publishes": done, "cpu_us_per_publish": round(1e6 * cpu / done, 2),
            "publishes_per_s": round(done / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis = start_redis()
    try:
        runs = [uvloop.run(measure(redis.url, args.messages)) for _ in range(args.runs)]
    finally:
        redis.stop()
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
