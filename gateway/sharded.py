"""The gateway's sharded pub/sub subscriber for Redis Cluster: SSUBSCRIBE, following the slot map.

In a cluster a shard channel lives on the master that owns its slot, so the subscription is
not one connection but one per master: a *link*. Each link is a lean RESP2 connection parsed
with hiredis (as :mod:`gateway.pubsub`), with no await per delivered message.

Links
    A link is one connection to one node, made lazily when the first wanted channel lands on
    that node, and never reconnected: when it dies (or is torn down) every channel it carried
    becomes *homeless* and the repair loop places it again from the (refreshed) slot map, which
    may name the same node (a killed client) or another (a failover). Each link also
    subscribes to a canary channel of ours hashing to a slot the node owns (the lowest), which
    :meth:`ShardedSubscriber.ping` publishes to: the proof, per node, that the path delivers.

FIFO
    SSUBSCRIBE goes one channel per command (a multi-channel SSUBSCRIBE must be same-slot).
    Redis answers a connection's commands in order, so each link keeps a FIFO of what it sent
    (SSUBSCRIBE, SUNSUBSCRIBE, the setup commands): a confirmation or an error reply (MOVED,
    CLUSTERDOWN...) belongs to the head. A ``sunsubscribe`` that is not the head's answer is
    Redis dropping a subscription of ours (its slot moved away, or the node became a replica).

Repair
    One task places homeless channels: it reads the slot map again
    (``nodes_manager.initialize()``, bounded by ``timeout``) whenever a link died, Redis
    dropped or refused (MOVED, ASK, CLUSTERDOWN...) an SSUBSCRIBE, or a slot had no known
    master, then assigns each channel to its slot's master. Consecutive rounds back off
    (jittered, 50 ms doubling to 1 s), so during a failover the dead master is retried about
    once a second until the map names the promoted replica; it runs for as long as the
    subscriber does. A link whose node serves no slot any more and carries no channel is
    closed. A watchdog tears down a link that leaves an SSUBSCRIBE unanswered for
    ``2 * timeout`` (a link that is deaf to commands too).

Nothing lost silently
    A channel confirmed at least once is reported through ``on_lost(channels, reason)`` the
    moment its subscription is gone (synchronously, before anything a resubscription can
    deliver), then ``on_restored(channels)`` once Redis confirmed it again; in between it is
    counted by :attr:`ShardedSubscriber.unready`. A channel is never on two links at once.
    Consecutive confirmations (or drops) read from one socket read are reported in one call,
    always before the next message of that link is delivered. Channels never confirmed yet are
    not reported: their want() is still waiting, and fails after ``2 * timeout``.

What the caller should know
    - ``ping()`` then ``check()`` on every heartbeat: a link is not proven (``unready``) until
      a ping came back through it, and only the canary can find a connection that is open
      but deaf.
    - ``on_lost`` can name a channel whose want() was confirmed a moment ago but has not
      returned yet (the slot moved right after the confirmation).
    - After ``drop()``, messages already on their way may still reach ``on_message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import hiredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway import retry
from gateway.canary import Canary
from gateway.shutdown import stop_tasks
from switchboard import resp
from switchboard.redisurl import ClusterUrl

log = logging.getLogger("switchboard.gateway")

# Why a subscription went away (``on_lost``'s second argument).
LOST_CONNECTION = "connection"
LOST_SLOT_MOVED = "slot_moved"
LOST_CANARY = "canary"

# Error replies to SSUBSCRIBE after which the channel is placed again from a refreshed slot
# map (and retried with backoff), rather than refused.
RETRYABLE = frozenset({"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING"})

BACKOFF_BASE = 0.05  # seconds before the 2nd consecutive repair round, doubling...
BACKOFF_CAP = 1.0  # ...up to this: delivery must resume within a second of the cluster healing
QUIET = 3.0  # seconds without repair work after which the backoff starts from zero again

_SMESSAGE = b"smessage"
_SSUBSCRIBE = b"ssubscribe"
_SUNSUBSCRIBE = b"sunsubscribe"


class ShardedError(ConnectionError):
    """The sharded subscription failed (a link's connection, a refused SSUBSCRIBE...)."""


class SubscribeTimeout(ShardedError, TimeoutError):
    """:meth:`ShardedSubscriber.want` was not confirmed by Redis in time."""


class SubscribeRefused(ShardedError):
    """Redis answered SSUBSCRIBE with an error that a retry elsewhere cannot fix (NOPERM...)."""


class SubscriptionDropped(ShardedError):
    """The channel was dropped (or the subscriber stopped) while a want() of it waited."""


def error_code(text: str) -> str:
    """The code of an error reply: ``MOVED`` for ``MOVED 1234 127.0.0.1:7001``."""
    return text.split(" ", 1)[0]


class _Chan:
    """One shard channel we subscribe to (a wanted one, or a link's canary)."""

    __slots__ = ("canary", "confirmed", "ever", "key", "link", "lost", "name", "pending_since",
                 "slot", "waiter", "waiting")

    def __init__(self, name: str, slot: int, *, canary: bool = False) -> None:
        self.name = name
        self.key = name.encode()  # as Redis names it in its replies
        self.slot = slot
        self.canary = canary
        self.link: _Link | None = None  # the link it is assigned to (sent, or to send)
        self.confirmed = False  # Redis confirmed it on ``link``
        self.ever = False  # confirmed at least once: its losses are reported
        self.lost = False  # reported through on_lost, on_restored not yet
        self.waiter: asyncio.Future[None] | None = None  # what want() calls wait on
        self.waiting = 0  # how many want() calls wait
        self.pending_since = 0.0  # monotonic time it became pending (wanted, not confirmed)

    def __repr__(self) -> str:
        return f"<channel {self.name} slot {self.slot}>"


class _Sent(NamedTuple):
    """A command in a link's FIFO, waiting for its reply."""

    kind: bytes  # _SSUBSCRIBE, _SUNSUBSCRIBE or b"" (a setup command: AUTH, CLIENT SETNAME)
    key: bytes  # the channel, for (S)SUBSCRIBE
    chan: _Chan | None  # what an SSUBSCRIBE was for
    future: asyncio.Future[Any] | None  # a setup command's reply
    at: float  # monotonic time sent


class _Link(resp.RespProtocol):
    """One connection to one cluster node and the channels subscribed (or to subscribe) on it.

    The protocol is the link: it exists before it connects (channels assigned meanwhile are
    sent once it is up) and is thrown away when the connection ends."""

    def __init__(self, sub: ShardedSubscriber, node: ClusterNode, canary_deadline: float) -> None:
        super().__init__()
        self.sub = sub
        self.name: str = node.name
        self.host: str = node.host
        self.port = int(node.port)
        self._deliver = sub._on_message
        self.channels: dict[bytes, _Chan] = {}
        self.fifo: deque[_Sent] = deque()
        self.canary = Canary(canary_deadline)
        self.canary_chan: _Chan | None = None
        self.canary_key: bytes | None = None  # the canary's name, for the hot path
        self.canary_since: float | None = None  # when Redis confirmed the canary (monotonic)
        self.canary_epoch = 0  # counts canary confirmations: a ping sent before is not recorded
        self.ping_error: str | None = None
        self.up = False  # connected, set up, assigned channels sent
        self.created = time.monotonic()
        self.dead = False
        self._batch_kind = ""  # consecutive "restored" / "slot_moved" events, reported together
        self._batch: list[str] = []

    def __repr__(self) -> str:
        return f"<link {self.name} {len(self.channels)} channel(s)>"

    # -- the hot path ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        deliver = self._deliver
        smessage = _SMESSAGE
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ShardedError(f"protocol error from {self.name}: {exc}"))
                return
            if reply is False:
                break
            if type(reply) is list and len(reply) == 3 and reply[0] == smessage:
                if self._batch:  # what was confirmed or lost before this message, first
                    self.flush()
                    if self.dead:
                        return
                channel = reply[1]
                if channel == self.canary_key:
                    self._canary_ping(reply[2])
                    continue
                try:
                    deliver(channel, reply[2])
                except Exception:
                    log.exception("sharded message handler failed (channel %r)", channel)
                continue
            if not self.reply(reply):
                return
        if self._batch:
            self.flush()

    def _canary_ping(self, payload: bytes) -> None:
        try:
            ping_ms = int(payload)
        except ValueError:
            return
        self.canary.received(ping_ms)

    # -- everything else the connection says ----------------------------------------------

    def reply(self, reply: Any) -> bool:
        if self.dead:
            return False
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == _SSUBSCRIBE and len(reply) == 3:
                return self._confirmed(reply[1])
            if kind == _SUNSUBSCRIBE and len(reply) == 3:
                return self._unsubscribed(reply[1])
            self.fail(ShardedError(f"unexpected reply from {self.name}: {reply!r:.200}"))
            return False
        fifo = self.fifo
        if not fifo:
            self.fail(ShardedError(f"reply from {self.name} to nothing sent: {reply!r:.200}"))
            return False
        sent = fifo.popleft()
        if isinstance(reply, hiredis.ReplyError):
            if sent.kind == _SSUBSCRIBE:
                assert sent.chan is not None
                self.sub._refused(self, sent.chan, str(reply))
            elif sent.future is not None:
                if not sent.future.done():
                    sent.future.set_exception(ShardedError(f"{self.name}: {reply}"))
            else:  # e.g. MOVED: the channel is not subscribed here anyway
                log.debug("SUNSUBSCRIBE %r at %s refused: %s", sent.key, self.name, reply)
            return not self.dead
        if sent.future is None:
            self.fail(ShardedError(f"reply from {self.name} out of order: {reply!r:.200}"))
            return False
        if not sent.future.done():
            sent.future.set_result(reply)
        return True

    def _confirmed(self, key: bytes) -> bool:
        fifo = self.fifo
        if not fifo or fifo[0].kind != _SSUBSCRIBE or fifo[0].key != key:
            self.fail(ShardedError(f"{self.name} confirmed SSUBSCRIBE {key!r}, "
                                   "which is not the command it had to answer"))
            return False
        chan = fifo.popleft().chan
        assert chan is not None
        self.sub._confirmed(self, chan)
        return not self.dead

    def _unsubscribed(self, key: bytes) -> bool:
        fifo = self.fifo
        if fifo and fifo[0].kind == _SUNSUBSCRIBE and fifo[0].key == key:
            fifo.popleft()  # the answer to our SUNSUBSCRIBE
            return True
        self.sub._dropped_by_redis(self, key)  # Redis dropped it: the slot is not here now
        return not self.dead

    # -- sending --------------------------------------------------------------------------

    def request(self, *args: str | bytes) -> asyncio.Future[Any]:
        """A setup command (AUTH, SELECT, CLIENT SETNAME: :func:`resp.open_connection`)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._write(resp.command(*args)):
            raise ShardedError(f"connection to {self.name} is closed")
        self.fifo.append(_Sent(b"", b"", None, fut, time.monotonic()))
        return fut

    def _write(self, data: bytes) -> bool:
        """False when the connection is closing: its connection_lost, due any moment, places
        everything assigned here again."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def attach(self) -> None:
        """Connected and set up: subscribe to the canary and every channel assigned so far."""
        self.up = True
        chans = list(self.channels.values())
        if self.canary_chan is not None:
            chans.insert(0, self.canary_chan)
        now = time.monotonic()
        if chans and self._write(b"".join(resp.command("SSUBSCRIBE", c.key) for c in chans)):
            self.fifo.extend(_Sent(_SSUBSCRIBE, c.key, c, None, now) for c in chans)

    def ssubscribe(self, chan: _Chan) -> None:
        if self.up and not self.dead and self._write(resp.command("SSUBSCRIBE", chan.key)):
            self.fifo.append(_Sent(_SSUBSCRIBE, chan.key, chan, None, time.monotonic()))

    def sunsubscribe(self, key: bytes) -> None:
        if self.up and not self.dead and self._write(resp.command("SUNSUBSCRIBE", key)):
            self.fifo.append(_Sent(_SUNSUBSCRIBE, key, None, None, time.monotonic()))

    def assign(self, chan: _Chan) -> None:
        self.channels[chan.key] = chan
        chan.link = self
        chan.confirmed = False
        self.ssubscribe(chan)

    def set_canary(self, chan: _Chan | None) -> None:
        self.canary_chan = chan
        self.canary_key = None if chan is None else chan.key
        self.canary_since = None
        self.ping_error = None
        self.canary.reset()
        if chan is not None:
            self.ssubscribe(chan)

    # -- events reported together ---------------------------------------------------------

    def emit(self, kind: str, name: str) -> None:
        if self._batch and kind != self._batch_kind:
            self.flush()
        self._batch_kind = kind
        self._batch.append(name)

    def flush(self) -> None:
        kind, names = self._batch_kind, self._batch
        self._batch = []
        if names:
            self.sub._report(kind, names)

    # -- the end ---------------------------------------------------------------------------

    def fail(self, exc: Exception) -> None:
        for sent in self.fifo:
            if sent.future is not None and not sent.future.done():
                sent.future.set_exception(exc)
        self.sub._link_down(self, LOST_CONNECTION, str(exc))
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ShardedError(f"connection to {self.name} lost: {exc or 'closed'}"))


class ShardedSubscriber:
    """SSUBSCRIBE to wanted channels over one lean connection per master node."""

    def __init__(self, cluster: RedisCluster, cluster_url: ClusterUrl, *, client_name: str,
                 timeout: float,
                 canary_channel: Callable[[int], str],
                 on_message: Callable[[bytes, bytes], None],
                 on_lost: Callable[[list[str], str], None],
                 on_restored: Callable[[list[str]], None],
                 canary_deadline: float | None = None) -> None:
        """``timeout`` bounds each Redis step (connect, setup, a slot-map refresh, a ping);
        want() waits twice that. ``canary_channel(slot)`` names a channel of ours hashing to
        ``slot``. The callbacks run synchronously on the event loop: ``on_message(channel,
        payload)`` for every delivered message but canary pings; ``on_lost(channels,
        reason)`` (:data:`LOST_CONNECTION`, :data:`LOST_SLOT_MOVED`, :data:`LOST_CANARY`) when
        subscriptions confirmed before are gone; ``on_restored(channels)`` once Redis
        confirmed them again."""
        self._cluster = cluster
        self._cluster_url = cluster_url
        self._client_name = client_name
        self._timeout = timeout
        # how long a link's ping may take to come back (gateway.canary.deadline_for)
        self._canary_deadline = canary_deadline or max(1.0, timeout)
        self._canary_channel = canary_channel
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_restored = on_restored
        # Refuses a URL whose TLS options the lean connections cannot honour, now.
        resp.Endpoint.from_url(cluster_url.node_template)
        self._endpoints: dict[str, resp.Endpoint] = {}
        self._chans: dict[str, _Chan] = {}  # wanted channels
        self._pending: set[_Chan] = set()  # wanted, not confirmed now
        self._homeless: set[_Chan] = set()  # wanted, on no link: for the repair loop to place
        self._links: dict[str, _Link] = {}  # node name -> its live link
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._need_refresh = False
        self._attempt = 0  # consecutive repair rounds (backoff)
        self._last_error: str | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        name = self._canary_channel(0)
        if self._cluster.keyslot(name) != 0:
            raise ValueError(f"canary_channel(0) gave {name!r}, which is not in slot 0")
        self._started = True
        self._spawn(self._repair_loop(), "sharded-repair")

    async def stop(self) -> None:
        """Stop repairing and close every link; bounded (a few ``timeout``)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._wake.set()
        for chan in self._chans.values():
            self._fail_waiter(chan, SubscriptionDropped("the sharded subscriber stopped"))
        await stop_tasks(list(self._tasks), self._timeout + 1)
        for link in list(self._links.values()):
            link.dead = True
            link.abort()
        self._links.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the gateway wants -----------------------------------------------------------

    async def want(self, channel: str) -> None:
        """Subscribe to ``channel`` (idempotent); returns once Redis confirmed it on the
        master of its slot. Raises :class:`SubscribeTimeout` after ``2 * timeout`` (a channel
        never confirmed is then dropped), :class:`SubscribeRefused` for a refusal a retry
        cannot fix, :class:`SubscriptionDropped` if :meth:`drop` or :meth:`stop` came first."""
        if not self._started:
            raise RuntimeError("start() the sharded subscriber first")
        if self._stopped:
            raise SubscriptionDropped("the sharded subscriber stopped")
        chan = self._chans.get(channel)
        if chan is None:
            chan = _Chan(channel, self._cluster.keyslot(channel))
            self._chans[channel] = chan
            self._pending.add(chan)
            chan.pending_since = time.monotonic()
            self._place(chan)
        if chan.confirmed:
            return
        if chan.waiter is None:
            chan.waiter = asyncio.get_running_loop().create_future()
        waiter = chan.waiter
        chan.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 2 * self._timeout)
        except TimeoutError:
            why = self.unready or self._last_error or "no confirmation"
            if not chan.ever and self._chans.get(channel) is chan and chan.waiting == 1:
                # the only caller gives up: nothing is left wanting it
                waiter.cancel()
                chan.waiter = None
                self.drop(channel)
            raise SubscribeTimeout(f"SSUBSCRIBE {channel} not confirmed within "
                                   f"{2 * self._timeout:g}s: {why}") from None
        finally:
            chan.waiting -= 1
            if chan.waiting == 0 and chan.waiter is waiter and not waiter.done():
                waiter.cancel()  # nobody waits: an exception set later would go unretrieved
                chan.waiter = None

    def drop(self, channel: str) -> None:
        """SUNSUBSCRIBE ``channel``; a want() of it still waiting fails. Messages already on
        their way may still reach on_message."""
        chan = self._chans.pop(channel, None)
        if chan is None:
            return
        self._pending.discard(chan)
        self._homeless.discard(chan)
        self._fail_waiter(chan, SubscriptionDropped(f"channel {channel} was dropped"))
        link = chan.link
        if link is not None:
            if link.channels.get(chan.key) is chan:
                del link.channels[chan.key]
            link.sunsubscribe(chan.key)  # if up, SSUBSCRIBE went out: undo it whatever its fate
        chan.link = None
        chan.confirmed = False

    @staticmethod
    def _fail_waiter(chan: _Chan, exc: Exception) -> None:
        if chan.waiter is not None:
            if not chan.waiter.done():
                chan.waiter.set_exception(exc)
            chan.waiter = None

    # -- the canary -----------------------------------------------------------------------

    async def ping(self, now_ms: int) -> None:
        """One ping per link whose canary is subscribed: SPUBLISH to it, and record in the
        link's Canary how many it reached. Bounded by ``timeout``; never raises for Redis."""
        links = [link for link in self._links.values() if link.canary_since is not None]
        if links:
            payload = str(now_ms)
            await asyncio.gather(*(self._ping(link, now_ms, payload) for link in links))

    async def _ping(self, link: _Link, now_ms: int, payload: str) -> None:
        chan, epoch = link.canary_chan, link.canary_epoch
        assert chan is not None
        # expected before it is published: it may come back before the publish's reply
        link.canary.sending(now_ms)
        try:
            receivers = await asyncio.wait_for(self._cluster.spublish(chan.name, payload),
                                               self._timeout)
        except Exception as exc:  # RedisError, RedisClusterException, TimeoutError...
            if link.canary_epoch == epoch:
                link.canary.withdraw(now_ms)
                link.ping_error = f"canary ping failed: {exc or type(exc).__name__}"
            return
        if link.dead or link.canary_chan is not chan or link.canary_epoch != epoch:
            return  # that subscription is gone: the ping says nothing about the new one
        link.ping_error = None
        link.canary.reached(int(receivers))

    def check(self) -> None:
        """After a ping round: tear down and repair every link whose canary failed (reason
        :data:`LOST_CANARY`), or that left an SSUBSCRIBE unanswered for ``2 * timeout``."""
        now = time.monotonic()
        self._watchdog(now)
        for link in list(self._links.values()):
            if link.dead or link.canary_since is None:
                continue
            # a ping not back *yet* is not a failure: a fresh link proves itself at once
            failed = link.canary.failed
            if failed is None:
                continue
            log.warning("sharded subscription at %s lost (%s): subscribing again",
                        link.name, failed)
            self._link_down(link, LOST_CANARY, f"canary at {link.name}: {failed}")

    def _watchdog(self, now: float) -> None:
        limit = 2 * self._timeout
        for link in list(self._links.values()):
            if link.up and link.fifo and now - link.fifo[0].at > limit:
                self._link_down(link, LOST_CONNECTION,
                                f"{link.name} left SSUBSCRIBE unanswered for {limit:g}s")

    @property
    def unready(self) -> str | None:
        """Why the subscription path is not proven now; None when it is."""
        if not self._started:
            return "the sharded subscriber is not started"
        if self._stopped:
            return "the sharded subscriber is stopped"
        # What is on its way is not a failure: a new user's channel being subscribed, a link
        # being opened for a node's first channel (a connect storm always has some). Only what
        # was lost, or is taking longer than a want() waits, is.
        now = time.monotonic()
        grace = 2 * self._timeout
        for link in self._links.values():
            if not link.up or link.canary_since is None:
                if now - link.created > grace:
                    return (f"no pub/sub connection to {link.name}" if not link.up else
                            f"the canary channel at {link.name} is not subscribed")
                continue
            if link.ping_error is not None:
                return f"{link.name}: {link.ping_error}"
            if (failed := link.canary.failed) is not None:
                return f"{link.name}: {failed}"
        lost = sum(1 for c in self._chans.values() if c.lost)
        if lost:
            return f"{lost} subscription(s) lost, being restored"
        stuck = sum(1 for c in self._pending if now - c.pending_since > grace)
        if stuck:
            why = f" (last error: {self._last_error})" if self._last_error else ""
            return f"{stuck} channel(s) not subscribed within {grace:g}s{why}"
        return None

    # -- what links report (synchronously, from their protocol) ---------------------------

    def _confirmed(self, link: _Link, chan: _Chan) -> None:
        if chan.canary:
            if link.canary_chan is chan:
                link.canary_since = time.monotonic()
                link.canary_epoch += 1
                link.canary.reset()
                now_ms = int(time.time() * 1000)
                self._spawn(self._ping(link, now_ms, str(now_ms)), "canary-ping")
            return
        if self._chans.get(chan.name) is not chan or chan.link is not link:
            return  # dropped (or moved) since: its SUNSUBSCRIBE follows
        chan.confirmed = True
        chan.ever = True
        self._pending.discard(chan)
        if chan.waiter is not None:
            if not chan.waiter.done():
                chan.waiter.set_result(None)
            chan.waiter = None
        if chan.lost:
            chan.lost = False
            link.emit("restored", chan.name)

    def _dropped_by_redis(self, link: _Link, key: bytes) -> None:
        """An unsolicited ``sunsubscribe``: the slot moved away from the node."""
        canary = link.canary_chan
        if canary is not None and canary.key == key:
            log.info("canary %s at %s dropped by Redis: its slot moved", canary.name, link.name)
            link.set_canary(None)
            self._refresh()
            return
        chan = link.channels.get(key)
        if chan is None or not chan.confirmed:
            return  # not ours (any more)
        del link.channels[key]
        self._unplace(chan)
        link.emit(LOST_SLOT_MOVED, chan.name)
        self._last_error = f"{link.name} dropped {chan.name}: its slot moved"
        self._refresh()

    def _refused(self, link: _Link, chan: _Chan, text: str) -> None:
        """An error reply to SSUBSCRIBE."""
        retryable = error_code(text) in RETRYABLE
        if chan.canary:
            if link.canary_chan is chan:
                link.set_canary(None)
                self._refresh()
            return
        if self._chans.get(chan.name) is not chan or chan.link is not link:
            return
        del link.channels[chan.key]
        chan.link = None
        self._last_error = f"SSUBSCRIBE {chan.name} at {link.name}: {text}"
        if retryable or chan.ever:  # a channel the caller relies on is retried in any case
            log.info("%s: placing it again", self._last_error)
            self._homeless.add(chan)
            self._refresh()
            return
        log.warning("%s", self._last_error)
        self._fail_waiter(chan, SubscribeRefused(self._last_error))
        self.drop(chan.name)

    def _link_down(self, link: _Link, reason: str, detail: str) -> None:
        """The link's connection is gone (or we tear it down): every channel it had is
        reported lost and placed again."""
        if link.dead:
            return
        link.dead = True
        link.up = False
        link.flush()
        if self._links.get(link.name) is link:
            del self._links[link.name]
        link.abort()
        if self._stopped:
            return
        lost = []
        for chan in link.channels.values():
            if chan.confirmed:
                lost.append(chan.name)
            self._unplace(chan)
        link.channels.clear()
        self._last_error = detail
        log.debug("sharded link %s down: %s", link.name, detail)
        if lost or reason != LOST_CONNECTION:
            log.warning("sharded link %s down (%s): %d channel(s) to subscribe again",
                        link.name, detail, len(lost))
        self._refresh()
        if lost:
            self._report(reason, lost)

    def _unplace(self, chan: _Chan) -> None:
        if chan.confirmed:
            chan.lost = True
        chan.confirmed = False
        chan.link = None
        self._pending.add(chan)
        chan.pending_since = time.monotonic()
        self._homeless.add(chan)

    def _report(self, kind: str, names: list[str]) -> None:
        try:
            if kind == "restored":
                self._on_restored(names)
            else:
                self._on_lost(names, kind)
        except Exception:
            log.exception("sharded subscription %s handler failed", kind)

    # -- repair ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        self._need_refresh = True
        self._wake.set()

    def _needs_work(self) -> bool:
        return bool(self._need_refresh or self._homeless
                    or any(link.canary_chan is None for link in self._links.values()))

    async def _repair_loop(self) -> None:
        last_work = -QUIET
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._timeout)
            if self._stop.is_set():
                break
            self._wake.clear()
            self._watchdog(time.monotonic())
            if not self._needs_work():
                continue
            if time.monotonic() - last_work > QUIET:
                self._attempt = 0
            if self._attempt:
                delay = retry.backoff(self._attempt - 1, base=BACKOFF_BASE, cap=BACKOFF_CAP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            self._attempt += 1
            last_work = time.monotonic()
            try:
                await self._repair()
            except Exception:
                log.exception("sharded subscription repair failed")
                self._wake.set()

    async def _repair(self) -> None:
        if self._need_refresh:
            self._need_refresh = False
            try:
                await asyncio.wait_for(self._cluster.nodes_manager.initialize(), self._timeout)
            except Exception as exc:  # RedisClusterException, TimeoutError, OSError...
                self._last_error = f"cannot read the cluster's slot map: {exc!r}"
                log.warning("%s", self._last_error)
                self._refresh()
                return
        if self._stopped:
            return
        for chan in list(self._homeless):
            self._place(chan)
        for link in list(self._links.values()):
            if link.canary_chan is None and not link.dead:
                self._place_canary(link)

    def _place(self, chan: _Chan) -> None:
        """Assign ``chan`` to the link of its slot's master (opened if need be)."""
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(chan.slot)
        except Exception as exc:  # SlotNotCoveredError; KeyError before the first map
            self._last_error = f"no master known for slot {chan.slot}: {exc!r}"
            self._homeless.add(chan)
            self._refresh()
            return
        self._homeless.discard(chan)
        link = self._links.get(node.name)
        if link is None:
            link = self._open(node, chan.slot)
        link.assign(chan)

    def _open(self, node: ClusterNode, slot: int) -> _Link:
        link = _Link(self, node, canary_deadline=self._canary_deadline)
        self._links[link.name] = link
        first = self._first_slot(link.name)
        link.set_canary(self._canary(slot if first is None else first))
        self._spawn(self._connect(link), f"sharded-link-{link.name}")
        return link

    def _place_canary(self, link: _Link) -> None:
        slot = self._first_slot(link.name)
        if slot is not None:
            link.set_canary(self._canary(slot))
        elif not link.channels:
            log.info("closing sharded link %s: the node serves no slot now", link.name)
            link.dead = True
            link.up = False
            del self._links[link.name]
            link.abort()
        else:
            self._refresh()  # channels here, yet no slot in our map: read the map again

    def _canary(self, slot: int) -> _Chan:
        name = self._canary_channel(slot)
        if self._cluster.keyslot(name) != slot:
            raise ValueError(f"canary_channel({slot}) gave {name!r}, which is not in that slot")
        return _Chan(name, slot, canary=True)

    def _first_slot(self, node_name: str) -> int | None:
        """The lowest slot our slot map says ``node_name`` is the master of."""
        best: int | None = None
        for slot, nodes in self._cluster.nodes_manager.slots_cache.items():
            if nodes and nodes[0].name == node_name and (best is None or slot < best):
                best = slot
        return best

    async def _connect(self, link: _Link) -> None:
        try:
            endpoint = self._endpoints.get(link.name)
            if endpoint is None:
                endpoint = resp.Endpoint.from_url(self._cluster_url.node_url(link.host,
                                                                             link.port))
                self._endpoints[link.name] = endpoint
            await resp.open_connection(endpoint, lambda: link, connect_timeout=self._timeout,
                                       client_name=self._client_name)
        except Exception as exc:  # OSError, TimeoutError, a refused AUTH...
            self._link_down(link, LOST_CONNECTION,
                            f"cannot connect to {link.name}: {exc or type(exc).__name__}")
            link.abort()
            return
        if self._stopped or link.dead:
            link.dead = True
            link.abort()
            return
        link.attach()
