"""What every route needs: settings, the store, metrics, and translation of Redis failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from redis import exceptions as redis_errors
from redis.exceptions import RedisClusterException, RedisError

from router.errors import RedisUnavailable
from router.history import History
from router.metrics import Operation, RouterMetrics
from switchboard.config import RouterSettings
from switchboard.store import Store

log = logging.getLogger("switchboard.router")

# While Redis is down every request fails; one log line per interval is enough to notice.
LOG_INTERVAL = 10.0


def describe(exc: RedisError | RedisClusterException) -> str:
    """Loggable text: connection errors name host:port; a pipeline's ResponseError text would
    quote the command and its arguments (message bodies), so only its class is given."""
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


@dataclass
class RedisHealth:
    """Logs Redis failures without flooding: the first one, then at most one per interval."""

    interval: float = LOG_INTERVAL
    failing: bool = False
    last_logged: float = field(default=-1e9)

    def failed(self, operation: str, exc: RedisError | RedisClusterException,
               now: float) -> None:
        if not self.failing or now - self.last_logged >= self.interval:
            log.warning("redis unavailable during %s: %s", operation, describe(exc))
            self.last_logged = now
        self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            log.info("redis reachable again")
            self.failing = False


@dataclass(frozen=True)
class Context:
    settings: RouterSettings
    store: Store
    metrics: RouterMetrics
    health: RedisHealth = field(default_factory=RedisHealth)
    history: History = field(default_factory=History)  # the admin page's chart

    @contextmanager
    def redis(self, operation: Operation) -> Iterator[None]:
        """Run Redis work; a failure becomes a 503 and is counted, success clears the alarm."""
        try:
            yield
        # RedisClusterException (no node reachable) is not a RedisError
        except (RedisError, RedisClusterException) as exc:
            self.metrics.redis_error(operation)
            self.health.failed(operation, exc, time.monotonic())
            raise RedisUnavailable() from exc
        self.health.succeeded()
