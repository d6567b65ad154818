"""Gateway wiring and lifecycle: server socket, hub, backplane, keepalive, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
from importlib import resources
from typing import Any

from redis.exceptions import RedisError
from websockets.http11 import Request, Response

from gateway import commands, http, mover
from gateway.admission import Admission, Refusal
from gateway.backplane import Backplane
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.server import Connection
from gateway.tracker import Fill, Steps, Tracker
from gateway.transport import FlushScheduler, Writer
from gateway.wire import Wire
from switchboard import contract, streams
from switchboard.auth import Claims, TokenError, Verifier
from switchboard.closecodes import Close
from switchboard.config import GatewaySettings
from switchboard.contract import Control, Message
from switchboard.store import Store, pipelined

log = logging.getLogger("switchboard.gateway")

# path -> (package, resource, content type)
_STATIC = {
    "/": ("gateway", "static/index.html", "text/html; charset=utf-8"),
    "/client.js": ("client", "js/switchboard.js", "text/javascript; charset=utf-8"),
}


# Recovery work after a Redis outage (re-registration, catch-up, gap fills) is retried this
# many times with jittered backoff (about 6 s in all) before it gives up.
_RETRIES = 6


def _backoff(attempt: int) -> float:
    return random.uniform(0.5, 1.0) * min(2.0, 0.1 * 2.0**attempt)


class Gateway:
    def __init__(self, settings: GatewaySettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.gateway_id = settings.gateway_id or f"gw-{streams.random_id(8)}"
        self.metrics = GatewayMetrics(self.gateway_id)
        self.hub = Hub()
        self.tracker = Tracker()
        self.origins = http.OriginPolicy(settings.allowed_origins)
        self.verifier: Verifier | None = None
        if not settings.auth_disabled:
            self.verifier = Verifier(
                secret=settings.jwt_secret,
                public_key=_read_key(settings.jwt_public_key),
                algorithm=settings.jwt_algorithm,
            )
        self.flusher = FlushScheduler(loop)
        self.backplane = Backplane(
            settings, self.gateway_id, self.metrics, self.on_message, self.on_control, self.load
        )
        self.backplane.on_reconnecting = self._pubsub_reconnecting
        self.backplane.on_resubscribed = self._start_resync
        self.backplane.on_redis_back = self._redis_back
        # client publishes go over a pipelined connection, opened at the first one: redis-py
        # would cost this event loop ~0.3 ms of CPU per publish, time it delivers nothing
        self.store = Store(self.backplane.redis, settings,
                           pipelined(settings, f"{settings.prefix}publish:{self.gateway_id}"))
        self._background: set[asyncio.Task[None]] = set()
        self.tcp: set[Connection] = set()
        self._admission = Admission(
            max_connections=settings.max_connections, accept_rate=settings.accept_rate,
            accept_burst=settings.accept_burst, now=loop.time(),
        )
        self._all_closed = asyncio.Event()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- used by connections ------------------------------------------------------------------

    def new_writer(self, tcp: asyncio.Transport, on_overflow: Any) -> Writer:
        return Writer(tcp, self.flusher, self.settings.write_buffer_limit, on_overflow)

    def authenticate(self, request: Request, params: dict[str, str]) -> Claims:
        if self.verifier is None:
            user = params.get("user") or "anonymous"
            if not streams.valid_user(user):
                raise TokenError("invalid user id")
            return Claims(user=user, expires=float("inf"), channels=("*",), publish=("*",))
        return self.verifier.verify(http.bearer_token(request, params))

    def admission(self) -> str | None:
        """Why this gateway is not ready (readyz 503), or None."""
        if self.draining:
            return "gateway is draining"
        if not self.backplane.ready:
            return "gateway cannot reach Redis"
        return None

    def admit(self) -> Refusal | None:
        """May a new client connect now? 503 not ready or full, 429 over the accept rate."""
        reason = self.admission()
        if reason is not None:
            return Refusal(503, "unavailable", reason, 1 + random.randint(0, 2))
        return self._admission.check(len(self.hub), self.loop.time())

    def tcp_opened(self, conn: Connection) -> None:
        self.tcp.add(conn)

    def tcp_closed(self, conn: Connection) -> None:
        self.tcp.discard(conn)
        if not self.tcp:
            self._all_closed.set()

    def client_joined(self, conn: Connection) -> None:
        self.metrics.connected(conn.transport.wire)

    def client_closing(self, conn: Connection, code: int | None) -> None:
        self.metrics.closed(conn.transport.wire, code)

    def client_gone(self, conn: Connection) -> None:
        if conn in self.hub:
            reg = commands.registration(conn)
            for key in self.hub.remove(conn):
                self._release_channel(key)
            self.backplane.unregister(reg)
            if not self.hub.user_clients(reg.user):
                self.tracker.forget(streams.user_key(reg.user))
        self.metrics.ended(conn.transport.wire)

    def client_message(self, conn: Connection, msg: dict[str, Any]) -> None:
        commands.handle(self, conn, msg)

    def channel_left(self, conn: Connection, key: str) -> None:
        if self.hub.unsubscribe(conn, key):
            self._release_channel(key)

    def _release_channel(self, key: str) -> None:
        """No local subscriber left: stop receiving the channel (DESIGN 6)."""
        self.tracker.forget(key)
        self.spawn(self._unsubscribe_channel(key))

    async def _unsubscribe_channel(self, key: str) -> None:
        # A subscribe that came in since the last one left owns the Redis subscription now.
        if not self.hub.has_channel(key):
            await self.backplane.unsubscribe_channel(key[2:])

    def plain_http(self, request: Request, path: str) -> Response:
        if request.method == "OPTIONS":
            origin = request.headers.get("Origin")
            allowed = origin if self.origins.allows(origin, request.headers.get("Host")) else None
            return http.response(204, headers=http.cors_headers(allowed))
        if request.method != "GET":
            return http.error_response(405, "method_not_allowed", "use GET", [("Allow", "GET")])
        if path == "/healthz":
            return http.json_response(200, {"status": "ok", "gateway": self.gateway_id})
        if path == "/readyz":
            reason = self.admission()
            status = 200 if reason is None else 503
            return http.json_response(status, {"ready": reason is None, "reason": reason,
                                               "gateway": self.gateway_id})
        if path == "/metrics":
            self.metrics.ready.set(1 if self.admission() is None else 0)
            return http.response(200, self.metrics.render(), "text/plain; version=0.0.4")
        if path == "/demo/config.json" and self.settings.demo_config:
            return http.response(200, self.settings.demo_config.encode(), "application/json")
        if path in _STATIC:
            package, name, content_type = _STATIC[path]
            try:
                body = resources.files(package).joinpath(name).read_bytes()
            except (FileNotFoundError, ModuleNotFoundError):
                return http.error_response(404, "not_found", f"{path} is not available")
            return http.response(200, body, content_type)
        return http.error_response(404, "not_found", f"no such path {path}")

    # -- from Redis ---------------------------------------------------------------------------

    def load(self) -> dict[str, int]:
        counts = self.hub.count_by_wire()
        ws = counts[Wire.JSON] + counts[Wire.MSGPACK]
        return {"connections": len(self.hub), "ws": ws, "sse": counts[Wire.SSE]}

    def on_message(self, message: Message) -> None:
        ready, fill = self.tracker.live(message)
        for m in ready:
            self._deliver(m)
        if fill is not None:
            self.spawn(self._fill(fill))

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _run(self, steps: Steps) -> None:
        for m in steps.ready:
            self._deliver(m)
        for fill in steps.fills:
            self.spawn(self._fill(fill))
        if steps.regressed:
            self.spawn(self._retire(steps.regressed))

    async def _fill(self, fill: Fill) -> None:
        """Read a live gap from the log; deliver it and what queued behind it, in order."""
        entries: list[Message] = []
        if not fill.empty:
            # Retried: a fill often starts while Redis is coming back, and what it misses is
            # lost to every local follower (they would see the gap and have to resume).
            for attempt in range(_RETRIES):
                try:
                    logs = await self.backplane.read_logs(
                        [(fill.key, fill.first, fill.last)])
                    entries = logs.get(fill.key, [])
                    break
                except (RedisError, OSError) as exc:
                    log.warning("gap fill %s failed (attempt %d): %s", fill, attempt + 1, exc)
                    await asyncio.sleep(_backoff(attempt))
        before = self.tracker.filled
        ready, more = self.tracker.complete(fill, entries)
        for m in ready:
            self._deliver(m)
        if not fill.empty:
            self.metrics.fill(self.tracker.filled > before)
        if more is not None:
            self.spawn(self._fill(more))

    async def _reregister(self) -> None:
        await self.backplane.reregister(
            [commands.registration(c) for c in self.hub if c.session.ready]  # type: ignore[arg-type]
        )

    async def _redis_back(self) -> None:
        """Our registry entry had vanished (Redis restarted or was flushed): publishers found
        none of our connections meanwhile, so map them again, then fetch what they missed."""
        await self._reregister()
        await self._catch_up()

    def _pubsub_reconnecting(self) -> None:
        self.tracker.hold_all()

    def _start_resync(self) -> None:
        self.spawn(self._resync())

    async def _resync(self) -> None:
        """Pub/sub is back after an outage. Envelopes published meanwhile are in the logs
        only, and if Redis restarted empty no publisher routes to us yet: register again
        first (so everything after the tops we read reaches us), then catch up."""
        for attempt in range(_RETRIES):
            try:
                if await self.backplane.heartbeat():
                    log.warning("registry entry was gone: re-registering connections")
                    await self._reregister()
                break
            except (RedisError, OSError) as exc:
                log.warning("re-registration attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(_backoff(attempt))
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Bring every followed stream up to its top from the log."""
        keys = self.tracker.keys()
        for attempt in range(_RETRIES):
            try:
                tops = await self.backplane.read_tops(keys) if keys else {}
                break
            except (RedisError, OSError) as exc:
                log.warning("catch-up attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(_backoff(attempt))
        else:
            log.error("catch-up gave up: clients will resume when they notice their gaps")
            self._run(self.tracker.release_all())
            return
        self._run(self.tracker.catch_up(tops))

    async def _retire(self, regressed: list[tuple[str, str]]) -> None:
        """Redis came back with older data: these streams' offsets are being reused. Retire
        their epochs first, all of them, so a resume from any position in one says
        ``recovered:false``; then move every local follower so it resumes (DESIGN 6b, 7)."""
        for key, epoch in regressed:
            log.error("stream %s went back in epoch %s: retiring it and moving its followers",
                      streams.wire_name(key), epoch)
            for attempt in range(_RETRIES):
                try:
                    await self.backplane.retire_epoch(key, epoch)
                    break
                except (RedisError, OSError) as exc:
                    log.warning("retiring %s failed (attempt %d): %s", key, attempt + 1, exc)
                    await asyncio.sleep(_backoff(attempt))
            self.metrics.history_lost()
        moved = {c.conn_id: c for key, _ in regressed for c in self.hub.followers(key)}
        for client in moved.values():
            mover.move(client, Close.SERVICE_RESTART, "history_lost", jitter_ms=2000)

    def _deliver(self, message: Message) -> None:
        started = time.perf_counter()
        gaps_before = self.hub.gaps
        delivered = self.hub.deliver(message)
        elapsed = time.perf_counter() - started
        latency = (contract.now_ms() - message.published_ms) / 1000 if message.published_ms else -1
        self.metrics.delivered(delivered, elapsed, latency)
        for _ in range(self.hub.gaps - gaps_before):
            self.metrics.gap()

    def on_control(self, control: Control) -> None:
        if control.op == contract.OP_DISCONNECT and len(control.args) >= 1:
            user = str(control.args[0])
            code = int(control.args[1]) if len(control.args) > 1 else int(Close.DISCONNECTED)
            reason = str(control.args[2]) if len(control.args) > 2 else "disconnected"
            for client in self.hub.user_clients(user):
                client.transport.close(code, reason)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s.reuse_port:
            # Several gateways on one port: the kernel spreads new connections among them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.port))
        sock.listen(4096)
        sock.setblocking(False)
        self.backplane.start()
        self._server = await self.loop.create_server(lambda: Connection(self), sock=sock)
        self._tasks.append(self.loop.create_task(self._keepalive_loop()))
        if s.rebalance:
            self._tasks.append(self.loop.create_task(mover.rebalance_loop(self)))
        log.info("gateway %s listening on %s:%d", self.gateway_id, s.host, s.port)
        if self.verifier is None:
            log.warning("AUTH IS DISABLED: any client may connect as any user (dev only)")

    async def _keepalive_loop(self) -> None:
        s = self.settings
        periods = [p for p in (s.ping_interval, s.ping_timeout, s.sse_ping_interval) if p]
        tick = max(0.2, min(periods) / 4) if periods else 1.0
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for conn in list(self.tcp):
                conn.keepalive(now, s.ping_interval, s.ping_timeout)

    def request_stop(self) -> None:
        if self._stopping.is_set():
            log.warning("second stop signal: exiting now")
            for conn in list(self.tcp):
                conn._abort()
            raise SystemExit(1)
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop accepting, move every client away with a jittered reconnect hint, deregister."""
        self.draining = True
        self.backplane.draining = True
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.backplane.heartbeat(), 1.0)
        await mover.drain(self)
        if self.tcp:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), self.settings.close_timeout + 1)
        try:
            await self.backplane.stop()
        finally:
            if self.store.pipelined is not None:
                self.store.pipelined.close()
        for task in self._tasks:
            task.cancel()
        log.info("gateway %s stopped", self.gateway_id)


def _read_key(value: str) -> str:
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as fh:
            return fh.read()
    return value


def run(settings: GatewaySettings) -> int:
    from switchboard.limits import raise_nofile_limit

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_nofile_limit()
    # websockets logs every open and close at INFO: far too chatty at 10,000s of connections.
    logging.getLogger("websockets").setLevel(logging.WARNING)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gateway = Gateway(settings, loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.request_stop)
        await gateway.start()
        await gateway.run_until_stopped()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    return 0
