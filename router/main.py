"""The router process: ``switchboard router`` calls :func:`run`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
from collections.abc import Generator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from router.app import create_app
from switchboard import limits
from switchboard.config import RouterSettings

log = logging.getLogger("switchboard.router")

# Largest request line + headers (bytes); beyond it the request is refused with 431.
MAX_HEAD = 64 * 1024


def _refusal(status: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection (JSON, like the API's)."""
    body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


_TIMEOUT_RESPONSE = _refusal("408 Request Timeout", "request_timeout",
                             "the request line and headers did not arrive in time")
_TOO_LARGE_RESPONSE = _refusal("431 Request Header Fields Too Large", "headers_too_large",
                               f"the request line and headers exceed {MAX_HEAD} bytes")


class _HeadDeadline:
    """Slowloris defence: a request's line and headers must arrive within ``header_timeout``.

    uvicorn times out idle keep-alive connections, but not a request whose head trickles in
    (or never comes): a client sending one header byte every few seconds would hold its
    connection, and a file descriptor, forever. The deadline starts when the connection opens
    or when the first byte of a later request arrives, and ends when the head is complete;
    at the deadline the client gets 408 (when no response is in flight) and is disconnected.
    """

    header_timeout: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _refused = False  # answered 408/431: whatever else the client sends is dropped

    # provided by uvicorn's protocol classes
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None and self.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _response_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(_TIMEOUT_RESPONSE)

    def _refuse(self, response: bytes) -> None:
        transport = self.transport
        if self._refused or transport is None or transport.is_closing():
            return
        self._refused = True
        if not self._response_in_flight():
            transport.write(response)
            transport.close()
        else:
            transport.abort()  # never interleave with a response being written


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional for uvicorn
        return None

    class HeadTooLarge(Exception):
        """Raised from a parser callback to stop parsing (httptools wraps it)."""

    class HttpToolsWithDeadline(_HeadDeadline, HttpToolsProtocol):
        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_bytes >= 0:  # between requests or inside a head
                self._arm_head_deadline()
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # after our 431 nothing else may be written
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            self._arm_head_deadline()
            super().on_message_begin()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > MAX_HEAD:
                self._cancel_head_deadline()
                self._refuse(_TOO_LARGE_RESPONSE)
                # Stop the parser here: the request must not reach the application.
                raise HeadTooLarge()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._cancel_head_deadline()
            self._head_bytes = -1  # in the body: no deadline until the next request starts
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_bytes = 0
            super().on_message_complete()

    return HttpToolsWithDeadline


class H11WithDeadline(_HeadDeadline, H11Protocol):
    """With h11 an oversized head is h11's own 400 (``h11_max_incomplete_event_size``)."""

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is h11.IDLE:
            if self.conn.trailing_data[0]:  # part of a request head is waiting
                self._arm_head_deadline()
        else:
            self._cancel_head_deadline()


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a head deadline."""
    base = _httptools_protocol() or H11WithDeadline
    return type(base.__name__, (base,), {"header_timeout": header_timeout})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the SIGTERM/SIGINT that stopped it once it has shut down, which
            # would kill us by the signal; a signalled, graceful shutdown is a clean exit (0).
            self._captured_signals.clear()


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, without credentials, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


def run(settings: RouterSettings) -> int:
    if not settings.api_keys:
        raise SystemExit(
            "switchboard router: no API keys configured; set --api-keys or "
            "SWITCHBOARD_API_KEYS (comma-separated) so publishers can authenticate"
        )
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every publisher connection (and each Redis connection) is a file descriptor.
    open_files, _ = limits.raise_nofile_limit()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.router_port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        log_level="info",
        access_log=False,  # one line per publish is noise; /metrics counts requests
        server_header=False,
        lifespan="on",
        http=http_protocol(settings.header_timeout),
        h11_max_incomplete_event_size=MAX_HEAD,
    )
    server = _Server(config)
    log.info("router on http://%s:%d, redis at %s, %d API key(s), open files limit %d",
             settings.host, settings.router_port, redis_location(settings.redis_url),
             len(settings.api_keys), open_files)
    server.run()
    return 0 if server.started else 1
