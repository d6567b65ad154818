"""``GET /v1/users/{user}/connections``, ``GET /v1/users/{user}/positions`` and
``POST /v1/users/{user}/disconnect``.

User ids may contain '/', so the path parameter takes the rest of the path up to the final
segment; it is validated with the same rule as a publish target.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from router import bodies, models, validation
from router.context import Context
from switchboard import receipts
from switchboard.streams import USER_RE, Position

# Documented in the OpenAPI schema; a path that is not a valid id (a line break, say) matches
# no route at all and is a 404.
UserPath = Annotated[str, Path(pattern=f"^{USER_RE.pattern}$", description="a user id")]


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""

    @api.get(
        "/users/{user:path}/connections",
        tags=["users"],
        summary="The user's live connections and the gateways holding them",
        response_model=models.Connections,
        responses=models.errors(401, 404, 422, 503),
    )
    async def connections(user: UserPath) -> JSONResponse:
        user = validation.parse_user(user)
        with ctx.redis("connections"):
            conns = await ctx.store.connections(user)
        listed = [{"conn": c, "gateway": g} for c, g in sorted(conns.items())]
        return JSONResponse({"user": user, "connections": listed, "count": len(listed)})

    @api.get(
        "/users/{user:path}/positions",
        tags=["users"],
        summary="Where each of the user's sessions is in its user stream (delivery receipts)",
        description="The highest offset each session acknowledged (clients ack what they "
        "processed; docs/receipts.md), the connection it acked through and whether that "
        "connection is live, and the stream's top. Acks are written every 250 ms, so a "
        "fresh one may be missing for that long.",
        response_model=models.UserPositions,
        responses=models.errors(401, 404, 422, 503),
    )
    async def positions(user: UserPath) -> JSONResponse:
        user = validation.parse_user(user)
        with ctx.redis("positions"):
            found = await ctx.store.positions(user)
        return JSONResponse(positions_body(user, found))

    @api.post(
        "/users/{user:path}/disconnect",
        tags=["users"],
        summary="Close every connection of the user",
        description="Gateways close them with `code` (default 4201) and `reason`. Codes "
        "4200..4299 let clients reconnect after jitter; 4000..4099 are terminal.",
        response_model=models.Disconnected,
        responses=models.errors(400, 401, 403, 404, 413, 415, 422, 503),
        openapi_extra=models.request_body(models.DisconnectRequest, required=False),
    )
    async def disconnect(user: UserPath, request: Request) -> JSONResponse:
        user = validation.parse_user(user)
        req = validation.parse_disconnect(
            await bodies.read_optional_object(request, ctx.settings.max_body)
        )
        with ctx.redis("disconnect"):
            gateways = await ctx.store.disconnect(user, req.code, req.reason)
        return JSONResponse({"user": user, "gateways": gateways})



def _position(p: Position | None) -> dict[str, object] | None:
    return None if p is None else {"epoch": p.epoch, "offset": p.offset}


def positions_body(user: str, found: receipts.UserPositions) -> dict[str, object]:
    live = found.connections
    sessions: list[dict[str, object]] = [
        {"session": s.session, "conn": s.conn, "gateway": live.get(s.conn),
         "connected": s.conn in live, "acked": _position(s.acked), "acked_ms": s.acked_ms}
        for s in found.sessions]
    acked_through = {s.conn for s in found.sessions}
    sessions += [{"session": None, "conn": c, "gateway": g, "connected": True, "acked": None,
                  "acked_ms": None} for c, g in sorted(live.items()) if c not in acked_through]
    return {"user": user, "top": _position(found.top), "acked": _position(found.acked),
            "sessions": sessions, "pending_receipts": found.pending_receipts}
