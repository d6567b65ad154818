"""How many gateways to run: the Kubernetes HPA rule on connection count, without I/O.

The rule (DESIGN section 8)::

    desired = ceil(total_connections / target_per_gateway), clamped to [min, max]

applied the way the HorizontalPodAutoscaler applies it (``behavior`` defaults):

- **Scale out at once.** A connection spike needs capacity now; an extra gateway for a
  minute costs little.
- **Scale in only after a stabilisation window.** Every decision records its recommendation;
  the count used for scaling in is the *maximum* recommendation of the last
  ``stabilization_window`` seconds. A brief dip therefore changes nothing, and a gateway is
  drained only once the lower load has lasted the whole window. Draining moves clients
  (losslessly, but with a reconnect each), so flapping would cost far more than it saves.
- The first decision seeds the history with the replica count found, so a freshly started
  cluster keeps its initial size for at least one window (the HPA does the same after a
  controller restart).

Replica count and demand are counted differently on purpose: a draining gateway is on its way
out, so it is not a replica, but its clients are about to reconnect elsewhere, so its
connections still count in ``total_connections``.

When scaling in, the least-loaded non-draining gateways are drained (fewest clients to move);
ties go to the later one in the input, i.e. the newest gateway when the caller lists them in
start order. :class:`Autoscaler` is fed ``(gateway_id, connections, draining)`` rows and a
timestamp; it never reads a clock, so tests drive it with an injected one.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["scale_out", "scale_in", "hold"]

DEFAULT_MIN = 1
DEFAULT_MAX = 4
DEFAULT_TARGET_CONNECTIONS = 1000
DEFAULT_WINDOW = 60.0  # seconds; the HPA's default is 300, a local cluster reacts faster


@dataclass(frozen=True, slots=True)
class GatewayLoad:
    """One registry row as the autoscaler needs it."""

    gateway_id: str
    connections: int
    draining: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """Bounds and target. ``min_replicas`` is at least 1: clients need a gateway to reach."""

    min_replicas: int = DEFAULT_MIN
    max_replicas: int = DEFAULT_MAX
    target_connections: int = DEFAULT_TARGET_CONNECTIONS
    stabilization_window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError("min_replicas must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        if self.target_connections < 1:
            raise ValueError("target_connections must be at least 1")
        if self.stabilization_window < 0:
            raise ValueError("stabilization_window must not be negative")

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))

    def recommend(self, total_connections: int) -> int:
        """The HPA formula for one instant, before stabilisation."""
        raw = math.ceil(max(0, total_connections) / self.target_connections)
        return self.clamp(raw)


@dataclass(frozen=True, slots=True)
class Decision:
    current: int  # non-draining gateways seen
    total_connections: int  # on every gateway, draining ones included
    desired: int  # this instant's recommendation
    target: int  # gateways to run now, after stabilisation
    drain: tuple[str, ...]  # gateways to drain now (least loaded first); empty unless scale_in

    @property
    def action(self) -> Action:
        if self.target > self.current:
            return "scale_out"
        if self.target < self.current:
            return "scale_in"
        return "hold"

    def describe(self) -> str:
        base = (f"{self.total_connections} connection(s) on {self.current} gateway(s): "
                f"recommend {self.desired}")
        if self.action == "scale_out":
            return f"{base}, scaling out to {self.target}"
        if self.action == "scale_in":
            return f"{base}, scaling in to {self.target}, draining {', '.join(self.drain)}"
        if self.desired < self.current:
            return f"{base}, holding {self.target} until the stabilisation window passes"
        return f"{base}, holding {self.target}"


class Autoscaler:
    """Turns registry snapshots into decisions; remembers recent recommendations."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._seeded = False

    def decide(self, gateways: Sequence[GatewayLoad], now: float) -> Decision:
        live = [(i, g) for i, g in enumerate(gateways) if not g.draining]
        current = len(live)
        total = sum(max(0, g.connections) for g in gateways)
        desired = self.policy.recommend(total)
        if not self._seeded:
            # what runs at the first look counts as recommended, so a cluster just started
            # at its chosen size is not shrunk before one whole window has passed
            self._seeded = True
            self._history.append((now, self.policy.clamp(current)))
        cutoff = now - self.policy.stabilization_window
        while self._history and self._history[0][0] <= cutoff:
            self._history.popleft()
        # the highest recommendation of the window: the HPA's scale-down stabilisation
        stabilized = max([desired, *(rec for _, rec in self._history)])
        self._history.append((now, desired))
        # scale out at once (also back up to min when gateways died or are draining); scale
        # in only as far as the whole window agrees
        target = desired if desired >= current else min(current, stabilized)
        drain: tuple[str, ...] = ()
        if target < current:
            # fewest clients to move first; on a tie, the later (newer) gateway
            by_load = sorted(live, key=lambda ig: (ig[1].connections, -ig[0]))
            drain = tuple(g.gateway_id for _, g in by_load[: current - target])
        return Decision(current=current, total_connections=total, desired=desired,
                        target=target, drain=drain)
