"""Identical log ranges asked for at the same time are read once; nothing is kept after."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import BackendUnavailable
from gateway.sharedreads import Range, SharedReads
from switchboard.contract import Message


class Log:
    """A fetch that answers when released, recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[Range]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, ranges: list[Range]) -> list[list[Message]]:
        self.asked.append(list(ranges))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [[Message(key, "E", o, 0, f"{key}{o}") for o in range(first, last + 1)]
                for key, first, last in ranges]


def counter() -> tuple[list[tuple[int, int]], SharedReads, Log]:
    log = Log()
    counts: list[tuple[int, int]] = []
    return counts, SharedReads(log.fetch, lambda r, s: counts.append((r, s))), log


async def test_resumes_of_the_same_range_at_the_same_time_share_one_read() -> None:
    counts, reads, log = counter()
    calls = [asyncio.ensure_future(reads.read([("b", 5, 7), (f"u:{u}", 1, 1)]))
             for u in ("a", "b", "c")]
    await asyncio.sleep(0)  # let them all ask before the read returns
    log.release.set()
    results = await asyncio.gather(*calls)
    assert [r["b"] for r in results] == [results[0]["b"]] * 3
    assert [m.offset for m in results[0]["b"]] == [5, 6, 7]
    assert [m.stream_key for m in results[1]["u:b"]] == ["u:b"]
    assert log.asked == [[("b", 5, 7), ("u:a", 1, 1)], [("u:b", 1, 1)], [("u:c", 1, 1)]]
    assert counts == [(2, 0), (1, 1), (1, 1)]


async def test_a_range_asked_after_the_read_returned_is_read_again() -> None:
    _, reads, log = counter()
    log.release.set()
    await reads.read([("b", 1, 2)])
    await reads.read([("b", 1, 2)])
    assert log.asked == [[("b", 1, 2)], [("b", 1, 2)]]


async def test_a_failed_read_fails_everyone_who_waited_for_it() -> None:
    _, reads, log = counter()
    log.fail = BackendUnavailable("read_log: down")
    calls = [asyncio.ensure_future(reads.read([("b", 1, 2)])) for _ in range(2)]
    await asyncio.sleep(0)
    log.release.set()
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, BackendUnavailable)
    log.fail = None
    assert [m.offset for m in (await reads.read([("b", 1, 2)]))["b"]] == [1, 2]  # not kept


async def test_a_caller_that_gives_up_does_not_cancel_the_read_for_the_others() -> None:
    _, reads, log = counter()
    first = asyncio.ensure_future(reads.read([("b", 1, 3)]))
    second = asyncio.ensure_future(reads.read([("b", 1, 3)]))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    log.release.set()
    assert [m.offset for m in (await second)["b"]] == [1, 2, 3]
    assert len(log.asked) == 1
