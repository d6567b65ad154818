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
from typing import Any

from switchboard import contract, streams
from switchboard.pipelined import Script
from switchboard.store import text
from switchboard.streams import Position

ACK_INTERVAL = 0.25  # seconds a gateway gathers acks before writing them
MAX_SESSIONS = 32  # sessions kept per user; beyond, the least recently acked is dropped
MAX_FIELD = "_max"


def acks_key(prefix: str, user: str) -> str:
    return f"{prefix}{{{streams.user_key(user)}}}:acks"


def receipts_key(prefix: str, user: str) -> str:
    """A zset of the user's pending receipts: member ``EPOCH:OFFSET``, score the deadline."""
    return f"{prefix}{{{streams.user_key(user)}}}:receipts"


@dataclass(frozen=True, slots=True)
class Ack:
    """One connection's highest acknowledged offset of its user stream."""

    user: str
    session: str
    conn: str
    epoch: str
    offset: int


# KEYS: acks, meta (of the user stream). ARGV: 1 ttl ms, 2 most sessions, then per session:
# session, conn, epoch, offset. Offsets only ever rise (per session, and _max); an ack of
# another epoch than the stream's current one, or past its top, is ignored.
# Returns the new _max offset (-1: none in the current epoch).
ACK = Script(r"""
local acks, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then return -1 end
local top = tonumber(redis.call('HGET', meta, 'offset') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best = -1
local max = redis.call('HGET', acks, '_max')
if max then
  local sep = string.find(max, ' ', 1, true)
  if sep and string.sub(max, 1, sep - 1) == epoch then
    best = tonumber(string.sub(max, sep + 1)) or -1
  end
end
local raised = false
for i = 3, #ARGV, 4 do
  local session, conn, e, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if e == epoch and n and n <= top then
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
        args += [a.session, a.conn, a.epoch, a.offset]
    return [acks_key(prefix, user), contract.Keys(prefix).meta(streams.user_key(user))], args


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
    """Where each of a user's connections is in its user stream (``GET
    /v1/users/{U}/positions``): the stream's top, the highest offset acknowledged, each
    session's last ack, and the live connections (gateway id) that acked nothing yet."""

    top: Position
    acked: Position | None
    sessions: list[SessionAck]
    connections: dict[str, str]  # live conn -> gateway
    pending_receipts: int


async def read_positions(store: Any, user: str) -> UserPositions:
    """Read by ``store`` (:class:`switchboard.store.Store` or its cluster twin): the keys are
    all in the user's slot; the gateways' registry entries tell which connections live."""
    top = await store.top(streams.user_key(user))
    raw = await store.redis.hgetall(acks_key(store.settings.prefix, user))
    pending = await store.redis.zcard(receipts_key(store.settings.prefix, user))
    conns = await store.connections(user)
    alive = await store.live_gateways(set(conns.values()))
    best, sessions = parse_acks({text(k): text(v) for k, v in raw.items()})
    return UserPositions(top, best, sessions,
                         {c: g for c, g in conns.items() if g in alive}, int(pending))
