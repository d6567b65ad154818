"""Write-only transports: WebSocket and SSE behind one small interface.

Sessions and the hub call ``send`` (a message), ``send_obj`` (welcome, pong, error...) and
``close(code)`` without knowing which transport they talk to. The connection that owns a
transport (:class:`gateway.connection.BaseConnection`) asks it for the two things that differ
between the wires: ``write_close`` (a close frame, or a final ``error`` event) and
``keepalive`` (ping frames with a pong deadline, or ``: ping`` comments), so it never branches
on the transport type either.

Both write through a :class:`Writer`, which coalesces everything written to one socket in a
loop iteration into one ``writelines`` call and enforces the per-connection buffer ceiling:
past it the connection is closed 4108 and its queue dropped, so a slow client can neither
stall the fan-out nor grow gateway memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from websockets.protocol import State

from gateway import wire
from gateway.wire import Notice, Outgoing, Wire
from switchboard import closecodes

if TYPE_CHECKING:
    from websockets.protocol import Protocol as WsProtocol

    from gateway.ports import Services
    from gateway.session import Session


class FlushScheduler:
    """Flushes every writer that was written to, once per loop iteration."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Writer] = []
        self._scheduled = False

    def mark(self, writer: Writer) -> None:
        self._dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


class Writer:
    __slots__ = ("_on_overflow", "_pending", "_pending_bytes", "_scheduler", "limit", "transport")

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        scheduler: FlushScheduler,
        limit: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.limit = limit
        self._scheduler = scheduler
        self._on_overflow = on_overflow
        self._pending: list[bytes] | None = []
        self._pending_bytes = 0

    @property
    def closed(self) -> bool:
        return self._pending is None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            return
        if not pending:
            self._scheduler.mark(self)
        pending.append(data)
        self._pending_bytes += len(data)
        # What one loop iteration queues is bounded by one read from Redis; the ceiling is
        # judged at flush time, against what the socket would not take. This only guards
        # against a runaway iteration.
        if self._pending_bytes > 4 * self.limit:
            self._overflow()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel, plus what is queued."""
        return self.transport.get_write_buffer_size() + self._pending_bytes

    def flush(self, check: bool = True) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_bytes = 0
        if self.transport.is_closing():
            return
        self.transport.writelines(pending)
        if check and self.transport.get_write_buffer_size() > self.limit:
            self._overflow()

    def discard(self) -> None:
        """Drop whatever is queued and refuse further writes."""
        self._pending = None
        self._pending_bytes = 0

    def finish(self) -> None:
        """Write what is queued now, then refuse further writes."""
        self.flush()
        self._pending = None

    def _overflow(self) -> None:
        self.discard()
        self._on_overflow()


class Transport(Protocol):
    wire: Wire
    kind: int  # index of ``wire`` in gateway.wire.WIRES

    def send(self, out: Outgoing) -> None: ...

    def send_obj(self, obj: dict[str, Any]) -> None: ...

    def send_notice(self, notice: Notice) -> None:
        """Like :meth:`send_obj`, for an object many connections get (encoded once)."""

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with a documented code (its bookkeeping, then ``write_close``)."""

    # -- asked by the owning connection only ---------------------------------------------------

    def write_close(self, code: int, reason: str) -> None:
        """Write this transport's goodbye carrying ``code``; the connection has done the
        bookkeeping and bounds the wait for the peer with its close timer."""

    def keepalive(self, now: float, interval: float | None, timeout: float | None) -> bool:
        """Ping if one is due; False if the peer left a ping unanswered for longer than
        ``timeout``. ``interval`` and ``timeout`` are the WebSocket ping period and pong
        deadline (None: off)."""


class Owner(Protocol):
    """What a transport needs of the connection it writes for
    (:class:`gateway.connection.BaseConnection`). The connection reads, so it keeps the
    keepalive clock; the transport decides what a ping is and when one is due."""

    svc: Services
    session: Session
    ws: WsProtocol  # websockets' protocol: OPEN after a WebSocket handshake
    last_seen: float  # loop time of the peer's last bytes (SSE: of our last ping)
    ping_sent: float | None  # loop time of the WebSocket ping not answered yet

    def close(self, code: int, reason: str = "") -> None: ...

    def write_protocol_data(self) -> None:
        """Write what websockets' protocol has to send (control frames, close frames)."""


class WsTransport:
    """Frames are prebuilt by :class:`~gateway.wire.Outgoing`; this only picks which. Control
    frames (close, ping) go through the owner's websockets protocol."""

    __slots__ = ("_conn", "kind", "wire", "writer")

    def __init__(self, conn: Owner, writer: Writer, fmt: Wire) -> None:
        self.writer = writer
        self.wire = fmt
        self.kind = wire.KIND[fmt]
        self._conn = conn

    def send(self, out: Outgoing) -> None:
        self.writer.write(out.msgpack_frame if self.wire is Wire.MSGPACK else out.text_frame)

    def send_obj(self, obj: dict[str, Any]) -> None:
        self.writer.write(wire.encode_frame(obj, self.wire))

    def send_notice(self, notice: Notice) -> None:
        self.writer.write(notice.frame(self.wire))

    def close(self, code: int, reason: str = "") -> None:
        self._conn.close(code, reason or closecodes.reason(code))

    def write_close(self, code: int, reason: str) -> None:
        # RFC 6455 5.5.1: nothing may follow the close frame, so what is queued goes first;
        # then we wait for the client's close frame (7.1.1: the server hangs up after it).
        conn = self._conn
        if conn.ws.state is State.OPEN:
            self.writer.finish()
            conn.ws.send_close(code, reason)
            conn.write_protocol_data()
        else:
            # The protocol is already closing (it failed the connection on an earlier frame of
            # this read): write what is queued and its close frame before hanging up.
            conn.write_protocol_data()
            self.writer.finish()
            self.writer.transport.close()

    def keepalive(self, now: float, interval: float | None, timeout: float | None) -> bool:
        # A ping after `interval` of silence; a peer that has not answered it within `timeout`
        # is gone (a half-open TCP connection would otherwise be held forever).
        conn = self._conn
        if conn.ws.state is not State.OPEN:
            return True
        if conn.ping_sent is not None:
            return timeout is None or now - conn.ping_sent <= timeout
        if interval is not None and now - conn.last_seen >= interval:
            conn.ping_sent = now
            conn.ws.send_ping(b"sb")
            conn.write_protocol_data()
        return True


class SseTransport:
    """Each event's ``id:`` is the connection's full cursor, so Last-Event-ID resumes all."""

    __slots__ = ("_conn", "kind", "wire", "writer")

    def __init__(self, conn: Owner, writer: Writer) -> None:
        self.writer = writer
        self.wire = Wire.SSE
        self.kind = wire.KIND[Wire.SSE]
        self._conn = conn

    def send(self, out: Outgoing) -> None:
        self.writer.write(b"id: " + self._conn.session.cursor().encode() + b"\n" + out.sse_tail)

    def send_obj(self, obj: dict[str, Any]) -> None:
        self.writer.write(
            wire.sse_event(self._conn.session.cursor(), str(obj["type"]), wire.dumps_json(obj)))

    def send_notice(self, notice: Notice) -> None:
        self.writer.write(wire.sse_event(self._conn.session.cursor(), str(notice.obj["type"]),
                                         notice.json))

    def comment(self, text: bytes) -> None:
        self.writer.write(b": " + text + b"\n\n")

    def close(self, code: int, reason: str = "") -> None:
        self._conn.close(code, reason or closecodes.reason(code))

    def write_close(self, code: int, reason: str) -> None:
        # An event stream has no close frame: its last event is an `error` naming the code, so
        # the client can tell why (a bare hang-up only makes EventSource reconnect).
        event = {"type": "error", "code": code, "message": reason, "close": True}
        writer = self.writer
        if not writer.closed:
            self.send_obj(event)
            writer.finish()
        else:
            # The queue was dropped (a slow consumer): the final event goes straight out.
            writer.transport.write(wire.sse_event(self._conn.session.cursor(), "error",
                                                  wire.dumps_json(event)))
        writer.transport.close()

    def keepalive(self, now: float, interval: float | None, timeout: float | None) -> bool:
        # Nothing to answer on a one-way stream, so the WebSocket periods do not apply: a
        # comment every sse_ping_interval keeps proxies from timing the stream out as idle.
        conn = self._conn
        if now - conn.last_seen >= conn.svc.settings.sse_ping_interval:
            conn.last_seen = now
            self.comment(b"ping")
        return True
