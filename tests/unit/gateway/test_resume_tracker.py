from __future__ import annotations

from gateway import resume
from gateway.tracker import Fill, Tracker
from switchboard.contract import Message
from switchboard.streams import Position

U, B = "u:alice", "b"


def msgs(key: str, epoch: str, offsets: range) -> list[Message]:
    return [Message(key, epoch, o, 0, o) for o in offsets]


def test_fresh_connection_starts_at_the_top_and_is_not_a_recovery() -> None:
    plans = resume.plan({}, {U: Position("E", 5)}, 1000)
    out = resume.settle(plans, {})
    assert out.start == {U: Position("E", 5)} and not out.recovered and out.replay == []


def test_cursor_within_the_log_replays_exactly_the_missing_offsets() -> None:
    plans = resume.plan({"user": Position("E", 2), "broadcast": Position("B", 9)},
                        {U: Position("E", 5), B: Position("B", 9)}, 1000)
    assert [p.replay_from for p in plans] == [3, 0]
    out = resume.settle(plans, {U: msgs(U, "E", range(3, 6))})
    assert out.recovered and out.unrecovered == ()
    assert [m.offset for m in out.replay] == [3, 4, 5]
    assert out.start[U] == Position("E", 2)


def test_trimmed_log_is_not_recovered_and_positions_at_top() -> None:
    plans = resume.plan({"user": Position("E", 2)}, {U: Position("E", 50)}, 1000)
    out = resume.settle(plans, {U: msgs(U, "E", range(10, 51))})  # 3..9 were trimmed
    assert not out.recovered and out.unrecovered == ("user",)
    assert out.start[U] == Position("E", 50) and out.replay == []


def test_expired_log_changed_epoch_and_too_far_behind_are_not_recovered() -> None:
    tops = {U: Position("E", 50)}
    expired = resume.settle(resume.plan({"user": Position("E", 2)}, tops, 1000), {U: []})
    new_epoch = resume.settle(resume.plan({"user": Position("OLD", 2)}, tops, 1000), {})
    behind = resume.settle(resume.plan({"user": Position("E", 2)}, tops, 10), {})
    ahead = resume.settle(resume.plan({"user": Position("E", 99)}, tops, 1000), {})
    for out in (expired, new_epoch, behind, ahead):
        assert not out.recovered and out.start[U] == Position("E", 50)


def test_up_to_date_cursor_is_recovered_without_reading() -> None:
    plans = resume.plan({"user": Position("E", 5)}, {U: Position("E", 5)}, 1000)
    assert not plans[0].needs_log
    assert resume.settle(plans, {}).recovered


def test_tracker_fills_a_live_gap_in_order_holding_later_messages() -> None:
    t = Tracker()
    t.follow(B, Position("E", 1))
    assert t.live(Message(B, "E", 2, 0, 2)) == ([Message(B, "E", 2, 0, 2)], None)
    now, fill = t.live(Message(B, "E", 5, 0, 5))
    assert now == [] and fill == Fill(B, "E", 3, 4)
    assert t.live(Message(B, "E", 6, 0, 6)) == ([], None)  # waits behind the fill
    out, more = t.complete(fill, msgs(B, "E", range(3, 5)))
    assert [m.offset for m in out] == [3, 4, 5, 6] and more is None
    assert t.position(B) == Position("E", 6) and t.filled == 1


def test_tracker_catch_up_after_a_pubsub_outage() -> None:
    t = Tracker()
    t.follow(U, Position("E", 3))
    t.hold_all()
    steps = t.catch_up(t.reading(), {U: Position("E", 7)})
    assert steps.fills == [Fill(U, "E", 4, 7)] and steps.ready == []
    t.live(Message(U, "E", 8, 0, 8))  # arrives live during the catch-up
    out, more = t.complete(steps.fills[0], msgs(U, "E", range(4, 7)))  # 7 not returned
    assert [m.offset for m in out] == [4, 5, 6, 8] and more is None
    assert t.unfilled == 1
    again = t.catch_up(t.reading(), {U: Position("E", 8)})  # nothing missing any more
    assert again.fills == [] and again.ready == []


def test_tracker_does_not_move_existing_positions_on_follow() -> None:
    t = Tracker()
    t.follow(B, Position("E", 2))
    t.follow(B, Position("E", 9))  # a new client saw a later top: 3..9 may be in flight
    assert [m.offset for m in t.live(Message(B, "E", 3, 0, 3))[0]] == [3]
