"""What the gateway's flows need from the world around them, as small interfaces.

The flows (:mod:`gateway.welcome`, :mod:`gateway.commands`, :mod:`gateway.mover`, the catch-up
in :mod:`gateway.recovery`) are written against these ports and a :class:`Services` value, never
against the composition root (:mod:`gateway.app`), which builds the real implementations and
wires them together. The model is centrifuge's ``Broker``: a small interface, a Redis
implementation (:class:`gateway.backplane.RedisBackplane`) and an in-memory one
(:class:`gateway.memory.MemoryBackplane`), and the node handed to it as one event handler.

Every backplane method that talks to the backend raises
:class:`~gateway.errors.BackendUnavailable` (and only that) when the backend fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.http11 import Request, Response

from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.proxyrules import Allowed, ConnectGrant, Denied, Refreshed
from gateway.session import Session
from gateway.tracker import Tracker
from gateway.transport import Transport, Writer
from gateway.wire import Outgoing
from switchboard.auth import Claims
from switchboard.config import GatewaySettings
from switchboard.contract import Control, GatewayInfo, Message, PresenceEvent
from switchboard.receipts import Ack
from switchboard.store import Published
from switchboard.streams import Position


@dataclass(frozen=True, slots=True)
class Registration:
    """What the backplane records for one connection: the user→gateway map entry, the session
    claim and the presence entries of its channels."""

    user: str
    conn_id: str
    session_id: str
    channels: tuple[str, ...] = ()  # channel names, for presence clean-up


class BackplaneEvents(Protocol):
    """What the backplane reports to the gateway (one handler, not loose callbacks)."""

    def message(self, message: Message) -> None:
        """A live envelope arrived (unicast for a local user, broadcast, or a channel)."""

    def control(self, control: Control) -> None:
        """A control envelope for this gateway (disconnect a user...)."""

    def reconnecting(self) -> None:
        """Pub/sub is about to subscribe again after an outage (called synchronously, before
        anything the new subscription delivers)."""

    def resubscribed(self) -> None:
        """Pub/sub is subscribed again after an outage: envelopes were missed meanwhile."""

    async def registry_lost(self) -> None:
        """Our registry entry had vanished (the backend lost its data): publishers found none
        of our connections meanwhile."""

    def load(self) -> dict[str, int]:
        """Counts for the heartbeat: ``connections``, ``ws``, ``sse``, and ``delivered`` (live
        deliveries since start)."""


class Backplane(Protocol):
    """Registry, user→gateway map, logs, channel subscriptions and client publishes."""

    draining: bool

    @property
    def unready(self) -> str | None:
        """Why publishers cannot route to us or we cannot hear them (None: registered and
        subscribed, the subscription proven end to end)."""

    def start(self, events: BackplaneEvents) -> None: ...

    async def stop(self) -> None:
        """Deregister (publishers stop routing to us), then stop background work."""

    async def heartbeat(self) -> bool:
        """Write our registry entry; True if it had vanished."""

    async def register(self, reg: Registration,
                       stream_keys: list[str]) -> tuple[int, dict[str, Position]]:
        """Map the connection to us, claim its session (``contract.SESSION_*``) and read the
        top of each stream, the map entry written before the tops are read."""

    async def join(self, reg: Registration, channel: str) -> Position:
        """Presence entry for one channel and the top of its stream."""

    async def leave(self, reg: Registration, channel: str) -> None:
        """Drop a presence entry (best effort: it dies with our heartbeat anyway)."""

    def unregister(self, reg: Registration) -> None:
        """Forget a connection (queued and flushed in batches)."""

    async def reregister(self, regs: list[Registration]) -> None:
        """Write the map, session and presence entries of live connections again."""

    async def read_logs(self, ranges: list[tuple[str, int, int]]) -> dict[str, list[Message]]:
        """Log entries ``first..last`` of each stream."""

    async def read_tops(self, stream_keys: list[str]) -> dict[str, Position]:
        """Current (epoch, offset) of the streams that exist."""

    async def retire_epoch(self, stream_key: str, epoch: str) -> bool:
        """Forget the stream's position if it is still in ``epoch``."""

    async def subscribe_channel(self, channel: str) -> None:
        """Receive the channel; returns once the subscription is confirmed
        (:class:`~gateway.errors.ChannelUnavailable` if it is not in time)."""

    async def unsubscribe_channel(self, channel: str) -> None: ...

    def announce(self, event: PresenceEvent) -> None:
        """Tell every gateway receiving the event's channel (this one too) that a connection
        joined or left it: queued, sent in batches, at most once (a failure is counted, not
        retried)."""

    def ack(self, ack: Ack) -> None:
        """A connection acknowledged its user stream up to ``ack.offset``: gathered for
        :data:`switchboard.receipts.ACK_INTERVAL` and written in one batch, one small call
        per user (a failed batch is written again with the next)."""

    async def publish(self, channel: str, data: Any) -> Published:
        """A client publish to a channel (ValueError/TypeError/OverflowError for data that
        cannot be encoded)."""

    async def gateways(self) -> list[GatewayInfo]:
        """Every registered gateway, for rebalancing."""


class Proxy(Protocol):
    """The application's backend, asked before a connect, a subscribe, a client publish, and
    before a connection's claims expire (:class:`gateway.proxy.HttpProxy`).

    Each call returns the backend's verdict or raises
    :class:`~gateway.errors.ProxyUnavailable`, within ``timeout`` seconds (a connect within
    ``budget`` if that is less). Bodies are built by :mod:`gateway.proxyrules`; a body JSON
    cannot carry (a client's data nested too deeply) raises ValueError before any call.
    """

    connects: bool  # a connect URL is configured: connects are deferred to the backend
    refreshes: bool  # a refresh URL is configured: expiring connections are refreshed
    timeout: float

    def subscribes(self, channel: str) -> bool:
        """Is a subscribe to ``channel`` asked about?"""

    def publishes(self, channel: str) -> bool:
        """Is a client publish to ``channel`` asked about?"""

    async def connect(self, body: dict[str, Any], budget: float) -> ConnectGrant | Denied: ...

    async def subscribe(self, body: dict[str, Any]) -> Allowed | Denied: ...

    async def publish(self, body: dict[str, Any]) -> Allowed | Denied: ...

    async def refresh(self, body: dict[str, Any]) -> Refreshed | Denied: ...

    async def aclose(self) -> None: ...


class Client(Protocol):
    """What the flows need of one client connection (WebSocket or SSE alike)."""

    conn_id: str
    session: Session
    transport: Transport
    claims: Claims
    request: ConnectRequest
    pending_commands: list[dict[str, Any]] | None

    def is_closed(self) -> bool: ...

    def close(self, code: int, reason: str = "") -> None: ...

    async def send_replay(self, outs: list[Outgoing]) -> bool: ...

    def channel_lock(self) -> asyncio.Lock: ...


class ConnectionHooks(Protocol):
    """What a connection's I/O layer (:mod:`gateway.server`) asks of the process around it."""

    loop: asyncio.AbstractEventLoop

    def tcp_opened(self, conn: Client) -> None: ...

    def tcp_closed(self, conn: Client) -> None: ...

    def accept(self, request: Request, params: dict[str, str]) -> Accepted | Deferred:
        """Decide a ``/ws`` or ``/sse`` connect (:func:`gateway.handshake.decide`); raises
        :class:`~gateway.errors.HandshakeRefused`. :class:`Deferred` when the connect proxy
        decides (only when one is configured)."""

    async def accept_deferred(self, deferred: Deferred, transport: str,
                              remote_addr: str | None, deadline: float) -> Accepted:
        """Ask the connect proxy, answering by loop time ``deadline``; raises
        :class:`~gateway.errors.HandshakeRefused`."""

    def cors_origin(self, request: Request) -> str | None:
        """The request's Origin if CORS headers may name it, else None."""

    def plain_http(self, request: Request, path: str) -> Response: ...

    def new_writer(self, tcp: asyncio.Transport, on_overflow: Callable[[], None]) -> Writer: ...

    def client_joined(self, conn: Client) -> None: ...

    def client_closing(self, conn: Client, code: int | None) -> None: ...

    def client_gone(self, conn: Client) -> None: ...

    def client_message(self, conn: Client, msg: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    claims: Claims
    request: ConnectRequest


@dataclass(frozen=True, slots=True)
class Deferred:
    """A connect that passed every check of its own and waits for the connect proxy: the
    token's claims (None: no token), what it asked for, and the request's facts."""

    claims: Claims | None
    request: ConnectRequest
    origin: str | None
    user_agent: str | None
    headers: dict[str, str]
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a client asked for at connect: the session to resume, its cursor (wire name →
    position) and the channels to subscribe."""

    session: str | None = None
    cursor: dict[str, Position] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    # Channels of ``channels`` the connect proxy joined: the subscribe proxy is not asked.
    granted: tuple[str, ...] = ()


NO_REQUEST = ConnectRequest()  # shared, never mutated


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a flow may use, handed to it explicitly (the composition root builds it)."""

    settings: GatewaySettings
    gateway_id: str
    hub: Hub
    tracker: Tracker
    backplane: Backplane
    metrics: GatewayMetrics
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    proxy: Proxy | None = None  # the application's backend, when any proxy URL is set
