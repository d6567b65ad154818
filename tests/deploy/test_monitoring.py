"""Prometheus alert rules and the Grafana dashboard refer only to metrics that exist.

Every PromQL expression is parsed offline with promql-parser (the Rust parser Prometheus'
grammar was ported to), and every metric and label it names must be exposed by
:class:`gateway.metrics.GatewayMetrics` or :class:`router.metrics.RouterMetrics`, so a renamed
metric breaks this test rather than an alert that silently never fires. Where promtool and
haproxy are installed, the alert unit tests (alerts_test.yml) and config checks run too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.catalog import DEPLOY, ROOT, load_yaml, promql_problems

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "switchboard.json"
DURATION = re.compile(r"^\d+[smhd]$")


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alert_file_has_the_rule_file_structure() -> None:
    doc = load_yaml(ALERTS)
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                                 "keep_firing_for"}, rule.get("alert")
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
    alerts = [r["alert"] for r in rules()]
    assert len(alerts) == len(set(alerts))


@pytest.mark.parametrize("rule", rules(), ids=[r["alert"] for r in rules()])
def test_alert_expressions_parse_and_use_real_metrics(rule: dict[str, Any]) -> None:
    assert promql_problems(rule["expr"]) == []


def test_the_alerts_the_runbooks_promise_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in rules()}
    wanted = {
        "SwitchboardGatewayConnectionImbalance": "switchboard_gateway_connections",
        "SwitchboardPubSubReconnects": "switchboard_gateway_pubsub_reconnects_total",
        "SwitchboardSlowConsumerDisconnects": 'code="4108"',
        "SwitchboardGatewayRedisErrors": "switchboard_gateway_redis_errors_total",
        "SwitchboardRouterRedisErrors": "switchboard_router_redis_errors_total",
        "SwitchboardGatewayNotReady": "switchboard_gateway_ready == 0",
        "SwitchboardRouter503s": 'status="503"',
    }
    for alert, fragment in wanted.items():
        assert fragment in exprs[alert], alert


def test_runbook_links_point_at_headings_of_the_operations_guide() -> None:
    anchors = heading_anchors((ROOT / "docs" / "operations.md").read_text())
    urls = [r["annotations"]["runbook_url"] for r in rules()]
    for url in urls:
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md" and anchor in anchors, url
    gateway_redis, router_redis = (u for u in urls if "redis" in u)
    assert gateway_redis != router_redis  # one runbook per alert


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return anchors


def test_a_wrong_metric_or_label_is_caught() -> None:
    assert promql_problems("rate(switchboard_gateway_conects_total[5m])") == [
        "unknown metric 'switchboard_gateway_conects_total'"]
    assert promql_problems(
        'sum by (op) (rate(switchboard_router_redis_errors_total{code="1"}[5m]))') == [
        "switchboard_router_redis_errors_total has no label 'code'",
        "grouping by unknown label 'op'"]
    with pytest.raises(ValueError):
        promql_problems("sum(rate(switchboard_gateway_connects_total))")  # no range


# -- Grafana ------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_is_provisioned_with_its_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (provider,) = load_yaml(provisioning / "dashboards" / "switchboard.yml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("panel", panels(), ids=[p["title"] for p in panels()])
def test_dashboard_queries_parse_and_use_real_metrics(panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        # Grafana substitutes its interval variable before Prometheus sees the query
        expr = target["expr"].replace("$__rate_interval", "1m")
        assert promql_problems(expr) == [], target["expr"]


def test_dashboard_shows_what_operators_need() -> None:
    queries = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for metric in ("switchboard_gateway_connections", "switchboard_gateway_disconnects_total",
                   "switchboard_gateway_messages_delivered_total",
                   "switchboard_gateway_fanout_seconds_bucket",
                   "switchboard_gateway_publish_to_write_seconds_bucket",
                   "switchboard_router_publishes_total",
                   "switchboard_router_publish_seconds_bucket",
                   "switchboard_gateway_redis_errors_total",
                   "switchboard_router_redis_errors_total",
                   "switchboard_gateway_pubsub_reconnects_total"):
        assert metric in queries, metric


# -- with the real tools ----------------------------------------------------------------------
# promtool (Debian package `prometheus`) and haproxy: `make test` installs them (tool-deps),
# and these tests run them, offline, on the real files. Missing is a failure, not a skip.


def tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe is not None, f"{name} is not installed (make test installs it)"
    return exe


def test_alerts_pass_their_promtool_unit_tests() -> None:
    # tests/deploy/alerts_test.yml: each alert fires when it should and not on drains,
    # small clusters or blips
    result = subprocess.run([tool("promtool"), "test", "rules",
                             str(ROOT / "tests" / "deploy" / "alerts_test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # the config names the rule file by its path inside the container
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/alerts.yml", str(ALERTS))
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run([tool("promtool"), "check", "config",
                             str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_its_config() -> None:
    # gateway-N only resolve inside compose: haproxy warns and starts them disabled
    result = subprocess.run([tool("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
