"""The last minutes of the cluster's load, kept by the router for the admin page.

Every ``interval`` seconds the router reads the gateway registry and keeps one
:class:`Sample` in a ring of ``window / interval`` entries, so a freshly opened admin page
shows the recent past at once. Connections are the registry's counts; deliveries per second
come from each gateway's cumulative ``delivered`` heartbeat field, differenced between two of
its heartbeats (their timestamps, not the router's clock, so the rate is right whatever the
phase between sampling and heartbeats).

:class:`History` is pure (registry snapshots in, samples out); :func:`run` is the loop the
router's lifespan starts. Each router process keeps its own history: they agree, being read
from the same registry, but a router started a minute ago only has a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router.errors import RedisUnavailable
from switchboard.contract import GatewayInfo

log = logging.getLogger("switchboard.router")

INTERVAL = 2.0  # seconds between samples
WINDOW = 600.0  # seconds of history kept


@dataclass(frozen=True, slots=True)
class Sample:
    t_ms: int
    gateways: int
    connections: int
    deliveries_per_s: float

    def as_json(self) -> dict[str, Any]:
        return {"t_ms": self.t_ms, "gateways": self.gateways, "connections": self.connections,
                "deliveries_per_s": self.deliveries_per_s}


@dataclass(slots=True)
class _Beat:
    heartbeat_ms: int
    delivered: int
    rate: float


class History:
    def __init__(self, interval: float = INTERVAL, window: float = WINDOW) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("history needs interval > 0 and window >= interval")
        self.interval = interval
        self.window = window
        self.samples: deque[Sample] = deque(maxlen=math.ceil(window / interval))
        self._beats: dict[str, _Beat] = {}  # gateway id -> its last heartbeat seen

    def record(self, gateways: list[GatewayInfo], now_ms: int) -> Sample:
        rate = 0.0
        seen: dict[str, _Beat] = {}
        for g in gateways:
            if g.delivered is None:
                continue  # a gateway too old to report deliveries
            beat = self._rate(g, self._beats.get(g.gateway_id))
            seen[g.gateway_id] = beat
            rate += beat.rate
        self._beats = seen  # gone gateways are forgotten: the map stays bounded
        sample = Sample(t_ms=now_ms, gateways=len(gateways),
                        connections=sum(g.connections for g in gateways),
                        deliveries_per_s=round(rate, 2))
        self.samples.append(sample)
        return sample

    @staticmethod
    def _rate(g: GatewayInfo, before: _Beat | None) -> _Beat:
        assert g.delivered is not None
        if before is None or g.delivered < before.delivered:
            return _Beat(g.heartbeat_ms, g.delivered, 0.0)  # new, or restarted: no rate yet
        if g.heartbeat_ms <= before.heartbeat_ms:
            return before  # no heartbeat since: its last rate still stands
        seconds = (g.heartbeat_ms - before.heartbeat_ms) / 1000
        return _Beat(g.heartbeat_ms, g.delivered, (g.delivered - before.delivered) / seconds)

    def as_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "window_s": self.window,
                "samples": [s.as_json() for s in self.samples]}


async def run(history: History, read: Callable[[], Awaitable[list[GatewayInfo]]],
              now_ms: Callable[[], int]) -> None:
    """Sample until cancelled. ``read()`` returns the registry (raising RedisUnavailable when
    Redis is down: that sample is skipped, the chart shows the gap)."""
    while True:
        try:
            history.record(await read(), now_ms())
        except RedisUnavailable:
            pass  # counted and logged by the context
        except Exception:
            log.exception("admin history: sampling failed")
        await asyncio.sleep(history.interval)
