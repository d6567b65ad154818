"""The reconnect loop: connect, read, resume, reconnect, until something terminal happens.

One :class:`Connector` per :class:`~switchboard_client.Client`, run by its single background
task. The decisions (positions, duplicates, gaps, close codes, delays) are made by
:mod:`switchboard_client.protocol`, :mod:`switchboard_client.policy` and
:mod:`switchboard_client.backoff`; this module does the I/O around them and puts what the
application should see on the client's queue.

Channel requests (subscribe, unsubscribe, publish) are decided by
:class:`switchboard_client.channels.Channels` too; here they get a future per caller, their
frames are sent, and the replies read by the connection's loop settle the futures.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Subprotocol

from switchboard_client import acks
from switchboard_client.acks import Acks
from switchboard_client.backoff import Backoff
from switchboard_client.channels import (
    Channels,
    Effects,
    Published,
    Request,
    Subscribed,
    channel_stream,
    check_channel,
    check_cursor,
)
from switchboard_client.errors import (
    AuthError,
    Forbidden,
    SessionError,
    SubscribeError,
    TerminalClose,
)
from switchboard_client.policy import JITTER_MAX, Next, after_close, after_refusal, retry_after
from switchboard_client.protocol import (
    SUBPROTOCOLS,
    Format,
    Gap,
    Item,
    Message,
    Position,
    Presence,
    ProtocolViolation,
    Stats,
    Tracker,
    Welcome,
    connect_url,
    decode,
    encode,
    format_cursor,
    parse_message,
    parse_presence,
    parse_welcome,
)

State = Literal["connecting", "open", "reconnecting", "closed"]
TokenProvider = Callable[[], Awaitable[str]]

log = logging.getLogger("switchboard_client")


@dataclass(frozen=True, slots=True)
class Options:
    """How to connect (see :class:`~switchboard_client.Client` for the meaning and defaults)."""

    url: str
    format: Format
    channels: tuple[str, ...]
    token_in_header: bool
    open_timeout: float | None
    ping_interval: float | None
    ping_timeout: float | None
    close_timeout: float | None
    max_size: int | None
    proxy: str | None
    request_timeout: float | None = 10.0
    ack: bool = True  # acknowledge the user stream's messages the application processed

    def connect_kwargs(self) -> dict[str, Any]:
        return {
            "subprotocols": [Subprotocol(SUBPROTOCOLS[self.format])],
            "open_timeout": self.open_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "close_timeout": self.close_timeout,
            "max_size": self.max_size,
            "proxy": self.proxy,
        }


class Connector:
    """Holds one connection at a time and decides, when it ends, when to open the next."""

    def __init__(
        self,
        options: Options,
        *,
        token: str | None,
        token_provider: TokenProvider | None,
        backoff: Backoff,
        rng: random.Random,
        deliver: Callable[[Item], Awaitable[None]],
        set_state: Callable[[State], None],
        on_error: Callable[[str, str], None],
        stats: Stats,
        on_presence: Callable[[Presence], None] | None = None,
    ) -> None:
        self.options = options
        self.tracker = Tracker(stats)
        self.channels = Channels(self.tracker, options.channels)
        self.stats = stats
        self.session: str | None = None
        self.gateway: str | None = None
        self.user: str | None = None
        self.ws: ClientConnection | None = None  # while open
        self.live: ClientConnection | None = None  # from the welcome to the close
        self.welcomed = asyncio.Event()  # set at the first welcome
        self._token = token
        self._provider = token_provider
        self._backoff = backoff
        self._rng = rng
        self._deliver = deliver
        self._set_state = set_state
        self._on_error = on_error
        self._on_presence = on_presence
        self._hint: float | None = None  # after_ms of a reconnect message, seconds
        self._fresh_token = False  # the token was fetched because the last one was refused
        self._progress = True  # a message was delivered since the last gap
        self._pings: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiters: dict[int, list[asyncio.Future[Any]]] = {}  # request id -> callers
        self._stopped: str | None = None  # why requests are refused from now on
        self._acks = Acks()  # the user stream's messages processed, not acked yet
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_sends: set[asyncio.Task[None]] = set()
        # Waits between attempts; tests swap it to record delays instead of sleeping.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self) -> None:
        """Connect and reconnect forever; returns only by raising a terminal error."""
        delay = 0.0
        while True:
            if delay > 0:
                log.info("reconnecting in %.2fs", delay)
                await self.sleep(delay)
            delay = await self._connection()

    # -- acks (delivery receipts) -------------------------------------------------------------

    async def processed(self, item: Item) -> None:
        """The application is done with ``item``: a user-stream message is acked, batched."""
        if not self.options.ack or not isinstance(item, Message) or item.stream != "user":
            return
        if self._acks.processed(item.epoch, item.offset):
            await self.flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                acks.INTERVAL, self._flush_later)

    def _flush_later(self) -> None:
        self._ack_timer = None
        task = asyncio.ensure_future(self.flush_acks())
        self._ack_sends.add(task)
        task.add_done_callback(self._ack_sends.discard)

    async def flush_acks(self) -> None:
        """Send the pending ack on the live connection (it stays pending without one)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        ws = self.live
        if ws is None:
            return  # no connection to send it on: it stays pending
        frame = self._acks.take()
        if frame is None:
            return
        try:
            await ws.send(encode(frame, self.options.format))
        except ConnectionClosed:
            self._acks.put_back(frame)

    async def ping(self) -> float:
        ws = self.ws
        if ws is None:
            raise ConnectionError("not connected")
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[None] = loop.create_future()
        self._pings.append(pong)
        started = loop.time()
        try:
            await ws.send(encode({"type": "ping"}, self.options.format))
            await pong
        except ConnectionClosed as exc:
            raise ConnectionError("connection closed") from exc
        finally:
            pong.cancel()  # no-op once answered; else nobody will wait for it any more
        return loop.time() - started

    def fail_pings(self, why: str) -> None:
        while self._pings:
            pong = self._pings.popleft()
            if not pong.done():
                pong.set_exception(ConnectionError(why))

    # -- channel requests ---------------------------------------------------------------------

    async def subscribe(self, channel: str, cursor: tuple[str, int] | None) -> Subscribed:
        start = None if cursor is None else check_cursor(cursor)
        result = await self._request(lambda: self.channels.subscribe(channel, start))
        assert isinstance(result, Subscribed)
        return result

    async def unsubscribe(self, channel: str) -> None:
        await self._request(lambda: self.channels.unsubscribe(channel))

    async def publish(self, channel: str, data: Any) -> Published:
        check_channel(channel)
        encode({"data": data}, self.options.format)  # unencodable data: TypeError, now
        result = await self._request(lambda: self.channels.publish(channel, data))
        assert isinstance(result, Published)
        return result

    def stop_requests(self, why: str) -> None:
        """Fail every waiting request with ConnectionError(why), and refuse new ones."""
        self._stopped = why
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ConnectionError(why))

    async def _request(
        self, make: Callable[[], tuple[Request, Effects]]
    ) -> Subscribed | Published | None:
        """Register a request, send it when it may go, wait for its answer (or time out)."""
        if self._stopped is not None:
            raise ConnectionError(self._stopped)
        loop = asyncio.get_running_loop()
        timeout = self.options.request_timeout
        deadline = None if timeout is None else loop.time() + timeout
        request, fx = make()  # ValueError, SubscribeError: nothing was asked
        future: asyncio.Future[Any] = loop.create_future()
        self._waiters.setdefault(request.id, []).append(future)
        try:
            await self._carry_out(fx)  # sends the frame if it may go now
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait([future], timeout=left)
        finally:
            futures = self._waiters.get(request.id, [])
            if future in futures:
                futures.remove(future)
                if not futures:
                    del self._waiters[request.id]
        if not done:
            future.cancel()
            await self._carry_out(self.channels.abandon(request))
            raise TimeoutError(f"no answer to {request.kind} {request.channel!r} "
                               f"within {timeout}s")
        result: Subscribed | Published | None = future.result()
        return result

    async def _carry_out(self, fx: Effects) -> None:
        """Answer the callers, deliver items, send frames: what a Channels decision says."""
        ws = self.live  # the frames are for the connection the decision was made on
        for r in fx.resolved:
            futures = [f for f in self._waiters.pop(r.request.id, []) if not f.done()]
            for future in futures:
                if r.error is not None:
                    future.set_exception(r.error)
                else:
                    future.set_result(r.result)
            if not futures and r.error is not None:
                # Nobody waits any more (timed out): a dropped channel must still be known.
                log.warning("%s %s failed: %s", r.request.kind, r.request.channel, r.error)
                if isinstance(r.error, SubscribeError):
                    self._on_error(r.error.code, r.error.message)
        for code, message in fx.unmatched:
            log.warning("gateway error %s: %s", code, message)
            self._on_error(code, message)
        for item in fx.items:
            await self._deliver(item)
        if ws is None:
            return
        for frame in fx.frames:
            try:
                await ws.send(encode(frame, self.options.format))
            except ConnectionClosed:
                return  # settled when the connection's loop sees the close

    # -- one connection -----------------------------------------------------------------------

    async def _connection(self) -> float:
        """One connection, handshake to close; returns the delay before the next one."""
        if self._token is None and self._provider is not None:
            self._token = await self._provider()
        opts = self.options
        ask = self.channels.connect_request()
        headers: dict[str, str] = {}
        if self._token and opts.token_in_header:
            headers["Authorization"] = f"Bearer {self._token}"
        url = connect_url(
            opts.url,
            token=None if opts.token_in_header else self._token,
            session=self.session,
            cursor=format_cursor(ask.cursor),
            channels=ask.channels,
        )
        try:
            ws = await connect(url, additional_headers=headers, **opts.connect_kwargs())
        except InvalidStatus as exc:
            return await self._refused(exc.response.status_code, exc.response.headers)
        except InvalidURI:
            raise
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.info("cannot connect to %s: %s", opts.url, exc)
            return self._backoff.next_delay()
        self.ws = ws
        try:
            return await self._serve(ws, ask.resumed)
        except asyncio.CancelledError:
            raise  # Client.close() closes the connection with 1000
        except BaseException:
            await ws.close(1000)
            raise
        finally:
            self.ws = self.live = None
            self.fail_pings("connection closed")
            await self._carry_out(self.channels.closed())

    async def _refused(self, status: int, headers: Headers) -> float:
        action = after_refusal(status)
        log.info("handshake refused with HTTP %d", status)
        if action is Next.NEW_TOKEN:
            return await self._new_token(status)
        if action is Next.FORBIDDEN:
            raise Forbidden(f"the gateway refused the connection (HTTP {status})", code=status)
        return self._backoff.next_delay(retry_after(headers.get("Retry-After")))

    async def _new_token(self, code: int) -> float:
        if self._provider is None:
            raise AuthError(f"the gateway refused the token ({code})", code=code)
        if self._fresh_token:
            raise AuthError(f"the gateway refused a fresh token too ({code})", code=code)
        self._token = await self._provider()
        self._fresh_token = True
        return 0.0

    async def _serve(self, ws: ClientConnection, sent: Mapping[str, Position]) -> float:
        try:
            async with asyncio.timeout(self.options.open_timeout):
                welcome = parse_welcome(decode(await ws.recv()))
        except ConnectionClosed:
            return await self._closed(ws)
        except (TimeoutError, ProtocolViolation) as exc:
            log.warning("no valid welcome from %s: %s", self.options.url, exc)
            await ws.close(1002, "expected a welcome")
            return self._backoff.next_delay()
        await self._welcome(ws, welcome, sent)
        try:
            async for frame in ws:
                try:
                    delay = await self._handle(decode(frame))
                except ProtocolViolation as exc:
                    log.warning("ignoring a malformed message: %s", exc)
                    continue
                if delay is not None:
                    await ws.close(1000, "gap")
                    return delay
        except ConnectionClosed:
            pass
        return await self._closed(ws)

    async def _welcome(self, ws: ClientConnection, welcome: Welcome,
                       sent: Mapping[str, Position]) -> None:
        recovery = self.tracker.on_welcome(welcome, sent=sent)
        self.session, self.gateway, self.user = welcome.session, welcome.gateway, welcome.user
        self._fresh_token = False
        self._hint = None
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._backoff.connected()
        log.info("connected to gateway %s (session %s, resumed=%s, recovered=%s)",
                 welcome.gateway, welcome.session, welcome.resumed, welcome.recovered)
        self._set_state("open")
        self.welcomed.set()
        if recovery is not None:
            log.warning("could not recover %s", ", ".join(recovery.streams))
            await self._deliver(recovery)  # before any later message
        self.live = ws
        await self._carry_out(self.channels.opened(welcome))  # what waited for a connection
        if self._acks.pending:
            await self.flush_acks()  # processed during the last connection: the session goes on

    async def _handle(self, msg: dict[str, Any]) -> float | None:
        """Act on one server message; a float means: close, reconnect after that delay."""
        kind = msg["type"]
        if kind == "message":
            incoming = parse_message(msg)
            if not self.channels.accepts(incoming.stream):
                return None  # a channel unsubscribed meanwhile
            out = self.tracker.on_message(incoming, gateway=self.gateway or "")
            if isinstance(out, Gap):
                return self._gap(out)
            for item in out:
                await self._deliver(item)
            self._progress = True
        elif kind == "reconnect":
            after_ms = msg.get("after_ms")
            if isinstance(after_ms, int | float) and not isinstance(after_ms, bool):
                self._hint = max(0.0, after_ms / 1000)
            log.info("gateway asks to reconnect (%s) after %s ms", msg.get("reason"), after_ms)
        elif kind in ("subscribed", "unsubscribed", "published") or (
                kind == "error" and "channel" in msg):
            await self._carry_out(self.channels.on_reply(msg))
        elif kind == "error":
            code, message = str(msg.get("code", "")), str(msg.get("message", ""))
            log.warning("gateway error %s: %s", code, message)
            self._on_error(code, message)
        elif kind == "presence":
            event = parse_presence(msg)
            # not for a channel unsubscribed meanwhile
            if self._on_presence is not None and self.channels.accepts(
                    channel_stream(event.channel)):
                self._on_presence(event)
        elif kind == "pong":
            if self._pings:
                pong = self._pings.popleft()
                if not pong.done():  # else it timed out: this is its late answer
                    pong.set_result(None)
        else:
            log.debug("ignoring a %r message", kind)
        return None

    def _gap(self, gap: Gap) -> float:
        log.info("gap in %s: expected offset %d, got %d; resuming", gap.stream, gap.expected,
                 gap.received)
        self._set_state("reconnecting")
        # Resume at once, unless the last resume did not get us past a gap either: then
        # something is wrong on the server side and hammering it would not help.
        delay = 0.0 if self._progress else self._backoff.next_delay()
        self._progress = False
        return delay

    async def _closed(self, ws: ClientConnection) -> float:
        """The gateway (or the network) ended the connection: decide what comes next."""
        code, reason = ws.close_code, ws.close_reason or ""
        hint, self._hint = self._hint, None
        log.info("connection closed: %s %s", code, reason)
        self._backoff.disconnected()
        if self.stats.connects:
            self._set_state("reconnecting")
        action = after_close(code)
        if action is Next.BACKOFF:
            return self._backoff.next_delay(hint)
        if action is Next.JITTER:
            jitter = hint if hint is not None else self._rng.uniform(0.0, JITTER_MAX)
            return self._backoff.next_delay(jitter)
        assert code is not None  # every action below comes from a received close code
        if action is Next.NEW_TOKEN:
            return await self._new_token(code)
        if action is Next.FORBIDDEN:
            raise Forbidden(f"closed by the gateway: {reason or 'forbidden'}", code=code)
        if action is Next.SESSION_UNKNOWN:
            raise SessionError(f"session {self.session} is unknown to this user ({code})")
        raise TerminalClose(code, reason)

