from __future__ import annotations

from gateway.session import DUPLICATE, HELD, NEXT, NOT_FOLLOWED, Session
from gateway.wire import Outgoing
from switchboard.contract import Message
from switchboard.streams import Position


def out(offset: int, epoch: str = "E", key: str = "b") -> Outgoing:
    return Outgoing(Message(key, epoch, offset, 0, offset))


def ready_session(top: int = 0) -> Session:
    s = Session("S", "alice")
    s.follow("b", Position("E", top))
    s.start()
    return s


def test_messages_racing_the_welcome_are_held_then_only_news_is_delivered() -> None:
    s = Session("S", "alice")
    for o in (1, 2, 3):
        assert s.offer(out(o)) == HELD  # held until the welcome is out
    s.follow("b", Position("E", 2))  # the welcome reported top = 2
    assert [o.message.offset for o in s.start()] == [3]


def test_duplicates_are_dropped_and_offsets_advance() -> None:
    s = ready_session()
    assert s.offer(out(1)) == NEXT
    assert s.offer(out(1)) == DUPLICATE
    assert s.offer(out(2)) == NEXT
    assert s.positions["b"] == Position("E", 2)


def test_a_jump_is_delivered_and_reported_as_a_gap() -> None:
    s = ready_session()
    assert s.offer(out(4)) == NEXT + 3  # delivered, three missing before it


def test_new_epoch_repositions_the_stream() -> None:
    s = ready_session(top=10)
    assert s.offer(out(1, epoch="F")) == NEXT
    assert s.positions["b"] == Position("F", 1)


def test_streams_not_followed_are_ignored() -> None:
    s = ready_session()
    assert s.offer(out(1, key="u:bob")) == NOT_FOLLOWED


def test_cursor_lists_every_stream_by_wire_name() -> None:
    s = Session("S", "alice")
    s.follow("u:alice", Position("A", 3))
    s.follow("b", Position("B", 9))
    assert s.cursor() == "user:A:3,broadcast:B:9"


def test_joining_a_channel_holds_its_messages_until_the_position_is_known() -> None:
    s = ready_session()
    s.begin_join("c:room")
    assert s.offer(out(5, "C", "c:room")) == HELD  # waits for the subscribe to finish
    replay = [out(o, "C", "c:room") for o in (3, 4, 5)]
    got = s.finish_join("c:room", Position("C", 2), replay)
    assert [o.message.offset for o in got] == [3, 4, 5]  # 5 once, though it came twice
    assert s.channels == ["c:room"]
    s.leave("c:room")
    assert s.offer(out(6, "C", "c:room")) == NOT_FOLLOWED and s.channels == []
