"""A real HAProxy, configured from deploy/haproxy.cfg, in front of two real gateways.

The config is the real file with only its binds, its server addresses and the Docker DNS
resolver rewritten (and a short check interval), so a change to deploy/haproxy.cfg is tested
here. The test does what an operator does to roll a gateway, SIGTERM, and proves what clients
behind the load balancer rely on: HAProxy's /readyz check takes the draining gateway out at
once, every new connection lands on the other gateway even while the draining one still holds
fewer connections (leastconn would pick it otherwise), and the drained WebSocket and SSE
clients resume through HAProxy on the other gateway with every message exactly once, in order,
offsets contiguous, while publishing goes on through the drain.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import token
from tests.integration.tools import (
    HAProxy,
    Publisher,
    ResumingClient,
    ResumingSse,
    ResumingWs,
    check_exact,
    eventually,
    logs_on_failure,
    start_haproxy,
)
from tests.support import API_KEY, Proc, RedisServer, start_gateway, start_router

pytestmark = pytest.mark.integration

DRAIN_WINDOW = 4.0
# Interleaved so that leastconn's alternation gives each gateway both kinds of client.
KINDS = ["ws", "ws", "sse", "sse"] * 3


async def test_drained_gateway_leaves_haproxy_and_its_clients_resume_behind_it_exactly_once(
    redis_server: RedisServer, logdir: Path, tmp_path: Path
) -> None:
    env: dict[str, Any] = {"SWITCHBOARD_REBALANCE": "0",
                           "SWITCHBOARD_DRAIN_WINDOW": str(DRAIN_WINDOW)}
    procs: list[Proc] = []
    proxy: HAProxy | None = None
    clients: list[ResumingClient] = []
    pub: Publisher | None = None
    fresh: list[ResumingClient] = []  # connections made after the drain began
    try:
        for n in (1, 2):
            procs.append(start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID=f"gw-{n}",
                                       **env))
        router = start_router(redis_server, logdir)
        procs.append(router)
        proxy = start_haproxy(tmp_path / "haproxy", [g.port for g in procs[:2]])
        # The generated config lists the gateways in port order: server gateway-N is gw-N.
        server_of = {f"gw-{n}": name for n, name in enumerate(proxy.servers, 1)}
        with logs_on_failure(proxy.daemon, *procs):
            users = [f"h{i}-{kind}" for i, kind in enumerate(KINDS)]
            for user, kind in zip(users, KINDS, strict=True):
                cls = ResumingWs if kind == "ws" else ResumingSse
                clients.append(await cls("127.0.0.1", proxy.port, token(user)).start())
            # Both passed the real /readyz HTTP check (a wrong uri would get a 404).
            checks = {n: r["check_status"] for n, r in proxy.server_states().items()}
            assert checks == dict.fromkeys(proxy.servers, "L7OK"), checks
            by_gw = {gw: {type(c) for c in clients if c.gateway == gw} for gw in server_of}
            assert by_gw == {gw: {ResumingWs, ResumingSse} for gw in server_of}, (
                f"leastconn should have spread both kinds over both gateways: {by_gw}")

            pub = Publisher(router.port, users)
            publishing = asyncio.create_task(pub.run(rate=20, limit=600))
            await eventually(lambda: all(len(c.data("broadcast")) >= 5 for c in clients), 10,
                             "traffic reaching every client")

            victim, survivor = procs[0], "gw-2"
            moved = [c for c in clients if c.gateway == "gw-1"]
            victim.kill(signal.SIGTERM)  # as an operator (or Kubernetes) rolls a gateway
            down = await eventually(lambda: marked_down(proxy, server_of["gw-1"]), 5,
                                    "HAProxy marking the draining gateway DOWN")
            assert proxy.status()[server_of[survivor]] == "UP"

            # While the draining gateway still holds some of its clients it has fewer
            # connections than the survivor: leastconn would pick it, were it not DOWN.
            for i in range(6):
                fresh.append(await ResumingWs("127.0.0.1", proxy.port, token(f"fresh{i}"),
                                              max_attempts=1).start())
            still_there = [c for c in moved if c.gateway == "gw-1" and c.open]
            assert still_there, "the drain window should outlast the fresh connections"
            assert [f.gateways for f in fresh] == [[survivor]] * 6, [f.gateways for f in fresh]

            await eventually(lambda: all(c.gateway == survivor and c.open for c in moved),
                             DRAIN_WINDOW + 10, "every drained client resumed on the survivor")
            code = await asyncio.to_thread(victim.proc.wait, DRAIN_WINDOW + 10)
            assert code == 0, victim.output()

            # Publishing went on through the drain; let some more arrive after it, then stop.
            mark = len(pub.broadcasts)
            await eventually(lambda: len(pub.broadcasts) >= mark + 10, 10, "more traffic")
            pub.stop.set()
            await publishing
            assert len(pub.broadcasts) > 20
            await eventually(lambda: all(everything(pub, c, u) for c, u in
                                         zip(clients, users, strict=True)), 15,
                             "every message at every client")

            for c, user in zip(clients, users, strict=True):
                check_exact(c, "broadcast", pub.broadcasts)
                check_exact(c, "user", pub.unicasts[user])
                assert all(w["recovered"] for w in c.welcomes[1:]), (user, c.welcomes)
            for c in moved:
                assert c.gateways == ["gw-1", survivor], c.gateways
                assert 1012 in c.closes, (c.gateways, c.closes)  # service restart, resume
                if isinstance(c, ResumingWs):
                    assert c.welcomes[-1]["resumed"], c.welcomes[-1]
            for c in clients:
                if c not in moved:
                    assert c.gateways == [survivor], c.gateways  # nobody else was disturbed
            # The router's user→gateway map agrees: every drained user is on the survivor now.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}",
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as api:
                for c in moved:
                    user = users[clients.index(c)]
                    conns = (await api.get(f"/v1/users/{user}/connections")).json()
                    assert [x["gateway"] for x in conns["connections"]] == [survivor], conns

            # The check reads /readyz's status, not only the port: a gateway that cannot reach
            # Redis still listens but answers 503, and HAProxy takes it out (L7STS).
            redis_server.stop()
            unready = await eventually(lambda: marked_down(proxy, server_of[survivor]), 15,
                                       "HAProxy marking the Redis-less gateway DOWN")
            assert unready is not None and "L7STS" in unready, unready
            print(f"drained: {len(moved)} clients, {len(still_there)} still on gw-1 while "
                  f"HAProxy already sent 6 new ones to {survivor}; HAProxy said {down}; "
                  f"failed reconnects {sum(c.failed_attempts for c in moved)}; then {unready}")
    finally:
        if pub is not None:
            await pub.aclose()
        for c in clients + fresh:
            await c.close()
        if proxy is not None:
            proxy.stop()
        for p in procs:
            p.stop()


def marked_down(proxy: HAProxy, server: str) -> str | None:
    row = proxy.server_states()[server]
    return f"{row['status']} ({row['check_status']})" if row["status"].startswith(
        "DOWN") else None


def everything(pub: Publisher, c: ResumingClient, user: str) -> bool:
    return (len(c.data("broadcast")) >= len(pub.broadcasts)
            and len(c.data("user")) >= len(pub.unicasts[user]))


async def test_a_connect_to_a_gateway_that_just_closed_its_port_goes_to_the_other(
    redis_server: RedisServer, logdir: Path, tmp_path: Path
) -> None:
    # A draining gateway closes its listener at once; HAProxy learns it only at its next
    # check, up to `inter` (2 s) later. Pausing gw-1's checks pins that window open: every
    # connect made in it must still land on the survivor at its first attempt
    # (deploy/haproxy.cfg's `option redispatch`), not be refused or retried against the
    # closed port.
    procs = [start_gateway(redis_server, logdir, SWITCHBOARD_GATEWAY_ID=f"gw-{n}",
                           SWITCHBOARD_REBALANCE="0", SWITCHBOARD_DRAIN_WINDOW="10")
             for n in (1, 2)]
    proxy: HAProxy | None = None
    holder: ResumingClient | None = None
    fresh: list[ResumingClient] = []
    try:
        proxy = start_haproxy(tmp_path / "haproxy", [g.port for g in procs])
        server_of = {f"gw-{n}": name for n, name in enumerate(proxy.servers, 1)}
        with logs_on_failure(proxy.daemon, *procs):
            await eventually(lambda: {r["check_status"] for r in
                                      proxy.server_states().values()} == {"L7OK"}, 15,
                             "HAProxy's first check of both gateways")
            proxy.command(f"disable health gateways/{server_of['gw-1']}")
            # gw-1 keeps one client through its drain window, so it stays alive (and its
            # port closed) while the fresh connections are made
            holder = await ResumingWs("127.0.0.1", procs[0].port, token("holder")).start()
            procs[0].kill(signal.SIGTERM)
            await eventually(lambda: refused(procs[0].port), 5, "gw-1 closing its port")
            for i in range(6):
                fresh.append(await ResumingWs("127.0.0.1", proxy.port, token(f"early{i}"),
                                              max_attempts=1).start())
            assert [f.gateways for f in fresh] == [["gw-2"]] * 6, [f.gateways for f in fresh]
            assert [f.failed_attempts for f in fresh] == [0] * 6
            # still inside the window: HAProxy had not taken gw-1 out
            assert not proxy.status()[server_of["gw-1"]].startswith("DOWN")
    finally:
        for c in [*fresh, *([holder] if holder else [])]:
            await c.close()
        if proxy is not None:
            proxy.stop()
        for p in procs:
            p.stop()


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0
