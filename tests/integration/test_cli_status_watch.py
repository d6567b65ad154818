"""``switchboard status --watch`` against a real cluster, on a pseudo-terminal: it redraws in
place, shows a new connection on the next refresh, survives the router going away (one line,
then the table again once it is back) and Ctrl-C ends it with status 0 and no traceback. And
the servers, started with a Redis nobody runs, keep running and log each failed attempt in a
line rather than a traceback."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.integration.cluster import Cluster, cluster
from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    Proc,
    RedisServer,
    free_port,
    spawn,
    wait_until,
)

pytestmark = pytest.mark.integration

HOME = "\x1b[H"


class Terminal:
    """A process on a pseudo-terminal, and the frames it has drawn so far."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", *args],
                                     stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                                     env={**os.environ, **env}, start_new_session=True)
        os.close(slave)
        self.text = ""

    def read(self) -> str:
        """Everything written so far (waits at most a moment for more)."""
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the process is gone and the terminal closed
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text

    def frames(self) -> list[str]:
        return self.read().split(HOME)[1:]

    def frame_with(self, pattern: str, after: int = 0, timeout: float = 20.0) -> int:
        """The index of the first frame from ``after`` on that matches ``pattern``."""
        def found() -> int | None:
            for i, frame in enumerate(self.frames()[after:], after):
                if re.search(pattern, frame):
                    return i + 1  # not 0, which wait_until would take for "not yet"
            assert self.proc.poll() is None, f"watch exited {self.proc.returncode}: {self.text}"
            return None

        return int(str(wait_until(found, timeout, f"a frame matching {pattern!r}"))) - 1

    def interrupt(self) -> int:
        """Ctrl-C, as the terminal would send it: SIGINT to the process."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=10)
        self.read()
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def small(redis_server: RedisServer, logdir: Path) -> Iterator[Cluster]:
    with cluster(redis_server, logdir, gateways=1) as c:
        yield c


@pytest.fixture
def terminal(small: Cluster) -> Iterator[Terminal]:
    term = Terminal(["status", "--watch", "--interval", "0.2",
                     "--router", f"http://127.0.0.1:{small.router.port}"],
                    {"SWITCHBOARD_API_KEY": API_KEY})
    try:
        yield term
    finally:
        term.close()


def test_watch_redraws_in_place_and_shows_a_new_connection(small: Cluster,
                                                           terminal: Terminal) -> None:
    first = terminal.frame_with(r"total: 0 connections on 1 gateway")
    with connect(small.ws_url(0, "alice")):
        later = terminal.frame_with(r"total: 1 connections on 1 gateway", after=first + 1)
    assert later > first
    frames = terminal.frames()
    assert all(f.startswith("switchboard status") and f.endswith("\x1b[J")
               for f in frames[:-1]), frames[:3]
    assert terminal.interrupt() == 0
    assert "Traceback" not in terminal.text and "interrupted" not in terminal.text


def test_watch_shows_an_unreachable_router_in_one_line_and_recovers(small: Cluster,
                                                                    terminal: Terminal,
                                                                    logdir: Path) -> None:
    terminal.frame_with(r"GATEWAY\s+ADDRESS")
    router = small.router
    assert router.stop() == 0
    down = terminal.frame_with(r"router unreachable")
    # title, blank line, then the rows: here just the one, and the old table cleared below it
    rows = terminal.frames()[down].split("\n")[2:]
    assert rows[-1] == "\x1b[J" and len(rows) == 2, rows
    assert "cannot reach the router" in rows[0] and "retrying every 0.2s" in rows[0]
    # the same router again, on the same port: the watch picks it up by itself
    small.router = spawn("router", ["router"], router.port, router.env, "/healthz", logdir)
    try:
        terminal.frame_with(r"GATEWAY\s+ADDRESS", after=down + 1)
        assert terminal.interrupt() == 0
        assert "Traceback" not in terminal.text
    finally:
        small.router.stop()


def test_watch_without_a_terminal_prints_each_snapshot_whole(small: Cluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "switchboard.cli", "status", "--watch", "--interval", "0.1",
         "--count", "3", "--router", f"http://127.0.0.1:{small.router.port}"],
        env={**os.environ, "SWITCHBOARD_API_KEY": API_KEY}, cwd=ROOT, capture_output=True,
        text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done
    assert "\x1b" not in done.stdout
    assert done.stdout.count("switchboard status  http://") == 3
    assert done.stdout.count("total: 0 connections on 1 gateway") == 3


def test_watch_with_a_wrong_key_stops_with_one_line(small: Cluster) -> None:
    # a 401 does not go away by asking again, unlike a router that is down or answers 503
    done = subprocess.run(
        [sys.executable, "-m", "switchboard.cli", "status", "--watch", "--interval", "0.1",
         "--router", f"http://127.0.0.1:{small.router.port}"],
        env={**os.environ, "SWITCHBOARD_API_KEY": "not-the-key"}, cwd=ROOT,
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert len(done.stderr.splitlines()) == 1 and "401" in done.stderr, done.stderr


def _warnings_about_redis(proc: Proc) -> int:
    return sum(1 for line in proc.output().splitlines()
               if " WARNING " in line and ("Redis" in line or "redis" in line))


def test_a_gateway_without_redis_keeps_running_and_logs_one_line_per_attempt(
    logdir: Path,
) -> None:
    port = free_port()
    env = {"SWITCHBOARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "SWITCHBOARD_JWT_SECRET": JWT_SECRET, "SWITCHBOARD_HOST": "127.0.0.1",
           "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_HEARTBEAT_INTERVAL": "0.5"}
    gw = spawn("gateway", ["gateway"], port, env, "/healthz", logdir)
    try:
        wait_until(lambda: _warnings_about_redis(gw) >= 3, 20, "three failed attempts logged")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503
        assert gw.alive()
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.output(), gw.output()


def test_a_router_without_redis_keeps_running_answers_503_and_logs_lines(logdir: Path) -> None:
    port = free_port()
    env = {"SWITCHBOARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "SWITCHBOARD_API_KEYS": API_KEY, "SWITCHBOARD_HOST": "127.0.0.1",
           "SWITCHBOARD_ROUTER_PORT": str(port)}
    router = spawn("router", ["router"], port, env, "/healthz", logdir)
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert httpx.get(base + "/readyz").status_code == 503
        published = httpx.post(base + "/v1/publish", json={"broadcast": True, "data": 1},
                               headers=auth)
        assert published.status_code == 503, published.text
        wait_until(lambda: _warnings_about_redis(router) >= 2, 20, "failed attempts logged")
        done = subprocess.run(
            [sys.executable, "-m", "switchboard.cli", "status", "--router", base],
            env={**os.environ, "SWITCHBOARD_API_KEY": API_KEY}, cwd=ROOT, capture_output=True,
            text=True, timeout=30)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert "router answered 503: Redis is unavailable" in done.stderr
    finally:
        assert router.stop() == 0
    assert "Traceback" not in router.output(), router.output()
