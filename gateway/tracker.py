"""Gateway-level stream tracking: notice live gaps and fill them in order, free of I/O.

Pub/sub is at-most-once: a reconnect, a killed subscriber connection or a slow gateway can lose
envelopes. The gateway remembers the last offset it saw per stream it has followers for; an
offset that jumps starts a fill from the log, and live messages for that stream wait behind the
fill so clients still see offsets in order.

Redis losing data shows up here too (DESIGN 7):

- a live message in a new epoch means the stream restarted (Redis restarted empty, was flushed
  or the stream expired). Its offsets start at 1, and the first ones may have been published
  before this gateway was subscribed or registered again: the new epoch is filled from offset 1;
- after a pub/sub reconnect every followed stream is held (:meth:`Tracker.hold_all`) until its
  top has been read (:meth:`Tracker.catch_up`). A top in the same epoch but *below* what we
  already delivered, or a held envelope at or below it, means Redis came back with older data
  (a restart from a stale snapshot, a failover to a replica that missed writes): offsets are
  being reused for other messages, so nothing of that epoch can be trusted any more. Such a
  stream is reported as regressed; the gateway retires its epoch and moves its followers,
  whose resume then says
  ``recovered:false``;
- the reused offsets may also have overtaken our position before the new subscription was
  made (top at or above it, nothing held): so a held stream's catch-up reads the log from our
  own position, and the message there must be the one we delivered (its ``published_ms``,
  :meth:`Tracker.verify`); another one there is the same regression.

A catch-up's tops are read while live delivery goes on, and catch-ups overlap (the heartbeat
noticing the lost registry and the pub/sub reconnect each start one): a top is compared with
the position we had when the read was issued (:meth:`Tracker.reading`), never with one that
moved on meanwhile, which would look like a regression that is not one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from switchboard.contract import Message
from switchboard.streams import Position


@dataclass(frozen=True, slots=True)
class Fill:
    """Read offsets ``first..last`` of ``key`` in ``epoch`` from the log (may be empty)."""

    key: str
    epoch: str
    first: int
    last: int
    # published_ms of the message we delivered at ``first``: the log must still hold that
    # message there (a catch-up's check for reused offsets), or None
    expect: int | None = None

    @property
    def empty(self) -> bool:
        return self.first > self.last


@dataclass(frozen=True, slots=True)
class Reading:
    """The positions when a catch-up's read of the tops was issued."""

    positions: dict[str, Position]
    holds: int  # how many hold_all() calls came before it

    @property
    def keys(self) -> list[str]:
        return list(self.positions)


@dataclass(slots=True)
class Steps:
    """What the gateway must do next: deliver ``ready`` (in order) and start ``fills``."""

    ready: list[Message] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    regressed: list[tuple[str, str]] = field(default_factory=list)  # (key, retired epoch)
    stale: list[str] = field(default_factory=list)  # keys whose tops must be read again

    def add(self, ready: list[Message], fill: Fill | None) -> None:
        self.ready.extend(ready)
        if fill is not None:
            self.fills.append(fill)


class Tracker:
    def __init__(self) -> None:
        self._seen: dict[str, Position] = {}
        # published_ms of the message delivered at _seen[key], where we know it
        self._stamp: dict[str, int] = {}
        self._waiting: dict[str, list[Message]] = {}
        # Held by hold_all() and not yet checked against Redis by catch_up().
        self._unverified: set[str] = set()
        self._holds = 0
        self.filled = 0
        self.unfilled = 0

    def position(self, key: str) -> Position | None:
        return self._seen.get(key)

    def holding(self, key: str) -> bool:
        return key in self._waiting

    def follow(self, key: str, top: Position) -> None:
        """A local connection follows ``key``; if we were not tracking it, start at its top."""
        # Never move an existing position forward here: envelopes below the top may still be
        # in flight on pub/sub, and other local clients need them.
        self._seen.setdefault(key, top)

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)
        self._stamp.pop(key, None)
        if key in self._unverified:  # held only for the catch-up, no fill owns the queue
            self._unverified.discard(key)
            self._waiting.pop(key, None)

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
        if pos.epoch != msg.epoch:
            # A new epoch starts at offset 1; what came before this message is in its log.
            if msg.offset <= 1:
                self._seen[key] = Position(msg.epoch, msg.offset)
                self._stamp[key] = msg.published_ms
                return [msg], None
            self._seen[key] = Position(msg.epoch, 0)
            self._stamp.pop(key, None)
            self._waiting[key] = [msg]
            return [], Fill(key, msg.epoch, 1, msg.offset - 1)
        if msg.offset == pos.offset + 1:
            self._seen[key] = Position(msg.epoch, msg.offset)
            self._stamp[key] = msg.published_ms
            return [msg], None
        if msg.offset <= pos.offset:
            return [], None  # already delivered (a fill got there first)
        self._waiting[key] = [msg]
        return [], Fill(key, msg.epoch, pos.offset + 1, msg.offset - 1)

    def hold_all(self) -> None:
        """Pub/sub reconnected: hold every followed stream until :meth:`catch_up` saw its top.

        Until then a live offset at or below our position could be a duplicate or a reused
        offset (Redis came back with older data); only the top tells them apart.
        """
        self._holds += 1
        for key in self._seen:
            if key not in self._waiting:  # a fill under way holds it already
                self._waiting[key] = []
                self._unverified.add(key)

    def reading(self) -> Reading:
        """Taken just before the tops of a catch-up are read (its keys are the ones to read)."""
        return Reading(dict(self._seen), self._holds)

    def reread(self, first: Reading, keys: list[str]) -> Reading:
        """The next round of the catch-up that began with ``first``, for ``keys``: streams
        held since ``first`` stay the business of the catch-up after their subscription."""
        return Reading({k: self._seen[k] for k in keys if k in self._seen}, first.holds)

    def _checkable(self, key: str, reading: Reading) -> bool:
        """May this catch-up settle ``key``? Not a stream held by a hold_all() that came after
        the read was issued: those tops may predate the new subscription, and the catch-up
        that follows that subscription checks it."""
        return key not in self._unverified or reading.holds == self._holds

    def catch_up(self, reading: Reading, tops: Mapping[str, Position]) -> Steps:
        """Bring every followed stream to its top as read from Redis after an outage.

        ``tops`` lacks the streams Redis has no position for: their history is gone and their
        next message starts a new epoch, which :meth:`live` fills from offset 1.
        """
        steps = Steps()
        for key, before in reading.positions.items():
            pos = self._seen.get(key)
            if pos is None or not self._checkable(key, reading):
                continue  # forgotten meanwhile, or held again since: a later catch-up's
            held = key in self._unverified
            self._unverified.discard(key)
            top = tops.get(key)
            if top is not None and top.epoch == before.epoch == pos.epoch and (
                    top.offset < before.offset or (held and self._reused(key, pos))):
                # Offsets we delivered are being reused: no message of this epoch is
                # trustworthy for our followers, held ones included.
                steps.regressed.append((key, pos.epoch))
                self._drop(key)
                continue
            if key in self._waiting and not held:
                continue  # a fill is under way; its end re-checks what queued behind it
            if pos != before:
                # Live delivery moved it while the tops were read. A top in its epoch still
                # shows what is left to fill; one in another epoch (or none) may be older or
                # newer than what arrived live: that stream is read again.
                if top is not None and top.epoch == pos.epoch:
                    if top.offset > pos.offset:
                        self._fill(steps, Fill(key, top.epoch, pos.offset + 1, top.offset))
                else:
                    steps.stale.append(key)
                continue
            if top is None:
                if held:
                    steps.add(*self._release(key))
                continue
            stamp = self._stamp.get(key)
            if top.epoch != pos.epoch:
                self._seen[key] = Position(top.epoch, 0)
                self._stamp.pop(key, None)
                self._fill(steps, Fill(key, top.epoch, 1, top.offset))
            elif held and stamp is not None and pos.offset >= 1 and top.offset >= pos.offset:
                # From our own position: the message there must still be ours (verify()).
                self._fill(steps, Fill(key, top.epoch, pos.offset, top.offset, expect=stamp))
            elif top.offset > pos.offset:
                self._fill(steps, Fill(key, top.epoch, pos.offset + 1, top.offset))
            elif held:
                steps.add(*self._release(key))
        return steps

    def _fill(self, steps: Steps, fill: Fill) -> None:
        """A catch-up's fill: the stream's live envelopes queue behind it."""
        self._waiting.setdefault(fill.key, [])
        steps.fills.append(fill)

    def verify(self, fill: Fill, entries: list[Message]) -> bool:
        """Does the log still hold, at ``fill.first``, the message we delivered there? False
        (and the stream forgotten, like a regression found by :meth:`catch_up`) if another
        message is there: its offsets were reused. An entry the log no longer has (trimmed,
        expired) proves nothing either way."""
        if fill.expect is None:
            return True
        at = next((e for e in entries if e.epoch == fill.epoch and e.offset == fill.first),
                  None)
        if at is None or at.published_ms == fill.expect:
            return True
        self._drop(fill.key)
        return False

    def _drop(self, key: str) -> None:
        self._waiting.pop(key, None)
        self._seen.pop(key, None)
        self._stamp.pop(key, None)

    def _reused(self, key: str, pos: Position) -> bool:
        """Did the new subscription bring an offset we had delivered already? It only carries
        what was published after it, and an intact stream only grows: so that offset was
        used again, even if the top has since grown past our position."""
        return any(m.epoch == pos.epoch and m.offset <= pos.offset
                   for m in self._waiting.get(key, ()))

    def release_all(self, reading: Reading) -> Steps:
        """The tops could not be read: stop holding and let live gap detection take over."""
        steps = Steps()
        for key in list(self._unverified):
            if key not in reading.positions or not self._checkable(key, reading):
                continue
            self._unverified.discard(key)
            steps.add(*self._release(key))
        return steps

    def _release(self, key: str) -> tuple[list[Message], Fill | None]:
        """Deliver what waited for ``key``, re-checked as if it had just arrived."""
        ready: list[Message] = []
        queued = self._waiting.pop(key, [])
        for i, m in enumerate(queued):
            now, fill = self.live(m)
            ready.extend(now)
            if fill is not None:
                # live() queued this one behind the new fill; the rest wait behind it too
                # (dropping them lost every message queued after a second gap).
                self._waiting[key].extend(queued[i + 1:])
                return ready, fill
        return ready, None

    def complete(self, fill: Fill, entries: list[Message]) -> tuple[list[Message], Fill | None]:
        """The fill came back (possibly short or empty): what to deliver, in order, and the
        next fill if what queued behind it has a gap of its own (or starts a new epoch)."""
        waiting = self._waiting.pop(fill.key, [])
        pos = self._seen.get(fill.key)
        out: list[Message] = []
        got: set[int] = set()
        for m in entries:
            if m.epoch != fill.epoch:
                continue  # Redis lost the stream again meanwhile: not the history we want
            got.add(m.offset)
            if pos is not None and m.epoch == pos.epoch and m.offset <= pos.offset:
                continue
            out.append(m)
            pos = Position(m.epoch, m.offset)
            self._stamp[fill.key] = m.published_ms
        if not fill.empty:
            if all(o in got for o in range(fill.first, fill.last + 1)):
                self.filled += 1
            else:
                self.unfilled += 1
        if pos is not None:
            # Whatever the log could not give us is lost for good: continue after it.
            if pos.epoch == fill.epoch and pos.offset < fill.last:
                pos = Position(fill.epoch, fill.last)
                self._stamp.pop(fill.key, None)  # what is at fill.last we never saw
            self._seen[fill.key] = pos
        self._waiting[fill.key] = waiting
        more, next_fill = self._release(fill.key)
        return out + more, next_fill
