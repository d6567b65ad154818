"""The Redis contract shared by gateways and routers (DESIGN section 6).

No other module spells a Redis key or channel: they ask :class:`Keys`. Keys used together by
one script share a hash tag (``{u:USER}``, ``{b}``, ``{c:NAME}``) so the layout can move to
Redis Cluster later.

Envelopes travel over pub/sub and sit in the replay log, and are msgpack arrays:

- message: ``[stream_key, epoch, offset, published_ms, data]``
- control: ``["!", op, *args]``, e.g. ``["!", "disconnect", user, code, reason]`` or
  ``["!", "drain", reason]`` (sent to one gateway: drain as on SIGTERM, then exit), or
  ``["!", "presence", channel, "join"|"leave", user, conn]`` (on the channel's own pub/sub
  channel: a connection that opted in to its presence events joined or left it; never
  stored, so it takes no offset)

The publish script builds the message envelope itself because only it knows the offset: it
packs the first three items with Redis' built-in cmsgpack and appends the caller's pre-packed
``published_ms`` and ``data``, so the payload is never decoded or re-encoded inside Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from switchboard import streams

CONTROL = "!"
OP_DISCONNECT = "disconnect"
OP_DRAIN = "drain"
OP_PRESENCE = "presence"
PRESENCE_EVENTS = ("join", "leave")


class EnvelopeError(ValueError):
    """Bytes on a Switchboard channel that are not a valid envelope."""


class Message(NamedTuple):
    """A published message as every gateway sees it (a tuple: cheap to create per envelope)."""

    stream_key: str
    epoch: str
    offset: int
    published_ms: int
    data: Any


@dataclass(frozen=True, slots=True)
class Control:
    op: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """A gateway's registry entry (``sb:gw:ID``), as heartbeats write it."""

    gateway_id: str
    host: str
    port: int
    connections: int
    ws: int
    sse: int
    draining: bool
    started_ms: int
    heartbeat_ms: int
    # Optional registry fields (None when the entry does not carry them): the gateway's own
    # readiness, and its connection limit (0: no limit).
    ready: bool | None = None
    max_connections: int | None = None
    # Whether the gateway's own pub/sub channel has a subscriber right now (None: not asked).
    # A killed process's connections are closed by its kernel at once, so this turns False
    # long before its registry entry expires.
    listening: bool | None = None
    # Live deliveries (message x connection) since the gateway started; the router's admin
    # history turns it into deliveries per second.
    delivered: int | None = None


def registry_entry(info: GatewayInfo) -> dict[str, str | int]:
    """The ``sb:gw:ID`` hash fields of an entry (the gateway id is the key's, not a field)."""
    entry: dict[str, str | int] = {
        "host": info.host, "port": info.port, "connections": info.connections,
        "ws": info.ws, "sse": info.sse, "draining": "1" if info.draining else "0",
        "started": info.started_ms, "heartbeat": info.heartbeat_ms,
    }
    # for peers deciding where clients may be moved (gateway.balance.plan)
    if info.ready is not None:
        entry["ready"] = "1" if info.ready else "0"
    if info.max_connections is not None:
        entry["max_connections"] = info.max_connections  # 0: no limit
    if info.delivered is not None:
        entry["delivered"] = info.delivered
    return entry


def parse_registry_entry(gateway_id: str, f: dict[str, str]) -> GatewayInfo:
    """Read back what :func:`registry_entry` wrote (older gateways may lack fields)."""
    limit = f.get("max_connections")
    delivered = f.get("delivered")
    return GatewayInfo(
        gateway_id=gateway_id, host=f.get("host", ""), port=int(f.get("port", 0)),
        connections=int(f.get("connections", 0)), ws=int(f.get("ws", 0)),
        sse=int(f.get("sse", 0)), draining=f.get("draining") == "1",
        started_ms=int(f.get("started", 0)), heartbeat_ms=int(f.get("heartbeat", 0)),
        ready=f["ready"] == "1" if "ready" in f else None,
        max_connections=int(limit) if limit and limit.isdigit() else None,
        delivered=int(delivered) if delivered and delivered.isdigit() else None,
    )


class Keys:
    """Builds every key and pub/sub channel name under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "sb:") -> None:
        self.prefix = prefix

    def log(self, stream_key: str) -> str:
        return f"{self.prefix}{{{stream_key}}}:log"

    def meta(self, stream_key: str) -> str:
        return f"{self.prefix}{{{stream_key}}}:meta"

    def idempotency(self, stream_key: str, idem: str) -> str:
        return f"{self.prefix}{{{stream_key}}}:idem:{idem}"

    def presence(self, channel: str) -> str:
        """Hash conn_id -> "GATEWAY USER" of a channel's subscribers, cluster-wide."""
        return f"{self.prefix}{{{streams.channel_key(channel)}}}:presence"

    def conns(self, user: str) -> str:
        return f"{self.prefix}{{{streams.user_key(user)}}}:conns"

    def gateway(self, gateway_id: str) -> str:
        """Registry hash of one gateway; also the name of its pub/sub channel."""
        return f"{self.prefix}gw:{gateway_id}"

    def gateways(self) -> str:
        return f"{self.prefix}gateways"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def broadcast_channel(self) -> str:
        return f"{self.prefix}broadcast"

    def channel_channel(self, name: str) -> str:
        return f"{self.prefix}ch:{name}"

    def gateway_channel(self, gateway_id: str) -> str:
        return self.gateway(gateway_id)

    def presence_pattern(self) -> str:
        """SCAN MATCH pattern of every channel's presence hash (the prefix glob-escaped)."""
        return glob_escape(self.prefix) + "{c:*}:presence"

    def presence_channel(self, key: str) -> str | None:
        """The channel whose presence hash ``key`` is, or None for any other key."""
        head, tail = f"{self.prefix}{{c:", "}:presence"
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
            name = key[len(head) : -len(tail)]
            return name if streams.valid_channel(name) else None
        return None

    # Redis Cluster mode (docs/scaling.md): sharded pub/sub channels live in the slot of the
    # stream they carry, so the publish script's SPUBLISH stays in the slot it writes.

    def live_channel(self, stream_key: str) -> str:
        """Cluster mode: the sharded channel of one stream (user, broadcast or channel)."""
        return f"{self.prefix}{{{stream_key}}}:live"

    def control_channel(self, gateway_id: str) -> str:
        """Cluster mode: the sharded channel of control envelopes for one gateway (drain)."""
        return f"{self.prefix}{{gw:{gateway_id}}}:control"

    def canary_channel(self, gateway_id: str, tag: str) -> str:
        """Cluster mode: a gateway's canary on one node (``tag`` hashes to a slot it owns)."""
        return f"{self.prefix}canary:{gateway_id}:{{{tag}}}"


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# Lua shared by the scripts that need gateway liveness. A gateway's registry key (also the
# name of its pub/sub channel) expires three heartbeats after it stopped beating.
_GATEWAYS_LUA = r"""
local function gateway_alive(alive, prefix, gw)
  if alive[gw] == nil then
    alive[gw] = redis.call('EXISTS', prefix .. 'gw:' .. gw) == 1
  end
  return alive[gw]
end

-- PUBLISH env to every live gateway holding the user whose map is conns_key, and forget the
-- connections of dead gateways. Returns the gateways published to and the receivers counted
-- by PUBLISH.
local function route_to_user(conns_key, prefix, env)
  local conns = redis.call('HGETALL', conns_key)
  local alive = {}
  local published = {}
  local gateways, received = 0, 0
  for i = 1, #conns, 2 do
    local gw = conns[i + 1]
    if gateway_alive(alive, prefix, gw) then
      if not published[gw] then
        published[gw] = true
        received = received + redis.call('PUBLISH', prefix .. 'gw:' .. gw, env)
        gateways = gateways + 1
      end
    else
      redis.call('HDEL', conns_key, conns[i])
    end
  end
  return gateways, received
end
"""

# KEYS: meta, log, idempotency (same slot; unused unless ARGV[9] == "1"), conns (user only)
# ARGV: 1 mode u|b|c, 2 stream key, 3 tail (packed published_ms + data), 4 history size,
#       5 history ttl ms, 6 meta ttl ms, 7 candidate epoch, 8 key prefix,
#       9 "1" if idempotent, 10 idempotency ttl ms, 11 pub/sub channel (b|c)
# Returns {epoch, offset, recipients (gateways or subscribers), duplicate 0|1}
_STORE_LUA = r"""
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 0, 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- History is gone with the old epoch: start a clean log so ids restart at 1.
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local env = '\149' .. cmsgpack.pack(ARGV[2]) .. cmsgpack.pack(epoch) .. cmsgpack.pack(offset)
  .. ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], offset .. '-0', 'e', env)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[9] == '1' then
  redis.call('SET', KEYS[3], epoch .. ':' .. offset, 'PX', ARGV[10])
end
"""

PUBLISH_LUA = _GATEWAYS_LUA + _STORE_LUA + r"""
local n
if ARGV[1] == 'u' then
  n = route_to_user(KEYS[4], ARGV[8], env)
else
  n = redis.call('PUBLISH', ARGV[11], env)
end
return {epoch, offset, n, 0}
"""

# Redis Cluster mode: the same arguments, and KEYS without conns. Every stream has its own
# sharded channel in its own slot (ARGV[11], Keys.live_channel), so no key of another slot is
# read: no user map, no gateway liveness. Gateways holding the user subscribe to it.
CLUSTER_PUBLISH_LUA = _STORE_LUA + r"""
return {epoch, offset, redis.call('SPUBLISH', ARGV[11], env), 0}
"""

# Gives a connection a real position in a stream that has never been published to.
_ENSURE_META_FN = r"""
local function ensure_meta(meta, log, epoch, ttl)
  local cur = redis.call('HMGET', meta, 'epoch', 'offset')
  if cur[1] then return cur[1], tonumber(cur[2]) end
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta, ttl)
  return epoch, 0
end
"""

# KEYS: meta, log. ARGV: candidate epoch, meta ttl ms. Returns {epoch, offset}.
ENSURE_META_LUA = _ENSURE_META_FN + r"""
local epoch, offset = ensure_meta(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return {epoch, offset}
"""

# The router's history API (router/messages.py): a stream's top and one page of its log, read
# in one step, so the page and the top it is measured against are one consistent snapshot.
# A stream without a position gets one first, as a connecting client's does (ensure_meta).
# KEYS: meta, log. ARGV: 1 candidate epoch, 2 meta ttl ms, 3 mode 'since' | 'last' | 'first',
#       4 epoch of the 'since' position, 5 its offset ('since') or N ('last'), 6 most entries.
# Where the page starts (the same rule as router.messages.start_offset):
# - since (E, K): K + 1 when E is the stream's epoch and K <= top; otherwise the stream's
#   history before the request is lost and the page starts at 1, the epoch's first message;
# - last N: max(1, top - N + 1); first: 1.
# Returns {epoch, top, XRANGE entries from the start up to the top, at most ARGV[6]}.
READ_PAGE_LUA = _ENSURE_META_FN + r"""
local epoch, top = ensure_meta(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local from = 1
if ARGV[3] == 'last' then
  from = math.max(1, top - tonumber(ARGV[5]) + 1)
elseif ARGV[3] == 'since' and ARGV[4] == epoch and tonumber(ARGV[5]) <= top then
  from = tonumber(ARGV[5]) + 1
end
local entries = {}
if from <= top then
  entries = redis.call('XRANGE', KEYS[2], from .. '-0', top .. '-0', 'COUNT', ARGV[6])
end
return {epoch, top, entries}
"""

# KEYS: meta, log. ARGV: epoch. Forgets a stream whose offsets went back (Redis came back
# with older data): its next message starts a new epoch, so every cursor and live position in
# the old one reads as history lost instead of silently matching reused offsets.
# Returns 1 if the epoch was retired, 0 if the stream had moved on to another epoch already.
RETIRE_EPOCH_LUA = r"""
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# KEYS: conns. ARGV: key prefix, envelope. Publishes to each live gateway holding the user.
ROUTE_TO_USER_LUA = _GATEWAYS_LUA + r"""
local _, received = route_to_user(KEYS[1], ARGV[1], ARGV[2])
return received
"""


# KEYS: presence. ARGV: key prefix. Returns the users (one entry per connection) subscribed
# through live gateways; entries of dead gateways are deleted, so presence follows heartbeats.
PRESENCE_LUA = _GATEWAYS_LUA + r"""
local entries = redis.call('HGETALL', KEYS[1])
local alive = {}
local users = {}
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local sep = string.find(value, ' ', 1, true)
  local gw = string.sub(value, 1, sep - 1)
  if gateway_alive(alive, ARGV[1], gw) then
    users[#users + 1] = string.sub(value, sep + 1)
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return users
"""

# Binds a session to its user; never steals another's.
# Returns 1 resumed (it was this user's), 2 new (unknown or expired), 0 foreign.
_CLAIM_SESSION_FN = r"""
local function claim_session(key, user, ttl)
  local owner = redis.call('GET', key)
  if owner and owner ~= user then return 0 end
  redis.call('SET', key, user, 'PX', ttl)
  if owner then return 1 end
  return 2
end
"""

# KEYS: session. ARGV: user, ttl ms.
CLAIM_SESSION_LUA = _CLAIM_SESSION_FN + r"""
return claim_session(KEYS[1], ARGV[1], ARGV[2])
"""
SESSION_FOREIGN, SESSION_RESUMED, SESSION_NEW = 0, 1, 2

# One connection's registration in one call (one node only: its keys span slots):
# KEYS: conns, session, then meta and log of each of N streams, then a presence hash per
#       channel.
# ARGV: 1 connection id, 2 gateway id, 3 user, 4 session ttl ms, 5 meta ttl ms, 6 N,
#       7 presence value, then a candidate epoch per stream.
# Returns {claim, epoch 1, offset 1, ..., epoch N, offset N}. The map entry is written before
# the tops are read: every message published after them is routed to this gateway.
REGISTER_LUA = _CLAIM_SESSION_FN + _ENSURE_META_FN + r"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local out = {claim_session(KEYS[2], ARGV[3], ARGV[4])}
local n = tonumber(ARGV[6])
for i = 1, n do
  local epoch, offset = ensure_meta(KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[7 + i], ARGV[5])
  out[#out + 1] = epoch
  out[#out + 1] = offset
end
for i = 3 + 2 * n, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[7])
end
return out
"""


def presence_value(gateway_id: str, user: str) -> str:
    """A presence hash value, ``"GATEWAY USER"``: PRESENCE_LUA splits it at the first space
    (gateway ids have none) to drop the entries of dead gateways."""
    return f"{gateway_id} {user}"


def registry_ttl_ms(heartbeat_interval: float) -> int:
    """A gateway's registry key outlives its last heartbeat by three missed ones: then
    publishers treat it as dead (and drop its map entries)."""
    return ms(heartbeat_interval * 3 + 1)


def session_ttl_ms(history_ttl: float, heartbeat_interval: float) -> int:
    """A live connection's session key: the replay window, plus the heartbeats its gateway may
    miss before the connection counts as gone. A closed one gets ``history_ttl`` alone."""
    return ms(history_ttl + heartbeat_interval * 3)


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def now_ms() -> int:
    return int(time.time() * 1000)


def pack_tail(data: Any, published_ms: int | None = None) -> bytes:
    """The caller's part of a message envelope: published time and payload, packed once."""
    packer = msgpack.Packer(use_bin_type=True)
    stamp = now_ms() if published_ms is None else published_ms
    return bytes(packer.pack(stamp)) + bytes(packer.pack(data))


def pack_message(msg: Message) -> bytes:
    """Python twin of the envelope the publish script builds (used by tests and tools)."""
    return bytes(
        msgpack.packb(
            [msg.stream_key, msg.epoch, msg.offset, msg.published_ms, msg.data],
            use_bin_type=True,
        )
    )


def pack_control(op: str, *args: Any) -> bytes:
    return bytes(msgpack.packb([CONTROL, op, *args], use_bin_type=True))


class PresenceEvent(NamedTuple):
    channel: str
    event: str  # one of PRESENCE_EVENTS
    user: str
    conn: str

    def pack(self) -> bytes:
        return pack_control(OP_PRESENCE, *self)

    @classmethod
    def of(cls, control: Control) -> PresenceEvent | None:
        """The event a presence control carries, or None if it is malformed."""
        args = control.args
        if len(args) != 4 or not all(isinstance(a, str) for a in args):
            return None
        event = cls(*args)
        if event.event not in PRESENCE_EVENTS or not streams.valid_channel(event.channel):
            return None
        return event


def log_messages(entries: list[Any]) -> list[Message]:
    """The messages of an ``XRANGE`` reply: ``[id, fields]`` pairs, the fields a flat list
    (hiredis, a script's reply) or a dict (redis-py); an entry that does not unpack is
    skipped, so a reader sees the gap it leaves."""
    found: list[Message] = []
    for _entry_id, fields in entries:
        if isinstance(fields, dict):
            raw = fields.get(b"e")
        else:
            raw = dict(zip(fields[::2], fields[1::2], strict=False)).get(b"e")
        if not isinstance(raw, bytes):
            continue
        try:
            env = unpack(raw)
        except EnvelopeError:
            continue
        if isinstance(env, Message):
            found.append(env)
    return found


def unpack(raw: bytes) -> Message | Control:
    """Decode an envelope; raises :class:`EnvelopeError` for anything malformed."""
    try:
        items = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EnvelopeError(f"undecodable envelope: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise EnvelopeError("envelope is not a non-empty array")
    if items[0] == CONTROL:
        if len(items) < 2 or not isinstance(items[1], str):
            raise EnvelopeError("control envelope without an op")
        return Control(items[1], tuple(items[2:]))
    if len(items) != 5:
        raise EnvelopeError(f"message envelope has {len(items)} items, expected 5")
    key, epoch, offset, published, data = items
    if not (isinstance(key, str) and isinstance(epoch, str) and isinstance(offset, int)):
        raise EnvelopeError("message envelope has badly typed stream, epoch or offset")
    return Message(key, epoch, offset, int(published or 0), data)
