"""What a client may ask over its WebSocket: ping, subscribe, unsubscribe, publish, ack.

Subscribing to a channel is a small resume: the connection joins the hub (live messages for
the channel wait in the session), the gateway makes sure its own Redis subscription to the
channel is confirmed, then reads the channel's top and, with a cursor, the log from there.
Denied or malformed requests get an ``error`` message; the connection stays.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from gateway import acks, hub, presence, proxyrules
from gateway.attach import attach
from gateway.errors import BackendUnavailable, ProxyUnavailable
from gateway.ports import Client, Registration, Services
from gateway.wire import Outgoing
from switchboard import streams, untrusted
from switchboard.streams import Position

log = logging.getLogger("switchboard.gateway")

# The proxied publishes of each connection that has some waiting, in the order it sent them
# (the first is the one being asked about). An entry lives only while its queue is worked
# off by its one task (:func:`_work_off`), so it neither outlives the connection nor costs
# a connection that never publishes through the proxy anything.
_proxied: dict[Client, deque[tuple[str, Any, Any]]] = {}


def echo(value: Any) -> str | int | None:
    """A client value fit to quote back: short strings and integers only. Anything else (a
    nested structure, a huge string) is not repeated, and what UTF-8 cannot carry (a lone
    surrogate, which JSON text can spell) is escaped, so an error reply can always be built."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and len(value) <= 128:
        return untrusted.quotable(value)
    return None


def error(conn: Client, code: str, message: str, **extra: Any) -> None:
    safe = {k: echo(v) for k, v in extra.items()}
    conn.transport.send_obj({"type": "error", "code": code,
                             "message": untrusted.quotable(message), **safe})


def registration(conn: hub.Client) -> Registration:
    s = conn.session
    names = tuple(k[2:] for k in s.channels)
    return Registration(s.user, conn.conn_id, s.session_id, names)


def channel_left(svc: Services, conn: Client, key: str) -> None:
    if svc.hub.unsubscribe(conn, key):
        release_channel(svc, key)


def release_channel(svc: Services, key: str) -> None:
    """No local subscriber left: stop receiving the channel (DESIGN 6)."""
    svc.tracker.forget(key)
    svc.spawn(_unsubscribe_channel(svc, key))


async def _unsubscribe_channel(svc: Services, key: str) -> None:
    # A subscribe that came in since the last one left owns the Redis subscription now.
    if not svc.hub.has_channel(key):
        await svc.backplane.unsubscribe_channel(key[2:])


def parse_channel_cursor(value: object) -> Position | None:
    """A subscribe cursor: ``{"epoch": E, "offset": N}`` or ``"E:N"``; raises ValueError."""
    if value is None:
        return None
    if isinstance(value, dict):
        epoch, offset = value.get("epoch"), value.get("offset")
    elif isinstance(value, str) and value.count(":") == 1:
        epoch, _, offset_text = value.partition(":")
        offset = int(offset_text) if offset_text.isdigit() else None
    else:
        raise ValueError("cursor must be {epoch, offset} or 'EPOCH:OFFSET'")
    if not (isinstance(epoch, str) and streams.EPOCH_RE.fullmatch(epoch)):
        raise ValueError("cursor epoch must be letters and digits")
    if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
        raise ValueError("cursor offset must be a non-negative integer")
    return Position(epoch, offset)


def check_channel(conn: Client, msg: dict[str, Any], publish: bool = False,
                  **reply: Any) -> str | None:
    """The channel of a subscribe or publish, or None after an error (carrying ``reply``'s
    fields, e.g. the publish's ``id``)."""
    channel = msg.get("channel")
    if not streams.valid_channel(channel):
        error(conn, "bad_request", "channel must match [A-Za-z0-9_-]{1,64}", channel=channel,
              **reply)
        return None
    assert isinstance(channel, str)
    allowed = conn.claims.may_publish(channel) if publish else conn.claims.may_subscribe(
        channel)
    if not allowed:
        what = "publish to" if publish else "subscribe to"
        error(conn, "forbidden", f"your token does not allow you to {what} {channel!r}",
              channel=channel, **reply)
        return None
    return channel


def handle(svc: Services, conn: Client, msg: dict[str, Any]) -> None:
    kind = msg["type"]
    if kind == "ping":
        conn.transport.send_obj({"type": "pong"})
    elif kind == "subscribe":
        subscribe(svc, conn, msg)
    elif kind == "unsubscribe":
        unsubscribe(svc, conn, msg)
    elif kind == "publish":
        publish_command(svc, conn, msg)
    elif kind == "ack":
        refused = acks.command(svc, conn, msg)
        if refused is not None:
            error(conn, "bad_request", refused, stream=msg.get("stream"))
    else:
        svc.metrics.client_error()
        error(conn, "unknown_type", f"unknown type {kind!r}")


def publish_command(svc: Services, conn: Client, msg: dict[str, Any]) -> None:
    msg_id = msg.get("id")
    # Every refusal repeats the id, so the client can settle that request instead of waiting
    # out its timeout; only an id we can repeat exactly (not a lone surrogate, say).
    echoable = msg_id is None or echo(msg_id) == msg_id
    ids = {"id": msg_id} if msg_id is not None and echoable else {}
    channel = check_channel(conn, msg, publish=True, **ids)
    if channel is None:
        return
    if not echoable:
        # Refused before anything is stored.
        error(conn, "bad_request", "'id' must be an integer or a short string", channel=channel)
    elif "data" not in msg:
        error(conn, "bad_request", "publish needs 'data'", channel=channel, **ids)
    elif not untrusted.finite(msg["data"]):
        # As the router refuses it: JSON subscribers could not read it back.
        error(conn, "bad_request", "data holds NaN or Infinity, which JSON clients cannot "
              "read", channel=channel, **ids)
    elif svc.proxy is not None and svc.proxy.publishes(channel):
        queue_proxied(svc, conn, channel, msg["data"], msg_id)
    else:
        svc.spawn(publish(svc, conn, channel, msg["data"], msg_id))


def subscribe(svc: Services, conn: Client, msg: dict[str, Any]) -> None:
    channel = check_channel(conn, msg)
    if channel is None:
        return
    try:
        cursor = parse_channel_cursor(msg.get("cursor"))
    except ValueError as exc:
        error(conn, "bad_request", str(exc), channel=channel)
        return
    key = streams.channel_key(channel)
    session = conn.session
    if session.follows(key) or key in session.joining:
        error(conn, "already_subscribed", f"already subscribed to {channel!r}", channel=channel)
        return
    if len(session.channels) >= svc.settings.max_channels:
        error(conn, "too_many_channels",
              f"at most {svc.settings.max_channels} channels per connection", channel=channel)
        return
    session.begin_join(key)
    svc.hub.subscribe(conn, key)
    # The token is taken now: by the time the task runs, an unsubscribe + subscribe of the
    # same channel may have replaced it, and this join must know it is the old one.
    svc.spawn(join(svc, conn, channel, cursor, session.joining[key]))


async def join(svc: Services, conn: Client, channel: str, cursor: Position | None,
               token: list[Outgoing]) -> None:
    """Finish a subscribe. Runs under the connection's channel lock, so its presence write
    and a later unsubscribe's presence removal reach Redis in the order the client asked.
    ``token`` identifies this subscribe: a re-subscribe of the channel makes a new one."""
    key = streams.channel_key(channel)
    session = conn.session

    def current() -> bool:
        return session.joining.get(key) is token and conn in svc.hub

    watch = conn.claims.wants_presence(channel)
    if svc.proxy is not None and svc.proxy.subscribes(channel):
        refused = await ask_subscribe(svc, conn, channel)
        if isinstance(refused, proxyrules.Allowed):
            if refused.presence is not None:
                watch = refused.presence  # the backend's word over the claims'
        else:
            if current():
                session.leave(key)
                channel_left(svc, conn, key)
                error(conn, *refused, channel=channel)
            else:
                superseded(conn, channel)
            return
    async with conn.channel_lock():
        if not current():
            superseded(conn, channel)
            return
        reg = registration(conn)
        try:
            await svc.backplane.subscribe_channel(channel)
            top = await svc.backplane.join(reg, channel)
            requested = {streams.wire_name(key): cursor} if cursor else {}
            outcome = await attach(svc, requested, {key: top})
        except BackendUnavailable as exc:
            log.warning("subscribe to %s failed: %s", channel, exc)
            if current():
                session.leave(key)
                channel_left(svc, conn, key)
                error(conn, "unavailable", f"cannot subscribe to {channel!r} right now",
                      channel=channel)
            else:
                superseded(conn, channel)
            return
        if not current():
            # Unsubscribed meanwhile: take back our presence entry unless a newer subscribe
            # of the same channel is under way (it writes its own after us).
            # A closed connection's unregister may have overtaken our presence write.
            gone = conn not in svc.hub
            if gone or (not session.follows(key) and key not in session.joining):
                await svc.backplane.leave(reg, channel)
            superseded(conn, channel)
            return
    start = outcome.start[key]
    if cursor is not None:
        svc.metrics.resumed(outcome.recovered)
    presence.joined(svc, conn, channel, watch)
    conn.transport.send_obj({"type": "subscribed", "channel": channel, "epoch": start.epoch,
                             "offset": start.offset, "recovered": outcome.recovered})
    await conn.send_replay(session.finish_join(key, start, [Outgoing(m) for m in outcome.replay]))


def superseded(conn: Client, channel: str) -> None:
    """Every subscribe gets an answer, also one overtaken by an unsubscribe."""
    error(conn, "superseded", f"unsubscribed from {channel!r} before the subscribe completed",
          channel=channel)


def unsubscribe(svc: Services, conn: Client, msg: dict[str, Any]) -> None:
    channel = msg.get("channel")
    session = conn.session
    key = streams.channel_key(channel) if isinstance(channel, str) else ""
    if not key or (not session.follows(key) and key not in session.joining):
        error(conn, "not_subscribed", f"not subscribed to {echo(channel)!r}", channel=channel)
        return
    assert isinstance(channel, str)
    reg = registration(conn)
    presence.left(svc, conn, [key])
    session.leave(key)
    channel_left(svc, conn, key)
    svc.spawn(leave_presence(svc, conn, reg, channel))
    conn.transport.send_obj({"type": "unsubscribed", "channel": channel})


async def leave_presence(svc: Services, conn: Client, reg: Registration,
                         channel: str) -> None:
    key = streams.channel_key(channel)
    async with conn.channel_lock():
        # A subscribe sent right after the unsubscribe owns the entry now.
        if not conn.session.follows(key) and key not in conn.session.joining:
            await svc.backplane.leave(reg, channel)


async def ask_subscribe(svc: Services, conn: Client,
                        channel: str) -> tuple[str, str] | proxyrules.Allowed:
    """The subscribe proxy's refusal as (code, message), or its :class:`Allowed`."""
    assert svc.proxy is not None
    body = proxyrules.connection_body(
        "subscribe", gateway=svc.gateway_id, claims=conn.claims, conn_id=conn.conn_id,
        session=conn.session.session_id, channel=channel)
    try:
        verdict = await svc.proxy.subscribe(body)
    except ProxyUnavailable:
        return "unavailable", f"cannot subscribe to {channel!r} right now"
    except Exception:
        # Anything else (a body that would not encode, a bug) is no verdict either: the join
        # must end and answer, never die with its channel left in session.joining.
        log.exception("proxy subscribe to %s failed", channel)
        return "unavailable", f"cannot subscribe to {channel!r} right now"
    if isinstance(verdict, proxyrules.Denied):
        return "forbidden", verdict.reason or f"you may not subscribe to {channel!r}"
    return verdict


def queue_proxied(svc: Services, conn: Client, channel: str, data: Any, msg_id: Any) -> None:
    """Queue a publish the publish proxy decides. A connection's proxied publishes are asked
    and stored one at a time, in the order it sent them, apart from its subscribes (which
    wait for no publish); at most ``inbound_burst`` wait per connection, one more is refused
    ``unavailable`` at once (a slow backend must not let a client pile up work)."""
    queue = _proxied.get(conn)
    if queue is None:
        queue = _proxied[conn] = deque()
        svc.spawn(_work_off(svc, conn, queue))
    elif len(queue) >= max(1, svc.settings.inbound_burst):
        error(conn, "unavailable", "too many publishes waiting for the backend, message not "
              "stored", channel=channel, id=msg_id)
        return
    queue.append((channel, data, msg_id))


async def _work_off(svc: Services, conn: Client, queue: deque[tuple[str, Any, Any]]) -> None:
    try:
        while queue and not conn.is_closed():
            await proxied_publish(svc, conn, *queue[0])
            queue.popleft()
    finally:
        if _proxied.get(conn) is queue:
            del _proxied[conn]


async def proxied_publish(svc: Services, conn: Client, channel: str, data: Any,
                          msg_id: Any) -> None:
    """Ask the publish proxy (never twice: a publish is not idempotent), then store what it
    allowed, rewritten or not. Nothing is asked for a connection that is gone."""
    assert svc.proxy is not None
    if conn.is_closed():
        return
    body = proxyrules.connection_body(
        "publish", gateway=svc.gateway_id, claims=conn.claims, conn_id=conn.conn_id,
        session=conn.session.session_id, channel=channel, data=data)
    try:
        verdict = await svc.proxy.publish(body)
    except ProxyUnavailable:
        error(conn, "unavailable", "message not stored, try again", channel=channel, id=msg_id)
        return
    except ValueError as exc:  # data JSON cannot carry (nesting too deep for any encoder)
        error(conn, "bad_request", f"data cannot be published: {exc}", channel=channel,
              id=msg_id)
        return
    except Exception:
        # No verdict: the publish is answered and the connection's next one asked.
        log.exception("proxy publish to %s failed", channel)
        error(conn, "unavailable", "message not stored, try again", channel=channel, id=msg_id)
        return
    if isinstance(verdict, proxyrules.Denied):
        error(conn, "forbidden", verdict.reason or f"you may not publish to {channel!r}",
              channel=channel, id=msg_id)
        return
    if conn.is_closed():
        return
    await publish(svc, conn, channel, verdict.data if verdict.rewritten else data, msg_id)


async def publish(svc: Services, conn: Client, channel: str, data: Any, msg_id: Any) -> None:
    try:
        result = await svc.backplane.publish(channel, data)
    except (ValueError, TypeError, OverflowError) as exc:
        # msgpack refuses what it cannot carry (nesting past 512, integers past 64 bits).
        error(conn, "bad_request", f"data cannot be published: {exc}", channel=channel,
              id=msg_id)
        return
    except BackendUnavailable as exc:
        log.warning("client publish to %s failed: %s", channel, exc)
        error(conn, "unavailable", "message not stored, try again", channel=channel, id=msg_id)
        return
    if msg_id is not None:
        conn.transport.send_obj({"type": "published", "id": msg_id, "channel": channel,
                                 "epoch": result.epoch, "offset": result.offset})
