"""Server -> client encoding, done once per message per wire format.

:class:`Outgoing` wraps one published message and encodes it lazily: the JSON payload, the
WebSocket text frame, the msgpack binary frame and the SSE event tail are each built at most
once, then the same bytes are written to every recipient (the encode-once rule of DESIGN 7).
Server frames are never masked (RFC 6455 5.1) and we negotiate no extensions, so a frame is
just a header and the payload, which lets us frame once instead of once per connection.
"""

from __future__ import annotations

import base64
import enum
import json
import struct
from typing import Any

import msgpack
import orjson

from gateway.errors import BadClientRequest
from switchboard import streams
from switchboard.contract import Message

SUBPROTOCOL_JSON = "switchboard.v1.json"
SUBPROTOCOL_MSGPACK = "switchboard.v1.msgpack"

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode


class Wire(enum.Enum):
    JSON = "json"  # WebSocket text frames
    MSGPACK = "msgpack"  # WebSocket binary frames
    SSE = "sse"  # text/event-stream


WIRES = tuple(Wire)
# Index of each wire format in per-format counters: plain ints on the hot path, because an
# Enum member's hash is computed in Python.
KIND = {w: i for i, w in enumerate(WIRES)}


def frame(first_byte: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first_byte, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first_byte, 126, n) + payload
    return struct.pack("!BBQ", first_byte, 127, n) + payload


def _json_default(value: Any) -> Any:
    # msgpack bodies may carry binary data, which JSON cannot: JSON clients get base64.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps_json(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits (which msgpack and json both allow) and
        # nesting deeper than 254; the standard library takes what it can.
        return json.dumps(
            obj, separators=(",", ":"), ensure_ascii=False, default=_json_default
        ).encode()


_packer_opts = {"use_bin_type": True}


def dumps_msgpack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, **_packer_opts))


def encode_frame(obj: dict[str, Any], wire: Wire) -> bytes:
    """One control/info object (welcome, pong, error...) for one connection."""
    if wire is Wire.MSGPACK:
        return frame(_BINARY, dumps_msgpack(obj))
    return frame(_TEXT, dumps_json(obj))


def sse_event(event_id: str, event_type: str, json_payload: bytes) -> bytes:
    return b"".join(
        (b"id: ", event_id.encode(), b"\nevent: ", event_type.encode(), b"\ndata: ",
         json_payload, b"\n\n")
    )


class Outgoing:
    """One message, encoded at most once per wire format."""

    __slots__ = ("_json", "_msgpack_frame", "_sse_tail", "_text_frame", "message", "stream")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.stream = streams.wire_name(message.stream_key)
        self._json: bytes | None = None
        self._text_frame: bytes | None = None
        self._msgpack_frame: bytes | None = None
        self._sse_tail: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        m = self.message
        return {
            "type": "message",
            "stream": self.stream,
            "epoch": m.epoch,
            "offset": m.offset,
            "data": m.data,
        }

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps_json(self.as_dict())
        return self._json

    @property
    def text_frame(self) -> bytes:
        if self._text_frame is None:
            self._text_frame = frame(_TEXT, self.json)
        return self._text_frame

    @property
    def msgpack_frame(self) -> bytes:
        if self._msgpack_frame is None:
            self._msgpack_frame = frame(_BINARY, dumps_msgpack(self.as_dict()))
        return self._msgpack_frame

    @property
    def sse_tail(self) -> bytes:
        """Everything of the SSE event after its per-connection ``id:`` line."""
        if self._sse_tail is None:
            self._sse_tail = b"event: message\ndata: " + self.json + b"\n\n"
        return self._sse_tail


class Notice:
    """A server object that is not a stream message (a presence event), sent to many
    connections: its JSON and its WebSocket frames are each built at most once."""

    __slots__ = ("_frames", "_json", "obj")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._json: bytes | None = None
        self._frames: dict[Wire, bytes] = {}

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps_json(self.obj)
        return self._json

    def frame(self, wire: Wire) -> bytes:
        """The WebSocket frame for a JSON or msgpack connection."""
        built = self._frames.get(wire)
        if built is None:
            built = self._frames[wire] = frame(_BINARY, dumps_msgpack(self.obj)) \
                if wire is Wire.MSGPACK else frame(_TEXT, self.json)
        return built


class ClientMessageError(BadClientRequest):
    """A client frame that is not a valid protocol message (answered ``bad_request``)."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_request", message)


def decode_client(payload: bytes, binary: bool) -> dict[str, Any]:
    """Text frames carry JSON, binary frames msgpack, whatever subprotocol was chosen."""
    try:
        if binary:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        else:
            obj = json.loads(payload)
    except Exception as exc:  # json and msgpack raise many unrelated types
        raise ClientMessageError(f"undecodable {'msgpack' if binary else 'JSON'}") from exc
    if not isinstance(obj, dict):
        raise ClientMessageError("a message must be an object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ClientMessageError("a message needs a string 'type'")
    return obj
