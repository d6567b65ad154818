"""Shutdown never waits without a bound for a task that ignores its cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.shutdown import stop_others, stop_tasks


async def stubborn(started: asyncio.Event) -> None:
    """Swallows every cancellation, as a library inside an await sometimes does."""
    started.set()
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def polite() -> None:
    await asyncio.sleep(3600)


async def test_a_task_that_swallows_its_cancellation_is_left_behind_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()
    bad = asyncio.create_task(stubborn(started), name="stubborn")
    good = asyncio.create_task(polite(), name="polite")
    await started.wait()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await stop_tasks([bad, good], 0.3) is False
    assert loop.time() - began < 2.0
    assert good.cancelled()
    assert not bad.done()
    assert "task stubborn did not stop within 0.3s" in caplog.text
    assert "stubborn" in caplog.text and "asyncio.sleep" in caplog.text
    bad.cancel()  # still swallowed; leave nothing pending across tests
    bad.get_coro().close()


async def test_tasks_that_end_report_success() -> None:
    tasks = [asyncio.create_task(polite()) for _ in range(3)]
    await asyncio.sleep(0)
    assert await stop_tasks(tasks, 1.0) is True
    assert all(t.cancelled() for t in tasks)
    assert await stop_tasks(tasks, 1.0) is True  # already done: nothing to wait for


async def test_stop_others_spares_the_caller() -> None:
    other = asyncio.create_task(polite())
    await asyncio.sleep(0)
    assert await stop_others(1.0) is True
    assert other.cancelled()
    assert asyncio.current_task() is not None and not asyncio.current_task().cancelling()  # type: ignore[union-attr]
