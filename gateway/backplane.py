"""The Redis implementation of the gateway's backplane port (:class:`gateway.ports.Backplane`).

Registry heartbeat, connection map, logs, channel subscriptions, client publishes and the
pub/sub listener: the one object of the gateway that talks to Redis. Three connections: a
command client with short timeouts, a pipelined connection for client publishes, and a
dedicated pub/sub connection without a read timeout (it is idle most of the time). A pub/sub
connection can die silently, so every heartbeat also publishes a ping to the gateway's own
channel: if pings stop arriving, the listener is torn down and rebuilt.

Redis' and the sockets' errors are translated here (:func:`gateway.errors.unavailable`): callers
see :class:`~gateway.errors.BackendUnavailable` only. What happens is reported to one
:class:`~gateway.ports.BackplaneEvents` handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from gateway import retry, webhookstate
from gateway.acks import AckBatch
from gateway.canary import Canary, deadline_for
from gateway.errors import BackendUnavailable, ChannelUnavailable, unavailable
from gateway.metrics import GatewayMetrics
from gateway.ports import BackplaneEvents, Registration
from gateway.pubsub import PubSubConnection, PubSubError
from gateway.sharedreads import SharedReads
from gateway.shutdown import stop_tasks
from gateway.webhookstate import WebhookState
from switchboard import contract, receipts, resp, streams
from switchboard import whcontract as wh
from switchboard.config import GatewaySettings
from switchboard.contract import GatewayInfo, Message
from switchboard.pipelined import Arg, PipelinedRedis, Script
from switchboard.store import Published, Store, Target, connect, pipelined, text
from switchboard.streams import Position

log = logging.getLogger("switchboard.gateway")

OP_PING = "ping"


class RedisBackplane:
    def __init__(self, settings: GatewaySettings, gateway_id: str,
                 metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.keys = contract.Keys(settings.prefix)
        self.metrics = metrics
        self._events: BackplaneEvents | None = None
        self._registered: dict[str, Any] = {}  # script sha -> redis-py's script object
        self._register = Script(contract.REGISTER_LUA)
        # Registrations of connecting clients, a storm's hot path (see _register_calls).
        self._registrar: PipelinedRedis | None = None
        self._reads = SharedReads(self._fetch_logs, metrics.log_reads)
        self.redis, self._store = self._open_clients()
        self._ensure_meta = Script(contract.ENSURE_META_LUA)
        self._claim_session = Script(contract.CLAIM_SESSION_LUA)
        self._retire_epoch = Script(contract.RETIRE_EPOCH_LUA)
        self.registered = False  # our registry key exists: publishers route to us
        self.subscribed = False
        self.draining = False
        self.started_ms = contract.now_ms()
        # Proves the pub/sub path end to end (readiness).
        self.canary = Canary(deadline_for(settings.redis_timeout, settings.heartbeat_interval))
        self._subscription = 0  # counts subscriptions made, so a ping sent on an old one is ignored
        self._gone: list[Registration] = []
        self._gone_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: PubSubConnection | None = None
        self._listener_reset = asyncio.Event()
        self._beat_now = asyncio.Event()  # a new subscription wants its proving ping at once
        self._stopped = False
        # Channel name -> confirmation of our SUBSCRIBE to sb:ch:NAME (shared by joiners).
        self._channels: dict[str, asyncio.Future[None]] = {}
        self._joining: list[tuple[Registration, list[str],
                                  asyncio.Future[tuple[int, dict[str, Position]]]]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        # Presence events waiting for this loop iteration's batch, and the batches out.
        self._announcements: list[contract.PresenceEvent] = []
        self._announcer: asyncio.Future[None] | None = None
        # Acks of user streams gathered for the next write, and the loop writing them.
        self._acks = AckBatch()
        self._acker: asyncio.Future[None] | None = None
        # Online/offline and join/leave state for the webhook dispatcher, when it is on.
        self.webhooks = self._open_webhooks() if settings.webhook_url else None

    def _open_clients(self) -> tuple[Any, Store]:
        """The command client and the store for client publishes."""
        s = self.settings
        # Idempotent writes and reads only (map, sessions, positions, logs): safe to retry.
        client = connect(s.redis_url, s.redis_timeout, reconnect_retry=True)
        # read (and refused, ValueError) at start-up, not at the first pub/sub connect
        self._pubsub_endpoint = resp.Endpoint.from_url(s.redis_url)
        self._registrar = PipelinedRedis(s.redis_url, s.redis_timeout,
                                         client_name=f"{s.prefix}register:{self.gateway_id}",
                                         scripts=[self._register])
        # Client publishes go over a pipelined connection, opened at the first one: redis-py
        # would cost this event loop ~0.3 ms of CPU per publish, time it delivers nothing.
        return client, Store(client, s, pipelined(s, f"{s.prefix}publish:{self.gateway_id}"))

    def _open_webhooks(self) -> WebhookState:
        return WebhookState(self.settings, self.gateway_id,
                            webhookstate.connection(self.settings, self.gateway_id))

    async def _script(self, client: Any, script: Script, keys: list[str],
                      args: list[Any]) -> Any:
        """Run (or, on a pipeline, queue) ``script``: EVALSHA, loaded again after a flush."""
        registered = self._registered.get(script.sha)
        if registered is None:
            registered = self._registered[script.sha] = self.redis.register_script(
                script.source)
        return await registered(keys=keys, args=args, client=client)

    @property
    def unready(self) -> str | None:
        if not self.registered:
            return "gateway cannot reach Redis"
        if not self.subscribed:
            return "gateway is not subscribed to Redis pub/sub"
        if (lost := self.canary.not_ready) is not None:
            return f"pub/sub path not proven: {lost}"
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def events(self) -> BackplaneEvents:
        assert self._events is not None, "start() first"
        return self._events

    def start(self, events: BackplaneEvents) -> None:
        self._events = events
        self._tasks = [asyncio.create_task(coro, name=name)
                       for name, coro in self._background().items()]

    def _background(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The loops that run from start() to stop(), by name."""
        loops = {"heartbeat": self._heartbeat_loop(), "pubsub": self._listen_loop(),
                 "unregister": self._unregister_loop()}
        if self.webhooks is not None:
            loops["webhook_state"] = self.webhooks.run()
        return loops

    async def stop(self) -> None:
        """Deregister (publishers stop routing to us), then stop background work."""
        with contextlib.suppress(BackendUnavailable):
            await self._flush_gone()
        await self._flush_announcements()
        await self._stop_acks()
        await self._forget_roster()
        with contextlib.suppress(RedisError, OSError):
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.gateway(self.gateway_id))
            if self.webhooks is not None and self.webhooks.cluster:
                pipe.delete(self.webhooks.keys.alive(self.gateway_id))  # swept as on one node
            pipe.zrem(self.keys.gateways(), self.gateway_id)
            await pipe.execute()
        # The loops also check this flag: a cancellation that lands while redis-py is inside
        # a command can be swallowed there (the task then waits for its next event forever),
        # and shutdown must not depend on it.
        self._stopped = True
        self._gone_event.set()
        self._listener_reset.set()
        self._beat_now.set()
        await stop_tasks(self._tasks, self.settings.redis_timeout + 1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), self.settings.redis_timeout)
        self._store.pipelined.close()
        if self._registrar is not None:
            self._registrar.close()
        if self.webhooks is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.webhooks.aclose(), self.settings.redis_timeout)
        if self._pubsub is not None:
            self._pubsub.close()

    async def _forget_roster(self) -> None:
        """At a clean stop, once every leave is written: nothing of ours is left to sweep."""
        if self.webhooks is None or self.events.load().get("connections", 0):
            return
        if await self.webhooks.flushed(self.settings.redis_timeout):
            with contextlib.suppress(BackendUnavailable):
                await self.webhooks.forget_roster()

    # -- registry -----------------------------------------------------------------------------

    async def heartbeat(self) -> bool:
        """Write our registry entry; True if it had vanished (Redis restarted or flushed, or
        we were silent so long that it expired) and our connections must be re-registered."""
        s = self.settings
        load = self.events.load()
        now = contract.now_ms()
        key = self.keys.gateway(self.gateway_id)
        pipe = self.redis.pipeline(transaction=False)
        entry: dict[Any, Any] = contract.registry_entry(GatewayInfo(
            gateway_id=self.gateway_id, host=s.advertise_host or s.host, port=s.port,
            connections=load.get("connections", 0), ws=load.get("ws", 0),
            sse=load.get("sse", 0), draining=self.draining, started_ms=self.started_ms,
            heartbeat_ms=now, ready=self.listening and not self.draining,
            max_connections=s.max_connections or 0, delivered=load.get("delivered")))
        pipe.hset(key, mapping=entry)
        # Three missed heartbeats and the key is gone: publishers then treat us as dead.
        pipe.pexpire(key, contract.registry_ttl_ms(s.heartbeat_interval))
        pipe.zadd(self.keys.gateways(), {self.gateway_id: now})
        settle = self._queue_ping(pipe, now)
        # Not before the webhook state's first write: it moves a predecessor's roster aside.
        hooks = self.webhooks if self.webhooks is not None and self.webhooks.started else None
        if hooks is not None:
            if hooks.cluster:  # beside the roster: its move checks it in the same call
                # a little shorter-lived than the registry entry, which is written first
                pipe.set(hooks.keys.alive(self.gateway_id), 1,
                         px=contract.registry_ttl_ms(s.heartbeat_interval) - 1000)
            pipe.hset(hooks.roster, wh.ROSTER_INC, hooks.incarnation)
            pipe.sadd(hooks.keys.rosters(), self.gateway_id)
        try:
            with unavailable("heartbeat"):
                results = await pipe.execute()
        except BackendUnavailable:
            self.canary.withdraw(now)  # never published: not a verdict on the subscription
            raise
        await settle(results[3:])
        # HSET counts the fields it created. A roster that had vanished was taken by the
        # webhook dispatcher's sweep (or lost with Redis): our connections must be written
        # again, as after a lost registry entry.
        roster_lost = hooks is not None and int(results[-2]) > 0
        return int(results[0]) > 0 or roster_lost

    @property
    def listening(self) -> bool:
        """Our subscriptions are in place (what the registry entry says as ``ready``)."""
        return self.subscribed

    def _queue_ping(self, pipe: Any,
                    now: int) -> Callable[[list[Any]], Coroutine[Any, Any, None]]:
        """Queue the canary's ping on the heartbeat's pipeline; what to do with its reply."""
        pipe.publish(self.keys.gateway_channel(self.gateway_id),
                     contract.pack_control(OP_PING, now))
        subscription = self._subscription if self.subscribed else None
        if subscription is not None:
            self.canary.sending(now)

        async def settle(replies: list[Any]) -> None:
            if subscription is not None and subscription == self._subscription \
                    and self.subscribed:
                self.canary.reached(int(replies[0]))  # PUBLISH answers how many it reached
        return settle

    def _check_canary(self) -> None:
        """After a heartbeat: tear down a subscription whose pings stopped coming back."""
        if self.subscribed and (lost := self.canary.failed) is not None:
            # The connection may look fine: it is deaf, or Redis dropped our subscription.
            log.warning("pub/sub subscription lost (%s): subscribing again", lost)
            self.metrics.subscription_lost("canary")
            self._listener_reset.set()

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        first = True
        while not self._stopped:
            try:
                vanished = await self.heartbeat()
                if vanished and not first:
                    # Publishers no longer find our connections (Redis restarted empty, or
                    # they dropped our map entries while we were silent): put them back
                    # before we say we are ready again.
                    log.warning("registry entry was gone: re-registering connections")
                    await self.events.registry_lost()
                first = False
                self.registered = True
            except BackendUnavailable as exc:
                self.registered = False
                self.metrics.redis_error("heartbeat")
                log.warning("heartbeat failed: %s", exc)
            self._check_canary()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), interval)
            self._beat_now.clear()

    # -- connections --------------------------------------------------------------------------

    async def register(
        self, reg: Registration, stream_keys: list[str]
    ) -> tuple[int, dict[str, Position]]:
        """Map the connection to us, claim its session, and read the top of its streams.

        The map entry is written before the positions are read, in one pipeline, so every
        message published after the top we report is routed here. Returns the session claim
        (``contract.SESSION_*``) and the tops. Registrations made in the same loop iteration
        share one pipeline: a reconnect storm costs a round trip per batch, not per client.
        """
        fut: asyncio.Future[tuple[int, dict[str, Position]]] = (
            asyncio.get_running_loop().create_future())
        self._joining.append((reg, stream_keys, fut))
        if len(self._joining) == 1:
            asyncio.get_running_loop().call_soon(self._flush_registrations)
        return await fut

    def _flush_registrations(self) -> None:
        batch, self._joining = self._joining, []
        task = asyncio.ensure_future(self._register_batch(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _register_batch(
        self,
        batch: list[tuple[Registration, list[str],
                          asyncio.Future[tuple[int, dict[str, Position]]]]],
    ) -> None:
        try:
            with unavailable("register"):
                replies = await self._register_calls([(reg, keys) for reg, keys, _ in batch])
        except BackendUnavailable as exc:
            self.metrics.redis_error("register")
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (reg, stream_keys, fut), reply in zip(batch, replies, strict=True):
            # a connection refused its session (4004) is closed before it is welcomed
            if self.webhooks is not None and int(reply[0]) != contract.SESSION_FOREIGN:
                self.webhooks.connected(reg)
            if not fut.done():
                fut.set_result((int(reply[0]), {
                    key: Position(text(reply[1 + 2 * i]), int(reply[2 + 2 * i]))
                    for i, key in enumerate(stream_keys)}))

    async def _register_calls(self, batch: list[tuple[Registration, list[str]]]
                              ) -> list[list[Any]]:
        """Register each connection; per connection ``[claim, epoch, offset, ...]`` (the tops
        in the order of its stream keys). One script call each, all in one write over the
        pipelined connection: redis-py's pipeline cost a connect storm twice the CPU."""
        s = self.settings
        session_ttl = contract.session_ttl_ms(s.history_ttl, s.heartbeat_interval)
        meta_ttl = contract.ms(s.meta_ttl)
        calls: list[tuple[list[Arg], list[Arg]]] = []
        for reg, stream_keys in batch:
            keys: list[Arg] = [self.keys.conns(reg.user), self.keys.session(reg.session_id)]
            for key in stream_keys:
                keys += [self.keys.meta(key), self.keys.log(key)]
            keys += [self.keys.presence(channel) for channel in reg.channels]
            calls.append((keys, [reg.conn_id, self.gateway_id, reg.user, session_ttl, meta_ttl,
                                 len(stream_keys),
                                 contract.presence_value(self.gateway_id, reg.user),
                                 *(streams.random_id() for _ in stream_keys)]))
        assert self._registrar is not None
        return await self._registrar.run_script_many(self._register, calls)

    def _present(self, pipe: Any, reg: Registration, channel: str) -> None:
        pipe.hset(self.keys.presence(channel), reg.conn_id,
                  contract.presence_value(self.gateway_id, reg.user))

    async def _top(self, pipe: Any, key: str) -> None:
        """Queue the read of a stream's top, creating its epoch if it has none yet."""
        await self._script(pipe, self._ensure_meta, [self.keys.meta(key), self.keys.log(key)],
                           [streams.random_id(), contract.ms(self.settings.meta_ttl)])

    async def join(self, reg: Registration, channel: str) -> Position:
        """Presence entry for one channel and the top of its stream, in one round trip."""
        key = streams.channel_key(channel)
        pipe = self.redis.pipeline(transaction=False)
        self._present(pipe, reg, channel)
        await self._top(pipe, key)
        try:
            with unavailable("join"):
                results = await pipe.execute()
        except BackendUnavailable:
            self.metrics.redis_error("join")
            raise
        raw = results[1]
        if self.webhooks is not None:
            self.webhooks.joined(reg, channel)
        return Position(text(raw[0]), int(raw[1]))

    async def leave(self, reg: Registration, channel: str) -> None:
        if self.webhooks is not None:
            self.webhooks.left(reg, channel)
        try:
            with unavailable("leave"):
                await self.redis.hdel(self.keys.presence(channel), reg.conn_id)
        except BackendUnavailable:
            self.metrics.redis_error("leave")  # the entry dies with our heartbeat anyway

    async def read_logs(self, ranges: list[tuple[str, int, int]]) -> dict[str, list[Message]]:
        """Log entries ``first..last`` of each stream, in one round trip (shared with whoever
        reads the same range at the same time: a storm's resumes)."""
        if not ranges:
            return {}
        try:
            with unavailable("read_log"):
                return await self._reads.read(ranges)
        except BackendUnavailable:
            self.metrics.redis_error("read_log")
            raise

    async def _fetch_logs(self, ranges: list[tuple[str, int, int]]) -> list[list[Message]]:
        """The entries of each range, over the pipelined connection (one write)."""
        assert self._registrar is not None
        replies = await self._registrar.execute_many([
            ("XRANGE", self.keys.log(key), f"{first}-0", f"{last}-0", "COUNT", last - first + 1)
            for key, first, last in ranges])
        return [contract.log_messages(entries) for entries in replies]

    async def read_tops(self, stream_keys: list[str]) -> dict[str, Position]:
        """Current (epoch, offset) of streams that exist."""
        pipe = self.redis.pipeline(transaction=False)
        for key in stream_keys:
            pipe.hmget(self.keys.meta(key), "epoch", "offset")
        with unavailable("read_tops"):
            results = await pipe.execute()
        return {
            key: Position(text(epoch), int(offset))
            for key, (epoch, offset) in zip(stream_keys, results, strict=True)
            if epoch is not None and offset is not None
        }

    async def retire_epoch(self, stream_key: str, epoch: str) -> bool:
        """Forget ``stream_key``'s position if it is still in ``epoch`` (see the script)."""
        try:
            with unavailable("retire_epoch"):
                retired = await self._script(
                    self.redis, self._retire_epoch,
                    [self.keys.meta(stream_key), self.keys.log(stream_key)], [epoch])
        except BackendUnavailable:
            self.metrics.redis_error("retire_epoch")
            raise
        return bool(retired)

    async def reregister(self, regs: list[Registration], chunk: int = 1000) -> None:
        """Write the map, session and presence entries of live connections again."""
        if self.webhooks is not None:
            self.webhooks.rewritten(regs)
        ttl = contract.session_ttl_ms(self.settings.history_ttl,
                                      self.settings.heartbeat_interval)
        for start in range(0, len(regs), chunk):
            pipe = self.redis.pipeline(transaction=False)
            for reg in regs[start : start + chunk]:
                pipe.hset(self.keys.conns(reg.user), reg.conn_id, self.gateway_id)
                await self._script(pipe, self._claim_session,
                                   [self.keys.session(reg.session_id)], [reg.user, ttl])
                for channel in reg.channels:
                    self._present(pipe, reg, channel)
            with unavailable("reregister"):
                await pipe.execute()

    def unregister(self, reg: Registration) -> None:
        """Queued and flushed in batches: a reconnect storm must not cost a round trip each."""
        if self.webhooks is not None:
            self.webhooks.disconnected(reg)
        self._gone.append(reg)
        self._gone_event.set()

    async def _flush_gone(self) -> None:
        if not self._gone:
            return
        batch, self._gone = self._gone, []
        ttl = contract.ms(self.settings.history_ttl)
        pipe = self.redis.pipeline(transaction=False)
        for reg in batch:
            pipe.hdel(self.keys.conns(reg.user), reg.conn_id)
            # The session outlives the connection by the replay window, for resume: set again,
            # not PEXPIRE (a connection older than the window has let its key lapse), and by
            # the claim script, so a connection refused another user's session (4004) never
            # makes that session its own.
            await self._script(pipe, self._claim_session, [self.keys.session(reg.session_id)],
                               [reg.user, ttl])
            for channel in reg.channels:
                pipe.hdel(self.keys.presence(channel), reg.conn_id)
        try:
            with unavailable("unregister"):
                await pipe.execute()
        except BackendUnavailable:
            self.metrics.redis_error("unregister")
            self._gone = batch + self._gone  # retried; stale entries are harmless meanwhile
            raise

    async def _unregister_loop(self) -> None:
        while True:
            await self._gone_event.wait()
            if self._stopped:
                return
            self._gone_event.clear()
            try:
                await self._flush_gone()
            except BackendUnavailable:
                await asyncio.sleep(1.0)
                self._gone_event.set()

    # -- presence events ----------------------------------------------------------------------

    def announce(self, event: contract.PresenceEvent) -> None:
        """Queued: the events of one loop iteration (a storm's joins) go out in one write."""
        self._announcements.append(event)
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.ensure_future(self._announce_loop())

    async def _announce_loop(self) -> None:
        """One batch at a time, so the events of a connection reach Redis in their order;
        at most once: a failed batch is counted as lost, not sent again."""
        await asyncio.sleep(0)  # let this loop iteration's events join the batch
        while self._announcements:
            batch, self._announcements = self._announcements, []
            try:
                with unavailable("announce"):
                    await self._send_announcements(batch)
                self.metrics.presence("announced", len(batch))
            except BackendUnavailable as exc:
                self.metrics.redis_error("announce")
                self.metrics.presence("lost", len(batch))
                log.warning("%d presence events not sent: %s", len(batch), exc)

    async def _flush_announcements(self) -> None:
        """At a clean stop: send the leaves of the connections just closed."""
        if self._announcer is not None and not self._announcer.done():
            await asyncio.wait([self._announcer], timeout=self.settings.redis_timeout * 2)

    async def _send_announcements(self, batch: list[contract.PresenceEvent]) -> None:
        assert self._registrar is not None
        await self._registrar.execute_many([
            ("PUBLISH", self.keys.channel_channel(e.channel), e.pack()) for e in batch])

    # -- acks ---------------------------------------------------------------------------------

    def ack(self, ack: receipts.Ack) -> None:
        self._acks.add(ack)
        if self._acker is None or self._acker.done():
            self._acker = asyncio.ensure_future(self._ack_loop())

    async def _ack_loop(self) -> None:
        while len(self._acks) and not self._stopped:
            await asyncio.sleep(receipts.ACK_INTERVAL)
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        groups = self._acks.take()
        if not groups:
            return
        try:
            with unavailable("ack"):
                await self._write_acks(groups)
            self.metrics.acks("written", sum(len(g) for g in groups))
        except BackendUnavailable as exc:
            # Acks are cumulative, so writing them again later is harmless; the batch keeps
            # one per session, so waiting ones stay bounded while Redis is away.
            self.metrics.redis_error("ack")
            self.metrics.acks("retried", sum(len(g) for g in groups))
            log.warning("acks not written: %s", exc)
            for group in groups:
                for ack in group:
                    self._acks.add(ack)

    async def _write_acks(self, groups: list[list[receipts.Ack]]) -> None:
        """One pipeline, one call per user: every key of a call is in the user's slot."""
        pipe = self.redis.pipeline(transaction=False)
        for group in groups:
            keys, args = receipts.ack_call(self.settings.prefix, self.settings.meta_ttl, group)
            await self._script(pipe, receipts.ACK, keys, args)
        await pipe.execute()

    async def _stop_acks(self) -> None:
        """At a clean stop: write what the closing connections acked last."""
        acker = self._acker
        if acker is not None and not acker.done():
            # it writes within one interval; a cancel could drop a batch it has taken
            await asyncio.wait([acker], timeout=self.settings.redis_timeout * 2)
            acker.cancel()
        with contextlib.suppress(BackendUnavailable, TimeoutError):
            await asyncio.wait_for(self._flush_acks(), self.settings.redis_timeout * 2)

    # -- client publishes and the registry --------------------------------------------------

    async def publish(self, channel: str, data: Any) -> Published:
        with unavailable("publish"):
            return await self._store.publish(Target("c", channel), data)

    async def gateways(self) -> list[GatewayInfo]:
        """The registry, each entry with whether its gateway's pub/sub channel is listened
        to right now (``listening``): evidence of life that does not lag a heartbeat."""
        with unavailable("gateways"):
            infos = await self._store.gateways()
            if not infos:
                return infos
            counts = await self.redis.pubsub_numsub(
                *(self.keys.gateway_channel(g.gateway_id) for g in infos))
        return [dataclasses.replace(g, listening=int(n) > 0)
                for g, (_, n) in zip(infos, counts, strict=True)]

    # -- channel subscriptions ----------------------------------------------------------------

    async def subscribe_channel(self, channel: str) -> None:
        """Make sure we receive ``sb:ch:NAME``; returns once Redis confirmed the SUBSCRIBE.

        Only then may a joiner read the channel's top: anything published afterwards reaches us.
        """
        fut = self._channels.get(channel)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._channels[channel] = fut
            if self._pubsub is not None and self.subscribed:
                # On failure the listener reconnects and subscribes to every wanted channel.
                with contextlib.suppress(PubSubError, OSError):
                    self._pubsub.subscribe(self.keys.channel_channel(channel))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.settings.redis_timeout * 2)
        except TimeoutError:
            raise ChannelUnavailable(channel) from None

    async def unsubscribe_channel(self, channel: str) -> None:
        fut = self._channels.pop(channel, None)
        if fut is not None and not fut.done():
            # A join still waiting for this subscription learns it will not come.
            fut.set_exception(ChannelUnavailable(channel))
            fut.exception()  # retrieved: nobody else may be waiting
        if self._pubsub is not None and self.subscribed:
            with contextlib.suppress(PubSubError, OSError):
                self._pubsub.unsubscribe(self.keys.channel_channel(channel))

    def _confirmed(self, channel_name: bytes) -> None:
        name = channel_name.decode()
        prefix = self.keys.channel_channel("")
        if name.startswith(prefix):
            fut = self._channels.get(name[len(prefix) :])
            if fut is not None and not fut.done():
                fut.set_result(None)

    # -- pub/sub ------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        attempt = 0
        first = True
        core = {self.keys.gateway_channel(self.gateway_id).encode(),
                self.keys.broadcast_channel().encode()}
        while not self._stopped:
            loop = asyncio.get_running_loop()
            confirmed: set[bytes] = set()
            ready: asyncio.Future[None] = loop.create_future()

            def on_subscribed(name: bytes, confirmed: set[bytes] = confirmed,
                              ready: asyncio.Future[None] = ready) -> None:
                confirmed.add(name)
                if core <= confirmed and not ready.done():
                    ready.set_result(None)
                self._confirmed(name)

            conn: PubSubConnection | None = None
            try:
                conn = await PubSubConnection.open(
                    self._pubsub_endpoint, connect_timeout=self.settings.redis_timeout,
                    client_name=f"{self.settings.prefix}pubsub:{self.gateway_id}",
                    on_message=self._dispatch, on_subscribed=on_subscribed,
                )
                if not first:
                    self.events.reconnecting()
                # Wanted channels get fresh confirmations from this connection.
                for name, fut in list(self._channels.items()):
                    if fut.done():
                        self._channels[name] = loop.create_future()
                conn.subscribe(*(c.decode() for c in core),
                               *(self.keys.channel_channel(name) for name in self._channels))
                # Only once Redis confirmed may we read tops to catch up: anything published
                # after that point reaches us live.
                await asyncio.wait_for(asyncio.shield(ready), self.settings.redis_timeout)
                self._pubsub = conn
                self._subscription += 1
                self.canary.reset()
                self.subscribed = True
                self._beat_now.set()
                if not first:
                    self.metrics.pubsub_reconnected()
                    log.info("pub/sub resubscribed")
                    # Envelopes published while we were away are in the logs only.
                    self.events.resubscribed()
                first = False
                attempt = 0
                self._listener_reset.clear()
                reset: asyncio.Future[Any] = asyncio.ensure_future(self._listener_reset.wait())
                try:
                    await asyncio.wait([reset, conn.lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reset.cancel()
                if conn.lost.done() and not self._stopped:
                    self.metrics.subscription_lost("connection")
                    log.warning("pub/sub connection lost, reconnecting")
            except (PubSubError, OSError, TimeoutError) as exc:
                self.metrics.redis_error("pubsub")
                log.warning("pub/sub connection failed: %s", exc)
            finally:
                self.subscribed = False
                self._pubsub = None
                if conn is not None:
                    conn.close()
            attempt += 1
            # Full jitter, capped low: delivery must resume within seconds of Redis returning,
            # and a connect attempt per gateway per second is nothing for Redis.
            await asyncio.sleep(retry.backoff(attempt, base=0.1, cap=1.0, floor=0.0))

    def _dispatch(self, raw: bytes) -> None:
        try:
            envelope = contract.unpack(raw)
        except contract.EnvelopeError as exc:
            log.warning("dropping malformed envelope: %s", exc)
            return
        if isinstance(envelope, Message):
            self.events.message(envelope)
        elif envelope.op == OP_PING:
            if envelope.args and isinstance(envelope.args[0], int):
                self.canary.received(envelope.args[0])
        else:
            self.events.control(envelope)
