"""A pipelined Redis connection for the publish path: many requests, one socket, no pool.

redis-py's asyncio client spends ~200 µs of CPU per command (pool checkout, retry and timeout
wrappers, a stream reader) — a third of what the router spent per ``/v1/publish``. Publishing
needs one command per message, and Redis answers a connection's commands in order, so one
connection can carry every concurrent request: each command is written as it comes, its
future waits in a FIFO, and hiredis parses the replies as they arrive, with no await per reply.

Failures are redis-py's exceptions, so callers keep one translation (the router's 503):
``ConnectionError`` when Redis cannot be reached or the connection drops, ``TimeoutError``
when the oldest pending reply is late by ``timeout`` (the connection is then dropped: the
replies behind it can no longer be matched), ``ResponseError`` for an error reply. The next
command opens a new connection. Scripts are loaded when a connection opens, so ``EVALSHA``
finds them after a Redis restart; ``EVAL`` is the fallback if they were flushed since.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis import exceptions
from redis._parsers.base import BaseParser

from switchboard import resp

log = logging.getLogger("switchboard.redis")

Arg = str | bytes | int


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def evalsha(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        return resp.command("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        """The fallback when Redis has no script by that hash (NOSCRIPT)."""
        return resp.command("EVAL", self.source, len(keys), *keys, *args)


def reply_error(message: str) -> exceptions.ResponseError:
    """redis-py's exception for an error reply (NOSCRIPT, and a cluster's MOVED, ASK,
    TRYAGAIN, CLUSTERDOWN... with their parsed details), as its own clients raise it."""
    error: exceptions.ResponseError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    if isinstance(error, exceptions.AskError):  # MOVED too: their details are parsed
        return error
    return type(error)(message)  # the whole text, code included, for the 503's message


class _Connection(resp.RespProtocol):
    """One socket; replies are matched to requests by order."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        # (future, deadline) of every command sent and not yet answered, oldest first
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.failed: Exception | None = None
        # The first command of a loop iteration is written at once (Redis starts on it while
        # we prepare the next); the rest of the iteration's commands wait in _out and go out
        # together at its end: one write per publish was the largest CPU cost of the publish
        # path (a syscall each, and a wake-up of Redis each).
        self._out: list[bytes] = []
        self._flush_due = False

    def send(self, commands: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        """Write ``commands`` (or queue them for this loop iteration's write); their replies'
        futures, in the same order."""
        if self.failed is not None or self.transport is None or self.transport.is_closing():
            raise exceptions.ConnectionError(f"Redis connection closed: {self.failed}")
        if not commands:
            return []
        deadline = self._loop.time() + self._timeout
        futures = [self._loop.create_future() for _ in commands]
        self._pending.extend((f, deadline) for f in futures)
        if self._flush_due:
            self._out.extend(commands)
        else:
            self._flush_due = True
            self._loop.call_soon(self._flush)
            self.transport.write(b"".join(commands) if len(commands) > 1 else commands[0])
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return futures

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        # else: connection_lost fails every pending reply, these included

    def request(self, *args: str | bytes) -> asyncio.Future[Any]:
        return self.send([resp.command(*args)])[0]

    def protocol_error(self, exc: hiredis.ProtocolError) -> Exception:
        return exceptions.ConnectionError(f"Redis protocol error: {exc}")

    def reply(self, reply: Any) -> bool:
        pending = self._pending
        if not pending:
            self.fail(exceptions.ConnectionError("Redis sent a reply nobody asked for"))
            return False
        fut, _ = pending.popleft()
        if fut.done():  # its caller gave up (cancelled)
            return True
        if isinstance(reply, hiredis.ReplyError):
            fut.set_exception(reply_error(str(reply)))
        else:
            fut.set_result(reply)
        return True

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        _, deadline = self._pending[0]
        if self._loop.time() >= deadline:
            self.fail(exceptions.TimeoutError(
                f"Redis did not answer within {self._timeout:g} s"))
        else:  # the late one was answered; watch the oldest still waiting
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def fail(self, exc: Exception) -> None:
        if self.failed is None:
            self.failed = exc
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exceptions.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))


class PipelinedRedis:
    """Commands and scripts over one lazily (re)opened connection."""

    def __init__(self, url: str, timeout: float, *, client_name: str = "switchboard",
                 scripts: Sequence[Script] = (), fenced: bool = False) -> None:
        self.endpoint = resp.Endpoint.from_url(url)  # a bad URL fails here, at start-up
        self.timeout = timeout
        self.client_name = client_name
        self.scripts = tuple(scripts)
        # fenced: each new connection kills the one before it in Redis before it is used,
        # so commands sent on a connection we gave up on (a timeout) cannot still run after
        # the ones sent on its successor; see _fence
        self.fenced = fenced
        self._previous: tuple[str, str] | None = None  # the last connection's id and addr
        self._conn: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.failed is None:
            return conn
        if self._closed:
            raise exceptions.ConnectionError("the Redis client is closed")
        # One attempt at a time: the requests that arrive meanwhile wait for its outcome.
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())
            self._opening.add_done_callback(self._opened)
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self.closed and opening.cancelled() and me is not None and not me.cancelling():
                # close() cancelled the attempt, not our caller: a Redis error, like any other
                raise exceptions.ConnectionError("the Redis client is closed") from None
            raise

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            if self._closed:  # closed while it was opening
                task.result().abort()
            else:
                self._conn = task.result()

    async def _open(self) -> _Connection:
        timeout = self.timeout
        conn: _Connection | None = None
        try:
            # one deadline for connecting, authenticating and loading the scripts together
            async with asyncio.timeout(timeout):
                conn = await resp.open_connection(self.endpoint, lambda: _Connection(timeout),
                                                  connect_timeout=timeout,
                                                  client_name=self.client_name)
                await asyncio.gather(*conn.send([resp.command("SCRIPT", "LOAD", s.source)
                                                 for s in self.scripts]))
                if self.fenced:
                    await self._fence(conn)
        except BaseException as exc:
            if conn is not None:
                conn.abort()  # opened but not usable: nobody else holds it
            if isinstance(exc, TimeoutError):
                raise exceptions.TimeoutError(
                    f"Redis did not answer within {timeout:g} s") from exc
            if isinstance(exc, OSError):
                raise exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from exc
            raise
        return conn

    async def _fence(self, conn: _Connection) -> None:
        """Kill the previous connection in Redis, then remember this one.

        Redis may not have read what we sent on a connection we gave up on (it was paused, or
        the bytes sat in a proxy): once it executes our ``CLIENT KILL``, that connection's
        unread commands can never run. A connection is learned before it carries a command of
        its user (only the handshake and the idempotent script loads go first; a
        connection that cannot be learned is dropped unused), so every connection that did is
        known. It is named by id and address together: ids start again at 1 when Redis
        restarts, and must not name someone else's connection.
        """
        commands = [resp.command("CLIENT", "INFO")]
        if self._previous is not None:
            ident, addr = self._previous
            commands.insert(0, resp.command("CLIENT", "KILL", "ID", ident, "ADDR", addr))
        *kill, info = conn.send(commands)
        for reply in kill:
            try:
                await reply
            except exceptions.ResponseError as exc:
                if "no such client" not in str(exc).lower():  # else it is gone already
                    # e.g. an ACL that denies CLIENT KILL: still usable, but unfenced
                    log.error("cannot fence the previous Redis connection of %s: %s",
                              self.client_name, exc)
        fields = dict(part.split("=", 1) for part in _text(await info).split() if "=" in part)
        self._previous = (fields["id"], fields["addr"])

    async def execute_many(self, commands: Sequence[Sequence[Arg]], *,
                           raise_on_error: bool = True) -> list[Any]:
        """Replies to ``commands``, sent in one write; an error reply raises (the first one),
        or with ``raise_on_error=False`` is its command's result (a lost connection or a
        timeout still raises)."""
        if not commands:
            return []
        return await self.execute_raw([resp.command(*c) for c in commands],
                                      raise_on_error=raise_on_error)

    async def execute_raw(self, commands: Sequence[bytes], *,
                          raise_on_error: bool = True) -> list[Any]:
        """:meth:`execute_many` of already-encoded ``commands``."""
        conn = await self._connection()
        if raise_on_error:
            return list(await asyncio.gather(*conn.send(commands)))
        replies = list(await asyncio.gather(*conn.send(commands), return_exceptions=True))
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(
                    reply, exceptions.ResponseError):
                raise reply
        return replies

    async def execute(self, *args: Arg) -> Any:
        return await self._request(resp.command(*args))

    async def _request(self, command: bytes) -> Any:
        conn = await self._connection()
        return await conn.send([command])[0]

    async def run_script(self, script: Script, keys: Sequence[Arg],
                         args: Sequence[Arg]) -> Any:
        # run_script_many's work for one call, without its gather: this is the hot path
        try:
            return await self._request(script.evalsha(keys, args))
        except exceptions.NoScriptError:
            return await self._request(script.eval(keys, args))

    async def run_script_many(self, script: Script,
                              calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]], *,
                              raise_on_error: bool = True) -> list[Any]:
        """``EVALSHA`` per call, all in one write, after a ``SCRIPT LOAD`` in the same write.

        Calls that find no script are run again with ``EVAL`` (NOSCRIPT means they did not
        run). The load in front matters for order: without it, after a script flush another
        client's ``EVAL`` could cache the script while Redis works through this pipeline, and
        the calls before that point would run again after the ones behind it. Only a
        ``SCRIPT FLUSH`` landing inside the pipeline can still do that.

        ``raise_on_error=False``: a call's error reply is its result (a cluster caller sends
        the calls a MOVED redirected again, knowing the others ran); a lost connection still
        raises.
        """
        if not calls:
            return []
        if len(calls) == 1:
            try:
                return [await self.run_script(script, *calls[0])]
            except exceptions.ResponseError as exc:
                if raise_on_error:
                    raise
                return [exc]
        conn = await self._connection()
        futures = conn.send([resp.command("SCRIPT", "LOAD", script.source),
                             *(script.evalsha(keys, args) for keys, args in calls)])
        replies = (await asyncio.gather(*futures, return_exceptions=True))[1:]
        missing = [i for i, r in enumerate(replies) if isinstance(r, exceptions.NoScriptError)]
        if missing:
            conn = await self._connection()
            retried = conn.send([script.eval(*calls[i]) for i in missing])
            for i, reply in zip(missing, await asyncio.gather(*retried,
                                                               return_exceptions=True),
                                strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, BaseException) and (
                    raise_on_error or not isinstance(reply, exceptions.ResponseError)):
                raise reply
        return replies

    def close(self) -> None:
        """Drop the connection; later commands fail with ConnectionError."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
