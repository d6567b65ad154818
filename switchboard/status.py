"""``switchboard status``: the router's ``GET /v1/cluster`` answer as a text table.

Pure formatting, so it is tested without a cluster. The router's JSON looks like::

    {"gateways": [{"id", "host", "port", "connections", "ws", "sse", "draining",
                   "heartbeat_age_s", "started_ms"}, ...],
     "total_connections": N, "imbalance": X}

Missing fields are shown as ``-`` rather than failing, so a newer or older router still gives a
readable table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("GATEWAY", "ADDRESS", "CONNS", "WS", "SSE", "DRAINING", "HEARTBEAT")
# Numbers are right-aligned so that magnitudes line up; text is left-aligned.
_RIGHT = {"CONNS", "WS", "SSE", "HEARTBEAT"}
MISSING = "-"


def _int(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    return str(int(value))


def format_age(seconds: object) -> str:
    """Heartbeat age: tenths of a second while fresh, whole seconds or minutes once stale."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return MISSING
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _address(gateway: Mapping[str, Any]) -> str:
    host, port = gateway.get("host"), gateway.get("port")
    if not host and port is None:
        return MISSING
    host_text = str(host or MISSING)
    if ":" in host_text:  # IPv6 literal: brackets keep host and port apart
        host_text = f"[{host_text}]"
    return f"{host_text}:{_int(port)}"


def _draining(value: object) -> str:
    if value is None:
        return MISSING
    return "yes" if value else "no"


def gateway_row(gateway: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        str(gateway.get("id") or MISSING),
        _address(gateway),
        _int(gateway.get("connections")),
        _int(gateway.get("ws")),
        _int(gateway.get("sse")),
        _draining(gateway.get("draining")),
        format_age(gateway.get("heartbeat_age_s")),
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if name in _RIGHT else cell.ljust(w)
            for cell, w, name in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _summary(cluster: Mapping[str, Any], gateways: Sequence[Mapping[str, Any]]) -> str:
    total = cluster.get("total_connections")
    if total is None:  # an older router: add the rows up ourselves
        total = sum(g.get("connections") or 0 for g in gateways)
    draining = sum(1 for g in gateways if g.get("draining"))
    noun = "gateway" if len(gateways) == 1 else "gateways"
    text = f"total: {_int(total)} connections on {len(gateways)} {noun}"
    if draining:
        text += f" ({draining} draining)"
    imbalance = cluster.get("imbalance")
    if isinstance(imbalance, int | float) and not isinstance(imbalance, bool):
        text += f"; imbalance {imbalance:.2f}"
    else:
        text += f"; imbalance {MISSING}"
    return text


def render(cluster: object) -> str:
    """Render the router's cluster description; raise ValueError if it is not one."""
    if not isinstance(cluster, Mapping):
        raise ValueError(f"expected a JSON object from /v1/cluster, got {type(cluster).__name__}")
    raw = cluster.get("gateways") or []
    if not isinstance(raw, list):
        raise ValueError("'gateways' in the /v1/cluster answer is not a list")
    gateways = [g for g in raw if isinstance(g, Mapping)]
    if not gateways:
        return "no gateways registered\n" + _summary(cluster, gateways)
    ordered = sorted(gateways, key=lambda g: str(g.get("id", "")))
    lines = table(COLUMNS, [gateway_row(g) for g in ordered])
    return "\n".join([*lines, "", _summary(cluster, gateways)])
