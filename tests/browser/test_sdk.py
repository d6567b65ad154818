"""The browser SDK (``/client.js``) on its own: close-code policy, backoff, tokens, offline."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page

from switchboard.auth import mint
from tests.browser.conftest import DemoCluster, open_demo, received, wait_for, wait_received
from tests.support import JWT_SECRET

pytestmark = pytest.mark.integration


def blank(page: Page, demo: DemoCluster) -> None:
    """The demo page without a token: it loads the SDK but does not connect."""
    page.goto(f"{demo.origin}/?autoconnect=0")
    wait_for(page, "() => window.demo !== undefined")


def test_helpers_follow_the_protocol(demo: DemoCluster, page: Page) -> None:
    blank(page, demo)
    got = page.evaluate("""async () => {
        const m = await import("/client.js");
        const codes = [1000, 1001, 1006, 1009, 1011, 1012, 1013, 4001, 4003, 4004, 4099,
                       4108, 4129, 4200, 4201];
        const b = new m.Backoff({base: 0.5, cap: 20}, () => 1);  // the top of each window
        const bounds = Array.from({length: 8}, () => b.next());
        const zero = new m.Backoff({}, () => 0.5);
        return {
            actions: Object.fromEntries(codes.map(c => [c, m.closeAction(c)])),
            bounds, hinted: zero.next(3), attempt: zero.attempt,
            ws: m.endpoints("https://rt.example.com/base/"),
            wsFromWs: m.endpoints("wss://rt.example.com/ws"),
            relative: m.endpoints("/"),
            cursor: m.formatCursor({user: {epoch: "e1", offset: 4},
                                    "ch.lobby": {epoch: "e2", offset: 0}}),
            retry: [m.retryAfter("3"), m.retryAfter(null)],
        };
    }""")
    a = got["actions"]
    assert {c for c, v in a.items() if v == "backoff"} == {
        "1000", "1001", "1006", "1009", "1011", "1013", "4108", "4129"}
    assert {c for c, v in a.items() if v == "jitter"} == {"1012", "4200", "4201"}
    assert a["4001"] == "token"
    assert {c for c, v in a.items() if v == "terminal"} == {"4003", "4004", "4099"}
    assert got["bounds"] == [0.5, 1, 2, 4, 8, 16, 20, 20]  # min(cap, base * 2**attempt)
    assert got["hinted"] == 3 and got["attempt"] == 1  # a server hint replaces the delay
    assert got["ws"] == {"ws": "wss://rt.example.com/base/ws",
                         "sse": "https://rt.example.com/base/sse",
                         "http": "https://rt.example.com/base"}
    assert got["wsFromWs"]["sse"] == "https://rt.example.com/sse"
    assert got["relative"]["ws"] == f"ws://127.0.0.1:{demo.port}/ws"
    assert got["cursor"] == "user:e1:4,ch.lobby:e2:0"
    assert got["retry"] == [3, None]


@pytest.mark.parametrize("problem", ["forged", "expired"])
def test_refused_token_is_replaced_by_the_token_provider(
    demo: DemoCluster, page: Page, problem: str
) -> None:
    blank(page, demo)
    secret = "not-the-gateways-secret-0123456789abcdef" if problem == "forged" else JWT_SECRET
    bad = mint(secret, "demo", ttl=-60 if problem == "expired" else 3600)
    got = page.evaluate("""async ([bad, good]) => {
        const { Switchboard } = await import("/client.js");
        let calls = 0;
        const sb = new Switchboard(location.origin, {
            token: bad, tokenProvider: async () => { calls += 1; return good; } });
        const welcome = await sb.connect();
        const result = { calls, user: welcome.user, state: sb.state };
        sb.close();
        return result;
    }""", [bad, demo.token()])
    assert got == {"calls": 1, "user": "demo", "state": "open"}


def test_refused_token_without_provider_stops_for_good(demo: DemoCluster, page: Page) -> None:
    blank(page, demo)
    bad = mint("not-the-gateways-secret-0123456789abcdef", "demo")
    got = page.evaluate("""async (bad) => {
        const { Switchboard } = await import("/client.js");
        const sb = new Switchboard(location.origin, { token: bad });
        const errors = [];
        sb.on("error", (e) => errors.push(e));
        try { await sb.connect(); return "connected?"; }
        catch (err) { return { code: err.code, state: sb.state, errors }; }
    }""", bad)
    assert got["code"] == 401 and got["state"] == "closed"
    assert [e["fatal"] for e in got["errors"]] == [True]


def test_offline_pauses_reconnects_until_online(
    demo: DemoCluster, page: Page, context: BrowserContext
) -> None:
    open_demo(page, demo.page_url(), "websocket")
    context.set_offline(True)
    wait_for(page, "() => navigator.onLine === false")
    # the gateway drops us (4201, reconnect after jitter): with the browser offline the SDK
    # waits instead of burning its attempts
    resp = demo.http.post("/v1/users/demo/disconnect", json={})
    assert resp.status_code == 200, resp.text
    wait_for(page, "() => window.demo.sb.state === 'offline'")
    for i in range(5):
        demo.publish(user="demo", data={"missed": i})
    assert page.evaluate("window.demo.sb.stats.connects") == 1

    context.set_offline(False)
    wait_for(page, "() => window.demo.sb.state === 'open' && window.demo.sb.stats.connects === 2")
    wait_received(page, "user", 5)
    assert [m["data"] for m in received(page, "user")] == [{"missed": i} for i in range(5)]
    last = page.evaluate("window.demo.events.filter(e => e.type === 'recovered').at(-1)")
    assert last["recovered"] is True and last["via"] == "cursor"
