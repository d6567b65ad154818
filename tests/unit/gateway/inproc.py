"""Drive real gateways in process: :class:`gateway.app.Gateway` and
:class:`gateway.server.Connection` over :class:`gateway.memory.MemoryBackplane`, no Redis, no
sockets.

A :class:`Client` is the TCP transport a Connection writes to *and* the client at its other
end: it sends a real HTTP upgrade (or an SSE request) and masked WebSocket frames, and parses
what the gateway writes back into the messages a client would read, the close code, or the
HTTP refusal. Like a well-behaved client it answers the gateway's close frame with its own.

:class:`SteppedBackplane` can hold a backplane call at a named point (:meth:`hold`), so a
test can publish exactly while a connection registers, reads its replay or joins a channel.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from gateway.app import Gateway
from gateway.memory import MemoryBackplane, MemoryCluster
from gateway.ports import Registration
from gateway.server import Connection
from switchboard import streams
from switchboard.auth import mint
from switchboard.config import GatewaySettings
from switchboard.contract import Message
from switchboard.streams import Position
from tests.fake_tcp import FakeTcp

JWT_SECRET = "inproc-test-secret-of-at-least-32-bytes"
TIMEOUT = 3.0  # seconds any single wait may take before the test fails

TEXT, CLOSE = 0x1, 0x8


def settings(**overrides: Any) -> GatewaySettings:
    base: dict[str, Any] = dict(
        jwt_secret=JWT_SECRET, host="127.0.0.1", redis_url="redis://127.0.0.1:9/0",
        ping_interval=None, ping_timeout=None, handshake_timeout=60, close_timeout=60,
        inbound_rate=1e6, inbound_burst=10**6, rebalance=False,
    )
    base.update(overrides)
    return GatewaySettings(**base)


async def until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for a condition, failing the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)


async def settle(turns: int = 30) -> None:
    """Let the loop run what is ready (the in-memory backend never waits on I/O)."""
    for _ in range(turns):
        await asyncio.sleep(0)


# -- a backplane whose calls can be held ------------------------------------------------------


class Gate:
    """Holds the next call that reaches a point until :meth:`release`."""

    def __init__(self, point: str) -> None:
        self.point = point
        self._reached = asyncio.Event()
        self._open = asyncio.Event()

    async def reached(self, timeout: float = TIMEOUT) -> None:
        try:
            await asyncio.wait_for(self._reached.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no call reached {self.point!r}") from None

    def release(self) -> None:
        self._open.set()

    async def _pass(self) -> None:
        self._reached.set()
        await self._open.wait()


class SteppedBackplane(MemoryBackplane):
    """A MemoryBackplane whose calls can be stopped at these points:

    - ``register.mapped``: the map entry is written, the tops are not read yet;
    - ``register.done``: the tops are read, the welcome has not used them yet;
    - ``read_logs``: before a replay (or fill) is read;
    - ``join``: a channel subscribe, before its presence entry and top;
    - ``join.done``: after them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gates: dict[str, Gate] = {}

    def hold(self, point: str) -> Gate:
        gate = self._gates[point] = Gate(point)
        return gate

    async def _point(self, point: str) -> None:
        gate = self._gates.pop(point, None)
        if gate is not None:
            await gate._pass()

    async def register(self, reg: Registration,
                       stream_keys: list[str]) -> tuple[int, dict[str, Position]]:
        self.cluster.check()
        self._map(reg)
        await self._point("register.mapped")
        result = await super().register(reg, stream_keys)
        await self._point("register.done")
        return result

    async def read_logs(self, ranges: list[tuple[str, int, int]]) -> dict[str, list[Message]]:
        await self._point("read_logs")
        return await super().read_logs(ranges)

    async def join(self, reg: Registration, channel: str) -> Position:
        await self._point("join")
        top = await super().join(reg, channel)
        await self._point("join.done")
        return top


# -- a client at the end of a fake TCP transport ----------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Client(FakeTcp):
    """One client connection: the asyncio transport of a gateway Connection, and its peer."""

    def __init__(self, node: Node, conn: Connection, sse: bool) -> None:
        super().__init__(conn, node.loop)
        self.node = node
        self.conn = conn
        self.sse = sse
        self.loop = node.loop
        self._buf = bytearray()
        self.status: int | None = None  # HTTP status of the response
        self.body = b""  # body of a refusal
        self.messages: list[dict[str, Any]] = []
        self.sse_ids: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_at: float | None = None
        self.sent_close = False
        # Our position in every stream, as a client keeps it (for a resume's cursor).
        self.positions: dict[str, Position] = {}

    # -- asyncio.Transport (what the gateway calls) -------------------------------------------

    def received(self, data: bytes) -> None:
        self._buf += data
        self._parse()

    # -- parsing what the gateway wrote -------------------------------------------------------

    def _parse(self) -> None:
        if self.status is None:
            head, sep, rest = bytes(self._buf).partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self._buf = bytearray(rest)
            if self.status not in (101, 200) or not (self.sse or self.status == 101):
                self.body = rest
                return
        if self.status not in (101, 200):
            self.body = bytes(self._buf)
            return
        if self.sse:
            self._parse_sse()
        else:
            self._parse_frames()

    def _parse_frames(self) -> None:
        data = self._buf
        while len(data) >= 2:
            n, j = data[1] & 0x7F, 2
            if n == 126:
                if len(data) < 4:
                    return
                n, j = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                if len(data) < 10:
                    return
                n, j = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < j + n:
                return
            opcode, payload = data[0] & 0xF, bytes(data[j:j + n])
            del data[:j + n]
            if opcode == TEXT:
                self._got(json.loads(payload))
            elif opcode == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                self.close_reason = payload[2:].decode()
                self.closed_at = self.loop.time()
                if not self.sent_close:
                    # A well-behaved client answers with its own close frame.
                    self.loop.call_soon(self._send_close, payload[:2])

    def _parse_sse(self) -> None:
        while True:
            raw, sep, rest = bytes(self._buf).partition(b"\n\n")
            if not sep:
                return
            self._buf = bytearray(rest)
            fields: dict[str, str] = {}
            for line in raw.decode().split("\n"):
                name, _, value = line.partition(": ")
                if name and not line.startswith(":"):
                    fields[name] = value
            if "data" not in fields:
                continue  # retry: or a comment
            obj = json.loads(fields["data"])
            self.sse_ids.append(fields.get("id", ""))
            if obj.get("type") == "error" and obj.get("close"):
                self.close_code = int(obj["code"])
                self.closed_at = self.loop.time()
            self._got(obj)

    def _got(self, obj: dict[str, Any]) -> None:
        self.messages.append(obj)
        kind = obj.get("type")
        if kind == "welcome":
            for name, pos in obj["streams"].items():
                self.positions[name] = Position(pos["epoch"], pos["offset"])
        elif kind == "subscribed":
            self.positions[f"ch.{obj['channel']}"] = Position(obj["epoch"], obj["offset"])
        elif kind == "message":
            self.positions[obj["stream"]] = Position(obj["epoch"], obj["offset"])

    # -- what a test reads ---------------------------------------------------------------------

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def stream(self, name: str) -> list[tuple[str, int, Any]]:
        """(epoch, offset, data) of every message of stream ``name``, in arrival order."""
        return [(m["epoch"], m["offset"], m["data"]) for m in self.of_type("message")
                if m["stream"] == name]

    def offsets(self, name: str) -> list[int]:
        return [o for _, o, _ in self.stream(name)]

    @property
    def welcome(self) -> dict[str, Any]:
        assert self.messages and self.messages[0]["type"] == "welcome", self.messages[:3]
        return self.messages[0]

    def cursor(self) -> str:
        return streams.format_cursor(self.positions)

    def answers(self) -> list[tuple[str, Any]]:
        """(type or error code, channel) of every reply that is not a message or welcome."""
        out = []
        for m in self.messages:
            if m["type"] in ("message", "welcome"):
                continue
            out.append((m["code"] if m["type"] == "error" else m["type"], m.get("channel")))
        return out

    async def wait(self, pred: Callable[[Client], bool], what: str,
                   timeout: float = TIMEOUT) -> None:
        try:
            await until(lambda: pred(self), what, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {self.messages!r}, close {self.close_code}") \
                from None

    async def welcomed(self) -> dict[str, Any]:
        await self.wait(lambda c: bool(c.messages) or c.close_code is not None, "a welcome")
        return self.welcome

    async def wait_offset(self, name: str, offset: int) -> None:
        await self.wait(lambda c: offset in c.offsets(name), f"{name} offset {offset}")

    async def wait_closed(self) -> int:
        await self.wait(lambda c: c.close_code is not None, "a close")
        assert self.close_code is not None
        return self.close_code

    async def wait_gone(self) -> None:
        """Until the gateway has let go of the connection."""
        await until(lambda: self.conn.is_closed(), "the connection to end")
        await settle()

    # -- what a client sends --------------------------------------------------------------------

    def send(self, *objs: dict[str, Any]) -> None:
        """Send messages, all in one TCP read."""
        data = b"".join(client_frame(TEXT, json.dumps(o).encode()) for o in objs)
        self.conn.data_received(data)

    def _send_close(self, code: bytes) -> None:
        if self.sent_close or self.closing:
            return
        self.sent_close = True
        self.conn.data_received(client_frame(CLOSE, code))

    def disconnect(self) -> None:
        """Close from our side (a normal close, 1000)."""
        if self.sse:
            self.close()
        else:
            self._send_close(struct.pack("!H", 1000))


# -- a gateway -------------------------------------------------------------------------------


class Node:
    """One real Gateway on a shared MemoryCluster (not listening: clients come in through
    :meth:`connect`)."""

    def __init__(self, cluster: MemoryCluster, *, stepped: bool = False,
                 heartbeat: bool = False, **overrides: Any) -> None:
        self.cluster = cluster
        self.loop = asyncio.get_running_loop()
        self.settings = settings(**overrides)
        kind = SteppedBackplane if stepped else MemoryBackplane
        interval = self.settings.heartbeat_interval if heartbeat else None
        self.gateway = Gateway(
            self.settings, self.loop,
            backplane=lambda gw, _metrics: kind(
                cluster, gw, max_connections=self.settings.max_connections,
                heartbeat_interval=interval))
        backplane = self.gateway.backplane
        assert isinstance(backplane, MemoryBackplane)
        self.backplane = backplane
        self.backplane.start(self.gateway.delivery)
        self.clients: list[Client] = []

    @property
    def stepped(self) -> SteppedBackplane:
        assert isinstance(self.backplane, SteppedBackplane)
        return self.backplane

    @property
    def gateway_id(self) -> str:
        return self.gateway.gateway_id

    @property
    def services(self) -> Any:
        return self.gateway.services

    def connect(self, user: str = "alice", *, session: str | None = None,
                cursor: str | None = None, channels: str | None = None, sse: bool = False,
                token: str | None = None, headers: dict[str, str] | None = None,
                method: str = "GET", allowed: list[str] | None = None) -> Client:
        """Open a connection and send its HTTP request (the welcome follows asynchronously)."""
        params = {"token": token if token is not None else mint(
            JWT_SECRET, user, channels=allowed or ["*"], publish=allowed or ["*"])}
        if session is not None:
            params["session"] = session
        if cursor is not None:
            params["cursor"] = cursor
        if channels is not None:
            params["channels"] = channels
        path = ("/sse" if sse else "/ws") + "?" + urlencode(params)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080"]
        if not sse:
            key = base64.b64encode(os.urandom(16)).decode()
            lines += ["Upgrade: websocket", "Connection: Upgrade",
                      f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        conn = Connection(self.gateway.services, self.gateway)
        client = Client(self, conn, sse)
        conn.connection_made(client)  # type: ignore[arg-type]
        conn.data_received(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.clients.append(client)
        return client

    async def welcomed(self, user: str = "alice", **kwargs: Any) -> Client:
        client = self.connect(user, **kwargs)
        await client.welcomed()
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        await settle()
        await self.backplane.stop()
        await settle()


def publish(cluster: MemoryCluster, stream: str, data: Any) -> int:
    """What the router does: store and route one message (``stream`` by wire name, for the
    user ``alice`` unless ``user:NAME``); returns its offset."""
    if stream.startswith("user:"):
        key = streams.user_key(stream[5:])
    else:
        found = streams.key_for(stream, "alice")
        assert found is not None, stream
        key = found
    return cluster.publish(key, data).offset


class Env:
    """One test's cluster and gateways; records what the loop reports (exceptions in
    callbacks and tasks nobody awaited), which :meth:`close` turns into a failure."""

    def __init__(self, **cluster: Any) -> None:
        self.cluster = MemoryCluster(**cluster)
        self.nodes: list[Node] = []
        self.loop = asyncio.get_running_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self._handler = self.loop.get_exception_handler()
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))

    def node(self, **kwargs: Any) -> Node:
        node = Node(self.cluster, **kwargs)
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()
        gc.collect()  # task exceptions nobody retrieved are reported when collected
        await settle()
        self.loop.set_exception_handler(self._handler)
        assert not self.loop_errors, f"errors in the event loop: {self.loop_errors}"


__all__ = ["Client", "Env", "Gate", "MemoryCluster", "Node", "SteppedBackplane", "publish",
           "settings", "settle", "until"]
