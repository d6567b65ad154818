"""The hub owns the local connection set; nobody else mutates it.

It answers "who on this gateway receives this message" and hands each recipient the same
:class:`~gateway.wire.Outgoing` (encoded at most once per wire format). It never awaits and
never touches sockets directly: recipients write through their transports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from gateway.session import NEXT, Session
from gateway.transport import Transport
from gateway.wire import Outgoing, Wire
from switchboard import streams
from switchboard.contract import Message


class Client(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    session: Session
    transport: Transport


class Hub:
    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}
        self._by_user: dict[str, dict[str, Client]] = {}
        self._channels: dict[str, dict[str, Client]] = {}  # channel key -> subscribers
        # channel key -> the subscribers that opted in to its presence events (announced
        # and told of the others'); only channels with any are here
        self._watchers: dict[str, dict[str, Client]] = {}
        self.gaps = 0  # live offsets that jumped (counted; filled by resume logic later)

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._clients.values()))

    def add(self, client: Client) -> None:
        self._clients[client.conn_id] = client
        self._by_user.setdefault(client.session.user, {})[client.conn_id] = client

    def remove(self, client: Client) -> list[str]:
        """Forget a client; returns the channel keys that no local client follows any more.

        Raises KeyError if the client was not in the hub.
        """
        if self._clients.pop(client.conn_id, None) is None:
            raise KeyError(client.conn_id)
        user = client.session.user
        conns = self._by_user.get(user)
        if conns is not None:
            conns.pop(client.conn_id, None)
            if not conns:
                del self._by_user[user]
        return [key for key in client.session.channels if self.unsubscribe(client, key)]

    def __contains__(self, client: Client) -> bool:
        return client.conn_id in self._clients

    def subscribe(self, client: Client, channel_key: str) -> bool:
        """Returns True for the first local subscriber of the channel."""
        subs = self._channels.setdefault(channel_key, {})
        first = not subs
        subs[client.conn_id] = client
        return first

    def unsubscribe(self, client: Client, channel_key: str) -> bool:
        """Returns True when the last local subscriber left."""
        self.unwatch(client, channel_key)
        subs = self._channels.get(channel_key)
        if subs is None or subs.pop(client.conn_id, None) is None:
            return False
        if subs:
            return False
        del self._channels[channel_key]
        return True

    def watch(self, client: Client, channel_key: str) -> None:
        """The client gets the channel's presence events (it must be subscribed)."""
        self._watchers.setdefault(channel_key, {})[client.conn_id] = client

    def unwatch(self, client: Client, channel_key: str) -> bool:
        """Returns True if the client was watching the channel."""
        watching = self._watchers.get(channel_key)
        if watching is None or watching.pop(client.conn_id, None) is None:
            return False
        if not watching:
            del self._watchers[channel_key]
        return True

    def watching(self, client: Client, channel_key: str) -> bool:
        return client.conn_id in self._watchers.get(channel_key, ())

    def watched(self, client: Client) -> list[str]:
        """The channel keys whose presence events the client gets."""
        return [k for k in client.session.channels if self.watching(client, k)]

    def watchers(self, channel_key: str) -> list[Client]:
        return list(self._watchers.get(channel_key, {}).values())

    def has_channel(self, channel_key: str) -> bool:
        return channel_key in self._channels

    def channel_keys(self) -> list[str]:
        return list(self._channels)

    def user_clients(self, user: str) -> list[Client]:
        return list(self._by_user.get(user, {}).values())

    def count_by_wire(self) -> dict[Wire, int]:
        counts = dict.fromkeys(Wire, 0)
        for client in self._clients.values():
            counts[client.transport.wire] += 1
        return counts

    def recipients(self, message: Message) -> Iterator[Client]:
        return self.followers(message.stream_key)

    def followers(self, key: str) -> Iterator[Client]:
        """The local clients that receive stream ``key``."""
        if key == streams.BROADCAST_KEY:
            return iter(list(self._clients.values()))
        if key.startswith("u:"):
            return iter(list(self._by_user.get(key[2:], {}).values()))
        return iter(list(self._channels.get(key, {}).values()))

    def deliver(self, message: Message) -> list[int]:
        """Offer one message to every local recipient; returns deliveries per wire format
        (indexed like :data:`gateway.wire.WIRES`).

        The hot loop of the gateway: one offer and one write per recipient, nothing else.
        """
        out = Outgoing(message)
        delivered = [0, 0, 0]
        gaps = 0
        for client in self.recipients(message):
            verdict = client.session.offer(out)
            if verdict > 0:
                if verdict > NEXT:
                    gaps += 1
                transport = client.transport
                transport.send(out)
                delivered[transport.kind] += 1
        self.gaps += gaps
        return delivered
