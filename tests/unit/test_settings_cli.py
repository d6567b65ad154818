"""Every setting can be given as a flag or as SWITCHBOARD_<NAME>, and the flag wins."""

from __future__ import annotations

import argparse

import pytest

from switchboard import settings_cli
from switchboard.config import GatewaySettings, RouterSettings


def parse(cls: type, argv: list[str], skip: set[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings_cli.add_arguments(parser, cls, skip)
    return parser.parse_args(argv)


def test_env_names_are_prefixed_and_upper_case() -> None:
    assert settings_cli.env_name("redis_url") == "SWITCHBOARD_REDIS_URL"
    assert settings_cli.env_name("router_port") == "SWITCHBOARD_ROUTER_PORT"


@pytest.mark.parametrize(("type_name", "raw", "value"), [
    ("int", "8080", 8080),
    ("float", "2.5", 2.5),
    ("str", " kept as is ", " kept as is "),
    ("bool", "1", True), ("bool", "Yes", True), ("bool", "on", True),
    ("bool", "0", False), ("bool", "false", False), ("bool", "", False),
    ("tuple[str, ...]", "a, b,,c ", ("a", "b", "c")),
    ("tuple[str, ...]", "", ()),
    ("float | None", "off", None), ("float | None", "", None), ("float | None", "3", 3.0),
])
def test_strings_convert_to_the_field_type(type_name: str, raw: str, value: object) -> None:
    assert settings_cli.convert(type_name, raw) == value


def test_bad_booleans_and_numbers_are_rejected() -> None:
    with pytest.raises(ValueError, match="boolean"):
        settings_cli.convert("bool", "maybe")
    with pytest.raises(ValueError):
        settings_cli.convert("int", "eighty")


def test_every_field_gets_a_flag_documenting_its_env_var_and_default() -> None:
    parser = argparse.ArgumentParser()
    settings_cli.add_arguments(parser, GatewaySettings)
    text = parser.format_help()
    assert "--redis-url" in text and "--jwt-secret" in text and "--reuse-port" in text
    assert "SWITCHBOARD_HEARTBEAT_INTERVAL" in text
    assert "default 8080" in text


def test_defaults_apply_when_neither_flag_nor_env_is_given() -> None:
    settings = settings_cli.build(RouterSettings, parse(RouterSettings, []), environ={})
    assert settings == RouterSettings()


def test_env_is_read_and_converted() -> None:
    env = {"SWITCHBOARD_PORT": "9090", "SWITCHBOARD_REUSE_PORT": "0",
           "SWITCHBOARD_ALLOWED_ORIGINS": "https://a.example,https://b.example",
           "SWITCHBOARD_PING_INTERVAL": "off", "SWITCHBOARD_HISTORY_TTL": "30"}
    settings = settings_cli.build(GatewaySettings, parse(GatewaySettings, []), environ=env)
    assert settings.port == 9090
    assert settings.reuse_port is False
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.ping_interval is None
    assert settings.history_ttl == 30.0


def test_flag_wins_over_env_and_overrides_win_over_both() -> None:
    env = {"SWITCHBOARD_PORT": "9090", "SWITCHBOARD_REDIS_URL": "redis://env/0"}
    args = parse(GatewaySettings, ["--port", "7070", "--redis-url", "redis://flag/0"])
    settings = settings_cli.build(GatewaySettings, args, environ=env)
    assert (settings.port, settings.redis_url) == (7070, "redis://flag/0")
    forced = settings_cli.build(GatewaySettings, args, environ=env, port=1234)
    assert forced.port == 1234


def test_an_invalid_value_names_where_it_came_from() -> None:
    args = parse(GatewaySettings, [])
    with pytest.raises(SystemExit, match="SWITCHBOARD_PORT"):
        settings_cli.build(GatewaySettings, args, environ={"SWITCHBOARD_PORT": "http"})
    args = parse(GatewaySettings, ["--reuse-port", "perhaps"])
    with pytest.raises(SystemExit, match="--reuse-port"):
        settings_cli.build(GatewaySettings, args, environ={})


def test_skipped_fields_get_no_flag() -> None:
    parser = argparse.ArgumentParser()
    settings_cli.add_arguments(parser, RouterSettings, skip={"api_keys"})
    assert "--api-keys" not in parser.format_help()
    assert "--router-port" in parser.format_help()


@pytest.mark.parametrize(("name", "type_name", "value", "why"), [
    ("heartbeat_interval", "float", 0.0, "above zero"),
    ("history_ttl", "float", -1.0, "above zero"),
    ("redis_timeout", "float", float("nan"), "finite"),
    ("max_body", "int", 0, "above zero"),
    ("ping_interval", "float | None", 0.0, "leave it empty to switch it off"),
    ("drain_window", "float", -0.5, "not be negative"),
    ("port", "int", 65536, "0-65535"),
    ("router_port", "int", -1, "0-65535"),
])
def test_numbers_out_of_range_are_refused(name: str, type_name: str, value: object,
                                          why: str) -> None:
    with pytest.raises(ValueError, match=why):
        settings_cli.check(name, type_name, value)


@pytest.mark.parametrize(("name", "value"), [
    ("drain_window", 0.0), ("rebalance_margin", 0.0), ("port", 0), ("ping_interval", None),
    ("reuse_port", False), ("prefix", ""), ("heartbeat_interval", 0.01),
    # zero means something documented: no head deadline, no subscriptions, never replay
    ("header_timeout", 0.0), ("max_channels", 0), ("replay_limit", 0),
])
def test_numbers_in_range_and_other_values_pass(name: str, value: object) -> None:
    settings_cli.check(name, "", value)


def test_a_documented_zero_is_accepted_from_the_environment() -> None:
    from switchboard.config import RouterSettings
    router = settings_cli.build(RouterSettings, parse(RouterSettings, []),
                                {"SWITCHBOARD_HEADER_TIMEOUT": "0"})
    assert router.header_timeout == 0  # docs/operations.md: 0 turns the deadline off


def test_a_value_out_of_range_names_where_it_came_from() -> None:
    with pytest.raises(SystemExit, match="SWITCHBOARD_HEARTBEAT_INTERVAL: must be above zero"):
        settings_cli.build(GatewaySettings, parse(GatewaySettings, []),
                           {"SWITCHBOARD_HEARTBEAT_INTERVAL": "0"})
