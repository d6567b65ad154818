"""WebSocket client input for fuzzing the gateway: frames, hypothesis strategies, an oracle.

A fuzz case is a list of *items* (whole messages, possibly fragmented, control frames, a
client close, or a deliberate protocol violation). Each item knows its wire bytes (masked
client frames built by hand, so invalid frames can be built too), and :func:`expect` predicts
what a correct gateway answers: how many ``error``/``bad_request``, ``error``/``unknown_type``
and ``pong`` messages, which control pongs, and whether and how it closes (1002 protocol
error, 1007 invalid UTF-8, 1009 too big, or the echo of the client's own close).

:func:`check_output` compares what the gateway wrote with that prediction.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st

from gateway.wire import ClientMessageError, decode_client

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
# Close codes a client may send (RFC 6455 7.4, as websockets checks them).
SENDABLE_CLOSE = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                  3000, 3999, 4000, 4129, 4999)
UNSENDABLE_CLOSE = (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535)

REPLY_TYPES = {"welcome", "pong", "error", "subscribed", "unsubscribed", "published",
               "message"}


def documented_error_codes() -> set[str]:
    """The ``error`` codes listed in docs/protocol.md: an error the gateway sends must be one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = text.split("`error` — non-fatal", 1)[1].split("\n\n`", 1)[0]
    codes = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return codes


ERROR_CODES = documented_error_codes()
KNOWN_TYPES = ("ping", "subscribe", "unsubscribe", "publish")


# -- frames ------------------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, long_length: bool = False) -> bytes:
    """One client frame; ``long_length`` uses the 64-bit length form even for small sizes."""
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if long_length:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    elif n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@dataclass
class ServerFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


def parse_server_frames(data: bytes) -> tuple[list[ServerFrame], bytes]:
    """Frames the server sent, and the bytes of an incomplete last frame."""
    frames: list[ServerFrame] = []
    i = 0
    while True:
        if len(data) - i < 2:
            return frames, data[i:]
        b0, b1 = data[i], data[i + 1]
        n, j = b1 & 0x7F, i + 2
        if n == 126:
            if len(data) - j < 2:
                return frames, data[i:]
            n, j = struct.unpack("!H", data[j:j + 2])[0], j + 2
        elif n == 127:
            if len(data) - j < 8:
                return frames, data[i:]
            n, j = struct.unpack("!Q", data[j:j + 8])[0], j + 8
        masked = bool(b1 & 0x80)
        if masked:
            j += 4
        if len(data) - j < n:
            return frames, data[i:]
        frames.append(ServerFrame(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0xF, masked,
                                  data[j:j + n]))
        i = j + n


# -- items -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """A data message, sent whole or in fragments, maybe with a ping between fragments."""

    binary: bool
    payload: bytes
    cuts: tuple[int, ...] = ()  # fragment boundaries, increasing, inside the payload
    ping_between: bytes | None = None

    def frames(self) -> bytes:
        bounds = [0, *[c for c in self.cuts if 0 < c < len(self.payload)], len(self.payload)]
        bounds = sorted(set(bounds)) if len(self.payload) else [0, 0]
        pieces = [self.payload[a:b] for a, b in itertools.pairwise(bounds)]
        out = b""
        for k, piece in enumerate(pieces):
            opcode = (BINARY if self.binary else TEXT) if k == 0 else CONT
            out += client_frame(opcode, piece, fin=k == len(pieces) - 1)
            if k == 0 and len(pieces) > 1 and self.ping_between is not None:
                out += client_frame(PING, self.ping_between)
        return out


@dataclass(frozen=True)
class Control:
    opcode: int  # PING or PONG
    payload: bytes

    def frames(self) -> bytes:
        return client_frame(self.opcode, self.payload)


@dataclass(frozen=True)
class ClientClose:
    code: int | None
    reason: bytes = b""

    @property
    def payload(self) -> bytes:
        return b"" if self.code is None else struct.pack("!H", self.code) + self.reason

    def frames(self) -> bytes:
        return client_frame(CLOSE, self.payload)

    def verdict(self) -> int | None:
        """None when the close is valid; else the code the server must fail with."""
        if self.code is None:
            return None
        try:  # websockets decodes the reason before it checks the code
            self.reason.decode()
        except UnicodeDecodeError:
            return 1007
        if self.code not in SENDABLE_CLOSE and not 3000 <= self.code < 5000:
            return 1002
        return None


VIOLATIONS = ("reserved_opcode", "rsv_bit", "unmasked", "fragmented_control", "long_control",
              "orphan_continuation", "data_inside_fragmented", "one_byte_close")


@dataclass(frozen=True)
class Violation:
    kind: str

    def frames(self) -> bytes:
        k = self.kind
        if k == "reserved_opcode":
            return client_frame(RESERVED_OPCODES[len(k) % len(RESERVED_OPCODES)], b"x")
        if k == "rsv_bit":
            return client_frame(TEXT, b'{"type":"ping"}', rsv=4)
        if k == "unmasked":
            return client_frame(TEXT, b'{"type":"ping"}', masked=False)
        if k == "fragmented_control":
            return client_frame(PING, b"p", fin=False)
        if k == "long_control":
            return client_frame(PING, b"p" * 126)
        if k == "orphan_continuation":
            return client_frame(CONT, b'{"type":"ping"}')
        if k == "data_inside_fragmented":
            return (client_frame(TEXT, b'{"type":', fin=False)
                    + client_frame(TEXT, b'"ping"}'))
        if k == "one_byte_close":
            return client_frame(CLOSE, b"\x03")
        raise AssertionError(k)


Item = Msg | Control | ClientClose | Violation


# -- the oracle --------------------------------------------------------------------------------


def classify(payload: bytes, binary: bool) -> str:
    """'bad', 'ping', 'unknown' or 'command', as the gateway must see the message."""
    try:
        obj: dict[str, Any] = decode_client(payload, binary)
    except ClientMessageError:
        return "bad"
    kind = obj["type"]
    if kind == "ping":
        return "ping"
    return "command" if kind in KNOWN_TYPES else "unknown"


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class Expectation:
    counts: Counter[str] = field(default_factory=Counter)  # bad / ping / unknown / command
    control_pongs: list[bytes] = field(default_factory=list)
    close: int | None = None  # the code the server must fail the connection with
    echo: bytes | None = None  # the client's close payload, echoed
    open_at_end: bool = True
    racy: bool = False  # the ending depends on how the stream is cut into reads


# RFC 6455 8.1: a text message that is not UTF-8 fails the connection with 1007. websockets'
# Sans-I/O layer leaves that check to its caller; the gateway makes it on the whole message
# (so a ping between its fragments is still answered).
TEXT_UTF8_CLOSES = True


def expect(items: list[Item], max_size: int, utf8_closes: bool = TEXT_UTF8_CLOSES
           ) -> Expectation:
    exp = Expectation()
    # After a close the gateway decides itself (1007), it waits for the client's close frame:
    # websockets still answers pings meanwhile; messages get no reply.
    closing = False
    for item in items:
        if isinstance(item, Msg):
            cuts = sorted({c for c in item.cuts if 0 < c < len(item.payload)})
            first = item.payload[:cuts[0]] if cuts else item.payload
            pinged = item.ping_between is not None and bool(cuts)
            # websockets checks the size as each frame header arrives (fragments add up, and
            # a ping between fragments counts against what the message has left); the
            # gateway checks the UTF-8 of a whole text message.
            ping_fits = pinged and len(first) + len(item.ping_between or b"") <= max_size
            if len(item.payload) > max_size or (pinged and not ping_fits):
                if ping_fits:
                    exp.control_pongs.append(item.ping_between or b"")
                if closing:
                    exp.racy = True
                else:
                    exp.close = 1009
            else:
                if pinged:
                    exp.control_pongs.append(item.ping_between or b"")
                if closing:
                    continue
                if utf8_closes and not item.binary and not valid_utf8(item.payload):
                    exp.close = 1007
                    exp.open_at_end = False
                    closing = True
                    continue
                exp.counts[classify(item.payload, item.binary)] += 1
                continue
        elif isinstance(item, Control):
            if item.opcode == PING:
                exp.control_pongs.append(item.payload)
            continue
        elif closing:
            # A close or a violation that websockets fails on. If it arrives in the same read
            # as the message the gateway closes 1007 for, the gateway drops what was pending
            # (see test_gateway_fuzz.py, the close-flush test): outcome depends on TCP reads.
            exp.racy = True
        elif isinstance(item, ClientClose):
            verdict = item.verdict()
            if verdict is None:
                exp.echo = item.payload
            else:
                exp.close = verdict
        else:
            exp.close = 1002
        exp.open_at_end = False
        break
    return exp


def stream_bytes(items: list[Item]) -> bytes:
    return b"".join(item.frames() for item in items)


# -- checking what the gateway wrote -----------------------------------------------------------


@dataclass
class Observed:
    counts: Counter[str] = field(default_factory=Counter)  # reply kinds
    control_pongs: list[bytes] = field(default_factory=list)
    close: bytes | None = None  # payload of the server's close frame
    problems: list[str] = field(default_factory=list)


def strict_json(raw: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(raw, parse_constant=refuse)


def observe(frames: list[ServerFrame], msgpack_wire: bool, *, skip_welcome: bool) -> Observed:
    obs = Observed()
    data_frames = 0
    for f in frames:
        if obs.close is not None and f.opcode != PONG:  # pongs may follow (RFC 6455 5.5.1)
            obs.problems.append(f"frame after the close frame: opcode {f.opcode}")
            continue
        if f.masked or f.rsv or not f.fin:
            obs.problems.append(f"invalid server frame {f}")
        if f.opcode == CLOSE:
            obs.close = f.payload
        elif f.opcode == PONG:
            obs.control_pongs.append(f.payload)
        elif f.opcode in (TEXT, BINARY):
            want = BINARY if msgpack_wire else TEXT
            if f.opcode != want:
                obs.problems.append(f"data frame opcode {f.opcode} on a "
                                    f"{'msgpack' if msgpack_wire else 'JSON'} connection")
            try:
                msg = (msgpack.unpackb(f.payload, raw=False) if f.opcode == BINARY
                       else strict_json(f.payload))
            except Exception as exc:
                obs.problems.append(f"undecodable server message {f.payload[:100]!r}: {exc}")
                continue
            data_frames += 1
            if data_frames == 1 and skip_welcome:
                if not (isinstance(msg, dict) and msg.get("type") == "welcome"):
                    obs.problems.append(f"first message is not a welcome: {msg!r:.200}")
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind not in REPLY_TYPES:
                obs.problems.append(f"unknown reply {msg!r:.200}")
                continue
            if kind == "error":
                code, text = msg.get("code"), msg.get("message")
                if code not in ERROR_CODES or not isinstance(text, str) or not text:
                    obs.problems.append(f"unclear error {msg!r:.300}")
                if code == "bad_request" and isinstance(text, str) and text.startswith(
                        ("undecodable", "a message must be an object",
                         "a message needs a string 'type'")):
                    obs.counts["bad"] += 1
                elif code == "unknown_type":
                    obs.counts["unknown"] += 1
                else:
                    obs.counts["command error"] += 1
            elif kind == "pong":
                obs.counts["ping"] += 1
            else:
                obs.counts[kind] += 1
        else:
            obs.problems.append(f"unexpected server opcode {f.opcode}")
    return obs


def compare(exp: Expectation, obs: Observed, final_ping: bool) -> list[str]:
    """Differences between the prediction and what the gateway did."""
    problems = list(obs.problems)
    if exp.racy:
        return problems  # well-formed output is all that can be asked
    want_pings = exp.counts["ping"] + (1 if final_ping else 0)
    for kind, want in (("bad", exp.counts["bad"]), ("unknown", exp.counts["unknown"]),
                       ("ping", want_pings)):
        if obs.counts[kind] != want:
            problems.append(f"{kind}: expected {want} replies, got {obs.counts[kind]}")
    if obs.control_pongs != exp.control_pongs:
        problems.append(f"control pongs {obs.control_pongs!r:.200} != "
                        f"{exp.control_pongs!r:.200}")
    if exp.close is not None:
        got = struct.unpack("!H", obs.close[:2])[0] if obs.close and len(obs.close) >= 2 else None
        if got != exp.close:
            problems.append(f"expected close {exp.close}, got {obs.close!r}")
    elif exp.echo is not None:
        if obs.close != exp.echo:
            problems.append(f"expected the close echo {exp.echo!r}, got {obs.close!r}")
    elif obs.close is not None:
        problems.append(f"unexpected close {obs.close!r}")
    return problems


def close_code(payload: bytes | None) -> int | None:
    if payload is None or len(payload) < 2:
        return None
    return int(struct.unpack("!H", payload[:2])[0])


# -- strategies --------------------------------------------------------------------------------

def values(big_ints: bool) -> st.SearchStrategy[Any]:
    """JSON-like values; msgpack cannot carry integers beyond 64 bits, JSON can."""
    ints = st.integers(-(2**70), 2**70) if big_ints else st.integers(-(2**63), 2**64 - 1)
    leaf = st.one_of(st.none(), st.booleans(), ints,
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)


json_value = values(big_ints=True)
msgpack_value = values(big_ints=False)
channel_names = st.one_of(st.sampled_from(["room", "lobby", "a-b_c", "x" * 64]),
                          st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))


@st.composite
def command(draw: st.DrawFn, binary: bool) -> dict[str, Any]:
    """A protocol-shaped message: known or unknown type, fields right or wrong."""
    json_value = msgpack_value if binary else globals()["json_value"]
    cursor_values = st.one_of(
        st.none(), json_value,
        st.from_regex(r"[A-Za-z0-9]{0,12}:[0-9\u00b2]{0,5}", fullmatch=True),
        st.fixed_dictionaries({"epoch": json_value, "offset": json_value}))
    kind = draw(st.sampled_from([*KNOWN_TYPES, *KNOWN_TYPES, "nonsense", "", "PING",
                                 "welcome"]))
    msg: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        msg["channel"] = draw(st.one_of(channel_names, json_value))
    if kind == "subscribe" and draw(st.booleans()):
        msg["cursor"] = draw(cursor_values)
    if kind == "publish":
        if draw(st.booleans()):
            msg["data"] = draw(json_value)
        if draw(st.booleans()):
            msg["id"] = draw(json_value)
    if draw(st.booleans()):
        msg.update(draw(st.dictionaries(st.text(max_size=6), json_value, max_size=2)))
        msg["type"] = kind
    return msg


def deep(depth: int) -> bytes:
    # Far from any recursion limit, or far beyond every one: the verdict cannot depend on
    # the depth of the Python stack it is decoded on.
    return b'{"type":"subscribe","channel":' + b"[" * depth + b"]" * depth + b"}"


@st.composite
def payload(draw: st.DrawFn, max_size: int) -> tuple[bool, bytes]:
    """(binary, payload) of one data message."""
    binary = draw(st.booleans())
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        obj = draw(command(binary))
        if binary:
            return True, msgpack.packb(obj, use_bin_type=True)
        return False, json.dumps(obj).encode()
    if choice == 4:
        value = draw(msgpack_value if binary else json_value)
        return binary, (msgpack.packb(value, use_bin_type=True) if binary
                        else json.dumps(value).encode())
    if choice == 5:
        return binary, draw(st.binary(max_size=64))
    if choice == 6:  # invalid UTF-8 in a text frame is 1007; fine in a binary one
        return binary, draw(st.sampled_from([b"\xff", b'{"type":"\xc3"}', b"\xed\xa0\x80",
                                             b"ok\xf0\x9f\x98"]))
    if choice == 7:  # around the size limit (ASCII: only the size can be wrong)
        n = draw(st.sampled_from([max_size - 1, max_size, max_size + 1, 2 * max_size]))
        return False, b'{"type":"ping","pad":"' + b"p" * max(0, n - 24) + b'"}'
    if choice == 8:
        return False, deep(draw(st.sampled_from([10, 200, 400, 5000, 50000])))
    # msgpack oddities: ext types, non-str keys, bin values, huge ints, truncated data
    raw = draw(st.sampled_from([
        msgpack.packb({"type": "ping", "x": msgpack.ExtType(5, b"e")}),
        msgpack.packb({1: 2, "type": "ping"}, strict_types=False),
        msgpack.packb({"type": b"ping"}, use_bin_type=True),
        msgpack.packb({"type": "publish", "channel": "room", "data": 2**64 - 1, "id": -2**63}),
        msgpack.packb({"type": "ping"})[:-1],
        b"\xc1",
        msgpack.packb([{"type": "ping"}]),
    ]))
    return True, raw


@st.composite
def item(draw: st.DrawFn, max_size: int) -> Item:
    kind = draw(st.integers(0, 19))
    if kind <= 12:
        binary, data = draw(payload(max_size))
        cuts: tuple[int, ...] = ()
        ping = None
        if data and draw(st.booleans()):
            cuts = tuple(sorted(draw(st.lists(st.integers(1, max(1, len(data) - 1)),
                                              max_size=3))))
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=8))
        return Msg(binary, data, cuts, ping)
    if kind <= 15:
        return Control(draw(st.sampled_from([PING, PONG])), draw(st.binary(max_size=125)))
    if kind <= 17:
        code = draw(st.one_of(st.none(), st.sampled_from(SENDABLE_CLOSE),
                              st.sampled_from(UNSENDABLE_CLOSE)))
        reason = draw(st.one_of(st.just(b""), st.text(max_size=20).map(str.encode),
                                st.just(b"\xff")))
        return ClientClose(code, reason if code is not None else b"")
    return Violation(draw(st.sampled_from(VIOLATIONS)))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *[c for c in cuts if 0 < c < len(data)]})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


FINAL_PING = client_frame(TEXT, b'{"type":"ping"}')
