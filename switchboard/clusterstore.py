"""The Redis contract on Redis Cluster: the second implementation of :class:`Store`.

What differs from one node (docs/scaling.md):

- every stream has its own sharded channel in its own slot (``sb:{KEY}:live``), and the publish
  script SPUBLISHes there, so it never reads a key of another slot: no user→gateway lookup, no
  gateway liveness check inside the script. The gateways holding a user subscribe to the
  user's channel; a publish reaches exactly them;
- gateway liveness is checked outside scripts: presence and a user's connections drop the
  entries of gateways whose registry key has expired, reading the registry separately;
- a disconnect is a control envelope on the user's channel; a drain is one on the gateway's
  own control channel (``sb:{gw:ID}:control``), which cluster gateways subscribe to;
- listing channels SCANs every master;
- the history reads' scripts run with EVAL (their source sent along), as the gateway's do.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from switchboard import contract, receipts, streams
from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.config import RedisSettings
from switchboard.pipelined import Script
from switchboard.store import SCAN_COUNT, Store, Target, text

log = logging.getLogger("switchboard")
CLUSTER_PUBLISH_SCRIPT = Script(contract.CLUSTER_PUBLISH_LUA)


def cluster_pipelined(cluster: RedisCluster, settings: RedisSettings,
                      client_name: str) -> ClusterPipelined:
    from switchboard.redisurl import parse_cluster

    return ClusterPipelined(cluster, parse_cluster(settings.redis_url), settings.redis_timeout,
                            client_name=client_name,
                            scripts=[CLUSTER_PUBLISH_SCRIPT, receipts.CLUSTER_RECEIPT_PUBLISH])


class ClusterStore(Store):
    def __init__(self, client: RedisCluster, settings: RedisSettings,
                 pipelined: ClusterPipelined) -> None:
        super().__init__(client, settings, pipelined)
        self.publish_script = CLUSTER_PUBLISH_SCRIPT
        self.receipt_script = receipts.CLUSTER_RECEIPT_PUBLISH
        self.cluster = True
        self._webhook_keys = wh.WebhookKeys(settings.prefix, cluster=True)

    @classmethod
    def open(cls, settings: RedisSettings, client_name: str) -> ClusterStore:
        client, _ = connect_cluster(settings.redis_url, settings.redis_timeout)
        return cls(client, settings, cluster_pipelined(client, settings, client_name))

    def _route(self, target: Target, keys: list[str]) -> str:
        return self.keys.live_channel(target.stream_key)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        # EVAL, as the cluster gateway runs its scripts: the source travels along, so a
        # master promoted by a failover never answers NOSCRIPT. One slot: the stream's tag.
        return await self.redis.eval(script.script, len(keys), *keys, *args)

    async def _receipt_stored(self, user: str) -> None:
        """Hint the dispatcher at the user's partition, so it sees the deadline soon and not
        only at its next look at every partition (the hint is not needed for correctness)."""
        keys = self._webhook_keys
        try:
            await self.redis.sadd(keys.hints(), keys.partition(streams.user_key(user)))
        except (RedisError, RedisClusterException) as exc:  # the publish is stored: a 2xx
            log.warning("receipt hint for %s not written (%s): found by the next full look",
                        user, exc)

    async def connections(self, user: str) -> dict[str, str]:
        key = self.keys.conns(user)
        conns = {text(k): text(v) for k, v in (await self.redis.hgetall(key)).items()}
        alive = await self.live_gateways(set(conns.values()))
        dead = [c for c, gw in conns.items() if gw not in alive]
        if dead:
            await self.redis.hdel(key, *dead)  # their gateway stopped beating
        return {c: gw for c, gw in conns.items() if gw in alive}

    async def live_connections(self, user: str) -> dict[str, str]:
        return await self.connections(user)  # already only those of live gateways

    async def disconnect(self, user: str, code: int, reason: str) -> int:
        envelope = contract.pack_control(contract.OP_DISCONNECT, user, code, reason)
        channel = self.keys.live_channel(streams.user_key(user))
        return int(await self.redis.spublish(channel, envelope))

    async def drain(self, gateway_id: str, reason: str) -> int:
        envelope = contract.pack_control(contract.OP_DRAIN, reason)
        return int(await self.redis.spublish(self.keys.control_channel(gateway_id), envelope))

    async def channels(self, limit: int, scan_budget: int) -> tuple[list[str], bool]:
        """As on one node, each master scanned in turn within one shared budget."""
        found: set[str] = set()
        examined = 0
        complete = True
        await self.redis.initialize()  # a no-op once the slot map is known
        for node in self.redis.get_primaries():
            cursor: Any = 0
            while True:
                if examined >= scan_budget or len(found) > limit:
                    complete = False
                    break
                reply, batch = await self.redis.scan(
                    cursor, match=self.keys.presence_pattern(), count=SCAN_COUNT,
                    target_nodes=node)
                # redis-py answers a cluster SCAN with a cursor per node: one node here
                cursor = next(iter(reply.values())) if isinstance(reply, dict) else reply
                examined += SCAN_COUNT
                found.update(c for k in batch if (c := self.keys.presence_channel(text(k))))
                if int(cursor) == 0:
                    break
            if not complete:
                break
        names = sorted(found)
        return names[:limit], not complete or len(names) > limit

    async def presence(self, channel: str) -> dict[str, int]:
        key = self.keys.presence(channel)
        entries: dict[str, tuple[str, str]] = {}
        for conn_id, value in (await self.redis.hgetall(key)).items():
            gw, _, user = text(value).partition(" ")
            entries[text(conn_id)] = (gw, user)
        alive = await self.live_gateways({gw for gw, _ in entries.values()})
        dead = [c for c, (gw, _) in entries.items() if gw not in alive]
        if dead:
            await self.redis.hdel(key, *dead)
        counts: dict[str, int] = {}
        for gw, user in entries.values():
            if gw in alive:
                counts[user] = counts.get(user, 0) + 1
        return counts

    async def aclose(self) -> None:
        self.pipelined.close()
        await self.redis.aclose()
