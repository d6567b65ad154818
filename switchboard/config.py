"""Settings as frozen value objects.

Nothing here reads the environment: :mod:`switchboard.cli` builds these objects from flags and
``SWITCHBOARD_<NAME>`` variables (one of each per field), so every setting can be given both
ways and tests can construct them directly. ``None`` means "off" for optional limits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={"help": "Redis URL shared by the cluster; redis+cluster://HOST:PORT,... for a "
                          "Redis Cluster (docs/scaling.md)"},
    )
    prefix: str = field(default="sb:", metadata={"help": "prefix of every Redis key and channel"})
    history_size: int = field(
        default=1000, metadata={"help": "messages kept per stream for resume (approximate)"}
    )
    history_ttl: float = field(
        default=120.0, metadata={"help": "seconds a stream's replay buffer and sessions live"}
    )
    meta_ttl: float = field(
        default=7 * 24 * 3600.0,
        metadata={"help": "seconds a stream keeps its epoch and offset after its last message"},
    )
    redis_timeout: float = field(
        default=2.0, metadata={"help": "seconds before a Redis command counts as failed"}
    )


@dataclass(frozen=True, kw_only=True)
class WebhookStateSettings(RedisSettings):
    """What gateways and the webhook dispatcher must agree on (docs/webhooks.md)."""

    webhook_url: str = field(
        default="", metadata={"help": "receiver of webhook events (POST); gateways track "
                                      "online state only when it is set (off when empty)"}
    )
    webhook_offline_delay: float = field(
        default=15.0, metadata={"help": "seconds a user (or channel member) must stay gone "
                                        "before user.offline (presence.leave, "
                                        "channel.vacated) fires: reconnects do not flap"}
    )
    webhook_outbox_max: int = field(
        default=100_000, metadata={"help": "events queued in Redis per outbox partition; "
                                           "beyond, new events are counted as lost"}
    )


@dataclass(frozen=True, kw_only=True)
class WebhookSettings(WebhookStateSettings):
    host: str = field(default="0.0.0.0", metadata={"help": "address of /metrics and /readyz"})
    webhook_port: int = field(default=8090, metadata={"help": "port of /metrics and /readyz"})
    webhook_secrets: tuple[str, ...] = field(
        default=(), metadata={"help": "HMAC-SHA256 secrets signing each request "
                                      "(X-Switchboard-Signature: one v1= per secret)"}
    )
    webhook_timeout: float = field(
        default=5.0, metadata={"help": "seconds one webhook request may take"}
    )
    webhook_batch_max: int = field(
        default=100, metadata={"help": "most events in one request"}
    )
    webhook_concurrency: int = field(
        default=4, metadata={"help": "requests in flight (one per partition at most)"}
    )
    webhook_poll_interval: float = field(
        default=0.2, metadata={"help": "seconds between looks at the outboxes"}
    )
    webhook_retry_max: float = field(
        default=30.0, metadata={"help": "longest backoff between retries of a failed request"}
    )
    heartbeat_interval: float = field(
        default=2.0, metadata={"help": "seconds between lease renewals and dead-gateway sweeps"}
    )


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(WebhookStateSettings):
    host: str = field(default="0.0.0.0", metadata={"help": "address the gateway listens on"})
    port: int = field(default=8080, metadata={"help": "port for /ws, /sse, probes and metrics"})
    gateway_id: str = field(default="", metadata={"help": "unique id; random when empty"})
    advertise_host: str = field(
        default="", metadata={"help": "host written to the registry; the listen host when empty"}
    )
    reuse_port: bool = field(
        default=True, metadata={"help": "SO_REUSEPORT, so several gateways share one port"}
    )
    jwt_secret: str = field(default="", metadata={"help": "HS256 secret for client tokens"})
    jwt_public_key: str = field(
        default="", metadata={"help": "PEM public key (or @path) for RS256/ES256 client tokens"}
    )
    jwt_algorithm: str = field(
        default="", metadata={"help": "pinned JWT algorithm; HS256 or RS256 by key type if empty"}
    )
    auth_disabled: bool = field(
        default=False, metadata={"help": "DEV ONLY: accept ?user= without a token"}
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={"help": "browser Origins allowed (exact or * wildcards); same host if empty"},
    )
    heartbeat_interval: float = field(
        default=2.0, metadata={"help": "seconds between registry heartbeats"}
    )
    ping_interval: float | None = field(
        default=20.0, metadata={"help": "seconds between WebSocket pings; off when empty"}
    )
    ping_timeout: float | None = field(
        default=20.0, metadata={"help": "seconds to wait for a pong before closing"}
    )
    sse_ping_interval: float = field(
        default=15.0, metadata={"help": "seconds between ': ping' comments on SSE streams"}
    )
    handshake_timeout: float = field(
        default=10.0, metadata={"help": "seconds a client has to send its HTTP request"}
    )
    close_timeout: float = field(
        default=5.0, metadata={"help": "seconds to wait for the closing handshake"}
    )
    max_message_size: int = field(
        default=64 * 1024, metadata={"help": "largest inbound WebSocket message (1009 beyond)"}
    )
    write_buffer_limit: int = field(
        default=1024 * 1024,
        metadata={"help": "bytes queued for one connection before it is closed 4108"},
    )
    demo_config: str = field(
        default="",
        metadata={"help": "DEV ONLY: JSON served at /demo/config.json for the demo page"},
    )
    drain_window: float = field(
        default=10.0, metadata={"help": "seconds over which a draining gateway moves its clients"}
    )
    rebalance: bool = field(
        default=True, metadata={"help": "move clients off a gateway well above the mean"}
    )
    rebalance_interval: float = field(
        default=5.0, metadata={"help": "seconds between rebalance checks"}
    )
    rebalance_margin: float = field(
        default=0.2, metadata={"help": "fraction above the cluster mean that triggers moves"}
    )
    rebalance_rate: float = field(
        default=20.0, metadata={"help": "most clients moved per second when rebalancing"}
    )
    max_connections: int | None = field(
        default=None, metadata={"help": "connections per gateway; 503 beyond (off if empty)"}
    )
    accept_rate: float | None = field(
        default=None, metadata={"help": "new connections per second; 429 beyond (off if empty)"}
    )
    accept_burst: int = field(
        default=200, metadata={"help": "new connections allowed in a burst"}
    )
    max_channels: int = field(
        default=100, metadata={"help": "channels one connection may subscribe to"}
    )
    replay_stall_timeout: float = field(
        default=30.0,
        metadata={"help": "seconds a replay may wait for the client to read (4108 beyond)"},
    )
    replay_limit: int = field(
        default=1000, metadata={"help": "most messages replayed per stream on resume"}
    )
    inbound_rate: float = field(
        default=20.0, metadata={"help": "client messages per second allowed (4129 beyond)"}
    )
    inbound_burst: int = field(
        default=50, metadata={"help": "client messages allowed in a burst"}
    )
    # The proxy (docs/operations.md, "Proxy"): the gateway asks your backend over HTTP before
    # it accepts a connect, a subscribe or a client publish, and before a connection expires.
    proxy_connect_url: str = field(
        default="", metadata={"help": "backend URL asked before a connect is accepted; "
                                      "a token is then optional (off when empty)"}
    )
    proxy_subscribe_url: str = field(
        default="", metadata={"help": "backend URL asked before a subscribe (off when empty)"}
    )
    proxy_publish_url: str = field(
        default="", metadata={"help": "backend URL asked before a client publish; it may "
                                      "rewrite the data (off when empty)"}
    )
    proxy_refresh_url: str = field(
        default="", metadata={"help": "backend URL asked to extend a connection before its "
                                      "expiry; 4001 if refused (off when empty)"}
    )
    proxy_secret: str = field(
        default="", metadata={"help": "shared secret signing proxy calls "
                                      "(X-Switchboard-Signature, HMAC-SHA256)"}
    )
    proxy_timeout: float = field(
        default=2.0, metadata={"help": "seconds one proxy call may take, retry included"}
    )
    proxy_max_concurrency: int = field(
        default=100, metadata={"help": "proxy calls in flight per gateway; refused as "
                                       "unavailable beyond"}
    )
    proxy_breaker_failures: int = field(
        default=5, metadata={"help": "consecutive failed proxy calls that open the breaker"}
    )
    proxy_breaker_cooldown: float = field(
        default=5.0, metadata={"help": "seconds the open breaker refuses calls before one "
                                       "probe"}
    )
    proxy_headers: tuple[str, ...] = field(
        default=(), metadata={"help": "request headers forwarded to the connect proxy "
                                      "(e.g. Cookie, X-Forwarded-For)"}
    )
    proxy_subscribe_channels: tuple[str, ...] = field(
        default=("*",), metadata={"help": "channels (names or prefix*) whose subscribes are "
                                          "proxied"}
    )
    proxy_publish_channels: tuple[str, ...] = field(
        default=("*",), metadata={"help": "channels (names or prefix*) whose client publishes "
                                          "are proxied"}
    )


@dataclass(frozen=True, kw_only=True)
class RouterSettings(RedisSettings):
    host: str = field(default="0.0.0.0", metadata={"help": "address the router listens on"})
    router_port: int = field(default=8000, metadata={"help": "port of the router HTTP API"})
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "API keys accepted as 'Authorization: Bearer KEY'"}
    )
    max_body: int = field(default=1024 * 1024, metadata={"help": "largest request body (413)"})
    max_batch: int = field(default=1000, metadata={"help": "most messages in one batch"})
    webhook_url: str = field(
        default="", metadata={"help": "the webhook receiver, as the dispatcher's: publishes "
                                      "may ask for receipts only when it is set"}
    )
    cors_origins: tuple[str, ...] = field(
        default=(), metadata={"help": "browser origins allowed to call the API (CORS)"}
    )
    header_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a client has to send a request's line and headers (408)"},
    )
    http_parser: str = field(
        default="auto",
        metadata={"help": "HTTP/1.1 parser: httptools, h11, or auto (httptools if installed)"},
    )


def fields_of(cls: type) -> list[dataclasses.Field[object]]:
    return list(dataclasses.fields(cls))
