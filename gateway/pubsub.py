"""A lean Redis pub/sub connection: an asyncio protocol that parses with hiredis.

The gateway's pub/sub connection carries every envelope it delivers, so its per-message cost
matters: redis-py's ``PubSub.get_message`` spends more time in timeouts and retries than we
spend delivering a unicast. Here each ``data_received`` feeds hiredis and hands every complete
message to a callback, with no await per message. Only what the gateway needs: AUTH, SELECT,
CLIENT SETNAME, SUBSCRIBE and UNSUBSCRIBE, over TCP, TLS or a Unix socket.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.connection import parse_url


class PubSubError(ConnectionError):
    """The pub/sub connection failed or was refused (bad password, lost connection...)."""


def _command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, on_message: Callable[[bytes], None],
                 on_subscribed: Callable[[bytes], None]) -> None:
        self._reader = hiredis.Reader()
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replies: list[asyncio.Future[Any]] = []  # pending replies to setup commands

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(PubSubError(f"protocol error: {exc}"))
                return
            if reply is False:
                return
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == b"message":
                    self._on_message(reply[2])
                    continue
                if kind == b"subscribe":
                    self._on_subscribed(reply[1])
                    continue
                if kind in (b"unsubscribe", b"pong"):
                    continue
            # A reply to AUTH / SELECT / CLIENT SETNAME.
            if self._replies:
                fut = self._replies.pop(0)
                if not fut.done():
                    if isinstance(reply, hiredis.ReplyError):
                        fut.set_exception(PubSubError(str(reply)))
                    else:
                        fut.set_result(reply)

    def request(self, *args: str | bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(fut)
        self.send(*args)
        return fut

    def send(self, *args: str | bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise PubSubError("pub/sub connection is closed")
        self.transport.write(_command(*args))

    def _fail(self, exc: Exception) -> None:
        for fut in self._replies:
            if not fut.done():
                fut.set_exception(exc)
        self._replies.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(PubSubError(f"connection lost: {exc}"))


class PubSubConnection:
    """One subscribed connection. ``lost`` resolves when it dies; then make a new one."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @property
    def lost(self) -> asyncio.Future[None]:
        return self._protocol.lost

    @classmethod
    async def open(cls, url: str, *, connect_timeout: float, client_name: str,
                   on_message: Callable[[bytes], None],
                   on_subscribed: Callable[[bytes], None]) -> PubSubConnection:
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()

        def factory() -> _Protocol:
            return _Protocol(on_message, on_subscribed)

        if "path" in options:
            coro = loop.create_unix_connection(factory, options["path"])
        else:
            context = None
            if options.get("connection_class") is not None and "SSL" in str(
                    options["connection_class"]):
                context = ssl.create_default_context()
            coro = loop.create_connection(factory, options.get("host", "localhost"),
                                          int(options.get("port", 6379)), ssl=context)
        try:
            _, protocol = await asyncio.wait_for(coro, connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise PubSubError(f"cannot connect to Redis: {exc}") from exc
        conn = cls(protocol)
        try:
            setup = []
            if options.get("password"):
                auth = [options["username"]] if options.get("username") else []
                setup.append(protocol.request("AUTH", *auth, options["password"]))
            if options.get("db"):
                setup.append(protocol.request("SELECT", str(options["db"])))
            setup.append(protocol.request("CLIENT", "SETNAME", client_name))
            await asyncio.wait_for(asyncio.gather(*setup), connect_timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def subscribe(self, *channels: str) -> None:
        """Confirmations arrive through ``on_subscribed``."""
        if channels:
            self._protocol.send("SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: str) -> None:
        if channels:
            self._protocol.send("UNSUBSCRIBE", *channels)

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.abort()
