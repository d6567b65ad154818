"""Drain and rebalance: move clients to other gateways, spread over time.

Each move is a ``reconnect`` hint followed by a close (1012 for a drain, 4200 for a
rebalance); clients resume elsewhere with their session and cursor, so nothing is lost. Moves
are spread evenly over a window so the peers see a steady trickle, not a stampede.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway import balance
from switchboard.closecodes import Close
from switchboard.store import heartbeat_age

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.hub import Client

log = logging.getLogger("switchboard.gateway")

TICK = 0.05  # seconds between batches of moves


def move(client: Client, code: int, reason: str, jitter_ms: int = 500) -> None:
    client.transport.send_obj(
        {"type": "reconnect", "after_ms": random.randint(0, jitter_ms), "reason": reason}
    )
    client.transport.close(code, reason)


async def spread(clients: list[Client], window: float, code: int, reason: str) -> None:
    """Move ``clients`` evenly over ``window`` seconds (closing a gone one is a no-op)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = 0
    while done < len(clients):
        target = balance.due(len(clients), loop.time() - start, window)
        for client in clients[done:target]:
            move(client, code, reason)
        done = target
        if done < len(clients):
            await asyncio.sleep(TICK)


async def drain(app: Gateway) -> None:
    clients = list(app.hub)
    random.shuffle(clients)
    window = app.settings.drain_window
    log.info("draining %d clients over %.1fs", len(clients), window)
    await spread(clients, window, Close.SERVICE_RESTART, "drain")


async def rebalance_loop(app: Gateway) -> None:
    s = app.settings
    while True:
        await asyncio.sleep(s.rebalance_interval * random.uniform(0.8, 1.2))
        if app.draining or not app.backplane.ready:
            continue
        try:
            gateways = await app.store.gateways()
        except (RedisError, OSError):
            continue
        mine = len(app.hub)
        # A crashed gateway's entry outlives it by a few heartbeats: count only fresh ones,
        # or we would move clients "towards" a gateway that is gone. Our own entry may lag by
        # a heartbeat: use our live count for ourselves.
        fresh = 2 * s.heartbeat_interval + 0.5
        loads = [mine if g.gateway_id == app.gateway_id else g.connections
                 for g in gateways
                 if not g.draining and (g.gateway_id == app.gateway_id or
                                        heartbeat_age(g) <= fresh)]
        n = balance.moves(mine, loads, margin=s.rebalance_margin,
                          max_moves=int(s.rebalance_rate * s.rebalance_interval))
        if n <= 0:
            continue
        log.info("rebalancing: moving %d of %d clients (cluster loads %s)", n, mine, loads)
        app.metrics.rebalanced(n)
        chosen = random.sample(list(app.hub), n)
        await spread(chosen, s.rebalance_interval / 2, Close.REBALANCE, "rebalance")
