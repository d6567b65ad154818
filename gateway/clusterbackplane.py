"""The gateway's backplane on Redis Cluster: the second implementation of the port.

It is :class:`~gateway.backplane.RedisBackplane` with three parts replaced (docs/scaling.md):

- pub/sub is sharded (:class:`~gateway.sharded.ShardedSubscriber`, one connection per master):
  the gateway subscribes to the channel of every user it holds a connection of
  (``sb:{u:USER}:live``), to broadcast (``sb:{b}:live``) and to the channels its clients
  joined (``sb:{c:NAME}:live``), and to its own control channel (``sb:{gw:ID}:control``,
  the router's drain command: on one node that travels on ``sb:gw:ID``). A user's channel
  is subscribed, and confirmed, before the registration reads the tops, so everything
  published after them reaches us;
- scripts run by EVAL inside pipelines: a promoted replica has an empty script cache, and a
  cluster pipeline cannot recover from NOSCRIPT;
- the canary pings every master link through a channel in a slot that master owns; a lost
  subscription (MOVED, a migrated slot, a dead node, a deaf link) is counted, subscribed again
  at the slot's new owner and caught up from the logs like a pub/sub reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.cluster import ClusterPipeline

from gateway import clusterwebhookstate, sharded
from gateway.backplane import RedisBackplane
from gateway.canary import deadline_for
from gateway.clusterwebhookstate import ClusterWebhookState
from gateway.errors import BackendUnavailable, ChannelUnavailable, unavailable
from gateway.ports import BackplaneEvents, Registration
from gateway.webhookstate import WebhookState
from switchboard import contract, streams
from switchboard.clusterclient import connect_cluster, tag_for_slot
from switchboard.clusterstore import ClusterStore, cluster_pipelined
from switchboard.contract import GatewayInfo, Message
from switchboard.pipelined import Script
from switchboard.streams import Position

log = logging.getLogger("switchboard.gateway")

class ClusterBackplane(RedisBackplane):
    def _open_clients(self) -> tuple[Any, ClusterStore]:
        s = self.settings
        client, self._cluster_url = connect_cluster(s.redis_url, s.redis_timeout,
                                                    max_connections=64)
        name = f"{s.prefix}publish:{self.gateway_id}"
        self._users: dict[str, int] = {}  # user -> local registrations holding its channel
        self._subscriber = sharded.ShardedSubscriber(
            client, self._cluster_url, client_name=f"{s.prefix}pubsub:{self.gateway_id}",
            timeout=s.redis_timeout,
            canary_channel=lambda slot: self.keys.canary_channel(self.gateway_id,
                                                                 tag_for_slot(slot)),
            on_message=self._on_message, on_lost=self._on_lost,
            on_restored=self._on_restored,
            canary_deadline=deadline_for(s.redis_timeout, s.heartbeat_interval))
        return client, ClusterStore(client, s, cluster_pipelined(client, s, name))

    def _open_webhooks(self) -> WebhookState:
        return ClusterWebhookState(self.settings, self.gateway_id,
                                   clusterwebhookstate.connection(self.settings,
                                                                  self.gateway_id))

    async def _script(self, client: Any, script: Script, keys: list[str],
                      args: list[Any]) -> Any:
        queued = client.eval(script.source, len(keys), *keys, *args)
        if isinstance(client, ClusterPipeline):
            # Queued. Not awaited: awaiting a cluster pipeline (re)initialises it, and that
            # empties its queue.
            return None
        return await queued

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, events: BackplaneEvents) -> None:
        super().start(events)
        self._subscriber.start()
        self._broadcasts = self.keys.live_channel(streams.BROADCAST_KEY)
        self._control = self.keys.control_channel(self.gateway_id)
        self._broadcasts_once = False  # confirmed at least once: the gateway may be ready
        self._spawn_broadcasts()

    def _background(self) -> dict[str, Coroutine[Any, Any, None]]:
        # no single pub/sub connection: the sharded subscriber runs its own repair loop
        loops = super()._background()
        loops.pop("pubsub").close()
        return loops

    async def stop(self) -> None:
        await super().stop()
        await self._subscriber.stop()

    def _spawn_broadcasts(self) -> None:
        """Subscribe to broadcasts and our control channel, retrying until both are
        confirmed once; later losses the subscriber repairs by itself."""
        task = asyncio.get_running_loop().create_task(self._want_broadcasts())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _want_broadcasts(self) -> None:
        while not self._stopped:
            try:
                await self._subscriber.want(self._broadcasts)
                await self._subscriber.want(self._control)
                self._broadcasts_once = True
                return
            except sharded.ShardedError as exc:
                log.warning("subscribing to broadcasts: %s (retrying)", exc)
                await asyncio.sleep(1.0)

    # -- readiness and the canary -------------------------------------------------------------

    @property
    def unready(self) -> str | None:
        if not self.registered:
            return "gateway cannot reach Redis"
        if not self._broadcasts_once:
            return "gateway is not subscribed to broadcasts and its control channel yet"
        lost = self._subscriber.unready
        return None if lost is None else f"sharded pub/sub path not proven: {lost}"

    @property
    def listening(self) -> bool:
        return self._subscriber.unready is None

    def _queue_ping(self, pipe: Any,
                    now: int) -> Callable[[list[Any]], Coroutine[Any, Any, None]]:
        async def settle(replies: list[Any]) -> None:
            await self._subscriber.ping(now)
        return settle

    def _check_canary(self) -> None:
        self._subscriber.check()

    # -- subscriptions ------------------------------------------------------------------------

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        self._dispatch(payload)

    def _on_lost(self, channels: list[str], reason: str) -> None:
        self.metrics.subscription_lost(reason)
        log.warning("%d sharded subscription(s) lost (%s): subscribing again at the slots' "
                    "owners", len(channels), reason)
        # Until they are back and caught up, a live offset at or below what we delivered may
        # be a reused one (a failover lost writes): hold every followed stream.
        self.events.reconnecting()

    def _on_restored(self, channels: list[str]) -> None:
        self.metrics.pubsub_reconnected()
        log.info("%d sharded subscription(s) restored", len(channels))
        self.events.resubscribed()

    async def _want(self, channel: str, what: str) -> None:
        try:
            await self._subscriber.want(channel)
        except sharded.ShardedError as exc:
            self.metrics.redis_error(what)
            raise BackendUnavailable(f"{what}: {exc}") from exc

    async def register(self, reg: Registration,
                       stream_keys: list[str]) -> tuple[int, dict[str, Position]]:
        # Subscribed (confirmed) before the tops are read: a message published after them is
        # then on its way to us, exactly as a map entry makes it on one node.
        channel = self.keys.live_channel(streams.user_key(reg.user))
        self._users[reg.user] = self._users.get(reg.user, 0) + 1
        try:
            # broadcasts too: after a loss the subscriber restores them by itself, but a
            # registration must not read the top before they are confirmed again
            await self._want(self._broadcasts, "register")
            await self._want(channel, "register")
            return await super().register(reg, stream_keys)
        except BaseException:
            self._release_user(reg.user)
            raise

    async def _register_calls(self, batch: list[tuple[Registration, list[str]]]
                              ) -> list[list[Any]]:
        """A connection's keys span slots: its map entry, session claim, tops and presence
        entries are separate commands, in one cluster pipeline for the batch."""
        s = self.settings
        session_ttl = contract.session_ttl_ms(s.history_ttl, s.heartbeat_interval)
        pipe = self.redis.pipeline(transaction=False)
        # Per registration, in this order (the replies are read back by position): the map
        # entry, the session claim, the top of each stream, a presence entry per channel.
        for reg, stream_keys in batch:
            pipe.hset(self.keys.conns(reg.user), reg.conn_id, self.gateway_id)
            await self._script(pipe, self._claim_session, [self.keys.session(reg.session_id)],
                               [reg.user, session_ttl])
            for key in stream_keys:
                await self._top(pipe, key)
            for channel in reg.channels:
                self._present(pipe, reg, channel)
        results = await pipe.execute()
        replies: list[list[Any]] = []
        at = 0
        for reg, stream_keys in batch:
            reply = [results[at + 1]]
            for top in results[at + 2 : at + 2 + len(stream_keys)]:
                reply += [top[0], top[1]]
            replies.append(reply)
            at += 2 + len(stream_keys) + len(reg.channels)
        return replies

    async def _fetch_logs(self, ranges: list[tuple[str, int, int]]) -> list[list[Message]]:
        """One cluster pipeline: each range goes to its stream's master."""
        pipe = self.redis.pipeline(transaction=False)
        for key, first, last in ranges:
            pipe.xrange(self.keys.log(key), f"{first}-0", f"{last}-0", count=last - first + 1)
        return [contract.log_messages(entries) for entries in await pipe.execute()]

    def unregister(self, reg: Registration) -> None:
        self._release_user(reg.user)
        super().unregister(reg)

    def _release_user(self, user: str) -> None:
        left = self._users.get(user, 0) - 1
        if left > 0:
            self._users[user] = left
            return
        self._users.pop(user, None)
        self._subscriber.drop(self.keys.live_channel(streams.user_key(user)))

    async def subscribe_channel(self, channel: str) -> None:
        try:
            await self._subscriber.want(self.keys.live_channel(streams.channel_key(channel)))
        except sharded.ShardedError:
            raise ChannelUnavailable(channel) from None

    async def unsubscribe_channel(self, channel: str) -> None:
        self._subscriber.drop(self.keys.live_channel(streams.channel_key(channel)))

    async def _send_announcements(self, batch: list[contract.PresenceEvent]) -> None:
        """On the channel's sharded channel, where its messages travel: one cluster pipeline,
        each SPUBLISH at the master of its channel's slot."""
        pipe = self.redis.pipeline(transaction=False)
        for event in batch:
            pipe.spublish(self.keys.live_channel(streams.channel_key(event.channel)),
                          event.pack())
        await pipe.execute()

    async def gateways(self) -> list[GatewayInfo]:
        """The registry; whether a gateway listens is not known here (a gateway's sharded
        subscriptions are spread over the masters), so ``listening`` stays unknown."""
        with unavailable("gateways"):
            return await self._store.gateways()  # listening: None, unknown

