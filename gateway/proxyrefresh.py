"""Refreshing connections before their claims expire, when a refresh proxy is configured.

Without one, a token's ``exp`` is checked at connect only (as it always was). With one, each
connection whose claims expire is asked about :func:`gateway.proxyrules.refresh_lead` seconds
before its expiry:

- the backend extends it (``expire_at``, optionally new ``channels``/``publish``/``info``):
  the new claims apply to later subscribes and publishes, and the next refresh is scheduled;
- the backend refuses: the connection is closed 4001 (reconnect only with a new token);
- the backend cannot be asked (down, slow, breaker open, malformed answer, or any other
  failure of the call): asked again
  every second or so until the real expiry; still no answer then: closed 1013 (try again
  later), so the client reconnects with backoff and its connect decides afresh.

One heap for the gateway, swept by one task: no timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import time

from gateway import proxyrules
from gateway.errors import ProxyUnavailable
from gateway.ports import Client, Proxy, Services
from gateway.proxyrules import Denied
from switchboard.closecodes import Close
from switchboard.untrusted import quotable

log = logging.getLogger("switchboard.gateway")

RETRY_SECONDS = 1.0


class Refresher:
    def __init__(self, svc: Services, proxy: Proxy) -> None:
        self.svc = svc
        self.proxy = proxy
        self.lead = proxyrules.refresh_lead(proxy.timeout)
        self._heap: list[tuple[float, int, Client, float]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def track(self, conn: Client) -> None:
        """Schedule ``conn``'s refresh (a connection whose claims never expire is not)."""
        expires = conn.claims.expires
        if not math.isfinite(expires):
            return
        heapq.heappush(self._heap, (expires - self.lead, next(self._seq), conn, expires))
        if len(self._heap) > 2 * len(self.svc.hub) + 1024:
            # Closed connections wait in the heap until their time: drop them now and then.
            self._heap = [e for e in self._heap if not e[2].is_closed()]
            heapq.heapify(self._heap)
        self._wake.set()

    async def run(self) -> None:
        while True:
            wall = time.time()
            while self._heap and self._heap[0][0] <= wall:
                _, _, conn, expires = heapq.heappop(self._heap)
                if not conn.is_closed() and conn.claims.expires == expires:
                    self.svc.spawn(self.refresh(conn, expires))
            delay = 1.0 if not self._heap else min(1.0, max(0.05, self._heap[0][0] - wall))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def refresh(self, conn: Client, expires: float) -> None:
        while not conn.is_closed():
            body = proxyrules.connection_body(
                "refresh", gateway=self.svc.gateway_id, claims=conn.claims,
                conn_id=conn.conn_id, session=conn.session.session_id)
            try:
                verdict = await self.proxy.refresh(body)
            except ProxyUnavailable:
                verdict = None
            except Exception:
                # Whatever else went wrong (a body that would not encode, a bug): no verdict,
                # like an unreachable backend, so the close at expiry still comes.
                log.exception("proxy refresh failed")
                verdict = None
            if verdict is None:
                left = expires - time.time()
                if left <= 0:
                    conn.close(Close.TRY_AGAIN_LATER, "could not refresh the connection")
                    return
                await asyncio.sleep(min(left, RETRY_SECONDS * random.uniform(0.5, 1.5)))
                continue
            if conn.is_closed():
                return
            if isinstance(verdict, Denied):
                conn.close(Close.TOKEN_INVALID, close_reason(verdict.reason))
                return
            if verdict.expire_at <= time.time():
                conn.close(Close.TOKEN_INVALID, "expired")
                return
            conn.claims = verdict.claims(conn.claims)
            self.track(conn)
            return


def close_reason(reason: str) -> str:
    """A backend's reason fit for a close frame (at most 123 UTF-8 bytes)."""
    text = quotable(reason).encode("utf-8")[:120].decode("utf-8", "ignore")
    return text or "refresh refused"
