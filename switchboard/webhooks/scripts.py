"""The webhook contract's scripts (switchboard/whcontract.py), registered on one redis-py
client and called by their :class:`~switchboard.pipelined.Script`."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from switchboard.pipelined import Script


class Scripts:
    def __init__(self, redis: Any, *scripts: Script) -> None:
        # On Redis Cluster, EVAL with the source: a cluster pipeline cannot load a script
        # again after NOSCRIPT (a promoted replica's cache is empty).
        self._cluster = isinstance(redis, RedisCluster)
        self._registered = {} if self._cluster else {
            s.sha: redis.register_script(s.source) for s in scripts}
        self._redis = redis

    async def run(self, script: Script, keys: list[str], args: list[Any],
                  client: Any = None) -> Any:
        """EVALSHA, loading the script on NOSCRIPT; on ``client`` (a pipeline), queued."""
        if self._cluster:
            queued = (client or self._redis).eval(script.source, len(keys), *keys, *args)
            # a cluster pipeline queues at once; awaiting it would start it afresh
            return None if isinstance(client, ClusterPipeline) else await queued
        return await self._registered[script.sha](keys=keys, args=args, client=client)
