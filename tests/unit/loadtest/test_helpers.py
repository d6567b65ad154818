"""Small pure helpers of the bench: HTTP heads, /proc parsing, profiles, backoff, splits."""

from __future__ import annotations

import random

import pytest

from loadtest.bench import profile
from loadtest.bench.client import full_jitter
from loadtest.bench.cluster import parse_stat_cpu
from loadtest.bench.httpclient import HttpError, parse_head, request_bytes
from loadtest.bench.workers import split


def test_response_head_parsing() -> None:
    status, headers = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b: c")
    assert status == 200 and headers == {"content-length": "12", "x-a": "b: c"}
    with pytest.raises(HttpError):
        parse_head(b"SSH-2.0-OpenSSH")


def test_request_has_length_and_headers() -> None:
    raw = request_bytes("POST", "h:1", "/v1/publish", b"{}", {"Authorization": "Bearer k"})
    assert raw == (b"POST /v1/publish HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n"
                   b"Authorization: Bearer k\r\n\r\n{}")


def test_cpu_time_survives_odd_command_names() -> None:
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30
    stat = "1234 (python -m (x)) " + " ".join(fields)
    assert parse_stat_cpu(stat) == pytest.approx(400 / 100)  # CLK_TCK is 100 on Linux


def test_full_jitter_stays_within_the_growing_cap() -> None:
    rng = random.Random(3)
    for attempt in range(10):
        for _ in range(50):
            assert 0 <= full_jitter(attempt, rng=rng) <= min(20.0, 0.5 * 2**attempt)


def test_split_is_contiguous_and_even() -> None:
    parts = split(list(range(10)), 3)
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split([], 2) == [[], []]


def test_profile_summary_counts_self_and_inclusive_time() -> None:
    collapsed = "\n".join([
        "proc;main (app.py:1);deliver (gateway/hub.py:80);flush (gateway/transport.py:9) 30",
        "proc;main (app.py:1);deliver (gateway/hub.py:83) 50",
        "proc;main (app.py:2) 20",
    ])
    out = profile.summarize(collapsed)
    assert out["samples"] == 100
    self_pct = {r["function"]: r["percent"] for r in out["self"]}
    assert self_pct == {"deliver (gateway/hub.py)": 50.0, "flush (gateway/transport.py)": 30.0,
                        "main (app.py)": 20.0}
    incl = {r["function"]: r["percent"] for r in out["inclusive"]}
    assert incl["deliver (gateway/hub.py)"] == 80.0 and incl["main (app.py)"] == 100.0


def test_profile_frames_lose_line_numbers_and_long_paths() -> None:
    frame = "send (/x/.venv/lib/python3.11/site-packages/websockets/protocol.py:12)"
    assert profile.short(frame) == "send (websockets/protocol.py)"


def test_machine_busy_time_leaves_out_idle_and_iowait() -> None:
    from loadtest.bench.noise import machine_busy_s

    line = "cpu  100 20 30 5000 40 5 6 7 0 0"
    assert machine_busy_s(line) == pytest.approx((100 + 20 + 30 + 5 + 6 + 7) / 100)
