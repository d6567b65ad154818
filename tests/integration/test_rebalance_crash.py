"""A crashed gateway's registry entry outlives it by a few heartbeats; it must attract no moves."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from switchboard import contract
from switchboard.auth import mint
from tests.clients import WsClient, until
from tests.support import JWT_SECRET, RedisServer, start_gateway

pytestmark = pytest.mark.integration

KEYS = contract.Keys()


def counter(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))


async def clients(port: int, prefix: str, n: int) -> list[WsClient]:
    url = f"ws://127.0.0.1:{port}/ws?token="
    return list(await asyncio.gather(
        *(WsClient(url + mint(JWT_SECRET, f"{prefix}{i}")).start() for i in range(n))))


async def test_survivor_of_a_sigkill_moves_nobody_towards_the_dead_gateway(
    redis_server: RedisServer, logdir: Path
) -> None:
    # A long heartbeat keeps the dead entry fresh (2 intervals + 0.5 s) and present (3
    # intervals + 1 s) for a while; frequent rebalance rounds look at it many times meanwhile.
    env = {"SWITCHBOARD_HEARTBEAT_INTERVAL": "1", "SWITCHBOARD_REBALANCE_INTERVAL": "0.3",
           "SWITCHBOARD_REBALANCE_MARGIN": "0.2", "SWITCHBOARD_REBALANCE_RATE": "100"}
    a = start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID="gw-a", **env)
    # b, the one to die, does not rebalance: the setup below must not move anyone either way.
    b = start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID="gw-b",
                      **{**env, "SWITCHBOARD_REBALANCE": "0"})
    held: list[WsClient] = []

    def registered(gid: str, n: int) -> bool:
        return redis_server.cli("HGET", KEYS.gateway(gid), "connections").strip() == str(n)

    try:
        # b's load first, so a never sees itself above a peer while its clients connect.
        held += await clients(b.port, "b", 30)
        await until(lambda: registered("gw-b", 30), 10, "b's load in the registry")
        held += await clients(a.port, "a", 30)
        await until(lambda: registered("gw-a", 30), 10, "a's load in the registry")
        before = counter(a.port, "switchboard_gateway_rebalance_checks")
        await until(lambda: counter(a.port, "switchboard_gateway_rebalance_checks") > before,
                    10, "a rebalance round of the balanced cluster")
        assert counter(a.port, "switchboard_gateway_rebalanced") == 0

        b.kill()  # SIGKILL: its registry entry stays, still fresh, until it expires
        await asyncio.to_thread(b.proc.wait, 10)
        # b's clients come back through the load balancer, all onto a: 60 against b's stale 30.
        held += await clients(a.port, "b", 30)
        assert registered("gw-b", 30), "the dead gateway's entry should still be there"

        await until(lambda: redis_server.cli("EXISTS", KEYS.gateway("gw-b")).strip() == "0",
                    15, "the dead gateway's registry entry to expire")
        gone = counter(a.port, "switchboard_gateway_rebalance_checks")
        await until(lambda: counter(a.port, "switchboard_gateway_rebalance_checks") >= gone + 2,
                    15, "two rebalance rounds after the entry expired")
        assert counter(a.port, "switchboard_gateway_rebalanced") == 0, a.output()
        assert "rebalancing" not in a.output()
        assert not any(c.close_code == 4200 for c in held)
        assert sum(1 for c in held if not c.closed) == 60
    finally:
        for c in held:
            await c.close()
        a.stop()
        b.stop()
