"""Scenario ``fanout``: broadcast to N connections, Switchboard vs the baseline.

Two phases per server, the same client fleet and payload for both:

- **fixed**: broadcasts at a fixed rate for a fixed time (open loop);
- **max**: rounds of ``burst`` broadcasts published in one pipeline, each round waited for
  until every connection has every message, for the given time: the most deliveries/s the
  server (sharing two cores with the clients) sustains without losing any.

For each: deliveries/s (counted by the clients), server CPU-seconds per 100k deliveries (utime
+ stime deltas of every server process from /proc), and publish-to-receive latency measured on
a sample of connections (publish time in the payload; wall clock, same machine).

Switchboard messages are published with :meth:`switchboard.store.Store.publish` /
``publish_many`` (the publish Lua script, exactly what the router runs, minus HTTP), so the
figure is about the gateways; the baseline gets a plain Redis PUBLISH of the finished frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from loadtest.bench import common, profile
from loadtest.bench.cluster import BASELINE_CHANNEL, BenchCluster, Usage, start_cluster
from loadtest.bench.common import Target
from loadtest.bench.stats import ratio
from loadtest.bench.workers import Pool, workers_for
from switchboard.config import RedisSettings
from switchboard.store import Store
from switchboard.store import Target as StreamTarget

TARGET_RATIO = 3.0  # the issue: deliveries per gateway CPU-second >= 3x the baseline's
BROADCAST = StreamTarget("b")

PublishOne = Callable[[int, float], Awaitable[Any]]
PublishMany = Callable[[list[int]], Awaitable[Any]]


def _figures(deliveries: int, seconds: float, after: Usage, before: Usage) -> dict[str, Any]:
    cpu, kernel = after.cpu_since(before), after.system_since(before)
    return {
        "deliveries": deliveries,
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(deliveries / seconds) if seconds else None,
        "server_cpu_s": round(cpu, 3),
        # system time: mostly send() on loopback, which the baseline pays per write as well
        "server_kernel_cpu_s": round(kernel, 3),
        "user_cpu_s_per_100k_deliveries": (round((cpu - kernel) / deliveries * 100_000, 4)
                                           if deliveries else None),
        "cpu_s_per_100k_deliveries": round(cpu / deliveries * 100_000, 4) if deliveries else None,
        "deliveries_per_cpu_s": round(deliveries / cpu) if cpu else None,
    }


def _node_cpu(out: dict[str, Any], redis: BenchCluster | None, before: Usage | None) -> None:
    """Cluster mode: each Redis node's CPU-seconds over the phase, as ``redis_node_cpu_s``."""
    if redis is not None and (cpu := redis.redis_node_cpu(before)) is not None:
        out["redis_node_cpu_s"] = cpu


async def fixed_phase(pool: Pool, target: Target, held: int, rate: float, duration: float,
                      publish_one: PublishOne,
                      redis: BenchCluster | None = None) -> dict[str, Any]:
    redis_before = redis.redis_node_usage() if redis is not None else None
    before, started = Usage.of(target.pids), time.perf_counter()
    sent = await common.paced(rate, duration, publish_one)
    await common.wait_messages(pool, held * sent["sent"], limit_s=30)
    seconds = time.perf_counter() - started
    after = Usage.of(target.pids)
    stats = await common.collect(pool)
    out = {"rate": rate, "published": sent, **_figures(stats["messages"], seconds, after, before),
           "expected": held * sent["sent"], "latency": stats["latency"],
           "errors": stats["errors"], "closes": stats["closes"]}
    _node_cpu(out, redis, redis_before)
    return out


async def max_phase(pool: Pool, target: Target, held: int, duration: float, burst: int,
                    publish_many: PublishMany, profile_out: Path | None,
                    redis: BenchCluster | None = None) -> dict[str, Any]:
    spy = profile.start(target.pids[0], duration, profile_out) if profile_out else None
    redis_before = redis.redis_node_usage() if redis is not None else None
    before, started = Usage.of(target.pids), time.perf_counter()
    seq, expected, complete = 0, 0, True
    while time.perf_counter() - started < duration:
        await publish_many(list(range(seq, seq + burst)))
        seq += burst
        expected += held * burst
        got, _ = await common.wait_messages(pool, expected, limit_s=20)
        if got < expected:
            complete = False  # something was lost or a connection dropped: stop, report it
            break
    seconds = time.perf_counter() - started
    after = Usage.of(target.pids)
    stats = await common.collect(pool)
    out = {"burst": burst, "published": seq, **_figures(stats["messages"], seconds, after, before),
           "expected": expected, "complete": complete, "latency": stats["latency"],
           "errors": stats["errors"], "closes": stats["closes"]}
    _node_cpu(out, redis, redis_before)
    if profile_out is not None:
        out["profile"] = profile.finish(spy, profile_out)
    return out


async def measure(pool: Pool, target: Target, n: int, *, rate: float, duration: float,
                  burst: int, sample_conns: int, publish_one: PublishOne,
                  publish_many: PublishMany, profile_out: Path | None,
                  redis: BenchCluster | None = None) -> dict[str, Any]:
    conn = await common.connect(pool, target, [f"fan{i}" for i in range(n)],
                                parse_every=max(1, n // max(1, sample_conns)))
    await asyncio.sleep(1.0)
    held = (await common.collect(pool))["open"]  # also resets the counters
    fixed = await fixed_phase(pool, target, held, rate, duration, publish_one, redis)
    await asyncio.sleep(0.5)
    await common.collect(pool)
    peak = await max_phase(pool, target, held, duration, burst, publish_many, profile_out,
                           redis)
    await common.disconnect(pool)
    return {"connections": held, "connect": conn, "fixed": fixed, "max": peak}


async def run(connections: int = 10_000, rate: float = 2.0, duration: float = 10.0,
              burst: int = 20, pad: int = 64, sample_conns: int = 200, workers: int = 0,
              gateways: int = 2, profile_dir: str | None = None,
              redis_shards: int = 0) -> dict[str, Any]:
    cluster = start_cluster(gateways=gateways, baseline=True, redis_shards=redis_shards,
                            SWITCHBOARD_REBALANCE="0")
    pool = Pool(workers or workers_for(connections, 2))
    # Switchboard's Redis (a cluster with --redis-shards: the cluster store's SPUBLISH script)
    store = Store.open(RedisSettings(redis_url=cluster.redis_url, redis_timeout=10),
                       "bench-fanout")
    # the baseline's own plain redis-server, in both modes
    plain = aioredis.Redis.from_url(cluster.redis.url)

    async def sb_one(seq: int, ts: float) -> None:
        await store.publish(BROADCAST, common.payload(seq, pad, ts))

    async def sb_many(seqs: list[int]) -> None:
        await store.publish_many([(BROADCAST, common.payload(s, pad), None) for s in seqs])

    async def base_one(seq: int, ts: float) -> None:
        await plain.publish(BASELINE_CHANNEL, common.baseline_frame(seq, pad, ts))

    async def base_many(seqs: list[int]) -> None:
        pipe = plain.pipeline(transaction=False)
        for s in seqs:
            pipe.publish(BASELINE_CHANNEL, common.baseline_frame(s, pad))
        await pipe.execute()

    spy_file = Path(profile_dir) / "fanout-gateway.txt" if profile_dir else None
    try:
        sb_target, base_target = common.targets(cluster)
        assert base_target is not None
        sb = await measure(pool, sb_target, connections, rate=rate, duration=duration,
                           burst=burst, sample_conns=sample_conns, publish_one=sb_one,
                           publish_many=sb_many, profile_out=spy_file, redis=cluster)
        base = await measure(pool, base_target, connections, rate=rate, duration=duration,
                             burst=burst, sample_conns=sample_conns, publish_one=base_one,
                             publish_many=base_many, profile_out=None)
    finally:
        await store.aclose()
        await plain.aclose()
        pool.close()
        cluster.stop()

    def per_cpu(side: dict[str, Any], phase: str) -> float | None:
        value: float | None = side[phase]["deliveries_per_cpu_s"]
        return value

    ratios = {phase: ratio(per_cpu(sb, phase), per_cpu(base, phase))
              for phase in ("fixed", "max")}
    # the same ratio over user-space CPU only: what the gateway's own code costs per delivery
    user_ratios = {phase: ratio(base[phase]["user_cpu_s_per_100k_deliveries"],
                                sb[phase]["user_cpu_s_per_100k_deliveries"])
                   for phase in ("fixed", "max")}
    return {
        "scenario": "fanout",
        "redis": cluster.redis_info,
        "connections": connections,
        "gateways": gateways,
        "publish_path": "switchboard: Store.publish/publish_many (the router's Lua script, "
                        "no HTTP); baseline: Redis PUBLISH of the finished JSON frame",
        "switchboard": sb,
        "baseline": base,
        "deliveries_per_cpu_s_vs_baseline": ratios,
        "user_space_deliveries_per_cpu_s_vs_baseline": user_ratios,
        "targets": {
            f"deliveries per gateway CPU-s >= {TARGET_RATIO}x baseline (max)":
                ratios["max"] is not None and ratios["max"] >= TARGET_RATIO,
            f"deliveries per gateway CPU-s >= {TARGET_RATIO}x baseline (fixed)":
                ratios["fixed"] is not None and ratios["fixed"] >= TARGET_RATIO,
            "no loss (max phase complete)": bool(sb["max"]["complete"]),
        },
    }
