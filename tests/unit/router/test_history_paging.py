"""The history API's decisions, without a server or Redis: where a page starts, what it says
about lost history, where the next one starts, and how ``since`` is read."""

from __future__ import annotations

import pytest

from router import errors, models
from router.messages import make_page, page_body, page_query, start_offset
from router.validation import SINCE_RE, parse_since
from switchboard.contract import Message
from switchboard.store import PageQuery
from switchboard.streams import Position

TOP = Position("E2", 250)


def log(first: int, last: int, epoch: str = "E2") -> list[Message]:
    return [Message("c:room", epoch, n, 1_700_000_000_000 + n, {"n": n})
            for n in range(first, last + 1)]


def since(epoch: str, offset: int) -> PageQuery:
    return PageQuery("since", Position(epoch, offset))


@pytest.mark.parametrize(
    ("query", "start"),
    [
        (since("E2", 0), 1),
        (since("E2", 100), 101),
        (since("E2", 250), 251),  # at the top: nothing to read
        (since("E2", 251), 1),  # above the top: the same as an epoch change
        (since("E1", 100), 1),  # another epoch: from the current epoch's first
        (PageQuery("last", last=10), 241),
        (PageQuery("last", last=1000), 1),
        (PageQuery(), 1),
    ],
)
def test_where_a_page_starts(query: PageQuery, start: int) -> None:
    assert start_offset(query, TOP) == start


def test_a_full_log_pages_contiguously_to_the_top() -> None:
    first = make_page(since("E2", 0), TOP, log(1, 100))
    assert [m.offset for m in first.messages] == list(range(1, 101))
    assert (first.next, first.complete) == (Position("E2", 100), True)
    last = make_page(since("E2", 200), TOP, log(201, 250))
    assert (last.next, last.complete, last.lost) == (None, True, None)
    caught_up = make_page(since("E2", 250), TOP, [])
    assert (caught_up.messages, caught_up.next, caught_up.complete) == ([], None, True)


def test_a_trimmed_log_is_incomplete_and_starts_at_the_first_kept() -> None:
    page = make_page(since("E2", 10), TOP, log(150, 249))
    assert (page.lost, page.messages[0].offset, page.next) == ("trimmed", 150,
                                                                Position("E2", 249))
    assert make_page(PageQuery("last", last=200), TOP, log(150, 250)).lost == "trimmed"
    assert make_page(PageQuery(), TOP, log(150, 250)).lost == "trimmed"
    expired = make_page(since("E2", 10), TOP, [])
    assert (expired.messages, expired.next, expired.lost) == ([], None, "trimmed")


def test_another_epoch_or_a_since_above_the_top_is_an_epoch_change() -> None:
    for query in (since("E1", 10), since("E2", 300)):
        page = make_page(query, TOP, log(1, 100))
        assert (page.lost, page.messages[0].offset) == ("epoch_changed", 1)
        assert page.next == Position("E2", 100)
    fresh = make_page(since("E1", 10), Position("E2", 0), [])
    assert (fresh.complete, fresh.lost, fresh.next) == (False, "epoch_changed", None)


def test_a_page_stops_at_a_hole_and_never_shows_another_epoch() -> None:
    holed = make_page(since("E2", 0), TOP, [*log(1, 5), *log(8, 10)])
    assert [m.offset for m in holed.messages] == [1, 2, 3, 4, 5]
    assert holed.next == Position("E2", 5)
    # the next page starts at the hole and says what is missing
    assert make_page(since("E2", 5), TOP, log(8, 10)).lost == "trimmed"
    foreign = make_page(since("E2", 0), TOP, [*log(1, 2, epoch="E1"), *log(1, 3)])
    assert [(m.epoch, m.offset) for m in foreign.messages] == [("E2", 1), ("E2", 2), ("E2", 3)]


def test_the_answer_has_the_documented_fields() -> None:
    body = page_body("ch.room", make_page(since("E2", 248), TOP, log(249, 250)))
    assert set(body) == set(models.MessagesPage.model_fields)
    assert set(body["messages"][0]) == set(models.LoggedMessage.model_fields)
    assert body["next"] is None
    assert body["top"] == {"epoch": "E2", "offset": 250}
    models.MessagesPage.model_validate(body)
    middle = page_body("ch.room", make_page(since("E2", 0), TOP, log(1, 100)))
    assert middle["next"] == "E2:100"
    assert parse_since(middle["next"]) == Position("E2", 100)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("E2:0", Position("E2", 0)),
        ("abcXYZ019:42", Position("abcXYZ019", 42)),
        ("E2:" + "9" * 18, Position("E2", 10**18 - 1)),
    ],
)
def test_since_positions(text: str, position: Position) -> None:
    assert parse_since(text) == position
    assert SINCE_RE.fullmatch(text)


@pytest.mark.parametrize(
    "text",
    ["", "E2", "E2:", ":5", "E2:-1", "E2:1.5", "E-2:1", "E2:" + "9" * 19, "E2:\u0661",
     "e" * 33 + ":1", "user:E2:1", "ch.room:E2:1", "E2:1\n", "E2:1,E3:2"],
)
def test_bad_since_is_a_422(text: str) -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_since(text)
    assert (exc.value.status, exc.value.field) == (422, "since")


def test_since_and_last_are_exclusive() -> None:
    assert page_query(None, None) == PageQuery()
    assert page_query("E2:3", None) == since("E2", 3)
    assert page_query(None, 5) == PageQuery("last", last=5)
    with pytest.raises(errors.InvalidField):
        page_query("E2:3", 5)
