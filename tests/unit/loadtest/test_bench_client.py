"""The bench client's protocol driven bytes-in/bytes-out, without sockets."""

from __future__ import annotations

import json
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from loadtest.bench import frames
from loadtest.bench.client import Fleet, Peer, WsClient


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def text(obj: Any) -> bytes:
    return Frame(Opcode.TEXT, json.dumps(obj).encode()).serialize(mask=False)


def upgrade(client: WsClient) -> bytes:
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(client.key)}\r\n\r\n"
            ).encode()


def welcome(session: str = "S1", offset: int = 7) -> dict[str, Any]:
    return {"type": "welcome", "session": session, "gateway": "gw-a", "user": "u",
            "resumed": False, "recovered": False,
            "streams": {"broadcast": {"epoch": "E", "offset": offset}}}


def message(offset: int, ts: float = 1.0) -> dict[str, Any]:
    return {"type": "message", "stream": "broadcast", "epoch": "E", "offset": offset,
            "data": {"ts": ts}}


def connect(fleet: Fleet, peer: Peer) -> tuple[WsClient, FakeTransport]:
    client = WsClient(fleet, peer, "/ws?token=t")
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport


async def test_upgrade_welcome_then_messages_are_counted_and_tracked() -> None:
    fleet = Fleet(source_ip="127.0.0.1", host="127.0.0.1", port=1)
    peer = fleet.add_peers(["token=t"], parse_every=1, track=True)[0]
    client, transport = connect(fleet, peer)
    assert transport.written[0].startswith(b"GET /ws?token=t HTTP/1.1\r\n")
    # the 101, the welcome and two messages may all arrive in one read
    client.data_received(upgrade(client) + text(welcome()) + text(message(8)) + text(message(9)))
    assert client.ready is None and peer.connected and peer.gateway == "gw-a"
    assert fleet.messages == 2 and fleet.open_now == 1
    assert peer.state.cursor() == "broadcast:E:9"
    assert fleet.latency.seen == 2


async def test_counting_peers_skip_decoding_and_still_count() -> None:
    fleet = Fleet(source_ip="127.0.0.1", host="127.0.0.1", port=1)
    peer = fleet.add_peers(["token=t"], parse_every=0, track=False)[0]
    client, _ = connect(fleet, peer)
    client.data_received(upgrade(client) + text(welcome()))
    client.data_received(text(message(8)) + text(message(9)) + text(message(10)))
    assert fleet.messages == 3 and fleet.latency.seen == 0


async def test_ping_is_answered_with_a_masked_pong() -> None:
    fleet = Fleet(source_ip="127.0.0.1", host="127.0.0.1", port=1)
    peer = fleet.add_peers(["token=t"], parse_every=0, track=False)[0]
    client, transport = connect(fleet, peer)
    client.data_received(upgrade(client) + text(welcome()))
    client.data_received(Frame(Opcode.PING, b"sb").serialize(mask=False))
    pong = transport.written[-1]
    assert pong[0] == 0x80 | frames.OP_PONG and pong[1] & 0x80


async def test_resume_reconnect_carries_session_and_cursor() -> None:
    fleet = Fleet(source_ip="127.0.0.1", host="127.0.0.1", port=1)
    peer = fleet.add_peers(["token=t"], parse_every=1, track=True)[0]
    client, _ = connect(fleet, peer)
    client.data_received(upgrade(client) + text(welcome("Sx", 7)) + text(message(8)))
    client.connection_lost(None)
    assert not peer.connected and fleet.closes == {"eof": 1}
    again = WsClient(fleet, peer, f"/ws?{peer.query}&{peer.state.resume_query()}")
    assert again.target == "/ws?token=t&session=Sx&cursor=broadcast:E:8"
    # the gateway replays 9 with a publish time before this welcome: counted as replayed
    again.connection_made(FakeTransport())  # type: ignore[arg-type]
    resumed = {**welcome("Sx", 8), "resumed": True, "recovered": True}
    again.data_received(upgrade(again) + text(resumed))
    again.data_received(text(message(9, ts=0.0)) + text(message(9, ts=0.0)))
    assert fleet.resumed and fleet.replayed == 1 and fleet.duplicates == 1
    assert peer.state.audit("broadcast", 9) == {"lost": 0, "duplicates": 1, "received": 2,
                                                "epoch_changes": 0}


async def test_refusal_with_retry_after_sets_the_hint() -> None:
    fleet = Fleet(source_ip="127.0.0.1", host="127.0.0.1", port=1)
    peer = fleet.add_peers(["token=t"], parse_every=0, track=False)[0]
    client, transport = connect(fleet, peer)
    assert client.ready is not None
    client.data_received(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\n\r\n")
    assert peer.hint_ms == 2000 and transport.closed
    assert isinstance(client.ready.exception(), ConnectionError)
