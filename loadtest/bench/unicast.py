"""Scenario ``unicast``: router publish -> one user's connection, at fixed and maximum rates.

``users`` connections, one per distinct user, are spread over the gateways. Then:

- **fixed rates** (e.g. 500, 1000, 2000/s): open-loop ``POST /v1/publish`` to user
  ``i % users``, each message stamped with its *scheduled* send time; p50/p99 of
  publish-to-receive over every delivery, plus the HTTP answer time;
- **direct**: the same fixed rates through :meth:`switchboard.store.Store.publish` over the
  router's pipelined publish connection (the router without HTTP), to separate the router's
  share of the latency;
- **max /v1/publish**: ``concurrency`` keep-alive connections posting back to back for the
  given time: 2xx answers/s;
- **max /v1/publish/batch**: the same with ``batch`` messages per request: messages/s.

Baseline, same run: the transport floor, i.e. Redis PUBLISH -> the baseline websockets server
-> one client at the same rates (it has no per-user routing, so it cannot do the same job;
this is the latency of the hops Switchboard shares with it). For the maximum rates the
reference is raw Redis PUBLISH from the same client with the same concurrency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from loadtest.bench import common, profile
from loadtest.bench.cluster import API_KEY, BASELINE_CHANNEL, BenchCluster, Usage, start_cluster
from loadtest.bench.common import Target
from loadtest.bench.httpclient import HttpConnection, HttpError
from loadtest.bench.stats import ratio, summarize_ms
from loadtest.bench.workers import Pool
from switchboard.config import RedisSettings
from switchboard.store import Store, pipelined
from switchboard.store import Target as StreamTarget
from switchboard.store import connect as redis_connect

TARGET_P99_MS = 10.0
TARGET_RATE = 2000


def _body(user: str, seq: int, ts: float, pad: int) -> dict[str, Any]:
    return {"user": user, "data": common.payload(seq, pad, ts)}


class Lanes:
    """``concurrency`` keep-alive connections to the router taking requests from one queue."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.conns = [HttpConnection("127.0.0.1", port, {"Authorization": f"Bearer {API_KEY}"})
                      for _ in range(concurrency)]
        self.statuses: dict[int, int] = {}
        self.answer_s: list[float] = []

    async def post(self, conn: HttpConnection, path: str, body: bytes) -> int:
        started = time.perf_counter()
        try:
            status, _ = await conn.post(path, body)
        except (HttpError, OSError):
            status = 0
        self.answer_s.append(time.perf_counter() - started)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    async def open_loop(self, rate: float, duration: float,
                        make: Callable[[int, float], bytes]) -> dict[str, Any]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def lane(conn: HttpConnection) -> None:
            while (body := await queue.get()) is not None:
                await self.post(conn, "/v1/publish", body)

        tasks = [asyncio.create_task(lane(c)) for c in self.conns]
        started = time.perf_counter()
        sent = await common.paced(rate, duration, lambda seq, ts: queue.put_nowait(make(seq, ts)))
        for _ in tasks:
            queue.put_nowait(None)
        await asyncio.wait(tasks, timeout=60)
        # `sent` is when requests were due; the router may answer the last ones much later
        answered = time.perf_counter() - started
        ok = self.statuses.get(200, 0)
        return {**sent, "answered_s": round(answered, 2),
                "achieved_per_s": round(ok / answered, 1) if answered else None}

    async def closed_loop(self, path: str, duration: float,
                          make: Callable[[int], bytes]) -> int:
        deadline = time.perf_counter() + duration
        count = 0

        async def lane(conn: HttpConnection) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                count += 1
                await self.post(conn, path, make(count))

        await asyncio.gather(*(lane(c) for c in self.conns))
        return count

    def close(self) -> None:
        for c in self.conns:
            c.close()


async def fixed_rate(pool: Pool, port: int, users: list[str], rate: float, duration: float,
                     concurrency: int, pad: int, pids: list[int]) -> dict[str, Any]:
    lanes = Lanes(port, concurrency)
    before = Usage.of(pids)

    def make(seq: int, ts: float) -> bytes:
        return json.dumps(_body(users[seq % len(users)], seq, ts, pad)).encode()

    sent = await lanes.open_loop(rate, duration, make)
    ok = lanes.statuses.get(200, 0)
    await common.wait_messages(pool, ok, limit_s=10)
    cpu = Usage.of(pids).cpu_since(before)
    lanes.close()
    stats = await common.collect(pool)
    return {"rate": rate, "published": sent, "http_status": lanes.statuses,
            "delivered": stats["messages"], "latency": stats["latency"],
            "http_answer": summarize_ms(lanes.answer_s), "server_cpu_s": round(cpu, 2),
            "errors": stats["errors"], "closes": stats["closes"]}


async def direct_rate(pool: Pool, store: Store, users: list[str], rate: float,
                      duration: float, lanes: int, pad: int, pids: list[int],
                      redis: BenchCluster) -> dict[str, Any]:
    """The same open loop, published straight through the Lua script (no router, no HTTP):
    how far the gateways alone are from the target when the router is out of the way."""
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    failed = 0

    async def lane() -> None:
        nonlocal failed
        while (item := await queue.get()) is not None:
            seq, ts = item
            try:
                await store.publish(StreamTarget("u", users[seq % len(users)]),
                                    common.payload(seq, pad, ts))
            except Exception:  # counted; a failed publish shows up as a missing delivery
                failed += 1

    # Switchboard's Redis: the one redis-server, or every node of the cluster (and each node)
    before, redis_before = Usage.of(pids), Usage.of(redis.redis_pids)
    nodes_before = redis.redis_node_usage()
    me_before = time.process_time()
    tasks = [asyncio.create_task(lane()) for _ in range(lanes)]
    started = time.perf_counter()
    sent = await common.paced(rate, duration, lambda seq, ts: queue.put_nowait((seq, ts)))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.wait(tasks, timeout=60)
    # a publisher that fell behind (CPU-starved) shows here, not as gateway latency
    answered = time.perf_counter() - started
    sent = {**sent, "answered_s": round(answered, 2),
            "achieved_per_s": round((sent["sent"] - failed) / answered, 1)}
    await common.wait_messages(pool, sent["sent"] - failed, limit_s=10)
    cpu = Usage.of(pids).cpu_since(before)
    redis_cpu = Usage.of(redis.redis_pids).cpu_since(redis_before)
    node_cpu = redis.redis_node_cpu(nodes_before)
    publisher_cpu = time.process_time() - me_before
    stats = await common.collect(pool)
    return {"rate": rate, "published": sent, "failed": failed, "delivered": stats["messages"],
            "latency": stats["latency"], "gateway_cpu_s": round(cpu, 2),
            "redis_cpu_s": round(redis_cpu, 2), "publisher_cpu_s": round(publisher_cpu, 2),
            **({"redis_node_cpu_s": node_cpu} if node_cpu is not None else {})}


async def max_rate(port: int, users: list[str], duration: float, concurrency: int,
                   batch: int, pad: int, router_pid: int,
                   profile_dir: Path | None) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    single = Lanes(port, concurrency)
    out = profile_dir / "unicast-router-publish.txt" if profile_dir else None
    spy = profile.start(router_pid, duration, out) if out else None
    before = Usage.of([router_pid])
    requests = await single.closed_loop(
        "/v1/publish", duration,
        lambda n: json.dumps(_body(users[n % len(users)], n, time.time(), pad)).encode())
    single_cpu = Usage.of([router_pid]).cpu_since(before)
    single.close()
    if out is not None:
        profiles["publish"] = profile.finish(spy, out)
    batched = Lanes(port, concurrency)
    out = profile_dir / "unicast-router-batch.txt" if profile_dir else None
    spy = profile.start(router_pid, duration, out) if out else None

    def make_batch(n: int) -> bytes:
        now = time.time()
        return json.dumps({"messages": [_body(users[(n * batch + k) % len(users)], k, now, pad)
                                        for k in range(batch)]}).encode()

    before = Usage.of([router_pid])
    batches = await batched.closed_loop("/v1/publish/batch", duration, make_batch)
    batch_cpu = Usage.of([router_pid]).cpu_since(before)
    batched.close()
    if out is not None:
        profiles["batch"] = profile.finish(spy, out)
    ok_single = single.statuses.get(200, 0)
    ok_batch = batched.statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "publish": {"requests": requests, "ok": ok_single, "per_s": round(ok_single / duration),
                    "http_status": single.statuses, "answer": summarize_ms(single.answer_s),
                    "router_cpu_us_per_request": per_million(single_cpu, requests)},
        "batch": {"size": batch, "requests": batches, "ok": ok_batch,
                  "messages_per_s": round(ok_batch * batch / duration),
                  "http_status": batched.statuses, "answer": summarize_ms(batched.answer_s),
                  "router_cpu_us_per_message": per_million(batch_cpu, batches * batch)},
        **({"router_profile": profiles} if profiles else {}),
    }


def per_million(cpu_s: float, count: int) -> float | None:
    """CPU-seconds spread over ``count`` requests, in microseconds each."""
    return round(cpu_s / count * 1e6, 1) if count else None


async def redis_publish_max(url: str, duration: float, concurrency: int, pad: int) -> int:
    """Raw PUBLISH/s from this client: the ceiling of the Redis hop alone."""
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    deadline = time.perf_counter() + duration
    count = 0

    async def lane() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await client.publish("bench:nobody", common.baseline_frame(count, pad))
            count += 1

    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return round(count / duration)


async def baseline_floor(pool: Pool, target: Target, url: str, rate: float, duration: float,
                         pad: int, concurrency: int) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def lane() -> None:
        # a few connections taking turns, like the router's lanes: one task per message
        # would open a Redis connection per message under load
        while (frame := await queue.get()) is not None:
            await client.publish(BASELINE_CHANNEL, frame)

    tasks = [asyncio.create_task(lane()) for _ in range(concurrency)]
    try:
        sent = await common.paced(rate, duration, lambda seq, ts: queue.put_nowait(
            common.baseline_frame(seq, pad, ts)))
        for _ in tasks:
            queue.put_nowait(None)
        await asyncio.wait(tasks, timeout=30)
        await common.wait_messages(pool, sent["sent"], limit_s=10)
    finally:
        await client.aclose()
    stats = await common.collect(pool)
    return {"rate": rate, "published": sent, "delivered": stats["messages"],
            "latency": stats["latency"]}


async def run(users: int = 2000, rates: tuple[float, ...] = (500, 1000, 2000),
              duration: float = 10.0, concurrency: int = 32, batch: int = 100, pad: int = 64,
              workers: int = 0, gateways: int = 2,
              profile_dir: str | None = None, redis_shards: int = 0) -> dict[str, Any]:
    cluster = start_cluster(gateways=gateways, router=True, baseline=True,
                            redis_shards=redis_shards, SWITCHBOARD_REBALANCE="0")
    pool = Pool(workers or 2)
    names = [f"uni{i}" for i in range(users)]
    redis_settings = RedisSettings(redis_url=cluster.redis_url, redis_timeout=10)
    # the router's publish connection, so `direct` differs from the router by HTTP only (on a
    # cluster, Store.open builds the router's: the cluster store, one pipeline per master)
    if redis_shards:
        store = Store.open(redis_settings, "bench-direct")
    else:
        store = Store(redis_connect(cluster.redis.url, 10), redis_settings,
                      pipelined(redis_settings, "bench-direct"))
    try:
        sb_target, base_target = common.targets(cluster)
        assert base_target is not None and cluster.router is not None
        pids = [*sb_target.pids, cluster.router.pid]
        conn = await common.connect(pool, sb_target, names, parse_every=1)
        await asyncio.sleep(1.0)
        await common.collect(pool)
        # gateway-only first, on a fresh cluster; the router phases may leave a backlog
        direct = [await direct_rate(pool, store, names, r, duration, 8, pad, sb_target.pids,
                                    cluster) for r in rates]
        fixed = [await fixed_rate(pool, cluster.router.port, names, r, duration, concurrency,
                                  pad, pids) for r in rates]
        peak = await max_rate(cluster.router.port, names, duration, concurrency, batch, pad,
                              cluster.router.pid, Path(profile_dir) if profile_dir else None)
        # the gateways may lag behind what the router accepted: how long until they caught up
        published = peak["publish"]["ok"] + peak["batch"]["ok"] * batch
        drain_start = time.perf_counter()
        got, _ = await common.wait_messages(pool, published, limit_s=180)
        peak["delivery_backlog"] = {
            "published": published, "delivered": got,
            "seconds_after_publishing_stopped": round(time.perf_counter() - drain_start, 2)}
        await common.collect(pool)
        # the same gateway-only check after the floods: does anything linger?
        after = await direct_rate(pool, store, names, rates[0], duration, 8, pad,
                                  sb_target.pids, cluster)
        await common.disconnect(pool)
        await common.connect(pool, base_target, ["floor0"], parse_every=1)
        await common.collect(pool)
        floor = [await baseline_floor(pool, base_target, cluster.redis.url, r, duration, pad,
                                      min(concurrency, 8)) for r in rates]
        await common.disconnect(pool)
        raw = await redis_publish_max(cluster.redis.url, duration, concurrency, pad)
    finally:
        await store.aclose()
        pool.close()
        cluster.stop()
    at_target = next((f for f in fixed if f["rate"] == TARGET_RATE), None)
    p99 = at_target["latency"].get("p99_ms") if at_target else None
    return {
        "scenario": "unicast",
        "redis": cluster.redis_info,
        "users": users,
        "gateways": gateways,
        "connect": conn,
        "fixed": fixed,
        "direct_no_router": direct,
        "direct_after_floods": after,
        "max": peak,
        "baseline_floor": floor,
        "baseline_redis_publish_per_s": raw,
        "p99_vs_floor": {str(f["rate"]): ratio(f["latency"].get("p99_ms"),
                                               b["latency"].get("p99_ms"))
                         for f, b in zip(fixed, floor, strict=True)},
        # None when the target rate was not among --rates: not measured is not a failure
        "targets": {f"p99 <= {TARGET_P99_MS} ms at {TARGET_RATE}/s":
                    None if at_target is None else p99 is not None and p99 <= TARGET_P99_MS},
        "note": "latency = client receive time - scheduled publish time (open loop), over "
                "every delivery; server_cpu_s covers the gateways and the router",
    }
