"""`python -m loadtest.bench` at toy sizes: the harness behind BENCHMARKS.md still works.

Each scenario starts its own redis-server, gateways, router and baseline, so this is the
whole path users rerun with ``make bench``; sizes are small enough for CI (~10 s each), and
only what does not depend on the machine is asserted: every message arrived, nothing failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

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


def test_fanout_reaches_every_connection_on_both_servers(tmp_path: Path) -> None:
    r = bench(tmp_path, "fanout", "--connections", "200", "--duration", "1")
    for side in ("switchboard", "baseline"):
        assert r[side]["connections"] == 200
        fixed, peak = r[side]["fixed"], r[side]["max"]
        assert fixed["deliveries"] == fixed["expected"] > 0, side
        assert peak["complete"] and peak["deliveries"] == peak["expected"] > 0, side
        assert fixed["errors"] == {} and peak["errors"] == {}, side
    assert r["deliveries_per_cpu_s_vs_baseline"]["max"] > 0
