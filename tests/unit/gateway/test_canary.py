"""The readiness canary: when a gateway's own pings prove its subscription, and when not."""

from __future__ import annotations

import time

import pytest

from gateway.canary import Canary


class Clock:
    """time.monotonic, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sent(c: Canary, ping_ms: int, receivers: int) -> None:
    """A ping published and answered before anything came back."""
    c.sending(ping_ms)
    c.reached(receivers)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def test_a_new_subscription_is_unproven_until_its_first_ping_is_back(clock: Clock) -> None:
    """Unproven is not lost: a subscription whose first ping is on its way must not be torn
    down (the ping can come back after the PUBLISH reply; in CI a gateway resubscribed, and
    answered 503 "not subscribed", because it took that for a loss)."""
    c = Canary(deadline=5)
    assert c.unproven == "no ping to our own channel is back yet"
    assert c.failed is None and c.not_ready == c.unproven
    sent(c, 100, 1)
    assert c.failed is None and c.not_ready is not None
    c.received(100)
    assert c.failed is None and c.not_ready is None
    # a subscription whose first ping never comes back is lost once the deadline passed
    c.reset()
    sent(c, 200, 1)
    clock.now += 6
    assert c.failed is not None and "not back after 5s" in c.failed


def test_a_publish_that_reached_nobody_fails_at_once_until_reset() -> None:
    c = Canary(deadline=5)
    sent(c, 1, 1)
    c.received(1)
    sent(c, 2, 0)
    assert c.failed == "a ping to our own channel reached no subscriber"
    c.received(2)  # a late echo does not undo "nobody was subscribed"
    assert c.failed is not None
    c.reset()
    sent(c, 3, 1)
    c.received(3)
    assert c.failed is None


def test_a_ping_not_back_within_the_deadline_fails(clock: Clock) -> None:
    c = Canary(deadline=2)
    sent(c, 1, 1)
    c.received(1)
    sent(c, 2, 1)
    clock.now += 1.9
    assert c.failed is None
    sent(c, 3, 1)  # the oldest unanswered ping is what counts
    clock.now += 0.2
    assert c.failed is not None and "not back after 2s" in c.failed
    c.received(3)  # a later ping back answers the earlier ones too
    assert c.failed is None


def test_an_older_echo_does_not_answer_a_newer_ping(clock: Clock) -> None:
    c = Canary(deadline=1)
    sent(c, 10, 1)
    c.received(9)
    clock.now += 1.5
    assert c.failed is not None and "not back" in c.failed


def test_a_ping_back_before_its_publish_answered_counts(clock: Clock) -> None:
    """The ping reaches our subscription before the heartbeat reads the PUBLISH reply (a busy
    loop reads the pub/sub socket first). Recorded only after the reply, it found nothing
    expected, stayed "unanswered", and made the gateway unready and resubscribe for nothing:
    a connect storm saw 503s."""
    c = Canary(deadline=2)
    c.sending(7)
    c.received(7)  # back first
    c.reached(1)  # then the publish's reply
    clock.now += 5
    assert c.failed is None


def test_a_ping_whose_publish_failed_is_not_awaited(clock: Clock) -> None:
    c = Canary(deadline=2)
    sent(c, 1, 1)
    c.received(1)
    c.sending(2)
    c.withdraw(2)  # Redis did not take the publish
    clock.now += 5
    assert c.failed is None
    c.sending(3)
    clock.now += 3
    assert c.failed is not None  # a ping that did go out and never came back still counts
