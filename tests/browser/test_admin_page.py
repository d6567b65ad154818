"""The router's admin page at ``/admin`` in headless Chromium, on the demo cluster (a router and
two gateways): what it shows equals what the router API answers, and its actions (disconnect a
user, drain a gateway) do what they say only once confirmed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import Error as PlaywrightError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.browser.conftest import ARTIFACTS, WAIT_MS, DemoCluster, open_demo, wait_for
from tests.support import API_KEY, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def admin_context(browser: Browser, demo: DemoCluster) -> Iterator[BrowserContext]:
    """A profile that answers the page's Basic challenge with an API key as the password."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000},
                              http_credentials={"username": "admin", "password": API_KEY})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def admin(admin_context: BrowserContext, demo: DemoCluster) -> Iterator[Page]:
    page = admin_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    assert not errors, f"uncaught errors in the admin page: {errors}"


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def admin_url(demo: DemoCluster) -> str:
    return f"http://127.0.0.1:{demo.router.port}/admin"


def open_admin(page: Page, demo: DemoCluster) -> None:
    page.goto(admin_url(demo))
    refreshed(page)


def refreshed(page: Page) -> None:
    """Wait for the page's next complete refresh (every 2 s, and after each action)."""
    start = page.evaluate("window.admin ? window.admin.refreshes : 0")
    wait_for(page, "n => window.admin && window.admin.refreshes > n && !window.admin.error",
             start)


def ws_client(demo: DemoCluster, stack: ExitStack, user: str) -> ClientConnection:
    url = f"ws://127.0.0.1:{demo.port}/ws?token={demo.token(user)}"
    ws = stack.enter_context(connect(url, open_timeout=10))
    assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
    return ws


def api(demo: DemoCluster, path: str) -> dict[str, Any]:
    resp = demo.http.get(path)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def page_gateways(page: Page) -> dict[str, int]:
    rows = page.locator("#gateways tbody tr")
    return {rows.nth(i).get_attribute("data-gateway") or "":
            int(rows.nth(i).locator("td.connections").inner_text())
            for i in range(rows.count())}


def settled_counts(page: Page, demo: DemoCluster) -> dict[str, int]:
    """The per-gateway counts, once the page shows what GET /v1/cluster answers (read after
    the page's refresh: counts move while gateways heartbeat and rebalance)."""
    found: dict[str, dict[str, int]] = {}

    def same() -> bool:
        refreshed(page)
        shown = page_gateways(page)
        api_counts = {g["id"]: g["connections"] for g in api(demo, "/v1/cluster")["gateways"]}
        found["counts"] = api_counts
        return shown == api_counts

    wait_until(same, 20, "the page's gateway counts to equal GET /v1/cluster")
    return found["counts"]


def test_without_credentials_the_page_is_a_basic_challenge(browser: Browser,
                                                           demo: DemoCluster) -> None:
    ctx = browser.new_context()
    try:
        resp = ctx.request.get(admin_url(demo))
        assert resp.status == 401
        assert resp.headers["www-authenticate"] == 'Basic realm="switchboard admin"'
        assert resp.json()["error"] == "unauthorized"
        # a browser with nobody to type credentials gives up on the challenge
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            ctx.new_page().goto(admin_url(demo))
    finally:
        ctx.close()


def test_admin_page_shows_what_the_router_api_answers(
        demo: DemoCluster, admin: Page, context: BrowserContext, sockets: ExitStack,
        tmp_path: Path) -> None:
    for user, transport in (("alice", "websocket"), ("bob", "sse"), ("carol", "websocket")):
        open_demo(context.new_page(), demo.page_url(user, transport=transport,
                                                    channels="lobby"), transport)
    open_demo(context.new_page(), demo.page_url("alice", channels="lobby,news"))
    ws_client(demo, sockets, "dave")
    for i in range(30):
        demo.publish(broadcast=True, data={"tick": i})
    open_admin(admin, demo)

    counts = settled_counts(admin, demo)
    assert set(counts) == set(demo.gateways) and sum(counts.values()) == 5
    expect(admin.locator("#total-connections")).to_have_text(str(sum(counts.values())))
    for gw in demo.gateways:
        row = admin.locator(f'#gateways tr[data-gateway="{gw}"]')
        expect(row.locator("td.draining")).to_have_attribute("data-draining", "false")
        age = float(row.locator("td.age").inner_text().removesuffix(" s"))
        assert 0 <= age < 10

    # channels with presence, as GET /v1/channels/{c}/presence counts them
    for channel, users, conns in (("lobby", 3, 4), ("news", 1, 1)):
        presence = api(demo, f"/v1/channels/{channel}/presence")
        assert (presence["count"], presence["connections"]) == (users, conns)
        row = admin.locator(f'#channels tr[data-channel="{channel}"]')
        expect(row.locator("td.users")).to_have_text(str(users))
        expect(row.locator("td.connections")).to_have_text(str(conns))
    expect(admin.locator("#channel-count")).to_have_text("2")

    # where is alice connected: as GET /v1/users/alice/connections answers
    admin.fill("#user-input", "alice")
    admin.click('#user-form button[type="submit"]')
    expect(admin.locator("#user-name")).to_have_text("alice")
    looked_up = api(demo, "/v1/users/alice/connections")
    assert looked_up["count"] == 2
    expect(admin.locator("#user-count")).to_have_text("2")
    rows = admin.locator("#user-connections tbody tr")
    expect(rows).to_have_count(2)
    shown = {(rows.nth(i).get_attribute("data-conn"),
              rows.nth(i).locator("td.gateway").inner_text()) for i in range(2)}
    assert shown == {(c["conn"], c["gateway"]) for c in looked_up["connections"]}

    # the chart: the router's history, drawn (connections and deliveries/s)
    wait_for(admin, "() => window.admin.history.samples.some(s => s.connections === 5)"
                    " && window.admin.history.samples.some(s => s.deliveries_per_s > 0)",
             timeout=20_000)
    refreshed(admin)
    expect(admin.locator("#chart svg polyline.series.connections")).to_have_count(1)
    expect(admin.locator("#chart svg polyline.series.deliveries")).to_have_count(1)
    points = admin.locator("#chart polyline.connections").get_attribute("points") or ""
    # one point per sample the page had (the router's history may have grown since)
    drawn = len(points.split())
    assert 2 <= drawn <= len(api(demo, "/v1/cluster/history")["samples"]), points

    admin.mouse.move(0, 0)
    shot = tmp_path / "admin.png"
    admin.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "admin.png")


def test_disconnect_closes_the_users_websocket_only_once_confirmed(
        demo: DemoCluster, admin: Page, sockets: ExitStack) -> None:
    ws = ws_client(demo, sockets, "alice")
    bystander = ws_client(demo, sockets, "bob")
    open_admin(admin, demo)
    admin.fill("#user-input", "alice")
    admin.click('#user-form button[type="submit"]')
    expect(admin.locator("#user-count")).to_have_text("1")

    # cancelled: nothing happens, the connection still receives
    admin.click("#disconnect-btn")
    expect(admin.locator("#confirm")).to_be_visible()
    expect(admin.locator("#confirm-text")).to_contain_text("alice")
    admin.click("#confirm-cancel")
    wait_for(admin, "() => window.admin.actions.some(a => a.name === 'disconnect'"
                    " && a.cancelled)")
    expect(admin.locator("#confirm")).to_be_hidden()
    demo.publish(user="alice", data="still here")
    msg = json.loads(ws.recv(timeout=10))
    assert msg["type"] == "message" and msg["data"] == "still here"
    assert api(demo, "/v1/users/alice/connections")["count"] == 1

    # confirmed: the gateway closes alice's WebSocket with 4201
    admin.click("#disconnect-btn")
    admin.click("#confirm-ok")
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4201
    wait_for(admin, "() => window.admin.actions.some(a => a.name === 'disconnect' && a.ok)")
    expect(admin.locator("#action-result")).to_contain_text("alice")
    expect(admin.locator("#user-count")).to_have_text("0", timeout=10_000)
    # nobody else was touched
    demo.publish(user="bob", data="hi bob")
    assert json.loads(bystander.recv(timeout=10))["data"] == "hi bob"


def test_drain_moves_the_gateways_clients_only_once_confirmed(
        demo: DemoCluster, admin: Page, context: BrowserContext) -> None:
    pages = [context.new_page() for _ in range(4)]
    for i, page in enumerate(pages):
        open_demo(page, demo.page_url(f"user{i}"), "websocket")
    open_admin(admin, demo)
    counts = settled_counts(admin, demo)
    target = max(counts, key=lambda g: counts[g])
    other = next(g for g in demo.gateways if g != target)
    assert counts[target] > 0
    row = admin.locator(f'#gateways tr[data-gateway="{target}"]')

    # cancelled: nothing happens
    row.locator("button.drain").click()
    expect(admin.locator("#confirm-text")).to_contain_text(target)
    admin.click("#confirm-cancel")
    wait_for(admin, "() => window.admin.actions.some(a => a.name === 'drain' && a.cancelled)")
    refreshed(admin)
    assert not any(g["draining"] for g in api(demo, "/v1/cluster")["gateways"])
    expect(row.locator("td.draining")).to_have_attribute("data-draining", "false")

    # confirmed: it drains (page and API say so), its clients move to the other gateway
    row.locator("button.drain").click()
    admin.click("#confirm-ok")
    wait_for(admin, "() => window.admin.actions.some(a => a.name === 'drain' && a.ok)")
    expect(row.locator("td.draining")).to_have_attribute("data-draining", "true",
                                                         timeout=10_000)
    wait_until(lambda: any(g["id"] == target and g["draining"]
                           for g in api(demo, "/v1/cluster")["gateways"])
               or not demo.gateways[target].alive(), 10, "the registry to say draining")
    for page in pages:
        wait_for(page, "g => window.demo.sb.state === 'open' && window.demo.sb.gateway === g",
                 other, timeout=30_000)
    # then it exits 0, as after SIGTERM, and leaves the registry and the page
    assert demo.gateways[target].proc.wait(timeout=30) == 0
    expect(row).to_have_count(0, timeout=10_000)
    assert target not in {g["id"] for g in api(demo, "/v1/cluster")["gateways"]}
