"""The JS SDK and the proxy's ``unavailable``: a subscribe the application's backend could not
decide is asked again (after a backoff, on the same WebSocket) until it is decided."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import token
from tests.integration.test_proxy import Backend, backend, proxied  # noqa: F401
from tests.support import ROOT, RedisServer

pytestmark = pytest.mark.integration

JS = ROOT / "client" / "js"

SCRIPT = """
import { createRequire } from "node:module";
const require = createRequire(%(package)s);
const WebSocket = require("ws");
const { Switchboard } = await import(%(sdk)s);
const sb = new Switchboard(%(url)s, { WebSocket, token: %(token)s, transport: "websocket" });
const errors = [];
const subscribed = [];
sb.on("error", (e) => errors.push(e.code));
sb.on("subscribed", (e) => subscribed.push(e.channel));
await sb.connect();
sb.subscribe("room");
const deadline = Date.now() + 20000;
while (!subscribed.includes("room") && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 20));
}
console.log(JSON.stringify({ errors, subscribed }));
sb.close();
process.exit(0);
"""


def test_the_js_sdk_asks_again_for_a_subscribe_answered_unavailable(
        redis_server: RedisServer, logdir: Path, backend: Backend,  # noqa: F811
        tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "ws").is_dir():
        pytest.fail("node and client/js/node_modules are required (make test installs them)")
    asked = 0

    def decide(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal asked
        asked += 1
        backend.status = 500 if asked == 1 else 200  # the first call fails: unavailable
        return {"allow": True}

    backend.decide = decide
    gw = proxied(redis_server, logdir, backend, "subscribe")
    try:
        script = tmp_path / "retry.mjs"
        script.write_text(SCRIPT % {
            "package": json.dumps(str(JS / "package.json")),
            "sdk": json.dumps((JS / "switchboard.js").as_uri()),
            "url": json.dumps(f"http://127.0.0.1:{gw.port}"),
            "token": json.dumps(token("jay", channels=["room"])),
        })
        done = subprocess.run([node, str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["subscribed"] == ["room"]
        assert result["errors"].count("unavailable") >= 1
        assert len(backend.events("subscribe")) >= 2
    finally:
        gw.stop()
