"""Reconnect delays: full jitter within the bound, growth to the cap, reset, server hints.

No sleeping: the random source is seeded and the clock is a variable.
"""

from __future__ import annotations

import random

import pytest

from switchboard_client.backoff import Backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bound(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    return min(cap, base * 2.0**attempt)


def test_every_delay_is_within_the_bound_of_its_attempt() -> None:
    for seed in range(50):
        b = Backoff(rng=random.Random(seed), clock=FakeClock())
        for attempt in range(20):
            assert 0.0 <= b.next_delay() <= bound(attempt)


def test_jitter_covers_the_whole_window() -> None:
    # Full jitter: a crowd of clients is spread from 0 to the bound, not bunched near it.
    rng = random.Random(42)
    for attempt in (0, 3, 10):
        delays = []
        for _ in range(2000):
            b = Backoff(rng=rng, clock=FakeClock())
            b.attempt = attempt
            delays.append(b.next_delay())
        top = bound(attempt)
        assert min(delays) < 0.1 * top
        assert max(delays) > 0.9 * top
        assert 0.4 * top < sum(delays) / len(delays) < 0.6 * top  # uniform: mean is half


def test_bound_doubles_then_stays_at_the_cap() -> None:
    b = Backoff(base=0.5, cap=20.0, rng=random.Random(1), clock=FakeClock())
    bounds = []
    for _ in range(10):
        bounds.append(b.bound())
        b.next_delay()
    assert bounds == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0, 20.0]
    b.attempt = 10_000  # no overflow however long the outage
    assert b.bound() == 20.0
    assert 0.0 <= b.next_delay() <= 20.0


def test_attempts_reset_after_a_healthy_connection() -> None:
    clock = FakeClock()
    b = Backoff(reset_after=60.0, rng=random.Random(3), clock=clock)
    for _ in range(5):
        b.next_delay()
    assert b.attempt == 5
    b.connected()
    clock.now += 59.0  # not long enough: the cluster may still be flapping
    b.disconnected()
    assert b.attempt == 5 and b.bound() == 16.0
    b.connected()
    clock.now += 60.0
    b.disconnected()
    assert b.attempt == 0
    assert 0.0 <= b.next_delay() <= 0.5


def test_asking_for_a_delay_ends_the_healthy_period() -> None:
    clock = FakeClock()
    b = Backoff(reset_after=60.0, rng=random.Random(3), clock=clock)
    b.connected()
    clock.now += 120.0
    b.next_delay()  # resets (healthy for long enough), then counts this attempt
    assert b.attempt == 1
    b.next_delay()  # the connection is gone: no second reset
    assert b.attempt == 2


def test_a_server_hint_replaces_the_jittered_delay_and_counts_as_an_attempt() -> None:
    b = Backoff(rng=random.Random(5), clock=FakeClock())
    assert b.next_delay(hint=7.5) == 7.5  # beyond the first bound (0.5): the server knows
    assert b.next_delay(hint=0.0) == 0.0
    assert b.next_delay(hint=-1.0) == 0.0
    assert b.attempt == 3
    assert 0.0 <= b.next_delay() <= 4.0


def test_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        Backoff(base=-1)
