"""Drain and rebalance: move clients to other gateways, spread over time.

Each move is a ``reconnect`` hint followed by a close (1012 for a drain, 4200 for a
rebalance); clients resume elsewhere with their session and cursor, so nothing is lost. Moves
are spread evenly over a window so the peers see a steady trickle, not a stampede.
"""

from __future__ import annotations

import asyncio
import logging
import random

from gateway import balance
from gateway.errors import BackendUnavailable
from gateway.hub import Client
from gateway.ports import Services
from switchboard import contract
from switchboard.closecodes import Close
from switchboard.contract import GatewayInfo

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


async def drain(svc: Services) -> None:
    clients = list(svc.hub)
    random.shuffle(clients)
    window = svc.settings.drain_window
    log.info("draining %d clients over %.1fs", len(clients), window)
    await spread(clients, window, Close.SERVICE_RESTART, "drain")


async def _registry(svc: Services) -> list[GatewayInfo] | None:
    """The registry, or None when this gateway should not move anyone now."""
    if svc.backplane.draining or svc.backplane.unready is not None:
        return None
    try:
        return await svc.backplane.gateways()
    except BackendUnavailable:
        return None


async def rebalance_loop(svc: Services) -> None:
    s = svc.settings
    confirm = balance.confirm_window(s.heartbeat_interval)
    while True:
        # Two registry reads a confirm window apart, the round still about one interval long:
        # a peer counts only if it heartbeated between them (see balance.alive).
        period = s.rebalance_interval * random.uniform(0.8, 1.2)
        await asyncio.sleep(max(0.0, period - confirm))
        before = await _registry(svc)
        await asyncio.sleep(confirm)
        if before is None:
            continue
        now = await _registry(svc)
        if now is None:
            continue
        mine = len(svc.hub)
        decision = balance.plan(
            svc.gateway_id, mine, before, now, now_ms=contract.now_ms(),
            heartbeat_interval=s.heartbeat_interval, margin=s.rebalance_margin,
            max_moves=int(s.rebalance_rate * s.rebalance_interval),
            max_connections=s.max_connections,
        )
        svc.metrics.rebalance_checked()
        if decision.moves <= 0:
            continue
        log.info("rebalancing: moving %d of %d clients (cluster loads %s)", decision.moves, mine,
                 decision.loads)
        svc.metrics.rebalanced(decision.moves)
        chosen = random.sample(list(svc.hub), min(decision.moves, len(svc.hub)))
        await spread(chosen, s.rebalance_interval / 2, Close.REBALANCE, "rebalance")
