"""Leaving the connections of dead gateways, from their rosters.

A roster whose gateway has no registry entry is moved aside (``:roster:dead:TOKEN``, listed in
``sb:wh:dead``) by :data:`~switchboard.whcontract.TAKE`, which checks the registry entry in the
same call: a gateway that comes back afterwards finds its roster gone and writes everything
again, under a new incarnation, into a new one. A gateway that starts under the id of a
predecessor moves the predecessor's roster aside itself. Every connection of a roster moved
aside is then left as its gateway would have left it, with reason ``gateway_lost``, under
the holder it was written with (a repeat, or a connection written again since under a newer
holder, changes nothing). A dead roster is deleted by :data:`~switchboard.whcontract.FINISH`,
only once it holds no connection, and leaves a tombstone of its token.

On Redis Cluster TAKE's keys are in three slots, so it is steps
(:meth:`Sweeper._take_in_steps`): the dead member is listed first, then
:data:`~switchboard.whcontract.TAKE_SLOT` moves the roster in its own slot, checking there
the gateway's alive key (its heartbeat's, beside the roster) and the token's tombstone.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from switchboard import contract, streams
from switchboard import whcontract as wh
from switchboard.config import WebhookSettings
from switchboard.store import text
from switchboard.webhooks.scripts import Scripts

log = logging.getLogger("switchboard.webhooks")
SCAN_COUNT = 500
REASON = "gateway_lost"
TOMBSTONE_MS = 600_000  # a swept token stays refused this long (a late move is seconds late)


class Sweeper:
    def __init__(self, settings: WebhookSettings, redis: Any, keys: wh.WebhookKeys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.ckeys = contract.Keys(settings.prefix)
        self._args = wh.Leaves(settings, keys)
        self._run = Scripts(redis, wh.USER_OFF, wh.CHANNEL_OFF, wh.TAKE, wh.TAKE_SLOT,
                            wh.FINISH).run
        self.swept = 0  # connections left, for the metrics
        self.touched: set[int] = set()  # partitions the leaves wrote to, for the dispatcher

    async def sweep(self) -> None:
        await self._take_dead()
        for raw in await self.redis.smembers(self.keys.dead_rosters()):
            member = text(raw)
            gateway_id, _, token = member.partition("\t")
            dead = self.keys.dead_roster(gateway_id, token)
            swept = self.swept
            # one roster that cannot be swept (a key of the wrong type, say) must not keep
            # every other dead gateway's users online: it stays listed, for the next sweep
            try:
                left_all = await self._leave_all(gateway_id, dead)
            except (RedisError, RedisClusterException) as exc:
                log.error("the connections of dead gateway %s not swept: %s", gateway_id, exc)
                continue
            if not left_all:
                continue
            # deleted only if nothing was moved in since it was read (a late move), and a
            # move under this token after this is refused by the tombstone
            finished = await self._run(wh.FINISH, [dead, self.keys.swept(gateway_id, token)],
                                       [TOMBSTONE_MS, wh.ROSTER_INC])
            if not int(finished):
                continue
            await self.redis.srem(self.keys.dead_rosters(), member)
            if self.swept > swept:
                log.info("swept the connections of dead gateway %s", gateway_id)

    async def _take_dead(self) -> None:
        """Move aside the rosters of gateways without a registry entry."""
        ids = [text(raw) for raw in await self.redis.smembers(self.keys.rosters())]
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for gateway_id in ids:
            pipe.exists(self.ckeys.gateway(gateway_id))
        alive = await pipe.execute()
        for gateway_id, exists in zip(ids, alive, strict=True):
            if exists:
                continue
            token = streams.random_id()
            try:
                if self.keys.cluster:
                    await self._take_in_steps(gateway_id, token)
                    continue
                # with no roster, TAKE also takes the gateway off the list
                await self._run(wh.TAKE, [
                    self.keys.roster(gateway_id), self.keys.dead_roster(gateway_id, token),
                    self.keys.dead_rosters(), self.ckeys.gateway(gateway_id),
                    self.keys.rosters()], [wh.dead_member(gateway_id, token), gateway_id])
            except (RedisError, RedisClusterException) as exc:  # this roster only
                log.error("the roster of dead gateway %s not taken: %s", gateway_id, exc)

    async def _take_in_steps(self, gateway_id: str, token: str) -> None:
        """Redis Cluster: TAKE's keys are in three slots, so it is steps, in an order that
        never strands a roster (see :data:`~switchboard.whcontract.TAKE_SLOT`)."""
        roster = self.keys.roster(gateway_id)
        for _ in range(3):
            await self.redis.sadd(self.keys.dead_rosters(), wh.dead_member(gateway_id, token))
            moved = int(await self._run(wh.TAKE_SLOT, [
                roster, self.keys.dead_roster(gateway_id, token),
                self.keys.swept(gateway_id, token), self.keys.alive(gateway_id)], ["1"]))
            if moved != -2:
                break
            token = streams.random_id()  # that token's sweep is over: a new one
        if moved == -1:  # no roster: off the list (a dead member left is finished as empty)
            await self.redis.srem(self.keys.rosters(), gateway_id)
            # A gateway writes its roster before it lists itself: one that listed itself
            # just before that SREM has a roster now, and goes back on the list.
            if await self.redis.exists(roster):
                await self.redis.sadd(self.keys.rosters(), gateway_id)

    async def _leave_all(self, gateway_id: str, roster: str) -> bool:
        """Leave every connection the roster holds; False if some leave failed, and stays."""
        left_all = True
        cursor = 0
        while True:
            cursor, fields = await self.redis.hscan(roster, cursor, count=SCAN_COUNT)
            pipe = self.redis.pipeline(transaction=False)
            batch: list[str] = []
            touched: list[int] = []
            for raw_field, raw_value in fields.items():
                field, value = text(raw_field), text(raw_value)
                if field == wh.ROSTER_INC:
                    continue
                incs, _, user = value.partition("\t")
                conn, _, channel = field.partition("\t")
                # Several incarnations while a Redis Cluster gateway moves an entry to a new
                # one (gateway/clusterwebhookstate.py): the state holds one of them.
                for inc in incs.split(","):
                    holder = f"{gateway_id}/{inc}"
                    if channel:
                        keys, args = self._args.channel_off(conn, holder, user, channel)
                        await self._run(wh.CHANNEL_OFF, keys, args, client=pipe)
                        touched.append(self.keys.partition(streams.channel_key(channel)))
                    else:
                        keys, args = self._args.user_off(conn, holder, user, REASON)
                        await self._run(wh.USER_OFF, keys, args, client=pipe)
                        touched.append(self.keys.partition(streams.user_key(user)))
                    batch.append(field)
            # a roster entry goes only once its leaves are written: a script that failed
            # (NOSCRIPT after a SCRIPT FLUSH, say) keeps its entry for the next sweep
            results = await pipe.execute(raise_on_error=False) if batch else []
            self.touched.update(touched)  # after the writes: a look before would find nothing
            failed = {f for f, r in zip(batch, results, strict=True) if isinstance(r, Exception)}
            done = [f for f in dict.fromkeys(batch) if f not in failed]
            for f, r in zip(batch, results, strict=True):
                if isinstance(r, Exception):
                    log.error("leave of %s from dead gateway %s not written: %s", f, gateway_id, r)
            left_all = left_all and not failed
            self.swept += sum(1 for f in done if "\t" not in f)
            if done:
                await self.redis.hdel(roster, *done)
            if cursor == 0:
                return left_all
