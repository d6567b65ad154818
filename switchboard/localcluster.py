"""A real Redis Cluster on this machine, built from plain ``redis-server`` processes.

Used by the test suite (``tests/cluster_support.py``) and by ``switchboard up --redis-shards N``.
:func:`start_cluster` starts one ``redis-server --cluster-enabled yes`` per node on free
loopback ports, joins them with ``redis-cli --cluster create`` and returns once the cluster is
healthy: every node reports ``cluster_state:ok`` with all 16384 slots assigned, every node's
view of the slot map is the same, and every replica's link to its master is up.

:class:`LocalCluster` then answers questions about the *live* cluster (roles change after a
failover, slots move with a reshard) and does the faults tests need: kill a node, restart it,
wait for a failover, reshard. Every wait polls a condition with a deadline; processes are only
ever signalled through their own ``Popen`` (by PID), never by name.

Nodes run in their own session (a terminal's Ctrl-C reaches our process alone, which stops
them in order) and, on Linux, are sent SIGTERM by the kernel should the thread that started
them die, so a crashed test run leaves no Redis behind. That is the *thread*: start and restart
nodes from one that lives as long as the cluster (the main thread, not ``asyncio.to_thread``).
IPv4 loopback only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from switchboard.children import _die_with_parent, port_taken
from switchboard.redisurl import cluster_url

log = logging.getLogger("switchboard.localcluster")
# Any: redis-py leaves Connection's constructor and methods unannotated
_Connection: Any = redis.Connection

HASH_SLOTS = 16384
BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000
MAX_PORT = 65535 - BUS_OFFSET
POLL = 0.1  # seconds between looks at the cluster while waiting
QUERY_TIMEOUT = 2.0  # seconds one node has to answer one look
PING_TIMEOUT = 10.0  # seconds a (re)started node has to answer PING
STOP_GRACE = 10.0
BIND_ATTEMPTS = 5  # ports tried per node when another process takes a chosen port first
INSTALL_HINT = "install redis-server (`make sysdeps`, or apt-get install redis-server)"


class ClusterError(RuntimeError):
    """The cluster could not be started, or did not reach the state waited for in time."""


class ClusterCancelled(ClusterError):
    """The ``cancel`` event was set while waiting."""


class _AddressInUse(ClusterError):
    """Another process bound a port we had chosen, between our check and redis-server's bind."""


@dataclass(eq=False)
class Node:
    """One redis-server of the cluster. ``id`` is its cluster node id, which lives in its
    ``nodes-PORT.conf`` and so survives a restart."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    dir: str
    id: str = ""

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return Path(self.dir) / "redis.log"

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# -- what a node says -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES: how the answering node sees one node of the cluster."""

    id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica
    slots: tuple[tuple[int, int], ...]  # inclusive ranges, as Redis prints them

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool({"fail", "fail?"} & self.flags)

    def slot_set(self) -> frozenset[int]:
        return frozenset(s for lo, hi in self.slots for s in range(lo, hi + 1))


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """CLUSTER NODES' lines: ``id ip:port@bus[,hostname] flags master ping pong epoch link
    slot...``; importing/migrating entries (``[slot->-id]``) are not ownership and are skipped."""
    views = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        host, _, port = parts[1].split("@", 1)[0].rpartition(":")
        slots = []
        for token in parts[8:]:
            if token.startswith("["):
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(NodeView(parts[0], host, int(port), frozenset(parts[2].split(",")),
                              None if parts[3] == "-" else parts[3], tuple(slots)))
    return views


def parse_info(text: str) -> dict[str, str]:
    """``key:value`` lines of INFO or CLUSTER INFO."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def query(node: Node, *commands: tuple[str, ...]) -> list[Any]:
    """Run ``commands`` on one node over one fresh connection and return the raw replies.

    A raw connection, not ``redis.Redis``: its response callbacks would reshape CLUSTER NODES,
    and its retries would make a look at a dead node slow."""
    conn = _Connection(host=node.host, port=node.port, socket_timeout=QUERY_TIMEOUT,
                            socket_connect_timeout=QUERY_TIMEOUT, decode_responses=True)
    try:
        conn.connect()
        conn.send_packed_command(conn.pack_commands(list(commands)))
        return [conn.read_response() for _ in commands]
    finally:
        conn.disconnect()


def _views(node: Node) -> list[NodeView]:
    return parse_cluster_nodes(query(node, ("CLUSTER", "NODES"))[0])


# -- ports ------------------------------------------------------------------------------------


def _port_range() -> tuple[int, int]:
    """Where to look for ports: below the kernel's ephemeral range (ports of outgoing
    connections, and of everyone's ``bind(0)``), bus port included, so no client socket or
    other test takes a port between our check and redis-server's bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = min(low - 1 - BUS_OFFSET, MAX_PORT)
    if top - 10000 >= 1000:
        return 10000, top
    return 1024, MAX_PORT


def pick_port(host: str, taken: set[int], rng: random.Random | None = None) -> int:
    """A port P with P and P + 10000 (its cluster bus) both free and neither in ``taken``."""
    rng = rng or random.Random()
    low, high = _port_range()
    for _ in range(500):
        port = rng.randint(low, high)
        if {port, port + BUS_OFFSET} & taken:
            continue
        # SO_REUSEADDR as redis-server sets it: TIME_WAIT leftovers of a stopped node are free
        if not port_taken(host, port) and not port_taken(host, port + BUS_OFFSET):
            return port
    raise ClusterError(f"found no free port pair (P, P+{BUS_OFFSET}) in {low}-{high}")


# -- the cluster ------------------------------------------------------------------------------


def _executables() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        missing = "redis-server" if server is None else "redis-cli"
        raise ClusterError(f"{missing} is not installed: {INSTALL_HINT}")
    return server, cli


@dataclass(eq=False)
class LocalCluster:
    nodes: list[Node]
    url: str
    workdir: str
    owns_workdir: bool
    node_timeout_ms: int
    host: str = "127.0.0.1"
    server_exe: str = field(default="redis-server", repr=False)
    cli_exe: str = field(default="redis-cli", repr=False)
    cancel: threading.Event | None = field(default=None, repr=False)
    _slots_at_kill: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # -- context manager

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- processes

    def argv(self, port: int) -> list[str]:
        node_dir = str(Path(self.workdir) / str(port))
        return [self.server_exe, "--port", str(port), "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--save", "", "--appendonly", "no", "--bind", self.host,
                "--protected-mode", "no", "--dir", node_dir,
                "--logfile", str(Path(node_dir) / "redis.log"), "--daemonize", "no",
                # a master otherwise waits 5 s for more replicas before a diskless full sync,
                # and every replica (at start, after a restart) needs one
                "--repl-diskless-sync-delay", "0",
                # a replica whose offset is still 0 counts as loading and CLUSTER SLOTS leaves
                # it out; a master's pings move the offset: every second, not every 10 s
                "--repl-ping-replica-period", "1"]

    def _spawn(self, port: int) -> Node:
        """Start the node on ``port`` and wait until it answers PING."""
        node_dir = Path(self.workdir) / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        # errors before redis-server opens its log (a bad option) go to stdout: same file,
        # appended, so the log tail in an error message shows them too
        with (node_dir / "redis.log").open("ab") as out:
            proc = subprocess.Popen(self.argv(port), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=node_dir,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent(os.getpid()))
        node = Node(self.host, port, proc, str(node_dir))
        try:
            self._wait_pings(node)
        except BaseException:
            # not in self.nodes yet, so stop() would not find it
            if node.running():
                proc.kill()
            proc.wait()
            raise
        return node

    def _wait_pings(self, node: Node) -> None:
        deadline = time.monotonic() + PING_TIMEOUT
        while True:
            if not node.running():
                tail = node.log_tail()
                cls = _AddressInUse if "Address already in use" in tail else ClusterError
                raise cls(f"redis-server on port {node.port} exited with code "
                          f"{node.proc.returncode} while starting; its log ends:\n{tail}")
            with contextlib.suppress(redis.RedisError, OSError):
                if query(node, ("PING",))[0] == "PONG":
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"redis-server on port {node.port} did not answer PING "
                                   f"within {PING_TIMEOUT:.0f} s; its log ends:\n"
                                   f"{node.log_tail()}")
            self._pause()

    def _spawn_new(self) -> Node:
        taken = {p for n in self.nodes for p in (n.port, n.port + BUS_OFFSET)}
        for attempt in range(BIND_ATTEMPTS):
            port = pick_port(self.host, taken)
            try:
                return self._spawn(port)
            except _AddressInUse:
                log.info("port %d was taken meanwhile (attempt %d), trying another", port,
                         attempt + 1)
                taken |= {port, port + BUS_OFFSET}
                shutil.rmtree(Path(self.workdir) / str(port), ignore_errors=True)
        raise ClusterError(f"ports kept being taken by others {BIND_ATTEMPTS} times in a row")

    def _pause(self, seconds: float = POLL) -> None:
        if self.cancel is None:
            time.sleep(seconds)
        elif self.cancel.wait(seconds):
            raise ClusterCancelled("interrupted")

    def _create(self, replicas: int, deadline: float) -> None:
        argv = [self.cli_exe, "--cluster", "create", *(n.addr for n in self.nodes),
                "--cluster-replicas", str(replicas), "--cluster-yes"]
        out = self._run_cli(argv, deadline, "redis-cli --cluster create")
        if "[OK] All 16384 slots covered" not in out:
            raise ClusterError(f"redis-cli --cluster create did not cover all slots:\n"
                               f"{_tail(out)}")
        for node in self.nodes:
            node.id = query(node, ("CLUSTER", "MYID"))[0]

    def _run_cli(self, argv: list[str], deadline: float, what: str) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClusterError(f"no time left for {what}")
        try:
            # subprocess.run kills (by PID) and reaps redis-cli if it overruns
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=remaining, check=False)
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or b""  # bytes here even with text=True
            out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            raise ClusterError(f"{what} did not finish within {exc.timeout:.0f} s; its "
                               f"output ends:\n{_tail(out)}") from None
        if done.returncode != 0:
            raise ClusterError(f"{what} failed (exit {done.returncode}):\n"
                               f"{_tail(done.stdout + done.stderr)}")
        return done.stdout

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every node, wait up to ``grace``, SIGKILL what is left; remove our
        directory. Safe to call again."""
        for node in self.nodes:
            if node.running():
                node.proc.send_signal(signal.SIGTERM)  # by PID; a no-op once reaped
        deadline = time.monotonic() + grace
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.warning("redis-server on port %d (pid %d) ignored SIGTERM; killing it",
                            node.port, node.pid)
                node.proc.kill()
                node.proc.wait()
        if self.owns_workdir and not self._stopped:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._stopped = True

    # -- faults

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Signal ``node`` (SIGKILL by default). Its slots are remembered first, so
        :meth:`wait_failover` knows what a replica has to take over."""
        if not node.running():
            return
        with contextlib.suppress(redis.RedisError, OSError):
            mine = next((v for v in _views(node) if "myself" in v.flags), None)
            if mine is not None and mine.is_master:
                self._slots_at_kill[node.id] = mine.slot_set()
        node.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            node.proc.wait(timeout=STOP_GRACE)

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a stopped node again on its port and directory: it rejoins from its
        nodes.conf (an old master comes back as a replica of the one that replaced it).
        Returns once the cluster, that node included, is healthy again."""
        if node.running():
            raise ValueError(f"{node.addr} is still running")
        fresh = self._spawn(node.port)
        node.proc = fresh.proc
        self._slots_at_kill.pop(node.id, None)
        self.wait_healthy(timeout)

    def wait_failover(self, dead: Node, timeout: float = 30.0) -> Node:
        """Wait until a promoted replica serves every slot ``dead`` (a killed master) had, as
        every live node sees it, and the live cluster is healthy; return the new master."""
        if dead.running():
            raise ValueError(f"{dead.addr} is still running: kill it first")
        slots = self._slots_at_kill.get(dead.id) or self._slots_owned_by(dead.id)
        if not slots:
            raise ValueError(f"{dead.addr} served no slots: it was not a master")
        probe = min(slots)
        found: list[Node] = []

        def problems() -> list[tuple[Node | None, str]]:
            issues = self.problems()
            owner = self._agreed_owner(slots)
            if owner is None or owner is dead:
                issues.append((None, f"slot {probe} of {dead.addr} not yet taken over"))
            else:
                found[:] = [owner]
            return issues

        self._wait(problems, timeout, f"a replica to take over from {dead.addr}")
        return found[0]

    def reshard(self, slots: int, source: Node, target: Node, timeout: float = 60.0) -> None:
        """Move ``slots`` slots (and their keys) from master ``source`` to master ``target``
        with ``redis-cli --cluster reshard``; return once the cluster is healthy again."""
        deadline = time.monotonic() + timeout
        # redis-cli refuses a cluster whose nodes disagree or that has open slots
        self.wait_healthy(timeout)
        before = len(self._slots_owned_by(target.id))
        argv = [self.cli_exe, "--cluster", "reshard", source.addr, "--cluster-from", source.id,
                "--cluster-to", target.id, "--cluster-slots", str(slots), "--cluster-yes"]
        out = self._run_cli(argv, deadline, "redis-cli --cluster reshard")
        self.wait_healthy(max(deadline - time.monotonic(), POLL))
        moved = len(self._slots_owned_by(target.id)) - before
        if moved != slots:
            raise ClusterError(f"reshard moved {moved} slot(s), not {slots}:\n{_tail(out)}")

    # -- the live cluster

    def by_addr(self, host: str, port: int) -> Node | None:
        return next((n for n in self.nodes if n.port == port and n.host == host), None)

    def role(self, node: Node) -> str | None:
        """``master`` or ``slave`` as the node itself says (ROLE), or None if it is down."""
        if not node.running():
            return None
        try:
            return str(query(node, ("ROLE",))[0][0])
        except (redis.RedisError, OSError):
            return None

    def masters(self) -> list[Node]:
        """The running nodes that are masters now (a failover changes this)."""
        return [n for n in self.nodes if self.role(n) == "master"]

    def replicas(self) -> list[Node]:
        return [n for n in self.nodes if self.role(n) == "slave"]

    def master_of(self, replica: Node) -> Node | None:
        """The node ``replica`` replicates from, as it says (ROLE); None for a master or a
        node that is down."""
        if not replica.running():
            return None
        reply = query(replica, ("ROLE",))[0]
        if reply[0] != "slave":
            return None
        return self.by_addr(str(reply[1]), int(reply[2]))

    @staticmethod
    def slot_of(key: str) -> int:
        return int(key_slot(key.encode()))

    def master_of_slot(self, slot: int, timeout: float = 10.0) -> Node:
        """The running master serving ``slot``, once every live node agrees on which it is."""
        if not 0 <= slot < HASH_SLOTS:
            raise ValueError(f"slot must be in 0..{HASH_SLOTS - 1}, not {slot}")
        found: list[Node] = []

        def problems() -> list[tuple[Node | None, str]]:
            owner = self._agreed_owner(frozenset([slot]))
            if owner is None or not owner.running():
                return [(None, f"live nodes do not agree on a running owner of slot {slot}")]
            found[:] = [owner]
            return []

        self._wait(problems, timeout, f"the owner of slot {slot}")
        return found[0]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`problems` finds none."""
        self._wait(self.problems, timeout, "the cluster to be healthy")

    def problems(self) -> list[tuple[Node | None, str]]:
        """What keeps the running nodes from being a healthy cluster, by node; empty when
        each says cluster_state:ok with every slot assigned and served by a running master,
        all see the same slot map and no running node as failing, and every replica's link
        to its master is up and CLUSTER SLOTS lists it (what clients see of replicas)."""
        issues: list[tuple[Node | None, str]] = []
        maps = set()
        for node in (n for n in self.nodes if n.running()):
            try:
                info, nodes, repl, slots = query(node, ("CLUSTER", "INFO"), ("CLUSTER", "NODES"),
                                                 ("INFO", "replication"), ("CLUSTER", "SLOTS"))
            except (redis.RedisError, OSError) as exc:
                issues.append((node, f"does not answer: {exc}"))
                continue
            views = parse_cluster_nodes(nodes)
            found = self._node_problems(parse_info(info), views, parse_info(repl))
            issues += [(node, text) for text in (*found, *self._unlisted(views, slots))]
            maps.add(tuple(sorted((v.id, v.slots) for v in views if v.slots)))
        if len(maps) > 1:
            issues.append((None, "nodes disagree about the slot map"))
        return issues

    def _node_problems(self, info: dict[str, str], views: list[NodeView],
                       repl: dict[str, str]) -> Iterator[str]:
        if info.get("cluster_state") != "ok":
            yield f"cluster_state:{info.get('cluster_state')}"
        if info.get("cluster_slots_assigned") != str(HASH_SLOTS):
            yield f"{info.get('cluster_slots_assigned')} slots assigned"
        if info.get("cluster_known_nodes") != str(len(self.nodes)):
            yield f"knows {info.get('cluster_known_nodes')} of {len(self.nodes)} nodes"
        if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
            yield f"replica link to its master is {repl.get('master_link_status')}"
        for view in views:
            node = self.by_addr(view.host, view.port)
            alive = node is not None and node.running()
            if view.slots and not alive:
                yield f"slots still on {view.host}:{view.port}, which is down"
            elif alive and view.failing:
                yield f"sees {view.host}:{view.port} as failing"

    def _unlisted(self, views: list[NodeView], slots_reply: list[Any]) -> Iterator[str]:
        """Running replicas of masters with slots that this node's CLUSTER SLOTS leaves out.
        Its entries: ``[start, end, [host, port, id, ...] (master), [...] (replicas)...]``."""
        listed = {str(entry[2]) for row in slots_reply for entry in row[3:]}
        serving = {v.id for v in views if v.is_master and v.slots}
        for view in views:
            node = self.by_addr(view.host, view.port)
            if (view.master_id in serving and node is not None and node.running()
                    and view.id not in listed):
                yield f"CLUSTER SLOTS does not list replica {view.host}:{view.port} yet"

    def _slots_owned_by(self, node_id: str) -> frozenset[int]:
        for node in (n for n in self.nodes if n.running()):
            with contextlib.suppress(redis.RedisError, OSError):
                return frozenset().union(*(v.slot_set() for v in _views(node)
                                           if v.id == node_id))
        return frozenset()

    def _agreed_owner(self, slots: frozenset[int]) -> Node | None:
        """The one node every running node says serves all of ``slots``, else None."""
        owners: set[tuple[str, int] | None] = set()
        for node in (n for n in self.nodes if n.running()):
            try:
                views = _views(node)
            except (redis.RedisError, OSError):
                return None
            holders = {(v.host, v.port) for v in views if v.slots and slots <= v.slot_set()}
            owners.add(next(iter(holders)) if len(holders) == 1 else None)
        owner = owners.pop() if len(owners) == 1 else None
        return None if owner is None else self.by_addr(*owner)

    def _wait(self, problems: Callable[[], list[tuple[Node | None, str]]], timeout: float,
              what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            issues = problems()
            if not issues:
                return
            if time.monotonic() > deadline:
                raise ClusterError(_describe_timeout(what, timeout, issues))
            self._pause()


def _describe_timeout(what: str, timeout: float, issues: list[tuple[Node | None, str]]) -> str:
    lines = [f"{n.addr + ': ' if n else ''}{text}" for n, text in issues[:8]]
    culprit = next((n for n, _ in issues if n is not None), None)
    text = f"timed out after {timeout:.0f} s waiting for {what}:\n  " + "\n  ".join(lines)
    if culprit is not None:
        text += f"\nlog of {culprit.addr} ends:\n{culprit.log_tail()}"
    return text


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def start_cluster(masters: int = 3, replicas_per_master: int = 1, *,
                  node_timeout_ms: int = 2000, host: str = "127.0.0.1",
                  workdir: str | None = None, start_timeout: float = 30.0,
                  cancel: threading.Event | None = None) -> LocalCluster:
    """Start ``masters * (1 + replicas_per_master)`` nodes, form a cluster, wait until it is
    healthy. ``workdir`` (one subdirectory per node) is created and later removed unless
    given. Setting ``cancel`` interrupts the start (:class:`ClusterCancelled`). On any failure
    everything started is stopped before the error is raised."""
    if masters < 3:
        raise ValueError("a Redis Cluster needs at least 3 masters")
    if replicas_per_master < 0 or node_timeout_ms < 1:
        raise ValueError("replicas_per_master must be >= 0 and node_timeout_ms >= 1")
    server, cli = _executables()
    owns = workdir is None
    root = tempfile.mkdtemp(prefix="switchboard-cluster-") if workdir is None else workdir
    Path(root).mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster([], "", root, owns, node_timeout_ms, host, server, cli, cancel)
    deadline = time.monotonic() + start_timeout
    try:
        for _ in range(masters * (1 + replicas_per_master)):
            cluster.nodes.append(cluster._spawn_new())
            if time.monotonic() > deadline:
                raise ClusterError(f"starting the nodes took over {start_timeout:.0f} s")
        cluster._create(replicas_per_master, deadline)
        cluster.wait_healthy(max(deadline - time.monotonic(), POLL))
    except BaseException:
        cluster.stop()
        raise
    cluster.url = cluster_url([(n.host, n.port) for n in cluster.nodes])
    log.info("Redis Cluster up: %s", cluster.url)
    return cluster
