"""The webhooks in the OpenAPI document (its ``webhooks`` section): what ``switchboard
webhooks`` POSTs to your receiver (docs/webhooks.md). The router sends none itself."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Header
from pydantic import BaseModel, Field

EventType = Literal["user.online", "user.offline", "channel.occupied", "channel.vacated",
                    "presence.join", "presence.leave", "webhook.overflow"]


class WebhookEvent(BaseModel):
    id: str = Field(description="ENTITY/EPOCH/SEQ: deduplicate on it; SEQ grows per entity")
    type: EventType
    ts_ms: int = Field(description="when the transition happened (ms since the epoch)")
    user: str | None = Field(None, description="user.*, presence.*")
    channel: str | None = Field(None, description="channel.*, presence.*")
    gateway: str | None = Field(None, description="user.online: the gateway of the connection")
    conn: str | None = Field(None, description="user.online: the connection")
    reason: Literal["closed", "gateway_lost"] | None = Field(None, description="user.offline")
    since_ms: int | None = Field(None, description="user.offline: when the last one went")
    lost: int | None = Field(None, description="webhook.overflow: events refused")
    from_ms: int | None = Field(None, description="webhook.overflow")
    to_ms: int | None = Field(None, description="webhook.overflow")


class WebhookBatch(BaseModel):
    time_ms: int = Field(description="when this request was made")
    events: list[WebhookEvent] = Field(description="oldest first within each entity")


def add_webhooks(app: FastAPI) -> None:
    @app.webhooks.post("events", summary="Events of the cluster, in batches", responses={
        200: {"description": "stored: any 2xx; anything else is retried with backoff"}})
    def events(batch: WebhookBatch,
               x_switchboard_signature: str = Header(
                   description="t=UNIX_SECONDS,v1=HEX[,v1=HEX]: HMAC-SHA256 of 't.' + body"),
               x_switchboard_batch: str = Header(description="random id of this request"),
               ) -> None:
        """Sent at least once (deduplicate on ``id``), in order per user and per channel;
        retried without a time limit while the events wait in Redis (docs/webhooks.md)."""
