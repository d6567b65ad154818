from __future__ import annotations

import pytest

from switchboard import contract, streams
from switchboard.contract import Control, EnvelopeError, Message
from switchboard.streams import CursorError, Position


def test_cursor_round_trip() -> None:
    positions = {"user": Position("Ab1", 5), "broadcast": Position("Zz9", 0), "ch.room-1":
                 Position("Q", 12)}
    assert streams.parse_cursor(streams.format_cursor(positions)) == positions


@pytest.mark.parametrize("bad", ["user:E", "nope:E:1", "user:E:-1", "user:E!:1", "user:E:x"])
def test_bad_cursors_are_rejected_with_a_reason(bad: str) -> None:
    with pytest.raises(CursorError):
        streams.parse_cursor(bad)


def test_keys_share_a_hash_tag_per_stream() -> None:
    keys = contract.Keys("sb:")
    assert keys.log("u:alice") == "sb:{u:alice}:log"
    assert keys.meta("u:alice") == "sb:{u:alice}:meta"
    assert keys.conns("alice") == "sb:{u:alice}:conns"


def test_envelopes_round_trip_and_garbage_is_refused() -> None:
    m = Message("c:room", "E", 3, 1700000000000, {"x": b"\x01"})
    assert contract.unpack(contract.pack_message(m)) == m
    assert contract.unpack(contract.pack_control("disconnect", "bob", 4201, "bye")) == Control(
        "disconnect", ("bob", 4201, "bye"))
    for garbage in (b"", b"\xc1", contract.pack_control("x")[:1], b"\x93\x01\x02\x03"):
        with pytest.raises(EnvelopeError):
            contract.unpack(garbage)


def test_user_ids_exclude_our_separators() -> None:
    assert streams.valid_user("alice@example.com")
    for bad in ("", "a b", "a,b", "a:b", "x" * 129, 5, "a\ud800"):  # lone surrogate
        assert not streams.valid_user(bad)
    assert streams.valid_user("zoë\U0001f600")  # astral characters are fine
