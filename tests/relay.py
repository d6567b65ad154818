"""A real TCP relay in front of Redis that can make pub/sub connections silently deaf.

The failure the readiness canary exists for: a pub/sub connection that stays open and delivers
nothing (a middlebox that lost its state, a half-dead node), so no error ever reaches the
gateway. The relay forwards every byte both ways over loopback; :meth:`Relay.deafen` stops
forwarding Redis's bytes to the connections that have subscribed so far, leaving them open.
Connections made afterwards (the gateway's repair) are forwarded normally, unless
:meth:`Relay.refuse_new` holds the path broken for a while: new connections are closed at once.

It can also delay what clients send, as a slow network can: :meth:`Relay.hold` keeps the
bytes that the connections open so far send to Redis (from a marker on), and
:meth:`Relay.release` delivers them, even on a connection its client closed meanwhile (bytes
in flight arrive before the close does).

It runs its own event loop in a thread: the tests start gateways with blocking waits, and a
relay on the test's loop would stall (and fail) the very connections being waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pair:
    subscriber: bool = False
    deaf: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    hold_from: bytes | None = None  # hold what is sent from this marker on (b"": all)
    held: bytearray = field(default_factory=bytearray)
    released: asyncio.Event = field(default_factory=asyncio.Event)


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._holding: set[_Pair] = set()  # pairs that were told to hold, until released
        self._refusing = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def deafen(self) -> int:
        """Drop what Redis sends to every connection that has subscribed; how many."""
        async def deafen() -> int:
            deafened = [p for p in self._pairs if p.subscriber and not p.deaf]
            for pair in deafened:
                pair.deaf = True
            return len(deafened)
        return asyncio.run_coroutine_threadsafe(deafen(), self._loop).result(5)

    def refuse_new(self, refuse: bool) -> None:
        """Close every new connection at once (True) or forward them again (False)."""
        async def flip() -> None:
            self._refusing = refuse
        asyncio.run_coroutine_threadsafe(flip(), self._loop).result(5)

    def hold(self, marker: bytes = b"") -> int:
        """Keep, from ``marker`` on, what the connections open now send; how many."""
        async def hold() -> int:
            for pair in self._pairs:
                pair.hold_from = marker
            return len(self._pairs)
        return asyncio.run_coroutine_threadsafe(hold(), self._loop).result(5)

    def held(self) -> bytes:
        """What is held so far, all connections together."""
        async def held() -> bytes:
            return b"".join(bytes(p.held) for p in self._holding)
        return asyncio.run_coroutine_threadsafe(held(), self._loop).result(5)

    def release(self) -> None:
        """Deliver what is held (to connections Redis has not closed) and stop holding."""
        async def release() -> None:
            for pair in self._holding:
                upstream = pair.writers[-1]
                if not upstream.is_closing():
                    upstream.write(bytes(pair.held))
                pair.held.clear()
                pair.hold_from = None
                pair.released.set()
            self._holding.clear()
        asyncio.run_coroutine_threadsafe(release(), self._loop).result(5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        pair = _Pair(writers=[writer])
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pair.writers.append(up_writer)
        self._pairs.add(pair)
        for coro in (self._pump(reader, up_writer, pair, upstream=True),
                     self._pump(up_reader, writer, pair, upstream=False)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pair: _Pair, *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE" in data.upper():
                    pair.subscriber = True
                if not upstream and pair.deaf:
                    continue  # swallowed: the connection stays open and hears nothing
                if upstream and pair.hold_from is not None:
                    data = self._keep(pair, data)
                writer.write(data)
                await writer.drain()
            if upstream and pair.hold_from is not None:  # the client closed: still in flight
                await pair.released.wait()  # release() delivers it
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            self._holding.discard(pair)
            pair.released.set()
            for w in pair.writers:
                w.close()

    def _keep(self, pair: _Pair, data: bytes) -> bytes:
        """Hold ``data`` from the pair's marker on; what may go through now."""
        marker = pair.hold_from or b""
        at = 0 if pair.held else data.find(marker)
        if at < 0:
            return data
        self._holding.add(pair)
        pair.held += data[at:]
        return data[:at]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            for w in pair.writers:
                w.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
