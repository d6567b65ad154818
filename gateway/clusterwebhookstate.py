"""The gateway's webhook state on Redis Cluster (docs/webhooks.md#on-a-redis-cluster).

The same writes as on one node (:mod:`gateway.webhookstate`), but a transaction cannot span
slots, so there is no sent marker that makes a repeat harmless. Repeats are made harmless by
what goes into one batch instead, and by the order of batches:

- a batch holds at most one command per connection and entity (a state script: ``USER_ON``
  or ``USER_OFF``, ``CHANNEL_ON`` or ``CHANNEL_OFF``) and at most one per roster entry;
- batches are written strictly one after the other, each sent again until it is through,
  over one pipelined connection per master that is fenced as on one node (a new connection
  kills the one before it first), so a first copy cannot arrive after the next batch.

A batch sent again therefore repeats only calls whose own connection and entity have not
moved on since, and each script does nothing when repeated right after itself (the holder
check, ``HSET`` answering 0 for a connection already there). What the one-node design
guards against, a ``USER_ON`` applied again after its ``USER_OFF`` (a connection left online
for ever), cannot happen: the two are never in one batch, and the second is not sent before
the first is through.

A batch goes out in three steps, each one write per master: the roster entries it adds, the
scripts, then the roster entries it removes and the roster's listing. A roster entry is so
written before its state and removed after it, as on one node, although roster and state are
in different slots; an entry that moves to a new incarnation (:meth:`rewritten`) names both
until the state names the new one. The last step also hints the partitions the scripts wrote
to (``SADD sb:{wh}:hints``): the dispatcher looks at those at once, and at every partition
now and then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis import exceptions
from redis.crc import key_slot

from gateway.errors import BackendUnavailable, unavailable
from gateway.ports import Registration
from gateway.webhookstate import _SCRIPTS, CHUNK, Command, WebhookState
from switchboard import streams
from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.config import GatewaySettings

log = logging.getLogger("switchboard.gateway")

_CALLED = (*_SCRIPTS, wh.TAKE_SLOT)
SETTLE = "SETTLE"  # queued only: a roster HSET sent in a batch's last step (see rewritten)
_STATE = {wh.USER_ON.sha, wh.CHANNEL_ON.sha, wh.USER_OFF.sha, wh.CHANNEL_OFF.sha}


def connection(settings: GatewaySettings, gateway_id: str) -> ClusterPipelined:
    """One pipelined connection per master (redis-py's cluster pipeline cost a connect a
    third more CPU), fenced as on one node: a batch sent again never meets its first copy
    arriving late on a connection given up."""
    name = f"{settings.prefix}webhooks:{gateway_id}"
    client, url = connect_cluster(settings.redis_url, settings.redis_timeout,
                                  client_name=name, max_connections=4)
    return ClusterPipelined(client, url, settings.redis_timeout, client_name=name,
                            fenced=True)


def _conflict_key(cmd: Command) -> tuple[str, str] | None:
    """What a command must not share a batch with another command about: (connection, state
    key) for a state script, ("roster", field) for a roster entry; None otherwise."""
    if cmd[0] == "EVALSHA" and cmd[1] in _STATE:
        nkeys = int(cmd[2])
        return str(cmd[3 + nkeys]), str(cmd[3])
    if cmd[0] in ("HSET", "HDEL", SETTLE) and len(cmd) >= 3:
        return "roster", str(cmd[2])
    return None


def _not_run(exc: Exception) -> bool:
    """Whether an error reply means the call did not run, so the step is sent again: every
    refusal (a redirection, CLUSTERDOWN, READONLY, OOM, NOREPLICAS, MISCONF, NOPERM, BUSY,
    MASTERDOWN, ...). Only a plain ``ERR`` or ``WRONGTYPE`` is the script's own error, which
    a repeat would not mend (one node logs those too, inside its EXEC)."""
    return not (type(exc) is exceptions.ResponseError
                and str(exc).startswith(("ERR", "WRONGTYPE")))


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
        listed as dead first, then moved, then ours is begun, its roster written before it
        is listed (see :meth:`~switchboard.webhooks.sweep.Sweeper._take_in_steps`). A move
        that failed is tried again under a new token: the connection is fenced, so the one
        that failed either ran before or never will, and a listed token whose roster never
        came is finished by the sweep as empty."""
        while True:
            token = streams.random_id()
            await self._step([("SADD", self.keys.dead_rosters(),
                               wh.dead_member(self.gateway_id, token))])
            try:
                with unavailable("webhook_state"):
                    [moved] = await self._pipeline([(
                        "EVALSHA", wh.TAKE_SLOT.sha, 4, self.roster,
                        self.keys.dead_roster(self.gateway_id, token),
                        self.keys.swept(self.gateway_id, token),
                        self.keys.alive(self.gateway_id), "0")])
            except BackendUnavailable as exc:
                # not under this token again: backing off keeps the tokens listed meanwhile
                # (each finished by the sweep as empty) few during an outage
                await self._failed(exc)
                continue
            if moved != -2:
                break
        roster, listed = self._listed()
        await self._step([roster])
        await self._step([listed])

    async def _step(self, commands: list[Command]) -> list[Any]:
        while True:
            try:
                with unavailable("webhook_state"):
                    return await self._pipeline(commands)
            except BackendUnavailable as exc:
                await self._failed(exc)

    async def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        log.warning("webhook roster not taken over (%s): retrying", exc)
        await asyncio.sleep(min(10.0, 2.0 ** min(self.failures, 4) / 4))

    def rewritten(self, regs: list[Registration]) -> None:
        """As on one node, but a roster entry that changes holder names both holders until
        it is settled in the last step of a batch, after the script that gives the state the
        new holder: the state's holder and the roster's are written in separate steps here,
        and a sweep between them must still find the state's."""
        old = self.incarnation
        self.new_incarnation()
        self._put(self._listed())
        both = f"{self.incarnation},{old}"
        settle: list[Command] = []
        for reg in regs:
            cmds: list[Command] = [("HSET", self.roster, wh.roster_field(reg.conn_id),
                                    wh.roster_value(both, reg.user)),
                                   self._user_on(reg)]
            settle.append((SETTLE, self.roster, wh.roster_field(reg.conn_id),
                           wh.roster_value(self.incarnation, reg.user)))
            for channel in reg.channels:
                field = wh.roster_field(reg.conn_id, channel)
                cmds += [("HSET", self.roster, field, wh.roster_value(both, reg.user)),
                         self._channel_on(reg, channel)]
                settle.append((SETTLE, self.roster, field,
                               wh.roster_value(self.incarnation, reg.user)))
            self._put(cmds)
        # Settled in the last step of a batch, after the scripts: whatever batch a cut puts
        # a settle in, its state's new holder was written before it or in that batch.
        self._put(settle)

    def _batch_size(self) -> int:
        """The longest head of the queue (at most CHUNK) with at most one command per
        connection and entity, and per roster entry: see the module's docstring."""
        seen: set[tuple[str, str]] = set()
        for i, cmd in enumerate(self._queue[:CHUNK]):
            key = _conflict_key(cmd)
            if key is None:
                continue
            if key in seen:
                return i
            seen.add(key)
        return min(len(self._queue), CHUNK)

    async def _send(self, token: str, commands: list[Command]) -> None:
        adds = [c for c in commands if c[0] == "HSET"]
        scripts = [c for c in commands if c[0] == "EVALSHA"]
        # the listing of our roster (SADD) after the roster is written, as the sweep expects;
        # a settled roster entry after the state it names
        removes = [("HSET", *c[1:]) if c[0] == SETTLE else c for c in commands
                   if c[0] in ("HDEL", "SADD", SETTLE)]
        await self._pipeline(adds)
        replies = await self._pipeline(scripts)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:  # a script's own error: sending it again would not mend it
            log.error("%d webhook state writes failed (%s)", len(failed), failed[0])
        # Every partition the batch's scripts wrote to: a repeated batch answers 0 where
        # the first copy wrote, and its hint must not be lost with that copy's reply.
        hinted = {key_slot(str(c[3]).encode()) for c in scripts}
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
            await self._pipeline([("DEL", self.roster, self.keys.alive(self.gateway_id))])
            await self._pipeline([("SREM", self.keys.rosters(), self.gateway_id)])

    async def aclose(self) -> None:
        self._redis.close()
        await self._redis.cluster.aclose()

