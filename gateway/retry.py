"""Jittered backoff for the gateway's retries of backend work (one helper, not three copies)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.errors import BackendUnavailable

log = logging.getLogger("switchboard.gateway")

T = TypeVar("T")

# Recovery work after a Redis outage (re-registration, catch-up, gap fills) is retried this
# many times (about 6 s in all) before it gives up.
ATTEMPTS = 6


def backoff(attempt: int, *, base: float = 0.1, cap: float = 2.0, floor: float = 0.5) -> float:
    """Seconds before retry ``attempt`` (0-based): ``base * 2**attempt`` capped at ``cap``,
    scaled by a random factor in [floor, 1] so that gateways do not retry in step
    (``floor=0`` is full jitter)."""
    return random.uniform(floor, 1.0) * min(cap, base * 2.0**attempt)


async def retrying(what: str, op: Callable[[], Awaitable[T]],
                   attempts: int = ATTEMPTS) -> T:
    """``op()``, retried with :func:`backoff` while the backend is unavailable (each failure
    logged); the last attempt's :class:`BackendUnavailable` if none succeeded."""
    for attempt in range(attempts - 1):
        try:
            return await op()
        except BackendUnavailable as exc:
            log.warning("%s failed (attempt %d of %d): %s", what, attempt + 1, attempts, exc)
            await asyncio.sleep(backoff(attempt))
    return await op()
