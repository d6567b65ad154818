"""Admission control at the handshake, free of I/O.

A reconnect storm (a gateway died, thousands of clients come back at once) must degrade into
waiting, not failure: past the accept rate a client gets 429 and past capacity 503, both with
``Retry-After``, and the clients' backoff honours it. Checked before the token is verified, so
a flood costs no signature checks.
"""

from __future__ import annotations

import math
import random

from gateway.errors import HandshakeRefused
from gateway.ratelimit import TokenBucket


def refusal(status: int, code: str, message: str, retry_after: int) -> HandshakeRefused:
    """A refusal the client should retry after ``retry_after`` seconds."""
    return HandshakeRefused(status, code, message, [("Retry-After", str(retry_after))])


class Admission:
    def __init__(
        self,
        *,
        max_connections: int | None,
        accept_rate: float | None,
        accept_burst: int,
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.bucket = (None if accept_rate is None
                       else TokenBucket(accept_rate, max(1, accept_burst), now))
        self.rng = rng or random.Random()

    def check(self, connections: int, now: float) -> HandshakeRefused | None:
        if self.max_connections is not None and connections >= self.max_connections:
            # Spread the retries: a fixed Retry-After would bring the whole crowd back at once.
            return refusal(503, "at_capacity", "gateway is at capacity", self.rng.randint(1, 5))
        if self.bucket is None or self.bucket.take(now):
            return None
        return refusal(429, "rate_limited", "connect rate exceeded",
                       max(1, math.ceil(self.bucket.wait() + self.rng.random())))
