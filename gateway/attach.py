"""Attaching a connection to streams at their tops, replaying from a cursor: the one resume
sequence, used by the welcome (every stream of a new connection) and by a channel subscribe.

DESIGN 7's order: the caller has already registered for live delivery and read the tops; this
follows them in the tracker, plans the replay (pure, :mod:`gateway.resume`), reads the log
ranges the plan needs in one round trip and settles what to replay and where to continue.
"""

from __future__ import annotations

from gateway import resume
from gateway.ports import Services
from switchboard.streams import Position


async def attach(svc: Services, requested: dict[str, Position],
                 tops: dict[str, Position]) -> resume.Outcome:
    """Raises :class:`~gateway.errors.BackendUnavailable` if the log cannot be read."""
    for key, top in tops.items():
        svc.tracker.follow(key, top)
    plans = resume.plan(requested, tops, svc.settings.replay_limit)
    ranges = [(p.key, p.replay_from, p.top.offset) for p in plans if p.needs_log]
    logs = await svc.backplane.read_logs(ranges)
    return resume.settle(plans, logs)
