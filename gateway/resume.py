"""Deciding what a (re)connecting client gets replayed, free of I/O.

DESIGN 7: register for live delivery first, then read the log from the cursor, send the
replay, then the live messages held meanwhile (the session drops offsets already sent). When
the log cannot cover the cursor (trimmed, expired, epoch changed, too far behind) the stream is
not recovered and the client is positioned at the current top.

An epoch change loses the old epoch's history, but not the new epoch's: it starts at offset 1,
so while its log still reaches back to 1 the client is positioned at its start and replayed
all of it, and told ``recovered:false`` for the old epoch. That is what a live epoch change
does too (gateway.tracker), so a client gets the same messages whether or not it was
connected when Redis lost the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard import streams
from switchboard.contract import Message
from switchboard.streams import Position


@dataclass(frozen=True, slots=True)
class StreamPlan:
    key: str
    start: Position  # where delivery continues from if the replay checks out
    top: Position
    replay_from: int = 0  # first offset to read from the log; 0 = nothing to read
    requested: bool = False  # the client's cursor named this stream
    recovered: bool = False  # decided already (True only when nothing needs reading)
    lost: bool = False  # history before ``start`` is gone even if the replay checks out

    @property
    def needs_log(self) -> bool:
        return self.replay_from > 0


def plan(
    requested: dict[str, Position], tops: dict[str, Position], replay_limit: int
) -> list[StreamPlan]:
    """One plan per followed stream. ``requested`` is keyed by wire name, ``tops`` by key."""
    plans = []
    for key, top in tops.items():
        want = requested.get(streams.wire_name(key))
        if want is None:
            plans.append(StreamPlan(key, top, top))
        elif want.epoch != top.epoch and 0 < top.offset <= replay_limit:
            plans.append(StreamPlan(key, Position(top.epoch, 0), top, replay_from=1,
                                    requested=True, lost=True))
        elif want.epoch != top.epoch or want.offset > top.offset:
            plans.append(StreamPlan(key, top, top, requested=True))  # history lost
        elif want.offset == top.offset:
            plans.append(StreamPlan(key, want, top, requested=True, recovered=True))
        elif top.offset - want.offset > replay_limit:
            plans.append(StreamPlan(key, top, top, requested=True))  # too far behind
        else:
            plans.append(StreamPlan(key, want, top, replay_from=want.offset + 1,
                                    requested=True))
    return plans


def covers(p: StreamPlan, entries: list[Message]) -> bool:
    """Did the log return exactly the offsets ``replay_from..top``, in the same epoch?"""
    expected = list(range(p.replay_from, p.top.offset + 1))
    return [m.offset for m in entries] == expected and all(
        m.epoch == p.top.epoch for m in entries
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    start: dict[str, Position]
    replay: list[Message]
    recovered: bool
    unrecovered: tuple[str, ...]  # wire names whose history could not be replayed


def settle(plans: list[StreamPlan], logs: dict[str, list[Message]]) -> Outcome:
    start: dict[str, Position] = {}
    replay: list[Message] = []
    lost: list[str] = []
    for p in plans:
        if p.needs_log and covers(p, logs.get(p.key, [])):
            start[p.key] = p.start
            replay.extend(logs[p.key])
            if p.lost:
                lost.append(streams.wire_name(p.key))
        elif p.needs_log or (p.requested and not p.recovered):
            start[p.key] = p.top
            lost.append(streams.wire_name(p.key))
        else:
            start[p.key] = p.start
    requested = any(p.requested for p in plans)
    return Outcome(start, replay, requested and not lost, tuple(lost))
