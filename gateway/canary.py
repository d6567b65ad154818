"""Readiness proven end to end: pings a gateway publishes to its own subscription.

Redis answering PING says nothing about whether our subscriptions still deliver (a pub/sub
connection can stay open and deliver nothing; a cluster node can drop a sharded subscription
when its slot moves). So each heartbeat publishes a ping to a channel this gateway is
subscribed to, and the gateway is ready only while every ping comes back in time. Two ways to
notice a lost subscription:

- the publish itself reports no receiver (Redis counts the subscribers it delivered to): the
  subscription is gone now, whatever the connection looks like;
- a ping is not back within ``deadline`` seconds of its publish: the path is deaf.

Either makes :attr:`Canary.failed` say why until the subscription is made again
(:meth:`reset`); a new subscription is not ready before its first ping is back
(:attr:`Canary.unproven`), but not lost either.
"""

from __future__ import annotations

import time


def deadline_for(redis_timeout: float, heartbeat_interval: float) -> float:
    """How long a ping may take to come back: past Redis's own timeout, and past two
    heartbeats, so that an event loop busy with a connect storm (which reads the ping late)
    is not taken for a lost subscription, whose repair would add to the storm."""
    return max(redis_timeout, 2 * heartbeat_interval) + 1.0


class Canary:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._oldest_unanswered: tuple[float, int] | None = None  # (monotonic sent, ping ms)
        self._no_receiver = False
        self._proven = False

    def sending(self, ping_ms: int) -> None:
        """A ping is about to be published. Called before the publish, not after its reply:
        the ping itself may come back first, and must find itself expected."""
        if self._oldest_unanswered is None:
            self._oldest_unanswered = (time.monotonic(), ping_ms)

    def withdraw(self, ping_ms: int) -> None:
        """The publish of that ping failed: it will not come back, and that says nothing
        about the subscription (the failure is reported where it happened)."""
        pending = self._oldest_unanswered
        if pending is not None and pending[1] == ping_ms:
            self._oldest_unanswered = None

    def reached(self, receivers: int) -> None:
        """What the publish of a ping said it reached."""
        if receivers <= 0:
            self._no_receiver = True

    def received(self, ping_ms: int) -> None:
        self._proven = True
        pending = self._oldest_unanswered
        if pending is not None and ping_ms >= pending[1]:
            self._oldest_unanswered = None

    def reset(self) -> None:
        """Subscribed afresh: what was outstanding belonged to the old subscription."""
        self._oldest_unanswered = None
        self._no_receiver = False
        self._proven = False

    @property
    def failed(self) -> str | None:
        """Why the subscription is lost (None while nothing says so): what makes a gateway
        subscribe again. A ping not back *yet* is not a loss: within the deadline it is only
        :attr:`unproven`."""
        if self._no_receiver:
            return "a ping to our own channel reached no subscriber"
        pending = self._oldest_unanswered
        if pending is not None and time.monotonic() - pending[0] > self.deadline:
            return f"a ping to our own channel is not back after {self.deadline:g}s"
        return None

    @property
    def unproven(self) -> str | None:
        """Set until the first ping on this subscription is back."""
        return None if self._proven else "no ping to our own channel is back yet"

    @property
    def not_ready(self) -> str | None:
        """Why readiness cannot be claimed: lost, or not proven yet."""
        return self.failed or self.unproven
