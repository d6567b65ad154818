"""``switchboard up`` end to end: the printed token and key work, a crashed gateway comes back,
and Ctrl-C leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.asyncio.client import connect

from tests.clients import until
from tests.integration.ledger import USERS, sdk_watchers, settle_sdk, traffic, wait_acked
from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    free_port,
    terminate,
    wait_for_banner,
    wait_until,
)

pytestmark = pytest.mark.integration


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name is in parentheses and may itself contain spaces or parentheses
    fields = raw.rpartition(")")[2].split()
    return int(fields[1]), fields[19]


def children_of(parent: int) -> dict[int, str]:
    """PID -> start time of each live child (start times tell a recycled PID apart)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] == parent:
                found[int(entry.name)] = stat[1]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def gone(pid: int, started: str) -> bool:
    stat = _stat(pid)
    return stat is None or stat[1] != started


def router_call(url: str, key: str, body: object | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


async def welcome_then_broadcast(
    ws_url: str, publish: Callable[[], object]
) -> tuple[dict[str, object], dict[str, object]]:
    async with asyncio.timeout(20), connect(ws_url) as ws:
        welcome = json.loads(await ws.recv())
        await asyncio.to_thread(publish)
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "message":
                return welcome, msg


def start_up(log: Path, *extra: str, **settings: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """``switchboard up`` with 2 gateways on free ports (and ``extra`` flags, ``settings`` as
    SWITCHBOARD_* variables), its output in ``log``: the process, the gateway port and the
    router port."""
    port, router_port = free_port(), free_port()
    # the test's own environment must not point the cluster at some other Redis or port
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(settings)
    with log.open("wb") as fh:
        up = subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli", "up", "--port", str(port),
             "--router-port", str(router_port), "--gateways", "2", *extra],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
    return up, port, router_port


def credentials(banner: str) -> tuple[str, str]:
    """The demo token and the API key the banner prints."""
    token_match = re.search(r"Demo token\s+(\S+)", banner)
    key_match = re.search(r"export SWITCHBOARD_API_KEY=(\S+)", banner)
    assert token_match and key_match, banner
    return token_match[1], key_match[1]


def test_up_prints_working_credentials_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    up, port, router_port = start_up(log)
    started: dict[int, str] = {}
    try:
        text = wait_for_banner(up, log, 90)
        assert f"ws://127.0.0.1:{port}/ws" in text
        assert f"http://127.0.0.1:{port}/sse" in text
        assert f"http://127.0.0.1:{router_port}" in text
        token, key = credentials(text)

        started = children_of(up.pid)
        kinds = sorted(
            "redis" if "redis-server" in cmdline(p) else cmdline(p).split()[-1] for p in started
        )
        assert kinds == ["gateway", "gateway", "redis", "router"], kinds

        cluster_url = f"http://127.0.0.1:{router_port}/v1/cluster"

        def gateways_registered() -> bool:
            cluster = router_call(cluster_url, key)
            assert isinstance(cluster, dict)
            return len(cluster["gateways"]) == 2

        wait_until(gateways_registered, 20, "both gateways in /v1/cluster")

        nonce = os.urandom(8).hex()
        publish_url = f"http://127.0.0.1:{router_port}/v1/publish"
        welcome, message = asyncio.run(welcome_then_broadcast(
            f"ws://127.0.0.1:{port}/ws?token={token}",
            lambda: router_call(publish_url, key, {"broadcast": True, "data": {"n": nonce}}),
        ))
        assert welcome["type"] == "welcome"
        assert welcome["user"] == "demo"
        assert message["stream"] == "broadcast"
        assert message["data"] == {"n": nonce}

        # a gateway that crashes is replaced
        victim = next(p for p in started if cmdline(p).endswith("gateway "))
        os.kill(victim, signal.SIGKILL)

        def replaced() -> re.Match[str] | None:
            return re.search(r"gateway-\d+ is back \(pid (\d+)\)", log.read_text(errors="replace"))

        back = wait_until(replaced, 40, "the killed gateway to be restarted")
        assert isinstance(back, re.Match)
        now = children_of(up.pid)
        assert victim not in now
        assert "gateway" in cmdline(int(back[1]))
        started[int(back[1])] = now[int(back[1])]

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=40) == 0, log.read_text(errors="replace")
        leftovers = [p for p, t in started.items() if not gone(p, t)]
        assert leftovers == [], f"still running: {[cmdline(p) for p in leftovers]}"
    finally:
        terminate(up, 40)  # if the test failed midway: do not leave a cluster running


def test_up_with_redis_shards_runs_on_a_local_redis_cluster_and_stops_it(tmp_path: Path) -> None:
    """``switchboard up --redis-shards 3``: 3 masters and 3 replicas it starts itself; a user
    message and a broadcast go through sharded pub/sub; Ctrl-C stops every node."""
    log = tmp_path / "up.log"
    up, port, router_port = start_up(log, "--redis-shards", "3")
    started: dict[int, str] = {}
    try:
        text = wait_for_banner(up, log, 120)
        token, key = credentials(text)
        url_match = re.search(r"export SWITCHBOARD_REDIS_URL=(\S+)", text)
        assert url_match, text
        assert url_match[1].strip("'\"").startswith("redis+cluster://"), url_match[1]
        started = children_of(up.pid)
        kinds = sorted(
            "redis" if "redis-server" in cmdline(p) else cmdline(p).split()[-1] for p in started
        )
        assert kinds == ["gateway", "gateway", "redis", "redis", "redis", "redis", "redis",
                         "redis", "router"], kinds
        assert all("cluster" in cmdline(p) for p in started if "redis-server" in cmdline(p))

        publish_url = f"http://127.0.0.1:{router_port}/v1/publish"
        for body, stream in (({"user": "demo", "data": "to you"}, "user"),
                             ({"broadcast": True, "data": "to all"}, "broadcast")):
            welcome, message = asyncio.run(welcome_then_broadcast(
                f"ws://127.0.0.1:{port}/ws?token={token}",
                lambda body=body: router_call(publish_url, key, body),  # type: ignore[misc]
            ))
            assert welcome["type"] == "welcome"
            assert message["stream"] == stream and message["data"] == body["data"]

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, log.read_text(errors="replace")
        leftovers = [p for p, t in started.items() if not gone(p, t)]
        assert leftovers == [], f"still running: {[cmdline(p) for p in leftovers]}"
    finally:
        terminate(up, 60)


def test_a_rolling_restart_replaces_every_gateway_and_loses_nothing(tmp_path: Path) -> None:
    """SIGUSR1 to ``switchboard up`` under steady unicast, broadcast and channel traffic:
    each gateway is replaced by a new one (ready before the old one drains), every client is
    moved and resumes, and every acknowledged message reaches it exactly once, with no
    history lost."""
    log = tmp_path / "up.log"
    up, port, router_port = start_up(log, "--no-autoscale", f"--api-key={API_KEY}",
                                     f"--jwt-secret={JWT_SECRET}",
                                     SWITCHBOARD_DRAIN_WINDOW="2")
    try:
        wait_for_banner(up, log, 90)
        before = {p for p in children_of(up.pid) if cmdline(p).endswith("gateway ")}
        assert len(before) == 2
        target = SimpleNamespace(router=SimpleNamespace(port=router_port),
                                 gateways=[SimpleNamespace(port=port)])

        async def scenario() -> None:
            async with sdk_watchers(target, USERS[:8], channel=True) as watched:  # type: ignore[arg-type]
                async with traffic(target) as ledger:  # type: ignore[arg-type]
                    await wait_acked(ledger, 10)
                    up.send_signal(signal.SIGUSR1)
                    await until(lambda: "rolling restart done" in log.read_text(), 90,
                                "the rolling restart")
                    await wait_acked(ledger, len(ledger.acks["b"]) + 20)
                await settle_sdk(watched, ledger, 30)
                assert all(w.client.stats.reconnects >= 1 for w in watched), "not all moved"
                assert not any(w.told() for w in watched), "history was lost"

        asyncio.run(scenario())
        after = {p for p in children_of(up.pid) if cmdline(p).endswith("gateway ")}
        assert len(after) == 2 and not after & before, (before, after)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=40) == 0, log.read_text(errors="replace")
    finally:
        terminate(up, 40)
