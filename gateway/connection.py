"""A client's TCP connection: bytes, frames and timers, whatever its HTTP request opened.

Bytes go into websockets' Sans-I/O ``ServerProtocol`` through ``receive_data`` and what it has
to send comes out of ``data_to_send``; message frames we send ourselves are prebuilt (see
:mod:`gateway.wire`) and written through the connection's
:class:`~gateway.transport.Writer`. As the Sans-I/O guide says, the I/O layer owns the timers:
handshake timeout, close timeout; keepalive pings are swept by the app and written by the
transport. What the request opens (``/ws``, ``/sse`` or a plain response) is decided by the
subclass, :class:`gateway.server.Connection`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from gateway.ports import NO_REQUEST, ConnectionHooks, ConnectRequest, Services
from gateway.ratelimit import TokenBucket
from gateway.session import Session
from gateway.transport import Transport, Writer
from gateway.wire import ClientMessageError, Outgoing, decode_client
from switchboard import closecodes, streams
from switchboard.auth import Claims
from switchboard.closecodes import Close

log = logging.getLogger("switchboard.gateway")


class Phase(enum.Enum):
    HANDSHAKE = 0
    WS = 1
    SSE = 2
    CLOSED = 3


class BaseConnection(asyncio.Protocol):
    # Tens of thousands of these live at once: slots and lazily created containers keep each
    # connection small (see BENCHMARKS.md, idle memory).
    __slots__ = (
        "_bucket", "_channel_lock", "_close_code", "_drained", "_fragment_binary",
        "_fragments", "_tcp", "_timer", "_welcome_task", "claims", "conn_id", "hooks",
        "last_seen", "pending_commands", "phase", "ping_sent", "request", "session", "svc",
        "transport", "writer", "ws",
    )

    def __init__(self, svc: Services, hooks: ConnectionHooks, ws: ServerProtocol) -> None:
        """``ws`` is the protocol that parses the HTTP request (replaced by a plain
        ``Protocol`` once a WebSocket is open)."""
        self.svc = svc
        self.hooks = hooks
        self.phase = Phase.HANDSHAKE
        self.conn_id = streams.random_id(10)
        self.ws: Protocol = ws
        self.transport: Transport = None  # type: ignore[assignment]  # set on handshake
        self.session: Session = None  # type: ignore[assignment]
        self.writer: Writer | None = None
        self._tcp: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_binary = False
        self._bucket: TokenBucket | None = None
        self._close_code: int | None = None
        self._welcome_task: asyncio.Task[None] | None = None
        self.last_seen = 0.0
        self.ping_sent: float | None = None
        self.request: ConnectRequest = NO_REQUEST  # what the client asked for at connect
        self.pending_commands: list[dict[str, Any]] | None = None
        self.claims: Claims = None  # type: ignore[assignment]  # set on handshake
        self._drained: asyncio.Future[None] | None = None  # set while the socket is paused
        self._channel_lock: asyncio.Lock | None = None

    def _on_request(self, request: Request) -> None:
        """Answer the HTTP request (the handshake timer is already off)."""
        raise NotImplementedError

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        loop = self.hooks.loop
        self.last_seen = loop.time()
        self._timer = loop.call_later(self.svc.settings.handshake_timeout, self._abort)
        self.hooks.tcp_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.SSE or self.phase is Phase.CLOSED:
            return  # an event stream is one-way; anything the client sends is ignored
        self.last_seen = self.hooks.loop.time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._on_request(event)
            elif isinstance(event, Frame):
                self._on_frame(event)
            if self.is_closed():
                break
        self.write_protocol_data()

    def channel_lock(self) -> asyncio.Lock:
        """Serialises this connection's channel joins and leaves (created on first use)."""
        if self._channel_lock is None:
            self._channel_lock = asyncio.Lock()
        return self._channel_lock

    def pause_writing(self) -> None:
        self._drained = self.hooks.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def send_paced(self, outs: list[Outgoing]) -> bool:
        """Send a replay as fast as the client reads it, not faster.

        A resume may replay far more than the write-buffer ceiling; a healthy client reading
        at network speed must not be taken for a slow consumer. Live messages are held by the
        session meanwhile. Returns False if the connection closed or stalled (closed 4108).
        """
        writer = self.writer
        if writer is None:
            return False
        budget = max(1, writer.limit // 2)
        for out in outs:
            if self.is_closed() or writer.closed:
                return False
            self.transport.send(out)
            if writer.pending_bytes >= budget:
                writer.flush(check=False)
                while self._drained is not None and not self.is_closed():
                    try:
                        await asyncio.wait_for(asyncio.shield(self._drained),
                                               self.svc.settings.replay_stall_timeout)
                    except TimeoutError:
                        self.close(Close.SLOW_CONSUMER, "slow consumer")
                        return False
        return not self.is_closed()

    async def send_replay(self, outs: list[Outgoing]) -> bool:
        """Send a replay (and what it was held with): paced when there is more than one
        message, with the session holding live messages until it is out, then those."""
        session = self.session
        if len(outs) > 1 and session.ready:
            session.hold()  # live messages wait behind the paced replay
            if not await self.send_paced(outs):
                return False
            outs = session.start()
        for out in outs:
            self.transport.send(out)
        return True

    def eof_received(self) -> bool | None:
        if self.phase is not Phase.SSE:
            self.ws.receive_eof()
            self.write_protocol_data()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        previous = self.phase
        self.phase = Phase.CLOSED
        if self.writer is not None:
            self.writer.discard()
        if previous is Phase.HANDSHAKE and self._welcome_task is not None:
            # A connect parked on the connect proxy: nobody waits for its answer any more.
            self._welcome_task.cancel()
        # A running welcome is left to finish: cancelling it could leave its map entry written
        # by a pipeline already sent; it notices the close and takes the entry back itself.
        if previous in (Phase.WS, Phase.SSE):
            if self._close_code is None:
                # Closed by the client (or the network): count it with the code it gave.
                code = self.ws.close_code if previous is Phase.WS else None
                self.hooks.client_closing(self, code)
            self.hooks.client_gone(self)
        self.hooks.tcp_closed(self)

    def is_closed(self) -> bool:
        return self.phase is Phase.CLOSED

    # -- WebSocket frames ---------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.PONG:
            self.ping_sent = None
            return
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragment_binary = op is Opcode.BINARY
                return
            self._on_message(bytes(frame.data), op is Opcode.BINARY)
        elif op is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._on_message(data, self._fragment_binary)
        # PING and CLOSE are answered by the protocol itself.

    def _on_message(self, payload: bytes, binary: bool) -> None:
        if self.phase is not Phase.WS or self.session is None:
            return
        assert self._bucket is not None
        if not self._bucket.take(self.hooks.loop.time()):
            self.close(Close.RATE_LIMITED, "inbound rate limit")
            return
        if not binary:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                # RFC 6455 8.1: text that is not UTF-8 fails the connection with 1007.
                self.close(Close.INVALID_DATA, "text frame is not valid UTF-8")
                return
        try:
            msg = decode_client(payload, binary)
        except ClientMessageError as exc:
            self.svc.metrics.client_error()
            self.transport.send_obj({"type": "error", "code": "bad_request", "message": str(exc)})
            return
        if not self.session.ready:
            # Answered after the welcome, in order (the rate limit bounds this list).
            if self.pending_commands is None:
                self.pending_commands = []
            self.pending_commands.append(msg)
            return
        try:
            self.hooks.client_message(self, msg)
        except Exception:
            # Whatever a client sends must never take the process down or leave a socket
            # half-handled: log it and close with the documented internal-error code.
            log.exception("client message failed")
            self.close(Close.INTERNAL_ERROR, "internal error")

    # -- closing ------------------------------------------------------------------------------

    def _slow_consumer(self) -> None:
        self.close(Close.SLOW_CONSUMER, closecodes.reason(Close.SLOW_CONSUMER))

    def close(self, code: int, reason: str = "") -> None:
        """Close with a documented code, written by the transport (a close frame on WS, a final
        ``error`` event on SSE); the close timer bounds how long the peer may take."""
        if self._close_code is not None or self.phase is Phase.CLOSED or self._tcp is None:
            return
        self._close_code = code
        if self.phase is Phase.HANDSHAKE:
            # Nothing is open to carry a code yet: write what the handshake has, hang up.
            self.write_protocol_data()
            self._tcp.close()
        else:
            self.hooks.client_closing(self, code)
            if code == Close.SLOW_CONSUMER and self.writer is not None:
                self.writer.discard()  # its backlog is what made it slow
            self.transport.write_close(code, reason or closecodes.reason(code))
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._timer is None and self.phase is not Phase.CLOSED:
            self._timer = self.hooks.loop.call_later(self.svc.settings.close_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self._tcp is not None and self.phase is not Phase.CLOSED:
            self._tcp.abort()

    def write_protocol_data(self) -> None:
        """Write what websockets' protocol has to send: handshake responses, control frames,
        close frames (arming the close timer once the connection is closing)."""
        tcp = self._tcp
        if tcp is None:
            return
        out = self.ws.data_to_send()
        if not out:
            return
        if self.ws.state is not State.OPEN and self.writer is not None:
            # A close frame is about to go out: nothing may follow it.
            self.writer.finish()
        for chunk in out:
            if chunk:
                tcp.write(chunk)
            else:
                # SEND_EOF: the server closes the TCP connection (RFC 6455 7.1.1).
                tcp.close()
                self._arm_close_timer()
                return
        if self.ws.close_expected():
            self._arm_close_timer()

    # -- keepalive (called by the app's sweeper) ----------------------------------------------

    def keepalive(self, now: float, interval: float | None, timeout: float | None) -> None:
        """Let the transport ping if one is due; drop a peer that left a ping unanswered.
        ``interval``, ``timeout``: the WebSocket ping period and pong deadline (None: off)."""
        if self.phase is Phase.HANDSHAKE or self.phase is Phase.CLOSED:
            return
        if not self.transport.keepalive(now, interval, timeout):
            log.info("ping timeout, closing %s", self.conn_id)
            self._close_code = Close.INTERNAL_ERROR  # what websockets uses here too
            self.hooks.client_closing(self, self._close_code)
            self._abort()
