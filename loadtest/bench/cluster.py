"""The processes a bench run measures, started on free loopback ports and stopped by PID.

A run gets its own redis-server, N gateways sharing one port (SO_REUSEPORT, as in
``switchboard up``), optionally a router, and the baseline server on the same Redis. Process
start-up reuses :mod:`tests.support` (the same helpers the integration tests trust); this
module adds what the bench needs on top: waiting until *every* gateway on the shared port is
subscribed (a health probe on a shared port may be answered by a sibling), and reading a
process's RSS and CPU time from ``/proc``.

With ``redis_shards=N`` (N >= 3) the gateways and the router run on a local Redis Cluster of
N masters and N replicas (:mod:`switchboard.localcluster`) instead; the baseline keeps its
plain redis-server, since what it measures is a plain PUBLISH.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard import streams
from switchboard.contract import Keys
from switchboard.localcluster import LocalCluster, Node
from switchboard.localcluster import query as node_query
from switchboard.localcluster import start_cluster as start_redis_cluster
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
REDIS_CLUSTER_START_S = 60.0  # generous: the machine may be small and busy


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


def _shard_subscribers(node: Node, channel: str) -> int:
    """PUBSUB SHARDNUMSUB on the master owning ``channel``'s slot (a sharded channel is only
    known to the nodes of its slot)."""
    reply = node_query(node, ("PUBSUB", "SHARDNUMSUB", channel))[0]
    return int(reply[1]) if len(reply) > 1 else 0


def _ready_gateway(port: int) -> str | None:
    """The id of the gateway that answered ``GET /readyz`` on the shared port with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError:  # 503: that one is not ready yet
        return None
    return str(body["gateway"]) if body.get("ready") else None


def wait_every_gateway_ready(port: int, gateway_ids: list[str], timeout: float = 30.0) -> None:
    """Until each gateway on the shared port has answered ``/readyz`` with 200 itself.

    Each probe is a new connection (a new source port), which the kernel hands to one of the
    SO_REUSEPORT listeners; a gateway that is up but not ready (on a cluster: its sharded
    pub/sub path not yet proven on every master) refuses connects with 503, which would
    slow the fleet's connect down to the clients' Retry-After backoff."""
    missing = set(gateway_ids)

    def all_ready() -> bool:
        gid = _ready_gateway(port)
        missing.discard(gid or "")
        return not missing

    wait_until(all_ready, timeout, f"every gateway ready (still waiting for {missing})")


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
    redis: RedisServer  # the plain redis-server: the baseline's, and Switchboard's unless sharded
    logdir: Path
    port: int = 0
    gateways: list[Proc] = field(default_factory=list)
    gateway_ids: list[str] = field(default_factory=list)
    router: Proc | None = None
    baseline: Baseline | None = None
    redis_cluster: LocalCluster | None = None  # Switchboard's Redis with ``redis_shards``
    redis_shards: int = 0
    # what the JSON records as ``redis``: "single", or the cluster's layout at the start
    redis_info: str | dict[str, Any] = "single"

    @property
    def gateway_pids(self) -> list[int]:
        return [g.pid for g in self.gateways if g.alive()]

    @property
    def router_url(self) -> str:
        assert self.router is not None
        return f"http://127.0.0.1:{self.router.port}"

    @property
    def redis_url(self) -> str:
        """The Redis Switchboard (gateways, router, a scenario's Store) uses."""
        return self.redis.url if self.redis_cluster is None else self.redis_cluster.url

    @property
    def redis_pids(self) -> list[int]:
        """The redis-server processes Switchboard uses: one, or every node of the cluster."""
        if self.redis_cluster is None:
            return [self.redis.proc.pid]
        return [n.pid for n in self.redis_cluster.nodes]

    def redis_node_usage(self) -> Usage | None:
        """CPU of every cluster node now (None on a single redis-server)."""
        if self.redis_cluster is None:
            return None
        return Usage.of(self.redis_pids)

    def redis_node_cpu(self, before: Usage | None) -> dict[str, float] | None:
        """CPU-seconds of each cluster node ("HOST:PORT") since ``before``."""
        if self.redis_cluster is None or before is None:
            return None
        after = Usage.of(list(before.times))
        names = {n.pid: n.addr for n in self.redis_cluster.nodes}
        return {names[p]: round(sum(after.times[p]) - sum(before.times[p]), 3)
                for p in sorted(before.times, key=lambda p: names[p])}

    def stop(self) -> None:
        """Stop everything this cluster started, by PID; the baseline first, Redis last."""
        try:
            if self.baseline is not None:
                self.baseline.stop()
            if self.router is not None:
                self.router.stop()
            for gw in self.gateways:
                gw.stop()
            self.redis.stop()
        finally:
            if self.redis_cluster is not None:
                self.redis_cluster.stop()  # every node by PID, also if the above failed


def start_cluster(*, gateways: int = 2, router: bool = False, baseline: bool = True,
                  redis_shards: int = 0, **gateway_env: str) -> BenchCluster:
    """Redis, the gateways and (optionally) the router and the baseline.

    ``redis_shards`` >= 3: Switchboard runs on a local Redis Cluster of that many masters,
    one replica each; 0: on the plain redis-server the baseline uses. Call from the main
    thread: cluster nodes are signalled when the thread that started them exits."""
    if redis_shards and redis_shards < 3:
        raise ValueError("redis_shards must be 0 (one redis-server) or at least 3")
    logdir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    cluster = BenchCluster(start_redis(), logdir, redis_shards=redis_shards)
    try:
        if redis_shards:
            cluster.redis_cluster = start_redis_cluster(redis_shards, 1,
                                                        start_timeout=REDIS_CLUSTER_START_S)
        cluster.port = free_port()
        # tests.support shortens the heartbeat for fast tests; the bench measures the default
        env = {"SWITCHBOARD_HEARTBEAT_INTERVAL": "2.0", **gateway_env, **EXTRA_GATEWAY_ENV}
        # tests.support sets SWITCHBOARD_REDIS_URL from the plain server; a cluster overrides it
        on_redis = ({} if cluster.redis_cluster is None
                    else {"SWITCHBOARD_REDIS_URL": cluster.redis_cluster.url})
        env.update(on_redis)
        for k in range(gateways):
            gid = f"bench-gw{k}-{os.getpid()}"
            cluster.gateways.append(start_gateway(cluster.redis, logdir, port=cluster.port,
                                                  SWITCHBOARD_GATEWAY_ID=gid, **env))
            cluster.gateway_ids.append(gid)
        # The health probe of the second gateway may have been answered by the first: wait
        # until every gateway is registered and subscribed to broadcasts.
        if cluster.redis_cluster is None:
            channel = Keys().broadcast_channel()
            wait_until(lambda: _subscribers(cluster.redis, channel) >= gateways, 20,
                       "every gateway subscribed")
        else:
            rc = cluster.redis_cluster
            channel = Keys().live_channel(streams.BROADCAST_KEY)
            owner = rc.master_of_slot(rc.slot_of(channel))
            wait_until(lambda: _shard_subscribers(owner, channel) >= gateways, 20,
                       "every gateway subscribed to the sharded broadcast channel")
            wait_every_gateway_ready(cluster.port, cluster.gateway_ids)
            cluster.redis_info = {
                "shards": redis_shards, "nodes": len(rc.nodes), "replicas_per_master": 1,
                "masters": sorted(n.addr for n in rc.masters()), "broadcast_master": owner.addr}
        if router:
            cluster.router = start_router(cluster.redis, logdir, **on_redis)
        if baseline:
            cluster.baseline = start_baseline(cluster.redis, logdir)
    except BaseException:
        cluster.stop()
        raise
    return cluster


__all__ = ["API_KEY", "JWT_SECRET", "BenchCluster", "Usage", "cpu_seconds", "rss_kib",
           "start_cluster"]
