"""The admin page's pure parts: Basic credentials, the CSRF rule, and the load history."""

from __future__ import annotations

import base64

import pytest

from router.auth import (
    BASIC_CHALLENGE,
    Presented,
    authorize,
    basic_password,
    presented_key,
)
from router.errors import Forbidden, Unauthorized
from router.history import History
from switchboard import contract
from switchboard.contract import GatewayInfo


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_password_is_the_part_after_the_first_colon() -> None:
    assert basic_password(basic("admin:the-key")) == "the-key"
    assert basic_password(basic(":the-key")) == "the-key"
    assert basic_password(basic("admin:with:colons")) == "with:colons"
    assert basic_password(basic("admin:clé")) == "clé"
    assert basic_password("bAsIc " + basic("a:b").split()[1]) == "b"


@pytest.mark.parametrize("header", [
    None, "", "Basic", "Basic ", "Basic !!!!", "Basic " + base64.b64encode(b"no-colon").decode(),
    basic("admin:"), "Basic " + base64.b64encode(b"a:\xff").decode(), "Bearer x", "Digest x",
])
def test_what_is_not_a_basic_password_is_none(header: str | None) -> None:
    assert basic_password(header) is None


def test_a_key_comes_from_bearer_or_basic() -> None:
    assert presented_key("Bearer k1") == Presented("k1", "bearer")
    assert presented_key(basic("u:k1")) == Presented("k1", "basic")
    assert presented_key("Token k1") is None


def test_unknown_keys_are_challenged_with_the_scheme_the_client_tried() -> None:
    keys = ("k1",)
    with pytest.raises(Unauthorized) as bearer:
        authorize(None, keys, method="GET", admin_header=None)
    assert bearer.value.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(Unauthorized) as tried_basic:
        authorize(basic("u:wrong"), keys, method="GET", admin_header=None)
    assert tried_basic.value.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    with pytest.raises(Unauthorized) as page:
        authorize(None, keys, method="GET", admin_header=None, challenge_basic=True)
    assert page.value.headers["WWW-Authenticate"] == 'Basic realm="switchboard admin"'


def test_basic_state_changes_need_the_admin_header_bearer_ones_do_not() -> None:
    keys = ("k1",)
    assert authorize(basic("u:k1"), keys, method="GET", admin_header=None).scheme == "basic"
    assert authorize(basic("u:k1"), keys, method="HEAD", admin_header=None).scheme == "basic"
    for header in (None, "", "0", "yes"):
        with pytest.raises(Forbidden):
            authorize(basic("u:k1"), keys, method="POST", admin_header=header)
    assert authorize(basic("u:k1"), keys, method="POST", admin_header="1").key == "k1"
    assert authorize("Bearer k1", keys, method="POST", admin_header=None).key == "k1"


def gw(gid: str, delivered: int | None, heartbeat_ms: int, connections: int = 1) -> GatewayInfo:
    return GatewayInfo(gateway_id=gid, host="h", port=1, connections=connections, ws=1, sse=0,
                       draining=False, started_ms=0, heartbeat_ms=heartbeat_ms,
                       delivered=delivered)


def test_history_rates_come_from_each_gateways_heartbeats() -> None:
    h = History(interval=2, window=6)
    first = h.record([gw("a", 100, 10_000), gw("b", 0, 10_000, connections=4)], now_ms=1)
    assert (first.gateways, first.connections, first.deliveries_per_s) == (2, 5, 0.0)
    # a: 200 more over 2 s of its heartbeats; b: 50 over 0.5 s
    second = h.record([gw("a", 300, 12_000), gw("b", 50, 10_500, connections=4)], now_ms=2)
    assert second.deliveries_per_s == 200.0
    # no new heartbeat: the last rate stands; a restarted gateway (counter back) starts over
    third = h.record([gw("a", 300, 12_000), gw("b", 10, 11_000, connections=4)], now_ms=3)
    assert third.deliveries_per_s == 100.0
    # older gateways without the field count connections, not deliveries
    fourth = h.record([gw("a", 500, 14_000), gw("old", None, 14_000)], now_ms=4)
    assert (fourth.gateways, fourth.connections, fourth.deliveries_per_s) == (2, 2, 100.0)


def test_history_keeps_only_its_window() -> None:
    h = History(interval=2, window=6)
    for t in range(10):
        h.record([], now_ms=t)
    doc = h.as_json()
    assert [s["t_ms"] for s in doc["samples"]] == [7, 8, 9]
    assert (doc["interval_s"], doc["window_s"]) == (2, 6)
    with pytest.raises(ValueError):
        History(interval=0)


def test_registry_entries_carry_the_delivered_count() -> None:
    info = gw("a", 42, 5)
    entry = {k: str(v) for k, v in contract.registry_entry(info).items()}
    assert entry["delivered"] == "42"
    assert contract.parse_registry_entry("a", entry).delivered == 42
    del entry["delivered"]
    assert contract.parse_registry_entry("a", entry).delivered is None


def test_presence_keys_are_found_by_a_glob_that_matches_the_prefix_literally() -> None:
    keys = contract.Keys("sb:")
    assert keys.presence_pattern() == "sb:{c:*}:presence"
    assert keys.presence_channel(keys.presence("lobby")) == "lobby"
    for other in (keys.conns("alice"), keys.meta("c:lobby"), "sb:{c:}:presence",
                  "sb:{c:bad name}:presence", "other:{c:lobby}:presence"):
        assert keys.presence_channel(other) is None
    odd = contract.Keys("a*[b]?\\:")
    assert odd.presence_pattern() == "a\\*\\[b\\]\\?\\\\:{c:*}:presence"
    assert odd.presence_channel(odd.presence("x")) == "x"
    assert contract.Keys().control_channel("gw-1") == "sb:{gw:gw-1}:control"
