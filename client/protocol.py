"""The client's side of the Switchboard protocol, without I/O.

Everything a reconnecting client has to decide lives here, as plain functions and one small
state object, so it is tested without sockets (``tests/unit/client``):

- :class:`Tracker` keeps the position (epoch, offset) of every stream and decides, per server
  message, whether to deliver it, drop it as a duplicate, report a lost history (new epoch) or
  declare a gap that a resume must fill;
- :func:`format_cursor` and :func:`connect_url` spell the resume request;
- :func:`after_close` and :func:`after_refusal` map close codes and HTTP refusals to what the
  client does next (DESIGN 5: the code ranges tell clients what to do).

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
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgpack

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
