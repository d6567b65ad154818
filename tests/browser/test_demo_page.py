"""The demo page at ``/``: it connects with a token, shows every stream's messages, publishes
through the router in dev mode, manages channel subscriptions and watches the cluster."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import (
    ARTIFACTS,
    DemoCluster,
    open_demo,
    received,
    wait_for,
    wait_received,
)

pytestmark = pytest.mark.integration


def test_page_connects_and_shows_unicast_and_broadcast(demo: DemoCluster, page: Page) -> None:
    gateway = open_demo(page, demo.page_url(), "websocket")
    assert gateway in demo.gateways
    expect(page.locator("#state-text")).to_have_text("open")
    expect(page.locator("#transport-text")).to_have_text("websocket")
    expect(page.locator("#gateway-text")).to_have_text(gateway)
    expect(page.locator("#f-user")).to_have_text("demo")

    # dev mode: the publish form goes through the router (CORS from the gateway origin)
    expect(page.locator("#publish-card")).to_be_visible()
    page.fill("#pub-data", '{"text": "from the form"}')
    page.click("#pub-btn")
    expect(page.locator("#pub-result")).to_contain_text("user #1")
    page.click('#target-seg button[data-target="broadcast"]')
    page.click("#pub-btn")
    expect(page.locator("#pub-result")).to_contain_text("broadcast #")

    for i in range(3):
        demo.publish(user="demo", data={"i": i})
        demo.publish(broadcast=True, data=f"news {i}")
    demo.publish(user="somebody-else", data="not for this page")
    wait_received(page, "user", 4)
    wait_received(page, "broadcast", 4)

    assert [m["data"] for m in received(page, "user")] == [
        {"text": "from the form"}, {"i": 0}, {"i": 1}, {"i": 2}]
    assert [m["data"] for m in received(page, "broadcast")][1:] == ["news 0", "news 1", "news 2"]
    user_rows = page.locator('[data-stream="user"] li')
    expect(user_rows).to_have_count(4)
    expect(user_rows.first).to_contain_text('{"i":2}')  # newest first
    expect(page.locator('[data-stream="user"] .pos b')).to_have_text("#4")
    expect(page.locator("#c-messages")).to_have_text("8")


def test_channel_subscribe_publish_and_unsubscribe(demo: DemoCluster, page: Page) -> None:
    open_demo(page, demo.page_url(), "websocket")
    page.fill("#sub-name", "lobby")
    page.click('#sub-form button[type="submit"]')
    chip = page.locator('.chip[data-channel="lobby"]')
    expect(chip).to_have_attribute("data-status", "subscribed")

    # through the router, from the page's publish form and directly
    page.click('#target-seg button[data-target="channel"]')
    expect(page.locator("#pub-channel")).to_have_value("lobby")
    page.fill("#pub-data", '{"text": "hi room"}')
    page.click("#pub-btn")
    expect(page.locator("#pub-result")).to_contain_text("ch.lobby #1")  # stored by the router
    demo.publish(channel="lobby", data={"n": 2})
    demo.publish(channel="elsewhere", data="not subscribed")
    # from the page itself over its WebSocket; the gateway acknowledges with the position
    ack = page.evaluate("window.demo.sb.publish('lobby', {n: 3})")
    assert ack["channel"] == "lobby" and ack["offset"] == 3
    wait_received(page, "ch.lobby", 3)
    assert [m["data"] for m in received(page, "ch.lobby")] == [
        {"text": "hi room"}, {"n": 2}, {"n": 3}]
    assert [m["offset"] for m in received(page, "ch.lobby")] == [1, 2, 3]
    expect(page.locator('[data-stream="ch.lobby"] li')).to_have_count(3)
    assert received(page, "ch.elsewhere") == []

    presence = demo.http.get("/v1/channels/lobby/presence").json()
    assert "demo" in str(presence)

    chip.locator("button").click()
    wait_for(page, "() => window.demo.events.some(e => e.type === 'unsubscribed')")
    expect(page.locator('[data-stream="ch.lobby"]')).to_have_count(0)
    assert page.evaluate("window.demo.sb.channels") == []
    assert "ch.lobby" not in page.evaluate("window.demo.sb.positions")


def test_two_demo_tabs_in_one_channel_see_each_other_join_and_leave(
        demo: DemoCluster, page: Page, context: BrowserContext) -> None:
    open_demo(page, demo.page_url("ann", channels="lobby"))
    wait_for(page, "() => window.demo.events.some(e => e.type === 'presence'"
                   " && e.user === 'ann')")  # her own join
    other = context.new_page()
    open_demo(other, demo.page_url("bob", channels="lobby"))
    wait_for(page, "() => window.demo.events.some(e => e.type === 'presence'"
                   " && e.user === 'bob' && e.event === 'join')")
    expect(page.locator("#log")).to_contain_text("joined lobby")
    other.close()
    wait_for(page, "() => window.demo.events.some(e => e.type === 'presence'"
                   " && e.user === 'bob' && e.event === 'leave')")
    expect(page.locator("#log")).to_contain_text("bob")
    expect(page.locator("#log")).to_contain_text("left lobby")


def test_denied_subscribe_is_reported_and_forgotten(demo: DemoCluster, page: Page) -> None:
    from switchboard.auth import mint
    from tests.support import JWT_SECRET

    token = mint(JWT_SECRET, "limited", channels=["news-*"])
    page.goto(f"{demo.origin}/?token={token}&channels=news-eu,secret")
    wait_for(page, "() => window.demo.events.some(e => e.type === 'error'"
                   " && e.channel === 'secret')")
    wait_for(page, "() => window.demo.events.some(e => e.type === 'subscribed')")
    expect(page.locator('.chip[data-channel="secret"]')).to_have_attribute("data-status", "error")
    expect(page.locator('.chip[data-channel="news-eu"]')).to_have_attribute(
        "data-status", "subscribed")
    assert page.evaluate("window.demo.sb.channels") == ["news-eu"]
    assert page.evaluate("window.demo.sb.state") == "open"  # the connection stays


def test_demo_page_screenshot(demo: DemoCluster, page: Page, context: BrowserContext) -> None:
    """artifacts/demo.png: the page as a developer would show it, on a two-gateway cluster."""
    # a few more clients, so the cluster card has something to count
    for user, transport in (("alice", "websocket"), ("bob", "sse"), ("carol", "sse")):
        other = context.new_page()
        open_demo(other, demo.page_url(user, transport=transport, channels="lobby"), transport)
    open_demo(page, demo.page_url(channels="lobby"))
    wait_for(page, "() => window.demo.events.some(e => e.type === 'subscribed')")

    demo.publish(user="demo", data={"text": "Your order #1042 has shipped", "eta": "2 days"})
    demo.publish(user="demo", data={"text": "Alice mentioned you in #design"})
    demo.publish(broadcast=True, data={"text": "Deploy v2.3.1 rolled out", "region": "eu-west"})
    demo.publish(broadcast=True, data={"text": "Maintenance window Sunday 02:00 UTC"})
    for who, text in (("alice", "morning all"), ("bob", "standup in 5?"), ("carol", "on my way")):
        demo.publish(channel="lobby", data={"from": who, "text": text})
    page.fill("#pub-data", '{"text": "hello from the demo"}')
    page.click("#pub-btn")
    wait_received(page, "user", 3)
    wait_received(page, "broadcast", 2)
    wait_received(page, "ch.lobby", 3)
    # the cluster card polls the router every 2 s
    expect(page.locator("#gateways .gw")).to_have_count(2, timeout=10_000)
    # (the gateways rebalance: the page may have moved since it connected)
    wait_for(page, "() => document.querySelector(`#gateways .gw[data-gateway=\"${"
             "window.demo.sb.gateway}\"] .badge.here`)", timeout=10_000)
    wait_for(page, "() => document.querySelector('#cluster-total').textContent"
             ".startsWith('4 connections')", timeout=10_000)
    page.mouse.move(0, 0)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "demo.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 20_000
