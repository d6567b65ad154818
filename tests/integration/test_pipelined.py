"""The pipelined publish connection against a real redis-server: order, errors, outages."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis import exceptions

from switchboard.pipelined import PipelinedRedis, Script
from tests.support import RedisServer

pytestmark = pytest.mark.integration

ECHO = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")


async def test_concurrent_commands_each_get_their_own_reply(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 2.0)
    try:
        replies = await asyncio.gather(*(client.execute("ECHO", f"m{i}") for i in range(500)))
        assert replies == [f"m{i}".encode() for i in range(500)]
        counts = await client.execute_many([("INCR", "c")] * 50)
        assert counts == list(range(1, 51))
        # Arguments of every type a script call passes: str, bytes (binary), int.
        got = await client.run_script(ECHO, ["k"], [b"\x00\xff"])
        assert got == [b"k", b"\x00\xff", 1]
    finally:
        client.close()


async def test_an_error_reply_fails_only_its_own_command(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 2.0)
    try:
        await client.execute("SET", "text", "not a number")
        results = await asyncio.gather(client.execute("INCR", "text"),
                                       client.execute("INCR", "n"),
                                       return_exceptions=True)
        assert isinstance(results[0], exceptions.ResponseError)
        assert results[1] == 1
        assert await client.execute("INCR", "n") == 2
    finally:
        client.close()


async def test_scripts_run_after_a_flush_of_the_script_cache(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 2.0, scripts=[ECHO])
    try:
        assert (await client.run_script(ECHO, ["s"], ["a"]))[2] == 1
        redis_server.cli("SCRIPT", "FLUSH")
        # EVALSHA finds nothing; every call runs once, by EVAL, in order.
        many = await client.run_script_many(ECHO, [(["s"], [str(i)]) for i in range(5)])
        assert [r[2] for r in many] == [2, 3, 4, 5, 6]
        redis_server.cli("SCRIPT", "FLUSH")
        assert (await client.run_script(ECHO, ["s"], ["b"]))[2] == 7
    finally:
        client.close()


async def test_a_batch_keeps_its_order_when_another_client_reloads_a_flushed_script(
    redis_server: RedisServer,
) -> None:
    # Another router publishing single messages re-caches the script with EVAL while Redis
    # reads this batch's pipeline (~60 KB, several reads): none of the batch may then run
    # before the calls ahead of it.
    counter = Script("return redis.call('INCR', KEYS[1])")
    batcher = PipelinedRedis(redis_server.url, 5.0, scripts=[counter])
    other = PipelinedRedis(redis_server.url, 5.0, scripts=[counter])
    stop = False

    async def singles() -> None:
        while not stop:
            await asyncio.gather(*(other.run_script(counter, ["b"], ["y"]) for _ in range(20)))

    try:
        for _ in range(30):
            stop = False
            background = asyncio.create_task(singles())
            await asyncio.sleep(0.005)
            await other.execute("SCRIPT", "FLUSH")
            got = await batcher.run_script_many(counter, [(["a"], ["x" * 600])] * 100)
            stop = True
            await background
            assert got == list(range(got[0], got[0] + 100))
    finally:
        batcher.close()
        other.close()


async def test_a_batch_after_a_script_flush_runs_each_call_once_by_evalsha(
    redis_server: RedisServer,
) -> None:
    # The batch loads the script in the same write, so no call of it can come back NOSCRIPT
    # and run again out of order by EVAL (the race the test above provokes).
    counter = Script("return redis.call('INCR', KEYS[1])")
    client = PipelinedRedis(redis_server.url, 2.0, scripts=[counter])
    try:
        await client.execute("PING")  # connected, script loaded
        redis_server.cli("SCRIPT", "FLUSH")
        redis_server.cli("CONFIG", "RESETSTAT")
        assert await client.run_script_many(counter, [(["k"], [])] * 50) == list(range(1, 51))
        stats = redis_server.cli("INFO", "commandstats")
        assert "cmdstat_eval:" not in stats
        assert "cmdstat_evalsha:calls=50," in stats
    finally:
        client.close()


async def test_closing_while_connecting_fails_the_waiting_callers_as_redis_errors(
    redis_server: RedisServer,
) -> None:
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts, never answers: stuck opening
    client = PipelinedRedis(redis_server.url, 5.0)
    try:
        waiting = [asyncio.ensure_future(client.execute("PING")) for _ in range(3)]
        await asyncio.sleep(0.2)
        client.close()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, exceptions.ConnectionError) for r in results), results
        with pytest.raises(exceptions.ConnectionError, match="closed"):
            await client.execute("PING")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


async def test_a_refused_script_load_closes_the_connection(redis_server: RedisServer) -> None:
    redis_server.cli("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-script|load")
    client = PipelinedRedis(f"redis://noscript:pw@127.0.0.1:{redis_server.port}/0", 2.0,
                            client_name="sb-refused", scripts=[ECHO])
    try:
        for _ in range(5):
            with pytest.raises(exceptions.ResponseError, match="NOPERM"):
                await client.execute("PING")
        assert "name=sb-refused" not in redis_server.cli("CLIENT", "LIST")
    finally:
        client.close()


async def test_redis_down_is_a_connection_error_and_a_restart_is_used_again(
    redis_server: RedisServer,
) -> None:
    client = PipelinedRedis(redis_server.url, 2.0, scripts=[ECHO])
    try:
        assert (await client.run_script(ECHO, ["r"], ["x"]))[2] == 1
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(exceptions.ConnectionError):
            await client.run_script(ECHO, ["r"], ["x"])
        with pytest.raises(exceptions.ConnectionError):
            await client.execute("PING")
        assert time.monotonic() - started < 2.0  # refused at once, not after the timeout
        redis_server.start()  # empty: no keys, no scripts
        assert (await client.run_script(ECHO, ["r"], ["x"]))[2] == 1
    finally:
        client.close()


async def test_a_stalled_redis_times_out_every_pending_command(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 0.5)
    try:
        assert await client.execute("PING") == b"PONG"
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(client.execute("INCR", "t") for _ in range(20)),
                                           return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert all(isinstance(r, exceptions.TimeoutError) for r in results), results
        assert 0.4 < waited < 2.0
        # The late replies were dropped with their connection; a new one answers correctly.
        assert await client.execute("ECHO", "after") == b"after"
    finally:
        client.close()


async def test_password_and_database_from_the_url(redis_server: RedisServer) -> None:
    redis_server.cli("CONFIG", "SET", "requirepass", "s3cret")
    base = f"127.0.0.1:{redis_server.port}"
    client = PipelinedRedis(f"redis://:s3cret@{base}/3", 2.0, client_name="sb-test")
    wrong = PipelinedRedis(f"redis://:nope@{base}/0", 2.0)
    try:
        await client.execute("SET", "in-db-3", "yes")
        assert await client.execute("CLIENT", "GETNAME") == b"sb-test"
        assert redis_server.cli("-a", "s3cret", "--no-auth-warning", "-n", "3",
                                "GET", "in-db-3").strip() == "yes"
        with pytest.raises(exceptions.AuthenticationError):
            await wrong.execute("PING")
    finally:
        client.close()
        wrong.close()



async def test_a_fenced_connection_after_a_redis_restart_kills_no_one_elses(
        redis_server: RedisServer) -> None:
    fenced = PipelinedRedis(redis_server.url, 2.0, client_name="fenced", fenced=True)
    others: list[PipelinedRedis] = []
    try:
        await fenced.execute("PING")
        ours = int(await fenced.execute("CLIENT", "ID"))
        redis_server.stop()
        redis_server.start()  # client ids count from 1 again
        with pytest.raises(exceptions.ConnectionError):
            await fenced.execute("PING")  # finds its connection gone
        # someone else's connection now has the id ours had
        for _ in range(ours + 5):
            other = PipelinedRedis(redis_server.url, 2.0, client_name="other")
            others.append(other)
            if int(await other.execute("CLIENT", "ID")) >= ours:
                break
        assert int(await others[-1].execute("CLIENT", "ID")) == ours
        assert await fenced.execute("PING") == b"PONG"  # a new connection, fenced
        # and that one is still open: the same connection, not a new one
        assert int(await others[-1].execute("CLIENT", "ID")) == ours
    finally:
        fenced.close()
        for other in others:
            other.close()
