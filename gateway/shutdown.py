"""Ending background tasks at shutdown without trusting that every cancellation is honoured.

A cancellation that arrives while a library is inside an await can be swallowed there (seen
with redis-py during the gateway's drain: the task went on to wait for its next event, and
``await task`` never returned). A process told to stop must stop, so every wait here is
bounded and a task that outlives it is logged with its stack, not waited for.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable

log = logging.getLogger("switchboard.gateway")


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], grace: float) -> bool:
    """Cancel ``tasks`` and wait at most ``grace`` seconds for them to end; False (and a
    warning naming each, with where it is stuck) if some did not."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return True
    _, stuck = await asyncio.wait(pending, timeout=grace)
    for task in stuck:
        where = io.StringIO()
        task.print_stack(limit=3, file=where)
        log.warning("task %s did not stop within %.1fs: %s", task.get_name(), grace,
                    where.getvalue().strip())
    return not stuck


async def stop_others(grace: float) -> bool:
    """:func:`stop_tasks` for every task of the running loop but the caller's: what
    ``asyncio.run`` would otherwise cancel and then wait for without a bound."""
    me = asyncio.current_task()
    return await stop_tasks([t for t in asyncio.all_tasks() if t is not me], grace)
