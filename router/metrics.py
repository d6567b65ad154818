"""The router's Prometheus metrics, behind one object with named methods.

Each router owns a :class:`RouterMetrics` with its own registry (never the global one), so
several apps can live in one process, as they do in tests. Every label takes values from a
small fixed set: target kinds, outcomes, operations, route templates, methods, status codes.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from switchboard.store import TargetKind

Outcome = Literal["ok", "duplicate", "failed"]
Mode = Literal["single", "batch"]
Operation = Literal[
    "publish", "batch", "connections", "disconnect", "presence", "cluster", "ready",
    "channels", "drain", "history", "messages", "top", "positions"
]

TARGET_LABELS: dict[TargetKind, str] = {"u": "user", "c": "channel", "b": "broadcast"}
OUTCOMES: tuple[Outcome, ...] = ("ok", "duplicate", "failed")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

# Publishing is one Redis round trip: sub-millisecond on a LAN, seconds only when Redis stalls.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._publishes = Counter(
            "switchboard_router_publishes",
            "Messages published through the router, by target kind and outcome "
            "(failed: Redis did not run the script)",
            ["target", "outcome"],
            registry=self.registry,
        )
        self._publish_seconds = Histogram(
            "switchboard_router_publish_seconds",
            "Time for Redis to run the publish script(s) of one request",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._redis_errors = Counter(
            "switchboard_router_redis_errors",
            "Redis commands that failed, by router operation",
            ["operation"],
            registry=self.registry,
        )
        # Every series from 0: rate() needs two samples, so an error counter born at 1 would
        # hide a short burst of errors from the alert.
        for operation in get_args(Operation):
            self._redis_errors.labels(operation)
        self._http = Counter(
            "switchboard_router_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        # Zero-valued series exist from the start, so rates and alerts work before traffic.
        for target in TARGET_LABELS.values():
            for outcome in OUTCOMES:
                self._publishes.labels(target, outcome)
        for mode in ("single", "batch"):
            self._publish_seconds.labels(mode)

    def published(self, kind: TargetKind, duplicate: bool) -> None:
        self._publishes.labels(TARGET_LABELS[kind], "duplicate" if duplicate else "ok").inc()

    def publish_failed(self, kind: TargetKind) -> None:
        self._publishes.labels(TARGET_LABELS[kind], "failed").inc()

    def publish_latency(self, mode: Mode, seconds: float) -> None:
        self._publish_seconds.labels(mode).observe(seconds)

    def redis_error(self, operation: Operation) -> None:
        self._redis_errors.labels(operation).inc()

    def http_request(self, route: str | None, method: str, status: int) -> None:
        """``route`` is the matched route template (never the raw path), None when unmatched."""
        method = method.upper()
        self._http.labels(
            route or UNMATCHED_ROUTE,
            method if method in METHODS else "OTHER",
            str(status) if 100 <= status <= 599 else "other",
        ).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
