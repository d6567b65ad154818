"""The composition root: builds the hub, tracker, backplane and flows, runs the server socket,
keepalive, rebalancing and drain. Nothing imports this module but the CLI entry point.

:class:`Gateway` is also the :class:`~gateway.ports.ConnectionHooks` of every connection: the
process-wide state a connection's I/O layer needs (admission, auth, the writers' flush
scheduler, the plain HTTP endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any

from websockets.http11 import Request, Response

from gateway import commands, handshake, http, mover, presence, proxyrules, shutdown
from gateway.admission import Admission, refusal
from gateway.backplane import RedisBackplane
from gateway.delivery import Delivery
from gateway.errors import HandshakeRefused, ProxyUnavailable
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.ports import (
    Accepted,
    Backplane,
    Client,
    ConnectRequest,
    Deferred,
    Proxy,
    Registration,
    Services,
)
from gateway.proxyrefresh import Refresher
from gateway.server import Connection
from gateway.tracker import Tracker
from gateway.transport import FlushScheduler, Writer
from switchboard import streams
from switchboard.auth import Claims, TokenError, Verifier
from switchboard.config import GatewaySettings
from switchboard.redisurl import is_cluster
from switchboard.untrusted import quotable

log = logging.getLogger("switchboard.gateway")

# Connections the kernel completes and queues for us while we are busy (a reconnect storm);
# it caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096

# path -> (package, resource, content type)
_STATIC = {
    "/": ("gateway", "static/index.html", "text/html; charset=utf-8"),
    # a symlink to client/js/switchboard.js, the npm package's ES module
    "/client.js": ("gateway", "static/client.js", "text/javascript; charset=utf-8"),
}


class Gateway:
    def __init__(self, settings: GatewaySettings, loop: asyncio.AbstractEventLoop,
                 backplane: Callable[[str, GatewayMetrics], Backplane] | None = None,
                 proxy: Callable[[str, GatewayMetrics], Proxy | None] | None = None) -> None:
        """``backplane`` builds the backplane for a gateway id and its metrics (default: the
        Redis one of ``settings``; tests pass :class:`gateway.memory.MemoryBackplane`);
        ``proxy`` the same for the proxy (default: HTTP, when a proxy URL is set)."""
        self.settings = settings
        self.loop = loop
        self.gateway_id = settings.gateway_id or f"gw-{streams.random_id(8)}"
        self.metrics = GatewayMetrics(self.gateway_id)
        self.origins = http.OriginPolicy(settings.allowed_origins)
        self.verifier: Verifier | None = None
        if not settings.auth_disabled:
            self.verifier = Verifier(
                secret=settings.jwt_secret,
                public_key=_read_key(settings.jwt_public_key),
                algorithm=settings.jwt_algorithm,
            )
        self.flusher = FlushScheduler(loop)
        build = backplane or redis_backplane(settings)
        self.backplane = build(self.gateway_id, self.metrics)
        self.proxy = (proxy or http_proxy(settings))(self.gateway_id, self.metrics)
        self.services = Services(
            settings=settings, gateway_id=self.gateway_id, hub=Hub(), tracker=Tracker(),
            backplane=self.backplane, metrics=self.metrics, spawn=self.spawn,
            proxy=self.proxy,
        )
        # Only with a connect proxy are connects deferred; only with a refresh proxy are
        # expiring connections tracked.
        self._connect_proxy = self.proxy if self.proxy is not None and self.proxy.connects \
            else None
        self.refresher = Refresher(self.services, self.proxy) \
            if self.proxy is not None and self.proxy.refreshes else None
        self.hub = self.services.hub
        self.delivery = Delivery(self.services, self._registrations, drain=self.request_drain)
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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _registrations(self) -> list[Registration]:
        return [commands.registration(c) for c in self.hub if c.session.ready]

    # -- ConnectionHooks ----------------------------------------------------------------------

    def new_writer(self, tcp: asyncio.Transport, on_overflow: Callable[[], None]) -> Writer:
        return Writer(tcp, self.flusher, self.settings.write_buffer_limit, on_overflow)

    def accept(self, request: Request, params: dict[str, str]) -> Accepted | Deferred:
        headers = request.headers
        attempt = handshake.Attempt(request.method, params, headers.get("Origin"),
                                    headers.get("Host"), headers.get("Last-Event-ID"))
        if self._connect_proxy is not None:
            return self._defer(attempt, request, params)
        return handshake.decide(
            attempt, origins=self.origins, admit=self.admit,
            authenticate=lambda: self.authenticate(request, params),
            max_channels=self.settings.max_channels)

    def _defer(self, attempt: handshake.Attempt, request: Request,
               params: dict[str, str]) -> Deferred:
        claims, connect = handshake.defer(
            attempt, origins=self.origins, admit=self.admit,
            authenticate=lambda: self._authenticate_optional(request, params),
            max_channels=self.settings.max_channels)
        headers = request.headers
        return Deferred(claims, connect, attempt.origin, headers.get("User-Agent"),
                        proxyrules.forwarded_headers(self.settings.proxy_headers, headers.get),
                        params)

    def _authenticate_optional(self, request: Request, params: dict[str, str]) -> Claims | None:
        """With a connect proxy the token is optional; one that is sent must be valid."""
        if self.verifier is None:
            return self.authenticate(request, params)
        token = http.bearer_token(request, params)
        return self.verifier.verify(token) if token else None

    async def accept_deferred(self, deferred: Deferred, transport: str,
                              remote_addr: str | None, deadline: float) -> Accepted:
        """Ask the connect proxy: 503 (with Retry-After) when it cannot answer in time, its
        401/403 when it refuses, 401 when what it grants has already expired (``expire_at``
        in the past), else the claims it grants and the channels it joins."""
        proxy = self._connect_proxy
        assert proxy is not None
        body = proxyrules.connect_body(
            gateway=self.gateway_id, transport=transport, remote_addr=remote_addr,
            origin=deferred.origin, user_agent=deferred.user_agent, headers=deferred.headers,
            params=deferred.params, claims=deferred.claims)
        try:
            verdict = await proxy.connect(body, deadline - self.loop.time())
            if isinstance(verdict, proxyrules.Denied):
                raise _denied(verdict)
            claims = verdict.claims(deferred.claims)
            if claims.expires <= time.time():
                # Granted until a time already past (or the token expired while the backend
                # was asked): refused as an expired token is, so the client fetches new
                # credentials; accepted, it would live on without a refresh URL.
                raise handshake.unauthorized("expired")
            asked = deferred.request
            channels = tuple(dict.fromkeys(asked.channels + verdict.join))
            if len(channels) > self.settings.max_channels:
                raise proxyrules.BadAnswer("'join' takes the connection past max_channels")
        except proxyrules.BadAnswer as exc:
            self.metrics.proxy_error("connect", "bad_answer")
            log.warning("proxy connect answer refused: %s", exc)
            raise _unavailable("the backend's answer was not usable") from None
        except ProxyUnavailable:
            raise _unavailable("the backend could not be asked") from None
        except HandshakeRefused:
            raise
        except Exception:
            # A proxy is never to crash a handshake: whatever went wrong is a 503 and a log.
            log.exception("proxy connect failed")
            raise _unavailable("the backend could not be asked") from None
        reason = self.admission()  # drained or lost Redis while the backend was asked
        if reason is not None:
            raise refusal(503, "unavailable", reason, 1 + random.randint(0, 2))
        # The joined channels are granted: subscribed at connect without further questions.
        claims = dataclasses.replace(
            claims, channels=tuple(dict.fromkeys(claims.channels + verdict.join)))
        return Accepted(claims, ConnectRequest(asked.session, asked.cursor, channels,
                                               granted=verdict.join))

    def cors_origin(self, request: Request) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and self.origins.allows(origin, request.headers.get("Host")) \
            else None

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
        return self.backplane.unready

    def admit(self) -> HandshakeRefused | None:
        """May a new client connect now? 503 not ready or full, 429 over the accept rate."""
        reason = self.admission()
        if reason is not None:
            return refusal(503, "unavailable", reason, 1 + random.randint(0, 2))
        return self._admission.check(len(self.hub), self.loop.time())

    def tcp_opened(self, conn: Client) -> None:
        assert isinstance(conn, Connection)
        self.tcp.add(conn)

    def tcp_closed(self, conn: Client) -> None:
        assert isinstance(conn, Connection)
        self.tcp.discard(conn)
        if not self.tcp:
            self._all_closed.set()

    def client_joined(self, conn: Client) -> None:
        self.metrics.connected(conn.transport.wire)
        if self.refresher is not None:
            self.refresher.track(conn)

    def client_closing(self, conn: Client, code: int | None) -> None:
        self.metrics.closed(conn.transport.wire, code)

    def client_gone(self, conn: Client) -> None:
        svc = self.services
        if conn in self.hub:
            reg = commands.registration(conn)
            presence.left(svc, conn, self.hub.watched(conn))
            for key in self.hub.remove(conn):
                commands.release_channel(svc, key)
            self.backplane.unregister(reg)
            if not self.hub.user_clients(reg.user):
                svc.tracker.forget(streams.user_key(reg.user))
        self.metrics.ended(conn.transport.wire)

    def client_message(self, conn: Client, msg: dict[str, Any]) -> None:
        commands.handle(self.services, conn, msg)

    def plain_http(self, request: Request, path: str) -> Response:
        if request.method == "OPTIONS":
            return http.response(204, headers=http.cors_headers(self.cors_origin(request)))
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
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self.backplane.start(self.delivery)
        # The backlog again: create_server listens once more, by default with 100, and a
        # reconnect storm then overflows it; the kernel drops the SYNs and clients wait out
        # their retransmission (1 s, 3 s, 7 s) on top of their backoff.
        self._server = await self.loop.create_server(
            lambda: Connection(self.services, self), sock=sock, backlog=LISTEN_BACKLOG)
        self._tasks.append(self.loop.create_task(self._keepalive_loop()))
        if s.rebalance:
            self._tasks.append(self.loop.create_task(mover.rebalance_loop(self.services)))
        if self.refresher is not None:
            self._tasks.append(self.loop.create_task(self.refresher.run()))
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

    def request_drain(self, reason: str) -> None:
        """A ``drain`` command from the router (``POST /v1/gateways/ID/drain``): the same
        drain as SIGTERM, after which the process exits 0 and its supervisor replaces it.
        Unlike a second signal, a repeated command changes nothing."""
        if self._stopping.is_set():
            log.info("drain requested over Redis (%s): already stopping", quotable(reason))
            return
        log.warning("drain requested over Redis (%s): draining, then exiting",
                    quotable(reason))
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
        await mover.drain(self.services)
        if self.tcp:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), self.settings.close_timeout + 1)
        await self.backplane.stop()
        await shutdown.stop_tasks(self._tasks, 1.0)
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proxy.aclose(), 1.0)
        log.info("gateway %s stopped", self.gateway_id)


def redis_backplane(settings: GatewaySettings) -> Callable[[str, GatewayMetrics], Backplane]:
    """The backplane the Redis URL names: one server, or a Redis Cluster."""
    if is_cluster(settings.redis_url):
        from gateway.clusterbackplane import ClusterBackplane

        return lambda gw, metrics: ClusterBackplane(settings, gw, metrics)
    return lambda gw, metrics: RedisBackplane(settings, gw, metrics)


def http_proxy(settings: GatewaySettings) -> Callable[[str, GatewayMetrics], Proxy | None]:
    """The HTTP proxy, when any proxy URL is set (None: no proxy, nothing on any path, and
    httpx is not even imported)."""
    if not proxyrules.configured(settings):
        return lambda gw, metrics: None
    from gateway.proxy import HttpProxy

    return lambda gw, metrics: HttpProxy(settings, gw, metrics)


def _denied(verdict: proxyrules.Denied) -> HandshakeRefused:
    message = quotable(verdict.reason) or "connect refused by the backend"
    if verdict.status == 401:
        return handshake.unauthorized(message)
    return HandshakeRefused(403, "forbidden", message)


def _unavailable(message: str) -> HandshakeRefused:
    return refusal(503, "unavailable", message, 1 + random.randint(0, 2))


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
        # Whatever is left (connection tasks, fills) ends here, within a bound: asyncio.run
        # would wait for it without one. The drain is complete by now (clients moved, entry
        # deregistered), so a task that ignores its cancellation is no reason to hang.
        if not await shutdown.stop_others(2.0):
            logging.shutdown()
            os._exit(0)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    return 0
