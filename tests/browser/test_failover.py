"""A gateway dies under the page while messages keep flowing: nothing is lost or repeated.

The page's gateway is SIGKILLed (no drain, no close frame) while a publisher sends one message
per stream 25 times a second through the router. The page must come back on the other gateway
and end with every message exactly once, in order per stream: over a WebSocket (resume with
session + cursor) and over SSE (EventSource's own reconnect, resumed from Last-Event-ID).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import (
    DemoCluster,
    Publisher,
    open_demo,
    received,
    wait_for,
    wait_received,
)

pytestmark = pytest.mark.integration

COUNT = 100  # messages per stream
# Publishing lasts COUNT / RATE = 8 s, so a reconnect slowed by a loaded CI machine still
# comes back while messages are being published (the scenario the test is about).
RATE = 12.5

# Stands in for a network that refuses WebSocket upgrades (a proxy, a firewall): every
# handshake fails the way browsers report it, close 1006 before open.
BLOCK_WEBSOCKETS = """
window.__wsAttempts = 0;
window.WebSocket = class BlockedWebSocket extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    super();
    window.__wsAttempts += 1;
    this.url = url; this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      const error = new Event("error");
      if (this.onerror) this.onerror(error);
      this.dispatchEvent(error);
      const close = new CloseEvent("close", {code: 1006, wasClean: false});
      if (this.onclose) this.onclose(close);
      this.dispatchEvent(close);
    }, 20);
  }
  send() { throw new DOMException("not open", "InvalidStateError"); }
  close() {}
};
"""


def streams_for(demo: DemoCluster) -> dict[str, Any]:
    return {
        "user": lambda i: {"user": "demo", "data": {"u": i}},
        "broadcast": lambda i: {"broadcast": True, "data": {"b": i}},
        "ch.lobby": lambda i: {"channel": "lobby", "data": {"c": i}},
    }


def kill_under_load(demo: DemoCluster, page: Page) -> tuple[str, str, Publisher, int]:
    """Publish steadily, SIGKILL the page's gateway midway, wait for the page to come back.

    Returns the gateway killed, the one the page came back on, the publisher, and how many
    page events there were at the kill.
    """
    publisher = Publisher(demo, streams_for(demo), COUNT, rate=RATE)
    publisher.start()
    try:
        wait_received(page, "user", 20)
        # where the page is now (the gateways rebalance, so it may have moved since it connected)
        first = wait_for(page, "() => window.demo.sb.state === 'open' && window.demo.sb.gateway")
        at_kill = page.evaluate("window.demo.events.length")
        demo.kill(first)
        second = wait_for(page, "g => window.demo.sb.state === 'open' && window.demo.sb.gateway"
                                " !== g && window.demo.sb.gateway", first, timeout=30_000)
        # the page came back while messages were still being published
        assert publisher.published("user") < COUNT
    finally:
        publisher.finish()
    return first, second, publisher, at_kill


def assert_exactly_once_in_order(page: Page, publisher: Publisher) -> None:
    for stream in publisher.sent:
        wait_received(page, stream, COUNT, timeout=30_000)
    for stream, sent in publisher.sent.items():
        got = received(page, stream)
        assert [m["data"] for m in got] == sent, f"{stream}: not every message exactly once"
        offsets = [m["offset"] for m in got]
        assert offsets == list(range(offsets[0], offsets[0] + COUNT)), stream
        assert len({m["epoch"] for m in got}) == 1, stream
    # every reconnect recovered every stream
    recoveries = page.evaluate(
        "window.demo.events.filter(e => e.type === 'recovered' && !e.initial)")
    assert recoveries and all(r["recovered"] and r["lost"] == [] for r in recoveries), recoveries


def wait_subscribed(page: Page) -> None:
    wait_for(page, "() => window.demo.events.some(e => e.type === 'subscribed'"
                   " && e.channel === 'lobby')")


def test_websocket_page_survives_its_gateway_being_killed(demo: DemoCluster, page: Page) -> None:
    open_demo(page, demo.page_url(channels="lobby"), "websocket")
    wait_subscribed(page)
    first, second, publisher, _ = kill_under_load(demo, page)
    assert second in demo.gateways and second != first
    assert page.evaluate("window.demo.sb.transport") == "websocket"
    assert_exactly_once_in_order(page, publisher)
    assert page.evaluate("window.demo.sb.stats.reconnects") >= 1
    # the page shows where it is now
    assert page.locator("#gateway-text").text_content() == second


@pytest.mark.parametrize("mode", ["websocket-blocked", "forced-sse"])
def test_sse_page_receives_everything_and_resumes_from_last_event_id(
    demo: DemoCluster, page: Page, mode: str
) -> None:
    page.add_init_script(BLOCK_WEBSOCKETS)
    if mode == "forced-sse":
        open_demo(page, demo.page_url(channels="lobby", transport="sse"), "sse")
        assert page.evaluate("window.__wsAttempts") == 0
    else:
        # auto: the WebSocket fails, the SDK's probe (a plain GET of /ws, answered 426) shows
        # the gateway would have accepted it, so it switches to SSE at once
        open_demo(page, demo.page_url(channels="lobby"), "sse")
        assert page.evaluate("window.__wsAttempts") >= 1
        assert page.evaluate("window.demo.sb.stats.fallbacks") == 1
    wait_subscribed(page)

    first, second, publisher, at_kill = kill_under_load(demo, page)
    assert second in demo.gateways and second != first
    assert page.evaluate("window.demo.sb.transport") == "sse"
    assert_exactly_once_in_order(page, publisher)

    # After the kill, EventSource reconnected by itself and sent Last-Event-ID (the cursor of
    # the last event it got); the gateway resumed every stream from it. The SDK leaves that
    # retry to the browser only for a stream opened without a cursor in its URL: had the SDK
    # reconnected on its own before the kill (after a gap, say), the URL cursor would win over
    # the header at the gateway, so the SDK then resumes with a fresh cursor itself.
    events = page.evaluate("window.demo.events")
    own_resumes = [e for e in events[:at_kill] if e["type"] == "recovered" and not e["initial"]]
    after_kill = [e for e in events[at_kill:] if e["type"] == "recovered"]
    assert after_kill, events[at_kill:]
    expected = "cursor" if own_resumes else "last-event-id"
    assert after_kill[0]["via"] == expected and after_kill[0]["recovered"], events[at_kill:]
