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
from switchboard import contract
from switchboard.closecodes import Close

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.hub import Client
    from switchboard.store import GatewayInfo

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


async def _registry(app: Gateway) -> list[GatewayInfo] | None:
    """The registry, or None when this gateway should not move anyone now."""
    if app.draining or not app.backplane.ready:
        return None
    try:
        return await app.store.gateways()
    except (RedisError, OSError):
        return None


async def rebalance_loop(app: Gateway) -> None:
    s = app.settings
    confirm = balance.confirm_window(s.heartbeat_interval)
    while True:
        # Two registry reads a confirm window apart, the round still about one interval long:
        # a peer counts only if it heartbeated between them (see balance.alive).
        period = s.rebalance_interval * random.uniform(0.8, 1.2)
        await asyncio.sleep(max(0.0, period - confirm))
        before = await _registry(app)
        await asyncio.sleep(confirm)
        if before is None:
            continue
        now = await _registry(app)
        if now is None:
            continue
        mine = len(app.hub)
        decision = balance.plan(
            app.gateway_id, mine, before, now, now_ms=contract.now_ms(),
            heartbeat_interval=s.heartbeat_interval, margin=s.rebalance_margin,
            max_moves=int(s.rebalance_rate * s.rebalance_interval),
            max_connections=s.max_connections,
        )
        app.metrics.rebalance_checked()
        if decision.moves <= 0:
            continue
        log.info("rebalancing: moving %d of %d clients (cluster loads %s)", decision.moves, mine,
                 decision.loads)
        app.metrics.rebalanced(decision.moves)
        chosen = random.sample(list(app.hub), min(decision.moves, len(app.hub)))
        await spread(chosen, s.rebalance_interval / 2, Close.REBALANCE, "rebalance")
