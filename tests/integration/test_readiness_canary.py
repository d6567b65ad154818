"""Readiness proves the pub/sub path end to end (DESIGN 7): a gateway whose subscription goes
silently deaf turns not-ready, repairs itself, becomes ready again, and nobody misses a message.

The pub/sub connection runs through a real TCP relay (tests/relay.py) that stops forwarding
what Redis sends to it while leaving it open: no error, no closed socket, Redis still answers
every command. Only the gateway's own pings not coming back can tell. The relay also refuses
new connections until the test has seen the 503, so a repair faster than one poll is no race.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from switchboard.auth import mint
from tests.clients import until, until_async
from tests.integration.sdk import start_consumers, stop_consumers
from tests.integration.traffic import Publisher, everyone_has
from tests.relay import Relay
from tests.support import JWT_SECRET, RedisServer, start_gateway, start_router

pytestmark = pytest.mark.integration


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


async def test_a_deaf_subscription_turns_the_gateway_unready_until_it_is_repaired(
    redis_server: RedisServer, relay: Relay, logdir: Path
) -> None:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID="gw-deaf",
                       SWITCHBOARD_REDIS_URL=relay.url, SWITCHBOARD_REDIS_TIMEOUT="1")
    router = start_router(redis_server, logdir)
    users = [f"d{i}" for i in range(6)]
    consumers = await start_consumers(f"ws://127.0.0.1:{gw.port}/ws",
                                      [mint(JWT_SECRET, u) for u in users])
    pub = Publisher(router, users)
    readyz = httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}")
    try:
        publishing = asyncio.create_task(pub.run(rate=30, limit=600))
        await until(lambda: len(pub.broadcasts) >= 10, 10, "traffic flowing")
        await until(everyone_has(pub, consumers, users), 10, "live delivery before the fault")
        # Deaf, and kept broken for a while: the repair cannot happen before we looked.
        relay.refuse_new(True)
        assert relay.deafen() == 1, "the gateway has one pub/sub connection"
        verdicts: list[tuple[int, str]] = []

        async def sample() -> tuple[int, str]:
            r = await readyz.get("/readyz")
            verdicts.append((r.status_code, str(r.json().get("reason"))))
            return verdicts[-1]

        async def unready() -> bool:
            return (await sample())[0] == 503

        # At most one heartbeat plus the canary's deadline, with room for a busy machine.
        await until_async(unready, 10, "readyz to turn 503 while the subscription is deaf")
        assert "pub/sub" in verdicts[-1][1], verdicts[-1]
        relay.refuse_new(False)

        async def ready() -> bool:
            return (await sample())[0] == 200

        await until_async(ready, 15, "the gateway to repair its subscription and be ready")
        assert metric(gw.port, 'switchboard_gateway_subscriptions_lost_total{reason="canary"}') >= 1
        repaired_at = len(pub.broadcasts)
        await until(lambda: len(pub.broadcasts) >= repaired_at + 20, 15, "traffic after repair")
        pub.stop.set()
        await publishing
        await until(everyone_has(pub, consumers, users), 15, "every message everywhere")
        pub.check(consumers, users)
    finally:
        pub.stop.set()
        await readyz.aclose()
        await pub.http.aclose()
        await stop_consumers(consumers)
        for p in (gw, router):
            p.stop()
