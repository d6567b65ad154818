"""Python SDK for Switchboard: a WebSocket client that reconnects, resumes and deduplicates.

Depends only on ``websockets`` and ``msgpack`` (it never imports the server packages)::

    import asyncio
    from switchboard_client import Client, Message, Recovery

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

Modules (of :mod:`switchboard_client`): ``client`` (the asyncio loop), ``connection`` (the
reconnect loop's I/O), ``protocol`` (frames, positions, duplicates, gaps, cursors; no I/O),
``policy`` (what each close code or HTTP refusal leads to; no I/O), ``channels`` (channel
subscriptions, requests and their replies; no I/O), ``backoff`` (full-jitter delays; no I/O),
``errors`` (what the application must handle).

Installed on its own with ``pip install switchboard-client`` (the server distribution depends on
it); ``__version__`` is the installed distribution's version.
"""

from importlib.metadata import PackageNotFoundError, version

from switchboard_client.backoff import Backoff
from switchboard_client.channels import Published, Subscribed
from switchboard_client.client import Client
from switchboard_client.connection import State, TokenProvider
from switchboard_client.errors import (
    AuthError,
    Forbidden,
    PublishError,
    RequestError,
    SessionError,
    SubscribeError,
    SwitchboardError,
    TerminalClose,
)
from switchboard_client.protocol import Message, Position, Presence, Recovery, Stats

try:
    __version__ = version("switchboard-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "AuthError",
    "Backoff",
    "Client",
    "Forbidden",
    "Message",
    "Position",
    "Presence",
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
    "__version__",
]
