"""Delivery metrics kept as plain ints, exported by a collector when Prometheus scrapes.

prometheus-client takes a lock and looks up label children on every ``inc``/``observe``;
at tens of thousands of messages a second that was a fifth of the delivery path. These
counters and histograms are updated with a few integer additions and read at scrape time.
The event loop is single-threaded, so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class FastHistogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= v.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out


class DeliveryCollector(Collector):
    """Envelopes received, deliveries by transport, fan-out time, publish-to-write latency."""

    def __init__(self, transports: Sequence[str], fanout_buckets: Sequence[float],
                 latency_buckets: Sequence[float]) -> None:
        self.transports = tuple(transports)
        self.received = 0
        self.delivered = [0] * len(self.transports)
        self.fanout = FastHistogram(fanout_buckets)
        self.latency = FastHistogram(latency_buckets)

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "switchboard_gateway_envelopes_received", "Envelopes received from Redis pub/sub")
        received.add_metric([], self.received)
        yield received
        delivered = CounterMetricFamily(
            "switchboard_gateway_messages_delivered", "Messages written to clients",
            labels=["transport"])
        for name, n in zip(self.transports, self.delivered, strict=True):
            delivered.add_metric([name], n)
        yield delivered
        for name, doc, hist in (
            ("switchboard_gateway_fanout_seconds",
             "Time to hand one message to all local recipients", self.fanout),
            ("switchboard_gateway_publish_to_write_seconds",
             "From the router's publish to the gateway's write", self.latency),
        ):
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], hist.cumulative(), hist.sum)
            yield family
