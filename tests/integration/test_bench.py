"""`python -m loadtest.bench` at toy sizes: the harness behind BENCHMARKS.md still works.

Each scenario starts its own redis-server, gateways, router and baseline, so this is the
whole path users rerun with ``make bench``; sizes are small enough for CI (~10 s each), and
only what does not depend on the machine is asserted: every message arrived, nothing failed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import cluster as bench_cluster
from switchboard.localcluster import LocalCluster
from switchboard.localcluster import start_cluster as start_redis_cluster
from tests.support import ROOT, Proc, start_gateway

pytestmark = pytest.mark.integration


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_unicast_through_the_router_delivers_every_accepted_publish(tmp_path: Path) -> None:
    r = bench(tmp_path, "unicast", "--users", "40", "--rates", "100", "--duration", "1",
              "--concurrency", "4", "--batch", "10")
    fixed, direct = r["fixed"][0], r["direct_no_router"][0]
    assert fixed["http_status"] == {"200": fixed["published"]["sent"]}
    assert fixed["delivered"] == fixed["published"]["sent"] > 0
    assert fixed["latency"]["n"] == fixed["delivered"] and fixed["latency"]["p99_ms"] > 0
    assert direct["failed"] == 0 and direct["delivered"] == direct["published"]["sent"] > 0
    peak = r["max"]
    assert set(peak["publish"]["http_status"]) == {"200"} and peak["publish"]["ok"] > 0
    assert set(peak["batch"]["http_status"]) == {"200"} and peak["batch"]["ok"] > 0
    backlog = peak["delivery_backlog"]
    assert backlog["delivered"] == backlog["published"] == (
        peak["publish"]["ok"] + peak["batch"]["ok"] * 10)
    assert r["baseline_floor"][0]["delivered"] == r["baseline_floor"][0]["published"]["sent"]


def test_rolling_restart_moves_every_client_and_loses_nothing(tmp_path: Path) -> None:
    r = bench(tmp_path, "rolling", "--connections", "200", "--drain-window", "1")
    assert r["rolled"] and r["connections"] == 200
    # both original gateways were replaced: every client was moved at least once
    assert r["moved_clients"] == 200 and r["resumed_clients"] >= 200 and r["still_waiting"] == 0
    assert r["published"] > 0 and r["final_offset"] > 0
    assert r["targets"] == {"zero loss": True, "accepts within admission": True}


def test_fanout_reaches_every_connection_on_both_servers(tmp_path: Path) -> None:
    r = bench(tmp_path, "fanout", "--connections", "200", "--duration", "1")
    assert r["redis"] == "single"  # no --redis-shards: the one redis-server, as before
    for side in ("switchboard", "baseline"):
        assert r[side]["connections"] == 200
        fixed, peak = r[side]["fixed"], r[side]["max"]
        assert fixed["deliveries"] == fixed["expected"] > 0, side
        assert peak["complete"] and peak["deliveries"] == peak["expected"] > 0, side
        assert fixed["errors"] == {} and peak["errors"] == {}, side
    assert r["deliveries_per_cpu_s_vs_baseline"]["max"] > 0
    assert "redis_node_cpu_s" not in r["switchboard"]["max"]


def listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def assert_cluster_layout(r: dict[str, Any]) -> None:
    redis = r["redis"]
    assert redis["shards"] == 3 and redis["nodes"] == 6 and len(redis["masters"]) == 3
    assert redis["broadcast_master"] in redis["masters"]
    # every node was stopped by the harness when the scenario ended
    assert not any(listening(addr) for addr in redis["masters"])


def test_idle_on_a_redis_cluster_holds_every_connection(tmp_path: Path) -> None:
    r = bench(tmp_path, "idle", "--connections", "200", "--redis-shards", "3")
    assert_cluster_layout(r)
    for side in ("switchboard", "baseline"):
        assert r[side]["connections"] == 200, side
        assert r[side]["connect"]["ok"] == 200 and r[side]["connect"]["failed"] == {}, side
    assert sum(r["switchboard"]["connect"]["gateways"].values()) == 200


def test_fanout_on_a_redis_cluster_delivers_everything(tmp_path: Path) -> None:
    r = bench(tmp_path, "fanout", "--connections", "200", "--duration", "1",
              "--redis-shards", "3")
    assert_cluster_layout(r)
    for side in ("switchboard", "baseline"):
        assert r[side]["connections"] == 200
        fixed, peak = r[side]["fixed"], r[side]["max"]
        assert fixed["deliveries"] == fixed["expected"] > 0, side
        assert peak["complete"] and peak["deliveries"] == peak["expected"] > 0, side
        assert fixed["errors"] == {} and peak["errors"] == {}, side
    # CPU of each of the six nodes over each Switchboard phase; the baseline has none
    for phase in ("fixed", "max"):
        nodes = r["switchboard"][phase]["redis_node_cpu_s"]
        assert len(nodes) == 6 and all(cpu >= 0 for cpu in nodes.values())
        assert "redis_node_cpu_s" not in r["baseline"][phase]


def test_ctrl_c_during_the_start_stops_the_redis_cluster_and_the_gateways(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clusters: list[LocalCluster] = []
    gateways: list[Proc] = []

    def keep_cluster(*args: Any, **kwargs: Any) -> LocalCluster:
        clusters.append(start_redis_cluster(*args, **kwargs))
        return clusters[-1]

    def second_gateway_interrupted(*args: Any, **kwargs: Any) -> Proc:
        if gateways:
            raise KeyboardInterrupt  # Ctrl-C while the second gateway starts
        gateways.append(start_gateway(*args, **kwargs))
        return gateways[-1]

    monkeypatch.setattr(bench_cluster, "start_redis_cluster", keep_cluster)
    monkeypatch.setattr(bench_cluster, "start_gateway", second_gateway_interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_cluster.start_cluster(gateways=2, baseline=False, redis_shards=3)
    assert len(clusters) == 1 and len(gateways) == 1
    # the first gateway ran on the cluster, and everything was stopped by PID
    assert gateways[0].env["SWITCHBOARD_REDIS_URL"] == clusters[0].url
    assert not gateways[0].alive()
    assert all(not node.running() for node in clusters[0].nodes)
