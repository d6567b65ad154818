"""The JS SDK (client/js) under Node, against a real cluster.

The tests themselves are JavaScript (``client/js/test/*.test.js``, node's own test runner, the
``ws`` package injected as the WebSocket); this starts what they run against: redis-server, a
router and two gateways sharing one port, as ``switchboard up`` runs them. It hands the cluster
over in environment variables and fails with node's output when a test fails. Node and the
npm-installed dev dependencies are required, never optional: ``make test`` installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    Proc,
    RedisServer,
    free_port,
    start_gateway,
    start_router,
    wait_until,
)

pytestmark = pytest.mark.integration

JS = ROOT / "client" / "js"
NODE_TIMEOUT = 150  # seconds for the whole node run; each JS test has its own 30 s deadline


@pytest.fixture
def node() -> str:
    """Checked before the cluster starts, to fail at once."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node (18 or newer) is not installed; make test installs it")
    if not (JS / "node_modules" / "ws").is_dir():
        pytest.fail(f"{JS / 'node_modules'} is missing: run `npm ci` in client/js "
                    "(make test installs it)")
    return exe


@pytest.fixture
def cluster_env(redis_server: RedisServer, logdir: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    started: list[Proc] = []
    try:
        router = start_router(redis_server, logdir)
        started.append(router)
        ids = [f"gw{name}{os.urandom(3).hex()}" for name in "AB"]
        for gw_id in ids:
            started.append(start_gateway(redis_server, logdir, port=port,
                                         SWITCHBOARD_GATEWAY_ID=gw_id,
                                         SWITCHBOARD_REUSE_PORT="1"))
        router_url = f"http://127.0.0.1:{router.port}"
        auth = {"Authorization": f"Bearer {API_KEY}"}

        def registered() -> bool:
            resp = httpx.get(f"{router_url}/v1/cluster", headers=auth, timeout=5)
            return {g["id"] for g in resp.json()["gateways"]} >= set(ids)

        # They share the port, so a health check may have been answered by the other one.
        wait_until(registered, 20, "both gateways in /v1/cluster")
        yield {
            "SWITCHBOARD_GATEWAY_URL": f"http://127.0.0.1:{port}",
            "SWITCHBOARD_ROUTER_URL": router_url,
            "SWITCHBOARD_API_KEY": API_KEY,
            "SWITCHBOARD_JWT_SECRET": JWT_SECRET,
        }
    finally:
        for proc in started:
            proc.stop()


@pytest.mark.timeout(NODE_TIMEOUT + 60)
def test_js_sdk_under_node_against_a_live_cluster(node: str,
                                                  cluster_env: dict[str, str]) -> None:
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.js"))
    assert files, "no client/js/test/*.test.js"
    env = {**os.environ, **cluster_env, "NODE_OPTIONS": "", "NO_COLOR": "1"}
    try:
        run = subprocess.run([node, "--test", "--test-reporter=spec", *files], cwd=JS, env=env,
                             capture_output=True, text=True, timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        # (the output so far comes as bytes even with text=True)
        out = b"".join(o if isinstance(o, bytes) else (o or "").encode()
                       for o in (exc.stdout, b"\n", exc.stderr))
        pytest.fail(f"node --test did not finish in {NODE_TIMEOUT}s:\n"
                    f"{out.decode(errors='replace')}")
    assert run.returncode == 0, f"node --test failed:\n{run.stdout}\n{run.stderr}"
