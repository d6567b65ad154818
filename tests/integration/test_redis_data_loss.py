"""Redis losing data under steady traffic, as a user sees it (issue 12, DESIGN 7).

Real redis-server, two gateways and a router; clients stay connected while a publisher keeps
sending unicast, broadcast and channel messages through the router. Redis is restarted empty,
flushed, has its pub/sub connections killed, or comes back from an older snapshot. Afterwards
every message the router acknowledged with a 2xx reached every connected recipient exactly
once, or that recipient was told it lost the stream's history.

"Told" is what the protocol says: a message in a new epoch tells the client the *old* epoch's
history is gone, so old-epoch messages after its last one are excused once it moved on to a
new epoch. A new epoch starts at offset 1: every acknowledged message of an epoch the client
ended in must have arrived. An offset jump or a duplicate is never excused.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from tests.clients import until
from tests.integration.cluster import cluster
from tests.integration.ledger import (
    USERS,
    Ledger,
    connect_all,
    epochs,
    sdk_watchers,
    settle,
    settle_sdk,
    traffic,
    under_faults,
    wait_acked,
)
from tests.relay import Relay
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

@pytest.mark.parametrize("seed", [1, 2])
async def test_redis_restarted_empty_under_traffic_loses_nothing_silently(
    redis_server: RedisServer, logdir: Path, seed: int
) -> None:
    rng = random.Random(seed)
    with cluster(redis_server, logdir) as c:
        watched = await connect_all(c)

        async def restart() -> None:
            redis_server.stop()  # SIGTERM, no persistence: it comes back empty
            await asyncio.sleep(rng.uniform(0.2, 2.0))  # the outage itself
            redis_server.start()

        # the restart lands at a different moment each time
        ledger = await under_faults(c, restart, 3, lambda: rng.randint(3, 30))
        await settle(watched, ledger)
        assert len(epochs(ledger, "b")) == 4, "every restart started a new epoch"
        assert ledger.refused > 0, "publishes during the outages were refused, not acked"
        # The new epochs' first offsets were routed to nobody or missed on pub/sub (the
        # gateways were not registered or subscribed yet); the gateways filled them.
        assert sum(c.metric(gw, "switchboard_gateway_gap_fills_total", outcome="filled")
                   for gw in (0, 1)) > 0
        for w in watched:
            await w.client.close()


async def test_flushall_under_traffic_loses_nothing_silently(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        watched = await connect_all(c)

        async def flush() -> None:
            redis_server.cli("FLUSHALL")  # connections stay up; every key is gone

        ledger = await under_faults(c, flush, 2)
        await settle(watched, ledger)
        assert len(epochs(ledger, f"u:{USERS[0]}")) == 3
        for w in watched:
            await w.client.close()


async def test_killed_pubsub_connections_lose_nothing_under_traffic(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        watched = await connect_all(c)

        async def kill_pubsub() -> None:
            redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")

        ledger = await under_faults(c, kill_pubsub, 3)
        await settle(watched, ledger)
        # Redis kept its data: one epoch, and nothing at all may be missing.
        assert len(epochs(ledger, "b")) == 1
        assert all(w.received("broadcast")[-1][1] == ledger.acks["b"][-1][1] for w in watched)
        assert sum(c.metric(gw, "switchboard_gateway_pubsub_reconnects_total")
                   for gw in (0, 1)) >= 6
        for w in watched:
            await w.client.close()


async def test_redis_back_with_older_data_is_history_lost_never_a_silent_skip(
    redis_server: RedisServer, logdir: Path
) -> None:
    """Redis restarts from a snapshot older than what clients already got (or a replica that
    missed writes takes over): offsets they have seen are reused for other messages. SDK
    clients must be told, and must not drop the new messages as duplicates untold."""
    with cluster(redis_server, logdir) as c:
        async with sdk_watchers(c, USERS[:6]) as watched:
            async with traffic(c) as ledger:
                await wait_acked(ledger, 10)
                redis_server.cli("SAVE")  # the snapshot Redis will come back from
                saved = len(ledger.acks["b"])
                await wait_acked(ledger, saved + 15)  # delivered, then lost with the restart
                redis_server.proc.send_signal(signal.SIGKILL)
                redis_server.proc.wait(10)
                redis_server.start()
                await wait_acked(ledger, len(ledger.acks["b"]) + 40)
            reused = [o for _, o, _ in ledger.acks["b"]]
            assert len(reused) != len(set(reused)), "the restart reused broadcast offsets"

            await settle_sdk(watched, ledger, 20)
            assert all(w.told("broadcast") for w in watched)
            assert sum(c.metric(gw, "switchboard_gateway_history_lost_total")
                       for gw in (0, 1)) > 0


async def test_reused_offsets_that_caught_up_before_the_gateway_was_back_are_told(
    redis_server: RedisServer, logdir: Path
) -> None:
    """Redis comes back from an older snapshot and, before the gateway can reach it again,
    new messages take exactly the offsets its clients already have: the top the gateway then
    reads equals what it delivered, and nothing it holds looks reused. The message at its
    own position in the log is not the one it delivered: that is the regression, told."""
    relay = Relay(redis_server.port)  # the gateway's only way to Redis: held shut meanwhile
    relay.start()
    try:
        with cluster(redis_server, logdir, gateways=1, SWITCHBOARD_REDIS_URL=relay.url) as c:
            async with sdk_watchers(c, USERS[:2]) as watched:
                ledger = Ledger()

                def publish(n: int, tag: str) -> None:
                    for i in range(n):
                        for key, body in (("b", {"broadcast": True}),
                                          *((f"u:{w.user}", {"user": w.user})
                                            for w in watched)):
                            data = f"{tag}{i}"
                            r = c.publish(**body, data=data)
                            ledger.acks.setdefault(key, []).append(
                                (r["epoch"], r["offset"], data))

                def everything_delivered() -> bool:
                    return all(len(w.received("broadcast")) == len(ledger.acks["b"])
                               for w in watched)

                publish(5, "kept")
                redis_server.cli("SAVE")  # what Redis will come back with: offsets 1..5
                publish(5, "lost")  # delivered (offsets 6..10), then lost with the restart
                await until(everything_delivered, 10, "the first ten delivered")
                relay.refuse_new(True)
                redis_server.proc.send_signal(signal.SIGKILL)
                redis_server.proc.wait(10)
                redis_server.start()
                wait_until(lambda: redis_server.cli("PING").strip() == "PONG", 10, "Redis up")
                publish(5, "reused")  # offsets 6..10 again, other messages
                assert [o for _, o, _ in ledger.acks["b"]][-5:] == [6, 7, 8, 9, 10]
                relay.refuse_new(False)
                await until(lambda: all(w.told("broadcast") for w in watched), 20,
                            "every client told it lost the broadcast history")
                publish(5, "after")  # a new epoch; every one of these must arrive
                await settle_sdk(watched, ledger, 20)
                assert c.metric(0, "switchboard_gateway_history_lost_total") > 0
                for w in watched:
                    assert [d for _, _, d in w.received("broadcast")][-5:] == \
                        [f"after{i}" for i in range(5)]
    finally:
        relay.close()
