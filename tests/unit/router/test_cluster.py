"""The cluster summary and its imbalance figure."""

from __future__ import annotations

from router.cluster import imbalance, summarize
from switchboard.contract import GatewayInfo


def gw(gid: str, connections: int, draining: bool = False) -> GatewayInfo:
    return GatewayInfo(gateway_id=gid, host="10.0.0.1", port=8080, connections=connections,
                       ws=connections, sse=0, draining=draining, started_ms=1000,
                       heartbeat_ms=2000)


def test_imbalance_is_one_without_gateways_or_connections() -> None:
    assert imbalance([]) == 1.0
    assert imbalance([gw("a", 0), gw("b", 0)]) == 1.0
    assert imbalance([gw("a", 10, draining=True)]) == 1.0


def test_imbalance_is_max_over_mean_of_gateways_not_draining() -> None:
    assert imbalance([gw("a", 10), gw("b", 10)]) == 1.0
    assert imbalance([gw("a", 30), gw("b", 10)]) == 1.5
    # a draining gateway sheds connections on purpose: it does not count
    assert imbalance([gw("a", 30), gw("b", 30), gw("c", 1, draining=True)]) == 1.0


def test_summary_lists_gateways_in_id_order_with_totals() -> None:
    doc = summarize([gw("b", 3), gw("a", 1, draining=True)], age=lambda g: 1.23456)
    assert [g["id"] for g in doc["gateways"]] == ["a", "b"]
    assert doc["gateways"][0] == {
        "id": "a", "host": "10.0.0.1", "port": 8080, "connections": 1, "ws": 1, "sse": 0,
        "draining": True, "heartbeat_age_s": 1.235, "started_ms": 1000,
    }
    assert doc["total_connections"] == 4
    assert doc["imbalance"] == 1.0
