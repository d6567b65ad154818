"""Latency percentiles, sampling and rates that the bench reports."""

from __future__ import annotations

import random

import pytest

from loadtest.bench import stats


def test_percentile_interpolates_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 50) == 2.5
    assert stats.percentile(values, 99) == pytest.approx(3.97)
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summary_is_in_milliseconds() -> None:
    summary = stats.summarize_ms([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert summary["n"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert stats.summarize_ms([]) == {"n": 0}


def test_reservoir_is_bounded_and_uniform_enough() -> None:
    res = stats.Reservoir(1000, random.Random(7))
    for i in range(100_000):
        res.add(float(i))
    assert len(res.values) == 1000 and res.seen == 100_000
    # a uniform sample of 0..99,999 has its median near 50,000
    assert 45_000 < stats.percentile(sorted(res.values), 50) < 55_000
    res.clear()
    assert res.values == [] and res.seen == 0


def test_merge_weights_workers_by_what_they_saw() -> None:
    busy = ([1.0] * 100, 9000)
    quiet = ([2.0] * 100, 1000)
    merged = stats.merge_samples([busy, quiet], 100, random.Random(1))
    assert merged.count(1.0) == 90 and merged.count(2.0) == 10
    assert stats.merge_samples([([], 0)], 10) == []


def test_peak_rate_uses_the_busiest_bucket() -> None:
    times = [10.00, 10.01, 10.05, 10.12, 10.31]
    assert stats.peak_rate(times, 0.1) == (pytest.approx(30.0), 3)
    assert stats.peak_rate([], 0.1) == (0.0, 0)


def test_ratio_is_none_when_undefined() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, 0) is None
