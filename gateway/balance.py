"""Moving clients between gateways without a stampede, free of I/O.

Long-lived connections stay where they landed, so after a scale-out the old gateways keep
their load. A gateway that holds more than ``margin`` above the cluster mean moves a bounded
number of clients per round (``reconnect`` + close 4200); they resume elsewhere without loss.
Draining moves everyone, spread evenly over the drain window. Moves go only where there is
evidence of a live gateway with room (:func:`plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from switchboard.contract import GatewayInfo


def moves(mine: int, loads: list[int], *, margin: float, max_moves: int,
          min_excess: int = 2) -> int:
    """How many clients this gateway should move now. ``loads``: every live, non-draining
    gateway's connection count, this one's included."""
    if len(loads) < 2 or max_moves <= 0:
        return 0
    mean = sum(loads) / len(loads)
    excess = mine - mean
    if mine <= mean * (1 + margin) or excess < min_excess:
        return 0
    # Down to the mean at most: moving more would just make another gateway the heavy one.
    return min(max_moves, int(excess))


def due(total: int, elapsed: float, window: float) -> int:
    """How many of ``total`` clients should have been moved ``elapsed`` seconds into a
    ``window``-long spread (evenly, the first one at once)."""
    if total <= 0:
        return 0
    if window <= 0 or elapsed >= window:
        return total
    return min(total, 1 + int(total * elapsed / window))


def imbalance(loads: list[int]) -> float:
    """max/mean, the figure operators watch; 1.0 for an empty or idle cluster."""
    if not loads or sum(loads) == 0:
        return 1.0
    return max(loads) / (sum(loads) / len(loads))


# -- who may receive moves --------------------------------------------------------------------

def confirm_window(heartbeat_interval: float) -> float:
    """Seconds between the two registry reads of one rebalance round: long enough that every
    live gateway heartbeats in between (an interval, plus slack for Redis and a busy loop)."""
    return 1.5 * heartbeat_interval + 0.1


def fresh_limit(heartbeat_interval: float) -> float:
    """Oldest heartbeat (seconds, by the writer's clock) that still counts as recent."""
    return 2 * heartbeat_interval + 0.5


def alive(info: GatewayInfo, before: GatewayInfo | None, *, now_ms: int,
          heartbeat_interval: float) -> bool:
    """Evidence that ``info``'s gateway is up and taking clients now.

    ``before``: its entry as read one :func:`confirm_window` earlier. A registry entry outlives
    a crashed gateway by about three heartbeats and its last heartbeat can be a fraction of a
    second old when it dies, so age alone proves nothing: the heartbeat must have *advanced*
    between the two reads (it was written after the first one) and be recent. Even that leaves
    a window (it heartbeated, then died), so a gateway whose own pub/sub channel has no
    subscriber at the second read (``listening`` False: a killed process's connections close
    with it) is dead too. A draining gateway, or one whose entry says it is not ready, takes
    nobody.
    """
    if info.draining or info.ready is False or info.listening is False:
        return False
    if before is None or info.heartbeat_ms <= before.heartbeat_ms:
        return False
    age = max(0.0, now_ms - info.heartbeat_ms) / 1000
    return age <= fresh_limit(heartbeat_interval)


def room(info: GatewayInfo, default_max: int | None) -> int | None:
    """Connections ``info``'s gateway can still accept; None for no limit. An entry that does
    not advertise its limit is taken to share ours (``default_max``)."""
    limit = default_max if info.max_connections is None else (info.max_connections or None)
    if limit is None:
        return None
    return max(0, limit - info.connections)


@dataclass(frozen=True, slots=True)
class Plan:
    moves: int
    loads: list[int]  # ours first, then each live target's
    targets: list[str]  # gateway ids counted as live


def plan(me: str, mine: int, before: Sequence[GatewayInfo], now: Sequence[GatewayInfo], *,
         now_ms: int, heartbeat_interval: float, margin: float, max_moves: int,
         max_connections: int | None) -> Plan:
    """One rebalance round's decision from two registry reads a :func:`confirm_window` apart.

    Only gateways with evidence of life (:func:`alive`) enter the mean, and no more clients
    move than those gateways have room for: a crashed, draining or full gateway attracts no
    moves. Our own load is ``mine`` (our registry entry may lag a heartbeat).
    """
    earlier = {g.gateway_id: g for g in before}
    targets = [g for g in now if g.gateway_id != me and
               alive(g, earlier.get(g.gateway_id), now_ms=now_ms,
                     heartbeat_interval=heartbeat_interval)]
    loads = [mine, *(g.connections for g in targets)]
    n = moves(mine, loads, margin=margin, max_moves=max_moves)
    rooms = [room(g, max_connections) for g in targets]
    if n > 0 and None not in rooms:
        n = min(n, sum(r for r in rooms if r is not None))
    return Plan(n, loads, [g.gateway_id for g in targets])
