"""No secrets in logs: tokens, the JWT secret and API keys never reach a process's output.

A gateway and a router go through an ordinary session and its usual failures (tokens in the
query string and in the header, WebSocket and SSE, publishes with the API key, a forged token,
expired and malformed ones, a wrong API key, a malformed handshake carrying a token, a
disconnect, a drain), then both are stopped and their whole output is searched for every
secret that was used, in full and for the parts that matter (a JWT's signature).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import jwt
import pytest

from switchboard.auth import mint
from tests.clients import SseClient, WsClient, until
from tests.support import API_KEY, JWT_SECRET, RedisServer, start_gateway, start_router

pytestmark = pytest.mark.integration

# Keys that look like real ones, so a leak is unmistakable in the output.
EXTRA_API_KEY = "sb-live-key-7f3c9a1e5b2d4086"
WRONG_API_KEYS = ("sb-live-key-7f3c9a1e5b2d4087", "totally-wrong-key-0000000000")
FORGED_SECRET = "forged-secret-not-the-real-one-0123456789"


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or the deadline passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
        return got


async def test_no_token_secret_or_api_key_in_gateway_or_router_logs(
    redis_server: RedisServer, logdir: Path
) -> None:
    gw = start_gateway(redis_server, logdir, SWITCHBOARD_PING_INTERVAL="0.5",
                       SWITCHBOARD_PING_TIMEOUT="0.5", SWITCHBOARD_DRAIN_WINDOW="0.5")
    router = start_router(redis_server, logdir,
                          SWITCHBOARD_API_KEYS=f"{API_KEY},{EXTRA_API_KEY}")
    procs = [gw, router]
    tokens: dict[str, str] = {}
    clients: list[WsClient | SseClient] = []
    try:
        tokens["query"] = mint(JWT_SECRET, "hygiene-q", channels=["room"], publish=["room"])
        tokens["header"] = mint(JWT_SECRET, "hygiene-h")
        tokens["sse"] = mint(JWT_SECRET, "hygiene-s")
        tokens["forged"] = mint(FORGED_SECRET, "mallory")
        tokens["expired"] = jwt.encode({"sub": "mallory", "exp": int(time.time()) - 60},
                                       JWT_SECRET, algorithm="HS256")
        tokens["no-sub"] = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET,
                                      algorithm="HS256")
        tokens["bad-cursor"] = mint(JWT_SECRET, "hygiene-c")
        tokens["malformed-handshake"] = mint(JWT_SECRET, "hygiene-m")
        base = f"ws://127.0.0.1:{gw.port}/ws"

        # -- accepted connections: query string, header, SSE -------------------------------
        q = await WsClient(f"{base}?token={tokens['query']}").start()
        h = await WsClient(base, additional_headers={
            "Authorization": f"Bearer {tokens['header']}"}).start()
        sse = await SseClient("127.0.0.1", gw.port, f"/sse?token={tokens['sse']}").start()
        clients += [q, h, sse]
        assert q.welcome and h.welcome and sse.welcome
        await q.send({"type": "subscribe", "channel": "room"})
        await until(lambda: any(m["type"] == "subscribed" for m in q.received), 5, "subscribed")
        await q.send({"type": "publish", "channel": "room", "data": "from a client", "id": 1})
        await q.send({"type": "subscribe", "channel": "forbidden-room"})  # beyond its claims

        # -- refused connections ------------------------------------------------------------
        for name in ("forged", "expired", "no-sub"):
            for headers, url in ((None, f"{base}?token={tokens[name]}"),
                                 ({"Authorization": f"Bearer {tokens[name]}"}, base)):
                resp = httpx.get(url.replace("ws://", "http://"), headers=headers, timeout=5)
                assert resp.status_code == 401, (name, resp.status_code)
            refused_sse = await SseClient("127.0.0.1", gw.port,
                                          f"/sse?token={tokens[name]}").start()
            assert refused_sse.status == 401
            await refused_sse.close()
        resp = httpx.get(f"http://127.0.0.1:{gw.port}/ws",
                         params={"token": tokens["bad-cursor"], "cursor": "user:!!:x"},
                         timeout=5)
        assert resp.status_code == 400
        # A handshake websockets cannot parse, with a valid token in its request line.
        got = raw_exchange(gw.port, (
            f"GET /ws?token={tokens['malformed-handshake']} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: not-base64!\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {tokens['malformed-handshake']}\r\n"
            f"Bad Header Line\r\n\r\n").encode())
        assert got == b"" or got.startswith(b"HTTP/1.1 4"), got[:200]

        # -- router: publishes with each key, a wrong key, bad bodies -----------------------
        with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as http:
            for key in (API_KEY, EXTRA_API_KEY):
                auth = {"Authorization": f"Bearer {key}"}
                assert http.post("/v1/publish", json={"user": "hygiene-q", "data": key[:3]},
                                 headers=auth).status_code == 200
                assert http.post("/v1/publish", json={"broadcast": True, "data": "all"},
                                 headers=auth).status_code == 200
                assert http.post("/v1/publish", content=b"{not json",
                                 headers={**auth, "Content-Type": "application/json"}
                                 ).status_code == 400
            for wrong in WRONG_API_KEYS:
                resp = http.post("/v1/publish", json={"broadcast": True, "data": "x"},
                                 headers={"Authorization": f"Bearer {wrong}"})
                assert resp.status_code == 401
                assert wrong not in resp.text
            # a key in a malformed request the HTTP parser refuses
            got = raw_exchange(router.port, (
                f"POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Length: nope\r\n\r\n").encode())
            assert got.startswith(b"HTTP/1.1 400"), got[:200]
            try:
                await until(lambda: len(q.messages()) >= 4 and len(sse.messages()) >= 2, 10,
                            "deliveries")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}: ws got {q.received}, sse got {sse.received}, "
                                     f"sse closed {sse.closed}") from None
            # close the header client through the API (4201)
            assert http.post("/v1/users/hygiene-h/disconnect",
                             headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
            await until(lambda: h.closed, 5, "disconnected by the API")
            assert h.close_code == 4201
    finally:
        for cl in clients:
            await cl.close()
        await asyncio.to_thread(gw.stop)  # a drain, with its log lines
        await asyncio.to_thread(router.stop)

    secrets: dict[str, str] = {"JWT secret": JWT_SECRET, "forged JWT secret": FORGED_SECRET,
                               "API key": API_KEY, "second API key": EXTRA_API_KEY}
    secrets.update({f"wrong API key {i}": k for i, k in enumerate(WRONG_API_KEYS)})
    for name, tok in tokens.items():
        secrets[f"{name} token"] = tok
        secrets[f"{name} token signature"] = tok.rsplit(".", 1)[1]
        secrets[f"{name} token payload"] = tok.split(".")[1]
    leaks: list[str] = []
    for proc in procs:
        text = proc.output()
        assert text, f"{proc.name} wrote no log at all"
        for name, secret in secrets.items():
            if secret and secret in text:
                line = next(line for line in text.splitlines() if secret in line)
                leaks.append(f"{proc.name}: {name} in {line[:300]!r}")
    assert not leaks, "\n".join(leaks)
    print(f"\nlog hygiene: {len(secrets)} secrets searched in "
          + ", ".join(f"{p.name} log ({len(p.output().splitlines())} lines)" for p in procs))
