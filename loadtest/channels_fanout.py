"""Channel fan-out: C channels x S subscribers, against a same-run broadcast baseline.

Starts its own redis-server, two gateways sharing a port and a router. Connections subscribe
at connect (``channels=``), each to ``channels * subscribers / connections`` channels chosen
so every channel has exactly S subscribers spread over both gateways. Then, for R rounds, one
message is published to every channel (router ``/v1/publish/batch``) and the harness waits
until every subscriber has it.

Reported: deliveries/s, gateway CPU-seconds per 100k deliveries, publish-to-receive p50/p99,
Redis pub/sub channels per gateway (a gateway listens only to channels with a local
subscriber), and the same delivery count sent as broadcasts (each message to every
connection) measured in the same run, as the baseline.

Usage: ``python -m loadtest.channels_fanout [--channels 1000] [--subscribers 10]
[--connections 2000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import httpx

from loadtest.bench import frames
from loadtest.bench.cluster import API_KEY, JWT_SECRET, BenchCluster, cpu_seconds, start_cluster
from loadtest.bench.stats import summarize_ms
from switchboard.auth import mint


class Conn(asyncio.Protocol):
    """Counts message frames; decodes only enough to read the publish timestamp."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.parser = frames.FrameParser()
        self.head = b""
        self.open = False
        self.welcomed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            split = frames.split_head(self.head)
            if split is None:
                return
            _, data = split
            self.open = True
        for opcode, payload in self.parser.feed(data):
            if opcode != 1:
                continue
            if not self.welcomed.done():
                self.welcomed.set_result(None)
                continue
            if b'"type":"message"' in payload:
                self.run.received += 1
                if self.run.sample_every and self.run.received % self.run.sample_every == 0:
                    sent = json.loads(payload)["data"]["t"]
                    self.run.latencies.append(time.time() - sent)


class Run:
    def __init__(self) -> None:
        self.received = 0
        self.latencies: list[float] = []
        self.sample_every = 7


async def connect_all(cluster: BenchCluster, run: Run, plan: list[list[str]]) -> list[Conn]:
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    sem = asyncio.Semaphore(100)

    async def one(i: int, chans: list[str]) -> None:
        async with sem:
            tok = mint(JWT_SECRET, f"fan{i}", channels=["*"])
            _, conn = await loop.create_connection(lambda: Conn(run), "127.0.0.1",
                                                   cluster.port)
            assert conn.transport is not None
            key = frames.new_key()
            target = f"/ws?token={tok}&channels={','.join(chans)}"
            conn.transport.write(frames.handshake_request("127.0.0.1", cluster.port, target, key))
            await asyncio.wait_for(conn.welcomed, 30)
            conns.append(conn)

    await asyncio.gather(*(one(i, chans) for i, chans in enumerate(plan)))
    return conns


def assignment(channels: int, subscribers: int, connections: int) -> list[list[str]]:
    """Round-robin: subscription k goes to connection k % connections, so each channel's
    subscribers land on different connections (and, by the kernel's hashing, gateways)."""
    plan: list[list[str]] = [[] for _ in range(connections)]
    k = 0
    for ch in range(channels):
        for _ in range(subscribers):
            plan[k % connections].append(f"c{ch}")
            k += 1
    return plan


async def publish_round(http: httpx.AsyncClient, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 500):
        resp = await http.post("/v1/publish/batch", json={"messages": messages[start:start + 500]})
        resp.raise_for_status()


async def measure(cluster: BenchCluster, run: Run, http: httpx.AsyncClient,
                  rounds: int, make: Any, per_round: int) -> dict[str, Any]:
    run.received = 0
    run.latencies = []
    cpu0 = sum(cpu_seconds(p) for p in cluster.gateway_pids)
    t0 = time.perf_counter()
    for r in range(rounds):
        await publish_round(http, make(r))
        deadline = time.monotonic() + 60
        while run.received < per_round * (r + 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {r}: {run.received} of {per_round * (r + 1)}")
            await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p) for p in cluster.gateway_pids) - cpu0
    total = per_round * rounds
    return {
        "deliveries": total,
        "deliveries_per_s": round(total / elapsed),
        "gateway_cpu_s_per_100k": round(cpu / total * 100_000, 3),
        "latency_ms": summarize_ms(run.latencies),
    }


async def main_async(channels: int, subscribers: int, connections: int,
                     rounds: int) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cluster = start_cluster(gateways=2, router=True, baseline=False,
                            SWITCHBOARD_REBALANCE="0", SWITCHBOARD_MAX_CHANNELS="1000")
    run = Run()
    try:
        plan = assignment(channels, subscribers, connections)
        conns = await connect_all(cluster, run, plan)
        numsub = cluster.redis.cli("PUBSUB", "NUMSUB", *[f"sb:ch:c{i}" for i in range(
            min(channels, 50))]).split()
        per_gateway = [int(n) for n in numsub[1::2]]
        async with httpx.AsyncClient(base_url=cluster.router_url, timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            chan = await measure(
                cluster, run, http, rounds,
                lambda r: [{"channel": f"c{i}", "data": {"t": time.time(), "r": r}}
                           for i in range(channels)],
                channels * subscribers)
            # Baseline: the same number of deliveries, as broadcasts to every connection.
            per_broadcast = len(conns)
            n_broadcasts = max(1, channels * subscribers // per_broadcast)
            base = await measure(
                cluster, run, http, rounds,
                lambda r: [{"broadcast": True, "data": {"t": time.time(), "r": r}}
                           for _ in range(n_broadcasts)],
                n_broadcasts * per_broadcast)
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    finally:
        cluster.stop()
    return {
        "scenario": "channel_fanout",
        "channels": channels,
        "subscribers_per_channel": subscribers,
        "connections": connections,
        "rounds": rounds,
        "gateways_listening_per_channel": {"min": min(per_gateway), "max": max(per_gateway)},
        "channel_delivery": chan,
        "baseline_broadcast": base,
        "cpu_per_delivery_channel_over_broadcast": round(
            chan["gateway_cpu_s_per_100k"] / max(base["gateway_cpu_s_per_100k"], 1e-9), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    a = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(a.channels, a.subscribers, a.connections, a.rounds)),
                     indent=2))


if __name__ == "__main__":
    main()
