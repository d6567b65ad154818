"""``GET /v1/cluster``: the gateways in the registry and how evenly they are loaded, and
``GET /v1/cluster/history``: the last minutes of connections and deliveries per second."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from router import models
from router.context import Context
from switchboard.contract import GatewayInfo
from switchboard.store import heartbeat_age


def imbalance(gateways: list[GatewayInfo]) -> float:
    """max / mean of connections over gateways that are not draining (1.0: perfectly even).

    Draining gateways are shedding their connections on purpose, so they would only make a
    healthy cluster look lopsided. With no such gateway or no connections, 1.0.
    """
    counts = [g.connections for g in gateways if not g.draining]
    total = sum(counts)
    if not counts or total <= 0:
        return 1.0
    return round(max(counts) / (total / len(counts)), 3)


def summarize(
    gateways: list[GatewayInfo], age: Callable[[GatewayInfo], float] = heartbeat_age
) -> dict[str, Any]:
    return {
        "gateways": [
            {
                "id": g.gateway_id,
                "host": g.host,
                "port": g.port,
                "connections": g.connections,
                "ws": g.ws,
                "sse": g.sse,
                "draining": g.draining,
                "heartbeat_age_s": round(age(g), 3),
                "started_ms": g.started_ms,
            }
            for g in sorted(gateways, key=lambda g: g.gateway_id)
        ],
        "total_connections": sum(g.connections for g in gateways),
        "imbalance": imbalance(gateways),
    }


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""

    @api.get(
        "/cluster",
        tags=["cluster"],
        summary="Gateways, their connections, drain state, heartbeat age and the imbalance",
        response_model=models.Cluster,
        responses=models.errors(401, 503),
    )
    async def cluster() -> JSONResponse:
        with ctx.redis("cluster"):
            gateways = await ctx.store.gateways()
        return JSONResponse(summarize(gateways))


    @api.get(
        "/cluster/history",
        tags=["cluster"],
        summary="Connections and deliveries per second over the last minutes",
        description="Sampled from the registry by this router every few seconds since it "
        "started (each router keeps its own), oldest first.",
        response_model=models.History,
        responses=models.errors(401),
    )
    async def history() -> JSONResponse:
        return JSONResponse(ctx.history.as_json())
