"""Gateway CPU per connect: ``python -m loadtest.connect_cpu``.

One gateway on a private redis-server (or, with ``--redis-shards N``, a private Redis Cluster
of N masters and N replicas); this process opens ``--connections`` WebSocket connections of
distinct users, ``--concurrency`` at a time, each until its ``welcome``, and keeps them open.
Prints the gateway's CPU (user + system, from /proc) per connect and the connects per second.
The client's own CPU is not counted: it runs in this process. What a reconnect storm costs a
gateway is this figure times the clients that come back. To compare two commits, run it from
a worktree of each with ``PYTHONPATH`` set to that worktree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from switchboard.auth import mint
from switchboard.limits import raise_nofile_limit
from tests.support import JWT_SECRET, Proc, start_gateway, start_redis

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def open_all(port: int, n: int, concurrency: int) -> list[ClientConnection]:
    gate = asyncio.Semaphore(concurrency)
    opened: list[ClientConnection] = []

    async def one(i: int) -> None:
        async with gate:
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={mint(JWT_SECRET, f'c{i}')}",
                               open_timeout=30)
            await asyncio.wait_for(ws.recv(), 30)  # the welcome: registered and replayed
            opened.append(ws)

    await asyncio.gather(*(one(i) for i in range(n)))
    return opened


async def measure(gw: Proc, n: int, concurrency: int) -> dict[str, Any]:
    before = cpu_seconds(gw.pid)
    started = time.perf_counter()
    conns = await open_all(gw.port, n, concurrency)
    seconds = time.perf_counter() - started
    # the heartbeat and a few late callbacks belong to the connects too: let them land
    await asyncio.sleep(0.5)
    used = cpu_seconds(gw.pid) - before
    for ws in conns:
        await ws.close()
    return {"connections": n, "gateway_cpu_us_per_connect": round(1e6 * used / n),
            "connects_per_s": round(n / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--redis-shards", type=int, default=0)
    args = parser.parse_args()
    raise_nofile_limit()
    if args.redis_shards:
        from switchboard.localcluster import start_cluster

        cluster = start_cluster(args.redis_shards, 1)
        backend: Any = cluster
        stop = cluster.stop
    else:
        backend = start_redis()
        stop = backend.stop
    logdir = Path(tempfile.mkdtemp(prefix="sb-connect-cpu-"))
    runs = []
    try:
        for _ in range(args.runs):
            gw = start_gateway(backend, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="2")
            try:
                runs.append(uvloop.run(measure(gw, args.connections, args.concurrency)))
            finally:
                gw.stop()
    finally:
        stop()
    print(json.dumps({"redis_shards": args.redis_shards, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
