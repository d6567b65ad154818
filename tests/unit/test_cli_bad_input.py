"""Every subcommand answers bad input with one line on stderr, never a traceback: exit status 2
for a bad command line, 1 for a bad value (flag or SWITCHBOARD_* variable), a malformed URL, an
unreadable key file, a port in use or a host that is not this machine's. The servers check
before they start, so none of these cases leaves a process running.

The real entry point runs in a subprocess each time; Redis URLs point at a port nobody listens
on, which no case gets far enough to try. ``--version`` is checked here too.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import JWT_SECRET, ROOT, free_port
from tests.unit.test_cli_errors import one_line_error, switchboard

NOBODY_REDIS = "redis://127.0.0.1:1"
GATEWAY = {"SWITCHBOARD_JWT_SECRET": JWT_SECRET, "SWITCHBOARD_REDIS_URL": NOBODY_REDIS,
           "SWITCHBOARD_HOST": "127.0.0.1"}
ROUTER = {"SWITCHBOARD_API_KEYS": "test-api-key", "SWITCHBOARD_REDIS_URL": NOBODY_REDIS,
          "SWITCHBOARD_HOST": "127.0.0.1"}
UP = {"SWITCHBOARD_JWT_SECRET": JWT_SECRET}
WATCH = {"SWITCHBOARD_API_KEY": "test-api-key"}


@pytest.fixture(scope="module")
def busy() -> Iterator[str]:
    """A loopback port something listens on (without SO_REUSEPORT, as another program would)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield str(sock.getsockname()[1])


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


def port() -> list[str]:
    return ["--port", str(free_port())]


# (arguments, environment, text the line must contain); BUSY stands for the busy port.
GATEWAY_CASES = [
    (["--port", "99999"], {}, "a port is 0-65535"),
    (["--port", "eighty"], {}, "--port: expected a whole number"),
    (["--port", "BUSY"], {}, "Address already in use"),
    (["--host", "no-such-host.invalid", *port()], {}, "cannot listen on no-such-host.invalid"),
    ([], {"SWITCHBOARD_PORT": "x"}, "SWITCHBOARD_PORT: expected a whole number"),
    ([], {"SWITCHBOARD_HISTORY_TTL": "soon"}, "SWITCHBOARD_HISTORY_TTL: expected a number"),
    ([], {"SWITCHBOARD_REUSE_PORT": "maybe"}, "expected a boolean"),
    (["--heartbeat-interval", "0", *port()], {}, "--heartbeat-interval: must be above zero"),
    (["--heartbeat-interval", "nan", *port()], {}, "expected a finite number"),
    (["--redis-timeout", "-1", *port()], {}, "--redis-timeout: must be above zero"),
    (["--history-size", "-5", *port()], {}, "--history-size: must be above zero"),
    (["--max-connections", "0", *port()], {}, "leave it empty to switch it off"),
    (["--drain-window", "-1", *port()], {}, "must not be negative"),
    (["--redis-url", "foo://x", *port()], {}, "invalid Redis URL"),
    (["--redis-url", "redis://127.0.0.1:99999", *port()], {}, "invalid Redis URL"),
    (["--redis-url", "redis+cluster://", *port()], {}, "invalid Redis URL"),
    (port(), {"SWITCHBOARD_REDIS_URL": "redis://:hunter2-secret@h:x"}, "invalid Redis URL"),
    (["--jwt-public-key", "@/nonexistent/key.pem", *port()], {}, "/nonexistent/key.pem"),
    (["--jwt-public-key", "@KEYDIR", *port()], {}, "Is a directory"),
    (["--jwt-algorithm", "none", *port()], {}, "does not use a shared secret"),
    (["--jwt-secret", "", *port()], {"SWITCHBOARD_JWT_SECRET": ""}, "JWT secret or public key"),
]

ROUTER_CASES = [
    (["--router-port", "99999"], {}, "a port is 0-65535"),
    (["--router-port", "BUSY"], {}, "Address already in use"),
    (["--router-port", "x"], {}, "--router-port: expected a whole number"),
    ([], {"SWITCHBOARD_ROUTER_PORT": "abc"}, "SWITCHBOARD_ROUTER_PORT"),
    (["--host", "no-such-host.invalid"], {}, "cannot listen on no-such-host.invalid"),
    (["--redis-url", "foo://x"], {}, "invalid Redis URL"),
    (["--header-timeout", "-1"], {}, "--header-timeout: must not be negative"),
    (["--max-body", "0"], {}, "--max-body: must be above zero"),
    (["--http-parser", "fast"], {}, "--http-parser"),
    (["--api-keys", ""], {"SWITCHBOARD_API_KEYS": ""}, "no API keys"),
]

UP_CASES = [
    (["--port", "BUSY"], {}, "Address already in use"),
    (["--router-port", "BUSY"], {}, "Address already in use"),
    (["--host", "no-such-host.invalid"], {}, "cannot listen on no-such-host.invalid"),
    (["--redis", "foo://x"], {}, "invalid Redis URL (--redis or SWITCHBOARD_REDIS_URL)"),
    ([], {"SWITCHBOARD_REDIS_URL": "redis://[::1"}, "invalid Redis URL"),
    ([], {"SWITCHBOARD_PORT": "abc"}, "SWITCHBOARD_PORT must be a port number"),
    ([], {"SWITCHBOARD_REDIS_SHARDS": "x"}, "SWITCHBOARD_REDIS_SHARDS"),
    (["--gateways", "0"], {}, "--gateways must be at least 1"),
    (["--min", "3", "--max", "2"], {}, "--max must be at least --min"),
    (["--redis-shards", "2"], {}, "--redis-shards must be 0"),
    (["--scale-window", "-1"], {}, "--scale-window must not be negative"),
    (["--target-connections", "0"], {}, "--target-connections must be at least 1"),
]

# A bad command line: exit status 2.
USAGE_CASES = [
    (["up", "--port", "99999"], "a port is 0-65535"),
    (["up", "--router-port", "x"], "expected a port number"),
    (["up", "--gateways", "two"], "invalid int value"),
    (["status", "--watch", "--interval", "0"], "--interval: must be 0.1 to 3600 seconds"),
    (["status", "--watch", "--interval", "1e9"], "--interval"),
    (["status", "--watch", "--interval", "soon"], "expected seconds"),
    (["status", "--watch", "--count", "0"], "--count: must be at least 1"),
    (["status", "--count", "2"], "--count needs --watch"),
    (["status", "--interval", "1"], "--interval needs --watch"),
    (["gateway", "--no-such-flag"], "unrecognized arguments"),
    (["router", "--redis-url"], "expected one argument"),
    (["publish", "--user", "u", "--channel", "c", "x"], "not allowed with argument"),
]


def _fill(values: list[str], busy: str, key_dir: Path) -> list[str]:
    return [v.replace("BUSY", busy).replace("KEYDIR", str(key_dir)) for v in values]


@pytest.mark.parametrize(("args", "env", "why"), GATEWAY_CASES)
def test_bad_gateway_input_is_one_line(args: list[str], env: dict[str, str], why: str,
                                       busy: str, key_dir: Path) -> None:
    done = switchboard("gateway", *_fill(args, busy, key_dir), **{**GATEWAY, **env})
    err = one_line_error(done, why, "switchboard")
    assert done.returncode == 1 and "hunter2" not in err


@pytest.mark.parametrize(("args", "env", "why"), ROUTER_CASES)
def test_bad_router_input_is_one_line(args: list[str], env: dict[str, str], why: str,
                                      busy: str, key_dir: Path) -> None:
    args = _fill(args, busy, key_dir)
    if "--router-port" not in args and "SWITCHBOARD_ROUTER_PORT" not in env:
        args += ["--router-port", str(free_port())]
    done = switchboard("router", *args, **{**ROUTER, **env})
    one_line_error(done, why, "switchboard")
    assert done.returncode == 1


@pytest.mark.parametrize(("args", "env", "why"), UP_CASES)
def test_bad_up_input_is_one_line(args: list[str], env: dict[str, str], why: str,
                                  busy: str, key_dir: Path) -> None:
    args = _fill(args, busy, key_dir)
    for flag in ("--port", "--router-port"):
        if flag not in args and f"SWITCHBOARD_{flag[2:].upper().replace('-', '_')}" not in env:
            args += [flag, str(free_port())]
    done = switchboard("up", *args, **{**UP, **env})
    one_line_error(done, why, "switchboard")
    assert done.returncode == 1


@pytest.mark.parametrize(("args", "why"), USAGE_CASES)
def test_a_bad_command_line_is_one_line_with_status_2(args: list[str], why: str) -> None:
    done = switchboard(*args, **WATCH)
    one_line_error(done, why, "error:", "--help")
    assert done.returncode == 2


def test_up_with_an_unreachable_redis_exits_1_with_one_error_line() -> None:
    # `up` logs as it goes (INFO lines on stderr); the failure itself is one ERROR line.
    done = switchboard("up", "--redis", NOBODY_REDIS, "--port", str(free_port()),
                       "--router-port", str(free_port()), **UP)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and " ERROR cannot reach Redis" in errors[0], done.stderr


def test_version_is_the_installed_distributions() -> None:
    done = switchboard("--version")
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout == f"switchboard {importlib.metadata.version('switchboard')}\n"
    assert done.stdout == f"switchboard {(ROOT / 'VERSION').read_text().strip()}\n"


def test_version_without_an_installed_distribution_says_unknown() -> None:
    # The checkout's package, with the installed metadata hidden: importlib finds nothing.
    code = ("import importlib.metadata as m, sys\n"
            "def missing(name): raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            "from switchboard.cli import main\n"
            "sys.exit(main(['--version']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "switchboard unknown\n"), done.stderr
