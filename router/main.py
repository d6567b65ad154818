"""The router process: ``switchboard router`` calls :func:`run`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import re
from collections.abc import Generator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from router.app import create_app
from switchboard import limits
from switchboard.config import RouterSettings
from switchboard.redisurl import is_cluster, parse_cluster

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

# The blank line that ends a head (h11 and llhttp also take bare LFs).
_BLANK_LINE = re.compile(rb"\n\r?\n")


def head_end(data: bytes, limit: int = MAX_HEAD) -> int:
    """Where the request head at the start of ``data`` ends (just past its blank line), -1
    while it is incomplete and still fits in ``limit`` bytes, or ``limit + 1`` when it is
    known not to fit (more than ``limit`` bytes and no blank line among them)."""
    match = _BLANK_LINE.search(data, 0, limit)
    if match is not None:
        return match.end()
    return -1 if len(data) <= limit else limit + 1


class _HeadDeadline:
    """Slowloris defence: a request's line and headers must arrive within ``header_timeout``.

    uvicorn times out idle keep-alive connections, but not a request whose head trickles in
    (or never comes): a client sending one header byte every few seconds would hold its
    connection, and a file descriptor, forever. The deadline starts when the connection opens
    or when the first byte of a later request arrives, and ends when the head is complete;
    at the deadline the client gets 408 (when no response is in flight) and is disconnected.
    """

    header_timeout: ClassVar[float] = 10.0
    # After a refusal, seconds to keep reading (and dropping) what the client still sends, so
    # that closing with unread data does not reset the connection before it read the answer.
    refusal_linger: ClassVar[float] = 2.0
    _head_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
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
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
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

    def _head_too_large(self) -> None:
        self._cancel_head_deadline()
        self._refuse(_TOO_LARGE_RESPONSE)

    def _refuse(self, response: bytes) -> None:
        transport = self.transport
        if self._refused or transport is None or transport.is_closing():
            return
        self._refused = True
        if self._response_in_flight():
            transport.abort()  # never interleave with a response being written
            return
        transport.write(response)
        if self.refusal_linger > 0 and transport.can_write_eof():
            # Half-close: the client reads the answer and EOF; we drop what it still sends
            # (data_received ignores it) until it closes too or the linger ends.
            transport.write_eof()
            self._linger_timer = self.loop.call_later(self.refusal_linger, transport.close)
        else:
            transport.close()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional for uvicorn
        return None

    class HeadTooLarge(Exception):
        """Raised from a parser callback to stop parsing (httptools wraps it)."""

    class HttpToolsWithDeadline(_HeadDeadline, HttpToolsProtocol):
        """The parser reports a header only once it is complete, and buffers it until then:
        a head is measured both as raw bytes before parsing (so one endless header cannot
        grow that buffer) and by the parser's callbacks (heads pipelined within one read)."""

        _head_bytes = 0  # url + headers of the current head; -1 in a body
        _raw_head = 0  # raw bytes of the head that reads before this one brought
        _raw_tail = b""  # the last bytes of the previous read, if a blank line spans reads

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_bytes >= 0:  # between requests or inside a head
                self._arm_head_deadline()
                if not self._head_fits(data):
                    self._head_too_large()
                    return
            else:
                self._raw_head, self._raw_tail = 0, b""
            super().data_received(data)

        def _head_fits(self, data: bytes) -> bool:
            tail = self._raw_tail
            buffered = tail + data  # starts len(tail) bytes into what earlier reads brought
            limit = MAX_HEAD - self._raw_head + len(tail)
            end = head_end(buffered, limit)
            if end > limit:
                return False
            if end < 0:
                self._raw_head += len(data)
                self._raw_tail = buffered[-2:]
            else:
                self._raw_head, self._raw_tail = 0, b""  # a body or the next head follows
            return True

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
                self._head_too_large()
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


class _BoundedHeadConnection(h11.Connection):
    """h11 limits a head only while it is incomplete (``max_incomplete_event_size``): one that
    arrives whole in a single read, however large, is parsed. This one refuses a head longer
    than :data:`MAX_HEAD` before parsing it, complete or not."""

    head_too_large = False

    def buffered(self) -> int:
        """Bytes received and not parsed yet (``trailing_data`` without copying them)."""
        return len(self._receive_buffer)

    def next_event(self) -> Any:
        # A head is parsed only in IDLE; check it before h11 does, once it could be too long.
        if (self.their_state is h11.IDLE and self.buffered() > MAX_HEAD
                and head_end(self.trailing_data[0]) > MAX_HEAD):
            self.head_too_large = True
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return super().next_event()


class H11WithDeadline(_HeadDeadline, H11Protocol):
    """h11 with the head deadline, and 431 for a head over :data:`MAX_HEAD` (as httptools)."""

    conn: _BoundedHeadConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedHeadConnection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self.conn.head_too_large:
            self._head_too_large()
        elif not self._refused:
            super().send_400_response(msg)

    def handle_events(self) -> None:
        super().handle_events()
        if self._refused:
            return
        if self.conn.their_state is h11.IDLE:
            if self.conn.buffered():  # part of a request head is waiting
                self._arm_head_deadline()
        else:
            self._cancel_head_deadline()


PARSERS = ("auto", "httptools", "h11")


def http_protocol(header_timeout: float, parser: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a head deadline and the head limit: ``parser`` httptools,
    h11, or auto (httptools when installed, else h11). ValueError for one we cannot use."""
    if parser not in PARSERS:
        raise ValueError(f"unknown HTTP parser {parser!r}: use one of {', '.join(PARSERS)}")
    base: type[asyncio.Protocol] | None = H11WithDeadline
    if parser != "h11":
        base = _httptools_protocol() or (H11WithDeadline if parser == "auto" else None)
    if base is None:
        raise ValueError("the httptools HTTP parser is not installed (pip install httptools)")
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
    """host:port/db of a Redis URL (a cluster's seeds), without credentials, for logs."""
    if is_cluster(url):
        seeds = parse_cluster(url).seeds
        return "cluster " + ",".join(f"{h}:{p}" for h, p in seeds)
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
    try:
        protocol = http_protocol(settings.header_timeout, settings.http_parser)
    except ValueError as exc:
        raise SystemExit(f"switchboard router: --http-parser: {exc}") from None
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
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEAD,
    )
    server = _Server(config)
    log.info("router on http://%s:%d (%s), redis at %s, %d API key(s), open files limit %d",
             settings.host, settings.router_port,
             "h11" if issubclass(protocol, H11WithDeadline) else "httptools",
             redis_location(settings.redis_url), len(settings.api_keys), open_files)
    server.run()
    return 0 if server.started else 1
