"""The leader's work: hold the lease, confirm what is due, and deliver each partition's outbox.

At most one request in flight per partition, oldest events first: an entity lives in one
partition, so its events reach the receiver in order (a retry sends the same events again,
with a fresh signature). Events leave the outbox only after a 2xx.

The lease is fenced in time: a leader works only while the lease it last renewed is sure to
be its own (half its TTL from the renewal's start), so a leader that was paused past it does
not post side by side with the one that took over; a request already on the way may still
be answered twice (the events' ids deduplicate it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import httpx
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from switchboard import contract, receipts, streams
from switchboard import whcontract as wh
from switchboard.clusterpipe import ClusterPipelined
from switchboard.config import WebhookSettings
from switchboard.store import text
from switchboard.webhooks import deliver
from switchboard.webhooks.metrics import WebhookMetrics
from switchboard.webhooks.scripts import Scripts
from switchboard.webhooks.sweep import Sweeper

log = logging.getLogger("switchboard.webhooks")
CONFIRM_BATCH = 100
FULL_LOOK_INTERVAL = 5.0  # Redis Cluster: seconds between looks at every partition
HINTS_TAKEN = 10_000  # Redis Cluster: hinted partitions taken per poll
# what Redis being away raises (redis-py's cluster client: RedisClusterException, which is
# not a RedisError, when no node answers or slots are uncovered during a failover)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


class Dispatcher:
    def __init__(self, settings: WebhookSettings, redis: Any, metrics: WebhookMetrics,
                 peeker: ClusterPipelined | None = None) -> None:
        """``peeker``: on Redis Cluster, the pipelined connections (one per master) that look
        at all 16,384 partitions in one write each."""
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.keys = wh.WebhookKeys(settings.prefix, cluster=peeker is not None)
        self._peeker = peeker
        self._lengths: dict[int, int] = {}  # outbox lengths, as last looked at
        self._first_due: dict[int, float] = {}  # earliest due confirmation, as last looked at
        self._full_at = 0.0  # monotonic: when every partition was last looked at
        self._unread: set[int] = set()  # partitions whose last look failed
        self.id = streams.random_id()
        self.leader = False
        self._valid_until = 0.0  # monotonic: until then the lease is surely ours
        self._run_script = Scripts(redis, wh.CONFIRM, wh.PEEK, wh.OVERFLOW, wh.LEASE,
                                   wh.RELEASE, receipts.RECEIPTS_DUE).run
        self._sweeper = Sweeper(settings, redis, self.keys)
        self._secrets = tuple(s.encode() for s in settings.webhook_secrets)
        self._busy: set[int] = set()  # partitions with a request in flight
        self._retry_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_ttl = contract.registry_ttl_ms(settings.heartbeat_interval)

    # -- the lease --------------------------------------------------------------------------

    async def lease_loop(self) -> None:
        """Take or renew the lease every heartbeat; a leader that cannot renew stops."""
        while True:
            asked = time.monotonic()
            try:
                held = bool(await self._run_script(wh.LEASE, [self.keys.lease()],
                                                   [self.id, self._lease_ttl]))
            except REDIS_ERRORS as exc:
                log.warning("webhook lease not renewed: %s", exc)
                held = False
            if held:
                self._valid_until = asked + self._lease_ttl / 2000
            if held != self.leader:
                log.info("webhook dispatcher %s is %s", self.id,
                         "the leader" if held else "a standby")
            self.leader = held
            self.metrics.leader.set(1 if held else 0)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def release(self) -> None:
        """At a clean stop: a standby need not wait for the lease to expire."""
        if self.leader:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._run_script(wh.RELEASE, [self.keys.lease()], [self.id])

    @property
    def leading(self) -> bool:
        """We hold the lease, and it has not run out since we renewed it."""
        return self.leader and time.monotonic() < self._valid_until

    # -- the work ---------------------------------------------------------------------------

    async def sweep_loop(self) -> None:
        while True:
            if self.leading:
                try:
                    await self._sweeper.sweep()
                except REDIS_ERRORS as exc:
                    log.warning("dead-gateway sweep failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def poll_loop(self) -> None:
        while True:
            try:
                await self.poll()
            except REDIS_ERRORS as exc:
                log.warning("webhook outboxes not read: %s", exc)
            await asyncio.sleep(self.settings.webhook_poll_interval)

    async def poll(self) -> None:
        """One look at the partitions: the outbox depth (every dispatcher reports it, so a
        standby's gauge is not the one it last saw as the leader); then, on the leader only,
        report losses, confirm what is due, deliver.

        On one node that is every partition, every time. On Redis Cluster, 16,384 of them:
        every one only each :data:`FULL_LOOK_INTERVAL`, and in between those hinted by the
        writers (:meth:`~switchboard.whcontract.WebhookKeys.hints`), those with events
        waiting and those with a confirmation due."""
        parts = await self._to_look_at()
        full = len(parts) == self.keys.partitions
        try:
            peeks = await self._peek(parts)
        except BaseException:
            self._not_read(parts, full=full)
            raise
        unread = [(p, peek) for p, peek in zip(parts, peeks, strict=True)
                  if isinstance(peek, Exception)]
        self._not_read([p for p, _ in unread], full=full)
        for p, peek in zip(parts, peeks, strict=True):
            if not isinstance(peek, Exception):
                self._lengths[p], self._first_due[p] = int(peek[0]), float(peek[1])
        self.metrics.depth.set(sum(self._lengths.values()))
        if not self.leading:
            return
        now_ms = contract.now_ms()
        if unread:  # one line: a master down fails thousands of partitions at once
            log.error("%d webhook outboxes not read (outbox %d: %s)", len(unread),
                      unread[0][0], unread[0][1])
        for p, peek in zip(parts, peeks, strict=True):
            if isinstance(peek, Exception):
                continue
            length, first_due, lost = int(peek[0]), float(peek[1]), int(peek[2])
            try:
                if lost > 0:
                    await self._overflow(p)
                if 0 <= first_due <= now_ms:
                    await self._confirm(p, now_ms)
            except ResponseError as exc:
                log.error("webhook partition %d not confirmed: %s", p, exc)
            if length and p not in self._busy and self._retry_at.get(p, 0) <= time.monotonic():
                self._busy.add(p)
                task = asyncio.create_task(self._deliver(p))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _not_read(self, parts: list[int], *, full: bool) -> None:
        """Partitions whose look failed (a master down, say). Those of a look at a few are
        looked at again at the next poll (their hints are gone from Redis); a look at every
        partition that failed somewhere is made again a second later, not at every poll."""
        if not parts or self._peeker is None:
            return
        if full:
            self._full_at = min(self._full_at, time.monotonic() - FULL_LOOK_INTERVAL + 1.0)
        else:
            self._unread.update(parts)

    async def _to_look_at(self) -> list[int]:
        if self._peeker is None or time.monotonic() >= self._full_at + FULL_LOOK_INTERVAL:
            self._full_at = time.monotonic()
            return list(range(self.keys.partitions))
        if not self.leading:  # a standby leaves the hints to the leader
            return []
        hinted = await self.redis.spop(self.keys.hints(), HINTS_TAKEN)
        now_ms = contract.now_ms()
        parts = {int(raw) for raw in hinted or () if text(raw).isdecimal() and text(raw).isascii()}
        parts |= self._unread | self._sweeper.touched  # not read last time; the sweep's leaves
        self._unread.clear()
        self._sweeper.touched.clear()
        parts.update(p for p, n in self._lengths.items() if n)
        parts.update(p for p, due in self._first_due.items() if 0 <= due <= now_ms)
        return sorted(p for p in parts if 0 <= p < self.keys.partitions)

    async def _peek(self, parts: list[int]) -> list[Any]:
        """PEEK of each partition; one partition's error (a key of the wrong type) stands in
        its place and does not stop the others."""
        if not parts:
            return []
        if self._peeker is not None:
            return await self._peeker.run_script_many(
                wh.PEEK, [(self.keys.part_keys(p), []) for p in parts], raise_on_error=False)
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            await self._run_script(wh.PEEK, self.keys.part_keys(p), [], client=pipe)
        peeks: list[Any] = await pipe.execute(raise_on_error=False)
        return peeks

    async def _overflow(self, p: int) -> None:
        out, _, lost = self.keys.part_keys(p)
        n = await self._run_script(wh.OVERFLOW, [out, lost], [streams.random_id()])
        if n:
            self.metrics.lost.inc(int(n))
            log.error("webhook outbox %d was full: %d events lost (a webhook.overflow event "
                      "tells the receiver)", p, int(n))

    async def _confirm(self, p: int, now_ms: int) -> None:
        due = self.keys.due(p)
        members = await self.redis.zrangebyscore(due, "-inf", now_ms, start=0,
                                                 num=CONFIRM_BATCH)
        s = self.settings
        pipe = self.redis.pipeline(transaction=False)
        for raw in members:
            parsed = wh.parse_due_member(raw)
            if parsed is None or parsed[0] not in ("o", "l", "v", "r") or len(parsed) < 2:
                pipe.zrem(due, raw)  # not ours: it would block the partition for ever
                continue
            kind, name = parsed[0], parsed[1]
            if kind == "r":  # a user's receipts whose deadline came (docs/receipts.md)
                keys, args = receipts.due_call(s.prefix, name, text(raw), s.webhook_outbox_max,
                                               cluster=self.keys.cluster)
                await self._run_script(receipts.RECEIPTS_DUE, keys, args, client=pipe)
                continue
            keys = self.keys.user(name) if kind == "o" else self.keys.channel(name)
            user = parsed[2] if kind == "l" and len(parsed) > 2 else ""
            await self._run_script(wh.CONFIRM, keys, [
                text(raw), kind, name, user, streams.random_id(), s.webhook_outbox_max,
                contract.ms(s.meta_ttl)], client=pipe)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                log.error("webhook confirmation in partition %d failed: %s", p, reply)

    async def _deliver(self, p: int) -> None:
        try:
            async with self._slots:
                await self._deliver_once(p)
        except REDIS_ERRORS as exc:
            log.warning("webhook outbox %d not read: %s", p, exc)
        finally:
            self._busy.discard(p)

    async def _deliver_once(self, p: int) -> None:
        out = self.keys.outbox(p)
        entries = await self.redis.xrange(out, count=self.settings.webhook_batch_max)
        if not entries:
            return
        parsed = [(entry_id, _event(fields)) for entry_id, fields in entries]
        unreadable = [entry_id for entry_id, event in parsed if event is None]
        if unreadable:  # not written by our scripts: nothing we could send, ever
            # dropped (and counted) now, not with the batch: a batch that is retried would
            # count them again on every try
            await self.redis.xdel(out, *unreadable)
            self.metrics.unreadable.inc(len(unreadable))
            log.error("webhook outbox %d: %d unreadable entries dropped", p, len(unreadable))
        ids = [entry_id for entry_id, event in parsed if event is not None]
        events = [event for _, event in parsed if event is not None]
        if not events:
            return
        if not self.leading:
            return  # our lease may be another's by now: the new leader sends these
        started = time.monotonic()
        outcome = await deliver.post(self.client, self.settings.webhook_url, self._secrets,
                                     events)
        self.metrics.requests.labels(outcome).inc()
        self.metrics.latency.observe(time.monotonic() - started)
        if outcome == "ok":
            await self.redis.xdel(out, *ids)
            self.metrics.delivered.inc(len(ids))
            self._failures.pop(p, None)
            self._retry_at.pop(p, None)
            return
        failures = self._failures[p] = self._failures.get(p, 0) + 1
        wait = deliver.backoff(failures, self.settings.webhook_retry_max)
        self._retry_at[p] = time.monotonic() + wait
        log.warning("webhook request failed (%s); %d events retried in %.1fs", outcome,
                    len(ids), wait)

    async def run(self) -> None:
        timeout = httpx.Timeout(self.settings.webhook_timeout)
        async with httpx.AsyncClient(timeout=timeout) as self.client:
            await asyncio.gather(self.lease_loop(), self.poll_loop(), self.sweep_loop())


def _event(fields: dict[Any, Any]) -> dict[str, Any] | None:
    raw = fields.get(b"e") or fields.get("e")
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        value = None
    return value if isinstance(value, dict) else None
