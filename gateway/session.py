"""Per-connection delivery state, free of I/O.

A session knows the streams its connection follows and its position in each. It holds live
messages back until the welcome is sent (so a message that races the welcome is neither lost
nor sent twice), drops offsets it has already delivered and notices gaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.wire import Outgoing
from switchboard import streams
from switchboard.streams import Position


@dataclass(slots=True)
class Offer:
    """What :meth:`Session.offer` decided for one message."""

    deliver: bool
    gap: int = 0  # messages missing before this one (0: contiguous)


DUPLICATE = Offer(False)
NOT_FOLLOWED = Offer(False)
HELD = Offer(False)
NEXT = Offer(True)


@dataclass(slots=True)
class Session:
    session_id: str
    user: str
    # Redis stream key -> last position delivered (or the top at welcome).
    positions: dict[str, Position] = field(default_factory=dict)
    ready: bool = False
    held: list[Outgoing] = field(default_factory=list)
    # Channel keys being subscribed: their live messages wait here until the position is known.
    joining: dict[str, list[Outgoing]] = field(default_factory=dict)
    on_gap: Callable[[str, int], None] | None = None

    @property
    def channels(self) -> list[str]:
        """Channel keys followed or being joined."""
        keys = [k for k in self.positions if k.startswith("c:")]
        return keys + [k for k in self.joining if k not in self.positions]

    def begin_join(self, stream_key: str) -> None:
        self.joining.setdefault(stream_key, [])

    def finish_join(
        self, stream_key: str, start: Position, replay: list[Outgoing]
    ) -> list[Outgoing]:
        """Position known: the replay, then what arrived meanwhile, without duplicates."""
        waiting = self.joining.pop(stream_key, [])
        self.positions[stream_key] = start
        if not self.ready:
            self.held.extend(replay)  # the welcome has not gone out yet
            return []
        return [out for out in [*replay, *waiting] if self.offer(out).deliver]

    def leave(self, stream_key: str) -> None:
        self.joining.pop(stream_key, None)
        self.positions.pop(stream_key, None)

    def follow(self, stream_key: str, position: Position) -> None:
        self.positions[stream_key] = position

    def offer(self, out: Outgoing) -> Offer:
        """Decide whether a live message goes to this connection, and advance the position."""
        if not self.ready:
            self.held.append(out)
            return HELD
        m = out.message
        pos = self.positions.get(m.stream_key)
        if pos is None:
            waiting = self.joining.get(m.stream_key)
            if waiting is not None:
                waiting.append(out)
                return HELD
            return NOT_FOLLOWED
        if m.epoch != pos.epoch:
            # The stream's history was lost and restarted: the new epoch's offsets start at 1.
            self.positions[m.stream_key] = Position(m.epoch, m.offset)
            return Offer(True, gap=m.offset - 1)
        if m.offset <= pos.offset:
            return DUPLICATE
        self.positions[m.stream_key] = Position(pos.epoch, m.offset)
        if m.offset == pos.offset + 1:
            return NEXT
        return Offer(True, gap=m.offset - pos.offset - 1)

    def start(self, replay: list[Outgoing] | None = None) -> list[Outgoing]:
        """Welcome sent: the replay, then the held live messages that are still news."""
        self.ready = True
        held, self.held = self.held, []
        return [out for out in [*(replay or []), *held] if self.offer(out).deliver]

    def cursor(self) -> str:
        return streams.format_cursor(
            {streams.wire_name(k): p for k, p in self.positions.items()}
        )

    def stream_positions(self) -> dict[str, dict[str, object]]:
        return {
            streams.wire_name(k): {"epoch": p.epoch, "offset": p.offset}
            for k, p in self.positions.items()
        }
