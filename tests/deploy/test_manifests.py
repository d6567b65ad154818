"""Kubernetes manifests and docker-compose, validated offline.

Kubernetes: every built-in resource validates against the Kubernetes OpenAPI JSON schemas
shipped inside the kubernetes-validate package, in strict mode (unknown fields are errors).
Its schemas cover built-in kinds only: the KEDA ScaledObject and the kustomization are
checked here field by field instead. docker-compose.yml validates against the Compose
Specification JSON schema vendored in the check-jsonschema package. Neither needs a network.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from switchboard.config import GatewaySettings, RouterSettings
from tests.deploy.catalog import (
    DEPLOY,
    ROOT,
    load_yaml,
    load_yaml_docs,
    metric_series,
    promql_problems,
    setting_env,
)

K8S = DEPLOY / "k8s"
# The oldest Kubernetes the manifests promise to work on (autoscaling/v2 behavior, policy/v1
# PDBs, pod security labels), or the oldest schemas shipped above it, and the newest shipped.
_SHIPPED = sorted(set(kubernetes_validate.utils.all_versions()),
                  key=lambda v: tuple(int(p) for p in v.split(".")))
K8S_VERSIONS = tuple(dict.fromkeys([
    next(v for v in _SHIPPED if tuple(int(p) for p in v.split("."))[:2] >= (1, 27)),
    _SHIPPED[-1],
]))
CUSTOM_KINDS = {"ScaledObject", "Kustomization"}
NAMESPACED = {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service",
              "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject"}
GATEWAY_ENV = setting_env(GatewaySettings)
ROUTER_ENV = setting_env(RouterSettings)
IMAGE_ENV = {"HEALTHCHECK_URL"}  # read by the Dockerfile's HEALTHCHECK, not by switchboard


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}#{i}", doc) for path in sorted(K8S.glob("*.yaml"))
            for i, doc in enumerate(load_yaml_docs(path))]


@cache
def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def container(deployment: str) -> dict[str, Any]:
    (c,) = by_kind("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return dict(c)


# -- Kubernetes ---------------------------------------------------------------------------


BUILTIN = [(where, doc) for where, doc in manifests() if doc["kind"] not in CUSTOM_KINDS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), BUILTIN, ids=[w for w, _ in BUILTIN])
def test_builtin_resources_validate_against_the_kubernetes_schemas(
    where: str, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)
    if doc["kind"] in NAMESPACED:
        assert doc["metadata"].get("namespace"), f"{where}: no namespace"


def test_the_validator_does_reject_a_broken_manifest() -> None:
    # so a validator that silently checks nothing cannot make the test above pass
    bad = dict(by_kind("Deployment")["switchboard-gateway"])
    bad["spec"] = {**bad["spec"], "replicas": "two", "surprise": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_custom_resources_are_only_the_known_ones() -> None:
    # kinds without a schema here get the field-by-field tests below, and nothing else may
    # slip past validation by being unknown
    kinds = {d["kind"] for _, d in manifests()} - {d["kind"] for _, d in BUILTIN}
    assert kinds == CUSTOM_KINDS


def test_kustomization_lists_every_manifest_but_keda() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"keda-scaledobject.yaml"}
    # one autoscaler per Deployment: KEDA would create a second HPA for the gateways
    assert "keda-scaledobject.yaml" not in listed


def test_keda_scaled_object_is_well_formed_and_mirrors_the_hpa() -> None:
    (obj,) = load_yaml_docs(K8S / "keda-scaledobject.yaml")
    assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == "switchboard"
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] in by_kind("Deployment")
    hpa = by_kind("HorizontalPodAutoscaler")["switchboard-gateway"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"],
                                                                    hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert isinstance(meta["threshold"], str)  # KEDA wants trigger metadata as strings
    assert meta["threshold"] == hpa["metrics"][0]["pods"]["target"]["averageValue"]
    assert promql_problems(meta["query"]) == []


def test_gateway_hpa_scales_on_connections_with_the_hpa_behaviour() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")["switchboard-gateway"]["spec"]
    assert hpa["scaleTargetRef"]["name"] in by_kind("Deployment")
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "switchboard_gateway_connections"
    assert "switchboard_gateway_connections" in metric_series()
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    router = by_kind("HorizontalPodAutoscaler")["switchboard-router"]["spec"]
    assert router["metrics"][0]["resource"]["name"] == "cpu"


def test_prometheus_adapter_rule_exposes_the_hpa_metric() -> None:
    adapter = by_kind("ConfigMap")["prometheus-adapter"]
    (rule,) = load_rules(adapter["data"]["config.yaml"])
    assert rule["name"]["as"] == "switchboard_gateway_connections"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    query = rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace(
        "<<.LabelMatchers>>", 'namespace="switchboard"')
    assert query.startswith("sum by (pod)")
    assert promql_problems(query) == []
    series = rule["seriesQuery"].strip("'")
    assert promql_problems(series) == []


def load_rules(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load(text)["rules"])


def test_gateway_pods_drain_within_their_grace_period() -> None:
    pod = by_kind("Deployment")["switchboard-gateway"]["spec"]["template"]["spec"]
    gw = container("switchboard-gateway")
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = gw["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    config = by_kind("ConfigMap")["switchboard-gateway-config"]["data"]
    defaults = GatewaySettings()
    drain = float(config.get("SWITCHBOARD_DRAIN_WINDOW", defaults.drain_window))
    close = float(config.get("SWITCHBOARD_CLOSE_TIMEOUT", defaults.close_timeout))
    # SIGKILL must never cut a drain short
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain + close + 5
    assert set(gw["resources"]) == {"requests", "limits"}


@pytest.mark.parametrize("name", ["switchboard-gateway", "switchboard-router"])
def test_pods_run_non_root_and_read_only(name: str) -> None:
    pod = by_kind("Deployment")[name]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container(name)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(("name", "settings"), [("switchboard-gateway", GATEWAY_ENV),
                                                ("switchboard-router", ROUTER_ENV)])
def test_pods_are_configured_with_real_settings(name: str, settings: dict[str, Any]) -> None:
    c = container(name)
    names = {e["name"] for e in c["env"]}
    for source in c["envFrom"]:
        names |= set(by_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
    secret = by_kind("Secret")["switchboard-secrets"]["stringData"]
    assert names <= set(settings), f"not settings of {name}: {names - set(settings)}"
    for env in c["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == "switchboard-secrets" and ref["key"] in secret


def test_gateway_service_is_an_l4_network_load_balancer() -> None:
    svc = by_kind("Service")["switchboard-gateway"]
    assert svc["spec"]["type"] == "LoadBalancer"
    notes = svc["metadata"]["annotations"]
    assert notes["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    assert notes["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"
    assert notes["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/readyz"
    assert by_kind("Service")["switchboard-router"]["spec"]["type"] == "ClusterIP"
    assert by_kind("Service")["redis"]["spec"]["clusterIP"] == "None"  # headless


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_selectors_match_their_pods(kind: str) -> None:
    workloads = [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for name, obj in by_kind(kind).items():
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(selector.items() <= labels.items() for labels in pod_labels), name


# -- docker-compose -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(load_yaml(DEPLOY / "docker-compose.yml"))


def compose_schema() -> dict[str, Any]:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return dict(json.loads(ref.read_text()))


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose())]
    assert errors == []
    # and the schema really checks services
    assert list(validator.iter_errors({"services": {"x": {"image": 1, "bogus": True}}}))


def test_compose_services_have_images_and_files_that_exist() -> None:
    services = compose()["services"]
    assert {"redis", "router", "haproxy", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert ":latest" not in svc.get("image", ""), name
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / svc["build"]["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), f"{name}: {host} is missing"


def gateway_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if n.startswith("gateway")}


def test_compose_runs_three_distinct_gateways_with_real_settings() -> None:
    gateways = gateway_services()
    assert len(gateways) == 3
    ids = set()
    for name, svc in gateways.items():
        env = svc["environment"]
        unknown = set(env) - set(GATEWAY_ENV) - IMAGE_ENV
        assert not unknown, f"{name}: not gateway settings: {unknown}"
        assert env["SWITCHBOARD_ADVERTISE_HOST"] == name
        ids.add(env["SWITCHBOARD_GATEWAY_ID"])
    assert len(ids) == 3
    router = compose()["services"]["router"]["environment"]
    assert set(router) - set(ROUTER_ENV) - IMAGE_ENV == set()


def test_haproxy_forwards_tcp_to_every_gateway_and_checks_readiness() -> None:
    lines = [line.split("#", 1)[0].strip() for line in
             (DEPLOY / "haproxy.cfg").read_text().splitlines()]
    lines = [line for line in lines if line]
    defaults = section(lines, "defaults")
    assert "mode tcp" in defaults
    for side in ("client", "server"):
        (timeout,) = [line for line in defaults if line.startswith(f"timeout {side} ")]
        assert timeout.endswith("h"), f"{timeout}: WebSockets need long idle timeouts"
    backend = section(lines, "backend gateways")
    assert "option httpchk" in backend
    assert any("uri /readyz" in line for line in backend)
    servers = {line.split()[1]: line.split()[2] for line in backend if line.startswith("server")}
    assert servers == {name: f"{name}:8080" for name in gateway_services()}


def section(lines: list[str], header: str) -> list[str]:
    start = lines.index(header) + 1
    keywords = ("global", "defaults", "frontend", "backend", "resolvers", "listen")
    end = next((i for i in range(start, len(lines)) if lines[i].split()[0] in keywords),
               len(lines))
    return lines[start:end]


def test_prometheus_scrapes_every_switchboard_process_and_loads_the_alerts() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert {f"{name}:8080" for name in gateway_services()} <= targets
    assert "router:8000" in targets
    mounts = dict(v.split(":")[:2][::-1] for v in compose()["services"]["prometheus"]["volumes"])
    for rule_file in config["rule_files"]:
        assert Path(DEPLOY / mounts[rule_file]).is_file()
