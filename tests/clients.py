"""Minimal test clients that record everything they receive.

WebSocket clients use websockets' asyncio client; the SSE client speaks raw HTTP over an
asyncio stream so tests see exactly what a browser's EventSource would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait for a condition, polling the event loop; fail with a message at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                      what: str = "", poll: float = 0.05) -> None:
    """:func:`until` for a condition that must await (an HTTP probe)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(poll)


@dataclass
class Recorder:
    received: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    closed: bool = False

    @property
    def welcome(self) -> dict[str, Any] | None:
        return next((m for m in self.received if m.get("type") == "welcome"), None)

    def messages(self, stream: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.received
                if m.get("type") == "message" and (stream is None or m["stream"] == stream)]

    def data(self, stream: str) -> list[Any]:
        return [m["data"] for m in self.messages(stream)]


class WsClient(Recorder):
    def __init__(self, url: str, msgpack_wire: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.url = url
        self.msgpack_wire = msgpack_wire
        self.kwargs = kwargs
        self.ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> WsClient:
        subprotocols = ["switchboard.v1.msgpack" if self.msgpack_wire else "switchboard.v1.json"]
        self.ws = await connect(self.url, subprotocols=subprotocols,  # type: ignore[arg-type]
                                max_size=None, **self.kwargs)
        self._task = asyncio.create_task(self._read())
        await until(lambda: self.welcome is not None or self.closed, 10, "welcome")
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    self.received.append(msgpack.unpackb(raw, raw=False))
                else:
                    self.received.append(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        if self.msgpack_wire:
            await self.ws.send(msgpack.packb(obj))
        else:
            await self.ws.send(json.dumps(obj))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


class SseClient(Recorder):
    def __init__(self, host: str, port: int, path: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.host, self.port, self.path = host, port, path
        self.headers = headers or {}
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.event_ids: list[str] = []
        self.event_types: list[str] = []  # each event's `event:` line, in arrival order
        self.comments = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, expect_welcome: bool = True) -> SseClient:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._writer = writer
        head = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "Accept: text/event-stream\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        writer.write((head + "\r\n").encode())
        status_line = await reader.readline()
        self.status = int(status_line.split()[1])
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            self.response_headers[name.strip().lower()] = value.strip()
        self._task = asyncio.create_task(self._read(reader))
        if expect_welcome and self.status == 200:
            await until(lambda: self.welcome is not None or self.closed, 10, "SSE welcome")
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        event: dict[str, str] = {}
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\r\n")
                if text == "":
                    if "data" in event:
                        obj = json.loads(event["data"])
                        self.received.append(obj)
                        self.event_types.append(event.get("event", "message"))
                        if "id" in event:
                            self.event_ids.append(event["id"])
                        if event.get("event") == "error" and obj.get("close"):
                            self.close_code = obj["code"]
                    event = {}
                elif text.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = text.partition(":")
                    event[name] = value[1:] if value.startswith(" ") else value
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True

    async def body(self) -> bytes:
        """For refused requests: the rest of the response."""
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)
        return b""

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
