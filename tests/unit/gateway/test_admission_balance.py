from __future__ import annotations

import random

from gateway import balance
from gateway.admission import Admission


def test_capacity_refuses_with_503_and_a_spread_retry_after() -> None:
    adm = Admission(max_connections=2, accept_rate=None, accept_burst=1, now=0.0,
                    rng=random.Random(1))
    assert adm.check(1, 0.0) is None
    refusals = [adm.check(2, 0.0) for _ in range(50)]
    assert all(r is not None and r.status == 503 for r in refusals)
    assert len({r.retry_after for r in refusals if r}) > 1  # not everyone back at once


def test_accept_rate_allows_the_burst_then_429_until_tokens_refill() -> None:
    adm = Admission(max_connections=None, accept_rate=10.0, accept_burst=3, now=0.0)
    assert [adm.check(0, 0.0) is None for _ in range(4)] == [True, True, True, False]
    refused = adm.check(0, 0.0)
    assert refused is not None and refused.status == 429 and refused.retry_after >= 1
    assert adm.check(0, 0.2) is None  # 0.2 s at 10/s refilled two tokens
    assert adm.check(0, 0.2) is None
    assert adm.check(0, 0.2) is not None


def test_rebalance_moves_only_above_the_margin_and_never_below_the_mean() -> None:
    assert balance.moves(60, [60, 0], margin=0.2, max_moves=100) == 30
    assert balance.moves(60, [60, 0], margin=0.2, max_moves=10) == 10  # rate-limited
    assert balance.moves(35, [35, 25], margin=0.2, max_moves=100) == 0  # within 20 %
    assert balance.moves(25, [35, 25], margin=0.2, max_moves=100) == 0  # the light one
    assert balance.moves(50, [50], margin=0.2, max_moves=100) == 0  # alone
    assert balance.moves(3, [3, 0, 0], margin=0.2, max_moves=100) == 2


def test_drain_spreads_moves_evenly_over_the_window() -> None:
    assert balance.due(100, 0.0, 10.0) == 1
    assert balance.due(100, 5.0, 10.0) == 51
    assert balance.due(100, 10.0, 10.0) == 100
    assert balance.due(5, 3.0, 0.0) == 5
    assert balance.imbalance([30, 10]) == 1.5 and balance.imbalance([]) == 1.0
