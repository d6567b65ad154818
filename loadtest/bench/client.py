"""A cheap WebSocket client for holding thousands of connections in one process.

One :class:`Peer` per simulated user (identity, resume state, backoff), one :class:`WsClient`
``asyncio.Protocol`` per TCP connection, and one :class:`Fleet` per worker process that owns
them all and keeps the counters. There is no task per connection: bytes arrive in
``data_received`` and are framed by :class:`~loadtest.bench.frames.FrameParser`.

Most connections only *count* message frames (no JSON decoding), because in the fan-out
scenario the client shares two cores with the servers it measures; a sample of connections
decodes every message for latency, and in the storm scenario every connection decodes and
tracks offsets, since each must prove it got every offset exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from loadtest.bench import frames
from loadtest.bench.resume import DUPLICATE, ResumeState
from loadtest.bench.stats import Reservoir

# Linux: let connect() pick the source port for the full 4-tuple instead of bind() reserving
# one per source address, so one address is not limited to ~28k ports across all targets.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

OPEN_ATTEMPTS = 5  # initial connects refused with Retry-After (admission control) are retried
BACKOFF_BASE = 0.5  # seconds; docs/protocol.md's client backoff
BACKOFF_CAP = 20.0


def full_jitter(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                rng: random.Random | None = None) -> float:
    """``random(0, min(cap, base * 2**attempt))``: spreads a reconnect storm over time."""
    return (rng or random).uniform(0, min(cap, base * 2 ** min(attempt, 16)))


@dataclass(slots=True)
class Peer:
    """One simulated user: outlives its TCP connections, so it can resume."""

    index: int
    query: str  # token=...; resume parameters are added per connect
    parse: bool  # decode messages (latency sample / tracking) or only count them
    track: bool  # keep the resume account (storm)
    state: ResumeState = field(default_factory=ResumeState)
    gateway: str = ""
    attempt: int = 0
    connected: bool = False
    lost_at: float = 0.0
    welcomed_at: float = 0.0
    hint_ms: int | None = None  # after_ms of a 'reconnect' message
    client: WsClient | None = None


class WsClient(asyncio.Protocol):
    __slots__ = ("_head", "_transport", "closed_code", "fleet", "key", "open", "parser",
                 "peer", "ready", "target", "welcomed")

    def __init__(self, fleet: Fleet, peer: Peer, target: str) -> None:
        self.fleet = fleet
        self.peer = peer
        self.target = target
        self.key = frames.new_key()
        self.parser = frames.FrameParser()
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self.open = False
        self.welcomed = False
        self.closed_code: int | None = None
        self.ready: asyncio.Future[None] | None = fleet.loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check
        tcp = cast(asyncio.Transport, transport)
        self._transport = tcp
        f = self.fleet
        tcp.write(frames.handshake_request(f.host, f.port, self.target, self.key, f.subprotocol))

    def data_received(self, data: bytes) -> None:
        if not self.open:
            split = frames.split_head(self._head + data)
            if split is None:
                self._head += data
                return
            head, data = split
            self._head = b""
            try:
                frames.check_handshake(head, self.key)
            except frames.HandshakeError as exc:
                if exc.retry_after is not None:
                    self.peer.hint_ms = int(exc.retry_after * 1000)  # the server knows best
                self._fail(f"http_{exc.status}" if exc.status else "handshake")
                return
            self.open = True
            self.fleet.on_open(self)
            if not self.fleet.expect_welcome:
                # The baseline sends no welcome: the 101 is all the readiness there is.
                self.welcomed = True
                self.fleet.on_welcome(self)
            if not data:
                return
        if self.welcomed and not self.peer.parse:
            count = self.parser.skim(data)
            if count >= 0:
                self.fleet.messages += count
                return
        try:
            received = self.parser.feed(data)
        except frames.ProtocolError:
            self._fail("protocol")
            return
        for opcode, payload in received:
            if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
                if self.welcomed:
                    self.fleet.messages += 1
                    if self.peer.parse:
                        self._message(payload)
                else:
                    self._welcome(payload)
            elif opcode == frames.OP_PING:
                self._send(frames.OP_PONG, payload)
            elif opcode == frames.OP_CLOSE:
                code, _ = frames.parse_close(payload)
                self.closed_code = code
                self._send(frames.OP_CLOSE, payload[:2])
                if self._transport is not None:
                    self._transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed_{self.closed_code or 'eof'}"))
        self.fleet.on_lost(self)

    # -- messages -----------------------------------------------------------------------------

    def _welcome(self, payload: bytes) -> None:
        self.welcomed = True
        msg = json.loads(payload)
        if msg.get("type") != "welcome":
            self._fail("no_welcome")
            return
        self.peer.gateway = str(msg.get("gateway", ""))
        self.peer.state.on_welcome(msg)
        self.fleet.on_welcome(self)

    def _message(self, payload: bytes) -> None:
        msg = json.loads(payload)
        kind = msg.get("type")
        if kind != "message":
            if kind == "reconnect":
                self.peer.hint_ms = int(msg.get("after_ms", 0))
            return
        fleet = self.fleet
        data = msg.get("data")
        ts = data.get("ts") if isinstance(data, dict) else None
        now = time.time()
        if ts is not None:
            fleet.latency.add(now - ts)
        if self.peer.track:
            status = self.peer.state.on_message(msg["stream"], msg["epoch"], int(msg["offset"]))
            if status == DUPLICATE:
                fleet.duplicates += 1
            elif ts is not None and ts < self.peer.welcomed_at and self.peer.state.welcomes > 1:
                # published while this peer was away: a client without resume lost it
                fleet.replayed += 1

    # -- writing and failing ------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frames.client_frame(opcode, payload))

    def send_close(self, code: int = 1000) -> None:
        if self.open:
            self._send(frames.OP_CLOSE, frames.close_payload(code))
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, kind: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(kind))
        else:
            self.fleet.errors[kind] += 1
        if self._transport is not None:
            self._transport.abort()


class Fleet:
    """Every peer of one worker process, the counters, and connect/reconnect logic."""

    def __init__(self, *, source_ip: str, host: str, port: int, path: str = "/ws",
                 subprotocol: str | None = None, expect_welcome: bool = True,
                 sample_size: int = 100_000) -> None:
        self.loop = asyncio.get_running_loop()
        self.source_ip = source_ip
        self.host, self.port, self.path = host, port, path
        self.subprotocol = subprotocol
        self.expect_welcome = expect_welcome
        self.peers: list[Peer] = []
        self.messages = 0
        self.duplicates = 0
        self.replayed = 0
        self.latency = Reservoir(sample_size)
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.open_now = 0
        self.reconnect = False
        self.stopping = False
        self.record_accepts = False
        self.accepts: list[float] = []  # wall-clock time of each 101 while recording
        self.resumed: list[float] = []  # wall-clock time of each resume welcome
        self._tasks: set[asyncio.Task[None]] = set()

    # -- callbacks from WsClient --------------------------------------------------------------

    def on_open(self, client: WsClient) -> None:
        if self.record_accepts:
            self.accepts.append(time.time())

    def on_welcome(self, client: WsClient) -> None:
        peer = client.peer
        peer.connected = True
        peer.welcomed_at = time.time()
        self.open_now += 1
        if peer.state.welcomes > 1:
            self.resumed.append(peer.welcomed_at)
        peer.attempt = 0  # the bench's "healthy period" is one successful welcome
        if client.ready is not None and not client.ready.done():
            client.ready.set_result(None)
        client.ready = None  # 10k futures are not free

    def on_lost(self, client: WsClient) -> None:
        peer = client.peer
        if peer.client is client:
            peer.client = None
        if not peer.connected:
            return
        peer.connected = False
        peer.lost_at = time.time()
        self.open_now -= 1
        self.closes[str(client.closed_code or "eof")] += 1
        if self.reconnect and not self.stopping:
            self._spawn(self._reconnect(peer))

    # -- connecting ---------------------------------------------------------------------------

    def add_peers(self, queries: list[str], parse_every: int, track: bool) -> list[Peer]:
        start = len(self.peers)
        new = [Peer(start + i, q, parse=track or (parse_every > 0 and i % parse_every == 0),
                    track=track) for i, q in enumerate(queries)]
        self.peers.extend(new)
        return new

    async def connect(self, peer: Peer, limit_s: float) -> None:
        query = peer.query
        if peer.track and peer.state.session is not None:
            query = f"{query}&{peer.state.resume_query()}"
        client = WsClient(self, peer, f"{self.path}?{query}")
        ready = client.ready  # the welcome may land before create_connection returns
        assert ready is not None
        peer.client = client
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.source_ip, 0))
            await asyncio.wait_for(self.loop.sock_connect(sock, (self.host, self.port)), limit_s)
            await self.loop.create_connection(lambda: client, sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            await asyncio.wait_for(ready, limit_s)
        except BaseException:
            client.abort()
            raise

    async def open_all(self, peers: list[Peer], concurrency: int,
                       limit_s: float) -> dict[str, Any]:
        """Connect ``peers`` with at most ``concurrency`` handshakes in flight."""
        started = time.perf_counter()
        failed: Counter[str] = Counter()
        queue = list(reversed(peers))

        async def lane() -> None:
            while queue:
                peer = queue.pop()
                for _ in range(OPEN_ATTEMPTS):
                    try:
                        await self.connect(peer, limit_s)
                        break
                    except (OSError, ConnectionError, TimeoutError) as exc:
                        if peer.hint_ms is None:  # only a 429/503 with Retry-After is retried
                            failed[_kind(exc)] += 1
                            break
                        delay, peer.hint_ms = peer.hint_ms / 1000, None
                        await asyncio.sleep(delay)
                else:
                    failed["retry_after_exhausted"] += 1

        await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
        return {"ok": len(peers) - sum(failed.values()), "failed": dict(failed),
                "seconds": round(time.perf_counter() - started, 3)}

    async def _reconnect(self, peer: Peer) -> None:
        while not self.stopping and not peer.connected:
            if peer.hint_ms is not None:
                delay, peer.hint_ms = peer.hint_ms / 1000, None
            else:
                delay = full_jitter(peer.attempt)
            peer.attempt += 1
            await asyncio.sleep(delay)
            if self.stopping:  # close_all() may have run while we slept
                return  # type: ignore[unreachable]
            try:
                await self.connect(peer, limit_s=10.0)
                return
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.errors[_kind(exc)] += 1

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self, limit_s: float = 10.0) -> None:
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        for peer in self.peers:
            if peer.client is not None:
                peer.client.send_close()
        deadline = time.monotonic() + limit_s
        # polling is fine here: it runs once per scenario, not on a delivery path
        while any(p.client is not None for p in self.peers) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for peer in self.peers:
            if peer.client is not None:
                peer.client.abort()
        self.peers = []
        self.open_now = 0


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if type(exc) is ConnectionError and exc.args:
        return str(exc.args[0])  # ours: the kind is the message
    return type(exc).__name__
