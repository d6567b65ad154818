"""``switchboard up --redis-shards N``: how the option is resolved and refused, what the banner
says about the cluster, and the supervisor's Redis client for a cluster URL (no Redis runs
here; tests/integration/test_local_cluster.py starts a real cluster through the supervisor).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import pytest
import redis

from switchboard.children import StartError
from switchboard.clusterclient import node_options
from switchboard.redisurl import parse_cluster
from switchboard.supervisor import (
    ClusterSummary,
    Supervisor,
    UpConfig,
    banner,
    redis_client,
    resolve,
)
from tests.support import ROOT, free_port


def up_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"redis": None, "redis_shards": None, "host": "127.0.0.1",
                                 "port": None, "router_port": None, "gateways": 2,
                                 "jwt_secret": "s", "api_key": "k"}
    values.update(overrides)
    return argparse.Namespace(**values)


# -- resolving the option ---------------------------------------------------------------------


def test_default_is_one_private_redis_server() -> None:
    cfg = resolve(up_args(), {})
    assert cfg.redis_shards == 0 and cfg.redis_url is None
    # a namespace without the flag at all (built by hand) means the same
    bare = up_args()
    del bare.redis_shards
    assert resolve(bare, {}).redis_shards == 0


def test_the_flag_or_the_environment_asks_for_a_cluster() -> None:
    assert resolve(up_args(redis_shards=3), {}).redis_shards == 3
    assert resolve(up_args(), {"SWITCHBOARD_REDIS_SHARDS": " 5 "}).redis_shards == 5
    # the flag wins, 0 included: it asks for the single redis-server
    assert resolve(up_args(redis_shards=0), {"SWITCHBOARD_REDIS_SHARDS": "4"}).redis_shards == 0
    assert resolve(up_args(redis_shards=3), {}).redis_url is None


@pytest.mark.parametrize("shards", [1, 2, -1])
def test_too_few_shards_are_refused(shards: int) -> None:
    with pytest.raises(SystemExit, match=r"--redis-shards must be 0 .* at least 3"):
        resolve(up_args(redis_shards=shards), {})
    with pytest.raises(SystemExit, match=r"SWITCHBOARD_REDIS_SHARDS must be 0 .* at least 3"):
        resolve(up_args(), {"SWITCHBOARD_REDIS_SHARDS": str(shards)})


def test_a_shard_count_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(SystemExit, match="SWITCHBOARD_REDIS_SHARDS must be a whole number"):
        resolve(up_args(), {"SWITCHBOARD_REDIS_SHARDS": "three"})


def test_shards_and_a_given_redis_exclude_each_other() -> None:
    with pytest.raises(SystemExit, match="cannot be combined with --redis:"):
        resolve(up_args(redis_shards=3, redis="redis://elsewhere/0"), {})
    with pytest.raises(SystemExit, match="cannot be combined with SWITCHBOARD_REDIS_URL"):
        resolve(up_args(), {"SWITCHBOARD_REDIS_SHARDS": "3",
                            "SWITCHBOARD_REDIS_URL": "redis://elsewhere/0"})
    # no cluster asked for: the given Redis is used as before
    cfg = resolve(up_args(redis_shards=0), {"SWITCHBOARD_REDIS_URL": "redis://elsewhere/0"})
    assert cfg.redis_url == "redis://elsewhere/0"


def run_up(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return subprocess.run([sys.executable, "-m", "switchboard.cli", "up", *args], env=clean,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_command_line_refuses_bad_shard_counts_without_starting_anything() -> None:
    done = run_up("--redis-shards", "2")
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "--redis-shards must be 0 (one private redis-server) or at least 3" in done.stderr
    done = run_up("--redis-shards", "3", "--redis", "redis://127.0.0.1:1/0")
    assert done.returncode == 1 and "cannot be combined with --redis" in done.stderr
    done = run_up("--redis-shards", "many")
    assert done.returncode == 2 and "--redis-shards: invalid int value" in done.stderr


# -- the banner -------------------------------------------------------------------------------

CFG = UpConfig(host="127.0.0.1", port=8080, router_port=8000, gateways=2, redis_url=None,
               jwt_secret="s3cret", api_keys=("key1",), redis_shards=3)
URL = "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004"
SUMMARY = ClusterSummary(masters=("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"),
                         replicas=(("127.0.0.1:7004", "127.0.0.1:7001"),
                                   ("127.0.0.1:7005", "127.0.0.1:7002"),
                                   ("127.0.0.1:7006", "127.0.0.1:7003")))


def test_banner_names_the_cluster_its_masters_and_replicas() -> None:
    text = banner(CFG, redis_url=URL, private_redis=True, token="T", pids=[], cluster=SUMMARY)
    lines = text.splitlines()
    assert lines[0].endswith(f"private Redis Cluster (3 masters, 3 replicas) at {URL}")
    assert "  Masters     127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003" in lines
    assert ("  Replicas    127.0.0.1:7004 (of 127.0.0.1:7001), 127.0.0.1:7005 (of "
            "127.0.0.1:7002), 127.0.0.1:7006 (of 127.0.0.1:7003)") in lines
    export = next(line for line in lines if "SWITCHBOARD_REDIS_URL=" in line)
    assert shlex.split(export) == ["export", f"SWITCHBOARD_REDIS_URL={URL}"]


def test_banner_without_a_cluster_has_no_cluster_lines() -> None:
    text = banner(CFG, redis_url="redis://127.0.0.1:7777/0", private_redis=True, token="T",
                  pids=[])
    assert "Masters" not in text and "Replicas" not in text and "Cluster" not in text
    assert text.splitlines()[0].endswith("private Redis at redis://127.0.0.1:7777/0")


# -- the supervisor's Redis client ------------------------------------------------------------


def test_a_single_server_url_still_gets_a_plain_client() -> None:
    client = redis_client("redis://127.0.0.1:7777/2", 1.0)
    try:
        assert type(client) is redis.Redis
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (7777, 2, 1.0)
    finally:
        client.close()


def test_cluster_credentials_and_tls_reach_the_cluster_client() -> None:
    options = node_options(parse_cluster("rediss+cluster://u:p%40ss@h:1/0?ssl_cert_reqs=none"))
    assert options == {"username": "u", "password": "p@ss", "ssl": True,
                       "ssl_cert_reqs": "none"}
    assert node_options(parse_cluster("redis+cluster://h:1/0")) == {}


def external(url: str) -> Supervisor:
    cfg = UpConfig(host="127.0.0.1", port=8080, router_port=8000, gateways=1, redis_url=url,
                   jwt_secret="s", api_keys=("k",))
    return Supervisor(cfg, {})


def test_an_unreachable_or_bad_cluster_url_is_a_start_error() -> None:
    nobody = free_port()
    with pytest.raises(StartError, match="cannot reach the Redis Cluster at redis"):
        external(f"redis+cluster://127.0.0.1:{nobody}").start_redis()
    with pytest.raises(StartError, match="bad Redis Cluster URL: a Redis Cluster has only "
                                         "database 0"):
        external(f"redis+cluster://127.0.0.1:{nobody}/3").start_redis()
