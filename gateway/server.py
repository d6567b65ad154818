"""One asyncio protocol per TCP connection: what its HTTP request opens.

websockets parses the HTTP request; we route it: ``/ws`` completes the WebSocket handshake,
``/sse`` answers with an event stream, everything else is a one-shot HTTP response. Either
stream then gets its transport and a session, and is welcomed. Bytes, frames, closing and
timers are the base class's (:class:`gateway.connection.BaseConnection`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from typing import Any

from websockets.exceptions import NegotiationError
from websockets.extensions import Extension
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from gateway import http
from gateway.connection import BaseConnection, Phase
from gateway.errors import HandshakeRefused
from gateway.ports import Accepted, ConnectionHooks, Deferred, Proxy, Services
from gateway.ratelimit import TokenBucket
from gateway.session import Session
from gateway.transport import SseTransport, WsTransport
from gateway.welcome import welcome
from gateway.wire import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, Wire
from switchboard import streams
from switchboard.auth import Claims
from switchboard.closecodes import Close

log = logging.getLogger("switchboard.gateway")

SUBPROTOCOLS = [Subprotocol(SUBPROTOCOL_JSON), Subprotocol(SUBPROTOCOL_MSGPACK)]


def _select_subprotocol(
    protocol: ServerProtocol, offered: list[Subprotocol] | Any
) -> Subprotocol | None:
    # No Sec-WebSocket-Protocol at all means JSON (the default); an offer we do not speak
    # fails the handshake with 400 rather than silently picking a format the client cannot read.
    for sub in offered:
        if sub in SUBPROTOCOLS:
            return Subprotocol(sub)
    if offered:
        raise NegotiationError(
            f"unsupported subprotocol; use {SUBPROTOCOL_JSON} or {SUBPROTOCOL_MSGPACK}"
        )
    return None


_PROTOCOL_ID = uuid.UUID(int=0)
_NO_EXTENSIONS: list[Extension] = []  # never appended to: no extension is negotiated
_WS_LOG = logging.getLogger("websockets.server")
# An event stream speaks no WebSocket: its connections share this closed, empty protocol,
# which answers the calls made without looking at the phase (it has nothing to send).
_SSE_PROTOCOL = Protocol(Side.SERVER, state=State.CLOSED, logger=_WS_LOG)


class Connection(BaseConnection):
    __slots__ = ()

    def __init__(self, svc: Services, hooks: ConnectionHooks) -> None:
        super().__init__(svc, hooks, ServerProtocol(
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=_select_subprotocol,
            max_size=svc.settings.max_message_size,
            logger=_WS_LOG,
        ))

    # -- HTTP ---------------------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        path, params = http.split_target(request.path)
        try:
            if path == "/ws":
                self._open(request, params, "ws")
            elif path == "/sse":
                self._open(request, params, "sse")
            else:
                self._respond(self.hooks.plain_http(request, path))
        except HandshakeRefused as refusal:
            self._refuse(request, refusal)

    def _refuse(self, request: Request, refusal: HandshakeRefused) -> None:
        self.svc.metrics.rejected(refusal.status)
        # CORS on refusals of both endpoints, so a page can read why (401, 429, 503...).
        headers = refusal.headers + http.cors_headers(self.hooks.cors_origin(request))
        self._respond(http.error_response(refusal.status, refusal.code, refusal.message,
                                          headers))

    def _handshake(self) -> ServerProtocol:
        """The protocol parsing the HTTP request (until a WebSocket opens)."""
        assert isinstance(self.ws, ServerProtocol)
        return self.ws

    def _respond(self, response: Response) -> None:
        self._handshake().send_response(response)
        self.write_protocol_data()

    def _open(self, request: Request, params: dict[str, str], transport: str) -> None:
        """Accept a ``ws`` or ``sse`` connect now, or park it for the connect proxy."""
        accepted = self.hooks.accept(request, params)
        if isinstance(accepted, Deferred):
            self._defer(request, accepted, transport)
        else:
            self._accept(request, accepted, transport)

    def _accept(self, request: Request, accepted: Accepted, transport: str) -> None:
        if transport == "ws":
            self._accept_ws(request, accepted)
        else:
            self._accept_sse(request, accepted)

    def _accept_ws(self, request: Request, accepted: Accepted) -> None:
        self.request = accepted.request
        claims = accepted.claims
        handshake = self._handshake()
        response = handshake.accept(request)
        if response.status_code != 101:
            self.svc.metrics.rejected(response.status_code)
            origin = self.hooks.cors_origin(request)
            if origin:
                for name, value in http.cors_headers(origin):
                    response.headers[name] = value
            self._respond(response)
            return
        self._respond(response)
        assert self._tcp is not None
        fmt = Wire.MSGPACK if handshake.subprotocol == SUBPROTOCOL_MSGPACK else Wire.JSON
        self._swap_to_open_protocol()
        self.writer = self.hooks.new_writer(self._tcp, self._slow_consumer)
        self.transport = WsTransport(self, self.writer, fmt)
        self._bucket = TokenBucket(self.svc.settings.inbound_rate,
                                   self.svc.settings.inbound_burst, self.hooks.loop.time())
        self.phase = Phase.WS
        self._begin(claims)

    def _swap_to_open_protocol(self) -> None:
        """Continue with a fresh protocol object in the OPEN state.

        The handshake protocol's parser generator keeps the parsed request (headers, token)
        alive for the life of the connection; a protocol created OPEN has none of that and
        is about a fifth of the size. The base ``Protocol``, not ``ServerProtocol``: the
        latter's parser stays suspended in one more generator frame (~250 bytes) for the
        life of the connection. Bytes already buffered after the request move along.
        """
        leftover = bytes(self.ws.reader.buffer)
        opened = Protocol(Side.SERVER, state=State.OPEN,
                          max_size=self.svc.settings.max_message_size, logger=_WS_LOG)
        # Two per-connection objects websockets only ever reads, shared instead (~150 bytes a
        # connection): the id it keeps for logs (ours carry conn_id) and its extensions list
        # (we negotiate none).
        opened.id = _PROTOCOL_ID
        opened.extensions = _NO_EXTENSIONS
        self.ws = opened
        if leftover:
            opened.receive_data(leftover)

    def _accept_sse(self, request: Request, accepted: Accepted) -> None:
        self.request = accepted.request
        claims = accepted.claims
        assert self._tcp is not None
        origin = request.headers.get("Origin")
        self._tcp.write(http.sse_head(origin))
        # EventSource retries after `retry` ms; a jittered value keeps the clients of a dead
        # gateway from all coming back at the same instant.
        self._tcp.write(b"retry: %d\n\n" % random.randint(1000, 5000))
        self.writer = self.hooks.new_writer(self._tcp, self._slow_consumer)
        self.phase = Phase.SSE
        # The handshake protocol would keep the parsed request for the stream's lifetime.
        self.ws = _SSE_PROTOCOL
        self.transport = SseTransport(self, self.writer)
        self._begin(claims)

    # -- a connect the connect proxy decides -------------------------------------------------

    def _defer(self, request: Request, deferred: Deferred, transport: str) -> None:
        """Park the request while the connect proxy is asked (only with a connect proxy).

        The call is bounded by the proxy's timeout and the handshake timeout, and in number
        by the proxy's concurrency limit (beyond it the connect is refused 503 at once); a
        timer aborts the socket should no answer come a second past the handshake timeout.
        A client that hangs up meanwhile cancels the call (:meth:`connection_lost`).
        """
        assert self._tcp is not None
        peer = self._tcp.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        loop = self.hooks.loop
        timeout = self.svc.settings.handshake_timeout
        # The call ends by the deadline and is answered (503 at worst); the abort, a second
        # later, is only for an answer that never comes.
        self._timer = loop.call_later(timeout + 1.0, self._abort)
        task = loop.create_task(self._open_deferred(request, deferred, transport, remote,
                                                    loop.time() + timeout))
        self._welcome_task = task
        task.add_done_callback(self._deferred_done)

    async def _open_deferred(self, request: Request, deferred: Deferred, transport: str,
                             remote: str | None, deadline: float) -> None:
        try:
            accepted = await self.hooks.accept_deferred(deferred, transport, remote, deadline)
        except HandshakeRefused as refusal:
            if self._answer_parked():
                self._refuse(request, refusal)
            return
        if self._answer_parked():
            self._accept(request, accepted, transport)

    def _answer_parked(self) -> bool:
        """Stop the parked handshake's timer; False if the client is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return not self.is_closed()

    def _deferred_done(self, task: asyncio.Task[None]) -> None:
        if self._welcome_task is task:
            self._welcome_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("deferred connect failed", exc_info=task.exception())
            self._abort()

    # -- session ------------------------------------------------------------------------------

    def _begin(self, claims: Claims) -> None:
        """Join the hub first (live messages are held), then register and welcome."""
        self.claims = claims
        session_id = self.request.session or streams.random_id(16)
        self.session = Session(session_id=session_id, user=claims.user)
        self.svc.hub.add(self)
        proxy = self.svc.proxy
        if proxy is not None and self.request.channels:
            self._defer_channels(proxy)
        for name in self.request.channels:
            if claims.may_subscribe(name):
                self.session.begin_join(streams.channel_key(name))
                self.svc.hub.subscribe(self, streams.channel_key(name))
        self.hooks.client_joined(self)
        task = self.hooks.loop.create_task(welcome(self.svc, self))
        self._welcome_task = task
        # A finished task is ~1 KiB we would otherwise keep for the connection's lifetime.
        task.add_done_callback(self._welcomed)

    def _welcomed(self, task: asyncio.Task[None]) -> None:
        if self._welcome_task is task:
            self._welcome_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("welcome failed", exc_info=task.exception())
            self.close(Close.INTERNAL_ERROR, "internal error")

    def _defer_channels(self, proxy: Proxy) -> None:
        """Connect-time channels the subscribe proxy must allow become subscribes answered
        after the welcome (``subscribed`` or ``error``), like a client's early commands;
        those the connect proxy joined are not asked about again."""
        request = self.request
        asked = [name for name in request.channels if name not in request.granted
                 and self.claims.may_subscribe(name) and proxy.subscribes(name)]
        if not asked:
            return
        commands = self.pending_commands = self.pending_commands or []
        for name in asked:
            msg: dict[str, Any] = {"type": "subscribe", "channel": name}
            pos = request.cursor.get(streams.wire_name(streams.channel_key(name)))
            if pos is not None:
                msg["cursor"] = {"epoch": pos.epoch, "offset": pos.offset}
            commands.append(msg)
        self.request = dataclasses.replace(
            request, channels=tuple(n for n in request.channels if n not in asked))
