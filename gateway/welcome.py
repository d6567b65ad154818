"""The first minutes of a connection: register, replay from the cursor, welcome.

Order matters for gap-free delivery (DESIGN 7): the connection is already in the hub (live
messages are held by its session), then it is registered in Redis and the tops of its streams
are read, then the log is read from the client's cursor; the welcome goes out, then the
replay (paced to the client), then the live messages held meanwhile, then any commands the
client sent before its welcome.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import commands, presence, resume
from gateway.attach import attach
from gateway.errors import BackendUnavailable
from gateway.ports import NO_REQUEST, Client, Services
from gateway.wire import Outgoing
from switchboard import contract, streams
from switchboard.closecodes import Close

log = logging.getLogger("switchboard.gateway")


async def welcome(svc: Services, conn: Client) -> None:
    """Register, replay from the cursor, welcome, then release held live messages."""
    session = conn.session
    reg = commands.registration(conn)
    channels = list(reg.channels)
    keys = [streams.user_key(session.user), streams.BROADCAST_KEY]
    keys += [streams.channel_key(c) for c in channels]
    try:
        # Our Redis subscription to each channel must be live before we read its top.
        await asyncio.gather(*(svc.backplane.subscribe_channel(c) for c in channels))
        claim, tops = await svc.backplane.register(reg, keys)
        if conn.is_closed():
            # Gone while we registered: our unregister may have reached Redis before this
            # registration did, so queue another now that the registration is done.
            svc.backplane.unregister(reg)
            return
        if claim == contract.SESSION_FOREIGN:
            conn.close(Close.SESSION_UNKNOWN, "session belongs to another user")
            return
        outcome = await attach(svc, conn.request.cursor, tops)
    except BackendUnavailable as exc:
        log.warning("cannot register connection: %s", exc)
        conn.close(Close.TRY_AGAIN_LATER, "redis unavailable")
        return
    if conn.is_closed():
        return
    if conn.request.cursor:
        svc.metrics.resumed(outcome.recovered)
    for key, pos in outcome.start.items():
        session.follow(key, pos)
    session.joining.clear()
    conn.transport.send_obj(
        {
            "type": "welcome",
            "session": session.session_id,
            "gateway": svc.gateway_id,
            "user": session.user,
            "resumed": claim == contract.SESSION_RESUMED,
            "recovered": outcome.recovered,
            "streams": session.stream_positions(),
        }
    )
    announce_channels(conn, outcome)
    for name in channels:
        presence.joined(svc, conn, name, conn.claims.wants_presence(name))
    conn.request = NO_REQUEST  # its cursor and channels are settled: not kept per connection
    if not await conn.send_replay(session.start([Outgoing(m) for m in outcome.replay])):
        return
    pending, conn.pending_commands = conn.pending_commands or [], None
    for msg in pending:
        commands.handle(svc, conn, msg)


def announce_channels(conn: Client, outcome: resume.Outcome) -> None:
    for name in conn.request.channels:
        key = streams.channel_key(name)
        start = outcome.start.get(key)
        if start is None:
            conn.transport.send_obj({
                "type": "error", "code": "forbidden", "channel": name,
                "message": f"your token does not allow you to subscribe to {name!r}"})
            continue
        wire = streams.wire_name(key)
        recovered = wire in conn.request.cursor and wire not in outcome.unrecovered
        conn.transport.send_obj({"type": "subscribed", "channel": name, "epoch": start.epoch,
                                 "offset": start.offset, "recovered": recovered})
