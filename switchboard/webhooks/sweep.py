"""Leaving the connections of dead gateways, from their rosters.

A gateway whose registry entry is gone has its roster renamed aside (``:roster:sweep``), and
every connection in it is left as the gateway would have left it, with reason
``gateway_lost``. The incarnation is read *before* the registry entry is checked: a gateway
that comes back in between writes under a new incarnation, which this sweep leaves alone
(the gateway notices its roster vanished and writes it again).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from redis.exceptions import ResponseError

from switchboard import contract
from switchboard import whcontract as wh
from switchboard.config import WebhookSettings
from switchboard.store import text

log = logging.getLogger("switchboard.webhooks")
SCAN_COUNT = 500
REASON = "gateway_lost"


class Sweeper:
    def __init__(self, settings: WebhookSettings, redis: Any, keys: wh.WebhookKeys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.ckeys = contract.Keys(settings.prefix)
        self._args = wh.Leaves(settings, keys)
        self._off = {s.sha: redis.register_script(s.source)
                     for s in (wh.USER_OFF, wh.CHANNEL_OFF)}
        self.swept = 0  # connections left, for the metrics

    async def sweep(self) -> None:
        for raw in await self.redis.smembers(self.keys.rosters()):
            gateway_id = text(raw)
            roster, aside = self.keys.roster(gateway_id), self.keys.sweeping(gateway_id)
            incarnation = _text(await self.redis.hget(roster, wh.ROSTER_INC))
            if await self.redis.exists(self.ckeys.gateway(gateway_id)):
                continue
            if not await self.redis.exists(aside):  # else an interrupted sweep goes on first
                with contextlib.suppress(ResponseError):  # no roster: nothing new to sweep
                    await self.redis.rename(roster, aside)
            if incarnation is None:
                incarnation = _text(await self.redis.hget(aside, wh.ROSTER_INC))
            await self._sweep(gateway_id, aside, incarnation)
            await self.redis.delete(aside)
            if not await self.redis.exists(roster):
                await self.redis.srem(self.keys.rosters(), gateway_id)

    async def _sweep(self, gateway_id: str, aside: str, incarnation: str | None) -> None:
        cursor = 0
        while True:
            cursor, fields = await self.redis.hscan(aside, cursor, count=SCAN_COUNT)
            pipe = self.redis.pipeline(transaction=False)
            for raw_field, raw_value in fields.items():
                field, value = text(raw_field), text(raw_value)
                if field == wh.ROSTER_INC:
                    continue
                inc, _, user = value.partition("\t")
                conn, _, channel = field.partition("\t")
                if incarnation is not None and inc != incarnation:
                    continue  # written by the gateway after it came back
                holder = f"{gateway_id}/{inc}"
                if channel:
                    keys, args = self._args.channel_off(conn, holder, user, channel)
                    await self._off[wh.CHANNEL_OFF.sha](keys=keys, args=args, client=pipe)
                else:
                    keys, args = self._args.user_off(conn, holder, user, REASON)
                    await self._off[wh.USER_OFF.sha](keys=keys, args=args, client=pipe)
                    self.swept += 1
                pipe.hdel(aside, field)
            await pipe.execute()
            if cursor == 0:
                break
        log.info("swept the connections of dead gateway %s", gateway_id)


def _text(value: object) -> str | None:
    return None if value is None else text(value)
