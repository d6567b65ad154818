"""Refused handshakes, oversized frames and slow consumers, against a real gateway process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from switchboard.auth import mint
from tests.clients import SseClient, WsClient, until
from tests.integration.cluster import cluster, token
from tests.support import JWT_SECRET, RedisServer

pytestmark = pytest.mark.integration


async def handshake_status(url: str, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    return refused.value.response.status_code


async def test_bad_tokens_and_origins_are_refused_and_others_keep_receiving(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        port = c.gateways[0].port
        base = f"ws://127.0.0.1:{port}/ws"
        bystander = await WsClient(c.ws_url(0, "bystander")).start()

        forged = mint("not-the-secret-but-long-enough-0123456789", "mallory")
        expired = jwt.encode({"sub": "mallory", "exp": int(time.time()) - 10}, JWT_SECRET,
                             algorithm="HS256")
        no_sub = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
        unsigned = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, None,
                              algorithm="none")
        assert await handshake_status(base) == 401
        for bad in (forged, expired, no_sub, unsigned, "garbage"):
            assert await handshake_status(f"{base}?token={bad}") == 401
        # A bearer header works for non-browser clients, and a bad one is refused the same way.
        assert await handshake_status(
            base, additional_headers={"Authorization": f"Bearer {forged}"}) == 401
        header_client = await WsClient(
            base, additional_headers={"Authorization": f"Bearer {token('hdr')}"}).start()
        assert header_client.welcome is not None and header_client.welcome["user"] == "hdr"

        assert await handshake_status(f"{base}?token={token('eve')}",
                                      origin="http://evil.example") == 403
        sse = await SseClient("127.0.0.1", port, "/sse").start()
        assert sse.status == 401
        sse_origin = await SseClient("127.0.0.1", port, c.sse_path("eve"),
                                     {"Origin": "http://evil.example"}).start()
        assert sse_origin.status == 403
        # Refusals are JSON with a message.
        resp = httpx.get(f"http://127.0.0.1:{port}/sse?token={forged}")
        assert resp.status_code == 401 and "message" in resp.json()

        c.publish(broadcast=True, data="after the refusals")
        await until(lambda: bystander.data("broadcast") == ["after the refusals"], 10,
                    "bystander still served")
        fresh = await WsClient(c.ws_url(0, "fresh")).start()
        assert fresh.welcome is not None
        assert c.metric(0, "switchboard_gateway_handshake_rejections_total", status="401") >= 7
        for cl in (bystander, header_client, fresh, sse, sse_origin):
            await cl.close()


async def test_oversized_frame_closes_1009_and_malformed_frames_get_errors(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1, SWITCHBOARD_MAX_MESSAGE_SIZE="1024") as c:
        bystander = await WsClient(c.ws_url(0, "bystander")).start()
        sloppy = await WsClient(c.ws_url(0, "sloppy")).start()
        await sloppy.send({"type": "nonsense"})
        assert sloppy.ws is not None
        await sloppy.ws.send("{not json")
        await sloppy.ws.send(b"\xc1\xc1")
        await until(lambda: len([m for m in sloppy.received if m["type"] == "error"]) == 3, 5,
                    "three error replies")
        assert not sloppy.closed  # malformed input is answered, not fatal

        big = await WsClient(c.ws_url(0, "big")).start()
        assert big.ws is not None
        await big.ws.send("x" * 2000)
        await until(lambda: big.closed, 5, "oversized frame closes the connection")
        assert big.close_code == 1009

        c.publish(broadcast=True, data="still fine")
        await until(lambda: bystander.data("broadcast") == ["still fine"] and
                    sloppy.data("broadcast") == ["still fine"], 10, "others still served")
        for cl in (bystander, sloppy):
            await cl.close()


async def test_inbound_flood_is_closed_4129(redis_server: RedisServer, logdir: Path) -> None:
    with cluster(redis_server, logdir, gateways=1, SWITCHBOARD_INBOUND_RATE="5",
                 SWITCHBOARD_INBOUND_BURST="10") as c:
        flooder = await WsClient(c.ws_url(0, "flooder")).start()
        for _ in range(40):
            if flooder.closed:
                break
            await flooder.send({"type": "ping"})
        await until(lambda: flooder.closed, 5, "flooder closed")
        assert flooder.close_code == 4129
        assert 1 <= len([m for m in flooder.received if m["type"] == "pong"]) <= 12


def raw_handshake(port: int, user: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    # A tiny receive window: the gateway's writes pile up on its side, as with a stalled phone.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
         f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    result = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            result.append(done.value)
        except EOFError:
            return result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_consumer_is_closed_4108_while_others_keep_receiving(
    redis_server: RedisServer, logdir: Path
) -> None:
    limit = 256 * 1024
    with cluster(redis_server, logdir, gateways=1,
                 SWITCHBOARD_WRITE_BUFFER_LIMIT=str(limit),
                 SWITCHBOARD_CLOSE_TIMEOUT="30") as c:
        gw = c.gateways[0]
        good = await WsClient(c.ws_url(0, "good")).start()
        stalled = raw_handshake(gw.port, "stalled")
        await until(lambda: c.metric(0, "switchboard_gateway_connections") == 2, 5, "2 clients")
        rss_before = rss_kib(gw.pid)

        payload = "x" * 16_000
        batches, per_batch = 40, 50  # 2,000 messages, 32 MB in all
        for b in range(batches):
            await asyncio.to_thread(c.publish_batch, [
                {"broadcast": True, "data": {"i": b * per_batch + i, "pad": payload}}
                for i in range(per_batch)])
            # Let the good client keep up, as a healthy client would.
            await until(lambda b=b: len(good.messages("broadcast")) >= (b + 1) * per_batch,
                        20, "good client keeps up")
        total = batches * per_batch
        assert [m["data"]["i"] for m in good.messages("broadcast")] == list(range(total))
        await until(lambda: c.metric(0, "switchboard_gateway_disconnects_total",
                                     code="4108") == 1, 10, "slow consumer closed 4108")
        growth_mib = (rss_kib(gw.pid) - rss_before) / 1024
        # Without the ceiling the stalled client's queue would hold ~32 MB by now.
        assert growth_mib < 16, f"gateway RSS grew {growth_mib:.1f} MiB"

        # What the stalled client finds when it finally reads: stale messages, then 4108.
        stalled.settimeout(10)
        received = b""
        parsed: list[Frame] = []
        while not parsed or parsed[-1].opcode is not Opcode.CLOSE:
            chunk = stalled.recv(1 << 20)
            assert chunk, "connection ended without a close frame"
            received += chunk
            parsed = frames(received)
        stalled.close()
        assert parsed[-1].opcode is Opcode.CLOSE
        assert Close.parse(parsed[-1].data).code == 4108
        delivered_to_stalled = sum(1 for f in parsed if f.opcode is Opcode.TEXT) - 1  # welcome
        assert delivered_to_stalled < total
        assert json.loads(parsed[0].data)["type"] == "welcome"
        await good.close()


async def test_silent_peers_are_dropped_by_handshake_timeout_and_ping_timeout(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1, SWITCHBOARD_HANDSHAKE_TIMEOUT="1",
                 SWITCHBOARD_PING_INTERVAL="0.5", SWITCHBOARD_PING_TIMEOUT="0.5") as c:
        port = c.gateways[0].port
        alive = await WsClient(c.ws_url(0, "alive")).start()  # its library answers pings
        mute = socket.create_connection(("127.0.0.1", port))  # never sends a request
        deaf = raw_handshake(port, "deaf")  # never answers pings
        mute.settimeout(10)
        started = time.monotonic()
        assert mute.recv(1024) == b""  # the gateway hung up on it
        assert time.monotonic() - started < 5
        await until(lambda: c.metric(0, "switchboard_gateway_disconnects_total",
                                     code="1011") == 1, 10, "deaf client dropped")
        await until(lambda: c.metric(0, "switchboard_gateway_connections") == 1, 10,
                    "only the live client left")
        c.publish(broadcast=True, data="ok")
        await until(lambda: alive.data("broadcast") == ["ok"], 5, "live client served")
        assert not alive.closed
        mute.close()
        deaf.close()
        await alive.close()


async def test_a_burst_of_connects_while_the_gateway_is_busy_waits_in_the_listen_queue(
    redis_server: RedisServer, logdir: Path
) -> None:
    """A reconnect storm reaches a gateway that cannot accept for a moment (here: stopped).
    The kernel completes the TCP handshakes and queues them for it, as many as the listen
    backlog holds; beyond it SYNs are dropped and clients wait out retransmissions (1 s, 3 s,
    7 s) before their WebSocket handshake even starts. Once it runs again, every queued
    connection gets its welcome."""
    burst = 600  # far above the 100 a default listen() would queue
    with cluster(redis_server, logdir, gateways=1) as c:
        gw = c.gateways[0]

        async def tcp_connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", gw.port), 3)
            except (TimeoutError, OSError):
                return None

        os.kill(gw.pid, signal.SIGSTOP)  # a process this test started, by PID
        try:
            opened = await asyncio.gather(*(tcp_connect() for _ in range(burst)))
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        conns = [c for c in opened if c is not None]
        try:
            assert len(conns) == burst, f"{burst - len(conns)} connects found the queue full"
            for _, writer in conns[:20]:  # and they are served once it runs again
                writer.write(f"GET /ws?token={token('burst')} HTTP/1.1\r\nHost: x\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            for reader, _ in conns[:20]:
                status = await asyncio.wait_for(reader.readline(), 10)
                assert status.startswith(b"HTTP/1.1 101"), status
        finally:
            for _, writer in conns:
                writer.close()
