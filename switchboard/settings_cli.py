"""Flags and environment variables for settings dataclasses.

Every field of a settings class becomes a flag ``--field-name`` and an environment variable
``SWITCHBOARD_FIELD_NAME``; the flag wins. This is the only place that reads the environment
for settings.

Numbers are checked here, where the user's text is still at hand to name in the error: they
must be finite and above zero (a zero interval is a busy loop, a zero TTL deletes what it
guards); ports are 0-65535 and a few settings may be zero (:data:`MAY_BE_ZERO`). An optional
setting is switched off with an empty value or ``off``, not with 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "SWITCHBOARD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Numbers for which zero means something: spread over no time, move at any excess, no head
# deadline (off), no channel subscriptions, never replay on resume.
MAY_BE_ZERO = frozenset({"drain_window", "rebalance_margin", "header_timeout", "max_channels",
                         "replay_limit", "webhook_offline_delay"})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def convert(type_name: str, raw: str) -> Any:
    """Turn a flag or env string into the field's type (types are strings under PEP 563)."""
    optional = "None" in type_name
    if optional and raw.strip().lower() in ("", "none", "off"):
        return None
    if type_name.startswith("bool"):
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if type_name.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        kind = "a whole number" if type_name.startswith("int") else "a number"
        raise ValueError(f"expected {kind}, got {raw!r}") from None
    return raw


def check(name: str, type_name: str, value: object) -> None:
    """Raise ValueError if ``value`` is out of range for the setting ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    if name == "port" or name.endswith("_port"):
        if not 0 <= value <= 65535:
            raise ValueError(f"a port is 0-65535, got {value}")
    elif name in MAY_BE_ZERO:
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
    elif value <= 0:
        off = "; leave it empty to switch it off" if "None" in type_name else ""
        raise ValueError(f"must be above zero, got {value}{off}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] | None = None) -> None:
    for f in dataclasses.fields(cls):
        if skip and f.name in skip:
            continue
        default = f.default
        help_text = f.metadata.get("help", "")
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=str(f.type).split("[")[0].split(" ")[0].upper(),
            help=f"{help_text} (env {env_name(f.name)}; default {shown!r})",
        )


def build(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None,
          **overrides: Any) -> T:
    """Instantiate ``cls`` from flags, then environment, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        raw = getattr(args, f.name, None)
        source = f"--{f.name.replace('_', '-')}"
        if raw is None:
            raw = environ.get(env_name(f.name))
            source = env_name(f.name)
        if raw is None:
            continue
        try:
            values[f.name] = convert(str(f.type), raw)
            check(f.name, str(f.type), values[f.name])
        except ValueError as exc:
            raise SystemExit(f"switchboard: invalid value for {source}: {exc}") from None
    return cls(**values)
