"""The admin page: ``GET /admin`` and its script and stylesheet, behind an API key.

Static files of this package (``router/static``), no framework, no build step. The page reads
the ordinary API (``/v1/cluster``, ``/v1/cluster/history``, ``/v1/channels``, a user's
connections) and acts through it (disconnect a user, drain a gateway), same-origin, with the
credentials the browser was given: HTTP Basic, the password one of the API keys (a
navigation cannot carry a Bearer header). Without them the page answers 401 with a Basic
challenge, so the browser prompts. See docs/admin.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import APIRouter, Depends, Response

from router.auth import require_key
from router.context import Context
from router.errors import NotFound

# path -> (file under router/static, content type)
FILES = {
    "/admin": ("admin.html", "text/html; charset=utf-8"),
    "/admin/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/admin/admin.css": ("admin.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Cache-Control": "no-store",
    # Only its own script and style; never framed (the confirmations must not be clickjacked).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def read(name: str) -> bytes | None:
    try:
        return resources.files("router").joinpath("static", name).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return None


def add_routes(root: APIRouter, ctx: Context) -> None:
    """Register on ``root``, the router without the ``/v1`` key check (it has its own)."""
    guard = [Depends(require_key(ctx.settings.api_keys, challenge_basic=True))]
    for path, (name, content_type) in FILES.items():
        root.add_api_route(path, _serve(name, read(name), content_type), methods=["GET"],
                           dependencies=guard, include_in_schema=False,
                           response_class=Response)


def _serve(name: str, body: bytes | None, content_type: str) -> Callable[[], Awaitable[Response]]:
    # Read once at start, and an endpoint without parameters: FastAPI would turn any
    # parameter (even a default-bound loop variable) into a query parameter a caller sets.
    async def serve() -> Response:
        if body is None:
            raise NotFound(f"{name} is not installed with the router")
        return Response(body, media_type=content_type, headers=HEADERS)

    return serve
