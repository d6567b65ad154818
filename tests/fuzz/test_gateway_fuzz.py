"""Property-based fuzzing of the gateway's frame, JSON and msgpack handling (hypothesis).

Two levels, one generator (:mod:`tests.fuzz.wsmodel`): random sequences of masked client
frames (data messages in JSON or msgpack, whole or fragmented, garbage, invalid UTF-8, sizes
around the limit, deep nesting, control frames, client closes, protocol violations), cut into
random TCP chunks, and an oracle that predicts the replies and the close code.

- In process: the real :class:`gateway.server.Connection` and :class:`gateway.app.Gateway`
  (hub, sessions, commands, wire encoding) with a fake TCP transport and fakes for the Redis
  calls only. Many cases, no I/O.
- A real gateway process with a real redis-server, over raw loopback sockets: fewer cases,
  then a bystander client must still receive a broadcast, and the log must hold no
  traceback.

Properties: nothing raises; every undecodable message gets exactly one ``error`` with code
``bad_request``, every unknown type one ``unknown_type``, every ping one ``pong``; every
protocol violation closes with its documented code (1002, 1007, 1009) or echoes the client's
own close; every server frame is well-formed and every message strict JSON or msgpack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as sync_connect

from gateway import memory
from gateway.app import Gateway
from gateway.server import Connection
from switchboard.auth import mint
from switchboard.config import GatewaySettings
from tests.fake_tcp import FakeTcp
from tests.fuzz import wsmodel
from tests.fuzz.wsmodel import FINAL_PING, Item
from tests.support import API_KEY, JWT_SECRET, Proc, RedisServer, start_gateway, start_router

MAX_SIZE = 4096
IN_PROCESS_EXAMPLES = 1500
REAL_EXAMPLES = 400


@dataclass
class Tally:
    """What the cases exercised, printed at the end (the hypothesis statistics in short)."""

    cases: int = 0
    items: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)

    def add(self, items: list[Item], exp: wsmodel.Expectation, obs: wsmodel.Observed) -> None:
        self.cases += 1
        for it in items:
            name = type(it).__name__
            if isinstance(it, wsmodel.Violation):
                name += f":{it.kind}"
            elif isinstance(it, wsmodel.Msg):
                name += ":msgpack" if it.binary else ":json"
                if it.cuts:
                    name += "+fragmented"
            self.items[name] += 1
        if exp.racy:
            self.outcomes["1007 then a failure (ending not predicted)"] += 1
        elif exp.close is not None:
            self.outcomes[f"close {exp.close}"] += 1
        elif exp.echo is not None:
            self.outcomes["client close echoed"] += 1
        else:
            self.outcomes["still open"] += 1
        self.replies.update(obs.counts)

    def summary(self, title: str, seconds: float) -> str:
        return (f"\n{title}: {self.cases} cases in {seconds:.1f}s\n"
                f"  items:    {dict(self.items.most_common())}\n"
                f"  outcomes: {dict(self.outcomes.most_common())}\n"
                f"  replies:  {dict(self.replies.most_common())}")


def handshake(port: int, msgpack_wire: bool) -> bytes:
    token = mint(JWT_SECRET, "fuzzer", channels=["*"], publish=["*"])
    key = base64.b64encode(os.urandom(16)).decode()
    sub = "switchboard.v1.msgpack" if msgpack_wire else "switchboard.v1.json"
    return (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {sub}\r\n\r\n").encode()


case_strategy = st.tuples(
    st.booleans(),  # msgpack subprotocol
    st.lists(wsmodel.item(MAX_SIZE), min_size=1, max_size=8),
    st.lists(st.integers(0, 20_000), max_size=6),  # TCP chunk boundaries
)


# -- in process --------------------------------------------------------------------------------


class FakeTransport(FakeTcp):
    """The asyncio transport a Connection writes to; records the bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Connection) -> None:
        super().__init__(protocol, loop)
        self.out = bytearray()

    def received(self, data: bytes) -> None:
        self.out += data


@pytest.fixture
def in_process() -> Iterator[tuple[Gateway, asyncio.AbstractEventLoop, list[dict[str, Any]]]]:
    loop = asyncio.new_event_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    gw_settings = GatewaySettings(
        jwt_secret=JWT_SECRET, max_message_size=MAX_SIZE, inbound_rate=1e9,
        inbound_burst=10**9, ping_interval=None, ping_timeout=None, handshake_timeout=60,
        close_timeout=60, redis_url="redis://127.0.0.1:9/0", host="127.0.0.1",
    )
    # The real gateway on the in-memory backplane (gateway.memory): no Redis, nothing patched.
    gw = Gateway(gw_settings, loop, backplane=memory.factory(memory.MemoryCluster()))
    gw.backplane.start(gw.delivery)
    try:
        yield gw, loop, loop_errors
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    async def turns() -> None:
        for _ in range(12):
            await asyncio.sleep(0)

    loop.run_until_complete(turns())


def one_read(gw: Gateway, loop: asyncio.AbstractEventLoop,
             data: bytes) -> list[wsmodel.ServerFrame]:
    """A fresh in-process connection past its welcome gets ``data`` in one read: the frames
    the gateway wrote back, after the connection was left to close."""
    conn = Connection(gw.services, gw)
    tcp = FakeTransport(loop, conn)
    conn.connection_made(tcp)  # type: ignore[arg-type]
    conn.data_received(handshake(8080, False))
    settle(loop)
    start = len(tcp.out)
    conn.data_received(data)
    settle(loop)
    frames, _ = wsmodel.parse_server_frames(bytes(tcp.out[start:]))
    if not tcp.closing:
        tcp.close()
        settle(loop)
    return frames


def test_gateway_connection_in_process(
    in_process: tuple[Gateway, asyncio.AbstractEventLoop, list[dict[str, Any]]],
) -> None:
    gw, loop, loop_errors = in_process
    tally = Tally()
    started = time.monotonic()

    @given(case=case_strategy)
    @settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def run(case: tuple[bool, list[Item], list[int]]) -> None:
        msgpack_wire, items, cuts = case
        note(f"msgpack={msgpack_wire} items={items!r} cuts={cuts}")
        conn = Connection(gw.services, gw)
        tcp = FakeTransport(loop, conn)
        conn.connection_made(tcp)  # type: ignore[arg-type]
        try:
            conn.data_received(handshake(8080, msgpack_wire))
            settle(loop)
            head, sep, _ = bytes(tcp.out).partition(b"\r\n\r\n")
            assert sep and head.startswith(b"HTTP/1.1 101"), head[:200]
            exp = wsmodel.expect(items, MAX_SIZE)
            data = wsmodel.stream_bytes(items) + (FINAL_PING if exp.open_at_end else b"")
            for chunk in wsmodel.chunked(data, cuts):
                if tcp.closing:
                    break
                conn.data_received(chunk)  # an exception here is the bug we look for
                settle(loop)
            settle(loop)
            frames, rest = wsmodel.parse_server_frames(bytes(tcp.out).partition(b"\r\n\r\n")[2])
            closing = [f for f in frames if f.opcode == wsmodel.CLOSE]
            if closing and exp.echo is None and not tcp.closing:
                # The gateway closed and waits for our close frame, as a client would send.
                conn.data_received(wsmodel.client_frame(wsmodel.CLOSE, closing[0].payload))
                settle(loop)
            obs = wsmodel.observe(frames, msgpack_wire, skip_welcome=True)
            problems = wsmodel.compare(exp, obs, final_ping=exp.open_at_end)
            if rest:
                problems.append(f"incomplete server frame {rest[:40]!r}")
            if exp.open_at_end == tcp.closing and not exp.racy:
                problems.append(f"connection {'closed' if tcp.closing else 'still open'}")
            if loop_errors:
                problems.append(f"exceptions in the loop: {loop_errors}")
            assert not problems, "\n".join(problems)
            tally.add(items, exp, obs)
        finally:
            if not tcp.closing:
                tcp.close()
            settle(loop)
            loop_errors.clear()

    run()
    assert len(gw.hub) == 0, "connections left in the hub"
    print(tally.summary("gateway fuzz, in process", time.monotonic() - started))
    assert tally.cases >= IN_PROCESS_EXAMPLES * 0.9


# -- a real gateway over loopback --------------------------------------------------------------


class RawClient:
    """A raw TCP client whose reader thread drains the socket as soon as bytes arrive.

    Reading concurrently matters: when the gateway fails a connection it closes the socket,
    and bytes we were still sending make its kernel answer with a reset, which discards
    whatever we had received but not read yet (its replies and its close frame).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()
        self.eof = threading.Event()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                with self.changed:
                    self.buf += chunk
                    self.changed.notify_all()
        except OSError:
            pass  # reset, or closed by us
        finally:
            self.eof.set()
            with self.changed:
                self.changed.notify_all()

    def send(self, data: bytes) -> bool:
        """False if the peer is gone (it may close mid-stream after a protocol error)."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def wait(self, done: Any, timeout: float) -> bool:
        """Until ``done(bytes)`` or EOF; True if ``done`` held."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(bytes(self.buf)):
                if self.eof.is_set():
                    return bool(done(bytes(self.buf)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {timeout}s: {bytes(self.buf[-200:])!r}")
                self.changed.wait(left)
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def server_frames(buf: bytes) -> tuple[list[wsmodel.ServerFrame], bytes]:
    return wsmodel.parse_server_frames(buf.partition(b"\r\n\r\n")[2])


@pytest.fixture
def real_gateway(redis_server: RedisServer, logdir: Path) -> Iterator[tuple[Proc, Proc]]:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_MAX_MESSAGE_SIZE=str(MAX_SIZE),
                       SWITCHBOARD_INBOUND_RATE="1000000", SWITCHBOARD_INBOUND_BURST="1000000",
                       SWITCHBOARD_PING_INTERVAL="", SWITCHBOARD_HANDSHAKE_TIMEOUT="10")
    router = start_router(redis_server, logdir)
    try:
        yield gw, router
    finally:
        gw.stop()
        router.stop()


def until_end(items: list[Item], exp: wsmodel.Expectation) -> list[Item]:
    """The items the gateway reads: nothing after the one that ends the connection."""
    if exp.open_at_end:
        return items
    for n in range(1, len(items) + 1):
        if not wsmodel.expect(items[:n], MAX_SIZE).open_at_end:
            return items[:n]
    return items


@pytest.mark.integration
def test_real_gateway_over_raw_sockets(real_gateway: tuple[Proc, Proc]) -> None:
    gw, router = real_gateway
    tally = Tally()
    started = time.monotonic()

    @given(case=case_strategy)
    @settings(max_examples=REAL_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def run(case: tuple[bool, list[Item], list[int]]) -> None:
        msgpack_wire, items, cuts = case
        note(f"msgpack={msgpack_wire} items={items!r} cuts={cuts}")
        exp = wsmodel.expect(items, MAX_SIZE)
        client = RawClient(gw.port)
        try:
            client.send(handshake(gw.port, msgpack_wire))
            assert client.wait(lambda b: bool(server_frames(b)[0]), 5), "no welcome"
            assert client.buf.startswith(b"HTTP/1.1 101"), bytes(client.buf[:200])
            sent = until_end(items, exp)
            exp = wsmodel.expect(sent, MAX_SIZE)  # what is sent after the end is not read
            data = wsmodel.stream_bytes(sent) + (FINAL_PING if exp.open_at_end else b"")
            for chunk in wsmodel.chunked(data, cuts):
                if not client.send(chunk):
                    break

            def answered(b: bytes) -> bool:
                obs = wsmodel.observe(server_frames(b)[0], msgpack_wire, skip_welcome=True)
                if exp.open_at_end:  # the final ping's pong is the last synchronous reply
                    return obs.counts["ping"] >= exp.counts["ping"] + 1
                return obs.close is not None

            client.wait(answered, 5)
            if not exp.open_at_end:
                closing = wsmodel.observe(server_frames(bytes(client.buf))[0], msgpack_wire,
                                          skip_welcome=True).close
                if closing is not None and exp.echo is None:
                    # answer the gateway's close, as a client would; then it hangs up
                    client.send(wsmodel.client_frame(wsmodel.CLOSE, closing))
                client.wait(lambda b: False, 5)
            frames, rest = server_frames(bytes(client.buf))
            obs = wsmodel.observe(frames, msgpack_wire, skip_welcome=True)
            problems = wsmodel.compare(exp, obs, final_ping=exp.open_at_end)
            if rest:
                problems.append(f"incomplete server frame {rest[:40]!r}")
            if exp.open_at_end == client.eof.is_set():
                problems.append(f"connection {'closed' if client.eof.is_set() else 'open'}")
            assert not problems, "\n".join(problems)
            tally.add(items, exp, obs)
        finally:
            client.close()

    with sync_connect(f"ws://127.0.0.1:{gw.port}/ws?token={mint(JWT_SECRET, 'calm')}",
                      open_timeout=10) as bystander:
        run()
        seconds = time.monotonic() - started
        # The gateway still serves: the bystander gets a broadcast published now.
        resp = httpx.post(f"http://127.0.0.1:{router.port}/v1/publish",
                          headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"broadcast": True, "data": "still here"}, timeout=10)
        assert resp.status_code == 200
        deadline = time.monotonic() + 10
        got = ""
        while "still here" not in got and time.monotonic() < deadline:
            raw = bystander.recv(timeout=max(0.1, deadline - time.monotonic()))
            got = raw if isinstance(raw, str) else raw.decode(errors="replace")
        assert "still here" in got
    assert gw.alive()
    log = gw.output()
    assert "Traceback" not in log, log[-5000:]
    print(tally.summary("gateway fuzz, real process over loopback", seconds))
    assert tally.cases >= REAL_EXAMPLES * 0.9


# -- what the fuzzing found (fixed in the gateway; kept as regression tests) --------------------


def test_text_frame_with_invalid_utf8_fails_the_connection_1007(
    in_process: tuple[Gateway, asyncio.AbstractEventLoop, list[dict[str, Any]]],
) -> None:
    """RFC 6455 8.1. The gateway used to hand such text to its JSON decoder (bad_request)."""
    gw, loop, _ = in_process
    frames = one_read(gw, loop, wsmodel.client_frame(wsmodel.TEXT,
                                                     b'{"type":"ping","x":"\xff"}'))
    assert frames[-1].opcode == wsmodel.CLOSE, [f.payload[:60] for f in frames]
    assert wsmodel.close_code(frames[-1].payload) == 1007


@pytest.mark.integration
def test_deeply_nested_input_is_answered_without_a_traceback(
    real_gateway: tuple[Proc, Proc],
) -> None:
    """Error replies used to echo the client's ``channel``: a value nested ~980 deep decoded
    but could not be encoded back (RecursionError out of data_received, a traceback in the
    log, the connection dropped without a close frame)."""
    gw, _ = real_gateway
    client = RawClient(gw.port)
    try:
        client.send(handshake(gw.port, False))
        assert client.wait(lambda b: bool(server_frames(b)[0]), 5)
        depths = range(900, 1001)
        for depth in depths:
            client.send(wsmodel.client_frame(wsmodel.TEXT, wsmodel.deep(depth)))
        client.send(FINAL_PING)

        def all_answered(b: bytes) -> bool:
            obs = wsmodel.observe(server_frames(b)[0], False, skip_welcome=True)
            return obs.counts["ping"] >= 1

        answered = client.wait(all_answered, 10)
        obs = wsmodel.observe(server_frames(bytes(client.buf))[0], False, skip_welcome=True)
        assert answered and not client.eof.is_set(), f"dropped after {dict(obs.counts)}"
        assert obs.counts["bad"] + obs.counts["command error"] == len(depths)
    finally:
        client.close()
    assert "Traceback" not in gw.output()


def test_a_failure_in_the_same_read_as_a_gateway_close_still_sends_everything(
    in_process: tuple[Gateway, asyncio.AbstractEventLoop, list[dict[str, Any]]],
) -> None:
    gw, loop, _ = in_process
    # one read: a ping, a text frame that is not UTF-8 (gateway: 1007), a reserved opcode
    # (websockets: 1002)
    frames = one_read(gw, loop, wsmodel.stream_bytes([
        wsmodel.Msg(False, b'{"type":"ping"}'), wsmodel.Msg(False, b"\xff"),
        wsmodel.Violation("reserved_opcode")]))
    kinds = [(f.opcode, f.payload[:30]) for f in frames]
    assert frames and frames[0].payload == b'{"type":"pong"}', kinds
    assert frames[-1].opcode == wsmodel.CLOSE, kinds
    assert wsmodel.close_code(frames[-1].payload) in (1002, 1007), kinds


@pytest.mark.parametrize("first", [MAX_SIZE - 1, MAX_SIZE])
def test_a_ping_between_fragments_counts_against_the_message_size(
    in_process: tuple[Gateway, asyncio.AbstractEventLoop, list[dict[str, Any]]], first: int,
) -> None:
    """Found by the raw-socket run: websockets checks a control frame between fragments
    against what the message has left, so a first fragment of exactly max_size leaves no room
    for a 1-byte ping (1009, no pong), one byte less does. The model predicts both."""
    gw, loop, _ = in_process
    payload = b'{"type":"ping","pad":"' + b"p" * (first + 2 - 24) + b'"}'
    items: list[Item] = [wsmodel.Msg(False, payload, cuts=(first,), ping_between=b"\x00")]
    frames = one_read(gw, loop, wsmodel.stream_bytes(items))
    obs = wsmodel.observe(frames, False, skip_welcome=False)
    exp = wsmodel.expect(items, MAX_SIZE)
    assert obs.control_pongs == exp.control_pongs == ([] if first == MAX_SIZE else [b"\x00"])
    assert wsmodel.close_code(obs.close or b"") == 1009
