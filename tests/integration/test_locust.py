"""`make loadtest` at toy size: locust drives a real `switchboard up` with every user kind.

Runs ``python -m loadtest.run_locust`` (what ``make loadtest`` runs) for a few seconds with one
locust worker and one gateway, and reads its CSV report: WebSocket and SSE subscribers
connected and received both unicasts and broadcasts, publishers were answered, and nothing
failed (locust itself exits non-zero on any failure).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration


def test_the_locust_run_reports_every_user_kind_without_failures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.run_locust", "--duration", "15", "--users", "18",
         "--spawn-rate", "18", "--processes", "1", "--gateways", "1",
         "--reports", str(tmp_path)],
        cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    [stats] = tmp_path.glob("locust-*_stats.csv")
    assert list(tmp_path.glob("locust-*.html"))
    with stats.open(newline="") as fh:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    for row in [("WS", "connect"), ("SSE", "connect"), ("WS", "delivery user"),
                ("SSE", "delivery user"), ("WS", "delivery broadcast"),
                ("SSE", "delivery broadcast"), ("POST", "/v1/publish user")]:
        assert int(rows[row]["Request Count"]) > 0, row
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0
