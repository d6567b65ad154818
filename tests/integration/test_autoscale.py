"""``switchboard up`` scales on connection count: out at once when connections pass the target,
back in after the stabilisation window by draining the least-loaded gateways, and clients
connected throughout (the Python SDK) lose nothing while they are moved."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard.auth import mint
from switchboard_client import Client, Message
from tests.clients import WsClient, until
from tests.support import ROOT, free_port, terminate, wait_for_banner

pytestmark = pytest.mark.integration

TARGET = 20  # --target-connections
SDK_CLIENTS = 5
FIRST_WAVE = 20  # with the SDK clients, 25 > TARGET: 2 gateways wanted
MAX_RAW = 60  # bound on raw connections opened in all
KEEP = 8  # raw connections left on the gateway that must survive (> SDK_CLIENTS)
PUBLISH_EVERY = 0.05  # seconds between broadcasts
MAX_PUBLISHES = 1500


def start_up(log: Path, port: int, router_port: int) -> subprocess.Popen[bytes]:
    # the test's own environment must not point the cluster at some other Redis or port
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    # `up` hands its environment to the gateways. Rebalancing (tested on its own elsewhere)
    # would move the raw connections this test places on purpose, and a short drain window
    # keeps the test short.
    env.update(SWITCHBOARD_REBALANCE="0", SWITCHBOARD_DRAIN_WINDOW="2")
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli", "up", "--port", str(port),
             "--router-port", str(router_port), "--gateways", "1", "--min", "1", "--max", "3",
             "--target-connections", str(TARGET), "--scale-window", "3"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )


class Cluster:
    """The router API of the running ``up``, as the test needs it."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.published = 0

    async def live_gateways(self) -> list[dict[str, Any]]:
        resp = await self.http.get("/v1/cluster")
        resp.raise_for_status()
        return [g for g in resp.json()["gateways"] if not g["draining"]]

    async def wait_for(self, count: int, at_least: bool, timeout: float) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            live = await self.live_gateways()
            if len(live) >= count if at_least else len(live) == count:
                return [g["id"] for g in live]
            if loop.time() > deadline:
                raise TimeoutError(f"cluster still has {len(live)} live gateway(s): {live}")
            await asyncio.sleep(0.2)

    async def publish_steadily(self, stop: asyncio.Event) -> None:
        """Numbered broadcasts at a steady rate until ``stop`` (bounded in count)."""
        while not stop.is_set() and self.published < MAX_PUBLISHES:
            resp = await self.http.post("/v1/publish", json={"broadcast": True,
                                                             "data": {"n": self.published}})
            resp.raise_for_status()  # a 2xx means the message is in the replay log
            self.published += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_EVERY)


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str, into: list[int]) -> AsyncIterator[Client]:
    """An SDK client collecting the numbers of the broadcasts it receives."""
    async with Client(url, token=token, backoff_cap=2.0) as c:

        async def collect() -> None:
            async for item in c:
                if isinstance(item, Message) and item.stream == "broadcast":
                    into.append(item.data["n"])

        task = asyncio.create_task(collect())
        try:
            yield c
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def gateway_of(ws: WsClient) -> str:
    assert ws.welcome is not None
    return str(ws.welcome["gateway"])


async def scale_out_and_in(port: int, router_port: int, key: str, secret: str) -> None:
    ws_url = f"ws://127.0.0.1:{port}/ws"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router_port}", headers=headers,
                                 timeout=5) as http, contextlib.AsyncExitStack() as stack:
        cluster = Cluster(http)
        (first,) = await cluster.wait_for(1, at_least=False, timeout=20)
        received: list[list[int]] = [[] for _ in range(SDK_CLIENTS)]
        sdks = [await stack.enter_async_context(
                    sdk_client(ws_url, mint(secret, f"sdk{i}"), received[i]))
                for i in range(SDK_CLIENTS)]
        assert {c.gateway for c in sdks} == {first}  # the only gateway so far
        stop = asyncio.Event()
        publisher = asyncio.create_task(cluster.publish_steadily(stop))
        raw: list[WsClient] = []
        stack.push_async_callback(lambda: asyncio.gather(*(w.close() for w in raw)))

        async def open_raw(n: int) -> None:
            for _ in range(n):
                token = mint(secret, f"raw{len(raw)}")
                raw.append(await WsClient(f"{ws_url}?token={token}").start())

        # scale out: past the target, a second gateway starts without any window
        await open_raw(FIRST_WAVE)
        await cluster.wait_for(2, at_least=True, timeout=20)
        # New connections now spread over the gateways (SO_REUSEPORT). Open more until one
        # of the new gateways holds enough of them to outweigh the SDK clients on the first.
        def on_new() -> Counter[str]:
            return Counter(gateway_of(w) for w in raw if gateway_of(w) != first)

        while len(raw) < MAX_RAW and max(on_new().values(), default=0) < KEEP:
            await open_raw(1)
        keeper, held = on_new().most_common(1)[0]
        assert held >= KEEP, f"no new gateway got {KEEP} of {len(raw)} connections"

        # Most clients leave: the keeper's KEEP and the SDK clients remain, under one
        # target. After the window the autoscaler drains all but the most loaded gateway,
        # so the SDK clients (on the first gateway) must move to the keeper.
        keep = [w for w in raw if gateway_of(w) == keeper][:KEEP]
        leaving = [w for w in raw if w not in keep]
        await asyncio.gather(*(w.close() for w in leaving))
        raw[:] = keep
        assert await cluster.wait_for(1, at_least=False, timeout=30) == [keeper]
        await until(lambda: all(c.gateway == keeper and c.state == "open" for c in sdks), 20,
                    "the SDK clients to resume on the surviving gateway")

        stop.set()
        await publisher
        total = cluster.published
        await until(lambda: all(len(r) >= total for r in received), 20,
                    f"every SDK client to get all {total} broadcasts")
        for i, got in enumerate(received):
            assert got == list(range(total)), f"sdk{i} lost or repeated broadcasts"
        for c in sdks:
            assert c.stats.reconnects >= 1 and c.stats.recoveries_failed == 0
        assert total > 100  # the publishing really spanned the scale-out and the scale-in


def test_up_scales_out_then_in_without_losing_messages(tmp_path: Path) -> None:
    port, router_port = free_port(), free_port()
    log = tmp_path / "up.log"
    up = start_up(log, port, router_port)
    try:
        text = wait_for_banner(up, log, 60)
        key_match = re.search(r"export SWITCHBOARD_API_KEY=(\S+)", text)
        secret_match = re.search(r"export SWITCHBOARD_JWT_SECRET=(\S+)", text)
        assert key_match and secret_match, text
        try:
            asyncio.run(scale_out_and_in(port, router_port, key_match[1], secret_match[1]))
        except BaseException:
            print(log.read_text(errors="replace"))  # the supervisor's decisions, on failure
            raise
        decisions = log.read_text(errors="replace")
        assert "scaling out to" in decisions and "scaling in to 1" in decisions

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=40) == 0, log.read_text(errors="replace")
    finally:
        terminate(up, 40)  # if the test failed midway: do not leave a cluster running
