"""``GET /v1/channels/{channel}/presence``: who is subscribed to a channel, cluster-wide.

Gateways write a presence entry per subscribed connection; entries of gateways whose heartbeat
expired are dropped when read, so presence is right again within ~3 heartbeats of a crash.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from router import models, validation
from router.context import Context
from switchboard.streams import CHANNEL_RE


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""

    @api.get(
        "/channels/{channel}/presence",
        tags=["channels"],
        summary="Users subscribed to the channel, with their connection counts",
        response_model=models.Presence,
        responses=models.errors(401, 404, 422, 503),
    )
    async def presence(
        channel: Annotated[str, Path(pattern=f"^{CHANNEL_RE.pattern}$",
                                     description="a channel name")],
    ) -> JSONResponse:
        channel = validation.parse_channel(channel)
        with ctx.redis("presence"):
            counts = await ctx.store.presence(channel)
        users = [{"user": u, "connections": n} for u, n in sorted(counts.items())]
        return JSONResponse({"channel": channel, "users": users, "count": len(users),
                             "connections": sum(counts.values())})
