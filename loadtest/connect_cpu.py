"""Gateway CPU per connect: ``python -m loadtest.connect_cpu``.

One gateway on a private redis-server (or, with ``--redis-shards N``, a private Redis Cluster
of N masters and N replicas); this process opens ``--connections`` WebSocket connections of
distinct users (SSE with ``--sse``), ``--concurrency`` at a time, each until its ``welcome``
(and, with ``--replay N``, the N missed broadcasts its cursor resumes), and keeps them open.
Prints the gateway's CPU (user + system, from /proc) per connect, the connects per second, and
the gateway's RSS growth per held connection.
The client's own CPU is not counted: it runs in this process. What a reconnect storm costs a
gateway is this figure times the clients that come back. To compare two commits, run it from
a worktree of each with ``PYTHONPATH`` set to that worktree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from loadtest.bench.cluster import Baseline, cpu_seconds, rss_kib, start_baseline
from switchboard.auth import mint
from switchboard.config import RedisSettings
from switchboard.limits import raise_nofile_limit
from switchboard.store import Store, Target
from tests.support import JWT_SECRET, Proc, start_gateway, start_redis


class SseConn:
    """A held SSE connection (what connect_cpu needs of one: closing it)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()


async def open_sse(port: int, path: str) -> SseConn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    seen = b""
    while b"welcome" not in seen:  # the welcome event: registered and replayed
        chunk = await asyncio.wait_for(reader.read(65536), 30)
        if not chunk:
            raise ConnectionError("SSE connection closed before its welcome")
        seen += chunk
    return SseConn(writer)


@dataclass(frozen=True)
class Rooms:
    """Connection i joins channel ``room-{i % count}`` at connect (count 0: none); with
    ``presence`` its token opts in to that room's presence events."""

    count: int = 0
    presence: bool = False

    def path(self, i: int, query: str) -> str:
        # the presence keyword only when asked: the bench also runs against builds before it
        extra: dict[str, Any] = {"presence": ["room-*"]} if self.presence else {}
        token = mint(JWT_SECRET, f"c{i}", channels=["room-*"] if self.count else None,
                     **extra)
        rooms = f"&channels=room-{i % self.count}" if self.count else ""
        return f"?token={token}{query}{rooms}"


async def open_all(port: int, n: int, concurrency: int, sse: bool = False,
                   query: str = "", replay: int = 0, welcome: bool = True,
                   rooms: Rooms = Rooms()) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)
    opened: list[Any] = []

    async def one(i: int) -> None:
        async with gate:
            path = rooms.path(i, query)
            if sse:
                conn: Any = await open_sse(port, f"/sse{path}")
                opened.append(conn)
                return
            ws = await connect(f"ws://127.0.0.1:{port}/ws{path}", open_timeout=30)
            for _ in range(int(welcome) + replay):  # the welcome, then the replayed messages
                await asyncio.wait_for(ws.recv(), 30)
            opened.append(ws)

    await asyncio.gather(*(one(i) for i in range(n)))
    return opened


async def cursor_behind(redis_url: str, replay: int) -> str:
    """Publish ``replay`` broadcasts; the cursor a client that missed them resumes from."""
    store = Store.open(RedisSettings(redis_url=redis_url, redis_timeout=10), "connect-cpu")
    try:
        results = [await store.publish(Target("b"), i) for i in range(replay)]
    finally:
        await store.aclose()
    first = results[0]
    return f"&cursor=broadcast:{first.epoch}:{first.offset - 1}"


async def measure(gw: Proc, n: int, concurrency: int, sse: bool = False,
                  replay: int = 0, rooms: Rooms = Rooms()) -> dict[str, Any]:
    redis_url = gw.env["SWITCHBOARD_REDIS_URL"]
    query = await cursor_behind(redis_url, replay) if replay else ""
    return await _measure(gw.pid, gw.port, n, concurrency, sse, query, replay, rooms=rooms)


async def measure_baseline(base: Baseline, n: int, concurrency: int) -> dict[str, Any]:
    """The same connects to the bench's baseline (websockets and PyJWT, nothing else): it
    sends no welcome, so a connect is its handshake."""
    return await _measure(base.pid, base.port, n, concurrency, welcome=False)


async def _measure(pid: int, port: int, n: int, concurrency: int, sse: bool = False,
                   query: str = "", replay: int = 0, welcome: bool = True,
                   rooms: Rooms = Rooms()) -> dict[str, Any]:
    rss_before = rss_kib(pid)
    before = cpu_seconds(pid)
    started = time.perf_counter()
    conns = await open_all(port, n, concurrency, sse, query, replay, welcome, rooms)
    seconds = time.perf_counter() - started
    # the heartbeat and a few late callbacks belong to the connects too: let them land
    await asyncio.sleep(0.5)
    used = cpu_seconds(pid) - before
    held_kib = rss_kib(pid) - rss_before  # what the open connections hold (RSS growth)
    for conn in conns:
        await conn.close()
    return {"connections": n, "transport": "sse" if sse else "ws", "replayed": replay,
            "gateway_cpu_us_per_connect": round(1e6 * used / n),
            "rss_kib_per_connection": round(held_kib / n, 2),
            "connects_per_s": round(n / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--redis-shards", type=int, default=0)
    parser.add_argument("--sse", action="store_true", help="SSE connections instead of WebSocket")
    parser.add_argument("--replay", type=int, default=0,
                        help="each connection resumes N missed broadcasts (WebSocket)")
    parser.add_argument("--webhooks", action="store_true",
                        help="also each run with webhook state tracked (SWITCHBOARD_WEBHOOK_URL "
                        "set; no dispatcher needed), and the ratio to the run without")
    parser.add_argument("--rooms", type=int, default=0, metavar="N",
                        help="each connection joins one of N channels at connect")
    parser.add_argument("--presence", action="store_true",
                        help="with --rooms: also each run with tokens opting in to their "
                        "room's presence events (each join told to the room's watchers), and "
                        "the ratio to the run without")
    parser.add_argument("--baseline", action="store_true",
                        help="also the bench's baseline server, each run (WebSocket, one node)")
    args = parser.parse_args()
    if args.presence and not args.rooms:
        parser.error("--presence needs --rooms")
    rooms = Rooms(args.rooms)
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
                runs.append(uvloop.run(measure(gw, args.connections, args.concurrency,
                                               args.sse, args.replay, rooms)))
            finally:
                gw.stop()
            if args.presence:
                gw = start_gateway(backend, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="2")
                try:
                    p = uvloop.run(measure(gw, args.connections, args.concurrency, args.sse,
                                           args.replay, Rooms(args.rooms, presence=True)))
                finally:
                    gw.stop()
                runs[-1]["presence_cpu_us_per_connect"] = p["gateway_cpu_us_per_connect"]
                runs[-1]["presence_ratio"] = round(
                    p["gateway_cpu_us_per_connect"] / runs[-1]["gateway_cpu_us_per_connect"], 3)
            if args.webhooks:
                gw = start_gateway(backend, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="2",
                                   SWITCHBOARD_WEBHOOK_URL="http://127.0.0.1:9/unused")
                try:
                    w = uvloop.run(measure(gw, args.connections, args.concurrency,
                                           args.sse, args.replay))
                finally:
                    gw.stop()
                runs[-1]["webhooks_cpu_us_per_connect"] = w["gateway_cpu_us_per_connect"]
                runs[-1]["webhooks_ratio"] = round(
                    w["gateway_cpu_us_per_connect"] / runs[-1]["gateway_cpu_us_per_connect"], 3)
            if args.baseline:
                base = start_baseline(backend, logdir)
                try:
                    b = uvloop.run(measure_baseline(base, args.connections, args.concurrency))
                finally:
                    base.stop()
                runs[-1]["baseline_cpu_us_per_connect"] = b["gateway_cpu_us_per_connect"]
                runs[-1]["ratio_to_baseline"] = round(
                    runs[-1]["gateway_cpu_us_per_connect"] / b["gateway_cpu_us_per_connect"], 2)
    finally:
        stop()
    print(json.dumps({"redis_shards": args.redis_shards, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
