"""Crash: SIGKILL a gateway under steady traffic; every SDK client resumes without loss.

Two gateways share one port (SO_REUSEPORT), so the kernel spreads 200 SDK clients (100 users
x 2 connections) over both. A publisher sends unicast and broadcast messages through the
router at a steady rate; about two seconds in, one gateway is SIGKILLed. Its clients notice
the dead TCP connection, back off (full jitter), reconnect to the same port (now only the
survivor listens) and resume with session + cursor. At the end every client must be on the
survivor and must have received exactly what was published to it: every broadcast and every
message of its user, once each, in offset order, and no ``Recovery`` item.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard.auth import mint
from switchboard_client import Client, Message, Recovery, State
from tests.support import (
    API_KEY,
    JWT_SECRET,
    Proc,
    RedisServer,
    free_port,
    start_gateway,
    start_router,
    wait_until,
)

pytestmark = pytest.mark.integration

USERS = 100
CONNECTIONS_PER_USER = 2  # 200 SDK clients
TICK = 0.05  # one publish batch every 50 ms
UNICAST_PER_TICK = 8  # 160 unicast messages/s, round-robin over the users
BROADCAST_EVERY = 2  # one broadcast every other tick: 10/s; 170 messages/s in all
TICKS = 140  # 7 s of traffic
KILL_AT_TICK = 40  # SIGKILL after 2 s of traffic
SETTLE_TIMEOUT = 20.0  # after the last publish, everything must have arrived within this
GATEWAY_IDS = ("gw-crashed", "gw-survivor")


@dataclass
class Published:
    """What the router stored (2xx), per stream, in offset order."""

    broadcast: list[tuple[str, int, Any]] = field(default_factory=list)  # (epoch, offset, data)
    unicast: dict[str, list[tuple[str, int, Any]]] = field(default_factory=dict)

    def total(self) -> int:
        return len(self.broadcast) + sum(len(v) for v in self.unicast.values())


@dataclass
class Consumer:
    """One SDK client and what its application received."""

    user: str
    client: Client
    received: dict[str, list[tuple[str, int, Any]]] = field(
        default_factory=lambda: {"user": [], "broadcast": []}
    )
    recoveries: list[Recovery] = field(default_factory=list)
    gateway_at_kill: str | None = None
    reopened_at: float | None = None  # first welcome after the kill (loop time)
    first_from_survivor: float | None = None  # first message received after reconnecting
    error: BaseException | None = None

    def count(self, stream: str) -> int:
        return len(self.received[stream])


async def test_sigkill_a_gateway_under_traffic_loses_and_duplicates_nothing(
    redis_server: RedisServer, logdir: Path
) -> None:
    loop = asyncio.get_running_loop()
    port = free_port()
    procs: list[Proc] = []
    consumers: list[Consumer] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        # -- cluster: two gateways on one port, one router -------------------------------------
        for gid in GATEWAY_IDS:
            gw = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID=gid)
            procs.append(gw)
            # The readiness probe on the shared port may have been answered by the other
            # gateway: wait for this one's own "listening" line.
            wait_until(lambda: listening(procs[-1]), 20, f"{gid} listening")
            assert gw.alive(), gw.output()
        crashed, survivor = procs
        router = start_router(redis_server, logdir)
        procs.append(router)

        # -- 200 SDK clients, spread by the kernel over both gateways ---------------------------
        kill_time: list[float] = []  # set once, at the kill

        def make_consumer(user: str) -> Consumer:
            holder: list[Consumer] = []

            def on_state(state: State) -> None:
                rec = holder[0]
                if state == "open" and kill_time and rec.reopened_at is None and (
                        rec.gateway_at_kill == GATEWAY_IDS[0]):
                    rec.reopened_at = loop.time()

            c = Client(f"ws://127.0.0.1:{port}/ws", token=mint(JWT_SECRET, user),
                       on_state=on_state)
            rec = Consumer(user, c)
            holder.append(rec)
            return rec

        consumers = [make_consumer(f"crash-u{u:03d}")
                     for u in range(USERS) for _ in range(CONNECTIONS_PER_USER)]

        async def consume(rec: Consumer) -> None:
            try:
                async for item in rec.client:
                    if isinstance(item, Message):
                        rec.received.setdefault(item.stream, []).append(
                            (item.epoch, item.offset, item.data))
                        if (rec.reopened_at is not None and rec.first_from_survivor is None
                                and rec.client.gateway == GATEWAY_IDS[1]):
                            rec.first_from_survivor = loop.time()
                    else:
                        rec.recoveries.append(item)
            except BaseException as exc:  # a terminal error: recorded, asserted below
                rec.error = exc

        started = time.monotonic()
        async with asyncio.timeout(30):  # start() retries transient refusals with backoff
            await asyncio.gather(*(rec.client.start() for rec in consumers))
        connect_seconds = time.monotonic() - started
        tasks = [asyncio.create_task(consume(rec)) for rec in consumers]
        spread = {gid: sum(rec.client.gateway == gid for rec in consumers)
                  for gid in GATEWAY_IDS}
        assert sum(spread.values()) == len(consumers), spread
        assert all(spread.values()), f"SO_REUSEPORT should spread clients: {spread}"

        # -- steady traffic through the router; SIGKILL one gateway 2 s in ----------------------
        published = Published(unicast={rec.user: [] for rec in consumers})
        killed = asyncio.Event()
        users = sorted(published.unicast)
        rotation = itertools.cycle(users)
        counters = dict.fromkeys(users, 0)

        async def publish(http: httpx.AsyncClient) -> None:
            next_at = loop.time()
            for tick in range(TICKS):
                batch: list[dict[str, Any]] = []
                if tick % BROADCAST_EVERY == 0:
                    batch.append({"broadcast": True, "data": {"b": len(published.broadcast)
                                                              + len(batch)}})
                for _ in range(UNICAST_PER_TICK):
                    user = next(rotation)
                    batch.append({"user": user, "data": {"u": user, "i": counters[user]}})
                    counters[user] += 1
                resp = await http.post("/v1/publish/batch", json={"messages": batch})
                assert resp.status_code == 200, resp.text
                results = resp.json()["results"]
                assert len(results) == len(batch)
                for msg, res in zip(batch, results, strict=True):
                    assert not res["duplicate"], res
                    entry = (res["epoch"], res["offset"], msg["data"])
                    if "broadcast" in msg:
                        assert res["stream"] == "broadcast", res
                        published.broadcast.append(entry)
                    else:
                        assert res["stream"] == "user", res
                        published.unicast[msg["user"]].append(entry)
                if tick + 1 == KILL_AT_TICK:
                    killed.set()
                next_at += TICK
                await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not waiting

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}",
                                     headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=10) as http:
            traffic_started = loop.time()
            publisher = asyncio.create_task(publish(http))
            await asyncio.wait([publisher, asyncio.create_task(killed.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            if publisher.done():
                publisher.result()  # raises what went wrong before the kill
            for rec in consumers:
                rec.gateway_at_kill = rec.client.gateway
            crashed.kill()  # SIGKILL
            kill_time.append(loop.time())
            await asyncio.to_thread(crashed.proc.wait, 10)
            await publisher
            traffic_seconds = loop.time() - traffic_started

        affected = [rec for rec in consumers if rec.gateway_at_kill == GATEWAY_IDS[0]]
        assert affected, "nobody was on the killed gateway"

        # -- wait until every client is on the survivor and has everything ----------------------
        def complete(rec: Consumer) -> bool:
            return (rec.client.gateway == GATEWAY_IDS[1] and rec.client.state == "open"
                    and rec.count("broadcast") >= len(published.broadcast)
                    and rec.count("user") >= len(published.unicast[rec.user]))

        settle_started = loop.time()
        while not all(complete(rec) or rec.error is not None for rec in consumers):
            if loop.time() - settle_started > SETTLE_TIMEOUT:
                break
            await asyncio.sleep(0.02)
        settle_seconds = loop.time() - settle_started

        # -- the verdict, per client --------------------------------------------------------------
        problems: list[str] = []
        for rec in consumers:
            c = rec.client
            where = f"{rec.user} (was on {rec.gateway_at_kill}, now {c.gateway}, {c.state})"
            if rec.error is not None:
                problems.append(f"{where}: terminal error {rec.error!r}")
            if c.gateway != GATEWAY_IDS[1]:
                problems.append(f"{where}: not on the survivor")
            if rec.recoveries:
                problems.append(f"{where}: Recovery items {rec.recoveries}")
            for stream, want in (("broadcast", published.broadcast),
                                 ("user", published.unicast[rec.user])):
                got = rec.received.get(stream, [])
                if got != want:
                    problems.append(f"{where}: {stream} {describe(got, want)}")
            extra = set(rec.received) - {"user", "broadcast"}
            if extra:
                problems.append(f"{where}: messages of unexpected streams {sorted(extra)}")
        if problems:
            logs = "\n".join(f"--- {p.log}\n{interesting(p.output())}" for p in procs[:2])
            pytest.fail(f"{len(problems)} problems (first 20):\n" + "\n".join(problems[:20])
                        + f"\n{logs}")

        # -- summary ------------------------------------------------------------------------------
        t0 = kill_time[0]
        first_msg = sorted(rec.first_from_survivor - t0 for rec in affected
                           if rec.first_from_survivor is not None)
        reopen = sorted(rec.reopened_at - t0 for rec in affected if rec.reopened_at is not None)
        checked = sum(rec.count("broadcast") + rec.count("user") for rec in consumers)
        dups = sum(rec.client.stats.duplicates_dropped for rec in consumers)
        gaps = sum(rec.client.stats.gaps_detected for rec in consumers)
        unaffected_reconnects = sum(rec.client.stats.reconnects for rec in consumers
                                    if rec.gateway_at_kill != GATEWAY_IDS[0])
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text  # only the survivor is left
        resumes = [line for line in metrics.splitlines()
                   if line.startswith(("switchboard_gateway_resumes_total",
                                       "switchboard_gateway_disconnects_total",
                                       "switchboard_gateway_live_gaps_total"))]
        extra_reconnects = sum(max(0, rec.client.stats.reconnects - 1) for rec in affected)
        survivor_warnings = [line for line in survivor.output().splitlines() if "WARNING" in line]
        print(
            f"\ncrash test: {len(consumers)} clients (connected in {connect_seconds:.2f}s), "
            f"spread {spread}; {published.total()} messages published "
            f"({len(published.broadcast)} broadcast, {published.total() - len(published.broadcast)}"
            f" unicast) in {traffic_seconds:.2f}s; SIGKILL {GATEWAY_IDS[0]} after "
            f"{KILL_AT_TICK * TICK:.1f}s, {len(affected)} clients affected\n"
            f"  welcome on survivor after kill: {quantiles(reopen)}\n"
            f"  first message from survivor:    {quantiles(first_msg)}\n"
            f"  settled {settle_seconds:.2f}s after the last publish; {checked} received "
            f"messages checked; SDK dropped {dups} duplicates, detected {gaps} gaps; "
            f"unaffected clients reconnected {unaffected_reconnects} times, affected ones "
            f"{extra_reconnects} times more than once\n"
            f"  survivor: {'; '.join(resumes) or 'no resume metrics'}; "
            f"{len(survivor_warnings)} warnings in its log {survivor.log}"
            + "".join(f"\n    {line}" for line in survivor_warnings[:5])
        )
    finally:
        if consumers:
            await asyncio.gather(*(rec.client.close() for rec in consumers),
                                 return_exceptions=True)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for proc in reversed(procs):
            proc.stop()


def listening(gw: Proc) -> bool:
    return "listening" in gw.output() or not gw.alive()


def describe(got: list[tuple[str, int, Any]], want: list[tuple[str, int, Any]]) -> str:
    """How a received stream differs from what was published (for the failure message)."""
    got_offsets = [o for _, o, _ in got]
    want_offsets = [o for _, o, _ in want]
    missing = sorted(set(want_offsets) - set(got_offsets))
    dups = sorted(o for o in set(got_offsets) if got_offsets.count(o) > 1)
    unexpected = sorted(set(got_offsets) - set(want_offsets))
    parts = [f"received {len(got)} of {len(want)}"]
    if missing:
        parts.append(f"missing offsets {missing[:10]}{'...' if len(missing) > 10 else ''}")
    if dups:
        parts.append(f"duplicated offsets {dups[:10]}")
    if unexpected:
        parts.append(f"unexpected offsets {unexpected[:10]}")
    if not (missing or dups or unexpected):
        bad = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        parts.append(f"first difference at #{bad}: got {got[bad]}, published {want[bad]}")
    return ", ".join(parts)


def quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return (f"n={len(values)} min {values[0]:.3f}s p50 {qs[49]:.3f}s p90 {qs[89]:.3f}s "
            f"p99 {qs[98]:.3f}s max {values[-1]:.3f}s")


def interesting(log: str, limit: int = 40) -> str:
    lines = [line for line in log.splitlines()
             if any(w in line for w in ("WARNING", "ERROR", "Traceback", "Error"))]
    return "\n".join(lines[-limit:]) or "(no warnings or errors)"
