"""Plain-HTTP side of the gateway: responses, query parsing, Origin policy, CORS.

Built on websockets' ``Request``/``Response`` types so that one parser serves both the
WebSocket handshake and ordinary requests (DESIGN 3: no second web framework).
"""

from __future__ import annotations

import email.utils
import http
import json
import re
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """``/ws?a=1&b=2`` -> ``("/ws", {"a": "1", "b": "2"})`` (the last value of a repeat wins)."""
    parts = urlsplit(target)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts.path, params


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    phrase = http.HTTPStatus(status).phrase
    h = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            *headers,
        ]
    )
    return Response(status, phrase, h, body)


def json_response(
    status: int, obj: object, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    return response(status, json.dumps(obj).encode(), "application/json", headers)


def error_response(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    return json_response(status, {"error": code, "message": message}, headers)


def sse_head(cors_origin: str | None) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache, no-transform",
        # nginx and friends buffer responses unless told not to.
        "X-Accel-Buffering: no",
    ]
    if cors_origin:
        lines += [f"Access-Control-Allow-Origin: {cors_origin}", "Vary: Origin"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def cors_headers(origin: str | None) -> list[tuple[str, str]]:
    if not origin:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", "GET, OPTIONS"),
        ("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Content-Type"),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    ]


class OriginPolicy:
    """Which browser Origins may connect.

    No ``Origin`` header (a non-browser client) is always allowed: Origin protects browsers
    against cross-site WebSocket hijacking, it authenticates nothing. With an empty allow-list
    only the page's own host may connect; ``*`` allows every origin; entries may use ``*`` as a
    wildcard (``https://*.example.com``).
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self.any = "*" in allowed
        self._patterns = [
            re.compile("^" + ".*".join(re.escape(p) for p in entry.split("*")) + "$")
            for entry in allowed
            if entry != "*"
        ]

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        if self.any:
            return True
        if self._patterns:
            return any(p.match(origin) for p in self._patterns)
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def bearer_token(request: Request, params: dict[str, str]) -> str:
    token = params.get("token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token
