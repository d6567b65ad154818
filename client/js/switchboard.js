/**
 * Switchboard client SDK: one dependency-free ES module, no build step. Gateways serve it to
 * browsers at `/client.js`; npm has it as `switchboard-client` for bundlers, Node 18+ and React
 * Native.
 *
 *   import { Switchboard } from "/client.js";  // or from "switchboard-client"
 *   const sb = new Switchboard("https://rt.example.com", { tokenProvider: fetchToken });
 *   sb.on("message", (m) => render(m.stream, m.data));
 *   sb.on("recovered", (r) => { if (!r.recovered) refetch(r.lost); });
 *   sb.on("presence", (p) => p.event === "join" ? here.add(p.conn) : here.delete(p.conn));
 *   await sb.connect();
 *
 * What it does for you (docs/protocol.md is the contract, docs/browser.md the guide):
 * - keeps a position (epoch, offset) per stream, drops duplicates, and on a gap reconnects at
 *   once with its session and cursor so the gateway replays what is missing;
 * - reconnects with full-jitter backoff, honours `reconnect.after_ms`, `Retry-After` and the
 *   close-code ranges (4000-4099 terminal, 4001 asks `tokenProvider` for a new token);
 * - falls back to Server-Sent Events when a WebSocket cannot be opened, resuming through
 *   `Last-Event-ID` on EventSource's own reconnects and an explicit cursor on its own;
 * - waits while `navigator.onLine` is false and retries on the `online` event.
 *
 * Outside a browser, pass what the runtime lacks: `WebSocket` (in Node < 22, the `ws` package),
 * and `EventSource` if you want the SSE fallback (without one there is none). Every browser-only
 * global (`navigator`, `window`, `location`) is optional: in Node and React Native the SDK
 * simply has no offline detection and needs an absolute URL.
 *
 * Browsers hide why a WebSocket handshake failed (every refusal is close 1006), so after a
 * connection fails before its welcome the SDK probes the same URL with a plain `fetch` GET:
 * the gateway answers it exactly like the handshake (401, 403, 503 + Retry-After) except that
 * an acceptable request gets 426 Upgrade Required. The probe only reads statuses same-origin
 * (or where the gateway sends CORS headers); otherwise it learns nothing and plain backoff
 * applies.
 *
 * @module switchboard
 */

export const VERSION = "0.2.0";
export const SUBPROTOCOL_JSON = "switchboard.v1.json";

const CHANNEL_RE = /^[A-Za-z0-9_-]{1,64}$/;
const CHANNEL_PREFIX = "ch.";
// Upper bound (s) of the delay after a drain or rebalance close that came without after_ms.
const JITTER_MAX = 1.0;
const SERVER_TYPES = ["welcome", "message", "subscribed", "unsubscribed", "reconnect", "pong",
  "published", "presence"];
// Errors about a channel that mean "you will not get this subscription": forget the channel.
const DENIALS = ["forbidden", "bad_request", "too_many_channels"];
const ACK_EVERY = 50; // messages processed before an ack goes out at once
const ACK_MS = 1000; // or this long after the first one not yet acked
const EVENTS = ["message", "state", "welcome", "recovered", "error", "subscribed",
  "unsubscribed", "presence"];

/**
 * @typedef {"connecting"|"open"|"reconnecting"|"offline"|"closed"} State
 * @typedef {"websocket"|"sse"} Transport
 * @typedef {{epoch: string, offset: number}} Position
 * @typedef {{stream: string, epoch: string, offset: number, data: any}} Message
 * @typedef {{state: State, previous: State, transport: Transport, gateway: string|null,
 *            code?: number, reason?: string}} StateChange
 * @typedef {{recovered: boolean, resumed: boolean, lost: string[], gateway: string|null,
 *            initial: boolean, via: "cursor"|"last-event-id"|null}} Recovery
 * @typedef {{code: string|number, message: string, fatal: boolean, channel?: string}} SwitchboardError
 * @typedef {{base?: number, cap?: number, resetAfter?: number}} BackoffOptions
 * @typedef {{
 *   token?: string,
 *   tokenProvider?: () => Promise<string>,
 *   transport?: "auto"|"websocket"|"sse",
 *   format?: "json",
 *   channels?: string[],
 *   backoff?: BackoffOptions,
 *   openTimeout?: number,
 *   pingInterval?: number|null,
 *   pingTimeout?: number,
 *   fallbackAfter?: number,
 *   params?: Record<string, string>,
 *   probe?: boolean,
 *   ack?: boolean,
 *   WebSocket?: new (url: string, protocols?: string[]) => any,
 *   EventSource?: new (url: string) => any,
 *   fetch?: (url: string, init?: object) => Promise<any>,
 * }} Options
 */

// -- pure helpers (exported for tests and for clients that speak the protocol themselves) ----

/**
 * What to do after a connection closed with `code` (docs/protocol.md, close codes).
 * @param {number} code
 * @returns {"backoff"|"jitter"|"token"|"terminal"}
 */
export function closeAction(code) {
  if (code === 1012 || (code >= 4200 && code <= 4299)) return "jitter";
  if (code === 4001) return "token";
  if (code >= 4000 && code <= 4099) return "terminal";
  return "backoff"; // 1000, 1001, 1006, 1009, 1011, 1013, 4100-4199 and codes we do not know
}

/**
 * Full-jitter exponential backoff: `delay = random(0, min(cap, base * 2**attempt))` seconds.
 * A connection that stayed open `resetAfter` seconds resets the attempt count.
 */
export class Backoff {
  /** @param {BackoffOptions} [options] @param {() => number} [random] @param {() => number} [now] */
  constructor({ base = 0.5, cap = 20, resetAfter = 60 } = {}, random = Math.random,
    now = () => Date.now() / 1000) {
    this.base = base;
    this.cap = cap;
    this.resetAfter = resetAfter;
    this.attempt = 0;
    this._random = random;
    this._now = now;
    /** @type {number|null} */
    this._openedAt = null;
  }

  /** Upper bound of the next delay, seconds. */
  bound() {
    return Math.min(this.cap, this.base * 2 ** Math.min(this.attempt, 64));
  }

  /** Delay in seconds before the next attempt; a server `hint` replaces the random one. */
  next(hint = null) {
    this.disconnected();
    const delay = hint != null ? Math.max(0, hint) : this._random() * this.bound();
    this.attempt += 1;
    return delay;
  }

  connected() {
    this._openedAt = this._now();
  }

  disconnected() {
    if (this._openedAt != null && this._now() - this._openedAt >= this.resetAfter) {
      this.attempt = 0;
    }
    this._openedAt = null;
  }
}

/**
 * `STREAM:EPOCH:OFFSET` entries, comma-separated.
 * @param {Map<string, Position>|Record<string, Position>} positions
 */
export function formatCursor(positions) {
  const entries = positions instanceof Map ? [...positions] : Object.entries(positions);
  return entries.map(([s, p]) => `${s}:${p.epoch}:${p.offset}`).join(",");
}

/** @param {string} text @returns {Map<string, Position>} */
export function parseCursor(text) {
  const out = new Map();
  for (const entry of (text || "").split(",")) {
    const parts = entry.trim().split(":");
    if (parts.length === 3 && /^\d+$/.test(parts[2])) {
      out.set(parts[0], { epoch: parts[1], offset: Number(parts[2]) });
    }
  }
  return out;
}

/**
 * The gateway's endpoints from any of `https://host`, `wss://host/ws`, `http://host/sse`, or a
 * path relative to the page. No `URL` object, so it also works where URL is incomplete (React
 * Native).
 * @param {string} [url]
 * @returns {{ws: string, sse: string, http: string}}
 */
export function endpoints(url) {
  let text = url || "/";
  if (!/^[a-z]+:\/\//i.test(text)) {
    if (typeof location === "undefined") throw new Error(`switchboard: absolute URL needed: ${text}`);
    text = location.protocol + "//" + location.host + (text.startsWith("/") ? text : "/" + text);
  }
  const m = /^(wss?|https?):\/\/([^/?#]+)([^?#]*)/i.exec(text);
  if (!m) throw new Error(`switchboard: not a gateway URL: ${url}`);
  const secure = /^(wss|https)$/i.test(m[1]);
  const path = m[3].replace(/\/+$/, "").replace(/\/(ws|sse)$/, "");
  const http = `${secure ? "https" : "http"}://${m[2]}${path}`;
  return { ws: `${secure ? "wss" : "ws"}://${m[2]}${path}/ws`, sse: `${http}/sse`, http };
}

/** Seconds from a Retry-After header (delta-seconds or HTTP-date), or null. */
export function retryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

/** Seconds until a JWT's `exp`, or null when it cannot be read (opaque tokens are fine). */
function tokenTtl(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).exp;
    return typeof exp === "number" ? exp - Date.now() / 1000 : null;
  } catch {
    return null;
  }
}

function isOffline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

function query(params) {
  return Object.entries(params)
    .filter(([, v]) => v)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
    .join("&");
}

// -- the client ------------------------------------------------------------------------------

/**
 * A connection to a Switchboard gateway cluster that stays connected and delivers every message
 * once, in offset order per stream.
 */
export class Switchboard {
  /**
   * @param {string} url the gateway, e.g. `https://rt.example.com` or `wss://rt.example.com/ws`
   *   (relative URLs resolve against the page)
   * @param {Options} [options]
   */
  constructor(url, options = {}) {
    const o = options;
    if ((o.format || "json") !== "json") {
      throw new Error("switchboard: the browser SDK speaks format \"json\" only");
    }
    if (!["auto", "websocket", "sse", undefined].includes(o.transport)) {
      throw new Error(`switchboard: unknown transport ${o.transport}`);
    }
    this.url = url;
    this._endpoints = endpoints(url);
    this._token = o.token || null;
    this._tokenProvider = o.tokenProvider || null;
    this._transportOption = o.transport || "auto";
    this._openTimeout = o.openTimeout ?? 10;
    this._pingInterval = o.pingInterval === undefined ? 25 : o.pingInterval;
    this._pingTimeout = o.pingTimeout ?? 10;
    this._fallbackAfter = o.fallbackAfter ?? 3;
    this._probeEnabled = o.probe ?? true;
    this._params = { ...(o.params || {}) };
    const g = typeof globalThis !== "undefined" ? globalThis : {};
    this._WebSocket = o.WebSocket || g.WebSocket;
    this._EventSource = o.EventSource || g.EventSource;
    this._fetch = o.fetch || (g.fetch ? g.fetch.bind(g) : null);
    this._backoff = new Backoff(o.backoff);
    /** @type {Map<string, Function[]>} */
    this._listeners = new Map();
    /** @type {Set<string>} channels the application wants */
    this._channels = new Set();
    for (const c of o.channels || []) this._channels.add(checkChannel(c));
    /** @type {Map<string, Position>} stream -> last delivered (or welcome) position */
    this._positions = new Map();
    this._session = null;
    this._gateway = null;
    this._user = null;
    /** @type {State} */
    this._state = "closed";
    const passWs = "pass options.WebSocket (in Node, the ws package)";
    if (this._transportOption === "websocket" && !this._WebSocket) {
      throw new Error(`switchboard: no WebSocket here; ${passWs}`);
    }
    this._useSse = this._transportOption === "sse" || !this._WebSocket;
    if (this._useSse && !this._EventSource) {
      throw new Error(this._WebSocket
        ? "switchboard: no EventSource here; pass options.EventSource or use transport websocket"
        : `switchboard: no WebSocket or EventSource here; ${passWs}`);
    }
    this._wsWorked = false; // a WebSocket reached its welcome at least once
    this._wsFailures = 0; // WebSocket attempts that failed before a welcome, in a row
    this._conn = null; // the current connection attempt
    this._gen = 0;
    this._timer = null;
    this._hint = null; // seconds, from a `reconnect` message
    this._freshToken = false;
    this._progress = true; // a message was delivered since the last gap
    this._started = false;
    this._waitingOnline = false;
    this._pings = [];
    this._pendingSubscribes = new Set(); // asked for, neither confirmed nor refused yet
    this._publishes = new Map(); // publish id -> {resolve, reject, timer}
    this._publishId = 0;
    this._autoAck = o.ack ?? true;
    this._ack = null; // {epoch, offset, count}: the user stream processed, not yet acked
    this._ackTimer = null;
    this.stats = { connects: 0, reconnects: 0, duplicates: 0, gaps: 0, lost: 0, fallbacks: 0 };
    this._onOnline = () => this._online();
    this._onOffline = () => this._offline();
  }

  // -- what the application sees ---------------------------------------------------------------

  /** @returns {State} */
  get state() { return this._state; }
  /** @returns {Transport} */
  get transport() { return this._useSse ? "sse" : "websocket"; }
  /** Id of the gateway of the current (or last) connection. */
  get gateway() { return this._gateway; }
  get session() { return this._session; }
  get user() { return this._user; }
  /** Channels subscribed (or to be subscribed at the next connect). */
  get channels() { return [...this._channels]; }
  /** @returns {Record<string, Position>} */
  get positions() { return Object.fromEntries([...this._positions].map(([s, p]) => [s, { ...p }])); }
  get cursor() { return formatCursor(this._positions); }

  /**
   * Listen to "message", "state", "welcome", "recovered", "error", "subscribed",
   * "unsubscribed", "presence". Returns a function that removes the listener.
   *
   * "presence" ({channel, event: "join"|"leave", user, conn}) comes only for channels whose
   * presence events the token (or the backend) opted this connection into. Events are not
   * replayed: after each "subscribed", read the channel's members again (your backend asks
   * the router's GET /v1/channels/{channel}/presence) and apply the events on top.
   */
  on(event, callback) {
    if (!EVENTS.includes(event)) throw new Error(`switchboard: unknown event ${event}`);
    const list = this._listeners.get(event) || [];
    list.push(callback);
    this._listeners.set(event, list);
    return () => this.off(event, callback);
  }

  off(event, callback) {
    const list = this._listeners.get(event) || [];
    this._listeners.set(event, list.filter((cb) => cb !== callback));
  }

  /**
   * Start connecting (and keep reconnecting). Resolves with the first welcome; rejects only
   * when the connection fails for good (bad token without a provider, forbidden, close()).
   * Calling it after close() resumes the same session and positions.
   * @returns {Promise<object>}
   */
  connect() {
    if (this._started) return this._ready;
    this._started = true;
    this._closing = false;
    this._ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this._ready.catch(() => {}); // callers that do not await it get no unhandled rejection
    if (typeof window !== "undefined" && window.addEventListener) {
      window.addEventListener("online", this._onOnline);
      window.addEventListener("offline", this._onOffline);
    }
    this._setState(this.stats.connects ? "reconnecting" : "connecting");
    this._open();
    return this._ready;
  }

  /** Close the connection (WebSocket code 1000) and stop reconnecting. */
  close() {
    this._flushAck(); // what the listeners processed, before the close frame
    this._stop();
    this._setState("closed");
  }

  /**
   * Subscribe to a channel; its messages arrive as stream `ch.NAME`. Over SSE (which cannot send)
   * the SDK reconnects with the new `channels=` list and resumes every stream, so nothing is lost.
   * The subscription survives reconnects (it is sent as `channels=` on each connect).
   * @param {string} channel
   * @param {{cursor?: Position|string}} [options] replay the channel from this position
   *   (`{epoch, offset}` or `"EPOCH:OFFSET"`, e.g. one saved from an earlier message)
   */
  subscribe(channel, options = {}) {
    checkChannel(channel);
    const known = this._channels.has(channel);
    const cursor = channelCursor(options.cursor);
    this._channels.add(channel);
    // A position of our own makes the next connect (`cursor=`) replay the channel from there.
    if (cursor) this._positions.set(CHANNEL_PREFIX + channel, cursor);
    const conn = this._conn;
    if (!conn || !conn.welcomed || (known && !cursor)) return; // `channels=` of the next connect
    if (conn.kind === "websocket") {
      this._pendingSubscribes.add(channel);
      this._send({ type: "subscribe", channel, ...(cursor ? { cursor } : {}) });
    } else {
      this._restartSse();
    }
  }

  /** @param {string} channel */
  unsubscribe(channel) {
    checkChannel(channel);
    const known = this._channels.delete(channel);
    this._positions.delete(CHANNEL_PREFIX + channel);
    this._pendingSubscribes.delete(channel);
    const conn = this._conn;
    if (!known || !conn || !conn.welcomed) return;
    if (conn.kind === "websocket") this._send({ type: "unsubscribe", channel });
    else this._restartSse();
  }

  /**
   * Publish to a channel from this client (WebSocket only; the token's `publish` claim must
   * allow it). Resolves with `{channel, epoch, offset}` once the gateway stored the message;
   * rejects with the gateway's error (`forbidden`, `unavailable`, ...) or after `timeout` s.
   * Throws at once when not connected over a WebSocket.
   * @returns {Promise<{channel: string, epoch: string, offset: number}>}
   */
  publish(channel, data, timeout = 10) {
    checkChannel(channel);
    if (!this._conn || !this._conn.welcomed || this._conn.kind !== "websocket") {
      throw new Error("switchboard: publish needs an open WebSocket connection");
    }
    const id = ++this._publishId;
    const acked = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._publishes.delete(id);
        reject(new Error("switchboard: no acknowledgement from the gateway"));
      }, timeout * 1000);
      this._publishes.set(id, { resolve, reject, timer });
    });
    acked.catch(() => {}); // fire-and-forget callers get no unhandled rejection
    this._send({ type: "publish", channel, data, id });
    return acked;
  }

  /** Round trip of an application-level ping, in milliseconds (WebSocket only). */
  ping(timeout = 10) {
    if (!this._conn || !this._conn.welcomed || this._conn.kind !== "websocket") {
      return Promise.reject(new Error("switchboard: ping needs an open WebSocket connection"));
    }
    const started = now();
    return new Promise((resolve, reject) => {
      const entry = { resolve: () => resolve(now() - started), reject };
      entry.timer = setTimeout(() => {
        this._pings = this._pings.filter((p) => p !== entry);
        reject(new Error("switchboard: no pong"));
      }, timeout * 1000);
      this._pings.push(entry);
      this._send({ type: "ping" });
    });
  }

  // -- connecting ----------------------------------------------------------------------------

  async _open() {
    const gen = ++this._gen;
    this._clearTimer();
    if (isOffline()) {
      this._goOffline();
      return;
    }
    if (this._tokenProvider && (!this._token || (tokenTtl(this._token) ?? Infinity) < 10)) {
      if (!(await this._refreshToken(null, false)) || gen !== this._gen) return;
    }
    if (gen !== this._gen || this._closing) return;
    const channels = [...this._channels];
    const cursor = formatCursor(this._positions);
    const q = query({ ...this._params, token: this._token, session: this._session, cursor,
      channels: channels.join(",") });
    const conn = {
      kind: this.transport, gen, welcomed: false, channels, query: q, via: cursor ? "cursor" : null,
      hasCursor: !!cursor, socket: null, timer: null, pingTimer: null, lastRx: now(),
      pingSent: null, autoRetrying: false, openedAt: null,
    };
    this._conn = conn;
    conn.timer = setTimeout(() => this._ended(conn, 1006, "no welcome in time"),
      this._openTimeout * 1000);
    try {
      if (conn.kind === "websocket") this._openWebSocket(conn);
      else this._openEventSource(conn);
    } catch (err) { // e.g. a SecurityError for a mixed-content URL
      this._ended(conn, 1006, String(err && err.message));
    }
  }

  _openWebSocket(conn) {
    const ws = new this._WebSocket(`${this._endpoints.ws}?${conn.query}`, [SUBPROTOCOL_JSON]);
    conn.socket = ws;
    ws.onmessage = (ev) => {
      if (conn !== this._conn) return;
      conn.lastRx = now();
      conn.pingSent = null;
      this._receive(conn, ev.data);
    };
    ws.onclose = (ev) => {
      if (conn === this._conn) this._ended(conn, ev.code || 1006, ev.reason || "");
    };
    ws.onerror = () => {}; // a close event follows
  }

  _openEventSource(conn) {
    if (!this._EventSource) throw new Error("EventSource is not available");
    const es = new this._EventSource(`${this._endpoints.sse}?${conn.query}`);
    conn.socket = es;
    for (const type of SERVER_TYPES) {
      es.addEventListener(type, (ev) => {
        if (conn === this._conn) this._receive(conn, ev.data);
      });
    }
    es.addEventListener("error", (ev) => {
      if (conn !== this._conn) return;
      if (typeof ev.data === "string") { // an `event: error` the gateway sent
        const obj = parseJson(ev.data);
        if (obj && obj.close) this._ended(conn, Number(obj.code) || 1006, obj.message || "");
        else if (obj) this._dispatch(conn, obj);
        return;
      }
      this._eventSourceFailed(conn, es);
    });
  }

  /** The event stream broke (or could not be opened). */
  _eventSourceFailed(conn, es) {
    // A stream that was opened without a cursor in its URL is left to EventSource's own retry:
    // it sends Last-Event-ID, the connection's full cursor, and the gateway resumes every
    // stream from it. A URL cursor would win over that header and go stale, so such streams,
    // a second failure in a row and offline pages are reconnected by us, with a fresh cursor.
    const retrying = es.readyState === 0; // CONNECTING: the browser is about to retry
    if (retrying && conn.welcomed && !conn.hasCursor && !conn.autoRetrying && !isOffline()) {
      conn.autoRetrying = true;
      conn.welcomed = false;
      conn.via = "last-event-id";
      this._stopKeepalive(conn);
      this._backoff.disconnected();
      this._setState("reconnecting", { code: 1006, reason: "event stream lost" });
      // Chromium retries after 3 s (the gateway may change that with `retry:`); give up on it
      // if no welcome follows.
      conn.timer = setTimeout(() => this._ended(conn, 1006, "event stream did not resume"),
        (this._openTimeout + 5) * 1000);
      return;
    }
    this._ended(conn, 1006, "event stream failed");
  }

  _teardown(conn, code = 1000, reason = "") {
    if (!conn) return;
    clearTimeout(conn.timer);
    this._stopKeepalive(conn);
    const s = conn.socket;
    if (this._conn === conn) this._conn = null;
    if (!s) return;
    if (conn.kind === "websocket") {
      s.onmessage = s.onclose = null;
      // Not null: the ws package reports a close() during its handshake as an error event, and
      // an EventEmitter with no error listener throws it (an uncaught exception in Node).
      s.onerror = () => {};
      try {
        if (s.readyState <= 1) s.close(code, reason);
      } catch { /* already closing */ }
    } else {
      s.close();
    }
  }

  /** A connection ended with `code` (1006: no close code seen); decide what comes next. */
  async _ended(conn, code, reason) {
    if (conn !== this._conn) return;
    const welcomed = conn.welcomed;
    this._teardown(conn);
    this._failPings("connection closed");
    if (this._closing) return;
    const hint = this._hint;
    this._hint = null;
    this._backoff.disconnected();
    const action = closeAction(code);
    if (action === "terminal") {
      this._fail(code, reason || "closed by the gateway");
      return;
    }
    this._setState(this.stats.connects ? "reconnecting" : "connecting", { code, reason });
    if (action === "token") {
      if (await this._refreshToken(code, true)) this._schedule(0);
    } else if (action === "jitter") {
      this._schedule(this._backoff.next(hint ?? Math.random() * JITTER_MAX));
    } else if (!welcomed && code === 1006) {
      await this._failedBeforeWelcome(conn);
    } else {
      this._schedule(this._backoff.next(hint));
    }
  }

  /** A handshake we cannot see failed: ask the gateway why, then maybe fall back to SSE. */
  async _failedBeforeWelcome(conn) {
    const gen = this._gen;
    const probe = this._probeEnabled ? await this._probe(conn) : null;
    if (gen !== this._gen || this._closing) return;
    const status = probe ? probe.status : 0;
    if (status === 401) {
      if (await this._refreshToken(401, true)) this._schedule(0);
      return;
    }
    if (status === 403) {
      this._fail(403, "the gateway refused this origin or token (HTTP 403)");
      return;
    }
    if (status === 400) { // our session or cursor was refused: start afresh rather than loop
      this._emit("error", { code: 400, message: probe.message || "bad request", fatal: false });
      this._session = null;
      this._positions.clear();
    }
    if (conn.kind === "websocket" && this._transportOption === "auto" && !this._wsWorked
      && this._EventSource) {
      this._wsFailures += 1;
      // 426: the gateway would have accepted this request, so WebSockets are blocked on the
      // way (a proxy, a firewall, an extension): switch to SSE at once.
      if (status === 426 || this._wsFailures >= this._fallbackAfter) {
        this._useSse = true;
        this.stats.fallbacks += 1;
        this._schedule(status === 426 ? 0 : this._backoff.next(probe && probe.retryAfter));
        return;
      }
    }
    this._schedule(this._backoff.next(probe ? probe.retryAfter : null));
  }

  /** GET the WebSocket URL as plain HTTP: same checks as the handshake, no connection made. */
  async _probe(conn) {
    if (!this._fetch) return null;
    const url = `${this._endpoints.ws.replace(/^ws/, "http")}?${conn.query}`;
    const abort = typeof AbortController !== "undefined" ? new AbortController() : null;
    const timer = setTimeout(() => abort && abort.abort(), 5000);
    try {
      const resp = await this._fetch(url, { cache: "no-store", credentials: "omit",
        signal: abort ? abort.signal : undefined });
      let message = "";
      try { message = (await resp.json()).message || ""; } catch { /* not JSON */ }
      return { status: resp.status, retryAfter: retryAfter(resp.headers.get("Retry-After")),
        message };
    } catch {
      return null; // unreachable, or cross-origin without CORS: we cannot tell
    } finally {
      clearTimeout(timer);
    }
  }

  /** Fetch a new token; false (after failing for good or scheduling a retry) when there is none. */
  async _refreshToken(code, refused) {
    if (!this._tokenProvider) {
      if (refused) this._fail(code, "the gateway refused the token and there is no tokenProvider");
      return false;
    }
    if (refused && this._freshToken) {
      this._fail(code, "the gateway refused a freshly provided token too");
      return false;
    }
    try {
      const token = await this._tokenProvider();
      if (!token) throw new Error("tokenProvider returned no token");
      this._token = token;
      this._freshToken = refused;
      return true;
    } catch (err) { // the auth backend may be briefly unreachable too: back off and ask again
      this._emit("error", { code: "token_provider", message: String(err && err.message || err),
        fatal: false });
      if (!this._closing) this._schedule(this._backoff.next());
      return false;
    }
  }

  _schedule(delay) {
    this._clearTimer();
    if (this._closing) return;
    if (isOffline()) {
      this._goOffline();
      return;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay * 1000);
  }

  _clearTimer() {
    if (this._timer != null) clearTimeout(this._timer);
    this._timer = null;
  }

  _goOffline() {
    this._clearTimer();
    this._waitingOnline = true;
    this._setState("offline");
  }

  _online() {
    if (!this._waitingOnline || this._closing) return;
    this._waitingOnline = false;
    this._setState(this.stats.connects ? "reconnecting" : "connecting");
    this._open();
  }

  _offline() {
    // Only a pending retry is paused: an open connection stays until it actually breaks,
    // since navigator.onLine can be wrong (VPNs, captive portals).
    if (this._timer != null && !this._closing) this._goOffline();
  }

  _restartSse() {
    if (this._restartPending) return;
    this._restartPending = true;
    Promise.resolve().then(() => {
      this._restartPending = false;
      const conn = this._conn;
      if (!conn || conn.kind !== "sse" || this._closing) return;
      this._teardown(conn);
      this._open(); // resumes with an explicit cursor and the new channel list
    });
  }

  _fail(code, message) {
    this._emit("error", { code, message, fatal: true });
    const reject = this._rejectReady;
    this._rejectReady = null; // rejected below with the reason, not with "closed"
    this._stop();
    this._setState("closed");
    if (reject) reject(Object.assign(new Error(`switchboard: ${message}`), { code }));
  }

  _stop() {
    this._closing = true;
    this._started = false;
    this._gen += 1;
    this._clearTimer();
    this._waitingOnline = false;
    this._teardown(this._conn, 1000, "client closed");
    this._failPings("client closed");
    if (this._rejectReady) this._rejectReady(new Error("switchboard: closed"));
    this._resolveReady = this._rejectReady = null;
    if (typeof window !== "undefined" && window.removeEventListener) {
      window.removeEventListener("online", this._onOnline);
      window.removeEventListener("offline", this._onOffline);
    }
  }

  // -- receiving -----------------------------------------------------------------------------

  _receive(conn, text) {
    const obj = parseJson(text);
    if (!obj || typeof obj.type !== "string") return; // not ours; the gateway never sends it
    if (!conn.welcomed && obj.type !== "welcome") return;
    this._dispatch(conn, obj);
  }

  _dispatch(conn, obj) {
    switch (obj.type) {
      case "welcome": return this._welcome(conn, obj);
      case "message": return this._message(conn, obj);
      case "subscribed": return this._subscribed(conn, obj);
      case "unsubscribed":
        this._pendingSubscribes.delete(obj.channel);
        return this._emit("unsubscribed", { channel: obj.channel });
      case "presence":
        if (!this._channels.has(obj.channel)) return undefined; // unsubscribed meanwhile
        return this._emit("presence", { channel: obj.channel, event: obj.event, user: obj.user,
          conn: obj.conn });
      case "reconnect":
        if (typeof obj.after_ms === "number") this._hint = Math.max(0, obj.after_ms / 1000);
        return undefined;
      case "pong": {
        const entry = this._pings.shift();
        if (entry) { clearTimeout(entry.timer); entry.resolve(); }
        return undefined;
      }
      case "published": {
        const pending = this._publishes.get(obj.id);
        if (!pending) return undefined;
        this._publishes.delete(obj.id);
        clearTimeout(pending.timer);
        return pending.resolve({ channel: obj.channel, epoch: obj.epoch, offset: obj.offset });
      }
      case "error": {
        const err = { code: obj.code, message: obj.message || "", fatal: false };
        if (typeof obj.channel === "string") err.channel = obj.channel;
        const pending = obj.id != null ? this._publishes.get(obj.id) : null;
        if (pending) { // the answer to one of our publishes (every refusal repeats its id)
          this._publishes.delete(obj.id);
          clearTimeout(pending.timer);
          pending.reject(Object.assign(new Error(`switchboard: ${err.message}`), err));
        } else if (err.channel && this._pendingSubscribes.has(err.channel)
          && DENIALS.includes(err.code)) {
          // A refused subscribe: forget the channel, or every reconnect would ask again.
          this._pendingSubscribes.delete(err.channel);
          this._channels.delete(err.channel);
          this._positions.delete(CHANNEL_PREFIX + err.channel);
        } else if (err.channel && err.code === "unavailable"
          && this._pendingSubscribes.has(err.channel)) {
          // Not subscribed for now (Redis or the application's backend could not be asked):
          // the channel stays wanted and is asked for again after a backoff.
          this._retrySubscribe(conn, err.channel);
        }
        return this._emit("error", err);
      }
      default: return undefined;
    }
  }

  _welcome(conn, w) {
    clearTimeout(conn.timer);
    conn.welcomed = true;
    conn.autoRetrying = false;
    conn.openedAt = now();
    const initial = this.stats.connects === 0;
    this.stats.connects += 1;
    if (!initial) this.stats.reconnects += 1;
    this._session = w.session || null;
    this._gateway = w.gateway || null;
    this._user = w.user || null;
    this._freshToken = false;
    this._hint = null;
    if (conn.kind === "websocket") {
      this._wsWorked = true;
      this._wsFailures = 0;
      this._startKeepalive(conn);
    }
    this._backoff.connected();
    const lost = this._position(w.streams || {}, true);
    this.stats.lost += lost.length;
    this._setState("open");
    this._emit("welcome", w);
    this._emit("recovered", { recovered: lost.length === 0, resumed: !!w.resumed, lost,
      gateway: this._gateway, initial, via: conn.via });
    if (this._resolveReady) {
      this._resolveReady(w);
      this._resolveReady = null;
    }
    // Channels asked for at connect are confirmed by `subscribed` (or refused by `error`).
    this._pendingSubscribes = new Set(conn.channels);
    // Channels asked for (or dropped) while this connection was being opened.
    const sent = new Set(conn.channels);
    const missing = [...this._channels].filter((c) => !sent.has(c));
    const dropped = conn.channels.filter((c) => !this._channels.has(c));
    if (conn.kind === "websocket") {
      this._flushAck(); // processed on the last connection: the session carries it on
      for (const c of missing) {
        this._pendingSubscribes.add(c);
        this._send({ type: "subscribe", channel: c });
      }
      for (const c of dropped) this._send({ type: "unsubscribe", channel: c });
    } else if (missing.length || dropped.length) {
      this._restartSse();
    }
  }

  /**
   * Take the server's positions (welcome or subscribed); return the streams whose messages
   * were lost. Same epoch and an offset at or below ours: the gateway replays from there and
   * we drop what we already have. A new epoch or an offset past ours: lost.
   */
  _position(streams, prune) {
    const lost = [];
    for (const [stream, w] of Object.entries(streams)) {
      if (!w || typeof w.epoch !== "string" || typeof w.offset !== "number") continue;
      const p = this._positions.get(stream);
      if (!p) {
        this._positions.set(stream, { epoch: w.epoch, offset: w.offset });
      } else if (p.epoch !== w.epoch || w.offset > p.offset) {
        lost.push(stream);
        this._positions.set(stream, { epoch: w.epoch, offset: w.offset });
      }
    }
    if (prune) {
      for (const stream of [...this._positions.keys()]) {
        if (stream in streams) continue;
        // a channel the gateway will confirm with `subscribed` keeps its position until then
        const channel = stream.startsWith(CHANNEL_PREFIX) ? stream.slice(CHANNEL_PREFIX.length) : null;
        if (!channel || !this._channels.has(channel)) this._positions.delete(stream);
      }
    }
    return lost;
  }

  /**
   * Ask again for a subscribe the gateway answered `unavailable`, after a full-jitter backoff
   * (0.5 s base, 20 s cap), on the same WebSocket connection; an SSE connection (which cannot
   * send) and a later connection ask for it at their connect.
   */
  _retrySubscribe(conn, channel) {
    if (conn.kind !== "websocket") return;
    const retries = conn.subscribeRetries || (conn.subscribeRetries = new Map());
    const attempt = retries.get(channel) || 0;
    retries.set(channel, attempt + 1);
    const delay = Math.random() * Math.min(20, 0.5 * 2 ** Math.min(attempt, 16));
    setTimeout(() => {
      if (this._conn !== conn || !conn.welcomed || !this._channels.has(channel)) return;
      const position = this._positions.get(CHANNEL_PREFIX + channel);
      this._pendingSubscribes.add(channel);
      this._send({ type: "subscribe", channel,
        ...(position ? { cursor: { epoch: position.epoch, offset: position.offset } } : {}) });
    }, delay * 1000);
  }

  _subscribed(conn, obj) {
    const channel = obj.channel;
    this._pendingSubscribes.delete(channel);
    if (conn.subscribeRetries) conn.subscribeRetries.delete(channel);
    if (!this._channels.has(channel)) return; // unsubscribed meanwhile
    const stream = CHANNEL_PREFIX + channel;
    const lost = this._position({ [stream]: obj }, false);
    if (obj.recovered) lost.length = 0; // replayed from our cursor: nothing missing
    this._emit("subscribed", { channel, epoch: obj.epoch, offset: obj.offset,
      recovered: !!obj.recovered });
    if (lost.length) {
      this.stats.lost += 1;
      this._emit("recovered", { recovered: false, resumed: true, lost, gateway: this._gateway,
        initial: false, via: null });
    }
  }

  _message(conn, m) {
    const { stream, epoch, offset } = m;
    if (typeof stream !== "string" || typeof epoch !== "string" || typeof offset !== "number") return;
    if (stream.startsWith(CHANNEL_PREFIX) && !this._channels.has(stream.slice(CHANNEL_PREFIX.length))) {
      return; // in flight when we unsubscribed
    }
    const p = this._positions.get(stream);
    if (p && p.epoch === epoch) {
      if (offset <= p.offset) {
        this.stats.duplicates += 1;
        return;
      }
      if (offset > p.offset + 1) {
        this._gap(conn, `gap in ${stream}: expected offset ${p.offset + 1}, got ${offset}`);
        return;
      }
    }
    this._positions.set(stream, { epoch, offset });
    this._progress = true;
    if (p && p.epoch !== epoch) { // the stream's history was lost and restarted
      this.stats.lost += 1;
      this._emit("recovered", { recovered: false, resumed: true, lost: [stream],
        gateway: this._gateway, initial: false, via: null });
    }
    this._emit("message", { stream, epoch, offset, data: m.data });
    if (stream === "user" && this._autoAck) this._processed(epoch, offset);
  }

  // -- acks (delivery receipts): the user stream's messages the listeners have processed ------

  /** The "message" listeners returned for this user-stream message: ack it, batched. */
  _processed(epoch, offset) {
    const count = this._ack && this._ack.epoch === epoch ? this._ack.count + 1 : 1;
    this._ack = { epoch, offset, count };
    if (count >= ACK_EVERY) this._flushAck();
    else if (this._ackTimer == null) this._ackTimer = setTimeout(() => this._flushAck(), ACK_MS);
  }

  /** Send the pending ack if a WebSocket can carry it (SSE cannot: it stays pending). */
  _flushAck() {
    if (this._ackTimer != null) clearTimeout(this._ackTimer);
    this._ackTimer = null;
    const conn = this._conn;
    if (!this._ack || !conn || !conn.welcomed || conn.kind !== "websocket") return;
    const { epoch, offset } = this._ack;
    // kept when the socket is not open (closing): the next connection of the session sends it
    if (this._send({ type: "ack", stream: "user", epoch, offset })) this._ack = null;
  }

  /** Offsets are missing: reconnect with our cursor and let the gateway replay them. */
  _gap(conn, reason) {
    this.stats.gaps += 1;
    // At once, unless the last resume did not get us past a gap either: then the gateway is
    // having trouble and hammering it would not help.
    const delay = this._progress ? 0 : this._backoff.next();
    this._progress = false;
    this._teardown(conn, 1000, "gap");
    this._backoff.disconnected();
    this._setState("reconnecting", { reason });
    this._schedule(delay);
  }

  // -- keepalive (WebSocket): notice a dead network the browser has not noticed yet ----------

  _startKeepalive(conn) {
    if (!this._pingInterval) return;
    const tick = Math.min(this._pingInterval, this._pingTimeout) * 250;
    conn.pingTimer = setInterval(() => {
      if (conn !== this._conn) return;
      const t = now();
      if (conn.pingSent != null) {
        if (t - conn.pingSent > this._pingTimeout * 1000) this._ended(conn, 1006, "no pong");
      } else if (t - conn.lastRx >= this._pingInterval * 1000 && !this._pings.length) {
        // (a ping() of the application in flight proves the connection just as well)
        conn.pingSent = t;
        this._send({ type: "ping" });
      }
    }, tick);
  }

  _stopKeepalive(conn) {
    if (conn.pingTimer != null) clearInterval(conn.pingTimer);
    conn.pingTimer = null;
  }

  /** Send over the open WebSocket; false when there is none. */
  _send(obj) {
    const conn = this._conn;
    if (conn && conn.kind === "websocket" && conn.socket && conn.socket.readyState === 1) {
      conn.socket.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  _failPings(why) {
    const waiting = [...this._pings, ...this._publishes.values()];
    this._pings = [];
    this._publishes.clear();
    for (const p of waiting) {
      clearTimeout(p.timer);
      p.reject(new Error(`switchboard: ${why}`));
    }
  }

  // -- events --------------------------------------------------------------------------------

  _setState(state, why = {}) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, transport: this.transport, gateway: this._gateway,
      ...why });
  }

  _emit(event, payload) {
    for (const cb of this._listeners.get(event) || []) {
      try {
        cb(payload);
      } catch (err) {
        console.error(`switchboard: a "${event}" listener threw`, err);
      }
    }
  }
}

function checkChannel(channel) {
  if (typeof channel !== "string" || !CHANNEL_RE.test(channel)) {
    throw new Error(`switchboard: channel names are 1-64 of A-Z a-z 0-9 _ -, got ${channel}`);
  }
  return channel;
}

/** `{epoch, offset}` or `"EPOCH:OFFSET"` -> Position; null when absent. */
function channelCursor(cursor) {
  if (cursor == null) return null;
  const [epoch, offset] = typeof cursor === "string" ? cursor.split(":") : [cursor.epoch, cursor.offset];
  if (typeof epoch !== "string" || !/^[A-Za-z0-9]{1,32}$/.test(epoch) || !(Number(offset) >= 0)) {
    throw new Error(`switchboard: a channel cursor is {epoch, offset} or "EPOCH:OFFSET", got ${cursor}`);
  }
  return { epoch, offset: Number(offset) };
}

function parseJson(text) {
  try {
    return typeof text === "string" ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

export default Switchboard;
