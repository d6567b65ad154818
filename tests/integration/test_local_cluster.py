"""The local Redis Cluster builder (switchboard/localcluster.py) against real redis-server
processes: it forms a cluster redis-py can use, a killed master's replica takes over, a
reshard moves slots with their keys, and nothing is left behind when it stops or fails to
start. Also ``switchboard up --redis-shards``'s Redis part, which starts and stops one.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from switchboard.localcluster import (
    BUS_OFFSET,
    HASH_SLOTS,
    ClusterCancelled,
    ClusterError,
    LocalCluster,
    Node,
    start_cluster,
)
from switchboard.redisurl import is_cluster, parse_cluster
from switchboard.supervisor import Supervisor, banner, resolve, summarize
from tests.cluster_support import cluster_client, key_in_slot

pytestmark = pytest.mark.integration


def node_client(node: Node) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, decode_responses=True, socket_timeout=5)


def owned_slots(cluster: LocalCluster, node: Node) -> set[int]:
    """The slots ``node`` serves according to redis-py's own reading of CLUSTER SLOTS."""
    client = cluster_client(cluster)
    try:
        return {s for (lo, hi), owner in client.cluster_slots().items()
                if owner["primary"] == (node.host, node.port) for s in range(lo, hi + 1)}
    finally:
        client.close()


def node_ports(workdir: Path) -> list[int]:
    """The ports of the nodes started in ``workdir`` (one subdirectory per port)."""
    return sorted(int(d.name) for d in workdir.iterdir() if d.name.isdigit())


def redis_processes(ports: list[int]) -> list[int]:
    """PIDs of live redis-servers on these ports, found by their process title
    ("/usr/bin/redis-server 127.0.0.1:PORT [cluster]": redis-server rewrites its command line)."""
    titles = [f"127.0.0.1:{p} ".encode() for p in ports]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"redis-server " in cmdline and any(t in cmdline for t in titles):
            found.append(int(entry.name))
    return found


def listening(ports: list[int]) -> list[int]:
    """Which of these ports and their bus ports (+10000) accept connections."""
    found = []
    for port in (p for node in ports for p in (node, node + BUS_OFFSET)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            continue
        found.append(port)
    return found


def test_three_masters_and_three_replicas_serve_every_slot(redis_cluster: LocalCluster) -> None:
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert {n.addr for n in masters} | {n.addr for n in replicas} == {
        n.addr for n in redis_cluster.nodes}
    # each replica follows a different master, and each master knows its replica
    followed = [redis_cluster.master_of(r) for r in replicas]
    assert sorted(m.addr for m in followed if m) == sorted(m.addr for m in masters)
    for master in masters:
        info = node_client(master).info("replication")
        assert info["connected_slaves"] == 1, info

    client = cluster_client(redis_cluster)
    slots = client.cluster_slots()
    covered = sorted(s for lo, hi in slots for s in range(lo, hi + 1))
    assert covered == list(range(HASH_SLOTS))
    assert {owner["primary"] for owner in slots.values()} == {(m.host, m.port) for m in masters}
    # clients see the replicas too (a replica that never synced would be left out)
    assert {tuple(r[:2]) for owner in slots.values() for r in owner["replicas"]} == {
        (r.host, r.port) for r in replicas}

    key = "greeting"
    assert client.set(key, "hello") and client.get(key) == "hello"
    owner = redis_cluster.master_of_slot(redis_cluster.slot_of(key))
    assert owner in masters
    assert node_client(owner).get(key) == "hello"  # the key really lives on that master
    for other in (m for m in masters if m is not owner):
        with pytest.raises(redis.exceptions.MovedError):
            node_client(other).get(key)
    client.close()
    assert is_cluster(redis_cluster.url)
    assert len(parse_cluster(redis_cluster.url).seeds) == 6


def test_a_killed_master_is_replaced_by_its_replica(redis_cluster: LocalCluster) -> None:
    key = "survivor"
    slot = redis_cluster.slot_of(key)
    victim = redis_cluster.master_of_slot(slot)
    replica = next(r for r in redis_cluster.replicas() if redis_cluster.master_of(r) is victim)
    client = cluster_client(redis_cluster)
    client.set(key, "before")
    client.close()
    # WAIT: the replica has the write before the master dies, so it must survive
    assert node_client(victim).execute_command("WAIT", 1, 5000) == 1

    redis_cluster.kill(victim)
    assert victim.proc.returncode is not None
    promoted = redis_cluster.wait_failover(victim, timeout=30)

    assert promoted is replica
    assert redis_cluster.role(promoted) == "master"
    assert redis_cluster.master_of_slot(slot) is promoted
    assert victim not in redis_cluster.masters() and len(redis_cluster.masters()) == 3
    client = cluster_client(redis_cluster)
    assert client.get(key) == "before"
    assert client.set(key, "after") and client.get(key) == "after"
    assert node_client(promoted).get(key) == "after"
    client.close()

    # back from its nodes.conf, the old master follows the one that replaced it
    redis_cluster.restart(victim, timeout=30)
    assert redis_cluster.role(victim) == "slave"
    assert redis_cluster.master_of(victim) is promoted
    assert redis_cluster.master_of_slot(slot) is promoted


def test_reshard_moves_slots_and_their_keys(redis_cluster: LocalCluster) -> None:
    source, target = redis_cluster.masters()[:2]
    before = owned_slots(redis_cluster, source)
    client = cluster_client(redis_cluster)
    pipe = client.pipeline()
    for slot in before:  # a key in every slot of the source, whichever ones get moved
        pipe.set(key_in_slot(slot), str(slot))
    pipe.execute()

    redis_cluster.reshard(100, source, target, timeout=60)

    moved = before - owned_slots(redis_cluster, source)
    assert len(moved) == 100
    assert moved <= owned_slots(redis_cluster, target)
    for slot in sorted(moved)[::25]:
        assert redis_cluster.master_of_slot(slot) is target
    on_target = node_client(target)
    for slot in moved:  # the keys moved with their slots: the target answers for them itself
        assert on_target.get(key_in_slot(slot)) == str(slot)
    # the client made before the reshard follows the MOVED answers, for every key
    pipe = client.pipeline()
    for slot in before:
        pipe.get(key_in_slot(slot))
    assert pipe.execute() == [str(slot) for slot in before]
    client.close()


def test_stop_leaves_no_process_and_no_directory() -> None:
    with start_cluster(masters=3, replicas_per_master=0, node_timeout_ms=1000) as cluster:
        pids = [n.pid for n in cluster.nodes]
        workdir = cluster.workdir
        assert len(pids) == 3 and all(n.running() for n in cluster.nodes)
        ports = node_ports(Path(workdir))
        assert ports == sorted(n.port for n in cluster.nodes)
        # the checks below do see live nodes
        assert sorted(redis_processes(ports)) == sorted(pids)
        assert len(listening(ports)) == 6
    assert all(n.proc.returncode is not None for n in cluster.nodes)
    assert redis_processes(ports) == [] and listening(ports) == []
    assert not Path(workdir).exists()
    cluster.stop()  # again: nothing to do, no error


def test_a_node_that_cannot_start_is_reported_with_its_log() -> None:
    with start_cluster(masters=3, replicas_per_master=0, node_timeout_ms=1000) as cluster:
        node = cluster.nodes[0]
        cluster.kill(node)
        with socket.socket() as squatter:  # someone else takes the port meanwhile
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", node.port))
            squatter.listen()
            with pytest.raises(ClusterError, match=rf"(?s)port {node.port} exited.*"
                                                   "Address already in use"):
                cluster.restart(node)
        assert not node.running()
        # the port is free again: the same node comes back and the cluster heals
        cluster.restart(node, timeout=30)
        assert node.running() and node in cluster.masters()


def test_a_start_that_fails_stops_what_it_started(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    # far too short for redis-cli --cluster create, which waits a second for the join
    with pytest.raises(ClusterError):
        start_cluster(masters=3, replicas_per_master=1, workdir=str(workdir), start_timeout=0.5)
    assert workdir.is_dir()  # the caller's directory is the caller's to remove
    ports = node_ports(workdir)
    assert ports, "no node was started: the test proves nothing"
    assert redis_processes(ports) == [] and listening(ports) == []


def test_setting_cancel_interrupts_the_start_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    cancel = threading.Event()

    def cancel_once_a_node_started() -> None:  # as the supervisor's signal handler would
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(workdir.glob("*/redis.log")):
            time.sleep(0.01)
        cancel.set()

    canceller = threading.Thread(target=cancel_once_a_node_started)
    canceller.start()
    try:
        with pytest.raises(ClusterCancelled):
            start_cluster(workdir=str(workdir), cancel=cancel)
    finally:
        cancel.set()
        canceller.join(timeout=30)
    ports = node_ports(workdir)
    assert ports, "no node was started: the test proves nothing"
    assert redis_processes(ports) == [] and listening(ports) == []


def test_missing_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match=r"redis-server is not installed.*make sysdeps"):
        start_cluster()


def test_up_with_redis_shards_starts_and_stops_a_cluster() -> None:
    args = argparse.Namespace(redis=None, redis_shards=3, host="127.0.0.1", port=None,
                              router_port=None, gateways=1, jwt_secret="s", api_key="k",
                              no_autoscale=True)
    sup = Supervisor(resolve(args, {}), {})
    try:
        sup.start_redis()
        cluster = sup.cluster
        assert cluster is not None and sup.redis_url == cluster.url
        assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
        # the registry client the readiness probe reads is a cluster client
        assert isinstance(sup._registry, RedisCluster)
        sup._registry.set("sb:probe", "1")
        assert sup._registry.exists("sb:probe") == 1
        text = banner(sup.cfg, redis_url=sup.redis_url, private_redis=True, token="T",
                      pids=[], cluster=summarize(cluster))
        assert "private Redis Cluster (3 masters, 3 replicas)" in text
        for node in cluster.nodes:
            assert node.addr in text
    finally:
        sup.shutdown()
    assert sup.cluster is None
    assert all(n.proc.returncode is not None for n in cluster.nodes)
    assert not Path(cluster.workdir).exists()
