"""What our lean Redis connections share: RESP command encoding and opening a connection.

Two hot paths talk to Redis without redis-py: the gateway's pub/sub connection
(:mod:`gateway.pubsub`) and the router's pipelined publish connection
(:mod:`switchboard.pipelined`). Both open the connection the same way: the URL as redis-py
reads it (TCP, TLS or a Unix socket), then AUTH, SELECT and CLIENT SETNAME.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis


def command(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings (hiredis encodes it in C, ~3x faster than
    formatting it here: a batch of 100 publishes is 100 commands of 15 arguments)."""
    # hiredis types its argument as a 1-tuple; it takes any length
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type]


class Requester(asyncio.Protocol):
    """A connection that can send one command and give back a future of its reply."""

    def request(self, *args: str | bytes) -> asyncio.Future[Any]:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class RespProtocol(Requester):
    """One socket whose replies hiredis parses: the base of both lean connections.

    ``data_received`` feeds the parser and hands each complete reply to :meth:`reply`, with
    no await per reply; a protocol error goes to :meth:`fail`, which subclasses extend to fail
    whatever waits on the connection.
    """

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(self.protocol_error(exc))
                return
            if reply is False or not self.reply(reply):
                return

    def reply(self, reply: Any) -> bool:
        """Handle one reply; False when the connection failed and parsing must stop."""
        raise NotImplementedError

    def protocol_error(self, exc: hiredis.ProtocolError) -> Exception:
        return ConnectionError(f"Redis protocol error: {exc}")

    def fail(self, exc: Exception) -> None:
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


P = TypeVar("P", bound=Requester)

# rediss:// query options we honour; anything else starting ssl_ is refused, so a TLS setting
# the redis-py clients would apply is never silently dropped by the lean connections.
SSL_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_check_hostname",
                         "ssl_certfile", "ssl_keyfile", "ssl_password"})
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
             "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, read from a Redis URL by redis-py's own rules."""

    options: dict[str, Any]
    ssl: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Raises ValueError for a URL or TLS option these connections cannot honour."""
        from redis.connection import parse_url

        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        tls = "SSL" in str(options.get("connection_class") or "")
        return cls(options, tls_context(options) if tls else None)


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    unknown = sorted(k for k in options if k.startswith("ssl_") and k not in SSL_OPTIONS)
    if unknown:
        raise ValueError(f"Redis URL option(s) not supported: {', '.join(unknown)}")
    reqs = options.get("ssl_cert_reqs", "required")
    mode = CERT_REQS.get(reqs) if isinstance(reqs, str) else reqs  # as exact as redis-py
    if not isinstance(mode, ssl.VerifyMode):
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    if options.get("ssl_keyfile") and not options.get("ssl_certfile"):
        raise ValueError("ssl_keyfile needs ssl_certfile")
    # As redis-py builds it: the system's CAs, plus the URL's own CA file or directory.
    context = ssl.create_default_context()
    if options.get("ssl_ca_certs") or options.get("ssl_ca_path"):
        context.load_verify_locations(options.get("ssl_ca_certs"), options.get("ssl_ca_path"))
    # check_hostname first: it must be off before verification can be
    context.check_hostname = (mode is not ssl.CERT_NONE
                              and options.get("ssl_check_hostname", True) is not False)
    context.verify_mode = mode
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"),
                                options.get("ssl_password"))
    return context


async def open_connection(endpoint: Endpoint, factory: Callable[[], P], *,
                          connect_timeout: float, client_name: str) -> P:
    """Connect and authenticate. Raises OSError / TimeoutError when unreachable, or whatever
    the protocol fails its setup futures with (a refused password...)."""
    options = endpoint.options
    loop = asyncio.get_running_loop()
    if "path" in options:
        coro = loop.create_unix_connection(factory, options["path"])
    else:
        coro = loop.create_connection(factory, options.get("host", "localhost"),
                                      int(options.get("port", 6379)), ssl=endpoint.ssl)
    _, protocol = await asyncio.wait_for(coro, connect_timeout)
    try:
        setup = []
        if options.get("password"):
            auth = [options["username"]] if options.get("username") else []
            setup.append(protocol.request("AUTH", *auth, options["password"]))
        if options.get("db"):
            setup.append(protocol.request("SELECT", str(options["db"])))
        setup.append(protocol.request("CLIENT", "SETNAME", client_name))
        await asyncio.wait_for(asyncio.gather(*setup), connect_timeout)
    except BaseException:
        protocol.abort()
        raise
    return protocol
