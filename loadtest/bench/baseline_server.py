"""The baseline: a plain ``websockets`` server that broadcasts one Redis pub/sub channel.

This is what a team would write in an afternoon instead of Switchboard, and what the bench
measures Switchboard against in the same run: ``websockets.asyncio.server.serve``, one
process, every connection in a set, and every message from one Redis channel sent to all of
them with ``websockets.broadcast()`` as a JSON text frame. It checks the same ``?token=`` JWT
(HS256) the gateway checks, so connects cost both sides the same crypto. No resume, no
per-user routing, no limits.

The bench publishes complete JSON objects to the channel; the server forwards the bytes as
they are (``text=True``), the cheapest possible broadcast, so the comparison is never unfair
to the baseline.

Usage: ``python -m loadtest.bench.baseline_server --port P --redis URL --secret S``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import jwt
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

CHANNEL = "bench:baseline"

CONNECTIONS: set[ServerConnection] = set()


def token_of(path: str) -> str:
    values = parse_qs(urlsplit(path).query).get("token", [])
    return values[-1] if values else ""


def make_check(secret: str):  # type: ignore[no-untyped-def]
    def check(connection: ServerConnection, request: Request) -> Response | None:
        try:
            jwt.decode(token_of(request.path), secret, algorithms=["HS256"],
                       options={"require": ["sub", "exp"]})
        except jwt.InvalidTokenError:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
        return None

    return check


async def handler(ws: ServerConnection) -> None:
    CONNECTIONS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        CONNECTIONS.discard(ws)


async def relay(redis_url: str, channel: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    async for msg in pubsub.listen():
        if msg.get("type") == "message":
            websockets.broadcast(CONNECTIONS, msg["data"], text=True)


async def main(port: int, redis_url: str, secret: str, channel: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, process_request=make_check(secret),
                     backlog=4096):
        task = loop.create_task(relay(redis_url, channel))
        await stop
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--secret", required=True, help="HS256 secret of client tokens")
    parser.add_argument("--channel", default=CHANNEL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from switchboard.limits import raise_nofile_limit

    raise_nofile_limit()  # same footing as the gateway: as many sockets as the OS allows
    try:
        import uvloop

        uvloop.run(main(args.port, args.redis, args.secret, args.channel))
    except ImportError:  # pragma: no cover
        asyncio.run(main(args.port, args.redis, args.secret, args.channel))


if __name__ == "__main__":
    run()
