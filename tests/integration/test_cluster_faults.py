"""Redis Cluster under faults, as users see it (issue 14): a master killed under traffic,
slots resharded under traffic, a gateway's sharded subscription killed on a node.

Real 3-master, 3-replica cluster of redis-server processes, two gateways and a router on a
``redis+cluster://`` URL, SDK clients that reconnect and resume by themselves, and a publisher
that keeps sending unicast, broadcast and channel messages through the router. Afterwards every
2xx-acknowledged message reached every client exactly once, or that client was told it lost
the stream's history (tests/integration/ledger.py says exactly what "told" is).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from switchboard.localcluster import LocalCluster, query
from tests.clients import until_async
from tests.integration.cluster import Cluster, cluster
from tests.integration.ledger import USERS, sdk_watchers, settle_sdk, traffic, wait_acked

pytestmark = pytest.mark.integration

ENV = {"SWITCHBOARD_HEARTBEAT_INTERVAL": "0.5", "SWITCHBOARD_REDIS_TIMEOUT": "2"}


def metric(c: Cluster, name: str, **labels: str) -> float:
    return sum(c.metric(gw, name, **labels) for gw in range(len(c.gateways)))


async def test_a_master_killed_under_traffic_is_never_a_silent_drop(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    # the master of the broadcast stream: every client follows something it holds
    victim = redis_cluster.master_of_slot(LocalCluster.slot_of("b"))
    with cluster(redis_cluster, logdir, **ENV) as c:  # type: ignore[arg-type]
        async with sdk_watchers(c, USERS, channel=True) as watched:
            async with traffic(c) as ledger:
                await wait_acked(ledger, 15)
                redis_cluster.kill(victim)
                promoted = await asyncio.to_thread(redis_cluster.wait_failover, victim, 45)
                assert promoted.port != victim.port
                await wait_acked(ledger, len(ledger.acks["b"]) + 40, timeout=45)
            await settle_sdk(watched, ledger)
            # the failover was felt: publishes to the dead master's slots were refused (503,
            # never a 2xx) and gateways lost and restored those subscriptions
            assert ledger.refused > 0
            assert metric(c, "switchboard_gateway_subscriptions_lost_total") > 0
            for gw in c.gateways:
                await until_ready(gw.port)


async def test_slots_resharded_under_traffic_lose_nothing(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    source = redis_cluster.master_of_slot(LocalCluster.slot_of("b"))
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    moved_keys = ["b", *(f"u:{u}" for u in USERS)]
    before = {k: redis_cluster.master_of_slot(LocalCluster.slot_of(k)).port for k in moved_keys}
    with cluster(redis_cluster, logdir, **ENV) as c:  # type: ignore[arg-type]
        async with sdk_watchers(c, USERS, channel=True) as watched:
            async with traffic(c) as ledger:
                await wait_acked(ledger, 15)
                # the source's lowest 3600 slots: broadcast's (3300) and four users'
                await asyncio.to_thread(redis_cluster.reshard, 3600, source, target, 120)
                await wait_acked(ledger, len(ledger.acks["b"]) + 30, timeout=30)
            after = {k: redis_cluster.master_of_slot(LocalCluster.slot_of(k)).port
                     for k in moved_keys}
            moved = [k for k in moved_keys if before[k] != after[k]]
            assert "b" in moved and len(moved) >= 3, moved
            await settle_sdk(watched, ledger)
            # a reshard loses no data: nobody may even be told history was lost
            assert not [w.user for w in watched if w.told()]
            assert metric(c, "switchboard_gateway_subscriptions_lost_total",
                          reason="slot_moved") > 0


async def test_a_killed_sharded_subscription_turns_the_gateway_unready_until_repaired(
    redis_cluster: LocalCluster, logdir: Path
) -> None:
    node = redis_cluster.master_of_slot(LocalCluster.slot_of("b"))
    with cluster(redis_cluster, logdir, gateways=1, **ENV) as c:  # type: ignore[arg-type]
        async with sdk_watchers(c, USERS, channel=True) as watched:
            async with traffic(c) as ledger:
                await wait_acked(ledger, 10)
                readyz = f"http://127.0.0.1:{c.gateways[0].port}/readyz"
                # Kill the gateway's sharded subscriptions on that node and, in the same
                # write (nothing runs in between), keep the node from answering anyone for a
                # moment, so the repair cannot finish before we looked.
                clients = query(node, ("CLIENT", "LIST"))[0]
                assert " name=sb:pubsub:" in clients, "the gateway has a pub/sub link there"
                killed, _ = query(node, ("CLIENT", "KILL", "TYPE", "pubsub"),
                                  ("CLIENT", "PAUSE", "1500", "ALL"))
                assert int(killed) >= 1
                async with httpx.AsyncClient() as http:
                    async def unready() -> bool:
                        return (await http.get(readyz)).status_code == 503

                    await until_async(unready, 10, "readyz 503 after the subscription died")
                await until_ready(c.gateways[0].port)
                await wait_acked(ledger, len(ledger.acks["b"]) + 20)
            await settle_sdk(watched, ledger)
            assert not [w.user for w in watched if w.told()]
            assert metric(c, "switchboard_gateway_subscriptions_lost_total",
                          reason="connection") > 0


async def until_ready(port: int, timeout: float = 20) -> None:
    async with httpx.AsyncClient() as http:
        async def ready() -> bool:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200

        await until_async(ready, timeout, f"gateway {port} ready")
