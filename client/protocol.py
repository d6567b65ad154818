"""The client's side of the Switchboard protocol, without I/O.

Everything a reconnecting client has to decide lives here, as plain functions and one small
state object, so it is tested without sockets (``tests/unit/client``):

- :class:`Tracker` keeps the position (epoch, offset) of every stream and decides, per server
  message, whether to deliver it, drop it as a duplicate, report a lost history (new epoch) or
  declare a gap that a resume must fill;
- :func:`format_cursor` and :func:`connect_url` spell the resume request;
- :func:`after_close` and :func:`after_refusal` map close codes and HTTP refusals to what the
  client does next (DESIGN 5: the code ranges tell clients what to do);
- :class:`Channels` keeps the channels the client wants across connections and matches
  subscribe, unsubscribe and publish requests with the gateway's replies.

Example::

    >>> t = Tracker()
    >>> t.on_welcome(parse_welcome({"type": "welcome", "session": "s", "gateway": "g",
    ...     "user": "u", "resumed": False, "recovered": False,
    ...     "streams": {"user": {"epoch": "e", "offset": 4}}}), sent={})
    >>> t.on_message(parse_message({"type": "message", "stream": "user", "epoch": "e",
    ...     "offset": 5, "data": "hi"}), gateway="g")
    (Message(stream='user', epoch='e', offset=5, data='hi'),)
    >>> t.cursor()
    'user:e:5'
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgpack

from client.errors import PublishError, RequestError, SubscribeError

Format = Literal["json", "msgpack"]
SUBPROTOCOLS: dict[str, str] = {
    "json": "switchboard.v1.json",  # text frames
    "msgpack": "switchboard.v1.msgpack",  # binary frames
}
# Upper bound of the delay before reconnecting when the server moved us away without a hint.
JITTER_MAX = 1.0


class ProtocolViolation(ValueError):
    """A server message that does not have the shape the protocol promises."""


# -- what the application receives ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message of one stream, delivered once and in offset order."""

    stream: str
    epoch: str
    offset: int
    data: Any


@dataclass(frozen=True, slots=True)
class Recovery:
    """Messages of ``streams`` were lost: the client could not resume them exactly.

    Delivered before any later message of those streams; the application should re-fetch
    whatever state it derives from them. ``recovered`` is always False today (kept so a
    successful recovery could be reported the same way).
    """

    recovered: bool
    streams: tuple[str, ...]
    gateway: str


@dataclass(slots=True)
class Stats:
    connects: int = 0  # connections that reached their welcome, the first one included
    reconnects: int = 0  # of those, the ones after the first
    duplicates_dropped: int = 0
    gaps_detected: int = 0
    recoveries_failed: int = 0  # Recovery items delivered


class Position(NamedTuple):
    epoch: str
    offset: int


# -- wire encoding --------------------------------------------------------------------------


def encode(obj: Mapping[str, Any], fmt: Format) -> str | bytes:
    """A client message as a text (JSON) or binary (msgpack) frame."""
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(dict(obj), use_bin_type=True)
        return packed
    return json.dumps(obj, separators=(",", ":"))


def decode(frame: str | bytes) -> dict[str, Any]:
    """A server frame as a dict: text frames are JSON, binary frames msgpack."""
    try:
        obj = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolViolation(f"undecodable frame: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolViolation("a server message must be a map with a string 'type'")
    return obj


# -- welcome and messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    session: str
    gateway: str
    user: str
    resumed: bool
    recovered: bool
    streams: dict[str, Position]  # where delivery continues from, per stream


def _position(raw: object, what: str) -> Position:
    if not isinstance(raw, dict):
        raise ProtocolViolation(f"{what}: expected {{epoch, offset}}")
    epoch, offset = raw.get("epoch"), raw.get("offset")
    if not isinstance(epoch, str) or not isinstance(offset, int) or isinstance(offset, bool):
        raise ProtocolViolation(f"{what}: epoch must be a string and offset an integer")
    return Position(epoch, offset)


def parse_welcome(obj: Mapping[str, Any]) -> Welcome:
    if obj.get("type") != "welcome":
        raise ProtocolViolation(f"expected a welcome first, got {obj.get('type')!r}")
    streams = obj.get("streams") or {}
    if not isinstance(streams, dict):
        raise ProtocolViolation("welcome.streams must be a map")
    return Welcome(
        session=str(obj.get("session", "")),
        gateway=str(obj.get("gateway", "")),
        user=str(obj.get("user", "")),
        resumed=bool(obj.get("resumed", False)),
        recovered=bool(obj.get("recovered", False)),
        streams={str(s): _position(p, f"welcome stream {s!r}") for s, p in streams.items()},
    )


def parse_message(obj: Mapping[str, Any]) -> Message:
    stream = obj.get("stream")
    if not isinstance(stream, str):
        raise ProtocolViolation("message.stream must be a string")
    pos = _position(obj, f"message of {stream!r}")
    return Message(stream, pos.epoch, pos.offset, obj.get("data"))


# -- positions, duplicates and gaps ---------------------------------------------------------


class Verdict(enum.Enum):
    DELIVER = "deliver"  # the next offset (or a stream we had no position for)
    DUPLICATE = "duplicate"  # already delivered: drop
    GAP = "gap"  # offsets are missing before it: resume to have them replayed
    NEW_EPOCH = "new_epoch"  # the stream's history was lost: report, then deliver


def classify(position: Position | None, epoch: str, offset: int) -> Verdict:
    if position is None:
        return Verdict.DELIVER
    if epoch != position.epoch:
        return Verdict.NEW_EPOCH
    if offset <= position.offset:
        return Verdict.DUPLICATE
    if offset == position.offset + 1:
        return Verdict.DELIVER
    return Verdict.GAP


@dataclass(frozen=True, slots=True)
class Gap:
    """``stream`` jumped from ``expected`` to ``received``; nothing was delivered."""

    stream: str
    expected: int
    received: int


Item = Message | Recovery


class Tracker:
    """Stream positions of one client, across all its connections."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.positions: dict[str, Position] = {}
        self.stats = stats if stats is not None else Stats()

    def cursor(self) -> str:
        return format_cursor(self.positions)

    def on_welcome(self, welcome: Welcome, *, sent: Mapping[str, Position]) -> Recovery | None:
        """Take the welcome's positions; report the streams a resume could not recover.

        ``sent`` is the cursor this connection asked to resume from (empty on a first
        connect). A stream whose welcome position differs from it jumped: messages are lost.
        """
        self.positions = dict(welcome.streams)
        if not sent or welcome.recovered:
            return None
        lost = tuple(s for s, p in sent.items() if s in welcome.streams and welcome.streams[s] != p)
        if not lost:
            return None  # nothing was published meanwhile, so nothing is missing
        self.stats.recoveries_failed += 1
        return Recovery(recovered=False, streams=lost, gateway=welcome.gateway)

    def on_message(self, msg: Message, *, gateway: str) -> tuple[Item, ...] | Gap:
        """What to deliver for ``msg`` (possibly nothing), or the gap it reveals."""
        position = self.positions.get(msg.stream)
        verdict = classify(position, msg.epoch, msg.offset)
        if verdict is Verdict.DUPLICATE:
            self.stats.duplicates_dropped += 1
            return ()
        if verdict is Verdict.GAP:
            assert position is not None
            self.stats.gaps_detected += 1
            return Gap(msg.stream, position.offset + 1, msg.offset)
        self.positions[msg.stream] = Position(msg.epoch, msg.offset)
        if verdict is Verdict.NEW_EPOCH:
            self.stats.recoveries_failed += 1
            return (Recovery(recovered=False, streams=(msg.stream,), gateway=gateway), msg)
        return (msg,)

    def on_subscribed(
        self, stream: str, position: Position, *, recovered: bool, gateway: str
    ) -> Recovery | None:
        """A channel subscription starts at ``position``; report it if ours was lost."""
        old = self.positions.get(stream)
        self.positions[stream] = position
        if old is None or recovered or old == position:
            return None
        self.stats.recoveries_failed += 1
        return Recovery(recovered=False, streams=(stream,), gateway=gateway)

    def on_unsubscribed(self, stream: str) -> None:
        self.positions.pop(stream, None)


# -- connect request ------------------------------------------------------------------------


def format_cursor(positions: Mapping[str, Position]) -> str:
    """``STREAM:EPOCH:OFFSET`` for every known stream, comma-separated."""
    return ",".join(f"{stream}:{p.epoch}:{p.offset}" for stream, p in positions.items())


def connect_url(
    url: str,
    *,
    token: str | None = None,
    session: str | None = None,
    cursor: str = "",
    channels: Iterable[str] = (),
) -> str:
    """``url`` with the connect parameters set (replacing any already in its query)."""
    ours = {"token", "session", "cursor", "channels"}
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    if token:
        query.append(("token", token))
    if session:
        query.append(("session", session))
    if cursor:
        query.append(("cursor", cursor))
    channel_list = ",".join(channels)
    if channel_list:
        query.append(("channels", channel_list))
    return urlunsplit(parts._replace(query=urlencode(query, safe=":,.", quote_via=quote)))


# -- what to do when a connection ends ------------------------------------------------------


class Next(enum.Enum):
    BACKOFF = "backoff"  # reconnect after a backoff delay (or the server's hint), resume
    JITTER = "jitter"  # the server moved us: reconnect after after_ms or a short jitter
    NEW_TOKEN = "new_token"  # fetch a new token and reconnect; AuthError without a provider
    FORBIDDEN = "forbidden"  # raise Forbidden
    SESSION_UNKNOWN = "session_unknown"  # raise SessionError
    TERMINAL = "terminal"  # raise TerminalClose


ABNORMAL_CLOSURE = 1006  # no close frame: the TCP connection died


def after_close(code: int | None) -> Next:
    """What to do after the connection closed with ``code`` (None: no close frame).

    1000/1001/1006/1009/1011/1013 and 4100-4199 (slow consumer, rate limited): backoff.
    1012 (service restart) and 4200-4299 (rebalance, disconnected by API): jitter.
    4000-4099 are terminal; 4001 only until a fresh token is at hand. Codes the protocol does
    not define are treated like 1011: keep trying, politely.
    """
    if code is None:
        code = ABNORMAL_CLOSURE
    if code == 1012 or 4200 <= code <= 4299:
        return Next.JITTER
    if code == 4001:
        return Next.NEW_TOKEN
    if code == 4003:
        return Next.FORBIDDEN
    if code == 4004:
        return Next.SESSION_UNKNOWN
    if 4000 <= code <= 4099:
        return Next.TERMINAL
    return Next.BACKOFF


def after_refusal(status: int) -> Next:
    """What to do after the handshake was refused with an HTTP ``status``.

    401: a new token; 403: forbidden; anything else (429 and 503 with Retry-After, 5xx, ...):
    back off and retry.
    """
    if status == 401:
        return Next.NEW_TOKEN
    if status == 403:
        return Next.FORBIDDEN
    return Next.BACKOFF


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), if valid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


# -- channels: what the client wants, and its requests ----------------------------------------

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
            self._on_subscribed(fx, channel, _position(msg, f"subscribed {channel!r}"),
                                bool(msg.get("recovered", False)))
        elif kind == "unsubscribed":
            head = self._head(channel)
            if head is not None and head.sent and head.kind == "unsubscribe":
                self._resolve(fx, head)
            else:
                self._forget(channel)
        elif kind == "published":
            pos = _position(msg, f"published {channel!r}")
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
