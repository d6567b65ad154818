"""Our prebuilt server frames must be exactly what websockets' own parser accepts."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway import wire
from gateway.wire import ClientMessageError, Outgoing, decode_client
from switchboard.contract import Message
from tests.support import one_frame


def parse_frame(data: bytes) -> Frame:
    return one_frame(data, mask=False)


@given(st.binary(max_size=70_000))
def test_frames_of_every_length_class_parse_back(payload: bytes) -> None:
    frame = parse_frame(wire.frame(0x82, payload))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_length_boundaries(size: int) -> None:
    assert parse_frame(wire.frame(0x81, b"x" * size)).data == b"x" * size


def test_outgoing_encodes_once_and_both_formats_carry_the_same_message() -> None:
    out = Outgoing(Message("u:alice", "E1", 7, 123, {"k": [1, "two"]}))
    assert out.text_frame is out.text_frame  # cached: the same bytes for every recipient
    text = json.loads(parse_frame(out.text_frame).data)
    binary = msgpack.unpackb(parse_frame(out.msgpack_frame).data)
    expected = {"type": "message", "stream": "user", "epoch": "E1", "offset": 7,
                "data": {"k": [1, "two"]}}
    assert text == expected == binary


def test_binary_payload_reaches_json_clients_as_base64() -> None:
    out = Outgoing(Message("b", "E", 1, 0, b"\x00\xff"))
    assert json.loads(out.json)["data"] == "AP8="


def test_sse_tail_is_a_single_event_without_raw_newlines_in_data() -> None:
    out = Outgoing(Message("b", "E", 1, 0, "line1\nline2"))
    tail = out.sse_tail.decode()
    assert tail.startswith("event: message\ndata: ") and tail.endswith("\n\n")
    assert tail.count("\n") == 3


@pytest.mark.parametrize(
    ("payload", "binary"),
    [(b"{", False), (b"[1]", False), (b'{"type": 3}', False), (b"\xc1", True),
     (msgpack.packb([1]), True), (b'"x"', False)],
)
def test_malformed_client_messages_are_rejected_with_a_reason(payload: bytes, binary: bool) -> None:
    with pytest.raises(ClientMessageError):
        decode_client(payload, binary)


def test_client_messages_decode_from_either_format() -> None:
    assert decode_client(b'{"type":"ping"}', False) == {"type": "ping"}
    assert decode_client(msgpack.packb({"type": "ping"}), True) == {"type": "ping"}
