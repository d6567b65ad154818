"""Scenario ``rolling``: replace every gateway of ``switchboard up``, one at a time, under load.

``switchboard up --gateways 2 --no-autoscale`` on the bench's redis-server; ``connections``
clients (distinct users) connect to its shared port and broadcasts are published at a steady
rate throughout. The supervisor gets SIGUSR1: it starts a new gateway, waits until it is
ready, drains an old one (its clients are moved over ``drain_window`` seconds and resume
with session and cursor on the others), waits until it has exited, then the next. Measured:

- how long the rolling restart took, and how many clients were moved and resumed;
- the peak accept rate (client-side, 100 ms buckets) against the gateways' admission
  setting (``accept_rate`` per gateway, 429 with Retry-After beyond it);
- messages lost or duplicated: once publishing stops, every client must hold every broadcast
  offset above its first position exactly once.

Unicast and channel messages through a rolling restart are checked message by message by
tests/integration/test_up.py; this scenario is about size.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench import common
from loadtest.bench.stats import peak_rate
from loadtest.bench.storm import Publisher, audit_totals, fleet_report
from loadtest.bench.workers import Pool, workers_for
from switchboard.config import RedisSettings
from switchboard.store import Store
from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    free_port,
    start_redis,
    terminate,
    wait_for_banner,
    wait_until,
)

DONE = "rolling restart done"
ACCEPT_BURST = 200  # the gateways' default SWITCHBOARD_ACCEPT_BURST


def start_up(redis_url: str, log: Path, accept_rate: float,
             drain_window: float) -> tuple[subprocess.Popen[bytes], int]:
    port, router_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(SWITCHBOARD_ACCEPT_RATE=str(accept_rate),
               SWITCHBOARD_DRAIN_WINDOW=str(drain_window), SWITCHBOARD_REBALANCE="0")
    with log.open("wb") as fh:
        up = subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli", "up", "--redis", redis_url,
             "--port", str(port), "--router-port", str(router_port), "--gateways", "2",
             "--no-autoscale", f"--api-key={API_KEY}", f"--jwt-secret={JWT_SECRET}"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return up, port


async def run(connections: int = 10_000, rate: float = 1.0, lead: float = 3.0,
              tail: float = 3.0, give_up_s: float = 180.0, pad: int = 64, workers: int = 0,
              accept_rate: float = 1000.0, drain_window: float = 10.0) -> dict[str, Any]:
    redis = start_redis()
    log = Path(tempfile.mkdtemp(prefix="bench-rolling-")) / "up.log"
    up, port = start_up(redis.url, log, accept_rate, drain_window)
    pool = Pool(workers or workers_for(connections, 2))
    store = Store.open(RedisSettings(redis_url=redis.url, redis_timeout=10), "bench-rolling")
    publisher = Publisher(store, rate, pad)
    try:
        wait_for_banner(up, log, 90)
        target = common.Target("switchboard", port, True, [])
        conn = await common.connect(pool, target, [f"roll{i}" for i in range(connections)],
                                    track=True)
        await pool.call_all("storm_mode", on=True)
        publisher.start()
        await asyncio.sleep(lead)
        began = time.time()
        up.send_signal(signal.SIGUSR1)  # the supervisor we started, by PID
        deadline = time.monotonic() + give_up_s
        # the supervisor says so in its log, a file: polled
        while DONE not in log.read_text(errors="replace") and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        rolled_s = time.time() - began
        report = await fleet_report(pool, began)
        while report["waiting"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            report = await fleet_report(pool, began)
        await asyncio.sleep(tail)  # keep publishing to the moved clients for a while
        await publisher.finish()
        audits = await pool.call_all("audit", stream="broadcast", top=publisher.top, wait=30.0)
        final = await fleet_report(pool, began)
        up.send_signal(signal.SIGINT)
        wait_until(lambda: up.poll() is not None, 60, "switchboard up to stop")
    finally:
        await publisher.close()
        await store.aclose()
        pool.close()
        terminate(up, 60)
        redis.stop()
    totals = audit_totals(audits)
    resumed = sorted(t - began for t in final["resumed"])
    accepts = [t for t in final["accepts"] if t >= began]
    peak, in_bucket = peak_rate(accepts, 0.1)
    per_second, _ = peak_rate(accepts, 1.0)
    lost = totals["lost"]
    done = DONE in log.read_text(errors="replace")
    return {
        "scenario": "rolling",
        "redis": "single",
        "connections": conn["ok"],
        "connect": conn,
        "gateways": 2,
        "rolled": done,
        "rolling_restart_s": round(rolled_s, 3),
        "drain_window_s": drain_window,
        "moved_clients": final["lost"],
        "resumed_clients": len(resumed),
        "still_waiting": final["waiting"],
        "peak_accepts_per_s": round(peak, 1),
        "peak_bucket": {"ms": 100, "accepts": in_bucket},
        "peak_accepts_in_a_second": round(per_second),
        "accept_rate_per_gateway": accept_rate,
        "published": publisher.sent,
        "publish_failed": publisher.failed,
        "final_offset": publisher.top,
        "messages_lost": lost,
        "duplicates": totals["duplicates"],
        "clients_behind": totals["behind"],
        "unrecovered_resumes": final["unrecovered"],
        "replayed_by_resume": totals["replayed"],
        "connect_errors": final["errors"],
        "targets": {
            "zero loss": done and lost == 0 and totals["duplicates"] == 0
            and totals["behind"] == 0 and final["waiting"] == 0,
            # in any second, the gateways admit at most their rate each plus their burst
            "accepts within admission": per_second <= 2 * (accept_rate + ACCEPT_BURST),
        },
        "note": "times are from the SIGUSR1; accepts counted client-side",
    }
