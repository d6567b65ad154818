"""Per-connection delivery state, free of I/O.

A session knows the streams its connection follows and its position in each. It holds live
messages back until the welcome is sent (so a message that races the welcome is neither lost
nor sent twice), drops offsets it has already delivered and notices gaps.

:meth:`Session.offer` runs once per recipient per message, so positions are kept as two plain
dicts (epoch and offset per stream key) updated in place, and the answer is a small int.
"""

from __future__ import annotations

from gateway.wire import Outgoing
from switchboard import streams
from switchboard.streams import Position

# offer() results. Positive values mean "deliver": NEXT, or a gap of (value - NEXT) messages.
DUPLICATE = -2
HELD = -1
NOT_FOLLOWED = 0
NEXT = 1

_NOTHING_HELD: list[Outgoing] = []  # never appended to: only ready sessions point at it


class Session:
    __slots__ = ("_epochs", "_offsets", "ack_floor", "held", "joining", "ready", "session_id",
                 "user")

    def __init__(self, session_id: str, user: str) -> None:
        self.session_id = session_id
        self.user = user
        self._epochs: dict[str, str] = {}  # Redis stream key -> epoch
        self._offsets: dict[str, int] = {}  # Redis stream key -> last offset delivered
        # The user stream's offset this connection has delivered every message after, without
        # a gap: it may acknowledge only offsets above it (receipts must never count a
        # message it was not sent, e.g. one published before it connected at the top).
        self.ack_floor = 0
        self.ready = False
        self.held: list[Outgoing] = []
        # Channel keys being subscribed: their live messages wait until the position is known.
        self.joining: dict[str, list[Outgoing]] = {}

    @property
    def positions(self) -> dict[str, Position]:
        return {k: Position(self._epochs[k], o) for k, o in self._offsets.items()}

    def position(self, stream_key: str) -> Position | None:
        """The last message delivered in the stream (None: not followed)."""
        offset = self._offsets.get(stream_key)
        return None if offset is None else Position(self._epochs[stream_key], offset)

    def follows(self, stream_key: str) -> bool:
        return stream_key in self._offsets

    @property
    def channels(self) -> list[str]:
        """Channel keys followed or being joined."""
        keys = [k for k in self._offsets if k.startswith("c:")]
        return keys + [k for k in self.joining if k not in self._offsets]

    def follow(self, stream_key: str, position: Position) -> None:
        self._epochs[stream_key] = position.epoch
        self._offsets[stream_key] = position.offset
        if stream_key[0] == "u":
            self.ack_floor = position.offset

    def begin_join(self, stream_key: str) -> None:
        self.joining.setdefault(stream_key, [])

    def finish_join(
        self, stream_key: str, start: Position, replay: list[Outgoing]
    ) -> list[Outgoing]:
        """Position known: the replay, then what arrived meanwhile, without duplicates."""
        waiting = self.joining.pop(stream_key, [])
        self.follow(stream_key, start)
        if not self.ready:
            self.held.extend(replay)  # the welcome has not gone out yet
            return []
        return [out for out in [*replay, *waiting] if self.offer(out) > 0]

    def leave(self, stream_key: str) -> None:
        self.joining.pop(stream_key, None)
        self._offsets.pop(stream_key, None)
        self._epochs.pop(stream_key, None)

    def offer(self, out: Outgoing) -> int:
        """Should a live message go to this connection? Advances the position if so.

        Returns :data:`NEXT` (contiguous), ``NEXT + n`` (deliver; ``n`` messages are missing
        before it), or a non-positive "don't": :data:`DUPLICATE`, :data:`HELD`,
        :data:`NOT_FOLLOWED`.
        """
        if not self.ready:
            self.held.append(out)
            return HELD
        m = out.message
        key = m.stream_key
        last = self._offsets.get(key)
        if last is None:
            waiting = self.joining.get(key)
            if waiting is not None:
                waiting.append(out)
                return HELD
            return NOT_FOLLOWED
        offset = m.offset
        if m.epoch != self._epochs[key]:
            # The stream's history was lost and restarted: the new epoch's offsets start at 1.
            self._epochs[key] = m.epoch
            self._offsets[key] = offset
            if key[0] == "u":
                self.ack_floor = offset - 1
            return NEXT + offset - 1
        if offset <= last:
            return DUPLICATE
        self._offsets[key] = offset
        gap = offset - last - 1
        if gap and key[0] == "u":
            self.ack_floor = offset - 1  # what was skipped was never sent here
        return NEXT + gap

    def hold(self) -> None:
        """Hold live messages again (a paced replay is going out); :meth:`start` releases
        them behind it."""
        self.held = []
        self.ready = False

    def start(self, replay: list[Outgoing] | None = None) -> list[Outgoing]:
        """Welcome sent: the replay, then the held live messages that are still news."""
        self.ready = True
        # Nothing is held while ready: every ready session shares one empty list (hold()
        # gives it its own again), instead of keeping one per connection for its lifetime.
        held, self.held = self.held, _NOTHING_HELD
        return [out for out in [*(replay or []), *held] if self.offer(out) > 0]

    def cursor(self) -> str:
        return ",".join(
            f"{streams.wire_name(k)}:{self._epochs[k]}:{o}" for k, o in self._offsets.items()
        )

    def stream_positions(self) -> dict[str, dict[str, object]]:
        return {
            streams.wire_name(k): {"epoch": self._epochs[k], "offset": o}
            for k, o in self._offsets.items()
        }
