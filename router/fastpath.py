"""``POST /v1/publish`` and ``/v1/publish/batch`` answered in plain ASGI, before FastAPI.

Publishing is the router's hot path: at thousands of requests per second FastAPI's layers
(middleware stack, route matching, dependency solving, Request and Response objects) cost
more CPU than everything else a publish does. This wrapper answers the two publish routes
itself, with the same functions the FastAPI routes call (:mod:`router.publish`,
:mod:`router.bodies`, :mod:`router.validation`) and the same answers, statuses and metrics;
every other request, and publishes that carry an ``Origin`` when CORS is configured (so the
CORS middleware answers them), go to the FastAPI app, which also documents these routes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from router import bodies, errors, publish, validation
from router.auth import ADMIN_HEADER, authorize
from router.context import Context

log = logging.getLogger("switchboard.router")

Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]]

ROUTES: dict[str, Handler] = {
    "/v1/publish": publish.publish_message,
    "/v1/publish/batch": publish.publish_messages,
}
# The request headers the publish routes read (ASGI gives names in lower case).
WANTED = frozenset({b"authorization", b"content-type", b"content-length", b"accept", b"origin",
                    ADMIN_HEADER.lower().encode()})
VARY = (b"vary", b"Accept")


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def refusal(err: errors.ApiError) -> tuple[int, bytes, str, list[tuple[bytes, bytes]]]:
    """Status, body, media type and headers of an error, as the FastAPI handlers answer it."""
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    return err.status, bodies.json_bytes(err.body()), validation.JSON_TYPE, headers


class FastPublish:
    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx
        self.keys = tuple(ctx.settings.api_keys)
        self.cors = bool(ctx.settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = ROUTES.get(scope["path"])
            if handler is not None:
                headers: dict[bytes, str] = {}
                for name, value in scope["headers"]:
                    if name in WANTED and name not in headers:  # the first one, as Starlette
                        headers[name] = value.decode("latin-1")
                if not (self.cors and b"origin" in headers):
                    await self._serve(scope["path"], handler, headers, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: str, handler: Handler, headers: dict[bytes, str],
                     receive: Receive, send: Send) -> None:
        status = 500
        try:
            try:
                body, media, extra = await self._answer(handler, headers, receive)
                status = 200
            except errors.ApiError as err:
                status, body, media, extra = refusal(err)
            except RedisError:  # not translated by the handler: still Redis's fault
                status, body, media, extra = refusal(errors.RedisUnavailable())
            except ClientGone:
                status = 499  # nginx's "client closed request"; nothing is sent
                return
            except Exception:
                log.exception("unexpected error answering POST %s", route)
                status, body, media, extra = refusal(errors.InternalError("internal error"))
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-length", b"%d" % len(body)), (b"content-type", media.encode()),
                *extra]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.ctx.metrics.http_request(route, "POST", status)

    async def _answer(self, handler: Handler, headers: dict[bytes, str],
                      receive: Receive) -> tuple[bytes, str, list[tuple[bytes, bytes]]]:
        # The order of the FastAPI route: key (401), media type (415), size (413), body (400).
        authorize(headers.get(b"authorization"), self.keys, method="POST",
                  admin_header=headers.get(ADMIN_HEADER.lower().encode()))
        fmt = validation.body_format(headers.get(b"content-type"))
        raw = await bodies.collect(body_chunks(receive), headers.get(b"content-length"),
                                   self.ctx.settings.max_body)
        payload = await handler(self.ctx, validation.decode_body(raw, fmt))
        body, media = bodies.encode(payload, headers.get(b"accept"))
        return body, media, [VARY]
