"""Latency percentiles, bounded sampling and per-bucket rates, free of I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    The same definition as numpy's default (``linear``), so numbers are comparable with
    tools people already use. ``sorted_values`` must be sorted and non-empty.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


def summarize_ms(seconds: Iterable[float]) -> dict[str, float | int]:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    values = sorted(seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p90_ms": round(percentile(values, 90) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3),
        "mean_ms": round(sum(values) / len(values) * 1000, 3),
    }


class Reservoir:
    """A uniform sample of at most ``size`` values from a stream of unknown length.

    Algorithm R (Vitter 1985): client workers see millions of deliveries, but shipping every
    latency back to the coordinator would cost more CPU than the deliveries themselves.
    """

    __slots__ = ("_rng", "seen", "size", "values")

    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        self.size = size
        self.values: list[float] = []
        self.seen = 0
        self._rng = rng or random.Random()

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value

    def clear(self) -> None:
        self.values = []
        self.seen = 0


def merge_samples(parts: Iterable[tuple[list[float], int]], size: int,
                  rng: random.Random | None = None) -> list[float]:
    """Combine per-worker reservoirs ``(values, seen)`` into one sample weighted by ``seen``.

    Each worker's values stand for ``seen`` observations; taking from each in proportion keeps
    a worker that saw more deliveries from being under-represented in the percentiles.
    """
    rng = rng or random.Random()
    parts = [(v, s) for v, s in parts if v and s]
    total = sum(s for _, s in parts)
    if total == 0:
        return []
    out: list[float] = []
    for values, seen in parts:
        want = min(len(values), max(1, round(size * seen / total)))
        out.extend(values if want >= len(values) else rng.sample(values, want))
    return out


def peak_rate(timestamps: Iterable[float], bucket: float = 0.1) -> tuple[float, int]:
    """Highest events/s over fixed ``bucket``-second windows, and the events in that bucket."""
    counts: dict[int, int] = {}
    for t in timestamps:
        b = math.floor(t / bucket)
        counts[b] = counts.get(b, 0) + 1
    if not counts:
        return 0.0, 0
    top = max(counts.values())
    return top / bucket, top


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)
