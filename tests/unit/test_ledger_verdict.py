"""The loss checker of the fault tests must itself catch loss: what it excuses, and what not."""

from __future__ import annotations

from tests.integration.ledger import verdict

Acks = list[tuple[str, int, str]]


def acks(*epochs: tuple[str, int]) -> Acks:
    """``count`` acknowledged messages per epoch, in publish order."""
    out: Acks = []
    for epoch, count in epochs:
        out += [(epoch, o, f"{epoch}#{o}") for o in range(1, count + 1)]
    return out


def test_everything_received_is_clean() -> None:
    a = acks(("A", 5), ("B", 3))
    assert verdict(a, a) == []


def test_the_rest_of_an_epoch_the_client_moved_on_from_is_excused() -> None:
    a = acks(("A", 5), ("B", 3))
    got = a[:2] + a[5:]  # A:1..2, then the new epoch from 1
    assert verdict(got, a) == []


def test_an_epoch_skipped_on_the_way_to_a_later_one_is_excused() -> None:
    a = acks(("A", 3), ("B", 3), ("C", 2))
    got = a[:3] + a[6:]  # Redis lost B's log before the gateway could read it
    assert verdict(got, a) == []


def test_an_epoch_after_the_one_the_client_ended_in_is_owed() -> None:
    a = acks(("A", 3), ("B", 2))
    problems = verdict(a[:3], a)  # never got anything of the newer epoch
    assert problems == [f"2 acknowledged but never received, first {a[3:]}"]


def test_the_start_of_a_new_epoch_is_owed() -> None:
    a = acks(("A", 2), ("B", 4))
    problems = verdict(a[:2] + a[4:], a)  # B:3 first
    assert "new epoch B started at 3, not 1" in problems
    assert f"2 acknowledged but never received, first {a[2:4]}" in problems


def test_a_jump_and_a_duplicate_are_never_excused() -> None:
    a = acks(("A", 4))
    assert verdict([a[0], a[2], a[3]], a) == [
        "offset jumped A:1 -> A:3", f"1 acknowledged but never received, first {[a[1]]}"]
    assert "received twice: ['A#2']" in verdict([a[0], a[1], a[1], a[2], a[3]], a)


def test_an_epoch_redis_lost_again_may_arrive_without_its_start() -> None:
    # A restart wiped B (offsets 1..2 with it) while a gateway's fill of them was under way.
    a = acks(("A", 2), ("B", 5), ("C", 3))
    assert verdict(a[:2] + a[4:7] + a[7:], a) == []  # A:1..2, B:3..5, C:1..3
    # a jump inside that epoch is not excused
    assert verdict([*a[:2], a[3], a[5], a[6], *a[7:]], a) == [
        "offset jumped B:2 -> B:4", f"1 acknowledged but never received, first {[a[4]]}"]
