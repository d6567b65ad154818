"""The webhook part of the Redis contract (docs/webhooks.md): keys and Lua scripts.

Online/offline, occupied/vacated and join/leave transitions are decided *in Redis*, by scripts
that run in the slot of the user or channel they change, and each event is written by the same
script into an outbox of that slot: no gateway's memory holds a transition, so none is lost
with a gateway. A dead gateway's connections are left by the dispatcher, from the gateway's
roster (``sb:{gw:G}:roster``: field ``CONN`` or ``CONN\\tCHANNEL`` -> ``INC\\tUSER``, or
``INC,INC\\tUSER`` for a moment on Redis Cluster, while an entry moves to a new incarnation).

Every connection held by the webhook state names its holder, ``GATEWAY/INC``: ``INC`` is the
gateway's incarnation, new each time its registry entry was lost (it may have been swept
meanwhile), so a late sweep can never remove what a revived gateway wrote again.

Partitions: an outbox (stream), a due set (zset of debounced confirmations) and a loss counter
per partition. In Redis Cluster a partition is a hash slot (its keys carry a tag of that slot);
on one node there are :data:`NODE_PARTITIONS`, so batches of different partitions can go out
side by side while each entity's events stay in order.
"""

from __future__ import annotations

import json
from typing import Any

from redis.crc import key_slot

from switchboard import contract, streams
from switchboard.clusterclient import tag_for_slot
from switchboard.config import WebhookStateSettings
from switchboard.pipelined import Arg, Script

NODE_PARTITIONS = 16
CLUSTER_PARTITIONS = 16384
ROSTER_INC = "_inc"  # roster field: the gateway's current incarnation


class WebhookKeys:
    __slots__ = ("cluster", "partitions", "prefix")

    def __init__(self, prefix: str = "sb:", *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.partitions = CLUSTER_PARTITIONS if cluster else NODE_PARTITIONS

    def partition(self, entity: str) -> int:
        """The partition of a user (``u:NAME``) or channel (``c:NAME``) entity."""
        return key_slot(entity.encode()) % self.partitions

    def _part(self, partition: int) -> str:
        tag = tag_for_slot(partition) if self.cluster else f"wh{partition}"
        return f"{self.prefix}{{{tag}}}:wh"

    def outbox(self, partition: int) -> str:
        return self._part(partition) + ":out"

    def due(self, partition: int) -> str:
        return self._part(partition) + ":due"

    def lost(self, partition: int) -> str:
        return self._part(partition) + ":lost"

    def part_keys(self, partition: int) -> list[str]:
        """KEYS of a partition, in the order every script takes them: outbox, due, lost."""
        base = self._part(partition)
        return [base + ":out", base + ":due", base + ":lost"]

    def user(self, user: str) -> list[str]:
        """A user's state hash and webhook connection hash, then its partition's keys."""
        entity = streams.user_key(user)
        return [f"{self.prefix}{{{entity}}}:wh", f"{self.prefix}{{{entity}}}:whconns",
                *self.part_keys(self.partition(entity))]

    def channel(self, channel: str) -> list[str]:
        """A channel's state hash, webhook connection hash and members (user -> count)."""
        entity = streams.channel_key(channel)
        return [f"{self.prefix}{{{entity}}}:wh", f"{self.prefix}{{{entity}}}:whconns",
                f"{self.prefix}{{{entity}}}:members",
                *self.part_keys(self.partition(entity))]

    def roster(self, gateway_id: str) -> str:
        return f"{self.prefix}{{gw:{gateway_id}}}:roster"

    def dead_roster(self, gateway_id: str, token: str) -> str:
        """Where a roster is moved once its writer is gone: the sweep leaves what is in it."""
        return f"{self.prefix}{{gw:{gateway_id}}}:roster:dead:{token}"

    def swept(self, gateway_id: str, token: str) -> str:
        """The tombstone of a dead roster the sweep is done with (or found absent): on Redis
        Cluster a late move under that token is refused, so it cannot land unlisted."""
        return self.dead_roster(gateway_id, token) + ":swept"

    def alive(self, gateway_id: str) -> str:
        """Redis Cluster: written by the gateway's heartbeat, a second shorter-lived than its
        registry entry, in the roster's slot, so the move of a roster can check in the same
        call that its gateway is dead (the registry entry is in another slot)."""
        return f"{self.prefix}{{gw:{gateway_id}}}:alive"

    def sent(self, gateway_id: str) -> str:
        """The token of the gateway's last webhook-state transaction that was applied."""
        return f"{self.prefix}{{gw:{gateway_id}}}:whsent"

    def rosters(self) -> str:
        return f"{self.prefix}wh:rosters"

    def dead_rosters(self) -> str:
        """Rosters moved aside and not swept yet, as :func:`dead_member` ``GATEWAY\tTOKEN``."""
        return f"{self.prefix}wh:dead"

    def lease(self) -> str:
        return f"{self.prefix}wh:lease"

    def hints(self) -> str:
        """Redis Cluster: partitions just written to, added after the write (a script cannot:
        it would be another slot), taken by the dispatcher, which also looks at every
        partition now and then, so a hint that never came costs latency, not an event."""
        return f"{self.prefix}{{wh}}:hints"


class Leaves:
    """The arguments of the scripts that add and remove a connection, in the one order the
    scripts take them (the gateway's and the sweeper's calls are built here)."""

    def __init__(self, settings: WebhookStateSettings, keys: WebhookKeys) -> None:
        self.keys = keys
        delay = settings.webhook_offline_delay
        self.delay = contract.ms(delay) if delay > 0 else 0  # 0: fire at once
        self.cap = settings.webhook_outbox_max
        self.ttl = contract.ms(settings.meta_ttl)

    def user_on(self, conn: str, holder: str, user: str,
                gateway_id: str) -> tuple[list[str], list[Arg]]:
        return self.keys.user(user), [conn, holder, user, streams.random_id(), self.delay,
                                      self.cap, gateway_id]

    def user_off(self, conn: str, holder: str, user: str,
                 reason: str) -> tuple[list[str], list[Arg]]:
        return self.keys.user(user), [conn, holder, user, streams.random_id(), self.delay,
                                      self.cap, reason, self.ttl]

    def channel_on(self, conn: str, holder: str, user: str,
                   channel: str) -> tuple[list[str], list[Arg]]:
        return self.keys.channel(channel), [conn, holder, user, channel, streams.random_id(),
                                            self.delay, self.cap]

    def channel_off(self, conn: str, holder: str, user: str,
                    channel: str) -> tuple[list[str], list[Arg]]:
        return self.keys.channel(channel), [conn, holder, user, channel, streams.random_id(),
                                            self.delay, self.cap, self.ttl]


def roster_field(conn_id: str, channel: str | None = None) -> str:
    return conn_id if channel is None else f"{conn_id}\t{channel}"


def roster_value(incarnation: str, user: str) -> str:
    return f"{incarnation}\t{user}"


def dead_member(gateway_id: str, token: str) -> str:
    return f"{gateway_id}\t{token}"


def due_member(kind: str, *names: str) -> str:
    """A due-set member: ``["l","room","alice"]`` (leave), ``["o","alice"]`` (offline) or
    ``["v","room"]`` (vacate). On one score they sort leaves, offlines, vacates."""
    # byte for byte as the scripts' cjson.encode writes it: UTF-8 as is, "/" escaped
    return json.dumps([kind, *names], separators=(",", ":"),
                      ensure_ascii=False).replace("/", "\\/")


def parse_due_member(raw: bytes | str) -> list[str] | None:
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


# KEYS of a partition come last in every script (out, due, lost); ARGV[1..] per script.
# Redis' own clock in ms, for every script that stamps or compares times.
NOW_MS_FN = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_COMMON = NOW_MS_FN + r"""
-- Append an event, unless the outbox is full: then count it as lost and keep the oldest
-- (the state stays right; the event was only news). Returns 1 if written.
local function emit(out, lost, cap, ev)
  if redis.call('XLEN', out) >= cap then
    redis.call('HINCRBY', lost, 'n', 1)
    redis.call('HSETNX', lost, 'first_ms', ev.ts_ms)
    redis.call('HSET', lost, 'last_ms', ev.ts_ms)
    return 0
  end
  redis.call('XADD', out, '*', 'e', cjson.encode(ev))
  return 1
end
-- An event id, ENTITY/EPOCH/SEQ: ordered per entity; a new epoch means the state was lost.
local function next_id(state, entity, fresh_epoch)
  local epoch = redis.call('HGET', state, 'epoch')
  if not epoch then
    epoch = fresh_epoch
    redis.call('HSET', state, 'epoch', epoch)
  end
  return entity .. '/' .. epoch .. '/' .. redis.call('HINCRBY', state, 'seq', 1)
end
"""

# KEYS: state, conns, out, due, lost. ARGV: conn, holder, user, fresh epoch, delay ms, cap,
# gateway. Returns 1 if an event was written, 0 otherwise.
USER_ON = Script(_COMMON + r"""
local state, conns, out, due, lost = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user, cap = ARGV[3], tonumber(ARGV[6])
redis.call('HSET', conns, ARGV[1], ARGV[2])
local st = redis.call('HMGET', state, 'state', 'left_ms', 'due_ms', 'reason')
if st[1] == 'on' then return 0 end
redis.call('PERSIST', state)
local now = now_ms()
local member = cjson.encode({'o', user})
local wrote = 0
if st[1] == 'leaving' then
  redis.call('ZREM', due, member)
  if now < tonumber(st[3]) then
    redis.call('HSET', state, 'state', 'on')
    return 0  -- back within the delay: the debounce, no event
  end
  -- the confirmer is late: the offline it owes comes first
  wrote = emit(out, lost, cap, {id = next_id(state, 'u:' .. user, ARGV[4]), type = 'user.offline',
    ts_ms = tonumber(st[3]), user = user, reason = st[4], since_ms = tonumber(st[2])})
end
redis.call('HSET', state, 'state', 'on')
return wrote + emit(out, lost, cap, {id = next_id(state, 'u:' .. user, ARGV[4]),
  type = 'user.online', ts_ms = now, user = user, gateway = ARGV[7], conn = ARGV[1]})
""")

# KEYS: state, conns, out, due, lost. ARGV: conn, holder, user, fresh epoch, delay ms, cap,
# reason, state ttl ms. Only the holder's entry is removed, so a repeat (or a sweep racing
# the gateway) does nothing. Returns 1 if an event was written or scheduled.
USER_OFF = Script(_COMMON + r"""
local state, conns, out, due, lost = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user, delay, cap = ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', conns, ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', conns, ARGV[1])
if redis.call('HLEN', conns) > 0 or redis.call('HGET', state, 'state') ~= 'on' then
  return 0
end
local now = now_ms()
if delay <= 0 then
  redis.call('HSET', state, 'state', 'off')
  redis.call('PEXPIRE', state, ARGV[8])
  return emit(out, lost, cap, {id = next_id(state, 'u:' .. user, ARGV[4]),
    type = 'user.offline', ts_ms = now, user = user, reason = ARGV[7], since_ms = now})
end
redis.call('HSET', state, 'state', 'leaving', 'left_ms', now, 'due_ms', now + delay,
  'reason', ARGV[7])
redis.call('ZADD', due, now + delay, cjson.encode({'o', user}))
return 1
""")

# KEYS: state, conns, members, out, due, lost. ARGV: conn, holder, user, channel, fresh epoch,
# delay ms, cap.
CHANNEL_ON = Script(_COMMON + r"""
local state, conns, members, out, due, lost = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local user, channel, cap = ARGV[3], ARGV[4], tonumber(ARGV[7])
-- a connection written again (a new incarnation) is not a new member
if redis.call('HSET', conns, ARGV[1], ARGV[2]) == 0 then return 0 end
local entity = 'c:' .. channel
local wrote = 0
local now = now_ms()
-- A pending leave or vacate is cancelled; one whose time has passed (the confirmer is late)
-- is emitted first, as it would have been.
local function owed(member, event)  -- cancel, or emit if late
  local score = redis.call('ZSCORE', due, member)
  if not score then return false end
  redis.call('ZREM', due, member)
  if tonumber(score) > now then return false end
  event.id = next_id(state, entity, ARGV[5])
  event.ts_ms = tonumber(score)
  wrote = wrote + emit(out, lost, cap, event)
  return true
end
redis.call('PERSIST', state)
-- this user's own leave comes before the vacate, as the confirmer would order them
local first = redis.call('HEXISTS', members, user) == 0
local rejoined = false
if first then
  local member = cjson.encode({'l', channel, user})
  local pending = redis.call('ZSCORE', due, member)
  rejoined = pending and tonumber(pending) > now
  if rejoined then
    redis.call('ZREM', due, member)
  else
    owed(member, {type = 'presence.leave', channel = channel, user = user})
  end
end
local vacated = false
local occupied = redis.call('HGET', state, 'occupied') == '1'
if occupied then
  vacated = owed(cjson.encode({'v', channel}), {type = 'channel.vacated', channel = channel})
end
if vacated or not occupied then
  redis.call('HSET', state, 'occupied', '1')
  wrote = wrote + emit(out, lost, cap, {id = next_id(state, entity, ARGV[5]),
    type = 'channel.occupied', ts_ms = now, channel = channel})
end
redis.call('HINCRBY', members, user, 1)
if first and not rejoined then
  wrote = wrote + emit(out, lost, cap, {id = next_id(state, entity, ARGV[5]),
    type = 'presence.join', ts_ms = now, channel = channel, user = user})
end
return wrote
""")

# KEYS: state, conns, members, out, due, lost. ARGV: conn, holder, user, channel, fresh epoch,
# delay ms, cap, state ttl ms.
CHANNEL_OFF = Script(_COMMON + r"""
local state, conns, members, out, due, lost = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local user, channel, delay, cap = ARGV[3], ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HGET', conns, ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', conns, ARGV[1])
local entity = 'c:' .. channel
local now = now_ms()
local wrote = 0
if redis.call('HINCRBY', members, user, -1) <= 0 then
  redis.call('HDEL', members, user)
  if delay <= 0 then
    wrote = emit(out, lost, cap, {id = next_id(state, entity, ARGV[5]), type = 'presence.leave',
      ts_ms = now, channel = channel, user = user})
  else
    redis.call('ZADD', due, now + delay, cjson.encode({'l', channel, user}))
    wrote = 1
  end
end
if redis.call('HLEN', conns) == 0 then
  if delay <= 0 then
    redis.call('HSET', state, 'occupied', '0')
    redis.call('PEXPIRE', state, ARGV[8])
    wrote = wrote + emit(out, lost, cap, {id = next_id(state, entity, ARGV[5]),
      type = 'channel.vacated', ts_ms = now, channel = channel})
  else
    redis.call('ZADD', due, now + delay, cjson.encode({'v', channel}))
    wrote = 1
  end
end
return wrote
""")

# The dispatcher's confirmation of one due member whose time has come. KEYS: the entity's
# keys (user: state, conns; channel: state, conns, members), then out, due, lost. ARGV:
# member, kind, name, user (leave) or '', fresh epoch, cap, state ttl ms. The member is
# confirmed only if its score has passed: a rejoin cancels it, a new leave moves it.
CONFIRM = Script(_COMMON + r"""
local n = #KEYS
local out, due, lost = KEYS[n - 2], KEYS[n - 1], KEYS[n]
local member, kind, name, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cap = tonumber(ARGV[6])
local score = redis.call('ZSCORE', due, member)
local now = now_ms()
if not score then return 0 end
score = tonumber(score)
if score > now then return 0 end
redis.call('ZREM', due, member)
local state = KEYS[1]
if kind == 'o' then
  local st = redis.call('HMGET', state, 'state', 'left_ms', 'reason')
  if st[1] ~= 'leaving' then return 0 end
  redis.call('HSET', state, 'state', 'off')
  redis.call('PEXPIRE', state, ARGV[7])
  return emit(out, lost, cap, {id = next_id(state, 'u:' .. name, ARGV[5]), type = 'user.offline',
    ts_ms = score, user = name, reason = st[3], since_ms = tonumber(st[2])})
elseif kind == 'l' then
  if redis.call('HEXISTS', KEYS[3], user) == 1 then return 0 end
  return emit(out, lost, cap, {id = next_id(state, 'c:' .. name, ARGV[5]),
    type = 'presence.leave', ts_ms = score, channel = name, user = user})
elseif kind == 'v' then
  if redis.call('HLEN', KEYS[2]) > 0 or redis.call('HGET', state, 'occupied') ~= '1' then
    return 0
  end
  redis.call('HSET', state, 'occupied', '0')
  redis.call('PEXPIRE', state, ARGV[7])
  return emit(out, lost, cap, {id = next_id(state, 'c:' .. name, ARGV[5]),
    type = 'channel.vacated', ts_ms = score, channel = name})
end
return 0
""")

# KEYS: out, due, lost. ARGV: now... Returns {outbox length, earliest due score or -1,
# lost count}: what the dispatcher needs to know about a partition, in one call.
PEEK = Script(r"""
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {redis.call('XLEN', KEYS[1]), first[2] or '-1',
        tonumber(redis.call('HGET', KEYS[3], 'n') or '0')}
""")

# KEYS: out, lost. ARGV: fresh id. Turns the loss counter into one webhook.overflow event (it
# may go beyond the cap: it is the one that says events were dropped).
OVERFLOW = Script(_COMMON + r"""
local st = redis.call('HMGET', KEYS[2], 'n', 'first_ms', 'last_ms')
if not st[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[1], '*', 'e', cjson.encode({id = 'overflow/' .. ARGV[1],
  type = 'webhook.overflow', ts_ms = now_ms(), lost = tonumber(st[1]),
  from_ms = tonumber(st[2]), to_ms = tonumber(st[3])}))
return tonumber(st[1])
""")

# KEYS: the lease. ARGV: holder, ttl ms. Take or renew the dispatcher's lease.
LEASE = Script(r"""
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")

# KEYS: the lease. ARGV: holder. Give the lease up, if it is still ours: read and deleted in
# one call, as one that expired meanwhile may be another dispatcher's.
RELEASE = Script(r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# KEYS: roster, dead roster, dead rosters (set)[, the gateway's registry entry, rosters (set)].
# ARGV: dead member[, gateway id]. Moves the roster aside for the sweep, unless the registry
# entry (when given) exists: checked in the same call, so a gateway that comes back writes a
# new roster, never into the one being swept. With no roster, the gateway leaves the rosters
# set in the same call too: removed after the call, it could be a gateway that came back in
# between and listed itself, and would then never be swept. Returns 1 moved, 0 alive, -1 no
# roster. A gateway starting under the id of a predecessor calls it with the first three keys
# only: what is left is the dead one's.
TAKE = Script(r"""
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if KEYS[5] then redis.call('SREM', KEYS[5], ARGV[2]) end
  return -1
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
""")

# Redis Cluster's TAKE, in the roster's slot only. KEYS: roster, dead roster, its tombstone
# (WebhookKeys.swept), the gateway's alive key. ARGV: 1 to check the alive key (the sweep),
# 0 not to (a gateway moving its predecessor's roster). Returns 1 moved (also for a repeat of
# a move that was made), 0 the gateway is alive, -1 no roster, -2 the token's tombstone is
# there (the sweep is done with it: take again under a new token). The dead member is
# listed (SADD sb:wh:dead, another slot) before this call, so a roster moved aside is never
# unlisted; a member listed for a roster never moved is left by FINISH as an empty one.
TAKE_SLOT = Script(r"""
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
""")

# The sweep's end of a dead roster. KEYS: dead roster, its tombstone. ARGV: tombstone ttl ms,
# the incarnation field (ROSTER_INC).
# Deletes the roster only if it holds no connection any more, checked in the same call (a
# move that landed after the sweep read it is left for the next sweep), and leaves the
# tombstone. Returns 1 done, 0 not yet.
FINISH = Script(r"""
local n = redis.call('HLEN', KEYS[1])
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then n = n - 1 end
if n > 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
""")

# KEYS: the gateway's sent marker. ARGV: a transaction's token. Touches the marker if that
# transaction was applied already: the WATCH in front of the transaction's repeat then
# aborts it (see gateway/webhookstate.py).
SENT = Script(r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
""")
