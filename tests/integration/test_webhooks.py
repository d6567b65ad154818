"""Webhooks end to end: real gateways and ``switchboard webhooks`` dispatchers on a real
redis-server, posting to a real HTTP receiver started here that verifies every signature,
records every event, and can be taken down.

What a backend relies on: one ``user.online`` per first connection anywhere, one
``user.offline`` once the last one has been gone for the delay (so reconnects and drains do
not flap), the same for a gateway that was SIGKILLed, channel occupancy and membership, and no
event lost while the receiver is down or the dispatcher leader dies.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from switchboard import streams
from switchboard import whcontract as wh
from switchboard.localcluster import LocalCluster
from switchboard.signing import verify
from tests.clients import WsClient, until
from tests.cluster_support import cluster_client, key_in_slot, user_on
from tests.integration.cluster import token
from tests.support import (
    Proc,
    RedisServer,
    free_port,
    spawn,
    start_gateway,
    start_redis,
    terminate,
    wait_for_banner,
    wait_until,
)

pytestmark = pytest.mark.integration
Backend = RedisServer | LocalCluster  # the tests taking any_redis run on both

SECRETS = ("old-webhook-secret", "new-webhook-secret")
DELAY = 1.5  # seconds: webhook_offline_delay in these tests


@dataclass
class Receiver:
    """Records the events of every request whose signature verifies (any of SECRETS)."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    status: int = 200
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def events(self, *types: str) -> list[dict[str, Any]]:
        """Every event received (duplicates included), oldest first."""
        with self._lock:
            every = [e for r in self.requests for e in r["events"]]
        return [e for e in every if not types or e["type"] in types]

    def unique(self, *types: str) -> list[dict[str, Any]]:
        """Events deduplicated by id, as a receiver following the docs does."""
        seen: dict[str, dict[str, Any]] = {}
        for e in self.events(*types):
            seen.setdefault(e["id"], e)
        return list(seen.values())

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("X-Switchboard-Signature", "")
                ok = all(verify(s.encode(), header, raw, time.time()) for s in SECRETS)
                with receiver._lock:
                    if not ok:
                        receiver.bad_signatures += 1
                    elif receiver.status < 300:
                        receiver.requests.append(json.loads(raw))
                self.send_response(receiver.status if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def webhook_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"SWITCHBOARD_WEBHOOK_URL": receiver.url,
            "SWITCHBOARD_WEBHOOK_OFFLINE_DELAY": str(DELAY), **extra}


def start_dispatcher(redis: Backend, logdir: Path, receiver: Receiver,
                     **extra: str) -> Proc:
    port = free_port()
    env = {"SWITCHBOARD_REDIS_URL": redis.url, "SWITCHBOARD_HOST": "127.0.0.1",
           "SWITCHBOARD_WEBHOOK_PORT": str(port), "SWITCHBOARD_HEARTBEAT_INTERVAL": "0.5",
           "SWITCHBOARD_WEBHOOK_SECRETS": ",".join(SECRETS),
           "SWITCHBOARD_WEBHOOK_RETRY_MAX": "1", **webhook_env(receiver), **extra}
    return spawn("webhooks", ["webhooks"], port, env, "/metrics", logdir)


def hooked_gateway(redis: Backend, logdir: Path, receiver: Receiver,
                   **extra: str) -> Proc:
    return start_gateway(redis, logdir, **webhook_env(receiver), **extra)


def command(backend: Backend, *args: str) -> str:
    """One command's reply as text ('' for none), on one node or at the key's master."""
    if isinstance(backend, LocalCluster):
        with cluster_client(backend) as client:
            reply = client.execute_command(*args)
            return "" if reply is None else str(reply)
    return backend.cli(*args).strip()


def roster_of(gateway_id: str) -> str:
    return f"sb:{{gw:{gateway_id}}}:roster"


async def connect(gw: Proc, user: str, channels: tuple[str, ...] = ()) -> WsClient:
    query = f"?token={token(user, channels=list(channels))}"
    if channels:
        query += "&channels=" + ",".join(channels)
    return await WsClient(f"ws://127.0.0.1:{gw.port}/ws{query}").start()


def of(receiver: Receiver, kind: str, name: str) -> list[dict[str, Any]]:
    key = "channel" if kind.startswith(("channel.", "presence.")) else "user"
    return [e for e in receiver.unique(kind) if e.get(key) == name]


async def wait_for(receiver: Receiver, kind: str, name: str, count: int = 1,
                   timeout: float = 15.0) -> list[dict[str, Any]]:
    await until(lambda: len(of(receiver, kind, name)) >= count, timeout,
                f"{count} {kind} for {name}")
    return of(receiver, kind, name)


async def quiet_for(seconds: float) -> None:
    """Time for an event that must not come (the delay has passed, and a poll after it)."""
    deadline = time.monotonic() + seconds
    await until(lambda: time.monotonic() >= deadline, seconds + 1, "quiet period")


async def test_online_once_and_offline_after_the_delay(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        first = await connect(gw, "alice")
        [online] = await wait_for(receiver, "user.online", "alice")
        assert online["gateway"] and online["conn"] and online["id"].startswith("u:alice/")
        second = await connect(gw, "alice")  # a second tab: still the same online user
        await first.close()
        closed_at = time.monotonic()
        await quiet_for(DELAY + 1)
        assert of(receiver, "user.offline", "alice") == []  # one tab is still open
        await second.close()
        closed_at = time.monotonic()
        [offline] = await wait_for(receiver, "user.offline", "alice")
        assert time.monotonic() - closed_at >= DELAY - 0.2
        assert offline["reason"] == "closed" and offline["ts_ms"] >= offline["since_ms"]
        assert len(of(receiver, "user.online", "alice")) == 1
        seqs = [int(e["id"].rsplit("/", 1)[1]) for e in (online, offline)]
        assert seqs[0] < seqs[1]
        assert receiver.bad_signatures == 0
    finally:
        hooks.stop()
        gw.stop()


async def test_reconnects_and_a_drain_fire_no_offline(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw1 = hooked_gateway(any_redis, logdir, receiver)
    gw2 = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        client = await connect(gw1, "bob")
        await wait_for(receiver, "user.online", "bob")
        for _ in range(5):  # a flapping network: gone and back, well within the delay
            await client.close()
            client = await connect(gw1, "bob")
        # a drain: the gateway goes away, its client comes back on another one
        [online] = of(receiver, "user.online", "bob")
        gw1.kill(15)
        await until(lambda: client.closed, 15, "drained")
        client = await connect(gw2, "bob")
        assert gw1.proc.wait(15) == 0
        # a clean stop left every connection itself: nothing of gw1 is left to sweep
        assert command(any_redis, "EXISTS", roster_of(online["gateway"])) == "0"
        await quiet_for(DELAY + 1)
        assert of(receiver, "user.offline", "bob") == []
        assert len(of(receiver, "user.online", "bob")) == 1
        await client.close()
        await wait_for(receiver, "user.offline", "bob")
    finally:
        hooks.stop()
        gw1.stop()
        gw2.stop()


async def test_a_killed_gateway_takes_its_users_offline_once(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    doomed = hooked_gateway(any_redis, logdir, receiver)
    other = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        await connect(doomed, "carol", ("room",))
        dave = await connect(doomed, "dave")
        await wait_for(receiver, "user.online", "carol")
        await wait_for(receiver, "user.online", "dave")
        await wait_for(receiver, "presence.join", "room")
        doomed.kill()  # SIGKILL: nothing is unregistered
        await until(lambda: dave.closed, 10, "connection lost")
        dave = await connect(other, "dave")  # dave comes back at once elsewhere; carol does not
        [offline] = await wait_for(receiver, "user.offline", "carol", timeout=20)
        assert offline["reason"] == "gateway_lost"
        [leave] = await wait_for(receiver, "presence.leave", "room")
        assert leave["user"] == "carol"
        await wait_for(receiver, "channel.vacated", "room")
        await quiet_for(DELAY + 1)
        assert len(of(receiver, "user.offline", "carol")) == 1
        assert of(receiver, "user.offline", "dave") == []
        assert len(of(receiver, "user.online", "dave")) == 1
    finally:
        hooks.stop()
        other.stop()


async def test_channel_occupancy_and_membership_in_order(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw1 = hooked_gateway(any_redis, logdir, receiver)
    gw2 = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        a = await connect(gw1, "erin", ("lobby",))
        b = await connect(gw2, "frank", ("lobby",))
        b2 = await connect(gw1, "frank", ("lobby",))  # a second connection: no second join
        await wait_for(receiver, "presence.join", "lobby", 2)
        await a.close()
        await b.close()
        await wait_for(receiver, "presence.leave", "lobby")
        await quiet_for(DELAY + 1)  # frank is still in, on his other connection
        assert [e["user"] for e in of(receiver, "presence.leave", "lobby")] == ["erin"]
        await b2.close()
        await wait_for(receiver, "channel.vacated", "lobby")
        mine = [e for e in receiver.unique() if e.get("channel") == "lobby"]
        assert [(e["type"], e.get("user")) for e in mine] == [
            ("channel.occupied", None), ("presence.join", "erin"), ("presence.join", "frank"),
            ("presence.leave", "erin"), ("presence.leave", "frank"), ("channel.vacated", None)]
        seqs = [int(e["id"].rsplit("/", 1)[1]) for e in mine]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        hooks.stop()
        gw1.stop()
        gw2.stop()


async def test_receiver_down_for_ten_seconds_loses_nothing(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    users = [f"u{i}" for i in range(20)]
    try:
        await connect(gw, "warmup")
        await wait_for(receiver, "user.online", "warmup")
        receiver.stop()
        down_at = time.monotonic()
        clients = [await connect(gw, u, ("news",)) for u in users]
        for c in clients[:10]:
            await c.close()
        await until(lambda: time.monotonic() - down_at >= 10, 12, "ten seconds down")
        receiver.start()  # the same port: the dispatcher retries until it answers
        for u in users:
            await wait_for(receiver, "user.online", u, timeout=30)
        for u in users[:10]:
            await wait_for(receiver, "user.offline", u, timeout=30)
        joins = {e["user"] for e in of(receiver, "presence.join", "news")}
        assert joins == set(users)
        # duplicates only as repeats of the same event
        by_id: dict[str, dict[str, Any]] = {}
        for e in receiver.events():
            assert by_id.setdefault(e["id"], e) == e
    finally:
        hooks.stop()
        gw.stop()


async def test_webhooks_go_on_across_a_master_failover(
        redis_cluster: LocalCluster, logdir: Path, receiver: Receiver) -> None:
    keys = wh.WebhookKeys(cluster=True)
    slot = keys.partition(streams.user_key("olga"))
    victim = redis_cluster.master_of_slot(slot)
    gw = hooked_gateway(redis_cluster, logdir, receiver)
    hooks = start_dispatcher(redis_cluster, logdir, receiver)
    try:
        olga = await connect(gw, "olga")
        await wait_for(receiver, "user.online", "olga")
        # the replica has olga's state before its master dies (WAIT covers every write
        # the master took before this one)
        node = redis.Redis(host=victim.host, port=victim.port, socket_timeout=5)
        try:
            node.set(key_in_slot(slot, "synced"), 1)
            assert node.execute_command("WAIT", 1, 5000) == 1
        finally:
            node.close()
        redis_cluster.kill(victim)
        promoted = await asyncio.to_thread(redis_cluster.wait_failover, victim, 45)
        # the gateway's writes and the dispatcher's looks follow the slots to the promoted
        # replica: olga's leave and a new user there are reported
        await olga.close()
        [offline] = await wait_for(receiver, "user.offline", "olga", timeout=45)
        assert offline["reason"] == "closed"
        pia = user_on(redis_cluster, "pia", lambda m: m.port == promoted.port)
        await connect(gw, pia)
        await wait_for(receiver, "user.online", pia, timeout=45)
        assert len(of(receiver, "user.online", "olga")) == 1
    finally:
        hooks.stop()
        gw.stop()


async def test_webhooks_lose_nothing_while_their_slots_are_resharded(
        redis_cluster: LocalCluster, logdir: Path, receiver: Receiver) -> None:
    source = redis_cluster.master_of_slot(0)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    moving = 600  # redis-cli moves the source's lowest slots: 0..599
    users = [u for u in (f"r{i}" for i in range(5000))
             if LocalCluster.slot_of(f"u:{u}") < moving][:8]
    room = next(c for c in (f"hall{i}" for i in range(5000))
                if LocalCluster.slot_of(f"c:{c}") < moving)
    gw = hooked_gateway(redis_cluster, logdir, receiver)
    hooks = start_dispatcher(redis_cluster, logdir, receiver)
    try:
        first = {u: await connect(gw, u, (room,)) for u in users[:4]}
        for u in users[:4]:
            await wait_for(receiver, "user.online", u)
        moved = asyncio.create_task(asyncio.to_thread(
            redis_cluster.reshard, moving, source, target, 120))
        # while the slots move: half leave, the other half come
        for u in users[:4]:
            await first[u].close()
        late = {u: await connect(gw, u, (room,)) for u in users[4:]}
        await moved
        assert all(redis_cluster.master_of_slot(LocalCluster.slot_of(f"u:{u}")).port
                   == target.port for u in users)
        for u in users:
            await wait_for(receiver, "user.online", u, timeout=30)
        for u in users[:4]:
            await wait_for(receiver, "user.offline", u, timeout=30)
        for c in late.values():
            await c.close()
        for u in users[4:]:
            await wait_for(receiver, "user.offline", u, timeout=30)
        await wait_for(receiver, "channel.vacated", room, timeout=30)
        await quiet_for(DELAY + 1)
        for u in users:  # once each: no transition lost, none written twice
            assert len(of(receiver, "user.online", u)) == 1, u
            assert len(of(receiver, "user.offline", u)) == 1, u
        joins = [e["user"] for e in of(receiver, "presence.join", room)]
        assert sorted(joins) == sorted(users)
    finally:
        hooks.stop()
        gw.stop()


async def test_the_standby_takes_over_from_a_killed_leader(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw = hooked_gateway(any_redis, logdir, receiver)
    first = start_dispatcher(any_redis, logdir, receiver)
    second = start_dispatcher(any_redis, logdir, receiver)
    try:
        await connect(gw, "grace")
        await wait_for(receiver, "user.online", "grace")
        leader, standby = (first, second) if "the leader" in first.output() else (second, first)
        assert "the leader" in leader.output()
        leader.kill()  # SIGKILL: its lease must expire
        for i in range(5):
            await connect(gw, f"heidi{i}")
        for i in range(5):
            await wait_for(receiver, "user.online", f"heidi{i}", timeout=20)
        wait_until(lambda: "the leader" in standby.output(), 5, "standby took over")
    finally:
        first.stop()
        second.stop()
        gw.stop()


@pytest.mark.parametrize("shards", [(), ("--redis-shards", "3")],
                         ids=["one_node", "redis_cluster"])
async def test_up_runs_a_dispatcher_when_a_receiver_is_set(
        tmp_path: Path, receiver: Receiver, shards: tuple[str, ...]) -> None:
    from tests.integration.test_up import children_of, cmdline, credentials, start_up

    log = tmp_path / "up.log"
    up, port, _ = start_up(log, "--no-autoscale", *shards,
                           SWITCHBOARD_WEBHOOK_URL=receiver.url,
                           SWITCHBOARD_WEBHOOK_PORT=str(free_port()),
                           SWITCHBOARD_WEBHOOK_SECRETS=",".join(SECRETS))
    try:
        token_text, _ = credentials(wait_for_banner(up, log, 90))
        kinds = sorted(cmdline(p).split()[-1] for p in children_of(up.pid)
                       if "redis-server" not in cmdline(p))
        assert kinds == ["gateway", "gateway", "router", "webhooks"], kinds
        client = await WsClient(f"ws://127.0.0.1:{port}/ws?token={token_text}").start()
        [online] = await wait_for(receiver, "user.online", "demo")
        assert online["gateway"].startswith("gw")
        await client.close()
    finally:
        terminate(up, 40)


async def test_a_gateway_restarted_under_its_id_takes_its_predecessors_users_offline(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    pinned = {"SWITCHBOARD_GATEWAY_ID": "gw-pinned"}
    gw = hooked_gateway(any_redis, logdir, receiver, **pinned)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        ivan = await connect(gw, "ivan", ("den",))
        await wait_for(receiver, "presence.join", "den")
        gw.kill()  # SIGKILL, and back under the same id before its registry entry expired
        await until(lambda: ivan.closed, 10, "connection lost")
        gw = hooked_gateway(any_redis, logdir, receiver, **pinned)
        await connect(gw, "judy")
        [offline] = await wait_for(receiver, "user.offline", "ivan", timeout=20)
        assert offline["reason"] == "gateway_lost"
        [leave] = await wait_for(receiver, "presence.leave", "den")
        assert leave["user"] == "ivan"
        await wait_for(receiver, "user.online", "judy")
        await quiet_for(DELAY + 1)
        assert len(of(receiver, "user.offline", "ivan")) == 1
        assert of(receiver, "user.offline", "judy") == []
    finally:
        hooks.stop()
        gw.stop()


async def test_a_paused_gateway_is_swept_and_its_users_come_back_online(
        any_redis: Backend, logdir: Path, receiver: Receiver) -> None:
    gw = hooked_gateway(any_redis, logdir, receiver)
    hooks = start_dispatcher(any_redis, logdir, receiver)
    try:
        kate = await connect(gw, "kate")
        await wait_for(receiver, "user.online", "kate")
        gw.kill(signal.SIGSTOP)  # silent past its registry TTL and the delay: swept
        try:
            [offline] = await wait_for(receiver, "user.offline", "kate", timeout=20)
        finally:
            gw.kill(signal.SIGCONT)
        assert offline["reason"] == "gateway_lost"
        # back: it finds its registry entry and roster gone and writes its connections again
        online, again = await wait_for(receiver, "user.online", "kate", 2, timeout=20)
        ids = [int(e["id"].rsplit("/", 1)[1]) for e in (online, offline, again)]
        assert ids == sorted(ids)
        assert not kate.closed
        await kate.close()
        closed = await wait_for(receiver, "user.offline", "kate", 2)
        assert closed[-1]["reason"] == "closed"
        await quiet_for(DELAY + 1)
        assert len(of(receiver, "user.offline", "kate")) == 2
        assert len(of(receiver, "user.online", "kate")) == 2
    finally:
        gw.kill(signal.SIGCONT)
        hooks.stop()
        gw.stop()


async def test_a_refused_session_reports_no_online(
        redis_server: RedisServer, logdir: Path, receiver: Receiver) -> None:
    gw = hooked_gateway(redis_server, logdir, receiver)
    hooks = start_dispatcher(redis_server, logdir, receiver)
    try:
        liam = await connect(gw, "liam")
        await wait_for(receiver, "user.online", "liam")
        stolen = liam.welcome["session"]  # type: ignore[index]
        mallory = await WsClient(f"ws://127.0.0.1:{gw.port}/ws?token={token('mallory')}"
                                 f"&session={stolen}").start()
        await until(lambda: mallory.closed, 5, "mallory refused")
        assert mallory.close_code == 4004
        await connect(gw, "nora")  # written after mallory's would have been
        await wait_for(receiver, "user.online", "nora")
        await quiet_for(DELAY + 1)
        assert of(receiver, "user.online", "mallory") == []
        assert of(receiver, "user.offline", "mallory") == []
    finally:
        hooks.stop()
        gw.stop()


async def test_a_redis_restart_with_persistence_repeats_nothing(
        logdir: Path, receiver: Receiver) -> None:
    redis = start_redis(persistent=True)
    gw = hooked_gateway(redis, logdir, receiver)
    hooks = start_dispatcher(redis, logdir, receiver)
    try:
        olga = await connect(gw, "olga", ("hall",))
        paul = await connect(gw, "paul", ("hall",))
        await wait_for(receiver, "presence.join", "hall", 2)
        redis.stop()
        await paul.close()  # gone while Redis is down: written once it is back
        redis.start()
        [offline] = await wait_for(receiver, "user.offline", "paul", timeout=20)
        assert offline["reason"] == "closed"
        [leave] = await wait_for(receiver, "presence.leave", "hall")
        assert leave["user"] == "paul"
        await quiet_for(DELAY + 1)
        # olga stayed: no second online, no offline, and nothing under a new epoch
        assert len(of(receiver, "user.online", "olga")) == 1
        assert of(receiver, "user.offline", "olga") == []
        assert len(of(receiver, "channel.occupied", "hall")) == 1
        assert len({e["id"].split("/")[1] for e in receiver.unique()
                    if e["id"].startswith("u:olga/")}) == 1
        assert not olga.closed
    finally:
        hooks.stop()
        gw.stop()
        redis.stop()


def metric(proc: Proc, name: str) -> float:
    """One unlabelled sample of the dispatcher's /metrics (0 before it is first counted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def test_an_unreadable_outbox_entry_is_dropped_once_and_the_events_beside_it_sent(
        redis_server: RedisServer, logdir: Path, receiver: Receiver) -> None:
    keys = wh.WebhookKeys()
    client = redis.Redis(port=redis_server.port)
    event = {"id": "u:zoe/e1/1", "type": "user.online", "user": "zoe"}
    client.xadd(keys.outbox(0), {"e": "not an event"})
    client.xadd(keys.outbox(0), {"e": json.dumps(event)})
    receiver.status = 503
    hooks = start_dispatcher(redis_server, logdir, receiver)
    try:
        # the receiver refuses the batch a few times: each retry is a new try of that batch
        wait_until(lambda: metric(hooks, 'switchboard_webhook_requests_total{outcome="status"}')
                   >= 3, 20, "three refused requests")
        assert metric(hooks, "switchboard_webhook_events_unreadable_total") == 1
        receiver.status = 200
        [got] = await wait_for(receiver, "user.online", "zoe")
        assert got == event
        wait_until(lambda: metric(hooks, "switchboard_webhook_events_delivered_total") >= 1,
                   10, "the delivery counted")
        assert metric(hooks, "switchboard_webhook_events_delivered_total") == 1
        assert metric(hooks, "switchboard_webhook_events_unreadable_total") == 1
        assert client.xlen(keys.outbox(0)) == 0
    finally:
        hooks.stop()
        client.close()


async def test_both_dispatchers_report_the_events_waiting(
        redis_server: RedisServer, logdir: Path, receiver: Receiver) -> None:
    client = redis.Redis(port=redis_server.port)
    keys = wh.WebhookKeys()
    receiver.status = 503
    first = start_dispatcher(redis_server, logdir, receiver)
    second = start_dispatcher(redis_server, logdir, receiver)
    try:
        wait_until(lambda: metric(first, "switchboard_webhook_leader")
                   + metric(second, "switchboard_webhook_leader") == 1, 10, "one leader")
        for n in range(3):
            client.xadd(keys.outbox(n), {"e": json.dumps(
                {"id": f"u:wanda{n}/e1/1", "type": "user.online", "user": f"wanda{n}"})})
        # the standby too: an alert on the outbox must not depend on which one is asked
        for proc in (first, second):
            wait_until(lambda p=proc: metric(p, "switchboard_webhook_outbox_events") == 3,
                       10, f"{proc.name} reports 3 waiting")
        receiver.status = 200
        for n in range(3):
            await wait_for(receiver, "user.online", f"wanda{n}", timeout=20)
        for proc in (first, second):
            wait_until(lambda p=proc: metric(p, "switchboard_webhook_outbox_events") == 0,
                       10, f"{proc.name} reports the outbox empty")
    finally:
        first.stop()
        second.stop()
        client.close()
