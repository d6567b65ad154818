"""The dispatcher's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader = Gauge("switchboard_webhook_leader",
                            "1 while this dispatcher holds the lease", registry=r)
        self.requests = Counter("switchboard_webhook_requests",
                                "Webhook requests by outcome (ok, status, timeout, error)",
                                ["outcome"], registry=r)
        self.delivered = Counter("switchboard_webhook_events_delivered",
                                 "Events acknowledged by the receiver with a 2xx", registry=r)
        self.lost = Counter("switchboard_webhook_events_lost",
                            "Events refused by a full outbox", registry=r)
        self.unreadable = Counter("switchboard_webhook_events_unreadable",
                                  "Outbox entries that were not events (dropped)",
                                  registry=r)
        self.depth = Gauge("switchboard_webhook_outbox_events",
                           "Events waiting in the outboxes", registry=r)
        self.latency = Histogram("switchboard_webhook_request_seconds",
                                 "Duration of webhook requests", registry=r)
