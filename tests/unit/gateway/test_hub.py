from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.hub import Hub
from gateway.session import Session
from gateway.wire import KIND, Outgoing, Wire
from switchboard.contract import Message
from switchboard.streams import Position


@dataclass
class FakeTransport:
    wire: Wire
    sent: list[Outgoing] = field(default_factory=list)

    @property
    def kind(self) -> int:
        return KIND[self.wire]

    def send(self, out: Outgoing) -> None:
        self.sent.append(out)

    def send_obj(self, obj: dict[str, Any]) -> None:
        pass

    def close(self, code: int, reason: str = "") -> None:
        pass


@dataclass
class FakeClient:
    conn_id: str
    session: Session
    transport: FakeTransport


def client(conn_id: str, user: str, wire: Wire = Wire.JSON) -> FakeClient:
    s = Session("S" + conn_id, user)
    s.follow(f"u:{user}", Position("U", 0))
    s.follow("b", Position("B", 0))
    s.start()
    return FakeClient(conn_id, s, FakeTransport(wire))


def test_unicast_reaches_every_connection_of_the_user_and_nobody_else() -> None:
    hub = Hub()
    a1, a2, b1 = client("1", "alice"), client("2", "alice", Wire.SSE), client("3", "bob")
    for c in (a1, a2, b1):
        hub.add(c)
    counts = hub.deliver(Message("u:alice", "U", 1, 0, "hi"))
    assert [len(c.transport.sent) for c in (a1, a2, b1)] == [1, 1, 0]
    assert counts[KIND[Wire.JSON]] == 1 and counts[KIND[Wire.SSE]] == 1
    # Encoded once: both recipients were handed the very same object.
    assert a1.transport.sent[0] is a2.transport.sent[0]


def test_broadcast_reaches_everyone_and_removed_clients_get_nothing() -> None:
    hub = Hub()
    a, b = client("1", "alice"), client("2", "bob")
    hub.add(a)
    hub.add(b)
    assert hub.remove(b) == []
    assert b not in hub
    hub.deliver(Message("b", "B", 1, 0, "all"))
    assert len(a.transport.sent) == 1 and not b.transport.sent
    assert hub.user_clients("bob") == []


def test_channel_messages_reach_subscribers_only_and_the_last_leaver_is_reported() -> None:
    hub = Hub()
    a, b, c = client("1", "alice"), client("2", "bob"), client("3", "carol")
    for x in (a, b, c):
        hub.add(x)
    for x in (a, b):
        x.session.follow("c:room", Position("C", 0))
    assert hub.subscribe(a, "c:room") is True  # first local subscriber
    assert hub.subscribe(b, "c:room") is False
    hub.deliver(Message("c:room", "C", 1, 0, "hi"))
    assert [len(x.transport.sent) for x in (a, b, c)] == [1, 1, 0]
    assert hub.unsubscribe(a, "c:room") is False
    assert hub.remove(b) == ["c:room"]  # b was the last one: the gateway may unsubscribe
    assert hub.channel_keys() == []
