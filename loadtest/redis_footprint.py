"""Redis memory per connection, per subscription and per logged message: the sizing inputs of
docs/scaling.md's plan. ``python -m loadtest.redis_footprint``.

Against a private redis-server: writes the keys a connected user costs (the map entry, the
session, the user stream's meta) through the real scripts, a user's log of ``--messages``
messages of ``--pad`` bytes through the real publish script, and ``--subscriptions`` sharded
subscriptions on one connection (what a gateway holds in cluster mode: one per local user);
prints ``used_memory`` deltas per item. Bounded: everything is counted and written once.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import redis
import uvloop

from switchboard import contract, streams
from switchboard.config import RedisSettings
from switchboard.store import Store, Target
from tests.support import start_redis


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def publish_log(url: str, users: int, messages: int, pad: int) -> None:
    store = Store.open(RedisSettings(redis_url=url, redis_timeout=10, history_size=messages),
                       "footprint")
    try:
        for u in range(users):
            target = Target("u", f"logged{u}")
            await store.publish_many([(target, {"pad": "x" * pad}, None)] * messages)
    finally:
        await store.aclose()


def connected_users(client: redis.Redis, users: int) -> None:
    keys = contract.Keys()
    claim = client.register_script(contract.CLAIM_SESSION_LUA)
    ensure = client.register_script(contract.ENSURE_META_LUA)
    pipe = client.pipeline(transaction=False)
    for u in range(users):
        user = f"user{u}"
        key = streams.user_key(user)
        pipe.hset(keys.conns(user), f"conn{u:012d}", "gw-0123456789")
        claim(keys=[keys.session(f"session{u:012d}")], args=[user, 120_000], client=pipe)
        ensure(keys=[keys.meta(key), keys.log(key)], args=[streams.random_id(), 86_400_000],
               client=pipe)
        if len(pipe) > 3000:
            pipe.execute()
    pipe.execute()


def subscribe(port: int, n: int) -> socket.socket:
    """``n`` SSUBSCRIBEs on one raw connection, confirmed before this returns."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    keys = contract.Keys()
    out = b"".join(
        b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(c), c)
        for c in (keys.live_channel(streams.user_key(f"sub{i}")).encode() for i in range(n)))
    sock.sendall(out)
    want, got = n, 0
    buf = b""
    while got < want:
        buf += sock.recv(1 << 20)
        got = buf.count(b"ssubscribe")
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--subscriptions", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=1000, help="per logged user")
    parser.add_argument("--logged-users", type=int, default=20)
    parser.add_argument("--pad", type=int, default=100, help="bytes of data per message")
    args = parser.parse_args()
    server = start_redis()
    result: dict[str, Any] = {}
    try:
        client = redis.Redis(port=server.port)
        base = used(client)
        connected_users(client, args.users)
        after_users = used(client)
        result["bytes_per_connected_user"] = round((after_users - base) / args.users)
        uvloop.run(publish_log(server.url, args.logged_users, args.messages, args.pad))
        after_logs = used(client)
        per_message = (after_logs - after_users) / (args.logged_users * args.messages)
        result["bytes_per_logged_message"] = round(per_message)
        result["message_data_bytes"] = args.pad
        sock = subscribe(server.port, args.subscriptions)
        after_subs = used(client)
        result["bytes_per_sharded_subscription"] = round(
            (after_subs - after_logs) / args.subscriptions)
        sock.close()
        client.close()
    finally:
        server.stop()
    result["command"] = ["python", "-m", "loadtest.redis_footprint", *[
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()]]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
