"""Process limits every Switchboard process raises at start-up.

A gateway holds one file descriptor per connection (plus Redis and the listening socket), and
the usual default soft limit of 1024 open files would cap it at about a thousand clients. The
hard limit is the ceiling an unprivileged process may raise its soft limit to, so every process
lifts its soft limit to the hard one before it accepts anything.
"""

from __future__ import annotations

import contextlib
import resource

# When the hard limit is "unlimited", the kernel still refuses a soft limit above
# fs.nr_open (1048576 by default on Linux), so that is what we ask for.
UNLIMITED_TARGET = 1_048_576


def nofile_target(soft: int, hard: int) -> int:
    """The soft limit to ask for: the hard limit, never lower than what we already have."""
    if hard == resource.RLIM_INFINITY:
        return soft if soft == resource.RLIM_INFINITY else max(soft, UNLIMITED_TARGET)
    return max(soft, hard)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; return the (soft, hard) now in force.

    Never fails: a process that cannot raise its limit still runs, just with fewer connections
    (the caller can log the returned soft limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = nofile_target(soft, hard)
    if target != soft:
        # may be refused, e.g. macOS caps the soft limit at OPEN_MAX even when the hard limit
        # is unlimited; we then run with what we have
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
