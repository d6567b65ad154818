"""Async operations on the Redis contract, shared by gateway and router.

Thin wrappers that run :mod:`switchboard.contract`'s scripts and key layout through redis-py.
Redis errors propagate as ``redis.exceptions.RedisError``; callers translate them at their
boundary (the router into HTTP 503, the gateway into readiness).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from switchboard import contract, receipts, streams
from switchboard.config import RedisSettings
from switchboard.contract import GatewayInfo, Message
from switchboard.pipelined import Arg, PipelinedRedis, Script
from switchboard.redisurl import is_cluster
from switchboard.streams import Position

TargetKind = Literal["u", "b", "c"]
PageMode = Literal["since", "last", "first"]

# Keys one SCAN call examines (its COUNT hint).
SCAN_COUNT = 1000


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    name: str = ""  # user id or channel name

    @property
    def stream_key(self) -> str:
        if self.kind == "u":
            return streams.user_key(self.name)
        if self.kind == "c":
            return streams.channel_key(self.name)
        return streams.BROADCAST_KEY


@dataclass(frozen=True, slots=True)
class Published:
    stream: str  # wire name
    epoch: str
    offset: int
    recipients: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class PageQuery:
    """Where a page of a stream's log starts: after a position (``since``), ``last`` messages
    before the top, or at the first message of the stream's epoch (``first``)."""

    mode: PageMode = "first"
    since: Position | None = None
    last: int = 0


@dataclass(frozen=True, slots=True)
class LogPage:
    """A stream's top and log entries from the query's start, read in one atomic step."""

    top: Position
    messages: list[Message]


def text(value: object) -> str:
    """Redis replies are bytes; keys and ids we store are UTF-8 text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, timeout: float, reconnect_retry: bool = False,
            max_connections: int = 64) -> aioredis.Redis:
    """A client that fails fast: callers must answer 503 rather than hang on a dead Redis.

    ``reconnect_retry``: retry a command once on a fresh connection when its pooled one turns
    out dead (after a Redis restart every pooled connection is). Only for idempotent callers:
    a connection that dies after the server ran the command would run it twice.
    """
    kwargs: dict[str, Any] = {}
    if reconnect_retry:
        kwargs["retry"] = Retry(NoBackoff(), 1)
        kwargs["retry_on_error"] = [RedisConnectionError]
    # A burst of callers (a reconnect storm) waits for a pooled connection instead of failing
    # with "Too many connections", which the default pool does past its size.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        retry_on_timeout=False,
        **kwargs,
    )
    return aioredis.Redis(connection_pool=pool)


PUBLISH_SCRIPT = Script(contract.PUBLISH_LUA)


def pipelined(settings: RedisSettings, client_name: str) -> PipelinedRedis:
    """The publish connection :class:`Store` can take: scripts preloaded, fail-fast timeout."""
    return PipelinedRedis(settings.redis_url, settings.redis_timeout,
                          client_name=client_name,
                          scripts=[PUBLISH_SCRIPT, receipts.RECEIPT_PUBLISH])


class ScriptRunner(Protocol):
    """What publishing needs of a pipelined connection (one node, or one per master)."""

    async def run_script(self, script: Script, keys: Sequence[Arg],
                         args: Sequence[Arg]) -> Any: ...

    async def run_script_many(self, script: Script,
                              calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
                              ) -> list[Any]: ...

    def close(self) -> None: ...


class Store:
    """The Redis contract for publishers and cluster queries (the router, tools, tests).

    Publishing goes through ``pipelined`` (:mod:`switchboard.pipelined`, the router's hot
    path); everything else through the redis-py ``client``. :meth:`open` builds both and
    :meth:`aclose` closes both; a caller that passes its own closes them itself. On a Redis
    Cluster URL :meth:`open` gives the second implementation,
    :class:`switchboard.clusterstore.ClusterStore`."""

    def __init__(self, client: Any, settings: RedisSettings,
                 pipelined: ScriptRunner) -> None:
        self.redis = client
        self.settings = settings
        self.publish_script = PUBLISH_SCRIPT
        self.receipt_script = receipts.RECEIPT_PUBLISH
        self.cluster = False
        self.pipelined = pipelined
        self.keys = contract.Keys(settings.prefix)
        self._route_to_user = client.register_script(contract.ROUTE_TO_USER_LUA)
        self._presence = client.register_script(contract.PRESENCE_LUA)
        self._read_page = client.register_script(contract.READ_PAGE_LUA)
        self._ensure_meta = client.register_script(contract.ENSURE_META_LUA)

    @classmethod
    def open(cls, settings: RedisSettings, client_name: str) -> Store:
        if is_cluster(settings.redis_url):
            from switchboard.clusterstore import ClusterStore

            return ClusterStore.open(settings, client_name)
        return cls(connect(settings.redis_url, settings.redis_timeout), settings,
                   pipelined(settings, client_name))

    async def aclose(self) -> None:
        self.pipelined.close()
        await self.redis.aclose()

    # -- publishing ---------------------------------------------------------------------------

    def _publish_args(
        self, target: Target, data: Any, idempotency_key: str | None, idempotency_ttl: float
    ) -> tuple[list[str], list[Any]]:
        key = target.stream_key
        keys = [
            self.keys.meta(key),
            self.keys.log(key),
            self.keys.idempotency(key, idempotency_key or "_"),
        ]
        channel = self._route(target, keys)
        s = self.settings
        args: list[Any] = [
            target.kind,
            key,
            contract.pack_tail(data),
            s.history_size,
            contract.ms(s.history_ttl),
            contract.ms(s.meta_ttl),
            streams.random_id(),
            s.prefix,
            "1" if idempotency_key else "0",
            contract.ms(idempotency_ttl),
            channel,
        ]
        return keys, args

    def _route(self, target: Target, keys: list[str]) -> str:
        """Where the script delivers: the channel it PUBLISHes to, or (a user) the map key
        appended to ``keys``, whose gateways it publishes to."""
        if target.kind == "u":
            keys.append(self.keys.conns(target.name))
            return ""
        if target.kind == "b":
            return self.keys.broadcast_channel()
        return self.keys.channel_channel(target.name)

    @staticmethod
    def _result(target: Target, raw: list[Any]) -> Published:
        epoch = text(raw[0])
        return Published(
            stream=streams.wire_name(target.stream_key),
            epoch=epoch,
            offset=int(raw[1]),
            recipients=int(raw[2]),
            duplicate=bool(int(raw[3])),
        )

    async def publish(
        self,
        target: Target,
        data: Any,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 3600.0,
        receipt_ms: int | None = None,
    ) -> Published:
        """``receipt_ms`` (a user target): fire ``message.undelivered`` if no
        session of the user acknowledged the message that long after it is stored; raises
        :class:`~switchboard.receipts.ReceiptsFull` (nothing stored) past the cap."""
        keys, args = self._publish_args(target, data, idempotency_key, idempotency_ttl)
        script = self.publish_script
        if receipt_ms is not None:
            if target.kind != "u":
                raise ValueError("receipts are for user targets only")
            more_keys, more_args = receipts.receipt_call(
                self.settings.prefix, target.name, receipt_ms, idempotency_key,
                self.settings.meta_ttl, cluster=self.cluster)
            keys, args, script = keys + more_keys, args + more_args, self.receipt_script
        raw = await self.pipelined.run_script(script, keys, args)
        if receipt_ms is not None:
            if int(raw[3]) == receipts.FULL:  # plain ones: no check
                raise receipts.ReceiptsFull(target.name)
            if not int(raw[3]):
                await self._receipt_stored(target.name)
        return self._result(target, raw)

    async def _receipt_stored(self, user: str) -> None:
        """On one node the dispatcher looks at every partition on every poll."""

    async def publish_many(
        self,
        items: list[tuple[Target, Any, str | None]],
        idempotency_ttl: float = 3600.0,
    ) -> list[Published]:
        """One round trip for many messages; each still runs its own atomic script."""
        calls = [self._publish_args(target, data, idem, idempotency_ttl)
                 for target, data, idem in items]
        raws = await self.pipelined.run_script_many(self.publish_script, calls)
        return [self._result(t, r) for (t, _, _), r in zip(items, raws, strict=True)]

    # -- history ------------------------------------------------------------------------------

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script registered on the command client (EVALSHA, loaded again if flushed)."""
        return await script(keys=keys, args=args)

    async def read_page(self, stream_key: str, query: PageQuery, count: int) -> LogPage:
        """The stream's top and at most ``count`` log entries from where ``query`` starts
        (:data:`contract.READ_PAGE_LUA`), one round trip. A stream without a position gets
        one (epoch, offset 0), as it does when a client connects."""
        since = query.since
        raw = await self._run(
            self._read_page, [self.keys.meta(stream_key), self.keys.log(stream_key)],
            [streams.random_id(), contract.ms(self.settings.meta_ttl), query.mode,
             since.epoch if since else "", since.offset if since else query.last, count])
        return LogPage(Position(text(raw[0]), int(raw[1])), contract.log_messages(raw[2]))

    async def top(self, stream_key: str) -> Position:
        """The stream's current (epoch, offset), giving it a position if it has none."""
        raw = await self._run(
            self._ensure_meta, [self.keys.meta(stream_key), self.keys.log(stream_key)],
            [streams.random_id(), contract.ms(self.settings.meta_ttl)])
        return Position(text(raw[0]), int(raw[1]))

    # -- connections and sessions -------------------------------------------------------------

    async def connections(self, user: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.conns(user))
        return {text(k): text(v) for k, v in raw.items()}

    async def live_connections(self, user: str) -> dict[str, str]:
        """The user's connections held by gateways that still beat: conn -> gateway."""
        conns = await self.connections(user)
        alive = await self.live_gateways(set(conns.values()))
        return {c: g for c, g in conns.items() if g in alive}

    async def positions(self, user: str) -> receipts.UserPositions:
        """Where each of the user's sessions is in its user stream (docs/receipts.md)."""
        top = await self.top(streams.user_key(user))
        raw = await self.redis.hgetall(receipts.acks_key(self.settings.prefix, user))
        pending = await self.redis.zcard(receipts.receipts_key(self.settings.prefix, user))
        live = await self.live_connections(user)
        best, sessions = receipts.parse_acks({text(k): text(v) for k, v in raw.items()})
        if best is not None and best.epoch != top.epoch:
            best = None  # acks of an epoch the stream has left say nothing about this one
        return receipts.UserPositions(top, best, sessions, live, int(pending))

    async def live_gateways(self, gateway_ids: set[str]) -> set[str]:
        """Those of ``gateway_ids`` whose registry entry exists (they beat in time)."""
        if not gateway_ids:
            return set()
        ordered = sorted(gateway_ids)
        pipe = self.redis.pipeline(transaction=False)
        for gid in ordered:
            pipe.exists(self.keys.gateway(gid))
        found = await pipe.execute()
        return {gid for gid, n in zip(ordered, found, strict=True) if int(n)}

    async def disconnect(self, user: str, code: int, reason: str) -> int:
        envelope = contract.pack_control(contract.OP_DISCONNECT, user, code, reason)
        n = await self._route_to_user(
            keys=[self.keys.conns(user)], args=[self.settings.prefix, envelope]
        )
        return int(n)

    async def presence(self, channel: str) -> dict[str, int]:
        """Users subscribed to ``channel`` through live gateways -> their connection count."""
        users = await self._presence(keys=[self.keys.presence(channel)],
                                     args=[self.settings.prefix])
        counts: dict[str, int] = {}
        for raw in users:
            user = text(raw)
            counts[user] = counts.get(user, 0) + 1
        return counts

    async def gateway(self, gateway_id: str) -> GatewayInfo | None:
        """One gateway's registry entry, or None when it has none (unknown, or expired)."""
        row = await self.redis.hgetall(self.keys.gateway(gateway_id))
        if not row:
            return None
        return contract.parse_registry_entry(
            gateway_id, {text(k): text(v) for k, v in row.items()})

    async def drain(self, gateway_id: str, reason: str) -> int:
        """Tell one gateway to drain (as on SIGTERM) over its own pub/sub channel, the one
        unicast deliveries use; returns how many subscribers received it (0: not listening)."""
        envelope = contract.pack_control(contract.OP_DRAIN, reason)
        return int(await self.redis.publish(self.keys.gateway_channel(gateway_id), envelope))

    async def channels(self, limit: int, scan_budget: int) -> tuple[list[str], bool]:
        """Channels that have a presence hash, at most ``limit`` of them, sorted; True when
        the list may be incomplete (more found, or ``scan_budget`` keys examined first).
        SCAN, never KEYS: each call examines about ``SCAN_COUNT`` keys."""
        found: set[str] = set()
        cursor: Any = 0
        examined = 0
        complete = False
        while examined < scan_budget and len(found) <= limit:
            cursor, batch = await self.redis.scan(
                cursor, match=self.keys.presence_pattern(), count=SCAN_COUNT)
            examined += SCAN_COUNT
            found.update(c for k in batch if (c := self.keys.presence_channel(text(k))))
            if int(cursor) == 0:
                complete = True
                break
        names = sorted(found)
        return names[:limit], not complete or len(names) > limit

    async def gateways(self) -> list[GatewayInfo]:
        ids = [text(g) for g in await self.redis.zrange(self.keys.gateways(), 0, -1)]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for gid in ids:
            pipe.hgetall(self.keys.gateway(gid))
        rows = await pipe.execute()
        result: list[GatewayInfo] = []
        stale: list[str] = []
        for gid, row in zip(ids, rows, strict=True):
            if not row:
                stale.append(gid)  # its registry hash expired: the gateway is dead
                continue
            result.append(contract.parse_registry_entry(
                gid, {text(k): text(v) for k, v in row.items()}))
        if stale:
            await self.redis.zrem(self.keys.gateways(), *stale)
        return result


def heartbeat_age(info: GatewayInfo) -> float:
    return max(0.0, time.time() - info.heartbeat_ms / 1000)
