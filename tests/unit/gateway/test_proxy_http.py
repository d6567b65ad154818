"""HttpProxy against httpx's mock transport: timeouts, bounded concurrency, retries, the
breaker, malformed answers and signatures, without a network."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateway import proxyrules
from gateway.errors import ProxyUnavailable
from gateway.metrics import GatewayMetrics
from gateway.proxy import HttpProxy
from gateway.proxyrules import Allowed, Denied
from switchboard.config import GatewaySettings

SECRET = "unit-proxy-secret"
URL = "http://backend.test/proxy"
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(handler: Handler, clock: Callable[[], float] = time.monotonic,
         **overrides: Any) -> tuple[HttpProxy, GatewayMetrics]:
    base: dict[str, Any] = dict(
        proxy_connect_url=URL, proxy_subscribe_url=URL, proxy_publish_url=URL,
        proxy_refresh_url=URL, proxy_secret=SECRET, proxy_timeout=0.5,
        proxy_max_concurrency=4, proxy_breaker_failures=3, proxy_breaker_cooldown=5.0)
    base.update(overrides)
    metrics = GatewayMetrics("gw-test")
    proxy = HttpProxy(GatewaySettings(**base), "gw-test", metrics, clock=clock,
                      transport=httpx.MockTransport(handler))
    return proxy, metrics


def ok(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json=fields)


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_an_allowed_call_is_signed_and_counted() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(allow=True)

    proxy, metrics = make(handler)
    verdict = await proxy.subscribe({"event": "subscribe", "channel": "room"})
    assert verdict == Allowed()
    request = seen[0]
    assert request.headers["X-Switchboard-Event"] == "subscribe"
    assert request.headers["Content-Type"] == "application/json"
    assert proxyrules.verify(SECRET.encode(), request.headers["X-Switchboard-Signature"],
                             request.content, now=time.time())
    assert json.loads(request.content)["channel"] == "room"
    assert SECRET not in request.headers["X-Switchboard-Signature"]
    assert sample(metrics, "switchboard_gateway_proxy_calls_total", event="subscribe",
                  result="allowed") == 1
    assert sample(metrics, "switchboard_gateway_proxy_seconds_count", event="subscribe") == 1
    await proxy.aclose()


async def test_a_denial_and_a_rewrite_are_verdicts() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["event"] == "publish":
            return ok(allow=True, data={"clean": True})
        return ok(allow=False, reason="members only")

    proxy, metrics = make(handler)
    assert await proxy.subscribe({"event": "subscribe"}) == Denied("members only")
    assert await proxy.publish({"event": "publish"}) == Allowed(True, {"clean": True})
    assert sample(metrics, "switchboard_gateway_proxy_calls_total", event="publish",
                  result="rewritten") == 1
    await proxy.aclose()


@pytest.mark.parametrize(("response", "kind"), [
    (httpx.Response(500), "http_5xx"),
    (httpx.Response(404), "http_4xx"),
    (httpx.Response(302, headers={"Location": "/elsewhere"}), "http_other"),
    (httpx.Response(200, content=b"<html>"), "bad_answer"),
    (httpx.Response(200, json={"allowed": True}), "bad_answer"),
])
async def test_failures_are_unavailable_by_kind(response: httpx.Response, kind: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response

    proxy, metrics = make(handler)
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.subscribe({})
    assert info.value.kind == kind
    assert sample(metrics, "switchboard_gateway_proxy_errors_total", event="subscribe",
                  kind=kind) == 1
    await proxy.aclose()


async def test_a_slow_backend_times_out_within_the_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return ok(allow=True)

    proxy, _ = make(handler, proxy_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.publish({})
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 1.0
    # a connect's budget (the handshake's) may be shorter still
    started = time.monotonic()
    with pytest.raises(ProxyUnavailable):
        await proxy.connect({}, budget=0.05)
    assert time.monotonic() - started < 0.5
    await proxy.aclose()


async def test_idempotent_calls_retry_once_after_a_connection_error_publish_never() -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["event"])
        if len(calls) % 2 == 1:
            raise httpx.ConnectError("refused", request=request)
        return ok(allow=True)

    proxy, _ = make(handler)
    assert await proxy.subscribe({"event": "subscribe"}) == Allowed()
    assert calls == ["subscribe", "subscribe"]
    calls.clear()
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.publish({"event": "publish"})
    assert info.value.kind == "connection"
    assert calls == ["publish"]
    await proxy.aclose()


async def test_calls_beyond_the_concurrency_limit_are_refused_at_once() -> None:
    release = asyncio.Event()
    arrived = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return ok(allow=True)

    proxy, metrics = make(handler, proxy_max_concurrency=2, proxy_timeout=5.0)
    held = [asyncio.create_task(proxy.subscribe({})) for _ in range(2)]
    while arrived < 2:
        await asyncio.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.subscribe({})
    assert info.value.kind == "overloaded"
    assert time.monotonic() - started < 0.1
    assert arrived == 2
    release.set()
    assert await asyncio.gather(*held) == [Allowed(), Allowed()]
    assert proxy.in_flight == 0
    assert sample(metrics, "switchboard_gateway_proxy_errors_total", event="subscribe",
                  kind="overloaded") == 1
    await proxy.aclose()


async def test_the_breaker_keeps_calls_from_the_backend_during_the_cooldown() -> None:
    clock = Clock()
    reached = 0
    healthy = False

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal reached
        reached += 1
        return ok(allow=True) if healthy else httpx.Response(503)

    proxy, metrics = make(handler, clock=clock, proxy_breaker_failures=3,
                          proxy_breaker_cooldown=5.0)
    for _ in range(3):
        with pytest.raises(ProxyUnavailable):
            await proxy.refresh({})
    assert reached == 3
    for _ in range(10):
        with pytest.raises(ProxyUnavailable) as info:
            await proxy.refresh({})
        assert info.value.kind == "breaker_open"
    assert reached == 3  # nothing reached the backend during the cool-down
    clock.now += 5.0
    healthy = True
    assert await proxy.subscribe({}) == Allowed()  # the probe (same URL, same breaker)
    assert reached == 4
    assert await proxy.subscribe({}) == Allowed()
    assert sample(metrics, "switchboard_gateway_proxy_errors_total", event="refresh",
                  kind="breaker_open") == 10
    await proxy.aclose()


async def test_a_cancelled_call_frees_its_slot() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return ok(allow=True)

    proxy, _ = make(handler, proxy_max_concurrency=1, proxy_timeout=5.0)
    task = asyncio.create_task(proxy.connect({}, budget=5.0))
    await asyncio.sleep(0.01)
    assert proxy.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proxy.in_flight == 0
    await proxy.aclose()


async def test_a_call_from_before_the_breaker_opened_does_not_decide_the_probe() -> None:
    clock = Clock()
    arrived = {"old": asyncio.Event(), "probe": asyncio.Event()}
    release_probe = asyncio.Event()
    reached: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        name = json.loads(request.content)["n"]
        reached.append(name)
        if name in arrived:
            arrived[name].set()
            await (release_probe.wait() if name == "probe" else asyncio.Event().wait())
            return ok(allow=True)
        return httpx.Response(503)

    proxy, _ = make(handler, clock=clock, proxy_breaker_failures=1, proxy_timeout=60.0)
    old = asyncio.create_task(proxy.subscribe({"n": "old"}))
    await arrived["old"].wait()
    with pytest.raises(ProxyUnavailable):
        await proxy.subscribe({"n": "fail"})  # the breaker opens
    clock.now += 5.0
    probe = asyncio.create_task(proxy.subscribe({"n": "probe"}))
    await arrived["probe"].wait()
    old.cancel()  # a call from before, ended while the probe is out
    with pytest.raises(asyncio.CancelledError):
        await old
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.subscribe({"n": "second"})
    assert info.value.kind == "breaker_open"  # not a second probe
    assert "second" not in reached
    release_probe.set()
    assert await probe == Allowed()
    assert not proxy.breaker_open("subscribe")
    await proxy.aclose()


async def test_answers_are_asked_uncompressed_and_a_compressed_one_is_refused() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        # The cap counts bytes as received: a small gzip body could inflate far past it.
        return httpx.Response(200, content=gzip.compress(b'{"allow": true}'),
                              headers={"Content-Encoding": "gzip"})

    proxy, _ = make(handler)
    with pytest.raises(ProxyUnavailable) as info:
        await proxy.subscribe({})
    assert info.value.kind == "bad_answer"
    assert seen[0].headers["Accept-Encoding"] == "identity"
    await proxy.aclose()


def test_channel_patterns_choose_what_is_proxied() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return ok(allow=True)

    proxy, _ = make(handler, proxy_subscribe_channels=("private-*",),
                    proxy_publish_url="")
    assert proxy.subscribes("private-1") and not proxy.subscribes("public")
    assert not proxy.publishes("private-1")  # no publish URL: nothing is


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"proxy_secret": ""}, "--proxy-secret"),
    ({"proxy_publish_url": "ftp://x/"}, "publish URL"),
    ({"proxy_connect_url": "backend:8000/connect"}, "connect URL"),
])
def test_unusable_settings_are_refused_at_start(overrides: dict[str, Any],
                                                fragment: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return ok(allow=True)

    with pytest.raises(ValueError, match=fragment) as info:
        make(handler, **overrides)
    assert "ftp://x/" not in str(info.value)
