"""What a gateway writes so the webhook dispatcher sees online/offline and join/leave
transitions (docs/webhooks.md; the keys and scripts are in :mod:`switchboard.whcontract`).

Only with ``webhook_url`` set. The writes are queued and sent in order, over a connection of
their own, as transactions of at most :data:`CHUNK` commands; a transaction that failed is
sent again, and only that one. Each carries a token that it writes to the gateway's sent
marker: the repeat of one that was applied after all (its reply was lost, or came too late)
is aborted by a ``WATCH`` on the marker, so no write is ever applied twice (a repeated
``USER_ON`` after its ``USER_OFF`` would report a connection that is gone). The marker holds
only the last token, which is enough because the connection is fenced: a new one kills the
one before it in Redis first, so a first copy still unread there cannot arrive after its
repeat and the transactions behind it. The roster entry
of a connection is written before its state and removed after it, so a gateway that dies in
between leaves nothing the dispatcher's sweep cannot find.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import WatchError

from gateway.errors import BackendUnavailable, unavailable
from gateway.ports import Registration
from switchboard import resp, streams
from switchboard import whcontract as wh
from switchboard.config import GatewaySettings
from switchboard.pipelined import Arg, PipelinedRedis, Script

log = logging.getLogger("switchboard.gateway")

Command = tuple[Arg, ...]
CHUNK = 1000  # commands per transaction: Redis runs one whole, so keep it short
SENT_TTL_MS = 7 * 86_400_000  # the marker outlives any retry of the last transaction
_SCRIPTS = (wh.USER_ON, wh.USER_OFF, wh.CHANNEL_ON, wh.CHANNEL_OFF, wh.TAKE, wh.SENT)
# encoded once: a transaction sends the loads of the scripts it calls in front of itself
_LOADS = {s.sha: resp.command("SCRIPT", "LOAD", s.source) for s in _SCRIPTS}


def connection(settings: GatewaySettings, gateway_id: str) -> PipelinedRedis:
    """The state's own connection. Its own: a long write after a Redis restart must not hold
    up (or, timed out, break) the registrations of connecting clients. Fenced: a transaction
    sent again must not meet its first copy arriving late (see above)."""
    return PipelinedRedis(settings.redis_url, settings.redis_timeout,
                          client_name=f"{settings.prefix}webhooks:{gateway_id}", fenced=True)


def _call(script: Script, call: tuple[list[str], list[Arg]]) -> Command:
    keys, args = call
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


class WebhookState:
    cluster = False

    def __init__(self, settings: GatewaySettings, gateway_id: str, redis: Any) -> None:
        self.gateway_id = gateway_id
        self.keys = wh.WebhookKeys(settings.prefix, cluster=self.cluster)
        self.roster = self.keys.roster(gateway_id)
        self.incarnation = streams.random_id()
        self._redis = redis
        self._sent = self.keys.sent(gateway_id)
        self._args = wh.Leaves(settings, self.keys)
        self._queue: list[Command] = []
        self._head: tuple[str, int] | None = None  # token and size of the transaction sent
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # False until the first transaction is in: until then our roster may still be a
        # predecessor's (a gateway that had our id), which that transaction moves aside.
        self.started = False
        self.failures = 0  # transactions that failed (and were sent again)
        self.repeats = 0  # of those, found applied after all when sent again
        self._put(self._start())

    def _start(self) -> list[Command]:
        token = streams.random_id()
        take: tuple[list[str], list[Arg]] = (
            [self.roster, self.keys.dead_roster(self.gateway_id, token),
             self.keys.dead_rosters()], [wh.dead_member(self.gateway_id, token)])
        return [_call(wh.TAKE, take), *self._listed()]

    def _listed(self) -> list[Command]:
        """Our roster, under our incarnation, where the dispatcher's sweep looks."""
        return [("HSET", self.roster, wh.ROSTER_INC, self.incarnation),
                ("SADD", self.keys.rosters(), self.gateway_id)]

    @property
    def holder(self) -> str:
        return f"{self.gateway_id}/{self.incarnation}"

    def new_incarnation(self) -> None:
        """Our registry entry was lost, so a sweep may have left our connections: what we
        write from now on is under a new holder, which a late sweep cannot remove."""
        self.incarnation = streams.random_id()

    # -- what each event writes -------------------------------------------------------------

    def connected(self, reg: Registration) -> None:
        value = wh.roster_value(self.incarnation, reg.user)
        cmds: list[Command] = [("HSET", self.roster, wh.roster_field(reg.conn_id), value)]
        cmds.append(self._user_on(reg))
        for channel in reg.channels:
            cmds += self._join(reg, channel)
        self._put(cmds)

    def joined(self, reg: Registration, channel: str) -> None:
        self._put(self._join(reg, channel))

    def left(self, reg: Registration, channel: str) -> None:
        self._put(self._leave(reg, channel))

    def disconnected(self, reg: Registration, reason: str = "closed") -> None:
        cmds = [_call(wh.USER_OFF, self._args.user_off(reg.conn_id, self.holder, reg.user,
                                                       reason))]
        for channel in reg.channels:
            cmds += self._leave(reg, channel)
        cmds.append(("HDEL", self.roster, wh.roster_field(reg.conn_id)))
        self._put(cmds)

    def _user_on(self, reg: Registration) -> Command:
        return _call(wh.USER_ON, self._args.user_on(reg.conn_id, self.holder, reg.user,
                                                    self.gateway_id))

    def _channel_on(self, reg: Registration, channel: str) -> Command:
        return _call(wh.CHANNEL_ON, self._args.channel_on(reg.conn_id, self.holder, reg.user,
                                                          channel))

    def _join(self, reg: Registration, channel: str) -> list[Command]:
        return [("HSET", self.roster, wh.roster_field(reg.conn_id, channel),
                 wh.roster_value(self.incarnation, reg.user)), self._channel_on(reg, channel)]

    def _leave(self, reg: Registration, channel: str) -> list[Command]:
        return [_call(wh.CHANNEL_OFF, self._args.channel_off(reg.conn_id, self.holder,
                                                             reg.user, channel)),
                ("HDEL", self.roster, wh.roster_field(reg.conn_id, channel))]

    def rewritten(self, regs: list[Registration]) -> None:
        """Our registry entry or roster was lost: everything under a new holder again (the
        scripts emit only what changed, e.g. ``user.online`` for users swept meanwhile)."""
        self.new_incarnation()
        self._put(self._listed())
        for reg in regs:
            self.connected(reg)

    # -- sending ----------------------------------------------------------------------------

    def _put(self, cmds: list[Command]) -> None:
        self._queue += cmds
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Send what is queued, in order, until cancelled; after a failure, again."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if self._head is None:
                    self._head = (streams.random_id(), self._batch_size())
                token, size = self._head
                try:
                    with unavailable("webhook_state"):
                        await self._send(token, self._queue[:size])
                except BackendUnavailable as exc:
                    self.failures += 1
                    log.warning("webhook state not written (%s): retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                del self._queue[:size]
                self._head = None
                self.started = True
            self._idle.set()

    def _batch_size(self) -> int:
        return min(len(self._queue), CHUNK)

    async def _send(self, token: str, commands: list[Command]) -> None:
        """Apply ``commands`` as one transaction, unless the one of ``token`` was applied."""
        # The scripts it calls are loaded in front: a flushed script cache must not fail
        # calls inside the transaction (its other commands would still run). Only those: all
        # six are 9 KB, which every connect's transaction used to carry (most need 2 KB).
        called = {str(c[1]) for c in commands if c[0] == "EVALSHA"}
        loads = [_LOADS[sha] for sha in called | {wh.SENT.sha}]
        replies = await self._redis.execute_raw([*loads, *(resp.command(*c) for c in [
            ("WATCH", self._sent),
            _call(wh.SENT, ([self._sent], [token])),
            ("MULTI",), *commands, ("SET", self._sent, token, "PX", SENT_TTL_MS), ("EXEC",),
        ])], raise_on_error=False)
        done, sent = replies[-1], replies[len(loads) + 1]
        if isinstance(done, Exception):  # EXECABORT (e.g. out of memory): nothing ran
            raise done
        if done is None:
            if sent != 1:  # the marker changed under the WATCH, but not by us: nothing ran
                raise WatchError("webhook state marker changed by another client")
            # aborted by the WATCH that SENT set off: this transaction was applied before
            self.repeats += 1
            log.info("webhook state: a failed write had been applied; not applied again")
            return
        failed = [r for r in done if isinstance(r, Exception)]
        if failed:  # applied all the same: a repeat would apply the rest twice
            log.error("%d webhook state writes failed (%s)", len(failed), failed[0])

    async def flushed(self, within: float) -> bool:
        """Wait until everything queued is written (at a clean stop)."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def forget_roster(self) -> None:
        """A clean stop with nothing left: the dispatcher has nothing to sweep."""
        with unavailable("webhook_state"):
            await self._redis.execute_many([("DEL", self.roster, self._sent),
                                            ("SREM", self.keys.rosters(), self.gateway_id)])

    async def aclose(self) -> None:
        self._redis.close()
