"""Gateway metrics behind one object with named methods and bounded label values.

Each gateway has its own registry (several gateways may share a process in tests). Hot-path
counts are added once per message (``inc(n)``), never once per connection.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.hotmetrics import DeliveryCollector
from gateway.wire import WIRES, Wire
from switchboard import closecodes

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PROXY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_FANOUT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class GatewayMetrics:
    def __init__(self, gateway_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "switchboard_gateway_connections", "Open client connections", ["transport"],
            registry=r,
        )
        self._connects = Counter(
            "switchboard_gateway_connects", "Accepted client connections", ["transport"],
            registry=r,
        )
        self._disconnects = Counter(
            "switchboard_gateway_disconnects", "Closed client connections by close code",
            ["transport", "code"], registry=r,
        )
        self._rejections = Counter(
            "switchboard_gateway_handshake_rejections", "Refused handshakes by HTTP status",
            ["status"], registry=r,
        )
        self._hot = DeliveryCollector([w.value for w in WIRES], _FANOUT_BUCKETS,
                                      _LATENCY_BUCKETS)
        r.register(self._hot)
        self._gaps = Counter(
            "switchboard_gateway_live_gaps", "Live messages whose offset jumped", registry=r
        )
        self._redis_errors = Counter(
            "switchboard_gateway_redis_errors", "Failed Redis operations", ["op"], registry=r
        )
        self._pubsub_reconnects = Counter(
            "switchboard_gateway_pubsub_reconnects", "Redis pub/sub connections re-established",
            registry=r,
        )
        self._client_errors = Counter(
            "switchboard_gateway_client_errors", "Malformed or refused client messages",
            registry=r,
        )
        self._presence = Counter(
            "switchboard_gateway_presence_events",
            "Presence events: announced by this gateway, lost (not sent: Redis failed), "
            "delivered (event x watching connection), malformed (dropped)", ["outcome"],
            registry=r,
        )
        self._acks = Counter(
            "switchboard_gateway_acks",
            "Client acks of the user stream: stale (another epoch, dropped), refused (past "
            "what was sent), written (per session and batch), retried (Redis failed)",
            ["outcome"], registry=r,
        )
        self._resumes = Counter(
            "switchboard_gateway_resumes", "Connections that sent a cursor, by outcome",
            ["outcome"], registry=r,
        )
        self._fills = Counter(
            "switchboard_gateway_gap_fills", "Live gaps and pub/sub catch-ups read from the log",
            ["outcome"], registry=r,
        )
        self._log_reads = Counter(
            "switchboard_gateway_log_reads",
            "Log ranges asked for (resumes, fills): read from Redis, or shared with an "
            "identical read already in flight", ["outcome"], registry=r,
        )
        self._subscriptions_lost = Counter(
            "switchboard_gateway_subscriptions_lost",
            "Pub/sub subscriptions found lost and made again, by how: the connection dropped, "
            "or the canary (our own pings) stopped coming back", ["reason"], registry=r,
        )
        self._history_lost = Counter(
            "switchboard_gateway_history_lost",
            "Streams whose offsets went back within an epoch (Redis came back with older "
            "data): the epoch was retired and its followers moved", registry=r,
        )
        self._moved = Counter(
            "switchboard_gateway_rebalanced", "Clients asked to move by the rebalancer",
            registry=r,
        )
        self._rebalance_checks = Counter(
            "switchboard_gateway_rebalance_checks", "Rebalance rounds decided (moves or not)",
            registry=r,
        )
        # Proxy calls: event is one of gateway.proxyrules.EVENTS, result allowed / denied /
        # rewritten, kind one of the ProxyUnavailable kinds: all bounded.
        self._proxy_calls = Counter(
            "switchboard_gateway_proxy_calls",
            "Proxy calls answered by the backend, by event and verdict", ["event", "result"],
            registry=r,
        )
        self._proxy_errors = Counter(
            "switchboard_gateway_proxy_errors",
            "Proxy calls without a verdict, by event and kind (timeout, connection, http_4xx, "
            "http_5xx, bad_answer, breaker_open, overloaded)", ["event", "kind"], registry=r,
        )
        self._proxy_seconds = Histogram(
            "switchboard_gateway_proxy_seconds",
            "Time of proxy calls the backend answered, by event", ["event"],
            buckets=_PROXY_BUCKETS, registry=r,
        )
        self.ready = Gauge(
            "switchboard_gateway_ready",
            "1 when Redis is reachable, our own pub/sub pings come back, and not draining",
            registry=r,
        )
        info = Gauge("switchboard_gateway_info", "Gateway identity", ["gateway"], registry=r)
        info.labels(gateway_id).set(1)
        for w in Wire:
            self.connections.labels(w.value).set(0)

    def connected(self, wire: Wire) -> None:
        self._connects.labels(wire.value).inc()
        self.connections.labels(wire.value).inc()

    def closed(self, wire: Wire, code: int | None) -> None:
        """Counted when the close is decided (a stalled peer may take long to go away)."""
        self._disconnects.labels(wire.value, closecodes.label(code)).inc()

    def ended(self, wire: Wire) -> None:
        self.connections.labels(wire.value).dec()

    def rejected(self, status: int) -> None:
        self._rejections.labels(str(status)).inc()

    def delivered(self, counts: list[int], fanout_seconds: float, latency: float) -> None:
        """Once per message; ``counts`` per wire format, indexed like ``gateway.wire.WIRES``."""
        hot = self._hot
        hot.received += 1
        totals = hot.delivered
        totals[0] += counts[0]
        totals[1] += counts[1]
        totals[2] += counts[2]
        hot.fanout.observe(fanout_seconds)
        if latency >= 0:
            hot.latency.observe(latency)

    def delivered_total(self) -> int:
        """Live deliveries (message x connection) since start, every wire format."""
        return sum(self._hot.delivered)

    def resumed(self, recovered: bool) -> None:
        self._resumes.labels("recovered" if recovered else "not_recovered").inc()

    def fill(self, complete: bool) -> None:
        self._fills.labels("filled" if complete else "incomplete").inc()

    def log_reads(self, read: int, shared: int) -> None:
        if read:
            self._log_reads.labels("read").inc(read)
        if shared:
            self._log_reads.labels("shared").inc(shared)

    def history_lost(self) -> None:
        self._history_lost.inc()

    def rebalanced(self, n: int) -> None:
        self._moved.inc(n)

    def rebalance_checked(self) -> None:
        self._rebalance_checks.inc()

    def gap(self) -> None:
        self._gaps.inc()

    def redis_error(self, op: str) -> None:
        self._redis_errors.labels(op).inc()

    def subscription_lost(self, reason: str) -> None:
        self._subscriptions_lost.labels(reason).inc()

    def pubsub_reconnected(self) -> None:
        self._pubsub_reconnects.inc()

    def presence(self, outcome: str, n: int = 1) -> None:
        self._presence.labels(outcome).inc(n)

    def acks(self, outcome: str, n: int = 1) -> None:
        self._acks.labels(outcome).inc(n)

    def client_error(self) -> None:
        self._client_errors.inc()

    def proxy_call(self, event: str, result: str, seconds: float) -> None:
        self._proxy_calls.labels(event, result).inc()
        self._proxy_seconds.labels(event).observe(seconds)

    def proxy_error(self, event: str, kind: str) -> None:
        self._proxy_errors.labels(event, kind).inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
