"""Write-only transports: WebSocket and SSE behind one small interface.

Sessions and the hub call ``send`` (a message), ``send_obj`` (welcome, pong, error...) and
``close(code)`` without knowing which transport they talk to. Both write through a
:class:`Writer`, which coalesces everything written to one socket in a loop iteration into
one ``writelines`` call and enforces the per-connection buffer ceiling: past it the connection
is closed 4108 and its queue dropped, so a slow client can neither stall the fan-out nor grow
gateway memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from gateway import wire
from gateway.wire import Outgoing, Wire
from switchboard import closecodes


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

    def close(self, code: int, reason: str = "") -> None: ...


class WsTransport:
    """Frames are prebuilt by :class:`~gateway.wire.Outgoing`; this only picks which."""

    __slots__ = ("_close", "kind", "wire", "writer")

    def __init__(self, writer: Writer, fmt: Wire, close: Callable[[int, str], None]) -> None:
        self.writer = writer
        self.wire = fmt
        self.kind = wire.KIND[fmt]
        self._close = close

    def send(self, out: Outgoing) -> None:
        self.writer.write(out.msgpack_frame if self.wire is Wire.MSGPACK else out.text_frame)

    def send_obj(self, obj: dict[str, Any]) -> None:
        self.writer.write(wire.encode_frame(obj, self.wire))

    def close(self, code: int, reason: str = "") -> None:
        self._close(code, reason or closecodes.reason(code))


class SseTransport:
    """Each event's ``id:`` is the connection's full cursor, so Last-Event-ID resumes all."""

    __slots__ = ("_close", "_cursor", "kind", "wire", "writer")

    def __init__(
        self, writer: Writer, cursor: Callable[[], str], close: Callable[[int, str], None]
    ) -> None:
        self.writer = writer
        self.wire = Wire.SSE
        self.kind = wire.KIND[Wire.SSE]
        self._cursor = cursor
        self._close = close

    def send(self, out: Outgoing) -> None:
        self.writer.write(b"id: " + self._cursor().encode() + b"\n" + out.sse_tail)

    def send_obj(self, obj: dict[str, Any]) -> None:
        self.writer.write(wire.sse_event(self._cursor(), str(obj["type"]), wire.dumps_json(obj)))

    def comment(self, text: bytes) -> None:
        self.writer.write(b": " + text + b"\n\n")

    def close(self, code: int, reason: str = "") -> None:
        self._close(code, reason or closecodes.reason(code))
