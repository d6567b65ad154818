"""Scenario ``storm``: SIGKILL one of two gateways and watch its clients come back.

``connections`` clients (distinct users) connect to two gateways sharing one port; the
kernel splits them about evenly, so with the default 10,000 the victim holds about 5,000.
Broadcasts are published at a steady rate throughout. One gateway is SIGKILLed; its clients
see their sockets die, back off with full jitter (base 0.5 s, cap 20 s, honouring
Retry-After) and reconnect to the same port, where only the survivor listens now, with
their ``session`` and per-stream ``cursor``. Measured:

- time from the kill until every dropped client has its resume ``welcome`` (and the median);
- the peak accept rate on the survivor, counted client-side (101 answers per 100 ms bucket);
- messages lost: once publishing stops, every client must hold every broadcast offset above
  its first position exactly once (``lost`` and ``duplicates`` must both be 0);
- ``replayed``: messages published while a client was away and delivered by the resume,
  i.e. what a client of the baseline (which has no resume) would have lost.

The baseline cannot take part: one process, no second server to fail over to, no replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.bench import common, profile
from loadtest.bench.cluster import start_cluster
from loadtest.bench.stats import peak_rate
from loadtest.bench.workers import Pool, workers_for
from switchboard.config import RedisSettings
from switchboard.store import Store
from switchboard.store import Target as StreamTarget

BROADCAST = StreamTarget("b")


class Publisher:
    """Broadcasts at a steady rate until stopped; remembers the last offset it got back."""

    def __init__(self, store: Store, rate: float, pad: int) -> None:
        self.store, self.rate, self.pad = store, rate, pad
        self.top = 0
        self.sent = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def finish(self) -> None:
        """Stop, and wait for the publish in flight: ``top`` is then final."""
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def close(self) -> None:
        """Stop, waiting a bounded time (a scenario that failed midway cleans up)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=10)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not self._stop.is_set():
            try:
                published = await self.store.publish(BROADCAST, common.payload(self.sent,
                                                                               self.pad))
                self.top = max(self.top, published.offset)
            except Exception:  # Redis hiccup: counted, and the audit will show any effect
                self.failed += 1
            self.sent += 1
            delay = start + self.sent / self.rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):  # the usual case: time to publish
                    await asyncio.wait_for(self._stop.wait(), delay)


def audit_totals(audits: list[dict[str, Any]]) -> Counter[str]:
    """The workers' audits summed (lost, duplicates, behind, replayed...)."""
    totals: Counter[str] = Counter()
    for a in audits:
        totals.update({k: v for k, v in a.items() if isinstance(v, int)})
    return totals


async def fleet_report(pool: Pool, since: float) -> dict[str, Any]:
    parts = await pool.call_all("storm_report", since=since)
    errors: Counter[str] = Counter()
    gateways: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
        gateways.update(p["gateways"])
    return {
        "lost": sum(p["lost"] for p in parts),
        "waiting": sum(p["waiting"] for p in parts),
        "accepts": [t for p in parts for t in p["accepts"]],
        "resumed": [t for p in parts for t in p["resumed"]],
        "unrecovered": sum(p["unrecovered"] for p in parts),
        "errors": dict(errors),
        "gateways": dict(gateways),
    }


async def run(connections: int = 10_000, rate: float = 1.0, lead: float = 3.0,
              tail: float = 3.0, give_up_s: float = 90.0, pad: int = 64,
              workers: int = 0, profile_dir: str | None = None,
              profile_seconds: float = 8.0, redis_shards: int = 0) -> dict[str, Any]:
    spy_file = Path(profile_dir) / "storm-survivor.txt" if profile_dir else None
    profiled: dict[str, Any] | None = None
    # no rebalancing: it would move clients before the kill, muddying who was dropped
    cluster = start_cluster(gateways=2, baseline=False, redis_shards=redis_shards,
                            SWITCHBOARD_REBALANCE="0")
    pool = Pool(workers or workers_for(connections, 2))
    store = Store.open(RedisSettings(redis_url=cluster.redis_url, redis_timeout=10),
                       "bench-storm")
    publisher = Publisher(store, rate, pad)
    try:
        sb, _ = common.targets(cluster)
        conn = await common.connect(pool, sb, [f"storm{i}" for i in range(connections)],
                                    track=True)
        victim_id = cluster.gateway_ids[0]
        victim = cluster.gateways[0]
        held = conn["gateways"].get(victim_id, 0)
        await pool.call_all("storm_mode", on=True)
        publisher.start()
        await asyncio.sleep(lead)
        survivor = cluster.gateways[1].pid
        spy = profile.start(survivor, profile_seconds, spy_file) if spy_file else None
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)  # a process we started, by PID
        deadline = time.monotonic() + give_up_s
        report = await fleet_report(pool, killed_at)
        while time.monotonic() < deadline:
            report = await fleet_report(pool, killed_at)
            if report["lost"] >= held and report["waiting"] == 0:
                break
            await asyncio.sleep(0.2)
        resumed_by = time.time()
        await asyncio.sleep(tail)  # keep publishing to the resumed clients for a while
        await publisher.finish()
        top = publisher.top
        audits = await pool.call_all("audit", stream="broadcast", top=top, wait=30.0)
        final = await fleet_report(pool, killed_at)
        if spy_file is not None:
            profiled = profile.finish(spy, spy_file)
    finally:
        await publisher.close()
        await store.aclose()
        pool.close()
        cluster.stop()
    totals = audit_totals(audits)
    resumed = sorted(t - killed_at for t in final["resumed"])
    accepts = [t for t in final["accepts"] if t >= killed_at]
    peak, in_bucket = peak_rate(accepts, 0.1)
    lost_msgs = totals["lost"]
    return {
        "scenario": "storm",
        "redis": cluster.redis_info,
        "connections": conn["ok"],
        "connect": conn,
        "killed_gateway_held": held,
        "dropped_clients": final["lost"],
        "resumed_clients": len(resumed),
        "still_waiting": final["waiting"],
        "all_resumed_s": round(resumed[-1], 3) if resumed else None,
        "median_resume_s": round(statistics.median(resumed), 3) if resumed else None,
        "gave_up_waiting": final["waiting"] > 0 or resumed_by > killed_at + give_up_s,
        "peak_accepts_per_s": round(peak, 1),
        "peak_bucket": {"ms": 100, "accepts": in_bucket},
        "publish_rate": rate,
        "published": publisher.sent,
        "publish_failed": publisher.failed,
        "final_offset": top,
        "messages_lost": lost_msgs,
        "duplicates": totals["duplicates"],
        "clients_behind": totals["behind"],
        "unrecovered_resumes": final["unrecovered"],
        "replayed_by_resume": totals["replayed"],
        "connect_errors": final["errors"],
        **({"survivor_profile": profiled} if profiled else {}),
        "targets": {"zero loss": lost_msgs == 0 and totals["duplicates"] == 0
                    and totals["behind"] == 0 and final["waiting"] == 0},
        "note": "times are from the SIGKILL; accepts counted client-side per 100 ms bucket; "
                "replayed_by_resume = messages a client without resume (the baseline) would "
                "have lost",
    }
