"""ASGI middleware counting every HTTP answer by route template, method and status."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.metrics import RouterMetrics


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: RouterMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app dies before answering
        started = False

        async def record_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except ClientDisconnect:
            # Gone before its body arrived: nobody to answer, and not a server error (500).
            # Counted as 499 ("client closed request"), as router.fastpath counts it.
            if not started:
                status = 499
        finally:
            # The router stored the matched route in the scope: label by its template, so
            # /v1/users/alice/connections and /v1/users/bob/connections share one series.
            # (path_format drops converters: /v1/users/{user}/connections).
            matched = scope.get("route")
            route = getattr(matched, "path_format", None) or getattr(matched, "path", None)
            self.metrics.http_request(route, scope["method"], status)
