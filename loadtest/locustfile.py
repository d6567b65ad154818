"""Locust load test for a running Switchboard cluster: WebSocket, SSE and publisher users.

Run it against any cluster (``make loadtest`` starts one for you)::

    SWITCHBOARD_GATEWAY_URL=ws://127.0.0.1:8080 SWITCHBOARD_ROUTER_URL=http://127.0.0.1:8000 \\
    SWITCHBOARD_API_KEY=... SWITCHBOARD_JWT_SECRET=... \\
    locust -f loadtest/locustfile.py --headless -u 300 -r 50 -t 60s --processes 2

User mix (weights): WebSocket subscribers 6, SSE subscribers 2, publishers 1. Subscribers
connect as users ``lt-0`` ... ``lt-{LOADTEST_USER_POOL-1}``; publishers send unicast messages
to random users of that pool, broadcasts and batches, each with a publish timestamp in
``data.ts``. Locust statistics:

- ``WS``/``SSE`` ``delivery user|broadcast``: receive time - publish time (ms), per message;
- ``WS``/``SSE`` ``connect``: time to the welcome; ``WS ping``: ping -> pong round trip;
- failures: ``connect`` errors, and ``closed`` for every connection the server closed or lost
  (the subscriber then reconnects with full-jitter backoff and resumes with session + cursor).

Everything here is gevent-friendly: locust monkey-patches sockets before this module imports
``websocket`` (websocket-client) and ``requests``, so their blocking reads yield to gevent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import requests
import websocket
from locust import FastHttpUser, User, between, constant_throughput, task

# locust puts only this file's folder on sys.path; the shared code lives one level up
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench.client import full_jitter
from loadtest.bench.resume import DUPLICATE, ResumeState
from loadtest.sse import SseParser
from switchboard.auth import mint

GATEWAY_URL = os.environ.get("SWITCHBOARD_GATEWAY_URL", "ws://127.0.0.1:8080").rstrip("/")
ROUTER_URL = os.environ.get("SWITCHBOARD_ROUTER_URL", "http://127.0.0.1:8000").rstrip("/")
API_KEY = os.environ.get("SWITCHBOARD_API_KEY", "")
JWT_SECRET = os.environ.get("SWITCHBOARD_JWT_SECRET", "")
USER_POOL = int(os.environ.get("LOADTEST_USER_POOL", "300"))
PUBLISH_RATE = float(os.environ.get("LOADTEST_PUBLISH_RATE", "5"))  # per publisher user, /s
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "20"))

_ids = itertools.count()


def _pool_user() -> str:
    # distinct per subscriber while the pool lasts (per locust process), then shared
    return f"lt-{next(_ids) % USER_POOL}"


def _http_base() -> str:
    parts = urlsplit(GATEWAY_URL)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


class Subscriber(User):
    """Shared by WS and SSE users: identity, resume state, reporting, the reconnect loop."""

    abstract = True
    transport = ""
    _connected = False  # a welcome arrived on the current connection

    def on_start(self) -> None:
        if not JWT_SECRET:
            raise RuntimeError("set SWITCHBOARD_JWT_SECRET to mint subscriber tokens")
        self.user_id = _pool_user()
        self.token = mint(JWT_SECRET, self.user_id, ttl=6 * 3600)
        self.state = ResumeState()
        self.running = True
        self.attempt = 0
        self.reader = gevent.spawn(self._run)

    def on_stop(self) -> None:
        self.running = False
        # stop the reader first: closing a socket another greenlet is reading from fails
        self.reader.kill(block=True, timeout=2)
        self._close()

    def _report(self, name: str, ms: float, length: int = 0,
                exc: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type=self.transport, name=name, response_time=ms, response_length=length,
            exception=exc, context={},
        )

    def _run(self) -> None:
        while self.running:
            started = time.time()
            try:
                self._connect_and_read(started)
            except Exception as exc:  # every way a connection can end is a reported failure
                if not self.running:
                    return
                name = "connect" if not self._connected else "closed"
                self._report(name, (time.time() - started) * 1000, exc=exc)
            self._connected = False
            self._close()
            # full jitter, as real clients do, so a gateway restart is not a thundering herd
            self.attempt += 1
            gevent.sleep(full_jitter(self.attempt))

    def _welcome(self, msg: dict[str, Any], started: float) -> None:
        if msg.get("type") != "welcome":
            raise ConnectionError(f"expected welcome, got {msg.get('type')!r}")
        self.state.on_welcome(msg)
        self._connected = True
        self.attempt = 0
        self._report("connect", (time.time() - started) * 1000)

    def _message(self, msg: dict[str, Any], length: int) -> None:
        if msg.get("type") != "message":
            return
        stream = str(msg["stream"])
        status = self.state.on_message(stream, str(msg["epoch"]), int(msg["offset"]))
        if status == DUPLICATE:
            return
        data = msg.get("data")
        if isinstance(data, dict) and isinstance(data.get("ts"), int | float):
            self._report(f"delivery {stream}", (time.time() - data["ts"]) * 1000, length)

    def _connect_and_read(self, started: float) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class WebSocketSubscriber(Subscriber):
    weight = 6
    transport = "WS"
    wait_time = between(5, 15)
    ws: websocket.WebSocket | None = None
    ping_sent: float | None = None

    def _connect_and_read(self, started: float) -> None:
        query = f"token={self.token}"
        if self.state.session is not None:
            query += "&" + self.state.resume_query()
        self.ws = websocket.create_connection(f"{GATEWAY_URL}/ws?{query}", timeout=30,
                                              subprotocols=["switchboard.v1.json"])
        self.ws.settimeout(None)  # idle is normal: the gateway pings, we answer
        self._welcome(json.loads(self.ws.recv()), started)
        while self.running:
            opcode, frame = self.ws.recv_data_frame()  # answers pings by itself
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
                raise ConnectionError(f"closed by server ({code})")
            raw = frame.data
            msg = json.loads(raw)
            if msg.get("type") == "pong" and self.ping_sent is not None:
                self._report("ping", (time.time() - self.ping_sent) * 1000)
                self.ping_sent = None
            else:
                self._message(msg, len(raw))

    def _close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):  # already gone; closing is best effort
                self.ws.close(timeout=1)
            self.ws = None

    @task
    def ping(self) -> None:
        if self.ws is not None and self._connected and self.ping_sent is None:
            self.ping_sent = time.time()
            try:
                self.ws.send('{"type":"ping"}')
            except Exception:  # the reader notices the dead socket and reports it
                self.ping_sent = None


class SseSubscriber(Subscriber):
    weight = 2
    transport = "SSE"
    wait_time = between(30, 60)
    response: requests.Response | None = None

    def _connect_and_read(self, started: float) -> None:
        headers = {"Accept": "text/event-stream"}
        cursor = self.state.cursor()
        if cursor:
            headers["Last-Event-ID"] = cursor  # what EventSource sends by itself
        params = {"token": self.token}
        if self.state.session is not None:
            params["session"] = self.state.session
        self.response = requests.get(f"{_http_base()}/sse", params=params, headers=headers,
                                     stream=True, timeout=(10, 60))
        if self.response.status_code != 200:
            raise ConnectionError(f"HTTP {self.response.status_code}")
        parser = SseParser()
        raw = self.response.raw
        # read1: whatever has arrived, at once; iter_lines would wait for 512-byte chunks
        while self.running and (chunk := raw.read1(65536)):
            for event in parser.feed(chunk):
                msg = json.loads(event.data)
                if event.type == "welcome":
                    self._welcome(msg, started)
                elif event.type == "error" and msg.get("close"):
                    raise ConnectionError(f"closed by server ({msg.get('code')})")
                else:
                    self._message(msg, len(event.data))
        if not self.running:
            return
        raise ConnectionError("event stream ended")

    def _close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    @task
    def idle(self) -> None:
        """SSE is one-way: the user's work happens in its reader greenlet."""


class Publisher(FastHttpUser):
    weight = 1
    host = ROUTER_URL
    wait_time = constant_throughput(PUBLISH_RATE)

    def on_start(self) -> None:
        if not API_KEY:
            raise RuntimeError("set SWITCHBOARD_API_KEY to publish through the router")
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.seq = 0

    def _data(self) -> dict[str, Any]:
        self.seq += 1
        return {"ts": time.time(), "seq": self.seq, "pad": "x" * 64}

    @task(8)
    def publish_user(self) -> None:
        user = f"lt-{random.randrange(USER_POOL)}"
        self.client.post("/v1/publish", json={"user": user, "data": self._data()},
                         headers=self.auth, name="/v1/publish user")

    @task(1)
    def publish_broadcast(self) -> None:
        self.client.post("/v1/publish", json={"broadcast": True, "data": self._data()},
                         headers=self.auth, name="/v1/publish broadcast")

    @task(1)
    def publish_batch(self) -> None:
        messages = [{"user": f"lt-{random.randrange(USER_POOL)}", "data": self._data()}
                    for _ in range(BATCH_SIZE)]
        self.client.post("/v1/publish/batch", json={"messages": messages}, headers=self.auth,
                         name=f"/v1/publish/batch x{BATCH_SIZE}")
