"""A real Prometheus scrapes a real cluster and evaluates the real alert rules.

Prometheus runs from deploy/prometheus/prometheus.yml (its job names and paths, targets
pointed at this test's processes, 1 s intervals) with deploy/prometheus/alerts.yml loaded as
is. The test proves what an operator relies on: the connection gauge the dashboard and the
autoscaler read counts exactly the clients connected, every alert rule evaluates without error
against real series, and SwitchboardGatewayNotReady's expression is false on a healthy
cluster, true for every gateway once Redis is gone (the alert goes pending), and false again
once Redis is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clients import SseClient, WsClient
from tests.integration.cluster import cluster
from tests.integration.tools import (
    DEPLOY,
    Prometheus,
    eventually,
    logs_on_failure,
    start_prometheus,
)
from tests.support import RedisServer

pytestmark = pytest.mark.integration

NOT_READY = "SwitchboardGatewayNotReady"
NEVER_EVALUATED = "0001-01-01T00:00:00Z"


def alert_expr(name: str) -> str:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (expr,) = [r["expr"] for g in doc["groups"] for r in g["rules"] if r.get("alert") == name]
    return str(expr)


def scalar(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def by_instance(prom: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query(expr)}


async def test_prometheus_counts_connections_and_evaluates_the_not_ready_alert(
    redis_server: RedisServer, logdir: Path, tmp_path: Path
) -> None:
    with cluster(redis_server, logdir, gateways=2, SWITCHBOARD_REBALANCE="0",
                 SWITCHBOARD_REDIS_TIMEOUT="0.5") as c:
        gateways = [f"127.0.0.1:{g.port}" for g in c.gateways]
        router = f"127.0.0.1:{c.router.port}"
        prom = start_prometheus(tmp_path / "prometheus", gateways, router)
        clients: list[WsClient | SseClient] = []
        try:
            with logs_on_failure(prom.daemon, *c.gateways, c.router):
                # 3 WebSocket clients on the first gateway; 2 and an SSE client on the second.
                for gw, n in ((0, 3), (1, 2)):
                    for i in range(n):
                        clients.append(await WsClient(c.ws_url(gw, f"p{gw}-{i}")).start())
                clients.append(await SseClient("127.0.0.1", c.gateways[1].port,
                                               c.sse_path("p-sse")).start())
                assert all(cl.welcome for cl in clients)
                await scraped_connections(prom, gateways, router, [3, 3])

                # The gauge follows clients leaving, it is not a count of connects.
                await clients.pop(0).close()
                await scraped_connections(prom, gateways, router, [2, 3])

                await not_ready_alert(prom, redis_server, gateways)
        finally:
            for cl in clients:
                await cl.close()
            prom.stop()


async def scraped_connections(prom: Prometheus, gateways: list[str], router: str,
                              per_gateway: list[int]) -> None:
    """The dashboard's queries give exactly the connected clients, per gateway and in all."""

    def counted() -> bool:
        up = by_instance(prom, "up")
        assert up == {**dict.fromkeys(gateways, 1.0), router: 1.0, prom_self(prom): 1.0}, up
        total = scalar(prom, "sum(switchboard_gateway_connections)")
        assert total == sum(per_gateway), total
        each = by_instance(prom, "sum by (instance) (switchboard_gateway_connections)")
        assert each == {g: float(n) for g, n in zip(gateways, per_gateway, strict=True)}, each
        return True

    await eventually(counted, 20, f"Prometheus to count {per_gateway} connections")


def prom_self(prom: Prometheus) -> str:
    return f"127.0.0.1:{prom.port}"


async def not_ready_alert(prom: Prometheus, redis: RedisServer, gateways: list[str]) -> None:
    expr = alert_expr(NOT_READY)

    def all_rules_healthy() -> dict[str, dict[str, Any]]:
        rules = prom.rules()
        assert rules[NOT_READY]["query"].strip() == expr.strip()
        for name, rule in rules.items():
            assert rule["lastEvaluation"] != NEVER_EVALUATED, f"{name} not evaluated yet"
            assert rule["health"] == "ok", (name, rule.get("lastError"))
        return rules

    # Healthy cluster: every rule of alerts.yml evaluates cleanly on real series, and this one
    # is false although its series exist (so the empty answer is not a missing metric).
    rules = await eventually(all_rules_healthy, 15, "every alert rule evaluated")
    defined = {r["alert"] for g in yaml.safe_load(
        (DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert set(rules) == defined, sorted(rules)
    assert by_instance(prom, "switchboard_gateway_ready") == dict.fromkeys(gateways, 1.0)
    assert prom.query(expr) == []
    assert rules[NOT_READY]["state"] == "inactive"

    # Redis gone: every gateway turns unready; the expression holds for each, the alert is
    # pending (it fires after its `for:`, longer than a test should wait).
    redis.stop()

    def unready_everywhere() -> bool:
        assert by_instance(prom, expr) == dict.fromkeys(gateways, 0.0)
        pending = {a["labels"]["instance"] for a in prom.alerts()
                   if a["labels"]["alertname"] == NOT_READY and a["state"] == "pending"}
        assert pending == set(gateways), pending
        assert prom.rules()[NOT_READY]["state"] == "pending"
        return True

    await eventually(unready_everywhere, 25, f"{NOT_READY} pending for every gateway")

    # Redis back: the gateways recover their readiness and the alert resolves before firing.
    redis.start()

    def ready_again() -> bool:
        assert by_instance(prom, "switchboard_gateway_ready") == dict.fromkeys(gateways, 1.0)
        assert prom.query(expr) == []
        assert prom.rules()[NOT_READY]["state"] == "inactive"
        return True

    await eventually(ready_again, 25, f"{NOT_READY} inactive again")
