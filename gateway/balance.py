"""Moving clients between gateways without a stampede, free of I/O.

Long-lived connections stay where they landed, so after a scale-out the old gateways keep
their load. A gateway that holds more than ``margin`` above the cluster mean moves a bounded
number of clients per round (``reconnect`` + close 4200); they resume elsewhere without loss.
Draining moves everyone, spread evenly over the drain window.
"""

from __future__ import annotations


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
