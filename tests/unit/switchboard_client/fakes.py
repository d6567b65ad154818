"""A scripted stand-in for ``websockets.asyncio.client.connect``: no sockets, no sleeping.

Each connect attempt takes the next entry of a script: a :class:`FakeWs` (a connection that
plays its frames, then closes with its code) or an exception to raise (a refused handshake,
a refused TCP connection). When the script is exhausted, connecting blocks forever, so a test
can never spin the loop by accident. Delays between attempts are recorded, not slept; a test
can hold the client in "reconnecting" by clearing ``Script.resume``.

A FakeWs records what the client sends (``sent``, decoded in ``objs``) and may answer it:
``respond`` maps each client message to the frames the gateway would push back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from switchboard_client import Client


@dataclass(frozen=True)
class CloseWith:
    code: int | None  # None: the TCP connection died (1006)
    reason: str = ""


HOLD = object()  # end of the script: stay open until the client closes


class FakeWs:
    def __init__(self, *frames: Any) -> None:
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        for frame in frames:
            self.frames.put_nowait(frame)
        self.sent: list[str | bytes] = []
        self.objs: list[dict[str, Any]] = []
        self.respond: Callable[[dict[str, Any]], list[Any]] | None = None
        self.closed_by_client: tuple[int, str] | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def push(self, frame: Any) -> None:
        self.frames.put_nowait(frame)

    async def send(self, data: str | bytes) -> None:
        if self.close_code is not None:
            raise ConnectionClosedOK(None, None)
        self.sent.append(data)
        obj = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
        self.objs.append(obj)
        if obj.get("type") == "ping":
            self.push(j({"type": "pong"}))
        elif self.respond is not None:
            for frame in self.respond(obj):
                self.push(frame)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objs if o.get("type") == kind]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:  # like websockets: closing a closed connection is a no-op
            self.closed_by_client = (code, reason)
            self.close_code, self.close_reason = code, reason
            self.push(CloseWith(code, reason))

    async def recv(self) -> Any:
        return await self._next()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._next()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def _next(self) -> Any:
        frame = await self.frames.get()
        while frame is HOLD:  # nothing more to play: wait for pushed frames or a close
            frame = await self.frames.get()
        if isinstance(frame, CloseWith):
            self.frames.put_nowait(frame)  # closed stays closed
            if self.close_code is None:
                self.close_code = 1006 if frame.code is None else frame.code
                self.close_reason = frame.reason
            rcvd = None if frame.code is None else Close(frame.code, frame.reason)
            if frame.code in (1000, 1001):
                raise ConnectionClosedOK(rcvd, None)
            raise ConnectionClosedError(rcvd, None)
        return frame


def j(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def welcome(streams: dict[str, tuple[str, int]], *, session: str = "S1", gateway: str = "gw-a",
            resumed: bool = False, recovered: bool = False) -> str:
    return j({"type": "welcome", "session": session, "gateway": gateway, "user": "alice",
              "resumed": resumed, "recovered": recovered,
              "streams": {s: {"epoch": e, "offset": o} for s, (e, o) in streams.items()}})


def message(stream: str, epoch: str, offset: int, data: Any = None) -> str:
    return j({"type": "message", "stream": stream, "epoch": epoch, "offset": offset,
              "data": data})


def subscribed(channel: str, epoch: str, offset: int, recovered: bool = False) -> str:
    return j({"type": "subscribed", "channel": channel, "epoch": epoch, "offset": offset,
              "recovered": recovered})


def error(code: str, channel: str | None = None, message: str = "no", **extra: Any) -> str:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if channel is not None:
        body["channel"] = channel
    return j(body)


def refused(status: int, **headers: str) -> InvalidStatus:
    hdrs = Headers({k.replace("_", "-"): v for k, v in headers.items()})
    return InvalidStatus(Response(status, "refused", hdrs))


@dataclass
class Script:
    steps: list[Any]
    urls: list[str] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.resume.set()  # clear it to hold the client between two connections

    async def connect(self, url: str, **kwargs: Any) -> Any:
        self.urls.append(url)
        self.kwargs.append(kwargs)
        if not self.steps:
            await asyncio.Event().wait()
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
        await self.resume.wait()

    def query(self, attempt: int) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.urls[attempt]).query).items()}


def scripted(monkeypatch: pytest.MonkeyPatch, *steps: Any, **options: Any) -> tuple[Client, Script]:
    script = Script(list(steps))
    monkeypatch.setattr("switchboard_client.connection.connect", script.connect)
    options.setdefault("token", "T0")
    c = Client("ws://gw.test/ws", **options)
    c._conn.sleep = script.sleep
    return c, script


async def until(predicate: Any, what: str = "", timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0)
    assert predicate(), what
