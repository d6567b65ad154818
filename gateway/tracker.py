"""Gateway-level stream tracking: notice live gaps and fill them in order, free of I/O.

Pub/sub is at-most-once: a reconnect, a killed subscriber connection or a slow gateway can lose
envelopes. The gateway remembers the last offset it saw per stream it has followers for; an
offset that jumps starts a fill from the log, and live messages for that stream wait behind the
fill so clients still see offsets in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.contract import Message
from switchboard.streams import Position


@dataclass(frozen=True, slots=True)
class Fill:
    key: str
    first: int
    last: int


class Tracker:
    def __init__(self) -> None:
        self._seen: dict[str, Position] = {}
        self._waiting: dict[str, list[Message]] = {}
        self.filled = 0
        self.unfilled = 0

    def keys(self) -> list[str]:
        return list(self._seen)

    def position(self, key: str) -> Position | None:
        return self._seen.get(key)

    def follow(self, key: str, top: Position) -> None:
        """A local connection follows ``key``; if we were not tracking it, start at its top."""
        # Never move an existing position forward here: envelopes below the top may still be
        # in flight on pub/sub, and other local clients need them.
        self._seen.setdefault(key, top)

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def live(self, msg: Message) -> tuple[list[Message], Fill | None]:
        """What to deliver now for a live envelope, and the fill to start, if any."""
        key = msg.stream_key
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(msg)
            return [], None
        pos = self._seen.get(key)
        if pos is None:
            return [msg], None  # no local follower registered yet: nothing to keep in order
        if pos.epoch != msg.epoch or msg.offset == pos.offset + 1:
            self._seen[key] = Position(msg.epoch, msg.offset)
            return [msg], None
        if msg.offset <= pos.offset:
            return [], None  # already delivered (a fill got there first)
        self._waiting[key] = [msg]
        return [], Fill(key, pos.offset + 1, msg.offset - 1)

    def catch_up(self, key: str, top: Position) -> Fill | None:
        """After a pub/sub outage: the fill that brings ``key`` to ``top``, if any is missing."""
        pos = self._seen.get(key)
        if pos is None or key in self._waiting:
            return None
        if pos.epoch != top.epoch or top.offset <= pos.offset:
            return None
        self._waiting[key] = []
        return Fill(key, pos.offset + 1, top.offset)

    def complete(self, fill: Fill, entries: list[Message]) -> list[Message]:
        """The fill came back (possibly short or empty): everything to deliver, in order."""
        waiting = self._waiting.pop(fill.key, [])
        pos = self._seen.get(fill.key)
        out: list[Message] = []
        for m in [*entries, *waiting]:
            if pos is not None and m.epoch == pos.epoch and m.offset <= pos.offset:
                continue
            out.append(m)
            pos = Position(m.epoch, m.offset)
        if pos is not None:
            self._seen[fill.key] = pos
        got = {m.offset for m in entries}
        if all(o in got for o in range(fill.first, fill.last + 1)):
            self.filled += 1
        else:
            self.unfilled += 1
        return out
