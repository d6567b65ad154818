"""Gateway CPU per client publish: a WebSocket client publishing to a channel it may publish to.

Starts its own redis-server and one gateway on loopback (inbound rate limit raised so the
client is not closed 4129), opens one client whose token carries the ``publish`` claim, and
keeps ``--inflight`` publishes with an ``id`` outstanding until ``--publishes`` were
acknowledged (``published``). Prints JSON: publishes/s and the gateway's CPU per publish, read
from /proc. Usage: ``python -m loadtest.client_publish [--publishes 5000] [--inflight 8]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from loadtest.bench.cluster import JWT_SECRET, Usage, start_cluster
from switchboard.auth import mint


async def publish_all(ws: ClientConnection, count: int, inflight: int, first_id: int) -> None:
    sent = answered = 0
    while answered < count:
        while sent < count and sent - answered < inflight:
            await ws.send(json.dumps({"type": "publish", "channel": "room",
                                      "data": {"n": sent}, "id": first_id + sent}))
            sent += 1
        reply = json.loads(await ws.recv())
        if reply["type"] == "error":
            raise RuntimeError(f"publish refused: {reply}")
        if reply["type"] == "published":
            answered += 1


async def main_async(publishes: int, inflight: int) -> dict[str, Any]:
    cluster = start_cluster(gateways=1, baseline=False, SWITCHBOARD_INBOUND_RATE="1000000",
                            SWITCHBOARD_INBOUND_BURST="1000000")
    try:
        token = mint(JWT_SECRET, "publisher", ttl=600, publish=["room"])
        async with connect(f"ws://127.0.0.1:{cluster.port}/ws?token={token}",
                           subprotocols=["switchboard.v1.json"]) as ws:  # type: ignore[list-item]
            await ws.recv()  # welcome
            await publish_all(ws, 500, inflight, 0)  # warm up
            before, started = Usage.of(cluster.gateway_pids), time.perf_counter()
            await publish_all(ws, publishes, inflight, 1_000_000)
            seconds = time.perf_counter() - started
            cpu = Usage.of(cluster.gateway_pids).cpu_since(before)
    finally:
        cluster.stop()
    return {"publishes": publishes, "inflight": inflight, "per_s": round(publishes / seconds),
            "gateway_cpu_us_per_publish": round(cpu / publishes * 1e6, 1)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.client_publish", description=__doc__)
    p.add_argument("--publishes", type=int, default=5000)
    p.add_argument("--inflight", type=int, default=8)
    a = p.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main_async(a.publishes, a.inflight)), indent=2))


if __name__ == "__main__":
    main()
