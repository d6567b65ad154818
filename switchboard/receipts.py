"""The delivery-receipt part of the Redis contract (docs/receipts.md): keys and Lua scripts.

A client acknowledges the offsets of its user stream it has processed (``{"type":"ack"}``).
Its gateway coalesces the acks of all its connections and writes them every
:data:`ACK_INTERVAL` seconds: one :data:`ACK` call per user, in one pipeline. Every key of a
user's call is in the user's slot (``{u:USER}``), so the same script runs on one node and on
a Redis Cluster.

``sb:{u:U}:acks`` is a hash: field SESSION -> ``"CONN EPOCH OFFSET MS"`` (the highest offset
that session acknowledged, through which connection, and when), and :data:`MAX_FIELD` ->
``"EPOCH OFFSET"``, the highest offset acknowledged by any session in the stream's current
epoch. An ack in another epoch than the stream's is ignored: offsets of a new epoch say
nothing about the old one's.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard import contract, streams
from switchboard import whcontract as wh
from switchboard.pipelined import Script
from switchboard.streams import Position

ACK_INTERVAL = 0.25  # seconds a gateway gathers acks before writing them
MAX_SESSIONS = 32  # sessions kept per user; beyond, the least recently acked is dropped
MAX_FIELD = "_max"


def acks_key(prefix: str, user: str) -> str:
    return f"{prefix}{{{streams.user_key(user)}}}:acks"


def receipts_key(prefix: str, user: str) -> str:
    """A zset of the user's pending receipts: member ``EPOCH:OFFSET``, score the deadline."""
    return f"{prefix}{{{streams.user_key(user)}}}:receipts"


def rcpt_key(prefix: str, user: str) -> str:
    """A hash of the user's pending receipts: EPOCH:OFFSET -> published, deadline, key."""
    return f"{prefix}{{{streams.user_key(user)}}}:rcpt"


@dataclass(frozen=True, slots=True)
class Ack:
    """One connection's acknowledgement of its user stream: every offset in ``floor + 1 ..
    offset`` of ``epoch`` is processed (the connection delivered all of them)."""

    user: str
    session: str
    conn: str
    epoch: str
    floor: int
    offset: int


# KEYS: acks, meta (of the user stream), receipts, rcpt. ARGV: 1 ttl ms, 2 most sessions,
# then per ack: session, conn, epoch, floor, offset. Offsets only ever rise (per session, and
# _max); an ack of another epoch than the stream's current one, or past its top, is ignored.
# Receipts in floor+1..offset whose deadline has not passed are cleared: delivered in time.
# (One whose deadline passed is left for the dispatcher: it fires, late, as it would have.)
# Returns the new _max offset (-1: none in the current epoch).
ACK = Script(wh.NOW_MS_FN + r"""
local acks, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then return -1 end
local top = tonumber(redis.call('HGET', meta, 'offset') or '0')
local now = now_ms()
local best = -1
local max = redis.call('HGET', acks, '_max')
if max then
  local sep = string.find(max, ' ', 1, true)
  if sep and string.sub(max, 1, sep - 1) == epoch then
    best = tonumber(string.sub(max, sep + 1)) or -1
  end
end
local raised = false
local receipts = redis.call('EXISTS', KEYS[3]) == 1
for i = 3, #ARGV, 5 do
  local session, conn, e = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local floor, n = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if e == epoch and n and n <= top then
    if receipts then  -- the reply is a copy: removing while walking it is safe
      for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')) do
        local re, ro = string.match(r, '^(.+):(%d+)$')
        if re == epoch and tonumber(ro) > floor and tonumber(ro) <= n then
          redis.call('ZREM', KEYS[3], r)
          redis.call('HDEL', KEYS[4], r)
        end
      end
    end
    local old = redis.call('HGET', acks, session)
    if old then
      local a, b, c = string.match(old, '^(%S+) (%S+) (%d+)')
      if b == epoch and tonumber(c) > n then n = tonumber(c) end
    end
    redis.call('HSET', acks, session, conn .. ' ' .. epoch .. ' ' .. n .. ' ' .. now)
    if n > best then
      best = n
      raised = true
    end
  end
end
if raised then redis.call('HSET', acks, '_max', epoch .. ' ' .. best) end
local limit = tonumber(ARGV[2])
if redis.call('HLEN', acks) > limit + 1 then
  -- Too many sessions: drop the least recently acked (the _max field stays).
  local all = redis.call('HGETALL', acks)
  local aged = {}
  for i = 1, #all, 2 do
    if all[i] ~= '_max' then
      local at = tonumber(string.match(all[i + 1], '(%d+)$') or '0')
      aged[#aged + 1] = {at, all[i]}
    end
  end
  table.sort(aged, function(x, y) return x[1] < y[1] end)
  for i = 1, #aged - limit do redis.call('HDEL', acks, aged[i][2]) end
end
redis.call('PEXPIRE', acks, ARGV[1])
return best
""")


def ack_call(prefix: str, meta_ttl: float,
             batch: list[Ack]) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one user's :data:`ACK` call (every ack of ``batch`` is that user's)."""
    user = batch[0].user
    args: list[str | int] = [contract.ms(meta_ttl), MAX_SESSIONS]
    for a in batch:
        args += [a.session, a.conn, a.epoch, a.floor, a.offset]
    return [acks_key(prefix, user), contract.Keys(prefix).meta(streams.user_key(user)),
            receipts_key(prefix, user), rcpt_key(prefix, user)], args


@dataclass(frozen=True, slots=True)
class SessionAck:
    session: str
    conn: str
    acked: Position
    acked_ms: int


def parse_acks(raw: dict[str, str]) -> tuple[Position | None, list[SessionAck]]:
    """An acks hash (decoded) as ``_max`` and each session's entry; unreadable fields are
    skipped (they were not written by :data:`ACK`)."""
    best: Position | None = None
    sessions: list[SessionAck] = []
    for field, value in raw.items():
        parts = value.split(" ")
        if field == MAX_FIELD:
            if len(parts) == 2 and parts[1].isdigit():
                best = Position(parts[0], int(parts[1]))
        elif len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            sessions.append(SessionAck(field, parts[0], Position(parts[1], int(parts[2])),
                                       int(parts[3])))
    sessions.sort(key=lambda s: s.session)
    return best, sessions


@dataclass(frozen=True, slots=True)
class UserPositions:
    """Where each of a user's sessions is in its user stream (``GET
    /v1/users/{U}/positions``): the stream's top, the highest offset acknowledged in its
    current epoch, each session's last ack, and the user's live connections."""

    top: Position
    acked: Position | None
    sessions: list[SessionAck]
    connections: dict[str, str]  # live conn -> gateway
    pending_receipts: int


# -- receipt deadlines (one Redis node) -------------------------------------------------------
#
# A publish to a user may ask for a receipt: if no session of the user acknowledged the
# message within ``within_ms``, the webhook dispatcher fires ``message.undelivered``. The
# publish script writes, in the same call as the message:
#   sb:{u:U}:receipts  zset  member EPOCH:OFFSET -> deadline ms
#   sb:{u:U}:rcpt      hash  EPOCH:OFFSET -> "PUBLISHED_MS DEADLINE_MS IDEMPOTENCY_KEY"
#   the due set of the user's webhook partition: ["r", U] at its earliest deadline
# The due set is that of the user's webhook partition: on one node any key, on a Redis
# Cluster one in the user's own slot (whcontract.WebhookKeys: there a partition is a slot).

MIN_WITHIN_MS = 1000  # acks take up to 1.25 s to reach Redis (SDK batch + gateway batch)
MAX_WITHIN_MS = 24 * 3600 * 1000
MAX_PENDING = 1000  # receipts waiting per user; one more is refused (429), nothing stored
RECEIPTS_UNCONFIGURED = ("receipts need the webhook dispatcher: set SWITCHBOARD_WEBHOOK_URL "
                         "for the router too (docs/receipts.md)")
FULL = 2  # the publish script's 4th reply: the user has MAX_PENDING receipts waiting


class ReceiptsFull(Exception):
    """The user has :data:`MAX_PENDING` receipts waiting: the message was not stored."""


# KEYS: meta, log, idempotency, conns (one node only), receipts, rcpt, due. ARGV: the
# publish script's 1..11, then 12 within ms, 13 most pending, 14 due member, 15 receipt ttl
# ms, 16 idempotency key or ''. For user targets only.
# Returns the publish script's reply; {'', 0, 0, 2} when the user's receipts are full (checked
# before anything is stored; a repeat of a stored idempotent publish is answered as one).
_RECEIPT_PUBLISH = wh.NOW_MS_FN + r"""
local receipts, rcpt, due = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local within = tonumber(ARGV[12])
if not (ARGV[9] == '1' and redis.call('EXISTS', KEYS[3]) == 1) then
  if redis.call('ZCARD', receipts) >= tonumber(ARGV[13]) then return {'', 0, 0, 2} end
end
""" + contract._STORE_LUA + r"""
do
  local now = now_ms()
  local deadline = now + within
  local member = epoch .. ':' .. offset
  local idem = ARGV[16]
  redis.call('ZADD', receipts, deadline, member)
  redis.call('HSET', rcpt, member, now .. ' ' .. deadline .. ' ' .. idem)
  local ttl = tonumber(ARGV[15])
  for _, key in ipairs({receipts, rcpt}) do
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  end
  redis.call('ZADD', due, 'LT', deadline, ARGV[14])
end
"""
RECEIPT_PUBLISH = Script(contract._GATEWAYS_LUA + _RECEIPT_PUBLISH + r"""
return {epoch, offset, route_to_user(KEYS[4], ARGV[8], env), 0}
""")
# Redis Cluster: every key is in the user's slot (the due set of its partition too, which is
# that slot), and the message goes to the user's sharded channel, as CLUSTER_PUBLISH_LUA's.
CLUSTER_RECEIPT_PUBLISH = Script(_RECEIPT_PUBLISH + r"""
return {epoch, offset, redis.call('SPUBLISH', ARGV[11], env), 0}
""")


def receipt_call(prefix: str, user: str, within_ms: int, idempotency_key: str | None,
                 meta_ttl: float, *, cluster: bool = False) -> tuple[list[str], list[str | int]]:
    """What :data:`RECEIPT_PUBLISH` takes after the publish script's KEYS and ARGV."""
    keys = wh.WebhookKeys(prefix, cluster=cluster)
    entity = streams.user_key(user)
    return ([receipts_key(prefix, user), rcpt_key(prefix, user),
             keys.due(keys.partition(entity))],
            [within_ms, MAX_PENDING, wh.due_member("r", user),
             within_ms + contract.ms(meta_ttl), idempotency_key or ""])


# The dispatcher's check of one user's receipts whose deadline has come (due member
# ["r", U]). KEYS: receipts, rcpt, acks, meta, conns, then the partition's out, due, lost.
# ARGV: 1 due member, 2 user, 3 outbox cap. A receipt acknowledged in time is gone already
# (the ACK that covered it cleared it), so every receipt still here whose deadline passed
# fires message.undelivered: "not_acked", or "epoch_changed" when the stream is no longer in
# the receipt's epoch (history lost: offsets of the new epoch say nothing about it, so it
# errs to undelivered, never to a false delivered). The member is put back at the next
# deadline. (acks is among the KEYS only to keep every user key of the call declared.)
RECEIPTS_DUE = Script(wh._COMMON + r"""
local receipts, rcpt, acks, meta, conns = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local out, due, lost = KEYS[6], KEYS[7], KEYS[8]
local member, user, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local score = redis.call('ZSCORE', due, member)
if not score or tonumber(score) > now then return 0 end
redis.call('ZREM', due, member)
local epoch = redis.call('HGET', meta, 'epoch')
local wrote = 0
for _, r in ipairs(redis.call('ZRANGEBYSCORE', receipts, '-inf', now)) do
  local e, o = string.match(r, '^(.+):(%d+)$')
  local info = redis.call('HGET', rcpt, r) or ''
  local published, deadline, idem = string.match(info, '^(%d+) (%d+) ?(.*)$')
  redis.call('ZREM', receipts, r)
  redis.call('HDEL', rcpt, r)
  if e then
    local ev = {id = 'r:' .. user .. '/' .. e .. '/' .. o, type = 'message.undelivered',
      ts_ms = tonumber(deadline) or now, user = user, stream = 'user', epoch = e,
      offset = tonumber(o), published_ms = tonumber(published),
      deadline_ms = tonumber(deadline), connections = redis.call('HLEN', conns),
      reason = (e == epoch) and 'not_acked' or 'epoch_changed'}
    if idem and idem ~= '' then ev.idempotency_key = idem end
    wrote = wrote + emit(out, lost, cap, ev)
  end
end
local nxt = redis.call('ZRANGE', receipts, 0, 0, 'WITHSCORES')
if nxt[2] then redis.call('ZADD', due, nxt[2], member) end
return wrote
""")


def due_call(prefix: str, user: str, member: str, cap: int, *,
             cluster: bool = False) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of :data:`RECEIPTS_DUE` for one user."""
    keys = wh.WebhookKeys(prefix, cluster=cluster)
    entity = streams.user_key(user)
    return ([receipts_key(prefix, user), rcpt_key(prefix, user), acks_key(prefix, user),
             contract.Keys(prefix).meta(entity), contract.Keys(prefix).conns(user),
             *keys.part_keys(keys.partition(entity))], [member, user, cap])
