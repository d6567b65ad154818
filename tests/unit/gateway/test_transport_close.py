"""How each transport says goodbye and keeps an idle connection alive, bytes in and bytes out.

The real :class:`gateway.app.Gateway` and :class:`gateway.server.Connection` on the in-memory
backplane, with a fake asyncio transport that records what the gateway writes: no sockets, no
Redis. A WebSocket close is a close frame carrying the code (after what was queued, and nothing
after it); an SSE close is a final ``error`` event, then the TCP connection closes. A WebSocket
peer is pinged after ``ping_interval`` of silence and dropped ``ping_timeout`` after an
unanswered ping; an SSE stream gets a ``: ping`` comment every ``sse_ping_interval``. The clock
is passed in, as the app's keepalive sweep does, so no test sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from gateway import memory
from gateway.app import Gateway
from gateway.server import Connection
from switchboard.auth import mint
from switchboard.closecodes import Close as Code
from switchboard.config import GatewaySettings
from tests.fake_tcp import FakeTcp

SECRET = "transport-close-test-secret-of-32-bytes+"
PING_INTERVAL, PING_TIMEOUT, SSE_PING_INTERVAL = 20.0, 10.0, 15.0


class Tcp(FakeTcp):
    """Records the bytes and how the connection ended; nothing may be written after closing."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.out = bytearray()

    @property
    def closed(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        assert not self.closing, "wrote after closing"
        self.received(data)

    def received(self, data: bytes) -> None:
        self.out += data

    def take(self) -> bytes:
        """What was written since the last take."""
        data, self.out = bytes(self.out), bytearray()
        return data


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        jwt_secret=SECRET, host="127.0.0.1", redis_url="redis://127.0.0.1:9/0",
        ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
        sse_ping_interval=SSE_PING_INTERVAL, handshake_timeout=60, close_timeout=60,
        rebalance=False,
    )
    gw = Gateway(settings, asyncio.get_running_loop(),
                 backplane=memory.factory(memory.MemoryCluster()))
    gw.backplane.start(gw.delivery)
    yield gw
    for conn in list(gw.tcp):
        conn._abort()
    await settle()


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def disconnects(gw: Gateway, wire: str, code: int) -> float:
    value = gw.metrics.registry.get_sample_value(
        "switchboard_gateway_disconnects_total", {"transport": wire, "code": str(code)})
    return value or 0.0


def client_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    return (bytes((0x80 | opcode.value, 0x80 | len(payload))) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def server_frames(data: bytes) -> list[Frame]:
    """Every whole frame in ``data``, as websockets' own parser reads them."""
    reader = StreamReader()
    reader.feed_data(data)
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError(f"incomplete frame: {bytes(reader.buffer)[:60]!r}")
    return frames


def sse_events(data: bytes) -> list[dict[str, str]]:
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": ")
                fields[name] = value
            events.append(fields)
    return events


async def open_ws(gw: Gateway) -> tuple[Connection, Tcp]:
    conn = Connection(gw.services, gw)
    tcp = Tcp(conn)
    conn.connection_made(tcp)  # type: ignore[arg-type]
    key = base64.b64encode(os.urandom(16)).decode()
    conn.data_received(
        f"GET /ws?token={mint(SECRET, 'alice')} HTTP/1.1\r\nHost: gw\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await settle()
    head, _, rest = tcp.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert [json.loads(bytes(f.data))["type"] for f in server_frames(rest)] == ["welcome"]
    return conn, tcp


async def open_sse(gw: Gateway) -> tuple[Connection, Tcp]:
    conn = Connection(gw.services, gw)
    tcp = Tcp(conn)
    conn.connection_made(tcp)  # type: ignore[arg-type]
    conn.data_received(
        f"GET /sse?token={mint(SECRET, 'bob')} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await settle()
    head, _, rest = tcp.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert [e.get("event") for e in sse_events(rest)] == [None, "welcome"]  # retry:, welcome
    return conn, tcp


# -- closing ----------------------------------------------------------------------------------


async def test_ws_close_sends_a_close_frame_with_the_code_after_what_was_queued(
    gateway: Gateway,
) -> None:
    conn, tcp = await open_ws(gateway)
    conn.transport.send_obj({"type": "pong"})  # queued for this loop iteration's flush
    conn.transport.close(Code.GOING_AWAY)
    conn.transport.send_obj({"type": "pong"})  # after the close frame: never written
    await settle()
    frames = server_frames(tcp.take())
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert Close.parse(frames[1].data) == Close(1001, "going away")
    assert disconnects(gateway, "json", 1001) == 1
    # RFC 6455 7.1.1: we wait for the client's close frame, then the server hangs up.
    assert not tcp.is_closing()
    conn.data_received(client_frame(Opcode.CLOSE, bytes(frames[1].data)))
    await settle()
    assert tcp.closed and not tcp.aborted and tcp.take() == b""
    assert len(gateway.hub) == 0


async def test_ws_close_while_websockets_is_failing_the_connection_keeps_its_code(
    gateway: Gateway,
) -> None:
    conn, tcp = await open_ws(gateway)
    # One read: a text frame that is not UTF-8 (our check: 1007), then a reserved opcode
    # (websockets': 1002). websockets fails the connection while parsing the read, so our
    # close finds it already closing: its close frame goes out, then TCP closes.
    conn.data_received(client_frame(Opcode.TEXT, b"\xff\xfe")
                       + bytes((0x83, 0x80)) + os.urandom(4))
    await settle()
    frames = server_frames(tcp.take())
    assert [f.opcode for f in frames] == [Opcode.CLOSE]
    assert Close.parse(frames[0].data).code == 1002
    assert tcp.closed


async def test_sse_close_writes_a_final_error_event_then_closes(gateway: Gateway) -> None:
    conn, tcp = await open_sse(gateway)
    conn.transport.send_obj({"type": "pong"})  # queued: goes out before the final event
    conn.transport.close(Code.TRY_AGAIN_LATER, "redis unavailable")
    await settle()
    events = sse_events(tcp.take())
    assert [e["event"] for e in events] == ["pong", "error"]
    assert json.loads(events[-1]["data"]) == {
        "type": "error", "code": 1013, "message": "redis unavailable", "close": True}
    assert events[-1]["id"] == conn.session.cursor()  # Last-Event-ID resumes from here
    assert tcp.closed and not tcp.aborted
    assert disconnects(gateway, "sse", 1013) == 1
    assert len(gateway.hub) == 0


async def test_sse_client_over_the_buffer_ceiling_gets_a_final_4108_event(
    gateway: Gateway,
) -> None:
    conn, tcp = await open_sse(gateway)
    tcp.buffer_size = gateway.settings.write_buffer_limit + 1  # the client stopped reading
    conn.transport.send_obj({"type": "pong"})
    await settle()  # the flush hands it to the socket and finds the socket over the ceiling
    events = sse_events(tcp.take())
    assert [e["event"] for e in events] == ["pong", "error"]
    assert json.loads(events[-1]["data"])["code"] == 4108
    assert tcp.closed
    assert disconnects(gateway, "sse", 4108) == 1
    conn.transport.send_obj({"type": "pong"})  # the queue is gone: nothing more is written
    await settle()
    assert tcp.take() == b""


async def test_sse_close_4108_drops_what_was_queued(gateway: Gateway) -> None:
    conn, tcp = await open_sse(gateway)
    conn.transport.send_obj({"type": "pong"})  # queued, never flushed
    conn.close(Code.SLOW_CONSUMER)
    await settle()
    events = sse_events(tcp.take())
    assert [e["event"] for e in events] == ["error"]
    assert json.loads(events[0]["data"]) == {
        "type": "error", "code": 4108, "message": "slow consumer", "close": True}
    assert tcp.closed


async def test_ws_close_4108_drops_what_was_queued(gateway: Gateway) -> None:
    conn, tcp = await open_ws(gateway)
    conn.transport.send_obj({"type": "pong"})
    conn.close(Code.SLOW_CONSUMER)
    await settle()
    frames = server_frames(tcp.take())
    assert [f.opcode for f in frames] == [Opcode.CLOSE]
    assert Close.parse(frames[0].data) == Close(4108, "slow consumer")


# -- keepalive --------------------------------------------------------------------------------


async def test_ws_ping_after_the_idle_interval_and_abort_after_the_ping_timeout(
    gateway: Gateway,
) -> None:
    conn, tcp = await open_ws(gateway)
    t0 = conn.last_seen
    conn.keepalive(t0 + PING_INTERVAL - 0.1, PING_INTERVAL, PING_TIMEOUT)
    assert tcp.take() == b""  # not idle long enough
    conn.keepalive(t0 + PING_INTERVAL, PING_INTERVAL, PING_TIMEOUT)
    [ping] = server_frames(tcp.take())
    assert ping.opcode is Opcode.PING and ping.data == b"sb"
    conn.keepalive(t0 + PING_INTERVAL + PING_TIMEOUT, PING_INTERVAL, PING_TIMEOUT)
    assert tcp.take() == b"" and not tcp.closed  # one ping at a time; not late yet
    conn.keepalive(t0 + PING_INTERVAL + PING_TIMEOUT + 0.1, PING_INTERVAL, PING_TIMEOUT)
    assert tcp.aborted and tcp.take() == b""  # a peer that does not answer gets no goodbye
    assert disconnects(gateway, "json", 1011) == 1
    await settle()
    assert len(gateway.hub) == 0


async def test_ws_pong_answers_the_ping(gateway: Gateway) -> None:
    conn, tcp = await open_ws(gateway)
    t0 = conn.last_seen
    conn.keepalive(t0 + PING_INTERVAL, PING_INTERVAL, PING_TIMEOUT)
    [ping] = server_frames(tcp.take())
    conn.data_received(client_frame(Opcode.PONG, bytes(ping.data)))
    # Past the deadline of the answered ping: not dropped, and pinged again once idle.
    late = t0 + PING_INTERVAL + PING_TIMEOUT + 1
    assert late - conn.last_seen >= PING_INTERVAL
    conn.keepalive(late, PING_INTERVAL, PING_TIMEOUT)
    assert [f.opcode for f in server_frames(tcp.take())] == [Opcode.PING]
    assert not tcp.closed


async def test_ws_keepalive_off(gateway: Gateway) -> None:
    conn, tcp = await open_ws(gateway)
    conn.keepalive(conn.last_seen + 10**6, None, None)
    assert tcp.take() == b"" and not tcp.closed


async def test_sse_ping_comment_every_sse_ping_interval(gateway: Gateway) -> None:
    conn, tcp = await open_sse(gateway)
    t0 = conn.last_seen
    # The WebSocket periods do not apply to an event stream: it has no pong to wait for.
    conn.keepalive(t0 + SSE_PING_INTERVAL - 0.1, 0.001, 0.001)
    await settle()
    assert tcp.take() == b"" and not tcp.closed
    conn.keepalive(t0 + SSE_PING_INTERVAL, 0.001, 0.001)
    await settle()
    assert tcp.take() == b": ping\n\n"
    conn.keepalive(t0 + 2 * SSE_PING_INTERVAL - 0.1, 0.001, 0.001)
    await settle()
    assert tcp.take() == b""
    conn.keepalive(t0 + 2 * SSE_PING_INTERVAL, 0.001, 0.001)
    await settle()
    assert tcp.take() == b": ping\n\n" and not tcp.closed


async def test_keepalive_before_the_handshake_does_nothing(gateway: Gateway) -> None:
    conn = Connection(gateway.services, gateway)
    tcp = Tcp(conn)
    conn.connection_made(tcp)  # type: ignore[arg-type]
    conn.keepalive(conn.last_seen + 10**6, PING_INTERVAL, PING_TIMEOUT)
    assert tcp.take() == b"" and not tcp.closed

