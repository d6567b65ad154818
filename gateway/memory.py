"""An in-memory backplane: a real implementation of :class:`gateway.ports.Backplane`.

Not a mock of Redis: it keeps the same model (streams with an epoch, offsets growing by one, a
bounded replay log, the user→gateway map, sessions bound to users, presence, the registry) in
one :class:`MemoryCluster` that several gateways of one process share, and delivers envelopes
to the gateways that should get them one loop iteration later, as pub/sub does. Tests drive
the gateway's flows against it without Redis: races of welcome, subscribe and unsubscribe,
resume, drain, rebalance, and the backend's failures (:meth:`MemoryCluster.go_down`,
:meth:`MemoryCluster.lose_everything`, :meth:`MemoryCluster.drop_envelopes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import BackendUnavailable, ChannelUnavailable
from gateway.ports import BackplaneEvents, Registration
from switchboard import contract, streams
from switchboard.contract import GatewayInfo, Message
from switchboard.receipts import Ack
from switchboard.store import Published
from switchboard.streams import Position


@dataclass
class _Stream:
    epoch: str
    offset: int = 0
    log: dict[int, Message] = field(default_factory=dict)


class MemoryCluster:
    """The shared state, what Redis holds for a whole cluster."""

    def __init__(self, *, history_size: int = 1000) -> None:
        self.history_size = history_size
        self.streams: dict[str, _Stream] = {}
        self.conns: dict[str, dict[str, str]] = {}  # user -> conn_id -> gateway
        self.sessions: dict[str, str] = {}  # session -> user
        self.presence: dict[str, dict[str, str]] = {}  # channel -> conn_id -> "GW USER"
        self.registry: dict[str, GatewayInfo] = {}
        self.members: dict[str, MemoryBackplane] = {}
        self.channel_subscribers: dict[str, set[str]] = {}  # channel -> gateway ids
        self.acks: dict[str, dict[str, Ack]] = {}  # user -> session -> highest ack
        self.down = False
        self._drop = 0

    # -- failures -------------------------------------------------------------------------------

    def go_down(self) -> None:
        """Every operation fails until :meth:`come_back`."""
        self.down = True

    def come_back(self, *, empty: bool = False) -> None:
        """Answer again (``empty``: as a Redis restarted without persistence). Every gateway's
        pub/sub reconnects: they hold their streams and catch up, as after a real outage."""
        if empty:
            self.lose_everything()
        self.down = False
        for member in list(self.members.values()):
            member.reconnect()

    def lose_everything(self) -> None:
        """FLUSHALL: positions, logs, maps, sessions, presence and the registry are gone."""
        for table in (self.streams, self.conns, self.sessions, self.presence, self.registry,
                      self.acks):
            table.clear()

    def expire(self, key: str) -> None:
        """Stream ``key``'s position and log expired (``meta_ttl``): its next message starts a
        new epoch, as after a restart, but nothing else is lost."""
        self.streams.pop(key, None)

    def drop_envelopes(self, n: int) -> None:
        """The next ``n`` envelopes are lost on their way to the gateways (pub/sub is
        at-most-once); what they carried is still in the logs."""
        self._drop += n

    def check(self) -> None:
        if self.down:
            raise BackendUnavailable("the in-memory backend is down")

    # -- the publish script ---------------------------------------------------------------------

    def publish(self, key: str, data: Any, published_ms: int | None = None) -> Published:
        """Store the next message of stream ``key`` and route it, like the publish script."""
        self.check()
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(streams.random_id())
        stream.offset += 1
        msg = Message(key, stream.epoch, stream.offset,
                      contract.now_ms() if published_ms is None else published_ms, data)
        stream.log[msg.offset] = msg
        for old in [o for o in stream.log if o <= msg.offset - self.history_size]:
            del stream.log[old]
        targets = self._route(key)
        if self._drop > 0:
            self._drop -= 1
        else:
            loop = asyncio.get_running_loop()
            for gw in targets:
                loop.call_soon(self.members[gw].deliver, msg)
        return Published(stream=streams.wire_name(key), epoch=msg.epoch, offset=msg.offset,
                         recipients=len(targets), duplicate=False)

    def _route(self, key: str) -> list[str]:
        listening = [gw for gw, m in self.members.items() if m.subscribed]
        if key == streams.BROADCAST_KEY:
            return listening
        if key.startswith("u:"):
            held = set(self.conns.get(key[2:], {}).values())
            return [gw for gw in listening if gw in held and gw in self.registry]
        subscribers = self.channel_subscribers.get(key[2:], set())
        return [gw for gw in listening if gw in subscribers]

    def ack(self, ack: Ack) -> None:
        """As :data:`switchboard.receipts.ACK`: offsets only rise, and an ack of another
        epoch than the stream's, or past its top, is ignored."""
        self.check()
        stream = self.streams.get(streams.user_key(ack.user))
        if stream is None or stream.epoch != ack.epoch or ack.offset > stream.offset:
            return
        sessions = self.acks.setdefault(ack.user, {})
        held = sessions.get(ack.session)
        if held is None or held.epoch != ack.epoch or held.offset < ack.offset:
            sessions[ack.session] = ack

    def announce(self, event: contract.PresenceEvent) -> None:
        """Route a presence event to the gateways receiving its channel, as pub/sub does."""
        self.check()
        control = contract.Control(contract.OP_PRESENCE, tuple(event))
        loop = asyncio.get_running_loop()
        for gw in self._route(streams.channel_key(event.channel)):
            loop.call_soon(self.members[gw].control, control)

    def top(self, key: str) -> Position:
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(streams.random_id())
        return Position(stream.epoch, stream.offset)


class MemoryBackplane:
    """One gateway's view of a :class:`MemoryCluster`."""

    def __init__(self, cluster: MemoryCluster, gateway_id: str, *,
                 max_connections: int | None = None,
                 heartbeat_interval: float | None = None) -> None:
        """``heartbeat_interval``: heartbeat in the background as the Redis backplane does
        (and report :meth:`BackplaneEvents.registry_lost` when the entry had vanished);
        None: only at :meth:`start` and when the gateway calls :meth:`heartbeat`."""
        self.cluster = cluster
        self.gateway_id = gateway_id
        self.max_connections = max_connections
        self.heartbeat_interval = heartbeat_interval
        self.draining = False
        self.subscribed = False
        self._events: BackplaneEvents | None = None
        self._channels: set[str] = set()
        self._beats: asyncio.Task[None] | None = None
        # Unregistrations that found the backend down, applied when it answers again (the
        # Redis backplane queues and retries them the same way).
        self._gone: list[Registration] = []
        self._unacked: list[Ack] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def unready(self) -> str | None:
        if self.cluster.down or self.gateway_id not in self.cluster.registry:
            return "gateway cannot reach the backend"
        if not self.subscribed:
            return "gateway is not subscribed"
        return None

    @property
    def events(self) -> BackplaneEvents:
        assert self._events is not None, "start() first"
        return self._events

    def start(self, events: BackplaneEvents) -> None:
        """With a ``heartbeat_interval``, call it with the loop running."""
        self._events = events
        self.cluster.members[self.gateway_id] = self
        self.subscribed = True
        self._beat()
        if self.heartbeat_interval is not None:
            self._beats = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        self.hang()
        self.cluster.members.pop(self.gateway_id, None)
        self.cluster.registry.pop(self.gateway_id, None)
        self.subscribed = False

    def hang(self) -> None:
        """Stop heartbeating and leave the registry entry behind, as a hung or crashed
        gateway's entry stays until its TTL: peers see it, but it no longer advances."""
        if self._beats is not None:
            self._beats.cancel()
            self._beats = None

    def reconnect(self) -> None:
        """Pub/sub came back after an outage: what a new subscription tells the gateway."""
        self._flush_gone()
        unacked, self._unacked = self._unacked, []
        for ack in unacked:
            self.ack(ack)
        self.events.reconnecting()
        self.subscribed = True
        self.events.resubscribed()

    async def _heartbeat_loop(self) -> None:
        assert self.heartbeat_interval is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                if await self.heartbeat():
                    # The backend lost its data (FLUSHALL, a restart) while pub/sub stayed up:
                    # publishers find none of our connections until we write them again.
                    await self.events.registry_lost()
            except BackendUnavailable:
                pass  # tried again next beat, as the Redis backplane does

    def deliver(self, msg: Message) -> None:
        if self.subscribed and self._events is not None:
            self._events.message(msg)

    def control(self, control: contract.Control) -> None:
        if self.subscribed and self._events is not None:
            self._events.control(control)

    def _beat(self) -> bool:
        load = self.events.load()
        vanished = self.gateway_id not in self.cluster.registry
        self.cluster.registry[self.gateway_id] = GatewayInfo(
            gateway_id=self.gateway_id, host="127.0.0.1", port=0,
            connections=load.get("connections", 0), ws=load.get("ws", 0),
            sse=load.get("sse", 0), draining=self.draining,
            started_ms=0, heartbeat_ms=contract.now_ms(), ready=not self.draining,
            max_connections=self.max_connections or 0, delivered=load.get("delivered"))
        return vanished

    async def heartbeat(self) -> bool:
        self.cluster.check()
        self._flush_gone()
        return self._beat()

    # -- connections ----------------------------------------------------------------------------

    def _map(self, reg: Registration) -> None:
        self.cluster.conns.setdefault(reg.user, {})[reg.conn_id] = self.gateway_id
        for channel in reg.channels:
            self._present(reg, channel)

    def _present(self, reg: Registration, channel: str) -> None:
        self.cluster.presence.setdefault(channel, {})[reg.conn_id] = \
            contract.presence_value(self.gateway_id, reg.user)

    async def register(self, reg: Registration,
                       stream_keys: list[str]) -> tuple[int, dict[str, Position]]:
        c = self.cluster
        c.check()
        self._map(reg)
        owner = c.sessions.get(reg.session_id)
        if owner is not None and owner != reg.user:
            return contract.SESSION_FOREIGN, {}
        c.sessions[reg.session_id] = reg.user
        claim = contract.SESSION_RESUMED if owner else contract.SESSION_NEW
        return claim, {key: c.top(key) for key in stream_keys}

    async def join(self, reg: Registration, channel: str) -> Position:
        self.cluster.check()
        self._present(reg, channel)
        return self.cluster.top(streams.channel_key(channel))

    async def leave(self, reg: Registration, channel: str) -> None:
        if not self.cluster.down:
            self.cluster.presence.get(channel, {}).pop(reg.conn_id, None)

    def unregister(self, reg: Registration) -> None:
        self._gone.append(reg)
        if not self.cluster.down:
            self._flush_gone()

    def _flush_gone(self) -> None:
        batch, self._gone = self._gone, []
        for reg in batch:
            self.cluster.conns.get(reg.user, {}).pop(reg.conn_id, None)
            self._claim(reg)  # the session outlives the connection, for resume
            for channel in reg.channels:
                self.cluster.presence.get(channel, {}).pop(reg.conn_id, None)

    async def reregister(self, regs: list[Registration]) -> None:
        self.cluster.check()
        for reg in regs:
            self._map(reg)
            self._claim(reg)

    def _claim(self, reg: Registration) -> None:
        """Bind the session to its user unless another user owns it (CLAIM_SESSION_LUA)."""
        self.cluster.sessions.setdefault(reg.session_id, reg.user)

    # -- logs -----------------------------------------------------------------------------------

    async def read_logs(self, ranges: list[tuple[str, int, int]]) -> dict[str, list[Message]]:
        self.cluster.check()
        out: dict[str, list[Message]] = {}
        for key, first, last in ranges:
            stream = self.cluster.streams.get(key)
            log = stream.log if stream is not None else {}
            out[key] = [log[o] for o in range(first, last + 1) if o in log]
        return out

    async def read_tops(self, stream_keys: list[str]) -> dict[str, Position]:
        self.cluster.check()
        found = {k: self.cluster.streams.get(k) for k in stream_keys}
        return {k: Position(s.epoch, s.offset) for k, s in found.items() if s is not None}

    async def retire_epoch(self, stream_key: str, epoch: str) -> bool:
        self.cluster.check()
        stream = self.cluster.streams.get(stream_key)
        if stream is None or stream.epoch != epoch:
            return False
        del self.cluster.streams[stream_key]
        return True

    # -- channels, publishes, registry ----------------------------------------------------------

    async def subscribe_channel(self, channel: str) -> None:
        if self.cluster.down:
            raise ChannelUnavailable(channel)
        self._channels.add(channel)
        self.cluster.channel_subscribers.setdefault(channel, set()).add(self.gateway_id)

    async def unsubscribe_channel(self, channel: str) -> None:
        self._channels.discard(channel)
        self.cluster.channel_subscribers.get(channel, set()).discard(self.gateway_id)

    def ack(self, ack: Ack) -> None:
        try:
            self.cluster.ack(ack)
        except BackendUnavailable:
            self._unacked.append(ack)  # written again when the backend answers, as on Redis

    def announce(self, event: contract.PresenceEvent) -> None:
        with contextlib.suppress(BackendUnavailable):  # at most once, as on Redis
            self.cluster.announce(event)

    async def publish(self, channel: str, data: Any) -> Published:
        contract.pack_tail(data)  # what cannot be encoded is refused as the real one does
        return self.cluster.publish(streams.channel_key(channel), data)

    async def gateways(self) -> list[GatewayInfo]:
        self.cluster.check()
        members = self.cluster.members
        return [dataclasses.replace(g, listening=g.gateway_id in members and
                                    members[g.gateway_id].subscribed)
                for g in self.cluster.registry.values()]


def factory(cluster: MemoryCluster, **kwargs: Any) -> Callable[[str, Any], MemoryBackplane]:
    """For :class:`gateway.app.Gateway`'s ``backplane`` argument."""
    return lambda gateway_id, _metrics: MemoryBackplane(cluster, gateway_id, **kwargs)
