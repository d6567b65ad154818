"""Browser tests: the demo page and the SDK in real headless Chromium, driven by Playwright.

A cluster here is what ``switchboard up`` runs in dev mode, built from ``tests.support``
processes so the test knows each gateway's id and PID: redis-server, a router that allows CORS
from the gateway origin, and two gateways sharing one port (SO_REUSEPORT) that serve the demo
page, ``/client.js`` and ``/demo/config.json``. No autoscaler: a killed gateway stays dead, so a
page that loses its gateway can only come back on the other one.

``playwright install`` cannot download browsers here; Debian's chromium is used
(``SWITCHBOARD_CHROMIUM`` overrides the path; ``make test`` installs it when missing).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard.auth import mint
from tests.support import (
    API_KEY,
    JWT_SECRET,
    ROOT,
    Proc,
    RedisServer,
    free_port,
    start_gateway,
    start_router,
    wait_until,
)

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # `pip install -e '.[dev]'` brings it; without it there is nothing to run
    collect_ignore_glob = ["test_*.py"]

CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "artifacts"
WAIT_MS = 15_000  # default deadline for a page condition


@dataclass
class DemoCluster:
    redis: RedisServer
    port: int
    router: Proc
    gateways: dict[str, Proc]  # gateway id -> process
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.router.port}",
                                 headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str = "demo") -> str:
        """What `switchboard up` prints: every channel may be subscribed and published to,
        with presence events on."""
        return mint(JWT_SECRET, user, channels=["*"], publish=["*"], presence=["*"])

    def page_url(self, user: str = "demo", **params: str) -> str:
        query = "&".join([f"token={self.token(user)}", *(f"{k}={v}" for k, v in params.items())])
        return f"{self.origin}/?{query}"

    def publish(self, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/v1/publish", json=body)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def cluster(self) -> dict[str, Any]:
        resp = self.http.get("/v1/cluster")
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def kill(self, gateway_id: str) -> None:
        """SIGKILL one of our gateways, by the PID we started it with."""
        proc = self.gateways[gateway_id]
        proc.kill()
        proc.proc.wait(timeout=10)


@pytest.fixture
def demo(redis_server: RedisServer, logdir: Path) -> Iterator[DemoCluster]:
    port = free_port()
    started: list[Proc] = []
    try:
        router = start_router(redis_server, logdir,
                              SWITCHBOARD_CORS_ORIGINS=f"http://127.0.0.1:{port}")
        started.append(router)
        config = json.dumps({"router": f"http://127.0.0.1:{router.port}", "api_key": API_KEY})
        gateways: dict[str, Proc] = {}
        for name in ("gwA", "gwB"):
            gw_id = f"{name}{os.urandom(3).hex()}"
            proc = start_gateway(redis_server, logdir, port=port, SWITCHBOARD_GATEWAY_ID=gw_id,
                                 SWITCHBOARD_REUSE_PORT="1", SWITCHBOARD_DEMO_CONFIG=config)
            started.append(proc)
            gateways[gw_id] = proc
        c = DemoCluster(redis_server, port, router, gateways)
        # Both share the port, so a health check may have been answered by the other one:
        # the registry is what proves each is up.
        wait_until(lambda: {g["id"] for g in c.cluster()["gateways"]} >= set(gateways), 20,
                   "both gateways in /v1/cluster")
        yield c
        c.http.close()
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # a failure, not a skip: make test installs it (browser-deps)
    assert Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM} (make test installs it)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class PageLog:
    """What the page printed; shown when a test fails, to tell SDK bugs from server ones."""

    page: Page
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


PAGE_LOG = pytest.StashKey[PageLog]()


@pytest.fixture
def context(browser: Browser, demo: DemoCluster) -> Iterator[BrowserContext]:
    """A fresh browser profile per test; closed before the cluster stops (it depends on it)."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    pg = context.new_page()
    log = PageLog(pg)
    pg.on("console", lambda m: log.lines.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: log.errors.append(str(e)))
    request.node.stash[PAGE_LOG] = log
    yield pg
    if log.errors:
        pytest.fail(f"uncaught errors in the page: {log.errors}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    log = item.stash.get(PAGE_LOG, None)
    if report.failed and log is not None:
        try:
            events = log.page.evaluate("JSON.stringify((window.demo || {}).events || [])")
        except Exception as exc:  # the page may be gone
            events = f"(unavailable: {exc})"
        report.sections.append(("page console", "\n".join(log.lines[-200:])))
        report.sections.append(("page events", str(events)[-20_000:]))
    return report


def wait_for(page: Page, expression: str, arg: object = None, timeout: float = WAIT_MS) -> Any:
    """Wait until a JS expression (a function of `arg`) is truthy in the page; return it."""
    handle = page.wait_for_function(expression, arg=arg, timeout=timeout)
    return handle.json_value()


def open_demo(page: Page, url: str, transport: str | None = None) -> str:
    """Load the demo page and wait for it to be connected; return the gateway it is on."""
    page.goto(url)
    state = wait_for(page, "() => window.demo && window.demo.sb && window.demo.sb.state === 'open'"
                     " && window.demo.sb")
    assert state
    if transport is not None:
        assert page.evaluate("window.demo.sb.transport") == transport
    gateway = page.evaluate("window.demo.sb.gateway")
    assert isinstance(gateway, str)
    return gateway


def received(page: Page, stream: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate(
        "s => window.demo.messages.filter(m => m.stream === s)", stream)
    return result


def wait_received(page: Page, stream: str, n: int, timeout: float = WAIT_MS) -> None:
    wait_for(page, "([s, n]) => window.demo.messages.filter(m => m.stream === s).length >= n",
             [stream, n], timeout)


class Publisher(threading.Thread):
    """Publishes through the router at a steady, bounded rate: one message per stream per tick.

    ``bodies`` maps a stream name to a function of the sequence number giving the publish body.
    Everything sent (with the router's answer) is kept per stream, in order.
    """

    def __init__(self, c: DemoCluster, bodies: dict[str, Callable[[int], dict[str, Any]]],
                 count: int, rate: float = 25.0) -> None:
        super().__init__(daemon=True)
        self.c, self.bodies, self.count, self.interval = c, bodies, count, 1.0 / rate
        self.sent: dict[str, list[Any]] = {s: [] for s in bodies}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=str(self.c.http.base_url),
                              headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as h:
                for i in range(self.count):
                    for stream, body in self.bodies.items():
                        b = body(i)
                        resp = h.post("/v1/publish", json=b)
                        resp.raise_for_status()
                        assert resp.json()["stream"] == stream, resp.text
                        self.sent[stream].append(b["data"])
                    if self.stop.wait(self.interval):  # pacing, and a way to stop early
                        return
        except BaseException as exc:
            self.error = exc

    def published(self, stream: str) -> int:
        return len(self.sent[stream])

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        assert not self.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error
