"""The proxy over HTTP: one ``httpx.AsyncClient`` per gateway, signed JSON calls to the
backend's URLs, each bounded in time, in number and by a circuit breaker.

:class:`HttpProxy` implements :class:`gateway.ports.Proxy`. A call either returns the
backend's verdict (parsed by :mod:`gateway.proxyrules`) or raises
:class:`~gateway.errors.ProxyUnavailable`, never anything else and never later than its
timeout:

- at most ``proxy_max_concurrency`` calls are in flight; one more is refused at once
  (``overloaded``), never queued;
- a breaker per backend URL opens after ``proxy_breaker_failures`` consecutive failures and
  refuses at once (``breaker_open``) for ``proxy_breaker_cooldown`` seconds, then lets one
  probe through;
- connect, subscribe and refresh ask again once after a connection error (refused, reset, a
  keep-alive connection closed under us, a broken answer), within the same timeout. The
  backend may have got the first request (a read error comes after it was sent): only these
  idempotent events are retried, so a repeat is harmless; a publish is never asked twice;
- the backend's answer is read up to 64 KiB as sent (``Accept-Encoding: identity``; a
  compressed answer is refused); non-2xx, non-JSON or a wrong shape is a failure.

The secret signs every body (``X-Switchboard-Signature: t=UNIX,v1=HEX``); it is never logged,
and neither are URLs (they may carry credentials) or bodies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from gateway import proxyrules
from gateway.errors import ProxyUnavailable
from gateway.metrics import GatewayMetrics
from gateway.proxyrules import Allowed, ConnectGrant, Denied, Refreshed
from switchboard.auth import matches
from switchboard.config import GatewaySettings

log = logging.getLogger("switchboard.gateway")

T = TypeVar("T")

# Retried once (idempotent events only): no answer came (refused, reset, a keep-alive
# connection the backend had closed, an answer broken off). The request may have reached the
# backend; asking again is harmless. Timeouts are not retried: the budget is spent.
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
              httpx.WriteError)


def check(settings: GatewaySettings) -> None:
    """Refuse, at start-up, a configuration that could only fail every call (ValueError)."""
    if not settings.proxy_secret:
        raise ValueError("a proxy URL is set: --proxy-secret (SWITCHBOARD_PROXY_SECRET) is "
                         "required to sign the calls")
    for event, url in (("connect", settings.proxy_connect_url),
                       ("subscribe", settings.proxy_subscribe_url),
                       ("publish", settings.proxy_publish_url),
                       ("refresh", settings.proxy_refresh_url)):
        parts = urlsplit(url)
        if url and (parts.scheme not in ("http", "https") or not parts.hostname):
            # The URL itself is not repeated: it may carry credentials.
            raise ValueError(f"the proxy {event} URL must be an http:// or https:// URL")


class HttpProxy:
    def __init__(self, settings: GatewaySettings, gateway_id: str, metrics: GatewayMetrics,
                 *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        s = settings
        check(s)
        self.gateway_id = gateway_id
        self.urls = {"connect": s.proxy_connect_url, "subscribe": s.proxy_subscribe_url,
                     "publish": s.proxy_publish_url, "refresh": s.proxy_refresh_url}
        self.connects = bool(s.proxy_connect_url)
        self.refreshes = bool(s.proxy_refresh_url)
        self.timeout = s.proxy_timeout
        self._subscribe_channels = s.proxy_subscribe_channels if s.proxy_subscribe_url else ()
        self._publish_channels = s.proxy_publish_channels if s.proxy_publish_url else ()
        self._secret = s.proxy_secret.encode()
        self._limit = s.proxy_max_concurrency
        self._in_flight = 0
        self._breakers = {url: proxyrules.Breaker(s.proxy_breaker_failures,
                                                  s.proxy_breaker_cooldown)
                          for url in self.urls.values() if url}
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._client = httpx.AsyncClient(
            transport=transport, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(s.proxy_timeout),
            limits=httpx.Limits(max_connections=self._limit,
                                max_keepalive_connections=min(self._limit, 32),
                                keepalive_expiry=30.0))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def subscribes(self, channel: str) -> bool:
        return matches(channel, self._subscribe_channels)

    def publishes(self, channel: str) -> bool:
        return matches(channel, self._publish_channels)

    def breaker_open(self, event: str) -> bool:
        url = self.urls[event]
        return bool(url) and self._breakers[url].is_open

    async def connect(self, body: dict[str, Any], budget: float) -> ConnectGrant | Denied:
        return await self._call("connect", body, proxyrules.parse_connect, budget, retry=True)

    async def subscribe(self, body: dict[str, Any]) -> Allowed | Denied:
        return await self._call("subscribe", body, proxyrules.parse_subscribe, retry=True)

    async def publish(self, body: dict[str, Any]) -> Allowed | Denied:
        return await self._call("publish", body, proxyrules.parse_publish, retry=False)

    async def refresh(self, body: dict[str, Any]) -> Refreshed | Denied:
        return await self._call("refresh", body, proxyrules.parse_refresh, retry=True)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- one call -----------------------------------------------------------------------------

    async def _call(self, event: str, body: dict[str, Any], parse: Callable[[bytes], T],
                    budget: float | None = None, *, retry: bool) -> T:
        url = self.urls[event]
        breaker = self._breakers[url]
        data = proxyrules.encode(body)  # ValueError for what JSON cannot carry: the caller's
        if self._in_flight >= self._limit:
            raise self._failed(event, "overloaded", f"more than {self._limit} proxy calls in "
                               "flight")
        ticket = breaker.allow(self._clock())
        if ticket is None:
            raise self._failed(event, "breaker_open", "backend failing, breaker open")
        self._in_flight += 1
        started = self._clock()
        timeout = self.timeout if budget is None else max(0.0, min(self.timeout, budget))
        deadline = started + timeout
        verdict: T | None = None
        try:
            verdict = await self._attempts(event, url, data, parse, deadline,
                                           2 if retry else 1)
        except ProxyUnavailable as exc:
            was_open = breaker.is_open
            breaker.failure(ticket, self._clock())
            if breaker.is_open and not was_open:
                log.warning("proxy %s: breaker open for %.1f s after %d failures", event,
                            breaker.cooldown, breaker.failures)
            raise self._failed(event, exc.kind, str(exc)) from None
        finally:
            self._in_flight -= 1
            if verdict is None:
                breaker.release(ticket)  # cancelled: no verdict (a no-op after failure)
        breaker.success(ticket)
        self._metrics.proxy_call(event, _result(verdict), self._clock() - started)
        return verdict

    async def _attempts(self, event: str, url: str, data: bytes, parse: Callable[[bytes], T],
                        deadline: float, attempts: int) -> T:
        for attempt in range(attempts):
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ProxyUnavailable("timeout", "no answer within the proxy timeout")
            # identity: the answer cap counts the bytes received, and a compressed answer
            # could inflate far past it in one chunk before it is counted.
            headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                       "X-Switchboard-Event": event,
                       proxyrules.SIGNATURE_HEADER: proxyrules.sign(
                           self._secret, int(self._wall()), data)}
            try:
                status, answer = await self._post(url, data, headers, remaining)
            except (httpx.TimeoutException, TimeoutError):
                raise ProxyUnavailable("timeout", "no answer within the proxy timeout"
                                       ) from None
            except _RETRYABLE as exc:
                if attempt + 1 < attempts:
                    continue
                raise ProxyUnavailable("connection", f"cannot reach the backend: "
                                       f"{type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise ProxyUnavailable("connection", f"backend call failed: "
                                       f"{type(exc).__name__}") from None
            if not 200 <= status < 300:
                kind = "http_4xx" if 400 <= status < 500 else "http_5xx" if status >= 500 \
                    else "http_other"
                raise ProxyUnavailable(kind, f"backend answered HTTP {status}")
            try:
                return parse(answer)
            except proxyrules.BadAnswer as exc:
                raise ProxyUnavailable("bad_answer", f"malformed answer: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, url: str, data: bytes, headers: dict[str, str],
                    seconds: float) -> tuple[int, bytes]:
        """Status and body (at most MAX_ANSWER_BYTES + 1 bytes are read, only of a 2xx)."""
        limit = proxyrules.MAX_ANSWER_BYTES
        # httpx's timeouts are per phase (connect, each read); the pool wait and the whole
        # exchange are bounded here too, so a trickling backend cannot outlast the budget.
        async with asyncio.timeout(seconds), self._client.stream(
                "POST", url, content=data, headers=headers,
                timeout=httpx.Timeout(seconds)) as response:
            if not 200 <= response.status_code < 300:
                return response.status_code, b""  # a failure whatever it says
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ProxyUnavailable("bad_answer", "malformed answer: compressed "
                                       "(Content-Encoding) although identity was asked")
            chunks: list[bytes] = []
            size = 0
            # With no Content-Encoding these are the bytes as received (nothing inflates).
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
            return response.status_code, b"".join(chunks)

    def _failed(self, event: str, kind: str, message: str) -> ProxyUnavailable:
        self._metrics.proxy_error(event, kind)
        # Refusals at once (breaker open, too busy) are counted, not logged: one line per
        # refused call would flood the log exactly when the backend is down.
        if kind not in ("breaker_open", "overloaded"):
            log.warning("proxy %s call failed (%s): %s", event, kind, message)
        return ProxyUnavailable(kind, message)


def _result(verdict: object) -> str:
    if isinstance(verdict, Denied):
        return "denied"
    if isinstance(verdict, Allowed) and verdict.rewritten:
        return "rewritten"
    return "allowed"
