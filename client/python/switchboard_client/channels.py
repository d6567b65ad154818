"""Channel subscriptions and requests, without I/O.

:class:`Channels` keeps the channels the client wants across connections and matches
subscribe, unsubscribe and publish requests with the gateway's replies; the I/O layer carries
out the :class:`Effects` it returns. Channel names and subscribe cursors are checked here
(:func:`check_channel`, :func:`check_cursor`) before anything is sent.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from switchboard_client.errors import PublishError, RequestError, SubscribeError
from switchboard_client.protocol import (
    Item,
    Position,
    ProtocolViolation,
    Tracker,
    Welcome,
    parse_position,
)

CHANNEL_PREFIX = "ch."
CHANNEL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
EPOCH_RE = re.compile(r"[A-Za-z0-9]{1,32}")


def check_channel(name: object) -> str:
    """``name`` if it is a channel name (1-64 letters, digits, ``_`` or ``-``); else ValueError.

    Checked before anything is sent, so the gateway never answers ``bad_request`` for a name.
    """
    if not isinstance(name, str) or CHANNEL_RE.fullmatch(name) is None:
        raise ValueError(f"invalid channel name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def check_cursor(value: object) -> Position:
    """A subscribe cursor ``(epoch, offset)`` (a :class:`Position` or a pair); else ValueError."""
    if isinstance(value, tuple) and len(value) == 2:
        epoch, offset = value
        if (isinstance(epoch, str) and EPOCH_RE.fullmatch(epoch) is not None
                and isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
            return Position(epoch, offset)
    raise ValueError(f"a cursor is (epoch, offset): 1-32 letters or digits and an integer >= 0, "
                     f"not {value!r}")


def channel_stream(channel: str) -> str:
    """The stream a channel's messages arrive on: ``ch.NAME``."""
    return CHANNEL_PREFIX + channel


def stream_channel(stream: str) -> str | None:
    """The channel of a ``ch.NAME`` stream; None for ``user`` and ``broadcast``."""
    return stream[len(CHANNEL_PREFIX):] if stream.startswith(CHANNEL_PREFIX) else None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription is live: messages of ``ch.CHANNEL`` follow from offset + 1 of ``epoch``.

    ``recovered`` is True when the subscribe (or the connect that resubscribed it) carried a
    cursor and everything after it is replayed; the replayed messages follow through the
    iteration. False when there was no cursor, or its messages could not all be replayed.
    """

    channel: str
    epoch: str
    offset: int
    recovered: bool


@dataclass(frozen=True, slots=True)
class Published:
    """The gateway stored a published message as (epoch, offset) of ``ch.CHANNEL``."""

    channel: str
    epoch: str
    offset: int


RequestKind = Literal["subscribe", "unsubscribe", "publish"]


@dataclass(eq=False, slots=True)
class Request:
    """One subscribe, unsubscribe or publish, from the call to the gateway's answer."""

    id: int  # also the publish ``id`` the gateway echoes
    kind: RequestKind
    channel: str
    data: Any = None  # publish only
    # Sent on the current connection (a subscribe of a channel asked for at connect counts as
    # sent: the connect-time announce answers it).
    sent: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """A request is over: ``error`` if it failed, else ``result`` (None for unsubscribe)."""

    request: Request
    result: Subscribed | Published | None = None
    error: RequestError | None = None


@dataclass(slots=True)
class Effects:
    """What the I/O layer does after a :class:`Channels` decision, in this order."""

    resolved: list[Resolution] = field(default_factory=list)  # answer the callers
    items: list[Item] = field(default_factory=list)  # deliver to the application
    frames: list[dict[str, Any]] = field(default_factory=list)  # send, on the open connection
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (code, message): on_error


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a connection asks for: ``channels=``, ``cursor=``, and the part of that cursor
    the :class:`Tracker` resumes (compared with the welcome to report lost messages)."""

    channels: tuple[str, ...]
    cursor: dict[str, Position]
    resumed: dict[str, Position]


class Channels:
    """The channels one client wants, and its channel requests, across all its connections.

    The client *wants* a set of channels: the ``channels`` option, plus every subscribe, minus
    every unsubscribe. Every connection asks for all of them at connect (``channels=``, and
    the cursor resumes them), so a reconnect loses neither a subscription nor a message; the
    gateway then announces each with ``subscribed`` (or a ``forbidden`` error) after the
    welcome, before it answers any request sent on that connection.

    Requests on one channel run in call order, and never so that a reply could be ambiguous:
    a subscribe or unsubscribe is sent only when nothing else of its channel is in flight, a
    publish only when no subscribe or unsubscribe of its channel comes before it. Errors name
    the channel but, except ``unavailable`` for a publish, not the request, so this is what
    lets every reply be matched to its request. A request lasts until its reply or the end of
    its connection: then a subscribe is asked for again at the next connect, an unsubscribe
    is done (the next connection does not ask for the channel), and a publish fails with
    ``disconnected`` (it may have been stored; it is not resent, so never stored twice).

    Pure: the I/O layer calls the methods and carries out the returned :class:`Effects`.
    """

    def __init__(self, tracker: Tracker, channels: Iterable[str] = ()) -> None:
        self.tracker = tracker
        # channel -> cursor to subscribe from while the tracker has no position for it
        self.wanted: dict[str, Position | None] = {check_channel(c): None for c in channels}
        self.connected = False
        self.gateway = ""
        self.asked: tuple[str, ...] = ()  # channels= of the current (or next) connection
        self.active: set[str] = set()  # subscribed by the gateway on the current connection
        self.announcing: set[str] = set()  # asked for at connect, not answered yet
        self._queues: dict[str, list[Request]] = {}  # per channel, in call order
        self._ids = itertools.count(1)

    def accepts(self, stream: str) -> bool:
        """Whether messages of ``stream`` are for the application (not an unwanted channel)."""
        channel = stream_channel(stream)
        return channel is None or channel in self.wanted

    def pending(self) -> list[Request]:
        return [r for queue in self._queues.values() for r in queue]

    # -- the application asks -----------------------------------------------------------------

    def subscribe(self, channel: str, cursor: Position | None = None) -> tuple[Request, Effects]:
        """A subscribe; joins one already under way. SubscribeError if already subscribed."""
        check_channel(channel)
        if channel in self.wanted:
            under_way = self._last_change(channel)
            if under_way is not None:
                return under_way, Effects()
            if channel in self.active:
                raise SubscribeError("already_subscribed", f"already subscribed to {channel!r}",
                                     channel=channel)
            # Wanted since connect and not announced yet: the announce answers this request.
        else:
            self.wanted[channel] = cursor
        return self._add(channel, "subscribe")

    def unsubscribe(self, channel: str) -> tuple[Request, Effects]:
        """An unsubscribe; joins one already under way. SubscribeError if not subscribed."""
        check_channel(channel)
        if channel not in self.wanted:
            under_way = self._last_change(channel)
            if under_way is not None:
                return under_way, Effects()
            raise SubscribeError("not_subscribed", f"not subscribed to {channel!r}",
                                 channel=channel)
        del self.wanted[channel]
        return self._add(channel, "unsubscribe")

    def publish(self, channel: str, data: Any) -> tuple[Request, Effects]:
        check_channel(channel)
        return self._add(channel, "publish", data)

    def abandon(self, request: Request) -> Effects:
        """The caller stopped waiting for ``request``.

        A publish not sent yet is dropped: it never happens. Anything sent runs to its reply
        (which must still be matched), and so do subscribes and unsubscribes: the channel stays
        wanted, or unwanted, as asked.
        """
        fx = Effects()
        if request.kind == "publish" and not request.sent and request in self.pending():
            self._remove(request)
            self._release(fx)
        return fx

    # -- connections --------------------------------------------------------------------------

    def connect_request(self) -> ConnectRequest:
        """What the next connection asks for: every wanted channel, resumed where we are."""
        self.asked = tuple(self.wanted)
        resumed = {s: p for s, p in self.tracker.positions.items() if self.accepts(s)}
        cursor = dict(resumed)
        for channel, start in self.wanted.items():
            if start is not None:
                cursor.setdefault(channel_stream(channel), start)
        return ConnectRequest(self.asked, cursor, resumed)

    def opened(self, welcome: Welcome) -> Effects:
        """The welcome arrived (call after :meth:`Tracker.on_welcome`): send what waited."""
        self.connected = True
        self.gateway = welcome.gateway
        self.active = {c for c in self.asked if channel_stream(c) in welcome.streams}
        self.announcing = set(self.asked)
        fx = Effects()
        self._release(fx)
        return fx

    def closed(self) -> Effects:
        """The connection ended: settle what was in flight on it."""
        fx = Effects()
        self.connected = False
        self.active.clear()
        self.announcing.clear()
        for request in self.pending():
            if not request.sent:
                continue
            if request.kind == "publish":
                self._resolve(fx, request, error=PublishError(
                    "disconnected", "the connection ended before the gateway confirmed the "
                    "publish: the message may or may not have been stored",
                    channel=request.channel))
            elif request.kind == "unsubscribe":
                self._resolve(fx, request)  # the next connection does not ask for it
            else:
                request.sent = False  # the next connection asks for it
        return fx

    # -- the gateway answers ------------------------------------------------------------------

    def on_reply(self, msg: Mapping[str, Any]) -> Effects:
        """A ``subscribed``, ``unsubscribed``, ``published``, or an ``error`` with a channel."""
        fx = Effects()
        kind, channel = msg.get("type"), msg.get("channel")
        if kind == "error":
            code, message = str(msg.get("code", "")), str(msg.get("message", ""))
            if isinstance(channel, str):
                self._on_error(fx, channel, code, message, msg.get("id"))
            else:
                fx.unmatched.append((code, message))
        elif not isinstance(channel, str):
            raise ProtocolViolation(f"{kind}: channel must be a string")
        elif kind == "subscribed":
            self._on_subscribed(fx, channel, parse_position(msg, f"subscribed {channel!r}"),
                                bool(msg.get("recovered", False)))
        elif kind == "unsubscribed":
            head = self._head(channel)
            if head is not None and head.sent and head.kind == "unsubscribe":
                self._resolve(fx, head)
            else:
                self._forget(channel)
        elif kind == "published":
            pos = parse_position(msg, f"published {channel!r}")
            request = self._sent_publish(channel, msg.get("id"))
            if request is not None:
                self._resolve(fx, request, Published(channel, pos.epoch, pos.offset))
        else:
            raise ProtocolViolation(f"not a channel reply: {kind!r}")
        self._release(fx)
        return fx

    def _on_subscribed(self, fx: Effects, channel: str, pos: Position, recovered: bool) -> None:
        self.announcing.discard(channel)
        self.active.add(channel)
        head = self._head(channel)
        if head is not None and head.sent and head.kind == "subscribe":
            self._resolve(fx, head, Subscribed(channel, pos.epoch, pos.offset, recovered))
        if channel in self.wanted:
            self.wanted[channel] = None  # positioned now: the tracker resumes it
            recovery = self.tracker.on_subscribed(channel_stream(channel), pos,
                                                  recovered=recovered, gateway=self.gateway)
            if recovery is not None:
                fx.items.append(recovery)

    def _on_error(self, fx: Effects, channel: str, code: str, message: str,
                  msg_id: object) -> None:
        head = self._head(channel)
        sent_change = head if head is not None and head.sent and head.kind != "publish" else None
        if code == "forbidden" and channel in self.announcing:
            # The connect-time answer: the token does not (or no longer) allow the channel.
            self.announcing.discard(channel)
            self.active.discard(channel)
            if sent_change is not None and sent_change.kind == "subscribe":
                self._fail_subscribe(fx, sent_change, code, message)
            elif channel in self.wanted:
                del self.wanted[channel]  # kept since an earlier subscribe: dropped now
                self._forget(channel)
                fx.unmatched.append((code, message))
            return
        if code == "unavailable" and channel in self.announcing and msg_id is None:
            # The connect-time subscribe could not be decided (the application's backend was
            # unreachable): not subscribed now; still wanted, so the next connect asks again.
            self.announcing.discard(channel)
            if sent_change is not None and sent_change.kind == "subscribe":
                self._fail_subscribe(fx, sent_change, code, message)
            else:
                fx.unmatched.append((code, message))
            return
        if msg_id is not None and (by_id := self._sent_publish(channel, msg_id)) is not None:
            self._resolve(fx, by_id, error=PublishError(code, message, channel=channel))
        elif sent_change is not None and sent_change.kind == "subscribe":
            self._fail_subscribe(fx, sent_change, code, message)
        elif sent_change is not None and code == "not_subscribed":
            self._resolve(fx, sent_change)  # the gateway did not have it: done all the same
        elif code != "not_subscribed" and (oldest := self._sent_publish(channel, None)):
            self._resolve(fx, oldest, error=PublishError(code, message, channel=channel))
        else:
            fx.unmatched.append((code, message))

    def _fail_subscribe(self, fx: Effects, request: Request, code: str, message: str) -> None:
        self._resolve(fx, request, error=SubscribeError(code, message, channel=request.channel))
        channel = request.channel
        if channel in self.wanted and self._last_change(channel) is None:
            del self.wanted[channel]
            self._forget(channel)

    # -- bookkeeping --------------------------------------------------------------------------

    def _add(self, channel: str, kind: RequestKind, data: Any = None) -> tuple[Request, Effects]:
        request = Request(next(self._ids), kind, channel, data)
        self._queues.setdefault(channel, []).append(request)
        fx = Effects()
        self._release(fx)
        return request, fx

    def _release(self, fx: Effects) -> None:
        """Start every request that may go now (see the class docstring)."""
        if not self.connected:
            return
        for channel in list(self._queues):
            while self._release_channel(fx, channel):
                pass

    def _release_channel(self, fx: Effects, channel: str) -> bool:
        """One pass over a channel's queue; True if a request ended at once (pass again)."""
        for i, request in enumerate(self._queues.get(channel, ())):
            if request.kind == "publish":
                if not request.sent:
                    request.sent = True
                    fx.frames.append({"type": "publish", "channel": channel,
                                      "data": request.data, "id": request.id})
                continue
            if i > 0 or request.sent:
                return False  # nothing overtakes a subscribe or unsubscribe
            return self._start(fx, request)
        return False

    def _start(self, fx: Effects, request: Request) -> bool:
        channel = request.channel
        if request.kind == "unsubscribe":
            if channel not in self.active:
                self._resolve(fx, request)  # the gateway does not have it: nothing to send
                return True
            request.sent = True
            fx.frames.append({"type": "unsubscribe", "channel": channel})
            return False
        request.sent = True
        if channel in self.announcing:
            return False  # asked for at connect: the announce answers
        position = self.tracker.positions.get(channel_stream(channel))
        if channel in self.active and position is not None:  # nothing to ask the gateway
            self._resolve(fx, request, Subscribed(channel, position.epoch, position.offset,
                                                  False))
            return True
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        start = self.wanted.get(channel)
        if start is not None:
            frame["cursor"] = {"epoch": start.epoch, "offset": start.offset}
        fx.frames.append(frame)
        return False

    def _resolve(self, fx: Effects, request: Request, result: Subscribed | Published | None = None,
                 error: RequestError | None = None) -> None:
        self._remove(request)
        if request.kind == "unsubscribe" and error is None:
            self._forget(request.channel)
        fx.resolved.append(Resolution(request, result, error))

    def _remove(self, request: Request) -> None:
        queue = self._queues[request.channel]
        queue.remove(request)
        if not queue:
            del self._queues[request.channel]

    def _forget(self, channel: str) -> None:
        self.active.discard(channel)
        self.tracker.on_unsubscribed(channel_stream(channel))

    def _head(self, channel: str) -> Request | None:
        queue = self._queues.get(channel)
        return queue[0] if queue else None

    def _last_change(self, channel: str) -> Request | None:
        """The last subscribe or unsubscribe of ``channel`` not answered yet."""
        changes = [r for r in self._queues.get(channel, ()) if r.kind != "publish"]
        return changes[-1] if changes else None

    def _sent_publish(self, channel: str, msg_id: object) -> Request | None:
        """The sent publish with this id; with None, the oldest sent publish of the channel."""
        for request in self._queues.get(channel, ()):
            if request.kind == "publish" and request.sent and (
                    msg_id is None or msg_id == request.id):
                return request
        return None
