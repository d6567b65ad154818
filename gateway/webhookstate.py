"""What a gateway writes so the webhook dispatcher sees online/offline and join/leave
transitions (docs/webhooks.md; the keys and scripts are in :mod:`switchboard.whcontract`).

Only with ``webhook_url`` set. The writes are queued and sent in order, one write per loop
iteration, and sent again after a failure: every one of them is idempotent (a connection is
added or removed under its holder, ``GATEWAY/INC``), so a repeat changes nothing and emits
nothing. The roster entry of a connection is written before its state and removed after it,
so a gateway that dies in between leaves nothing the dispatcher's sweep cannot find.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import BackendUnavailable
from gateway.ports import Registration
from switchboard import streams
from switchboard import whcontract as wh
from switchboard.config import GatewaySettings
from switchboard.pipelined import Arg, Script

log = logging.getLogger("switchboard.gateway")

Command = tuple[Arg, ...]
Send = Callable[[list[Command]], Awaitable[object]]
_SCRIPTS = (wh.USER_ON, wh.USER_OFF, wh.CHANNEL_ON, wh.CHANNEL_OFF)


def _call(script: Script, call: tuple[list[str], list[Arg]]) -> Command:
    keys, args = call
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


class WebhookState:
    def __init__(self, settings: GatewaySettings, gateway_id: str, send: Send, *,
                 cluster: bool = False) -> None:
        self.gateway_id = gateway_id
        self.keys = wh.WebhookKeys(settings.prefix, cluster=cluster)
        self.roster = self.keys.roster(gateway_id)
        self.incarnation = streams.random_id()
        self._send = send
        self._args = wh.Leaves(settings, self.keys)
        self._queue: list[Command] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

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
        cmds.append(_call(wh.USER_ON, self._args.user_on(reg.conn_id, self.holder, reg.user,
                                                         self.gateway_id)))
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

    def _join(self, reg: Registration, channel: str) -> list[Command]:
        return [("HSET", self.roster, wh.roster_field(reg.conn_id, channel),
                             wh.roster_value(self.incarnation, reg.user)),
                _call(wh.CHANNEL_ON, self._args.channel_on(reg.conn_id, self.holder, reg.user,
                                                           channel))]

    def _leave(self, reg: Registration, channel: str) -> list[Command]:
        return [_call(wh.CHANNEL_OFF, self._args.channel_off(reg.conn_id, self.holder,
                                                             reg.user, channel)),
                ("HDEL", self.roster, wh.roster_field(reg.conn_id, channel))]

    def rewritten(self, regs: list[Registration]) -> None:
        """Our registry entry or roster was lost: everything under a new holder again (the
        scripts emit only what changed, e.g. ``user.online`` for users swept meanwhile)."""
        self.new_incarnation()
        self._put([("HSET", self.roster, wh.ROSTER_INC, self.incarnation),
                   ("SADD", self.keys.rosters(), self.gateway_id)])
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
                batch = self._queue
                self._queue = []
                try:
                    # loaded in front: a flushed script cache must not turn the batch into
                    # NOSCRIPT errors (a NOSCRIPT call did not run, and order matters)
                    await self._send([("SCRIPT", "LOAD", s.source)
                                      for s in _SCRIPTS] + batch)
                except BackendUnavailable as exc:
                    log.warning("webhook state not written (%s): retrying", exc)
                    self._queue = batch + self._queue
                    await asyncio.sleep(1.0)
            self._idle.set()

    async def flushed(self, within: float) -> bool:
        """Wait until everything queued is written (at a clean stop)."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def forget_roster(self) -> None:
        """A clean stop with nothing left: the dispatcher has nothing to sweep."""
        await self._send([("DEL", self.roster),
                          ("SREM", self.keys.rosters(), self.gateway_id)])
