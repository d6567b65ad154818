"""What the scenarios share: connection targets, connecting a fleet, pacing, collecting."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest.bench.cluster import JWT_SECRET, BenchCluster
from loadtest.bench.stats import merge_samples, summarize_ms
from loadtest.bench.workers import Pool, split

HOST = "127.0.0.1"
LATENCY_SAMPLE = 50_000  # latencies kept for percentiles after merging workers


@dataclass(frozen=True)
class Target:
    """Where a fleet connects, and which processes to watch while it does."""

    name: str
    port: int
    expect_welcome: bool  # Switchboard greets every connection; the baseline does not
    pids: list[int]


def targets(cluster: BenchCluster) -> tuple[Target, Target | None]:
    sb = Target("switchboard", cluster.port, True, cluster.gateway_pids)
    base = None
    if cluster.baseline is not None:
        base = Target("baseline", cluster.baseline.port, False, [cluster.baseline.pid])
    return sb, base


async def connect(pool: Pool, target: Target, users: list[str], *, parse_every: int = 0,
                  track: bool = False, concurrency: int = 100,
                  limit_s: float = 60.0) -> dict[str, Any]:
    """Open one connection per user, spread over the workers; merged connect results."""
    await pool.call_all("setup", host=HOST, port=target.port,
                        expect_welcome=target.expect_welcome)
    chunks = split(users, len(pool))
    started = time.perf_counter()
    results = await pool.call_all(
        "open", per_worker=[{"users": c} for c in chunks], secret=JWT_SECRET,
        parse_every=parse_every, track=track, concurrency=concurrency, limit_s=limit_s,
    )
    seconds = time.perf_counter() - started
    failed: Counter[str] = Counter()
    gateways: Counter[str] = Counter()
    for r in results:
        failed.update(r["failed"])
        gateways.update(r["gateways"])
    ok = sum(r["ok"] for r in results)
    return {"ok": ok, "failed": dict(failed), "seconds": round(seconds, 2),
            "connects_per_s": round(ok / seconds, 1) if seconds else None,
            "gateways": dict(gateways)}


async def disconnect(pool: Pool) -> None:
    await pool.call_all("close")


async def wait_messages(pool: Pool, expected: int, limit_s: float) -> tuple[int, float]:
    """Poll the workers until ``expected`` message frames arrived (or ``limit_s`` passed)."""
    started = time.perf_counter()
    got = 0
    while time.perf_counter() - started < limit_s:
        got = await pool.messages()
        if got >= expected:
            break
        await asyncio.sleep(0.02)
    return got, time.perf_counter() - started


async def collect(pool: Pool, reset: bool = True) -> dict[str, Any]:
    """Merged counters and latency percentiles of every worker."""
    parts = await pool.call_all("stats", reset=reset)
    errors: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
        closes.update(p["closes"])
    sample = merge_samples([tuple(p["latency"]) for p in parts], LATENCY_SAMPLE)
    return {
        "messages": sum(p["messages"] for p in parts),
        "open": sum(p["open"] for p in parts),
        "latency": summarize_ms(sample),
        "errors": dict(errors),
        "closes": dict(closes),
    }


def payload(seq: int, pad: int, ts: float | None = None) -> dict[str, Any]:
    """What every bench message carries: the publish time (wall clock, seconds) and a pad."""
    return {"ts": time.time() if ts is None else ts, "seq": seq, "pad": "x" * pad}


def baseline_frame(seq: int, pad: int, ts: float | None = None) -> bytes:
    """The baseline's message: the same shape a Switchboard client receives."""
    return json.dumps({"type": "message", "stream": "broadcast", "epoch": "baseline",
                       "offset": seq, "data": payload(seq, pad, ts)},
                      separators=(",", ":")).encode()


async def paced(rate: float, duration: float,
                fire: Callable[[int, float], Awaitable[None] | None]) -> dict[str, Any]:
    """Call ``fire(seq, scheduled_wall_time)`` ``rate`` times a second for ``duration`` s.

    Open loop: sends are scheduled by the clock, not by the previous answer, and a late send
    keeps its *scheduled* time as its timestamp, so a slow publisher shows up as latency
    instead of silently lowering the rate (no coordinated omission).
    """
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * duration))
    start, wall = loop.time(), time.time()
    pending: set[asyncio.Future[Any]] = set()
    sent = 0
    while sent < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        while sent < due:
            result = fire(sent, wall + sent / rate)
            if result is not None:
                fut = asyncio.ensure_future(result)
                pending.add(fut)
                fut.add_done_callback(pending.discard)
            sent += 1
        wait = start + sent / rate - loop.time()
        await asyncio.sleep(max(0.0, min(wait, 0.005)))
    if pending:
        await asyncio.wait(pending, timeout=30)
    elapsed = loop.time() - start
    return {"sent": sent, "seconds": round(elapsed, 3), "rate": round(sent / elapsed, 1)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as fh:
        mem_kib = int(fh.readline().split()[1])
    try:
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True, timeout=5).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_version = "?"
    return {
        "code": _code_version(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis_server": redis_version,
        **{pkg: _version(pkg) for pkg in ("uvloop", "websockets", "redis", "msgpack")},
    }


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def _code_version() -> str:
    """The commit measured, and whether server code had uncommitted changes at the time."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "gateway", "router",
                                "switchboard"], cwd=root, text=True, capture_output=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted server changes' if dirty else ''}"
