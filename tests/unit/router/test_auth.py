"""API key matching."""

from __future__ import annotations

from router.auth import key_matches


def test_any_configured_key_matches() -> None:
    keys = ("first-key", "second-key")
    assert key_matches("first-key", keys)
    assert key_matches("second-key", keys)


def test_prefixes_wrong_keys_and_empty_key_lists_do_not_match() -> None:
    keys = ("first-key",)
    assert not key_matches("first", keys)
    assert not key_matches("first-key-and-more", keys)
    assert not key_matches("", keys)
    assert not key_matches("first-key", ())


def test_non_ascii_keys_compare_without_errors() -> None:
    assert key_matches("clé", ("clé",))
    assert not key_matches("clé", ("cle",))
