"""Python SDK for Switchboard: a WebSocket client that reconnects, resumes and deduplicates.

Depends only on ``websockets`` and ``msgpack`` (it never imports the server packages)::

    import asyncio
    from client import Client, Message, Recovery

    async def main() -> None:
        async with Client("ws://127.0.0.1:8080/ws", token="JWT", channels=["news"]) as c:
            await c.subscribe("lobby")
            await c.publish("lobby", {"hello": "all"})
            async for item in c:
                if isinstance(item, Message):
                    print(item.stream, item.offset, item.data)
                else:  # Recovery: some messages of item.streams were lost
                    print("re-sync", item.streams)

    asyncio.run(main())

Modules: :mod:`client.client` (the asyncio loop), :mod:`client.connection` (the reconnect
loop's I/O), :mod:`client.protocol` (frames, positions, duplicates, gaps, cursors; no I/O),
:mod:`client.policy` (what each close code or HTTP refusal leads to; no I/O),
:mod:`client.channels` (channel subscriptions, requests and their replies; no I/O),
:mod:`client.backoff` (full-jitter delays; no I/O), :mod:`client.errors` (what the application
must handle).
"""

from client.backoff import Backoff
from client.channels import Published, Subscribed
from client.client import Client
from client.connection import State, TokenProvider
from client.errors import (
    AuthError,
    Forbidden,
    PublishError,
    RequestError,
    SessionError,
    SubscribeError,
    SwitchboardError,
    TerminalClose,
)
from client.protocol import Message, Position, Recovery, Stats

__all__ = [
    "AuthError",
    "Backoff",
    "Client",
    "Forbidden",
    "Message",
    "Position",
    "PublishError",
    "Published",
    "Recovery",
    "RequestError",
    "SessionError",
    "State",
    "Stats",
    "SubscribeError",
    "Subscribed",
    "SwitchboardError",
    "TerminalClose",
    "TokenProvider",
]
