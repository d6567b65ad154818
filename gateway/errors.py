"""The gateway's exceptions, in one tree (the model is ``router/errors.py``).

::

    GatewayError
    ├── BackendUnavailable       Redis (or whatever backs the backplane) did not do what we
    │   ├── ChannelUnavailable   asked: a connection error, a timeout, an error reply, a lost
    │   │                        pub/sub connection, a channel subscription not confirmed
    │   └── ProxyUnavailable     the proxy's backend gave no verdict: timeout, connection
    │                            error, HTTP status, malformed answer, breaker open, too busy
    ├── HandshakeRefused         a connect answered with an HTTP status and a JSON message
    │                            (400 bad parameters, 401 token, 403 origin, 405 method,
    │                            429 accept rate, 503 draining, full or Redis down)
    └── BadClientRequest         a client frame we cannot act on: an ``error`` reply, or the
                                 connection closed with ``close_code`` when that is set

Lower-layer errors are translated where they enter: the backplane turns ``RedisError`` and
``OSError`` into :class:`BackendUnavailable` (:func:`unavailable`), so the flows above it catch
one class and never import redis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class GatewayError(Exception):
    """Base of every exception the gateway raises on purpose."""


class BackendUnavailable(GatewayError):
    """The backplane could not do what was asked; the request may be retried later."""


class ChannelUnavailable(BackendUnavailable):
    """The pub/sub subscription for a channel could not be confirmed in time."""


class ProxyUnavailable(BackendUnavailable):
    """A proxy call gave no verdict; ``kind`` is its metric label (``timeout``,
    ``connection``, ``http_4xx``, ``http_5xx``, ``http_other`` (a 1xx or 3xx: redirects are
    not followed), ``bad_answer``, ``breaker_open``, ``overloaded``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class HandshakeRefused(GatewayError):
    """A handshake refusal, answered with an HTTP status and a JSON ``{error, message}``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []

    @property
    def retry_after(self) -> int | None:
        """Seconds from the ``Retry-After`` header, if the refusal carries one."""
        value = dict(self.headers).get("Retry-After")
        return None if value is None else int(value)


class BadClientRequest(GatewayError):
    """A client message we cannot act on: answered with an ``error`` (``code``), or, when
    ``close_code`` is set, by closing the connection with it."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Translate the backend's own errors (redis-py's, sockets', timeouts) at the boundary."""
    # RedisClusterException (e.g. no node of a cluster reachable) is not a RedisError
    from redis.exceptions import RedisClusterException, RedisError

    try:
        yield
    except BackendUnavailable:
        raise
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise BackendUnavailable(f"{what}: {exc}") from exc
