"""``switchboard status`` turns the router's /v1/cluster answer into a table a person can read."""

from __future__ import annotations

import pytest

from switchboard.status import format_age, render

CLUSTER = {
    "gateways": [
        {"id": "gw2-b", "host": "10.0.0.2", "port": 8080, "connections": 1500, "ws": 1400,
         "sse": 100, "draining": True, "heartbeat_age_s": 0.42, "started_ms": 1},
        {"id": "gw1-a", "host": "10.0.0.1", "port": 8080, "connections": 7, "ws": 5, "sse": 2,
         "draining": False, "heartbeat_age_s": 1.0, "started_ms": 2},
    ],
    "total_connections": 1507,
    "imbalance": 0.991,
}


def test_one_row_per_gateway_sorted_by_id_with_every_column() -> None:
    lines = render(CLUSTER).splitlines()
    assert lines[0].split() == ["GATEWAY", "ADDRESS", "CONNS", "WS", "SSE", "DRAINING",
                                "HEARTBEAT"]
    assert lines[1].split() == ["gw1-a", "10.0.0.1:8080", "7", "5", "2", "no", "1.0s"]
    assert lines[2].split() == ["gw2-b", "10.0.0.2:8080", "1500", "1400", "100", "yes", "0.4s"]


def test_numbers_line_up_on_the_right() -> None:
    lines = render(CLUSTER).splitlines()
    header, row1, row2 = lines[0], lines[1], lines[2]
    end = header.index("CONNS") + len("CONNS")
    assert row1[:end].endswith(" 7") and row2[:end].endswith("1500")


def test_summary_gives_total_draining_and_imbalance() -> None:
    last = render(CLUSTER).splitlines()[-1]
    assert last == "total: 1507 connections on 2 gateways (1 draining); imbalance 0.99"


def test_empty_cluster_says_so() -> None:
    text = render({"gateways": [], "total_connections": 0, "imbalance": 0.0})
    assert text.splitlines() == ["no gateways registered",
                                 "total: 0 connections on 0 gateways; imbalance 0.00"]


def test_missing_fields_show_as_dashes_and_total_is_summed() -> None:
    text = render({"gateways": [{"id": "gw-x", "connections": 3}, {"id": "gw-y"}]})
    lines = text.splitlines()
    assert lines[1].split() == ["gw-x", "-", "3", "-", "-", "-", "-"]
    assert lines[-1] == "total: 3 connections on 2 gateways; imbalance -"


def test_ipv6_hosts_are_bracketed() -> None:
    text = render({"gateways": [{"id": "g", "host": "::1", "port": 8080}]})
    assert "[::1]:8080" in text


@pytest.mark.parametrize(("age", "shown"), [(0.04, "0.0s"), (9.96, "10.0s"), (42.4, "42s"),
                                            (125, "2m05s"), (None, "-"), ("soon", "-")])
def test_heartbeat_age_format(age: object, shown: str) -> None:
    assert format_age(age) == shown


def test_a_non_cluster_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        render(["not", "a", "cluster"])
    with pytest.raises(ValueError, match="not a list"):
        render({"gateways": "gw1"})
