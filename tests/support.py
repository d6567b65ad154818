"""Test support: real redis-server and real switchboard processes on loopback.

Everything here starts real processes on free 127.0.0.1 ports and stops exactly the processes
it started, by PID. Waiting is always on a condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.frames import Frame
from websockets.streams import StreamReader

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"
API_KEY = "test-api-key"


# Ports come from a block of their own per pytest-xdist worker (2000-9999), apart from the
# kernel's ephemeral range (32768+) and from the range Redis Cluster nodes pick theirs in
# (switchboard.localcluster: 10000 up, bus ports +10000). So two workers never pick the same
# port, and no outgoing connection or cluster node takes one chosen here before its server
# binds it.
_PORT_BLOCK = 1000
_PORT_BASE = 2000
_next_port = itertools.count()


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def free_port() -> int:
    base = _PORT_BASE + (_worker_index() % 8) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or a listener's TIME_WAIT: try the next
                continue
            return port
    raise RuntimeError(f"no free port in {base}..{base + _PORT_BLOCK - 1}")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM a process we started (if still running), SIGKILL it after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def one_frame(data: bytes, *, mask: bool) -> Frame:
    """The first WebSocket frame in ``data`` as websockets parses it (``mask``: client-sent)."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("websockets wanted more bytes than one frame")


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: str
    persistent: bool = False  # an append-only file that survives a restart

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, check=True, timeout=10
        )
        return out.stdout.decode()

    def stop(self) -> None:
        terminate(self.proc)

    def start(self) -> None:
        """(Re)start on the same port, so clients configured with its URL reconnect."""
        self.proc = _spawn_redis(self.port, self.workdir, self.persistent)


def _spawn_redis(port: int, workdir: str,
                 persistent: bool = False) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make test installs it)")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         *(("--appendonly", "yes", "--appendfsync", "always") if persistent
           else ("--appendonly", "no")),
         "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_until(ready, 10, f"redis-server on port {port}")
    return proc


def start_redis(persistent: bool = False) -> RedisServer:
    workdir = tempfile.mkdtemp(prefix="sb-redis-")
    port = free_port()
    return RedisServer(port, _spawn_redis(port, workdir, persistent), workdir, persistent)


@dataclass
class Proc:
    """A switchboard process (gateway or router) started by a test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        return terminate(self.proc, timeout)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def spawn(name: str, args: list[str], port: int, env: dict[str, str], health_path: str,
          logdir: Path) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}-{port}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **env}
    fh = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchboard.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
        env=full_env, cwd=ROOT,
    )
    fh.close()
    p = Proc(name, proc, port, log, env)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{p.output()}")
        return http_status(f"http://127.0.0.1:{port}{health_path}") == 200

    try:
        wait_until(healthy, 20, f"{name} on port {port}")
    except BaseException:
        p.kill()
        p.proc.wait()
        raise
    return p


def gateway_env(redis: RedisServer, **extra: str) -> dict[str, str]:
    env = {
        "SWITCHBOARD_REDIS_URL": redis.url,
        "SWITCHBOARD_JWT_SECRET": JWT_SECRET,
        "SWITCHBOARD_HOST": "127.0.0.1",
        "SWITCHBOARD_HEARTBEAT_INTERVAL": "0.5",
    }
    env.update(extra)
    return env


def start_gateway(redis: RedisServer, logdir: Path, port: int | None = None,
                  **extra: str) -> Proc:
    port = port or free_port()
    env = gateway_env(redis, SWITCHBOARD_PORT=str(port), **extra)
    return spawn("gateway", ["gateway"], port, env, "/readyz", logdir)


def start_router(redis: RedisServer, logdir: Path, **extra: str) -> Proc:
    port = free_port()
    env = {
        "SWITCHBOARD_REDIS_URL": redis.url,
        "SWITCHBOARD_API_KEYS": API_KEY,
        "SWITCHBOARD_HOST": "127.0.0.1",
        "SWITCHBOARD_ROUTER_PORT": str(port),
        **extra,
    }
    return spawn("router", ["router"], port, env, "/healthz", logdir)


def wait_for_banner(up: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """The output of ``switchboard up`` once it printed its banner (the cluster is ready)."""

    def banner() -> str | None:
        text = log.read_text(errors="replace")
        if up.poll() is not None:
            raise AssertionError(f"switchboard up exited with {up.returncode}:\n{text}")
        return text if "Ctrl-C drains" in text else None

    return str(wait_until(banner, timeout, "switchboard up to print its banner"))
