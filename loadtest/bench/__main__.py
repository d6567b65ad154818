"""``python -m loadtest.bench SCENARIO [options]``: run benchmark scenarios, print JSON.

Scenarios: idle, fanout, unicast, resume, storm, rolling, or all of them in turn. Every scenario
starts its own redis-server, gateways, router and baseline server on free loopback ports and
stops them by PID when it ends. Sizes default to the documented targets (10,000 connections);
``make bench`` passes smaller ones that finish in a few minutes on two cores.

``--redis-shards N`` (N >= 3) runs Switchboard (gateways, router, the scenario's own Store) on
a local Redis Cluster of N masters and N replicas instead of one redis-server; the baseline
keeps its plain redis-server. The JSON's ``redis`` says which was used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.bench import cluster, common
from loadtest.bench.noise import Noise

SCENARIOS = ("idle", "fanout", "unicast", "resume", "storm", "rolling")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument("--connections", type=int, default=None,
                   help="connections for idle/fanout/storm/rolling (default 10000)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per measured phase (default 10)")
    p.add_argument("--rate", type=float, default=2.0, help="fanout fixed broadcasts/s")
    p.add_argument("--burst", type=int, default=20, help="fanout max-rate messages per round")
    p.add_argument("--sample-conns", type=int, default=200,
                   help="fanout connections that decode every message for latency")
    p.add_argument("--users", type=int, default=2000, help="unicast users (one connection each)")
    p.add_argument("--rates", default="500,1000,2000", help="unicast publishes/s, comma-separated")
    p.add_argument("--concurrency", type=int, default=32, help="unicast HTTP connections")
    p.add_argument("--batch", type=int, default=100, help="unicast messages per batch request")
    p.add_argument("--messages", type=int, default=1000, help="resume: messages to replay")
    p.add_argument("--runs", type=int, default=7, help="resume: repetitions")
    p.add_argument("--storm-rate", type=float, default=1.0,
                   help="storm and rolling broadcasts/s")
    p.add_argument("--drain-window", type=float, default=None,
                   help="rolling: seconds each old gateway takes to move its clients (10)")
    p.add_argument("--accept-rate", type=float, default=None,
                   help="rolling: the gateways' SWITCHBOARD_ACCEPT_RATE (default 1000)")
    p.add_argument("--gateways", type=int, default=2, help="gateways (idle/fanout/unicast)")
    p.add_argument("--workers", type=int, default=0,
                   help="client processes (default: one per 8,500 connections, at least 2)")
    p.add_argument("--pad", type=int, default=64, help="payload padding bytes")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="py-spy a gateway (fanout max, storm survivor) and the router "
                        "(unicast max) into DIR and summarize")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra SWITCHBOARD_* setting for every gateway (repeatable), e.g. "
                        "SWITCHBOARD_ACCEPT_RATE=500")
    p.add_argument("--redis-shards", type=_shards, default=0, metavar="N",
                   help="run Switchboard on a local Redis Cluster of N masters (N >= 3) and "
                        "N replicas; the baseline keeps a plain redis-server (default 0: one "
                        "redis-server)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p


def _shards(text: str) -> int:
    n = int(text)
    if n != 0 and n < 3:
        raise argparse.ArgumentTypeError("a Redis Cluster needs at least 3 shards (0: none)")
    return n


def redis_summary(shards: int) -> str | dict[str, int]:
    """The top-level ``redis`` of the JSON (each scenario also records its cluster's layout)."""
    return {"shards": shards, "nodes": 2 * shards} if shards else "single"


async def resume_on_cluster(messages: int, runs: int, shards: int) -> dict[str, Any]:
    """``loadtest.resume_time`` (one gateway, same measurements) with the gateway and the
    publisher on a local Redis Cluster."""
    from loadtest.resume_time import one_run, summary
    from switchboard.config import RedisSettings
    from switchboard.store import Store

    # the gateway resume_time starts (tests.support's heartbeat), on the cluster
    bench = cluster.start_cluster(gateways=1, baseline=False, redis_shards=shards,
                                  SWITCHBOARD_HEARTBEAT_INTERVAL="0.5",
                                  SWITCHBOARD_REPLAY_LIMIT=str(max(1000, messages)))
    try:
        store = Store.open(RedisSettings(redis_url=bench.redis_url, redis_timeout=5,
                                         history_size=messages * 2), "bench-resume")
        try:
            url = f"ws://127.0.0.1:{bench.port}/ws"
            results = [await one_run(url, store, f"bench{r}", messages) for r in range(runs)]
        finally:
            await store.aclose()
    finally:
        bench.stop()

    return summary(messages, runs, results, redis=bench.redis_info)


async def run_one(name: str, a: argparse.Namespace) -> dict[str, Any]:
    def sized(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    duration, shards = a.duration, a.redis_shards
    if name == "idle":
        from loadtest.bench import idle

        return await idle.run(**sized(connections=a.connections, workers=a.workers,
                                      gateways=a.gateways), redis_shards=shards)
    if name == "fanout":
        from loadtest.bench import fanout

        return await fanout.run(**sized(connections=a.connections, rate=a.rate,
                                        duration=duration, burst=a.burst, pad=a.pad,
                                        sample_conns=a.sample_conns, workers=a.workers,
                                        gateways=a.gateways, profile_dir=a.profile),
                               redis_shards=shards)
    if name == "unicast":
        from loadtest.bench import unicast

        rates = tuple(float(r) for r in a.rates.split(",") if r.strip())
        return await unicast.run(**sized(users=a.users, rates=rates, duration=duration,
                                         concurrency=a.concurrency, batch=a.batch, pad=a.pad,
                                         workers=a.workers, gateways=a.gateways,
                                         profile_dir=a.profile), redis_shards=shards)
    if name == "resume":
        if shards:
            return await resume_on_cluster(a.messages, a.runs, shards)
        from loadtest.resume_time import main_async

        return {**await main_async(a.messages, a.runs), "redis": "single"}
    if name == "storm":
        from loadtest.bench import storm

        return await storm.run(**sized(connections=a.connections, rate=a.storm_rate,
                                       pad=a.pad, workers=a.workers, profile_dir=a.profile),
                               redis_shards=shards)
    if name == "rolling":
        if shards:
            raise SystemExit("rolling: runs `switchboard up` on one redis-server only")
        from loadtest.bench import rolling

        return await rolling.run(**sized(connections=a.connections, rate=a.storm_rate,
                                         pad=a.pad, workers=a.workers,
                                         drain_window=a.drain_window,
                                         accept_rate=a.accept_rate))
    raise ValueError(name)


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Every scenario's target checks, flattened: what BENCHMARKS.md reports as holding."""
    return {f"{name}: {check}": ok for name, r in results.items()
            for check, ok in r.get("targets", {}).items()}


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    names = SCENARIOS if a.scenario == "all" else (a.scenario,)
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        noise = Noise.begin()
        results[name] = await run_one(name, a)
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name]["machine_noise"] = noise.end(results[name]["wall_s"])
    if a.scenario != "all":
        return {"machine": common.machine(), "command": sys.argv[1:], **results[a.scenario]}
    return {"machine": common.machine(), "command": sys.argv[1:],
            "redis": redis_summary(a.redis_shards),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "targets": verdict(results), "results": results}


def main() -> None:
    args = _parser().parse_args()
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("SWITCHBOARD_"):
            raise SystemExit(f"--gateway-env wants SWITCHBOARD_NAME=VALUE, got {item!r}")
        cluster.EXTRA_GATEWAY_ENV[name] = value
    try:
        import uvloop

        out = uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        out = asyncio.run(main_async(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
