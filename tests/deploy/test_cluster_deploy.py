"""Redis Cluster mode of deploy/: the kustomize overlay deploy/k8s-cluster/ and the compose
override deploy/docker-compose.cluster.yml, validated offline.

- The overlay's own manifests validate against the Kubernetes JSON schemas as the base's do
  (test_manifests.py); its kustomization, ConfigMap patch, StatefulSet and Job are checked
  against each other field by field: one list of node addresses, derived from the
  StatefulSet, in the URL and in the Job. When kubectl is installed, the overlay is also
  built with its embedded kustomize and the result compared with the base's build.
- The compose override is merged onto docker-compose.yml as compose merges the keys it uses,
  and the result validates against the Compose Specification schema.
- Where redis-server is installed, the nodes' compose command and the Job's script are run for
  real on loopback: the script creates the cluster, and a second run leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from switchboard.children import _die_with_parent
from switchboard.localcluster import (
    BUS_OFFSET,
    HASH_SLOTS,
    Node,
    parse_cluster_nodes,
    parse_info,
    pick_port,
    query,
)
from switchboard.redisurl import parse_cluster
from tests.deploy.catalog import DEPLOY, load_yaml, load_yaml_docs
from tests.deploy.test_manifests import (
    GATEWAY_ENV,
    K8S,
    K8S_VERSIONS,
    NAMESPACED,
    ROUTER_ENV,
    compose,
    compose_schema,
)

OVERLAY = K8S.parent / "k8s-cluster"
OVERRIDE = DEPLOY / "docker-compose.cluster.yml"
NODES = 6  # 3 masters + 1 replica each: the smallest cluster that survives losing a master
CREATE = 'redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes'
INIT = "redis-cluster-init"
CLIENTS = ("gateway-1", "gateway-2", "gateway-3", "router")


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [dict(d) for d in load_yaml_docs(path)]


def kustomization() -> dict[str, Any]:
    return dict(load_yaml(OVERLAY / "kustomization.yaml"))


def overlay_files() -> list[Path]:
    return sorted(p for p in OVERLAY.glob("*.yaml") if p.name != "kustomization.yaml")


def overlay_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"cluster/{p.name}#{i}", d) for p in overlay_files()
            for i, d in enumerate(docs_of(p))]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for _, d in overlay_docs()
              if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def statefulset() -> dict[str, Any]:
    return one("StatefulSet")


def redis_container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def base_redis() -> dict[str, Any]:
    (sts,) = [d for d in docs_of(K8S / "redis.yaml") if d["kind"] == "StatefulSet"]
    return sts


def server_options(argv: list[str]) -> dict[str, str]:
    """``redis-server --name value ...`` as {name: value}; every option here takes one value."""
    assert argv[0] == "redis-server", argv
    names, values = argv[1::2], argv[2::2]
    assert len(names) == len(values) and all(n.startswith("--") for n in names), argv
    assert len(set(names)) == len(names), f"an option given twice: {argv}"
    return {n[2:]: v for n, v in zip(names, values, strict=True)}


def pod_addresses(sts: dict[str, Any]) -> list[tuple[str, int]]:
    """The stable DNS names of a StatefulSet's pods, POD.SERVICE.NAMESPACE.svc.cluster.local
    (the cluster domain the base's configmap.yaml assumes too), on the port named redis."""
    meta, spec = sts["metadata"], sts["spec"]
    (port,) = [p["containerPort"] for p in redis_container(sts)["ports"] if p["name"] == "redis"]
    return [(f"{meta['name']}-{i}.{spec['serviceName']}.{meta['namespace']}.svc.cluster.local",
             port) for i in range(spec["replicas"])]


def job_command() -> list[str]:
    return list(redis_container(one("Job"))["command"])


# -- Kubernetes: the overlay's own manifests ----------------------------------------------


OWN = overlay_docs()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), OWN, ids=[w for w, _ in OWN])
def test_overlay_resources_validate_against_the_kubernetes_schemas(
    where: str, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)
    if doc["kind"] in NAMESPACED | {"Job"}:
        assert doc["metadata"].get("namespace") == "switchboard", where


def test_overlay_holds_exactly_the_expected_objects() -> None:
    # so nothing (a custom kind, a stray file) skips the schema test above unnoticed
    assert {(d["kind"], d["metadata"]["name"]) for _, d in OWN} == {
        ("StatefulSet", "redis-cluster"), ("Service", "redis-cluster"),
        ("PodDisruptionBudget", "redis-cluster"), ("Job", "redis-cluster-create"),
        ("ConfigMap", "switchboard-config"),
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        bad = {**statefulset(), "spec": {**statefulset()["spec"], "replicas": "six"}}
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def resolved(entry: str) -> Path:
    return (OVERLAY / entry).resolve()


def file_patches() -> list[Path]:
    return [resolved(p["path"]) for p in kustomization()["patches"] if "path" in p]


def deleted() -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of what the overlay's inline patches delete from the base."""
    out = set()
    for p in kustomization()["patches"]:
        if "patch" in p:
            doc = yaml.safe_load(p["patch"])
            assert doc["$patch"] == "delete", doc
            meta = doc["metadata"]
            out.add((doc["kind"], meta["namespace"], meta["name"]))
    return out


def test_kustomization_is_the_base_minus_the_single_node_redis_plus_the_cluster() -> None:
    k = kustomization()
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    resources = [resolved(r) for r in k["resources"]]
    # the whole base (so a manifest added there is deployed here too, with its images)
    assert resources[0] == K8S.resolve()
    for path in resources[1:] + file_patches():
        assert path.is_file(), f"{path} does not exist"
    # every file of the overlay is used, as a resource or as a patch
    assert set(resources[1:] + file_patches()) == {p.resolve() for p in overlay_files()}
    # and exactly redis.yaml's objects are deleted: the StatefulSet and its Service
    assert deleted() == {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                         for d in docs_of(K8S / "redis.yaml")}
    assert "images" not in k  # the base's apply to its files


def test_configmap_patch_sets_a_cluster_url_naming_exactly_the_statefulset_pods() -> None:
    (patch_path,) = file_patches()
    (patch,) = docs_of(patch_path)
    targets = {(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"])
               for d in docs_of(K8S / "configmap.yaml")}
    meta = patch["metadata"]
    assert (patch["kind"], meta["name"], meta["namespace"]) in targets
    # only the URL changes: prefix and history settings stay the base's
    assert set(patch["data"]) == {"SWITCHBOARD_REDIS_URL"}
    assert "SWITCHBOARD_REDIS_URL" in GATEWAY_ENV and "SWITCHBOARD_REDIS_URL" in ROUTER_ENV
    url = patch["data"]["SWITCHBOARD_REDIS_URL"]
    assert url.startswith("redis+cluster://")
    assert list(parse_cluster(url).seeds) == pod_addresses(statefulset())
    assert len(pod_addresses(statefulset())) == NODES


def test_pod_names_resolve_through_a_headless_service_that_selects_them() -> None:
    sts = statefulset()
    svc = one("Service", sts["spec"]["serviceName"])
    assert svc["metadata"]["namespace"] == sts["metadata"]["namespace"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for p in svc["spec"]["ports"]} == {6379, 6379 + BUS_OFFSET}
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_statefulset_runs_six_cluster_enabled_redis_servers() -> None:
    sts = statefulset()
    assert sts["spec"]["replicas"] == NODES
    c = redis_container(sts)
    base = redis_container(base_redis())
    assert c["image"] == base["image"] == "redis:7.4.1-alpine"  # >= 7.0: sharded pub/sub
    opts = server_options(c["args"])
    assert opts["cluster-enabled"] == "yes"
    assert opts["cluster-node-timeout"] == "5000"
    assert (opts["save"], opts["appendonly"]) == ("", "no")
    assert opts["maxmemory-policy"] == "noeviction"
    # nodes.conf on a mounted (writable) volume: the root filesystem is read-only
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    (mount,) = [m for m in mounts if opts["cluster-config-file"].startswith(m + "/")]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[mount]]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # redirects name the pod's stable DNS name, built from the downward API
    assert opts["cluster-preferred-endpoint-type"] == "hostname"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    hostname = opts["cluster-announce-hostname"]
    service = sts["spec"]["serviceName"]
    assert hostname == f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc.cluster.local"
    pods = pod_addresses(sts)
    assert hostname.replace("$(POD_NAME)", f"{sts['metadata']['name']}-0").replace(
        "$(POD_NAMESPACE)", sts["metadata"]["namespace"]) == pods[0][0]
    # a limit below maxmemory would OOM-kill the node before noeviction refuses a write
    assert opts["maxmemory"].endswith("mb") and c["resources"]["limits"]["memory"].endswith("Mi")
    assert int(opts["maxmemory"][:-2]) < int(c["resources"]["limits"]["memory"][:-2])


def test_cluster_pods_are_secured_and_probed_like_the_single_node_redis() -> None:
    pod = statefulset()["spec"]["template"]["spec"]
    base_pod = base_redis()["spec"]["template"]["spec"]
    c, base = redis_container(statefulset()), redis_container(base_redis())
    assert pod["securityContext"] == base_pod["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"] == base["securityContext"]
    assert (c["readinessProbe"], c["livenessProbe"]) == (base["readinessProbe"],
                                                         base["livenessProbe"])
    assert set(c["resources"]) == {"requests", "limits"}


def test_job_creates_the_cluster_from_the_same_six_addresses_with_one_replica_each() -> None:
    job = one("Job")
    command = job_command()
    assert command[:2] == ["sh", "-c"]
    script, addresses = command[2], command[4:]
    assert addresses == [f"{h}:{p}" for h, p in pod_addresses(statefulset())]
    assert CREATE in script
    # looks for an existing cluster before creating one
    assert 0 <= script.index('cluster_state)" = ok') < script.index(CREATE)
    c = redis_container(job)
    assert c["image"] == redis_container(statefulset())["image"]
    # no env: Kubernetes would expand a $(NAME) of the script for any variable defined
    assert "env" not in c and "envFrom" not in c
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == redis_container(statefulset())["securityContext"]
    assert job["spec"]["activeDeadlineSeconds"] > 0


# -- docker-compose -----------------------------------------------------------------------


REPLACED = {"command", "entrypoint", "test"}  # sequences compose replaces whole


def normalized(service: dict[str, Any]) -> dict[str, Any]:
    """``environment`` and ``depends_on`` in their mapping form, which is what compose
    merges (the list forms mean the same)."""
    svc = dict(service)
    if isinstance(svc.get("environment"), list):
        svc["environment"] = dict(e.split("=", 1) for e in svc["environment"])
    if isinstance(svc.get("depends_on"), list):
        svc["depends_on"] = {n: {"condition": "service_started"} for n in svc["depends_on"]}
    return svc


def merge(base: Any, override: Any, where: str = "") -> Any:
    """What ``docker compose -f base -f override`` makes of two values, for the kinds of keys
    these files use: mappings merge key by key (services by name, environment, depends_on,
    healthcheck); scalars and the sequences in REPLACED are replaced. Compose merges other
    sequences (ports, volumes...) by rules not modelled here, so the override may not use
    them."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = merge(base[k], v, f"{where}/{k}") if k in base else v
        return merged
    if isinstance(override, list) and where.rsplit("/", 1)[-1] not in REPLACED:
        raise AssertionError(f"{where}: merging a sequence is not modelled by this test")
    return override


def override() -> dict[str, Any]:
    return dict(load_yaml(OVERRIDE))


@cache
def _merged() -> dict[str, Any]:
    base, extra = compose(), override()
    for doc in (base, extra):
        doc["services"] = {n: normalized(s) for n, s in doc["services"].items()}
    return dict(merge(base, extra))


def merged() -> dict[str, Any]:
    return dict(_merged())


def redis_nodes(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Services running redis-server, with their options."""
    return {n: server_options(s["command"]) for n, s in services.items()
            if s.get("command", [""])[0] == "redis-server"}


def test_merged_compose_validates_against_the_compose_spec() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(merged())]
    assert errors == []
    # the merge did what compose does: base keys kept, overridden ones replaced or merged
    services = merged()["services"]
    assert services["gateway-2"]["environment"]["SWITCHBOARD_GATEWAY_ID"] == "gateway-2"
    assert services["gateway-2"]["command"] == ["switchboard", "gateway"]
    assert "--cluster-enabled" in services["redis"]["command"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_compose_url_names_exactly_the_six_cluster_nodes() -> None:
    services = merged()["services"]
    nodes = redis_nodes(services)
    assert len(nodes) == NODES
    # every redis-server is a cluster node: the base's `redis` too, no single Redis left over
    assert "redis" in nodes and all(o["cluster-enabled"] == "yes" for o in nodes.values())
    urls = {n: services[n]["environment"]["SWITCHBOARD_REDIS_URL"] for n in CLIENTS}
    (url,) = set(urls.values())
    assert url.startswith("redis+cluster://")
    seeds = parse_cluster(url).seeds
    assert sorted(seeds) == sorted((n, 6379) for n in nodes)
    for name, opts in nodes.items():
        image = services[name]["image"]
        assert image == services[INIT]["image"] == "redis:7.4.1-alpine"
        # clients are redirected to service names, never to container IPs
        assert opts["cluster-announce-hostname"] == name
        assert opts["cluster-preferred-endpoint-type"] == "hostname"
        assert opts["cluster-node-timeout"] == "5000"
        assert opts["cluster-config-file"].startswith("/data/")  # the image's volume
        assert (opts["save"], opts["appendonly"]) == ("", "no")
        assert services[name]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # every switchboard process is on the cluster
    for name, svc in services.items():
        if "SWITCHBOARD_REDIS_URL" in svc.get("environment", {}):
            assert name in CLIENTS


def test_gateways_and_router_wait_for_the_init_service_to_complete() -> None:
    services = merged()["services"]
    for name in CLIENTS:
        assert services[name]["depends_on"][INIT] == {
            "condition": "service_completed_successfully"}, name
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    init = services[INIT]
    nodes = redis_nodes(services)
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}
    assert init["restart"] == "no"  # a one-shot: restarting it would keep it "not completed"


def test_compose_init_runs_the_jobs_script_on_the_same_six_nodes() -> None:
    services = merged()["services"]
    command = services[INIT]["command"]
    assert command[:2] == ["sh", "-c"]
    script, addresses = command[2], command[4:]
    # `$$` is compose's literal `$`; a lone `$` would be interpolated by compose
    assert "$" not in script.replace("$$", "")
    assert script.replace("$$", "$") == job_command()[2]
    url = services["router"]["environment"]["SWITCHBOARD_REDIS_URL"]
    assert addresses == [f"{h}:{p}" for h, p in parse_cluster(url).seeds]


# -- the nodes and the script, for real ---------------------------------------------------


@contextlib.contextmanager
def spawn_nodes(tmp_path: Path, commands: list[list[str]]) -> Iterator[list[Node]]:
    """The compose nodes' commands on loopback: own port, directory and nodes.conf, and a
    hostname this machine resolves. Stopped by PID."""
    nodes: list[Node] = []
    taken: set[int] = set()
    try:
        for i, command in enumerate(commands):
            port = pick_port("127.0.0.1", taken)
            taken |= {port, port + BUS_OFFSET}
            node_dir = tmp_path / f"node-{i}"
            node_dir.mkdir()
            argv = list(command)
            argv[argv.index("--cluster-config-file") + 1] = str(node_dir / "nodes.conf")
            argv[argv.index("--cluster-announce-hostname") + 1] = "localhost"
            argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                     "--daemonize", "no", "--logfile", str(node_dir / "redis.log")]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent(os.getpid()))
            nodes.append(Node("127.0.0.1", port, proc, str(node_dir)))
        yield nodes
    finally:
        for node in nodes:
            if node.running():
                node.proc.terminate()
        for node in nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


def run_script(nodes: list[Node]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", job_command()[2], "create-cluster",
                           *(n.addr for n in nodes)], capture_output=True, text=True,
                          timeout=100, check=False)


def roles(nodes: list[Node]) -> set[tuple[int, int]]:
    """(masters serving slots, replicas) as each node sees the cluster."""
    seen = set()
    for node in nodes:
        views = parse_cluster_nodes(query(node, ("CLUSTER", "NODES"))[0])
        seen.add((sum(v.is_master and bool(v.slots) for v in views),
                  sum(v.master_id is not None for v in views)))
    return seen


def cluster_state(node: Node) -> str:
    with contextlib.suppress(redis.RedisError, OSError):
        return parse_info(query(node, ("CLUSTER", "INFO"))[0]).get("cluster_state", "")
    return ""


@pytest.mark.integration
def test_the_init_script_creates_the_cluster_once(tmp_path: Path) -> None:
    services = merged()["services"]
    commands = [services[n]["command"] for n in sorted(redis_nodes(services))]
    with spawn_nodes(tmp_path, commands) as nodes:
        first = run_script(nodes)  # also waits for the nodes to answer PING
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"[OK] All {HASH_SLOTS} slots covered" in first.stdout
        assert first.stdout.rstrip().endswith("every node reports cluster_state:ok")
        assert all(cluster_state(n) == "ok" for n in nodes)
        # 3 masters, 1 replica each, once every node has heard of every replica (gossip)
        deadline = time.monotonic() + 30
        while roles(nodes) != {(3, 3)}:
            assert time.monotonic() < deadline, f"roles as seen by each node: {roles(nodes)}"
            time.sleep(0.2)
        # clients are handed the announced hostname, not the IP
        (slot_range, *_) = query(nodes[0], ("CLUSTER", "SLOTS"))[0]
        assert slot_range[2][0] == "localhost"

        again = run_script(nodes)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to do" in again.stdout
        assert "slots covered" not in again.stdout  # redis-cli --cluster create did not run
        assert all(cluster_state(n) == "ok" for n in nodes)
