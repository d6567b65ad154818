"""A lean Redis pub/sub connection: an asyncio protocol that parses with hiredis.

The gateway's pub/sub connection carries every envelope it delivers, so its per-message cost
matters: redis-py's ``PubSub.get_message`` spends more time in timeouts and retries than we
spend delivering a unicast. Here each ``data_received`` feeds hiredis and hands every complete
message to a callback, with no await per message. Only what the gateway needs: AUTH, SELECT,
CLIENT SETNAME (:func:`switchboard.resp.open_connection`), SUBSCRIBE and UNSUBSCRIBE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hiredis

from switchboard import resp


class PubSubError(ConnectionError):
    """The pub/sub connection failed or was refused (bad password, lost connection...)."""


class _Protocol(resp.RespProtocol):
    def __init__(self, on_message: Callable[[bytes], None],
                 on_subscribed: Callable[[bytes], None]) -> None:
        super().__init__()
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replies: list[asyncio.Future[Any]] = []  # pending replies to setup commands

    def protocol_error(self, exc: hiredis.ProtocolError) -> Exception:
        return PubSubError(f"protocol error: {exc}")

    def reply(self, reply: Any) -> bool:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[2])
                return True
            if kind == b"subscribe":
                self._on_subscribed(reply[1])
                return True
            if kind in (b"unsubscribe", b"pong"):
                return True
        # A reply to AUTH / SELECT / CLIENT SETNAME.
        if self._replies:
            fut = self._replies.pop(0)
            if not fut.done():
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(PubSubError(str(reply)))
                else:
                    fut.set_result(reply)
        return True

    def request(self, *args: str | bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(fut)
        self.send(*args)
        return fut

    def send(self, *args: str | bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise PubSubError("pub/sub connection is closed")
        self.transport.write(resp.command(*args))

    def fail(self, exc: Exception) -> None:
        for fut in self._replies:
            if not fut.done():
                fut.set_exception(exc)
        self._replies.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(PubSubError(f"connection lost: {exc}"))


class PubSubConnection:
    """One subscribed connection. ``lost`` resolves when it dies; then make a new one."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @property
    def lost(self) -> asyncio.Future[None]:
        return self._protocol.lost

    @classmethod
    async def open(cls, endpoint: resp.Endpoint, *, connect_timeout: float, client_name: str,
                   on_message: Callable[[bytes], None],
                   on_subscribed: Callable[[bytes], None]) -> PubSubConnection:
        def factory() -> _Protocol:
            return _Protocol(on_message, on_subscribed)

        try:
            protocol = await resp.open_connection(endpoint, factory,
                                                  connect_timeout=connect_timeout,
                                                  client_name=client_name)
        except (OSError, TimeoutError) as exc:
            raise PubSubError(f"cannot connect to Redis: {exc}") from exc
        return cls(protocol)

    def subscribe(self, *channels: str) -> None:
        """Confirmations arrive through ``on_subscribed``."""
        if channels:
            self._protocol.send("SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: str) -> None:
        if channels:
            self._protocol.send("UNSUBSCRIBE", *channels)

    def close(self) -> None:
        self._protocol.abort()
