"""Time to resume with N buffered messages (default 1,000), against same-run baselines.

Starts its own redis-server and one gateway on loopback, then repeats:

1. a client connects, notes its session and cursor, disconnects;
2. N messages are published to its user stream while it is away;
3. it reconnects with session + cursor: **resume** is the time from opening the socket to
   having the welcome and all N replayed messages.

Baselines measured in the same run: **connect** (open socket to welcome, nothing to replay)
and **live** (N messages published in one batch to a connected client, publish to last
receive). Prints JSON. Usage: ``python -m loadtest.resume_time [--messages 1000] [--runs 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect

from switchboard.auth import mint
from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from tests.support import JWT_SECRET, start_gateway, start_redis


async def welcome_and(ws: Any, n: int) -> dict[str, Any]:
    welcome = json.loads(await ws.recv())
    for _ in range(n):
        json.loads(await ws.recv())
    return dict(welcome)


async def one_run(url: str, store: Store, user: str, n: int) -> dict[str, float]:
    token = mint(JWT_SECRET, user)
    started = time.perf_counter()
    async with ws_connect(f"{url}?token={token}", max_size=None) as ws:
        welcome = await welcome_and(ws, 0)
        connect_ms = (time.perf_counter() - started) * 1000
        # Baseline: the same volume delivered live to a connected client.
        t0 = time.perf_counter()
        await store.publish_many([(Target("u", user), {"i": i, "pad": "x" * 64}, None)
                                  for i in range(n)])
        for _ in range(n):
            await ws.recv()
        live_ms = (time.perf_counter() - t0) * 1000
        top = welcome["streams"]["user"]["offset"] + n
        cursor = f"user:{welcome['streams']['user']['epoch']}:{top}"
        session = welcome["session"]
    await store.publish_many([(Target("u", user), {"i": i, "pad": "x" * 64}, None)
                              for i in range(n)])
    started = time.perf_counter()
    async with ws_connect(f"{url}?token={token}&session={session}&cursor={cursor}",
                          max_size=None) as ws:
        again = await welcome_and(ws, n)
        resume_ms = (time.perf_counter() - started) * 1000
    assert again["recovered"] is True, again
    return {"connect_ms": connect_ms, "live_ms": live_ms, "resume_ms": resume_ms}


async def main_async(messages: int, runs: int) -> dict[str, Any]:
    redis = start_redis()
    logdir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    gateway = start_gateway(redis, logdir, SWITCHBOARD_REPLAY_LIMIT=str(max(1000, messages)))
    store = Store.open(RedisSettings(redis_url=redis.url, redis_timeout=5,
                                     history_size=messages * 2), "bench-resume")
    try:
        url = f"ws://127.0.0.1:{gateway.port}/ws"
        results = [await one_run(url, store, f"bench{r}", messages) for r in range(runs)]
    finally:
        await store.aclose()
        gateway.stop()
        redis.stop()

    return summary(messages, runs, results)


def summary(messages: int, runs: int, results: list[dict[str, float]],
            **extra: Any) -> dict[str, Any]:
    """Medians of :func:`one_run` results (also the bench's ``resume`` on a cluster)."""
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 2)

    return {
        "scenario": "resume",
        **extra,
        "messages": messages,
        "runs": runs,
        "resume_ms_median": med("resume_ms"),
        "resume_ms_max": round(max(r["resume_ms"] for r in results), 2),
        "baseline_connect_ms_median": med("connect_ms"),
        "baseline_live_ms_median": med("live_ms"),
        "resume_over_live": round(med("resume_ms") / med("live_ms"), 2),
        "note": "resume = open socket to last replayed message; live = same volume published "
                "to a connected client; medians over runs, same machine, same run",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.messages, args.runs)), indent=2))


if __name__ == "__main__":
    main()
