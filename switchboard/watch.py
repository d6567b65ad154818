"""``switchboard status --watch``: the status table, refreshed in place.

On a terminal every snapshot redraws the same screen region: the cursor goes home (``ESC[H``),
each line clears what is left of the one it overwrites (``ESC[K``) and the rest of the screen
is cleared (``ESC[J``), so a refresh neither flickers nor scrolls. When stdout is not a
terminal (a pipe, a file) escape codes would be noise: each snapshot is printed whole after its
title line and a blank line separates them, so a log keeps every one.

A snapshot that cannot be had (the router is down or restarting, or answers 503 because its
Redis is) is one line where the table was, and the next refresh tries again: a watch outlives
the cluster it watches. Ctrl-C ends it with status 0.

The loop takes its I/O as arguments (the fetch, the output, the clock), so it is tested
without a router or a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_DOWN = "\x1b[J"

DEFAULT_INTERVAL = 2.0
# Below this a watch is a load test of the router; above it, it is not watching.
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0

# One refresh: (True, the table) or (False, one line saying why there is none).
Fetch = Callable[[], tuple[bool, str]]


def frame(title: str, body: str, *, tty: bool, rows: int | None = None) -> str:
    """One snapshot as written to the output: redrawn in place on a terminal of ``rows``
    lines (cut to fit, as a taller frame would scroll and the next one would not overwrite
    it), or printed whole and followed by a blank line elsewhere."""
    lines = [title, "", *body.splitlines()]
    if not tty:
        return "\n".join(lines) + "\n\n"
    if rows is not None and len(lines) > rows - 1 >= 3:
        cut = len(lines) - (rows - 2)
        lines = [*lines[:rows - 2], f"... {cut} more lines (a taller terminal shows them)"]
    return HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_DOWN


def run(fetch: Fetch, out: TextIO, *, title: Callable[[], str], interval: float,
        count: int | None = None, tty: bool = False, rows: Callable[[], int | None] = lambda: None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic) -> int:
    """Refresh every ``interval`` seconds, ``count`` times or until Ctrl-C.

    Returns 0 after Ctrl-C; after ``count`` refreshes, 0 if the last one had an answer and
    1 if not, so ``--count 1`` in a script means what ``status`` does.
    """
    ok = False
    done = 0
    due = clock()
    try:
        while count is None or done < count:
            ok, body = fetch()
            done += 1
            out.write(frame(title(), body, tty=tty, rows=rows()))
            out.flush()
            if count is not None and done >= count:
                break
            due += interval
            delay = due - clock()
            if delay < 0:  # a slow answer: start again from now rather than catch up in a burst
                due, delay = clock(), 0.0
            sleep(delay)
    except KeyboardInterrupt:
        return 0
    return 0 if ok else 1
