// What the live tests need of the cluster they run against: its URLs from the environment,
// tokens, the router's HTTP API, a gate that holds reconnects, and waiting on conditions.
// tests/integration/test_js_sdk.py starts the cluster (redis-server, a router, two gateways
// sharing one port) and runs these tests with the variables below set.

import { createHmac, randomBytes } from "node:crypto";

const NEEDED = ["SWITCHBOARD_GATEWAY_URL", "SWITCHBOARD_ROUTER_URL", "SWITCHBOARD_API_KEY",
  "SWITCHBOARD_JWT_SECRET"];

/** The cluster from the environment; throws (failing the tests, never skipping them) without. */
export function liveCluster(env = process.env) {
  const missing = NEEDED.filter((name) => !env[name]);
  if (missing.length) {
    throw new Error(`the live tests need a running cluster, and ${missing.join(", ")} `
      + `${missing.length > 1 ? "are" : "is"} not set: run them with `
      + "`.venv/bin/pytest tests/integration/test_js_sdk.py` "
      + "(part of `make test`), which starts one");
  }
  return new Cluster(env.SWITCHBOARD_GATEWAY_URL, env.SWITCHBOARD_ROUTER_URL,
    env.SWITCHBOARD_API_KEY, env.SWITCHBOARD_JWT_SECRET);
}

class Cluster {
  constructor(gatewayUrl, routerUrl, apiKey, jwtSecret) {
    this.gatewayUrl = gatewayUrl;
    this.routerUrl = routerUrl.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.jwtSecret = jwtSecret;
  }

  /** An HS256 client JWT, as `switchboard token` makes them. */
  token(user, { channels, publish, presence, ttl = 3600, secret = this.jwtSecret } = {}) {
    const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + ttl };
    if (channels) claims.channels = channels;
    if (publish) claims.publish = publish;
    if (presence) claims.presence = presence;
    return signJwt(claims, secret);
  }

  /** POST to the router; returns the JSON answer and fails on anything but 2xx. */
  async post(path, body) {
    const resp = await fetch(`${this.routerUrl}${path}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.apiKey}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    if (!resp.ok) throw new Error(`router ${path}: HTTP ${resp.status}: ${text}`);
    return JSON.parse(text);
  }

  /** `{stream, epoch, offset}` of the stored message. */
  publish(target, data) {
    return this.post("/v1/publish", { ...target, data });
  }

  /** GET from the router; the JSON answer, failing on anything but 2xx. */
  async get(path) {
    const resp = await fetch(`${this.routerUrl}${path}`,
      { headers: { Authorization: `Bearer ${this.apiKey}` } });
    const text = await resp.text();
    if (!resp.ok) throw new Error(`router ${path}: HTTP ${resp.status}: ${text}`);
    return JSON.parse(text);
  }

  /** Where each of the user's sessions is in its user stream (what the SDK acked). */
  positions(user) {
    return this.get(`/v1/users/${encodeURIComponent(user)}/positions`);
  }

  disconnect(user, code = 4201, reason = "test") {
    return this.post(`/v1/users/${encodeURIComponent(user)}/disconnect`, { code, reason });
  }
}

export function signJwt(claims, secret) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A user name of its own for each test, so that tests never see each other's messages. */
export function uniqueName(prefix) {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Resolves with the predicate's first truthy value; rejects after `timeout` ms. */
export async function until(predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate(); // a promise (a router query) is awaited
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Everything a client emits, in order, with `messages` (the "message" payloads) for short
 * and `presence` (the "presence" payloads, whose own `event` field is the join or leave). */
export function record(sb) {
  const log = { messages: [], events: [], presence: [] };
  for (const event of ["message", "state", "welcome", "recovered", "error", "subscribed",
    "unsubscribed", "presence"]) {
    sb.on(event, (payload) => {
      log.events.push({ ...payload, event });
      if (event === "message") log.messages.push(payload);
      if (event === "presence") log.presence.push(payload);
    });
  }
  log.of = (event) => log.events.filter((e) => e.event === event);
  return log;
}

/**
 * A WebSocket class for the SDK whose new connections can be held back: while the gate is
 * closed a socket stays CONNECTING, and it opens (through `Base`) when the gate opens. That
 * makes "publish while the client is away" deterministic instead of a race with its backoff.
 */
export class Gate {
  constructor(Base) {
    this.opened = 0; // sockets that reached `Base`
    let release = () => {};
    let wait = Promise.resolve();
    const gate = this;
    this.hold = () => { wait = new Promise((resolve) => { release = resolve; }); };
    this.release = () => release();

    this.WebSocket = class GatedWebSocket {
      constructor(url, protocols) {
        this.onmessage = this.onclose = this.onerror = null;
        this._real = null;
        this._closed = false;
        wait.then(() => {
          if (this._closed) return;
          gate.opened += 1;
          const ws = this._real = new Base(url, protocols);
          ws.onmessage = (ev) => this.onmessage && this.onmessage(ev);
          ws.onerror = (ev) => this.onerror && this.onerror(ev);
          ws.onclose = (ev) => this.onclose && this.onclose(ev);
        });
      }

      get readyState() {
        if (this._real) return this._real.readyState;
        return this._closed ? 3 : 0;
      }

      send(data) { this._real.send(data); }

      close(code, reason) {
        this._closed = true;
        if (this._real) this._real.close(code, reason);
      }
    };
  }
}
