"""Scenario ``idle``: memory per held WebSocket connection, Switchboard vs the baseline.

RSS of every server process is read from /proc before the fleet connects and again after it
has been held for a few seconds; (after - before) / connections is what one idle connection
costs. Both measurements use the same client, the same number of connections and distinct
users, one after the other in the same run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loadtest.bench import common
from loadtest.bench.cluster import Usage, start_cluster
from loadtest.bench.common import Target
from loadtest.bench.stats import ratio
from loadtest.bench.workers import Pool, workers_for

TARGET_KIB = 8.0  # the ceiling per WebSocket connection


async def measure(pool: Pool, target: Target, n: int, settle: float) -> dict[str, Any]:
    before = Usage.of(target.pids)
    conn = await common.connect(pool, target, [f"idle{i}" for i in range(n)])
    await asyncio.sleep(settle)  # let late allocations (registry writes, buffers) land
    after = Usage.of(target.pids)
    held = (await common.collect(pool))["open"]
    await common.disconnect(pool)
    grown = after.rss_since(before)
    return {
        "connections": held,
        "connect": conn,
        "rss_before_kib": sum(before.rss_kib.values()),
        "rss_after_kib": sum(after.rss_kib.values()),
        "kib_per_connection": round(grown / held, 2) if held else None,
        "processes": len(target.pids),
    }


async def run(connections: int = 10_000, settle: float = 3.0, workers: int = 0,
              gateways: int = 2, redis_shards: int = 0) -> dict[str, Any]:
    # no rebalancing: moving clients mid-measurement would change what is held
    cluster = start_cluster(gateways=gateways, baseline=True, redis_shards=redis_shards,
                            SWITCHBOARD_REBALANCE="0")
    pool = Pool(workers or workers_for(connections, 2))
    try:
        sb_target, base_target = common.targets(cluster)
        assert base_target is not None
        sb = await measure(pool, sb_target, connections, settle)
        base = await measure(pool, base_target, connections, settle)
    finally:
        pool.close()
        cluster.stop()
    sb_kib, base_kib = sb["kib_per_connection"], base["kib_per_connection"]
    return {
        "scenario": "idle",
        "redis": cluster.redis_info,
        "switchboard": sb,
        "baseline": base,
        "ratio_vs_baseline": ratio(sb_kib, base_kib),
        "targets": {
            f"kib_per_connection <= {TARGET_KIB}": sb_kib is not None and sb_kib <= TARGET_KIB,
            "<= half the baseline": (sb_kib is not None and base_kib is not None
                                     and sb_kib <= base_kib / 2),
        },
        "note": "RSS growth of all gateway processes (or the one baseline process) divided by "
                "connections held; distinct users, JSON subprotocol",
    }
