"""The bench's raw WebSocket framing agrees with websockets' own implementation."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from loadtest.bench import frames
from tests.support import one_frame


def server_bytes(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=False)


def parse_as_server(data: bytes) -> Frame:
    """What a websockets server makes of bytes our client sends."""
    return one_frame(data, mask=True)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_parses_every_length_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert frames.FrameParser().feed(server_bytes(Opcode.BINARY, payload)) == [
        (frames.OP_BINARY, payload)
    ]


def test_byte_by_byte_feed_yields_each_message_once_complete() -> None:
    stream = (server_bytes(Opcode.TEXT, b'{"type":"welcome"}')
              + server_bytes(Opcode.TEXT, b"x" * 300)
              + server_bytes(Opcode.PING, b"sb"))
    parser = frames.FrameParser()
    out = []
    for i in range(len(stream)):
        out += parser.feed(stream[i:i + 1])
    assert out == [(frames.OP_TEXT, b'{"type":"welcome"}'), (frames.OP_TEXT, b"x" * 300),
                   (frames.OP_PING, b"sb")]


def test_many_frames_in_one_read_as_coalesced_writes_deliver_them() -> None:
    stream = b"".join(server_bytes(Opcode.TEXT, f'{{"n":{i}}}'.encode()) for i in range(50))
    got = frames.FrameParser().feed(stream)
    assert [p for _, p in got] == [f'{{"n":{i}}}'.encode() for i in range(50)]


def test_fragments_are_joined_and_control_frames_pass_between_them() -> None:
    stream = (server_bytes(Opcode.TEXT, b"hel", fin=False)
              + server_bytes(Opcode.PING, b"p")
              + server_bytes(Opcode.CONT, b"lo", fin=False)
              + server_bytes(Opcode.CONT, b"!", fin=True))
    assert frames.FrameParser().feed(stream) == [(frames.OP_PING, b"p"),
                                                 (frames.OP_TEXT, b"hello!")]


def test_masked_server_frame_is_a_protocol_error() -> None:
    with pytest.raises(frames.ProtocolError):
        frames.FrameParser().feed(Frame(Opcode.TEXT, b"hi").serialize(mask=True))


def test_continuation_without_start_is_a_protocol_error() -> None:
    with pytest.raises(frames.ProtocolError):
        frames.FrameParser().feed(server_bytes(Opcode.CONT, b"x"))


def test_close_payload_round_trips() -> None:
    got = frames.FrameParser().feed(Frame(Opcode.CLOSE, frames.close_payload(4108, "slow"))
                                    .serialize(mask=False))
    assert got[0][0] == frames.OP_CLOSE
    assert frames.parse_close(got[0][1]) == (4108, "slow")
    assert frames.parse_close(b"") == (1005, "")


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65536])
def test_client_frames_are_masked_and_readable_by_websockets(size: int) -> None:
    payload = b"\x00\xffab" * (size // 4) + b"z" * (size % 4)
    raw = frames.client_frame(frames.OP_BINARY, payload)
    assert raw[1] & 0x80, "RFC 6455 5.3: client frames must be masked"
    frame = parse_as_server(raw)
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


def test_handshake_checks_the_accept_key() -> None:
    key = frames.new_key()
    head = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}").encode()
    frames.check_handshake(head, key)
    with pytest.raises(frames.HandshakeError):
        frames.check_handshake(head, frames.new_key())


def test_refusal_keeps_status_and_retry_after() -> None:
    with pytest.raises(frames.HandshakeError) as err:
        frames.check_handshake(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3", "k")
    assert err.value.status == 429 and err.value.retry_after == 3.0


def test_split_head_waits_for_the_blank_line() -> None:
    assert frames.split_head(b"HTTP/1.1 101 OK\r\nA: b\r\n") is None
    assert frames.split_head(b"HTTP/1.1 101 OK\r\n\r\n\x81\x00") == (b"HTTP/1.1 101 OK",
                                                                     b"\x81\x00")


def test_request_asks_for_an_upgrade_with_the_query() -> None:
    req = frames.handshake_request("127.0.0.1", 8080, "/ws?token=t", "a2V5", "switchboard.v1.json")
    assert req.startswith(b"GET /ws?token=t HTTP/1.1\r\n") and req.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Key: a2V5\r\n" in req
    assert b"Sec-WebSocket-Protocol: switchboard.v1.json\r\n" in req


def test_skim_counts_whole_data_frames_and_defers_everything_else() -> None:
    whole = server_bytes(Opcode.TEXT, b"a" * 10) + server_bytes(Opcode.BINARY, b"b" * 300)
    parser = frames.FrameParser()
    assert parser.skim(whole) == 2
    assert parser.skim(whole[:-1]) == -1  # cut short
    assert parser.skim(whole + server_bytes(Opcode.PING, b"")) == -1  # control frame
    assert parser.skim(server_bytes(Opcode.TEXT, b"x", fin=False)) == -1  # fragment
    assert parser.skim(server_bytes(Opcode.TEXT, b"x" * 70000)) == -1  # 64-bit length
    assert parser.skim(b"") == 0
    parser.feed(whole[:5])  # leftovers: only feed may continue from them
    assert parser.skim(whole[5:]) == -1
    assert parser.feed(whole[5:]) == [(frames.OP_TEXT, b"a" * 10), (frames.OP_BINARY, b"b" * 300)]
