"""Log reads shared by the callers that want the same range at the same time (singleflight).

In a reconnect storm thousands of clients resume the broadcast stream from nearly the same
cursor up to the same top: one read per distinct range is enough. Only reads *in flight* are
shared, never kept: a range asked for while the same range is being read gets that read's
answer, which is what it would have read itself (its own registration, which fixed the top,
came before it asked, and a stream's entries do not change once written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from switchboard.contract import Message

Range = tuple[str, int, int]  # stream key, first offset, last offset
Fetch = Callable[[list[Range]], Awaitable[list[list[Message]]]]


class SharedReads:
    def __init__(self, fetch: Fetch,
                 counted: Callable[[int, int], None] = lambda read, shared: None) -> None:
        self._fetch = fetch  # entries per range, in the order asked
        self._counted = counted  # (ranges read, ranges shared) per call
        self._reading: dict[Range, asyncio.Future[list[Message]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done

    async def read(self, ranges: list[Range]) -> dict[str, list[Message]]:
        """Entries of each range, by stream key; raises what the read raised."""
        loop = asyncio.get_running_loop()
        wanted: dict[str, asyncio.Future[list[Message]]] = {}
        fresh: list[Range] = []
        for r in ranges:
            fut = self._reading.get(r)
            if fut is None:
                fut = self._reading[r] = loop.create_future()
                fresh.append(r)
            wanted[r[0]] = fut
        self._counted(len(fresh), len(ranges) - len(fresh))
        if fresh:
            # A task of its own: a caller cancelled while waiting must not fail the others.
            task = asyncio.ensure_future(self._run(fresh))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return {key: await asyncio.shield(fut) for key, fut in wanted.items()}

    async def _run(self, ranges: list[Range]) -> None:
        futures = [self._reading[r] for r in ranges]
        try:
            results = await self._fetch(ranges)
        except asyncio.CancelledError:
            for fut in futures:
                fut.cancel()
            raise
        except Exception as exc:  # handed to every waiter
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: every waiter may be gone
        else:
            for fut, entries in zip(futures, results, strict=True):
                if not fut.done():
                    fut.set_result(entries)
        finally:
            for r in ranges:
                self._reading.pop(r, None)
