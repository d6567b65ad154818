"""Many SDK clients at once, each recording what its application received."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from switchboard_client import Client, Message, Recovery


@dataclass
class Consumer:
    client: Client
    got: list[tuple[str, int, Any]] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    gateways: list[tuple[float, str]] = field(default_factory=list)  # (time, gateway) seen
    task: asyncio.Task[None] | None = None

    def data(self, stream: str) -> list[Any]:
        return [d for s, _, d in self.got if s == stream]

    def offsets(self, stream: str) -> list[int]:
        return [o for s, o, _ in self.got if s == stream]

    async def run(self) -> None:
        last = self.client.gateway
        self.gateways.append((time.monotonic(), last or ""))
        async for item in self.client:
            if isinstance(item, Message):
                self.got.append((item.stream, item.offset, item.data))
            else:
                self.recoveries.append(item)
            if self.client.gateway != last:
                last = self.client.gateway
                self.gateways.append((time.monotonic(), last or ""))

    def note_gateway(self) -> None:
        """Record a gateway change noticed outside of message arrival."""
        if self.client.gateway and (not self.gateways or
                                    self.gateways[-1][1] != self.client.gateway):
            self.gateways.append((time.monotonic(), self.client.gateway))


async def start_consumers(url: str, tokens: list[str], **kwargs: Any) -> list[Consumer]:
    """One SDK client per token, all started before this returns."""
    async def one(token: str) -> Consumer:
        c = Client(url, token=token, **kwargs)
        await c.start()
        consumer = Consumer(c)
        consumer.task = asyncio.create_task(consumer.run())
        return consumer

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def stop_consumers(consumers: list[Consumer]) -> None:
    for c in consumers:
        await c.client.close()
    for c in consumers:
        if c.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(c.task, 5)


@contextlib.asynccontextmanager
async def collecting(c: Client) -> AsyncIterator[list[Message | Recovery]]:
    """Iterate the client in the background into a list the test can poll."""
    items: list[Message | Recovery] = []

    async def run() -> None:
        async for item in c:
            items.append(item)

    task = asyncio.create_task(run())
    try:
        yield items
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
