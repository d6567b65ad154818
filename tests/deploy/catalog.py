"""What the deploy files may refer to, derived from the code rather than written down twice.

- :func:`metric_series`: every series name the gateway and router expose (with the suffixes
  Prometheus adds: ``_total``, ``_bucket``...) and its label names, read from fresh
  :class:`GatewayMetrics` / :class:`RouterMetrics` registries.
- :func:`setting_env`: every ``SWITCHBOARD_<FIELD>`` variable of a settings dataclass.
- :func:`promql_problems`: parses a PromQL expression (promql-parser, offline) and reports
  unknown metric names and label names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from gateway.metrics import GatewayMetrics
from router.metrics import RouterMetrics
from switchboard.settings_cli import env_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Labels Prometheus itself attaches (target labels, Kubernetes discovery relabelling) and the
# histogram bucket label: valid in selectors and groupings though no collector declares them.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "le", "__name__"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def _series_of(registry: Any) -> dict[str, frozenset[str]]:
    # Label names are not part of prometheus_client's public API for metrics that have no
    # children yet, so they are read from the collectors' `_labelnames`; the names themselves
    # come from the public collect().
    # Custom collectors (the gateway's hot-path delivery metrics) declare no `_labelnames`:
    # their label names are read off the samples they yield, which always carry every label.
    series: dict[str, frozenset[str]] = {}
    for collector in list(registry._collector_to_names):
        declared = getattr(collector, "_labelnames", None)
        for family in collector.collect():
            if isinstance(declared, tuple):
                labels = frozenset(declared)
            else:
                labels = frozenset(k for sample in family.samples for k in sample.labels
                                   if k != "le")
            for suffix in _SUFFIXES[family.type]:
                series[family.name + suffix] = labels
    return series


@cache
def metric_series() -> dict[str, frozenset[str]]:
    return {**_series_of(GatewayMetrics("catalog").registry),
            **_series_of(RouterMetrics().registry)}


def setting_env(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {env_name(f.name): f for f in dataclasses.fields(cls)}


def promql_problems(expr: str) -> list[str]:
    """Unknown metrics and labels in ``expr``; raises ValueError if it does not parse."""
    ast = promql_parser.parse(expr)
    known = metric_series()
    problems: list[str] = []
    used_labels: set[str] = set(TARGET_LABELS)
    groupings: list[Iterable[str]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name not in known:
                problems.append(f"unknown metric {name!r}")
                return True
            used_labels.update(known[name])
            for matcher in node.matchers.matchers:
                if matcher.name not in known[name] | TARGET_LABELS:
                    problems.append(f"{name} has no label {matcher.name!r}")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                groupings.append(matching.labels)
        return True

    promql_parser.walk(ast, visit)
    for labels in groupings:
        problems.extend(f"grouping by unknown label {label!r}" for label in labels
                        if label not in used_labels)
    return problems


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
