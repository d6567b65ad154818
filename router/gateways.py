"""``POST /v1/gateways/{gateway_id}/drain``: tell one gateway to drain, as SIGTERM would.

The command is a control envelope on the gateway's own pub/sub channel (the one unicast
deliveries use; on Redis Cluster its sharded control channel). The gateway then stops
accepting, moves its clients away over its drain window, deregisters and exits 0: its
supervisor (``switchboard up``, Kubernetes) starts a replacement. See docs/admin.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from router import models, validation
from router.context import Context
from router.errors import Conflict, NotFound

REASON = "admin"  # what the gateway logs as the drain's reason

GatewayPath = Annotated[str, Path(pattern=f"^{validation.GATEWAY_ID_RE.pattern}$",
                                  description="a gateway id, as GET /v1/cluster lists it")]


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""

    @api.post(
        "/gateways/{gateway_id}/drain",
        status_code=202,
        tags=["cluster"],
        summary="Drain one gateway (as on SIGTERM); it exits afterwards",
        description="The gateway stops accepting, sends every client `reconnect` and closes "
        "it with 1012, spread over its drain window, deregisters and exits 0, to be replaced "
        "by its supervisor. 404: no such gateway in the registry. 409: it is registered but "
        "does not listen to its control channel (hung?), so it was not told.",
        response_model=models.DrainAccepted,
        responses=models.errors(401, 403, 404, 409, 422, 503),
    )
    async def drain(gateway_id: GatewayPath) -> JSONResponse:
        gateway_id = validation.parse_gateway_id(gateway_id)
        with ctx.redis("drain"):
            info = await ctx.store.gateway(gateway_id)
            if info is None:
                raise NotFound(f"no gateway {gateway_id!r} in the registry", field="gateway_id")
            notified = await ctx.store.drain(gateway_id, REASON)
        if notified == 0:
            raise Conflict(f"gateway {gateway_id!r} is registered but not listening to its "
                           "control channel; it was not told to drain", field="gateway_id")
        return JSONResponse({"gateway": gateway_id, "already_draining": info.draining,
                             "notified": notified}, status_code=202)
