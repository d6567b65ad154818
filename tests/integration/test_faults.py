"""Faults with real processes: Redis outage and restart, gateway crash."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from switchboard.auth import mint
from switchboard_client import Recovery
from tests.clients import until
from tests.integration.cluster import cluster
from tests.integration.sdk import start_consumers, stop_consumers
from tests.support import JWT_SECRET, RedisServer, http_status

pytestmark = pytest.mark.integration


async def test_redis_outage_and_restart_clients_stay_and_delivery_resumes_within_5s(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir) as c:
        port0 = c.gateways[0].port
        users = ["ra", "rb", "rc", "rd"]
        consumers = []
        for i, u in enumerate(users):  # two clients on each gateway
            consumers += await start_consumers(
                f"ws://127.0.0.1:{c.gateways[i % 2].port}/ws", [mint(JWT_SECRET, u)])
        try:
            c.publish(broadcast=True, data="before")
            await until(lambda: all("before" in cons.data("broadcast") for cons in consumers),
                        5, "before the outage")

            redis_server.stop()
            assert c.http.post("/v1/publish", json={"broadcast": True, "data": "x"}
                               ).status_code == 503  # never a 2xx for a message not stored
            await until(lambda: http_status(f"http://127.0.0.1:{port0}/readyz") == 503, 10,
                        "readyz reflects the outage")
            assert http_status(f"http://127.0.0.1:{port0}/healthz") == 200
            assert all(cons.client.state == "open" for cons in consumers)  # clients stay

            redis_server.start()
            back = time.monotonic()

            async def delivered_again() -> float:
                n = 0
                while True:
                    n += 1
                    tag = f"after{n}"
                    ok = True
                    for u in users:
                        r = c.http.post("/v1/publish", json={"user": u, "data": tag})
                        ok = ok and r.status_code == 200
                    r = c.http.post("/v1/publish", json={"broadcast": True, "data": tag})
                    ok = ok and r.status_code == 200
                    if ok:
                        deadline = time.monotonic() + 0.5
                        while time.monotonic() < deadline:
                            if all(tag in cons.data("user") and tag in cons.data("broadcast")
                                   for cons in consumers):
                                return time.monotonic() - back
                            await asyncio.sleep(0.02)
                    await asyncio.sleep(0.1)

            took = await asyncio.wait_for(delivered_again(), 15)
            assert took < 5.0, f"delivery resumed {took:.1f}s after Redis returned"
            await until(lambda: http_status(f"http://127.0.0.1:{port0}/readyz") == 200, 5,
                        "ready again")
            # Redis came back empty: history was lost, and the clients were told so.
            assert all(any(isinstance(r, Recovery) for r in cons.recoveries)
                       for cons in consumers)
            assert all(cons.client.stats.reconnects == 0 for cons in consumers)
        finally:
            await stop_consumers(consumers)


async def test_dead_gateways_map_entries_are_cleaned_by_the_next_publish(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, SWITCHBOARD_HEARTBEAT_INTERVAL="0.3") as c:
        consumers = await start_consumers(f"ws://127.0.0.1:{c.gateways[1].port}/ws",
                                          [mint(JWT_SECRET, "zed")])
        try:
            assert c.http.get("/v1/users/zed/connections").json()["count"] == 1
            c.gateways[1].kill()  # SIGKILL: its map entry stays behind
            assert c.http.get("/v1/users/zed/connections").json()["count"] == 1
            await until(lambda: len(c.http.get("/v1/cluster").json()["gateways"]) == 1, 10,
                        "the dead gateway's registry entry expires")
            c.publish(user="zed", data="anyone?")
            assert c.http.get("/v1/users/zed/connections").json()["count"] == 0
        finally:
            await stop_consumers(consumers)
