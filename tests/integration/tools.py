"""Real third-party daemons for integration tests: Prometheus and HAProxy on loopback.

Both run from configs derived from the real files in deploy/ (only addresses, intervals and
the Docker DNS resolver are rewritten), so drift in those files is tested. Each daemon writes
its log into the test's tmp dir, is stopped by its PID, and :func:`logs_on_failure` prints
every log when the test body raises. A missing tool fails the test: ``make test`` installs it.

Also here: clients that resume the way the protocol asks (``session`` + ``cursor`` for
WebSocket, ``Last-Event-ID`` for SSE), recording every message and every gateway they saw, so
a test can prove that moving between gateways lost and duplicated nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support import API_KEY, ROOT, Proc, free_port, terminate, wait_until

DEPLOY = ROOT / "deploy"
T = TypeVar("T")


async def eventually(check: Callable[[], T], timeout: float, what: str,
                     interval: float = 0.2) -> T:
    """:func:`tests.support.wait_until` off the event loop, for a ``check`` that blocks (HTTP,
    an admin socket): it may raise while the condition does not hold yet."""
    value = await asyncio.to_thread(wait_until, check, timeout, what, interval)
    return cast(T, value)


def require_tool(name: str) -> str:
    """The path of an installed tool; a missing one is a failure, not a skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (make test installs it)")
    return path


@dataclass
class Daemon:
    """A third-party process started by a test, logging into the test's tmp dir."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        return terminate(self.proc)


def wait_for_daemon(daemon: Daemon, ready: Callable[[], bool], timeout: float,
                    what: str) -> None:
    """Wait for ``ready``; a daemon that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if daemon.proc.poll() is not None:
            raise AssertionError(f"{daemon.name} exited with {daemon.proc.returncode}:\n"
                                 f"{daemon.output()}")
        with contextlib.suppress(OSError, httpx.HTTPError):
            if ready():
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}:\n{daemon.output()}")


def spawn_daemon(name: str, args: list[str], logdir: Path) -> Daemon:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=logdir)
    return Daemon(name, proc, log)


@contextlib.contextmanager
def logs_on_failure(*sources: Daemon | Proc | None) -> Iterator[None]:
    """Print every daemon's and switchboard process's log if the body fails."""
    try:
        yield
    except BaseException:
        for src in sources:
            if src is not None:
                print(f"\n===== {src.name} (pid {src.proc.pid}) log: {src.log} =====")
                print(src.output()[-20000:])
        raise


# -- Prometheus ---------------------------------------------------------------------------


def prometheus_config(gateways: list[str], router: str, self_target: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with test targets, 1 s intervals, the real alerts.yml.

    Jobs keep their names, paths and any relabelling; only static targets change. A job with
    no test counterpart (haproxy) is dropped.
    """
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    targets = {"switchboard-gateway": gateways, "switchboard-router": [router],
               "prometheus": [self_target]}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        assert "static_configs" in job, f"job {job['job_name']} no longer uses static targets"
        job["static_configs"] = [{"targets": targets.pop(job["job_name"])}]
        jobs.append(job)
    assert not targets, f"deploy/prometheus/prometheus.yml lost the jobs {sorted(targets)}"
    config["scrape_configs"] = jobs
    return config


@dataclass
class Prometheus:
    daemon: Daemon
    port: int
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def api(self, path: str, **params: str) -> Any:
        resp = self.http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", resp.text
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector: ``[{"metric": {...}, "value": [ts, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every alerting rule the server loaded, by alert name."""
        return {r["name"]: r for g in self.api("rules", type="alert")["groups"]
                for r in g["rules"]}

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def stop(self) -> None:
        self.http.close()
        self.daemon.stop()


def start_prometheus(workdir: Path, gateways: list[str], router: str) -> Prometheus:
    exe = require_tool("prometheus")
    port = free_port()
    self_target = f"127.0.0.1:{port}"
    config = prometheus_config(gateways, router, self_target)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run([require_tool("promtool"), "check", "config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    daemon = spawn_daemon("prometheus", [
        exe, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={self_target}", "--storage.tsdb.retention.time=1h",
        "--log.level=info",
    ], workdir)
    prom = Prometheus(daemon, port)

    try:
        wait_for_daemon(daemon, lambda: prom.http.get("/-/ready").status_code == 200, 20,
                        "prometheus /-/ready")
    except BaseException:
        prom.stop()
        raise
    return prom


# -- HAProxy ------------------------------------------------------------------------------


def haproxy_config(real: str, frontend_port: int, stats_port: int, servers: list[int],
                   admin_socket: Path, inter: str = "200ms") -> str:
    """deploy/haproxy.cfg on loopback: binds and servers rewritten, no Docker DNS resolver.

    Everything else (mode tcp, leastconn, the /readyz httpchk, fall/rise, timeouts) is the
    real file's. Each substitution must match, so a reshaped file fails here loudly.
    """

    def sub(pattern: str, repl: str, text: str, count: int = 1) -> str:
        new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
        assert n == count, f"deploy/haproxy.cfg: {pattern!r} matched {n} times, not {count}"
        return new

    text = sub(r"^resolvers docker\n(?:[ \t]+\S.*\n)+\n?", "", real)
    text = sub(r" resolvers docker", "", text)
    text = sub(r"(default-server .*\binter )\S+", rf"\g<1>{inter}", text)
    text = sub(r"^(\s*bind) :8080$", rf"\1 127.0.0.1:{frontend_port}", text)
    text = sub(r"^(\s*bind) :8404$", rf"\1 127.0.0.1:{stats_port}", text)
    lines = re.findall(r"^\s*server (\S+) \S+$", text, flags=re.MULTILINE)
    assert len(lines) >= len(servers), f"deploy/haproxy.cfg has servers {lines}"
    for name, port in zip(lines, servers, strict=False):
        text = sub(rf"^(\s*server {re.escape(name)}) \S+$", rf"\1 127.0.0.1:{port}", text)
    for name in lines[len(servers):]:
        text = sub(rf"^\s*server {re.escape(name)} \S+\n", "", text)
    # HAProxy wants ~2 descriptors per connection and refuses to start when the hard limit
    # is lower (production containers allow 1M; a test machine may not): cap to fit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        fit = max(256, (hard - 1000) // 2)
        text = re.sub(r"^(\s*maxconn) (\d+)$",
                      lambda m: f"{m[1]} {min(int(m[2]), fit)}", text, flags=re.MULTILINE)
    # An admin socket in the tmp dir, to read the servers' check state.
    text = sub(r"^global\n", f"global\n    stats socket {admin_socket} mode 600 level admin\n",
               text)
    return text


@dataclass
class HAProxy:
    daemon: Daemon
    port: int
    stats_port: int
    admin_socket: Path
    servers: list[str]

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.admin_socket))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self, backend: str = "gateways") -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers: status (UP/DOWN/...), check_status."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows
                if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def status(self) -> dict[str, str]:
        return {name: row["status"] for name, row in self.server_states().items()}

    def stop(self) -> None:
        self.daemon.stop()


def start_haproxy(workdir: Path, gateway_ports: list[int], inter: str = "200ms") -> HAProxy:
    exe = require_tool("haproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port, stats_port = free_port(), free_port()
    sock = workdir / "haproxy.sock"
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(haproxy_config((DEPLOY / "haproxy.cfg").read_text(), port, stats_port,
                                  gateway_ports, sock, inter))
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    daemon = spawn_daemon("haproxy", [exe, "-db", "-f", str(cfg)], workdir)
    names = re.findall(r"^\s*server (\S+) 127\.0\.0\.1:", cfg.read_text(), flags=re.MULTILINE)
    proxy = HAProxy(daemon, port, stats_port, sock, names)

    try:
        wait_for_daemon(daemon, lambda: set(proxy.status().values()) == {"UP"}, 15,
                        "haproxy to mark every gateway UP")
    except BaseException:
        proxy.stop()
        raise
    return proxy


# -- resuming clients ---------------------------------------------------------------------


@dataclass
class Received:
    stream: str
    epoch: str
    offset: int
    data: Any


@dataclass
class ResumingClient:
    """Records messages and resumes across closes; subclasses speak one transport."""

    host: str
    port: int
    token: str
    max_attempts: int = 40
    received: list[Received] = field(default_factory=list)
    welcomes: list[dict[str, Any]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    failed_attempts: int = 0
    open: bool = False
    positions: dict[str, tuple[str, int]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _after: float = 0.0

    @property
    def gateway(self) -> str | None:
        return self.welcomes[-1]["gateway"] if self.welcomes else None

    @property
    def gateways(self) -> list[str]:
        return [w["gateway"] for w in self.welcomes]

    def data(self, stream: str) -> list[Any]:
        return [m.data for m in self.received if m.stream == stream]

    def cursor(self) -> str:
        return ",".join(f"{s}:{e}:{o}" for s, (e, o) in sorted(self.positions.items()))

    def on_event(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "welcome":
            self.welcomes.append(obj)
            self.open = True
            for stream, pos in obj["streams"].items():
                self.positions[stream] = (pos["epoch"], int(pos["offset"]))
        elif kind == "message":
            self.received.append(Received(obj["stream"], obj["epoch"], int(obj["offset"]),
                                          obj["data"]))
            self.positions[obj["stream"]] = (obj["epoch"], int(obj["offset"]))
        elif kind == "reconnect":
            self._after = int(obj["after_ms"]) / 1000

    async def start(self, timeout: float = 10.0) -> ResumingClient:
        self._task = asyncio.create_task(self._run())
        deadline = time.monotonic() + timeout
        while not self.welcomes:
            if self._task.done():
                self._task.result()
                raise AssertionError("client gave up before its first welcome")
            if time.monotonic() > deadline:
                raise TimeoutError("no welcome")
            await asyncio.sleep(0.01)
        return self

    async def _run(self) -> None:
        for attempt in range(self.max_attempts):
            if self._stop.is_set():
                return
            self._after = 0.0
            try:
                await self.session_once()
            except (OSError, InvalidHandshake, ConnectionClosed, asyncio.IncompleteReadError,
                    ValueError, IndexError, TimeoutError):
                self.failed_attempts += 1
                # Full jitter, capped low: this is a test, the gateway's own hint wins.
                self._after = max(self._after, random.uniform(0, min(1.0, 0.05 * 2 ** attempt)))
            self.open = False
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._after)
        raise AssertionError(f"gave up after {self.max_attempts} attempts")

    async def session_once(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class ResumingWs(ResumingClient):
    async def session_once(self) -> None:
        query = f"token={self.token}"
        if self.welcomes:
            query += f"&session={self.welcomes[-1]['session']}&cursor={quote(self.cursor())}"
        url = f"ws://{self.host}:{self.port}/ws?{query}"
        async with connect(url, subprotocols=["switchboard.v1.json"],  # type: ignore[list-item]
                           open_timeout=5, max_size=None) as ws:
            try:
                async for raw in ws:
                    self.on_event(json.loads(raw))
            except ConnectionClosed:
                pass  # a close (1012 on drain) ends the session; the code is recorded below
            finally:
                self.closes.append(ws.close_code)


class ResumingSse(ResumingClient):
    async def session_once(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 5)
        try:
            head = (f"GET /sse?token={self.token} HTTP/1.1\r\nHost: {self.host}\r\n"
                    "Accept: text/event-stream\r\n")
            if self.positions:
                head += f"Last-Event-ID: {self.cursor()}\r\n"
            writer.write((head + "\r\n").encode())
            status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
            for _ in range(100):  # response headers
                if await reader.readline() in (b"\r\n", b""):
                    break
            if status != 200:
                raise ValueError(f"SSE refused with {status}")
            await self._events(reader)
        finally:
            writer.close()

    async def _events(self, reader: asyncio.StreamReader) -> None:
        event: dict[str, str] = {}
        code: int | None = None
        while line := await reader.readline():
            text = line.decode().rstrip("\r\n")
            if text == "":
                if "data" in event:
                    obj = json.loads(event["data"])
                    if obj.get("type") == "error" and obj.get("close"):
                        code = int(obj["code"])
                    self.on_event(obj)
                event = {}
            elif not text.startswith(":"):
                name, _, value = text.partition(":")
                event[name] = value[1:] if value.startswith(" ") else value
        self.closes.append(code)


def check_exact(client: ResumingClient, stream: str, published: list[Any]) -> None:
    """The client got exactly ``published`` on ``stream``: in order, contiguous, no repeats."""
    got = [m for m in client.received if m.stream == stream]
    assert [m.data for m in got] == published, f"{stream}: got {[m.data for m in got]}"
    assert len({m.epoch for m in got}) <= 1, f"{stream}: epoch changed"
    offsets = [m.offset for m in got]
    first = offsets[0] if offsets else 0
    assert offsets == list(range(first, first + len(offsets))), (
        f"{stream}: offsets not contiguous: {offsets}")


class Publisher:
    """Numbered broadcasts plus one unicast per user per tick, through the router."""

    def __init__(self, router_port: int, users: list[str]) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router_port}",
                                      headers={"Authorization": f"Bearer {API_KEY}"},
                                      timeout=10)
        self.users = users
        self.broadcasts: list[int] = []
        self.unicasts: dict[str, list[int]] = {u: [] for u in users}
        self.stop = asyncio.Event()

    async def run(self, rate: float, limit: int) -> None:
        for n in range(limit):
            if self.stop.is_set():
                return
            batch = [{"broadcast": True, "data": n}, *({"user": u, "data": n} for u in self.users)]
            resp = await self.http.post("/v1/publish/batch", json={"messages": batch})
            assert resp.status_code == 200, resp.text
            results = resp.json()["results"]
            assert len(results) == len(batch) and all("offset" in r for r in results), results
            self.broadcasts.append(n)
            for u in self.users:
                self.unicasts[u].append(n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1 / rate)

    async def aclose(self) -> None:
        self.stop.set()
        await self.http.aclose()
