"""Unauthenticated probes: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from router import models
from router.context import Context


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the unauthenticated root router."""

    @api.get("/healthz", tags=["probes"], summary="200 while the process serves requests",
             response_model=models.Status)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @api.get("/readyz", tags=["probes"], summary="200 when Redis answers PING, else 503",
             response_model=models.Status, responses=models.errors(503))
    async def readyz() -> JSONResponse:
        with ctx.redis("ready"):
            await ctx.store.redis.ping()
        return JSONResponse({"status": "ready"})

    @api.get("/metrics", tags=["probes"], summary="Prometheus metrics (text format)",
             response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, content_type = ctx.metrics.render()
        return Response(body, media_type=content_type)

