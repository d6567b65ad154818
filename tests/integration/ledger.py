"""Steady traffic under faults, and the check that nothing acknowledged was lost silently.

Shared by the Redis data-loss tests (one node) and the Redis Cluster failover and reshard
tests. "Told" is what the protocol says: a message in a new epoch tells the client the *old*
epoch's history is gone, so old-epoch messages after its last one are excused once it moved
on to a new epoch. A new epoch starts at offset 1: every acknowledged message of an epoch the
client ended in must have arrived. Only an epoch that Redis lost again (a later one followed)
may reach a client without its first offsets: a restart can wipe them before a gateway's fill
reads them, and the client then sees the epoch start above 1, a gap by the protocol. An offset
jump within an epoch or a duplicate is never excused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from switchboard_client import Client, Message, Recovery
from tests.clients import WsClient, until
from tests.integration.cluster import Cluster, token
from tests.support import API_KEY

USERS = [f"u{i}" for i in range(12)]
CHANNEL = "room"


@dataclass
class Ledger:
    """Every message the router acknowledged: stream target -> [(epoch, offset, data)]."""

    acks: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    refused: int = 0  # 503s while Redis was down: never acknowledged, never expected

    def expected(self, user: str, channel: bool) -> dict[str, list[tuple[str, int, str]]]:
        out = {"user": self.acks.get(f"u:{user}", []), "broadcast": self.acks.get("b", [])}
        if channel:
            out[f"ch.{CHANNEL}"] = self.acks.get(f"c:{CHANNEL}", [])
        return out


async def publish_steadily(c: Cluster, ledger: Ledger, stop: asyncio.Event,
                           max_seconds: float = 60) -> None:
    """One batch per round: a unicast to every user, a broadcast and a channel message."""
    targets: list[tuple[str, dict[str, Any]]] = [(f"u:{u}", {"user": u}) for u in USERS]
    targets += [("b", {"broadcast": True}), (f"c:{CHANNEL}", {"channel": CHANNEL})]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.router.port}", timeout=3,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        deadline = time.monotonic() + max_seconds
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            batch = [{**body, "data": f"{key}#{n}"} for key, body in targets]
            try:
                resp = await http.post("/v1/publish/batch", json={"messages": batch})
            except httpx.HTTPError:
                resp = None
            if resp is not None and resp.status_code == 200:
                for (key, _), item, sent in zip(targets, resp.json()["results"], batch,
                                                strict=True):
                    ledger.acks.setdefault(key, []).append(
                        (item["epoch"], item["offset"], sent["data"]))
            else:
                assert resp is None or resp.status_code == 503, resp.text
                ledger.refused += 1
            await asyncio.sleep(0.03)


def verdict(received: list[tuple[str, int, str]], acks: list[tuple[str, int, str]]) -> list[str]:
    """Problems with what one client got on one stream (empty: all good)."""
    problems = []
    seen_data = [d for _, _, d in received]
    dups = {d for d in seen_data if seen_data.count(d) > 1}
    if dups:
        problems.append(f"received twice: {sorted(dups)[:5]}")
    positions = [(e, o) for e, o, _ in received]
    last_epoch = acks[-1][0] if acks else None
    first_in: dict[str, int] = {}  # epoch -> first offset received in it
    for e, o, _ in received:
        first_in.setdefault(e, o)
    if len(set(positions)) != len(positions):
        problems.append("one (epoch, offset) delivered twice")
    for (e, o), (e2, o2) in itertools.pairwise(positions):
        if e == e2 and o2 != o + 1:
            problems.append(f"offset jumped {e}:{o} -> {e2}:{o2}")
        if e != e2 and o2 != 1 and e2 == last_epoch:
            problems.append(f"new epoch {e2} started at {o2}, not 1")
    final = received[-1][0] if received else None
    order = {d: i for i, (_, _, d) in enumerate(acks)}
    began: dict[str, int] = {}  # epoch -> ack index of its first message
    for i, (e, _, _) in enumerate(acks):
        began.setdefault(e, i)
    last_in: dict[str, int] = {}  # epoch -> ack index of the last message received in it
    for e, _, d in received:
        last_in[e] = max(last_in.get(e, -1), order.get(d, -1))

    def told(i: int, e: str, o: int) -> bool:
        """The client moved on to a later epoch after its last message of this one (an epoch
        that began after the one it ended in is still owed in full); or Redis lost this epoch
        again, with its first offsets, before a gateway could read them: the client saw it
        start above 1, a gap."""
        if e != last_epoch and o < first_in.get(e, 0):
            return True
        return (final is not None and e != final and began[e] < began.get(final, -1)
                and i > last_in.get(e, -1))

    got = set(seen_data)
    missing = [(e, o, d) for i, (e, o, d) in enumerate(acks)
               if d not in got and not told(i, e, o)]
    if missing:
        problems.append(f"{len(missing)} acknowledged but never received, first {missing[:3]}")
    return problems


@dataclass
class Watched:
    user: str
    channel: bool
    client: WsClient

    def received(self, stream: str) -> list[tuple[str, int, str]]:
        return [(m["epoch"], m["offset"], m["data"]) for m in self.client.messages(stream)]


async def connect_all(c: Cluster) -> list[Watched]:
    """Two clients per user, one on each gateway, JSON and msgpack; half in the channel."""
    watched = []
    for i, user in enumerate(USERS):
        for gw in (0, 1):
            channel = (i + gw) % 2 == 0
            query = f"token={token(user, channels=[CHANNEL])}"
            if channel:
                query += f"&channels={CHANNEL}"
            url = f"ws://127.0.0.1:{c.gateways[gw].port}/ws?{query}"
            client = await WsClient(url, msgpack_wire=bool(i % 3 == 0)).start()
            assert client.welcome is not None
            watched.append(Watched(user, channel, client))
    for w in watched:
        if w.channel:
            await until(lambda w=w: any(m.get("type") == "subscribed"
                                        for m in w.client.received), 10, "subscribed")
    return watched


class Followed(Protocol):
    """A client whose deliveries are checked: raw (:class:`Watched`) or SDK
    (:class:`SdkWatched`)."""

    @property
    def user(self) -> str: ...
    @property
    def channel(self) -> bool: ...
    def received(self, stream: str) -> list[tuple[str, int, str]]: ...


def problems(watched: Sequence[Followed], ledger: Ledger) -> list[str]:
    out = []
    for w in watched:
        for stream, acks in ledger.expected(w.user, w.channel).items():
            out += [f"{w.user}/{stream}: {p}" for p in verdict(w.received(stream), acks)]
    return out


@contextlib.asynccontextmanager
async def traffic(c: Cluster) -> AsyncIterator[Ledger]:
    ledger = Ledger()
    stop = asyncio.Event()
    task = asyncio.create_task(publish_steadily(c, ledger, stop))
    try:
        yield ledger
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def settle(watched: list[Watched], ledger: Ledger) -> None:
    """Wait until every client has everything (or the deadline), then show what is wrong."""
    with contextlib.suppress(TimeoutError):
        await until(lambda: not problems(watched, ledger), 20, "every delivery")
    found = problems(watched, ledger)
    assert not found, "\n".join(found[:20])
    assert all(not w.client.closed for w in watched), "clients were disconnected"


async def wait_acked(ledger: Ledger, more_than: int, timeout: float = 15) -> None:
    await until(lambda: len(ledger.acks.get("b", [])) > more_than, timeout,
                f"more than {more_than} acknowledged broadcasts")


async def under_faults(c: Cluster, fault: Callable[[], Awaitable[None]], times: int,
                       spacing: Callable[[], int] = lambda: 10) -> Ledger:
    """Steady traffic with ``fault`` injected ``times``, each after ``spacing()`` more
    acknowledged broadcasts, then 30 more: the ledger of everything acknowledged."""
    async with traffic(c) as ledger:
        for _ in range(times):
            await wait_acked(ledger, len(ledger.acks.get("b", [])) + spacing())
            await fault()
        await wait_acked(ledger, len(ledger.acks.get("b", [])) + 30)
    return ledger


def epochs(ledger: Ledger, key: str) -> list[str]:
    return list(dict.fromkeys(e for e, _, _ in ledger.acks.get(key, [])))


@dataclass
class SdkWatched:
    """An SDK client (it reconnects and resumes by itself) and everything it yielded."""

    user: str
    client: Client
    channel: bool = False
    items: list[Message | Recovery] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def received(self, stream: str) -> list[tuple[str, int, str]]:
        return [(i.epoch, i.offset, i.data) for i in self.items
                if isinstance(i, Message) and i.stream == stream]

    def told(self, stream: str | None = None) -> bool:
        """Told it lost history (of ``stream``, or of any)."""
        return any(isinstance(i, Recovery) and (stream is None or stream in i.streams)
                   for i in self.items)


@contextlib.asynccontextmanager
async def sdk_watchers(c: Cluster, users: list[str],
                       channel: bool = False) -> AsyncIterator[list[SdkWatched]]:
    """An SDK client per user, alternating gateways; with ``channel`` every other one is in
    the channel. Closed at the end."""
    watched: list[SdkWatched] = []
    try:
        for i, user in enumerate(users):
            joins = channel and i % 2 == 0
            client = Client(f"ws://127.0.0.1:{c.gateways[i % len(c.gateways)].port}/ws",
                            token=token(user, channels=[CHANNEL]),
                            channels=[CHANNEL] if joins else [])
            await client.start()
            w = SdkWatched(user, client, joins)

            async def run(w: SdkWatched = w) -> None:
                async for item in w.client:
                    w.items.append(item)

            w.task = asyncio.create_task(run())
            watched.append(w)
        yield watched
    finally:
        for w in watched:
            await w.client.close()
            if w.task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(w.task, 5)


async def settle_sdk(watched: list[SdkWatched], ledger: Ledger, timeout: float = 30) -> None:
    """Wait until every SDK client has everything (or the deadline), then show what is wrong."""
    with contextlib.suppress(TimeoutError):
        await until(lambda: not problems(watched, ledger), timeout, "every delivery")
    found = problems(watched, ledger)
    assert not found, "\n".join(found[:20])
