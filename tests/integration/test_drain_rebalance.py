"""Moving clients between gateways loses nothing: SIGTERM drain, rebalance, admission."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from switchboard.auth import mint
from tests.clients import WsClient, until
from tests.integration.sdk import start_consumers, stop_consumers
from tests.integration.traffic import Publisher, everyone_has
from tests.support import (
    API_KEY,
    JWT_SECRET,
    Proc,
    RedisServer,
    free_port,
    start_gateway,
    start_router,
)

pytestmark = pytest.mark.integration


def gateway_load(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("switchboard_gateway_connections{"))


async def test_sigterm_drains_every_client_to_the_peer_spread_over_the_window_losing_nothing(
    redis_server: RedisServer, logdir: Path
) -> None:
    port = free_port()
    window = 3.0
    env: dict[str, Any] = {"SWITCHBOARD_DRAIN_WINDOW": str(window), "SWITCHBOARD_REBALANCE": "0"}
    a = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID="gw-a", **env)
    b = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID="gw-b", **env)
    router = start_router(redis_server, logdir)
    users = [f"u{i}" for i in range(40)]
    consumers = await start_consumers(f"ws://127.0.0.1:{port}/ws",
                                      [mint(JWT_SECRET, u) for u in users])
    pub = Publisher(router, users)
    try:
        ids = {c.client.gateway for c in consumers}
        assert len(ids) == 2, "the kernel should have spread clients over both gateways"
        victim, victim_id = a, "gw-a"
        publishing = asyncio.create_task(pub.run(rate=40, limit=400))
        await until(lambda: len(pub.broadcasts) >= 20, 10, "traffic flowing")
        moved = [c for c in consumers if c.client.gateway == victim_id]
        started = time.monotonic()
        victim.kill(15)  # SIGTERM
        await until(lambda: all(c.client.gateway != victim_id for c in moved), window + 10,
                    "every client of the draining gateway moved")
        code = await asyncio.to_thread(victim.proc.wait, window + 15)
        assert code == 0
        assert time.monotonic() - started < window + 6
        assert all(c.client.gateway == "gw-b" for c in consumers)
        pub.stop.set()
        await publishing
        await until(everyone_has(pub, consumers, users), 15, "every message everywhere")
        pub.check(consumers, users)
        # The moves were spread over the window: no single half-second took most of them.
        times = sorted(next(t for t, g in c.gateways if g != victim_id and t >= started)
                       - started for c in moved)
        assert len(times) >= len(moved)
        buckets: dict[int, int] = {}
        for t in times:
            buckets[int(t / 0.5)] = buckets.get(int(t / 0.5), 0) + 1
        assert max(buckets.values()) <= max(3, len(moved) // 2), buckets
        assert times[-1] - times[0] >= window / 2, times
    finally:
        pub.stop.set()
        await pub.http.aclose()
        await stop_consumers(consumers)
        for p in (a, b, router):
            p.stop()


async def test_rebalance_after_scale_out_brings_max_over_mean_under_threshold_losing_nothing(
    redis_server: RedisServer, logdir: Path
) -> None:
    port = free_port()
    env: dict[str, Any] = {"SWITCHBOARD_REBALANCE_INTERVAL": "1",
                           "SWITCHBOARD_REBALANCE_MARGIN": "0.2",
                           "SWITCHBOARD_REBALANCE_RATE": "20"}
    a = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID="gw-a", **env)
    router = start_router(redis_server, logdir)
    users = [f"r{i}" for i in range(40)]
    consumers = await start_consumers(f"ws://127.0.0.1:{port}/ws",
                                      [mint(JWT_SECRET, u) for u in users])
    pub = Publisher(router, users)
    b: Proc | None = None
    try:
        assert {c.client.gateway for c in consumers} == {"gw-a"}
        publishing = asyncio.create_task(pub.run(rate=30, limit=600))
        # Scale out: the new gateway starts empty; long-lived connections stay where they are.
        b = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID="gw-b", **env)

        def balanced() -> bool:
            loads = [sum(1 for c in consumers if c.client.gateway == gid and
                         c.client.state == "open") for gid in ("gw-a", "gw-b")]
            return sum(loads) == 40 and max(loads) / 20 <= 1.2

        await until(balanced, 30, "max/mean under 1.2")
        pub.stop.set()
        await publishing
        await until(everyone_has(pub, consumers, users), 15, "every message everywhere")
        pub.check(consumers, users)
    finally:
        pub.stop.set()
        await pub.http.aclose()
        await stop_consumers(consumers)
        for p in (a, b, router):
            if p is not None:
                p.stop()


async def test_capacity_and_accept_rate_refusals_carry_retry_after_and_spare_existing_clients(
    redis_server: RedisServer, logdir: Path
) -> None:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_MAX_CONNECTIONS="3",
                       SWITCHBOARD_ACCEPT_RATE="1", SWITCHBOARD_ACCEPT_BURST="3")
    router = start_router(redis_server, logdir)
    url = f"ws://127.0.0.1:{gw.port}/ws?token="
    held = [await WsClient(url + mint(JWT_SECRET, f"h{i}")).start() for i in range(3)]
    try:
        with pytest.raises(InvalidStatus) as full:
            async with connect(url + mint(JWT_SECRET, "extra")):
                pass
        assert full.value.response.status_code == 503
        assert int(full.value.response.headers["Retry-After"]) >= 1
        await held[0].close()
        await until(lambda: gateway_load(gw.port) == 2, 5, "a slot freed")
        # The burst of 3 is spent: the next attempts within a second are rate limited.
        statuses = []
        for i in range(3):
            try:
                async with connect(url + mint(JWT_SECRET, f"x{i}")):
                    statuses.append(101)
            except InvalidStatus as exc:
                statuses.append(exc.response.status_code)
                assert int(exc.response.headers["Retry-After"]) >= 1
        assert 429 in statuses
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"http://127.0.0.1:{router.port}/v1/publish",
                                   headers={"Authorization": f"Bearer {API_KEY}"},
                                   json={"broadcast": True, "data": "still served"})
            assert resp.status_code == 200
        await until(lambda: all(h.data("broadcast") == ["still served"] for h in held[1:]), 5,
                    "existing clients keep receiving")
    finally:
        for h in held:
            await h.close()
        gw.stop()
        router.stop()
