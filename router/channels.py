"""``GET /v1/channels/{channel}/presence``: who is subscribed to a channel, cluster-wide, and
``GET /v1/channels``: the channels that have subscribers, with their counts (the admin page).

Gateways write a presence entry per subscribed connection; entries of gateways whose heartbeat
expired are dropped when read, so presence is right again within ~3 heartbeats of a crash.
Listing channels SCANs for presence hashes (never KEYS) and stops after ``SCAN_BUDGET`` keys
examined, saying ``truncated`` when it may have missed some.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from router import models, validation
from router.context import Context
from switchboard.streams import CHANNEL_RE

MAX_LIMIT = 500  # channels listed at most per request (each costs a presence read)
SCAN_BUDGET = 100_000  # keys one listing may examine
# Every open admin page polls the listing: one listing per limit and interval serves them all,
# so the cost on Redis does not grow with the number of tabs.
LISTING_TTL = 2.0


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""
    listings: dict[int, tuple[float, dict[str, Any]]] = {}  # limit -> (when, answer)

    @api.get(
        "/channels",
        tags=["channels"],
        summary="Channels with subscribers, each with its user and connection counts",
        description="Bounded: at most `limit` channels, found by a SCAN that examines at most "
        f"{SCAN_BUDGET} keys; `truncated` says the list may be incomplete.",
        response_model=models.Channels,
        responses=models.errors(401, 422, 503),
    )
    async def channels(
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT,
                                    description="most channels to list")] = 100,
    ) -> JSONResponse:
        cached = listings.get(limit)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL:
            return JSONResponse(cached[1])
        with ctx.redis("channels"):
            names, truncated = await ctx.store.channels(limit, SCAN_BUDGET)
            listed = []
            for name in names:
                counts = await ctx.store.presence(name)
                if counts:  # every entry was a dead gateway's: the channel is empty now
                    listed.append({"channel": name, "users": len(counts),
                                   "connections": sum(counts.values())})
        answer = {"channels": listed, "truncated": truncated}
        listings[limit] = (time.monotonic(), answer)
        return JSONResponse(answer)

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
