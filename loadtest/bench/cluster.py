"""The processes a bench run measures, started on free loopback ports and stopped by PID.

A run gets its own redis-server, N gateways sharing one port (SO_REUSEPORT, as in
``switchboard up``), optionally a router, and the baseline server on the same Redis. Process
start-up reuses :mod:`tests.support` (the same helpers the integration tests trust); this
module adds what the bench needs on top: waiting until *every* gateway on the shared port is
subscribed (a health probe on a shared port may be answered by a sibling), and reading a
process's RSS and CPU time from ``/proc``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.contract import Keys
from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    Proc,
    RedisServer,
    free_port,
    start_gateway,
    start_redis,
    start_router,
    wait_until,
)

BASELINE_CHANNEL = "bench:baseline"
# SWITCHBOARD_* settings for every gateway the bench starts (``--gateway-env``), applied last
EXTRA_GATEWAY_ENV: dict[str, str] = {}
_TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def parse_stat_times(stat: str) -> tuple[float, float]:
    """(utime, stime) in seconds from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may contain spaces, so fields are
    counted after the last ')': utime and stime are fields 14 and 15 of proc(5).
    """
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) / _TICK, int(rest[12]) / _TICK


def parse_stat_cpu(stat: str) -> float:
    """utime + stime in seconds from the text of /proc/PID/stat."""
    return sum(parse_stat_times(stat))


def cpu_times(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return parse_stat_times(fh.read())


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


@dataclass(frozen=True)
class Usage:
    """RSS and CPU (user, system) of some processes at one moment."""

    rss_kib: dict[int, int]
    times: dict[int, tuple[float, float]]

    @classmethod
    def of(cls, pids: list[int]) -> Usage:
        return cls({p: rss_kib(p) for p in pids}, {p: cpu_times(p) for p in pids})

    def cpu_since(self, before: Usage) -> float:
        return self.user_since(before) + self.system_since(before)

    def user_since(self, before: Usage) -> float:
        return sum(self.times[p][0] - before.times[p][0] for p in self.times)

    def system_since(self, before: Usage) -> float:
        """Kernel time: on loopback, sending also runs the receiver's TCP input."""
        return sum(self.times[p][1] - before.times[p][1] for p in self.times)

    def rss_since(self, before: Usage) -> int:
        return sum(self.rss_kib[p] - before.rss_kib[p] for p in self.rss_kib)


@dataclass
class Baseline:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _subscribers(redis: RedisServer, channel: str) -> int:
    out = redis.cli("PUBSUB", "NUMSUB", channel).split()
    return int(out[1]) if len(out) > 1 else 0


def start_baseline(redis: RedisServer, logdir: Path) -> Baseline:
    port = free_port()
    log = (logdir / f"baseline-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.bench.baseline_server", "--port", str(port),
         "--redis", redis.url, "--secret", JWT_SECRET, "--channel", BASELINE_CHANNEL],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    log.close()
    base = Baseline(proc, port)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
        return _subscribers(redis, BASELINE_CHANNEL) >= 1

    try:
        wait_until(up, 20, "baseline server")
    except BaseException:
        base.stop()
        raise
    return base


@dataclass
class BenchCluster:
    redis: RedisServer
    logdir: Path
    port: int = 0
    gateways: list[Proc] = field(default_factory=list)
    gateway_ids: list[str] = field(default_factory=list)
    router: Proc | None = None
    baseline: Baseline | None = None

    @property
    def gateway_pids(self) -> list[int]:
        return [g.pid for g in self.gateways if g.alive()]

    @property
    def router_url(self) -> str:
        assert self.router is not None
        return f"http://127.0.0.1:{self.router.port}"

    def stop(self) -> None:
        """Stop everything this cluster started, by PID; the baseline first, Redis last."""
        if self.baseline is not None:
            self.baseline.stop()
        if self.router is not None:
            self.router.stop()
        for gw in self.gateways:
            gw.stop()
        self.redis.stop()


def start_cluster(*, gateways: int = 2, router: bool = False, baseline: bool = True,
                  **gateway_env: str) -> BenchCluster:
    logdir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    cluster = BenchCluster(start_redis(), logdir)
    try:
        cluster.port = free_port()
        # tests.support shortens the heartbeat for fast tests; the bench measures the default
        env = {"SWITCHBOARD_HEARTBEAT_INTERVAL": "2.0", **gateway_env, **EXTRA_GATEWAY_ENV}
        for k in range(gateways):
            gid = f"bench-gw{k}-{os.getpid()}"
            cluster.gateways.append(start_gateway(cluster.redis, logdir, port=cluster.port,
                                                  SWITCHBOARD_GATEWAY_ID=gid, **env))
            cluster.gateway_ids.append(gid)
        # The health probe of the second gateway may have been answered by the first: wait
        # until every gateway is registered and subscribed to broadcasts.
        channel = Keys().broadcast_channel()
        wait_until(lambda: _subscribers(cluster.redis, channel) >= gateways, 20,
                   "every gateway subscribed")
        if router:
            cluster.router = start_router(cluster.redis, logdir)
        if baseline:
            cluster.baseline = start_baseline(cluster.redis, logdir)
    except BaseException:
        cluster.stop()
        raise
    return cluster


__all__ = ["API_KEY", "JWT_SECRET", "BenchCluster", "Usage", "cpu_seconds", "rss_kib",
           "start_cluster"]
