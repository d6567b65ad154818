"""Streams, positions and cursors (DESIGN section 4).

A stream has two spellings: the **wire name** clients see (``user``, ``broadcast``,
``ch.NAME``) and the **key** used in Redis (``u:USER``, ``b``, ``c:NAME``). A client's position
in a stream is ``(epoch, offset)``; a cursor is a comma-separated list of ``STREAM:EPOCH:OFFSET``.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import NamedTuple

USER = "user"
BROADCAST = "broadcast"
CHANNEL_PREFIX = "ch."

CHANNEL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
EPOCH_RE = re.compile(r"[A-Za-z0-9]{1,32}")
# User ids come from JWT `sub` or the router API; printable, no separators we use ourselves.
# Spelled out instead of \s, which means different things in Python and in the ECMA regexes
# of the OpenAPI document: no control characters (C0, DEL, C1), no Unicode whitespace.
USER_RE = re.compile(
    "[^\x00-\x20\x7f-\x9f,:{}\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    "{1,128}"
)

_ALPHABET = string.ascii_letters + string.digits


_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes at or above this would skew the alphabet
# byte -> the alphabet's character for it; bytes that would skew the alphabet are deleted
_TO_ALPHABET = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))
_SKEWING = bytes(range(_UNBIASED, 256))


def random_id(length: int = 12) -> str:
    """URL-safe alphanumeric id (epochs, sessions, connections, gateways).

    One ``token_bytes`` call mapped onto the alphabet by ``bytes.translate`` (this runs for
    every connection and every publish); bytes that would bias the alphabet are dropped.
    """
    out = b""
    while len(out) < length:
        out += secrets.token_bytes(length + 4).translate(_TO_ALPHABET, _SKEWING)
    return out[:length].decode("ascii")


# JSON can spell a lone surrogate ("\ud800"), which no UTF-8 key or frame can carry. Not part
# of USER_RE: in the OpenAPI document's ECMA regex the range would also refuse every emoji.
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_user(user: object) -> bool:
    return (isinstance(user, str) and USER_RE.fullmatch(user) is not None
            and _SURROGATE.search(user) is None)


def valid_channel(name: object) -> bool:
    return isinstance(name, str) and CHANNEL_RE.fullmatch(name) is not None


def user_key(user: str) -> str:
    return f"u:{user}"


BROADCAST_KEY = "b"


def channel_key(name: str) -> str:
    return f"c:{name}"


def wire_name(key: str) -> str:
    """Redis stream key -> the name a client sees (the user stream is just 'user')."""
    if key == BROADCAST_KEY:
        return BROADCAST
    if key.startswith("c:"):
        return CHANNEL_PREFIX + key[2:]
    return USER


def key_for(wire: str, user: str) -> str | None:
    """Client-visible stream name -> Redis key for this connection's user; None if invalid."""
    if wire == USER:
        return user_key(user)
    if wire == BROADCAST:
        return BROADCAST_KEY
    if wire.startswith(CHANNEL_PREFIX) and valid_channel(wire[len(CHANNEL_PREFIX) :]):
        return channel_key(wire[len(CHANNEL_PREFIX) :])
    return None


class Position(NamedTuple):
    epoch: str
    offset: int


class CursorError(ValueError):
    """A cursor that cannot be parsed; answered with HTTP 400 at the handshake."""


def parse_cursor(text: str) -> dict[str, Position]:
    """Parse ``STREAM:EPOCH:OFFSET,...`` into wire name -> position."""
    result: dict[str, Position] = {}
    if not text:
        return result
    for entry in text.split(","):
        parts = entry.strip().split(":")
        if len(parts) != 3:
            raise CursorError(f"cursor entry {entry!r} is not STREAM:EPOCH:OFFSET")
        stream, epoch, offset_text = parts
        if key_for(stream, "x") is None:
            raise CursorError(f"cursor names an unknown stream {stream!r}")
        if not EPOCH_RE.fullmatch(epoch):
            raise CursorError(f"cursor epoch {epoch!r} is not alphanumeric")
        if not offset_text.isdigit() or len(offset_text) > 18:
            raise CursorError(f"cursor offset {offset_text!r} is not a non-negative integer")
        result[stream] = Position(epoch, int(offset_text))
    return result


def format_cursor(positions: dict[str, Position]) -> str:
    return ",".join(f"{name}:{p.epoch}:{p.offset}" for name, p in positions.items())
