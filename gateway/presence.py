"""Presence events to subscribers: who joins and leaves a channel, as it happens.

Opt-in per connection and channel (the ``presence`` claim of the token or of the connect
proxy's grant, or the subscribe proxy's ``"presence"`` answer). A connection that opted in is
*announced* (its joins and leaves go to the channel's other watchers) and *watches* (it is
told of theirs, and of its own). Connections that did not opt in cost nothing: they are never
announced, so a channel without watchers carries no presence traffic.

An event is a control envelope on the channel's own pub/sub channel (no offset, no history:
a subscriber that did not opt in sees no gap). Delivery is at most once, as pub/sub is: a
reconnect, or a gateway that dies (its connections' leaves are never sent), loses events, and
a client resyncs from a snapshot (``GET /v1/channels/{C}/presence`` through its backend).
"""

from __future__ import annotations

from gateway.hub import Client
from gateway.ports import Services
from gateway.wire import Notice
from switchboard import streams
from switchboard.contract import Control, PresenceEvent


def joined(svc: Services, conn: Client, channel: str, wanted: bool) -> None:
    """A subscribe completed (its ``subscribed`` is about to go out): watch and announce if
    the connection opted in."""
    if not wanted:
        return
    svc.hub.watch(conn, streams.channel_key(channel))
    svc.backplane.announce(PresenceEvent(channel, "join", conn.session.user, conn.conn_id))


def left(svc: Services, conn: Client, channel_keys: list[str]) -> None:
    """The connection stopped following these channels (unsubscribe or close): announce the
    leave of each it watched. Call before the hub forgets it."""
    for key in channel_keys:
        if svc.hub.unwatch(conn, key):
            svc.backplane.announce(PresenceEvent(key[2:], "leave", conn.session.user,
                                                 conn.conn_id))


def deliver(svc: Services, control: Control) -> None:
    """A presence envelope arrived: every local watcher of its channel gets the event,
    encoded once per wire format."""
    event = PresenceEvent.of(control)
    if event is None:
        svc.metrics.presence("malformed")
        return
    watchers = svc.hub.watchers(streams.channel_key(event.channel))
    if not watchers:
        return
    notice = Notice({"type": "presence", "channel": event.channel, "event": event.event,
                     "user": event.user, "conn": event.conn})
    for client in watchers:
        client.transport.send_notice(notice)
    svc.metrics.presence("delivered", len(watchers))

