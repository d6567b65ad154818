"""The Redis backplane stops even when a background task swallowed its cancellation.

In CI a draining gateway hung after every client had moved: its unregister task had been
cancelled while redis-py was inside a command, the cancellation was lost there, and the task
went back to waiting for its next event, so ``await task`` in stop() never returned (the
process exited only at the test's second SIGTERM, status 1). Here the loss is made certain
(the flush swallows the cancellation) against a real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from gateway.backplane import RedisBackplane
from gateway.metrics import GatewayMetrics
from switchboard.config import GatewaySettings
from switchboard.contract import Control, Message
from tests.support import RedisServer


class Events:
    def message(self, message: Message) -> None: ...
    def control(self, control: Control) -> None: ...
    def reconnecting(self) -> None: ...
    def resubscribed(self) -> None: ...
    async def registry_lost(self) -> None: ...
    def load(self) -> dict[str, int]:
        return {"connections": 0}


async def until(cond: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_stop_returns_although_the_unregister_task_swallowed_its_cancel(
    redis_server: RedisServer,
) -> None:
    settings = GatewaySettings(redis_url=redis_server.url, heartbeat_interval=0.5,
                               redis_timeout=1.0)
    bp = RedisBackplane(settings, "gw-stop", GatewayMetrics("gw-stop"))
    bp.start(Events())
    await until(lambda: bp.unready is None, 10, "the backplane to be registered and subscribed")
    inside = asyncio.Event()
    real_flush = bp._flush_gone

    async def flush_that_swallows() -> None:
        me = asyncio.current_task()
        if me is None or me.get_name() != "unregister":
            return await real_flush()  # stop()'s own flush
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py did: it ends here
            await asyncio.sleep(0.5)

    bp._flush_gone = flush_that_swallows  # type: ignore[method-assign]
    bp._gone_event.set()
    await asyncio.wait_for(inside.wait(), 5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    # Not wait_for: cancelling stop() would also cancel the task it waits for, and hide the hang.
    stopping = asyncio.create_task(bp.stop())
    await asyncio.wait([stopping], timeout=settings.redis_timeout + 5)
    assert stopping.done(), "stop() hung on the task that swallowed its cancellation"
    stopping.result()
    assert loop.time() - began < settings.redis_timeout + 3
    assert all(t.done() for t in bp._tasks), [t for t in bp._tasks if not t.done()]
    # and it really deregistered
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        assert not await r.exists(bp.keys.gateway("gw-stop"))
        assert await r.zscore(bp.keys.gateways(), "gw-stop") is None
    finally:
        await r.aclose()
