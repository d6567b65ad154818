"""The bench client's resume bookkeeping: session, cursor, exactly-once accounting."""

from __future__ import annotations

from urllib.parse import parse_qs

from loadtest.bench.resume import DUPLICATE, GAP, NEW, ResumeState


def welcome(session: str = "S1", *, recovered: bool = False,
            **streams: tuple[str, int]) -> dict[str, object]:
    return {"type": "welcome", "session": session, "recovered": recovered,
            "streams": {k: {"epoch": e, "offset": o} for k, (e, o) in streams.items()}}


def test_first_welcome_positions_every_stream() -> None:
    s = ResumeState()
    assert s.resume_query() == ""
    s.on_welcome(welcome(user=("ue", 4), broadcast=("be", 10)))
    assert s.session == "S1"
    assert s.cursor() == "user:ue:4,broadcast:be:10"


def test_messages_advance_and_duplicates_and_gaps_are_counted() -> None:
    s = ResumeState()
    s.on_welcome(welcome(broadcast=("be", 10)))
    assert s.on_message("broadcast", "be", 11) == NEW
    assert s.on_message("broadcast", "be", 11) == DUPLICATE
    assert s.on_message("broadcast", "be", 14) == GAP
    assert s.audit("broadcast", 14) == {"lost": 2, "duplicates": 1, "received": 2,
                                        "epoch_changes": 0}


def test_resume_query_carries_session_and_cursor() -> None:
    s = ResumeState()
    s.on_welcome(welcome("Sess9", user=("ue", 0), broadcast=("be", 3)))
    s.on_message("broadcast", "be", 4)
    q = parse_qs(s.resume_query())
    assert q["session"] == ["Sess9"]
    assert q["cursor"] == ["user:ue:0,broadcast:be:4"]


def test_recovered_resume_loses_nothing() -> None:
    s = ResumeState()
    s.on_welcome(welcome(broadcast=("be", 10)))
    s.on_message("broadcast", "be", 11)
    # reconnect: the gateway positions us at our cursor and replays 12..13
    s.on_welcome(welcome(recovered=True, broadcast=("be", 11)))
    s.on_message("broadcast", "be", 12)
    s.on_message("broadcast", "be", 13)
    assert s.unrecovered == 0
    assert s.audit("broadcast", 13) == {"lost": 0, "duplicates": 0, "received": 3,
                                        "epoch_changes": 0}


def test_unrecovered_resume_counts_the_skipped_offsets_as_lost() -> None:
    s = ResumeState()
    s.on_welcome(welcome(broadcast=("be", 10)))
    s.on_welcome(welcome(recovered=False, broadcast=("be", 15)))
    assert s.unrecovered == 1
    assert s.audit("broadcast", 15)["lost"] == 5


def test_messages_not_yet_received_count_against_the_final_top() -> None:
    s = ResumeState()
    s.on_welcome(welcome(broadcast=("be", 0)))
    s.on_message("broadcast", "be", 1)
    assert s.audit("broadcast", 3)["lost"] == 2


def test_epoch_change_is_reported() -> None:
    s = ResumeState()
    s.on_welcome(welcome(broadcast=("old", 5)))
    assert s.on_message("broadcast", "new", 1) == GAP
    assert s.audit("broadcast", 1)["epoch_changes"] == 1
