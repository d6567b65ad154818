// The SDK's pure helpers and what it does in a runtime without browser globals; no network.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, test } from "node:test";
import WebSocket from "ws";

import {
  Backoff, Switchboard, VERSION, closeAction, endpoints, formatCursor, parseCursor, retryAfter,
} from "../switchboard.js";

describe("cursor", () => {
  test("formatCursor and parseCursor round-trip every stream", () => {
    const positions = new Map([["user", { epoch: "x9Q", offset: 41 }],
      ["ch.lobby", { epoch: "p2W", offset: 0 }]]);
    const text = formatCursor(positions);
    assert.equal(text, "user:x9Q:41,ch.lobby:p2W:0");
    assert.deepEqual(parseCursor(text), positions);
    assert.equal(formatCursor(Object.fromEntries(positions)), text);
  });

  test("parseCursor drops malformed entries and accepts nothing", () => {
    assert.deepEqual([...parseCursor("user:e:1,junk,broadcast:e:x,a:b:c:4, b:e:2 ")],
      [["user", { epoch: "e", offset: 1 }], ["b", { epoch: "e", offset: 2 }]]);
    assert.equal(parseCursor("").size, 0);
    assert.equal(parseCursor(undefined).size, 0);
  });
});

test("closeAction follows the close-code ranges of the protocol", () => {
  const expected = {
    1000: "backoff", 1001: "backoff", 1006: "backoff", 1009: "backoff", 1011: "backoff",
    1013: "backoff", 4108: "backoff", 4129: "backoff", 3000: "backoff",
    1012: "jitter", 4200: "jitter", 4201: "jitter", 4299: "jitter",
    4001: "token",
    4000: "terminal", 4003: "terminal", 4004: "terminal", 4099: "terminal",
  };
  for (const [code, action] of Object.entries(expected)) {
    assert.equal(closeAction(Number(code)), action, `close ${code}`);
  }
});

describe("Backoff", () => {
  test("full jitter under a doubling bound, capped", () => {
    const b = new Backoff({ base: 0.5, cap: 4 }, () => 1);
    assert.deepEqual([1, 2, 3, 4, 5].map(() => b.next()), [0.5, 1, 2, 4, 4]);
    const low = new Backoff({}, () => 0);
    assert.equal(low.next(), 0);
  });

  test("a server hint replaces the random delay but still counts as an attempt", () => {
    const b = new Backoff({}, () => 1);
    assert.equal(b.next(2.5), 2.5);
    assert.equal(b.next(-1), 0);
    assert.equal(b.attempt, 2);
  });

  test("a connection that stayed open resetAfter seconds resets the attempts", () => {
    let clock = 0;
    const b = new Backoff({ base: 1, cap: 100, resetAfter: 60 }, () => 1, () => clock);
    b.next(); b.next(); b.next();
    b.connected();
    clock += 59;
    assert.equal(b.next(), 8, "59 s is not healthy enough");
    b.connected();
    clock += 60;
    assert.equal(b.next(), 1);
  });
});

test("endpoints derive /ws and /sse from any gateway URL", () => {
  assert.deepEqual(endpoints("https://rt.example.com"), { ws: "wss://rt.example.com/ws",
    sse: "https://rt.example.com/sse", http: "https://rt.example.com" });
  assert.deepEqual(endpoints("ws://127.0.0.1:8080/ws?x=1"), { ws: "ws://127.0.0.1:8080/ws",
    sse: "http://127.0.0.1:8080/sse", http: "http://127.0.0.1:8080" });
  assert.equal(endpoints("http://h/base/sse/").ws, "ws://h/base/ws");
  // Node and React Native have no page to resolve a relative URL against.
  assert.throws(() => endpoints("/"), /absolute URL needed/);
});

test("retryAfter reads seconds and HTTP dates", () => {
  assert.equal(retryAfter("3"), 3);
  assert.equal(retryAfter(null), null);
  assert.equal(retryAfter("soon"), null);
  assert.equal(retryAfter(new Date(Date.now() - 5000).toUTCString()), 0);
  const later = retryAfter(new Date(Date.now() + 30_000).toUTCString());
  assert.ok(later > 25 && later <= 30, `got ${later}`);
});

describe("outside a browser", () => {
  test("without a WebSocket implementation the constructor says what to pass", () => {
    // (Node 22 has a global WebSocket, and may get an EventSource.)
    if (globalThis.WebSocket === undefined && globalThis.EventSource === undefined) {
      assert.throws(() => new Switchboard("http://127.0.0.1:1"), /pass options\.WebSocket/);
    }
    if (globalThis.WebSocket === undefined) {
      assert.throws(() => new Switchboard("http://127.0.0.1:1", { transport: "websocket" }),
        /pass options\.WebSocket/);
    }
    if (globalThis.EventSource === undefined) {
      assert.throws(() => new Switchboard("http://127.0.0.1:1", { WebSocket, transport: "sse" }),
        /no EventSource here/);
    }
  });

  test("an injected WebSocket needs no other browser global, and there is no SSE fallback", () => {
    const sb = new Switchboard("http://127.0.0.1:1", { WebSocket });
    assert.equal(sb.transport, "websocket");
    assert.equal(sb.state, "closed");
    const injected = new Switchboard("http://127.0.0.1:1", { WebSocket, EventSource: class {},
      transport: "sse" });
    assert.equal(injected.transport, "sse");
  });
});

test("the package exports this module, at the version of its package.json", async () => {
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  const viaExports = await import(pkg.name); // a package may import itself by name
  assert.equal(viaExports.Switchboard, Switchboard);
  assert.equal(viaExports.default, Switchboard);
  assert.equal(VERSION, pkg.version);
});
