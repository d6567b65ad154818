"""Pydantic models of request and response bodies, for the OpenAPI document only.

The router parses bodies itself (:mod:`router.validation`) because they may be JSON or
msgpack; these models describe the same shapes so ``/openapi.json`` documents them. Keep the
two in step: the unit tests check that the documented fields are the validated ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.validation import (
    IDEMPOTENCY_KEY_RE,
    JSON_TYPE,
    MAX_IDEMPOTENCY_KEY,
    MAX_REASON_CHARS,
    MSGPACK_TYPE,
)
from switchboard.receipts import MAX_WITHIN_MS, MIN_WITHIN_MS
from switchboard.streams import CHANNEL_RE, USER_RE

_TARGETS = ("user", "channel", "broadcast")


def _one_target(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The validator counts a target as given when its key is present (null included), so the
    schema says the same: exactly one of the three keys, and none of them null (nor a
    receipt: present means given)."""
    properties = schema.get("properties", {})
    for name in (*_TARGETS, "receipt"):
        prop = properties.get(name, {})
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": [name]} for name in _TARGETS]


class Receipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    within_ms: int = Field(..., ge=MIN_WITHIN_MS, le=MAX_WITHIN_MS,
                           description="deadline after the publish, in ms")


class PublishRequest(BaseModel):
    """Exactly one of ``user``, ``channel`` or ``broadcast``, and ``data`` (null allowed)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_target)

    user: str | None = Field(None, pattern=f"^{USER_RE.pattern}$",
                             description="a user id: every connection of this user gets it")
    channel: str | None = Field(None, pattern=f"^{CHANNEL_RE.pattern}$",
                                description="a channel: every subscriber gets it")
    broadcast: Literal[True] | None = Field(None, description="true: every connection gets it")
    data: Any = Field(..., description="the payload, any JSON (or msgpack) value")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
        pattern=f"^{IDEMPOTENCY_KEY_RE.pattern}$",
        description="a retried publish with the same key and target is stored once (1 h)",
    )
    receipt: Receipt | None = Field(
        None, description="user targets, POST /v1/publish only: fire the webhook "
        "message.undelivered if no session of the user acknowledged the message in time "
        "(docs/receipts.md); refused with 409 where receipts are not available",
    )


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[PublishRequest] = Field(
        ..., min_length=1,
        description="validated all first: one invalid message rejects the batch (422), "
        "more than max_batch is a 413",
    )


class DisconnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: int = Field(4201, description="close code: 4200..4299 (reconnect) or 4000..4099 "
                      "(terminal)", json_schema_extra={"anyOf": [
                          {"minimum": 4200, "maximum": 4299},
                          {"minimum": 4000, "maximum": 4099}]})
    reason: str = Field("", max_length=MAX_REASON_CHARS,
                        description="close reason, at most 123 UTF-8 bytes")


class PublishResult(BaseModel):
    stream: str = Field(..., description="wire name: 'user', 'broadcast' or 'ch.NAME'")
    epoch: str
    offset: int = Field(..., description="grows by exactly 1 per message in the stream")
    recipients: int = Field(..., description="gateways (user) or subscribed gateways reached")
    duplicate: bool = Field(..., description="true: the idempotency key was seen; the "
                            "original epoch and offset are returned")
    receipt: Literal["pending"] | None = Field(None, description="'pending': a receipt was "
                                               "asked for and is waiting for an ack")


class BatchResult(BaseModel):
    results: list[PublishResult]


class Connection(BaseModel):
    conn: str
    gateway: str


class Connections(BaseModel):
    user: str
    connections: list[Connection]
    count: int


class PresentUser(BaseModel):
    user: str
    connections: int


class Presence(BaseModel):
    channel: str
    users: list[PresentUser]
    count: int = Field(..., description="distinct users subscribed")
    connections: int = Field(..., description="subscribed connections, all users")


class Disconnected(BaseModel):
    user: str
    gateways: int = Field(..., description="gateways that were told to close the user's "
                          "connections")


class Gateway(BaseModel):
    id: str
    host: str
    port: int
    connections: int
    ws: int
    sse: int
    draining: bool
    heartbeat_age_s: float
    started_ms: int


class Cluster(BaseModel):
    gateways: list[Gateway]
    total_connections: int
    imbalance: float = Field(..., description="max / mean connections over gateways not "
                             "draining; 1.0 when there are none")


class ChannelSummary(BaseModel):
    channel: str
    users: int = Field(..., description="distinct users subscribed")
    connections: int = Field(..., description="subscribed connections, all users")


class Channels(BaseModel):
    channels: list[ChannelSummary] = Field(..., description="in name order")
    truncated: bool = Field(..., description="true: more channels may exist than listed "
                            "(over 'limit', or the bounded scan stopped first)")


class DrainAccepted(BaseModel):
    gateway: str
    already_draining: bool = Field(..., description="its registry entry said draining "
                                   "already; the command was sent again all the same")
    notified: int = Field(..., description="subscribers of the gateway's control channel "
                          "that received the command")


class Sample(BaseModel):
    t_ms: int = Field(..., description="when the router sampled the registry (Unix ms)")
    gateways: int
    connections: int = Field(..., description="connections over every registered gateway")
    deliveries_per_s: float = Field(..., description="live deliveries (message x "
                                    "connection) per second, summed over gateways")


class History(BaseModel):
    interval_s: float = Field(..., description="seconds between samples")
    window_s: float = Field(..., description="how far back the samples reach at most")
    samples: list[Sample] = Field(..., description="oldest first")


class StreamPosition(BaseModel):
    epoch: str
    offset: int = Field(..., description="offset of the stream's latest message; 0: none yet")


class LoggedMessage(BaseModel):
    offset: int
    published_ms: int = Field(..., description="when the router (or gateway) stored it, Unix ms")
    data: Any = Field(..., description="as published: any JSON value; data published as "
                      "msgpack binary is base64 text in a JSON answer, binary in a msgpack one")


class MessagesPage(BaseModel):
    stream: str = Field(..., description="wire name: 'user', 'broadcast' or 'ch.NAME'")
    epoch: str = Field(..., description="the stream's current epoch; every message is in it")
    top: StreamPosition = Field(..., description="the stream's position when it was read")
    messages: list[LoggedMessage] = Field(..., description="contiguous offsets, oldest first")
    next: str | None = Field(..., description="EPOCH:OFFSET to pass as 'since' for the next "
                             "page; null: this page reaches 'top'")
    complete: bool = Field(..., description="false: messages between the requested position "
                           "and the first one here are lost (see 'lost')")
    lost: Literal["epoch_changed", "trimmed"] | None = Field(
        ..., description="why 'complete' is false: 'epoch_changed' (the stream's history was "
        "lost, or 'since' is above the top: the page starts at the new epoch's first message "
        "still logged), 'trimmed' (the log no longer reaches back that far: history_size, "
        "history_ttl); null when complete")


class StreamTop(BaseModel):
    stream: str = Field(..., description="wire name: 'user', 'broadcast' or 'ch.NAME'")
    epoch: str
    offset: int = Field(..., description="offset of the stream's latest message; 0: none yet")


class SessionPosition(BaseModel):
    session: str | None = Field(..., description="the session that acknowledged; null: a live "
                                "connection that has acknowledged nothing yet")
    conn: str = Field(..., description="the connection it acknowledged through last")
    gateway: str | None = Field(..., description="the gateway holding that connection; null "
                                "when it is gone")
    connected: bool = Field(..., description="that connection is live (its gateway beats)")
    acked: StreamPosition | None = Field(..., description="the highest offset acknowledged "
                                         "(cumulative: everything up to it was processed)")
    acked_ms: int | None = Field(..., description="when the gateway wrote that ack, Unix ms")


class UserPositions(BaseModel):
    user: str
    top: StreamPosition = Field(..., description="the user stream's latest message")
    acked: StreamPosition | None = Field(..., description="the highest offset any session "
                                         "acknowledged in the stream's current epoch; null: "
                                         "none")
    sessions: list[SessionPosition] = Field(..., description="acknowledging sessions (the 32 "
                                            "that acked last, by session id), then live "
                                            "connections that acknowledged nothing")
    pending_receipts: int = Field(..., description="receipts not yet acknowledged or fired")


class Error(BaseModel):
    error: str = Field(..., description="machine-readable code")
    message: str
    field: str | None = None
    index: int | None = None


class Status(BaseModel):
    status: str


# Bodies the router decodes itself, and the models that document them.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (PublishRequest, BatchRequest, DisconnectRequest)
BODY_TYPES = (JSON_TYPE, MSGPACK_TYPE)


def request_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` as JSON or msgpack."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": required,
            "content": {kind: {"schema": schema} for kind in BODY_TYPES},
        }
    }


def component_schemas() -> dict[str, Any]:
    """Schemas of :data:`REQUEST_MODELS` (and what they nest) for ``components.schemas``."""
    out: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting the JSON error body for these statuses."""
    return {status: {"model": Error} for status in statuses}
