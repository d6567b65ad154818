"""The client's side of the Switchboard protocol, without I/O: wire frames, positions, cursors.

Everything a reconnecting client has to decide about the messages it receives lives here, as
plain functions and one small state object, so it is tested without sockets
(``tests/unit/switchboard_client``):

- :func:`encode` and :func:`decode` spell frames (JSON text, msgpack binary);
- :func:`parse_welcome` and :func:`parse_message` check the server's messages;
- :class:`Tracker` keeps the position (epoch, offset) of every stream and decides, per server
  message, whether to deliver it, drop it as a duplicate, report a lost history (new epoch) or
  declare a gap that a resume must fill;
- :func:`format_cursor` and :func:`connect_url` spell the resume request.

What a closed connection or refused handshake leads to is :mod:`switchboard_client.policy`; channel
subscriptions and their requests are :mod:`switchboard_client.channels`.

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
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgpack

Format = Literal["json", "msgpack"]
SUBPROTOCOLS: dict[str, str] = {
    "json": "switchboard.v1.json",  # text frames
    "msgpack": "switchboard.v1.msgpack",  # binary frames
}


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


@dataclass(frozen=True, slots=True)
class Presence:
    """A connection joined or left a channel whose presence events this client receives
    (opted in by the token's ``presence`` claim or the application's backend).

    ``conn`` tells a user's connections apart: two tabs join twice and leave twice. Events
    are not replayed: after a (re)subscribe, re-read the channel's members and apply the
    events on top.
    """

    channel: str
    event: Literal["join", "leave"]
    user: str
    conn: str


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


def parse_position(raw: object, what: str) -> Position:
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
        streams={str(s): parse_position(p, f"welcome stream {s!r}") for s, p in streams.items()},
    )


def parse_presence(obj: Mapping[str, Any]) -> Presence:
    channel, event, user, conn = (obj.get(k) for k in ("channel", "event", "user", "conn"))
    if not (isinstance(channel, str) and isinstance(user, str) and isinstance(conn, str)):
        raise ProtocolViolation("presence needs string channel, user and conn")
    if event == "join":
        return Presence(channel, "join", user, conn)
    if event == "leave":
        return Presence(channel, "leave", user, conn)
    raise ProtocolViolation(f"presence.event must be join or leave, not {event!r}")


def parse_message(obj: Mapping[str, Any]) -> Message:
    stream = obj.get("stream")
    if not isinstance(stream, str):
        raise ProtocolViolation("message.stream must be a string")
    pos = parse_position(obj, f"message of {stream!r}")
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
