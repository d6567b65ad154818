"""The application-facing client: start, iterate, close.

A single background task runs the reconnect loop (:mod:`switchboard_client.connection`) and fills a
bounded queue; iterating the client reads that queue.

Usage::

    from switchboard_client import Client, Message, Recovery

    async with Client("ws://127.0.0.1:8080/ws", token=jwt) as c:
        await c.subscribe("lobby")              # messages arrive as stream "ch.lobby"
        await c.publish("lobby", {"hi": 1})     # stored once the call returns
        async for item in c:
            if isinstance(item, Recovery):
                refetch_state(item.streams)  # messages of these streams were lost
            else:
                print(item.stream, item.offset, item.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from switchboard_client.backoff import Backoff
from switchboard_client.channels import Published, Subscribed, check_channel
from switchboard_client.connection import Connector, Options, State, TokenProvider
from switchboard_client.protocol import SUBPROTOCOLS, Format, Item, Position, Presence, Stats

log = logging.getLogger("switchboard_client")


class _End:
    """Queued after the last item: iteration ends (or re-raises the terminal error)."""


_END = _End()


class Client:
    """A Switchboard WebSocket client that stays connected and delivers each message once.

    Iterate it to receive :class:`~switchboard_client.Message` items in offset order per
    stream, and a :class:`~switchboard_client.Recovery` item whenever a reconnect could not
    recover every missed message. Connection loss, drains and overload are handled inside:
    the client reconnects with jittered backoff and resumes from its cursor. Only terminal failures
    (:mod:`switchboard_client.errors`) reach the application, raised from ``async with`` for
    the first connection and from the ``async for`` loop afterwards.

    Args:
        url: the gateway's WebSocket URL, e.g. ``ws://127.0.0.1:8080/ws``.
        token: the JWT to connect with.
        token_provider: ``async () -> str`` returning a token; called for the first
            connection when ``token`` is None, and again whenever the gateway refuses the
            token (HTTP 401, close 4001). Without it a refused token raises AuthError, and so
            does a second refusal right after a fresh token. Exceptions it raises are terminal.
        format: ``"json"`` (text frames, default) or ``"msgpack"`` (binary frames).
        channels: channels to subscribe to at connect (default none); like channels added by
            :meth:`subscribe`, they are resubscribed and resumed on every reconnect. One the
            token does not allow is dropped and reported through ``on_error``.
        token_in_header: send the token as ``Authorization: Bearer`` instead of in the query
            string (default False: the query string, as browsers must).

    Timeouts (seconds, None: off):
        open_timeout: handshake, then again for the welcome (default 10).
        ping_interval, ping_timeout: WebSocket keepalive, so a dead gateway or a half-open TCP
            connection is noticed (default 20 and 20).
        close_timeout: closing handshake (default 10).
        request_timeout: how long :meth:`subscribe`, :meth:`unsubscribe` and :meth:`publish`
            wait for the gateway's answer, a reconnect included (default 10); then they raise
            TimeoutError.

    Limits:
        max_size: largest incoming message in bytes (default None: no limit).
        max_queue: items waiting for the application (default 10_000). When it is full the
            client stops reading: the gateway buffers, or closes the connection as a slow
            consumer and the client resumes later. Nothing is dropped.

    Reconnecting:
        backoff_base, backoff_cap, backoff_reset: full-jitter backoff (defaults 0.5, 20 and
            60 s; see :class:`~switchboard_client.backoff.Backoff`).
        rng: random source for backoff and jitter (default: a new ``random.Random``).
        proxy: HTTP or SOCKS proxy URL (default None: connect directly; the environment is
            not read).

    Delivery receipts:
        ack: acknowledge the user stream's messages the application has processed (default
            True). A message counts as processed when the application asks for the next item,
            or closes the client after it (not when ``async with`` ends with an exception).
            Acks go out at most every 50 messages or 1 s, and at close; the backend reads
            them (``GET /v1/users/{U}/positions``), and a publish with a receipt deadline
            fires ``message.undelivered`` without one.

    Callbacks (plain functions; exceptions they raise are logged and ignored):
        on_error: ``(code, message)`` for each non-fatal ``error`` from the gateway that no
            call is waiting for (a refused request raises from its call instead), e.g. a
            channel refused at reconnect.
        on_state: ``(state)`` on each change of :attr:`state`.
        on_presence: ``(presence)`` for each :class:`~switchboard_client.Presence` event (a
            connection joined or left a subscribed channel whose presence events the token,
            or the application's backend, opted this client into). Not replayed after a
            reconnect: re-read the channel's members then.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        format: Format = "json",
        channels: Sequence[str] = (),
        token_in_header: bool = False,
        open_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float | None = 10.0,
        request_timeout: float | None = 10.0,
        max_size: int | None = None,
        max_queue: int = 10_000,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        backoff_reset: float = 60.0,
        rng: random.Random | None = None,
        proxy: str | None = None,
        ack: bool = True,
        on_error: Callable[[str, str], object] | None = None,
        on_state: Callable[[State], object] | None = None,
        on_presence: Callable[[Presence], object] | None = None,
    ) -> None:
        if format not in SUBPROTOCOLS:
            raise ValueError(f"format must be one of {sorted(SUBPROTOCOLS)}, not {format!r}")
        if isinstance(channels, str):
            raise TypeError("channels must be a sequence of names, not a string")
        channels = tuple(dict.fromkeys(check_channel(name) for name in channels))
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        options = Options(
            url=url, format=format, channels=tuple(channels), token_in_header=token_in_header,
            open_timeout=open_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            close_timeout=close_timeout, max_size=max_size, proxy=proxy,
            request_timeout=request_timeout, ack=ack,
        )
        rng = rng if rng is not None else random.Random()
        self._on_error = on_error
        self._on_state = on_state
        self._on_presence = on_presence
        self._state: State = "connecting"
        self._stats = Stats()
        self._queue: asyncio.Queue[Item | _End] = asyncio.Queue(max_queue)
        self._conn = Connector(
            options,
            token=token,
            token_provider=token_provider,
            backoff=Backoff(base=backoff_base, cap=backoff_cap, reset_after=backoff_reset,
                            rng=rng),
            rng=rng,
            deliver=self._queue.put,
            set_state=self._set_state,
            on_error=self._report_error,
            stats=self._stats,
            on_presence=self._report_presence,
        )
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._handed: Item | None = None  # the item the application has, until it asks again

    # -- what the application can look at -----------------------------------------------------

    @property
    def url(self) -> str:
        return self._conn.options.url

    @property
    def state(self) -> State:
        """``"connecting"`` (until the first welcome), ``"open"``, ``"reconnecting"``,
        ``"closed"``."""
        return self._state

    @property
    def session(self) -> str | None:
        """Session id from the last welcome (sent back to resume)."""
        return self._conn.session

    @property
    def gateway(self) -> str | None:
        """Id of the gateway of the current (or last) connection."""
        return self._conn.gateway

    @property
    def user(self) -> str | None:
        return self._conn.user

    @property
    def positions(self) -> dict[str, Position]:
        """Stream -> (epoch, offset) of the last message delivered (or the welcome's top)."""
        return dict(self._conn.tracker.positions)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this client is subscribed to, or subscribing to (call order)."""
        return tuple(self._conn.channels.wanted)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters: connects, reconnects, duplicates_dropped,
        gaps_detected, recoveries_failed."""
        return dataclasses.replace(self._stats)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Client:
        """Start the background task and wait for the first welcome.

        Raises the terminal error if the first connection fails for good (e.g. AuthError on a
        refused token without a provider). Transient failures are retried with backoff for as
        long as it takes: bound the wait with ``asyncio.timeout`` if you need to.
        """
        if self._task is not None or self._closing:
            raise RuntimeError("a Client can be started only once")
        self._task = asyncio.create_task(self._main(), name=f"switchboard-client {self.url}")
        welcomed = asyncio.create_task(self._conn.welcomed.wait())
        try:
            await asyncio.wait([welcomed, self._task], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.close()
            raise
        finally:
            welcomed.cancel()
        if not self._conn.welcomed.is_set():
            error = self._error or RuntimeError("the client stopped before connecting")
            await self.close()
            raise error
        return self

    async def close(self) -> None:
        """Close the connection (code 1000) and stop; iteration ends. Idempotent."""
        if not self._closing:
            with contextlib.suppress(Exception):  # nothing here may keep the client open
                if self._handed is not None:
                    # the last item handed out counts as processed: the application closes
                    # after it (not when it raised: see __aexit__)
                    await self._conn.processed(self._handed)
                await self._conn.flush_acks()
        self._handed = None
        self._closing = True
        self._conn.stop_requests("client closed")
        ws, task = self._conn.ws, self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if ws is not None:
            try:
                await ws.close(1000, "client closed")
            except Exception as exc:  # closing a broken connection: nothing left to do
                log.debug("error while closing: %s", exc)
        self._conn.fail_pings("client closed")
        self._set_state("closed")
        # Wakes an iterator waiting on an empty queue; a full queue has no waiting iterator,
        # and the next __anext__ sees _closing.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._handed = None  # its processing raised: not acknowledged
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Item:
        if self._closing:
            raise StopAsyncIteration
        if self._task is None:
            raise RuntimeError("start the client first: `async with Client(...) as c`")
        if self._handed is not None:  # the application came back for more: it is done with it
            handed, self._handed = self._handed, None
            await self._conn.processed(handed)
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # there is room: we just took it; later calls end too
            if self._error is not None and not self._closing:
                raise self._error
            raise StopAsyncIteration
        self._handed = item
        return item

    async def ping(self) -> float:
        """Round-trip time in seconds of an application-level ping to the gateway.

        Raises ConnectionError when not connected (or if the connection drops meanwhile).
        Bound the wait with ``asyncio.timeout``.
        """
        if self._state != "open":
            raise ConnectionError("not connected")
        return await self._conn.ping()

    # -- channels -----------------------------------------------------------------------------

    async def subscribe(self, channel: str, *, cursor: tuple[str, int] | None = None
                        ) -> Subscribed:
        """Subscribe to ``channel``; its messages arrive as ``Message(stream="ch.CHANNEL")``.

        Returns once the gateway confirmed: messages after ``(epoch, offset)`` of the result
        follow through the iteration. With ``cursor`` (an ``(epoch, offset)``, e.g. a
        :class:`~switchboard_client.Position` the application kept), the messages after it are
        replayed first, if the gateway still has them all: then the result says ``recovered=True``.

        The client keeps the subscription across reconnects (resubscribed at connect, resumed
        from its position, so no message is lost or repeated). While reconnecting, the call
        waits for the next connection. A subscribe of a channel already being subscribed
        waits for that one (whose cursor counts).

        Raises:
            SubscribeError: refused (``code`` ``forbidden``, ``too_many_channels``,
                ``unavailable``, ...), or ``already_subscribed``. The client goes on.
            TimeoutError: no answer within ``request_timeout``. The subscription stays
                requested (it completes in the background; a later refusal is reported
                through ``on_error``); call :meth:`unsubscribe` to give it up.
            ValueError: an invalid channel name or cursor.
            ConnectionError: the client is closed (or stopped on a terminal error).
        """
        self._check_running()
        return await self._conn.subscribe(channel, cursor)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; returns once the gateway confirmed.

        Messages of the channel still queued are delivered; none is delivered after the call.
        While reconnecting, the next connection simply does not ask for the channel.

        Raises:
            SubscribeError: ``not_subscribed``.
            TimeoutError: no answer within ``request_timeout`` (the channel is unsubscribed
                all the same: it is not delivered, nor asked for again).
            ValueError, ConnectionError: as for :meth:`subscribe`.
        """
        self._check_running()
        await self._conn.unsubscribe(channel)

    async def publish(self, channel: str, data: Any) -> Published:
        """Publish ``data`` to ``channel``; returns once the gateway stored it.

        The token's ``publish`` claim must allow the channel (the client need not be
        subscribed). Subscribers receive it, this client too if it is subscribed. While
        reconnecting, the call waits for the next connection, then sends.

        Raises:
            PublishError: refused (``forbidden``, or ``unavailable``: not stored, try again),
                or ``disconnected``: the connection ended after the message was sent and
                before the gateway confirmed it, so it may or may not have been stored (it is
                never sent twice).
            TimeoutError: no answer within ``request_timeout``: if the message had been sent,
                it may or may not have been stored.
            TypeError: ``data`` cannot be encoded in the client's format.
            ValueError, ConnectionError: as for :meth:`subscribe`.
        """
        self._check_running()
        return await self._conn.publish(channel, data)

    # -- internals ----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._task is None and not self._closing:
            raise RuntimeError("start the client first: `async with Client(...) as c`")

    async def _main(self) -> None:
        try:
            await self._conn.run()
        except Exception as exc:
            log.warning("switchboard client stopped: %s", exc)
            self._conn.stop_requests(f"client stopped: {exc}")
            self._error = exc
            self._set_state("closed")
            await self._queue.put(_END)  # after every item already queued

    def _set_state(self, state: State) -> None:
        if state == self._state or self._state == "closed":
            return
        self._state = state
        if self._on_state is not None:
            self._callback(self._on_state, state)

    def _report_error(self, code: str, message: str) -> None:
        if self._on_error is not None:
            self._callback(self._on_error, code, message)

    def _report_presence(self, event: Presence) -> None:
        if self._on_presence is not None:
            self._callback(self._on_presence, event)

    @staticmethod
    def _callback(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a client callback raised")
