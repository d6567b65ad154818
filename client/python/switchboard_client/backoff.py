"""Reconnect delays: exponential backoff with full jitter (DESIGN 8).

``delay = uniform(0, min(cap, base * 2**attempt))``, attempt counting from 0. Full jitter
spreads a crowd of clients that lost the same gateway over the whole window instead of
bringing them back in synchronised waves. A connection that stayed open for ``reset_after``
seconds proves the cluster healthy again, so the next failure starts from attempt 0.

The class does no I/O and never sleeps; the random source and the clock are injectable::

    >>> import random
    >>> b = Backoff(rng=random.Random(1), clock=lambda: 0.0)
    >>> 0 <= b.next_delay() <= 0.5 and 0 <= b.next_delay() <= 1.0
    True
    >>> b.next_delay(hint=3.0)   # the server said when (after_ms, Retry-After)
    3.0
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

# 2**64 * base is beyond any sensible cap; stop the exponent there so it never overflows a float.
_MAX_EXPONENT = 64


class Backoff:
    """Delay before each reconnect attempt.

    Args:
        base: bound of the first attempt's delay, seconds (default 0.5).
        cap: largest bound, seconds (default 20).
        reset_after: seconds a connection must stay open before the attempt count resets
            (default 60).
        rng: random source (default: a fresh ``random.Random()``).
        clock: monotonic clock in seconds (default ``time.monotonic``).
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 20.0,
        reset_after: float = 60.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base < 0 or cap < 0 or reset_after < 0:
            raise ValueError("base, cap and reset_after must be >= 0")
        self.base = base
        self.cap = cap
        self.reset_after = reset_after
        self.attempt = 0
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._opened_at: float | None = None

    def bound(self) -> float:
        """Upper bound of the next jittered delay."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, _MAX_EXPONENT))

    def next_delay(self, hint: float | None = None) -> float:
        """Delay before the next attempt; counts the attempt.

        A server ``hint`` (seconds) replaces the jittered delay for this attempt.
        """
        self.disconnected()  # asking for a delay means the connection is gone
        delay = max(0.0, hint) if hint is not None else self._rng.uniform(0.0, self.bound())
        self.attempt += 1
        return delay

    def connected(self) -> None:
        """A connection is open (the welcome arrived); the healthy period starts now."""
        self._opened_at = self._clock()

    def disconnected(self) -> None:
        """The connection closed; reset the attempt count if it had been healthy long enough."""
        if self._opened_at is not None and self._clock() - self._opened_at >= self.reset_after:
            self.attempt = 0
        self._opened_at = None
