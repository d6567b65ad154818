"""``switchboard up``: a whole cluster on one machine.

Starts a private ``redis-server`` (unless ``--redis`` or ``SWITCHBOARD_REDIS_URL`` names one;
with ``--redis-shards N`` a private Redis Cluster of N masters and N replicas instead), the
router and N gateways sharing one port through SO_REUSEPORT; prints URLs, an API key, a demo
token and commands to try; then supervises. A child that dies is restarted, at most
:data:`~switchboard.children.RESTART_LIMIT` times a minute per child, after which the
supervisor gives up, stops everything and exits 1. SIGINT (Ctrl-C) or SIGTERM drains the
gateways, stops the router, then Redis, and exits 0. SIGUSR1 replaces the gateways one at a
time, the way a Kubernetes rolling update does: start a new one, wait until it is ready, drain
the old one (its clients resume on the others) and wait until it has exited, then the next.

The shutdown is ordered here, not left to the terminal's process-group Ctrl-C (children run
in their own session, see :mod:`switchboard.children`): draining gateways still need Redis to
deregister, so Redis stops last. Only processes started here are ever signalled, by PID.

Decisions (configuration, what to print; the restart budget lives with the children) are pure
functions tested without processes; :class:`Supervisor` does the I/O. The gateways are a list
that :meth:`Supervisor.scale_gateways` grows or shrinks; unless ``--no-autoscale``, the
autoscaler (:mod:`switchboard.autoscale_loop`) looks at their load every two seconds and
starts gateways, or drains the one it chose with SIGTERM (it moves its clients, who resume
on the others).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from secrets import token_hex, token_urlsafe
from types import FrameType
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from switchboard import settings_cli
from switchboard.auth import mint
from switchboard.autoscale import Decision, Policy
from switchboard.autoscale_loop import AutoscaleLoop, describe_policy, policy_from_args
from switchboard.children import (
    Child,
    Interrupted,
    StartError,
    describe_exit,
    free_port,
    http_ok,
    port_taken,
    redis_pings,
    start_children,
    terminate,
)
from switchboard.clusterclient import node_options
from switchboard.config import GatewaySettings
from switchboard.contract import Keys
from switchboard.limits import raise_nofile_limit
from switchboard.localcluster import ClusterCancelled, ClusterError, LocalCluster, start_cluster
from switchboard.redisurl import is_cluster, parse_cluster

log = logging.getLogger("switchboard.supervisor")

DEFAULT_PORT = 8080
DEFAULT_ROUTER_PORT = 8000
START_TIMEOUT = 30.0  # seconds a child has to become ready
REDIS_START_TIMEOUT = 10.0
DRAIN_GRACE = 30.0  # seconds gateways get to drain before SIGKILL
REDIS_STOP_GRACE = 10.0
TICK = 0.2  # how often the supervisor looks at its children
DEMO_TOKEN_TTL = 24 * 3600.0
MIN_SHARDS = 3  # redis-cli --cluster create refuses fewer masters
CLUSTER_NODE_TIMEOUT_MS = 2000


# -- pure decisions -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    host: str
    port: int
    router_port: int
    gateways: int
    redis_url: str | None  # None: run a private redis-server
    jwt_secret: str
    api_keys: tuple[str, ...]
    autoscale: Policy | None = None  # None: a fixed number of gateways
    redis_shards: int = 0  # >= MIN_SHARDS: run a private Redis Cluster, redis_url is None
    webhook_url: str = ""  # set: run a webhook dispatcher (docs/webhooks.md)

    @property
    def api_key(self) -> str:
        return self.api_keys[0]


def _port(flag: int | None, environ: Mapping[str, str], name: str, default: int) -> int:
    if flag is not None:
        return flag
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"switchboard: {name} must be a port number, got {raw!r}") from None


def _redis_shards(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # getattr: namespaces built by hand (tests) may not have the flag
    flag: int | None = getattr(args, "redis_shards", None)
    if flag is not None:
        shards, source = flag, "--redis-shards"
    else:
        raw = environ.get("SWITCHBOARD_REDIS_SHARDS", "").strip()
        if not raw:
            return 0
        source = "SWITCHBOARD_REDIS_SHARDS"
        try:
            shards = int(raw)
        except ValueError:
            raise SystemExit(f"switchboard: {source} must be a whole number, got {raw!r}"
                             ) from None
    if shards < 0 or 0 < shards < MIN_SHARDS:
        raise SystemExit(f"switchboard: {source} must be 0 (one private redis-server) or at "
                         f"least {MIN_SHARDS} (a Redis Cluster needs {MIN_SHARDS} masters), "
                         f"got {shards}")
    return shards


def _redis_url(args: argparse.Namespace, environ: Mapping[str, str],
               shards: int) -> str | None:
    url = args.redis or environ.get("SWITCHBOARD_REDIS_URL") or None
    if url and shards:
        given = "--redis" if args.redis else "SWITCHBOARD_REDIS_URL"
        raise SystemExit(f"switchboard: --redis-shards starts a private Redis Cluster, so it "
                         f"cannot be combined with {given}: drop one of them")
    return url


def resolve(args: argparse.Namespace, environ: Mapping[str, str],
            new_secret: Callable[[], str] = lambda: token_urlsafe(32)) -> UpConfig:
    """Flags win over SWITCHBOARD_* variables; secrets nobody gave are generated."""
    if args.gateways < 1:
        raise SystemExit("switchboard: --gateways must be at least 1")
    policy = policy_from_args(args)
    gateways = args.gateways if policy is None else policy.clamp(args.gateways)
    env_keys = tuple(k.strip() for k in environ.get("SWITCHBOARD_API_KEYS", "").split(",")
                     if k.strip())
    if args.api_key:
        # the given key is the one we print; keys from the environment stay valid too
        keys = (args.api_key, *(k for k in env_keys if k != args.api_key))
    else:
        keys = env_keys or (new_secret(),)
    shards = _redis_shards(args, environ)
    webhook_url = environ.get("SWITCHBOARD_WEBHOOK_URL", "").strip()
    return UpConfig(
        host=args.host,
        port=_port(args.port, environ, "SWITCHBOARD_PORT", DEFAULT_PORT),
        router_port=_port(args.router_port, environ, "SWITCHBOARD_ROUTER_PORT",
                          DEFAULT_ROUTER_PORT),
        gateways=gateways,
        redis_url=_redis_url(args, environ, shards),
        jwt_secret=args.jwt_secret or environ.get("SWITCHBOARD_JWT_SECRET") or new_secret(),
        api_keys=keys,
        autoscale=policy,
        redis_shards=shards,
        webhook_url=webhook_url,
    )


def connect_host(host: str) -> str:
    """Where to reach a server listening on ``host``: wildcard addresses mean this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    host = connect_host(host)
    return f"[{host}]" if ":" in host else host


def demo_config(cfg: UpConfig) -> str:
    """What the demo page may know in dev mode: where the router is and its dev API key."""
    host = url_host(cfg.host)
    return json.dumps({"router": f"http://{host}:{cfg.router_port}", "api_key": cfg.api_key})


def gateway_origin(cfg: UpConfig) -> str:
    return f"http://{url_host(cfg.host)}:{cfg.port}"


def gateway_env(cfg: UpConfig, redis_url: str, gateway_id: str) -> dict[str, str]:
    return {
        "SWITCHBOARD_REDIS_URL": redis_url,
        "SWITCHBOARD_JWT_SECRET": cfg.jwt_secret,
        "SWITCHBOARD_HOST": cfg.host,
        "SWITCHBOARD_PORT": str(cfg.port),
        "SWITCHBOARD_REUSE_PORT": "1",
        "SWITCHBOARD_GATEWAY_ID": gateway_id,
        # `up` is a dev cluster: the demo page may publish through the router.
        "SWITCHBOARD_DEMO_CONFIG": demo_config(cfg),
    }


def router_env(cfg: UpConfig, redis_url: str) -> dict[str, str]:
    return {
        "SWITCHBOARD_REDIS_URL": redis_url,
        "SWITCHBOARD_API_KEYS": ",".join(cfg.api_keys),
        "SWITCHBOARD_HOST": cfg.host,
        "SWITCHBOARD_ROUTER_PORT": str(cfg.router_port),
        "SWITCHBOARD_CORS_ORIGINS": gateway_origin(cfg),
    }


def redis_argv(exe: str, port: int, workdir: str) -> list[str]:
    return [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log"),
            "--daemonize", "no"]


Registry = redis.Redis | RedisCluster


def redis_client(url: str, timeout: float) -> Registry:
    """A client for ``url``: one server as ``redis.Redis.from_url`` opens it, or a Redis
    Cluster found from the URL's seeds (raises ValueError for a bad cluster URL)."""
    if not is_cluster(url):
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    parsed = parse_cluster(url)
    node: Any = ClusterNode  # unannotated in redis-py
    return RedisCluster(startup_nodes=[node(h, p) for h, p in parsed.seeds],
                        **{**node_options(parsed), "socket_timeout": timeout,
                           "socket_connect_timeout": timeout})


@dataclass(frozen=True)
class ClusterSummary:
    """The private Redis Cluster as the banner shows it."""

    masters: tuple[str, ...]  # HOST:PORT
    replicas: tuple[tuple[str, str], ...]  # (HOST:PORT, HOST:PORT of its master)


def summarize(cluster: LocalCluster) -> ClusterSummary:
    """Roles as the nodes say now (not as they were created)."""
    replicas = []
    for node in cluster.replicas():
        try:
            master = cluster.master_of(node)
        except (redis.RedisError, OSError):  # died since: the banner is no place to fail
            master = None
        replicas.append((node.addr, master.addr if master else "?"))
    return ClusterSummary(tuple(n.addr for n in cluster.masters()), tuple(replicas))


def _cluster_lines(cluster: ClusterSummary | None) -> list[str]:
    if cluster is None:
        return []
    return [f"  Masters     {', '.join(cluster.masters)}",
            "  Replicas    " + ", ".join(f"{r} (of {m})" for r, m in cluster.replicas)]


def cli_command(argv0: str, python: str) -> str:
    """How to run the switchboard CLI again, so printed commands work even when the console
    script is not on PATH (``make run`` starts ``.venv/bin/switchboard``)."""
    if os.path.basename(argv0) == "switchboard":
        return shlex.quote(argv0)
    return f"{shlex.quote(python)} -m switchboard.cli"


def banner(cfg: UpConfig, *, redis_url: str, private_redis: bool, token: str,
           pids: list[tuple[str, int]], cli: str = "switchboard",
           cluster: ClusterSummary | None = None, up_pid: int | None = None) -> str:
    """What ``switchboard up`` prints once the cluster is ready; ``cluster``: the private
    Redis Cluster it started, if any; ``up_pid``: the supervisor's own pid."""
    host = url_host(cfg.host)
    gw, router = f"{host}:{cfg.port}", f"http://{host}:{cfg.router_port}"
    q = shlex.quote
    redis_kind = "private Redis" if private_redis else "Redis"
    if cluster is not None:
        redis_kind += (f" Cluster ({len(cluster.masters)} masters, {len(cluster.replicas)} "
                       "replicas)")
    lines = [
        f"Switchboard is up: {cfg.gateways} gateway(s) on port {cfg.port}, router on port "
        f"{cfg.router_port}, {redis_kind} at {redis_url}",
        "",
        f"  WebSocket   ws://{gw}/ws",
        f"  SSE         http://{gw}/sse",
        f"  Demo page   http://{gw}/",
        f"  Router API  {router}  (Authorization: Bearer API_KEY)",
        *_cluster_lines(cluster),
        f"  API key     {cfg.api_key}",
        f"  Autoscaler  {describe_policy(cfg.autoscale)}",
        f"  Demo token  {token}",
        '              (user "demo", valid 24 h, may subscribe and publish to every channel)',
        "",
        "Environment for the switchboard CLI and your backend (paste into a shell):",
        f"  export SWITCHBOARD_REDIS_URL={q(redis_url)}",
        f"  export SWITCHBOARD_JWT_SECRET={q(cfg.jwt_secret)}",
        f"  export SWITCHBOARD_API_KEY={q(cfg.api_key)}",
        f"  export SWITCHBOARD_ROUTER_URL={q(router)}",
        f"  export DEMO_TOKEN={q(token)}",
        "",
        "Try:",
        f'  curl -N "http://{gw}/sse?token=$DEMO_TOKEN"',
        f"  curl -s -w '\\n' -X POST {router}/v1/publish"
        f" -H {q('Authorization: Bearer ' + cfg.api_key)} -H 'Content-Type: application/json'"
        " -d '{\"broadcast\": true, \"data\": \"hello\"}'",
        f"  SWITCHBOARD_JWT_SECRET={q(cfg.jwt_secret)} {cli} token --user alice",
        f"  {cli} publish --broadcast hello     # after the exports above",
        f"  {cli} status",
        "",
        "Processes: " + ", ".join(f"{name} pid {pid}" for name, pid in pids),
        "Ctrl-C drains the gateways and stops everything.",
        f"kill -USR1 {up_pid if up_pid is not None else 'PID'} replaces the gateways one at a "
        "time (a rolling restart): clients resume, nothing is lost.",
    ]
    return "\n".join(lines) + "\n"


# -- the supervisor ---------------------------------------------------------------------------


class Supervisor:
    def __init__(self, cfg: UpConfig, environ: Mapping[str, str]) -> None:
        self.cfg = cfg
        self.environ = dict(environ)
        self.stop = threading.Event()  # set by SIGINT/SIGTERM/SIGHUP
        self.hurry = threading.Event()  # a second signal: skip the drain
        self.roll_requested = threading.Event()  # SIGUSR1: a rolling restart of the gateways
        self._to_roll: list[Child] = []  # gateways of the rolling restart not replaced yet
        self._draining: Child | None = None  # the one it replaced last, until it has exited
        self.redis_url = cfg.redis_url or ""
        self.redis_dir: str | None = None
        self.redis: Child | None = None
        self.cluster: LocalCluster | None = None  # with --redis-shards
        self.router: Child | None = None
        self.webhooks: Child | None = None
        self.gateways: list[Child] = []
        self.retiring: list[Child] = []
        self._next_gateway = 1
        self._registry: Registry | None = None
        self._autoscaler: AutoscaleLoop | None = None
        self._keys = Keys(settings_cli.build(GatewaySettings, argparse.Namespace(),
                                             environ=self.environ).prefix)

    # signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    def _on_roll(self, signum: int, frame: FrameType | None) -> None:
        self.roll_requested.set()

    @contextmanager
    def signals_handled(self) -> Iterator[None]:
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in sigs}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_roll)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # starting

    def children(self) -> list[Child]:
        slots = [self.redis, self.router, self.webhooks, *self.gateways]
        return [c for c in slots if c is not None]

    def start_all(self) -> None:
        for host, port in ((self.cfg.host, self.cfg.port), (self.cfg.host, self.cfg.router_port)):
            if port_taken(host, port):
                raise StartError(f"port {port} on {host} is in use (another `switchboard up`?); "
                                 "choose another with --port / --router-port")
        self.start_redis()
        self.router = Child("router", self._router_command,
                            lambda c: http_ok(f"http://{self._url_host}:{self.cfg.router_port}"
                                              "/healthz"))
        self.start([self.router])
        if self.cfg.webhook_url:
            port = int(self.environ.get("SWITCHBOARD_WEBHOOK_PORT") or 8090)
            self.webhooks = Child("webhooks", self._webhooks_command,
                                  lambda c: http_ok(f"http://{self._url_host}:{port}/metrics"))
            self.start([self.webhooks])
        self.scale_gateways(self.cfg.gateways)
        if self.cfg.autoscale is not None:
            # cast: AutoscaleLoop is annotated for redis.Redis, but uses only what a
            # RedisCluster has as well (a non-transactional pipeline of HMGETs)
            self._autoscaler = AutoscaleLoop(self.cfg.autoscale,
                                             cast(redis.Redis, self._registry), self._keys)

    def start_redis(self) -> None:
        """Start the private redis-server or Redis Cluster, or check the given Redis; then
        open the registry client the readiness probe and the autoscaler read."""
        if self.cfg.redis_shards:
            self._start_private_cluster()
        elif self.cfg.redis_url is None:
            self._start_private_redis()
        else:
            self._check_external_redis()
        self._registry = redis_client(self.redis_url, 1.0)

    @property
    def _url_host(self) -> str:
        return url_host(self.cfg.host)

    def _start_private_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartError("redis-server is not installed: install it (`make sysdeps`) or "
                             "pass --redis URL")
        self.redis_dir = tempfile.mkdtemp(prefix="switchboard-redis-")
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        argv = redis_argv(exe, port, self.redis_dir)
        self.redis = Child("redis-server", lambda c: (argv, {}), lambda c: redis_pings(port))
        self.start([self.redis], REDIS_START_TIMEOUT)

    def _start_private_cluster(self) -> None:
        n = self.cfg.redis_shards
        log.info("starting a Redis Cluster of %d masters and %d replicas", n, n)
        try:
            # the stop event: Ctrl-C interrupts the start instead of waiting for it
            self.cluster = start_cluster(n, 1, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS,
                                         start_timeout=START_TIMEOUT + 2.0 * n,
                                         cancel=self.stop)
        except ClusterCancelled:
            raise Interrupted from None
        except ClusterError as exc:
            raise StartError(f"the Redis Cluster did not start: {exc}") from None
        self.redis_url = self.cluster.url
        for node in self.cluster.nodes:
            log.info("started redis-server %s (pid %d)", node.addr, node.pid)

    def _check_external_cluster(self) -> None:
        try:
            client = redis_client(self.redis_url, 2.0)
        except ValueError as exc:
            raise StartError(f"bad Redis Cluster URL: {exc}") from None
        except (redis.RedisError, RedisClusterException) as exc:
            raise StartError(f"cannot reach the Redis Cluster at {self.redis_url}: {exc}"
                             ) from None
        try:
            client.ping()
        except (redis.RedisError, RedisClusterException) as exc:
            raise StartError(f"cannot reach the Redis Cluster at {self.redis_url}: {exc}"
                             ) from None
        finally:
            client.close()

    def _check_external_redis(self) -> None:
        if is_cluster(self.redis_url):
            self._check_external_cluster()
            return
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2.0,
                                      socket_connect_timeout=2.0)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StartError(f"cannot reach Redis at {self.redis_url}: {exc}") from None
        finally:
            client.close()

    def _router_command(self, child: Child) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "switchboard.cli", "router"]
        return argv, router_env(self.cfg, self.redis_url)

    def _webhooks_command(self, child: Child) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "switchboard.cli", "webhooks"]
        return argv, {"SWITCHBOARD_REDIS_URL": self.redis_url, "SWITCHBOARD_HOST": self.cfg.host}

    def _gateway_command(self, child: Child) -> tuple[list[str], dict[str, str]]:
        # a fresh id per run, so a restarted gateway is not mistaken for its dead predecessor
        # (whose registry entry lingers until its TTL) and the readiness probe means something
        child.ident = f"gw{child.name.rsplit('-', 1)[-1]}-{token_hex(4)}"
        argv = [sys.executable, "-m", "switchboard.cli", "gateway"]
        return argv, gateway_env(self.cfg, self.redis_url, child.ident)

    def _gateway_ready(self, child: Child) -> bool:
        # All gateways share the port, so /healthz may be answered by another one: the
        # registry entry under this run's id is what proves this gateway is up.
        assert self._registry is not None
        # RedisClusterException is not a RedisError: a cluster client's "slot not covered"
        # while a failover is under way, say
        try:
            registered = bool(self._registry.exists(self._keys.gateway(child.ident)))
        except (redis.RedisError, RedisClusterException):
            return False
        return registered and http_ok(f"http://{self._url_host}:{self.cfg.port}/healthz")

    def start(self, children: list[Child], timeout: float = START_TIMEOUT) -> None:
        """Spawn ``children`` and wait until each is ready; raise StartError or Interrupted."""
        start_children(children, self.environ, timeout, self.stop)

    def scale_gateways(self, n: int, drain: Sequence[str] = ()) -> None:
        """Grow to ``n`` gateways (waiting until the new ones are ready) or shrink to ``n`` by
        draining the gateways whose ids are in ``drain`` first, then the newest."""
        if n > len(self.gateways):
            new = [self._new_gateway() for _ in range(n - len(self.gateways))]
            self.gateways.extend(new)
            self.start(new)
        chosen = [g for g in self.gateways if g.ident in drain]
        while len(self.gateways) > n:
            self._drain(chosen.pop(0) if chosen else self.gateways[-1])

    def _new_gateway(self) -> Child:
        child = Child(f"gateway-{self._next_gateway}", self._gateway_command,
                      self._gateway_ready)
        self._next_gateway += 1
        return child

    def _drain(self, child: Child) -> None:
        """Take ``child`` out of the gateways and drain it (killed if still up after the
        grace, by _reap_retired)."""
        self.gateways.remove(child)
        log.info("draining %s %s (pid %d)", child.name, child.ident, child.pid)
        child.retire_by = time.monotonic() + DRAIN_GRACE
        child.signal(signal.SIGTERM)  # by PID, through its Popen
        self.retiring.append(child)

    # rolling restart

    @property
    def rolling(self) -> bool:
        return bool(self._to_roll) or self._draining is not None

    def start_roll(self) -> None:
        """Begin replacing every gateway, one at a time (see :meth:`roll`)."""
        if self.rolling:
            log.info("a rolling restart is under way already")
            return
        self._to_roll = list(self.gateways)
        log.info("rolling restart of %d gateway(s)", len(self._to_roll))

    def roll(self) -> None:
        """One step of a rolling restart (called while :attr:`rolling`): wait for the last
        replaced gateway to exit, then start the next one's successor, wait until it is
        ready and drain the old one. Never
        fewer ready gateways than before; at most one draining. Raises StartError (the
        rolling restart is abandoned, its failed successor dropped, the old gateway kept) or
        Interrupted."""
        if self._draining is not None:
            if self._draining.running():
                return  # still moving its clients (_reap_retired kills it after the grace)
            log.info("%s has drained and exited", self._draining.name)
            self._draining = None
        # gateways the autoscaler (or a crash loop) removed meanwhile need no replacing
        self._to_roll = [g for g in self._to_roll if g in self.gateways]
        if not self._to_roll:
            log.info("rolling restart done")
            return
        old = self._to_roll.pop(0)
        new = self._new_gateway()
        self.gateways.append(new)
        try:
            self.start([new])
        except StartError:
            # Broken new code must not crash-loop through the restart budget and take the
            # healthy old gateways down with it: drop the successor, keep the old one.
            self._to_roll = []
            self.gateways.remove(new)
            if new.running():  # started but never ready
                new.signal(signal.SIGKILL)
                if new.proc is not None:
                    new.proc.wait(5)
            raise
        log.info("rolling restart: %s %s is ready, %d to go after %s", new.name, new.ident,
                 len(self._to_roll), old.name)
        self._drain(old)
        self._draining = old

    def autoscale(self, now: float) -> Decision | None:
        """One look by the autoscaler, if one is due, carried out; returns its decision."""
        if self._autoscaler is None or not self._autoscaler.due(now):
            return None
        # start order, so the autoscaler's tie-break drains the newest
        ours = [(g.ident, False) for g in self.gateways] + [(g.ident, True)
                                                            for g in self.retiring]
        decision = self._autoscaler.step(ours, now)
        if decision is None or decision.action == "hold":
            return decision
        if decision.action == "scale_out":
            self.scale_gateways(len(self.gateways) + decision.target - decision.current)
        else:
            self.scale_gateways(len(self.gateways) - len(decision.drain), decision.drain)
        return decision

    # supervising

    def supervise(self) -> int:
        """Watch children until a signal (return 0) or a child's restart budget runs out (1)."""
        while not self.stop.wait(TICK):
            self._reap_retired()
            if self.roll_requested.is_set():
                self.roll_requested.clear()
                self.start_roll()
            try:
                if self.rolling:
                    self.roll()  # the autoscaler waits: the two would fight over gateways
                else:
                    self.autoscale(time.monotonic())
            except StartError as exc:
                # the autoscaler's new gateway is dead and restarted below; a rolling
                # restart's was dropped
                log.warning("%s", exc)
            except Interrupted:
                return 0
            for child in self.children():
                if child.running() or child.proc is None:
                    continue
                drained = child in self.gateways and child.proc.returncode == 0
                if drained:
                    # A gateway exits 0 only after a drain it was asked for (the router's
                    # POST /v1/gateways/ID/drain): replace it, it did not crash.
                    log.info("%s (pid %d) drained and exited; replacing it", child.name,
                             child.pid)
                else:
                    log.warning("%s (pid %d) %s", child.name, child.pid,
                                describe_exit(child.proc.returncode))
                if not drained and not child.budget.spend(time.monotonic()):
                    log.error("%s died again after %d restarts within %.0f s; giving up and "
                              "shutting down", child.name, child.budget.limit,
                              child.budget.window)
                    return 1
                if not drained:
                    log.info("restarting %s (restart %d of %d allowed per %.0f s)",
                             child.name, child.budget.used(time.monotonic()),
                             child.budget.limit, child.budget.window)
                try:
                    self.start([child])
                    log.info("%s is back (pid %d)", child.name, child.pid)
                except StartError as exc:
                    log.warning("%s", exc)  # it is dead now; the next tick counts it again
                except Interrupted:
                    return 0
        return 0

    def _reap_retired(self) -> None:
        for child in list(self.retiring):
            if not child.running():
                self.retiring.remove(child)
            elif child.retire_by is not None and time.monotonic() > child.retire_by:
                log.warning("%s still running after %.0f s; killing it", child.name,
                            DRAIN_GRACE)
                child.signal(signal.SIGKILL)

    # stopping

    def shutdown(self) -> None:
        """Drain gateways and stop the router together, then Redis; remove Redis' directory."""
        first = [c for c in [*self.retiring, *self.gateways, self.router, self.webhooks]
                 if c is not None and c.running()]
        if first:
            log.info("stopping %d process(es), gateways drain for up to %.0f s "
                     "(signal again to stop at once)", len(first), DRAIN_GRACE)
        self._terminate(first, DRAIN_GRACE)
        if self._registry is not None:
            self._registry.close()
        if self.redis is not None:
            self._terminate([self.redis], REDIS_STOP_GRACE)
        if self.redis_dir is not None:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            self.redis_dir = None
        if self.cluster is not None:
            self.cluster.stop(0.0 if self.hurry.is_set() else REDIS_STOP_GRACE)
            self.cluster = None
        log.info("stopped")

    def _terminate(self, children: list[Child], grace: float) -> None:
        terminate(children, grace, self.hurry)

def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s supervisor %(levelname)s %(message)s")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``switchboard up``; returns the exit code."""
    _setup_logging()
    soft, _hard = raise_nofile_limit()
    log.info("open file limit %d", soft)
    cfg = resolve(args, os.environ)
    if os.environ.get("SWITCHBOARD_JWT_PUBLIC_KEY"):
        log.warning("SWITCHBOARD_JWT_PUBLIC_KEY is set: gateways will verify tokens with it, "
                    "so the printed HS256 demo token will be refused")
    sup = Supervisor(cfg, os.environ)
    with sup.signals_handled():
        try:
            sup.start_all()
            # presence on: demo tabs in one channel show each other join and leave
            token = mint(cfg.jwt_secret, "demo", ttl=DEMO_TOKEN_TTL, channels=["*"],
                         publish=["*"], presence=["*"])
            pids = [(f"{c.name} {c.ident}".strip(), c.pid) for c in sup.children()]
            summary = None
            if sup.cluster is not None:
                summary = summarize(sup.cluster)
                pids += [(f"redis-server {n.addr}", n.pid) for n in sup.cluster.nodes]
            sys.stdout.write(banner(cfg, redis_url=sup.redis_url,
                                    private_redis=cfg.redis_url is None, token=token, pids=pids,
                                    cli=cli_command(sys.argv[0], sys.executable),
                                    cluster=summary, up_pid=os.getpid()))
            sys.stdout.flush()
            return sup.supervise()
        except Interrupted:
            return 0
        except StartError as exc:
            log.error("%s", exc)
            return 1
        finally:
            sup.shutdown()
