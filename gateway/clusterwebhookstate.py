"""The gateway's webhook state on Redis Cluster (docs/webhooks.md#redis-cluster).

The same writes as on one node (:mod:`gateway.webhookstate`), but a transaction cannot span
slots, so there is no sent marker that makes a repeat harmless. Repeats are made harmless by
what goes into one batch instead: a batch holds at most one script per connection and
entity (``USER_ON`` or ``USER_OFF``, ``CHANNEL_ON`` or ``CHANNEL_OFF``), and batches are
written strictly one after the other, each sent again until it is through. A batch sent
again therefore repeats only calls whose own connection has not moved on since, and each
script does nothing when repeated right after itself (the holder check, ``HSET`` answering 0
for a connection already there). What the one-node design guarded against, a ``USER_ON``
applied again after its ``USER_OFF`` (a connection left online for ever), cannot happen:
the two are never in one batch, and the second is not sent before the first is through.

A batch goes out in three steps, each one write per master: the roster entries it adds, the
scripts, and the roster entries it removes. A roster entry is so written before its state and
removed after it, as on one node, although roster and state are in different slots. Then one
hint (``SADD sb:{wh}:hints``) names the partitions that got an event or a due confirmation:
the dispatcher looks at those at once and at every partition now and then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis import exceptions
from redis.crc import key_slot

from gateway.errors import unavailable
from gateway.webhookstate import _SCRIPTS, CHUNK, Command, WebhookState
from switchboard import streams
from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.config import GatewaySettings

log = logging.getLogger("switchboard.gateway")

_CALLED = (*_SCRIPTS, wh.TAKE_SLOT)
_OPENS = {wh.USER_ON.sha, wh.CHANNEL_ON.sha}
_CLOSES = {wh.USER_OFF.sha, wh.CHANNEL_OFF.sha}


def connection(settings: GatewaySettings, gateway_id: str) -> ClusterPipelined:
    """One pipelined connection per master (redis-py's cluster pipeline cost a connect a
    third more CPU), fenced as on one node: a batch sent again never meets its first copy
    arriving late on a connection given up."""
    name = f"{settings.prefix}webhooks:{gateway_id}"
    client, url = connect_cluster(settings.redis_url, settings.redis_timeout,
                                  client_name=name, max_connections=4)
    return ClusterPipelined(client, url, settings.redis_timeout, client_name=name,
                            fenced=True)


def _entity_op(cmd: Command) -> tuple[str, str] | None:
    """(connection, state key) of a state script; None for a roster write."""
    if cmd[0] != "EVALSHA" or cmd[1] not in _OPENS | _CLOSES:
        return None
    nkeys = int(cmd[2])
    return str(cmd[3 + nkeys]), str(cmd[3])


# Errors after which the call did not run (or may not have): the step is sent again. Any
# other error reply is the script's own, which a repeat would not mend.
_RETRIED = (exceptions.AskError, exceptions.TryAgainError, exceptions.ClusterDownError,
            exceptions.ReadOnlyError, exceptions.OutOfMemoryError)


def _not_run(exc: Exception) -> bool:
    return (not isinstance(exc, exceptions.ResponseError) or isinstance(exc, _RETRIED)
            or str(exc).startswith(("BUSY", "MASTERDOWN", "CLUSTERDOWN")))


class ClusterWebhookState(WebhookState):
    cluster = True

    def _start(self) -> list[Command]:
        return []  # run() moves a predecessor's roster aside first, in steps of its own

    async def run(self) -> None:
        await self._take_predecessor()
        self.started = True
        await super().run()

    async def _take_predecessor(self) -> None:
        """A predecessor's roster (a gateway that had our id) is moved aside for the sweep:
        listed as dead first, then moved, then ours is begun. Each step again until it is
        through (each is harmless repeated: nothing writes our roster before we start)."""
        token = streams.random_id()
        member = wh.dead_member(self.gateway_id, token)
        dead = self.keys.dead_roster(self.gateway_id, token)
        await self._step([("SADD", self.keys.dead_rosters(), member)])
        # Listed even when there was no roster to move (a repeat of a move whose answer was
        # lost would say so too): the sweep unlists a dead roster that does not exist.
        await self._step([("EVALSHA", wh.TAKE_SLOT.sha, 2, self.roster, dead)])
        await self._step(self._listed())

    async def _step(self, commands: list[Command]) -> list[Any]:
        while True:
            try:
                return await self._pipeline(commands)
            except (exceptions.RedisError, OSError) as exc:
                self.failures += 1
                log.warning("webhook roster not taken over (%s): retrying", exc)
                await asyncio.sleep(1.0)

    def _batch_size(self) -> int:
        """The longest head of the queue (at most CHUNK) with one script per connection and
        entity: see the module's docstring."""
        seen: set[tuple[str, str]] = set()
        for i, cmd in enumerate(self._queue[:CHUNK]):
            op = _entity_op(cmd)
            if op is None:
                continue
            if op in seen:
                return i
            seen.add(op)
        return min(len(self._queue), CHUNK)

    async def _send(self, token: str, commands: list[Command]) -> None:
        adds = [c for c in commands if c[0] in ("HSET", "SADD")]
        scripts = [c for c in commands if c[0] == "EVALSHA"]
        removes = [c for c in commands if c[0] == "HDEL"]
        await self._pipeline(adds)
        replies = await self._pipeline(scripts)
        hinted = {key_slot(str(c[3]).encode()) for c, r in zip(scripts, replies, strict=True)
                  if not isinstance(r, Exception) and r}
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:  # a script's own error: sending it again would not mend it
            log.error("%d webhook state writes failed (%s)", len(failed), failed[0])
        if hinted:
            removes.append(("SADD", self.keys.hints(), *sorted(hinted)))
        await self._pipeline(removes)

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        if not commands:
            return []
        replies: list[Any] = await self._redis.execute_routed(commands, _CALLED)
        for reply in replies:
            if isinstance(reply, Exception) and _not_run(reply):
                raise reply  # the whole step again (run() waits and sends it again)
        return replies

    async def forget_roster(self) -> None:
        with unavailable("webhook_state"):
            await self._pipeline([("DEL", self.roster),
                                  ("SREM", self.keys.rosters(), self.gateway_id)])

    async def aclose(self) -> None:
        self._redis.close()
        await self._redis.cluster.aclose()
