"""docs/operations.md stays true to the code: its configuration tables are exactly what the
settings dataclasses define, every ``switchboard up`` flag is documented, and every metric it
names exists.

When a setting is added or changed, the failure message prints the expected table;
``python -m tests.deploy.test_operations_doc`` rewrites the tables in the doc.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from typing import Any

from switchboard.config import GatewaySettings, RedisSettings, RouterSettings, WebhookSettings
from switchboard.settings_cli import env_name
from tests.deploy.catalog import ROOT, metric_series

DOC = ROOT / "docs" / "operations.md"
TABLES = {
    "redis": RedisSettings,
    "gateway": GatewaySettings,
    "router": RouterSettings,
    "webhooks": WebhookSettings,
}


def show_default(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def config_table(cls: type, skip: frozenset[str] = frozenset()) -> str:
    """The Markdown table of ``cls``'s own settings (inherited ones are in their own table)."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        meaning = str(f.metadata.get("help", "")).replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env_name(f.name)}` | {show_default(f.default)} "
                    f"| {meaning} |")
    return "\n".join(rows)


def expected_tables() -> dict[str, str]:
    inherited = frozenset(f.name for f in dataclasses.fields(RedisSettings))
    return {
        "redis": config_table(RedisSettings),
        "gateway": config_table(GatewaySettings, inherited),
        "router": config_table(RouterSettings, inherited),
        "webhooks": config_table(WebhookSettings, inherited),
    }


def documented_table(name: str) -> str:
    """The table after the ``<!-- settings:NAME -->`` marker in the doc."""
    text = DOC.read_text()
    marker = f"<!-- settings:{name} -->"
    assert marker in text, f"{marker} is missing from {DOC}"
    after = text.split(marker, 1)[1].lstrip("\n")
    lines = []
    for line in after.splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_configuration_tables_match_the_settings_dataclasses() -> None:
    for name, table in expected_tables().items():
        assert documented_table(name) == table, (
            f"docs/operations.md's {name} settings are out of date; the table should be:\n\n"
            f"{table}\n")


def test_every_up_flag_is_documented() -> None:
    help_text = subprocess.run([sys.executable, "-m", "switchboard.cli", "up", "--help"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert {"--min", "--max", "--target-connections", "--scale-window", "--no-autoscale"} <= flags
    text = DOC.read_text()
    missing = sorted(f for f in flags if f"`{f}" not in text)
    assert missing == []


def test_metrics_in_the_doc_are_exactly_the_real_ones() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"switchboard_(?:gateway|router)_[a-z_]+", text))
    known = metric_series()
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in known}
    assert sorted(n for n in named if n not in known and n not in families) == []
    # and every metric is documented (counters by their _total name)
    undocumented = sorted(f for f in families
                          if f not in named and f"{f}_total" not in named)
    assert undocumented == []


def test_every_alert_has_a_row_and_a_runbook() -> None:
    text = DOC.read_text()
    alerts = re.findall(r"- alert: (\w+)", (ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert alerts
    for alert in alerts:
        assert f"| `{alert}` |" in text, alert
        assert f"*Alert `{alert}`.*" in text, alert


def rewrite_doc() -> None:
    """Replace each documented table with the one the dataclasses give."""
    text = DOC.read_text()
    for name, table in expected_tables().items():
        text = text.replace(f"<!-- settings:{name} -->\n{documented_table(name)}",
                            f"<!-- settings:{name} -->\n{table}")
    DOC.write_text(text)


if __name__ == "__main__":
    rewrite_doc()
    print(f"updated the settings tables in {DOC}")
