"""``POST /v1/publish`` and ``POST /v1/publish/batch``.

Both answer only after Redis ran the publish script, so a 2xx means the message is in its
stream's replay buffer; a batch is validated whole before anything is sent to Redis.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from router import bodies, models, validation
from router.context import Context
from router.errors import ReceiptsUnavailable, TooManyReceipts
from switchboard import receipts
from switchboard.store import Published

MSGPACK_RESULT: dict[str, Any] = {"content": {validation.MSGPACK_TYPE: {}}}


def result_body(p: Published) -> dict[str, Any]:
    # by hand: dataclasses.asdict deep-copies field by field, a few % of a publish's CPU
    return {"stream": p.stream, "epoch": p.epoch, "offset": p.offset,
            "recipients": p.recipients, "duplicate": p.duplicate}


async def publish_message(ctx: Context, doc: dict[str, Any]) -> dict[str, Any]:
    """Validate and publish one message (a decoded body); the answer's payload."""
    req = validation.parse_publish(doc)
    if req.receipt_ms is not None:
        check_receipts(ctx)
    started = time.perf_counter()
    with ctx.redis("publish"):
        try:
            published = await ctx.store.publish(req.target, req.data, req.idempotency_key,
                                                receipt_ms=req.receipt_ms)
        except RedisError:
            ctx.metrics.publish_failed(req.target.kind)
            raise
        except receipts.ReceiptsFull:
            raise TooManyReceipts(
                f"{receipts.MAX_PENDING} receipts of this user are waiting for an ack or "
                "their deadline; message not stored", field="receipt") from None
    ctx.metrics.publish_latency("single", time.perf_counter() - started)
    ctx.metrics.published(req.target.kind, published.duplicate)
    body = result_body(published)
    if req.receipt_ms is not None and not published.duplicate:
        body["receipt"] = "pending"
    return body


def check_receipts(ctx: Context) -> None:
    """Receipts are fired by the webhook dispatcher: without one they never would be."""
    if not ctx.settings.webhook_url:
        raise ReceiptsUnavailable(receipts.RECEIPTS_UNCONFIGURED, field="receipt")


async def publish_messages(ctx: Context, doc: dict[str, Any]) -> dict[str, Any]:
    """Validate every message of a batch, then publish them in one round trip."""
    reqs = validation.parse_batch(doc, ctx.settings.max_batch)
    items = [(r.target, r.data, r.idempotency_key) for r in reqs]
    started = time.perf_counter()
    with ctx.redis("batch"):
        try:
            results = await ctx.store.publish_many(items)
        except RedisError:
            for r in reqs:
                ctx.metrics.publish_failed(r.target.kind)
            raise
    ctx.metrics.publish_latency("batch", time.perf_counter() - started)
    for r, published in zip(reqs, results, strict=True):
        ctx.metrics.published(r.target.kind, published.duplicate)
    return {"results": [result_body(p) for p in results]}


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router.

    :mod:`router.fastpath` answers these two routes before FastAPI sees them (same
    functions, same answers); FastAPI keeps them for OpenAPI and for CORS requests."""
    max_body = ctx.settings.max_body

    @api.post(
        "/publish",
        tags=["publish"],
        summary="Publish one message to a user, a channel or everyone",
        response_model=models.PublishResult,
        responses={200: MSGPACK_RESULT,
                   **models.errors(400, 401, 403, 409, 413, 415, 422, 429, 503)},
        openapi_extra=models.request_body(models.PublishRequest),
    )
    async def publish(request: Request) -> Response:
        doc = await bodies.read_object(request, max_body)
        return bodies.respond(request, await publish_message(ctx, doc))

    @api.post(
        "/publish/batch",
        tags=["publish"],
        summary="Publish many messages in one Redis round trip",
        description="Every message is validated first: if any is invalid the answer is 422 "
        "naming its index and nothing is published. More than max_batch messages is a 413. "
        "Results come in the order of the messages.",
        response_model=models.BatchResult,
        responses={200: MSGPACK_RESULT, **models.errors(400, 401, 403, 413, 415, 422, 503)},
        openapi_extra=models.request_body(models.BatchRequest),
    )
    async def publish_batch(request: Request) -> Response:
        doc = await bodies.read_object(request, max_body)
        return bodies.respond(request, await publish_messages(ctx, doc))
