"""The router's FastAPI application: :func:`create_app` wires routes, auth, errors, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from router import (
    admin,
    channels,
    cluster,
    gateways,
    handlers,
    history,
    messages,
    models,
    probes,
    publish,
    users,
    webhookdoc,
)
from router.auth import require_key
from router.context import Context
from router.fastpath import FastPublish
from router.metrics import RouterMetrics
from router.middleware import RequestMetrics
from switchboard import __version__
from switchboard.config import RouterSettings
from switchboard.contract import GatewayInfo, now_ms
from switchboard.store import Store

DESCRIPTION = """\
Publish to Switchboard's WebSocket and SSE clients, and ask about users and the cluster.

Every `/v1` route needs `Authorization: Bearer API_KEY` (or HTTP Basic with an API key as the
password, for browsers: the admin page at `/admin`). Request bodies are JSON or
`application/msgpack`; publish results come as msgpack when `Accept` asks for it. A 2xx means
the message is in its stream's replay buffer; errors are JSON `{"error", "message"}`, and
503 (with `Retry-After`) means Redis is unavailable and nothing was acknowledged.
"""


class RouterApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            # Bodies are decoded by hand (JSON or msgpack), so FastAPI never saw their models.
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(models.component_schemas())
        return self.openapi_schema or {}


def create_app(settings: RouterSettings, store: Store | None = None, *,
               sample_history: bool = True) -> FastPublish:
    """The router app: :class:`FastPublish` answering the publish routes in front of the
    FastAPI app (its ``app``). Without ``store`` it opens fail-fast Redis clients (redis-py,
    and a pipelined connection for publishing) and closes them on shutdown.
    ``sample_history``: sample the registry for ``/v1/cluster/history`` while it runs."""
    if not settings.api_keys:
        raise ValueError("the router needs at least one API key (api_keys)")
    owned = store is None
    if store is None:
        store = Store.open(settings, "switchboard-router")
    ctx = Context(settings, store, RouterMetrics())

    async def registry() -> list[GatewayInfo]:
        with ctx.redis("history"):
            return await ctx.store.gateways()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = None
        if sample_history:
            sampler = asyncio.create_task(history.run(ctx.history, registry, now_ms),
                                          name="admin-history")
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if owned:
                await ctx.store.aclose()

    app = RouterApp(
        title="Switchboard router",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    handlers.install(app)
    webhookdoc.add_webhooks(app)
    app.add_middleware(RequestMetrics, metrics=ctx.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    root = APIRouter()
    probes.add_routes(root, ctx)
    admin.add_routes(root, ctx)
    app.include_router(root)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key(settings.api_keys))])
    for module in (publish, users, channels, messages, cluster, gateways):
        module.add_routes(v1, ctx)
    app.include_router(v1)
    return FastPublish(app, ctx)
