"""``switchboard up``'s decisions: configuration, restart budget, what it prints, and how it
treats children (with tiny Python children, no Redis)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from switchboard.auth import Verifier
from switchboard.children import Child, RestartBudget, StartError, describe_exit
from switchboard.supervisor import (
    Supervisor,
    UpConfig,
    banner,
    cli_command,
    connect_host,
    gateway_env,
    redis_argv,
    resolve,
    router_env,
    url_host,
)


def up_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"redis": None, "host": "127.0.0.1", "port": None,
                                 "router_port": None, "gateways": 2, "jwt_secret": None,
                                 "api_key": None}
    values.update(overrides)
    return argparse.Namespace(**values)


def fixed_secret() -> str:
    return "generated"


CFG = UpConfig(host="127.0.0.1", port=8080, router_port=8000, gateways=2, redis_url=None,
               jwt_secret="s3cret", api_keys=("key1", "key2"))


# -- configuration ----------------------------------------------------------------------------


def test_defaults_generate_secrets_and_use_a_private_redis() -> None:
    cfg = resolve(up_args(), {}, fixed_secret)
    assert (cfg.port, cfg.router_port, cfg.gateways) == (8080, 8000, 2)
    assert cfg.redis_url is None
    assert cfg.jwt_secret == "generated"
    assert cfg.api_keys == ("generated",)


def test_environment_is_used_when_no_flag_is_given() -> None:
    env = {"SWITCHBOARD_PORT": "9090", "SWITCHBOARD_ROUTER_PORT": "9000",
           "SWITCHBOARD_REDIS_URL": "redis://elsewhere:6379/1", "SWITCHBOARD_JWT_SECRET": "envs",
           "SWITCHBOARD_API_KEYS": " a , b ,"}
    cfg = resolve(up_args(), env, fixed_secret)
    assert (cfg.port, cfg.router_port) == (9090, 9000)
    assert cfg.redis_url == "redis://elsewhere:6379/1"
    assert cfg.jwt_secret == "envs"
    assert cfg.api_keys == ("a", "b")
    assert cfg.api_key == "a"


def test_flags_win_and_environment_keys_stay_valid() -> None:
    env = {"SWITCHBOARD_PORT": "9090", "SWITCHBOARD_API_KEYS": "a,flagkey",
           "SWITCHBOARD_REDIS_URL": "redis://env/0"}
    cfg = resolve(up_args(port=7000, router_port=7001, redis="redis://flag/0",
                          jwt_secret="flags", api_key="flagkey"), env, fixed_secret)
    assert (cfg.port, cfg.router_port) == (7000, 7001)
    assert cfg.redis_url == "redis://flag/0"
    assert cfg.jwt_secret == "flags"
    assert cfg.api_keys == ("flagkey", "a")  # printed key first, no duplicate


def test_bad_input_is_refused_with_a_message() -> None:
    with pytest.raises(SystemExit, match="SWITCHBOARD_PORT"):
        resolve(up_args(), {"SWITCHBOARD_PORT": "eighty"}, fixed_secret)
    with pytest.raises(SystemExit, match="--gateways"):
        resolve(up_args(gateways=0), {}, fixed_secret)


def test_wildcard_listen_addresses_are_reached_on_loopback() -> None:
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("") == "127.0.0.1"
    assert connect_host("::") == "::1"
    assert connect_host("10.1.2.3") == "10.1.2.3"
    assert url_host("::") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1"


def test_children_get_their_configuration_through_the_environment() -> None:
    gw = gateway_env(CFG, "redis://127.0.0.1:7777/0", "gw1-abcd")
    assert gw == {
        "SWITCHBOARD_REDIS_URL": "redis://127.0.0.1:7777/0",
        "SWITCHBOARD_JWT_SECRET": "s3cret",
        "SWITCHBOARD_HOST": "127.0.0.1",
        "SWITCHBOARD_PORT": "8080",
        "SWITCHBOARD_REUSE_PORT": "1",
        "SWITCHBOARD_GATEWAY_ID": "gw1-abcd",
        "SWITCHBOARD_DEMO_CONFIG": '{"router": "http://127.0.0.1:8000", "api_key": "key1"}',
    }
    rt = router_env(CFG, "redis://127.0.0.1:7777/0")
    # The demo page, served by the gateways, may call the router from the browser.
    assert rt["SWITCHBOARD_CORS_ORIGINS"] == "http://127.0.0.1:8080"
    assert rt["SWITCHBOARD_API_KEYS"] == "key1,key2"
    assert rt["SWITCHBOARD_ROUTER_PORT"] == "8000"
    assert rt["SWITCHBOARD_REDIS_URL"] == "redis://127.0.0.1:7777/0"


def test_private_redis_keeps_nothing_on_disk_and_listens_on_loopback_only() -> None:
    argv = redis_argv("/usr/bin/redis-server", 7777, "/tmp/x")
    joined = " ".join(argv)
    assert "--port 7777" in joined and "--bind 127.0.0.1" in joined
    assert argv[argv.index("--save") + 1] == ""
    assert argv[argv.index("--appendonly") + 1] == "no"
    assert argv[argv.index("--dir") + 1] == "/tmp/x"


# -- restart budget ---------------------------------------------------------------------------


def test_budget_allows_limit_restarts_per_window() -> None:
    budget = RestartBudget(limit=5, window=60.0)
    assert all(budget.spend(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0))
    assert not budget.spend(5.0)
    assert budget.used(5.0) == 5


def test_budget_refills_as_old_restarts_leave_the_window() -> None:
    budget = RestartBudget(limit=2, window=60.0)
    assert budget.spend(0.0) and budget.spend(30.0)
    assert not budget.spend(59.9)
    assert budget.spend(60.0)  # the restart at 0.0 is now a minute old
    assert not budget.spend(61.0)
    assert budget.used(200.0) == 0


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"


# -- banner -----------------------------------------------------------------------------------


def test_banner_has_urls_credentials_and_commands_that_work() -> None:
    text = banner(CFG, redis_url="redis://127.0.0.1:7777/0", private_redis=True, token="TOK",
                  pids=[("redis-server", 10), ("gateway-1 gw1-ab", 11)])
    for expected in ("ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080/sse",
                     "http://127.0.0.1:8080/", "http://127.0.0.1:8000", "API key     key1",
                     "Demo token  TOK", "export SWITCHBOARD_JWT_SECRET=s3cret",
                     "export SWITCHBOARD_API_KEY=key1",
                     "export SWITCHBOARD_ROUTER_URL=http://127.0.0.1:8000",
                     "export SWITCHBOARD_REDIS_URL=redis://127.0.0.1:7777/0",
                     "SWITCHBOARD_JWT_SECRET=s3cret switchboard token --user alice",
                     "gateway-1 gw1-ab pid 11"):
        assert expected in text
    curl = next(line for line in text.splitlines() if "/v1/publish" in line)
    words = shlex.split(curl)
    assert words[words.index("-H") + 1] == "Authorization: Bearer key1"
    assert words[-1] == '{"broadcast": true, "data": "hello"}'


def test_banner_quotes_secrets_for_the_shell() -> None:
    cfg = UpConfig(host="0.0.0.0", port=1, router_port=2, gateways=1, redis_url="redis://r/0",
                   jwt_secret="it's $HOME", api_keys=("k",))
    text = banner(cfg, redis_url="redis://r/0", private_redis=False, token="T", pids=[])
    export = next(line for line in text.splitlines() if "SWITCHBOARD_JWT_SECRET=" in line)
    assert shlex.split(export) == ["export", "SWITCHBOARD_JWT_SECRET=it's $HOME"]
    assert "ws://127.0.0.1:1/ws" in text  # a wildcard listen address is shown as loopback


def test_printed_commands_run_the_cli_the_way_it_was_started() -> None:
    assert cli_command(".venv/bin/switchboard", "/usr/bin/python3") == ".venv/bin/switchboard"
    assert cli_command("/src/switchboard/cli.py", "/opt/py 3/python") == (
        "'/opt/py 3/python' -m switchboard.cli")
    text = banner(CFG, redis_url="r", private_redis=True, token="T", pids=[],
                  cli=".venv/bin/switchboard")
    assert "SWITCHBOARD_JWT_SECRET=s3cret .venv/bin/switchboard token --user alice" in text
    assert "  .venv/bin/switchboard status" in text


def test_demo_token_is_accepted_by_the_gateway_verifier() -> None:
    from switchboard.auth import mint
    from switchboard.supervisor import DEMO_TOKEN_TTL

    secret = "a-secret-long-enough-for-hs256-0123456789"
    token = mint(secret, "demo", ttl=DEMO_TOKEN_TTL, channels=["*"], publish=["*"])
    claims = Verifier(secret=secret).verify(token)
    assert claims.user == "demo" and claims.channels == ("*",)
    assert claims.expires > time.time() + 23 * 3600


# -- children (tiny Python processes, no Redis) -----------------------------------------------


def python_child(name: str, code: str, budget: RestartBudget | None = None,
                 ready: Path | None = None) -> Child:
    """A child running ``code``; ready at once, or once it created the file ``ready``."""
    child = Child(name, lambda c: ([sys.executable, "-c", code], {}),
                  lambda c: ready is None or ready.exists())
    if budget is not None:
        child.budget = budget
    return child


def test_a_crash_looping_child_is_restarted_then_given_up_on() -> None:
    sup = Supervisor(CFG, {})
    child = python_child("gateway-1", "import time, sys; time.sleep(0.2); sys.exit(3)",
                         RestartBudget(limit=2, window=60.0))
    sup.gateways = [child]
    sup.start([child])
    first = child.pid
    assert sup.supervise() == 1  # two restarts allowed, the third death gives up
    assert child.pid != first
    assert child.budget.used(time.monotonic()) == 2
    sup.shutdown()


def test_a_drained_gateway_is_replaced_without_spending_its_restart_budget(
        tmp_path: Path) -> None:
    # A gateway exits 0 only after a drain (e.g. POST /v1/gateways/ID/drain from the admin
    # page): drained more often than the budget allows, up must still not give up.
    runs = tmp_path / "runs"
    sup = Supervisor(CFG, {})
    child = python_child("gateway-1", f"open({str(runs)!r}, 'a').write('x'); "
                         "import time; time.sleep(0.1)", RestartBudget(limit=1, window=60.0))
    sup.gateways = [child]
    sup.start([child])

    def stop_after_four_runs() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                not runs.exists() or len(runs.read_text()) < 4):
            time.sleep(0.05)
        sup.stop.set()

    watcher = threading.Thread(target=stop_after_four_runs)
    watcher.start()
    assert sup.supervise() == 0  # not 1: nothing crashed
    watcher.join()
    assert len(runs.read_text()) >= 4
    assert child.budget.used(time.monotonic()) == 0
    sup.shutdown()


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    sup = Supervisor(CFG, {})
    ready = tmp_path / "ready"
    stubborn = python_child("gateway-1", "import pathlib, signal, time\n"
                            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                            f"pathlib.Path({str(ready)!r}).touch()\n"
                            "time.sleep(60)", ready=ready)
    sup.start([stubborn])
    began = time.monotonic()
    sup._terminate([stubborn], grace=0.5)
    assert stubborn.proc is not None and stubborn.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 10


def test_shrinking_drains_the_newest_gateways_first() -> None:
    sup = Supervisor(CFG, {})
    code = "import time; time.sleep(60)"
    sup.gateways = [python_child(f"gateway-{i}", code) for i in (1, 2, 3)]
    sup.start(list(sup.gateways))
    sup.scale_gateways(1)
    assert [g.name for g in sup.gateways] == ["gateway-1"]
    assert sorted(c.name for c in sup.retiring) == ["gateway-2", "gateway-3"]
    for child in sup.retiring:
        assert child.proc is not None
        assert child.proc.wait(timeout=10) == -signal.SIGTERM
    sup._reap_retired()
    assert sup.retiring == []
    sup.shutdown()
    assert not sup.gateways[0].running()


def test_a_rolling_restart_replaces_one_gateway_at_a_time(tmp_path: Path) -> None:
    """Each gateway's successor is started and ready before it is drained, and the next one
    waits until the drained one has exited: never fewer serving, at most one draining."""
    sup = Supervisor(CFG, {})
    release = tmp_path / "release"
    # a gateway that, told to drain, takes until the test releases it; ready once its
    # handler is in place (it touches the file named after it)
    code = ("import pathlib, signal, sys, time\n"
            f"def drain(*_):\n    while not pathlib.Path({str(release)!r}).exists():\n"
            "        time.sleep(0.02)\n    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, drain)\npathlib.Path(sys.argv[1]).touch()\n"
            "time.sleep(60)")

    def command(c: Child) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", code, str(tmp_path / c.name)], {}

    def ready(c: Child) -> bool:
        return (tmp_path / c.name).exists()

    sup._gateway_command = command  # type: ignore[method-assign]
    sup._gateway_ready = ready  # type: ignore[method-assign]
    sup.gateways = [Child(f"gateway-{i}", command, ready) for i in (1, 2)]
    sup._next_gateway = 3
    sup.start(list(sup.gateways))
    first, second = sup.gateways
    try:
        sup.start_roll()
        sup.roll()
        assert [g.name for g in sup.gateways] == ["gateway-2", "gateway-3"]
        assert all(g.running() for g in sup.gateways) and sup.retiring == [first]
        sup.roll()  # gateway-1 is still draining: gateway-2 must wait
        assert [g.name for g in sup.gateways] == ["gateway-2", "gateway-3"]
        release.touch()
        assert first.proc is not None and first.proc.wait(timeout=10) == 0
        sup.roll()
        assert [g.name for g in sup.gateways] == ["gateway-3", "gateway-4"]
        assert second.proc is not None and second.proc.wait(timeout=10) == 0
        assert sup.rolling
        sup.roll()
        assert not sup.rolling and all(g.running() for g in sup.gateways)
    finally:
        release.touch()
        sup.shutdown()


def test_a_rolling_restart_whose_successor_fails_keeps_the_old_gateways() -> None:
    """New code that does not start must not crash-loop through the restart budget and take
    the healthy gateways down with it."""
    sup = Supervisor(CFG, {})
    sup._gateway_command = lambda c: (  # type: ignore[method-assign]
        [sys.executable, "-c", "import sys; sys.exit(3)"], {})
    sup._gateway_ready = lambda c: False  # type: ignore[method-assign]
    code = "import time; time.sleep(60)"
    sup.gateways = [python_child(f"gateway-{i}", code) for i in (1, 2)]
    sup._next_gateway = 3
    sup.start(list(sup.gateways))
    old = list(sup.gateways)
    try:
        sup.start_roll()
        with pytest.raises(StartError):
            sup.roll()
        assert sup.gateways == old and all(g.running() for g in old)
        assert not sup.rolling and sup.retiring == []
    finally:
        sup.shutdown()
